//! Checkpoints of the write-ahead log, on a thread and a connection of their own.
//!
//! SQLite checkpoints in the connection whose commit pushed the WAL past its limit: under
//! the store's one lock, copying the WAL's pages into the database between two fsyncs (the
//! WAL's, the database's), while every other commit waits: 10 ms every 60 or so uploads
//! on a disk whose fsync takes 4. Here the writer's commit hook ([`Checkpointer::hook`])
//! only asks, once the WAL holds [`Thresholds::request`] pages, and a second connection
//! checkpoints beside the writer (a passive checkpoint takes SQLite's checkpoint lock, not
//! its write lock); the writer starts the WAL over at its next commit once all of it is in
//! the database. A writer that never pauses leaves the thread behind by its last commits,
//! and the WAL grows on: at [`Thresholds::backstop`] pages the hook checkpoints inline
//! what is left (two fsyncs under the lock, as SQLite's own would, 16 times less often).

use std::path::Path;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use rusqlite::Connection;

/// When the WAL is checkpointed, in pages.
#[derive(Debug, Clone, Copy)]
pub(super) struct Thresholds {
    /// Pages that start a checkpoint on the thread.
    pub request: i32,
    /// Pages at which the writer checkpoints itself.
    pub backstop: i32,
}

impl Thresholds {
    /// SQLite's own default to start one (4 MiB of 4 KiB pages); 64 MiB to checkpoint inline.
    pub(super) const DEFAULT: Thresholds = Thresholds {
        request: 1_000,
        backstop: 16_384,
    };
}

/// The checkpointing thread; stopped and joined when dropped.
pub(super) struct Checkpointer {
    shared: Arc<Shared>,
    thresholds: Thresholds,
    thread: Option<JoinHandle<()>>,
}

struct Shared {
    control: Mutex<Control>,
    wake: Condvar,
}

#[derive(Default)]
struct Control {
    requested: bool,
    stop: bool,
    /// Checkpoints run.
    runs: u64,
}

impl Checkpointer {
    /// Starts the thread for the database at `db`.
    pub(super) fn start(db: &Path, thresholds: Thresholds) -> std::io::Result<Self> {
        let shared = Arc::new(Shared {
            control: Mutex::default(),
            wake: Condvar::new(),
        });
        let thread = std::thread::Builder::new()
            .name("sluice-wal-checkpoint".into())
            .spawn({
                let shared = shared.clone();
                let db = db.to_path_buf();
                move || run(&db, &shared)
            })?;
        Ok(Self {
            shared,
            thresholds,
            thread: Some(thread),
        })
    }

    /// The writer's WAL hook: called after each of its commits with the WAL's pages, it
    /// asks for a checkpoint past [`Thresholds::request`] (requests until one runs are
    /// one), and checkpoints inline past [`Thresholds::backstop`].
    pub(super) fn hook(
        &self,
    ) -> impl FnMut(&mut rusqlite::hooks::Wal, std::ffi::c_int) -> rusqlite::Result<()> + Send + 'static
    {
        let shared = self.shared.clone();
        let Thresholds { request, backstop } = self.thresholds;
        move |wal, pages| {
            if pages >= backstop {
                // An error here would fail a statement whose commit happened: only report it
                // (busy: the thread is checkpointing; the next commit tries again).
                if let Err(e) = wal.checkpoint()
                    && e.sqlite_error_code() != Some(rusqlite::ErrorCode::DatabaseBusy)
                {
                    tracing::warn!(error = %e, pages, "cannot checkpoint the state store's WAL");
                }
            } else if pages >= request {
                shared.control().requested = true;
                shared.wake.notify_one();
            }
            Ok(())
        }
    }

    /// Checkpoints run so far.
    pub(super) fn runs(&self) -> u64 {
        self.shared.control().runs
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        self.shared.control().stop = true;
        self.shared.wake.notify_one();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Shared {
    fn control(&self) -> MutexGuard<'_, Control> {
        self.control.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn run(db: &Path, shared: &Shared) {
    let mut conn: Option<Connection> = None;
    loop {
        {
            let mut control = shared.control();
            while !control.requested && !control.stop {
                control = shared.wake.wait(control).unwrap_or_else(|p| p.into_inner());
            }
            if control.stop {
                return;
            }
            control.requested = false;
        }
        let outcome = open(db, &mut conn).and_then(|conn| {
            conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |row| {
                Ok((row.get::<_, i64>(1)?, row.get::<_, i64>(2)?))
            })
        });
        match outcome {
            Ok((frames, copied)) => {
                tracing::debug!(frames, copied, "state store WAL checkpointed");
            }
            Err(e) => {
                // The writer's own checkpoint still bounds the WAL; try again later.
                tracing::warn!(error = %e, "cannot checkpoint the state store's WAL");
                conn = None;
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        shared.control().runs += 1;
    }
}

fn open<'a>(db: &Path, conn: &'a mut Option<Connection>) -> rusqlite::Result<&'a Connection> {
    let opened = match conn.take() {
        Some(open) => open,
        None => {
            let opened = Connection::open(db)?;
            opened.busy_timeout(Duration::from_secs(10))?;
            // A checkpoint fsyncs the WAL before it copies and the database after.
            opened.pragma_update(None, "synchronous", "NORMAL")?;
            opened
        }
    };
    Ok(conn.insert(opened))
}
