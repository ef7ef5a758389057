//! What triggers a reload besides SIGHUP: a change to the config file or to
//! a key file, seen through `notify`.
//!
//! Editors and tools replace files in many ways (write in place, write a
//! temporary file and rename it over, delete and recreate, or swap a
//! `..data` symlink as Kubernetes does for a ConfigMap), and each makes a
//! different burst of events on a different inode. So spipes watches the
//! folders that hold the files, not the files, waits until the folder has
//! been quiet for a moment, and then compares a hash of the files' contents
//! with the last one it loaded: only a real change reloads, and a burst of
//! events gives one reload.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use notify::{RecommendedWatcher, RecursiveMode, Watcher as _};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

/// How long the watched folders must be quiet before a change counts:
/// long enough for an editor's save or a `kubectl` update to finish.
const QUIET: Duration = Duration::from_millis(200);

/// Watches the folders of the config file and its key files.
pub struct FileWatcher {
    watcher: RecommendedWatcher,
    folders: BTreeSet<PathBuf>,
    /// Fires once per quiet period after events; cancel-safe to await.
    changes: mpsc::Receiver<()>,
}

impl FileWatcher {
    /// Starts the watcher; nothing is watched until [`FileWatcher::watch`].
    ///
    /// Must run inside a tokio runtime, which runs the debouncing task.
    pub fn new() -> notify::Result<FileWatcher> {
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        let watcher = notify::recommended_watcher(
            move |event: notify::Result<notify::Event>| {
                // Errors also count as a possible change: a hash check
                // follows, so a false alarm costs one read of the files.
                if event.is_ok_and(|e| is_read(&e.kind)) {
                    return;
                }
                let _ = events_tx.send(());
            },
        )?;

        let (changes_tx, changes) = mpsc::channel(1);
        tokio::spawn(debounce(events_rx, changes_tx));
        Ok(FileWatcher {
            watcher,
            folders: BTreeSet::new(),
            changes,
        })
    }

    /// Watches the folders holding `files` (and their symlink targets),
    /// and stops watching folders no longer needed. A folder that cannot be
    /// watched is logged and skipped: SIGHUP still works.
    pub fn watch<'a>(&mut self, files: impl IntoIterator<Item = &'a Path>) {
        let wanted: BTreeSet<PathBuf> =
            files.into_iter().flat_map(folders_of).collect();

        for gone in self.folders.difference(&wanted) {
            let _ = self.watcher.unwatch(gone);
        }
        for new in wanted.difference(&self.folders) {
            if let Err(e) = self.watcher.watch(new, RecursiveMode::NonRecursive)
            {
                tracing::warn!(
                    folder = %new.display(), error = %e,
                    "cannot watch folder; changes there need SIGHUP"
                );
            }
        }
        self.folders = wanted;
    }

    /// Waits until something in a watched folder changed and then stayed
    /// quiet. Cancel-safe.
    pub async fn changed(&mut self) {
        if self.changes.recv().await.is_none() {
            // The debouncer is gone (the runtime is shutting down).
            std::future::pending::<()>().await;
        }
    }
}

/// Whether an event only says a file was opened or read. The hash check
/// itself reads the files, so counting reads would loop forever; a file
/// closed after writing still counts.
fn is_read(kind: &notify::EventKind) -> bool {
    use notify::event::{AccessKind, AccessMode, EventKind};

    match kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => false,
        EventKind::Access(_) => true,
        _ => false,
    }
}

/// The folder of `file`, plus the folder of its resolved path when it is a
/// symlink (a Kubernetes ConfigMap is a link into a `..data` link).
fn folders_of(file: &Path) -> Vec<PathBuf> {
    let mut folders = Vec::new();
    if let Some(parent) = file.parent() {
        let parent = if parent.as_os_str().is_empty() {
            Path::new(".")
        } else {
            parent
        };
        folders.push(parent.to_path_buf());
    }
    if let Ok(real) = std::fs::canonicalize(file)
        && let Some(parent) = real.parent()
    {
        folders.push(parent.to_path_buf());
    }
    folders
}

/// Turns bursts of raw events into one signal per quiet period. Extra
/// signals while the daemon is busy fold into the one already queued.
async fn debounce(
    mut events: mpsc::UnboundedReceiver<()>,
    changes: mpsc::Sender<()>,
) {
    while events.recv().await.is_some() {
        // Wait for QUIET with no further event.
        loop {
            match tokio::time::timeout(QUIET, events.recv()).await {
                Ok(Some(())) => continue,
                Ok(None) => return,
                Err(_) => break,
            }
        }
        let _ = changes.try_send(());
    }
}

/// A hash of the config file and every key file it names, to tell a real
/// change from events that changed nothing. A missing or unreadable file
/// hashes as such, so its disappearance is a change too.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fingerprint([u8; 32]);

impl Fingerprint {
    /// Reads and hashes the files now.
    pub fn of<'a>(files: impl IntoIterator<Item = &'a Path>) -> Fingerprint {
        let mut hash = Sha256::new();
        for file in files {
            hash.update(file.as_os_str().as_encoded_bytes());
            match std::fs::read(file) {
                Ok(bytes) => {
                    let bytes = zeroize::Zeroizing::new(bytes);
                    hash.update((bytes.len() as u64).to_be_bytes());
                    hash.update(&bytes[..]);
                }
                Err(e) => hash.update(format!("unreadable: {e}")),
            }
        }
        Fingerprint(hash.finalize().into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprint_changes_with_content_and_absence() {
        let dir = tempfile::tempdir().expect("temp dir");
        let file = dir.path().join("a.toml");

        std::fs::write(&file, "one").expect("write");
        let one = Fingerprint::of([file.as_path()]);
        assert_eq!(one, Fingerprint::of([file.as_path()]));

        std::fs::write(&file, "two").expect("write");
        let two = Fingerprint::of([file.as_path()]);
        assert_ne!(one, two);

        std::fs::remove_file(&file).expect("remove");
        assert_ne!(two, Fingerprint::of([file.as_path()]));
    }
}
