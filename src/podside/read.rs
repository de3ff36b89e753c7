//! Reading the role file once, as kubelet's atomic updates leave it: a regular file, usually
//! reached through kubelet's symlinks (`annotations` → `..data/annotations` → timestamped dir).

use std::fs::{self, FileType, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;

use super::PodsideError;
use super::rolefile::{ParseError, Role, role_in};

/// A path lookup can race the removal of kubelet's old timestamped dir; by the time the lookup
/// fails, `..data` already points at the new dir, so an immediate retry succeeds.
const READ_ATTEMPTS: usize = 3;

/// Reads and parses the role file once; `None` when the annotation is absent.
pub fn read_role(path: &Path, lock: &str) -> Result<Option<Role>, PodsideError> {
    let content = read_content(path)?;
    role_in(&content, lock).map_err(|source| PodsideError::Garbage { path: path.to_path_buf(), source })
}

/// Reads the file once, as text: a regular file (or a symlink to one) holding UTF-8.
pub fn read_content(path: &Path) -> Result<String, PodsideError> {
    let content = read_retrying(path).map_err(|failure| match failure {
        Unreadable::Io(source) => PodsideError::Read { path: path.to_path_buf(), source },
        Unreadable::NotRegular(kind) => PodsideError::NotRegular { path: path.to_path_buf(), kind },
    })?;
    String::from_utf8(content).map_err(|_| PodsideError::Garbage { path: path.to_path_buf(), source: ParseError::NotUtf8 })
}

/// Why the file's bytes could not be had.
enum Unreadable {
    Io(io::Error),
    /// What the path is instead of a regular file, e.g. "a FIFO (named pipe)".
    NotRegular(&'static str),
}

impl From<io::Error> for Unreadable {
    fn from(e: io::Error) -> Self {
        Unreadable::Io(e)
    }
}

fn read_retrying(path: &Path) -> Result<Vec<u8>, Unreadable> {
    let mut attempt = 1;
    loop {
        match read_regular_file(path) {
            Err(Unreadable::Io(e)) if e.kind() == io::ErrorKind::NotFound && attempt < READ_ATTEMPTS => attempt += 1,
            result => return result,
        }
    }
}

/// Reads `path` only when it is, or a symlink resolves to, a regular file: opening a FIFO blocks
/// until a writer appears, and a device may never end.
fn read_regular_file(path: &Path) -> Result<Vec<u8>, Unreadable> {
    // Checked before opening, so that no device is ever opened.
    ensure_regular(fs::metadata(path)?.file_type())?;
    // Should the path turn into a FIFO after the check, a non-blocking open still returns at once;
    // on a regular file the flag changes nothing.
    let mut file = OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY).open(path)?;
    ensure_regular(file.metadata()?.file_type())?;
    let mut content = Vec::new();
    file.read_to_end(&mut content)?;
    Ok(content)
}

fn ensure_regular(file_type: FileType) -> Result<(), Unreadable> {
    if file_type.is_file() { Ok(()) } else { Err(Unreadable::NotRegular(kind_of(file_type))) }
}

/// What a non-regular file is, for the error message.
fn kind_of(file_type: FileType) -> &'static str {
    if file_type.is_dir() {
        "a directory"
    } else if file_type.is_fifo() {
        "a FIFO (named pipe)"
    } else if file_type.is_socket() {
        "a socket"
    } else if file_type.is_char_device() {
        "a character device"
    } else if file_type.is_block_device() {
        "a block device"
    } else {
        "a special file"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_directory_or_a_device_is_named_and_never_read() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(read_regular_file(dir.path()), Err(Unreadable::NotRegular("a directory"))));
        assert!(matches!(read_regular_file(Path::new("/dev/zero")), Err(Unreadable::NotRegular("a character device"))));
    }

    #[test]
    fn a_symlink_to_a_regular_file_is_read_through() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("target"), "leader").unwrap();
        std::os::unix::fs::symlink("target", dir.path().join("link")).unwrap();
        assert!(matches!(read_regular_file(&dir.path().join("link")), Ok(bytes) if bytes == b"leader"));
    }
}
