//! Go's `strconv.Unquote` for double-quoted strings: the inverse of the `%q` kubelet writes
//! annotation values with. Kept here rather than taken from a crate because it must match Go
//! exactly (`\a`, `\v`, `\xNN` bytes, `\NNN`, `\u`, `\U`) and is small; tests parse real kubelet
//! output and round-trip arbitrary strings through a model of Go's quoting.

use std::str::Chars;

/// Undoes Go's `strconv.Quote` (kubelet's `%q`): the whole input must be one double-quoted
/// string. Accepts every escape Go's `strconv.Unquote` accepts in a double-quoted string.
pub fn go_unquote(quoted: &str) -> Result<String, String> {
    let inner = quoted
        .strip_prefix('"')
        .and_then(|rest| rest.strip_suffix('"'))
        .ok_or_else(|| "the value must be enclosed in double quotes".to_string())?;
    let mut bytes = Vec::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => return Err("unescaped '\"' inside the value".into()),
            '\\' => unescape(&mut chars, &mut bytes)?,
            c => push_char(&mut bytes, c),
        }
    }
    // `\xNN` may produce bytes that are not UTF-8; they cannot matter for our keys.
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// One escape sequence, the backslash already consumed.
fn unescape(chars: &mut Chars<'_>, out: &mut Vec<u8>) -> Result<(), String> {
    let c = chars.next().ok_or("a backslash ends the value")?;
    let byte = match c {
        'a' => 0x07,
        'b' => 0x08,
        'f' => 0x0c,
        'n' => b'\n',
        'r' => b'\r',
        't' => b'\t',
        'v' => 0x0b,
        '\\' => b'\\',
        '"' => b'"',
        'x' => digits(chars, 2, 16)?.try_into().map_err(|_| "\\x escape out of range")?,
        '0'..='7' => octal_byte(c, chars)?,
        'u' => return push_rune(out, digits(chars, 4, 16)?),
        'U' => return push_rune(out, digits(chars, 8, 16)?),
        other => return Err(format!("unknown escape \\{other}")),
    };
    out.push(byte);
    Ok(())
}

/// `\NNN`: exactly three octal digits, at most 0o377.
fn octal_byte(first: char, chars: &mut Chars<'_>) -> Result<u8, String> {
    let high = first.to_digit(8).ok_or("bad octal escape")?;
    let value = high * 64 + digits(chars, 2, 8)?;
    u8::try_from(value).map_err(|_| format!("octal escape \\{value:o} is above \\377"))
}

/// Exactly `count` digits in `radix`.
fn digits(chars: &mut Chars<'_>, count: usize, radix: u32) -> Result<u32, String> {
    (0..count).try_fold(0u32, |acc, _| {
        let digit =
            chars.next().and_then(|c| c.to_digit(radix)).ok_or_else(|| format!("expected {count} base-{radix} digits in an escape"))?;
        Ok(acc * radix + digit)
    })
}

fn push_rune(out: &mut Vec<u8>, code: u32) -> Result<(), String> {
    let c = char::from_u32(code).ok_or_else(|| format!("escape U+{code:04X} is not a Unicode scalar value"))?;
    push_char(out, c);
    Ok(())
}

fn push_char(out: &mut Vec<u8>, c: char) {
    out.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes());
}

/// Go's `strconv.Quote`, varying between raw and escaped forms to cover both.
#[cfg(test)]
pub(super) fn go_quote(value: &str) -> String {
    let mut out = String::from("\"");
    for c in value.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 || c as u32 == 0x7f => out.push_str(&format!("\\x{:02x}", c as u32)),
            c if c.is_ascii() => out.push(c),
            c if (c as u32).is_multiple_of(2) => out.push(c),
            c if (c as u32) <= 0xffff => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push_str(&format!("\\U{:08x}", c as u32)),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn go_unquote_handles_every_go_escape() {
        assert_eq!(go_unquote(r#""""#).unwrap(), "");
        assert_eq!(go_unquote(r#""\a\b\f\n\r\t\v\\\"""#).unwrap(), "\x07\x08\x0c\n\r\t\x0b\\\"");
        assert_eq!(go_unquote(r#""\x41\101\u00e9\U0001F600""#).unwrap(), "AAé😀");
        assert_eq!(go_unquote("\"raw é 😀 = \"").unwrap(), "raw é 😀 = ");
    }

    #[test]
    fn go_unquote_rejects_what_go_rejects() {
        for bad in [r#"x"#, r#"""#, r#""a"#, r#"a""#, r#""a"b""#, r#""\""#, r#""\q""#, r#""\x4""#, r#""\400""#, r#""\uD800""#, r#""\'""#] {
            assert!(go_unquote(bad).is_err(), "{bad} should be rejected");
        }
    }

    proptest! {
        #[test]
        fn any_quoted_value_unquotes_to_itself(value in any::<String>()) {
            prop_assert_eq!(go_unquote(&go_quote(&value)), Ok(value));
        }
    }
}
