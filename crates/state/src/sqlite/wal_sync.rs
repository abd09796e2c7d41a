//! Group commit for the store's write-ahead log.
//!
//! With `synchronous=FULL` SQLite fsyncs the WAL inside every commit, while the store's one
//! lock is held: eight uploads acknowledged at once wait for eight fsyncs in a row (4 ms
//! apiece on a disk that takes that long). Instead the connection commits with
//! `synchronous=NORMAL` (the WAL's frames written, not flushed), takes a ticket, releases
//! the lock and waits here until an fsync that began after its commit has ended. One
//! fsync runs at a time and covers every commit made before it began, so commits that
//! arrive while it runs share the next one.
//!
//! This is the durability `synchronous=FULL` gives, moved off the lock: `fsync` flushes
//! the file, not a descriptor, so our own descriptor of `<db>-wal` flushes the frames
//! SQLite wrote through its own. The WAL is appended in order and its frames are
//! checksummed in a chain, so a power loss keeps a prefix of the commits: never a later
//! commit without an earlier one. A commit is visible to the process before its fsync
//! ends, as any WAL commit is visible before `synchronous=FULL`'s flush; what waits is
//! the acknowledgement.
//!
//! A failed fsync leaves the state of the flushed pages unknown (Linux may drop them and
//! report success next time), so every later sync fails too, until sluice restarts and
//! SQLite recovers the WAL from what the disk holds.

use std::fs::File;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};

/// A counter of the store's commits and the fsyncs that made them durable.
pub(super) struct WalSync {
    /// The WAL file (`<db>-wal`).
    wal: PathBuf,
    /// The database file: flushed instead when the WAL is gone (the last connection
    /// to close checkpoints the WAL into it, fsyncs it and deletes the WAL).
    db: PathBuf,
    /// Tickets handed out: one per commit that changed rows.
    committed: AtomicU64,
    state: Mutex<State>,
    /// Signalled when an fsync ends.
    ended: Condvar,
    /// Our descriptor of the WAL, reopened when SQLite replaces the file. Used by the one
    /// fsync running at a time.
    file: Mutex<Option<File>>,
}

#[derive(Default)]
struct State {
    /// Every ticket up to this one is durable.
    synced: u64,
    /// An fsync is running.
    syncing: bool,
    /// The fsyncs run so far.
    fsyncs: u64,
    /// Why the WAL could not be flushed, once it could not.
    failed: Option<String>,
}

/// How many commits took a ticket and how many fsyncs made them durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SyncStats {
    /// Commits that changed rows.
    pub commits: u64,
    /// Commits known durable.
    pub synced: u64,
    /// WAL fsyncs run.
    pub fsyncs: u64,
    /// Checkpoints run beside the writer.
    pub checkpoints: u64,
}

impl WalSync {
    /// Syncs the WAL of the database at `db`.
    pub(super) fn new(db: PathBuf) -> Self {
        let mut wal = db.clone().into_os_string();
        wal.push("-wal");
        Self {
            wal: PathBuf::from(wal),
            db,
            committed: AtomicU64::new(0),
            state: Mutex::new(State::default()),
            ended: Condvar::new(),
            file: Mutex::new(None),
        }
    }

    /// A ticket for a commit that has just been made; call it after the commit, before
    /// another can be (under the connection's lock).
    pub(super) fn ticket(&self) -> u64 {
        self.committed.fetch_add(1, Ordering::AcqRel) + 1
    }

    /// Returns once the commit holding `ticket` is durable: after an fsync that began
    /// after it, this caller's or another's.
    pub(super) fn wait(&self, ticket: u64) -> Result<(), String> {
        let mut state = self.state();
        loop {
            if let Some(why) = &state.failed {
                return Err(why.clone());
            }
            if state.synced >= ticket {
                return Ok(());
            }
            if state.syncing {
                state = self
                    .ended
                    .wait(state)
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
                continue;
            }
            state.syncing = true;
            // Every ticket up to `through` was taken after its commit wrote its frames.
            let through = self.committed.load(Ordering::Acquire);
            drop(state);
            let flushed = self.flush();
            state = self.state();
            state.syncing = false;
            state.fsyncs += 1;
            match flushed {
                Ok(()) => state.synced = state.synced.max(through),
                Err(e) => state.failed = Some(format!("cannot fsync {}: {e}", self.wal.display())),
            }
            self.ended.notify_all();
        }
    }

    /// Commits, durable commits and fsyncs so far.
    pub(super) fn stats(&self) -> SyncStats {
        let state = self.state();
        SyncStats {
            commits: self.committed.load(Ordering::Acquire),
            synced: state.synced,
            fsyncs: state.fsyncs,
            checkpoints: 0,
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Flushes the WAL file SQLite writes now (reopened if it was replaced), or the
    /// database if there is no WAL.
    fn flush(&self) -> std::io::Result<()> {
        let mut file = self.file.lock().unwrap_or_else(|p| p.into_inner());
        let current = match std::fs::metadata(&self.wal) {
            Ok(meta) => meta,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                *file = None;
                return File::open(&self.db)?.sync_all();
            }
            Err(e) => return Err(e),
        };
        let stale = match file.as_ref() {
            Some(open) => !same_file(&open.metadata()?, &current),
            None => true,
        };
        if stale {
            *file = Some(File::open(&self.wal)?);
        }
        match file.as_ref() {
            Some(wal) => wal.sync_data(),
            None => Ok(()),
        }
    }
}

#[cfg(unix)]
fn same_file(a: &std::fs::Metadata, b: &std::fs::Metadata) -> bool {
    use std::os::unix::fs::MetadataExt;
    (a.dev(), a.ino()) == (b.dev(), b.ino())
}

#[cfg(not(unix))]
fn same_file(_: &std::fs::Metadata, _: &std::fs::Metadata) -> bool {
    false
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    /// A WAL that cannot be flushed fails the commits waiting on it and every one after,
    /// even once an fsync would succeed again: what the failed one dropped is unknown.
    #[test]
    fn a_failed_fsync_fails_every_later_wait() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("state.db");
        std::fs::write(&db, b"").unwrap();
        let sync = WalSync::new(db.clone());
        let wal = dir.path().join("state.db-wal");
        std::fs::write(&wal, b"frames").unwrap();
        let first = sync.ticket();
        sync.wait(first).unwrap();
        assert_eq!(
            sync.stats(),
            SyncStats {
                commits: 1,
                synced: 1,
                fsyncs: 1,
                checkpoints: 0
            }
        );
        // procfs refuses fsync (EINVAL): a stand-in for a disk that fails one.
        std::fs::remove_file(&wal).unwrap();
        std::os::unix::fs::symlink("/proc/self/status", &wal).unwrap();
        let second = sync.ticket();
        let why = sync.wait(second).unwrap_err();
        assert!(why.contains("state.db-wal"), "{why}");
        std::fs::remove_file(&wal).unwrap();
        std::fs::write(&wal, b"frames").unwrap();
        let third = sync.ticket();
        assert_eq!(sync.wait(third).unwrap_err(), why);
        assert_eq!(sync.stats().synced, 1);
    }

    /// Without a WAL (the last connection checkpointed and removed it) the database file
    /// is flushed instead.
    #[test]
    fn without_a_wal_the_database_is_flushed() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("state.db");
        std::fs::write(&db, b"pages").unwrap();
        let sync = WalSync::new(db);
        let ticket = sync.ticket();
        sync.wait(ticket).unwrap();
        assert_eq!(sync.stats().synced, 1);
    }
}
