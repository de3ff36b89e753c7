//! Reading the role file once, as kubelet's atomic updates leave it: a regular file, usually
//! reached through kubelet's symlinks (`annotations` → `..data/annotations` → timestamped dir).

use std::fs::{self, FileType, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::Path;

use super::PodsideError;
use super::rolefile::{ParseError, Reading, Role, reading_in};

/// A path lookup can race the removal of kubelet's old timestamped dir; by the time the lookup
/// fails, `..data` already points at the new dir, so an immediate retry succeeds.
const READ_ATTEMPTS: usize = 3;

/// Reads and parses the role file once; `None` when the annotation is absent.
pub fn read_role(path: &Path, lock: &str) -> Result<Option<Role>, PodsideError> {
    read_reading(path, lock).map(|reading| reading.role)
}

/// Reads and parses the role file once: the role, and the controller's renewal if any.
pub fn read_reading(path: &Path, lock: &str) -> Result<Reading, PodsideError> {
    let content = read_content(path)?;
    reading_in(&content, lock).map_err(|source| PodsideError::Garbage { path: path.to_path_buf(), source })
}

/// Reads the file once, as text: a regular file (or a symlink to one) holding UTF-8.
pub fn read_content(path: &Path) -> Result<String, PodsideError> {
    read_snapshot(path).map(|snapshot| snapshot.content)
}

/// One read of the file: its text, and which file it was. The kubelet writes every update of a
/// projection into a new directory, so an update is a new file (a new inode) even when this
/// file's text did not change (another item of the volume did); a file rewritten in place shows
/// as new text. Two reads of one update compare equal, whatever woke the reader up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub content: String,
    device: u64,
    inode: u64,
}

/// Reads the file once, as text, with its identity (see [`Snapshot`]).
pub fn read_snapshot(path: &Path) -> Result<Snapshot, PodsideError> {
    let Raw { bytes, device, inode } = read_retrying(path).map_err(|failure| match failure {
        Unreadable::Io(source) => PodsideError::Read { path: path.to_path_buf(), source },
        Unreadable::NotRegular(kind) => PodsideError::NotRegular { path: path.to_path_buf(), kind },
    })?;
    let content = String::from_utf8(bytes).map_err(|_| PodsideError::Garbage { path: path.to_path_buf(), source: ParseError::NotUtf8 })?;
    Ok(Snapshot { content, device, inode })
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

/// The bytes, with the device and inode of the file they came from.
struct Raw {
    bytes: Vec<u8>,
    device: u64,
    inode: u64,
}

fn read_retrying(path: &Path) -> Result<Raw, Unreadable> {
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
fn read_regular_file(path: &Path) -> Result<Raw, Unreadable> {
    // Checked before opening, so that no device is ever opened.
    ensure_regular(fs::metadata(path)?.file_type())?;
    // Should the path turn into a FIFO after the check, a non-blocking open still returns at once;
    // on a regular file the flag changes nothing.
    let mut file = OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY).open(path)?;
    let metadata = file.metadata()?;
    ensure_regular(metadata.file_type())?;
    let mut content = Vec::new();
    file.read_to_end(&mut content)?;
    Ok(Raw { bytes: content, device: metadata.dev(), inode: metadata.ino() })
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
        assert!(matches!(read_regular_file(&dir.path().join("link")), Ok(raw) if raw.bytes == b"leader"));
    }

    #[test]
    fn a_snapshot_changes_with_the_file_replaced_or_rewritten_and_not_with_a_reread() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("annotations");
        fs::write(&path, "leader").unwrap();
        let first = read_snapshot(&path).unwrap();
        assert_eq!(read_snapshot(&path).unwrap(), first, "reading again is no change");
        // Replaced by a new file with the same text, as the kubelet does when another item changed.
        fs::write(dir.path().join("new"), "leader").unwrap();
        fs::rename(dir.path().join("new"), &path).unwrap();
        let replaced = read_snapshot(&path).unwrap();
        assert_eq!(replaced.content, "leader");
        assert_ne!(replaced, first);
        fs::write(&path, "standby").unwrap();
        assert_ne!(read_snapshot(&path).unwrap(), replaced, "rewritten in place");
    }
}
