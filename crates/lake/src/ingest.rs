//! One source object → one atomic commit to a silver table, plus its quarantine.
//!
//! The object is streamed (bounded memory: a few batches in flight) from a
//! blocking reader thread that parses and validates, to an async writer that
//! streams Parquet files. Nothing is visible until the commit at the end,
//! which also records the object's idempotency key, so any crash before it
//! leaves the table unchanged and a retry starts over cleanly.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::sync::Arc;

use arrow::array::{ArrayRef, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use chrono::Utc;
use deltalake::protocol::{DeltaOperation, SaveMode};
use sha2::{Digest, Sha256};
use sluice_model::event::ObjectRef;
use sluice_model::key::{BucketName, ObjectKey};
use uuid::Uuid;

use crate::delta::{self, FileWriter, TAG_SHA256, TAG_SOURCE};
use crate::objects::{ObjectReader, Objects};
use crate::read::{self, SourceFormat};
use crate::validate::{CompiledContract, Rejection, count_reasons};
use crate::{Error, LakePaths};

/// What to ingest where.
pub struct IngestRequest<'a> {
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
    /// The source object.
    pub object: &'a ObjectRef,
    /// The event's sequence number: the commit's idempotency version.
    pub event_seq: i64,
    /// The run, recorded with quarantined rows.
    pub run_id: Uuid,
    /// Largest invalid share (percent) that still publishes.
    pub max_invalid_pct: f64,
    /// Rows per batch.
    pub batch_rows: usize,
    /// Open tables, brought up to date incrementally.
    pub tables: &'a delta::TableCache,
}

/// How an ingest ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Committed as this table version.
    Applied {
        /// Delta version of the commit.
        version: i64,
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

/// The quarantine table's schema: one row per rejected source row.
pub fn quarantine_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("table_name", DataType::Utf8, false),
        Field::new("reason_code", DataType::Utf8, false),
        Field::new("reason", DataType::Utf8, false),
        Field::new("column_name", DataType::Utf8, true),
        Field::new("source_object", DataType::Utf8, false),
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
        Arc::new(StringArray::from(vec![table; n])),
        Arc::new(StringArray::from_iter_values(
            rejected.iter().map(|r| r.code.as_str()),
        )),
        Arc::new(StringArray::from_iter_values(
            rejected.iter().map(|r| r.message.as_str()),
        )),
        Arc::new(StringArray::from_iter(
            rejected.iter().map(|r| r.column.as_deref()),
        )),
        Arc::new(StringArray::from(vec![source.as_str(); n])),
        Arc::new(StringArray::from(vec![object.version.as_str(); n])),
        Arc::new(Int64Array::from_iter_values(
            rejected.iter().map(|r| r.line as i64),
        )),
        Arc::new(StringArray::from_iter_values(
            rejected.iter().map(|r| r.raw.as_str()),
        )),
        Arc::new(StringArray::from(vec![run_id.to_string(); n])),
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

enum Chunk {
    Rows {
        valid: RecordBatch,
        rejected: Vec<Rejection>,
        rows_in: u64,
    },
    /// The source is read: its SHA-256 (None when its store version vouched for it) and size.
    Done { sha256: Option<String>, bytes: u64 },
}

/// Ingests one object into a silver table, exactly once.
pub async fn ingest(
    paths: &LakePaths,
    objects: &Objects,
    req: IngestRequest<'_>,
) -> Result<IngestReport, Error> {
    let object = req.object;
    let source_object = format!("{}/{}", object.bucket, object.key);
    let silver_url = paths.url(req.location)?;
    let mut silver = req
        .tables
        .latest_or_create(
            req.table,
            silver_url.clone(),
            &req.compiled.output_schema(),
            req.partition_by,
            req.description,
        )
        .await?;
    let silver_state = delta::source_state(req.table, &silver, &source_object).await?;
    let already = silver_state.applied_seq.is_some_and(|s| s >= req.event_seq)
        || silver_state.holds(&object.sha256);
    if already {
        return Ok(IngestReport::empty(Outcome::AlreadyApplied));
    }
    let quarantine_url = paths.url(LakePaths::QUARANTINE)?;
    let mut quarantine = req
        .tables
        .latest_or_create(
            "quarantine",
            quarantine_url.clone(),
            &quarantine_schema(),
            &["table_name".to_string()],
            Some("rows rejected by a contract, with reason, source object and line"),
        )
        .await?;
    let quarantine_app = format!("{}:{source_object}", req.table);
    let quarantine_state = delta::source_state("quarantine", &quarantine, &quarantine_app).await?;
    let quarantine_done = quarantine_state
        .applied_seq
        .is_some_and(|s| s >= req.event_seq);

    let format = SourceFormat::from_key(&object.key).ok_or_else(|| Error::BadFile {
        object: source_object.clone(),
        source: read::ReadError::UnknownFormat(object.key.clone()),
    })?;
    let bucket = BucketName::parse(&object.bucket).map_err(|e| Error::BadKey(e.to_string()))?;
    let key = ObjectKey::parse(&object.key).map_err(|e| Error::BadKey(e.to_string()))?;
    let opened = match objects.open_read(&bucket, &key).await {
        Ok(o) => o,
        // Deleted since the event: a later event (object-removed or a new write) decides.
        Err(Error::ObjectNotFound { .. }) => return Ok(IngestReport::empty(Outcome::Superseded)),
        Err(e) => return Err(e),
    };

    // The store's version says whether these are the bytes the event announced; only when it
    // does not (a store without versions, a data directory copied elsewhere) is the content
    // hashed and compared, and a mismatch means a newer write replaced it.
    let vouched = opened.e_tag() == Some(object.version.as_str());
    let object_size = opened.size();
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Result<Chunk, Error>>(2);
    let compiled = req.compiled.clone();
    let batch_rows = req.batch_rows.max(1);
    let source_for_thread = source_object.clone();
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
        ) {
            Ok(s) => s,
            Err(e) => {
                send(Err(bad_file(e)));
                return;
            }
        };
        let mut validator = compiled.validator(&source_for_thread, &version, &key_text);
        loop {
            match source.next_batch(batch_rows) {
                Ok(Some(batch)) => {
                    let rows_in = batch.num_rows() as u64;
                    let item =
                        validator
                            .validate(&batch)
                            .map_err(Error::from)
                            .map(|v| Chunk::Rows {
                                valid: v.valid,
                                rejected: v.rejected,
                                rows_in,
                            });
                    let failed = item.is_err();
                    if !send(item) || failed {
                        return;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    send(Err(bad_file(e)));
                    return;
                }
            }
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

    let mut silver_writer = FileWriter::new(req.table, &silver)?;
    let mut quarantine_writer = FileWriter::new("quarantine", &quarantine)?;
    let mut report = IngestReport::empty(Outcome::AlreadyApplied);
    let mut finished: Option<(Option<String>, u64)> = None;
    let mut failure: Option<Error> = None;
    while let Some(item) = rx.recv().await {
        match item {
            Ok(Chunk::Rows {
                valid,
                rejected,
                rows_in,
            }) => {
                report.rows_in += rows_in;
                report.rows_valid += valid.num_rows() as u64;
                report.rows_quarantined += rejected.len() as u64;
                count_reasons(&rejected, &mut report.reasons);
                let written = async {
                    silver_writer.write(valid).await?;
                    if !quarantine_done && !rejected.is_empty() {
                        quarantine_writer
                            .write(quarantine_batch(req.table, object, req.run_id, &rejected)?)
                            .await?;
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
        (TAG_SOURCE, source_object.as_str()),
        (TAG_SHA256, object.sha256.as_str()),
    ];
    let quarantine_tags = [
        (TAG_SOURCE, quarantine_app.as_str()),
        (TAG_SHA256, object.sha256.as_str()),
    ];
    let silver_adds = silver_writer.finish(&silver_tags).await?;
    let quarantine_adds = quarantine_writer.finish(&quarantine_tags).await?;
    let discard_all = |silver: &deltalake::DeltaTable, quarantine: &deltalake::DeltaTable| {
        let (s, q) = (silver.clone(), quarantine.clone());
        let (sa, qa) = (silver_adds.clone(), quarantine_adds.clone());
        async move {
            delta::discard(req.table, &s, &sa).await?;
            delta::discard("quarantine", &q, &qa).await
        }
    };
    if let Some(e) = failure {
        discard_all(&silver, &quarantine).await?;
        return Err(e);
    }
    let Some((sha256, bytes)) = finished else {
        discard_all(&silver, &quarantine).await?;
        return Err(Error::Internal(
            "the reader stopped without finishing".into(),
        ));
    };
    report.bytes_read = bytes;
    if sha256.is_some_and(|sha| sha != object.sha256) {
        discard_all(&silver, &quarantine).await?;
        return Ok(IngestReport::empty(Outcome::Superseded));
    }
    report.bytes_written = silver_adds
        .iter()
        .chain(&quarantine_adds)
        .map(|a| a.size.max(0) as u64)
        .sum();
    if !req.partition_by.is_empty() {
        report.partitions.extend(
            silver_adds
                .iter()
                .map(|add| delta::partition_key(add, req.partition_by)),
        );
    }

    // A clean object with no earlier quarantined rows leaves quarantine as it is: no commit
    // (a retry finds nothing to add either).
    let quarantine_changes = !quarantine_adds.is_empty() || !quarantine_state.removes.is_empty();
    if !quarantine_done && quarantine_changes {
        delta::commit(
            "quarantine",
            &mut quarantine,
            quarantine_adds,
            quarantine_state.removes,
            vec![(delta::app_id(&quarantine_app), req.event_seq)],
            DeltaOperation::Write {
                mode: SaveMode::Append,
                partition_by: Some(vec!["table_name".into()]),
                predicate: None,
            },
        )
        .await?;
        req.tables.keep(&quarantine_url, &quarantine);
    }
    let invalid_pct = if report.rows_in == 0 {
        0.0
    } else {
        report.rows_quarantined as f64 * 100.0 / report.rows_in as f64
    };
    if invalid_pct > req.max_invalid_pct {
        delta::discard(req.table, &silver, &silver_adds).await?;
        return Err(Error::ThresholdExceeded {
            table: req.table.to_string(),
            invalid: report.rows_quarantined,
            total: report.rows_in,
            pct: invalid_pct,
            threshold: req.max_invalid_pct,
        });
    }
    let mut silver_adds = silver_adds;
    let mut silver_removes = silver_state.removes;
    if silver_state.applied_seq.is_some() && !silver_state.compacted.is_empty() {
        let shared =
            delta::shared_files(req.table, &silver, &silver_state.compacted, &source_object)
                .await?;
        let (adds, removes) =
            delta::rewrite_without(req.table, &silver, &shared, &source_object).await?;
        silver_adds.extend(adds);
        silver_removes.extend(removes);
    }
    let replacing = !silver_removes.is_empty();
    let version = delta::commit(
        req.table,
        &mut silver,
        silver_adds,
        silver_removes,
        vec![
            (delta::app_id(&source_object), req.event_seq),
            (
                delta::content_app_id(&source_object),
                delta::content_version(&object.sha256),
            ),
        ],
        DeltaOperation::Write {
            mode: if replacing {
                SaveMode::Overwrite
            } else {
                SaveMode::Append
            },
            partition_by: Some(req.partition_by.to_vec()),
            predicate: replacing
                .then(|| format!("_source_object = '{}'", source_object.replace('\'', "''"))),
        },
    )
    .await?;
    req.tables.keep(&silver_url, &silver);
    report.outcome = Outcome::Applied { version };
    Ok(report)
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
        let state = delta::source_state(name, &delta_table, &app).await?;
        if state.applied_seq.is_none_or(|s| s >= event_seq) {
            continue;
        }
        let shared = if state.compacted.is_empty() {
            Vec::new()
        } else {
            delta::shared_files(name, &delta_table, &state.compacted, &source_object).await?
        };
        removed_files += (state.removes.len() + shared.len()) as u64;
        let (adds, mut removes) =
            delta::rewrite_without(name, &delta_table, &shared, &source_object).await?;
        removes.extend(state.removes);
        // The removal is recorded even when no rows were left (all quarantined, say), so
        // the same content sent again is ingested again.
        delta::commit(
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
