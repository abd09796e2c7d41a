//! The event model: everything that happens is an [`Event`] with an id, a kind and a time.
//!
//! Events are CloudEvents-shaped (id, source, type, time, correlation id,
//! schema version) so schedule ticks, change streams and custom events can
//! join object events later without a second model.

use chrono::{DateTime, Utc};
use uuid::Uuid;

/// The source of an event a workflow's pipeline task records to run a pipeline
/// on an object already in the landing zone: a re-run, not a write (rules do
/// not route it, or a rule running a pipeline would start itself).
pub const SOURCE_WORKFLOW_RERUN: &str = "sluice:workflow";

/// Version of the event payload shape; bumped when fields change meaning.
pub const EVENT_SCHEMA_VERSION: u32 = 1;

/// A unique event id (UUID v7: time-ordered).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EventId(pub Uuid);

impl EventId {
    /// A new time-ordered id.
    pub fn new() -> Self {
        Self(Uuid::now_v7())
    }
}

impl Default for EventId {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Display for EventId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// What kind of thing happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// An object was written (any writer: CLI, HTTP, watched folder).
    ObjectCreated,
    /// An object was deleted.
    ObjectRemoved,
}

impl EventKind {
    /// The stable name used in sluice.toml triggers and in the events table.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::ObjectCreated => "object-created",
            EventKind::ObjectRemoved => "object-removed",
        }
    }
    /// Parses the stable name.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "object-created" => Some(EventKind::ObjectCreated),
            "object-removed" => Some(EventKind::ObjectRemoved),
            _ => None,
        }
    }
}

/// The object an object event is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectRef {
    /// Bucket name.
    pub bucket: String,
    /// Object key within the bucket.
    pub key: String,
    /// Size in bytes (0 for removals).
    pub size: u64,
    /// SHA-256 of the content, hex (empty for removals).
    pub sha256: String,
    /// The object's version: the content hash's first 16 hex digits plus the write time, unique per write.
    pub version: String,
}

/// Something that happened, durably recorded before the write that caused it is acknowledged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// Unique id.
    pub id: EventId,
    /// What happened.
    pub kind: EventKind,
    /// Who produced it (`sluice:put`, `sluice:http`, `sluice:s3`, `sluice:watch`, or
    /// [`SOURCE_WORKFLOW_RERUN`]).
    pub source: String,
    /// When it happened.
    pub time: DateTime<Utc>,
    /// Groups events caused by one action (a replay carries its original's id).
    pub correlation_id: Uuid,
    /// The object, for object events.
    pub object: ObjectRef,
}
