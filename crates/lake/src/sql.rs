//! The SQL catalog: every table under `lake.<layer>.<name>`, system tables under `lake.sluice`.
//!
//! A [`Session`] is cheap to build and reads each Delta table at its latest
//! committed version, with the rows waiting in its tail, so a query sees every ingest
//! acknowledged before it started.

use std::collections::BTreeSet;
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use datafusion::catalog::Session as ScanSession;
use datafusion::catalog::{
    CatalogProvider, MemoryCatalogProvider, MemoryCatalogProviderList, MemorySchemaProvider,
    SchemaProvider,
};
use datafusion::common::TableReference;
use datafusion::datasource::{MemTable, TableProvider, TableType};
use datafusion::error::DataFusionError;
use datafusion::execution::SessionStateBuilder;
use datafusion::logical_expr::{Expr, LogicalPlan};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::prelude::{DataFrame, SessionConfig, SessionContext};
use datafusion::sql::parser::{DFParserBuilder, Statement as Parsed};
use futures::future::BoxFuture;

use crate::{Error, LakePaths, delta, scan};

mod scope;

/// A statement parsed once: the tables a session reads for it, the source objects a
/// query waits for ([`Statement::source_objects`]) and its plan all come from the one
/// parse (a poll's statement was parsed four times; parsing and turning it into a plan
/// took ~5% of a 10-row object's CPU in session 51's profile, docs/benchmarks.md).
#[derive(Debug, Clone)]
pub struct Statement {
    parsed: Parsed,
    objects: Option<BTreeSet<String>>,
}

impl Statement {
    /// Parses one statement as the sessions plan it (DataFusion's default dialect and
    /// recursion limit); an error names what did not parse, or that there were several.
    pub fn parse(sql: &str) -> Result<Self, Error> {
        let mut statements = DFParserBuilder::new(sql)
            .build()
            .and_then(|mut parser| parser.parse_statements())
            .map_err(sql_error)?;
        let parsed = match (statements.pop_front(), statements.len()) {
            (Some(parsed), 0) => parsed,
            (None, _) => return Err(Error::Sql("no SQL statement was given".into())),
            (Some(_), more) => {
                return Err(Error::Sql(format!(
                    "one SQL statement at a time, {} were given",
                    more + 1
                )));
            }
        };
        let objects = scope::objects_read(&parsed);
        Ok(Self { parsed, objects })
    }

    /// The source objects (`bucket/key`) whose rows are all the statement can read, when
    /// it reads nothing else; None when its answer may depend on any write (how it is
    /// read: the `scope` module).
    pub fn source_objects(&self) -> Option<&BTreeSet<String>> {
        self.objects.as_ref()
    }
}

/// The catalog name every table lives in.
pub const CATALOG: &str = "lake";
/// Schemas of the catalog.
pub const SCHEMAS: [&str; 4] = ["bronze", "silver", "gold", "sluice"];

/// A table to register.
#[derive(Debug, Clone)]
pub struct TableEntry {
    /// Schema (layer) name.
    pub schema: String,
    /// Table name.
    pub name: String,
    /// Location in the lake.
    pub location: String,
}

/// `tables` and the quarantine (every session has it, as `sluice.quarantine`).
fn with_quarantine(tables: &[TableEntry]) -> Vec<TableEntry> {
    let mut all = tables.to_vec();
    all.push(TableEntry {
        schema: "sluice".into(),
        name: "quarantine".into(),
        location: LakePaths::QUARANTINE.into(),
    });
    all
}

/// Whether `reference` may name `entry` (a bare name is looked up in every schema: the
/// session may read a table more than the statement needs, never fewer).
fn names(reference: &TableReference, entry: &TableEntry) -> bool {
    reference.table() == entry.name
        && reference.schema().is_none_or(|s| s == entry.schema)
        && reference.catalog().is_none_or(|c| c == CATALOG)
}

/// A query session over the lake.
pub struct Session {
    ctx: SessionContext,
    catalog: Arc<MemoryCatalogProvider>,
}

/// The result of a query.
#[derive(Debug)]
pub struct QueryResult {
    /// Column names and types.
    pub schema: SchemaRef,
    /// The rows.
    pub batches: Vec<RecordBatch>,
}

fn sql_error(e: datafusion::error::DataFusionError) -> Error {
    let text = e.to_string();
    let text = text
        .trim_start_matches("Error during planning: ")
        .trim_start_matches("SQL error: ")
        .trim_start_matches("Schema error: ")
        .replace("lake.", "");
    Error::Sql(text)
}

impl Session {
    /// A session with the lake's Delta tables registered (tables never written to are skipped).
    pub async fn open(
        paths: &LakePaths,
        tables: &[TableEntry],
        cache: &delta::TableCache,
    ) -> Result<Self, Error> {
        let session = Self::empty(cache)?;
        session
            .register(paths, &with_quarantine(tables), cache, None)
            .await?;
        Ok(session)
    }

    /// A session for one statement: only the lake tables it names are read (their latest
    /// version and tail), so a query's fixed cost does not grow with the number of tables
    /// in the project. A statement that names none, or reads `information_schema`, gets
    /// every table.
    pub async fn open_for(
        paths: &LakePaths,
        tables: &[TableEntry],
        cache: &delta::TableCache,
        statement: &Statement,
    ) -> Result<Self, Error> {
        let session = Self::empty(cache)?;
        let mut entries = with_quarantine(tables);
        if let Some(refs) = session.references(statement) {
            entries.retain(|t| refs.iter().any(|r| names(r, t)));
        }
        session
            .register(paths, &entries, cache, statement.source_objects())
            .await?;
        Ok(session)
    }

    /// A session with the catalog's schemas and no table yet. Its state is a copy of one
    /// built once per cache (building registers every function and rule: 312 K instructions,
    /// ~8.5% of a small query's), with a catalog list of its own, as its tables are its own.
    fn empty(cache: &delta::TableCache) -> Result<Self, Error> {
        let mut state = cache.session_state(|| {
            let config = SessionConfig::new()
                .with_default_catalog_and_schema(CATALOG, "silver")
                .with_information_schema(true)
                .with_target_partitions(2)
                // 16 Ki rows a batch (DataFusion's default is 8 Ki): top_routes -7% and the
                // percentiles -6% over the 7M-row table, the others unchanged; 32 Ki cut
                // top_routes 15% but slowed daily_revenue 10% (docs/benchmarks.md, session 23).
                .with_batch_size(16 * 1024);
            SessionStateBuilder::new()
                .with_config(config)
                .with_runtime_env(cache.runtime())
                .with_default_features()
                .with_physical_optimizer_rule(Arc::new(scan::ByPartition))
                .with_physical_optimizer_rule(Arc::new(scan::DenseGroups))
                .build()
        });
        // The copy would share the template's list: each session registers its own tables.
        state.register_catalog_list(Arc::new(MemoryCatalogProviderList::new()));
        let ctx = SessionContext::new_with_state(state);
        let catalog = Arc::new(MemoryCatalogProvider::new());
        for schema in SCHEMAS {
            catalog
                .register_schema(schema, Arc::new(MemorySchemaProvider::new()))
                .map_err(sql_error)?;
        }
        ctx.register_catalog(CATALOG, catalog.clone());
        Ok(Self { ctx, catalog })
    }

    /// The tables a statement names (None: every table, see [`Session::open_for`]).
    fn references(&self, statement: &Statement) -> Option<Vec<TableReference>> {
        let state = self.ctx.state_ref();
        let refs = state
            .read()
            .resolve_table_references(&statement.parsed)
            .ok()?;
        let catalog_wide = refs.iter().any(|r| {
            r.schema()
                .is_some_and(|s| s.eq_ignore_ascii_case("information_schema"))
        });
        (!refs.is_empty() && !catalog_wide).then_some(refs)
    }

    /// Registers each of `entries` at its latest version with its tail (skipping tables
    /// never written to). `named`: the source objects a statement reading one silver table
    /// keeps its rows to ([`source_objects`]).
    async fn register(
        &self,
        paths: &LakePaths,
        entries: &[TableEntry],
        cache: &delta::TableCache,
        named: Option<&BTreeSet<String>>,
    ) -> Result<(), Error> {
        for entry in entries {
            let Some((table, tail)) = cache
                .latest_with_tail(&entry.name, paths.url(&entry.location)?)
                .await?
            else {
                continue;
            };
            let absent = match named {
                Some(named) if entry.schema == "silver" => {
                    absent_sources(cache, &entry.name, &table, named).await?
                }
                _ => BTreeSet::new(),
            };
            let provider = scan::provider(&table, &self.ctx, cache.file_lists(), absent)
                .await
                .and_then(|p| scan::with_tail(p, &tail))
                .map_err(sql_error)?;
            self.schema(&entry.schema)?
                .register_table(entry.name.clone(), provider)
                .map_err(sql_error)?;
        }
        Ok(())
    }

    fn schema(&self, name: &str) -> Result<Arc<dyn SchemaProvider>, Error> {
        self.catalog
            .schema(name)
            .ok_or_else(|| Error::Sql(format!("no schema {name}")))
    }

    /// Registers in-memory rows as a table (system tables from the state store, lookups).
    pub fn register_batches(
        &self,
        schema_name: &str,
        name: &str,
        schema: SchemaRef,
        batches: Vec<RecordBatch>,
    ) -> Result<(), Error> {
        let table = MemTable::try_new(schema, vec![batches]).map_err(sql_error)?;
        self.schema(schema_name)?
            .register_table(name.to_string(), Arc::new(table))
            .map_err(sql_error)?;
        Ok(())
    }

    /// Registers a table whose rows are produced when a query scans it (system tables):
    /// queries that do not touch it pay nothing for it.
    pub fn register_lazy(
        &self,
        schema_name: &str,
        name: &str,
        schema: SchemaRef,
        produce: Producer,
    ) -> Result<(), Error> {
        self.schema(schema_name)?
            .register_table(name.to_string(), Arc::new(LazyTable { schema, produce }))
            .map_err(sql_error)?;
        Ok(())
    }

    /// Whether a table is registered.
    pub fn has_table(&self, schema_name: &str, name: &str) -> bool {
        self.schema(schema_name)
            .map(|s| s.table_exist(name))
            .unwrap_or(false)
    }

    /// Plans a statement.
    pub async fn dataframe(&self, sql: &str) -> Result<DataFrame, Error> {
        self.plan(&Statement::parse(sql)?).await
    }

    /// Plans a parsed statement. A query's plan runs on one copy of the session's state
    /// (`SessionContext::sql` takes two, each cloning every function's map); statements
    /// that change the session (DDL, SET, PREPARE) go through the context.
    pub async fn plan(&self, statement: &Statement) -> Result<DataFrame, Error> {
        let state = self.ctx.state();
        let plan = state
            .statement_to_plan(statement.parsed.clone())
            .await
            .map_err(sql_error)?;
        match plan {
            LogicalPlan::Ddl(_) | LogicalPlan::Statement(_) => {
                self.ctx.execute_logical_plan(plan).await.map_err(sql_error)
            }
            plan => Ok(DataFrame::new(state, plan)),
        }
    }

    /// Runs a statement and collects its rows.
    pub async fn query(&self, sql: &str) -> Result<QueryResult, Error> {
        self.run(&Statement::parse(sql)?).await
    }

    /// Runs a parsed statement and collects its rows.
    pub async fn run(&self, statement: &Statement) -> Result<QueryResult, Error> {
        let df = self.plan(statement).await?;
        let schema: SchemaRef = Arc::new(df.schema().as_arrow().clone());
        let batches = df.collect().await.map_err(sql_error)?;
        Ok(QueryResult { schema, batches })
    }

    /// The DataFusion context (for registering more tables).
    pub fn context(&self) -> &SessionContext {
        &self.ctx
    }
}

/// Which of `named` have no `txn` in the silver table `table` as of its version: every
/// commit that brings an object's rows into a silver table (its ingest's, or the flush of
/// its tail entry) carries the object's `txn` (`delta::app_id`), and compaction only moves
/// rows already there, so none of sluice's files in this version holds theirs. Empty when
/// the table's transaction index cannot answer for this version (nothing is skipped).
async fn absent_sources(
    cache: &delta::TableCache,
    name: &str,
    table: &deltalake::DeltaTable,
    named: &BTreeSet<String>,
) -> Result<BTreeSet<String>, Error> {
    let apps: Vec<String> = named.iter().map(|o| delta::app_id(o)).collect();
    let Some(found) = cache.indexed_txn_versions(name, table, &apps).await? else {
        return Ok(BTreeSet::new());
    };
    Ok(named
        .iter()
        .zip(&apps)
        .filter(|(_, app)| found.get(app).is_none())
        .map(|(object, _)| object.clone())
        .collect())
}

/// Produces a lazy table's rows (its error becomes the query's error).
pub type Producer =
    Arc<dyn Fn() -> BoxFuture<'static, Result<Vec<RecordBatch>, String>> + Send + Sync>;

/// A table computed at scan time.
struct LazyTable {
    schema: SchemaRef,
    produce: Producer,
}

impl std::fmt::Debug for LazyTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LazyTable")
            .field("schema", &self.schema)
            .finish()
    }
}

#[async_trait::async_trait]
impl TableProvider for LazyTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::View
    }

    async fn scan(
        &self,
        state: &dyn ScanSession,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> datafusion::error::Result<Arc<dyn ExecutionPlan>> {
        let batches = (self.produce)().await.map_err(DataFusionError::Execution)?;
        MemTable::try_new(self.schema.clone(), vec![batches])?
            .scan(state, projection, filters, limit)
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(sql: &str) -> String {
        match Statement::parse(sql) {
            Ok(statement) => panic!("{sql:?} parsed: {statement:?}"),
            Err(Error::Sql(text)) => text,
            Err(other) => panic!("{sql:?}: not a SQL error: {other}"),
        }
    }

    /// A statement is parsed once, before any table is read: what is not one statement
    /// is refused with what was wrong, the way planning would have said it.
    #[test]
    fn anything_but_one_statement_is_refused_with_why() {
        assert_eq!(
            refused("SELECT 1; SELECT 2"),
            "one SQL statement at a time, 2 were given"
        );
        assert_eq!(refused(""), "no SQL statement was given");
        assert_eq!(refused(" ;; "), "no SQL statement was given");
        let text = refused("SELECT count(* FROM trips");
        assert!(text.contains("Expected"), "{text}");
        assert!(!text.starts_with("SQL error"), "{text}");

        let statement =
            Statement::parse("select count(*) from trips where _source_object = 'raw/a.csv';")
                .unwrap();
        assert_eq!(
            statement
                .source_objects()
                .map(|s| s.iter().cloned().collect::<Vec<_>>()),
            Some(vec!["raw/a.csv".to_string()])
        );
    }
}
