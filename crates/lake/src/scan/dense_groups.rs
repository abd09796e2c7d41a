//! Aggregates grouped by one integer key of few values: groups found by indexing, not hashing.
//!
//! DataFusion 55's partial aggregate finds each row's group by hashing its key and probing
//! a table: `GROUP BY payment_type` (6.6 M rows, two values) spent 47-61 ms of CPU there
//! against 8.5 ms for the same sums ungrouped (EXPLAIN ANALYZE). [`DenseGroups`] replaces a
//! partial aggregate grouped by one integer expression with [`DenseGroupsExec`], which
//! finds a row's group at `key - base` in an array of [`DENSE_RANGE`] slots (a window
//! centred on the first batch's keys) and feeds DataFusion's own groups accumulators, so
//! the partial state, its schema and the final aggregate are unchanged. While groups are
//! few, counts and decimal sums are summed per batch in independent lanes and merged once
//! per batch ([`Shortcut`]). A filter right below is applied by the exec itself, so
//! batches whose rows all pass are not copied into FilterExec's coalescer.
//!
//! Nothing is assumed of the keys. When a batch holds a key outside the window (a wide
//! column such as an id), the exec emits the groups it has as partial state and hands
//! that batch and the rest of its input to DataFusion's hash aggregate: the final
//! aggregate merges both, as it merges the partial states of two partitions. A wide key
//! usually shows in the first batch, before any group is made.

use std::fmt;
use std::sync::{Arc, Mutex};

use arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, Decimal128Array, Int64Array, RecordBatch,
};
use arrow::datatypes::{DataType, Decimal128Type, Int64Type, SchemaRef};
use datafusion::common::DataFusionError;
use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::error::Result;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::{EmitTo, GroupsAccumulator};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_expr::aggregate::AggregateFunctionExpr;
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::aggregates::{AggregateExec, AggregateMode, PhysicalGroupBy};
use datafusion::physical_plan::filter::FilterExec;
use datafusion::physical_plan::metrics::{
    BaselineMetrics, ExecutionPlanMetricsSet, MetricBuilder, MetricsSet,
};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::streaming::{PartitionStream, StreamingTableExec};
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, InputOrderMode, PlanProperties,
};
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};

use super::partial::{self, Constants};

/// The key values one partition groups through its array: 256 KiB of group numbers.
pub const DENSE_RANGE: i64 = 1 << 16;

/// Marks a key value that has no group yet.
const NO_GROUP: u32 = u32::MAX;

/// The physical optimizer rule: partial aggregates grouped by one integer expression
/// become [`DenseGroupsExec`].
#[derive(Debug, Default)]
pub struct DenseGroups;

impl PhysicalOptimizerRule for DenseGroups {
    fn optimize(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        _config: &ConfigOptions,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        plan.transform_up(|node| {
            let Some(aggregate) = node.downcast_ref::<AggregateExec>() else {
                return Ok(Transformed::no(node));
            };
            match DenseGroupsExec::try_from_aggregate(aggregate)? {
                Some(exec) => Ok(Transformed::yes(Arc::new(exec) as Arc<dyn ExecutionPlan>)),
                None => Ok(Transformed::no(node)),
            }
        })
        .map(|t| t.data)
    }

    fn name(&self) -> &str {
        "sluice_aggregate_dense_groups"
    }

    fn schema_check(&self) -> bool {
        true
    }
}

/// A partial aggregate over one integer group key, its groups found by indexing.
#[derive(Debug)]
pub struct DenseGroupsExec {
    input: Arc<dyn ExecutionPlan>,
    /// The filter between the input and the aggregate, applied here.
    predicate: Option<Predicate>,
    /// The aggregate replaced: what a partition hands its input over to.
    group_by: Arc<PhysicalGroupBy>,
    aggregates: Vec<Arc<AggregateFunctionExpr>>,
    /// Each aggregate's FILTER (WHERE ...), if any.
    filters: Vec<Option<Arc<dyn PhysicalExpr>>>,
    /// The partial aggregate's output: the group key, then each aggregate's state fields.
    schema: SchemaRef,
    properties: Arc<PlanProperties>,
    metrics: ExecutionPlanMetricsSet,
}

impl DenseGroupsExec {
    /// The replacement for `aggregate`, when it is a plain partial aggregate grouped by
    /// one integer expression with aggregates DataFusion groups itself.
    fn try_from_aggregate(aggregate: &AggregateExec) -> Result<Option<Self>> {
        let group = aggregate.group_expr();
        let plain = *aggregate.mode() == AggregateMode::Partial
            && group.is_single()
            && group.expr().len() == 1
            && *aggregate.input_order_mode() == InputOrderMode::Linear
            && aggregate.limit_options().is_none()
            && aggregate.dynamic_expressions_produced().is_empty()
            && aggregate.aggr_expr().iter().all(|a| {
                !a.is_distinct() && a.order_bys().is_empty() && a.groups_accumulator_supported()
            });
        if !plain {
            return Ok(None);
        }
        let (key, _) = &group.expr()[0];
        if !as_i64_exactly(&key.data_type(&aggregate.input_schema())?) {
            return Ok(None);
        }
        // A filter below is applied here: batches whose rows all pass go on as they are,
        // where FilterExec would copy them into its coalescer (4% of a grouped query's CPU).
        let (input, predicate) = match aggregate.input().downcast_ref::<FilterExec>() {
            Some(filter) if filter.fetch().is_none() => (
                filter.input().clone(),
                Some(Predicate {
                    expr: filter.predicate().clone(),
                    projection: filter.projection().as_ref().map(|p| p.to_vec()),
                    schema: filter.schema(),
                }),
            ),
            _ => (aggregate.input().clone(), None),
        };
        Ok(Some(Self::new(
            input,
            predicate,
            Arc::new(group.clone()),
            aggregate.aggr_expr().to_vec(),
            aggregate.filter_expr().to_vec(),
            aggregate.schema(),
        )))
    }

    fn new(
        input: Arc<dyn ExecutionPlan>,
        predicate: Option<Predicate>,
        group_by: Arc<PhysicalGroupBy>,
        aggregates: Vec<Arc<AggregateFunctionExpr>>,
        filters: Vec<Option<Arc<dyn PhysicalExpr>>>,
        schema: SchemaRef,
    ) -> Self {
        Self {
            properties: partial::properties(&input, &schema),
            input,
            predicate,
            group_by,
            aggregates,
            filters,
            schema,
            metrics: ExecutionPlanMetricsSet::new(),
        }
    }

    fn key(&self) -> &Arc<dyn PhysicalExpr> {
        &self.group_by.expr()[0].0
    }

    /// The rows the aggregate reads: the input's, or the filter's when there is one.
    fn rows_schema(&self) -> SchemaRef {
        match &self.predicate {
            Some(predicate) => predicate.schema.clone(),
            None => self.input.schema(),
        }
    }

    /// DataFusion's partial aggregate over `rest`, the input a partition could not group
    /// through its array.
    fn hand_over(
        &self,
        rest: SendableRecordBatchStream,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        let rest: Arc<dyn PartitionStream> = Arc::new(Rest {
            schema: self.rows_schema(),
            stream: Mutex::new(Some(rest)),
        });
        let source = StreamingTableExec::try_new(
            self.rows_schema(),
            vec![rest],
            None,
            Vec::new(),
            false,
            None,
        )?;
        let aggregate = AggregateExec::try_new(
            AggregateMode::Partial,
            self.group_by.clone(),
            self.aggregates.clone(),
            self.filters.clone(),
            Arc::new(source),
            self.rows_schema(),
        )?;
        aggregate.execute(0, context)
    }
}

/// A filter the exec applies to its input's batches, as FilterExec would.
#[derive(Debug, Clone)]
struct Predicate {
    expr: Arc<dyn PhysicalExpr>,
    /// The columns the filter passes on, if not all.
    projection: Option<Vec<usize>>,
    /// The filter's output: what the aggregate's expressions read.
    schema: SchemaRef,
}

impl Predicate {
    /// The rows of `batch` the predicate holds for (null is false), projected.
    fn apply(&self, batch: RecordBatch) -> Result<RecordBatch> {
        let rows = batch.num_rows();
        let mask = self.expr.evaluate(&batch)?.into_array(rows)?;
        let mask = mask.as_boolean_opt().ok_or_else(|| {
            DataFusionError::Internal(format!("filter {} is not a boolean", self.expr))
        })?;
        let kept = if mask.null_count() == 0 && mask.true_count() == rows {
            batch
        } else {
            arrow::compute::filter_record_batch(&batch, mask)?
        };
        match &self.projection {
            Some(columns) => Ok(kept.project(columns)?),
            None => Ok(kept),
        }
    }
}

/// Integer types whose every value is an i64.
fn as_i64_exactly(data_type: &DataType) -> bool {
    matches!(
        data_type,
        DataType::Int8
            | DataType::Int16
            | DataType::Int32
            | DataType::Int64
            | DataType::UInt8
            | DataType::UInt16
            | DataType::UInt32
    )
}

/// The rest of a partition's input, as the one partition of a plan DataFusion executes.
struct Rest {
    schema: SchemaRef,
    stream: Mutex<Option<SendableRecordBatchStream>>,
}

impl fmt::Debug for Rest {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.debug_struct("Rest")
            .field("schema", &self.schema)
            .finish()
    }
}

impl PartitionStream for Rest {
    fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    fn execute(&self, _ctx: Arc<TaskContext>) -> SendableRecordBatchStream {
        let taken = self.stream.lock().unwrap_or_else(|p| p.into_inner()).take();
        match taken {
            Some(stream) => stream,
            None => Box::pin(RecordBatchStreamAdapter::new(
                self.schema.clone(),
                futures::stream::once(async {
                    Err(DataFusionError::Internal(
                        "DenseGroupsExec's handed-over input was read twice".into(),
                    ))
                }),
            )),
        }
    }
}

impl DisplayAs for DenseGroupsExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        let aggregates: Vec<&str> = self.aggregates.iter().map(|a| a.name()).collect();
        write!(
            f,
            "DenseGroupsExec: gby=[{}], aggr=[{}]",
            self.key(),
            aggregates.join(", ")
        )?;
        if let Some(predicate) = &self.predicate {
            write!(f, ", filter=[{}]", predicate.expr)?;
        }
        Ok(())
    }
}

impl ExecutionPlan for DenseGroupsExec {
    fn name(&self) -> &str {
        "DenseGroupsExec"
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
        let filters = self.filters.iter().flatten().cloned();
        let predicate = self.predicate.iter().map(|p| p.expr.clone());
        let key = std::iter::once(self.key().clone());
        partial::visit(key.chain(arguments).chain(filters).chain(predicate), f)
    }

    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        Ok(Arc::new(Self::new(
            partial::only_child(self.name(), children)?,
            self.predicate.clone(),
            self.group_by.clone(),
            self.aggregates.clone(),
            self.filters.clone(),
            self.schema.clone(),
        )))
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        let input = self.input.execute(partition, context.clone())?;
        let input: SendableRecordBatchStream = match self.predicate.clone() {
            Some(predicate) => {
                let filtered = input.map(move |batch| predicate.apply(batch?));
                Box::pin(RecordBatchStreamAdapter::new(self.rows_schema(), filtered))
            }
            None => input,
        };
        let accumulators = self
            .aggregates
            .iter()
            .map(|a| a.create_groups_accumulator())
            .collect::<Result<Vec<_>>>()?;
        let shortcuts = self
            .aggregates
            .iter()
            .zip(&self.filters)
            .map(|(a, f)| Shortcut::of(a, f.is_some(), &self.rows_schema()))
            .collect::<Result<Vec<_>>>()?;
        let mut fold = Fold {
            key: self.key().clone(),
            arguments: self.aggregates.iter().map(|a| a.expressions()).collect(),
            filters: self.filters.clone(),
            schema: self.schema.clone(),
            groups: None,
            accumulators,
            shortcuts,
            every_group: Vec::new(),
            constants: Constants::default(),
        };
        let metrics = BaselineMetrics::new(&self.metrics, partition);
        // Rows and batches out, the handed-over aggregate's included.
        let output = metrics.clone();
        let handed_over = MetricBuilder::new(&self.metrics).counter("handed_over_rows", partition);
        let this = Self::new(
            self.input.clone(),
            self.predicate.clone(),
            self.group_by.clone(),
            self.aggregates.clone(),
            self.filters.clone(),
            self.schema.clone(),
        );
        let stream = futures::stream::once(async move {
            let mut input = input;
            let mut rest = None;
            while let Some(batch) = input.next().await {
                let batch = batch?;
                let timer = metrics.elapsed_compute().timer();
                let folded = fold.update(&batch)?;
                timer.done();
                if !folded {
                    handed_over.add(batch.num_rows());
                    rest = Some((batch, input));
                    break;
                }
            }
            let timer = metrics.elapsed_compute().timer();
            let states = fold.finish()?;
            timer.done();
            metrics.done();
            let folded = futures::stream::iter([Ok(states)]);
            let Some((batch, input)) = rest else {
                return Ok::<BoxStream<'static, Result<RecordBatch>>, DataFusionError>(
                    folded.boxed(),
                );
            };
            let schema = input.schema();
            let rest = futures::stream::iter([Ok(batch)]).chain(input);
            let rest = Box::pin(RecordBatchStreamAdapter::new(schema, rest));
            Ok(folded.chain(this.hand_over(rest, context)?).boxed())
        })
        .try_flatten()
        .try_filter(|batch| futures::future::ready(batch.num_rows() > 0))
        .inspect_ok(move |batch| {
            output.record_output(batch.num_rows());
            output.output_batches().add(1);
        });
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            self.schema.clone(),
            stream,
        )))
    }

    fn metrics(&self) -> Option<MetricsSet> {
        Some(self.metrics.clone_inner())
    }
}

/// Key values to group numbers through an array over a window of [`DENSE_RANGE`] values.
struct Groups {
    base: i64,
    /// `key - base` -> group number, or [`NO_GROUP`].
    slots: Vec<u32>,
    null: Option<u32>,
    /// Each group's key, by group number.
    keys: Vec<Option<i64>>,
    /// The group number of each row of the batch being folded.
    rows: Vec<usize>,
}

impl Groups {
    /// A window centred on `min..=max`, the first batch's keys; None when they are wider
    /// than the window.
    fn around(min: i64, max: i64) -> Option<Self> {
        let span = max.checked_sub(min)?.checked_add(1)?;
        if span > DENSE_RANGE {
            return None;
        }
        let base = min.saturating_sub((DENSE_RANGE - span) / 2);
        let base = base.min(i64::MAX - (DENSE_RANGE - 1));
        Some(Self {
            base,
            slots: vec![NO_GROUP; DENSE_RANGE as usize],
            null: None,
            keys: Vec::new(),
            rows: Vec::new(),
        })
    }

    /// Whether every key has a slot (one pass the compiler vectorises; arrow's min and max
    /// kernels took 6% of a grouped query's CPU).
    fn holds(&self, keys: &Int64Array) -> bool {
        let base = self.base;
        let outside = |key: i64| key.wrapping_sub(base) as u64 >= DENSE_RANGE as u64;
        if keys.null_count() == 0 {
            !keys
                .values()
                .iter()
                .fold(false, |out, &key| out | outside(key))
        } else {
            !keys.iter().flatten().any(outside)
        }
    }

    /// Fills `rows` with the group of each of `keys` (all inside the window), making
    /// groups for new values.
    fn assign(&mut self, keys: &Int64Array) {
        let mut rows = std::mem::take(&mut self.rows);
        rows.clear();
        rows.reserve(keys.len());
        if keys.null_count() == 0 {
            rows.extend(keys.values().iter().map(|&key| self.of_value(key) as usize));
        } else {
            for key in keys {
                let group = match key {
                    Some(key) => self.of_value(key),
                    None => self.of_null(),
                };
                rows.push(group as usize);
            }
        }
        self.rows = rows;
    }

    #[inline]
    fn of_value(&mut self, key: i64) -> u32 {
        let slot = (key - self.base) as usize;
        let group = self.slots[slot];
        if group != NO_GROUP {
            return group;
        }
        let group = self.new_group(Some(key));
        self.slots[slot] = group;
        group
    }

    fn of_null(&mut self) -> u32 {
        match self.null {
            Some(group) => group,
            None => {
                let group = self.new_group(None);
                self.null = Some(group);
                group
            }
        }
    }

    /// At most one group per slot and one for nulls: fewer than `NO_GROUP`.
    fn new_group(&mut self, key: Option<i64>) -> u32 {
        self.keys.push(key);
        (self.keys.len() - 1) as u32
    }
}

/// The smallest and largest of `keys`, None when all are null.
fn bounds(keys: &Int64Array) -> Option<(i64, i64)> {
    if keys.null_count() == 0 {
        let values = keys.values();
        let first = *values.first()?;
        return Some(
            values
                .iter()
                .fold((first, first), |(lo, hi), &k| (lo.min(k), hi.max(k))),
        );
    }
    let mut valid = keys.iter().flatten();
    let first = valid.next()?;
    Some(valid.fold((first, first), |(lo, hi), k| (lo.min(k), hi.max(k))))
}

/// One partition's groups and their accumulators.
struct Fold {
    key: Arc<dyn PhysicalExpr>,
    /// Each aggregate's argument expressions.
    arguments: Vec<Vec<Arc<dyn PhysicalExpr>>>,
    filters: Vec<Option<Arc<dyn PhysicalExpr>>>,
    schema: SchemaRef,
    /// Made at the first batch with a key, around its keys.
    groups: Option<Groups>,
    /// One groups accumulator per aggregate.
    accumulators: Vec<Box<dyn GroupsAccumulator>>,
    /// Per aggregate, whether this exec sums a batch's partial state itself.
    shortcuts: Vec<Shortcut>,
    /// The group numbers `0..groups`, to merge a batch's partial states.
    every_group: Vec<usize>,
    constants: Constants,
}

/// While there are at most this many groups, [`Shortcut`]s apply.
const FEW_GROUPS: usize = 64;

/// Independent partial sums per group, so that rows of one group do not wait on each other.
const LANES: usize = 4;

/// Aggregates whose per-batch partial state this exec computes itself while groups are
/// few, merged into the groups accumulator once per batch. DataFusion's accumulators
/// update a group's value and its seen-bit on every row: when a few groups take all rows,
/// each row waits on the write before it (12-17% of `tip_rate_by_payment`'s CPU, perf).
#[derive(Debug, Clone, Copy, PartialEq)]
enum Shortcut {
    None,
    /// `count(x)`: rows per group where `x` is not null.
    Count,
    /// `sum(x)` of a decimal128: wrapping i128 sums, as DataFusion's, so the same bits.
    SumDecimal128 {
        precision: u8,
        scale: i8,
    },
}

impl Shortcut {
    fn of(aggregate: &AggregateFunctionExpr, filtered: bool, input: &SchemaRef) -> Result<Self> {
        let args = aggregate.expressions();
        if filtered || args.len() != 1 || aggregate.is_distinct() {
            return Ok(Self::None);
        }
        let state = aggregate.state_fields()?;
        let (Some(state), 1) = (state.first(), state.len()) else {
            return Ok(Self::None);
        };
        Ok(match (aggregate.fun().name(), state.data_type()) {
            ("count", DataType::Int64) => Self::Count,
            ("sum", &DataType::Decimal128(precision, scale))
                if matches!(args[0].data_type(input)?, DataType::Decimal128(..)) =>
            {
                Self::SumDecimal128 { precision, scale }
            }
            _ => Self::None,
        })
    }
}

/// Rows per group (`rows` holds each row's group) where `values` is not null.
fn count_by_group(values: &dyn Array, rows: &[usize], groups: usize) -> ArrayRef {
    let mut lanes = vec![0i64; LANES * groups];
    // Parquet's reader gives nullable columns a validity buffer even when nothing is null.
    match values.logical_nulls().filter(|n| n.null_count() > 0) {
        None => {
            for (i, &group) in rows.iter().enumerate() {
                lanes[(i % LANES) * groups + group] += 1;
            }
        }
        Some(nulls) => {
            for i in nulls.valid_indices() {
                lanes[(i % LANES) * groups + rows[i]] += 1;
            }
        }
    }
    let counts = (0..groups).map(|g| (0..LANES).map(|l| lanes[l * groups + g]).sum::<i64>());
    Arc::new(Int64Array::from_iter_values(counts))
}

/// Each group's wrapping sum of `values`; null for a group without a value in them.
fn sum_by_group(
    values: &Decimal128Array,
    rows: &[usize],
    groups: usize,
    (precision, scale): (u8, i8),
) -> Result<ArrayRef> {
    // A lane sums at most `rows` values of `precision` digits: within an i64 when narrow
    // (decimal(10,2) for any batch size up to 900 million rows), and i64 adds are half
    // the work of i128 ones.
    let narrow = values.precision() <= 18
        && i128::try_from(rows.len())
            .is_ok_and(|n| n * 10i128.pow(values.precision().into()) <= i128::from(i64::MAX));
    let sums = if narrow {
        lane_sums::<i64>(values, rows, groups)
    } else {
        lane_sums::<i128>(values, rows, groups)
    };
    let sums = Decimal128Array::from_iter(sums).with_precision_and_scale(precision, scale)?;
    Ok(Arc::new(sums))
}

/// A lane's running sum: i64 when the values allow, else i128 (both wrapping, so the
/// total's bits are DataFusion's whatever the order of additions).
trait LaneSum: Copy + Default {
    fn add(self, value: i128) -> Self;
    fn widen(self) -> i128;
}

impl LaneSum for i64 {
    #[inline]
    fn add(self, value: i128) -> Self {
        self.wrapping_add(value as i64)
    }

    fn widen(self) -> i128 {
        self.into()
    }
}

impl LaneSum for i128 {
    #[inline]
    fn add(self, value: i128) -> Self {
        self.wrapping_add(value)
    }

    fn widen(self) -> i128 {
        self
    }
}

/// Each group's sum over [`LANES`] independent lanes; None for a group without values.
fn lane_sums<T: LaneSum>(
    values: &Decimal128Array,
    rows: &[usize],
    groups: usize,
) -> Vec<Option<i128>> {
    let mut lanes = vec![T::default(); LANES * groups];
    let mut seen = vec![false; groups];
    let raw = values.values();
    match values.nulls().filter(|n| n.null_count() > 0) {
        None => {
            for (i, (&group, &value)) in rows.iter().zip(raw.iter()).enumerate() {
                let slot = (i % LANES) * groups + group;
                lanes[slot] = lanes[slot].add(value);
            }
            for &group in rows {
                seen[group] = true;
            }
        }
        Some(nulls) => {
            // Branch-free: a null adds zero.
            let valid = rows.iter().zip(raw.iter()).zip(nulls.iter()).enumerate();
            for (i, ((&group, &value), valid)) in valid {
                let slot = (i % LANES) * groups + group;
                lanes[slot] = lanes[slot].add(if valid { value } else { 0 });
            }
            for i in nulls.valid_indices() {
                seen[rows[i]] = true;
            }
        }
    }
    (0..groups)
        .map(|g| {
            let total =
                (0..LANES).fold(0i128, |a, l| a.wrapping_add(lanes[l * groups + g].widen()));
            seen[g].then_some(total)
        })
        .collect()
}

impl Fold {
    /// Folds `batch` into the groups; false, with nothing folded, when a key falls outside
    /// the window.
    fn update(&mut self, batch: &RecordBatch) -> Result<bool> {
        let rows = batch.num_rows();
        if rows == 0 {
            return Ok(true);
        }
        let keys = self.key.evaluate(batch)?.into_array(rows)?;
        let keys = arrow::compute::cast(&keys, &DataType::Int64)?;
        let keys = keys.as_primitive::<Int64Type>();
        let groups = match &mut self.groups {
            Some(groups) if !groups.holds(keys) => return Ok(false),
            Some(groups) => groups,
            None => match bounds(keys) {
                Some((min, max)) => match Groups::around(min, max) {
                    Some(groups) => self.groups.insert(groups),
                    None => return Ok(false),
                },
                // Only null keys so far: any window would do.
                None => self.groups.insert(Groups::around(0, 0).expect("one value")),
            },
        };
        groups.assign(keys);
        let total = groups.keys.len();
        let few = total <= FEW_GROUPS;
        if few && self.every_group.len() != total {
            self.every_group = (0..total).collect();
        }
        for (((accumulator, exprs), filter), shortcut) in self
            .accumulators
            .iter_mut()
            .zip(&self.arguments)
            .zip(&self.filters)
            .zip(&self.shortcuts)
        {
            let args = self.constants.arguments(exprs, batch)?;
            let filter = match filter {
                Some(filter) => Some(filter.evaluate(batch)?.into_array(rows)?),
                None => None,
            };
            let filter: Option<&BooleanArray> = filter.as_ref().map(|f| f.as_boolean());
            let state = match (*shortcut, few) {
                (Shortcut::Count, true) => count_by_group(&args[0], &groups.rows, total),
                (Shortcut::SumDecimal128 { precision, scale }, true) => sum_by_group(
                    args[0].as_primitive::<Decimal128Type>(),
                    &groups.rows,
                    total,
                    (precision, scale),
                )?,
                _ => {
                    accumulator.update_batch(&args, &groups.rows, filter, total)?;
                    continue;
                }
            };
            accumulator.merge_batch(&[state], &self.every_group, total)?;
        }
        Ok(true)
    }

    /// The partial state of every group, in the partial aggregate's schema.
    fn finish(&mut self) -> Result<RecordBatch> {
        let Some(groups) = self.groups.as_mut().filter(|g| !g.keys.is_empty()) else {
            return Ok(RecordBatch::new_empty(self.schema.clone()));
        };
        let keys: ArrayRef = Arc::new(Int64Array::from(std::mem::take(&mut groups.keys)));
        let mut columns = vec![arrow::compute::cast(
            &keys,
            self.schema.field(0).data_type(),
        )?];
        for accumulator in &mut self.accumulators {
            columns.extend(accumulator.state(EmitTo::All)?);
        }
        Ok(RecordBatch::try_new(self.schema.clone(), columns)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether the window holds both keys.
    fn covers(groups: &Groups, min: i64, max: i64) -> bool {
        groups.holds(&Int64Array::from(vec![Some(min), None, Some(max)]))
            && groups.holds(&Int64Array::from(vec![min, max]))
    }

    #[test]
    fn groups_are_numbered_as_first_seen_and_nulls_have_their_own() {
        let mut groups = Groups::around(9, 14).unwrap();
        assert!(covers(&groups, 9, 14));
        assert!(covers(
            &groups,
            12 - DENSE_RANGE / 2,
            12 + DENSE_RANGE / 2 - 2
        ));
        assert!(!covers(&groups, 8 - DENSE_RANGE, 14));
        assert!(!covers(&groups, 9, 14 + DENSE_RANGE));
        let keys = Int64Array::from(vec![
            Some(12),
            Some(10),
            None,
            Some(9),
            Some(13),
            Some(14),
            Some(12),
            None,
            Some(9),
        ]);
        groups.assign(&keys);
        assert_eq!(groups.rows, [0, 1, 2, 3, 4, 5, 0, 2, 3]);
        assert_eq!(
            groups.keys,
            [Some(12), Some(10), None, Some(9), Some(13), Some(14)]
        );
        // A later batch without nulls finds the same groups.
        groups.assign(&Int64Array::from(vec![14, 10, 11, 9]));
        assert_eq!(groups.rows, [5, 1, 6, 3]);
        assert_eq!(groups.keys.len(), 7);
    }

    #[test]
    fn few_groups_are_counted_and_summed_as_row_by_row() {
        let rows: Vec<usize> = (0..1_003).map(|i| (i * 7 + i / 5) % 3).collect();
        // Group 3 exists but has no rows in this batch.
        let groups = 4;
        let values = Decimal128Array::from_iter((0..1_003).map(|i: i128| {
            (i % 5 != 0).then_some(if i == 8 {
                i128::MAX
            } else {
                i * 1_001 - 40_000
            })
        }));
        let mut counts = vec![0i64; groups];
        let mut sums: Vec<Option<i128>> = vec![None; groups];
        for (i, &g) in rows.iter().enumerate() {
            if let Some(v) = values.iter().nth(i).flatten() {
                counts[g] += 1;
                sums[g] = Some(sums[g].unwrap_or(0).wrapping_add(v));
            }
        }
        let counted = count_by_group(&values, &rows, groups);
        assert_eq!(
            counted.as_primitive::<Int64Type>().values().to_vec(),
            counts
        );
        let summed = sum_by_group(&values, &rows, groups, (38, 2)).unwrap();
        let summed: Vec<Option<i128>> = summed.as_primitive::<Decimal128Type>().iter().collect();
        assert_eq!(summed, sums);
        assert_eq!(summed[3], None);
        // Without nulls: every row counts.
        let dense = Decimal128Array::from_iter_values((0..1_003).map(|i: i128| i - 500));
        let counted = count_by_group(&dense, &rows, groups);
        let per_group: Vec<i64> = (0..groups)
            .map(|g| rows.iter().filter(|&&r| r == g).count() as i64)
            .collect();
        assert_eq!(
            counted.as_primitive::<Int64Type>().values().to_vec(),
            per_group
        );
        let summed = sum_by_group(&dense, &rows, groups, (38, 2)).unwrap();
        let expected: Vec<Option<i128>> = (0..groups)
            .map(|g| {
                let mine = rows.iter().enumerate().filter(|(_, r)| **r == g);
                let total = mine.map(|(i, _)| i as i128 - 500).sum::<i128>();
                (g < 3).then_some(total)
            })
            .collect();
        let summed: Vec<Option<i128>> = summed.as_primitive::<Decimal128Type>().iter().collect();
        assert_eq!(summed, expected);
        // Decimals of at most 18 digits are summed in i64 lanes: the same sums.
        for nullable in [false, true] {
            let values: Vec<Option<i128>> = (0..1_003)
                .map(|i: i128| (!nullable || i % 3 != 0).then_some(i * 9_000_000 - 4_000_000_000))
                .collect();
            let narrow = Decimal128Array::from_iter(values.iter().copied())
                .with_precision_and_scale(10, 2)
                .unwrap();
            let summed = sum_by_group(&narrow, &rows, groups, (20, 2)).unwrap();
            let summed: Vec<Option<i128>> =
                summed.as_primitive::<Decimal128Type>().iter().collect();
            let expected: Vec<Option<i128>> = (0..groups)
                .map(|g| {
                    let mine = rows
                        .iter()
                        .zip(&values)
                        .filter(|(r, v)| **r == g && v.is_some());
                    let (n, total) =
                        mine.fold((0, 0i128), |(n, t), (_, v)| (n + 1, t + v.unwrap()));
                    (n > 0).then_some(total)
                })
                .collect();
            assert_eq!(summed, expected, "nullable: {nullable}");
        }
    }

    #[test]
    fn a_window_is_made_only_for_keys_it_can_hold_and_stays_inside_i64() {
        assert_eq!(
            bounds(&Int64Array::from(vec![None, Some(5), Some(-2), None])),
            Some((-2, 5))
        );
        assert_eq!(bounds(&Int64Array::from(vec![7, 3, 9])), Some((3, 9)));
        assert_eq!(bounds(&Int64Array::from(vec![None, None])), None);
        assert_eq!(bounds(&Int64Array::from(Vec::<i64>::new())), None);
        assert!(Groups::around(0, DENSE_RANGE - 1).is_some());
        assert!(Groups::around(0, DENSE_RANGE).is_none());
        assert!(Groups::around(i64::MIN, i64::MAX).is_none());
        let top = Groups::around(i64::MAX - 3, i64::MAX).unwrap();
        assert!(covers(&top, i64::MAX - 3, i64::MAX));
        let bottom = Groups::around(i64::MIN, i64::MIN + 3).unwrap();
        assert!(covers(&bottom, i64::MIN, i64::MIN + 3));
    }
}
