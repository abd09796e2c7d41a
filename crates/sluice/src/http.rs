//! The HTTP API (axum): objects in, SQL out, runs and status for scripts and tests.
//!
//! | route | what |
//! |---|---|
//! | `PUT /v1/objects/{bucket}/{*key}` | store an object (streamed); its event is recorded before the 201 |
//! | `GET /v1/objects/{bucket}/{*key}` | read an object |
//! | `DELETE /v1/objects/{bucket}/{*key}` | delete an object; its object-removed event is recorded before the 204 |
//! | `POST /v1/query` `{"sql": …}` | run SQL; JSON rows with column types; small objects acknowledged before it are ingested first (`[server] read_after_write`) |
//! | `GET /v1/runs`, `GET /v1/runs/{id}` | run history |
//! | `POST /v1/tables/{table}/compact` | merge a silver table's small files (ingests of it wait) |
//! | `POST /v1/tables/{table}/vacuum?retain=24h&dry_run=true` | delete (or list) the files a table retired longer than its retention (or `retain`) ago, and old orphans; `sluice up` also does it every `[server] vacuum_interval` |
//! | `POST /v1/executions` `{"workflow": …, "input": …, "definition": …}` | start a durable execution of a `[workflows]` entry, or of the definition sent; 201 with its id |
//! | `GET /v1/executions`, `GET /v1/executions/{id}` | executions; one with its event history |
//! | `POST /v1/events` `{"Entries": […]}` | PutEvents: custom events for the `[rules]` (also `POST /` with `X-Amz-Target: AWSEvents.PutEvents`, as boto3 and the aws CLI send it) |
//! | `GET /v1/status` | job counts (pending, running, done, dead); tables being compacted in the background |
//! | `GET /v1/health` | liveness |

use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures::StreamExt;
use serde::Deserialize;
use serde_json::json;
use sluice_model::ErrorCode;
use sluice_model::config::Layer;
use sluice_model::key::{BucketName, ObjectKey};

use crate::platform::{Platform, PutError, PutOptions};
use crate::render::json_rows;

/// An API error: a status and a message, as JSON `{"error": …}`.
pub struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({"error": self.1}))).into_response()
    }
}

/// The one place an error code becomes an HTTP status.
fn status_of(code: ErrorCode) -> StatusCode {
    match code {
        ErrorCode::BadInput => StatusCode::BAD_REQUEST,
        ErrorCode::NotFound => StatusCode::NOT_FOUND,
        ErrorCode::Conflict => StatusCode::CONFLICT,
        ErrorCode::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        ErrorCode::Timeout => StatusCode::GATEWAY_TIMEOUT,
        ErrorCode::Internal => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

impl From<PutError> for ApiError {
    fn from(e: PutError) -> Self {
        let status = match &e {
            PutError::BadInput(_) => StatusCode::BAD_REQUEST,
            PutError::NoSuchBucket(_) => StatusCode::NOT_FOUND,
            PutError::Store(inner) => status_of(inner.code()),
            PutError::State(_) => StatusCode::SERVICE_UNAVAILABLE,
        };
        ApiError(status, e.to_string())
    }
}

impl From<sluice_lake::Error> for ApiError {
    fn from(e: sluice_lake::Error) -> Self {
        ApiError(status_of(e.code()), e.to_string())
    }
}

impl From<sluice_state::Error> for ApiError {
    fn from(e: sluice_state::Error) -> Self {
        ApiError(status_of(e.code()), e.to_string())
    }
}

/// The API's routes.
pub fn router(platform: Arc<Platform>) -> axum::Router {
    axum::Router::new()
        .route(
            "/v1/health",
            get(|| async { Json(json!({"status": "ok"})) }),
        )
        .route("/v1/status", get(status))
        .route(
            "/v1/objects/{bucket}/{*key}",
            get(get_object).put(put_object).delete(delete_object),
        )
        .route("/v1/query", post(query))
        .route("/v1/runs", get(runs))
        .route("/v1/runs/{id}", get(run))
        .route("/v1/tables/{table}/compact", post(compact))
        .route("/v1/tables/{table}/vacuum", post(vacuum))
        .route("/v1/executions", get(executions).post(start_execution))
        .route("/v1/executions/{id}", get(execution))
        .route("/v1/events", post(put_events))
        .route("/", post(aws_json))
        .with_state(platform)
}

async fn status(State(p): State<Arc<Platform>>) -> Result<Json<serde_json::Value>, ApiError> {
    let c = p.state.job_counts()?;
    Ok(Json(json!({
        "jobs": {"pending": c.pending, "running": c.running, "done": c.done, "dead": c.dead},
        "compacting": p.compacting(),
        "tails": crate::tails::waiting(&p),
    })))
}

async fn put_object(
    State(p): State<Arc<Platform>>,
    Path((bucket, key)): Path<(String, String)>,
    headers: axum::http::HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    let stream = body.into_data_stream().boxed();
    let options = PutOptions {
        content_type: headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(String::from),
        ..Default::default()
    };
    let (event, jobs, meta) = p
        .put_object(&bucket, &key, stream, "sluice:http", options)
        .await?;
    let o = &event.object;
    Ok((
        StatusCode::CREATED,
        Json(json!({
            "event_id": event.id.to_string(),
            "bucket": o.bucket, "key": o.key, "size": o.size, "sha256": o.sha256, "version": o.version,
            "etag": meta.etag,
            "jobs": jobs,
        })),
    ))
}

async fn get_object(
    State(p): State<Arc<Platform>>,
    Path((bucket, key)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let bucket =
        BucketName::parse(&bucket).map_err(|e| ApiError(StatusCode::BAD_REQUEST, e.to_string()))?;
    let key =
        ObjectKey::parse(&key).map_err(|e| ApiError(StatusCode::BAD_REQUEST, e.to_string()))?;
    let reader = p.objects.open_read(&bucket, &key).await?;
    let size = reader.size();
    let body = match reader {
        sluice_lake::objects::ObjectReader::File { file, .. } => Body::from_stream(
            tokio_util::io::ReaderStream::new(tokio::fs::File::from_std(file)),
        ),
        sluice_lake::objects::ObjectReader::Stream { stream, .. } => Body::from_stream(stream),
    };
    Ok(([(header::CONTENT_LENGTH, size.to_string())], body).into_response())
}

async fn delete_object(
    State(p): State<Arc<Platform>>,
    Path((bucket, key)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    p.delete_object(&bucket, &key, "sluice:http").await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
struct QueryRequest {
    sql: String,
}

async fn query(
    State(p): State<Arc<Platform>>,
    Json(req): Json<QueryRequest>,
) -> Result<Json<serde_json::Value>, ApiError> {
    // Read after write: small objects acknowledged before this query are ingested first
    // (within the bound), and the session below opens the tables after that. A query that
    // can only see rows of named objects waits for those objects' writes alone.
    let statement = sluice_lake::sql::Statement::parse(&req.sql)?;
    let bound = p.project.server.read_after_write;
    let scope = statement.source_objects();
    if p.pending.wait_for_earlier(bound, scope).await == crate::pending::Waited::TimedOut {
        tracing::debug!(
            waiting = p.pending.len(),
            ?bound,
            "query answers before earlier writes are ingested"
        );
    }
    let session = p
        .session_for(&statement)
        .await
        .map_err(|e| ApiError(StatusCode::SERVICE_UNAVAILABLE, format!("{e:#}")))?;
    let result = session.run(&statement).await?;
    let columns: Vec<_> = result
        .schema
        .fields()
        .iter()
        .map(|f| json!({"name": f.name(), "type": f.data_type().to_string()}))
        .collect();
    let rows: Vec<_> = result
        .batches
        .iter()
        .flat_map(json_rows)
        .map(serde_json::Value::Object)
        .collect();
    Ok(Json(json!({"columns": columns, "rows": rows})))
}

#[derive(Deserialize)]
struct Limit {
    limit: Option<usize>,
}

fn run_json(r: &sluice_state::Run) -> serde_json::Value {
    json!({
        "run_id": r.id.to_string(), "job_id": r.job_id.to_string(), "event_id": r.event_id.to_string(),
        "pipeline": r.pipeline, "attempt": r.attempt, "status": r.status.as_str(),
        "started_at": r.started_at.to_rfc3339(), "finished_at": r.finished_at.map(|t| t.to_rfc3339()),
        "rows_in": r.rows_in, "rows_valid": r.rows_valid, "rows_quarantined": r.rows_quarantined,
        "bytes_read": r.bytes_read, "bytes_written": r.bytes_written, "error": r.error, "detail": r.detail,
    })
}

async fn runs(
    State(p): State<Arc<Platform>>,
    Query(q): Query<Limit>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let runs = p.state.list_runs(q.limit.unwrap_or(100))?;
    Ok(Json(
        json!({"runs": runs.iter().map(run_json).collect::<Vec<_>>()}),
    ))
}

async fn run(
    State(p): State<Arc<Platform>>,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    Ok(Json(run_json(&p.state.get_run(&id)?)))
}

#[derive(Deserialize)]
struct StartExecution {
    /// The definition: an ASL object, or its text. Default: the `[workflows]` entry named `workflow`.
    #[serde(default)]
    definition: Option<serde_json::Value>,
    #[serde(default)]
    input: Option<serde_json::Value>,
    /// The workflow's name (default `workflow`).
    #[serde(default)]
    workflow: Option<String>,
}

async fn start_execution(
    State(p): State<Arc<Platform>>,
    Json(req): Json<StartExecution>,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    let workflow = req.workflow.unwrap_or_else(|| "workflow".into());
    let text = match &req.definition {
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
        None => match p.project.workflows.get(&workflow) {
            Some(w) => w.definition.clone(),
            None => {
                return Err(ApiError(
                    StatusCode::NOT_FOUND,
                    format!("no workflow {workflow:?} under [workflows]; send a definition"),
                ));
            }
        },
    };
    sluice_flow::parse_definition(&text)
        .map_err(|e| ApiError(StatusCode::BAD_REQUEST, format!("definition: {e}")))?;
    let input = req.input.unwrap_or_else(|| json!({}));
    let execution = crate::workflows::create(&p, &workflow, &text, &input)
        .map_err(|e| ApiError(StatusCode::SERVICE_UNAVAILABLE, format!("{e:#}")))?;
    let started = crate::workflows::execution_json(&execution);
    crate::workflows::spawn(p, execution);
    Ok((StatusCode::CREATED, Json(started)))
}

/// PutEvents: each entry is checked and recorded for routing, or gets its error.
fn put_events_answer(
    p: &Platform,
    body: &serde_json::Value,
) -> Result<serde_json::Value, ApiError> {
    let entries = body["Entries"].as_array().map(Vec::as_slice).unwrap_or(&[]);
    if entries.is_empty() || entries.len() > 10 {
        return Err(ApiError(
            StatusCode::BAD_REQUEST,
            format!(
                "1 validation error detected: Value at 'entries' failed to satisfy constraint: Member must have length between 1 and 10 (it has {})",
                entries.len()
            ),
        ));
    }
    let mut failed = 0;
    let mut results = Vec::new();
    for entry in entries {
        match crate::routing::custom_envelope(entry, &p.project.s3.region) {
            Ok(envelope) => {
                crate::routing::put_custom(p, &envelope)?;
                results.push(json!({"EventId": envelope["id"]}));
            }
            Err((code, message)) => {
                failed += 1;
                results.push(json!({"ErrorCode": code, "ErrorMessage": message}));
            }
        }
    }
    Ok(json!({"FailedEntryCount": failed, "Entries": results}))
}

async fn put_events(
    State(p): State<Arc<Platform>>,
    Json(body): Json<serde_json::Value>,
) -> Result<Json<serde_json::Value>, ApiError> {
    Ok(Json(put_events_answer(&p, &body)?))
}

/// The AWS JSON 1.1 protocol of EventBridge (PutEvents), as the AWS SDKs speak it.
async fn aws_json(
    State(p): State<Arc<Platform>>,
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let amz = |status: StatusCode, value: serde_json::Value| {
        (
            status,
            [(header::CONTENT_TYPE, "application/x-amz-json-1.1")],
            value.to_string(),
        )
            .into_response()
    };
    let target = headers
        .get("x-amz-target")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if target != "AWSEvents.PutEvents" {
        return amz(
            StatusCode::BAD_REQUEST,
            json!({"__type": "UnknownOperationException", "message": format!("sluice answers AWSEvents.PutEvents here, not {target:?}")}),
        );
    }
    let Ok(request) = serde_json::from_slice::<serde_json::Value>(&body) else {
        return amz(
            StatusCode::BAD_REQUEST,
            json!({"__type": "SerializationException", "message": "the body is not JSON"}),
        );
    };
    match put_events_answer(&p, &request) {
        Ok(answer) => amz(StatusCode::OK, answer),
        Err(ApiError(status, message)) => amz(
            status,
            json!({"__type": if status == StatusCode::BAD_REQUEST { "ValidationException" } else { "InternalException" }, "message": message}),
        ),
    }
}

async fn executions(
    State(p): State<Arc<Platform>>,
    Query(q): Query<Limit>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let list = p.executions.list_executions(q.limit.unwrap_or(100))?;
    Ok(Json(
        json!({"executions": list.iter().map(crate::workflows::execution_json).collect::<Vec<_>>()}),
    ))
}

async fn execution(
    State(p): State<Arc<Platform>>,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    Ok(Json(crate::workflows::execution_with_history(&p, &id)?))
}

/// Whether a maintenance request (compact, vacuum) may name `table`: the quarantine, or a
/// table of sluice.toml in one of the `layers` (404 for an unknown name, 400 saying `only`
/// for another layer).
fn maintained(p: &Platform, table: &str, layers: &[Layer], only: &str) -> Result<(), ApiError> {
    match p.project.tables.get(table) {
        None if table == crate::platform::QUARANTINE => Ok(()),
        None => Err(ApiError(
            StatusCode::NOT_FOUND,
            format!("no table {table:?}"),
        )),
        Some(t) if !layers.contains(&t.layer) => Err(ApiError(
            StatusCode::BAD_REQUEST,
            format!("{table} is a {} table; {only}", t.layer.as_str()),
        )),
        Some(_) => Ok(()),
    }
}

async fn compact(
    State(p): State<Arc<Platform>>,
    Path(table): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    maintained(
        &p,
        &table,
        &[Layer::Silver],
        "only silver tables are compacted",
    )?;
    let r = p
        .compact(&table, sluice_lake::compact::Scope::All)
        .await
        .map_err(|e| ApiError(StatusCode::SERVICE_UNAVAILABLE, format!("{e:#}")))?;
    Ok(Json(json!({
        "table": table, "partitions": r.partitions, "files_removed": r.files_removed,
        "files_added": r.files_added, "bytes_removed": r.bytes_removed, "version": r.version,
        "superseded": r.superseded,
    })))
}

#[derive(Deserialize)]
struct VacuumParams {
    /// How long retired files are kept (`24h`, `7d`); default: the table's retention.
    retain: Option<String>,
    #[serde(default)]
    dry_run: bool,
}

async fn vacuum(
    State(p): State<Arc<Platform>>,
    Path(table): Path<String>,
    Query(q): Query<VacuumParams>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let retain = match q.retain.as_deref() {
        None => None,
        Some(r) => Some(sluice_model::config::parse_duration(r).ok_or_else(|| {
            ApiError(
                StatusCode::BAD_REQUEST,
                format!("retain={r:?}: expected a duration such as 30m, 24h or 7d"),
            )
        })?),
    };
    maintained(
        &p,
        &table,
        &[Layer::Silver, Layer::Gold],
        "bronze tables keep objects, not Delta files",
    )?;
    let r = p
        .vacuum(
            &table,
            retain,
            sluice_lake::vacuum::Sweep::WithOrphans,
            q.dry_run,
        )
        .await
        .map_err(|e| ApiError(StatusCode::SERVICE_UNAVAILABLE, format!("{e:#}")))?
        .unwrap_or_default();
    Ok(Json(json!({
        "table": table, "dry_run": q.dry_run, "files": r.files.len(), "bytes": r.bytes,
        "retention_s": r.retention.as_secs(), "paths": r.files,
    })))
}
