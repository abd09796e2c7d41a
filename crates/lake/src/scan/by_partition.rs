//! Aggregates grouped by partition columns, folded a batch at a time.
//!
//! A Delta table's partition columns hold one value per file, and DataFusion's Parquet
//! scan fills them per file, so every batch it yields has one value of each. DataFusion
//! 55's hash aggregate does not know that: it hashes the group key of every row and
//! updates each sum through a per-row group index (a sixth of `GROUP BY date`'s CPU went
//! to hashing the constant `date`, measured with perf). [`ByPartition`] replaces the
//! partial aggregate of such a query with [`ByPartitionExec`], which finds each batch's
//! runs of equal keys with one vectorised comparison and feeds each run to its group's
//! accumulators whole (arrow's sum and min/max kernels). It keeps the partial state's
//! schema, so DataFusion's final aggregate merges its output unchanged.
//!
//! It applies only where it cannot lose: a partial aggregate over sluice's own Parquet
//! scan (or a filter of it), grouped only by that scan's partition columns, with
//! aggregates whose state is a few values (count, sum, min, max, avg) and no DISTINCT,
//! FILTER or ORDER BY. Answers do not rest on a batch holding one key: a filter's output
//! may join the rows of several files, and its batches are split into runs.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch};
use arrow::datatypes::SchemaRef;
use datafusion::common::ScalarValue;
use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::datasource::physical_plan::ParquetSource;
use datafusion::datasource::source::DataSourceExec;
use datafusion::error::Result;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::Accumulator;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_expr::aggregate::AggregateFunctionExpr;
use datafusion::physical_expr::expressions::Column;
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::aggregates::{AggregateExec, AggregateMode};
use datafusion::physical_plan::filter::FilterExec;
use datafusion::physical_plan::metrics::{BaselineMetrics, ExecutionPlanMetricsSet, MetricsSet};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{DisplayAs, DisplayFormatType, ExecutionPlan, PlanProperties};
use futures::StreamExt;

use super::partial::{self, Constants};

/// Aggregate functions whose state is a few values, whatever the rows: folding them per
/// run costs no more memory than DataFusion's own partial aggregate.
const FOLDABLE: [&str; 5] = ["count", "sum", "min", "max", "avg"];

/// The physical optimizer rule: partial aggregates grouped by partition columns of a
/// Parquet scan become [`ByPartitionExec`].
#[derive(Debug, Default)]
pub struct ByPartition;

impl PhysicalOptimizerRule for ByPartition {
    fn optimize(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        _config: &ConfigOptions,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        plan.transform_up(|node| {
            let Some(aggregate) = node.downcast_ref::<AggregateExec>() else {
                return Ok(Transformed::no(node));
            };
            match ByPartitionExec::try_from_aggregate(aggregate) {
                Some(exec) => Ok(Transformed::yes(Arc::new(exec) as Arc<dyn ExecutionPlan>)),
                None => Ok(Transformed::no(node)),
            }
        })
        .map(|t| t.data)
    }

    fn name(&self) -> &str {
        "sluice_aggregate_by_partition"
    }

    fn schema_check(&self) -> bool {
        true
    }
}

/// A partial aggregate that folds each batch's runs of equal group keys whole.
#[derive(Debug)]
pub struct ByPartitionExec {
    input: Arc<dyn ExecutionPlan>,
    /// The group columns, in the input's schema.
    group_by: Vec<Arc<dyn PhysicalExpr>>,
    aggregates: Vec<Arc<AggregateFunctionExpr>>,
    /// The partial aggregate's output: group columns, then each aggregate's state fields.
    schema: SchemaRef,
    properties: Arc<PlanProperties>,
    metrics: ExecutionPlanMetricsSet,
}

impl ByPartitionExec {
    /// The replacement for `aggregate`, when it is a partial aggregate this exec computes
    /// exactly and faster (see the module's documentation).
    fn try_from_aggregate(aggregate: &AggregateExec) -> Option<Self> {
        let group = aggregate.group_expr();
        let plain = *aggregate.mode() == AggregateMode::Partial
            && group.is_single()
            && !group.expr().is_empty()
            && aggregate.limit_options().is_none()
            && aggregate.dynamic_expressions_produced().is_empty()
            && aggregate.filter_expr().iter().all(Option::is_none)
            && aggregate.aggr_expr().iter().all(|a| {
                !a.is_distinct() && a.order_bys().is_empty() && FOLDABLE.contains(&a.fun().name())
            });
        if !plain {
            return None;
        }
        let partition_columns = partition_columns(aggregate.input())?;
        let by_partition = group.expr().iter().all(|(expr, _)| {
            expr.downcast_ref::<Column>()
                .is_some_and(|c| partition_columns.iter().any(|p| p == c.name()))
        });
        if !by_partition {
            return None;
        }
        Some(Self::new(
            aggregate.input().clone(),
            group.expr().iter().map(|(e, _)| e.clone()).collect(),
            aggregate.aggr_expr().to_vec(),
            aggregate.schema(),
        ))
    }

    fn new(
        input: Arc<dyn ExecutionPlan>,
        group_by: Vec<Arc<dyn PhysicalExpr>>,
        aggregates: Vec<Arc<AggregateFunctionExpr>>,
        schema: SchemaRef,
    ) -> Self {
        Self {
            properties: partial::properties(&input, &schema),
            input,
            group_by,
            aggregates,
            schema,
            metrics: ExecutionPlanMetricsSet::new(),
        }
    }
}

/// The partition columns of the Parquet scan `plan` reads, through filters (sluice's
/// [`super::provider`] scans files of one partition value each, filled in per file; a
/// filter keeps the columns' names, and each file's rows stay contiguous).
fn partition_columns(plan: &Arc<dyn ExecutionPlan>) -> Option<Vec<String>> {
    let mut plan = plan;
    while let Some(filter) = plan.downcast_ref::<FilterExec>() {
        plan = filter.input();
    }
    let scan = plan.downcast_ref::<DataSourceExec>()?;
    let (config, _) = scan.downcast_to_file_source::<ParquetSource>()?;
    let names: Vec<String> = config
        .table_partition_cols()
        .iter()
        .map(|f| f.name().clone())
        .collect();
    (!names.is_empty()).then_some(names)
}

impl DisplayAs for ByPartitionExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        let group_by: Vec<String> = self.group_by.iter().map(|e| e.to_string()).collect();
        let aggregates: Vec<&str> = self.aggregates.iter().map(|a| a.name()).collect();
        write!(
            f,
            "ByPartitionExec: gby=[{}], aggr=[{}]",
            group_by.join(", "),
            aggregates.join(", ")
        )
    }
}

impl ExecutionPlan for ByPartitionExec {
    fn name(&self) -> &str {
        "ByPartitionExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    fn apply_expressions(
        &self,
        f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        let arguments = self.aggregates.iter().flat_map(|a| a.expressions());
        partial::visit(self.group_by.iter().cloned().chain(arguments), f)
    }

    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        Ok(Arc::new(Self::new(
            partial::only_child(self.name(), children)?,
            self.group_by.clone(),
            self.aggregates.clone(),
            self.schema.clone(),
        )))
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        let input = self.input.execute(partition, context)?;
        let mut fold = Fold {
            group_by: self.group_by.clone(),
            arguments: self.aggregates.iter().map(|a| a.expressions()).collect(),
            aggregates: self.aggregates.clone(),
            schema: self.schema.clone(),
            groups: HashMap::new(),
            keys: Vec::new(),
            accumulators: Vec::new(),
            constants: Constants::default(),
        };
        let metrics = BaselineMetrics::new(&self.metrics, partition);
        let output = futures::stream::once(async move {
            let mut input = input;
            while let Some(batch) = input.next().await {
                let batch = batch?;
                let _timer = metrics.elapsed_compute().timer();
                fold.update(&batch)?;
            }
            let timer = metrics.elapsed_compute().timer();
            let states = fold.finish()?;
            timer.done();
            if states.num_rows() > 0 {
                metrics.record_output(states.num_rows());
                metrics.output_batches().add(1);
            }
            metrics.done();
            Ok(states)
        })
        .filter(|batch| futures::future::ready(!matches!(batch, Ok(b) if b.num_rows() == 0)));
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            self.schema.clone(),
            output,
        )))
    }

    fn metrics(&self) -> Option<MetricsSet> {
        Some(self.metrics.clone_inner())
    }
}

/// One partition's groups and their accumulators.
struct Fold {
    group_by: Vec<Arc<dyn PhysicalExpr>>,
    /// Each aggregate's argument expressions.
    arguments: Vec<Vec<Arc<dyn PhysicalExpr>>>,
    aggregates: Vec<Arc<AggregateFunctionExpr>>,
    schema: SchemaRef,
    /// Group key -> index into `keys` and `accumulators`.
    groups: HashMap<Vec<ScalarValue>, usize>,
    keys: Vec<Vec<ScalarValue>>,
    /// Per group, one accumulator per aggregate.
    accumulators: Vec<Vec<Box<dyn Accumulator>>>,
    constants: Constants,
}

impl Fold {
    /// Folds `batch`: each run of rows with equal keys goes to its group's accumulators
    /// as one slice.
    fn update(&mut self, batch: &RecordBatch) -> Result<()> {
        let rows = batch.num_rows();
        if rows == 0 {
            return Ok(());
        }
        let keys = self
            .group_by
            .iter()
            .map(|e| e.evaluate(batch)?.into_array(rows))
            .collect::<Result<Vec<ArrayRef>>>()?;
        let arguments = self
            .arguments
            .iter()
            .map(|exprs| self.constants.arguments(exprs, batch))
            .collect::<Result<Vec<_>>>()?;
        let runs = arrow::compute::partition(&keys)?;
        for run in runs.ranges() {
            let key = keys
                .iter()
                .map(|k| ScalarValue::try_from_array(k, run.start))
                .collect::<Result<Vec<_>>>()?;
            let group = self.group(key)?;
            let whole = run.start == 0 && run.end == rows;
            for (accumulator, args) in self.accumulators[group].iter_mut().zip(&arguments) {
                if whole {
                    accumulator.update_batch(args)?;
                } else {
                    let sliced: Vec<ArrayRef> =
                        args.iter().map(|a| a.slice(run.start, run.len())).collect();
                    accumulator.update_batch(&sliced)?;
                }
            }
        }
        Ok(())
    }

    /// The index of `key`'s group, created with fresh accumulators when new.
    fn group(&mut self, key: Vec<ScalarValue>) -> Result<usize> {
        if let Some(&group) = self.groups.get(&key) {
            return Ok(group);
        }
        let accumulators = self
            .aggregates
            .iter()
            .map(|a| a.create_accumulator())
            .collect::<Result<Vec<_>>>()?;
        let group = self.keys.len();
        self.keys.push(key.clone());
        self.accumulators.push(accumulators);
        self.groups.insert(key, group);
        Ok(group)
    }

    /// The partial state of every group, in the partial aggregate's schema.
    fn finish(&mut self) -> Result<RecordBatch> {
        if self.keys.is_empty() {
            return Ok(RecordBatch::new_empty(self.schema.clone()));
        }
        let mut columns: Vec<Vec<ScalarValue>> = vec![Vec::new(); self.schema.fields().len()];
        for (key, accumulators) in self.keys.iter().zip(self.accumulators.iter_mut()) {
            let states = accumulators
                .iter_mut()
                .map(|a| a.state())
                .collect::<Result<Vec<_>>>()?;
            let values = key.iter().cloned().chain(states.into_iter().flatten());
            for (column, value) in columns.iter_mut().zip(values) {
                column.push(value);
            }
        }
        let arrays = columns
            .into_iter()
            .zip(self.schema.fields())
            .map(|(values, field)| {
                let array = ScalarValue::iter_to_array(values)?;
                if array.data_type() == field.data_type() {
                    Ok(array)
                } else {
                    Ok(arrow::compute::cast(&array, field.data_type())?)
                }
            })
            .collect::<Result<Vec<ArrayRef>>>()?;
        Ok(RecordBatch::try_new(self.schema.clone(), arrays)?)
    }
}
