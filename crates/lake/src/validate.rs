//! Applying a contract to source batches: cast, check, derive, check again, dedupe.
//!
//! [`CompiledContract::compile`] turns the contract's SQL expressions into
//! DataFusion physical expressions once (so a bad expression is a config
//! error caught by `sluice check`, not a runtime surprise).
//! [`Validator::validate`] then splits every [`SourceBatch`] into a batch of
//! valid, typed, derived rows and a list of [`Rejection`]s, one per bad row,
//! with the first reason that applies. `valid + rejected == input` always.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, BooleanArray, Int64Array, RecordBatch, StringArray};
use arrow::compute::filter_record_batch;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::row::{RowConverter, SortField};
use datafusion::common::DFSchema;
use datafusion::logical_expr::simplify::SimplifyContext;
use datafusion::optimizer::simplify_expressions::ExprSimplifier;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::prelude::SessionContext;
use sluice_model::config::Format;
use sluice_model::contract::{
    Contract, SOURCE_LINE_COLUMN, SOURCE_OBJECT_COLUMN, SOURCE_VERSION_COLUMN,
};

use crate::cast::{ColumnRules, PreparedColumn, arrow_type};
use crate::read::SourceBatch;

/// A row that did not enter the table, and why.
#[derive(Debug, Clone, PartialEq)]
pub struct Rejection {
    /// 1-based line (or row) in the source object.
    pub line: u64,
    /// Reason code: a column rule (`missing`, `below_min`, `bad_timestamp`, …), a check's name, `duplicate`, `field_count`.
    pub code: String,
    /// The column at fault, when there is one.
    pub column: Option<String>,
    /// A sentence a person understands.
    pub message: String,
    /// The raw row as read.
    pub raw: String,
}

/// A contract whose expressions are compiled against its own schema.
pub struct CompiledContract {
    contract: Contract,
    /// Each contract column's rules, prepared once for every object's casts.
    rules: Vec<Arc<ColumnRules>>,
    format: Format,
    /// Schema seen by expressions: contract columns, lineage and `_key_*` columns, then derived columns.
    input_schema: SchemaRef,
    /// Each derived column: its name, its expression, and the schema of the columns
    /// before it (what it is evaluated over).
    derived: Vec<(String, Arc<dyn PhysicalExpr>, SchemaRef)>,
    checks: Vec<(usize, Arc<dyn PhysicalExpr>)>,
    key_regex: Option<regex::Regex>,
    key_names: Vec<String>,
    /// Schema of the rows written to the table.
    output_schema: SchemaRef,
    /// Where each output column is among the input columns.
    output_idx: Vec<usize>,
    unique_idx: Vec<usize>,
}

/// Why a contract's expressions do not compile.
#[derive(Debug, thiserror::Error)]
#[error("{what}: {why}")]
pub struct ContractError {
    /// Which expression.
    pub what: String,
    /// Why.
    pub why: String,
}

fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or("").to_string()
}

impl CompiledContract {
    /// Compiles derived columns and checks.
    pub fn compile(contract: &Contract, format: &Format) -> Result<Self, Vec<ContractError>> {
        let ctx = SessionContext::new();
        ctx.register_udf(md5::udf());
        ctx.register_udf(local_time::udf());
        ctx.register_udf(to_char::udf());
        let mut errors = Vec::new();
        let mut fields: Vec<Field> = contract
            .columns
            .iter()
            .map(|c| Field::new(&c.name, arrow_type(&c.ty), true))
            .collect();
        fields.push(Field::new(SOURCE_OBJECT_COLUMN, DataType::Utf8, false));
        fields.push(Field::new(SOURCE_VERSION_COLUMN, DataType::Utf8, false));
        fields.push(Field::new(SOURCE_LINE_COLUMN, DataType::Int64, false));
        let key_regex = contract
            .key_fields
            .as_ref()
            .and_then(|k| regex::Regex::new(k).ok());
        let key_names: Vec<String> = key_regex
            .as_ref()
            .map(|re| re.capture_names().flatten().map(String::from).collect())
            .unwrap_or_default();
        for name in &key_names {
            fields.push(Field::new(format!("_key_{name}"), DataType::Utf8, true));
        }
        let n_base = fields.len();
        let mut derived = Vec::new();
        for d in &contract.derived {
            let schema = Schema::new(fields.clone());
            let compiled = compile_expr(&ctx, &schema, &d.expr);
            match compiled {
                Ok(expr) => {
                    let ty = expr.data_type(&schema).unwrap_or(DataType::Null);
                    if ty == DataType::Null {
                        errors.push(ContractError {
                            what: format!("derived column {:?}", d.name),
                            why: "the expression has no type (it is always NULL)".into(),
                        });
                    }
                    derived.push((d.name.clone(), expr, Arc::new(schema)));
                    fields.push(Field::new(&d.name, storage_type(&ty), true));
                }
                Err(why) => {
                    errors.push(ContractError {
                        what: format!("derived column {:?} = {}", d.name, d.expr),
                        why,
                    });
                    fields.push(Field::new(&d.name, DataType::Utf8, true));
                }
            }
        }
        let input_schema = Arc::new(Schema::new(fields.clone()));
        let mut checks = Vec::new();
        for (i, check) in contract.checks.iter().enumerate() {
            match compile_expr(&ctx, &input_schema, &check.expr) {
                Ok(expr) => {
                    if expr.data_type(&input_schema).ok() != Some(DataType::Boolean) {
                        errors.push(ContractError {
                            what: format!("check {:?} = {}", check.name, check.expr),
                            why: "a check must be a boolean expression".into(),
                        });
                    } else {
                        checks.push((i, expr));
                    }
                }
                Err(why) => errors.push(ContractError {
                    what: format!("check {:?} = {}", check.name, check.expr),
                    why,
                }),
            }
        }
        // Stored: contract columns, derived columns, lineage (not the _key_* helpers).
        let mut output: Vec<Field> = fields[..contract.columns.len()].to_vec();
        output.extend(fields[n_base..].iter().cloned());
        output.push(Field::new(SOURCE_OBJECT_COLUMN, DataType::Utf8, false));
        output.push(Field::new(SOURCE_VERSION_COLUMN, DataType::Utf8, false));
        output.push(Field::new(SOURCE_LINE_COLUMN, DataType::Int64, false));
        let output_idx = output
            .iter()
            .map(|f| {
                fields
                    .iter()
                    .position(|i| i.name() == f.name())
                    .expect("every output column is an input column")
            })
            .collect();
        let unique_idx = contract
            .unique
            .iter()
            .filter_map(|u| input_schema.index_of(u).ok())
            .collect();
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(Self {
            rules: contract
                .columns
                .iter()
                .map(|c| Arc::new(ColumnRules::new(c)))
                .collect(),
            contract: contract.clone(),
            format: format.clone(),
            input_schema,
            derived,
            checks,
            key_regex,
            key_names,
            output_schema: Arc::new(Schema::new(output)),
            output_idx,
            unique_idx,
        })
    }

    /// The schema of the rows written to the table.
    pub fn output_schema(&self) -> SchemaRef {
        self.output_schema.clone()
    }

    /// The contract.
    pub fn contract(&self) -> &Contract {
        &self.contract
    }

    /// The reader options.
    pub fn format(&self) -> &Format {
        &self.format
    }

    /// A validator for one source object.
    pub fn validator(&self, source_object: &str, source_version: &str, key: &str) -> Validator<'_> {
        let key_values = match &self.key_regex {
            Some(re) => match re.captures(key) {
                Some(caps) => self
                    .key_names
                    .iter()
                    .map(|n| caps.name(n).map(|m| m.as_str().to_string()))
                    .collect(),
                None => vec![None; self.key_names.len()],
            },
            None => Vec::new(),
        };
        Validator {
            compiled: self,
            columns: self
                .contract
                .columns
                .iter()
                .zip(&self.rules)
                .map(|(c, rules)| {
                    PreparedColumn::with_rules(c, rules.clone(), &self.format.null_values)
                })
                .collect(),
            source_object: source_object.to_string(),
            source_version: source_version.to_string(),
            key_values,
            seen: datafusion::common::HashMap::new(),
            row_converter: (!self.unique_idx.is_empty())
                .then(|| {
                    RowConverter::new(
                        self.unique_idx
                            .iter()
                            .map(|&i| {
                                SortField::new(self.input_schema.field(i).data_type().clone())
                            })
                            .collect(),
                    )
                    .ok()
                })
                .flatten(),
        }
    }
}

/// The type a value is stored as in Delta: views and large types become plain ones, nanoseconds microseconds, unsigned signed.
pub fn storage_type(ty: &DataType) -> DataType {
    match ty {
        DataType::Utf8View | DataType::LargeUtf8 => DataType::Utf8,
        DataType::BinaryView | DataType::LargeBinary => DataType::Binary,
        DataType::Timestamp(_, tz) => {
            DataType::Timestamp(arrow::datatypes::TimeUnit::Microsecond, tz.clone())
        }
        DataType::Date64 => DataType::Date32,
        DataType::UInt8 | DataType::UInt16 | DataType::UInt32 | DataType::UInt64 => DataType::Int64,
        DataType::Float16 | DataType::Float32 => DataType::Float64,
        other => other.clone(),
    }
}

fn compile_expr(
    ctx: &SessionContext,
    schema: &Schema,
    sql: &str,
) -> Result<Arc<dyn PhysicalExpr>, String> {
    let df_schema = DFSchema::try_from(schema.clone()).map_err(|e| first_line(&e.to_string()))?;
    let expr = ctx
        .parse_sql_expr(sql, &df_schema)
        .map_err(|e| first_line(&e.to_string()))?;
    // Simplify first: some functions (arrow_cast) exist only to be rewritten by the simplifier.
    let simplifier = ExprSimplifier::new(
        SimplifyContext::builder()
            .with_schema(Arc::new(df_schema.clone()))
            .build(),
    );
    let expr = simplifier
        .coerce(expr, &df_schema)
        .and_then(|e| simplifier.simplify(e))
        .map_err(|e| first_line(&e.to_string()))?;
    ctx.create_physical_expr(expr, &df_schema)
        .map_err(|e| first_line(&e.to_string()))
}

/// Validates the batches of one source object (uniqueness spans the whole object).
pub struct Validator<'a> {
    compiled: &'a CompiledContract,
    columns: Vec<PreparedColumn<'a>>,
    source_object: String,
    source_version: String,
    key_values: Vec<Option<String>>,
    /// Each unique key seen, with its line (foldhash: one probe per row).
    seen: datafusion::common::HashMap<Vec<u8>, u64>,
    row_converter: Option<RowConverter>,
}

/// The outcome of validating one batch.
#[derive(Debug)]
pub struct Validated {
    /// Every row of the batch in the output schema, rejected ones too: `keep` says which
    /// are valid. Writers take the valid rows in the gather that orders them by partition
    /// ([`crate::delta::FileWriter::write_selected`]) rather than a filter copying them
    /// first.
    pub rows: RecordBatch,
    /// Which of `rows` are valid; None when all are.
    pub keep: Option<BooleanArray>,
    /// Rejected rows.
    pub rejected: Vec<Rejection>,
}

impl Validated {
    /// How many rows are valid.
    pub fn valid_rows(&self) -> usize {
        self.keep
            .as_ref()
            .map_or(self.rows.num_rows(), BooleanArray::true_count)
    }

    /// The valid rows as a batch of their own.
    pub fn valid(&self) -> Result<RecordBatch, EvalError> {
        match &self.keep {
            None => Ok(self.rows.clone()),
            Some(keep) => filter_record_batch(&self.rows, keep).map_err(|e| EvalError {
                what: "filtering valid rows".into(),
                why: e.to_string(),
            }),
        }
    }
}

/// A validation step failed in a way that is a bug or a broken expression, not bad data.
#[derive(Debug, thiserror::Error)]
#[error("evaluating {what}: {why}")]
pub struct EvalError {
    /// Which expression.
    pub what: String,
    /// Why.
    pub why: String,
}

impl Validator<'_> {
    /// Splits a batch into valid rows and rejections.
    pub fn validate(&mut self, batch: &SourceBatch) -> Result<Validated, EvalError> {
        let n = batch.num_rows();
        let mut reasons: Vec<Option<(String, Option<String>, String)>> = vec![None; n];
        for p in &batch.problems {
            if reasons[p.row].is_none() {
                reasons[p.row] = Some((p.code.to_string(), None, p.message.clone()));
            }
        }
        let mut arrays: Vec<ArrayRef> =
            Vec::with_capacity(self.compiled.input_schema.fields().len());
        for (i, column) in self.columns.iter().enumerate() {
            let (array, failures) = column.cast(batch.columns[i].as_ref(), n);
            for f in failures {
                if reasons[f.row].is_none() {
                    reasons[f.row] = Some((
                        f.code.to_string(),
                        Some(self.compiled.contract.columns[i].name.clone()),
                        f.message,
                    ));
                }
            }
            arrays.push(array);
        }
        arrays.push(Arc::new(repeated_text(&self.source_object, n)));
        arrays.push(Arc::new(repeated_text(&self.source_version, n)));
        arrays.push(Arc::new(Int64Array::from_iter_values(
            batch.lines.iter().map(|l| *l as i64),
        )));
        for value in &self.key_values {
            arrays.push(match value {
                Some(value) => Arc::new(repeated_text(value, n)),
                None => arrow::array::new_null_array(&DataType::Utf8, n),
            });
        }
        for (name, expr, inputs) in &self.compiled.derived {
            let partial =
                RecordBatch::try_new(inputs.clone(), arrays.clone()).map_err(|e| EvalError {
                    what: format!("derived column {name:?}"),
                    why: e.to_string(),
                })?;
            let value = expr
                .evaluate(&partial)
                .and_then(|v| v.into_array(n))
                .map_err(|e| EvalError {
                    what: format!("derived column {name:?}"),
                    why: first_line(&e.to_string()),
                })?;
            let want = self.compiled.input_schema.field(arrays.len()).data_type();
            let value = if value.data_type() == want {
                value
            } else {
                arrow::compute::cast(&value, want).map_err(|e| EvalError {
                    what: format!("derived column {name:?}"),
                    why: e.to_string(),
                })?
            };
            arrays.push(value);
        }
        let full = RecordBatch::try_new(self.compiled.input_schema.clone(), arrays.clone())
            .map_err(|e| EvalError {
                what: "the validated batch".into(),
                why: e.to_string(),
            })?;
        for (check_idx, expr) in &self.compiled.checks {
            let check = &self.compiled.contract.checks[*check_idx];
            let value = expr
                .evaluate(&full)
                .and_then(|v| v.into_array(n))
                .map_err(|e| EvalError {
                    what: format!("check {:?}", check.name),
                    why: first_line(&e.to_string()),
                })?;
            let Some(passed) = value.as_any().downcast_ref::<BooleanArray>() else {
                continue;
            };
            for (row, reason) in reasons.iter_mut().enumerate() {
                if reason.is_none() && passed.is_valid(row) && !passed.value(row) {
                    *reason = Some((check.name.clone(), None, check.message.clone()));
                }
            }
        }
        if let Some(converter) = &self.row_converter {
            let keys: Vec<ArrayRef> = self
                .compiled
                .unique_idx
                .iter()
                .map(|&i| arrays[i].clone())
                .collect();
            if let Ok(rows) = converter.convert_columns(&keys) {
                for (row, reason) in reasons.iter_mut().enumerate() {
                    if reason.is_some() {
                        continue;
                    }
                    let key = rows.row(row).as_ref().to_vec();
                    match self.seen.get(&key) {
                        Some(first_line) => {
                            *reason = Some((
                                "duplicate".into(),
                                None,
                                format!(
                                    "duplicate of line {first_line} on ({})",
                                    self.compiled.contract.unique.join(", ")
                                ),
                            ));
                        }
                        None => {
                            self.seen.insert(key, batch.lines[row]);
                        }
                    }
                }
            }
        }
        let keep = reasons
            .iter()
            .any(Option::is_some)
            .then(|| BooleanArray::from_iter(reasons.iter().map(|r| Some(r.is_none()))));
        let projected: Vec<ArrayRef> = self
            .compiled
            .output_idx
            .iter()
            .map(|&i| arrays[i].clone())
            .collect();
        let out =
            RecordBatch::try_new(self.compiled.output_schema.clone(), projected).map_err(|e| {
                EvalError {
                    what: "the output batch".into(),
                    why: e.to_string(),
                }
            })?;
        let raw = batch.raw_rows();
        let rejected = reasons
            .into_iter()
            .enumerate()
            .filter_map(|(row, r)| {
                r.map(|(code, column, message)| Rejection {
                    line: batch.lines[row],
                    code,
                    column,
                    message,
                    raw: raw.row(row),
                })
            })
            .collect();
        Ok(Validated {
            rows: out,
            keep,
            rejected,
        })
    }
}

/// Counts rejections by reason code.
pub fn count_reasons(rejected: &[Rejection], into: &mut BTreeMap<String, u64>) {
    for r in rejected {
        *into.entry(r.code.clone()).or_default() += 1;
    }
}

mod local_time;
mod md5;
mod to_char;

/// `text` in each of `n` rows, its bytes laid out at once: a column built value by value
/// (`StringArray::from(vec![text; n])`) grows its buffer a doubling at a time, copying
/// what it holds each time, for every object's source columns.
pub(crate) fn repeated_text(text: &str, n: usize) -> StringArray {
    let mut values = Vec::with_capacity(text.len() * n);
    for _ in 0..n {
        values.extend_from_slice(text.as_bytes());
    }
    let offsets = arrow::buffer::OffsetBuffer::from_lengths(std::iter::repeat_n(text.len(), n));
    StringArray::new(offsets, arrow::buffer::Buffer::from_vec(values), None)
}

#[cfg(test)]
mod tests;
