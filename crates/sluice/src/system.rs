//! System tables (`sluice.runs`, `sluice.jobs`, `sluice.events`, `sluice.dlq`,
//! `sluice.executions`, `sluice.custom_events`, and one `bronze.<table>` per bronze table),
//! read from the state store or the archive only when a query scans them.

use std::sync::Arc;

use anyhow::Result;
use arrow::array::{ArrayRef, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray};
use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use futures::FutureExt;
use sluice_lake::objects::{Archived, Objects};
use sluice_lake::sql::{Producer, Session};
use sluice_state::{Execution, ExecutionStore, Job, Run, StateStore, StoredEvent};

/// A system table's schema and rows.
type Table = (Arc<Schema>, RecordBatch);

/// How many rows of each system table a query sees (newest first).
const LIMIT: usize = 100_000;

fn ts() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
}

fn strings<'a>(v: impl Iterator<Item = Option<&'a str>>) -> ArrayRef {
    Arc::new(StringArray::from_iter(v))
}

fn times(v: impl Iterator<Item = Option<i64>>) -> ArrayRef {
    Arc::new(TimestampMicrosecondArray::from_iter(v).with_timezone("UTC"))
}

fn ints(v: impl Iterator<Item = i64>) -> ArrayRef {
    Arc::new(Int64Array::from_iter_values(v))
}

/// Registers the system tables in `session`; each reads its rows when a query scans it.
pub fn register(
    session: &Session,
    state: Arc<dyn StateStore>,
    executions: Arc<dyn ExecutionStore>,
) -> Result<()> {
    let from_executions = |f: fn(&dyn ExecutionStore) -> Result<Table>| -> Producer {
        let executions = executions.clone();
        Arc::new(move || {
            let executions = executions.clone();
            async move {
                f(executions.as_ref())
                    .map(|(_, b)| vec![b])
                    .map_err(|e| format!("{e:#}"))
            }
            .boxed()
        })
    };
    session.register_lazy(
        "sluice",
        "executions",
        executions_batch(&[])?.0,
        from_executions(|s| executions_batch(&s.list_executions(LIMIT)?)),
    )?;
    session.register_lazy(
        "sluice",
        "custom_events",
        custom_events_batch(&[])?.0,
        from_executions(|s| {
            let head = s.stream_head("custom")?;
            let after = head.saturating_sub(LIMIT as i64);
            custom_events_batch(&s.custom_events_after(after, LIMIT)?)
        }),
    )?;
    let from_state = |f: fn(&dyn StateStore) -> Result<Table>| -> Producer {
        let state = state.clone();
        Arc::new(move || {
            let state = state.clone();
            async move {
                f(state.as_ref())
                    .map(|(_, b)| vec![b])
                    .map_err(|e| format!("{e:#}"))
            }
            .boxed()
        })
    };
    session.register_lazy(
        "sluice",
        "runs",
        runs_batch(&[])?.0,
        from_state(|s| runs_batch(&s.list_runs(LIMIT)?)),
    )?;
    session.register_lazy(
        "sluice",
        "jobs",
        jobs_batch(&[])?.0,
        from_state(|s| jobs_batch(&s.list_jobs(LIMIT)?)),
    )?;
    session.register_lazy(
        "sluice",
        "dlq",
        jobs_batch(&[])?.0,
        from_state(|s| {
            let dead: Vec<Job> = s
                .list_jobs(LIMIT)?
                .into_iter()
                .filter(|j| j.status == sluice_state::JobStatus::Dead)
                .collect();
            jobs_batch(&dead)
        }),
    )?;
    session.register_lazy(
        "sluice",
        "events",
        events_batch(&[])?.0,
        from_state(|s| events_batch(&s.list_events(LIMIT)?)),
    )?;
    Ok(())
}

fn executions_batch(executions: &[Execution]) -> Result<Table> {
    let schema = Arc::new(Schema::new(vec![
        Field::new("execution_id", DataType::Utf8, false),
        Field::new("workflow", DataType::Utf8, false),
        Field::new("status", DataType::Utf8, false),
        Field::new("started_at", ts(), false),
        Field::new("stopped_at", ts(), true),
        Field::new("error", DataType::Utf8, true),
        Field::new("cause", DataType::Utf8, true),
        Field::new("input", DataType::Utf8, false),
        Field::new("output", DataType::Utf8, true),
    ]));
    let e = executions;
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![
            strings(e.iter().map(|x| Some(x.id.as_str()))),
            strings(e.iter().map(|x| Some(x.workflow.as_str()))),
            strings(e.iter().map(|x| Some(x.status.as_str()))),
            times(e.iter().map(|x| Some(x.started_at.timestamp_micros()))),
            times(e.iter().map(|x| x.stopped_at.map(|t| t.timestamp_micros()))),
            strings(e.iter().map(|x| x.error.as_deref())),
            strings(e.iter().map(|x| x.cause.as_deref())),
            strings(e.iter().map(|x| Some(x.input.as_str()))),
            strings(e.iter().map(|x| x.output.as_deref())),
        ],
    )?;
    Ok((schema, batch))
}

/// Custom events (PutEvents, status changes, ticks): envelope fields, detail as JSON text.
fn custom_events_batch(events: &[(i64, String)]) -> Result<Table> {
    let schema = Arc::new(Schema::new(vec![
        Field::new("seq", DataType::Int64, false),
        Field::new("event_id", DataType::Utf8, false),
        Field::new("source", DataType::Utf8, false),
        Field::new("detail_type", DataType::Utf8, false),
        Field::new("time", DataType::Utf8, false),
        Field::new("detail", DataType::Utf8, false),
    ]));
    let parsed: Vec<serde_json::Value> = events
        .iter()
        .map(|(_, body)| serde_json::from_str(body).unwrap_or_default())
        .collect();
    let field = |name: &'static str| {
        strings(
            parsed
                .iter()
                .map(move |v| Some(v[name].as_str().unwrap_or_default())),
        )
    };
    let details: Vec<String> = parsed.iter().map(|v| v["detail"].to_string()).collect();
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![
            ints(events.iter().map(|(seq, _)| *seq)),
            field("id"),
            field("source"),
            field("detail-type"),
            field("time"),
            strings(details.iter().map(|s| Some(s.as_str()))),
        ],
    )?;
    Ok((schema, batch))
}

fn runs_batch(runs: &[Run]) -> Result<Table> {
    let schema = Arc::new(Schema::new(vec![
        Field::new("run_id", DataType::Utf8, false),
        Field::new("job_id", DataType::Utf8, false),
        Field::new("event_id", DataType::Utf8, false),
        Field::new("pipeline", DataType::Utf8, false),
        Field::new("attempt", DataType::Int64, false),
        Field::new("status", DataType::Utf8, false),
        Field::new("started_at", ts(), false),
        Field::new("finished_at", ts(), true),
        Field::new("rows_in", DataType::Int64, false),
        Field::new("rows_valid", DataType::Int64, false),
        Field::new("rows_quarantined", DataType::Int64, false),
        Field::new("bytes_read", DataType::Int64, false),
        Field::new("bytes_written", DataType::Int64, false),
        Field::new("error", DataType::Utf8, true),
        Field::new("detail", DataType::Utf8, false),
    ]));
    let ids: Vec<String> = runs.iter().map(|r| r.id.to_string()).collect();
    let jobs: Vec<String> = runs.iter().map(|r| r.job_id.to_string()).collect();
    let events: Vec<String> = runs.iter().map(|r| r.event_id.to_string()).collect();
    let details: Vec<String> = runs.iter().map(|r| r.detail.to_string()).collect();
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![
            strings(ids.iter().map(|s| Some(s.as_str()))),
            strings(jobs.iter().map(|s| Some(s.as_str()))),
            strings(events.iter().map(|s| Some(s.as_str()))),
            strings(runs.iter().map(|r| Some(r.pipeline.as_str()))),
            ints(runs.iter().map(|r| r.attempt as i64)),
            strings(runs.iter().map(|r| Some(r.status.as_str()))),
            times(runs.iter().map(|r| Some(r.started_at.timestamp_micros()))),
            times(
                runs.iter()
                    .map(|r| r.finished_at.map(|t| t.timestamp_micros())),
            ),
            ints(runs.iter().map(|r| r.rows_in as i64)),
            ints(runs.iter().map(|r| r.rows_valid as i64)),
            ints(runs.iter().map(|r| r.rows_quarantined as i64)),
            ints(runs.iter().map(|r| r.bytes_read as i64)),
            ints(runs.iter().map(|r| r.bytes_written as i64)),
            strings(runs.iter().map(|r| r.error.as_deref())),
            strings(details.iter().map(|s| Some(s.as_str()))),
        ],
    )?;
    Ok((schema, batch))
}

fn events_batch(events: &[StoredEvent]) -> Result<Table> {
    let schema = Arc::new(Schema::new(vec![
        Field::new("seq", DataType::Int64, false),
        Field::new("event_id", DataType::Utf8, false),
        Field::new("kind", DataType::Utf8, false),
        Field::new("source", DataType::Utf8, false),
        Field::new("time", ts(), false),
        Field::new("bucket", DataType::Utf8, false),
        Field::new("key", DataType::Utf8, false),
        Field::new("size", DataType::Int64, false),
        Field::new("sha256", DataType::Utf8, false),
        Field::new("version", DataType::Utf8, false),
    ]));
    let ids: Vec<String> = events.iter().map(|e| e.event.id.to_string()).collect();
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![
            ints(events.iter().map(|e| e.seq)),
            strings(ids.iter().map(|s| Some(s.as_str()))),
            strings(events.iter().map(|e| Some(e.event.kind.as_str()))),
            strings(events.iter().map(|e| Some(e.event.source.as_str()))),
            times(events.iter().map(|e| Some(e.event.time.timestamp_micros()))),
            strings(events.iter().map(|e| Some(e.event.object.bucket.as_str()))),
            strings(events.iter().map(|e| Some(e.event.object.key.as_str()))),
            ints(events.iter().map(|e| e.event.object.size as i64)),
            strings(events.iter().map(|e| Some(e.event.object.sha256.as_str()))),
            strings(events.iter().map(|e| Some(e.event.object.version.as_str()))),
        ],
    )?;
    Ok((schema, batch))
}

fn jobs_batch(jobs: &[Job]) -> Result<Table> {
    let schema = Arc::new(Schema::new(vec![
        Field::new("job_id", DataType::Utf8, false),
        Field::new("event_id", DataType::Utf8, false),
        Field::new("pipeline", DataType::Utf8, false),
        Field::new("trigger", DataType::Utf8, false),
        Field::new("status", DataType::Utf8, false),
        Field::new("attempts", DataType::Int64, false),
        Field::new("max_attempts", DataType::Int64, false),
        Field::new("next_run_at", ts(), false),
        Field::new("last_error", DataType::Utf8, true),
        Field::new("updated_at", ts(), false),
    ]));
    let ids: Vec<String> = jobs.iter().map(|j| j.id.to_string()).collect();
    let events: Vec<String> = jobs.iter().map(|j| j.event_id.to_string()).collect();
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![
            strings(ids.iter().map(|s| Some(s.as_str()))),
            strings(events.iter().map(|s| Some(s.as_str()))),
            strings(jobs.iter().map(|j| Some(j.pipeline.as_str()))),
            strings(jobs.iter().map(|j| Some(j.trigger.as_str()))),
            strings(jobs.iter().map(|j| Some(j.status.as_str()))),
            ints(jobs.iter().map(|j| j.attempts as i64)),
            ints(jobs.iter().map(|j| j.max_attempts as i64)),
            times(jobs.iter().map(|j| Some(j.next_run_at.timestamp_micros()))),
            strings(jobs.iter().map(|j| j.last_error.as_deref())),
            times(jobs.iter().map(|j| Some(j.updated_at.timestamp_micros()))),
        ],
    )?;
    Ok((schema, batch))
}

/// Registers a bronze table: the raw objects it keeps, one row per archived content version.
pub fn register_bronze(session: &Session, table: &str, objects: Objects) -> Result<()> {
    let name = table.to_string();
    let produce: Producer = Arc::new(move || {
        let (objects, name) = (objects.clone(), name.clone());
        async move {
            let archived = objects
                .list_archive(&name)
                .await
                .map_err(|e| e.to_string())?;
            bronze_batch(&archived)
                .map(|(_, b)| vec![b])
                .map_err(|e| format!("{e:#}"))
        }
        .boxed()
    });
    session.register_lazy("bronze", table, bronze_batch(&[])?.0, produce)?;
    Ok(())
}

fn bronze_batch(archived: &[Archived]) -> Result<Table> {
    let schema = Arc::new(Schema::new(vec![
        Field::new("source_object", DataType::Utf8, false),
        Field::new("sha256", DataType::Utf8, false),
        Field::new("size", DataType::Int64, false),
        Field::new("path", DataType::Utf8, false),
        Field::new("archived_at", ts(), false),
    ]));
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![
            strings(archived.iter().map(|a| Some(a.source_object.as_str()))),
            strings(archived.iter().map(|a| Some(a.sha256.as_str()))),
            ints(archived.iter().map(|a| a.size as i64)),
            strings(archived.iter().map(|a| Some(a.path.as_str()))),
            times(
                archived
                    .iter()
                    .map(|a| Some(a.archived_at.timestamp_micros())),
            ),
        ],
    )?;
    Ok((schema, batch))
}
