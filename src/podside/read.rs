//! Reading the role file once, as kubelet's atomic updates leave it.

use std::io;
use std::path::Path;

use super::PodsideError;
use super::rolefile::{ParseError, Role, role_in};

/// A path lookup can race the removal of kubelet's old timestamped dir; by the time the lookup
/// fails, `..data` already points at the new dir, so an immediate retry succeeds.
const READ_ATTEMPTS: usize = 3;

/// Reads and parses the role file once; `None` when the annotation is absent.
pub fn read_role(path: &Path, lock: &str) -> Result<Option<Role>, PodsideError> {
    let content = read_retrying(path).map_err(|source| PodsideError::Read { path: path.to_path_buf(), source })?;
    let content =
        String::from_utf8(content).map_err(|_| PodsideError::Garbage { path: path.to_path_buf(), source: ParseError::NotUtf8 })?;
    role_in(&content, lock).map_err(|source| PodsideError::Garbage { path: path.to_path_buf(), source })
}

fn read_retrying(path: &Path) -> io::Result<Vec<u8>> {
    let mut attempt = 1;
    loop {
        match std::fs::read(path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound && attempt < READ_ATTEMPTS => attempt += 1,
            result => return result,
        }
    }
}
