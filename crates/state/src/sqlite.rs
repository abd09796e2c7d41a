//! The embedded state store: one SQLite file in WAL mode.
//!
//! One connection behind a mutex: SQLite serializes writers anyway, and
//! every method is a short transaction, so callers on async threads hold it
//! for microseconds. Each commit that changed rows is durable before its method
//! returns (an event before its write is acknowledged), by a WAL fsync after the
//! lock is released that the commits made meanwhile share ([`wal_sync`]).
//! Bookkeeping the queue can do without after a power loss (a lease, its
//! extension, a run's start and end) does not wait for the disk
//! ([`SqliteStore::relaxed`]): it survives a crash of the process, and the next
//! durable commit makes it durable too.

use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use chrono::{DateTime, Utc};
use rusqlite::config::DbConfig;
use rusqlite::{Connection, OptionalExtension, Row, params};
use sluice_model::event::{Event, EventId, EventKind, ObjectRef};
use uuid::Uuid;

mod checkpoint;
mod executions;
mod wal_sync;

pub use wal_sync::SyncStats;

use crate::{
    BatchLimits, Error, Job, JobCounts, JobEnd, JobId, JobOutcome, JobStatus, LeasedJob, NewJob,
    ObjectMeta, Result, Run, RunStatus, StateStore, StoredEvent, TableVersion, Upload, UploadPart,
};

const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    kind TEXT NOT NULL,
    source TEXT NOT NULL,
    time INTEGER NOT NULL,
    correlation_id TEXT NOT NULL,
    bucket TEXT NOT NULL,
    key TEXT NOT NULL,
    size INTEGER NOT NULL,
    sha256 TEXT NOT NULL,
    version TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    event_id TEXT NOT NULL REFERENCES events(id),
    pipeline TEXT NOT NULL,
    trigger_name TEXT NOT NULL,
    status TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    max_attempts INTEGER NOT NULL,
    next_run_at INTEGER NOT NULL,
    lease_owner TEXT,
    lease_expires_at INTEGER,
    last_error TEXT,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    replay_of TEXT
);
CREATE INDEX IF NOT EXISTS jobs_due ON jobs(status, next_run_at);
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY,
    job_id TEXT NOT NULL,
    event_id TEXT NOT NULL,
    pipeline TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    status TEXT NOT NULL,
    started_at INTEGER NOT NULL,
    finished_at INTEGER,
    rows_in INTEGER NOT NULL,
    rows_valid INTEGER NOT NULL,
    rows_quarantined INTEGER NOT NULL,
    bytes_read INTEGER NOT NULL,
    bytes_written INTEGER NOT NULL,
    error TEXT,
    detail TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS runs_started ON runs(started_at);
CREATE TABLE IF NOT EXISTS idempotency_keys (
    key TEXT PRIMARY KEY,
    result TEXT NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS objects (
    bucket TEXT NOT NULL,
    key TEXT NOT NULL,
    size INTEGER NOT NULL,
    etag TEXT NOT NULL,
    content_type TEXT,
    metadata TEXT NOT NULL,
    last_modified INTEGER NOT NULL,
    sha256 TEXT NOT NULL,
    version TEXT NOT NULL,
    PRIMARY KEY (bucket, key)
);
CREATE TABLE IF NOT EXISTS buckets (
    name TEXT PRIMARY KEY,
    created_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS uploads (
    upload_id TEXT PRIMARY KEY,
    bucket TEXT NOT NULL,
    key TEXT NOT NULL,
    content_type TEXT,
    metadata TEXT NOT NULL,
    initiated INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS upload_parts (
    upload_id TEXT NOT NULL,
    part_number INTEGER NOT NULL,
    size INTEGER NOT NULL,
    etag TEXT NOT NULL,
    last_modified INTEGER NOT NULL,
    sha256 TEXT NOT NULL DEFAULT '',
    slot_offset INTEGER,
    PRIMARY KEY (upload_id, part_number)
);
CREATE TABLE IF NOT EXISTS catalog_tables (
    name TEXT NOT NULL,
    version INTEGER NOT NULL,
    layer TEXT NOT NULL,
    schema TEXT NOT NULL,
    partition_by TEXT NOT NULL,
    description TEXT,
    owner TEXT,
    location TEXT NOT NULL,
    registered_at INTEGER NOT NULL,
    PRIMARY KEY (name, version)
);
CREATE TABLE IF NOT EXISTS executions (
    id TEXT PRIMARY KEY,
    workflow TEXT NOT NULL,
    definition TEXT NOT NULL,
    status TEXT NOT NULL,
    input TEXT NOT NULL,
    output TEXT,
    error TEXT,
    cause TEXT,
    started_at INTEGER NOT NULL,
    stopped_at INTEGER,
    redriven_as TEXT
);
CREATE INDEX IF NOT EXISTS executions_status ON executions(status, started_at);
CREATE TABLE IF NOT EXISTS execution_events (
    execution_id TEXT NOT NULL REFERENCES executions(id),
    id INTEGER NOT NULL,
    previous_id INTEGER NOT NULL,
    time INTEGER NOT NULL,
    kind TEXT NOT NULL,
    details TEXT NOT NULL,
    PRIMARY KEY (execution_id, id)
);
CREATE TABLE IF NOT EXISTS schedule_ticks (
    schedule TEXT NOT NULL,
    tick INTEGER NOT NULL,
    execution_id TEXT,
    recorded_at INTEGER NOT NULL,
    PRIMARY KEY (schedule, tick)
);
CREATE TABLE IF NOT EXISTS custom_events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    body TEXT NOT NULL,
    time INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS routing_cursors (
    stream TEXT PRIMARY KEY,
    seq INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS execution_steps (
    execution_id TEXT NOT NULL REFERENCES executions(id),
    key TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (execution_id, key)
);
"#;

/// The SQLite state store.
pub struct SqliteStore {
    conn: Mutex<Connection>,
    /// Makes commits durable after the lock is released (none in memory).
    wal: Option<wal_sync::WalSync>,
    /// Checkpoints the WAL beside the writer (none in memory, or if its thread could not
    /// start: SQLite then checkpoints in the writer, as it does by default).
    checkpointer: Option<checkpoint::Checkpointer>,
}

fn micros(t: DateTime<Utc>) -> i64 {
    t.timestamp_micros()
}

fn from_micros(us: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(us).unwrap_or_default()
}

fn parse_uuid(s: &str, column: &'static str) -> Result<Uuid> {
    Uuid::parse_str(s).map_err(|e| Error::Corrupt {
        column,
        why: e.to_string(),
    })
}

/// The next due job: pending and due, or running with an expired lease (`?1`: now).
const LEASE_SQL: &str = "SELECT id FROM jobs
    WHERE (status = 'pending' AND next_run_at <= ?1)
       OR (status = 'running' AND lease_expires_at <= ?1)
    ORDER BY next_run_at, created_at LIMIT 1";

/// A lead job's due companions: the same pipeline and event kind, small enough, and of no
/// object whose job runs elsewhere (`?5`: now).
const COMPANIONS_SQL: &str =
    "SELECT j.id, e.bucket, e.key, e.size FROM jobs j JOIN events e ON e.id = j.event_id
    WHERE j.pipeline = ?1 AND e.kind = ?2 AND j.id != ?3 AND e.size <= ?4
      AND ((j.status = 'pending' AND j.next_run_at <= ?5)
        OR (j.status = 'running' AND j.lease_expires_at <= ?5))
      AND NOT EXISTS (
        SELECT 1 FROM jobs r JOIN events re ON re.id = r.event_id
        WHERE r.status = 'running' AND r.lease_expires_at > ?5
          AND r.pipeline = j.pipeline AND r.id != j.id
          AND re.bucket = e.bucket AND re.key = e.key)
    ORDER BY e.seq LIMIT ?6";

/// Statements the connection keeps parsed: every statement of the store's fixed SQL, with
/// room for the listings whose SQL varies.
const STATEMENT_CACHE: usize = 128;

/// Statements run through the connection's statement cache: each SQL text is parsed once,
/// not on every call (parsing was ~1.4% of the server's CPU with eight writers of small
/// objects, docs/benchmarks.md, session 23).
pub(crate) trait CachedSql {
    /// `Connection::execute`, cached.
    fn execute_cached<P: rusqlite::Params>(&self, sql: &str, params: P) -> rusqlite::Result<usize>;

    /// `Connection::query_row`, cached.
    fn query_row_cached<T, P, F>(&self, sql: &str, params: P, f: F) -> rusqlite::Result<T>
    where
        P: rusqlite::Params,
        F: FnOnce(&Row<'_>) -> rusqlite::Result<T>;
}

impl CachedSql for Connection {
    fn execute_cached<P: rusqlite::Params>(&self, sql: &str, params: P) -> rusqlite::Result<usize> {
        self.prepare_cached(sql)?.execute(params)
    }

    fn query_row_cached<T, P, F>(&self, sql: &str, params: P, f: F) -> rusqlite::Result<T>
    where
        P: rusqlite::Params,
        F: FnOnce(&Row<'_>) -> rusqlite::Result<T>,
    {
        self.prepare_cached(sql)?.query_row(params, f)
    }
}

impl SqliteStore {
    /// Opens (creating if needed) the store at `path`.
    pub fn open(path: &Path) -> Result<Self> {
        Self::open_with(path, checkpoint::Thresholds::DEFAULT)
    }

    fn open_with(path: &Path, thresholds: checkpoint::Thresholds) -> Result<Self> {
        let mut conn = Connection::open(path)?;
        let checkpointer = match checkpoint::Checkpointer::start(path, thresholds) {
            Ok(checkpointer) => {
                conn.wal_hook(Some(checkpointer.hook()))?;
                Some(checkpointer)
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot start the state store's checkpoint thread; the writer checkpoints");
                None
            }
        };
        Self::init(
            conn,
            Some(wal_sync::WalSync::new(path.to_path_buf())),
            checkpointer,
        )
    }

    /// An in-memory store, for tests and local workflow runs.
    pub fn open_in_memory() -> Result<Self> {
        Self::init(Connection::open_in_memory()?, None, None)
    }

    fn init(
        conn: Connection,
        wal: Option<wal_sync::WalSync>,
        checkpointer: Option<checkpoint::Checkpointer>,
    ) -> Result<Self> {
        conn.busy_timeout(Duration::from_secs(10))?;
        conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
        // Plans independent of bound values: otherwise SQLite marks a cached statement
        // whose plan looked at a parameter to be parsed again whenever that parameter
        // changes, and the job queue's statements bind the clock (session 48: leasing a
        // batch's companions was parsed again on every call, ~350 K instructions).
        conn.set_db_config(DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG, true)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        // Commits write the WAL without flushing it; `with` flushes it after the lock.
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.execute_batch(SCHEMA)?;
        migrate(&conn)?;
        let store = Self {
            conn: Mutex::new(conn),
            wal,
            checkpointer,
        };
        // The schema and migrations are durable before the store is used.
        store.sync(store.wal.as_ref().map(|wal| wal.ticket()))?;
        Ok(store)
    }

    /// Runs `f` under the connection's lock; if it changed rows, returns once they are
    /// durable (`synchronous=FULL`'s guarantee, its fsync shared with the commits made
    /// meanwhile and waited for without the lock).
    fn with<T>(&self, f: impl FnOnce(&mut Connection) -> Result<T>) -> Result<T> {
        let (result, ticket) = self.locked(f);
        self.sync(ticket)?;
        result
    }

    /// Like [`Self::with`], but does not wait for the disk: the commit survives the
    /// process crashing, not the machine losing power, until the next durable commit. For
    /// what a power loss may forget because the queue recovers it: a lease (its job is due
    /// again when the lease would have expired), a lease's extension, a run's start and its
    /// end (the job runs again; ingest and refresh steps are idempotent, the first finding
    /// its object already applied). Each is an fsync off the path from an upload to its
    /// rows: 4 ms apiece on a disk that takes that long.
    fn relaxed<T>(&self, f: impl FnOnce(&mut Connection) -> Result<T>) -> Result<T> {
        self.locked(f).0
    }

    /// `f` under the lock, with a ticket for its commit if it changed rows.
    fn locked<T>(&self, f: impl FnOnce(&mut Connection) -> Result<T>) -> (Result<T>, Option<u64>) {
        // A poisoned lock means a panic mid-transaction; SQLite rolled it back, so the connection is still sound.
        let mut conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        let before = conn.total_changes();
        let result = f(&mut conn);
        let ticket = match &self.wal {
            Some(wal) if conn.total_changes() != before => Some(wal.ticket()),
            _ => None,
        };
        (result, ticket)
    }

    fn sync(&self, ticket: Option<u64>) -> Result<()> {
        match (&self.wal, ticket) {
            (Some(wal), Some(ticket)) => wal.wait(ticket).map_err(Error::Durability),
            _ => Ok(()),
        }
    }

    /// Commits made, fsyncs run to make them durable and checkpoints run beside the
    /// writer (`None` in memory).
    pub fn sync_stats(&self) -> Option<SyncStats> {
        let mut stats = self.wal.as_ref()?.stats();
        stats.checkpoints = self.checkpointer.as_ref().map_or(0, |c| c.runs());
        Some(stats)
    }
}

/// Inserts or updates a run by id.
fn save_run(conn: &Connection, run: &Run) -> Result<()> {
    conn.execute_cached(
        &format!(
            "INSERT INTO runs ({RUN_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)
             ON CONFLICT(id) DO UPDATE SET status = excluded.status, finished_at = excluded.finished_at,
               rows_in = excluded.rows_in, rows_valid = excluded.rows_valid,
               rows_quarantined = excluded.rows_quarantined, bytes_read = excluded.bytes_read,
               bytes_written = excluded.bytes_written, error = excluded.error, detail = excluded.detail"
        ),
        params![
            run.id.to_string(),
            run.job_id.to_string(),
            run.event_id.to_string(),
            run.pipeline,
            run.attempt,
            run.status.as_str(),
            micros(run.started_at),
            run.finished_at.map(micros),
            run.rows_in as i64,
            run.rows_valid as i64,
            run.rows_quarantined as i64,
            run.bytes_read as i64,
            run.bytes_written as i64,
            run.error,
            run.detail.to_string(),
        ],
    )?;
    Ok(())
}

/// Completes, retries or dead-letters a job `worker` holds the lease of.
fn end_job(
    conn: &Connection,
    job: JobId,
    worker: &str,
    outcome: JobOutcome<'_>,
    now: DateTime<Utc>,
) -> Result<()> {
    let n = match outcome {
        JobOutcome::Done => conn.execute_cached(
            "UPDATE jobs SET status = 'done', lease_owner = NULL, lease_expires_at = NULL,
                 last_error = NULL, updated_at = ?3
             WHERE id = ?1 AND status = 'running' AND lease_owner = ?2",
            params![job.to_string(), worker, micros(now)],
        )?,
        JobOutcome::Failed {
            error,
            retry_at: Some(at),
        } => conn.execute_cached(
            "UPDATE jobs SET status = 'pending', next_run_at = ?4, lease_owner = NULL,
                 lease_expires_at = NULL, last_error = ?3, updated_at = ?5
             WHERE id = ?1 AND status = 'running' AND lease_owner = ?2",
            params![job.to_string(), worker, error, micros(at), micros(now)],
        )?,
        JobOutcome::Failed {
            error,
            retry_at: None,
        } => conn.execute_cached(
            "UPDATE jobs SET status = 'dead', lease_owner = NULL, lease_expires_at = NULL,
                 last_error = ?3, updated_at = ?4
             WHERE id = ?1 AND status = 'running' AND lease_owner = ?2",
            params![job.to_string(), worker, error, micros(now)],
        )?,
    };
    if n == 0 {
        return Err(Error::LeaseLost(job));
    }
    Ok(())
}

/// Brings a store made by an earlier sluice up to [`SCHEMA`] (columns added since).
fn migrate(conn: &Connection) -> Result<()> {
    let has_column = |table: &str, column: &str| -> Result<bool> {
        let mut stmt = conn.prepare_cached(&format!("PRAGMA table_info({table})"))?;
        let names = stmt.query_map([], |r| r.get::<_, String>(1))?;
        for name in names {
            if name? == column {
                return Ok(true);
            }
        }
        Ok(false)
    };
    if !has_column("upload_parts", "sha256")? {
        conn.execute_batch("ALTER TABLE upload_parts ADD COLUMN sha256 TEXT NOT NULL DEFAULT ''")?;
    }
    if !has_column("executions", "redriven_as")? {
        conn.execute_batch("ALTER TABLE executions ADD COLUMN redriven_as TEXT")?;
    }
    if !has_column("upload_parts", "slot_offset")? {
        conn.execute_batch("ALTER TABLE upload_parts ADD COLUMN slot_offset INTEGER")?;
    }
    Ok(())
}

/// Leases job `id` to `worker` until `expires` (counting the attempt), with its event.
fn lease_row(
    tx: &rusqlite::Transaction<'_>,
    id: &str,
    worker: &str,
    now_us: i64,
    expires: i64,
) -> Result<LeasedJob> {
    tx.execute_cached(
        "UPDATE jobs SET status = 'running', attempts = attempts + 1, lease_owner = ?2,
             lease_expires_at = ?3, updated_at = ?4 WHERE id = ?1",
        params![id, worker, expires, now_us],
    )?;
    let job = check_job(tx.query_row_cached(
        &format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?1"),
        [id],
        job_from_row,
    )?)?;
    let event = check_event(tx.query_row_cached(
        &format!("SELECT {EVENT_COLUMNS} FROM events WHERE id = ?1"),
        [job.event_id.to_string()],
        event_from_row,
    )?)?;
    Ok(LeasedJob {
        job,
        event: event.event,
        event_seq: event.seq,
    })
}

const JOB_COLUMNS: &str = "id, event_id, pipeline, trigger_name, status, attempts, max_attempts, next_run_at, last_error, created_at, updated_at, replay_of";

fn job_from_row(row: &Row<'_>) -> rusqlite::Result<(Job, String, String)> {
    let id: String = row.get(0)?;
    let event_id: String = row.get(1)?;
    let status: String = row.get(4)?;
    let replay_of: Option<String> = row.get(11)?;
    Ok((
        Job {
            id: JobId(Uuid::parse_str(&id).unwrap_or_default()),
            event_id: Uuid::parse_str(&event_id).unwrap_or_default(),
            pipeline: row.get(2)?,
            trigger: row.get(3)?,
            status: JobStatus::parse(&status).unwrap_or(JobStatus::Dead),
            attempts: row.get(5)?,
            max_attempts: row.get(6)?,
            next_run_at: from_micros(row.get(7)?),
            last_error: row.get(8)?,
            created_at: from_micros(row.get(9)?),
            updated_at: from_micros(row.get(10)?),
            replay_of: replay_of.and_then(|s| Uuid::parse_str(&s).ok().map(JobId)),
        },
        id,
        status,
    ))
}

fn check_job(parsed: (Job, String, String)) -> Result<Job> {
    let (job, id, status) = parsed;
    parse_uuid(&id, "jobs.id")?;
    if JobStatus::parse(&status).is_none() {
        return Err(Error::Corrupt {
            column: "jobs.status",
            why: format!("unknown status {status:?}"),
        });
    }
    Ok(job)
}

pub(crate) const EVENT_COLUMNS: &str =
    "seq, id, kind, source, time, correlation_id, bucket, key, size, sha256, version";

pub(crate) fn event_from_row(row: &Row<'_>) -> rusqlite::Result<(i64, String, String, Event)> {
    let id: String = row.get(1)?;
    let kind: String = row.get(2)?;
    let correlation: String = row.get(5)?;
    let size: i64 = row.get(8)?;
    Ok((
        row.get(0)?,
        id.clone(),
        kind.clone(),
        Event {
            id: EventId(Uuid::parse_str(&id).unwrap_or_default()),
            kind: EventKind::parse(&kind).unwrap_or(EventKind::ObjectCreated),
            source: row.get(3)?,
            time: from_micros(row.get(4)?),
            correlation_id: Uuid::parse_str(&correlation).unwrap_or_default(),
            object: ObjectRef {
                bucket: row.get(6)?,
                key: row.get(7)?,
                size: size.max(0) as u64,
                sha256: row.get(9)?,
                version: row.get(10)?,
            },
        },
    ))
}

pub(crate) fn check_event(parsed: (i64, String, String, Event)) -> Result<StoredEvent> {
    let (seq, id, kind, event) = parsed;
    parse_uuid(&id, "events.id")?;
    if EventKind::parse(&kind).is_none() {
        return Err(Error::Corrupt {
            column: "events.kind",
            why: format!("unknown kind {kind:?}"),
        });
    }
    Ok(StoredEvent { seq, event })
}

fn insert_event(tx: &rusqlite::Transaction<'_>, event: &Event, jobs: &[NewJob]) -> Result<i64> {
    let o = &event.object;
    tx.execute_cached(
        "INSERT INTO events (id, kind, source, time, correlation_id, bucket, key, size, sha256, version)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
        params![
            event.id.to_string(),
            event.kind.as_str(),
            event.source,
            micros(event.time),
            event.correlation_id.to_string(),
            o.bucket,
            o.key,
            o.size as i64,
            o.sha256,
            o.version,
        ],
    )?;
    let seq = tx.last_insert_rowid();
    for job in jobs {
        tx.execute_cached(
            "INSERT INTO jobs (id, event_id, pipeline, trigger_name, status, attempts, max_attempts, next_run_at, created_at, updated_at)
             VALUES (?1, ?2, ?3, ?4, 'pending', 0, ?5, ?6, ?6, ?6)",
            params![
                Uuid::now_v7().to_string(),
                event.id.to_string(),
                job.pipeline,
                job.trigger,
                job.max_attempts,
                micros(event.time),
            ],
        )?;
    }
    Ok(seq)
}

const OBJECT_COLUMNS: &str =
    "bucket, key, size, etag, content_type, metadata, last_modified, sha256, version";

fn meta_from_row(row: &Row<'_>) -> rusqlite::Result<ObjectMeta> {
    let metadata: String = row.get(5)?;
    Ok(ObjectMeta {
        bucket: row.get(0)?,
        key: row.get(1)?,
        size: row.get::<_, i64>(2)?.max(0) as u64,
        etag: row.get(3)?,
        content_type: row.get(4)?,
        metadata: serde_json::from_str(&metadata).unwrap_or_default(),
        last_modified: from_micros(row.get(6)?),
        sha256: row.get(7)?,
        version: row.get(8)?,
    })
}

fn upload_from_row(row: &Row<'_>) -> rusqlite::Result<Upload> {
    let metadata: String = row.get(4)?;
    Ok(Upload {
        upload_id: row.get(0)?,
        bucket: row.get(1)?,
        key: row.get(2)?,
        content_type: row.get(3)?,
        metadata: serde_json::from_str(&metadata).unwrap_or_default(),
        initiated: from_micros(row.get(5)?),
    })
}

const RUN_COLUMNS: &str = "id, job_id, event_id, pipeline, attempt, status, started_at, finished_at, rows_in, rows_valid, rows_quarantined, bytes_read, bytes_written, error, detail";

fn run_from_row(row: &Row<'_>) -> rusqlite::Result<Run> {
    let id: String = row.get(0)?;
    let job_id: String = row.get(1)?;
    let event_id: String = row.get(2)?;
    let status: String = row.get(5)?;
    let finished: Option<i64> = row.get(7)?;
    let detail: String = row.get(14)?;
    let n = |i: usize| -> rusqlite::Result<u64> { Ok(row.get::<_, i64>(i)?.max(0) as u64) };
    Ok(Run {
        id: Uuid::parse_str(&id).unwrap_or_default(),
        job_id: JobId(Uuid::parse_str(&job_id).unwrap_or_default()),
        event_id: Uuid::parse_str(&event_id).unwrap_or_default(),
        pipeline: row.get(3)?,
        attempt: row.get(4)?,
        status: RunStatus::parse(&status).unwrap_or(RunStatus::Failed),
        started_at: from_micros(row.get(6)?),
        finished_at: finished.map(from_micros),
        rows_in: n(8)?,
        rows_valid: n(9)?,
        rows_quarantined: n(10)?,
        bytes_read: n(11)?,
        bytes_written: n(12)?,
        error: row.get(13)?,
        detail: serde_json::from_str(&detail).unwrap_or(serde_json::Value::Null),
    })
}

impl StateStore for SqliteStore {
    fn record_event(&self, event: &Event, jobs: &[NewJob]) -> Result<i64> {
        self.with(|conn| {
            let tx = conn.transaction()?;
            let seq = insert_event(&tx, event, jobs)?;
            tx.commit()?;
            Ok(seq)
        })
    }

    fn record_write(&self, meta: &ObjectMeta, event: &Event, jobs: &[NewJob]) -> Result<i64> {
        self.with(|conn| {
            let tx = conn.transaction()?;
            tx.execute_cached(
                "INSERT INTO objects (bucket, key, size, etag, content_type, metadata, last_modified, sha256, version)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
                 ON CONFLICT(bucket, key) DO UPDATE SET size = excluded.size, etag = excluded.etag,
                     content_type = excluded.content_type, metadata = excluded.metadata,
                     last_modified = excluded.last_modified, sha256 = excluded.sha256, version = excluded.version",
                params![
                    meta.bucket,
                    meta.key,
                    meta.size as i64,
                    meta.etag,
                    meta.content_type,
                    serde_json::to_string(&meta.metadata).unwrap_or_else(|_| "{}".into()),
                    micros(meta.last_modified),
                    meta.sha256,
                    meta.version,
                ],
            )?;
            let seq = insert_event(&tx, event, jobs)?;
            tx.commit()?;
            Ok(seq)
        })
    }

    fn record_removal(&self, event: &Event, jobs: &[NewJob]) -> Result<i64> {
        self.with(|conn| {
            let tx = conn.transaction()?;
            tx.execute_cached(
                "DELETE FROM objects WHERE bucket = ?1 AND key = ?2",
                params![event.object.bucket, event.object.key],
            )?;
            let seq = insert_event(&tx, event, jobs)?;
            tx.commit()?;
            Ok(seq)
        })
    }

    fn object_meta(&self, bucket: &str, key: &str) -> Result<Option<ObjectMeta>> {
        self.with(|conn| {
            Ok(conn
                .query_row_cached(
                    &format!("SELECT {OBJECT_COLUMNS} FROM objects WHERE bucket = ?1 AND key = ?2"),
                    params![bucket, key],
                    meta_from_row,
                )
                .optional()?)
        })
    }

    fn list_objects(
        &self,
        bucket: &str,
        prefix: &str,
        after: &str,
        limit: usize,
    ) -> Result<Vec<ObjectMeta>> {
        self.with(|conn| {
            // Keys compare as bytes (S3 lists in UTF-8 binary order).
            let mut stmt = conn.prepare_cached(&format!(
                "SELECT {OBJECT_COLUMNS} FROM objects
                 WHERE bucket = ?1 AND CAST(key AS BLOB) > CAST(?2 AS BLOB)
                   AND substr(key, 1, length(?3)) = ?3
                 ORDER BY CAST(key AS BLOB) LIMIT ?4"
            ))?;
            let rows =
                stmt.query_map(params![bucket, after, prefix, limit as i64], meta_from_row)?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
    }

    fn list_buckets(&self) -> Result<Vec<(String, DateTime<Utc>)>> {
        self.with(|conn| {
            let mut stmt =
                conn.prepare_cached("SELECT name, created_at FROM buckets ORDER BY name")?;
            let rows =
                stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, from_micros(r.get(1)?))))?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
    }

    fn create_bucket(&self, name: &str, now: DateTime<Utc>) -> Result<bool> {
        self.with(|conn| {
            Ok(conn.execute_cached(
                "INSERT INTO buckets (name, created_at) VALUES (?1, ?2) ON CONFLICT(name) DO NOTHING",
                params![name, micros(now)],
            )? == 1)
        })
    }

    fn delete_bucket(&self, name: &str) -> Result<()> {
        self.with(|conn| {
            let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let objects: i64 = tx.query_row_cached(
                "SELECT COUNT(*) FROM objects WHERE bucket = ?1",
                [name],
                |r| r.get(0),
            )?;
            if objects > 0 {
                return Err(Error::BucketNotEmpty(name.to_string()));
            }
            let n = tx.execute_cached("DELETE FROM buckets WHERE name = ?1", [name])?;
            if n == 0 {
                return Err(Error::NotFound {
                    what: "bucket",
                    id: name.to_string(),
                });
            }
            tx.commit()?;
            Ok(())
        })
    }

    fn create_upload(&self, upload: &Upload) -> Result<()> {
        self.with(|conn| {
            conn.execute_cached(
                "INSERT INTO uploads (upload_id, bucket, key, content_type, metadata, initiated) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![
                    upload.upload_id,
                    upload.bucket,
                    upload.key,
                    upload.content_type,
                    serde_json::to_string(&upload.metadata).unwrap_or_else(|_| "{}".into()),
                    micros(upload.initiated),
                ],
            )?;
            Ok(())
        })
    }

    fn get_upload(&self, upload_id: &str) -> Result<Option<Upload>> {
        self.with(|conn| {
            Ok(conn
                .query_row_cached(
                    "SELECT upload_id, bucket, key, content_type, metadata, initiated FROM uploads WHERE upload_id = ?1",
                    [upload_id],
                    upload_from_row,
                )
                .optional()?)
        })
    }

    fn put_upload_part(&self, upload_id: &str, part: &UploadPart) -> Result<()> {
        self.with(|conn| {
            conn.execute_cached(
                "INSERT INTO upload_parts (upload_id, part_number, size, etag, last_modified, sha256, slot_offset)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
                 ON CONFLICT(upload_id, part_number) DO UPDATE SET size = excluded.size, etag = excluded.etag,
                     last_modified = excluded.last_modified, sha256 = excluded.sha256,
                     slot_offset = excluded.slot_offset",
                params![
                    upload_id,
                    part.part_number,
                    part.size as i64,
                    part.etag,
                    micros(part.last_modified),
                    part.sha256,
                    part.offset.map(|o| o as i64)
                ],
            )?;
            Ok(())
        })
    }

    fn list_upload_parts(&self, upload_id: &str) -> Result<Vec<UploadPart>> {
        self.with(|conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT part_number, size, etag, last_modified, sha256, slot_offset FROM upload_parts
                 WHERE upload_id = ?1 ORDER BY part_number",
            )?;
            let rows = stmt.query_map([upload_id], |r| {
                Ok(UploadPart {
                    part_number: r.get(0)?,
                    size: r.get::<_, i64>(1)?.max(0) as u64,
                    etag: r.get(2)?,
                    last_modified: from_micros(r.get(3)?),
                    sha256: r.get(4)?,
                    offset: r.get::<_, Option<i64>>(5)?.map(|o| o.max(0) as u64),
                })
            })?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
    }

    fn list_uploads(&self, bucket: &str) -> Result<Vec<Upload>> {
        self.with(|conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT upload_id, bucket, key, content_type, metadata, initiated FROM uploads WHERE bucket = ?1 ORDER BY key, initiated",
            )?;
            let rows = stmt.query_map([bucket], upload_from_row)?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
    }

    fn delete_upload(&self, upload_id: &str) -> Result<()> {
        self.with(|conn| {
            let tx = conn.transaction()?;
            tx.execute_cached("DELETE FROM upload_parts WHERE upload_id = ?1", [upload_id])?;
            tx.execute_cached("DELETE FROM uploads WHERE upload_id = ?1", [upload_id])?;
            tx.commit()?;
            Ok(())
        })
    }

    fn list_events(&self, limit: usize) -> Result<Vec<StoredEvent>> {
        self.with(|conn| {
            let mut stmt = conn.prepare_cached(&format!(
                "SELECT {EVENT_COLUMNS} FROM events ORDER BY seq DESC LIMIT ?1"
            ))?;
            let rows = stmt.query_map([limit as i64], event_from_row)?;
            rows.map(|r| check_event(r?)).collect()
        })
    }

    fn get_event(&self, id: EventId) -> Result<StoredEvent> {
        self.with(|conn| {
            let found = conn
                .query_row_cached(
                    &format!("SELECT {EVENT_COLUMNS} FROM events WHERE id = ?1"),
                    [id.to_string()],
                    event_from_row,
                )
                .optional()?;
            match found {
                Some(r) => check_event(r),
                None => Err(Error::NotFound {
                    what: "event",
                    id: id.to_string(),
                }),
            }
        })
    }

    fn lease_job(
        &self,
        worker: &str,
        now: DateTime<Utc>,
        lease: Duration,
    ) -> Result<Option<LeasedJob>> {
        self.relaxed(|conn| {
            let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let now_us = micros(now);
            let id: Option<String> = tx
                .query_row_cached(LEASE_SQL, [now_us], |r| r.get(0))
                .optional()?;
            let Some(id) = id else {
                return Ok(None);
            };
            let leased = lease_row(&tx, &id, worker, now_us, now_us + lease.as_micros() as i64)?;
            tx.commit()?;
            Ok(Some(leased))
        })
    }

    fn lease_companions(
        &self,
        worker: &str,
        now: DateTime<Utc>,
        lease: Duration,
        lead: &LeasedJob,
        limits: BatchLimits,
    ) -> Result<Vec<LeasedJob>> {
        if limits.jobs == 0 {
            return Ok(Vec::new());
        }
        self.relaxed(|conn| {
            let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let now_us = micros(now);
            let candidates: Vec<(String, String, String, i64)> = {
                let mut stmt = tx.prepare_cached(COMPANIONS_SQL)?;
                let rows = stmt.query_map(
                    params![
                        lead.job.pipeline,
                        lead.event.kind.as_str(),
                        lead.job.id.to_string(),
                        limits.object_bytes.min(i64::MAX as u64) as i64,
                        now_us,
                        // Room for jobs skipped below (a second event of one object).
                        (limits.jobs * 4) as i64,
                    ],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
                )?;
                rows.collect::<rusqlite::Result<_>>()?
            };
            // One event per object in a batch, and none of an object whose job runs
            // elsewhere: a later event of the same object waits, so an object's events
            // apply in order.
            let mut objects = std::collections::HashSet::new();
            objects.insert((
                lead.event.object.bucket.clone(),
                lead.event.object.key.clone(),
            ));
            let mut bytes = lead.event.object.size;
            let expires = now_us + lease.as_micros() as i64;
            let mut leased = Vec::new();
            for (id, bucket, key, size) in candidates {
                if leased.len() >= limits.jobs {
                    break;
                }
                let size = size.max(0) as u64;
                if bytes + size > limits.total_bytes {
                    continue;
                }
                if !objects.insert((bucket, key)) {
                    continue;
                }
                bytes += size;
                leased.push(lease_row(&tx, &id, worker, now_us, expires)?);
            }
            tx.commit()?;
            Ok(leased)
        })
    }

    fn complete_job(&self, job: JobId, worker: &str, now: DateTime<Utc>) -> Result<()> {
        self.with(|conn| end_job(conn, job, worker, JobOutcome::Done, now))
    }

    fn fail_job(
        &self,
        job: JobId,
        worker: &str,
        error: &str,
        retry_at: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
    ) -> Result<()> {
        self.with(|conn| {
            end_job(
                conn,
                job,
                worker,
                JobOutcome::Failed { error, retry_at },
                now,
            )
        })
    }

    fn extend_lease(&self, job: JobId, worker: &str, until: DateTime<Utc>) -> Result<()> {
        self.relaxed(|conn| {
            let n = conn.execute_cached(
                "UPDATE jobs SET lease_expires_at = ?3 WHERE id = ?1 AND status = 'running' AND lease_owner = ?2",
                params![job.to_string(), worker, micros(until)],
            )?;
            if n == 0 {
                return Err(Error::LeaseLost(job));
            }
            Ok(())
        })
    }

    fn recover_orphaned_jobs(&self, now: DateTime<Utc>) -> Result<usize> {
        self.with(|conn| {
            Ok(conn.execute_cached(
                "UPDATE jobs SET status = 'pending', next_run_at = ?1, lease_owner = NULL,
                     lease_expires_at = NULL, updated_at = ?1
                 WHERE status = 'running'",
                [micros(now)],
            )?)
        })
    }

    fn release_job(&self, job: JobId, worker: &str) -> Result<()> {
        self.with(|conn| {
            conn.execute_cached(
                "UPDATE jobs SET status = 'pending', attempts = MAX(attempts - 1, 0),
                     lease_owner = NULL, lease_expires_at = NULL
                 WHERE id = ?1 AND status = 'running' AND lease_owner = ?2",
                params![job.to_string(), worker],
            )?;
            Ok(())
        })
    }

    fn next_due(&self) -> Result<Option<DateTime<Utc>>> {
        self.with(|conn| {
            let at: Option<i64> = conn.query_row_cached(
                "SELECT MIN(t) FROM (
                     SELECT MIN(next_run_at) AS t FROM jobs WHERE status = 'pending'
                     UNION ALL
                     SELECT MIN(lease_expires_at) FROM jobs WHERE status = 'running')",
                [],
                |r| r.get(0),
            )?;
            Ok(at.map(from_micros))
        })
    }

    fn list_jobs(&self, limit: usize) -> Result<Vec<Job>> {
        self.with(|conn| {
            let mut stmt = conn.prepare_cached(&format!(
                "SELECT {JOB_COLUMNS} FROM jobs ORDER BY created_at DESC, id DESC LIMIT ?1"
            ))?;
            let rows = stmt.query_map([limit as i64], job_from_row)?;
            rows.map(|r| check_job(r?)).collect()
        })
    }

    fn jobs_for_event(&self, event: EventId) -> Result<Vec<Job>> {
        self.with(|conn| {
            let mut stmt = conn.prepare_cached(&format!(
                "SELECT {JOB_COLUMNS} FROM jobs WHERE event_id = ?1 ORDER BY created_at, id"
            ))?;
            let rows = stmt.query_map([event.to_string()], job_from_row)?;
            rows.map(|r| check_job(r?)).collect()
        })
    }

    fn runs_of_job(&self, job: JobId) -> Result<Vec<Run>> {
        self.with(|conn| {
            let mut stmt = conn.prepare_cached(&format!(
                "SELECT {RUN_COLUMNS} FROM runs WHERE job_id = ?1 ORDER BY started_at, id"
            ))?;
            let rows = stmt.query_map([job.0.to_string()], run_from_row)?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
    }

    fn job_counts(&self) -> Result<JobCounts> {
        self.with(|conn| {
            let mut counts = JobCounts::default();
            let mut stmt =
                conn.prepare_cached("SELECT status, COUNT(*) FROM jobs GROUP BY status")?;
            let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?;
            for row in rows {
                let (status, n) = row?;
                let n = n.max(0) as u64;
                match JobStatus::parse(&status) {
                    Some(JobStatus::Pending) => counts.pending += n,
                    Some(JobStatus::Running) => counts.running += n,
                    Some(JobStatus::Done) | Some(JobStatus::Replayed) => counts.done += n,
                    Some(JobStatus::Dead) => counts.dead += n,
                    None => {}
                }
            }
            Ok(counts)
        })
    }

    fn list_dlq(&self) -> Result<Vec<Job>> {
        self.with(|conn| {
            let mut stmt = conn.prepare_cached(&format!(
                "SELECT {JOB_COLUMNS} FROM jobs WHERE status = 'dead' ORDER BY updated_at DESC"
            ))?;
            let rows = stmt.query_map([], job_from_row)?;
            rows.map(|r| check_job(r?)).collect()
        })
    }

    fn replay_dlq(&self, job: JobId, now: DateTime<Utc>) -> Result<JobId> {
        self.with(|conn| {
            let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let found = tx
                .query_row_cached(
                    &format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?1 AND status = 'dead'"),
                    [job.to_string()],
                    job_from_row,
                )
                .optional()?;
            let Some(found) = found else {
                return Err(Error::NotFound {
                    what: "dead-lettered job",
                    id: job.to_string(),
                });
            };
            let dead = check_job(found)?;
            let new_id = JobId(Uuid::now_v7());
            tx.execute_cached(
                "INSERT INTO jobs (id, event_id, pipeline, trigger_name, status, attempts, max_attempts, next_run_at, created_at, updated_at, replay_of)
                 VALUES (?1, ?2, ?3, ?4, 'pending', 0, ?5, ?6, ?6, ?6, ?7)",
                params![
                    new_id.to_string(),
                    dead.event_id.to_string(),
                    dead.pipeline,
                    dead.trigger,
                    dead.max_attempts,
                    micros(now),
                    job.to_string(),
                ],
            )?;
            tx.execute_cached(
                "UPDATE jobs SET status = 'replayed', updated_at = ?2 WHERE id = ?1",
                params![job.to_string(), micros(now)],
            )?;
            tx.commit()?;
            Ok(new_id)
        })
    }

    fn save_run(&self, run: &Run) -> Result<()> {
        self.with(|conn| save_run(conn, run))
    }

    fn save_runs(&self, runs: &[&Run]) -> Result<()> {
        self.relaxed(|conn| {
            let tx = conn.transaction()?;
            for run in runs {
                save_run(&tx, run)?;
            }
            tx.commit()?;
            Ok(())
        })
    }

    fn end_jobs(
        &self,
        worker: &str,
        ends: &[JobEnd<'_>],
        now: DateTime<Utc>,
    ) -> Result<Vec<JobId>> {
        self.relaxed(|conn| {
            let tx = conn.transaction()?;
            let mut lost = Vec::new();
            for end in ends {
                // The run is final before its job is (and both in this one commit).
                save_run(&tx, end.run)?;
                match end_job(&tx, end.run.job_id, worker, end.outcome, now) {
                    Ok(()) => {}
                    Err(Error::LeaseLost(job)) => lost.push(job),
                    Err(e) => return Err(e),
                }
            }
            tx.commit()?;
            Ok(lost)
        })
    }

    fn list_runs(&self, limit: usize) -> Result<Vec<Run>> {
        self.with(|conn| {
            let mut stmt = conn.prepare_cached(&format!(
                "SELECT {RUN_COLUMNS} FROM runs ORDER BY started_at DESC, id DESC LIMIT ?1"
            ))?;
            let rows = stmt.query_map([limit as i64], run_from_row)?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
    }

    fn get_run(&self, id: &str) -> Result<Run> {
        self.with(|conn| {
            let pattern = format!("{}%", id.replace(['%', '_'], ""));
            let mut stmt = conn.prepare_cached(&format!(
                "SELECT {RUN_COLUMNS} FROM runs WHERE id LIKE ?1 ORDER BY started_at LIMIT 2"
            ))?;
            let mut runs = stmt
                .query_map([pattern], run_from_row)?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            if runs.len() == 1 && !id.is_empty() {
                Ok(runs.remove(0))
            } else {
                Err(Error::NotFound {
                    what: if runs.is_empty() {
                        "run"
                    } else {
                        "unique run for prefix"
                    },
                    id: id.to_string(),
                })
            }
        })
    }

    fn claim_idempotency_key(
        &self,
        key: &str,
        result: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<String>> {
        self.with(|conn| {
            let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let existing: Option<String> = tx
                .query_row_cached(
                    "SELECT result FROM idempotency_keys WHERE key = ?1",
                    [key],
                    |r| r.get(0),
                )
                .optional()?;
            if existing.is_none() {
                tx.execute_cached(
                    "INSERT INTO idempotency_keys (key, result, created_at) VALUES (?1, ?2, ?3)",
                    params![key, result, micros(now)],
                )?;
            }
            tx.commit()?;
            Ok(existing)
        })
    }

    fn table_versions(&self, table: &str) -> Result<Vec<TableVersion>> {
        self.with(|conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT name, layer, version, schema, partition_by, description, owner, location, registered_at
                 FROM catalog_tables WHERE name = ?1 ORDER BY version",
            )?;
            let rows = stmt.query_map([table], |r| {
                let schema: String = r.get(3)?;
                let partition_by: String = r.get(4)?;
                Ok(TableVersion {
                    table: r.get(0)?,
                    layer: r.get(1)?,
                    version: r.get(2)?,
                    schema: serde_json::from_str(&schema).unwrap_or(serde_json::Value::Null),
                    partition_by: serde_json::from_str(&partition_by).unwrap_or_default(),
                    description: r.get(5)?,
                    owner: r.get(6)?,
                    location: r.get(7)?,
                    registered_at: from_micros(r.get(8)?),
                })
            })?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
    }

    fn register_table_version(&self, v: &TableVersion) -> Result<()> {
        self.with(|conn| {
            conn.execute_cached(
                "INSERT INTO catalog_tables (name, version, layer, schema, partition_by, description, owner, location, registered_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
                 ON CONFLICT(name, version) DO UPDATE SET description = excluded.description,
                     owner = excluded.owner, schema = excluded.schema, layer = excluded.layer",
                params![
                    v.table,
                    v.version,
                    v.layer,
                    v.schema.to_string(),
                    serde_json::to_string(&v.partition_by).unwrap_or_else(|_| "[]".into()),
                    v.description,
                    v.owner,
                    v.location,
                    micros(v.registered_at),
                ],
            )?;
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests;
