//! What sluice's partial-aggregate execs ([`super::ByPartitionExec`],
//! [`super::DenseGroupsExec`]) share: their plan properties, their one child, the
//! expressions they show DataFusion, and their aggregates' arguments per batch.

use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch};
use arrow::datatypes::SchemaRef;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{DataFusionError, ScalarValue};
use datafusion::error::Result;
use datafusion::logical_expr::ColumnarValue;
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::{
    ExecutionPlan, ExecutionPlanProperties, Partitioning, PlanProperties,
};

/// A partial aggregate's properties: as many partitions as `input`, all output at the end.
pub(super) fn properties(
    input: &Arc<dyn ExecutionPlan>,
    schema: &SchemaRef,
) -> Arc<PlanProperties> {
    let partitions = input.output_partitioning().partition_count();
    Arc::new(PlanProperties::new(
        EquivalenceProperties::new(schema.clone()),
        Partitioning::UnknownPartitioning(partitions),
        EmissionType::Final,
        Boundedness::Bounded,
    ))
}

/// The one child of `exec`, from `with_new_children`'s argument.
pub(super) fn only_child(
    exec: &str,
    mut children: Vec<Arc<dyn ExecutionPlan>>,
) -> Result<Arc<dyn ExecutionPlan>> {
    if children.len() != 1 {
        return Err(DataFusionError::Internal(format!(
            "{exec} takes one input, got {}",
            children.len()
        )));
    }
    Ok(children.swap_remove(0))
}

/// Calls `f` on each of `exprs` until it says stop (`ExecutionPlan::apply_expressions`).
pub(super) fn visit(
    exprs: impl IntoIterator<Item = Arc<dyn PhysicalExpr>>,
    f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
) -> Result<TreeNodeRecursion> {
    for expr in exprs {
        if f(&expr)? == TreeNodeRecursion::Stop {
            return Ok(TreeNodeRecursion::Stop);
        }
    }
    Ok(TreeNodeRecursion::Continue)
}

/// Arrays of a constant argument (`count(*)` counts a literal 1), made once and sliced
/// for each batch rather than filled anew per batch.
#[derive(Default)]
pub(super) struct Constants(Vec<(ScalarValue, ArrayRef)>);

impl Constants {
    /// One aggregate's arguments over `batch`, constants as arrays.
    pub(super) fn arguments(
        &mut self,
        exprs: &[Arc<dyn PhysicalExpr>],
        batch: &RecordBatch,
    ) -> Result<Vec<ArrayRef>> {
        exprs
            .iter()
            .map(|expr| match expr.evaluate(batch)? {
                ColumnarValue::Array(array) => Ok(array),
                ColumnarValue::Scalar(value) => self.array(value, batch.num_rows()),
            })
            .collect()
    }

    /// `rows` copies of `value`.
    fn array(&mut self, value: ScalarValue, rows: usize) -> Result<ArrayRef> {
        let made = self.0.iter().position(|(v, _)| *v == value);
        if let Some(i) = made
            && self.0[i].1.len() >= rows
        {
            return Ok(self.0[i].1.slice(0, rows));
        }
        let array = value.to_array_of_size(rows)?;
        match made {
            Some(i) => self.0[i].1 = array.clone(),
            None => self.0.push((value, array.clone())),
        }
        Ok(array)
    }
}
