//! A state machine as the interpreter runs it: states with their fields parsed
//! (paths, templates, choice rules, retriers), built by [`crate::validate`].

use std::collections::HashMap;

use serde_json::Value;

use crate::path::{Path, ReferencePath};
use crate::template::Template;

/// The query language a state's fields are written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueryLanguage {
    JsonPath,
    JsonAta,
}

/// A state machine (the whole definition, a Parallel branch or a Map's processor).
#[derive(Debug, Clone)]
pub struct StateMachine {
    pub start_at: String,
    pub states: Vec<State>,
    pub index: HashMap<String, usize>,
    pub timeout_seconds: Option<u64>,
    /// Whether a field may read `$$.Execution.Input` (else it is left out of the context).
    pub reads_execution_input: bool,
}

impl StateMachine {
    pub fn state(&self, name: &str) -> Option<&State> {
        self.index.get(name).map(|&i| &self.states[i])
    }
}

/// Where a state goes when it is done.
#[derive(Debug, Clone, PartialEq)]
pub enum Transition {
    Next(String),
    End,
}

/// `InputPath` / `OutputPath`: absent means `$`, `null` means `{}`.
#[derive(Debug, Clone)]
pub enum Select {
    All,
    Nothing,
    Path(Path),
}

/// `ResultPath`: absent means `$` (the result replaces the input), `null`
/// discards the result.
#[derive(Debug, Clone)]
pub enum Place {
    Replace,
    Discard,
    At(ReferencePath),
}

/// A number given directly or through a path (`TimeoutSeconds`/`TimeoutSecondsPath`).
#[derive(Debug, Clone)]
pub enum Amount {
    Fixed(f64),
    Path(Path),
}

/// A string given directly or through a path (`Error`/`ErrorPath`).
#[derive(Debug, Clone)]
pub enum Text {
    Fixed(String),
    Path(Path),
    Call(crate::intrinsics::Call),
}

/// One entry of `Retry`.
#[derive(Debug, Clone)]
pub struct Retrier {
    pub error_equals: Vec<String>,
    pub interval_seconds: f64,
    pub max_attempts: u32,
    pub backoff_rate: f64,
    pub max_delay_seconds: Option<f64>,
    pub full_jitter: bool,
}

/// One entry of `Catch`.
#[derive(Debug, Clone)]
pub struct Catcher {
    pub error_equals: Vec<String>,
    pub next: String,
    pub result_path: Place,
    pub assign: Option<Template>,
}

/// A comparison operator of a Choice rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operator {
    StringEquals,
    StringLessThan,
    StringGreaterThan,
    StringLessThanEquals,
    StringGreaterThanEquals,
    StringMatches,
    NumericEquals,
    NumericLessThan,
    NumericGreaterThan,
    NumericLessThanEquals,
    NumericGreaterThanEquals,
    BooleanEquals,
    TimestampEquals,
    TimestampLessThan,
    TimestampGreaterThan,
    TimestampLessThanEquals,
    TimestampGreaterThanEquals,
    IsNull,
    IsPresent,
    IsNumeric,
    IsString,
    IsBoolean,
    IsTimestamp,
}

impl Operator {
    pub const ALL: [(&'static str, Operator); 23] = [
        ("StringEquals", Operator::StringEquals),
        ("StringLessThan", Operator::StringLessThan),
        ("StringGreaterThan", Operator::StringGreaterThan),
        ("StringLessThanEquals", Operator::StringLessThanEquals),
        ("StringGreaterThanEquals", Operator::StringGreaterThanEquals),
        ("StringMatches", Operator::StringMatches),
        ("NumericEquals", Operator::NumericEquals),
        ("NumericLessThan", Operator::NumericLessThan),
        ("NumericGreaterThan", Operator::NumericGreaterThan),
        ("NumericLessThanEquals", Operator::NumericLessThanEquals),
        (
            "NumericGreaterThanEquals",
            Operator::NumericGreaterThanEquals,
        ),
        ("BooleanEquals", Operator::BooleanEquals),
        ("TimestampEquals", Operator::TimestampEquals),
        ("TimestampLessThan", Operator::TimestampLessThan),
        ("TimestampGreaterThan", Operator::TimestampGreaterThan),
        ("TimestampLessThanEquals", Operator::TimestampLessThanEquals),
        (
            "TimestampGreaterThanEquals",
            Operator::TimestampGreaterThanEquals,
        ),
        ("IsNull", Operator::IsNull),
        ("IsPresent", Operator::IsPresent),
        ("IsNumeric", Operator::IsNumeric),
        ("IsString", Operator::IsString),
        ("IsBoolean", Operator::IsBoolean),
        ("IsTimestamp", Operator::IsTimestamp),
    ];

    /// True for the operators that take a boolean and test the variable's kind.
    pub fn is_type_test(self) -> bool {
        matches!(
            self,
            Operator::IsNull
                | Operator::IsPresent
                | Operator::IsNumeric
                | Operator::IsString
                | Operator::IsBoolean
                | Operator::IsTimestamp
        )
    }
}

/// What a comparison compares against.
#[derive(Debug, Clone)]
pub enum Operand {
    Literal(Value),
    Path(Path),
}

/// A boolean expression of a Choice rule.
#[derive(Debug, Clone)]
pub enum Condition {
    And(Vec<Condition>),
    Or(Vec<Condition>),
    Not(Box<Condition>),
    Compare(Box<Comparison>),
    /// JSONata `Condition`: a `{% … %}` string or a boolean.
    JsonAta(Value),
}

/// `Variable`, one comparison operator and what it compares against.
#[derive(Debug, Clone)]
pub struct Comparison {
    pub variable: Path,
    pub operator: Operator,
    pub operand: Operand,
}

/// A top-level Choice rule.
#[derive(Debug, Clone)]
pub struct ChoiceRule {
    pub condition: Condition,
    pub next: String,
    pub assign: Option<Template>,
    /// JSONata `Output` and `Assign` of this rule, used instead of the state's when it matches.
    pub output: Option<Value>,
    pub assign_jsonata: Option<Value>,
}

/// How long a Wait state waits.
#[derive(Debug, Clone)]
pub enum WaitFor {
    Seconds(f64),
    SecondsPath(Path),
    Timestamp(String),
    TimestampPath(Path),
    /// JSONata `Seconds`/`Timestamp` expression.
    JsonAta {
        seconds: bool,
        expression: String,
    },
}

/// The fields only a Map state has.
#[derive(Debug, Clone)]
pub struct MapSpec {
    pub items_path: Select,
    pub item_selector: Option<Template>,
    pub processor: Box<StateMachine>,
    pub distributed: bool,
    pub max_concurrency: Option<Amount>,
    pub tolerated_failure_count: Option<Amount>,
    pub tolerated_failure_percentage: Option<Amount>,
    pub batcher: Option<Batcher>,
    pub item_reader: Option<Value>,
    pub result_writer: Option<Value>,
}

/// `ItemBatcher`: items handed to the processor in batches.
#[derive(Debug, Clone)]
pub struct Batcher {
    pub max_items: Option<Amount>,
    pub max_bytes: Option<Amount>,
    pub batch_input: Option<Template>,
}

/// What a state does.
#[derive(Debug, Clone)]
pub enum Kind {
    Pass {
        result: Option<Value>,
    },
    Task {
        resource: String,
        timeout: Option<Amount>,
        heartbeat: Option<Amount>,
    },
    Choice {
        choices: Vec<ChoiceRule>,
        default: Option<String>,
    },
    Wait(WaitFor),
    Succeed,
    Fail {
        error: Option<Text>,
        cause: Option<Text>,
    },
    Parallel {
        branches: Vec<StateMachine>,
    },
    Map(Box<MapSpec>),
}

impl Kind {
    /// The name Step Functions gives the state type in history events (`PassStateEntered`).
    pub fn type_name(&self) -> &'static str {
        match self {
            Kind::Pass { .. } => "Pass",
            Kind::Task { .. } => "Task",
            Kind::Choice { .. } => "Choice",
            Kind::Wait(_) => "Wait",
            Kind::Succeed => "Succeed",
            Kind::Fail { .. } => "Fail",
            Kind::Parallel { .. } => "Parallel",
            Kind::Map(_) => "Map",
        }
    }
}

/// One state.
#[derive(Debug, Clone)]
pub struct State {
    pub name: String,
    pub kind: Kind,
    pub query_language: QueryLanguage,
    pub input_path: Select,
    pub output_path: Select,
    pub parameters: Option<Template>,
    pub result_selector: Option<Template>,
    pub result_path: Place,
    pub assign: Option<Template>,
    /// JSONata `Assign` (kept as JSON with `{% … %}` strings).
    pub assign_jsonata: Option<Value>,
    /// JSONata `Arguments` and `Output` (kept as JSON with `{% … %}` strings).
    pub arguments: Option<Value>,
    pub output: Option<Value>,
    pub transition: Option<Transition>,
    pub retry: Vec<Retrier>,
    pub catch: Vec<Catcher>,
}
