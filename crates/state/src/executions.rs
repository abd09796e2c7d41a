//! Durable workflow executions: each one's definition, input and outcome, its
//! event history (GetExecutionHistory's shape) and the results of the steps it
//! finished, so that a run cut off by a crash resumes where it was.

use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};

use crate::Result;

/// Where an execution is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExecutionStatus {
    /// Started and not ended (possibly cut off by a crash: it resumes).
    Running,
    /// Ended with an output.
    Succeeded,
    /// Ended with an error and cause.
    Failed,
    /// Ran longer than the definition's TimeoutSeconds.
    TimedOut,
}

impl ExecutionStatus {
    /// The name Step Functions gives it.
    pub fn as_str(self) -> &'static str {
        match self {
            ExecutionStatus::Running => "RUNNING",
            ExecutionStatus::Succeeded => "SUCCEEDED",
            ExecutionStatus::Failed => "FAILED",
            ExecutionStatus::TimedOut => "TIMED_OUT",
        }
    }
    /// Parses a name given by [`as_str`](Self::as_str).
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "RUNNING" => ExecutionStatus::Running,
            "SUCCEEDED" => ExecutionStatus::Succeeded,
            "FAILED" => ExecutionStatus::Failed,
            "TIMED_OUT" => ExecutionStatus::TimedOut,
            _ => return None,
        })
    }
}

/// One execution of a workflow.
#[derive(Debug, Clone, PartialEq)]
pub struct Execution {
    /// Id (UUID v7).
    pub id: String,
    /// The workflow (state machine) it runs.
    pub workflow: String,
    /// The definition it runs (Amazon States Language), kept so that a resumed
    /// run follows the definition it started with.
    pub definition: String,
    /// Status.
    pub status: ExecutionStatus,
    /// Input (JSON).
    pub input: String,
    /// Output (JSON), once succeeded.
    pub output: Option<String>,
    /// Error name, once failed.
    pub error: Option<String>,
    /// Cause, once failed.
    pub cause: Option<String>,
    /// Started.
    pub started_at: DateTime<Utc>,
    /// Ended.
    pub stopped_at: Option<DateTime<Utc>>,
}

/// One event of an execution's history.
#[derive(Debug, Clone, PartialEq)]
pub struct ExecutionEvent {
    /// Number, from 1.
    pub id: u64,
    /// The event it follows.
    pub previous_id: u64,
    /// When.
    pub time: DateTime<Utc>,
    /// `TaskStateEntered`, `ExecutionSucceeded`, …
    pub kind: String,
    /// Details (JSON).
    pub details: String,
}

/// Durable executions. Every method is one transaction, committed before it returns.
pub trait ExecutionStore: Send + Sync {
    /// Records a new execution.
    fn create_execution(&self, execution: &Execution) -> Result<()>;
    /// Records how an execution ended.
    fn finish_execution(&self, execution: &Execution) -> Result<()>;
    /// Newest executions first.
    fn list_executions(&self, limit: usize) -> Result<Vec<Execution>>;
    /// One execution by id or unique id prefix.
    fn get_execution(&self, id: &str) -> Result<Execution>;
    /// Executions still running (to resume after a restart), oldest first.
    fn running_executions(&self) -> Result<Vec<Execution>>;
    /// Appends one event to an execution's history.
    fn append_execution_event(&self, execution: &str, event: &ExecutionEvent) -> Result<()>;
    /// Appends events and saves steps (key, result JSON) of an execution in one transaction.
    fn append_execution_batch(
        &self,
        execution: &str,
        events: &[ExecutionEvent],
        steps: &[(String, String)],
    ) -> Result<()>;
    /// An execution's history, oldest first.
    fn execution_events(&self, execution: &str) -> Result<Vec<ExecutionEvent>>;
    /// Saves a finished step's result (JSON) under its key.
    fn save_execution_step(&self, execution: &str, key: &str, value: &str) -> Result<()>;
    /// The saved steps of an execution: (key, result JSON).
    fn execution_steps(&self, execution: &str) -> Result<Vec<(String, String)>>;

    /// Fires a schedule's tick: records the tick and creates its execution in one
    /// transaction. False (and nothing created) when the tick was fired or skipped
    /// before, so a tick never starts two executions, whatever restarts in between.
    fn fire_schedule_tick(
        &self,
        schedule: &str,
        tick: DateTime<Utc>,
        execution: &Execution,
    ) -> Result<bool>;
    /// Records that a schedule's ticks up to `tick` were missed and skipped.
    fn skip_schedule_ticks(&self, schedule: &str, tick: DateTime<Utc>) -> Result<()>;
    /// The newest tick of a schedule fired or skipped.
    fn last_schedule_tick(&self, schedule: &str) -> Result<Option<DateTime<Utc>>>;

    /// Records a custom event (the JSON of its EventBridge envelope); returns its sequence number.
    fn put_custom_event(&self, id: &str, body: &str, time: DateTime<Utc>) -> Result<i64>;
    /// Custom events after sequence number `after`, oldest first: (seq, envelope JSON).
    fn custom_events_after(&self, after: i64, limit: usize) -> Result<Vec<(i64, String)>>;
    /// Object events after sequence number `after`, oldest first.
    fn object_events_after(&self, after: i64, limit: usize) -> Result<Vec<crate::StoredEvent>>;
    /// The newest sequence number of a stream (`objects` or `custom`), 0 when empty.
    fn stream_head(&self, stream: &str) -> Result<i64>;
    /// How far rules have routed a stream: None before the first time.
    fn routing_cursor(&self, stream: &str) -> Result<Option<i64>>;
    /// Moves a stream's cursor to `seq` and creates the executions its events
    /// started, in one transaction: an event is routed once, whatever restarts.
    fn route_events(&self, stream: &str, seq: i64, executions: &[Execution]) -> Result<()>;
    /// The dead-letter queue of workflows: executions that failed or timed
    /// out and were not redriven, newest first.
    fn failed_executions(&self, limit: usize) -> Result<Vec<Execution>>;
    /// Redrives a failed execution: records `new` (same workflow and input) and
    /// takes the failed one out of the dead-letter queue, in one transaction.
    /// Err(Conflict-like NotFound) when it is not failed or was redriven already.
    fn redrive_execution(&self, failed: &str, new: &Execution) -> Result<()>;
}

/// Writes one running execution's events and steps with group commit: they
/// are buffered until [`commit`](Self::commit), which makes everything
/// buffered so far durable in one transaction. Branches of one execution
/// (Map iterations, Parallel branches) committing at once share a
/// transaction: the first to take the lock writes what all of them buffered.
pub struct ExecutionWriter {
    store: Arc<dyn ExecutionStore>,
    execution: String,
    pending: Mutex<Pending>,
    /// Held while a batch is written: a commit that finds the buffer empty
    /// after taking it knows its writes were in the batch just committed.
    writing: Mutex<()>,
}

#[derive(Default)]
struct Pending {
    events: Vec<ExecutionEvent>,
    steps: Vec<(String, String)>,
}

impl ExecutionWriter {
    /// A writer for `execution`.
    pub fn new(store: Arc<dyn ExecutionStore>, execution: &str) -> ExecutionWriter {
        ExecutionWriter {
            store,
            execution: execution.to_owned(),
            pending: Mutex::default(),
            writing: Mutex::default(),
        }
    }

    /// Buffers an event.
    pub fn event(&self, event: ExecutionEvent) {
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        pending.events.push(event);
    }

    /// Buffers a step's result.
    pub fn step(&self, key: &str, value: String) {
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        pending.steps.push((key.to_owned(), value));
    }

    /// Makes everything buffered so far durable; returns once it is.
    pub fn commit(&self) -> Result<()> {
        let _writing = self.writing.lock().unwrap_or_else(|p| p.into_inner());
        let batch = std::mem::take(&mut *self.pending.lock().unwrap_or_else(|p| p.into_inner()));
        if batch.events.is_empty() && batch.steps.is_empty() {
            return Ok(());
        }
        self.store
            .append_execution_batch(&self.execution, &batch.events, &batch.steps)
    }
}
