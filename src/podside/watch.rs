//! Waking up when kubelet refreshes the role file: it swaps the `..data` symlink in the file's
//! directory, so the directory is watched, not the file.

use std::path::{Path, PathBuf};
use std::time::Duration;

use notify::event::{AccessKind, AccessMode};
use notify::{EventKind, RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::mpsc;

use super::PodsideError;
use super::read::{Snapshot, read_role, read_snapshot};
use super::rolefile::{Reading, Role, reading_in};

/// Re-read even without a notification, in case one was lost; tests never depend on it.
const SAFETY_REREAD: Duration = Duration::from_secs(60);

/// Watches the downward-API file's directory: kubelet replaces the `..data` symlink there, so
/// the file (itself a symlink into a replaced dir) would never report a change of its own.
pub struct FileWatch {
    path: PathBuf,
    _watcher: RecommendedWatcher,
    events: mpsc::UnboundedReceiver<()>,
    closed: bool,
}

impl FileWatch {
    /// Starts watching before the first read, so no update can slip in between.
    pub fn start(path: &Path) -> Result<Self, PodsideError> {
        let dir = match path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let (tx, events) = mpsc::unbounded_channel();
        let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
            if is_relevant(&event) {
                let _ = tx.send(());
            }
        })
        .map_err(|source| PodsideError::Watch { dir: dir.clone(), source })?;
        watcher.watch(&dir, RecursiveMode::NonRecursive).map_err(|source| PodsideError::Watch { dir, source })?;
        Ok(Self { path: path.to_path_buf(), _watcher: watcher, events, closed: false })
    }

    /// The file's content as text, read as kubelet leaves it, with which update it is (see
    /// [`Snapshot`]).
    pub fn read(&self) -> Result<Snapshot, PodsideError> {
        read_snapshot(&self.path)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Resolves once the directory changed (or the safety interval passed); a burst of events,
    /// like kubelet's create-dir, create-symlink, rename, remove-dir, counts once. Cancel-safe.
    pub async fn changed(&mut self) {
        if self.closed {
            tokio::time::sleep(SAFETY_REREAD).await;
            return;
        }
        match tokio::time::timeout(SAFETY_REREAD, self.events.recv()).await {
            Ok(Some(())) | Err(_) => while self.events.try_recv().is_ok() {},
            Ok(None) => {
                tracing::warn!("file-system notifications stopped; re-reading {} every {SAFETY_REREAD:?}", self.path.display());
                self.closed = true;
            }
        }
    }
}

/// A [`FileWatch`] that reads one lock's role.
pub struct RoleWatch {
    file: FileWatch,
    lock: String,
}

impl RoleWatch {
    /// Starts watching before the first read, so no update can slip in between.
    pub fn start(path: &Path, lock: &str) -> Result<Self, PodsideError> {
        Ok(Self { file: FileWatch::start(path)?, lock: lock.to_string() })
    }

    pub fn read(&self) -> Result<Option<Role>, PodsideError> {
        read_role(self.file.path(), &self.lock)
    }

    /// The role and the renewal, with the [`Snapshot`] they were read from: whether the file
    /// changed since an earlier read, whatever woke the watch up.
    pub fn read_snapshot(&self) -> Result<(Reading, Snapshot), PodsideError> {
        let snapshot = self.file.read()?;
        let reading = reading_in(&snapshot.content, &self.lock)
            .map_err(|source| PodsideError::Garbage { path: self.file.path().to_path_buf(), source })?;
        Ok((reading, snapshot))
    }

    /// See [`FileWatch::changed`].
    pub async fn changed(&mut self) {
        self.file.changed().await;
    }
}

/// Our own reads open the file and would wake us up forever: skip opens and read-only closes.
fn is_relevant(event: &notify::Result<notify::Event>) -> bool {
    match event {
        Ok(event) => match event.kind {
            EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
            EventKind::Access(_) => false,
            _ => true,
        },
        Err(_) => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_writes_and_directory_changes_wake_the_watch() {
        use notify::event::{CreateKind, ModifyKind, RenameMode};
        let event = |kind| Ok(notify::Event::new(kind));
        assert!(is_relevant(&event(EventKind::Modify(ModifyKind::Name(RenameMode::Both)))));
        assert!(is_relevant(&event(EventKind::Create(CreateKind::Folder))));
        assert!(is_relevant(&event(EventKind::Access(AccessKind::Close(AccessMode::Write)))));
        assert!(!is_relevant(&event(EventKind::Access(AccessKind::Open(AccessMode::Any)))));
        assert!(!is_relevant(&event(EventKind::Access(AccessKind::Close(AccessMode::Read)))));
    }
}
