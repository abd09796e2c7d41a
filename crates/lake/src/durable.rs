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

/// At most this many fsyncs run at once (a Delta commit may sync a file per partition).
const MAX_AT_ONCE: usize = 8;

/// fdatasyncs each of `files` and fsyncs each file's directory and the directories
/// above it up to `root` that `known` does not hold yet, side by side on the blocking
/// pool, and records the directories made durable. The error names the path that failed.
///
/// Side by side, not one after another: the caller waits for every one of them before it
/// acknowledges anything, so their order adds no guarantee (the rename that named a file
/// came before its data was synced either way), and a disk busy writing back answers
/// several outstanding flushes about as fast as one (docs/benchmarks.md, session 37).
pub(crate) async fn sync_files(
    root: &Path,
    files: &[PathBuf],
    known: &KnownDirs,
) -> Result<(), (PathBuf, std::io::Error)> {
    use futures::{StreamExt as _, TryStreamExt as _};
    let mut dirs = BTreeSet::new();
    for file in files {
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
    let syncs: Vec<(PathBuf, bool)> = files
        .iter()
        .map(|f| (f.clone(), false))
        .chain(dirs.iter().map(|d| (d.clone(), true)))
        .collect();
    futures::stream::iter(syncs)
        .map(|(path, is_dir)| async move {
            let at = path.clone();
            tokio::task::spawn_blocking(move || sync_one(&path, is_dir))
                .await
                .unwrap_or_else(|e| {
                    Err((
                        at,
                        std::io::Error::other(format!("the fsync task died: {e}")),
                    ))
                })
        })
        .buffer_unordered(MAX_AT_ONCE)
        .try_collect::<Vec<()>>()
        .await?;
    // A directory's entry is durable once its parent was fsync'd here.
    let mut held = known.0.lock().unwrap_or_else(|p| p.into_inner());
    for dir in &dirs {
        if dir.parent().is_some_and(|p| dirs.contains(p)) {
            held.insert(dir.clone());
        }
    }
    Ok(())
}

/// A file's fdatasync, or a directory's fsync (`is_dir`). Blocking.
fn sync_one(path: &Path, is_dir: bool) -> Result<(), (PathBuf, std::io::Error)> {
    std::fs::File::open(path)
        .and_then(|f| if is_dir { f.sync_all() } else { f.sync_data() })
        .map_err(|e| (path.to_path_buf(), e))
}
