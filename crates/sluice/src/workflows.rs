//! Durable workflow executions in a project: started from the CLI or the HTTP
//! API, run by the process that owns the data directory, every event and
//! finished step committed to the state store before the next state begins,
//! and resumed where they were after a crash.
//!
//! Task states call out through [`ProjectResources`]:
//!
//! | Resource | Parameters | Result |
//! |---|---|---|
//! | `arn:aws:states:::http:invoke` | `ApiEndpoint`, `Method`, `Headers`, `QueryParameters`, `RequestBody` | `StatusCode`, `StatusText`, `Headers`, `ResponseBody` |
//! | `sluice:sql` | `Sql` | `Rows` (JSON objects), `RowCount` |
//! | `arn:aws:states:::events:putEvents` | `Entries` (as PutEvents takes them) | `Entries` (`EventId`s), `FailedEntryCount`; the events go to the `[rules]` |
//! | `sluice:refresh:TABLE` | | a gold model recomputed: `Table`, `Rows`, `Version` |
//! | `sluice:pipeline:NAME` | `Bucket`, `Key` (an object in the landing zone) | the pipeline's job and its last run: `Status`, `Attempts`, `Run` (rows in, valid, quarantined) |
//! | `arn:aws:states:::states:startExecution` (`.sync`, `.sync:2`) | `StateMachineArn` (a `[workflows]` name, or an ARN ending in `:stateMachine:NAME`), `Input` | started: `ExecutionArn`, `StartDate`; `.sync`: the child's `Status`, `Output`, … |
//!
//! Other resources fail with `States.TaskFailed`, naming the resource.

use std::collections::HashMap;
use std::sync::Arc;

use anyhow::Result;
use chrono::Utc;
use futures::FutureExt as _;
use futures::future::BoxFuture;
use serde_json::{Value, json};
use sluice_flow::history::Store;
use sluice_flow::{
    Event, ExecutionInfo, Failure, History, Interpreter, Outcome, Resources, Status, SystemClock,
    TaskCall,
};
use sluice_state::{Execution, ExecutionEvent, ExecutionStatus, ExecutionWriter};

use crate::platform::Platform;
use crate::render::json_rows;

/// One execution's record in the state store, as the interpreter writes it:
/// events and steps go through a group-committing [`ExecutionWriter`].
struct ExecutionLog {
    writer: ExecutionWriter,
    /// The steps an earlier run saved, read once when the execution resumes.
    saved: HashMap<String, Value>,
}

impl Store for ExecutionLog {
    fn record(&self, e: &Event) -> Result<(), String> {
        self.writer.event(ExecutionEvent {
            id: e.id,
            previous_id: e.previous_event_id,
            time: e.timestamp,
            kind: e.kind.clone(),
            details: e.details.to_string(),
        });
        Ok(())
    }

    fn recall(&self, key: &str) -> Result<Option<Value>, String> {
        Ok(self.saved.get(key).cloned())
    }

    fn remember(&self, key: &str, value: &Value) -> Result<(), String> {
        self.writer.step(key, value.to_string());
        Ok(())
    }

    fn commit(&self) -> Result<(), String> {
        self.writer.commit().map_err(|e| e.to_string())
    }
}

/// A new execution of `definition` (already validated), not yet recorded.
pub fn new_execution(id: &str, workflow: &str, definition: &str, input: &Value) -> Execution {
    Execution {
        id: id.to_owned(),
        workflow: workflow.to_owned(),
        definition: definition.to_owned(),
        status: ExecutionStatus::Running,
        input: input.to_string(),
        output: None,
        error: None,
        cause: None,
        started_at: Utc::now(),
        stopped_at: None,
    }
}

/// Records a new execution of `definition` (already validated) and returns it, not yet run.
pub fn create(
    platform: &Platform,
    workflow: &str,
    definition: &str,
    input: &Value,
) -> Result<Execution> {
    let id = uuid::Uuid::now_v7().to_string();
    let execution = new_execution(&id, workflow, definition, input);
    platform.executions.create_execution(&execution)?;
    Ok(execution)
}

/// Validates the definitions of a project's `[workflows]`: every problem of every one.
pub fn check_definitions(project: &sluice_model::config::Project) -> Result<()> {
    let mut problems = Vec::new();
    for w in project.workflows.values() {
        if let Err(e) = sluice_flow::parse_definition(&w.definition) {
            problems.push(format!("workflow {} ({}): {e}", w.name, w.file));
        }
    }
    if !problems.is_empty() {
        anyhow::bail!(
            "{}\n{} workflow definition(s) with problems; nothing was started",
            problems.join("\n"),
            problems.len()
        );
    }
    Ok(())
}

/// Marks an execution as run by this process until dropped.
struct Claim {
    platform: Arc<Platform>,
    id: String,
}

impl Claim {
    /// None when this process already runs the execution.
    fn take(platform: &Arc<Platform>, id: &str) -> Option<Claim> {
        let mut running = platform.running.lock().unwrap_or_else(|p| p.into_inner());
        running.insert(id.to_owned()).then(|| Claim {
            platform: platform.clone(),
            id: id.to_owned(),
        })
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        let mut running = self
            .platform
            .running
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        running.remove(&self.id);
    }
}

/// Runs an execution to its end, from where its record says it was: a new
/// one from its start, one cut off by a crash at the state it was in. None
/// when this process is running it already.
pub async fn run(platform: Arc<Platform>, execution: Execution) -> Result<Option<Outcome>> {
    let Some(_claim) = Claim::take(&platform, &execution.id) else {
        return Ok(None);
    };
    run_claimed(platform, execution).await.map(Some)
}

async fn run_claimed(platform: Arc<Platform>, mut execution: Execution) -> Result<Outcome> {
    // A record that cannot run (written by another version, or damaged) ends as
    // failed, saying why, instead of being picked up again and again.
    let parsed = sluice_flow::parse_definition(&execution.definition)
        .map_err(|e| format!("its definition does not parse: {e}"))
        .and_then(|machine| {
            serde_json::from_str::<Value>(&execution.input)
                .map(|input| (machine, input))
                .map_err(|e| format!("its input is not JSON: {e}"))
        });
    let (machine, input) = match parsed {
        Ok(parsed) => parsed,
        Err(why) => {
            execution.status = ExecutionStatus::Failed;
            execution.error = Some("States.Runtime".into());
            execution.cause = Some(format!("execution {} cannot run: {why}", execution.id));
            execution.stopped_at = Some(Utc::now());
            platform.executions.finish_execution(&execution)?;
            anyhow::bail!("{}", execution.cause.unwrap_or_default());
        }
    };
    let past = platform
        .executions
        .execution_events(&execution.id)?
        .into_iter()
        .map(|e| Event {
            id: e.id,
            previous_event_id: e.previous_id,
            timestamp: e.time,
            kind: e.kind,
            details: serde_json::from_str(&e.details).unwrap_or(Value::Null),
        })
        .collect::<Vec<_>>();
    let steps = platform
        .executions
        .execution_steps(&execution.id)?
        .into_iter()
        .map(|(k, v)| (k, serde_json::from_str(&v).unwrap_or(Value::Null)))
        .collect();
    if !past.is_empty() {
        tracing::info!(execution = %execution.id, events = past.len(), "resuming the execution where it was cut off");
    }
    let log = Arc::new(ExecutionLog {
        writer: ExecutionWriter::new(platform.executions.clone(), &execution.id),
        saved: steps,
    });
    let region = &platform.project.s3.region;
    let info = ExecutionInfo {
        id: crate::routing::execution_arn(region, &execution.workflow, &execution.id),
        name: execution.id.clone(),
        state_machine: execution.workflow.clone(),
    };
    // One HTTP client (and its connection pool) for every execution of the process.
    static HTTP: std::sync::OnceLock<reqwest::Client> = std::sync::OnceLock::new();
    let interpreter = Interpreter::new(
        Arc::new(ProjectResources {
            platform: platform.clone(),
            http: HTTP.get_or_init(reqwest::Client::new).clone(),
        }),
        Arc::new(SystemClock),
    );
    let outcome = interpreter
        .run(&machine, input, info, History::durable(log, past))
        .await;
    execution.status = match outcome.status {
        Status::Succeeded => ExecutionStatus::Succeeded,
        Status::Failed => ExecutionStatus::Failed,
        Status::TimedOut => ExecutionStatus::TimedOut,
    };
    execution.output = outcome.output.as_ref().map(Value::to_string);
    execution.error = outcome.error.clone();
    execution.cause = outcome.cause.clone();
    execution.stopped_at = Some(Utc::now());
    platform.executions.finish_execution(&execution)?;
    // Rules can route the end of an execution (another workflow, say).
    let status = crate::routing::execution_status_envelope(&execution, &platform.project.s3.region);
    crate::routing::emit(&platform, status);
    Ok(outcome)
}

/// Runs an execution in the background of this process (which owns the data directory).
pub fn spawn(platform: Arc<Platform>, execution: Execution) {
    let id = execution.id.clone();
    tokio::spawn(async move {
        match run(platform, execution).await {
            Ok(Some(outcome)) => {
                tracing::info!(execution = %id, status = ?outcome.status, "execution ended")
            }
            Ok(None) => {}
            Err(e) => {
                tracing::error!(execution = %id, error = %format!("{e:#}"), "the execution could not be run")
            }
        }
    });
}

/// Runs, in the background, every execution on record as running that this
/// process does not run yet: at start-up those a stopped process left (they
/// resume where they were), then those other processes record (`sluice dlq
/// replay`, say). Returns how many it started.
pub fn pick_up(platform: &Arc<Platform>) -> Result<usize> {
    let running = platform.executions.running_executions()?;
    let mut started = 0;
    for execution in running {
        let mine = platform
            .running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&execution.id);
        if !mine {
            spawn(platform.clone(), execution);
            started += 1;
        }
    }
    Ok(started)
}

/// Picks up executions recorded by other processes until `shutdown`.
pub async fn pick_up_loop(platform: Arc<Platform>, shutdown: tokio_util::sync::CancellationToken) {
    loop {
        tokio::select! {
            () = tokio::time::sleep(std::time::Duration::from_millis(250)) => {}
            () = shutdown.cancelled() => return,
        }
        if let Err(e) = pick_up(&platform) {
            tracing::warn!(error = %format!("{e:#}"), "cannot look for executions to run");
        }
    }
}

/// An execution as the CLI and the HTTP API show it (DescribeExecution's fields).
pub fn execution_json(e: &Execution) -> Value {
    let parsed = |s: &str| serde_json::from_str(s).unwrap_or_else(|_| Value::String(s.into()));
    let mut v = json!({
        "id": e.id,
        "workflow": e.workflow,
        "status": e.status.as_str(),
        "startDate": e.started_at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        "input": parsed(&e.input),
    });
    if let Some(stopped) = e.stopped_at {
        v["stopDate"] = json!(stopped.to_rfc3339_opts(chrono::SecondsFormat::Millis, true));
    }
    if let Some(output) = &e.output {
        v["output"] = parsed(output);
    }
    if let Some(error) = &e.error {
        v["error"] = json!(error);
    }
    if let Some(cause) = &e.cause {
        v["cause"] = json!(cause);
    }
    v
}

/// An execution with its history (GetExecutionHistory's events).
pub fn execution_with_history(platform: &Platform, id: &str) -> Result<Value, sluice_state::Error> {
    let execution = platform.executions.get_execution(id)?;
    let events: Vec<Value> = platform
        .executions
        .execution_events(&execution.id)?
        .into_iter()
        .map(|e| {
            let mut v = json!({
                "id": e.id,
                "previousEventId": e.previous_id,
                "timestamp": e.time.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                "type": e.kind,
            });
            if let Ok(details) = serde_json::from_str::<Value>(&e.details)
                && !details.is_null()
            {
                v["details"] = details;
            }
            v
        })
        .collect();
    let mut v = execution_json(&execution);
    v["events"] = Value::Array(events);
    Ok(v)
}

/// The id of what a task call starts (a nested execution, a pipeline's event):
/// the same for every call of that attempt of that task, resumed or not.
fn task_uuid(call: &TaskCall) -> uuid::Uuid {
    use sha2::Digest as _;
    let digest = sha2::Sha256::digest(format!("{}\n{}", call.execution, call.key));
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    uuid::Uuid::from_bytes(bytes)
}

/// What Task states of a project's workflows can call.
pub struct ProjectResources {
    platform: Arc<Platform>,
    http: reqwest::Client,
}

impl Resources for ProjectResources {
    fn invoke(&self, call: TaskCall) -> BoxFuture<'_, Result<Value, Failure>> {
        async move {
            if let Some(pipeline) = call.resource.strip_prefix("sluice:pipeline:") {
                return self.pipeline(&call, pipeline).await;
            }
            if let Some(table) = call.resource.strip_prefix("sluice:refresh:") {
                return self.refresh(&call, table).await;
            }
            match call.resource.as_str() {
                "arn:aws:states:::http:invoke" => self.http_invoke(&call).await,
                "sluice:sql" => self.sql(&call).await,
                "arn:aws:states:::events:putEvents" => self.put_events(&call),
                "arn:aws:states:::states:startExecution" => self.start_execution(&call, None).await,
                "arn:aws:states:::states:startExecution.sync" => {
                    self.start_execution(&call, Some(1)).await
                }
                "arn:aws:states:::states:startExecution.sync:2" => {
                    self.start_execution(&call, Some(2)).await
                }
                other => Err(Failure::new(
                    "States.TaskFailed",
                    format!(
                        "state '{}': sluice cannot run the resource '{other}' yet (it runs arn:aws:states:::http:invoke, arn:aws:states:::states:startExecution[.sync[:2]], sluice:sql, sluice:pipeline:NAME and sluice:refresh:TABLE)",
                        call.state
                    ),
                )),
            }
        }
        .boxed()
    }
}

impl ProjectResources {
    /// The HTTP Task as Step Functions documents it: a failed status is the
    /// error `States.Http.StatusCode.NNN`, a refused connection `States.Http.Socket`.
    async fn http_invoke(&self, call: &TaskCall) -> Result<Value, Failure> {
        let p = &call.input;
        let bad =
            |why: String| Failure::new("States.Runtime", format!("state '{}': {why}", call.state));
        let endpoint = p["ApiEndpoint"]
            .as_str()
            .ok_or_else(|| bad("the HTTP Task needs Parameters.ApiEndpoint (a URL)".into()))?;
        let method = p["Method"]
            .as_str()
            .ok_or_else(|| bad("the HTTP Task needs Parameters.Method".into()))?;
        let method = reqwest::Method::from_bytes(method.to_uppercase().as_bytes())
            .map_err(|_| bad(format!("Method '{method}' is not an HTTP method")))?;
        let mut url = reqwest::Url::parse(endpoint)
            .map_err(|e| bad(format!("ApiEndpoint '{endpoint}' is not a URL: {e}")))?;
        if let Some(query) = p["QueryParameters"].as_object() {
            let mut pairs = url.query_pairs_mut();
            for (k, v) in query {
                pairs.append_pair(k, &v.as_str().map_or_else(|| v.to_string(), str::to_owned));
            }
        }
        let mut request = self.http.request(method, url);
        if let Some(headers) = p["Headers"].as_object() {
            for (k, v) in headers {
                request =
                    request.header(k, v.as_str().map_or_else(|| v.to_string(), str::to_owned));
            }
        }
        match &p["RequestBody"] {
            Value::Null => {}
            Value::String(s) => request = request.body(s.clone()),
            body => {
                request = request
                    .header(reqwest::header::CONTENT_TYPE, "application/json")
                    .body(body.to_string())
            }
        }
        let response = request
            .send()
            .await
            .map_err(|e| Failure::new("States.Http.Socket", format!("{endpoint}: {e}")))?;
        let status = response.status();
        let headers: serde_json::Map<String, Value> = response
            .headers()
            .iter()
            .map(|(k, v)| (k.to_string(), json!(v.to_str().unwrap_or_default())))
            .collect();
        let body = response
            .text()
            .await
            .map_err(|e| Failure::new("States.Http.Socket", format!("{endpoint}: {e}")))?;
        let body = serde_json::from_str(&body).unwrap_or(Value::String(body));
        let result = json!({
            "StatusCode": status.as_u16(),
            "StatusText": status.canonical_reason().unwrap_or_default(),
            "Headers": headers,
            "ResponseBody": body,
        });
        if status.is_success() {
            Ok(result)
        } else {
            Err(Failure::new(
                &format!("States.Http.StatusCode.{}", status.as_u16()),
                result.to_string(),
            ))
        }
    }

    /// A nested execution of a project's workflow. Its id derives from the
    /// calling task's key, so a resumed parent finds the child it started
    /// instead of starting another; `sync` waits for it (`.sync:2` hands back
    /// its input and output as JSON, `.sync` as JSON text, as AWS does).
    async fn start_execution(&self, call: &TaskCall, sync: Option<u8>) -> Result<Value, Failure> {
        let p = &call.input;
        let arn = p["StateMachineArn"].as_str().ok_or_else(|| {
            Failure::new(
                "States.Runtime",
                format!(
                    "state '{}': startExecution needs Parameters.StateMachineArn",
                    call.state
                ),
            )
        })?;
        let name = arn.rsplit_once(":stateMachine:").map_or(arn, |(_, n)| n);
        let workflow = self.platform.project.workflows.get(name).ok_or_else(|| {
            Failure::new(
                "StepFunctions.StateMachineDoesNotExistException",
                format!("State Machine Does Not Exist: '{arn}' (not a workflow under [workflows])"),
            )
        })?;
        let input = match &p["Input"] {
            Value::Null => json!({}),
            Value::String(s) => serde_json::from_str(s).unwrap_or(Value::String(s.clone())),
            other => other.clone(),
        };
        let id = task_uuid(call).to_string();
        let store = &self.platform.executions;
        let failed = |e: anyhow::Error| Failure::new("States.TaskFailed", format!("{e:#}"));
        let existing = store.get_execution(&id).ok().filter(|e| e.id == id);
        let child = match existing {
            Some(child) => child,
            None => {
                let child = new_execution(&id, &workflow.name, &workflow.definition, &input);
                store
                    .create_execution(&child)
                    .map_err(|e| failed(e.into()))?;
                if sync.is_none() {
                    spawn(self.platform.clone(), child.clone());
                } else {
                    // None: picked up meanwhile; its end is waited for below.
                    Box::pin(run(self.platform.clone(), child.clone()))
                        .await
                        .map_err(failed)?;
                }
                child
            }
        };
        let region = &self.platform.project.s3.region;
        let arn = crate::routing::execution_arn(region, &child.workflow, &child.id);
        let Some(version) = sync else {
            return Ok(json!({"ExecutionArn": arn, "StartDate": child.started_at.to_rfc3339()}));
        };
        // A child started by an earlier run of the parent runs in this process
        // (resumed at start-up, or just now): wait for its end.
        let done = loop {
            let e = store.get_execution(&id).map_err(|e| failed(e.into()))?;
            if e.status != ExecutionStatus::Running {
                break e;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        };
        let mut described = execution_json(&done);
        described["ExecutionArn"] = json!(arn);
        let text = |v: &Option<String>| v.clone().map(Value::String).unwrap_or(Value::Null);
        let result = json!({
            "ExecutionArn": arn,
            "Name": done.id,
            "StateMachineArn": crate::routing::state_machine_arn(region, &done.workflow),
            "Status": done.status.as_str(),
            "StartDate": done.started_at.to_rfc3339(),
            "StopDate": done.stopped_at.map(|t| t.to_rfc3339()),
            "Input": if version == 2 { described["input"].clone() } else { Value::String(done.input.clone()) },
            "Output": if version == 2 { described.get("output").cloned().unwrap_or(Value::Null) } else { text(&done.output) },
        });
        if done.status == ExecutionStatus::Succeeded {
            Ok(result)
        } else {
            let mut cause = result;
            cause["Error"] = json!(done.error);
            cause["Cause"] = json!(done.cause);
            Err(Failure::new("States.TaskFailed", cause.to_string()))
        }
    }

    /// A pipeline run on an object, through the job queue as a trigger would
    /// start it (retries and dead-lettering included), waited for. The event's
    /// id derives from the calling task's key: a resumed execution waits for
    /// the job it queued instead of queuing another.
    async fn pipeline(&self, call: &TaskCall, name: &str) -> Result<Value, Failure> {
        use sluice_model::event::{Event, EventId, EventKind, ObjectRef};
        let platform = &self.platform;
        let Some(pipeline) = platform.project.pipelines.get(name) else {
            return Err(Failure::new(
                "States.TaskFailed",
                format!(
                    "state '{}': no pipeline {name:?} under [pipelines]",
                    call.state
                ),
            ));
        };
        let (Some(bucket), Some(key)) = (call.input["Bucket"].as_str(), call.input["Key"].as_str())
        else {
            return Err(Failure::new(
                "States.Runtime",
                format!(
                    "state '{}': sluice:pipeline needs Parameters.Bucket and Parameters.Key",
                    call.state
                ),
            ));
        };
        let unavailable = |e: sluice_state::Error| Failure::new("States.TaskFailed", e.to_string());
        let id = EventId(task_uuid(call));
        if platform
            .state
            .jobs_for_event(id)
            .map_err(unavailable)?
            .is_empty()
        {
            let Some(meta) = platform
                .state
                .object_meta(bucket, key)
                .map_err(unavailable)?
            else {
                return Err(Failure::new(
                    "Sluice.NoSuchKey",
                    format!(
                        "state '{}': no object {bucket}/{key} in the landing zone",
                        call.state
                    ),
                ));
            };
            let event = Event {
                id,
                kind: EventKind::ObjectCreated,
                source: sluice_model::event::SOURCE_WORKFLOW_RERUN.into(),
                time: chrono::SubsecRound::trunc_subsecs(Utc::now(), 6),
                correlation_id: uuid::Uuid::now_v7(),
                object: ObjectRef {
                    bucket: meta.bucket,
                    key: meta.key,
                    size: meta.size,
                    sha256: meta.sha256,
                    version: meta.version,
                },
            };
            let job = sluice_state::NewJob {
                pipeline: name.to_owned(),
                trigger: format!("workflow:{}", call.state),
                max_attempts: pipeline.retry.max_attempts,
            };
            platform
                .state
                .record_event(&event, &[job])
                .map_err(unavailable)?;
            platform.wake.notify_waiters();
        }
        let job = loop {
            let jobs = platform.state.jobs_for_event(id).map_err(unavailable)?;
            match jobs.into_iter().next() {
                Some(job)
                    if matches!(
                        job.status,
                        sluice_state::JobStatus::Done | sluice_state::JobStatus::Dead
                    ) =>
                {
                    break job;
                }
                _ => tokio::time::sleep(std::time::Duration::from_millis(50)).await,
            }
        };
        let runs = platform.state.runs_of_job(job.id).map_err(unavailable)?;
        let run = runs.last().map(|r| {
            json!({
                "RunId": r.id.to_string(),
                "Status": r.status.as_str(),
                "RowsIn": r.rows_in,
                "RowsValid": r.rows_valid,
                "RowsQuarantined": r.rows_quarantined,
                "BytesWritten": r.bytes_written,
            })
        });
        let result = json!({
            "Pipeline": name,
            "JobId": job.id.to_string(),
            "EventId": id.to_string(),
            "Status": job.status.as_str(),
            "Attempts": job.attempts,
            "Run": run,
        });
        if job.status == sluice_state::JobStatus::Done {
            Ok(result)
        } else {
            let mut cause = result;
            cause["Error"] = json!(job.last_error);
            Err(Failure::new("Sluice.PipelineFailed", cause.to_string()))
        }
    }

    /// Events for the project's rules, as EventBridge's PutEvents integration sends them.
    fn put_events(&self, call: &TaskCall) -> Result<Value, Failure> {
        let Some(entries) = call.input["Entries"].as_array() else {
            return Err(Failure::new(
                "States.Runtime",
                format!(
                    "state '{}': events:putEvents needs Parameters.Entries",
                    call.state
                ),
            ));
        };
        let region = &self.platform.project.s3.region;
        let mut results = Vec::new();
        let mut failed = 0;
        for entry in entries {
            // The integration takes Detail as an object, where the API takes its JSON text.
            let mut entry = entry.clone();
            if entry["Detail"].is_object() {
                entry["Detail"] = json!(entry["Detail"].to_string());
            }
            match crate::routing::custom_envelope(&entry, region) {
                Ok(envelope) => {
                    crate::routing::put_custom(&self.platform, &envelope)
                        .map_err(|e| Failure::new("States.TaskFailed", e.to_string()))?;
                    results.push(json!({"EventId": envelope["id"]}));
                }
                Err((code, message)) => {
                    failed += 1;
                    results.push(json!({"ErrorCode": code, "ErrorMessage": message}));
                }
            }
        }
        let answer = json!({"Entries": results, "FailedEntryCount": failed});
        if failed > 0 {
            // As AWS's integration does: a partial failure fails the task.
            return Err(Failure::new("EventBridge.FailedEntry", answer.to_string()));
        }
        Ok(answer)
    }

    /// Recomputes a gold model, as a pipeline's refresh step does.
    async fn refresh(&self, call: &TaskCall, table: &str) -> Result<Value, Failure> {
        let platform = &self.platform;
        let t = platform
            .project
            .tables
            .get(table)
            .filter(|t| t.layer == sluice_model::config::Layer::Gold)
            .ok_or_else(|| {
                Failure::new(
                    "States.TaskFailed",
                    format!(
                        "state '{}': {table:?} is not a gold table under [tables]",
                        call.state
                    ),
                )
            })?;
        let failed =
            |e: String| Failure::new("Sluice.RefreshFailed", format!("refresh {table}: {e}"));
        // As a pipeline's refresh step does: one refresh of a table at a time.
        let lock = platform.table_lock(table);
        let _alone = lock.write().await;
        let session = platform
            .lake_session()
            .await
            .map_err(|e| failed(format!("{e:#}")))?;
        let report = sluice_lake::gold::refresh(
            &platform.paths,
            &session,
            table,
            &platform.locations[table],
            t.sql.as_deref().unwrap_or_default(),
            t.description.as_deref(),
        )
        .await
        .map_err(|e| failed(e.to_string()))?;
        Ok(json!({"Table": table, "Rows": report.rows, "Version": report.version}))
    }

    /// A SQL statement over the lake, as `sluice query` runs it.
    async fn sql(&self, call: &TaskCall) -> Result<Value, Failure> {
        let Some(sql) = call.input["Sql"].as_str() else {
            return Err(Failure::new(
                "States.Runtime",
                format!("state '{}': sluice:sql needs Parameters.Sql", call.state),
            ));
        };
        let failed = |e: String| Failure::new("Sluice.SqlFailed", e);
        let session = self
            .platform
            .session()
            .await
            .map_err(|e| failed(format!("{e:#}")))?;
        let result = session
            .query(sql)
            .await
            .map_err(|e| failed(e.to_string()))?;
        let rows: Vec<Value> = result
            .batches
            .iter()
            .flat_map(json_rows)
            .map(Value::Object)
            .collect();
        Ok(json!({"RowCount": rows.len(), "Rows": rows}))
    }
}
