//! The raw shape of `sluice.toml`, exactly as users write it.
//!
//! These structs are private to `config`: the rest of sluice sees only the
//! validated [`super::Project`]. Their doc comments are the reference:
//! `docs/config.md` is generated from them and a test fails when it drifts.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::Deserialize;

/// A sluice project: buckets, tables with their contracts, triggers and pipelines.
#[derive(Debug, Deserialize, JsonSchema)]
pub struct RawProject {
    /// Format version of this file. Must be `1`.
    pub version: u32,
    /// Project name, shown by `sluice up` and in logs.
    pub name: Option<String>,
    /// Directory holding objects, tables and state, relative to this file. Default `.sluice`. Overridden by `--data-dir` and `SLUICE_DATA_DIR`.
    pub data_dir: Option<String>,
    /// The HTTP API and the worker pool.
    #[serde(default)]
    pub server: RawServer,
    /// A local folder watched for new files, each uploaded as an object.
    pub watch: Option<RawWatch>,
    /// The S3-compatible endpoint of the landing zone.
    #[serde(default)]
    pub s3: RawS3,
    /// Buckets of the landing zone, by name (S3 naming rules).
    #[serde(default)]
    pub buckets: BTreeMap<String, RawBucket>,
    /// Tables by name. Silver tables have a contract; gold tables are SQL models; bronze tables archive raw objects.
    #[serde(default)]
    pub tables: BTreeMap<String, RawTable>,
    /// Triggers by name: which events start which pipeline.
    #[serde(default)]
    pub triggers: BTreeMap<String, RawTrigger>,
    /// Pipelines by name: ordered steps, retry policy and acceptance thresholds.
    #[serde(default)]
    pub pipelines: BTreeMap<String, RawPipeline>,
    /// Workflows by name: Step Functions definitions (Amazon States Language), run unchanged.
    #[serde(default)]
    pub workflows: BTreeMap<String, RawWorkflow>,
    /// Schedules by name: cron or rate expressions that start a workflow with a fixed input.
    #[serde(default)]
    pub schedules: BTreeMap<String, RawSchedule>,
    /// Event rules by name: EventBridge event patterns that start a workflow with the matching event as its input.
    #[serde(default)]
    pub rules: BTreeMap<String, RawRule>,
}

/// The HTTP API and the worker pool.
#[derive(Debug, Default, Deserialize, JsonSchema)]
pub struct RawServer {
    /// Address to bind. Default `127.0.0.1`.
    pub bind: Option<String>,
    /// Port of the HTTP API (`/v1/objects`, `/v1/query`). Default 8080; 0 picks a free port. Overridden by `--http-port`.
    pub http_port: Option<u16>,
    /// How many jobs run at once. Default: the number of CPU cores.
    pub workers: Option<usize>,
    /// How long the rows of small objects may wait in a table's write-ahead tail (durable on disk, answered by SQL at once) before they are committed to the Delta table, which is when readers of the Delta files themselves (DuckDB, Spark) see them, e.g. `"500ms"`, `"5s"`. `"0s"` commits each ingest to Delta before it completes. Default `"1s"`.
    pub flush_interval: Option<String>,
    /// How long `POST /v1/query` waits for the small objects (up to 4 MiB) acknowledged before it to be ingested, so that a client that uploads and then queries sees its rows without polling, e.g. `"100ms"`, `"2s"`. When it runs out, the query answers from what is there. Only objects written through this server count. A query that reads one silver table filtered to named objects (`WHERE _source_object = 'raw/a.csv'`) waits for those objects alone. `"0s"` answers at once. Default `"250ms"`.
    pub read_after_write: Option<String>,
    /// How often `sluice up` deletes the data files each silver and gold table (and the quarantine) retired longer than its `retention` ago, e.g. `"10m"`, `"1h"`; the first pass runs a minute after start. The first pass, and one a day after it, also deletes orphans (files no commit names, older than the retention and an hour), which means listing every file of every table. `"0s"` turns it off (`sluice vacuum` still works). Default `"1h"`.
    pub vacuum_interval: Option<String>,
}

/// The S3-compatible endpoint: the aws CLI, boto3, rclone and DuckDB use the landing zone unchanged.
#[derive(Debug, Default, Deserialize, JsonSchema)]
pub struct RawS3 {
    /// Port of the S3 endpoint. Default 9000; 0 picks a free port. Overridden by `--s3-port`.
    pub port: Option<u16>,
    /// Region reported to clients and used in signatures. Default `us-east-1`.
    pub region: Option<String>,
    /// Access keys (AWS Signature Version 4). `SLUICE_S3_ACCESS_KEY_ID` and `SLUICE_S3_SECRET_ACCESS_KEY`, when set, add one more key with read-write access to every bucket.
    #[serde(default)]
    pub keys: Vec<RawS3Key>,
}

/// One access key of the S3 endpoint.
#[derive(Debug, Deserialize, JsonSchema)]
pub struct RawS3Key {
    /// The access key id, e.g. `SLUICEEXAMPLE1234567`.
    pub access_key_id: String,
    /// The secret access key. Keep the file private, or use `secret_access_key_env` instead.
    pub secret_access_key: Option<String>,
    /// Name of an environment variable holding the secret access key.
    pub secret_access_key_env: Option<String>,
    /// Access to buckets not named in `buckets`: `read-write` (default), `read-only` or `none`.
    pub access: Option<String>,
    /// Access per bucket, e.g. `{ raw = "read-write", curated = "read-only" }`.
    #[serde(default)]
    pub buckets: BTreeMap<String, String>,
}

/// A local folder whose new files are uploaded as objects (then moved to `<dir>/.done/`).
#[derive(Debug, Deserialize, JsonSchema)]
pub struct RawWatch {
    /// Folder to watch, relative to this file.
    pub dir: String,
    /// Bucket the files are written to.
    pub bucket: String,
    /// Key prefix put in front of each file's path relative to `dir`. Default empty.
    pub prefix: Option<String>,
}

/// A bucket of the landing zone.
#[derive(Debug, Default, Deserialize, JsonSchema)]
pub struct RawBucket {
    /// What the bucket holds.
    pub description: Option<String>,
}

/// A table of the lakehouse.
#[derive(Debug, Deserialize, JsonSchema)]
pub struct RawTable {
    /// `bronze` (raw objects, kept immutable), `silver` (validated rows, needs columns) or `gold` (a SQL model, needs `sql`).
    pub layer: String,
    /// What the table holds, for the catalog.
    pub description: Option<String>,
    /// Who owns the table, for the catalog.
    pub owner: Option<String>,
    /// Version of the table's schema. A change that breaks compatibility with the registered schema must raise it; the new version starts a new table.
    pub schema_version: Option<u32>,
    /// Partition columns, in order (contract or derived columns).
    #[serde(default)]
    pub partition_by: Vec<String>,
    /// How source files are read (silver tables).
    #[serde(default)]
    pub format: RawFormat,
    /// Regex with named groups matched against the object key; each group `g` becomes a text column `_key_g` usable in expressions and checks.
    pub key_fields: Option<String>,
    /// Source columns of a silver table, in order.
    #[serde(default)]
    pub columns: Vec<RawColumn>,
    /// Columns computed with SQL expressions after casting, in order.
    #[serde(default)]
    pub derive: Vec<RawDerived>,
    /// Row checks spanning columns: SQL boolean expressions; false sends the row to quarantine.
    #[serde(default)]
    pub checks: Vec<RawCheck>,
    /// Columns whose combination must be unique within one source object.
    #[serde(default)]
    pub unique: Vec<String>,
    /// Gold tables: the model's SQL (a SELECT), inline.
    pub sql: Option<String>,
    /// Gold tables: a file holding the model's SQL, relative to this file.
    pub sql_file: Option<String>,
    /// Silver and gold tables: how long a data file that a commit retired (compaction, a replaced or removed object, a gold refresh) stays on disk, readable by time travel and by queries still on an older version, before `sluice up` deletes it (its hourly vacuum; `sluice vacuum` on request), e.g. `"24h"`, `"7d"`. Default `"7d"`, Delta's own.
    pub retention: Option<String>,
}

/// How source files are read.
#[derive(Debug, Default, Deserialize, JsonSchema)]
pub struct RawFormat {
    /// CSV field delimiter, one character. Default `,`.
    pub delimiter: Option<String>,
    /// CSV quote character, one character. Default `"`.
    pub quote: Option<String>,
    /// Values read as empty (null) besides the empty string, e.g. `["NA", "\\N"]`.
    #[serde(default)]
    pub null_values: Vec<String>,
}

/// A source column: its type and its rules.
#[derive(Debug, Deserialize, JsonSchema)]
pub struct RawColumn {
    /// Column name in the table.
    pub name: String,
    /// `string`, `int`, `float`, `decimal(P,S)`, `bool`, `date` or `timestamp`.
    #[serde(rename = "type")]
    pub ty: String,
    /// Header names in source files that map to this column (case-insensitive, spaces trimmed). The column's own name always matches.
    #[serde(default)]
    pub source: Vec<String>,
    /// Whether empty values are allowed. Default true.
    pub nullable: Option<bool>,
    /// Whether a file may lack this column entirely (it is then null). Default: same as `nullable`.
    pub optional: Option<bool>,
    /// Inclusive minimum (numeric types).
    pub min: Option<f64>,
    /// Inclusive maximum (numeric types).
    pub max: Option<f64>,
    /// The only values allowed (compared as text after `map`).
    #[serde(default)]
    pub allowed: Vec<String>,
    /// Regex the raw text must match entirely.
    pub pattern: Option<String>,
    /// chrono formats for `date`/`timestamp`, tried in order, e.g. `"%Y-%m-%d %H:%M:%S"`. Default: ISO 8601.
    #[serde(default)]
    pub format: Vec<String>,
    /// IANA time zone of timestamps that carry none, e.g. `America/New_York`. Default UTC.
    pub timezone: Option<String>,
    /// Raw values to replace before casting, e.g. `{ CSH = "2", CRD = "1" }` (keys case-insensitive).
    #[serde(default)]
    pub map: BTreeMap<String, String>,
    /// What the column means, for the catalog.
    pub description: Option<String>,
}

/// A derived column.
#[derive(Debug, Deserialize, JsonSchema)]
pub struct RawDerived {
    /// Column name in the table.
    pub name: String,
    /// SQL expression (DataFusion dialect) over contract columns, earlier derived columns, `_source_object`, `_source_line` and `_key_*` columns.
    pub expr: String,
}

/// A row check.
#[derive(Debug, Deserialize, JsonSchema)]
pub struct RawCheck {
    /// Short name; it is the quarantine reason code.
    pub name: String,
    /// SQL boolean expression. A row where it is false is quarantined; NULL passes, like a SQL CHECK.
    pub expr: String,
    /// What a person reads in quarantine. Default: `check <name> failed: <expr>`.
    pub message: Option<String>,
}

/// Which events start which pipeline.
#[derive(Debug, Deserialize, JsonSchema)]
pub struct RawTrigger {
    /// Event kind: `object-created` or `object-removed`.
    pub on: String,
    /// Bucket the object must be in.
    pub bucket: String,
    /// Key prefix the object must have. Default: any.
    pub prefix: Option<String>,
    /// Key suffix the object must have, e.g. `.csv`. Default: any.
    pub suffix: Option<String>,
    /// Pipeline to run.
    pub pipeline: String,
}

/// An ordered list of steps run for one event.
#[derive(Debug, Deserialize, JsonSchema)]
pub struct RawPipeline {
    /// Steps in order: `{ ingest = "TABLE" }` validates the object into a silver table (archiving it to bronze when `bronze = "TABLE"` names a bronze table); `{ refresh = "TABLE" }` recomputes a gold model.
    pub steps: Vec<RawStep>,
    /// Retry policy for failed attempts.
    #[serde(default)]
    pub retry: RawRetry,
    /// Thresholds that fail a run.
    #[serde(default)]
    pub acceptance: RawAcceptance,
}

/// One step of a pipeline.
#[derive(Debug, Deserialize, JsonSchema)]
pub struct RawStep {
    /// Silver table to validate the triggering object into.
    pub ingest: Option<String>,
    /// Bronze table to archive the raw object into (with `ingest`).
    pub bronze: Option<String>,
    /// Gold table to recompute.
    pub refresh: Option<String>,
}

/// Retry policy: exponential backoff with jitter, then the dead-letter queue.
#[derive(Debug, Default, Deserialize, JsonSchema)]
pub struct RawRetry {
    /// Attempts in all, including the first. Default 3.
    pub max_attempts: Option<u32>,
    /// Delay before the second attempt, e.g. `"500ms"`, `"2s"`. Default `"1s"`.
    pub backoff: Option<String>,
    /// Upper bound on the delay between attempts. Default `"60s"`.
    pub max_backoff: Option<String>,
}

/// Thresholds that fail a run (nothing reaches silver; the quarantine is kept).
#[derive(Debug, Default, Deserialize, JsonSchema)]
pub struct RawAcceptance {
    /// Largest share of invalid rows, in percent, that still lets the run publish. Default 100 (never fail).
    pub max_invalid_pct: Option<f64>,
}

/// A Step Functions workflow: its definition in Amazon States Language, as AWS takes it.
#[derive(Debug, Deserialize, JsonSchema)]
pub struct RawWorkflow {
    /// The definition file (JSON), relative to this file, e.g. `flows/nightly.asl.json`.
    pub definition: String,
    /// What the workflow does, for people.
    pub description: Option<String>,
}

/// A schedule: a cron or rate expression that starts a workflow with a fixed input.
#[derive(Debug, Deserialize, JsonSchema)]
pub struct RawSchedule {
    /// `cron(0 4 * * ? *)` (EventBridge's six fields: minutes hours day-of-month month day-of-week year), `rate(1 hour)`, or a five-field crontab line `0 4 * * *`.
    pub expression: String,
    /// IANA time zone the expression is read in, e.g. `America/New_York`. Default `UTC`.
    pub timezone: Option<String>,
    /// Workflow to start: a name under `[workflows]` (or give `pipeline`).
    pub workflow: Option<String>,
    /// Pipeline to run instead: one that only refreshes gold tables (one that ingests needs an object; give it one in a workflow's `sluice:pipeline:NAME` task).
    pub pipeline: Option<String>,
    /// The execution's input, as JSON text. Default `{}`.
    pub input: Option<String>,
    /// Ticks missed while sluice was down: `skip` them (default) or `catch-up`, oldest first.
    pub missed: Option<String>,
    /// With `missed = "catch-up"`: at most this many missed ticks run, the newest. Default 10.
    pub catch_up_limit: Option<usize>,
}

/// An event rule: events matching an EventBridge event pattern start a workflow, with the event as its input.
///
/// Events are shaped as EventBridge delivers them: objects written and deleted are `source = "aws.s3"`, `detail-type = "Object Created"` / `"Object Deleted"` with `detail.bucket.name` and `detail.object.key`; executions ending are `source = "aws.states"`, `detail-type = "Step Functions Execution Status Change"`; custom events come from `POST /v1/events`.
#[derive(Debug, Deserialize, JsonSchema)]
pub struct RawRule {
    /// The event pattern (JSON text), e.g. `'{"source": ["aws.s3"], "detail": {"bucket": {"name": ["raw"]}}}'`.
    pub pattern: String,
    /// Workflow to start: a name under `[workflows]` (or give `pipeline`).
    pub workflow: Option<String>,
    /// Pipeline to run instead, on the object of the event (or, for one that only refreshes gold tables, on any event).
    pub pipeline: Option<String>,
    /// What the rule is for, for people.
    pub description: Option<String>,
}
