//! Plain rows of the state store.

use chrono::{DateTime, Utc};
use sluice_model::event::Event;
use uuid::Uuid;

/// A job id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct JobId(pub Uuid);

impl std::fmt::Display for JobId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::str::FromStr for JobId {
    type Err = uuid::Error;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Uuid::parse_str(s).map(JobId)
    }
}

/// A job to create with an event.
#[derive(Debug, Clone)]
pub struct NewJob {
    /// The pipeline to run.
    pub pipeline: String,
    /// The trigger that matched.
    pub trigger: String,
    /// Attempts in all before dead-lettering.
    pub max_attempts: u32,
}

/// Where a job is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobStatus {
    /// Waiting to be leased (maybe after a backoff).
    Pending,
    /// Leased by a worker.
    Running,
    /// Finished successfully.
    Done,
    /// Out of attempts (or failed permanently): in the dead-letter queue.
    Dead,
    /// Dead-lettered, then replayed as a new job.
    Replayed,
}

impl JobStatus {
    /// Stable name.
    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Pending => "pending",
            JobStatus::Running => "running",
            JobStatus::Done => "done",
            JobStatus::Dead => "dead",
            JobStatus::Replayed => "replayed",
        }
    }
    /// Parses a stable name.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "pending" => JobStatus::Pending,
            "running" => JobStatus::Running,
            "done" => JobStatus::Done,
            "dead" => JobStatus::Dead,
            "replayed" => JobStatus::Replayed,
            _ => return None,
        })
    }
}

/// A job as stored.
#[derive(Debug, Clone)]
pub struct Job {
    /// Id.
    pub id: JobId,
    /// The triggering event's id.
    pub event_id: Uuid,
    /// Pipeline.
    pub pipeline: String,
    /// Trigger that created it (or `replay`).
    pub trigger: String,
    /// Status.
    pub status: JobStatus,
    /// Attempts started so far.
    pub attempts: u32,
    /// Attempts allowed.
    pub max_attempts: u32,
    /// When it may next run.
    pub next_run_at: DateTime<Utc>,
    /// Last error.
    pub last_error: Option<String>,
    /// Created.
    pub created_at: DateTime<Utc>,
    /// Last change.
    pub updated_at: DateTime<Utc>,
    /// For a replayed job, the dead job it replays.
    pub replay_of: Option<JobId>,
}

/// A leased job with its event.
#[derive(Debug, Clone)]
pub struct LeasedJob {
    /// The job (attempts already counts this attempt).
    pub job: Job,
    /// The event that triggered it.
    pub event: Event,
    /// The event's sequence number (monotonic across the store).
    pub event_seq: i64,
}

/// How many jobs one batch may take ([`crate::StateStore::lease_companions`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchLimits {
    /// Most jobs besides the lead.
    pub jobs: usize,
    /// Largest object a companion's event may name.
    pub object_bytes: u64,
    /// Most bytes of all the batch's objects, the lead's included.
    pub total_bytes: u64,
}

/// How a leased job's run ended, for [`crate::StateStore::end_jobs`].
#[derive(Debug, Clone, Copy)]
pub struct JobEnd<'a> {
    /// The finished run, saved with its final status.
    pub run: &'a Run,
    /// What becomes of the job.
    pub outcome: JobOutcome<'a>,
}

/// What becomes of a job after a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobOutcome<'a> {
    /// Done ([`crate::StateStore::complete_job`]).
    Done,
    /// Failed: retried at `retry_at`, or dead-lettered when `None` ([`crate::StateStore::fail_job`]).
    Failed {
        /// Why.
        error: &'a str,
        /// When to try again.
        retry_at: Option<DateTime<Utc>>,
    },
}

/// An event as stored, with its sequence number.
#[derive(Debug, Clone)]
pub struct StoredEvent {
    /// Monotonic sequence number.
    pub seq: i64,
    /// The event.
    pub event: Event,
}

/// Counts of jobs by status.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct JobCounts {
    /// Pending.
    pub pending: u64,
    /// Running.
    pub running: u64,
    /// Done.
    pub done: u64,
    /// Dead.
    pub dead: u64,
}

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunStatus {
    /// Still going.
    Running,
    /// Published its effects.
    Succeeded,
    /// Nothing to do: the effect was already applied (same object, same content) or superseded.
    Skipped,
    /// Failed (see error); the job may be retried.
    Failed,
}

impl RunStatus {
    /// Stable name.
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Running => "running",
            RunStatus::Succeeded => "succeeded",
            RunStatus::Skipped => "skipped",
            RunStatus::Failed => "failed",
        }
    }
    /// Parses a stable name.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "running" => RunStatus::Running,
            "succeeded" => RunStatus::Succeeded,
            "skipped" => RunStatus::Skipped,
            "failed" => RunStatus::Failed,
            _ => return None,
        })
    }
}

/// One attempt at a job.
#[derive(Debug, Clone)]
pub struct Run {
    /// Id (UUID v7).
    pub id: Uuid,
    /// The job.
    pub job_id: JobId,
    /// The triggering event.
    pub event_id: Uuid,
    /// Pipeline.
    pub pipeline: String,
    /// Attempt number, from 1.
    pub attempt: u32,
    /// Status.
    pub status: RunStatus,
    /// Started.
    pub started_at: DateTime<Utc>,
    /// Finished.
    pub finished_at: Option<DateTime<Utc>>,
    /// Source rows read.
    pub rows_in: u64,
    /// Rows that passed the contract.
    pub rows_valid: u64,
    /// Rows sent to quarantine.
    pub rows_quarantined: u64,
    /// Bytes read from the object store.
    pub bytes_read: u64,
    /// Bytes of Parquet written.
    pub bytes_written: u64,
    /// Why it failed or was skipped.
    pub error: Option<String>,
    /// Step details: per-step tables, partitions, per-reason quarantine counts (JSON).
    pub detail: serde_json::Value,
}

/// One registered version of a table's schema.
#[derive(Debug, Clone, PartialEq)]
pub struct TableVersion {
    /// Table name.
    pub table: String,
    /// Layer name.
    pub layer: String,
    /// Schema version.
    pub version: u32,
    /// Columns as JSON: `[{"name":…,"type":…,"nullable":…}]`.
    pub schema: serde_json::Value,
    /// Partition columns.
    pub partition_by: Vec<String>,
    /// Description.
    pub description: Option<String>,
    /// Owner.
    pub owner: Option<String>,
    /// Where the table's data lives, relative to the lake root.
    pub location: String,
    /// When this version was first registered.
    pub registered_at: DateTime<Utc>,
}

/// What S3 clients see of an object besides its bytes.
#[derive(Debug, Clone, PartialEq)]
pub struct ObjectMeta {
    /// Bucket.
    pub bucket: String,
    /// Key.
    pub key: String,
    /// Size in bytes.
    pub size: u64,
    /// The ETag as S3 computes it (hex MD5, or `md5-of-part-md5s-N` for multipart uploads).
    pub etag: String,
    /// Content type given at upload.
    pub content_type: Option<String>,
    /// User metadata (`x-amz-meta-*`).
    pub metadata: std::collections::BTreeMap<String, String>,
    /// Last write.
    pub last_modified: DateTime<Utc>,
    /// SHA-256 of the content, hex.
    pub sha256: String,
    /// The object's version (as in its events).
    pub version: String,
}

/// A multipart upload in progress.
#[derive(Debug, Clone, PartialEq)]
pub struct Upload {
    /// Upload id.
    pub upload_id: String,
    /// Target bucket.
    pub bucket: String,
    /// Target key.
    pub key: String,
    /// Content type to give the object.
    pub content_type: Option<String>,
    /// User metadata to give the object.
    pub metadata: std::collections::BTreeMap<String, String>,
    /// When it started.
    pub initiated: DateTime<Utc>,
}

/// One uploaded part.
#[derive(Debug, Clone, PartialEq)]
pub struct UploadPart {
    /// Part number (1..=10000).
    pub part_number: u32,
    /// Size in bytes.
    pub size: u64,
    /// Hex MD5 of the part.
    pub etag: String,
    /// Hex SHA-256 of the part; empty for parts stored before sluice recorded it.
    pub sha256: String,
    /// Where the part's bytes start in the upload's slot file, when they were written in
    /// place; `None` when the part has a file of its own.
    pub offset: Option<u64>,
    /// When it was uploaded.
    pub last_modified: DateTime<Utc>,
}
