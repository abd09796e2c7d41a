//! Delta Lake tables: create, stream Parquet files, commit with an idempotency key.
//!
//! Exactly-once per source object rests on two Delta features:
//! - every commit carries a transaction identifier (`txn`: app id =
//!   `sluice:<bucket>/<key>`, version = the event's sequence number), so a
//!   retry after a crash sees "already applied" in the table itself;
//! - every data file is tagged with the object it came from
//!   (`sluice.source`, `sluice.sha256`), so a changed object replaces its own
//!   files in the same commit that adds the new ones: readers never see both,
//!   or neither.

use std::collections::HashMap;

use arrow::array::RecordBatch;
use arrow::datatypes::Schema;
use deltalake::kernel::engine::arrow_conversion::TryIntoKernel as _;
use deltalake::kernel::transaction::{CommitBuilder, CommitProperties};
use deltalake::kernel::{Action, Add, Remove, StructType, Transaction};
use deltalake::protocol::{DeltaOperation, SaveMode};
use deltalake::writer::{DeltaWriter, RecordBatchWriter};
use deltalake::{DeltaTable, DeltaTableError};
use futures::TryStreamExt;
use object_store::ObjectStoreExt as _;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;

use crate::Error;

/// Tag naming the source object (`bucket/key`) of a data file.
pub const TAG_SOURCE: &str = "sluice.source";
/// Tag holding the SHA-256 of the source object's content.
pub const TAG_SHA256: &str = "sluice.sha256";

/// Most rows in one row group. Small enough that one open file per partition (a month
/// of daily partitions is 31 files) stays within a few hundred MiB.
pub const ROW_GROUP_ROWS: usize = 32_768;

/// Largest row group, in bytes, before it is flushed to storage.
pub const ROW_GROUP_BYTES: usize = 8 << 20;

/// Target size of one Parquet file.
pub const TARGET_FILE_SIZE: u64 = 128 << 20;

/// Opens the table at `url`, creating it with `schema` and partitions when it does not exist yet.
pub async fn open_or_create(
    name: &str,
    url: url::Url,
    schema: &Schema,
    partition_by: &[String],
    description: Option<&str>,
) -> Result<DeltaTable, Error> {
    let table = DeltaTable::try_from_url(url)
        .await
        .map_err(|e| Error::delta(name, e))?;
    if table.version().is_some() {
        return Ok(table);
    }
    let columns: StructType = schema
        .try_into_kernel()
        .map_err(|e| Error::delta(name, DeltaTableError::from(e)))?;
    let mut create = table
        .create()
        .with_table_name(name)
        .with_columns(columns.fields().cloned())
        .with_partition_columns(partition_by.to_vec())
        .with_save_mode(SaveMode::Ignore);
    if let Some(d) = description {
        create = create.with_comment(d);
    }
    create.await.map_err(|e| Error::delta(name, e))
}

/// Opens an existing table (None when nothing was ever committed there).
pub async fn open(name: &str, url: url::Url) -> Result<Option<DeltaTable>, Error> {
    let table = DeltaTable::try_from_url(url)
        .await
        .map_err(|e| Error::delta(name, e))?;
    Ok(table.version().is_some().then_some(table))
}

/// What the table already holds for one source object.
#[derive(Debug, Default)]
pub struct SourceState {
    /// Highest event sequence applied for this object, if any.
    pub applied_seq: Option<i64>,
    /// SHA-256 of the content currently in the table for this object.
    pub sha256: Option<String>,
    /// Remove actions for the object's current files.
    pub removes: Vec<Remove>,
}

/// The app id of a source object's commits.
pub fn app_id(source_object: &str) -> String {
    format!("sluice:{source_object}")
}

/// Reads what the table holds for a source object.
pub async fn source_state(
    name: &str,
    table: &DeltaTable,
    source_object: &str,
) -> Result<SourceState, Error> {
    let snapshot = table.snapshot().map_err(|e| Error::delta(name, e))?;
    let log_store = table.log_store();
    let applied_seq = snapshot
        .transaction_version(log_store.as_ref(), app_id(source_object))
        .await
        .map_err(|e| Error::delta(name, e))?;
    let mut state = SourceState {
        applied_seq,
        ..Default::default()
    };
    let files: Vec<_> = snapshot
        .snapshot()
        .file_views(log_store.as_ref(), None)
        .try_collect()
        .await
        .map_err(|e| Error::delta(name, e))?;
    for file in files {
        #[allow(deprecated)] // the only public way to read a file's tags in deltalake 1.1
        let add = file.add_action();
        let tags = add.tags.unwrap_or_default();
        if tags.get(TAG_SOURCE).and_then(|v| v.as_deref()) == Some(source_object) {
            state.sha256 = tags.get(TAG_SHA256).cloned().flatten();
            state.removes.push(file.remove_action(true));
        }
    }
    Ok(state)
}

/// Streams batches into Parquet files (zstd) of a table; nothing is visible until [`commit`].
pub struct FileWriter {
    inner: RecordBatchWriter,
    table: String,
    rows: u64,
    rows_in_window: usize,
    finished: Vec<Add>,
}

/// Rows after which the open files are finished and new ones started. With one open file
/// per partition, a file's in-progress row groups and upload buffer stay in memory until
/// it is finished; finishing them every so many rows bounds memory whatever the size of
/// the source (at the price of more, smaller files for very large sources).
pub const WINDOW_ROWS: usize = 100_000;

impl FileWriter {
    /// A writer for the table's schema and partitions.
    pub fn new(name: &str, table: &DeltaTable) -> Result<Self, Error> {
        let props = WriterProperties::builder()
            .set_compression(Compression::ZSTD(
                ZstdLevel::try_new(3).expect("3 is a valid zstd level"),
            ))
            .set_max_row_group_row_count(Some(ROW_GROUP_ROWS))
            // Bytes bound a row group too: with one open file per partition, memory is
            // partitions x this, whatever the size of the source object.
            .set_max_row_group_bytes(Some(ROW_GROUP_BYTES))
            .build();
        let inner = RecordBatchWriter::for_table(table)
            .map_err(|e| Error::delta(name, e))?
            .with_writer_properties(props)
            .with_target_file_size(TARGET_FILE_SIZE);
        Ok(Self {
            inner,
            table: name.to_string(),
            rows: 0,
            rows_in_window: 0,
            finished: Vec::new(),
        })
    }

    /// Writes a batch (partitioned as the table declares).
    pub async fn write(&mut self, batch: RecordBatch) -> Result<(), Error> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        self.rows += batch.num_rows() as u64;
        self.rows_in_window += batch.num_rows();
        self.inner
            .write(batch)
            .await
            .map_err(|e| Error::delta(&self.table, e))?;
        if self.rows_in_window >= WINDOW_ROWS {
            let adds = self
                .inner
                .flush()
                .await
                .map_err(|e| Error::delta(&self.table, e))?;
            self.finished.extend(adds);
            self.rows_in_window = 0;
        }
        Ok(())
    }

    /// Rows written so far.
    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// Finishes the files; returns their Add actions, tagged with their source.
    pub async fn finish(mut self, tags: &[(&str, &str)]) -> Result<Vec<Add>, Error> {
        let mut adds = std::mem::take(&mut self.finished);
        adds.extend(
            self.inner
                .flush()
                .await
                .map_err(|e| Error::delta(&self.table, e))?,
        );
        for add in &mut adds {
            let map = add.tags.get_or_insert_with(HashMap::new);
            for (k, v) in tags {
                map.insert(k.to_string(), Some(v.to_string()));
            }
        }
        Ok(adds)
    }
}

/// Commits adds and removes atomically, recording `txn(app_id, version)` when given.
pub async fn commit(
    name: &str,
    table: &mut DeltaTable,
    adds: Vec<Add>,
    removes: Vec<Remove>,
    txn: Option<(String, i64)>,
    operation: DeltaOperation,
) -> Result<i64, Error> {
    let mut properties = CommitProperties::default();
    if let Some((app, version)) = txn {
        properties = properties.with_application_transaction(Transaction::new(app, version));
    }
    let actions: Vec<Action> = removes
        .into_iter()
        .map(Action::Remove)
        .chain(adds.into_iter().map(Action::Add))
        .collect();
    let snapshot = table.snapshot().map_err(|e| Error::delta(name, e))?;
    let finalized = CommitBuilder::from(properties)
        .with_actions(actions)
        .build(Some(snapshot), table.log_store(), operation)
        .await
        .map_err(|e| Error::delta(name, e))?;
    let version = finalized.version();
    table
        .update_state()
        .await
        .map_err(|e| Error::delta(name, e))?;
    Ok(version as i64)
}

/// Deletes files written but never committed (a failed threshold, say).
pub async fn discard(name: &str, table: &DeltaTable, adds: &[Add]) -> Result<(), Error> {
    let store = table.log_store().object_store(None);
    for add in adds {
        let path = deltalake::Path::from(add.path.as_str());
        match store.delete(&path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => {
                return Err(Error::delta(
                    name,
                    DeltaTableError::ObjectStore { source: e },
                ));
            }
        }
    }
    Ok(())
}
