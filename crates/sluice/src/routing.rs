//! Event rules: every event, shaped as EventBridge delivers it, is tested
//! against the `[rules]` of the project; each match starts the rule's workflow
//! with the event as its input.
//!
//! Events are routed from the state store, not from the write path: object
//! events (whoever wrote them: `sluice put`, HTTP, S3, the watched folder) and
//! custom events (`PutEvents`, execution status changes) are read in sequence
//! after a cursor per stream, and the cursor moves in the same transaction
//! that creates the executions, so an event is routed exactly once across
//! crashes and restarts. Events recorded before the first start with rules
//! are not routed (as with a new EventBridge rule).

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use sluice_model::event::EventKind;
use sluice_state::{Execution, StoredEvent};
use tokio_util::sync::CancellationToken;

use crate::platform::Platform;
use crate::workflows;

/// The account id events carry (EventBridge requires one; sluice has no accounts).
pub const ACCOUNT: &str = "000000000000";

/// Events read per transaction.
const BATCH: usize = 256;

/// An EventBridge event: the envelope every rule pattern sees.
fn envelope(
    source: &str,
    detail_type: &str,
    at: DateTime<Utc>,
    region: &str,
    resources: Value,
    detail: Value,
) -> Value {
    json!({
        "version": "0",
        "id": uuid::Uuid::now_v7().to_string(),
        "detail-type": detail_type,
        "source": source,
        "account": ACCOUNT,
        "time": time(at),
        "region": region,
        "resources": resources,
        "detail": detail,
    })
}

/// The EventBridge envelope of an object event, as S3 sends it.
pub fn object_envelope(e: &StoredEvent, region: &str) -> Value {
    let event = &e.event;
    let created = event.kind == EventKind::ObjectCreated;
    let mut object = json!({"key": event.object.key, "sequencer": event.object.version});
    if created {
        object["size"] = json!(event.object.size);
    }
    let mut e = envelope(
        "aws.s3",
        if created {
            "Object Created"
        } else {
            "Object Deleted"
        },
        event.time,
        region,
        json!([format!("arn:aws:s3:::{}", event.object.bucket)]),
        json!({
            "version": "0",
            "bucket": {"name": event.object.bucket},
            "object": object,
            "request-id": event.correlation_id.to_string(),
            "requester": event.source,
            "reason": if created { "PutObject" } else { "DeleteObject" },
        }),
    );
    // The event keeps the id it was recorded with.
    e["id"] = json!(event.id.to_string());
    e
}

/// An envelope's time as EventBridge writes it.
pub fn time(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// Records a custom event (PutEvents, an execution's status change) for routing.
pub fn put_custom(platform: &Platform, envelope: &Value) -> sluice_state::Result<i64> {
    let id = envelope["id"].as_str().unwrap_or_default();
    platform
        .executions
        .put_custom_event(id, &envelope.to_string(), Utc::now())
}

/// Starts the streams' cursors where they are, the first time there are rules:
/// called before `sluice up` reports ready, so every event after that is routed.
pub fn init_cursors(platform: &Platform) -> sluice_state::Result<()> {
    if platform.project.rules.is_empty() {
        return Ok(());
    }
    let store = &platform.executions;
    for stream in ["objects", "custom"] {
        if store.routing_cursor(stream)?.is_none() {
            store.route_events(stream, store.stream_head(stream)?, &[])?;
        }
    }
    Ok(())
}

/// Records an event sluice itself raises (an execution or a run ending, a
/// schedule's tick) for routing, when the project has rules to route it;
/// a failure is logged, not passed on: the thing it reports already happened.
pub fn emit(platform: &Platform, envelope: Value) {
    if platform.project.rules.is_empty() {
        return;
    }
    if let Err(e) = put_custom(platform, &envelope) {
        tracing::warn!(error = %e, detail_type = %envelope["detail-type"], "cannot record the event for the rules");
    }
}

/// The event a pipeline run's end raises.
pub fn run_status_envelope(run: &sluice_state::Run, region: &str) -> Value {
    envelope(
        "sluice.pipelines",
        "Pipeline Run Status Change",
        run.finished_at.unwrap_or_else(Utc::now),
        region,
        json!([format!(
            "arn:sluice:pipelines:{region}:{ACCOUNT}:pipeline/{}",
            run.pipeline
        )]),
        json!({
            "pipeline": run.pipeline,
            "runId": run.id.to_string(),
            "jobId": run.job_id.to_string(),
            "eventId": run.event_id.to_string(),
            "status": run.status.as_str().to_uppercase(),
            "attempt": run.attempt,
            "object": run.detail["object"],
            "rowsIn": run.rows_in,
            "rowsValid": run.rows_valid,
            "rowsQuarantined": run.rows_quarantined,
            "error": run.error,
        }),
    )
}

/// The event a schedule's tick raises, as EventBridge's scheduled rules send it.
pub fn tick_envelope(schedule: &str, at: DateTime<Utc>, region: &str) -> Value {
    envelope(
        "aws.events",
        "Scheduled Event",
        at,
        region,
        json!([format!(
            "arn:sluice:scheduler:{region}:{ACCOUNT}:schedule/{schedule}"
        )]),
        json!({}),
    )
}

/// Routes events to the rules' workflows until `shutdown`.
pub async fn run(platform: Arc<Platform>, shutdown: CancellationToken) {
    if platform.project.rules.is_empty() {
        return;
    }
    loop {
        let mut busy = false;
        for stream in ["objects", "custom"] {
            match route(&platform, stream) {
                Ok(n) => busy |= n == BATCH,
                Err(e) => {
                    tracing::error!(stream, error = %format!("{e:#}"), "routing events failed; retrying")
                }
            }
        }
        if !busy {
            tokio::select! {
                () = tokio::time::sleep(Duration::from_millis(50)) => {}
                () = shutdown.cancelled() => return,
            }
        }
    }
}

/// Routes one batch of a stream; returns how many events it read.
fn route(platform: &Arc<Platform>, stream: &str) -> anyhow::Result<usize> {
    let store = &platform.executions;
    let Some(after) = store.routing_cursor(stream)? else {
        init_cursors(platform)?;
        return Ok(0);
    };
    let region = &platform.project.s3.region;
    let events: Vec<(i64, Value)> = match stream {
        "objects" => store
            .object_events_after(after, BATCH)?
            .into_iter()
            .map(|e| {
                // A workflow's re-run of an object is not a write: rules do not see it.
                let rerun = e.event.source == sluice_model::event::SOURCE_WORKFLOW_RERUN;
                let envelope = if rerun {
                    Value::Null
                } else {
                    object_envelope(&e, region)
                };
                (e.seq, envelope)
            })
            .collect(),
        _ => store
            .custom_events_after(after, BATCH)?
            .into_iter()
            .map(|(seq, body)| (seq, serde_json::from_str(&body).unwrap_or(Value::Null)))
            .collect(),
    };
    let Some(&(last, _)) = events.last() else {
        return Ok(0);
    };
    let mut started: Vec<Execution> = Vec::new();
    for (_, envelope) in &events {
        if envelope.is_null() {
            continue;
        }
        for rule in platform.project.rules.values() {
            if rule.pattern.matches(envelope) {
                let workflow = &platform.project.workflows[&rule.workflow];
                let id = uuid::Uuid::now_v7().to_string();
                tracing::info!(rule = %rule.name, event = %envelope["id"], execution = %id, "rule matched");
                started.push(workflows::new_execution(
                    &id,
                    &rule.workflow,
                    &workflow.definition,
                    envelope,
                ));
            }
        }
    }
    store.route_events(stream, last, &started)?;
    for execution in started {
        workflows::spawn(platform.clone(), execution);
    }
    Ok(events.len())
}

/// One entry of a PutEvents call, checked as EventBridge checks it; Err is
/// the entry's error code and message.
pub fn custom_envelope(entry: &Value, region: &str) -> Result<Value, (&'static str, String)> {
    let field = |name: &str| entry.get(name).and_then(Value::as_str);
    let source = field("Source").ok_or((
        "InvalidArgument",
        "Parameter Source is not valid. Reason: Source is a required argument.".to_string(),
    ))?;
    let detail_type = field("DetailType").ok_or((
        "InvalidArgument",
        "Parameter DetailType is not valid. Reason: DetailType is a required argument.".to_string(),
    ))?;
    let detail_text = field("Detail").ok_or((
        "InvalidArgument",
        "Parameter Detail is not valid. Reason: Detail is a required argument.".to_string(),
    ))?;
    let detail: Value = match serde_json::from_str(detail_text) {
        Ok(v @ Value::Object(_)) => v,
        _ => {
            return Err(("MalformedDetail", "Detail is malformed.".to_string()));
        }
    };
    if source.starts_with("aws.") {
        return Err((
            "NotAuthorizedForSourceException",
            format!("Not authorized for the source {source}"),
        ));
    }
    let when = match entry.get("Time") {
        None | Some(Value::Null) => Utc::now(),
        Some(Value::Number(n)) => n
            .as_f64()
            .and_then(|s| DateTime::from_timestamp(s as i64, 0))
            .unwrap_or_else(Utc::now),
        Some(Value::String(s)) => DateTime::parse_from_rfc3339(s)
            .map(|t| t.with_timezone(&Utc))
            .unwrap_or_else(|_| Utc::now()),
        Some(_) => Utc::now(),
    };
    Ok(envelope(
        source,
        detail_type,
        when,
        region,
        entry.get("Resources").cloned().unwrap_or_else(|| json!([])),
        detail,
    ))
}

/// A state machine's ARN, shaped like Step Functions' (`$$.StateMachine.Id`, events).
pub fn state_machine_arn(region: &str, workflow: &str) -> String {
    format!("arn:sluice:states:{region}:{ACCOUNT}:stateMachine:{workflow}")
}

/// An execution's ARN (`$$.Execution.Id`, events, nested executions' results).
pub fn execution_arn(region: &str, workflow: &str, id: &str) -> String {
    format!("arn:sluice:states:{region}:{ACCOUNT}:execution:{workflow}:{id}")
}

/// The status change event Step Functions sends when an execution ends.
pub fn execution_status_envelope(e: &Execution, region: &str) -> Value {
    let millis = |t: DateTime<Utc>| t.timestamp_millis();
    envelope(
        "aws.states",
        "Step Functions Execution Status Change",
        e.stopped_at.unwrap_or_else(Utc::now),
        region,
        json!([execution_arn(region, &e.workflow, &e.id)]),
        json!({
            "executionArn": execution_arn(region, &e.workflow, &e.id),
            "stateMachineArn": state_machine_arn(region, &e.workflow),
            "name": e.id,
            "status": e.status.as_str(),
            "startDate": millis(e.started_at),
            "stopDate": e.stopped_at.map(millis),
            "input": e.input,
            "output": e.output,
            "error": e.error,
            "cause": e.cause,
        }),
    )
}
