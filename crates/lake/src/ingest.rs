//! Source objects → one atomic commit to a silver table, plus their quarantine.
//!
//! Each object is streamed (bounded memory: a few batches in flight) from a blocking
//! reader thread that parses and validates, to an async writer that streams Parquet
//! files. A batch of several small objects ([`ingest_batch`]) is read one object after
//! another, their valid rows kept until each object is known good, then written
//! together into shared files (tagged `sluice.compacted`, like compaction's, so
//! replacing one object later rewrites them without its rows). Nothing is visible until
//! the commit at the end, which records every object's idempotency keys, so any crash
//! before it leaves the table unchanged and a retry starts over cleanly. An object that
//! fails (a bad file, too many invalid rows, replaced since its event) drops out of its
//! batch alone.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::sync::Arc;

use arrow::array::{
    Array as _, ArrayRef, AsArray as _, Int64Array, RecordBatch, StringArray,
    TimestampMicrosecondArray, UInt32Array,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use chrono::Utc;
use deltalake::kernel::{Add, Remove};
use deltalake::protocol::{DeltaOperation, SaveMode};
use futures::StreamExt;
use sha2::{Digest, Sha256};
use sluice_model::event::ObjectRef;
use sluice_model::key::{BucketName, ObjectKey};
use uuid::Uuid;

use crate::delta::{self, FileWriter, TAG_COMPACTED, TAG_SHA256, TAG_SOURCE};
use crate::objects::{ObjectReader, Objects};
use crate::read::{self, SourceFormat};
use crate::tail::{self, Tail};
use crate::validate::{CompiledContract, Rejection, Validated, count_reasons, repeated_text};
use crate::{Error, LakePaths};

/// The silver table a batch of objects goes into.
pub struct Target<'a> {
    /// Silver table name.
    pub table: &'a str,
    /// Its location in the lake.
    pub location: &'a str,
    /// Its partition columns.
    pub partition_by: &'a [String],
    /// Its description.
    pub description: Option<&'a str>,
    /// Its compiled contract.
    pub compiled: &'a Arc<CompiledContract>,
    /// Largest invalid share (percent) that still publishes.
    pub max_invalid_pct: f64,
    /// Rows per batch.
    pub batch_rows: usize,
    /// Open tables, brought up to date incrementally.
    pub tables: &'a delta::TableCache,
    /// Whether a batch of small objects may be appended to the tables' write-ahead tails
    /// ([`crate::tail`]) instead of committed to Delta at once: rows queryable in
    /// milliseconds, committed by the next [`crate::tail::flush`].
    pub tail: bool,
}

/// One object of a batch.
#[derive(Debug, Clone, Copy)]
pub struct Source<'a> {
    /// The source object.
    pub object: &'a ObjectRef,
    /// The event's sequence number: the commit's idempotency version.
    pub event_seq: i64,
    /// The run, recorded with quarantined rows.
    pub run_id: Uuid,
}

/// How an ingest ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Committed as this table version.
    Applied {
        /// Delta version of the commit.
        version: i64,
    },
    /// Durable and queryable in the table's tail; the next flush commits it to Delta.
    Logged {
        /// The tail entry's sequence number.
        seq: u64,
    },
    /// The table already holds this event or this exact content: nothing changed.
    AlreadyApplied,
    /// The object changed after this event; the newer event's run ingests it.
    Superseded,
}

/// What an ingest did.
#[derive(Debug, Clone)]
pub struct IngestReport {
    /// Outcome.
    pub outcome: Outcome,
    /// Source rows read.
    pub rows_in: u64,
    /// Valid rows.
    pub rows_valid: u64,
    /// Quarantined rows.
    pub rows_quarantined: u64,
    /// Quarantined rows by reason code.
    pub reasons: BTreeMap<String, u64>,
    /// Partitions written (`year=2024/month=1/...`).
    pub partitions: BTreeSet<String>,
    /// Bytes read from the object.
    pub bytes_read: u64,
    /// Bytes of Parquet written (silver and quarantine).
    pub bytes_written: u64,
}

impl IngestReport {
    fn empty(outcome: Outcome) -> Self {
        Self {
            outcome,
            rows_in: 0,
            rows_valid: 0,
            rows_quarantined: 0,
            reasons: BTreeMap::new(),
            partitions: BTreeSet::new(),
            bytes_read: 0,
            bytes_written: 0,
        }
    }
}

/// The quarantine table's name in commits, errors and commands (its app ids are
/// `table:bucket/key`).
pub const QUARANTINE_TABLE: &str = "quarantine";
/// The quarantine table's partition column.
pub const QUARANTINE_PARTITION: &str = "table_name";
/// The quarantine table's column naming a row's source object.
pub const QUARANTINE_SOURCE_COLUMN: &str = "source_object";
/// The quarantine table's description in its Delta metadata.
pub const QUARANTINE_DESCRIPTION: &str =
    "rows rejected by a contract, with reason, source object and line";

/// The quarantine table's schema: one row per rejected source row.
pub fn quarantine_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("table_name", DataType::Utf8, false),
        Field::new("reason_code", DataType::Utf8, false),
        Field::new("reason", DataType::Utf8, false),
        Field::new("column_name", DataType::Utf8, true),
        Field::new(QUARANTINE_SOURCE_COLUMN, DataType::Utf8, false),
        Field::new("source_version", DataType::Utf8, false),
        Field::new("line", DataType::Int64, false),
        Field::new("raw", DataType::Utf8, false),
        Field::new("run_id", DataType::Utf8, false),
        Field::new(
            "quarantined_at",
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            false,
        ),
    ]))
}

/// Writes a staged tail entry, if any, without publishing it.
async fn write_staged(
    staged: Option<tail::Staged<'_>>,
) -> Result<Option<tail::Written<'_>>, Error> {
    match staged {
        Some(staged) => staged.write().await.map(Some),
        None => Ok(None),
    }
}

fn quarantine_batch(
    table: &str,
    object: &ObjectRef,
    run_id: Uuid,
    rejected: &[Rejection],
) -> Result<RecordBatch, Error> {
    let n = rejected.len();
    let source = format!("{}/{}", object.bucket, object.key);
    let now = Utc::now().timestamp_micros();
    let columns: Vec<ArrayRef> = vec![
        Arc::new(repeated_text(table, n)),
        Arc::new(StringArray::from_iter_values(
            rejected.iter().map(|r| r.code.as_str()),
        )),
        Arc::new(StringArray::from_iter_values(
            rejected.iter().map(|r| r.message.as_str()),
        )),
        Arc::new(StringArray::from_iter(
            rejected.iter().map(|r| r.column.as_deref()),
        )),
        Arc::new(repeated_text(&source, n)),
        Arc::new(repeated_text(&object.version, n)),
        Arc::new(Int64Array::from_iter_values(
            rejected.iter().map(|r| r.line as i64),
        )),
        Arc::new(StringArray::from_iter_values(
            rejected.iter().map(|r| r.raw.as_str()),
        )),
        Arc::new(repeated_text(&run_id.to_string(), n)),
        Arc::new(TimestampMicrosecondArray::from(vec![now; n]).with_timezone("UTC")),
    ];
    RecordBatch::try_new(quarantine_schema(), columns)
        .map_err(|e| Error::Internal(format!("building a quarantine batch: {e}")))
}

/// A reader that hashes and counts what passes through it.
struct Hashing<R> {
    inner: R,
    hasher: Sha256,
    bytes: u64,
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
}

/// What the reader thread sends: validated rows, then the end of the source.
enum Chunk {
    Rows {
        validated: Validated,
        rows_in: u64,
    },
    /// The source is read: its SHA-256 (None when its store version vouched for it) and size.
    Done {
        sha256: Option<String>,
        bytes: u64,
    },
}

/// Ingests one object into a silver table, exactly once.
pub async fn ingest(
    paths: &LakePaths,
    objects: &Objects,
    target: &Target<'_>,
    source: Source<'_>,
) -> Result<IngestReport, Error> {
    ingest_batch(paths, objects, target, &[source])
        .await?
        .pop()
        .unwrap_or_else(|| Err(Error::Internal("a batch of one returned nothing".into())))
}

/// Ingests a batch of objects (of distinct keys) into a silver table in one commit, each
/// exactly once. The outer error fails the whole batch (nothing of it was published to
/// silver); otherwise each object has its own outcome, in order.
pub async fn ingest_batch(
    paths: &LakePaths,
    objects: &Objects,
    target: &Target<'_>,
    sources: &[Source<'_>],
) -> Result<Vec<Result<IngestReport, Error>>, Error> {
    ingest_batch_when(paths, objects, target, sources, async { Ok(()) }).await
}

/// [`ingest_batch`], publishing nothing until `ready` succeeds: it runs beside the
/// objects' reads (a bronze copy's fsyncs wait on the disk while the rows are parsed and
/// checked, instead of before) and is awaited before any row is made durable or visible.
/// Its error fails the whole batch.
pub async fn ingest_batch_when(
    paths: &LakePaths,
    objects: &Objects,
    target: &Target<'_>,
    sources: &[Source<'_>],
    ready: impl std::future::Future<Output = Result<(), Error>>,
) -> Result<Vec<Result<IngestReport, Error>>, Error> {
    let silver_url = paths.url(target.location)?;
    let quarantine_url = paths.url(LakePaths::QUARANTINE)?;
    // Tail entries are captured before the tables' versions are read: an entry a flush
    // moves into Delta meanwhile is then seen in one or the other, never in neither.
    let silver_before = target.tables.tail(&silver_url).map(|t| t.capture());
    let quarantine_before = target.tables.tail(&quarantine_url).map(|t| t.capture());
    let silver = target
        .tables
        .latest_or_create(
            target.table,
            silver_url.clone(),
            &target.compiled.output_schema(),
            target.partition_by,
            target.description,
        )
        .await?;
    let quarantine = target
        .tables
        .latest_or_create(
            "quarantine",
            quarantine_url.clone(),
            &quarantine_schema(),
            &[QUARANTINE_PARTITION.to_string()],
            Some(QUARANTINE_DESCRIPTION),
        )
        .await?;
    let silver_tail = target.tables.tail(&silver_url);
    let quarantine_tail = target.tables.tail(&quarantine_url);
    let silver_entries = silver_before
        .or_else(|| silver_tail.as_ref().map(|t| t.capture()))
        .unwrap_or_default();
    let quarantine_entries = quarantine_before
        .or_else(|| quarantine_tail.as_ref().map(|t| t.capture()))
        .unwrap_or_default();
    let use_tail = target.tail
        && silver_tail.is_some()
        && quarantine_tail.is_some()
        && sources.iter().all(|s| s.object.size <= SMALL_OBJECT_BYTES);
    let mut batch = Batch {
        target,
        silver,
        quarantine,
        written_silver: Vec::new(),
        written_quarantine: Vec::new(),
        tails: Tails {
            silver: silver_tail,
            quarantine: quarantine_tail,
            silver_entries,
            quarantine_entries,
            use_tail,
        },
    };
    let results = batch.run(objects, sources, ready).await;
    if results.is_err() {
        // Files written but never committed are invisible; delete them (best effort: a
        // failed delete leaves an orphan file, never a visible row).
        let _ = delta::discard(target.table, &batch.silver, &batch.written_silver).await;
        let _ = delta::discard("quarantine", &batch.quarantine, &batch.written_quarantine).await;
    }
    target.tables.keep(&silver_url, &batch.silver);
    target.tables.keep(&quarantine_url, &batch.quarantine);
    results
}

/// A batch in progress: the tables and every file written so far (to delete on failure).
struct Batch<'a> {
    target: &'a Target<'a>,
    silver: deltalake::DeltaTable,
    quarantine: deltalake::DeltaTable,
    written_silver: Vec<Add>,
    written_quarantine: Vec<Add>,
    tails: Tails,
}

/// The tables' tails, as a batch sees them.
struct Tails {
    silver: Option<Arc<Tail>>,
    quarantine: Option<Arc<Tail>>,
    /// Entries captured before the tables were read (for exactly-once lookups).
    silver_entries: Vec<Arc<tail::Entry>>,
    quarantine_entries: Vec<Arc<tail::Entry>>,
    /// Whether this batch appends to the tails; it stops when an object must replace
    /// rows already committed (a tail only appends).
    use_tail: bool,
}

impl Tails {
    /// Whether a tail holds rows, not yet committed, of this app id.
    fn waiting(tail: &Option<Arc<Tail>>, app: &str) -> bool {
        tail.as_ref()
            .is_some_and(|t| t.holds_any(&[delta::app_id(app)]))
    }
}

/// An object read to the end, its valid rows not yet published.
struct ReadObject {
    report: IngestReport,
    silver: SilverRows,
    quarantine_adds: Vec<Add>,
    /// Quarantined rows kept in memory (a batch that appends to the tails).
    quarantine_rows: Vec<RecordBatch>,
    /// The SHA-256 of what was read, when it had to be hashed.
    sha256: Option<String>,
}

/// Where an object's valid rows are until the commit.
enum SilverRows {
    /// Streamed into files of its own (an object alone: any size, bounded memory).
    Files(Vec<Add>),
    /// Kept in memory, to be written into the batch's shared files (small objects).
    Buffered(Vec<RecordBatch>),
}

/// Objects up to this size are written with [`FileWriter::small`] (Snappy): a few rows per
/// partition, files that compaction merges into zstd ones.
pub const SMALL_OBJECT_BYTES: u64 = 4 << 20;

/// An object a batch reads: where it stands in each table before.
struct Planned<'s> {
    index: usize,
    src: &'s Source<'s>,
    source_object: String,
    quarantine_app: String,
    /// Its quarantined rows of this event are already published.
    quarantine_done: bool,
    state: delta::SourceState,
    q_state: delta::SourceState,
}

/// How many of a batch's objects are read at once: each parses and checks on a blocking
/// thread of its own, so a burst of small objects uses every core. A batch's objects are
/// small (the worker's limits bound its memory), so this bounds threads, not bytes.
fn concurrent_reads() -> usize {
    crate::cores().max(2)
}

/// An object accepted into the batch's commit.
struct Accepted {
    index: usize,
    source_object: String,
    sha256: String,
    event_seq: i64,
    replacing: bool,
    removes: Vec<Remove>,
    report: IngestReport,
}

impl Accepted {
    /// The object's two keys in its table's commit (or tail entry): the event that
    /// applied it and the content it holds.
    fn txns(&self) -> [(String, i64); 2] {
        [
            (delta::app_id(&self.source_object), self.event_seq),
            (
                delta::content_app_id(&self.source_object),
                delta::content_version(&self.sha256),
            ),
        ]
    }
}

impl Batch<'_> {
    async fn run(
        &mut self,
        objects: &Objects,
        sources: &[Source<'_>],
        ready: impl std::future::Future<Output = Result<(), Error>>,
    ) -> Result<Vec<Result<IngestReport, Error>>, Error> {
        let target = self.target;
        let table = target.table;
        let shared = sources.len() > 1;
        let source_objects: Vec<String> = sources
            .iter()
            .map(|src| format!("{}/{}", src.object.bucket, src.object.key))
            .collect();
        let silver_apps: Vec<String> = source_objects
            .iter()
            .flat_map(|o| delta::source_app_ids(o))
            .collect();
        // Quarantine reads only whether an object's rejections were published (no content
        // hash): for a table deltalake answers, each id asked is a log replay.
        let quarantine_apps: Vec<String> = source_objects
            .iter()
            .map(|o| delta::app_id(&format!("{table}:{o}")))
            .collect();
        // What the tables hold, and what waits in their tails.
        let mut silver_txns = target
            .tables
            .txn_versions(table, &self.silver, silver_apps.clone())
            .await?;
        silver_txns.merge(Tail::txn_versions(&self.tails.silver_entries, &silver_apps));
        let mut quarantine_txns = target
            .tables
            .txn_versions("quarantine", &self.quarantine, quarantine_apps.clone())
            .await?;
        quarantine_txns.merge(Tail::txn_versions(
            &self.tails.quarantine_entries,
            &quarantine_apps,
        ));
        // The files an object wrote exist only if it was applied: objects new to the
        // table (a stream of new keys) skip the walk over every active file.
        let silver_index = if delta::txns_expire(table, &self.silver)?
            || source_objects.iter().any(|o| {
                delta::source_app_ids(o)
                    .iter()
                    .any(|app| silver_txns.get(app).is_some())
            }) {
            delta::FileIndex::load(table, &self.silver).await?
        } else {
            delta::FileIndex::default()
        };
        let quarantine_index = if delta::txns_expire("quarantine", &self.quarantine)?
            || source_objects.iter().any(|o| {
                quarantine_txns
                    .get(&delta::app_id(&format!("{table}:{o}")))
                    .is_some()
            }) {
            delta::FileIndex::load("quarantine", &self.quarantine).await?
        } else {
            delta::FileIndex::default()
        };
        let mut results: Vec<Option<Result<IngestReport, Error>>> =
            sources.iter().map(|_| None).collect();
        let mut accepted: Vec<Accepted> = Vec::new();
        let mut buffered: Vec<RecordBatch> = Vec::new();
        let mut own_files: Vec<Add> = Vec::new();
        let (mut q_adds, mut q_removes, mut q_txns) = (Vec::new(), Vec::new(), Vec::new());
        // Quarantine app ids whose earlier rows are replaced: found in the quarantine's
        // shared files (a tail flush's) and rewritten without them.
        let mut q_replaced: BTreeSet<String> = BTreeSet::new();
        let mut q_rows: Vec<RecordBatch> = Vec::new();

        // First what each object needs, then their reads side by side (a burst of small
        // objects is parsed and checked on every core), then each outcome in order.
        let mut planned: Vec<Planned> = Vec::new();
        for ((index, src), source_object) in sources.iter().enumerate().zip(source_objects) {
            let object = src.object;
            let state = delta::source_state_in(&silver_index, &silver_txns, &source_object);
            if state.applied_seq.is_some_and(|s| s >= src.event_seq) || state.holds(&object.sha256)
            {
                results[index] = Some(Ok(IngestReport::empty(Outcome::AlreadyApplied)));
                continue;
            }
            let quarantine_app = format!("{table}:{source_object}");
            let q_state =
                delta::source_state_in(&quarantine_index, &quarantine_txns, &quarantine_app);
            let quarantine_done = q_state.applied_seq.is_some_and(|s| s >= src.event_seq);
            // A tail only appends: rows of an earlier version of the object waiting there
            // are committed first (the worker flushes before it retries).
            if Tails::waiting(&self.tails.silver, &source_object)
                || (!quarantine_done && Tails::waiting(&self.tails.quarantine, &quarantine_app))
            {
                results[index] = Some(Err(Error::Busy(format!(
                    "{source_object}: rows of an earlier version wait in {table}'s tail; retried after its flush"
                ))));
                continue;
            }
            // Replacing rows goes through a commit (a tail only appends).
            if state.applied_seq.is_some()
                || q_state.applied_seq.is_some()
                || !q_state.removes.is_empty()
            {
                self.tails.use_tail = false;
            }
            planned.push(Planned {
                index,
                src,
                source_object,
                quarantine_app,
                quarantine_done,
                state,
                q_state,
            });
        }
        let stream = !shared && !self.tails.use_tail;
        let readiness;
        let reads: Vec<Result<Option<ReadObject>, Error>> = {
            let this = &*self;
            // Collected first: a stream over a mapping closure is not `Send` for every
            // lifetime, which the worker's spawned task needs.
            let reading: Vec<_> = planned
                .iter()
                .map(|p| {
                    this.read_object(
                        objects,
                        p.src,
                        &p.source_object,
                        &p.quarantine_app,
                        p.quarantine_done,
                        stream,
                    )
                })
                .collect();
            let reads = futures::stream::iter(reading)
                .buffered(concurrent_reads())
                .collect();
            let (reads, ready) = futures::join!(reads, ready);
            readiness = ready;
            reads
        };
        // Every file read, so a failing batch deletes it.
        for read in reads.iter().flatten().flatten() {
            if let SilverRows::Files(adds) = &read.silver {
                self.written_silver.extend(adds.iter().cloned());
            }
            self.written_quarantine
                .extend(read.quarantine_adds.iter().cloned());
        }
        // Nothing of the batch is durable or visible yet: its files are uncommitted.
        readiness?;

        for (plan, read) in planned.into_iter().zip(reads) {
            let Planned {
                index,
                src,
                source_object,
                quarantine_app,
                quarantine_done,
                state,
                q_state,
            } = plan;
            let object = src.object;
            let read = match read {
                Ok(Some(read)) => read,
                Ok(None) => {
                    results[index] = Some(Ok(IngestReport::empty(Outcome::Superseded)));
                    continue;
                }
                Err(e) => {
                    results[index] = Some(Err(e));
                    continue;
                }
            };
            let ReadObject {
                mut report,
                silver,
                quarantine_adds,
                quarantine_rows,
                sha256,
            } = read;
            if sha256.is_some_and(|sha| sha != object.sha256) {
                self.drop_object(silver, quarantine_adds).await?;
                results[index] = Some(Ok(IngestReport::empty(Outcome::Superseded)));
                continue;
            }
            // Quarantined rows are published even when the object's valid rows are not:
            // they say why.
            if !quarantine_done
                && (!quarantine_adds.is_empty()
                    || !quarantine_rows.is_empty()
                    || !q_state.removes.is_empty()
                    || q_state.applied_seq.is_some())
            {
                q_adds.extend(quarantine_adds);
                q_rows.extend(quarantine_rows);
                q_removes.extend(q_state.removes);
                if q_state.applied_seq.is_some() {
                    q_replaced.insert(quarantine_app.clone());
                }
                q_txns.push((delta::app_id(&quarantine_app), src.event_seq));
            }
            let invalid_pct = if report.rows_in == 0 {
                0.0
            } else {
                report.rows_quarantined as f64 * 100.0 / report.rows_in as f64
            };
            if invalid_pct > target.max_invalid_pct {
                self.drop_object(silver, Vec::new()).await?;
                results[index] = Some(Err(Error::ThresholdExceeded {
                    table: table.to_string(),
                    invalid: report.rows_quarantined,
                    total: report.rows_in,
                    pct: invalid_pct,
                    threshold: target.max_invalid_pct,
                }));
                continue;
            }
            match silver {
                SilverRows::Files(adds) => {
                    report.bytes_written += adds.iter().map(|a| a.size.max(0) as u64).sum::<u64>();
                    if !target.partition_by.is_empty() {
                        report.partitions.extend(
                            adds.iter()
                                .map(|add| delta::partition_key(add, target.partition_by)),
                        );
                    }
                    own_files.extend(adds);
                }
                // Its partitions are in the report already (`read_object`).
                SilverRows::Buffered(batches) => buffered.extend(batches),
            }
            accepted.push(Accepted {
                index,
                source_object,
                sha256: object.sha256.clone(),
                event_seq: src.event_seq,
                replacing: state.applied_seq.is_some(),
                removes: state.removes,
                report,
            });
        }

        // On the tails, the quarantined rows and the silver entry are encoded and written
        // side by side (one round of fsyncs, not two), and published once both are
        // durable. The silver entry names the quarantine `txn`s it needs: a crash that
        // keeps it without them (never acknowledged) has it dropped on restart, so a
        // retry does not skip the applied object and lose its quarantined rows
        // ([`tail::Needs`]); a crash that keeps the quarantined rows alone leaves a retry
        // to add the valid ones.
        let mut silver_written = None;
        if self.tails.use_tail && (!q_txns.is_empty() || !accepted.is_empty()) {
            let needs = (!q_txns.is_empty() && !accepted.is_empty())
                .then(|| {
                    let silver_url = self.silver.table_url();
                    silver_url
                        .make_relative(self.quarantine.table_url())
                        .map(|table| tail::Needs {
                            table,
                            txns: q_txns.clone(),
                        })
                        .ok_or_else(|| {
                            Error::Internal(format!(
                                "the quarantine is not beside {table} ({silver_url})"
                            ))
                        })
                })
                .transpose()?;
            // Staged in one order, quarantine then silver: a stage holds its tail's append
            // lock until published, and two batches taking the two locks in opposite
            // orders would wait for each other for ever.
            let quarantine = match self.tails.quarantine.as_ref() {
                _ if q_txns.is_empty() => None,
                Some(tail) => Some(
                    tail.stage(
                        "quarantine",
                        quarantine_schema(),
                        std::mem::take(&mut q_rows),
                        std::mem::take(&mut q_txns),
                    )
                    .await?,
                ),
                None => {
                    return Err(Error::Internal(
                        "a batch appending to tails has no quarantine tail".into(),
                    ));
                }
            };
            let silver = match self.tails.silver.as_ref() {
                _ if accepted.is_empty() => None,
                Some(tail) => Some(
                    tail.stage_needing(
                        table,
                        target.compiled.output_schema(),
                        std::mem::take(&mut buffered),
                        accepted.iter().flat_map(Accepted::txns).collect(),
                        needs,
                    )
                    .await?,
                ),
                None => {
                    return Err(Error::Internal(
                        "a batch appending to tails has no silver tail".into(),
                    ));
                }
            };
            // Either failing drops the other unpublished: its slot is cleared.
            let (quarantined, written) =
                tokio::join!(write_staged(quarantine), write_staged(silver));
            let (quarantined, written) = (quarantined?, written?);
            if let Some(q) = quarantined {
                q.publish();
            }
            silver_written = written;
        } else if !q_txns.is_empty() {
            if !q_rows.is_empty() {
                let adds = write_quarantined(&self.quarantine, q_rows).await?;
                self.written_quarantine.extend(adds.iter().cloned());
                q_adds.extend(adds);
            }
            if !q_replaced.is_empty() && !quarantine_index.compacted.is_empty() {
                let shared = delta::shared_files(
                    QUARANTINE_TABLE,
                    &self.quarantine,
                    &quarantine_index.compacted,
                    &q_replaced,
                )
                .await?;
                let (rewritten, retired) = delta::rewrite_without(
                    QUARANTINE_TABLE,
                    &self.quarantine,
                    &shared,
                    &q_replaced,
                )
                .await?;
                self.written_quarantine.extend(rewritten.iter().cloned());
                q_adds.extend(rewritten);
                q_removes.extend(retired);
            }
            target
                .tables
                .commit(
                    "quarantine",
                    &mut self.quarantine,
                    q_adds,
                    q_removes,
                    q_txns,
                    DeltaOperation::Write {
                        mode: SaveMode::Append,
                        partition_by: Some(vec!["table_name".into()]),
                        predicate: None,
                    },
                )
                .await?;
            self.written_quarantine.clear();
        }

        if let Some(written) = silver_written {
            let seq = written.publish();
            for a in accepted {
                let mut report = a.report;
                report.outcome = Outcome::Logged { seq };
                results[a.index] = Some(Ok(report));
            }
        } else if !accepted.is_empty() {
            let mut adds = own_files;
            if !buffered.is_empty() {
                let mut writer = FileWriter::small(table, &self.silver)?;
                for batch in buffered {
                    writer.write(batch).await?;
                }
                let shared_adds = writer.finish(&[(TAG_COMPACTED, "true")]).await?;
                self.written_silver.extend(shared_adds.iter().cloned());
                let bytes: u64 = shared_adds.iter().map(|a| a.size.max(0) as u64).sum();
                let rows: u64 = accepted.iter().map(|a| a.report.rows_valid).sum();
                // Shared files' bytes are attributed to their objects by share of rows.
                for a in &mut accepted {
                    if rows > 0 {
                        a.report.bytes_written +=
                            (bytes as u128 * a.report.rows_valid as u128 / rows as u128) as u64;
                    }
                }
                adds.extend(shared_adds);
            }
            let mut removes: Vec<Remove> =
                accepted.iter().flat_map(|a| a.removes.clone()).collect();
            let replaced: BTreeSet<String> = accepted
                .iter()
                .filter(|a| a.replacing)
                .map(|a| a.source_object.clone())
                .collect();
            if !replaced.is_empty() && !silver_index.compacted.is_empty() {
                let shared_files =
                    delta::shared_files(table, &self.silver, &silver_index.compacted, &replaced)
                        .await?;
                let (rewritten, retired) =
                    delta::rewrite_without(table, &self.silver, &shared_files, &replaced).await?;
                self.written_silver.extend(rewritten.iter().cloned());
                adds.extend(rewritten);
                removes.extend(retired);
            }
            let txns = accepted.iter().flat_map(Accepted::txns).collect();
            let predicate = (!removes.is_empty()).then(|| {
                let quoted: Vec<String> = accepted
                    .iter()
                    .map(|a| format!("'{}'", a.source_object.replace('\'', "''")))
                    .collect();
                format!("{} IN ({})", delta::SOURCE_COLUMN, quoted.join(", "))
            });
            let version = target
                .tables
                .commit(
                    table,
                    &mut self.silver,
                    adds,
                    removes,
                    txns,
                    DeltaOperation::Write {
                        mode: if predicate.is_some() {
                            SaveMode::Overwrite
                        } else {
                            SaveMode::Append
                        },
                        partition_by: Some(target.partition_by.to_vec()),
                        predicate,
                    },
                )
                .await?;
            self.written_silver.clear();
            for a in accepted {
                let mut report = a.report;
                report.outcome = Outcome::Applied { version };
                results[a.index] = Some(Ok(report));
            }
        }
        Ok(results
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Err(Error::Internal("an object was left out".into()))))
            .collect())
    }

    /// Deletes what an object wrote that will not be committed.
    async fn drop_object(&mut self, silver: SilverRows, quarantine: Vec<Add>) -> Result<(), Error> {
        if let SilverRows::Files(adds) = silver {
            delta::discard(self.target.table, &self.silver, &adds).await?;
            self.written_silver
                .retain(|w| !adds.iter().any(|a| a.path == w.path));
        }
        delta::discard("quarantine", &self.quarantine, &quarantine).await?;
        self.written_quarantine
            .retain(|w| !quarantine.iter().any(|a| a.path == w.path));
        Ok(())
    }

    /// Reads and validates one object: its quarantined rows into files of its own, its
    /// valid rows into files of its own (`stream`) or into memory. None when the object
    /// is gone since its event. On error, nothing it wrote is left behind; on success the
    /// caller records the files it wrote.
    async fn read_object(
        &self,
        objects: &Objects,
        src: &Source<'_>,
        source_object: &str,
        quarantine_app: &str,
        quarantine_done: bool,
        stream: bool,
    ) -> Result<Option<ReadObject>, Error> {
        let target = self.target;
        let object = src.object;
        let Some((mut rx, reader_thread)) = spawn_reader(objects, target, object).await? else {
            return Ok(None);
        };
        let small = object.size <= SMALL_OBJECT_BYTES;
        let mut silver_writer = match (stream, small) {
            (false, _) => None,
            (true, true) => Some(FileWriter::small(target.table, &self.silver)?),
            (true, false) => Some(FileWriter::new(target.table, &self.silver)?),
        };
        let mut buffered = Vec::new();
        // A batch appending to the tails keeps quarantined rows in memory, like valid ones.
        let mut quarantine_writer = match (self.tails.use_tail, small) {
            (true, _) => None,
            (false, true) => Some(FileWriter::small("quarantine", &self.quarantine)?),
            (false, false) => Some(FileWriter::new("quarantine", &self.quarantine)?),
        };
        let mut quarantine_rows = Vec::new();
        let mut report = IngestReport::empty(Outcome::AlreadyApplied);
        let mut finished: Option<(Option<String>, u64)> = None;
        let mut failure: Option<Error> = None;
        while let Some(item) = rx.recv().await {
            match item {
                Ok(Chunk::Rows {
                    mut validated,
                    rows_in,
                }) => {
                    let valid_rows = validated.valid_rows();
                    let rejected = std::mem::take(&mut validated.rejected);
                    report.rows_in += rows_in;
                    report.rows_valid += valid_rows as u64;
                    report.rows_quarantined += rejected.len() as u64;
                    count_reasons(&rejected, &mut report.reasons);
                    let written = async {
                        match &mut silver_writer {
                            Some(w) => w.write_selected(validated.rows, validated.keep).await?,
                            None if valid_rows > 0 => {
                                let sorted = delta::partition_sorted(
                                    &validated.rows,
                                    validated.keep.as_ref(),
                                    target.partition_by,
                                )
                                .map_err(|e| {
                                    Error::Internal(format!(
                                        "{}: ordering rows by partition: {e}",
                                        target.table
                                    ))
                                })?;
                                report.partitions.extend(partition_keys(
                                    &sorted.rows,
                                    target.partition_by,
                                    &sorted.firsts,
                                )?);
                                buffered.push(sorted.rows);
                            }
                            None => {}
                        }
                        if !quarantine_done && !rejected.is_empty() {
                            let rows =
                                quarantine_batch(target.table, object, src.run_id, &rejected)?;
                            match &mut quarantine_writer {
                                Some(w) => w.write(rows).await?,
                                None => quarantine_rows.push(rows),
                            }
                        }
                        Ok::<_, Error>(())
                    }
                    .await;
                    if let Err(e) = written {
                        failure = Some(e);
                        break;
                    }
                }
                Ok(Chunk::Done { sha256, bytes }) => finished = Some((sha256, bytes)),
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            }
        }
        drop(rx);
        reader_thread
            .await
            .map_err(|e| Error::Internal(format!("the reader thread died: {e}")))?;
        let silver_tags = [
            (TAG_SOURCE, source_object),
            (TAG_SHA256, object.sha256.as_str()),
        ];
        let silver = match silver_writer {
            Some(w) => w.finish(&silver_tags).await.map(SilverRows::Files),
            None => Ok(SilverRows::Buffered(buffered)),
        };
        let quarantine_tags = [
            (TAG_SOURCE, quarantine_app),
            (TAG_SHA256, object.sha256.as_str()),
        ];
        let quarantine_adds = match quarantine_writer {
            Some(w) => w.finish(&quarantine_tags).await,
            None => Ok(Vec::new()),
        };
        let failure = failure.or_else(|| {
            finished
                .is_none()
                .then(|| Error::Internal("the reader stopped without finishing".into()))
        });
        let (silver, quarantine_adds) = match (silver, quarantine_adds, failure) {
            (Ok(silver), Ok(quarantine_adds), None) => (silver, quarantine_adds),
            (silver, quarantine_adds, failure) => {
                // Whatever was written goes (best effort: an uncommitted file is never
                // visible); the first error says why.
                if let Ok(SilverRows::Files(adds)) = &silver {
                    let _ = delta::discard(target.table, &self.silver, adds).await;
                }
                if let Ok(adds) = &quarantine_adds {
                    let _ = delta::discard("quarantine", &self.quarantine, adds).await;
                }
                let e = failure
                    .or(silver.err())
                    .or(quarantine_adds.err())
                    .unwrap_or_else(|| Error::Internal("a read failed without a reason".into()));
                return Err(e);
            }
        };
        let (sha256, bytes) = finished.unwrap_or_default();
        report.bytes_read = bytes;
        report.bytes_written = quarantine_adds.iter().map(|a| a.size.max(0) as u64).sum();
        Ok(Some(ReadObject {
            report,
            silver,
            quarantine_adds,
            quarantine_rows,
            sha256,
        }))
    }
}

/// Quarantined rows kept in memory (by a batch appending to the tails) as files of one
/// object each, tagged with its quarantine app id like the files an ingest streams:
/// replacing or removing the object finds them by their tag. (A tail's flush writes
/// them into shared files instead, [`crate::tail::Layout::Quarantine`].)
pub(crate) async fn write_quarantined(
    quarantine: &deltalake::DeltaTable,
    rows: Vec<RecordBatch>,
) -> Result<Vec<Add>, Error> {
    let mut by_object: BTreeMap<String, Vec<RecordBatch>> = BTreeMap::new();
    for batch in rows {
        let column = |name: &str| {
            batch
                .column_by_name(name)
                .and_then(|c| c.as_string_opt::<i32>())
                .ok_or_else(|| Error::Internal(format!("quarantined rows lack text {name}")))
        };
        let (tables, sources) = (column("table_name")?, column("source_object")?);
        let mut rows_of: BTreeMap<String, Vec<u32>> = BTreeMap::new();
        for row in 0..batch.num_rows() {
            let app = format!("{}:{}", tables.value(row), sources.value(row));
            rows_of.entry(app).or_default().push(row as u32);
        }
        if rows_of.len() == 1 {
            let (app, _) = rows_of.pop_first().unwrap_or_default();
            by_object.entry(app).or_default().push(batch);
            continue;
        }
        for (app, indices) in rows_of {
            let taken = arrow::compute::take_record_batch(
                &batch,
                &arrow::array::UInt32Array::from(indices),
            )
            .map_err(|e| Error::Internal(format!("splitting quarantined rows: {e}")))?;
            by_object.entry(app).or_default().push(taken);
        }
    }
    let mut adds = Vec::new();
    for (app, batches) in by_object {
        let mut writer = FileWriter::small("quarantine", quarantine)?;
        for batch in batches {
            writer.write(batch).await?;
        }
        adds.extend(writer.finish(&[(TAG_SOURCE, app.as_str())]).await?);
    }
    Ok(adds)
}

/// `year=2024/month=1/...` of a batch's partitions, as [`delta::partition_key`] spells
/// them, from the rows at `firsts` (a row of each partition: [`delta::PartitionSorted`]
/// found them while ordering the rows, so only those rows are spelt; spelling every row's
/// was 2.8% of the server's CPU under the 8-writer freshness load, and grouping the rows a
/// second time to find them ~1% of the ingest's instructions).
fn partition_keys(
    batch: &RecordBatch,
    partition_by: &[String],
    firsts: &[u32],
) -> Result<BTreeSet<String>, Error> {
    if partition_by.is_empty() || firsts.is_empty() {
        return Ok(BTreeSet::new());
    }
    let arrow_error = |e: arrow::error::ArrowError| Error::Internal(format!("partition keys: {e}"));
    let firsts = UInt32Array::from(firsts.to_vec());
    let mut texts = Vec::with_capacity(partition_by.len());
    for name in partition_by {
        let column = batch
            .column_by_name(name)
            .ok_or_else(|| Error::Internal(format!("partition column {name} is missing")))?;
        let taken = arrow::compute::take(column, &firsts, None).map_err(arrow_error)?;
        texts.push(arrow::compute::cast(&taken, &DataType::Utf8).map_err(arrow_error)?);
    }
    let texts: Vec<&StringArray> = texts.iter().map(|t| t.as_string::<i32>()).collect();
    Ok((0..firsts.len())
        .map(|row| {
            let values = texts.iter().map(|t| t.is_valid(row).then(|| t.value(row)));
            delta::spell_partition_key(partition_by, values)
        })
        .collect())
}

/// Opens the object and starts the thread that parses and validates it. None when the
/// object is gone since its event (a later event decides).
async fn spawn_reader(
    objects: &Objects,
    target: &Target<'_>,
    object: &ObjectRef,
) -> Result<
    Option<(
        tokio::sync::mpsc::Receiver<Result<Chunk, Error>>,
        tokio::task::JoinHandle<()>,
    )>,
    Error,
> {
    let source_object = format!("{}/{}", object.bucket, object.key);
    let format = SourceFormat::from_key(&object.key).ok_or_else(|| Error::BadFile {
        object: source_object.clone(),
        source: read::ReadError::UnknownFormat(object.key.clone()),
    })?;
    let bucket = BucketName::parse(&object.bucket).map_err(|e| Error::BadKey(e.to_string()))?;
    let key = ObjectKey::parse(&object.key).map_err(|e| Error::BadKey(e.to_string()))?;
    let opened = match objects.open_read(&bucket, &key).await {
        Ok(o) => o,
        Err(Error::ObjectNotFound { .. }) => return Ok(None),
        Err(e) => return Err(e),
    };

    // The store's version says whether these are the bytes the event announced; only when it
    // does not (a store without versions, a data directory copied elsewhere) is the content
    // hashed and compared, and a mismatch means a newer write replaced it.
    let vouched = opened.e_tag() == Some(object.version.as_str());
    let object_size = opened.size();
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Chunk, Error>>(2);
    let compiled = target.compiled.clone();
    let batch_rows = target.batch_rows.max(1);
    let source_for_thread = source_object;
    let version = object.version.clone();
    let key_text = object.key.clone();
    let reader_thread = tokio::task::spawn_blocking(move || {
        let send = |item: Result<Chunk, Error>| tx.blocking_send(item).is_ok();
        let bad_file = |source: read::ReadError| Error::BadFile {
            object: source_for_thread.clone(),
            source,
        };
        let (boxed, parquet_file, hashing_file): (Box<dyn Read + Send>, _, _) = match opened {
            ObjectReader::File { file, .. } => {
                if format == SourceFormat::Parquet {
                    let clone = match file.try_clone() {
                        Ok(c) => c,
                        Err(e) => {
                            send(Err(Error::Io {
                                what: "opening the Parquet object".into(),
                                source: e,
                            }));
                            return;
                        }
                    };
                    (Box::new(std::io::empty()), Some(clone), Some(file))
                } else {
                    (Box::new(file), None, None)
                }
            }
            ObjectReader::Stream { stream, .. } => {
                let reader = tokio_util::io::StreamReader::new(stream);
                (
                    Box::new(tokio_util::io::SyncIoBridge::new(reader)),
                    None,
                    None,
                )
            }
        };
        let hasher = (!vouched).then(Sha256::new);
        let hashing = Arc::new(std::sync::Mutex::new((hasher, 0u64)));
        let counting = HashingShared {
            inner: boxed,
            state: hashing.clone(),
        };
        let mut source = match read::open(
            format,
            Box::new(counting),
            parquet_file,
            compiled.contract(),
            compiled.format(),
            Some(object_size),
        ) {
            Ok(s) => s,
            Err(e) => {
                send(Err(bad_file(e)));
                return;
            }
        };
        let mut validator = compiled.validator(&source_for_thread, &version, &key_text);
        let finished = if object_size > SMALL_OBJECT_BYTES {
            // A large object is parsed on a thread of its own, a few batches ahead of the
            // validation here: the two stages (3.1 and 9.2 CPU-s of a 1 GB taxi file)
            // run side by side, beside the writer.
            std::thread::scope(|scope| {
                let (parsed_tx, parsed_rx) = std::sync::mpsc::sync_channel::<Parsed>(2);
                let source = &mut source;
                scope.spawn(move || {
                    loop {
                        let next = source.next_batch(batch_rows);
                        let last = !matches!(next, Ok(Some(_)));
                        if parsed_tx.send(next).is_err() || last {
                            break;
                        }
                    }
                });
                // Returning drops the receiver, which stops the parser at its next batch.
                validate_all(parsed_rx.into_iter(), &mut validator, &send, &bad_file)
            })
        } else {
            let parsed = std::iter::from_fn(|| Some(source.next_batch(batch_rows)));
            validate_all(parsed, &mut validator, &send, &bad_file)
        };
        if !finished {
            return;
        }
        drop(source);
        let (sha256, bytes) = match hashing_file {
            Some(_) if vouched => (None, object_size),
            // Parquet is read by seeking; hash the file in one sequential pass.
            Some(mut file) => {
                // The clone given to the Parquet reader shares this handle's offset.
                if let Err(e) = std::io::Seek::seek(&mut file, std::io::SeekFrom::Start(0)) {
                    send(Err(Error::Io {
                        what: "rewinding the Parquet object".into(),
                        source: e,
                    }));
                    return;
                }
                let mut h = Hashing {
                    inner: std::io::BufReader::with_capacity(1 << 20, file),
                    hasher: Sha256::new(),
                    bytes: 0,
                };
                if let Err(e) = std::io::copy(&mut h, &mut std::io::sink()) {
                    send(Err(Error::Io {
                        what: "hashing the Parquet object".into(),
                        source: e,
                    }));
                    return;
                }
                (Some(hex::encode(h.hasher.finalize())), h.bytes)
            }
            None => {
                let state = hashing.lock().unwrap_or_else(|p| p.into_inner());
                let sha = state.0.clone().map(|h| hex::encode(h.finalize()));
                (sha, state.1)
            }
        };
        send(Ok(Chunk::Done { sha256, bytes }));
    });

    Ok(Some((rx, reader_thread)))
}

/// A parsed batch, the end of the source, or why it cannot be read.
type Parsed = Result<Option<read::SourceBatch>, read::ReadError>;

/// Validates a source's batches in order, sending each outcome on; true when the source
/// ended cleanly, false when it failed or the receiver is gone (already told or moot).
fn validate_all(
    batches: impl Iterator<Item = Parsed>,
    validator: &mut crate::validate::Validator<'_>,
    send: &dyn Fn(Result<Chunk, Error>) -> bool,
    bad_file: &dyn Fn(read::ReadError) -> Error,
) -> bool {
    for parsed in batches {
        match parsed {
            Ok(Some(batch)) => {
                let rows_in = batch.num_rows() as u64;
                let item = validator
                    .validate(&batch)
                    .map_err(Error::from)
                    .map(|validated| Chunk::Rows { validated, rows_in });
                let failed = item.is_err();
                if !send(item) || failed {
                    return false;
                }
            }
            Ok(None) => return true,
            Err(e) => {
                send(Err(bad_file(e)));
                return false;
            }
        }
    }
    // The parsing thread ended without saying so (it panicked).
    send(Err(Error::Internal("the parsing thread died".into())));
    false
}

/// Like [`Hashing`], but its state is shared so the reader thread can read it after the source is done.
struct HashingShared {
    inner: Box<dyn Read + Send>,
    /// The hasher (None: count only) and the bytes read.
    state: Arc<std::sync::Mutex<(Option<Sha256>, u64)>>,
}

impl Read for HashingShared {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(hasher) = &mut state.0 {
            hasher.update(&buf[..n]);
        }
        state.1 += n as u64;
        Ok(n)
    }
}

/// Removes every row a source object put into a silver table (and its quarantined rows), in
/// one commit per table keyed like an ingest, so a replayed removal changes nothing.
pub async fn remove(
    paths: &LakePaths,
    table: &str,
    location: &str,
    object: &ObjectRef,
    event_seq: i64,
    tables: &delta::TableCache,
) -> Result<u64, Error> {
    let source_object = format!("{}/{}", object.bucket, object.key);
    let mut removed_files = 0;
    for (name, location, app) in [
        (table, location.to_string(), source_object.clone()),
        (
            "quarantine",
            LakePaths::QUARANTINE.to_string(),
            format!("{table}:{source_object}"),
        ),
    ] {
        let url = paths.url(&location)?;
        let Some(mut delta_table) = tables.latest(name, url.clone()).await? else {
            continue;
        };
        let state = delta::source_state(name, &delta_table, tables, &app).await?;
        if state.applied_seq.is_none_or(|s| s >= event_seq) {
            continue;
        }
        // Rows are found by the table's own name for their source: `bucket/key` in a
        // silver table, `table:bucket/key` in the quarantine.
        let sources = BTreeSet::from([app.clone()]);
        let shared = if state.compacted.is_empty() {
            Vec::new()
        } else {
            delta::shared_files(name, &delta_table, &state.compacted, &sources).await?
        };
        removed_files += (state.removes.len() + shared.len()) as u64;
        let (adds, mut removes) =
            delta::rewrite_without(name, &delta_table, &shared, &sources).await?;
        removes.extend(state.removes);
        // The removal is recorded even when no rows were left (all quarantined, say), so
        // the same content sent again is ingested again.
        tables
            .commit(
                name,
                &mut delta_table,
                adds,
                removes,
                vec![
                    (delta::app_id(&app), event_seq),
                    (delta::content_app_id(&app), 0),
                ],
                DeltaOperation::Delete {
                    predicate: Some(format!(
                        "_source_object = '{}'",
                        source_object.replace('\'', "''")
                    )),
                },
            )
            .await?;
        tables.keep(&url, &delta_table);
    }
    Ok(removed_files)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partition_keys_spell_each_distinct_key_once_as_the_log_does() {
        let batch = RecordBatch::try_from_iter([
            (
                "year",
                Arc::new(arrow::array::Int32Array::from(vec![
                    Some(2024),
                    Some(2024),
                    None,
                    Some(2023),
                    Some(2024),
                ])) as ArrayRef,
            ),
            (
                "zone",
                Arc::new(StringArray::from(vec![
                    Some("a"),
                    Some("b"),
                    Some("a"),
                    None,
                    Some("a"),
                ])) as ArrayRef,
            ),
            (
                "fare",
                Arc::new(Int64Array::from(vec![1, 2, 3, 4, 5])) as ArrayRef,
            ),
        ])
        .unwrap();
        let by = ["year".to_string(), "zone".to_string()];
        let sorted = delta::partition_sorted(&batch, None, &by).unwrap();
        assert_eq!(sorted.firsts.len(), 4, "{:?}", sorted.firsts);
        let keys: Vec<String> = partition_keys(&sorted.rows, &by, &sorted.firsts)
            .unwrap()
            .into_iter()
            .collect();
        assert_eq!(
            keys,
            [
                "year=2023/zone=__HIVE_DEFAULT_PARTITION__",
                "year=2024/zone=a",
                "year=2024/zone=b",
                "year=__HIVE_DEFAULT_PARTITION__/zone=a",
            ]
        );
        let unpartitioned = delta::partition_sorted(&batch, None, &[]).unwrap();
        assert!(unpartitioned.firsts.is_empty());
        assert!(
            partition_keys(&unpartitioned.rows, &[], &unpartitioned.firsts)
                .unwrap()
                .is_empty()
        );
        let empty = delta::partition_sorted(&batch.slice(0, 0), None, &by).unwrap();
        assert!(
            partition_keys(&empty.rows, &by, &empty.firsts)
                .unwrap()
                .is_empty()
        );
        let missing = partition_keys(&batch, &["month".to_string()], &[0]).unwrap_err();
        assert!(missing.to_string().contains("month"), "{missing}");
    }
}
