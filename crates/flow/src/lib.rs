//! Amazon States Language workflows, run unchanged.
//!
//! [`parse_definition`] validates a definition (every problem at once, each
//! naming the state and field) into a [`StateMachine`]; an [`Interpreter`]
//! runs it on an input with the input/output processing, Retry/Catch, Map and
//! Parallel semantics Step Functions documents, recording a history shaped like
//! GetExecutionHistory. Task states call out through [`Resources`]; time goes
//! through a [`Clock`], real or virtual.

pub mod choice;
pub mod definition;
pub mod exec;
pub mod history;
pub mod intrinsics;
pub mod json;
pub mod jsonata;
pub mod path;
pub mod template;
pub mod validate;

pub use definition::StateMachine;
pub use exec::{
    Clock, ExecutionInfo, Failure, Interpreter, NoResources, Outcome, Resources, Status,
    SystemClock, TaskCall, VirtualClock,
};
pub use history::{Event, History};
pub use validate::{DefinitionError, Problem, from_value, parse_definition};
