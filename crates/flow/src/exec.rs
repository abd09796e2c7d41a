//! The interpreter: runs a [`StateMachine`] on an input, state by state, with
//! input/output processing, Retry and Catch, and an event history.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use futures::{FutureExt as _, StreamExt as _};
use serde::Serialize;
use serde_json::{Map, Value, json};

use crate::choice;
use crate::definition::*;
use crate::history::{Event, History};
use crate::jsonata;
use crate::path::Scope;

/// An error as Retry and Catch see it: a name (`States.Timeout`, or what a
/// Fail state or a task raised) and a cause.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Failure {
    pub error: Option<String>,
    pub cause: Option<String>,
    /// The event the failing state records if this failure ends it (is not
    /// retried): `MapStateFailed`, `ParallelStateFailed`.
    #[serde(skip)]
    then: Option<&'static str>,
}

impl Failure {
    pub fn new(error: &str, cause: impl Into<String>) -> Failure {
        Failure {
            error: Some(error.to_owned()),
            cause: Some(cause.into()),
            then: None,
        }
    }

    /// A failure with an error name or a cause, or neither.
    pub fn of(error: Option<String>, cause: Option<String>) -> Failure {
        Failure {
            error,
            cause,
            then: None,
        }
    }

    fn then(mut self, event: &'static str) -> Failure {
        self.then = Some(event);
        self
    }

    /// True when a Retry or Catch entry's `ErrorEquals` takes this failure.
    pub fn matches(&self, names: &[String]) -> bool {
        let error = self.error.as_deref().unwrap_or("");
        names.iter().any(|n| {
            n == error
                || (n == "States.ALL" && error != "States.Runtime")
                || (n == "States.TaskFailed" && !error.starts_with("States."))
        })
    }

    fn output(&self) -> Value {
        json!({"Error": self.error, "Cause": self.cause})
    }
}

/// A task to run: what a Task state hands to [`Resources`].
#[derive(Debug, Clone)]
pub struct TaskCall {
    pub resource: String,
    pub input: Value,
    pub credentials: Option<Value>,
    pub state: String,
    pub execution: String,
    /// Names this attempt of this task within the execution, the same when a
    /// resumed execution calls it again: an idempotency key for resources that
    /// start something (a nested execution, say).
    pub key: String,
}

/// What Task states can call (pipelines, SQL, HTTP, nested workflows).
pub trait Resources: Send + Sync {
    fn invoke(&self, call: TaskCall) -> BoxFuture<'_, Result<Value, Failure>>;
}

/// No resources at all: every Task fails with `States.TaskFailed`, saying why.
pub struct NoResources;

impl Resources for NoResources {
    fn invoke(&self, call: TaskCall) -> BoxFuture<'_, Result<Value, Failure>> {
        async move {
            Err(Failure::new(
                "States.TaskFailed",
                format!(
                    "The resource '{}' of state '{}' is not available here: Task resources need a sluice project (run the workflow with `sluice up`)",
                    call.resource, call.state
                ),
            ))
        }
        .boxed()
    }
}

/// Time as the interpreter sees it: real, or virtual for tests and replays.
pub trait Clock: Send + Sync {
    fn now(&self) -> DateTime<Utc>;
    fn sleep(&self, duration: Duration) -> BoxFuture<'static, ()>;
}

/// The wall clock; sleeping is tokio's.
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
    fn sleep(&self, duration: Duration) -> BoxFuture<'static, ()> {
        tokio::time::sleep(duration).boxed()
    }
}

/// A clock whose sleeps return at once and move its time forward.
pub struct VirtualClock(Mutex<DateTime<Utc>>);

impl VirtualClock {
    pub fn starting_at(at: DateTime<Utc>) -> VirtualClock {
        VirtualClock(Mutex::new(at))
    }
}

impl Clock for VirtualClock {
    fn now(&self) -> DateTime<Utc> {
        *self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
    fn sleep(&self, duration: Duration) -> BoxFuture<'static, ()> {
        let mut now = self.0.lock().unwrap_or_else(|p| p.into_inner());
        *now += chrono::Duration::from_std(duration).unwrap_or(chrono::TimeDelta::MAX);
        async {}.boxed()
    }
}

/// How an execution ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Status {
    Succeeded,
    Failed,
    TimedOut,
}

/// The result of an execution.
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    pub status: Status,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cause: Option<String>,
    #[serde(skip)]
    pub history: Vec<Event>,
}

/// Names an execution for its context object (`$$.Execution`).
#[derive(Debug, Clone)]
pub struct ExecutionInfo {
    pub id: String,
    pub name: String,
    pub state_machine: String,
}

/// Runs state machines.
pub struct Interpreter {
    resources: Arc<dyn Resources>,
    clock: Arc<dyn Clock>,
}

/// What a running execution shares across its states and branches.
struct Run<'a> {
    interpreter: &'a Interpreter,
    info: ExecutionInfo,
    input: Value,
    /// Whether states' contexts carry the input (`$$.Execution.Input`).
    reads_input: bool,
    start: DateTime<Utc>,
    history: History,
}

/// Per-branch state: the variables in scope and the Map item being processed.
#[derive(Clone, Default)]
struct Frame {
    variables: Map<String, Value>,
    item: Option<(usize, Value)>,
    /// Names this branch in step keys: `""` at the top, `Map#1[3]/` in the
    /// fourth iteration of the first visit of state `Map`, `Both#1(0)/` in the
    /// first branch of a Parallel state `Both`.
    scope: String,
    /// The key of the state being run (scope, name and visit: `Load#2`).
    key: String,
}

impl Frame {
    /// A frame for a branch of the current state: same variables, its own scope.
    fn branch(&self, scope: String, item: Option<(usize, Value)>) -> Frame {
        Frame {
            variables: self.variables.clone(),
            item,
            scope,
            key: String::new(),
        }
    }
}

/// A step's result as a [`Store`](crate::history::Store) keeps it.
fn saved_result(result: &Result<Value, Failure>) -> Value {
    match result {
        Ok(v) => json!({"ok": v}),
        Err(f) => json!({"error": f.error, "cause": f.cause}),
    }
}

fn restored_result(saved: Value) -> Result<Value, Failure> {
    match saved {
        Value::Object(mut m) if m.contains_key("ok") => Ok(m.remove("ok").unwrap_or_default()),
        other => Err(Failure::of(
            other["error"].as_str().map(str::to_owned),
            other["cause"].as_str().map(str::to_owned),
        )),
    }
}

fn store_failure(why: impl std::fmt::Display) -> Failure {
    Failure::new(
        "States.Runtime",
        format!("The execution's record could not be saved, so it stopped: {why}"),
    )
}

/// Where a state sends the execution next.
enum Step {
    Next(String),
    End,
}

impl Interpreter {
    pub fn new(resources: Arc<dyn Resources>, clock: Arc<dyn Clock>) -> Interpreter {
        Interpreter { resources, clock }
    }

    /// Runs `machine` on `input` to its end.
    pub async fn run(
        &self,
        machine: &StateMachine,
        input: Value,
        info: ExecutionInfo,
        history: History,
    ) -> Outcome {
        let resumed = history.is_resumed();
        let start = history.started_at().unwrap_or_else(|| self.clock.now());
        let run = Run {
            interpreter: self,
            info,
            input: input.clone(),
            reads_input: machine.reads_execution_input,
            start,
            history,
        };
        if !resumed {
            run.event(0, "ExecutionStarted", json!({"input": input}));
        }
        let body = run.machine(machine, input, Frame::default());
        let result = match machine.timeout_seconds {
            None => Some(body.await),
            Some(secs) => {
                // A resumed execution keeps the deadline it started with.
                let elapsed = (self.clock.now() - start).to_std().unwrap_or_default();
                let timeout = self
                    .clock
                    .sleep(Duration::from_secs(secs).saturating_sub(elapsed));
                futures::pin_mut!(timeout);
                match futures::future::select(body, timeout).await {
                    futures::future::Either::Left((r, _)) => Some(r),
                    futures::future::Either::Right(_) => None,
                }
            }
        };
        let (status, output, error, cause) = match result {
            None => {
                run.event(0, "ExecutionTimedOut", json!({}));
                let cause = format!(
                    "The execution ran longer than its TimeoutSeconds ({})",
                    machine.timeout_seconds.unwrap_or_default()
                );
                (
                    Status::TimedOut,
                    None,
                    Some("States.Timeout".into()),
                    Some(cause),
                )
            }
            Some(Ok(output)) => {
                run.event(0, "ExecutionSucceeded", json!({"output": output}));
                (Status::Succeeded, Some(output), None, None)
            }
            Some(Err(f)) => {
                run.event(
                    0,
                    "ExecutionFailed",
                    json!({"error": f.error, "cause": f.cause}),
                );
                (Status::Failed, None, f.error, f.cause)
            }
        };
        // The end is on record before the outcome is handed back.
        if let Err(why) = run.history.commit(true).await {
            let f = store_failure(why);
            return Outcome {
                status: Status::Failed,
                output: None,
                error: f.error,
                cause: f.cause,
                history: run.history.events(),
            };
        }
        Outcome {
            status,
            output,
            error,
            cause,
            history: run.history.events(),
        }
    }
}

fn runtime(state: &str, entered: u64, detail: impl std::fmt::Display) -> Failure {
    Failure::new(
        "States.Runtime",
        format!(
            "An error occurred while executing the state '{state}' (entered at the event id #{entered}). {detail}"
        ),
    )
}

fn sc<'a>(context: &'a Value, variables: &'a Map<String, Value>, input: &'a Value) -> Scope<'a> {
    Scope {
        input,
        context,
        variables,
    }
}

fn display_value(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

impl Run<'_> {
    fn now(&self) -> DateTime<Utc> {
        self.interpreter.clock.now()
    }

    fn event(&self, previous: u64, kind: &str, details: Value) -> u64 {
        self.history.record(previous, self.now(), kind, details)
    }

    /// What an earlier run of this execution saved under `key`.
    fn recall(&self, key: &str) -> Result<Option<Value>, Failure> {
        if let Some(why) = self.history.broken() {
            return Err(store_failure(why));
        }
        self.history.recall(key).map_err(store_failure)
    }

    /// Keeps a finished step (durable at the next commit).
    fn remember(&self, key: &str, value: &Value) -> Result<(), Failure> {
        self.history.remember(key, value).map_err(store_failure)
    }

    /// Makes what was recorded so far durable before the execution goes on.
    /// Commits at the end of a Map iteration or Parallel branch (others may run).
    async fn commit_branch(&self) -> Result<(), Failure> {
        self.history.commit(false).await.map_err(store_failure)
    }

    /// `frame` is where the commit is made: at the top level no other branch
    /// of the execution runs, in a Map iteration or Parallel branch others may.
    async fn commit(&self, frame: &Frame) -> Result<(), Failure> {
        let alone = frame.scope.is_empty();
        self.history.commit(alone).await.map_err(store_failure)
    }

    fn context(
        &self,
        state: &str,
        entered: DateTime<Utc>,
        retry_count: u32,
        frame: &Frame,
    ) -> Value {
        let input = if self.reads_input {
            self.input.clone()
        } else {
            Value::Null
        };
        let mut ctx = json!({
            "Execution": {
                "Id": self.info.id,
                "Input": input,
                "Name": self.info.name,
                "RoleArn": "arn:sluice:iam::local:role/sluice",
                "StartTime": self.start.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                "RedriveCount": 0,
            },
            "State": {
                "EnteredTime": entered.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                "Name": state,
                "RetryCount": retry_count,
            },
            "StateMachine": {"Id": self.info.state_machine, "Name": self.info.state_machine},
            "Task": {"Token": format!("{}:{}", self.info.id, state)},
        });
        if let Some((index, value)) = &frame.item {
            ctx["Map"] = json!({"Item": {"Index": index, "Value": value}});
        }
        ctx
    }

    fn machine<'s>(
        &'s self,
        machine: &'s StateMachine,
        input: Value,
        mut frame: Frame,
    ) -> BoxFuture<'s, Result<Value, Failure>> {
        async move {
            let mut name = machine.start_at.clone();
            let mut input = input;
            let mut visits: HashMap<String, u32> = HashMap::new();
            loop {
                let state = machine.state(&name).ok_or_else(|| {
                    Failure::new("States.Runtime", format!("no state named '{name}'"))
                })?;
                let visit = visits.entry(name.clone()).or_default();
                *visit += 1;
                let key = format!("{}{name}#{visit}", frame.scope);
                let (output, step) = match self.recall(&key)? {
                    // Done by an earlier run of this execution: not run again.
                    Some(mut saved) => {
                        if let Value::Object(vars) = saved["variables"].take() {
                            frame.variables = vars;
                        }
                        let step = match saved["next"].as_str() {
                            Some(next) => Step::Next(next.to_owned()),
                            None => Step::End,
                        };
                        (saved["output"].take(), step)
                    }
                    None => {
                        frame.key = key.clone();
                        let before = self.history.is_durable().then(|| frame.variables.clone());
                        let (output, step) = self.state(state, input, &mut frame).await?;
                        if let Some(before) = before {
                            let next = match &step {
                                Step::Next(n) => json!(n),
                                Step::End => Value::Null,
                            };
                            let mut saved = json!({"output": output, "next": next});
                            if frame.variables != before {
                                saved["variables"] = Value::Object(frame.variables.clone());
                            }
                            self.remember(&key, &saved)?;
                            self.commit(&frame).await?;
                        }
                        (output, step)
                    }
                };
                match step {
                    Step::Next(next) => {
                        name = next;
                        input = output;
                    }
                    Step::End => return Ok(output),
                }
            }
        }
        .boxed()
    }

    async fn state(
        &self,
        state: &State,
        input: Value,
        frame: &mut Frame,
    ) -> Result<(Value, Step), Failure> {
        let type_name = state.kind.type_name();
        let entered_at = self.now();
        let entered = self.event(
            0,
            &format!("{type_name}StateEntered"),
            json!({"name": state.name, "input": input}),
        );
        let mut attempts = vec![0u32; state.retry.len()];
        let mut retry_count = 0;
        loop {
            let ctx = self.context(&state.name, entered_at, retry_count, frame);
            let attempt = match state.query_language {
                QueryLanguage::JsonPath => {
                    self.attempt_jsonpath(state, &input, &ctx, frame, entered)
                        .await
                }
                QueryLanguage::JsonAta => {
                    self.attempt_jsonata(state, &input, &ctx, frame, entered)
                        .await
                }
            };
            let mut failure = match attempt {
                Ok((output, step, assigned)) => {
                    frame.variables.extend(assigned);
                    if !matches!(state.kind, Kind::Fail { .. }) {
                        self.event(
                            0,
                            &format!("{type_name}StateExited"),
                            json!({"name": state.name, "output": output}),
                        );
                    }
                    return Ok((output, step));
                }
                Err(f) => f,
            };
            let catchable = failure.error.as_deref() != Some("States.Runtime");
            if catchable
                && let Some(n) = state
                    .retry
                    .iter()
                    .position(|r| failure.matches(&r.error_equals))
            {
                let r = &state.retry[n];
                if attempts[n] < r.max_attempts {
                    let mut delay = r.interval_seconds * r.backoff_rate.powi(attempts[n] as i32);
                    if let Some(max) = r.max_delay_seconds {
                        delay = delay.min(max);
                    }
                    if r.full_jitter {
                        delay *= rand::random::<f64>();
                    }
                    attempts[n] += 1;
                    retry_count += 1;
                    self.interpreter
                        .clock
                        .sleep(Duration::from_secs_f64(delay.max(0.0)))
                        .await;
                    continue;
                }
            }
            // Not retried: the failure ends this state (a Map or Parallel says so first).
            if let Some(event) = failure.then.take() {
                self.event(
                    0,
                    event,
                    json!({"error": failure.error, "cause": failure.cause}),
                );
            }
            if catchable
                && let Some(c) = state
                    .catch
                    .iter()
                    .find(|c| failure.matches(&c.error_equals))
            {
                let error_output = failure.output();
                let mut output = input.clone();
                match &c.result_path {
                    Place::Replace => output = error_output.clone(),
                    Place::Discard => {}
                    Place::At(p) => p.set(&mut output, error_output.clone()).map_err(|e| {
                        Failure::new("States.ResultPathMatchFailure", format!("{e}: {output}"))
                    })?,
                }
                if let Some(assign) = &c.assign {
                    let scope = Scope {
                        input: &error_output,
                        context: &Value::Null,
                        variables: &frame.variables,
                    };
                    let values = assign
                        .eval(&scope)
                        .map_err(|e| runtime(&state.name, entered, e))?;
                    if let Value::Object(m) = values {
                        frame.variables.extend(m);
                    }
                }
                self.event(
                    0,
                    &format!("{type_name}StateExited"),
                    json!({"name": state.name, "output": output}),
                );
                return Ok((output, Step::Next(c.next.clone())));
            }
            return Err(failure);
        }
    }

    /// One try of a JSONPath state: its output, where it goes, and the variables it assigns.
    async fn attempt_jsonpath(
        &self,
        state: &State,
        raw: &Value,
        ctx: &Value,
        frame: &Frame,
        entered: u64,
    ) -> Result<(Value, Step, Map<String, Value>), Failure> {
        let fail = |detail: String| runtime(&state.name, entered, detail);
        let vars = &frame.variables;
        let select = |sel: &Select, value: &Value, field: &str| -> Result<Value, Failure> {
            match sel {
                Select::All => Ok(value.clone()),
                Select::Nothing => Ok(json!({})),
                Select::Path(p) => p
                    .eval(&Scope {
                        input: value,
                        context: ctx,
                        variables: vars,
                    })
                    .map_err(|e| fail(format!("{field}: {e}"))),
            }
        };
        let mut effective = select(&state.input_path, raw, "InputPath")?;
        if let Some(parameters) = &state.parameters {
            effective = parameters
                .eval(&sc(ctx, vars, &effective))
                .map_err(|e| match e {
                    crate::template::TemplateError::Intrinsic { .. } => Failure::new(
                        "States.IntrinsicFailure",
                        fail(e.to_string()).cause.unwrap_or_default(),
                    ),
                    other => fail(other.to_string()),
                })?;
        }
        let (result, step) = match &state.kind {
            Kind::Pass { result } => (result.clone().unwrap_or_else(|| effective.clone()), None),
            Kind::Succeed => (effective.clone(), Some(Step::End)),
            Kind::Fail { error, cause } => {
                let text = |t: &Option<Text>| -> Result<Option<String>, Failure> {
                    Ok(match t {
                        None => None,
                        Some(Text::Fixed(s)) => Some(s.clone()),
                        Some(Text::Path(p)) => Some(display_value(
                            &p.eval(&sc(ctx, vars, &effective))
                                .map_err(|e| fail(e.to_string()))?,
                        )),
                        Some(Text::Call(c)) => Some(display_value(
                            &c.eval(&sc(ctx, vars, &effective))
                                .map_err(|e| fail(e.to_string()))?,
                        )),
                    })
                };
                return Err(Failure::of(text(error)?, text(cause)?));
            }
            Kind::Choice { choices, default } => {
                let mut next = None;
                let mut assigned = Map::new();
                for rule in choices {
                    if choice::eval(&rule.condition, &sc(ctx, vars, &effective))
                        .map_err(|e| fail(e.to_string()))?
                    {
                        next = Some(rule.next.clone());
                        if let Some(a) = &rule.assign
                            && let Value::Object(m) = a
                                .eval(&sc(ctx, vars, &effective))
                                .map_err(|e| fail(e.to_string()))?
                        {
                            assigned = m;
                        }
                        break;
                    }
                }
                let next = next.or_else(|| default.clone()).ok_or_else(|| {
                    Failure::new(
                        "States.NoChoiceMatched",
                        format!("No Matches! (state '{}')", state.name),
                    )
                })?;
                let mut all = self.assign(state, &effective, &effective, ctx, frame, entered)?;
                all.extend(assigned);
                let output = select(&state.output_path, &effective, "OutputPath")?;
                return Ok((output, Step::Next(next), all));
            }
            Kind::Wait(wait) => {
                self.wait(state, wait, &effective, ctx, frame, entered)
                    .await?;
                (effective.clone(), None)
            }
            Kind::Task {
                resource, timeout, ..
            } => {
                let result = self
                    .task(
                        state,
                        resource,
                        timeout,
                        effective.clone(),
                        &sc(ctx, vars, &effective),
                        frame,
                        entered,
                    )
                    .await?;
                (result, None)
            }
            Kind::Parallel { branches } => (
                self.parallel(state, branches, &effective, frame).await?,
                None,
            ),
            Kind::Map(spec) => (
                self.map(state, spec, &effective, ctx, frame, entered)
                    .await?,
                None,
            ),
        };
        let result = match &state.result_selector {
            Some(sel) => sel
                .eval(&sc(ctx, vars, &result))
                .map_err(|e| fail(e.to_string()))?,
            None => result,
        };
        let assigned = self.assign(state, &result, &effective, ctx, frame, entered)?;
        let output = match (&state.kind, &state.result_path) {
            (Kind::Succeed | Kind::Wait(_), _) => effective,
            (_, Place::Replace) => result,
            (_, Place::Discard) => raw.clone(),
            (_, Place::At(p)) => {
                let mut out = raw.clone();
                p.set(&mut out, result)
                    .map_err(|e| Failure::new("States.ResultPathMatchFailure", e))?;
                out
            }
        };
        let output = select(&state.output_path, &output, "OutputPath")?;
        let step = step.unwrap_or_else(|| match &state.transition {
            Some(Transition::Next(n)) => Step::Next(n.clone()),
            _ => Step::End,
        });
        Ok((output, step, assigned))
    }

    fn assign(
        &self,
        state: &State,
        result: &Value,
        _input: &Value,
        ctx: &Value,
        frame: &Frame,
        entered: u64,
    ) -> Result<Map<String, Value>, Failure> {
        let Some(assign) = &state.assign else {
            return Ok(Map::new());
        };
        let scope = Scope {
            input: result,
            context: ctx,
            variables: &frame.variables,
        };
        match assign
            .eval(&scope)
            .map_err(|e| runtime(&state.name, entered, e))?
        {
            Value::Object(m) => Ok(m),
            _ => Ok(Map::new()),
        }
    }

    async fn wait(
        &self,
        state: &State,
        wait: &WaitFor,
        input: &Value,
        ctx: &Value,
        frame: &Frame,
        entered: u64,
    ) -> Result<(), Failure> {
        let scope = Scope {
            input,
            context: ctx,
            variables: &frame.variables,
        };
        let fail = |detail: String| runtime(&state.name, entered, detail);
        let until_ts = |ts: &str| -> Result<Duration, Failure> {
            let at = choice::timestamp(ts).ok_or_else(|| {
                fail(format!("The Timestamp '{ts}' is not an RFC 3339 timestamp"))
            })?;
            Ok((at.with_timezone(&Utc) - self.now())
                .to_std()
                .unwrap_or_default())
        };
        let duration = match wait {
            WaitFor::Seconds(s) => Duration::from_secs_f64(*s),
            WaitFor::Timestamp(ts) => until_ts(ts)?,
            WaitFor::SecondsPath(p) => {
                let v = p.eval(&scope).map_err(|e| fail(e.to_string()))?;
                let Some(n) = v.as_f64().filter(|_| v.is_number()) else {
                    return Err(fail(format!(
                        "The SecondsPath parameter does not reference a valid number: {} == {v}",
                        p.text()
                    )));
                };
                if n < 0.0 {
                    return Err(fail(format!(
                        "The SecondsPath parameter references a negative value: {} == {v}",
                        p.text()
                    )));
                }
                Duration::from_secs_f64(n)
            }
            WaitFor::TimestampPath(p) => {
                let v = p.eval(&scope).map_err(|e| fail(e.to_string()))?;
                let Some(ts) = v.as_str() else {
                    return Err(fail(format!(
                        "The TimestampPath parameter does not reference a timestamp: {} == {v}",
                        p.text()
                    )));
                };
                until_ts(ts)?
            }
            WaitFor::JsonAta {
                seconds,
                expression,
            } => {
                let states = json!({"input": input, "context": ctx});
                let v = jsonata::fill(
                    &Value::String(expression.clone()),
                    &states,
                    &frame.variables,
                )
                .map_err(|e| Failure::new("States.QueryEvaluationError", e))?;
                if *seconds {
                    match v.as_f64() {
                        Some(n) if n >= 0.0 => Duration::from_secs_f64(n),
                        _ => {
                            return Err(Failure::new(
                                "States.QueryEvaluationError",
                                format!(
                                    "The Seconds expression gave {v}, not a non-negative number"
                                ),
                            ));
                        }
                    }
                } else {
                    until_ts(v.as_str().unwrap_or_default())?
                }
            }
        };
        // A resumed execution waits until the end it set the first time.
        let key = format!("{}/until", frame.key);
        let until = match self.recall(&key)?.as_ref().and_then(Value::as_str) {
            Some(until) => DateTime::parse_from_rfc3339(until)
                .map(|t| t.with_timezone(&Utc))
                .map_err(|e| store_failure(format!("{key}: {e}")))?,
            None => {
                let until = chrono::Duration::from_std(duration)
                    .ok()
                    .and_then(|d| self.now().checked_add_signed(d))
                    .unwrap_or(DateTime::<Utc>::MAX_UTC);
                if self.history.is_durable() {
                    self.remember(&key, &json!(until.to_rfc3339()))?;
                    self.commit(frame).await?;
                }
                until
            }
        };
        let left = (until - self.now()).to_std().unwrap_or_default();
        self.interpreter.clock.sleep(left).await;
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    async fn task(
        &self,
        state: &State,
        resource: &str,
        timeout: &Option<Amount>,
        input: Value,
        scope: &Scope<'_>,
        frame: &Frame,
        entered: u64,
    ) -> Result<Value, Failure> {
        // One key per attempt: a resumed execution does not run again a
        // task whose result was saved, and runs one that was cut off.
        let attempt = scope.context["State"]["RetryCount"].as_u64().unwrap_or(0);
        let key = format!("{}/task{attempt}", frame.key);
        if let Some(saved) = self.recall(&key)? {
            return restored_result(saved);
        }
        let secs = match timeout {
            None => None,
            Some(Amount::Fixed(n)) => Some(*n),
            Some(Amount::Path(p)) => Some(
                p.eval(scope)
                    .ok()
                    .and_then(|v| v.as_f64())
                    .filter(|n| *n > 0.0)
                    .ok_or_else(|| {
                        runtime(
                            &state.name,
                            entered,
                            format!(
                                "The TimeoutSecondsPath '{}' does not reference a positive number",
                                p.text()
                            ),
                        )
                    })?,
            ),
        };
        self.event(
            0,
            "TaskScheduled",
            json!({"resource": resource, "parameters": input}),
        );
        let call = TaskCall {
            resource: resource.to_owned(),
            input,
            credentials: None,
            state: state.name.clone(),
            execution: self.info.id.clone(),
            key: key.clone(),
        };
        // The call is on record (TaskScheduled) before it is made.
        self.commit(frame).await?;
        let invoke = self.interpreter.resources.invoke(call);
        let result = match secs {
            None => invoke.await,
            Some(secs) => {
                let sleep = self.interpreter.clock.sleep(Duration::from_secs_f64(secs));
                match futures::future::select(invoke, sleep).await {
                    futures::future::Either::Left((r, _)) => r,
                    futures::future::Either::Right(_) => {
                        Err(Failure::of(Some("States.Timeout".into()), None))
                    }
                }
            }
        };
        if self.history.is_durable() {
            self.remember(&key, &saved_result(&result))?;
        }
        match &result {
            Err(f) if f.error.as_deref() == Some("States.Timeout") => {
                self.event(0, "TaskTimedOut", json!({"error": "States.Timeout"}))
            }
            Ok(v) => self.event(0, "TaskSucceeded", json!({"output": v})),
            Err(f) => self.event(0, "TaskFailed", json!({"error": f.error, "cause": f.cause})),
        };
        result
    }

    async fn parallel(
        &self,
        _state: &State,
        branches: &[StateMachine],
        input: &Value,
        frame: &Frame,
    ) -> Result<Value, Failure> {
        self.event(0, "ParallelStateStarted", Value::Null);
        let runs = branches.iter().enumerate().map(|(i, b)| {
            let key = format!("{}({i})", frame.key);
            let frame = frame.branch(format!("{key}/"), None);
            async move {
                if let Some(saved) = self.recall(&key)? {
                    return restored_result(saved);
                }
                let r = self.machine(b, input.clone(), frame).await;
                if r.is_ok() && self.history.is_durable() {
                    self.remember(&key, &saved_result(&r))?;
                    self.commit_branch().await?;
                }
                r
            }
        });
        match futures::future::try_join_all(runs).await {
            Ok(results) => {
                self.event(0, "ParallelStateSucceeded", Value::Null);
                Ok(Value::Array(results))
            }
            Err(f) => Err(f.then("ParallelStateFailed")),
        }
    }

    async fn map(
        &self,
        state: &State,
        spec: &MapSpec,
        input: &Value,
        ctx: &Value,
        frame: &Frame,
        entered: u64,
    ) -> Result<Value, Failure> {
        let fail = |detail: String| runtime(&state.name, entered, detail);
        let scope = Scope {
            input,
            context: ctx,
            variables: &frame.variables,
        };
        if spec.item_reader.is_some() {
            return Err(Failure::new(
                "States.ItemReaderFailed",
                format!(
                    "state '{}': ItemReader is not supported yet; pass the items in the input",
                    state.name
                ),
            ));
        }
        let items = match &spec.items_path {
            Select::All => input.clone(),
            Select::Nothing => json!({}),
            Select::Path(p) => p.eval(&scope).map_err(|e| fail(e.to_string()))?,
        };
        let Value::Array(items) = items else {
            let mut f = fail(format!(
                "Map state input must be an array but was: {}",
                display_value(&items)
            ));
            if state.query_language == QueryLanguage::JsonAta {
                f.error = Some("States.QueryEvaluationError".into());
            }
            self.event(
                0,
                "EvaluationFailed",
                json!({"state": state.name, "error": f.error, "cause": f.cause}),
            );
            return Err(f.then("MapStateFailed"));
        };
        self.event(0, "MapStateStarted", json!({"length": items.len()}));
        let amount = |a: &Option<Amount>,
                      field: &str,
                      float: bool|
         -> Result<Option<f64>, Failure> {
            match a {
                None => Ok(None),
                Some(Amount::Fixed(n)) => Ok(Some(*n)),
                Some(Amount::Path(p)) => {
                    let v = p.eval(&scope).map_err(|e| fail(e.to_string()))?;
                    let n = if float {
                        v.as_f64()
                    } else {
                        v.as_i64().map(|i| i as f64)
                    };
                    n.filter(|_| v.is_number()).map(Some).ok_or_else(|| {
                        fail(format!(
                            "The {field}Path field refers to value \"{}\" which is not a valid {}: {}",
                            display_value(&v),
                            if float { "float" } else { "integer" },
                            p.text()
                        ))
                    })
                }
            }
        };
        let max_concurrency =
            amount(&spec.max_concurrency, "MaxConcurrency", false)?.unwrap_or(0.0);
        let tolerated_count = amount(
            &spec.tolerated_failure_count,
            "ToleratedFailureCount",
            false,
        )?;
        let tolerated_pct = amount(
            &spec.tolerated_failure_percentage,
            "ToleratedFailurePercentage",
            true,
        )?;
        if tolerated_count.is_some_and(|n| n < 0.0) {
            return Err(fail("ToleratedFailureCount cannot be negative.".into()));
        }
        if tolerated_pct.is_some_and(|n| !(0.0..=100.0).contains(&n)) {
            return Err(fail(
                "ToleratedFailurePercentage must be between 0 and 100.".into(),
            ));
        }
        let inputs = self.map_inputs(state, spec, items, input, ctx, frame, entered)?;
        let total = inputs.len();
        let limit = if max_concurrency >= 1.0 {
            max_concurrency as usize
        } else {
            total.max(1)
        };
        let tolerant = tolerated_count.is_some() || tolerated_pct.is_some();
        // A distributed Map runs its iterations as a Map Run: the parent's
        // history shows the run, not each iteration's states.
        let muted;
        let runner: &Run<'_> = if spec.distributed {
            muted = Run {
                interpreter: self.interpreter,
                info: self.info.clone(),
                input: self.input.clone(),
                reads_input: self.reads_input,
                start: self.start,
                history: self.history.muted(),
            };
            self.event(0, "MapRunStarted", Value::Null);
            &muted
        } else {
            self
        };
        let run_failed = |f: Failure| {
            if spec.distributed {
                self.event(0, "MapRunFailed", Value::Null);
            }
            f.then("MapStateFailed")
        };
        let runs = inputs
            .into_iter()
            .enumerate()
            .map(|(index, (item_input, item))| {
                let key = format!("{}[{index}]", frame.key);
                let frame = frame.branch(format!("{key}/"), Some((index, item)));
                async move {
                    // An iteration an earlier run finished is not run again.
                    if let Some(saved) = runner.recall(&key)? {
                        return restored_result(saved);
                    }
                    runner.event(
                        0,
                        "MapIterationStarted",
                        json!({"name": state.name, "index": index}),
                    );
                    let r = runner.machine(&spec.processor, item_input, frame).await;
                    if runner.history.is_durable()
                        && r.as_ref()
                            .err()
                            .is_none_or(|f| f.error.as_deref() != Some("States.Runtime"))
                    {
                        runner.remember(&key, &saved_result(&r))?;
                        runner.commit_branch().await?;
                    }
                    match &r {
                        Ok(_) => runner.event(
                            0,
                            "MapIterationSucceeded",
                            json!({"name": state.name, "index": index}),
                        ),
                        Err(_) => runner.event(
                            0,
                            "MapIterationFailed",
                            json!({"name": state.name, "index": index}),
                        ),
                    };
                    r
                }
            });
        let mut stream = futures::stream::iter(runs).buffered(limit);
        let mut results = Vec::with_capacity(total);
        let mut failed = 0usize;
        while let Some(r) = stream.next().await {
            match r {
                Ok(v) => results.push(v),
                Err(f) if tolerant => {
                    failed += 1;
                    let over_count = tolerated_count.is_none_or(|n| failed as f64 > n);
                    let over_pct =
                        tolerated_pct.is_none_or(|p| failed as f64 * 100.0 / total as f64 > p);
                    if over_count && over_pct {
                        return Err(run_failed(Failure::new(
                            "States.ExceedToleratedFailureThreshold",
                            "The specified tolerance threshold was exceeded",
                        )));
                    }
                    results.push(f.output());
                }
                Err(f) => return Err(run_failed(f)),
            }
        }
        if spec.distributed {
            self.event(0, "MapRunSucceeded", Value::Null);
        }
        self.event(0, "MapStateSucceeded", Value::Null);
        Ok(Value::Array(results))
    }

    /// Each iteration's input (after ItemSelector and ItemBatcher) and its item.
    #[allow(clippy::too_many_arguments)]
    fn map_inputs(
        &self,
        state: &State,
        spec: &MapSpec,
        items: Vec<Value>,
        input: &Value,
        ctx: &Value,
        frame: &Frame,
        entered: u64,
    ) -> Result<Vec<(Value, Value)>, Failure> {
        let fail = |detail: String| runtime(&state.name, entered, detail);
        let mut out = Vec::with_capacity(items.len());
        for (index, item) in items.into_iter().enumerate() {
            let selected = match &spec.item_selector {
                None => item.clone(),
                Some(sel) => {
                    let mut ctx = ctx.clone();
                    ctx["Map"] = json!({"Item": {"Index": index, "Value": item}});
                    sel.eval(&Scope {
                        input,
                        context: &ctx,
                        variables: &frame.variables,
                    })
                    .map_err(|e| fail(e.to_string()))?
                }
            };
            out.push((selected, item));
        }
        let Some(batcher) = &spec.batcher else {
            return Ok(out);
        };
        let scope = Scope {
            input,
            context: ctx,
            variables: &frame.variables,
        };
        let max_items = match &batcher.max_items {
            None => usize::MAX,
            Some(Amount::Fixed(n)) => *n as usize,
            Some(Amount::Path(p)) => p
                .eval(&scope)
                .ok()
                .and_then(|v| v.as_u64())
                .map(|n| n as usize)
                .ok_or_else(|| {
                    fail(format!(
                        "The MaxItemsPerBatchPath '{}' does not reference a positive integer",
                        p.text()
                    ))
                })?,
        };
        let batch_input = match &batcher.batch_input {
            None => None,
            Some(t) => Some(t.eval(&scope).map_err(|e| fail(e.to_string()))?),
        };
        Ok(out
            .chunks(max_items.max(1))
            .map(|chunk| {
                let mut b =
                    json!({"Items": chunk.iter().map(|(v, _)| v.clone()).collect::<Vec<_>>()});
                if let Some(bi) = &batch_input {
                    b["BatchInput"] = bi.clone();
                }
                (b.clone(), b)
            })
            .collect())
    }

    /// One try of a JSONata state.
    async fn attempt_jsonata(
        &self,
        state: &State,
        raw: &Value,
        ctx: &Value,
        frame: &Frame,
        entered: u64,
    ) -> Result<(Value, Step, Map<String, Value>), Failure> {
        let query = |e: String| {
            Failure::new(
                "States.QueryEvaluationError",
                format!(
                    "An error occurred while executing the state '{}' (entered at the event id #{entered}). {e}",
                    state.name
                ),
            )
        };
        let mut states = json!({"input": raw, "context": ctx});
        let args = match &state.arguments {
            Some(a) => jsonata::fill(a, &states, &frame.variables).map_err(query)?,
            None => raw.clone(),
        };
        let mut rule_output: Option<&Value> = None;
        let mut rule_assign: Option<&Value> = None;
        let (result, step) = match &state.kind {
            Kind::Pass { .. } | Kind::Succeed => (
                raw.clone(),
                if matches!(state.kind, Kind::Succeed) {
                    Some(Step::End)
                } else {
                    None
                },
            ),
            Kind::Fail { error, cause } => {
                let text = |t: &Option<Text>| -> Result<Option<String>, Failure> {
                    Ok(match t {
                        Some(Text::Fixed(s)) => Some(display_value(
                            &jsonata::fill(&Value::String(s.clone()), &states, &frame.variables)
                                .map_err(query)?,
                        )),
                        _ => None,
                    })
                };
                return Err(Failure::of(text(error)?, text(cause)?));
            }
            Kind::Choice { choices, default } => {
                let mut chosen = None;
                for rule in choices {
                    let Condition::JsonAta(c) = &rule.condition else {
                        continue;
                    };
                    let v = jsonata::fill(c, &states, &frame.variables).map_err(query)?;
                    match v {
                        Value::Bool(true) => {
                            chosen = Some(rule.next.clone());
                            rule_output = rule.output.as_ref();
                            rule_assign = rule.assign_jsonata.as_ref();
                            break;
                        }
                        Value::Bool(false) => {}
                        other => {
                            return Err(query(format!(
                                "The Condition '{c}' gave {other}, not a boolean"
                            )));
                        }
                    }
                }
                let next = chosen.or_else(|| default.clone()).ok_or_else(|| {
                    Failure::new(
                        "States.NoChoiceMatched",
                        format!("No Matches! (state '{}')", state.name),
                    )
                })?;
                (raw.clone(), Some(Step::Next(next)))
            }
            Kind::Wait(wait) => {
                self.wait(state, wait, raw, ctx, frame, entered).await?;
                (raw.clone(), None)
            }
            Kind::Task {
                resource, timeout, ..
            } => {
                let scope = Scope {
                    input: raw,
                    context: ctx,
                    variables: &frame.variables,
                };
                (
                    self.task(state, resource, timeout, args, &scope, frame, entered)
                        .await?,
                    None,
                )
            }
            Kind::Parallel { branches } => {
                (self.parallel(state, branches, &args, frame).await?, None)
            }
            Kind::Map(spec) => (
                self.map(state, spec, &args, ctx, frame, entered).await?,
                None,
            ),
        };
        states["result"] = result.clone();
        let output = match rule_output.or(state.output.as_ref()) {
            Some(o) => jsonata::fill(o, &states, &frame.variables).map_err(query)?,
            None => result,
        };
        let assigned = match rule_assign.or(state.assign_jsonata.as_ref()) {
            Some(a) => match jsonata::fill(a, &states, &frame.variables).map_err(query)? {
                Value::Object(m) => m,
                _ => Map::new(),
            },
            None => Map::new(),
        };
        let step = step.unwrap_or_else(|| match &state.transition {
            Some(Transition::Next(n)) => Step::Next(n.clone()),
            _ => Step::End,
        });
        Ok((output, step, assigned))
    }
}
