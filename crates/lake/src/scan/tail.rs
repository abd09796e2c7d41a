//! A table's committed rows with the rows waiting in its tail ([`crate::tail`]).
//!
//! Each tail batch keeps, beside its rows in the query's types, the min and max of each
//! column a query's filters asked about ([`TailBatch`]), so a scan skips the batches its
//! filters rule out the way the Delta log's statistics skip files: a poll for one
//! object's rows reads that object's batch, not the whole tail.

use std::collections::HashSet;
use std::sync::{Arc, OnceLock};

use arrow::array::{ArrayRef, BooleanArray, RecordBatch, UInt64Array};
use arrow::datatypes::SchemaRef;
use datafusion::catalog::Session;
use datafusion::common::pruning::PruningStatistics;
use datafusion::common::{Column, ScalarValue};
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::datasource::{TableProvider, TableType};
use datafusion::error::Result;
use datafusion::functions_aggregate::min_max::{MaxAccumulator, MinAccumulator};
use datafusion::logical_expr::{Accumulator, Expr, TableProviderFilterPushDown};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::empty::EmptyExec;
use datafusion::physical_plan::union::UnionExec;

/// Rows of a tail entry in a query's types, with each column's statistics.
#[derive(Debug)]
pub struct TailBatch {
    rows: RecordBatch,
    /// One per column of `rows`, computed the first time a query's filters ask for the
    /// column's (a point query filters on one column: computing every column's min and
    /// max for each new entry was ~2% of the server's work in the freshness loop).
    stats: Vec<OnceLock<ColumnStats>>,
}

#[derive(Debug)]
struct ColumnStats {
    /// None when the column's type has no order DataFusion computes a min/max for.
    min: Option<ScalarValue>,
    max: Option<ScalarValue>,
}

impl ColumnStats {
    fn of(column: &ArrayRef) -> Self {
        Self {
            min: MinAccumulator::try_new(column.data_type())
                .ok()
                .and_then(|a| bound(Box::new(a), column)),
            max: MaxAccumulator::try_new(column.data_type())
                .ok()
                .and_then(|a| bound(Box::new(a), column)),
        }
    }
}

impl TailBatch {
    /// `rows`; their statistics are computed when first asked for, then kept (a tail
    /// entry keeps its batches).
    pub fn new(rows: RecordBatch) -> Self {
        let stats = rows.columns().iter().map(|_| OnceLock::new()).collect();
        Self { rows, stats }
    }

    /// The rows.
    pub fn rows(&self) -> &RecordBatch {
        &self.rows
    }

    /// The statistics of the column at `index`.
    fn stats(&self, index: usize) -> Option<&ColumnStats> {
        let column = self.rows.columns().get(index)?;
        Some(
            self.stats
                .get(index)?
                .get_or_init(|| ColumnStats::of(column)),
        )
    }
}

fn bound(mut acc: Box<dyn Accumulator>, column: &ArrayRef) -> Option<ScalarValue> {
    acc.update_batch(std::slice::from_ref(column)).ok()?;
    acc.evaluate().ok()
}

/// `provider` with the rows of its table's tail unioned in: rows acknowledged but not yet
/// in a Delta commit. The tail's rows are cast to the provider's column types (text as
/// views) once per entry ([`crate::tail::Entry::batches_as`]).
pub fn with_tail(
    provider: Arc<dyn TableProvider>,
    entries: &[Arc<crate::tail::Entry>],
) -> Result<Arc<dyn TableProvider>> {
    let schema = provider.schema();
    let forms = entries
        .iter()
        .map(|entry| entry.batches_as(&schema))
        .collect::<Result<Vec<_>, _>>()?;
    if forms.iter().all(|f| f.is_empty()) {
        return Ok(provider);
    }
    Ok(Arc::new(WithTail {
        inner: provider,
        forms,
    }))
}

/// A table's committed rows (`inner`) and the batches waiting in its tail.
#[derive(Debug)]
struct WithTail {
    inner: Arc<dyn TableProvider>,
    /// Each tail entry's batches in query form, in the tail's order.
    forms: Vec<Arc<[TailBatch]>>,
}

impl WithTail {
    fn batches(&self) -> impl Iterator<Item = &TailBatch> {
        self.forms.iter().flat_map(|form| form.iter())
    }
}

#[async_trait::async_trait]
impl TableProvider for WithTail {
    fn schema(&self) -> SchemaRef {
        self.inner.schema()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> Result<Vec<TableProviderFilterPushDown>> {
        // Batches are skipped, rows are not filtered: DataFusion applies every filter.
        Ok(vec![TableProviderFilterPushDown::Inexact; filters.len()])
    }

    async fn scan(
        &self,
        session: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let schema = self.inner.schema();
        let committed = self.inner.scan(session, projection, filters, limit).await?;
        let all = self.num_containers();
        let keep = match super::pruning_predicate(session, filters, &schema)? {
            Some(pruning) => pruning.prune(self).unwrap_or_else(|e| {
                tracing::debug!("tail batch skipping failed, reading them all: {e}");
                vec![true; all]
            }),
            None => vec![true; all],
        };
        let rows: Vec<RecordBatch> = self
            .batches()
            .zip(keep)
            .filter(|(_, keep)| *keep)
            .map(|(batch, _)| batch.rows.clone())
            .collect();
        if rows.is_empty() {
            return Ok(committed);
        }
        let waiting = MemorySourceConfig::try_new_exec(&[rows], schema, projection.cloned())?;
        // No committed file can match (a poll for rows still in the tail): the tail's
        // batches alone, without a union for every optimizer rule to walk through.
        if committed.downcast_ref::<EmptyExec>().is_some() {
            return Ok(waiting);
        }
        UnionExec::try_new(vec![committed, waiting])
    }
}

impl WithTail {
    /// One value per batch of `column`'s statistic `pick` (None when a batch lacks it).
    fn per_batch(
        &self,
        column: &Column,
        pick: impl Fn(&ColumnStats) -> Option<ScalarValue>,
    ) -> Option<ArrayRef> {
        let index = self.inner.schema().index_of(&column.name).ok()?;
        let values: Option<Vec<ScalarValue>> = self
            .batches()
            .map(|batch| pick(batch.stats(index)?))
            .collect();
        ScalarValue::iter_to_array(values?).ok()
    }
}

impl PruningStatistics for WithTail {
    fn min_values(&self, column: &Column) -> Option<ArrayRef> {
        self.per_batch(column, |s| s.min.clone())
    }

    fn max_values(&self, column: &Column) -> Option<ArrayRef> {
        self.per_batch(column, |s| s.max.clone())
    }

    fn num_containers(&self) -> usize {
        self.forms.iter().map(|form| form.len()).sum()
    }

    fn null_counts(&self, column: &Column) -> Option<ArrayRef> {
        let index = self.inner.schema().index_of(&column.name).ok()?;
        let counts: Option<Vec<u64>> = self
            .batches()
            .map(|batch| {
                batch
                    .rows
                    .columns()
                    .get(index)
                    .map(|c| c.null_count() as u64)
            })
            .collect();
        Some(Arc::new(UInt64Array::from(counts?)))
    }

    fn row_counts(&self) -> Option<ArrayRef> {
        let counts: UInt64Array = self
            .batches()
            .map(|batch| Some(batch.rows.num_rows() as u64))
            .collect();
        Some(Arc::new(counts))
    }

    fn contained(&self, _column: &Column, _values: &HashSet<ScalarValue>) -> Option<BooleanArray> {
        None
    }
}
