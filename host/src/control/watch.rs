//! Watching the config file and policy files for changes.
//!
//! Each file's *directory* is watched, not the file: editors and deploy
//! tools often write a temporary file and rename it over the old one, which
//! would silently end a watch on the file itself. Events for other files in
//! those directories are ignored. Debouncing is left to the receiver, which
//! sees one [`Changed`] per event.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use notify::{EventKind, RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::mpsc::UnboundedSender;

/// A watched file changed (was written, created, renamed over or removed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Changed(pub PathBuf);

/// [`FileWatcher`] reports changes to a set of files.
pub struct FileWatcher {
    watcher: RecommendedWatcher,
    files: Arc<Mutex<HashSet<PathBuf>>>,
    dirs: HashSet<PathBuf>,
}

impl FileWatcher {
    /// A watcher that sends a [`Changed`] for each event on a watched file.
    pub fn new(tx: UnboundedSender<Changed>) -> notify::Result<FileWatcher> {
        let files: Arc<Mutex<HashSet<PathBuf>>> = Arc::default();
        let watched = files.clone();
        let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
            let Ok(event) = event else { return };
            if matches!(event.kind, EventKind::Access(_)) {
                return;
            }
            let files = watched.lock().unwrap_or_else(|p| p.into_inner());
            for path in event.paths {
                if files.contains(&path) {
                    let _ = tx.send(Changed(path));
                }
            }
        })?;
        Ok(FileWatcher {
            watcher,
            files,
            dirs: HashSet::new(),
        })
    }

    /// Watches exactly `files` from now on (an empty set stops watching).
    pub fn set<'a>(&mut self, files: impl IntoIterator<Item = &'a Path>) {
        let files: HashSet<PathBuf> = files.into_iter().map(Path::to_path_buf).collect();
        let dirs: HashSet<PathBuf> = files
            .iter()
            .filter_map(|f| f.parent().map(Path::to_path_buf))
            .collect();
        for gone in self.dirs.difference(&dirs) {
            let _ = self.watcher.unwatch(gone);
        }
        for new in dirs.difference(&self.dirs) {
            if let Err(e) = self.watcher.watch(new, RecursiveMode::NonRecursive) {
                tracing::warn!("cannot watch {} for changes: {e}", new.display());
            }
        }
        self.dirs = dirs;
        *self.files.lock().unwrap_or_else(|p| p.into_inner()) = files;
    }
}
