//! Delta Lake tables: create, stream Parquet files, commit with an idempotency key.
//!
//! Exactly-once per source object rests on two Delta features:
//! - every commit carries a transaction identifier (`txn`: app id =
//!   `sluice:<bucket>/<key>`, version = the event's sequence number), so a
//!   retry after a crash sees "already applied" in the table itself;
//! - every data file is tagged with the object it came from
//!   (`sluice.source`, `sluice.sha256`), so a changed object replaces its own
//!   files in the same commit that adds the new ones: readers never see both,
//!   or neither. A file holding rows of several objects (compaction merged it, or a
//!   batch of small objects was written into it) is marked `sluice.compacted`;
//!   replacing or removing one of them finds it by its `_source_object` column and
//!   rewrites it without those rows, in the same commit;
//! - the content hash of what the table holds for an object is a second `txn`
//!   (app id `sluice-sha256:<bucket>/<key>`, version = the hash's first 63 bits), so
//!   "this exact content is already here" needs no file tags and survives compaction.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray as _, BooleanArray, RecordBatch, StringArray, new_null_array,
};
use arrow::datatypes::{DataType, Schema, SchemaRef};
use deltalake::kernel::engine::arrow_conversion::TryIntoKernel as _;
use deltalake::kernel::scalars::ScalarExt;
use deltalake::kernel::transaction::{CommitBuilder, CommitProperties};
use deltalake::kernel::{Action, Add, Remove, StructType, Transaction};
use deltalake::protocol::{DeltaOperation, SaveMode};
use deltalake::table::config::TablePropertiesExt as _;
use deltalake::writer::{DeltaWriter, RecordBatchWriter, WriteMode};
use deltalake::{DeltaTable, DeltaTableError};
use futures::TryStreamExt;
use object_store::ObjectStoreExt as _;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;

use crate::Error;
use crate::tail::{self, Tail};
use crate::txns::TxnIndex;

/// Tag naming the source object (`bucket/key`) of a data file.
pub const TAG_SOURCE: &str = "sluice.source";
/// Tag holding the SHA-256 of the source object's content.
pub const TAG_SHA256: &str = "sluice.sha256";
/// Tag of a file compaction wrote: it holds rows of several source objects.
pub const TAG_COMPACTED: &str = "sluice.compacted";
/// The column every silver row carries: the `bucket/key` it came from.
pub const SOURCE_COLUMN: &str = "_source_object";

/// The source object (and its content hash) of a file holding one object's rows.
fn file_source(tags: Option<&HashMap<String, Option<String>>>) -> Option<(&str, Option<&str>)> {
    let tags = tags?;
    let source = tags.get(TAG_SOURCE)?.as_deref()?;
    Some((source, tags.get(TAG_SHA256).and_then(|v| v.as_deref())))
}

/// Whether compaction wrote this file.
pub fn is_compacted(add: &Add) -> bool {
    add.tags
        .as_ref()
        .is_some_and(|t| t.contains_key(TAG_COMPACTED))
}

/// The app id whose txn version holds the content hash of an object's rows.
pub fn content_app_id(source_object: &str) -> String {
    format!("sluice-sha256:{source_object}")
}

/// A content hash as a txn version: its first 63 bits (0 means "no rows").
pub fn content_version(sha256: &str) -> i64 {
    let mut bytes = [0u8; 8];
    if let Ok(raw) = hex::decode(sha256.get(..16).unwrap_or_default()) {
        bytes.copy_from_slice(&raw);
    }
    (i64::from_be_bytes(bytes) & i64::MAX).max(1)
}

/// `year=2024/month=1/date=2024-01-05`: where an added file sits, in partition order.
pub fn partition_key(add: &Add, partition_by: &[String]) -> String {
    spell_partition_key(
        partition_by,
        partition_by
            .iter()
            .map(|p| add.partition_values.get(p).and_then(|v| v.as_deref())),
    )
}

/// `year=2024/month=1/...`: one partition's values (in `partition_by`'s order) as the
/// table's keys are spelt, a null as Hive's default partition.
pub fn spell_partition_key<'a>(
    partition_by: &[String],
    values: impl IntoIterator<Item = Option<&'a str>>,
) -> String {
    partition_by
        .iter()
        .zip(values)
        .map(|(name, value)| format!("{name}={}", value.unwrap_or("__HIVE_DEFAULT_PARTITION__")))
        .collect::<Vec<_>>()
        .join("/")
}

/// Most rows in one row group (DuckDB writes 122,880). A writer has one file open at a
/// time, so this bounds one row group's buffered pages; a query pays a fixed cost per
/// column chunk it reads (zstd contexts, a dictionary page, page headers): with 32 Ki-row
/// groups the zstd contexts alone were 4.5% of a short aggregate's CPU.
pub const ROW_GROUP_ROWS: usize = 128 * 1024;

/// Largest row group, in bytes, before it is flushed to storage.
pub const ROW_GROUP_BYTES: usize = 32 << 20;

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
    crate::log_listing::register();
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
    let stats = stats_columns(schema, partition_by);
    if !stats.is_empty() {
        create = create.with_configuration_property(
            deltalake::TableProperty::DataSkippingStatsColumns,
            Some(stats.join(",")),
        );
    }
    if let Some(d) = description {
        create = create.with_comment(d);
    }
    let table = create.await.map_err(|e| Error::delta(name, e))?;
    if let (Ok(root), Some(version)) = (table.table_url().to_file_path(), table.version()) {
        let log = root.join("_delta_log");
        sync_durably(name, root, vec![log.join(format!("{version:020}.json"))]).await?;
    }
    Ok(table)
}

/// The columns whose statistics a table of landed rows keeps in its Delta log: the source
/// object (exactly-once lookups, lineage queries) and the time columns, not every column.
/// deltalake re-parses every active file's statistics after each commit, so per-column
/// statistics nobody prunes by made each small ingest slower (measured: a 1,000-row object's
/// run 316 -> 217 ms, and its lookup query 36 -> 19 ms, docs/benchmarks.md). Parquet
/// footers keep statistics of every column for row-group pruning inside files. Empty (the
/// Delta default: the first 32 columns) for tables without a source column, such as gold.
pub fn stats_columns(schema: &Schema, partition_by: &[String]) -> Vec<String> {
    if !schema
        .fields()
        .iter()
        .any(|f| f.name() == SOURCE_COLUMN || f.name() == "source_object")
    {
        return Vec::new();
    }
    schema
        .fields()
        .iter()
        .filter(|f| !partition_by.contains(f.name()))
        .filter(|f| {
            f.name() == SOURCE_COLUMN
                || f.name() == "source_object"
                || matches!(
                    f.data_type(),
                    DataType::Timestamp(..) | DataType::Date32 | DataType::Date64
                )
        })
        .map(|f| {
            let name = f.name();
            if name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                name.clone()
            } else {
                format!("`{}`", name.replace('`', "``"))
            }
        })
        .collect()
}

/// The lake's Delta tables, kept open: each use brings its copy up to date by reading
/// only the commits made since the last one, not the whole log (a table with thousands
/// of commits would otherwise parse megabytes of log per ingest and per query).
#[derive(Default)]
pub struct TableCache {
    tables: std::sync::Mutex<HashMap<url::Url, DeltaTable>>,
    /// Each table's application transactions, advanced commit by commit ([`TxnIndex`]).
    txns: std::sync::Mutex<HashMap<url::Url, Arc<tokio::sync::Mutex<TxnSlot>>>>,
    /// Checkpoints and log cleanups running beside commits ([`TableCache::commit`]).
    maintenance: std::sync::Mutex<tokio::task::JoinSet<()>>,
    /// The query runtime every SQL session over these tables shares ([`TableCache::runtime`]).
    runtime: std::sync::OnceLock<Arc<datafusion::execution::runtime_env::RuntimeEnv>>,
    /// Each table's write-ahead tail, read back when the table is first used ([`crate::tail`]).
    tails: std::sync::Mutex<HashMap<url::Url, Arc<Tail>>>,
    /// Tails are read back one at a time (a second reader must not delete what a first
    /// one's appends are writing).
    reading_tails: tokio::sync::Mutex<()>,
    /// Whether this process serves the data directory: it alone deletes tail files.
    owns_tails: std::sync::atomic::AtomicBool,
    /// Each table version's active files as queries plan them ([`crate::scan::FileLists`]).
    file_lists: Arc<crate::scan::FileLists>,
    /// The SQL sessions' state as built once ([`TableCache::session_state`]).
    session: std::sync::OnceLock<datafusion::execution::SessionState>,
}

/// What the cache knows of a table's transactions.
#[derive(Default)]
enum TxnSlot {
    /// Not read yet.
    #[default]
    Unread,
    /// Indexed, as of the index's version.
    Indexed(TxnIndex),
    /// Not indexable ([`TxnIndex::load`]): deltalake answers each lookup.
    Unindexable,
}

/// The `txn` versions a table holds for the app ids asked about (absent: never committed).
#[derive(Debug, Default)]
pub struct TxnVersions(HashMap<String, i64>);

impl TxnVersions {
    /// The latest version `app_id` committed, if it did.
    pub fn get(&self, app_id: &str) -> Option<i64> {
        self.0.get(app_id).copied()
    }

    /// Adds versions found elsewhere (a table's tail), keeping the higher of two.
    pub fn merge(&mut self, other: HashMap<String, i64>) {
        for (app, version) in other {
            let slot = self.0.entry(app).or_insert(version);
            *slot = (*slot).max(version);
        }
    }
}

impl TableCache {
    fn cached(&self, url: &url::Url) -> Option<DeltaTable> {
        self.tables
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(url)
            .cloned()
    }

    /// Keeps `table` for the next use, unless a newer version of it is already kept.
    pub fn keep(&self, url: &url::Url, table: &DeltaTable) {
        let mut tables = self.tables.lock().unwrap_or_else(|p| p.into_inner());
        if tables
            .get(url)
            .is_none_or(|t| t.version() < table.version())
        {
            tables.insert(url.clone(), table.clone());
        }
    }

    /// The table at `url` at its latest version (None when nothing was ever committed there).
    pub async fn latest(&self, name: &str, url: url::Url) -> Result<Option<DeltaTable>, Error> {
        // A table's tail is read on its first use, before its version.
        let unread = self.unread_tail(&url).await?;
        let table = match self.cached(&url) {
            Some(mut table) => {
                if has_next_commit(name, &table).await? {
                    table
                        .update_state()
                        .await
                        .map_err(|e| Error::delta(name, e))?;
                }
                table
            }
            None => match open(name, url.clone()).await? {
                Some(table) => table,
                None => return Ok(None),
            },
        };
        self.keep(&url, &table);
        if let Some((_reading, unread)) = unread {
            self.install_tail(name, &url, &table, unread).await?;
        }
        Ok(Some(table))
    }

    /// The tail of the table at `url` read from disk, when no use has read it yet (with the
    /// guard that keeps a second reader out until it is installed).
    async fn unread_tail(
        &self,
        url: &url::Url,
    ) -> Result<Option<(tokio::sync::MutexGuard<'_, ()>, Tail)>, Error> {
        let Some(dir) = Tail::dir_of(url).filter(|_| self.tail(url).is_none()) else {
            return Ok(None);
        };
        let guard = self.reading_tails.lock().await;
        if self.tail(url).is_some() {
            return Ok(None);
        }
        Ok(Some((guard, tail::read(dir, self.owns_tails()).await?)))
    }

    /// Marks this process as the one serving the data directory: it deletes tail files
    /// (half-written ones, and those a flush committed before a crash).
    pub fn own_tails(&self) {
        self.owns_tails
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }

    fn owns_tails(&self) -> bool {
        self.owns_tails.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// The table at `url` at its latest version with the entries of its tail that version
    /// does not hold (see [`crate::tail`] for why each row is counted once).
    pub async fn latest_with_tail(
        &self,
        name: &str,
        url: url::Url,
    ) -> Result<Option<(DeltaTable, Vec<Arc<tail::Entry>>)>, Error> {
        let before = self.tail(&url).map(|t| t.capture());
        let Some(table) = self.latest(name, url.clone()).await? else {
            return Ok(None);
        };
        let captured = before
            .or_else(|| self.tail(&url).map(|t| t.capture()))
            .unwrap_or_default();
        let version = table.version().map_or(-1, |v| v as i64);
        let undecided = Tail::undecided(&captured, version);
        let txns = if undecided.is_empty() {
            None
        } else {
            self.indexed_txn_versions(name, &table, &undecided)
                .await?
                .map(|found| found.0)
        };
        Ok(Some((
            table,
            Tail::visible(captured, version, txns.as_ref()).await,
        )))
    }

    /// The tail of the table at `url`, once a use of the table has read it back.
    pub fn tail(&self, url: &url::Url) -> Option<Arc<Tail>> {
        self.tails
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(url)
            .cloned()
    }

    /// Keeps a table's tail, read before `table`, without the entries `table` holds.
    async fn install_tail(
        &self,
        name: &str,
        url: &url::Url,
        table: &DeltaTable,
        unread: Tail,
    ) -> Result<(), Error> {
        let tail = tail::recover(self, name, table, unread, self.owns_tails()).await?;
        self.tails
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(url.clone(), Arc::new(tail));
        Ok(())
    }

    /// Like [`TableCache::txn_versions`], from the table's [`TxnIndex`] alone: None when
    /// the index cannot answer for this copy's version (the table is not indexable, or the
    /// index is already past it), where deltalake's own lookup, which replays the log,
    /// would be needed.
    pub async fn indexed_txn_versions(
        &self,
        name: &str,
        table: &DeltaTable,
        app_ids: &[String],
    ) -> Result<Option<TxnVersions>, Error> {
        let version = table.version().map_or(-1, |v| v as i64);
        let expiring = txns_expire(name, table)?;
        let slot = self
            .txns
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(table.table_url().clone())
            .or_default()
            .clone();
        let mut slot = slot.lock().await;
        if expiring {
            *slot = TxnSlot::Unindexable;
        }
        if let TxnSlot::Indexed(index) = &mut *slot
            && index.version() <= version
            && !index
                .advance(name, table.log_store().as_ref(), version)
                .await?
        {
            *slot = TxnSlot::Unread;
        }
        if let TxnSlot::Unread = &*slot {
            *slot = match TxnIndex::load(name, table).await? {
                Some(index) => TxnSlot::Indexed(index),
                None => TxnSlot::Unindexable,
            };
        }
        Ok(match &*slot {
            TxnSlot::Indexed(index) if index.version() == version => Some(TxnVersions(
                app_ids
                    .iter()
                    .filter_map(|app| index.get(app).map(|v| (app.clone(), v)))
                    .collect(),
            )),
            _ => None,
        })
    }

    /// The latest `txn` version of each of `app_ids` in `table`, as of its version. Read
    /// from the table's [`TxnIndex`] (kept from use to use, advanced by the commits since),
    /// or asked of deltalake when the table cannot be indexed or this copy of it is older
    /// than the index.
    pub async fn txn_versions(
        &self,
        name: &str,
        table: &DeltaTable,
        app_ids: Vec<String>,
    ) -> Result<TxnVersions, Error> {
        if let Some(found) = self.indexed_txn_versions(name, table, &app_ids).await? {
            return Ok(found);
        }
        let snapshot = table.snapshot().map_err(|e| Error::delta(name, e))?;
        let mut found = HashMap::new();
        for app in app_ids {
            let v = snapshot
                .transaction_version(table.log_store().as_ref(), &app)
                .await
                .map_err(|e| Error::delta(name, e))?;
            if let Some(v) = v {
                found.insert(app, v);
            }
        }
        Ok(TxnVersions(found))
    }

    /// Commits like [`commit`], but the checkpoint a commit may owe (every
    /// `delta.checkpointInterval` versions) and the expired-log cleanup after it run in a
    /// task beside the caller instead of inside the commit: a checkpoint rewrites the
    /// table's whole state (every active file, every `txn`), which made every 100th commit
    /// of a busy table wait tens of milliseconds, and the cleanup lists the whole
    /// `_delta_log` on every commit. [`TableCache::settle`] waits for those tasks.
    pub async fn commit(
        &self,
        name: &str,
        table: &mut DeltaTable,
        adds: Vec<Add>,
        removes: Vec<Remove>,
        txns: Vec<(String, i64)>,
        operation: DeltaOperation,
    ) -> Result<i64, Error> {
        let version = commit_with(name, table, adds, removes, txns, operation, false).await?;
        let config = table
            .snapshot()
            .map_err(|e| Error::delta(name, e))?
            .table_config();
        let interval = config.checkpoint_interval().get();
        if (version as u64 + 1).is_multiple_of(interval) {
            let cleanup = config.enable_expired_log_cleanup();
            let table = table.clone();
            let name = name.to_string();
            let mut tasks = self.maintenance.lock().unwrap_or_else(|p| p.into_inner());
            while tasks.try_join_next().is_some() {}
            tasks.spawn(async move {
                // A missed checkpoint costs readers a longer replay until the next one;
                // it never loses data, so it is reported, not raised.
                if let Err(e) = deltalake::checkpoints::create_checkpoint(&table, None).await {
                    tracing::warn!(table = %name, error = %e, "checkpoint failed");
                    return;
                }
                // `_last_checkpoint` names the checkpoint: both survive a power loss, or a
                // reader could be sent to a checkpoint file that lost its bytes.
                if let Ok(root) = table.table_url().to_file_path() {
                    let log = root.join("_delta_log");
                    let files = vec![
                        log.join(format!("{version:020}.checkpoint.parquet")),
                        log.join("_last_checkpoint"),
                    ];
                    if let Err(e) = sync_durably(&name, log, files).await {
                        tracing::warn!(table = %name, error = %e, "checkpoint not fsync'd");
                    }
                }
                if cleanup
                    && let Err(e) = deltalake::checkpoints::cleanup_metadata(&table, None).await
                {
                    tracing::warn!(table = %name, error = %e, "expired log cleanup failed");
                }
            });
        }
        Ok(version)
    }

    /// Waits for the checkpoints and log cleanups started by [`TableCache::commit`] (before
    /// a process exits, so a short-lived command leaves its checkpoints behind too).
    pub async fn settle(&self) {
        let mut tasks =
            std::mem::take(&mut *self.maintenance.lock().unwrap_or_else(|p| p.into_inner()));
        while tasks.join_next().await.is_some() {}
    }

    /// The active-file lists SQL sessions plan their scans from ([`crate::scan::FileLists`]).
    pub fn file_lists(&self) -> &Arc<crate::scan::FileLists> {
        &self.file_lists
    }

    /// A copy of the session state `build` makes, built on first use only: building one
    /// registers every function and rule anew, a copy clones their maps.
    pub(crate) fn session_state(
        &self,
        build: impl FnOnce() -> datafusion::execution::SessionState,
    ) -> datafusion::execution::SessionState {
        self.session.get_or_init(build).clone()
    }

    /// The DataFusion runtime the SQL sessions over these tables share: its object stores
    /// and its cache of Parquet footers outlive a session, so a query does not read again
    /// the footers of files an earlier query read (a file, once committed, never changes).
    pub fn runtime(&self) -> Arc<datafusion::execution::runtime_env::RuntimeEnv> {
        self.runtime
            .get_or_init(|| Arc::new(datafusion::execution::runtime_env::RuntimeEnv::default()))
            .clone()
    }

    /// The table at `url` at its latest version, created first when it does not exist.
    pub async fn latest_or_create(
        &self,
        name: &str,
        url: url::Url,
        schema: &Schema,
        partition_by: &[String],
        description: Option<&str>,
    ) -> Result<DeltaTable, Error> {
        if let Some(table) = self.latest(name, url.clone()).await? {
            return Ok(table);
        }
        let unread = self.unread_tail(&url).await?;
        let table = open_or_create(name, url.clone(), schema, partition_by, description).await?;
        self.keep(&url, &table);
        if let Some((_reading, unread)) = unread {
            self.install_tail(name, &url, &table, unread).await?;
        }
        Ok(table)
    }
}

/// Whether the table's `txn`s expire (`delta.setTransactionRetentionDuration`): an
/// object's files may then outlive its txn.
pub fn txns_expire(name: &str, table: &DeltaTable) -> Result<bool, Error> {
    Ok(table
        .snapshot()
        .map_err(|e| Error::delta(name, e))?
        .snapshot()
        .table_properties()
        .set_transaction_retention_duration
        .is_some())
}

/// Whether a commit was made after the version `table` holds: versions are numbered without
/// gaps and each is its own `_delta_log/<version>.json`, so one lookup of the next version's
/// file answers what deltalake's update finds by listing the log and rebuilding the
/// snapshot (most of a short query's fixed cost, paid by every query and every ingest).
async fn has_next_commit(name: &str, table: &DeltaTable) -> Result<bool, Error> {
    let Some(version) = table.version() else {
        return Ok(true);
    };
    let next = deltalake::Path::from(format!("_delta_log/{:020}.json", version + 1));
    match table.log_store().object_store(None).head(&next).await {
        Ok(_) => Ok(true),
        Err(object_store::Error::NotFound { .. }) => Ok(false),
        Err(e) => Err(Error::delta(
            name,
            DeltaTableError::ObjectStore { source: e },
        )),
    }
}

/// The table's partition columns, in partition order.
pub fn partition_columns(name: &str, table: &DeltaTable) -> Result<Vec<String>, Error> {
    Ok(table
        .snapshot()
        .map_err(|e| Error::delta(name, e))?
        .metadata()
        .partition_columns()
        .to_vec())
}

/// Opens an existing table (None when nothing was ever committed there).
///
/// On local disk a table without a `_delta_log` directory is known empty by one `stat`:
/// deltalake would list the directory and look for a checkpoint hint first, and a query
/// that names no table (`SELECT 1`, `information_schema`) registers every table, so each
/// such query paid that for every table not yet written (a gold model before its first
/// refresh, say).
pub async fn open(name: &str, url: url::Url) -> Result<Option<DeltaTable>, Error> {
    crate::log_listing::register();
    if let Ok(root) = url.to_file_path()
        && matches!(root.join("_delta_log").try_exists(), Ok(false))
    {
        return Ok(None);
    }
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
    /// The content hash of the object's rows in the table ([`content_version`]), if any.
    pub content: Option<i64>,
    /// SHA-256 of the object's content, from its files' tags (tables written before the
    /// content txn existed).
    pub sha256: Option<String>,
    /// Remove actions for the files holding only this object's rows.
    pub removes: Vec<Remove>,
    /// Compacted files: they may hold this object's rows among others' ([`shared_files`]).
    /// Filled by [`source_state`]; [`source_state_in`] leaves it to [`FileIndex::compacted`].
    pub compacted: Vec<Add>,
}

impl SourceState {
    /// Whether the table holds exactly this content for the object.
    pub fn holds(&self, sha256: &str) -> bool {
        self.applied_seq.is_some()
            && (self.content == Some(content_version(sha256))
                || (self.content.is_none() && self.sha256.as_deref() == Some(sha256)))
    }
}

/// The app id of a source object's commits.
pub fn app_id(source_object: &str) -> String {
    format!("sluice:{source_object}")
}

/// A table's active files by the source object they hold: one pass over the file list
/// answers every object of a batch.
#[derive(Debug, Default)]
pub struct FileIndex {
    /// Files holding one object's rows, by its `bucket/key`: the content hash tag and the files.
    by_source: HashMap<String, (Option<String>, Vec<Add>)>,
    /// Compacted (or batch-written) files: they may hold rows of any object.
    pub compacted: Vec<Add>,
}

impl FileIndex {
    /// Indexes the table's active files.
    pub async fn load(name: &str, table: &DeltaTable) -> Result<Self, Error> {
        let mut index = FileIndex::default();
        for add in active_files(name, table).await? {
            if let Some((source, sha)) = file_source(add.tags.as_ref()) {
                let entry = index.by_source.entry(source.to_string()).or_default();
                entry.0 = sha.map(String::from);
                entry.1.push(add);
            } else if is_compacted(&add) {
                index.compacted.push(add);
            }
        }
        Ok(index)
    }
}

/// The app ids whose txn versions [`source_state_in`] reads for a source object.
pub fn source_app_ids(source_object: &str) -> [String; 2] {
    [app_id(source_object), content_app_id(source_object)]
}

/// Reads what the table holds for a source object.
pub async fn source_state(
    name: &str,
    table: &DeltaTable,
    tables: &TableCache,
    source_object: &str,
) -> Result<SourceState, Error> {
    let index = FileIndex::load(name, table).await?;
    let txns = tables
        .txn_versions(name, table, source_app_ids(source_object).into())
        .await?;
    let mut state = source_state_in(&index, &txns, source_object);
    state.compacted = index.compacted;
    Ok(state)
}

/// What the table holds for a source object: its files found in `index` (whose compacted
/// files the caller reads from the index itself), its txns in `txns`
/// ([`source_app_ids`]).
pub fn source_state_in(index: &FileIndex, txns: &TxnVersions, source_object: &str) -> SourceState {
    let [applied, content] = source_app_ids(source_object);
    let (sha256, files) = index
        .by_source
        .get(source_object)
        .map(|(sha, files)| (sha.clone(), files.as_slice()))
        .unwrap_or_default();
    SourceState {
        applied_seq: txns.get(&applied),
        content: txns.get(&content),
        sha256,
        removes: files.iter().map(|add| remove_of(add, true)).collect(),
        // A batch reads the index's compacted files once, not a copy per object.
        compacted: Vec::new(),
    }
}

/// The compacted files holding rows of any of `sources` (named as the table's app ids
/// are, [`source_values`]): each file's source column is checked, row groups whose
/// statistics exclude them all skipped.
pub async fn shared_files(
    name: &str,
    table: &DeltaTable,
    compacted: &[Add],
    sources: &BTreeSet<String>,
) -> Result<Vec<Add>, Error> {
    let root = table_dir(name, table)?;
    let (files, sources) = (compacted.to_vec(), sources.clone());
    let name = name.to_string();
    tokio::task::spawn_blocking(move || {
        let mut out = Vec::new();
        for add in files {
            if file_holds(&root, &name, &add, &sources).map_err(|e| {
                Error::Internal(format!("reading {name} data file {}: {e}", add.path))
            })? {
                out.push(add);
            }
        }
        Ok(out)
    })
    .await
    .map_err(|e| Error::Internal(format!("the file scan died: {e}")))?
}

fn table_dir(name: &str, table: &DeltaTable) -> Result<std::path::PathBuf, Error> {
    table
        .table_url()
        .to_file_path()
        .map_err(|_| Error::Internal(format!("{name} is not on local disk")))
}

/// Where a shared file of table `name` names each row's source, and the values there
/// that are among `sources` (the table's app ids without their prefix): a silver table's
/// `_source_object` (`bucket/key`); the quarantine's `source_object`, for sources named
/// `table:bucket/key` whose table is the file's `table_name` partition (the quarantine's
/// app ids).
fn source_values(
    name: &str,
    add: &Add,
    sources: &BTreeSet<String>,
) -> (&'static str, BTreeSet<String>) {
    use crate::ingest::{QUARANTINE_PARTITION, QUARANTINE_SOURCE_COLUMN, QUARANTINE_TABLE};
    if name != QUARANTINE_TABLE {
        return (SOURCE_COLUMN, sources.clone());
    }
    let values = match add.partition_values.get(QUARANTINE_PARTITION) {
        Some(Some(table)) => {
            let prefix = format!("{table}:");
            sources
                .iter()
                .filter_map(|s| s.strip_prefix(&prefix).map(String::from))
                .collect()
        }
        _ => BTreeSet::new(),
    };
    (QUARANTINE_SOURCE_COLUMN, values)
}

fn file_holds(
    root: &std::path::Path,
    name: &str,
    add: &Add,
    sources: &BTreeSet<String>,
) -> Result<bool, Box<dyn std::error::Error + Send + Sync>> {
    use parquet::arrow::ProjectionMask;
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    use parquet::file::statistics::Statistics;
    let (source_column, sources) = source_values(name, add, sources);
    if sources.is_empty() {
        return Ok(false);
    }
    let sources = &sources;
    let file = std::fs::File::open(file_path(root, add))?;
    let builder = ParquetRecordBatchReaderBuilder::try_new(file)?;
    let parquet_schema = builder.parquet_schema();
    let Some(column) = parquet_schema
        .columns()
        .iter()
        .position(|c| c.name() == source_column)
    else {
        return Ok(false);
    };
    let row_groups: Vec<usize> = builder
        .metadata()
        .row_groups()
        .iter()
        .enumerate()
        .filter(|(_, rg)| match rg.column(column).statistics() {
            Some(Statistics::ByteArray(s)) => match (s.min_opt(), s.max_opt()) {
                (Some(min), Some(max)) => sources
                    .iter()
                    .any(|s| min.data() <= s.as_bytes() && s.as_bytes() <= max.data()),
                _ => true,
            },
            _ => true,
        })
        .map(|(i, _)| i)
        .collect();
    if row_groups.is_empty() {
        return Ok(false);
    }
    let mask = ProjectionMask::leaves(parquet_schema, [column]);
    let reader = builder
        .with_projection(mask)
        .with_row_groups(row_groups)
        .build()?;
    for batch in reader {
        let batch = batch?;
        let values = arrow::compute::cast(batch.column(0), &DataType::Utf8)?;
        let values = values
            .as_any()
            .downcast_ref::<StringArray>()
            .ok_or("the source column is not text")?;
        if values.iter().flatten().any(|v| sources.contains(v)) {
            return Ok(true);
        }
    }
    Ok(false)
}

/// The Remove action that retires an added file (`data_change` false for compaction).
pub fn remove_of(add: &Add, data_change: bool) -> Remove {
    Remove {
        path: add.path.clone(),
        data_change,
        deletion_timestamp: Some(chrono::Utc::now().timestamp_millis()),
        extended_file_metadata: Some(true),
        partition_values: Some(add.partition_values.clone()),
        size: Some(add.size),
        tags: add.tags.clone(),
        deletion_vector: add.deletion_vector.clone(),
        base_row_id: add.base_row_id,
        default_row_commit_version: add.default_row_commit_version,
    }
}

/// The table's active data files.
pub async fn active_files(name: &str, table: &DeltaTable) -> Result<Vec<Add>, Error> {
    let snapshot = table.snapshot().map_err(|e| Error::delta(name, e))?;
    let log_store = table.log_store();
    let files: Vec<_> = snapshot
        .snapshot()
        .file_views(log_store.as_ref(), None)
        .try_collect()
        .await
        .map_err(|e| Error::delta(name, e))?;
    #[allow(deprecated)] // the only public way to read a file's tags in deltalake 1.1
    Ok(files.into_iter().map(|f| f.add_action()).collect())
}

/// Reads a data file's rows in `schema` (the table's columns in order), its partition
/// columns restored from the file's partition values.
pub async fn read_file(
    name: &str,
    table: &DeltaTable,
    add: &Add,
    schema: &SchemaRef,
) -> Result<Vec<RecordBatch>, Error> {
    let path = file_path(&table_dir(name, table)?, add);
    let parquet_error = |e: parquet::errors::ParquetError| {
        Error::Internal(format!("reading {name} data file {}: {e}", add.path))
    };
    let file = std::fs::File::open(&path).map_err(|e| Error::Io {
        what: format!("opening {}", path.display()),
        source: e,
    })?;
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
        .map_err(parquet_error)?
        .with_batch_size(65_536)
        .build()
        .map_err(parquet_error)?;
    let mut out = Vec::new();
    for batch in reader {
        let batch = batch.map_err(|e| Error::Internal(format!("reading {}: {e}", add.path)))?;
        let n = batch.num_rows();
        let mut columns: Vec<ArrayRef> = Vec::with_capacity(schema.fields().len());
        for field in schema.fields() {
            let column = match batch.column_by_name(field.name()) {
                Some(c) => c.clone(),
                None => match add.partition_values.get(field.name()).cloned().flatten() {
                    Some(value) => {
                        let text: ArrayRef = Arc::new(StringArray::from(vec![value; n]));
                        arrow::compute::cast(&text, field.data_type()).map_err(|e| {
                            Error::Internal(format!("partition value of {}: {e}", field.name()))
                        })?
                    }
                    None => new_null_array(field.data_type(), n),
                },
            };
            let column = if column.data_type() == field.data_type() {
                column
            } else {
                arrow::compute::cast(&column, field.data_type())
                    .map_err(|e| Error::Internal(format!("column {}: {e}", field.name())))?
            };
            columns.push(column);
        }
        out.push(
            RecordBatch::try_new(schema.clone(), columns)
                .map_err(|e| Error::Internal(format!("rebuilding rows of {}: {e}", add.path)))?,
        );
    }
    Ok(out)
}

/// Rewrites files shared with other objects without the rows of `sources` (named as the
/// table's app ids are, [`source_values`]): the files' removes and the rewritten files'
/// adds, for the caller's commit.
pub async fn rewrite_without(
    name: &str,
    table: &DeltaTable,
    shared: &[Add],
    sources: &BTreeSet<String>,
) -> Result<(Vec<Add>, Vec<Remove>), Error> {
    let mut adds = Vec::new();
    let mut removes = Vec::new();
    for file in shared {
        let (source_column, sources) = source_values(name, file, sources);
        let mut writer = FileWriter::new(name, table)?;
        let schema = writer.schema();
        for batch in read_file(name, table, file, &schema).await? {
            let column = batch
                .column_by_name(source_column)
                .ok_or_else(|| Error::Internal(format!("{name} has no {source_column} column")))?;
            let column = arrow::compute::cast(column, &DataType::Utf8)
                .map_err(|e| Error::Internal(format!("reading {}: {e}", file.path)))?;
            let keep: BooleanArray = column
                .as_string::<i32>()
                .iter()
                .map(|v| Some(v.is_none_or(|v| !sources.contains(v))))
                .collect();
            let kept = arrow::compute::filter_record_batch(&batch, &keep)
                .map_err(|e| Error::Internal(format!("filtering {}: {e}", file.path)))?;
            writer.write(kept).await?;
        }
        adds.extend(writer.finish(&[(TAG_COMPACTED, "true")]).await?);
        removes.push(remove_of(file, true));
    }
    Ok((adds, removes))
}

/// A batch's rows in partition order ([`partition_sorted`]).
#[derive(Debug, Clone)]
pub struct PartitionSorted {
    /// The rows, each partition's together, the partitions in order.
    pub rows: RecordBatch,
    /// Where each partition's rows start in `rows` (one per partition, ascending; none
    /// without partition columns or rows): what spells the batch's partition keys
    /// without grouping its rows again.
    pub firsts: Vec<u32>,
}

/// The rows of `batch` that `keep` selects (all when None), in the order a [`FileWriter`]
/// writes a table's partitions in (by `partition_by`'s values, as the writer's row
/// converter orders them; rows of one partition in their order). One gather, as the
/// filter of the valid rows it stands for: a tail entry's rows are stored so, and its
/// flush writes each entry's partition slices as they are instead of gathering every
/// row again (that `take` was ~13% of a tail flush's CPU, docs/benchmarks.md, session 44).
pub fn partition_sorted(
    batch: &RecordBatch,
    keep: Option<&BooleanArray>,
    partition_by: &[String],
) -> Result<PartitionSorted, arrow::error::ArrowError> {
    let kept = |row: usize| keep.is_none_or(|k| k.is_valid(row) && k.value(row));
    if partition_by.is_empty() || batch.num_rows() == 0 {
        let rows = match keep {
            Some(keep) => arrow::compute::filter_record_batch(batch, keep)?,
            None => batch.clone(),
        };
        return Ok(PartitionSorted {
            rows,
            firsts: Vec::new(),
        });
    }
    let mut columns = Vec::with_capacity(partition_by.len());
    for name in partition_by {
        columns.push(batch.column_by_name(name).cloned().ok_or_else(|| {
            arrow::error::ArrowError::SchemaError(format!("no partition column {name}"))
        })?);
    }
    let converter = arrow::row::RowConverter::new(
        columns
            .iter()
            .map(|c| arrow::row::SortField::new(c.data_type().clone()))
            .collect(),
    )?;
    let rows = converter.convert_columns(&columns)?;
    // Each kept row's partition, numbered as first seen, then ranked in partition order.
    let mut numbers: datafusion::common::HashMap<arrow::row::Row<'_>, u32> =
        datafusion::common::HashMap::new();
    let mut of_row: Vec<u32> = (0..batch.num_rows())
        .map(|row| {
            if kept(row) {
                let next = numbers.len() as u32;
                *numbers.entry(rows.row(row)).or_insert(next)
            } else {
                SKIP
            }
        })
        .collect();
    let (order, rank) = ranked(numbers);
    let (starts, indices) = grouped(&mut of_row, &rank, order.len());
    let rows = match indices {
        None => batch.clone(),
        Some(indices) => {
            arrow::compute::take_record_batch(batch, &arrow::array::UInt32Array::from(indices))?
        }
    };
    let firsts = starts[..order.len()].iter().map(|&s| s as u32).collect();
    Ok(PartitionSorted { rows, firsts })
}

/// A row not kept, in a batch's numbering of its rows' partitions.
const SKIP: u32 = u32::MAX;

/// Partitions numbered as first seen, put in key order: the keys with their numbers,
/// sorted, and each number's rank among them.
fn ranked(
    numbers: datafusion::common::HashMap<arrow::row::Row<'_>, u32>,
) -> (Vec<(arrow::row::Row<'_>, u32)>, Vec<u32>) {
    let mut order: Vec<(arrow::row::Row<'_>, u32)> = numbers.into_iter().collect();
    order.sort_unstable_by_key(|(key, _)| *key);
    let mut rank = vec![0u32; order.len()];
    for (i, (_, number)) in order.iter().enumerate() {
        rank[*number as usize] = i as u32;
    }
    (order, rank)
}

/// One batch's rows grouped by partition: `of_row` holds each row's partition number
/// ([`SKIP`]: not kept), turned here into its rank among `parts` ([`ranked`]). Returns
/// where partition `p`'s rows start among the kept ones (`starts[p]..starts[p + 1]`), and
/// the rows to gather in that order; None when every row is kept and already in that
/// order (the batch as it is).
fn grouped(of_row: &mut [u32], rank: &[u32], parts: usize) -> (Vec<usize>, Option<Vec<u32>>) {
    let mut starts = vec![0usize; parts + 1];
    let mut ordered = true;
    let mut last = 0;
    for p in of_row.iter_mut() {
        if *p == SKIP {
            ordered = false;
            continue;
        }
        *p = rank[*p as usize];
        ordered &= *p >= last;
        last = *p;
        starts[*p as usize + 1] += 1;
    }
    for p in 0..parts {
        starts[p + 1] += starts[p];
    }
    if ordered {
        return (starts, None);
    }
    let mut next = starts.clone();
    let mut indices = vec![0u32; starts[parts]];
    for (row, &p) in of_row.iter().enumerate().filter(|(_, p)| **p != SKIP) {
        indices[next[p as usize]] = row as u32;
        next[p as usize] += 1;
    }
    (starts, Some(indices))
}

/// Whether a column of this type is worth a dictionary. Measurements and instants
/// (floats, timestamps) rarely repeat a value, so a dictionary is all cost: every value
/// hashed into it, a dictionary page as large as the values, then indices on top (the
/// interning alone was ~6% of a taxi ingest's CPU). They are written PLAIN, which zstd
/// compresses as well; codes, amounts, names and dates keep their dictionaries.
fn dictionary_pays(ty: &DataType) -> bool {
    !matches!(
        ty,
        DataType::Float16
            | DataType::Float32
            | DataType::Float64
            | DataType::Timestamp(_, _)
            | DataType::Time64(_)
            | DataType::Time32(_)
    )
}

/// Rows of a writer's first window that [`settle_encodings`] looks at.
const SAMPLE_ROWS: usize = 4096;

/// Fewer values than this in the sample say nothing of a column: it keeps the defaults.
const SAMPLE_MIN: usize = 1024;

/// A first window of at least this many rows (a large source, a compaction) is worth the
/// few tens of milliseconds [`settle_encodings`]' trials take.
const TRIAL_ROWS: usize = 64 * 1024;

/// The rows [`settle_encodings`] samples: a window's first [`SAMPLE_ROWS`], across its
/// batches. A tail flush's window is many small entries, and its first entry alone (one
/// object of ~1,000 rows) had too few rows to say anything: its files kept a dictionary
/// for every column, distinct digests and line numbers among them.
fn window_sample(batches: &[Selected]) -> Option<RecordBatch> {
    let first = &batches.first()?.batch;
    if first.num_rows() >= SAMPLE_ROWS || batches.len() == 1 {
        return Some(first.clone());
    }
    let mut parts = Vec::new();
    let mut rows = 0;
    for selected in batches {
        if rows >= SAMPLE_ROWS {
            break;
        }
        let take = (SAMPLE_ROWS - rows).min(selected.batch.num_rows());
        parts.push(selected.batch.slice(0, take));
        rows += take;
    }
    // A window's batches share the table's schema; were they not to, the first one alone.
    Some(arrow::compute::concat_batches(&first.schema(), &parts).unwrap_or_else(|_| first.clone()))
}

/// A trial encoding within this fraction of the smallest counts as small as it.
const SAMPLE_TIE: f64 = 0.01;

/// Settles how each column of a writer's files is encoded (partition columns aside), from
/// a sample of the first rows it writes:
///
/// - the dictionary is turned off for columns whose values are mostly distinct (more than
///   half): identifiers, hashes, line numbers (amounts keep theirs). Their dictionary was
///   as large as their values, every value was hashed into it and the file held indices
///   on top (a taxi ingest's `trip_id` and `_source_line`: ~1.6% of its CPU);
/// - when `trials`, each column is written alone a few ways and the fastest of those
///   within 1% of the smallest is kept: uncompressed, zstd level 1 or the writer's level;
///   without a dictionary, integers and instants also packed as deltas
///   (DELTA_BINARY_PACKED) and floats split into byte streams (BYTE_STREAM_SPLIT). zstd's
///   level 3 took 3.2x level 1's time on an md5's hex digits and compressed them worse
///   (x1.93 against x2.00); instants in random order packed as deltas were smaller than
///   PLAIN and half its compression time (docs/benchmarks.md, session 20). Coordinates
///   split into byte streams were ~10% smaller than PLAIN at level 3 in half the time, and
///   a dictionary of a few codes (vendor, payment type, weekday) gained nothing from zstd
///   but its cost (session 23). Columns where level 3 compresses better keep it. Only a
///   first window of [`TRIAL_ROWS`] runs trials.
fn settle_encodings(
    props: WriterProperties,
    first: Option<&RecordBatch>,
    partition_by: &[String],
    trials: bool,
) -> WriterProperties {
    let Some(batch) = first else {
        return props;
    };
    let sample = batch.num_rows().min(SAMPLE_ROWS);
    let mut builder = props.clone().into_builder();
    let mut changed = false;
    for (field, column) in batch.schema().fields().iter().zip(batch.columns()) {
        // Partition columns are in the path, not in the files.
        if partition_by.contains(field.name()) {
            continue;
        }
        let column = column.slice(0, sample);
        if column.len() - column.null_count() < SAMPLE_MIN {
            continue;
        }
        let path = parquet::schema::types::ColumnPath::from(field.name().as_str());
        let mut dictionary = props.dictionary_enabled(&path);
        // Amounts keep their dictionary whatever their spread: the sums queries take
        // read them faster that way (without it, two of the benchmark's queries over
        // amounts took 17-27% longer, docs/benchmarks.md, session 20).
        let amount = matches!(
            field.data_type(),
            DataType::Decimal32(..) | DataType::Decimal64(..) | DataType::Decimal128(..)
        );
        if dictionary && !amount && mostly_distinct(&column) {
            dictionary = false;
            builder = builder.set_column_dictionary_enabled(path.clone(), false);
            changed = true;
        }
        if !trials {
            continue;
        }
        if let Some((encoding, compression)) =
            smallest_encoding(field, &column, &props, &path, dictionary)
        {
            if let Some(encoding) = encoding {
                builder = builder.set_column_encoding(path.clone(), encoding);
            }
            builder = builder.set_column_compression(path, compression);
            changed = true;
        }
    }
    if changed { builder.build() } else { props }
}

/// The encoding (None: the default) and compression of the fastest trial within
/// [`SAMPLE_TIE`] of the smallest, when it differs from the writer's own; None when no
/// trial differs or none could be written. A column with a `dictionary` keeps it: only
/// its compression is tried.
fn smallest_encoding(
    field: &arrow::datatypes::FieldRef,
    sample: &ArrayRef,
    props: &WriterProperties,
    path: &parquet::schema::types::ColumnPath,
    dictionary: bool,
) -> Option<(Option<parquet::basic::Encoding>, Compression)> {
    use parquet::basic::Encoding;
    let own = props.compression(path);
    // Fastest first: none, a lower level, the writer's own.
    let mut levels = vec![Compression::UNCOMPRESSED];
    if matches!(own, Compression::ZSTD(level) if level.compression_level() > 1) {
        levels.push(Compression::ZSTD(ZstdLevel::try_new(1).ok()?));
    }
    if !levels.contains(&own) {
        levels.push(own);
    }
    let ty = field.data_type();
    let integral = ty.is_integer()
        || matches!(
            ty,
            DataType::Timestamp(_, _)
                | DataType::Date32
                | DataType::Date64
                | DataType::Time32(_)
                | DataType::Time64(_)
        );
    // Split streams only for floats: every Parquet reader of the last years reads them
    // there (Spark from 3.2); for integers the format added them only in 2024.
    let float = matches!(ty, DataType::Float32 | DataType::Float64);
    // Packed or split before PLAIN: they make zstd's work smaller.
    let mut encodings = Vec::new();
    if !dictionary && integral {
        encodings.push(Some(Encoding::DELTA_BINARY_PACKED));
    }
    if !dictionary && float {
        encodings.push(Some(Encoding::BYTE_STREAM_SPLIT));
    }
    encodings.push(None);
    if levels.len() == 1 && encodings.len() == 1 {
        return None;
    }
    let mut sizes = Vec::new();
    for &compression in &levels {
        for &encoding in &encodings {
            let size = trial_size(field, sample, dictionary, encoding, compression)?;
            sizes.push((encoding, compression, size));
        }
    }
    let smallest = sizes.iter().map(|(_, _, size)| *size).min()?;
    let limit = smallest as f64 * (1.0 + SAMPLE_TIE);
    let (encoding, compression, _) = sizes
        .into_iter()
        .find(|(_, _, size)| *size as f64 <= limit)?;
    (encoding.is_some() || compression != own).then_some((encoding, compression))
}

/// The compressed bytes of a sample written alone as one Parquet column chunk.
fn trial_size(
    field: &arrow::datatypes::FieldRef,
    sample: &ArrayRef,
    dictionary: bool,
    encoding: Option<parquet::basic::Encoding>,
    compression: Compression,
) -> Option<i64> {
    let schema = Arc::new(Schema::new(vec![field.clone()]));
    let batch = RecordBatch::try_new(schema.clone(), vec![sample.clone()]).ok()?;
    let mut props = WriterProperties::builder()
        .set_dictionary_enabled(dictionary)
        .set_statistics_enabled(parquet::file::properties::EnabledStatistics::None)
        .set_compression(compression);
    if let Some(encoding) = encoding {
        props = props.set_encoding(encoding);
    }
    let mut writer =
        parquet::arrow::ArrowWriter::try_new(Vec::new(), schema, Some(props.build())).ok()?;
    writer.write(&batch).ok()?;
    let metadata = writer.close().ok()?;
    Some(metadata.row_group(0).column(0).compressed_size())
}

/// Whether more than half of a sample's values (nulls aside) differ from each other.
fn mostly_distinct(sample: &ArrayRef) -> bool {
    let present = sample.len() - sample.null_count();
    let converter = match arrow::row::RowConverter::new(vec![arrow::row::SortField::new(
        sample.data_type().clone(),
    )]) {
        Ok(c) => c,
        Err(_) => return false,
    };
    let Ok(rows) = converter.convert_columns(std::slice::from_ref(sample)) else {
        return false;
    };
    let values: datafusion::common::HashSet<arrow::row::Row<'_>> = (0..sample.len())
        .filter(|&i| sample.is_valid(i))
        .map(|i| rows.row(i))
        .collect();
    values.len() * 2 > present
}

/// Streams batches into Parquet files (zstd) of a table; nothing is visible until [`commit`].
///
/// Batches are gathered into windows of about [`WINDOW_BYTES`]; a background task writes
/// each window while the next one fills, so reading and encoding run side by side. A
/// window is written one partition at a time, and a partition's file is finished before
/// the next partition's starts (the last one stays open for the next window, so a stream
/// of one partition, as compaction writes, makes files of the target size).
pub struct FileWriter {
    table: String,
    /// Where the table's files are: files written before a failure are deleted there.
    store: Arc<dyn object_store::ObjectStore>,
    schema: SchemaRef,
    rows: u64,
    /// The window being filled, and its bytes in memory.
    window: Vec<Selected>,
    window_bytes: usize,
    /// The Delta writer: here between windows, inside the task writing a window otherwise.
    encoder: Encoder,
    /// Files finished by windows already written.
    finished: Vec<Add>,
}

/// Bytes of rows (in memory, as Arrow) gathered before a window is written. Only one
/// Parquet file is open at a time (an open file's row group holds an encoder and a zstd
/// context per column: 31 daily partitions open at once took ~180 MiB more), so memory is
/// two windows plus one open file whatever the number of partitions or the size of the
/// source. Each window makes one file per partition it holds: smaller windows made more,
/// smaller files and a slower ingest (16 MiB: 2,000 taxi rows per file and +20 % CPU;
/// 64 MiB: 5,000), docs/benchmarks.md, session 10.
pub const WINDOW_BYTES: usize = 64 << 20;

enum Encoder {
    Idle(Box<WindowWriter>),
    Busy(tokio::task::JoinHandle<WindowWritten>),
    /// A window's write failed or its task died: the writer is gone.
    Broken,
}

/// What the task writing a window hands back.
struct WindowWritten {
    writer: Box<WindowWriter>,
    /// The files it finished (also when it failed: they are deleted then).
    finished: Vec<Add>,
    result: Result<(), Error>,
}

impl Drop for FileWriter {
    fn drop(&mut self) {
        // A writer dropped mid-window (an ingest that failed) stops its task; the Delta
        // writers it owns abort their unfinished uploads.
        if let Encoder::Busy(task) = &self.encoder {
            task.abort();
        }
    }
}

/// How many Delta writers encode a window's partitions side by side: encoding and
/// compressing is most of an ingest's CPU, and one writer alone was the slowest stage
/// of a taxi ingest (docs/benchmarks.md, session 19). Each lane has a file open, so
/// memory grows by one open file per lane.
fn lane_count() -> usize {
    crate::cores().clamp(1, 4)
}

/// Writes windows into files: a window's partitions are shared out among its lanes, each
/// writing one partition at a time on a task of its own.
struct WindowWriter {
    table: String,
    /// Converts the partition columns (named) to comparable rows (None for unpartitioned
    /// tables).
    partitions: Option<(arrow::row::RowConverter, Vec<String>)>,
    /// The Delta writers (at least one).
    lanes: Vec<PartitionWriter>,
    /// The lanes' file properties, until the first window settles each column's encoding
    /// (see [`settle_encodings`]); None after.
    unsettled: Option<WriterProperties>,
    /// Whether a large first window runs [`settle_encodings`]' trials: not for files
    /// compaction rewrites, which are written for speed (see [`FileWriter::staging`]).
    trials: bool,
}

/// One Delta writer: one file open at a time.
struct PartitionWriter {
    inner: RecordBatchWriter,
    table: String,
    /// The partition whose file is open, if any.
    open: Option<arrow::row::OwnedRow>,
}

/// A batch and which of its rows are to be written (all when `keep` is None).
struct Selected {
    batch: RecordBatch,
    keep: Option<BooleanArray>,
}

impl Selected {
    /// The rows to be written.
    fn num_rows(&self) -> usize {
        self.keep
            .as_ref()
            .map_or(self.batch.num_rows(), BooleanArray::true_count)
    }

    /// The rows to be written, as a batch of their own.
    fn into_batch(self) -> Result<RecordBatch, arrow::error::ArrowError> {
        match self.keep {
            None => Ok(self.batch),
            Some(keep) => arrow::compute::filter_record_batch(&self.batch, &keep),
        }
    }
}

/// A window's rows, each batch reordered by partition: partition `p`'s rows are
/// `starts[p]..starts[p + 1]` of every batch.
struct SortedWindow {
    batches: Vec<(RecordBatch, Vec<usize>)>,
    /// Each partition's key, in partition order.
    keys: Vec<arrow::row::OwnedRow>,
    columns: Vec<String>,
    /// The partitions the lanes take at once, in order: one each, or, when the window is
    /// many small batches ([`joins`]), runs of them joined into one batch per run.
    chunks: Vec<std::ops::Range<usize>>,
    joined: bool,
    /// The next chunk a lane should take.
    next: std::sync::atomic::AtomicUsize,
}

/// A window of at least this many batches, averaging fewer than [`JOIN_ROWS`] rows, is
/// joined run of partitions by run before it is written (see [`SortedWindow::join`]).
const JOIN_BATCHES: usize = 8;
/// See [`JOIN_BATCHES`]: a bulk ingest's batches ([`crate::ingest`]'s 16 Ki rows) are
/// never joined, so its window is not copied whole (memory).
const JOIN_ROWS: usize = 4096;
/// Bytes of one joined run of partitions. Joining a whole flush's window at once (tens of
/// MiB) took fresh pages from the kernel on every flush, which zeroed them: ~3% of the
/// server's CPU under eight writers (docs/benchmarks.md, session 51). A run this size is
/// written and dropped before the next is joined, which reuses its memory.
pub const JOIN_BYTES: usize = 4 << 20;

/// Whether a window's batches are many and small (a tail flush's entries, one per batch of
/// small objects): then each run of partitions is joined before it is written.
fn joins(sorted: &[(RecordBatch, Vec<usize>)], parts: usize) -> bool {
    let rows: usize = sorted.iter().map(|(_, starts)| starts[parts]).sum();
    sorted.len() >= JOIN_BATCHES && rows < JOIN_ROWS * sorted.len()
}

/// Runs of consecutive partitions of about [`JOIN_BYTES`] each (a partition larger than
/// that alone), sized by the window's bytes per row.
fn join_runs(sorted: &[(RecordBatch, Vec<usize>)], parts: usize) -> Vec<std::ops::Range<usize>> {
    let rows: usize = sorted.iter().map(|(_, starts)| starts[parts]).sum();
    let bytes: usize = sorted.iter().map(|(b, _)| b.get_array_memory_size()).sum();
    let per_run = (JOIN_BYTES * rows / bytes.max(1)).max(1);
    let mut runs = Vec::new();
    let (mut first, mut in_run) = (0, 0);
    for p in 0..parts {
        let here: usize = sorted
            .iter()
            .map(|(_, starts)| starts[p + 1] - starts[p])
            .sum();
        if in_run > 0 && in_run + here > per_run {
            runs.push(first..p);
            (first, in_run) = (p, 0);
        }
        in_run += here;
    }
    if first < parts {
        runs.push(first..parts);
    }
    runs
}

impl SortedWindow {
    fn new(
        batches: Vec<(RecordBatch, Vec<usize>)>,
        keys: Vec<arrow::row::OwnedRow>,
        columns: Vec<String>,
    ) -> Self {
        let parts = keys.len();
        let joined = joins(&batches, parts);
        let chunks = if joined {
            join_runs(&batches, parts)
        } else {
            (0..parts).map(|p| p..p + 1).collect()
        };
        Self {
            batches,
            keys,
            columns,
            chunks,
            joined,
            next: std::sync::atomic::AtomicUsize::new(0),
        }
    }

    /// Partition `p`'s rows as one batch.
    fn partition(&self, p: usize) -> Result<RecordBatch, arrow::error::ArrowError> {
        let slices: Vec<RecordBatch> = self
            .batches
            .iter()
            .filter(|(_, starts)| starts[p + 1] > starts[p])
            .map(|(batch, starts)| batch.slice(starts[p], starts[p + 1] - starts[p]))
            .collect();
        match slices.as_slice() {
            [one] => Ok(one.clone()),
            _ => arrow::compute::concat_batches(&slices[0].schema(), &slices),
        }
    }

    /// The rows of partitions `run` as one batch in partition order, and where each of
    /// them starts in it (relative to `run.start`): each column copied once, run by run of
    /// every batch. Joining each partition's slices apart sliced every column of every
    /// batch once per partition (a flush of ~60 entries over ~30 partitions: ~2,000 batch
    /// slices and ~60,000 array slices, allocated and dropped, then ~900 joins of ~60
    /// pieces), ~5% of the server's CPU under eight writers (docs/benchmarks.md, session 50).
    fn join(
        &self,
        run: &std::ops::Range<usize>,
    ) -> Result<(RecordBatch, Vec<usize>), arrow::error::ArrowError> {
        let sorted = &self.batches;
        let mut starts = vec![0usize; run.len() + 1];
        for (_, of_batch) in sorted {
            for (i, p) in run.clone().enumerate() {
                starts[i + 1] += of_batch[p + 1] - of_batch[p];
            }
        }
        for i in 0..run.len() {
            starts[i + 1] += starts[i];
        }
        let rows = starts[run.len()];
        let schema = sorted[0].0.schema();
        let mut columns = Vec::with_capacity(schema.fields().len());
        for i in 0..schema.fields().len() {
            let data: Vec<arrow::array::ArrayData> =
                sorted.iter().map(|(b, _)| b.column(i).to_data()).collect();
            let mut joined =
                arrow::array::MutableArrayData::new(data.iter().collect(), false, rows);
            for p in run.clone() {
                for (b, (_, starts)) in sorted.iter().enumerate() {
                    if starts[p + 1] > starts[p] {
                        joined.try_extend(b, starts[p], starts[p + 1])?;
                    }
                }
            }
            columns.push(arrow::array::make_array(joined.freeze()));
        }
        Ok((RecordBatch::try_new(schema, columns)?, starts))
    }
}

impl WindowWriter {
    /// Writes a window's rows, partition by partition, adding the files it finishes to
    /// `finished` (on error too: the caller deletes them).
    async fn write_window(
        &mut self,
        batches: Vec<Selected>,
        finished: &mut Vec<Add>,
    ) -> Result<(), Error> {
        if let Some(props) = self.unsettled.take() {
            let rows: usize = batches.iter().map(Selected::num_rows).sum();
            let partition_by = self.partitions.as_ref().map_or(&[][..], |(_, p)| p);
            let sample = window_sample(&batches);
            let trials = self.trials && rows >= TRIAL_ROWS;
            let props = settle_encodings(props, sample.as_ref(), partition_by, trials);
            self.lanes = std::mem::take(&mut self.lanes)
                .into_iter()
                .map(|lane| PartitionWriter {
                    inner: lane.inner.with_writer_properties(props.clone()),
                    ..lane
                })
                .collect();
        }
        let table = self.table.clone();
        let split = |e: arrow::error::ArrowError| {
            Error::Internal(format!("splitting rows of {table} by partition: {e}"))
        };
        let Some((converter, columns)) = &self.partitions else {
            for selected in batches {
                let batch = selected.into_batch().map_err(split)?;
                self.lanes[0].write(batch).await?;
            }
            return Ok(());
        };
        let mut keys = Vec::with_capacity(batches.len());
        for selected in &batches {
            let mut values: Vec<ArrayRef> = Vec::with_capacity(columns.len());
            for name in columns {
                values.push(
                    selected
                        .batch
                        .column_by_name(name)
                        .cloned()
                        .ok_or_else(|| {
                            Error::Internal(format!(
                                "rows for {table} lack partition column {name}"
                            ))
                        })?,
                );
            }
            keys.push(converter.convert_columns(&values).map_err(split)?);
        }
        let columns = columns.clone();
        // Each kept row's partition: numbered as first seen, then renumbered in partition
        // order. Rows not kept get SKIP and no partition (their keys may be anything).
        // foldhash (DataFusion's HashMap), not SipHash: one probe per row (SipHash was ~1%
        // of the server's instructions under a stream of small objects).
        let mut numbers: datafusion::common::HashMap<arrow::row::Row<'_>, u32> =
            datafusion::common::HashMap::new();
        let mut of_rows: Vec<Vec<u32>> = Vec::with_capacity(keys.len());
        for (rows, selected) in keys.iter().zip(&batches) {
            let mut number = |key| {
                let next = numbers.len() as u32;
                *numbers.entry(key).or_insert(next)
            };
            of_rows.push(match &selected.keep {
                None => rows.iter().map(&mut number).collect(),
                Some(keep) => rows
                    .iter()
                    .enumerate()
                    .map(|(row, key)| {
                        if keep.is_valid(row) && keep.value(row) {
                            number(key)
                        } else {
                            SKIP
                        }
                    })
                    .collect(),
            });
        }
        let (order, rank) = ranked(numbers);
        if let [(key, _)] = order.as_slice() {
            // One partition: the window's batches as they are (no copy unless some rows
            // are not kept), into the first lane (whose file stays open for the next
            // window: a stream of one partition, as compaction writes, makes files of the
            // target size).
            let lane = &mut self.lanes[0];
            finished.extend(lane.open_partition(key.owned()).await?);
            for selected in batches {
                let batch = selected.into_batch().map_err(split)?;
                lane.write_partition(batch, &columns).await?;
            }
            return Ok(());
        }
        // Each batch reordered by partition, its rows not kept left out (one gather within
        // one batch, which stays in cache), so a partition's rows are one slice of every
        // batch; then each partition's slices are joined, written and dropped. Gathering a
        // partition's rows straight from the whole window (`interleave`) touched a cache
        // line per value: ~10% of an ingest's CPU.
        // A batch already in partition order with every row kept (a tail entry's, see
        // [`partition_sorted`]) is taken as it is.
        let parts = order.len();
        let mut sorted = Vec::with_capacity(batches.len());
        for (selected, mut of_row) in batches.into_iter().zip(of_rows) {
            let (starts, indices) = grouped(&mut of_row, &rank, parts);
            if starts[parts] == 0 {
                continue;
            }
            let batch = match indices {
                None => selected.batch,
                Some(indices) => arrow::compute::take_record_batch(
                    &selected.batch,
                    &arrow::array::UInt32Array::from(indices),
                )
                .map_err(split)?,
            };
            sorted.push((batch, starts));
        }
        let keys = order.iter().map(|(key, _)| key.owned()).collect();
        let window = Arc::new(SortedWindow::new(sorted, keys, columns));
        // The lanes take the partitions in order, each the next one not yet taken, on
        // tasks of their own (a JoinSet: a writer dropped mid-window aborts them all).
        let mut tasks = tokio::task::JoinSet::new();
        for lane in std::mem::take(&mut self.lanes) {
            tasks.spawn(lane.write_partitions(window.clone()));
        }
        let mut failure = None;
        while let Some(joined) = tasks.join_next().await {
            match joined {
                Ok((lane, files, result)) => {
                    self.lanes.push(lane);
                    finished.extend(files);
                    if let Err(e) = result {
                        failure.get_or_insert(e);
                    }
                }
                Err(e) => {
                    failure.get_or_insert(Error::Internal(format!(
                        "writing files of {} stopped: {e}",
                        self.table
                    )));
                }
            }
        }
        match failure {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Finishes every lane's open file.
    async fn flush(&mut self) -> Result<Vec<Add>, Error> {
        let mut adds = Vec::new();
        for lane in &mut self.lanes {
            adds.extend(lane.flush().await?);
        }
        Ok(adds)
    }
}

impl PartitionWriter {
    /// Writes the window's partitions this lane takes, one after another; hands itself
    /// back with the files it finished (on error too: the caller deletes them).
    async fn write_partitions(
        mut self,
        window: Arc<SortedWindow>,
    ) -> (Self, Vec<Add>, Result<(), Error>) {
        let mut finished = Vec::new();
        let result = async {
            let table = self.table.clone();
            let split = |e: arrow::error::ArrowError| {
                Error::Internal(format!("splitting rows of {table} by partition: {e}"))
            };
            loop {
                let c = window
                    .next
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some(run) = window.chunks.get(c) else {
                    return Ok(());
                };
                // Dropped before the next run is joined, whose columns reuse its memory.
                let joined = match window.joined {
                    true => Some(window.join(run).map_err(split)?),
                    false => None,
                };
                for (i, p) in run.clone().enumerate() {
                    let batch = match &joined {
                        Some((batch, starts)) => batch.slice(starts[i], starts[i + 1] - starts[i]),
                        None => window.partition(p).map_err(split)?,
                    };
                    finished.extend(self.open_partition(window.keys[p].clone()).await?);
                    self.write_partition(batch, &window.columns).await?;
                }
            }
        }
        .await;
        (self, finished, result)
    }

    /// Writes rows that all belong to one partition, so the Delta writer need not split
    /// them again (it would copy every column).
    async fn write_partition(
        &mut self,
        batch: RecordBatch,
        columns: &[String],
    ) -> Result<(), Error> {
        let mut values = Vec::with_capacity(columns.len());
        for name in columns {
            let value = batch
                .column_by_name(name)
                .and_then(|column| ScalarExt::from_array(column.as_ref(), 0))
                .ok_or_else(|| {
                    Error::Internal(format!(
                        "{}: no partition value of {name} in the rows written",
                        self.table
                    ))
                })?;
            values.push((name.clone(), value));
        }
        let values = values.into_iter().collect();
        self.inner
            .write_partition(batch, &values, WriteMode::Default)
            .await
            .map_err(|e| Error::delta(&self.table, e))?;
        Ok(())
    }

    /// Makes `key`'s file the open one: finishes another partition's open file first
    /// (returning its Add actions).
    async fn open_partition(&mut self, key: arrow::row::OwnedRow) -> Result<Vec<Add>, Error> {
        let finished = match &self.open {
            Some(open) if *open != key => self.flush().await?,
            _ => Vec::new(),
        };
        self.open = Some(key);
        Ok(finished)
    }

    async fn write(&mut self, batch: RecordBatch) -> Result<(), Error> {
        self.inner
            .write(batch)
            .await
            .map_err(|e| Error::delta(&self.table, e))
    }

    /// Finishes the open file.
    async fn flush(&mut self) -> Result<Vec<Add>, Error> {
        self.open = None;
        self.inner
            .flush()
            .await
            .map_err(|e| Error::delta(&self.table, e))
    }
}

/// What a writer's files are for.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Files a table keeps: their encodings settled by trials on a large first window.
    Final,
    /// Files the automatic compaction merges (a tail flush's, a batch of small objects'):
    /// written for speed, their dictionaries settled from a sample, no trials (smaller
    /// encodings pay in files kept, not in files merged within minutes; a tail flush's
    /// window of 64 Ki rows or more would otherwise run them once it is sampled whole).
    Merged,
}

impl FileWriter {
    /// A writer for the table's schema and partitions.
    pub fn new(name: &str, table: &DeltaTable) -> Result<Self, Error> {
        Self::with_target_size(name, table, TARGET_FILE_SIZE)
    }

    /// A writer of a few rows per partition, files that compaction will merge (a small
    /// object's, a batch of small objects'): Snappy, not zstd. Parquet makes a zstd
    /// compressor and decompressor for every column chunk, which for a 100-row object
    /// spread over 31 partitions (31 files x 24 columns) cost more than compressing its rows.
    ///
    /// One lane: its few rows are not worth a second core, and the tail's flushes that use
    /// it run beside queries waiting for a runtime worker (two lanes took both workers:
    /// 8 writers' p99 freshness went from 99-120 ms to 183-209 ms, docs/benchmarks.md,
    /// session 19).
    pub fn small(name: &str, table: &DeltaTable) -> Result<Self, Error> {
        Self::build(
            name,
            table,
            TARGET_FILE_SIZE,
            Compression::SNAPPY,
            1,
            Kind::Merged,
        )
    }

    /// A writer of a tail flush's files: like [`Self::small`], uncompressed. They hold a
    /// second of small objects' rows per partition and are rewritten with zstd by the
    /// automatic compaction once a partition gathers [`crate::compact::AUTO_COMPACT_FILES`];
    /// their dictionaries already take most of what Snappy would: Snappy took ~7% of the
    /// server's CPU per object under 8 writers to make them 18% smaller
    /// (docs/benchmarks.md, session 29).
    pub fn staging(name: &str, table: &DeltaTable) -> Result<Self, Error> {
        Self::build(
            name,
            table,
            TARGET_FILE_SIZE,
            Compression::UNCOMPRESSED,
            1,
            Kind::Merged,
        )
    }

    /// A writer whose files end near `target` bytes.
    pub fn with_target_size(name: &str, table: &DeltaTable, target: u64) -> Result<Self, Error> {
        let zstd = Compression::ZSTD(ZstdLevel::try_new(3).expect("3 is a valid zstd level"));
        Self::build(name, table, target, zstd, lane_count(), Kind::Final)
    }

    fn build(
        name: &str,
        table: &DeltaTable,
        target: u64,
        compression: Compression,
        lanes: usize,
        kind: Kind,
    ) -> Result<Self, Error> {
        let first = RecordBatchWriter::for_table(table).map_err(|e| Error::delta(name, e))?;
        let schema = first.arrow_schema();
        let mut props = WriterProperties::builder()
            .set_compression(compression)
            .set_max_row_group_row_count(Some(ROW_GROUP_ROWS))
            // Bytes bound the open file's row group too.
            .set_max_row_group_bytes(Some(ROW_GROUP_BYTES));
        for field in schema.fields() {
            if !dictionary_pays(field.data_type()) {
                props = props.set_column_dictionary_enabled(
                    parquet::schema::types::ColumnPath::from(field.name().as_str()),
                    false,
                );
            }
        }
        let props = props.build();
        let mut inners = vec![first];
        for _ in 1..lanes {
            inners.push(RecordBatchWriter::for_table(table).map_err(|e| Error::delta(name, e))?);
        }
        let lanes = inners
            .into_iter()
            .map(|inner| PartitionWriter {
                inner: inner.with_target_file_size(target),
                table: name.to_string(),
                open: None,
            })
            .collect();
        let partition_by = partition_columns(name, table)?;
        let partitions = if partition_by.is_empty() {
            None
        } else {
            let mut fields = Vec::new();
            for column in &partition_by {
                let field = schema.field_with_name(column).map_err(|e| {
                    Error::Internal(format!("{name}: partition column {column}: {e}"))
                })?;
                fields.push(arrow::row::SortField::new(field.data_type().clone()));
            }
            let converter = arrow::row::RowConverter::new(fields)
                .map_err(|e| Error::Internal(format!("{name}: partition columns: {e}")))?;
            Some((converter, partition_by))
        };
        Ok(Self {
            table: name.to_string(),
            store: table.log_store().object_store(None),
            schema,
            rows: 0,
            window: Vec::new(),
            window_bytes: 0,
            encoder: Encoder::Idle(Box::new(WindowWriter {
                table: name.to_string(),
                partitions,
                lanes,
                unsettled: Some(props),
                trials: kind == Kind::Final,
            })),
            finished: Vec::new(),
        })
    }

    /// Writes a batch (partitioned as the table declares).
    pub async fn write(&mut self, batch: RecordBatch) -> Result<(), Error> {
        self.write_selected(batch, None).await
    }

    /// Writes the rows of a batch that `keep` selects (all of them when None), as a
    /// validator leaves them: the partition sort skips the others in the same gather that
    /// orders the rest, instead of a filter copying every column first.
    pub async fn write_selected(
        &mut self,
        batch: RecordBatch,
        keep: Option<BooleanArray>,
    ) -> Result<(), Error> {
        let rows = keep.as_ref().map_or(batch.num_rows(), |k| k.true_count());
        if rows == 0 {
            return Ok(());
        }
        // A selection of every row is no selection.
        let keep = keep.filter(|_| rows < batch.num_rows());
        self.rows += rows as u64;
        self.window_bytes += batch.get_array_memory_size();
        self.window.push(Selected { batch, keep });
        if self.window_bytes >= WINDOW_BYTES {
            self.write_window().await?;
        }
        Ok(())
    }

    /// Hands the window to a task that writes it, once the previous window is written.
    async fn write_window(&mut self) -> Result<(), Error> {
        let window = std::mem::take(&mut self.window);
        self.window_bytes = 0;
        let mut writer = self.idle().await?;
        self.encoder = Encoder::Busy(tokio::spawn(async move {
            let mut finished = Vec::new();
            let result = writer.write_window(window, &mut finished).await;
            WindowWritten {
                writer,
                finished,
                result,
            }
        }));
        Ok(())
    }

    /// The Delta writer, once the window being written is done. When that write failed,
    /// the files this writer finished are deleted (nothing will commit them) and the
    /// error returned.
    async fn idle(&mut self) -> Result<Box<WindowWriter>, Error> {
        let failure = match std::mem::replace(&mut self.encoder, Encoder::Broken) {
            Encoder::Idle(writer) => return Ok(writer),
            Encoder::Busy(task) => match task.await {
                Ok(WindowWritten {
                    writer,
                    finished,
                    result,
                }) => {
                    self.finished.extend(finished);
                    match result {
                        Ok(()) => return Ok(writer),
                        Err(e) => e,
                    }
                }
                Err(e) => Error::Internal(format!("writing files of {} stopped: {e}", self.table)),
            },
            Encoder::Broken => {
                return Err(Error::Internal(format!(
                    "an earlier write into {} failed",
                    self.table
                )));
            }
        };
        let written = std::mem::take(&mut self.finished);
        delete_files(&self.table, self.store.as_ref(), &written).await?;
        Err(failure)
    }

    /// Rows written so far.
    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// The table's columns, partition columns included, as batches must have them.
    pub fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    /// Finishes the files; returns their Add actions, tagged with their source.
    pub async fn finish(self, tags: &[(&str, &str)]) -> Result<Vec<Add>, Error> {
        let tags = tags
            .iter()
            .map(|(k, v)| (k.to_string(), Some(v.to_string())))
            .collect();
        self.finish_tagged(tags).await
    }

    async fn finish_tagged(
        mut self,
        tags: HashMap<String, Option<String>>,
    ) -> Result<Vec<Add>, Error> {
        if !self.window.is_empty() {
            self.write_window().await?;
        }
        let mut writer = self.idle().await?;
        let mut adds = std::mem::take(&mut self.finished);
        match writer.flush().await {
            Ok(last) => adds.extend(last),
            Err(e) => {
                delete_files(&self.table, self.store.as_ref(), &adds).await?;
                return Err(e);
            }
        }
        for add in &mut adds {
            add.tags
                .get_or_insert_with(HashMap::new)
                .extend(tags.clone());
        }
        Ok(adds)
    }
}

/// Commits adds and removes atomically, recording each `txn(app_id, version)` given; a
/// checkpoint it owes is written before it returns ([`TableCache::commit`] writes it beside).
pub async fn commit(
    name: &str,
    table: &mut DeltaTable,
    adds: Vec<Add>,
    removes: Vec<Remove>,
    txns: Vec<(String, i64)>,
    operation: DeltaOperation,
) -> Result<i64, Error> {
    commit_with(name, table, adds, removes, txns, operation, true).await
}

async fn commit_with(
    name: &str,
    table: &mut DeltaTable,
    adds: Vec<Add>,
    removes: Vec<Remove>,
    txns: Vec<(String, i64)>,
    operation: DeltaOperation,
    maintain_inline: bool,
) -> Result<i64, Error> {
    let mut properties = CommitProperties::default().with_application_transactions(
        txns.into_iter()
            .map(|(app, version)| Transaction::new(app, version))
            .collect(),
    );
    if !maintain_inline {
        properties = properties
            .with_create_checkpoint(false)
            .with_cleanup_expired_logs(Some(false));
    }
    let actions: Vec<Action> = removes
        .into_iter()
        .map(Action::Remove)
        .chain(adds.into_iter().map(Action::Add))
        .collect();
    let local = table.table_url().to_file_path().ok();
    if let Some(root) = &local {
        let files: Vec<std::path::PathBuf> = actions
            .iter()
            .filter_map(|a| match a {
                Action::Add(add) => Some(file_path(root, add)),
                _ => None,
            })
            .collect();
        sync_durably(name, root.clone(), files).await?;
    }
    let snapshot = table.snapshot().map_err(|e| Error::delta(name, e))?;
    let finalized = CommitBuilder::from(properties)
        .with_actions(actions)
        .build(Some(snapshot), table.log_store(), operation)
        .await
        .map_err(|e| Error::delta(name, e))?;
    let version = finalized.version();
    // The commit brought its snapshot up to the new version already; reading the log
    // again would repeat that work.
    table.state = Some(finalized.snapshot());
    if let Some(root) = local {
        let log = root.join("_delta_log");
        let commit = log.join(format!("{version:020}.json"));
        // The commit is visible already: an error here would make callers discard files
        // it names (a failed flush deletes its files), so a failed fsync is reported, not
        // raised; the disk that failed it is the operator's to look at.
        if let Err(e) = sync_durably(name, log, vec![commit]).await {
            tracing::error!(table = %name, version, error = %e, "commit not fsync'd");
        }
    }
    Ok(version as i64)
}

/// Where the local store keeps a data file: the log's path parsed as deltalake's writer
/// parses it, each segment as object_store spells it on disk (a partition value's `%20`
/// or `%2F` stays as it is: decoded, `eu%20west` would name `eu west`, a directory that
/// does not exist, and compaction of a table partitioned by such text failed).
fn file_path(root: &std::path::Path, add: &Add) -> std::path::PathBuf {
    let mut file = root.to_path_buf();
    for part in store_path(add).parts() {
        file.push(part.as_ref());
    }
    file
}

/// A data file's location in the table's store, as deltalake's writer made it.
fn store_path(add: &Add) -> object_store::path::Path {
    object_store::path::Path::parse(&add.path)
        .unwrap_or_else(|_| object_store::path::Path::from(add.path.as_str()))
}

/// Makes `files` under `root` survive a power loss before a commit goes on
/// ([`crate::durable`]): a commit's data files before its log entry is written, the log
/// entry before the commit returns, so neither can be lost with the rows of a tail the
/// commit let go.
async fn sync_durably(
    name: &str,
    root: std::path::PathBuf,
    files: Vec<std::path::PathBuf>,
) -> Result<(), Error> {
    if files.is_empty() {
        return Ok(());
    }
    let synced =
        crate::durable::sync_files(&root, &files, &crate::durable::KnownDirs::default()).await;
    synced.map_err(|(path, source)| Error::Io {
        what: format!("{name}: fsyncing {}", path.display()),
        source,
    })
}

/// Deletes files written but never committed (a failed threshold, say).
pub async fn discard(name: &str, table: &DeltaTable, adds: &[Add]) -> Result<(), Error> {
    delete_files(name, table.log_store().object_store(None).as_ref(), adds).await
}

/// Deletes the files of `adds` from the table's store (those already gone are fine).
async fn delete_files(
    name: &str,
    store: &dyn object_store::ObjectStore,
    adds: &[Add],
) -> Result<(), Error> {
    for add in adds {
        // Path::from would escape a partition value's `%` again and miss the file.
        let path = store_path(add);
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
