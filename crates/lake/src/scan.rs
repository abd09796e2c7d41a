//! A Delta table as a plain DataFusion Parquet scan.
//!
//! The snapshot's active files become the file groups of DataFusion's own Parquet
//! scan, each with its partition values as DataFusion partition columns, so a query
//! reads the files as fast as DataFusion reads any Parquet: no per-batch file-id
//! column and no per-batch rebuild of partition columns. Files are skipped before
//! the scan with the Delta log's statistics (partition values, min/max, null counts),
//! and row counts from the log let `count(*)` answer without reading a file.
//!
//! Tables using features this scan does not apply (column mapping, deletion vectors,
//! or any reader feature it does not know) are read by deltalake's own provider
//! instead: [`provider`] chooses.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use arrow::array::{ArrayRef, BooleanArray, UInt64Array};
use arrow::datatypes::{DataType, FieldRef, Schema, SchemaRef};
use datafusion::catalog::Session;
use datafusion::common::pruning::PruningStatistics;
use datafusion::common::stats::Precision;
use datafusion::common::{Column, ColumnStatistics, DFSchema, ScalarValue, Statistics};
use datafusion::datasource::listing::PartitionedFile;
use datafusion::datasource::object_store::ObjectStoreUrl;
use datafusion::datasource::physical_plan::parquet::CachedParquetFileReaderFactory;
use datafusion::datasource::physical_plan::{FileGroup, FileScanConfigBuilder, ParquetSource};
use datafusion::datasource::source::DataSourceExec;
use datafusion::datasource::table_schema::TableSchema;
use datafusion::datasource::{TableProvider, TableType};
use datafusion::error::{DataFusionError, Result};
use datafusion::logical_expr::utils::conjunction;
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown};
use datafusion::physical_optimizer::pruning::{PruningPredicate, PruningPredicateBuilder};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::empty::EmptyExec;
use datafusion::prelude::SessionContext;
use deltalake::DeltaTable;
use object_store::ObjectMeta;

mod by_partition;
mod dense_groups;
mod partial;
mod tail;

pub use by_partition::{ByPartition, ByPartitionExec};
pub use dense_groups::{DENSE_RANGE, DenseGroups, DenseGroupsExec};
pub use tail::{TailBatch, with_tail};

use deltalake::kernel::Version;

/// Reader features whose files this scan reads correctly as plain Parquet.
const PLAIN_READER_FEATURES: [&str; 3] = ["timestampNtz", "v2Checkpoint", "vacuumProtocolCheck"];

/// The table provider for `table` at its loaded version: the plain Parquet scan when the
/// table's protocol allows it, deltalake's own provider otherwise.
/// Registers the object store the scan reads the table's files from in `ctx`.
/// `files` keeps each table version's list of active files between the queries that plan
/// over it. `absent_sources` are source objects (`bucket/key`) known to have no rows in
/// any file sluice wrote into this version of the table (see [`PlainScanTable`]).
pub async fn provider(
    table: &DeltaTable,
    ctx: &SessionContext,
    files: &Arc<FileLists>,
    absent_sources: BTreeSet<String>,
) -> Result<Arc<dyn TableProvider>> {
    // The session's state read in place: `ctx.state()` would copy it (every function and
    // rule registry) once per table per query.
    table
        .update_datafusion_session(&*ctx.state_ref().read())
        .map_err(delta_error)?;
    match PlainScanTable::try_new(table, files.clone())? {
        Some(mut plain) => {
            plain.absent_sources = absent_sources;
            let log_store = table.log_store();
            let runtime = ctx.runtime_env();
            if runtime.object_store(&plain.store_url).is_err() {
                runtime
                    .register_object_store(plain.store_url.as_ref(), log_store.object_store(None));
            }
            Ok(Arc::new(plain))
        }
        None => table.table_provider().await,
    }
}

/// Whether the table's files can be read as plain Parquet (no column mapping, no deletion
/// vectors, no reader feature that changes what a file's bytes mean).
fn reads_as_plain_parquet(protocol: &serde_json::Value) -> bool {
    match protocol.get("minReaderVersion").and_then(|v| v.as_i64()) {
        Some(1) => true,
        Some(3) => protocol
            .get("readerFeatures")
            .and_then(|f| f.as_array())
            .is_none_or(|features| {
                features.iter().all(|f| {
                    f.as_str()
                        .is_some_and(|name| PLAIN_READER_FEATURES.contains(&name))
                })
            }),
        _ => false,
    }
}

/// A Delta table at one version, scanned by DataFusion's Parquet scan.
#[derive(Debug)]
struct PlainScanTable {
    table: DeltaTable,
    /// The table's columns in declared order (what `SELECT *` shows).
    schema: SchemaRef,
    /// The columns stored in the files, in declared order.
    file_schema: SchemaRef,
    /// Partition columns, in the table's partition order.
    partition_fields: Vec<FieldRef>,
    /// For each declared column, its index in the scan's schema (file columns, then
    /// partition columns).
    scan_index: Vec<usize>,
    store_url: ObjectStoreUrl,
    /// Active files by table version, shared by every query of the process.
    files: Arc<FileLists>,
    /// Source objects with no rows in any file sluice wrote into this version (their
    /// ingest has no `txn` in it: their rows wait in the tail, or never came). A scan
    /// filtered to such objects alone (`_source_object = 'raw/a.csv'`, the read-after-write
    /// poll) skips those files whatever their min/max say: a flush's files span every
    /// object it took, and the objects still in flight between them fall inside that range
    /// (each such poll opened the ~31 files of the last flush).
    absent_sources: BTreeSet<String>,
}

impl PlainScanTable {
    fn try_new(table: &DeltaTable, files: Arc<FileLists>) -> Result<Option<Self>> {
        let state = table.snapshot().map_err(delta_error)?;
        let protocol = serde_json::to_value(state.protocol())
            .map_err(|e| DataFusionError::External(Box::new(e)))?;
        if !reads_as_plain_parquet(&protocol) {
            return Ok(None);
        }
        let schema =
            files.view_schema(table.table_url().as_str(), &state.snapshot().arrow_schema());
        let partition_columns = state.metadata().partition_columns().to_vec();
        let file_fields: Vec<FieldRef> = schema
            .fields()
            .iter()
            .filter(|f| !partition_columns.contains(f.name()))
            .cloned()
            .collect();
        let mut next_file_column = 0;
        let scan_index = schema
            .fields()
            .iter()
            .map(
                |f| match partition_columns.iter().position(|p| p == f.name()) {
                    Some(p) => file_fields.len() + p,
                    None => {
                        next_file_column += 1;
                        next_file_column - 1
                    }
                },
            )
            .collect();
        let partition_fields = partition_columns
            .iter()
            .map(|name| Ok(Arc::new(schema.field_with_name(name)?.clone())))
            .collect::<Result<Vec<FieldRef>>>()?;
        Ok(Some(Self {
            table: table.clone(),
            schema,
            file_schema: Arc::new(Schema::new(file_fields)),
            partition_fields,
            scan_index,
            store_url: table.log_store().object_store_url(),
            files,
            absent_sources: BTreeSet::new(),
        }))
    }

    /// Whether `filters` keep the scan to source objects that none of sluice's files in
    /// this version hold.
    fn only_absent_sources(&self, filters: &[Expr]) -> bool {
        !self.absent_sources.is_empty()
            && tail::filtered_sources(filters).is_some_and(|named| {
                !named.is_empty() && named.iter().all(|s| self.absent_sources.contains(*s))
            })
    }

    /// Which active files may hold rows matching `filters` (all of them when the log's
    /// statistics cannot tell), by the Delta log's per-file statistics.
    fn prune(
        &self,
        session: &dyn Session,
        filters: &[Expr],
        log_data: &deltalake::kernel::LogDataHandler<'_>,
        files: &FileList,
    ) -> Result<Option<Vec<bool>>> {
        let Some(pruning) = pruning_predicate(session, filters, &self.schema)? else {
            return Ok(None);
        };
        match pruning.prune(&InScanTypes {
            log_data,
            files,
            schema: &self.schema,
            partition_fields: &self.partition_fields,
        }) {
            Ok(keep) => Ok(Some(keep)),
            Err(e) => {
                tracing::debug!("file skipping failed, reading every file: {e}");
                Ok(None)
            }
        }
    }
}

/// The predicate that tells, from min/max/null statistics, which containers (files, tail
/// batches) may hold rows matching `filters`; None when no filter can skip anything.
fn pruning_predicate(
    session: &dyn Session,
    filters: &[Expr],
    schema: &SchemaRef,
) -> Result<Option<PruningPredicate>> {
    let Some(predicate) = conjunction(filters.iter().cloned()) else {
        return Ok(None);
    };
    let df_schema = DFSchema::try_from(schema.as_ref().clone())?;
    let physical = session.create_physical_expr(predicate, &df_schema)?;
    match PruningPredicateBuilder::new()
        .with_file_schema(schema.clone())
        .try_build(physical)
    {
        Ok(pruning) if pruning.always_true() => Ok(None),
        Ok(pruning) => Ok(Some(pruning)),
        Err(e) => {
            tracing::debug!("no skipping for this predicate: {e}");
            Ok(None)
        }
    }
}

/// Each table's active files at its latest version seen, as scans plan them: a version's
/// files never change, so the walk over the log's file actions and the parsing of each
/// file's partition values (5% of the server's CPU under the 8-writer freshness loop,
/// where every poll query planned it afresh) happen once per commit, not once per query.
#[derive(Debug, Default)]
pub struct FileLists {
    /// Table URL -> (version, its active files).
    by_table: std::sync::Mutex<HashMap<String, VersionFiles>>,
    /// Table URL -> its Delta schema and that schema as scans read it (text as views):
    /// one Arc per table while its schema stays the same, so the tail's entries find
    /// their query form by pointer (`tail::Entry::batches_as`) instead of comparing
    /// every field of two schemas per entry and query (~5,000 instructions each: 0.4% of
    /// the server's under the freshness loop with up to 100 entries waiting).
    views: std::sync::Mutex<HashMap<String, (SchemaRef, SchemaRef)>>,
}

/// A table version and its active files.
type VersionFiles = (Version, Arc<FileList>);

/// A table version's active files, and their statistics as file skipping reads them.
#[derive(Debug)]
struct FileList {
    files: Vec<LogFile>,
    /// Per column and kind, the log's statistics in the scan's types, as the queries over
    /// this version asked for them: a point query's pruning took them out of the log's
    /// arrays and cast them on every query (~2% of the server's CPU under the 8-writer
    /// freshness loop).
    stats: std::sync::Mutex<HashMap<(String, Stat), Option<ArrayRef>>>,
}

/// Which of a column's statistics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Stat {
    Min,
    Max,
    NullCount,
}

impl FileList {
    fn new(files: Vec<LogFile>) -> Self {
        Self {
            files,
            stats: Default::default(),
        }
    }

    /// `column`'s `stat`, computed by `get` the first time it is asked for.
    fn stat(
        &self,
        column: &Column,
        stat: Stat,
        get: impl FnOnce() -> Option<ArrayRef>,
    ) -> Option<ArrayRef> {
        let key = (column.name.clone(), stat);
        if let Some(kept) = self.lock_stats().get(&key) {
            return kept.clone();
        }
        let values = get();
        self.lock_stats().insert(key, values.clone());
        values
    }

    fn lock_stats(&self) -> std::sync::MutexGuard<'_, HashMap<(String, Stat), Option<ArrayRef>>> {
        self.stats.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl FileLists {
    /// The active files of `table` at `version`, from the list kept or else from `load`.
    fn get_or_load(
        &self,
        table: &str,
        version: Option<Version>,
        load: impl FnOnce() -> Result<Vec<LogFile>>,
    ) -> Result<Arc<FileList>> {
        let Some(version) = version else {
            return load().map(|files| Arc::new(FileList::new(files)));
        };
        if let Some((v, files)) = self.lock().get(table)
            && *v == version
        {
            return Ok(files.clone());
        }
        let files = Arc::new(FileList::new(load()?));
        let mut lists = self.lock();
        // Keep the newer of two versions when queries of different versions race.
        if lists.get(table).is_none_or(|(v, _)| *v <= version) {
            lists.insert(table.to_string(), (version, files.clone()));
        }
        Ok(files)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, VersionFiles>> {
        self.by_table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `schema` (a table's Delta schema) as scans read it: the Arc kept for the table when
    /// its schema is the same as last time.
    fn view_schema(&self, table: &str, schema: &SchemaRef) -> SchemaRef {
        let mut views = self.views.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((source, view)) = views.get(table)
            && (Arc::ptr_eq(source, schema) || source == schema)
        {
            return view.clone();
        }
        let view = with_view_types(schema);
        views.insert(table.to_string(), (schema.clone(), view.clone()));
        view
    }
}

/// One active file as the log describes it.
#[derive(Debug, Clone)]
struct LogFile {
    meta: ObjectMeta,
    /// Rows, when the log's statistics say.
    rows: Option<usize>,
    /// One value per partition column, in partition order (typed nulls for null values).
    partition_values: Vec<ScalarValue>,
    /// Whether sluice wrote the file (it carries `sluice.source` or `sluice.compacted`):
    /// its rows are those of objects whose ingest committed a `txn`.
    sluice_written: bool,
}

impl PlainScanTable {
    /// The snapshot's active files, in the log's order (the order of its statistics).
    fn log_files(&self, log_data: &deltalake::kernel::LogDataHandler<'_>) -> Result<Vec<LogFile>> {
        let mut files = Vec::with_capacity(log_data.num_files());
        for view in log_data.iter() {
            if view.deletion_vector_descriptor().is_some() {
                return Err(DataFusionError::NotImplemented(format!(
                    "{} has a deletion vector, which this table's protocol does not allow",
                    view.path()
                )));
            }
            let partition_values = if self.partition_fields.is_empty() {
                Vec::new()
            } else {
                let raw: HashMap<String, Option<String>> = view.partition_values_map();
                self.partition_fields
                    .iter()
                    .map(|field| {
                        partition_value(raw.get(field.name()).and_then(|v| v.as_ref()), field)
                    })
                    .collect::<Result<Vec<_>>>()?
            };
            #[allow(deprecated)] // the only public way to read a file's tags in deltalake 1.1
            let tags = view.add_action().tags;
            let sluice_written = tags.is_some_and(|t| {
                t.contains_key(crate::delta::TAG_SOURCE)
                    || t.contains_key(crate::delta::TAG_COMPACTED)
            });
            files.push(LogFile {
                meta: ObjectMeta {
                    location: view.object_store_path(),
                    last_modified: view.modification_datetime().map_err(delta_error)?,
                    size: u64::try_from(view.size()).unwrap_or_default(),
                    e_tag: None,
                    version: None,
                },
                rows: view.num_records(),
                partition_values,
                sluice_written,
            });
        }
        Ok(files)
    }
}

/// The table's columns as the scan reads them: text and binary as view arrays, as
/// DataFusion reads Parquet by default (`schema_force_view_types`) and as deltalake's
/// provider showed them (cheaper to filter, join and group by: no string copies).
fn with_view_types(schema: &Schema) -> SchemaRef {
    let fields: Vec<FieldRef> = schema
        .fields()
        .iter()
        .map(|f| match f.data_type() {
            DataType::Utf8 | DataType::LargeUtf8 => {
                Arc::new(f.as_ref().clone().with_data_type(DataType::Utf8View))
            }
            DataType::Binary | DataType::LargeBinary => {
                Arc::new(f.as_ref().clone().with_data_type(DataType::BinaryView))
            }
            _ => f.clone(),
        })
        .collect();
    Arc::new(Schema::new_with_metadata(fields, schema.metadata().clone()))
}

/// The log's per-file statistics with min/max in the scan's column types (the log keeps
/// text as `Utf8`; a predicate on the scan's `Utf8View` columns compares view literals).
struct InScanTypes<'a, 'b> {
    log_data: &'a deltalake::kernel::LogDataHandler<'b>,
    /// The same files, in the same order, as [`LogFile`]s, with the statistics asked
    /// for before.
    files: &'a FileList,
    schema: &'a SchemaRef,
    partition_fields: &'a [FieldRef],
}

impl InScanTypes<'_, '_> {
    fn typed(&self, column: &Column, values: Option<ArrayRef>) -> Option<ArrayRef> {
        let values = values?;
        let field = self.schema.field_with_name(&column.name).ok()?;
        if values.data_type() == field.data_type() {
            return Some(values);
        }
        arrow::compute::cast(&values, field.data_type()).ok()
    }
}

impl PruningStatistics for InScanTypes<'_, '_> {
    fn min_values(&self, column: &Column) -> Option<ArrayRef> {
        self.files.stat(column, Stat::Min, || {
            self.typed(column, self.log_data.min_values(column))
        })
    }

    fn max_values(&self, column: &Column) -> Option<ArrayRef> {
        self.files.stat(column, Stat::Max, || {
            self.typed(column, self.log_data.max_values(column))
        })
    }

    fn num_containers(&self) -> usize {
        self.log_data.num_containers()
    }

    fn null_counts(&self, column: &Column) -> Option<ArrayRef> {
        let Some(p) = self
            .partition_fields
            .iter()
            .position(|f| f.name() == &column.name)
        else {
            return self.files.stat(column, Stat::NullCount, || {
                self.log_data.null_counts(column)
            });
        };
        // A partition column is all nulls or none in each file: a file whose value is null
        // holds as many nulls as rows (deltalake 1.1 reports these as unknown).
        let counts: Option<Vec<u64>> = self
            .files
            .files
            .iter()
            .map(|file| match file.partition_values[p].is_null() {
                false => Some(0),
                true => file.rows.map(|r| r as u64),
            })
            .collect();
        Some(Arc::new(UInt64Array::from(counts?)))
    }

    fn row_counts(&self) -> Option<ArrayRef> {
        let counts: UInt64Array = self
            .files
            .files
            .iter()
            .map(|file| file.rows.map(|r| r as u64))
            .collect();
        Some(Arc::new(counts))
    }

    fn contained(&self, _column: &Column, _values: &HashSet<ScalarValue>) -> Option<BooleanArray> {
        // The log has no membership information beyond min/max: unknown.
        None
    }
}

fn delta_error(e: deltalake::DeltaTableError) -> DataFusionError {
    DataFusionError::External(Box::new(e))
}

/// A partition value from the log's string form, typed as its column.
fn partition_value(raw: Option<&String>, field: &FieldRef) -> Result<ScalarValue> {
    match raw {
        None => ScalarValue::try_from(field.data_type()),
        Some(text) => ScalarValue::try_from_string(text.clone(), field.data_type()).map_err(|e| {
            DataFusionError::Execution(format!(
                "partition value {text:?} of column {} is not a {}: {e}",
                field.name(),
                field.data_type()
            ))
        }),
    }
}

/// What is known of one file without reading it: its row count from the log, and that
/// each partition column holds one value (or only nulls).
fn file_statistics(
    rows: Option<usize>,
    file_columns: usize,
    partition_values: &[ScalarValue],
) -> Statistics {
    let num_rows = rows.map_or(Precision::Absent, Precision::Exact);
    let mut column_statistics = vec![ColumnStatistics::new_unknown(); file_columns];
    for value in partition_values {
        let nulls = if value.is_null() {
            num_rows
        } else {
            Precision::Exact(0)
        };
        column_statistics.push(ColumnStatistics {
            null_count: nulls,
            max_value: Precision::Exact(value.clone()),
            min_value: Precision::Exact(value.clone()),
            distinct_count: Precision::Exact(1),
            sum_value: Precision::Absent,
            byte_size: Precision::Absent,
        });
    }
    Statistics {
        num_rows,
        total_byte_size: Precision::Absent,
        column_statistics,
    }
}

/// Deals files into `groups` groups of about equal bytes (largest first).
fn balance(mut files: Vec<PartitionedFile>, groups: usize) -> Vec<FileGroup> {
    files.sort_by_key(|f| std::cmp::Reverse(f.object_meta.size));
    let groups = groups.clamp(1, files.len().max(1));
    let mut out: Vec<(u64, Vec<PartitionedFile>)> = (0..groups).map(|_| (0, Vec::new())).collect();
    for file in files {
        let lightest = out
            .iter_mut()
            .min_by_key(|(bytes, _)| *bytes)
            .expect("at least one group");
        lightest.0 += file.object_meta.size;
        lightest.1.push(file);
    }
    out.into_iter()
        .filter(|(_, files)| !files.is_empty())
        .map(|(_, files)| FileGroup::new(files))
        .collect()
}

#[async_trait::async_trait]
impl TableProvider for PlainScanTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> Result<Vec<TableProviderFilterPushDown>> {
        // Filters skip files and row groups; DataFusion still applies them to the rows.
        Ok(vec![TableProviderFilterPushDown::Inexact; filters.len()])
    }

    async fn scan(
        &self,
        session: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let state = self.table.snapshot().map_err(delta_error)?;
        let log_data = state.log_data();
        let log_files = self.files.get_or_load(
            self.table.table_url().as_str(),
            self.table.version(),
            || self.log_files(&log_data),
        )?;
        // Files the log's statistics rule out (none when they cannot tell).
        let mut keep = self
            .prune(session, filters, &log_data, &log_files)?
            .unwrap_or_default();
        if self.only_absent_sources(filters) {
            keep.resize(log_files.files.len(), true);
            for (kept, file) in keep.iter_mut().zip(&log_files.files) {
                *kept &= !file.sluice_written;
            }
        }
        let file_columns = self.file_schema.fields().len();
        let mut table_rows = Some(0usize);
        let files: Vec<PartitionedFile> = log_files
            .files
            .iter()
            .enumerate()
            .filter(|(i, _)| keep.get(*i).copied().unwrap_or(true))
            .map(|(_, log_file)| {
                table_rows = table_rows.zip(log_file.rows).map(|(a, b)| a + b);
                let mut file = PartitionedFile::new_from_meta(log_file.meta.clone());
                file.statistics = Some(Arc::new(file_statistics(
                    log_file.rows,
                    file_columns,
                    &log_file.partition_values,
                )));
                file.partition_values = log_file.partition_values.clone();
                file
            })
            .collect();
        let declared: Vec<usize> = match projection {
            Some(p) => p.clone(),
            None => (0..self.schema.fields().len()).collect(),
        };
        if files.is_empty() {
            let projected = Arc::new(self.schema.project(&declared)?);
            return Ok(Arc::new(EmptyExec::new(projected)));
        }
        let projection = declared.iter().map(|&i| self.scan_index[i]).collect();
        let table_schema = TableSchema::builder(self.file_schema.clone())
            .with_table_partition_cols(self.partition_fields.clone())
            .build();
        // Footers come from the runtime's metadata cache: Delta's files never change, and
        // the sessions of one process share a runtime, so a file's footer (and page index)
        // is read and decoded once, not on every query (`metadata_load_time` was most of
        // a point query over a compacted table).
        let store = session.runtime_env().object_store(&self.store_url)?;
        let metadata_cache = session
            .runtime_env()
            .cache_manager
            .get_file_metadata_cache();
        let source = ParquetSource::new(table_schema)
            .with_table_parquet_options(session.table_options().parquet.clone())
            .with_parquet_file_reader_factory(Arc::new(CachedParquetFileReaderFactory::new(
                store,
                metadata_cache,
            )));
        let mut statistics = Statistics::new_unknown(&Schema::new(
            self.file_schema
                .fields()
                .iter()
                .chain(self.partition_fields.iter())
                .cloned()
                .collect::<Vec<_>>(),
        ));
        statistics.num_rows = table_rows.map_or(Precision::Absent, Precision::Exact);
        let config = FileScanConfigBuilder::new(self.store_url.clone(), Arc::new(source))
            .with_file_groups(balance(files, session.config().target_partitions()))
            .with_statistics(statistics)
            .with_projection_indices(Some(projection))?
            .with_limit(limit)
            .build();
        Ok(DataSourceExec::from_data_source(config))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(path: &str) -> LogFile {
        LogFile {
            meta: ObjectMeta {
                location: path.into(),
                last_modified: chrono::Utc::now(),
                size: 1,
                e_tag: None,
                version: None,
            },
            rows: Some(1),
            partition_values: Vec::new(),
            sluice_written: true,
        }
    }

    fn paths(list: &FileList) -> Vec<String> {
        list.files
            .iter()
            .map(|f| f.meta.location.to_string())
            .collect()
    }

    #[test]
    fn a_versions_statistics_are_taken_once_per_column_and_kind() {
        let list = FileList::new(vec![file("a"), file("b")]);
        let column = Column::from_name("fare");
        let mut asked = 0;
        let mut ask = |v: i64| {
            asked += 1;
            Some(Arc::new(arrow::array::Int64Array::from(vec![v, v])) as ArrayRef)
        };
        let min = list.stat(&column, Stat::Min, || ask(1)).unwrap();
        let again = list.stat(&column, Stat::Min, || ask(9)).unwrap();
        assert_eq!(again.as_ref(), min.as_ref());
        let max = list.stat(&column, Stat::Max, || ask(7)).unwrap();
        assert_ne!(max.as_ref(), min.as_ref());
        // Unknown statistics are kept as unknown, not asked again.
        let other = Column::from_name("tip");
        assert!(list.stat(&other, Stat::NullCount, || None).is_none());
        assert!(list.stat(&other, Stat::NullCount, || ask(3)).is_none());
        assert_eq!(asked, 2);
    }

    #[test]
    fn a_versions_file_list_is_loaded_once_and_a_new_version_loads_again() {
        let lists = FileLists::default();
        let mut loads = 0;
        let mut load = |names: &[&str]| {
            loads += 1;
            Ok(names.iter().map(|n| file(n)).collect())
        };
        let v1 = lists.get_or_load("t", Some(1), || load(&["a"])).unwrap();
        let again = lists.get_or_load("t", Some(1), || load(&["x"])).unwrap();
        assert_eq!(paths(&again), paths(&v1));
        let v2 = lists
            .get_or_load("t", Some(2), || load(&["a", "b"]))
            .unwrap();
        assert_eq!(paths(&v2), ["a", "b"]);
        // A query still planning over the older version loads it, and does not evict
        // the newer one.
        let old = lists.get_or_load("t", Some(1), || load(&["a"])).unwrap();
        assert_eq!(paths(&old), ["a"]);
        let newest = lists.get_or_load("t", Some(2), || load(&["y"])).unwrap();
        assert_eq!(paths(&newest), ["a", "b"]);
        // Another table has its own list; a table without a version is never kept.
        let other = lists.get_or_load("u", Some(1), || load(&["c"])).unwrap();
        assert_eq!(paths(&other), ["c"]);
        lists.get_or_load("w", None, || load(&["d"])).unwrap();
        lists.get_or_load("w", None, || load(&["d"])).unwrap();
        assert_eq!(loads, 6);
    }

    #[test]
    fn a_tables_view_schema_is_one_arc_while_its_schema_stays_the_same() {
        use arrow::datatypes::Field;
        let lists = FileLists::default();
        let schema = |extra: bool| {
            let mut fields = vec![
                Field::new("id", DataType::Int64, false),
                Field::new("name", DataType::Utf8, true),
            ];
            if extra {
                fields.push(Field::new("note", DataType::LargeUtf8, true));
            }
            Arc::new(Schema::new(fields))
        };
        let first = lists.view_schema("t", &schema(false));
        assert_eq!(first.field(1).data_type(), &DataType::Utf8View);
        // An equal schema in another Arc (a new snapshot's) gets the same view.
        let again = lists.view_schema("t", &schema(false));
        assert!(Arc::ptr_eq(&first, &again));
        // A changed schema gets its own, which is then the one kept.
        let evolved = lists.view_schema("t", &schema(true));
        assert!(!Arc::ptr_eq(&first, &evolved));
        assert_eq!(evolved.field(2).data_type(), &DataType::Utf8View);
        assert!(Arc::ptr_eq(
            &evolved,
            &lists.view_schema("t", &schema(true))
        ));
        // Another table with the same columns keeps its own.
        let other = lists.view_schema("u", &schema(false));
        assert!(!Arc::ptr_eq(&other, &first));
        assert_eq!(other, first);
    }
}
