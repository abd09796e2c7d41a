//! A table's committed rows with the rows waiting in its tail ([`crate::tail`]).
//!
//! Each tail batch keeps, beside its rows in the query's types, the min and max of each
//! column a query's filters asked about ([`TailBatch`]), so a scan skips the batches its
//! filters rule out the way the Delta log's statistics skip files: a poll for one
//! object's rows reads that object's batch, not the whole tail.
//!
//! A filter naming source objects (`_source_object = 'raw/a.csv'` or `IN (…)`, the
//! read-after-write poll) keeps the batches holding one of them instead, looked up in
//! each batch's distinct `_source_object` values (kept with it): no min/max arrays built
//! over every batch on each query (~2.7% of the server's CPU in the eight-writer freshness
//! loop, docs/benchmarks.md, session 40), and exact where min and max are not (a batch of
//! objects `a` and `c` cannot hold `b`).

use std::collections::HashSet;
use std::sync::{Arc, OnceLock};

use arrow::array::{Array, ArrayRef, AsArray, BooleanArray, RecordBatch, UInt64Array};
use arrow::datatypes::{DataType, SchemaRef};
use datafusion::catalog::Session;
use datafusion::common::pruning::PruningStatistics;
use datafusion::common::{Column, ScalarValue};
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::datasource::{TableProvider, TableType};
use datafusion::error::Result;
use datafusion::functions_aggregate::min_max::{MaxAccumulator, MinAccumulator};
use datafusion::logical_expr::utils::split_conjunction;
use datafusion::logical_expr::{
    Accumulator, BinaryExpr, Expr, Operator, TableProviderFilterPushDown,
};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::empty::EmptyExec;
use datafusion::physical_plan::union::UnionExec;

use crate::delta::SOURCE_COLUMN;

/// Rows of a tail entry in a query's types, with each column's statistics.
#[derive(Debug)]
pub struct TailBatch {
    rows: RecordBatch,
    /// One per column of `rows`, computed the first time a query's filters ask for the
    /// column's (a point query filters on one column: computing every column's min and
    /// max for each new entry was ~2% of the server's work in the freshness loop).
    stats: Vec<OnceLock<ColumnStats>>,
    /// The distinct values of the batch's `_source_object` column, found on the first
    /// query that filters on it (None: no such text column, or more than
    /// [`MAX_SOURCES`] values).
    sources: OnceLock<Option<Box<[String]>>>,
}

/// The most distinct source objects [`TailBatch::holds_source`] keeps of a batch (an
/// ingest's batch is at most 64 objects); a batch with more is always read, its rows
/// filtered.
const MAX_SOURCES: usize = 64;

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
        Self {
            rows,
            stats,
            sources: OnceLock::new(),
        }
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

    /// Whether the batch may hold rows of one of `objects`, by its column at `index`
    /// (`_source_object`): false only when it holds none of them.
    fn holds_source(&self, index: usize, objects: &[&str]) -> bool {
        let sources = self.sources.get_or_init(|| {
            let column = self.rows.columns().get(index)?;
            distinct_text(column.as_ref(), MAX_SOURCES)
        });
        match sources {
            Some(values) => values.iter().any(|v| objects.contains(&v.as_str())),
            None => true,
        }
    }
}

fn bound(mut acc: Box<dyn Accumulator>, column: &ArrayRef) -> Option<ScalarValue> {
    acc.update_batch(std::slice::from_ref(column)).ok()?;
    acc.evaluate().ok()
}

/// The distinct non-null values of a text column, in first-seen order; None when it is
/// not text or holds more than `max` of them.
fn distinct_text(column: &dyn Array, max: usize) -> Option<Box<[String]>> {
    let values: Box<dyn Iterator<Item = Option<&str>>> = match column.data_type() {
        DataType::Utf8 => Box::new(column.as_string::<i32>().iter()),
        DataType::LargeUtf8 => Box::new(column.as_string::<i64>().iter()),
        DataType::Utf8View => Box::new(column.as_string_view().iter()),
        _ => return None,
    };
    let mut seen: Vec<String> = Vec::new();
    for value in values.flatten() {
        // A batch's rows come object by object: most values repeat the one before.
        if seen.last().is_some_and(|last| last == value) || seen.iter().any(|s| s == value) {
            continue;
        }
        if seen.len() == max {
            return None;
        }
        seen.push(value.to_string());
    }
    Some(seen.into_boxed_slice())
}

/// The source objects a scan's filters keep its rows to: a conjunct
/// `_source_object = 'x'` (either way round) or `_source_object IN ('x', …)`; None when
/// no conjunct names them.
pub(super) fn filtered_sources(filters: &[Expr]) -> Option<Vec<&str>> {
    fn text(expr: &Expr) -> Option<&str> {
        match expr {
            Expr::Literal(value, _) => value.try_as_str().flatten(),
            _ => None,
        }
    }
    fn is_source(expr: &Expr) -> bool {
        matches!(expr, Expr::Column(c) if c.name == SOURCE_COLUMN)
    }
    filters
        .iter()
        .flat_map(split_conjunction)
        .find_map(|conjunct| match conjunct {
            Expr::BinaryExpr(BinaryExpr {
                left,
                op: Operator::Eq,
                right,
            }) => match (is_source(left), is_source(right)) {
                (true, false) => text(right).map(|v| vec![v]),
                (false, true) => text(left).map(|v| vec![v]),
                _ => None,
            },
            Expr::InList(list) if !list.negated && is_source(&list.expr) => {
                list.list.iter().map(text).collect()
            }
            _ => None,
        })
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
        // A filter naming source objects keeps the batches holding them, looked up; the
        // rest are skipped by their min and max. The lookup leaves a few batches at most
        // (a poll's object), and min/max skipping costs ~0.2 M instructions a query even
        // over one batch, more than reading the batch.
        let batches: Vec<&TailBatch> =
            match (filtered_sources(filters), schema.index_of(SOURCE_COLUMN)) {
                (Some(objects), Ok(index)) => self
                    .batches()
                    .filter(|b| b.holds_source(index, &objects))
                    .collect(),
                _ => {
                    let tail = Candidates {
                        schema: schema.clone(),
                        batches: self.batches().collect(),
                    };
                    let all = tail.batches.len();
                    let keep = match super::pruning_predicate(session, filters, &schema)? {
                        Some(pruning) => pruning.prune(&tail).unwrap_or_else(|e| {
                            tracing::debug!("tail batch skipping failed, reading them all: {e}");
                            vec![true; all]
                        }),
                        None => vec![true; all],
                    };
                    tail.batches
                        .into_iter()
                        .zip(keep)
                        .filter_map(|(batch, keep)| keep.then_some(batch))
                        .collect()
                }
            };
        let rows: Vec<RecordBatch> = batches.iter().map(|b| b.rows.clone()).collect();
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

/// The tail batches a scan may read, as the containers min/max skipping tests.
struct Candidates<'a> {
    schema: SchemaRef,
    batches: Vec<&'a TailBatch>,
}

impl Candidates<'_> {
    /// One value per batch of `column`'s statistic `pick` (None when a batch lacks it).
    fn per_batch(
        &self,
        column: &Column,
        pick: impl Fn(&ColumnStats) -> Option<ScalarValue>,
    ) -> Option<ArrayRef> {
        let index = self.schema.index_of(&column.name).ok()?;
        let values: Option<Vec<ScalarValue>> = self
            .batches
            .iter()
            .map(|batch| pick(batch.stats(index)?))
            .collect();
        ScalarValue::iter_to_array(values?).ok()
    }
}

impl PruningStatistics for Candidates<'_> {
    fn min_values(&self, column: &Column) -> Option<ArrayRef> {
        self.per_batch(column, |s| s.min.clone())
    }

    fn max_values(&self, column: &Column) -> Option<ArrayRef> {
        self.per_batch(column, |s| s.max.clone())
    }

    fn num_containers(&self) -> usize {
        self.batches.len()
    }

    fn null_counts(&self, column: &Column) -> Option<ArrayRef> {
        let index = self.schema.index_of(&column.name).ok()?;
        let counts: Option<Vec<u64>> = self
            .batches
            .iter()
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
            .batches
            .iter()
            .map(|batch| Some(batch.rows.num_rows() as u64))
            .collect();
        Some(Arc::new(counts))
    }

    fn contained(&self, _column: &Column, _values: &HashSet<ScalarValue>) -> Option<BooleanArray> {
        None
    }
}

#[cfg(test)]
mod tests {
    use arrow::array::{Int64Array, StringArray, StringViewArray};

    use super::*;

    #[test]
    fn a_batchs_source_objects_are_its_distinct_text_values_up_to_a_bound() {
        let objects =
            StringViewArray::from(vec![Some("raw/a"), Some("raw/a"), None, Some("raw/b")]);
        assert_eq!(
            distinct_text(&objects, 2).as_deref(),
            Some(&["raw/a".to_string(), "raw/b".to_string()][..])
        );
        let plain = StringArray::from(vec!["raw/c", "raw/a", "raw/c"]);
        assert_eq!(distinct_text(&plain, 2).map(|v| v.len()), Some(2));
        // More objects than the bound, or a column that is not text: unknown, so read.
        assert_eq!(distinct_text(&objects, 1), None);
        assert_eq!(distinct_text(&Int64Array::from(vec![1, 2]), 8), None);
    }
}
