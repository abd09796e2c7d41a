//! Files written through object_store's local store made to survive a power loss.
//!
//! object_store's `LocalFileSystem` stages a write and renames it into place without an
//! fsync, and deltalake writes data files, commits and checkpoints through it. Before
//! an object's write is acknowledged and before a Delta commit is written or returns,
//! [`sync_files`] fdatasyncs the files and fsyncs the directories that name them: each
//! file's own directory, and every directory above it (up to a root) whose entry in its
//! parent is not yet known to be durable, as the write may have created it.

use std::collections::{BTreeSet, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Directories whose own entry in their parent is known to be durable: a new directory
/// is fsync'd into its parent once, not on every write into it.
#[derive(Debug, Default)]
pub(crate) struct KnownDirs(Mutex<HashSet<PathBuf>>);

impl KnownDirs {
    fn contains(&self, dir: &Path) -> bool {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(dir)
    }

    #[cfg(test)]
    pub(crate) fn under(&self, root: &Path) -> Vec<String> {
        let dirs = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let mut out: Vec<String> = dirs
            .iter()
            .filter_map(|d| d.strip_prefix(root).ok())
            .map(|d| d.display().to_string())
            .collect();
        out.sort();
        out
    }
}

/// fdatasyncs each of `files`, then fsyncs each file's directory and the directories
/// above it up to `root` that `known` does not hold yet, and records those it made
/// durable. Blocking; the error names the path that failed.
pub(crate) fn sync_files(
    root: &Path,
    files: &[PathBuf],
    known: &KnownDirs,
) -> Result<(), (PathBuf, std::io::Error)> {
    let mut dirs = BTreeSet::new();
    for file in files {
        std::fs::File::open(file)
            .and_then(|f| f.sync_data())
            .map_err(|e| (file.clone(), e))?;
        let mut dir = file.parent();
        while let Some(d) = dir {
            // Its directory names the file; a directory above only while the one below
            // it may be new.
            if !d.starts_with(root) || !dirs.insert(d.to_path_buf()) {
                break;
            }
            if d == root || known.contains(d) {
                break;
            }
            dir = d.parent();
        }
    }
    for dir in &dirs {
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| (dir.clone(), e))?;
    }
    // A directory's entry is durable once its parent was fsync'd here.
    let mut held = known.0.lock().unwrap_or_else(|p| p.into_inner());
    for dir in &dirs {
        if dir.parent().is_some_and(|p| dirs.contains(p)) {
            held.insert(dir.clone());
        }
    }
    Ok(())
}
