//! sluice-state: everything that must survive a crash, behind one interface.
//!
//! [`StateStore`] is the only door to durable state: events, jobs with leases,
//! runs, the dead-letter queue, idempotency keys and the table catalog;
//! [`ExecutionStore`] keeps durable workflow executions.
//! [`SqliteStore`] is the embedded default (one file, WAL); a PostgreSQL
//! store implements the same trait for scale-out. **Invariant:** no other
//! crate speaks SQL to the state store; rows here are plain structs, and
//! conversions to wire formats live at the edges.
//!
//! ```
//! use sluice_state::{SqliteStore, StateStore};
//! let store = SqliteStore::open_in_memory().unwrap();
//! assert!(store.list_runs(10).unwrap().is_empty());
//! ```
#![warn(missing_docs)]

mod executions;
mod sqlite;
mod types;

pub use executions::*;
pub use sqlite::{SqliteStore, SyncStats};
pub use types::*;

use chrono::{DateTime, Utc};
use sluice_model::ErrorCode;
use sluice_model::event::{Event, EventId};

/// Errors of the state store.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The database could not be opened or answered with an error.
    #[error("state store: {0}")]
    Db(#[from] rusqlite::Error),
    /// Commits could not be made durable (an fsync of the WAL failed); every later
    /// commit fails too until sluice restarts and recovers what the disk holds.
    #[error("state store: {0}; restart sluice")]
    Durability(String),
    /// A row that should exist does not.
    #[error("{what} {id} not found")]
    NotFound {
        /// What kind of row.
        what: &'static str,
        /// Its id.
        id: String,
    },
    /// The job's lease was lost (it expired and another worker took it).
    #[error("lease on job {0} is no longer held by this worker")]
    LeaseLost(JobId),
    /// A bucket still holds objects.
    #[error("bucket {0} is not empty")]
    BucketNotEmpty(String),
    /// A stored value could not be read back; this is a bug in sluice or a damaged file.
    #[error("state store holds a bad value in {column}: {why} (this is a bug in sluice)")]
    Corrupt {
        /// Where.
        column: &'static str,
        /// Why.
        why: String,
    },
}

impl Error {
    /// The edge error code.
    pub fn code(&self) -> ErrorCode {
        match self {
            Error::Db(_) | Error::Durability(_) => ErrorCode::Unavailable,
            Error::NotFound { .. } => ErrorCode::NotFound,
            Error::LeaseLost(_) | Error::BucketNotEmpty(_) => ErrorCode::Conflict,
            Error::Corrupt { .. } => ErrorCode::Internal,
        }
    }
}

/// Result alias of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Durable state. Every method is one transaction.
pub trait StateStore: Send + Sync {
    /// Records an event and the jobs it starts, atomically. Returns the event's sequence number.
    fn record_event(&self, event: &Event, jobs: &[NewJob]) -> Result<i64>;
    /// Records a completed write: the object's metadata, its object-created event and the jobs it starts, atomically.
    fn record_write(&self, meta: &ObjectMeta, event: &Event, jobs: &[NewJob]) -> Result<i64>;
    /// Records a deletion: drops the object's metadata and records its object-removed event and jobs, atomically.
    fn record_removal(&self, event: &Event, jobs: &[NewJob]) -> Result<i64>;
    /// An object's metadata.
    fn object_meta(&self, bucket: &str, key: &str) -> Result<Option<ObjectMeta>>;
    /// Objects of a bucket with keys starting with `prefix` and greater than `after`, in key order.
    fn list_objects(
        &self,
        bucket: &str,
        prefix: &str,
        after: &str,
        limit: usize,
    ) -> Result<Vec<ObjectMeta>>;

    /// Buckets with their creation time, by name.
    fn list_buckets(&self) -> Result<Vec<(String, DateTime<Utc>)>>;
    /// Creates a bucket; false if it already existed.
    fn create_bucket(&self, name: &str, now: DateTime<Utc>) -> Result<bool>;
    /// Deletes an empty bucket; Err(Conflict-like NotEmpty) when it holds objects.
    fn delete_bucket(&self, name: &str) -> Result<()>;

    /// Starts a multipart upload.
    fn create_upload(&self, upload: &Upload) -> Result<()>;
    /// A multipart upload in progress.
    fn get_upload(&self, upload_id: &str) -> Result<Option<Upload>>;
    /// Records an uploaded part (replacing an earlier upload of the same number).
    fn put_upload_part(&self, upload_id: &str, part: &UploadPart) -> Result<()>;
    /// The parts of an upload, by number.
    fn list_upload_parts(&self, upload_id: &str) -> Result<Vec<UploadPart>>;
    /// Uploads in progress in a bucket, by key then start time.
    fn list_uploads(&self, bucket: &str) -> Result<Vec<Upload>>;
    /// Forgets an upload and its parts (completed or aborted).
    fn delete_upload(&self, upload_id: &str) -> Result<()>;
    /// Newest events first.
    fn list_events(&self, limit: usize) -> Result<Vec<StoredEvent>>;
    /// One event by id.
    fn get_event(&self, id: EventId) -> Result<StoredEvent>;

    /// Takes the next due job (pending and `next_run_at <= now`, or running with an expired lease), leasing it to `worker` until `now + lease`.
    fn lease_job(
        &self,
        worker: &str,
        now: DateTime<Utc>,
        lease: std::time::Duration,
    ) -> Result<Option<LeasedJob>>;
    /// Leases more due jobs to run in one batch with `lead`: jobs of its pipeline whose
    /// events are of its kind, about other objects (one event per object, none of an
    /// object with a job running), oldest event first, within `limits`. Empty when none is due.
    fn lease_companions(
        &self,
        worker: &str,
        now: DateTime<Utc>,
        lease: std::time::Duration,
        lead: &LeasedJob,
        limits: BatchLimits,
    ) -> Result<Vec<LeasedJob>>;
    /// Marks a leased job done.
    fn complete_job(&self, job: JobId, worker: &str, now: DateTime<Utc>) -> Result<()>;
    /// Records a failed attempt: the job is retried at `retry_at`, or dead-lettered when `None`.
    fn fail_job(
        &self,
        job: JobId,
        worker: &str,
        error: &str,
        retry_at: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
    ) -> Result<()>;
    /// Extends a held lease to `until` (the heartbeat of a long run).
    fn extend_lease(&self, job: JobId, worker: &str, until: DateTime<Utc>) -> Result<()>;
    /// Makes every running job due again: called by the one process that owns an embedded data directory at start-up, when any running job belongs to a process that died.
    fn recover_orphaned_jobs(&self, now: DateTime<Utc>) -> Result<usize>;
    /// Gives a leased job back without counting the attempt (graceful shutdown).
    fn release_job(&self, job: JobId, worker: &str) -> Result<()>;
    /// When the next pending job becomes due, if any.
    fn next_due(&self) -> Result<Option<DateTime<Utc>>>;
    /// Jobs, newest first.
    fn list_jobs(&self, limit: usize) -> Result<Vec<Job>>;
    /// Counts of jobs by status.
    fn job_counts(&self) -> Result<JobCounts>;
    /// The jobs an event started.
    fn jobs_for_event(&self, event: EventId) -> Result<Vec<Job>>;
    /// The runs (attempts) of a job, oldest first.
    fn runs_of_job(&self, job: JobId) -> Result<Vec<Run>>;

    /// Dead-lettered jobs not yet replayed, newest first.
    fn list_dlq(&self) -> Result<Vec<Job>>;
    /// Puts a dead job back in the queue as a new job for the same event and pipeline; returns the new job's id.
    fn replay_dlq(&self, job: JobId, now: DateTime<Utc>) -> Result<JobId>;

    /// Records a run (insert or update by id).
    fn save_run(&self, run: &Run) -> Result<()>;
    /// Records runs (insert or update by id), all in one transaction: a batch's starts.
    /// A store may commit them without waiting for the disk (a power loss may forget a
    /// start; the run's end is recorded durably by [`StateStore::end_jobs`]), as it may
    /// a lease and its extension: a forgotten lease makes its job due again.
    fn save_runs(&self, runs: &[&Run]) -> Result<()>;
    /// Ends a batch's jobs in one transaction: each run is saved, then its job completed,
    /// retried or dead-lettered, as [`StateStore::complete_job`] and
    /// [`StateStore::fail_job`] would. A job whose lease `worker` lost keeps its state (its
    /// run is still saved); those jobs are returned.
    fn end_jobs(&self, worker: &str, ends: &[JobEnd<'_>], now: DateTime<Utc>)
    -> Result<Vec<JobId>>;
    /// Newest runs first.
    fn list_runs(&self, limit: usize) -> Result<Vec<Run>>;
    /// One run by id or unique id prefix.
    fn get_run(&self, id: &str) -> Result<Run>;

    /// Claims an idempotency key; returns the stored result if it was claimed before.
    fn claim_idempotency_key(
        &self,
        key: &str,
        result: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<String>>;

    /// The registered versions of a table's schema, oldest first.
    fn table_versions(&self, table: &str) -> Result<Vec<TableVersion>>;
    /// Registers (or refreshes the metadata of) one version of a table's schema.
    fn register_table_version(&self, version: &TableVersion) -> Result<()>;
}
