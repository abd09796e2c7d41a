//! `sluice.toml`: parse everything, validate everything, then hand out a [`Project`].
//!
//! Two phases, as in ripgrep and vector: the raw TOML is deserialized into
//! the private structs of [`raw`] (collecting every unknown field rather than
//! stopping at the first), then [`Project::parse`] checks names, references,
//! types, expressions' targets and regexes, and reports every problem at once
//! as `sluice.toml:LINE:COL: what and why`. Callers only ever see a
//! [`Project`] whose references resolve.

mod raw;
mod reference;

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::time::Duration;

use crate::contract::{Check, Column, ColumnType, Contract, Derived};
use crate::event::EventKind;
use crate::key::BucketName;

pub use reference::reference_markdown;

/// The one supported format version of `sluice.toml`.
pub const FORMAT_VERSION: u32 = 1;

/// One problem in a project file, with its position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// File name as given to [`Project::parse`].
    pub file: String,
    /// 1-based line (0 when unknown).
    pub line: usize,
    /// 1-based column (0 when unknown).
    pub column: usize,
    /// What is wrong and why.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{}: {}", self.file, self.message)
        } else {
            write!(
                f,
                "{}:{}:{}: {}",
                self.file, self.line, self.column, self.message
            )
        }
    }
}

/// Every problem found in a project file; never empty.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct Problems(pub Vec<Problem>);

impl fmt::Display for Problems {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{p}")?;
        }
        Ok(())
    }
}

/// The layer a table belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Layer {
    /// Raw objects, archived unchanged.
    Bronze,
    /// Validated, typed rows.
    Silver,
    /// SQL models over other tables.
    Gold,
}

impl Layer {
    /// The schema name used in SQL (`bronze`, `silver`, `gold`).
    pub fn as_str(self) -> &'static str {
        match self {
            Layer::Bronze => "bronze",
            Layer::Silver => "silver",
            Layer::Gold => "gold",
        }
    }
}

/// How source files are read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Format {
    /// CSV field delimiter.
    pub delimiter: u8,
    /// CSV quote character.
    pub quote: u8,
    /// Extra spellings of null.
    pub null_values: Vec<String>,
}

impl Default for Format {
    fn default() -> Self {
        Self {
            delimiter: b',',
            quote: b'"',
            null_values: Vec::new(),
        }
    }
}

/// A validated table.
#[derive(Debug, Clone, PartialEq)]
pub struct Table {
    /// Table name (unique across layers).
    pub name: String,
    /// Its layer.
    pub layer: Layer,
    /// Catalog description.
    pub description: Option<String>,
    /// Catalog owner.
    pub owner: Option<String>,
    /// Schema version (starts at 1).
    pub schema_version: u32,
    /// Partition columns.
    pub partition_by: Vec<String>,
    /// Reader options.
    pub format: Format,
    /// The contract (silver tables).
    pub contract: Option<Contract>,
    /// The model's SQL (gold tables).
    pub sql: Option<String>,
    /// How long files its commits retired stay on disk before a vacuum deletes them.
    pub retention: Duration,
}

/// A table's retention when `sluice.toml` sets none: Delta's own default
/// (`delta.deletedFileRetentionDuration`).
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);

/// A validated trigger.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trigger {
    /// Trigger name.
    pub name: String,
    /// Event kind it reacts to.
    pub on: EventKind,
    /// Bucket.
    pub bucket: String,
    /// Key prefix ("" = any).
    pub prefix: String,
    /// Key suffix ("" = any).
    pub suffix: String,
    /// Pipeline it starts.
    pub pipeline: String,
}

impl Trigger {
    /// Whether an event of this kind on this object should start the pipeline.
    pub fn matches(&self, kind: EventKind, bucket: &str, key: &str) -> bool {
        self.on == kind
            && self.bucket == bucket
            && key.starts_with(&self.prefix)
            && key.ends_with(&self.suffix)
    }
}

/// A pipeline step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Validate the triggering object into a silver table, optionally archiving it to a bronze table first.
    Ingest {
        /// Silver table.
        table: String,
        /// Bronze table, if any.
        bronze: Option<String>,
    },
    /// Recompute a gold model.
    Refresh {
        /// Gold table.
        table: String,
    },
}

/// Retry policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Retry {
    /// Attempts in all.
    pub max_attempts: u32,
    /// First delay.
    pub backoff: Duration,
    /// Largest delay.
    pub max_backoff: Duration,
}

impl Default for Retry {
    fn default() -> Self {
        Self {
            max_attempts: 3,
            backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(60),
        }
    }
}

impl Retry {
    /// Delay before attempt `attempt + 1` (attempt counts from 1), before jitter: backoff × 2^(attempt-1), capped.
    pub fn delay_after(&self, attempt: u32) -> Duration {
        let factor = 2u32.saturating_pow(attempt.saturating_sub(1).min(20));
        self.backoff.saturating_mul(factor).min(self.max_backoff)
    }
}

/// A validated pipeline.
#[derive(Debug, Clone, PartialEq)]
pub struct Pipeline {
    /// Pipeline name.
    pub name: String,
    /// Steps in order.
    pub steps: Vec<Step>,
    /// Retry policy.
    pub retry: Retry,
    /// Largest invalid share (0..=100) that still publishes.
    pub max_invalid_pct: f64,
}

/// A watched folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Watch {
    /// Folder, relative to the project file.
    pub dir: String,
    /// Target bucket.
    pub bucket: String,
    /// Key prefix.
    pub prefix: String,
}

/// Server settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Server {
    /// Bind address.
    pub bind: String,
    /// HTTP port (0 = pick one).
    pub http_port: u16,
    /// Worker pool size (None = number of cores).
    pub workers: Option<usize>,
    /// How long small objects' rows may wait in a table's tail before their Delta commit
    /// (zero: each ingest commits to Delta itself).
    pub flush_interval: Duration,
    /// How long a query waits for small objects acknowledged before it to be ingested
    /// (zero: it does not wait).
    pub read_after_write: Duration,
    /// How often `sluice up` vacuums its tables (zero: never).
    pub vacuum_interval: Duration,
}

/// What an access key may do with a bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Access {
    /// Nothing.
    None,
    /// List and read.
    ReadOnly,
    /// List, read, write and delete.
    ReadWrite,
}

impl Access {
    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "none" => Access::None,
            "read-only" => Access::ReadOnly,
            "read-write" => Access::ReadWrite,
            _ => return None,
        })
    }
}

/// Where a secret comes from.
#[derive(Clone, PartialEq, Eq)]
pub enum Secret {
    /// Written in sluice.toml.
    Inline(String),
    /// Read from this environment variable at start-up.
    Env(String),
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Secrets never reach a log line.
        match self {
            Secret::Inline(_) => f.write_str("Inline(<redacted>)"),
            Secret::Env(name) => write!(f, "Env({name})"),
        }
    }
}

/// An access key of the S3 endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Key {
    /// Access key id.
    pub access_key_id: String,
    /// Secret access key.
    pub secret: Secret,
    /// Access to buckets not listed.
    pub default_access: Access,
    /// Access per bucket.
    pub buckets: BTreeMap<String, Access>,
}

impl S3Key {
    /// This key's access to a bucket.
    pub fn access_to(&self, bucket: &str) -> Access {
        self.buckets
            .get(bucket)
            .copied()
            .unwrap_or(self.default_access)
    }
}

/// The S3 endpoint's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3 {
    /// Port (0 = pick one).
    pub port: u16,
    /// Region.
    pub region: String,
    /// Access keys.
    pub keys: Vec<S3Key>,
}

/// A validated project: every name resolves, every type parses.
#[derive(Debug, Clone, PartialEq)]
pub struct Project {
    /// Project name.
    pub name: String,
    /// Data directory, relative to the project file.
    pub data_dir: String,
    /// Server settings.
    pub server: Server,
    /// Watched folder.
    pub watch: Option<Watch>,
    /// The S3 endpoint.
    pub s3: S3,
    /// Buckets by name, with descriptions.
    pub buckets: BTreeMap<String, Option<String>>,
    /// Tables by name.
    pub tables: BTreeMap<String, Table>,
    /// Triggers by name.
    pub triggers: BTreeMap<String, Trigger>,
    /// Pipelines by name.
    pub pipelines: BTreeMap<String, Pipeline>,
    /// Workflows by name.
    pub workflows: BTreeMap<String, Workflow>,
    /// Schedules by name.
    pub schedules: BTreeMap<String, ScheduleSpec>,
    /// Event rules by name.
    pub rules: BTreeMap<String, Rule>,
}

/// A validated event rule.
#[derive(Debug, Clone)]
pub struct Rule {
    /// Rule name.
    pub name: String,
    /// The pattern as written.
    pub pattern_text: String,
    /// The compiled pattern.
    pub pattern: sluice_rules::Pattern,
    /// The workflow a matching event starts.
    pub workflow: String,
    /// What the rule is for.
    pub description: Option<String>,
}

impl PartialEq for Rule {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name
            && self.pattern_text == other.pattern_text
            && self.workflow == other.workflow
    }
}

/// A workflow: a Step Functions definition (validated by sluice-flow when the project opens).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Workflow {
    /// Workflow name.
    pub name: String,
    /// The definition file, relative to the project file.
    pub file: String,
    /// The definition's text.
    pub definition: String,
    /// What it does.
    pub description: Option<String>,
}

/// What a schedule does with ticks missed while sluice was down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Missed {
    /// They do not run.
    Skip,
    /// They run, oldest first, at most this many (the newest).
    CatchUp(usize),
}

/// A validated schedule.
#[derive(Debug, Clone)]
pub struct ScheduleSpec {
    /// Schedule name.
    pub name: String,
    /// When it ticks.
    pub schedule: crate::schedule::Schedule,
    /// The workflow each tick starts.
    pub workflow: String,
    /// The input each execution gets.
    pub input: serde_json::Value,
    /// What happens to missed ticks.
    pub missed: Missed,
}

impl PartialEq for ScheduleSpec {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name
            && self.schedule.expression() == other.schedule.expression()
            && self.schedule.timezone() == other.schedule.timezone()
            && self.workflow == other.workflow
            && self.input == other.input
            && self.missed == other.missed
    }
}

type Path = Vec<Seg>;

#[derive(Debug, Clone)]
enum Seg {
    Key(String),
    Index(usize),
}

fn key(s: &str) -> Seg {
    Seg::Key(s.to_string())
}

/// Collects problems by path; positions are resolved at the end.
struct Collector {
    problems: Vec<(Path, String)>,
}

impl Collector {
    fn add(&mut self, path: Path, message: impl Into<String>) {
        self.problems.push((path, message.into()));
    }
}

impl Project {
    /// Parses and validates a project file. `read_file` loads files the project refers to (gold SQL), relative to the project file.
    pub fn parse(
        text: &str,
        file: &str,
        read_file: &dyn Fn(&str) -> Result<String, String>,
    ) -> Result<Project, Problems> {
        let (spanned, syntax_errors) = toml::de::DeTable::parse_recoverable(text);
        let at = |span: Option<std::ops::Range<usize>>, message: String| {
            let (line, column) = span.map(|s| line_col(text, s.start)).unwrap_or((0, 0));
            Problem {
                file: file.to_string(),
                line,
                column,
                message,
            }
        };
        if !syntax_errors.is_empty() {
            return Err(Problems(
                syntax_errors
                    .into_iter()
                    .map(|e| at(e.span(), first_line(e.message())))
                    .collect(),
            ));
        }
        let mut unknown: Vec<Path> = Vec::new();
        let mut type_errors: Vec<Problem> = Vec::new();
        let raw = deserialize_piecewise(&spanned, &mut unknown, &mut |span, message| {
            type_errors.push(at(span, message))
        });
        let locate = |path: &Path| locate(spanned.get_ref(), path, spanned.span());
        let mut problems: Vec<Problem> = unknown
            .iter()
            .map(|path| {
                at(
                    locate(path),
                    format!("unknown field `{}`", path_string(path)),
                )
            })
            .collect();
        problems.extend(type_errors);
        let Some(raw) = raw else {
            problems.sort_by_key(|p| (p.line, p.column));
            return Err(Problems(problems));
        };
        let mut collector = Collector {
            problems: Vec::new(),
        };
        let project = validate(raw, &mut collector, read_file);
        problems.extend(
            collector
                .problems
                .into_iter()
                .map(|(path, message)| at(locate(&path), message)),
        );
        if problems.is_empty() {
            Ok(project)
        } else {
            problems.sort_by_key(|p| (p.line, p.column));
            Err(Problems(problems))
        }
    }

    /// Pipelines whose triggers match an event.
    pub fn pipelines_for(&self, kind: EventKind, bucket: &str, key: &str) -> Vec<&Trigger> {
        self.triggers
            .values()
            .filter(|t| t.matches(kind, bucket, key))
            .collect()
    }

    /// Gold tables a pipeline refreshes, in order.
    pub fn table(&self, name: &str) -> Option<&Table> {
        self.tables.get(name)
    }
}

/// The sections whose entries are deserialized one by one, so that a wrong type in one
/// entry does not hide the problems of the others.
const ENTRY_SECTIONS: [&str; 7] = [
    "buckets",
    "tables",
    "triggers",
    "pipelines",
    "workflows",
    "schedules",
    "rules",
];

/// Deserializes the project entry by entry, reporting every type error (serde stops at the
/// first one it meets, so each table, trigger and pipeline gets its own deserializer).
fn deserialize_piecewise(
    spanned: &toml::Spanned<toml::de::DeTable<'_>>,
    unknown: &mut Vec<Path>,
    report: &mut dyn FnMut(Option<std::ops::Range<usize>>, String),
) -> Option<raw::RawProject> {
    use serde::de::DeserializeOwned;
    use toml::de::{DeTable, DeValue};

    fn entry<T: DeserializeOwned>(
        table: &DeTable<'_>,
        span: std::ops::Range<usize>,
        prefix: &[Seg],
        unknown: &mut Vec<Path>,
    ) -> Result<T, toml::de::Error> {
        let deserializer = toml::de::Deserializer::from(toml::Spanned::new(span, table.clone()));
        serde_ignored::deserialize(deserializer, |path| {
            let mut full = prefix.to_vec();
            full.extend(ignored_path(&path));
            unknown.push(full);
        })
    }

    let mut top = DeTable::new();
    let mut sections: Vec<(String, &toml::Spanned<DeValue<'_>>)> = Vec::new();
    for (k, v) in spanned.get_ref().iter() {
        if ENTRY_SECTIONS.contains(&k.get_ref().as_ref()) {
            sections.push((k.get_ref().to_string(), v));
        } else {
            top.insert(k.clone(), v.clone());
        }
    }
    let mut ok = true;
    let mut project: Option<raw::RawProject> = match entry(&top, spanned.span(), &[], unknown) {
        Ok(p) => Some(p),
        Err(e) => {
            report(e.span(), first_line(e.message()));
            ok = false;
            None
        }
    };
    for (section, value) in sections {
        let DeValue::Table(entries) = value.get_ref() else {
            report(Some(value.span()), format!("`{section}` must be a table"));
            ok = false;
            continue;
        };
        for (name, v) in entries.iter() {
            let name = name.get_ref().to_string();
            let prefix = [Seg::Key(section.clone()), Seg::Key(name.clone())];
            let DeValue::Table(t) = v.get_ref() else {
                report(
                    Some(v.span()),
                    format!("`{section}.{name}` must be a table"),
                );
                ok = false;
                continue;
            };
            let span = v.span();
            let result = match section.as_str() {
                "buckets" => entry::<raw::RawBucket>(t, span, &prefix, unknown).map(|b| {
                    if let Some(p) = project.as_mut() {
                        p.buckets.insert(name.clone(), b);
                    }
                }),
                "tables" => entry::<raw::RawTable>(t, span, &prefix, unknown).map(|b| {
                    if let Some(p) = project.as_mut() {
                        p.tables.insert(name.clone(), b);
                    }
                }),
                "triggers" => entry::<raw::RawTrigger>(t, span, &prefix, unknown).map(|b| {
                    if let Some(p) = project.as_mut() {
                        p.triggers.insert(name.clone(), b);
                    }
                }),
                "workflows" => entry::<raw::RawWorkflow>(t, span, &prefix, unknown).map(|b| {
                    if let Some(p) = project.as_mut() {
                        p.workflows.insert(name.clone(), b);
                    }
                }),
                "schedules" => entry::<raw::RawSchedule>(t, span, &prefix, unknown).map(|b| {
                    if let Some(p) = project.as_mut() {
                        p.schedules.insert(name.clone(), b);
                    }
                }),
                "rules" => entry::<raw::RawRule>(t, span, &prefix, unknown).map(|b| {
                    if let Some(p) = project.as_mut() {
                        p.rules.insert(name.clone(), b);
                    }
                }),
                _ => entry::<raw::RawPipeline>(t, span, &prefix, unknown).map(|b| {
                    if let Some(p) = project.as_mut() {
                        p.pipelines.insert(name.clone(), b);
                    }
                }),
            };
            if let Err(e) = result {
                report(
                    e.span(),
                    format!("{section}.{name}: {}", first_line(e.message())),
                );
                ok = false;
            }
        }
    }
    if ok { project } else { None }
}

fn first_line(message: &str) -> String {
    message
        .trim()
        .lines()
        .next()
        .unwrap_or("")
        .trim()
        .to_string()
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let col = before
        .rsplit('\n')
        .next()
        .map(|l| l.chars().count())
        .unwrap_or(0)
        + 1;
    (line, col)
}

fn ignored_path(path: &serde_ignored::Path<'_>) -> Path {
    use serde_ignored::Path as P;
    let mut segs = match path {
        P::Root => return Vec::new(),
        P::Seq { parent, .. }
        | P::Map { parent, .. }
        | P::Some { parent }
        | P::NewtypeStruct { parent }
        | P::NewtypeVariant { parent } => ignored_path(parent),
    };
    match path {
        P::Seq { index, .. } => segs.push(Seg::Index(*index)),
        P::Map { key, .. } => segs.push(Seg::Key(key.clone())),
        _ => {}
    }
    segs
}

fn path_string(path: &Path) -> String {
    let mut s = String::new();
    for seg in path {
        match seg {
            Seg::Key(k) => {
                if !s.is_empty() {
                    s.push('.');
                }
                s.push_str(k);
            }
            Seg::Index(i) => s.push_str(&format!("[{i}]")),
        }
    }
    s
}

/// The span of the deepest part of `path` that exists: the key for a table entry, the element for an array index.
fn locate(
    root: &toml::de::DeTable<'_>,
    path: &Path,
    root_span: std::ops::Range<usize>,
) -> Option<std::ops::Range<usize>> {
    use toml::de::DeValue;
    let mut span = root_span;
    let mut table = Some(root);
    let mut array: Option<&toml::de::DeArray<'_>> = None;
    for seg in path {
        let value = match seg {
            Seg::Key(k) => {
                let (name, value) = table?.iter().find(|(name, _)| name.get_ref() == k)?;
                span = name.span();
                value
            }
            Seg::Index(i) => {
                let value = array?.get(*i)?;
                span = value.span();
                value
            }
        };
        table = None;
        array = None;
        match value.get_ref() {
            DeValue::Table(t) => table = Some(t),
            DeValue::Array(a) => array = Some(a),
            _ => {}
        }
    }
    Some(span)
}

/// A duration as `sluice.toml` and the CLI spell it: a number and a unit, `ms`, `s`, `m`
/// (or `min`), `h` or `d` (`"500ms"`, `"1.5s"`, `"168h"`, `"7d"`).
pub fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit() && c != '.')?);
    let n: f64 = num.parse().ok()?;
    let secs = match unit.trim() {
        "ms" => n / 1000.0,
        "s" => n,
        "m" | "min" => n * 60.0,
        "h" => n * 3600.0,
        "d" => n * 86400.0,
        _ => return None,
    };
    (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs))
}

fn one_char(s: &str) -> Option<u8> {
    let bytes = s.as_bytes();
    (bytes.len() == 1 && bytes[0].is_ascii()).then(|| bytes[0])
}

fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

fn validate(
    raw: raw::RawProject,
    c: &mut Collector,
    read_file: &dyn Fn(&str) -> Result<String, String>,
) -> Project {
    if raw.version != FORMAT_VERSION {
        c.add(
            vec![key("version")],
            format!(
                "unsupported version {} (this sluice reads version {FORMAT_VERSION})",
                raw.version
            ),
        );
    }
    let mut server = Server {
        bind: raw.server.bind.unwrap_or_else(|| "127.0.0.1".to_string()),
        http_port: raw.server.http_port.unwrap_or(8080),
        workers: raw.server.workers,
        flush_interval: Duration::from_secs(1),
        read_after_write: Duration::from_millis(250),
        vacuum_interval: Duration::from_secs(3600),
    };
    for (name, value, field) in [
        (
            "flush_interval",
            &raw.server.flush_interval,
            &mut server.flush_interval,
        ),
        (
            "read_after_write",
            &raw.server.read_after_write,
            &mut server.read_after_write,
        ),
        (
            "vacuum_interval",
            &raw.server.vacuum_interval,
            &mut server.vacuum_interval,
        ),
    ] {
        let Some(v) = value else { continue };
        match parse_duration(v) {
            Some(d) => *field = d,
            None => c.add(
                vec![key("server"), key(name)],
                format!("{name} {v:?} is not a duration (e.g. \"500ms\", \"2s\", \"1m\")"),
            ),
        }
    }
    if server.workers == Some(0) {
        c.add(
            vec![key("server"), key("workers")],
            "workers must be at least 1",
        );
    }
    if server.bind.parse::<std::net::IpAddr>().is_err() {
        c.add(
            vec![key("server"), key("bind")],
            format!("bind {:?} is not an IP address", server.bind),
        );
    }

    let mut buckets = BTreeMap::new();
    for (name, bucket) in raw.buckets {
        if let Err(e) = BucketName::parse(&name) {
            c.add(vec![key("buckets"), key(&name)], e.to_string());
        }
        buckets.insert(name, bucket.description);
    }

    let watch = raw.watch.map(|w| {
        if !buckets.contains_key(&w.bucket) {
            c.add(
                vec![key("watch"), key("bucket")],
                format!("watch.bucket {:?} is not a declared bucket", w.bucket),
            );
        }
        Watch {
            dir: w.dir,
            bucket: w.bucket,
            prefix: w.prefix.unwrap_or_default(),
        }
    });

    let mut keys = Vec::new();
    let mut key_ids = HashSet::new();
    for (i, k) in raw.s3.keys.iter().enumerate() {
        let here = |field: &str| vec![key("s3"), key("keys"), Seg::Index(i), key(field)];
        if k.access_key_id.len() < 3 || !k.access_key_id.chars().all(|c| c.is_ascii_alphanumeric())
        {
            c.add(
                here("access_key_id"),
                "access_key_id must be at least 3 letters or digits",
            );
        }
        if !key_ids.insert(k.access_key_id.clone()) {
            c.add(
                here("access_key_id"),
                format!("access key {:?} is declared twice", k.access_key_id),
            );
        }
        let secret = match (&k.secret_access_key, &k.secret_access_key_env) {
            (Some(s), None) if s.len() >= 8 => Secret::Inline(s.clone()),
            (Some(_), None) => {
                c.add(
                    here("secret_access_key"),
                    "secret_access_key must be at least 8 characters",
                );
                Secret::Inline(String::new())
            }
            (None, Some(var)) => Secret::Env(var.clone()),
            _ => {
                c.add(
                    vec![key("s3"), key("keys"), Seg::Index(i)],
                    "a key needs exactly one of secret_access_key or secret_access_key_env",
                );
                Secret::Inline(String::new())
            }
        };
        let default_access = match k.access.as_deref().map(Access::parse) {
            None => Access::ReadWrite,
            Some(Some(a)) => a,
            Some(None) => {
                c.add(
                    here("access"),
                    "access must be read-write, read-only or none",
                );
                Access::None
            }
        };
        let mut per_bucket = BTreeMap::new();
        for (bucket, access) in &k.buckets {
            match Access::parse(access) {
                Some(a) => {
                    per_bucket.insert(bucket.clone(), a);
                }
                None => c.add(
                    vec![key("s3"), key("keys"), Seg::Index(i), key("buckets"), key(bucket)],
                    format!("access {access:?} to bucket {bucket:?} must be read-write, read-only or none"),
                ),
            }
        }
        keys.push(S3Key {
            access_key_id: k.access_key_id.clone(),
            secret,
            default_access,
            buckets: per_bucket,
        });
    }
    let s3 = S3 {
        port: raw.s3.port.unwrap_or(9000),
        region: raw
            .s3
            .region
            .clone()
            .unwrap_or_else(|| "us-east-1".to_string()),
        keys,
    };

    let mut tables = BTreeMap::new();
    for (name, table) in raw.tables {
        let path = vec![key("tables"), key(&name)];
        if !is_identifier(&name) {
            c.add(
                path.clone(),
                format!(
                    "table name {name:?} must be lowercase letters, digits and '_', starting with a letter"
                ),
            );
        }
        if let Some(t) = validate_table(&name, table, &path, c, read_file) {
            tables.insert(name, t);
        }
    }

    let mut pipelines = BTreeMap::new();
    for (name, p) in raw.pipelines {
        let path = vec![key("pipelines"), key(&name)];
        let mut steps = Vec::new();
        if p.steps.is_empty() {
            c.add(
                [path.clone(), vec![key("steps")]].concat(),
                "a pipeline needs at least one step",
            );
        }
        for (i, step) in p.steps.into_iter().enumerate() {
            let step_path = [path.clone(), vec![key("steps"), Seg::Index(i)]].concat();
            let want = |c: &mut Collector, table: &str, layer: Layer, field: &str| match tables
                .get(table)
            {
                None => c.add(
                    step_path.clone(),
                    format!("step {field} = {table:?}: no such table"),
                ),
                Some(t) if t.layer != layer => c.add(
                    step_path.clone(),
                    format!(
                        "step {field} = {table:?}: table is {} but {field} needs a {} table",
                        t.layer.as_str(),
                        layer.as_str()
                    ),
                ),
                Some(_) => {}
            };
            match (step.ingest, step.refresh) {
                (Some(table), None) => {
                    want(c, &table, Layer::Silver, "ingest");
                    if let Some(b) = &step.bronze {
                        want(c, b, Layer::Bronze, "bronze");
                    }
                    steps.push(Step::Ingest {
                        table,
                        bronze: step.bronze,
                    });
                }
                (None, Some(table)) => {
                    want(c, &table, Layer::Gold, "refresh");
                    if step.bronze.is_some() {
                        c.add(step_path.clone(), "`bronze` only goes with `ingest`");
                    }
                    steps.push(Step::Refresh { table });
                }
                _ => c.add(
                    step_path.clone(),
                    "a step is either { ingest = \"TABLE\" } or { refresh = \"TABLE\" }",
                ),
            }
        }
        let mut retry = Retry::default();
        if let Some(n) = p.retry.max_attempts {
            if n == 0 {
                c.add(
                    [path.clone(), vec![key("retry"), key("max_attempts")]].concat(),
                    "max_attempts must be at least 1",
                );
            }
            retry.max_attempts = n.max(1);
        }
        for (field, value, slot) in [
            ("backoff", p.retry.backoff, &mut retry.backoff),
            ("max_backoff", p.retry.max_backoff, &mut retry.max_backoff),
        ] {
            if let Some(v) = value {
                match parse_duration(&v) {
                    Some(d) => *slot = d,
                    None => c.add(
                        [path.clone(), vec![key("retry"), key(field)]].concat(),
                        format!("{field} {v:?} is not a duration (e.g. \"500ms\", \"2s\", \"1m\")"),
                    ),
                }
            }
        }
        let max_invalid_pct = p.acceptance.max_invalid_pct.unwrap_or(100.0);
        if !(0.0..=100.0).contains(&max_invalid_pct) {
            c.add(
                [
                    path.clone(),
                    vec![key("acceptance"), key("max_invalid_pct")],
                ]
                .concat(),
                "max_invalid_pct must be between 0 and 100",
            );
        }
        pipelines.insert(
            name.clone(),
            Pipeline {
                name,
                steps,
                retry,
                max_invalid_pct,
            },
        );
    }

    let mut triggers = BTreeMap::new();
    for (name, t) in raw.triggers {
        let path = vec![key("triggers"), key(&name)];
        let on = EventKind::parse(&t.on).unwrap_or_else(|| {
            c.add(
                [path.clone(), vec![key("on")]].concat(),
                format!(
                    "unknown event kind {:?} (expected object-created or object-removed)",
                    t.on
                ),
            );
            EventKind::ObjectCreated
        });
        if !buckets.contains_key(&t.bucket) {
            c.add(
                [path.clone(), vec![key("bucket")]].concat(),
                format!("bucket {:?} is not declared under [buckets]", t.bucket),
            );
        }
        if !pipelines.contains_key(&t.pipeline) {
            c.add(
                [path.clone(), vec![key("pipeline")]].concat(),
                format!(
                    "pipeline {:?} is not declared under [pipelines]",
                    t.pipeline
                ),
            );
        }
        triggers.insert(
            name.clone(),
            Trigger {
                name,
                on,
                bucket: t.bucket,
                prefix: t.prefix.unwrap_or_default(),
                suffix: t.suffix.unwrap_or_default(),
                pipeline: t.pipeline,
            },
        );
    }

    let mut workflows = BTreeMap::new();
    for (name, w) in raw.workflows {
        let path = vec![key("workflows"), key(&name)];
        match read_file(&w.definition) {
            Ok(definition) => {
                workflows.insert(
                    name.clone(),
                    Workflow {
                        name,
                        file: w.definition,
                        definition,
                        description: w.description,
                    },
                );
            }
            Err(e) => c.add(
                [path, vec![key("definition")]].concat(),
                format!("cannot read {:?}: {e}", w.definition),
            ),
        }
    }

    let mut schedules = BTreeMap::new();
    for (name, s) in raw.schedules {
        let path = vec![key("schedules"), key(&name)];
        let at = |field: &str| [path.clone(), vec![key(field)]].concat();
        let timezone = s.timezone.as_deref().unwrap_or("UTC");
        let schedule = match crate::schedule::Schedule::parse(&s.expression, timezone) {
            Ok(schedule) => Some(schedule),
            Err(e) => {
                let field = if e.why.contains("IANA") {
                    "timezone"
                } else {
                    "expression"
                };
                c.add(at(field), e.to_string());
                None
            }
        };
        let workflow = target(
            s.workflow,
            s.pipeline,
            false,
            &pipelines,
            &mut workflows,
            &path,
            c,
        );
        let input = match s.input.as_deref() {
            None => serde_json::json!({}),
            Some(text) => serde_json::from_str(text).unwrap_or_else(|e| {
                c.add(at("input"), format!("input is not JSON: {e}"));
                serde_json::Value::Null
            }),
        };
        let missed = match s.missed.as_deref() {
            None | Some("skip") => Missed::Skip,
            Some("catch-up") => Missed::CatchUp(s.catch_up_limit.unwrap_or(10)),
            Some(other) => {
                c.add(
                    at("missed"),
                    format!("missed = {other:?} is not `skip` or `catch-up`"),
                );
                Missed::Skip
            }
        };
        if s.catch_up_limit.is_some() && missed == Missed::Skip {
            c.add(
                at("catch_up_limit"),
                "catch_up_limit only means something with missed = \"catch-up\"",
            );
        }
        if let Some(schedule) = schedule {
            schedules.insert(
                name.clone(),
                ScheduleSpec {
                    name,
                    schedule,
                    workflow,
                    input,
                    missed,
                },
            );
        }
    }

    let mut rules = BTreeMap::new();
    for (name, r) in raw.rules {
        let path = vec![key("rules"), key(&name)];
        let workflow = target(
            r.workflow,
            r.pipeline,
            true,
            &pipelines,
            &mut workflows,
            &path,
            c,
        );
        match sluice_rules::Pattern::parse(&r.pattern) {
            Ok(pattern) => {
                rules.insert(
                    name.clone(),
                    Rule {
                        name,
                        pattern_text: r.pattern,
                        pattern,
                        workflow,
                        description: r.description,
                    },
                );
            }
            Err(e) => c.add([path, vec![key("pattern")]].concat(), e.to_string()),
        }
    }

    Project {
        name: raw.name.unwrap_or_else(|| "sluice".to_string()),
        data_dir: raw.data_dir.unwrap_or_else(|| ".sluice".to_string()),
        server,
        watch,
        s3,
        buckets,
        tables,
        triggers,
        pipelines,
        workflows,
        schedules,
        rules,
    }
}

/// The workflow a schedule or rule starts: a declared one, or for a pipeline
/// target the workflow `pipeline:NAME` that runs it (made here): a pipeline that
/// ingests runs on the object of the event (`sluice:pipeline:NAME` with the
/// event's bucket and key, so only object events can start it), one that only
/// refreshes gold tables runs its refreshes, with its retry policy.
fn target(
    workflow: Option<String>,
    pipeline: Option<String>,
    events_have_objects: bool,
    pipelines: &BTreeMap<String, Pipeline>,
    workflows: &mut BTreeMap<String, Workflow>,
    path: &Path,
    c: &mut Collector,
) -> String {
    let at = |field: &str| [path.clone(), vec![key(field)]].concat();
    match (workflow, pipeline) {
        (Some(w), None) => {
            if !workflows.contains_key(&w) {
                c.add(
                    at("workflow"),
                    format!("workflow {w:?} is not declared under [workflows]"),
                );
            }
            w
        }
        (None, Some(p)) => {
            let Some(pipeline) = pipelines.get(&p) else {
                c.add(
                    at("pipeline"),
                    format!("pipeline {p:?} is not declared under [pipelines]"),
                );
                return String::new();
            };
            let ingests = pipeline
                .steps
                .iter()
                .any(|s| matches!(s, Step::Ingest { .. }));
            if ingests && !events_have_objects {
                c.add(
                    at("pipeline"),
                    format!(
                        "pipeline {p:?} ingests objects and a schedule has none to give it; target a workflow whose task names the object (sluice:pipeline:{p})"
                    ),
                );
            }
            let name = format!("pipeline:{p}");
            let definition = if ingests {
                serde_json::json!({
                    "Comment": format!("pipeline {p} on the object of the event"),
                    "StartAt": "Run",
                    "States": {"Run": {
                        "Type": "Task",
                        "Resource": format!("sluice:pipeline:{p}"),
                        "Parameters": {"Bucket.$": "$.detail.bucket.name", "Key.$": "$.detail.object.key"},
                        "End": true
                    }}
                })
            } else {
                let tables: Vec<&str> = pipeline
                    .steps
                    .iter()
                    .filter_map(|s| match s {
                        Step::Refresh { table } => Some(table.as_str()),
                        Step::Ingest { .. } => None,
                    })
                    .collect();
                let mut states = serde_json::Map::new();
                for (i, table) in tables.iter().enumerate() {
                    let mut state = serde_json::json!({
                        "Type": "Task",
                        "Resource": format!("sluice:refresh:{table}"),
                        "ResultPath": null,
                        "Retry": [{
                            "ErrorEquals": ["Sluice.RefreshFailed"],
                            "MaxAttempts": pipeline.retry.max_attempts.saturating_sub(1),
                            "IntervalSeconds": pipeline.retry.backoff.as_secs().max(1),
                            "MaxDelaySeconds": pipeline.retry.max_backoff.as_secs().max(1),
                            "BackoffRate": 2.0
                        }]
                    });
                    match tables.get(i + 1) {
                        Some(next) => state["Next"] = serde_json::json!(format!("Refresh {next}")),
                        None => state["End"] = serde_json::json!(true),
                    }
                    states.insert(format!("Refresh {table}"), state);
                }
                if tables.is_empty() {
                    states.insert("Nothing".into(), serde_json::json!({"Type": "Succeed"}));
                }
                let start = tables
                    .first()
                    .map(|t| format!("Refresh {t}"))
                    .unwrap_or_else(|| "Nothing".into());
                serde_json::json!({
                    "Comment": format!("pipeline {p}: its gold refreshes"),
                    "StartAt": start,
                    "States": states
                })
            };
            workflows.entry(name.clone()).or_insert_with(|| Workflow {
                name: name.clone(),
                file: format!("(pipeline {p})"),
                definition: definition.to_string(),
                description: Some(format!("runs pipeline {p}")),
            });
            name
        }
        (Some(_), Some(_)) | (None, None) => {
            c.add(path.clone(), "give exactly one of `workflow` or `pipeline`");
            String::new()
        }
    }
}

fn validate_table(
    name: &str,
    t: raw::RawTable,
    path: &Path,
    c: &mut Collector,
    read_file: &dyn Fn(&str) -> Result<String, String>,
) -> Option<Table> {
    let sub = |segs: &[Seg]| [path.clone(), segs.to_vec()].concat();
    let layer = match t.layer.as_str() {
        "bronze" => Layer::Bronze,
        "silver" => Layer::Silver,
        "gold" => Layer::Gold,
        other => {
            c.add(
                sub(&[key("layer")]),
                format!("unknown layer {other:?} (expected bronze, silver or gold)"),
            );
            return None;
        }
    };
    let schema_version = t.schema_version.unwrap_or(1);
    if schema_version == 0 {
        c.add(sub(&[key("schema_version")]), "schema_version starts at 1");
    }
    let mut format = Format::default();
    if let Some(d) = &t.format.delimiter {
        match one_char(d) {
            Some(b) => format.delimiter = b,
            None => c.add(
                sub(&[key("format"), key("delimiter")]),
                format!("delimiter {d:?} must be exactly one ASCII character"),
            ),
        }
    }
    if let Some(q) = &t.format.quote {
        match one_char(q) {
            Some(b) => format.quote = b,
            None => c.add(
                sub(&[key("format"), key("quote")]),
                format!("quote {q:?} must be exactly one ASCII character"),
            ),
        }
    }
    format.null_values = t.format.null_values.clone();

    let mut sql = None;
    let mut contract = None;
    match layer {
        Layer::Gold => {
            sql = match (&t.sql, &t.sql_file) {
                (Some(s), None) => Some(s.clone()),
                (None, Some(f)) => match read_file(f) {
                    Ok(s) => Some(s),
                    Err(e) => {
                        c.add(
                            sub(&[key("sql_file")]),
                            format!("cannot read model {f:?}: {e}"),
                        );
                        None
                    }
                },
                _ => {
                    c.add(
                        path.clone(),
                        format!("gold table {name:?} needs exactly one of `sql` or `sql_file`"),
                    );
                    None
                }
            };
            if !t.columns.is_empty() {
                c.add(
                    sub(&[key("columns")]),
                    "gold tables take their columns from their SQL; remove `columns`",
                );
            }
        }
        Layer::Bronze => {
            if !t.columns.is_empty() || t.sql.is_some() || t.sql_file.is_some() {
                c.add(
                    path.clone(),
                    "bronze tables archive raw objects as they are: no `columns` or `sql`",
                );
            }
        }
        Layer::Silver => {
            if t.sql.is_some() || t.sql_file.is_some() {
                c.add(
                    path.clone(),
                    "silver tables are fed by ingest steps; `sql` belongs to gold tables",
                );
            }
            contract = Some(validate_contract(&t, path, c));
        }
    }

    let mut known: HashSet<String> = HashSet::new();
    if let Some(contract) = &contract {
        known.extend(contract.columns.iter().map(|c| c.name.clone()));
        known.extend(contract.derived.iter().map(|d| d.name.clone()));
    }
    for (i, p) in t.partition_by.iter().enumerate() {
        if layer == Layer::Silver && !known.contains(p) {
            c.add(
                sub(&[key("partition_by"), Seg::Index(i)]),
                format!("partition column {p:?} is neither a column nor a derived column"),
            );
        }
    }
    let retention = match t.retention.as_deref() {
        None => DEFAULT_RETENTION,
        Some(_) if layer == Layer::Bronze => {
            c.add(
                sub(&[key("retention")]),
                "bronze tables keep every object as it arrived: `retention` applies to silver and gold tables",
            );
            DEFAULT_RETENTION
        }
        Some(r) => parse_duration(r).unwrap_or_else(|| {
            c.add(
                sub(&[key("retention")]),
                format!("retention {r:?} is not a duration such as \"24h\" or \"7d\""),
            );
            DEFAULT_RETENTION
        }),
    };
    Some(Table {
        name: name.to_string(),
        layer,
        description: t.description,
        owner: t.owner,
        schema_version,
        partition_by: t.partition_by,
        format,
        contract,
        sql,
        retention,
    })
}

fn validate_contract(t: &raw::RawTable, path: &Path, c: &mut Collector) -> Contract {
    let sub = |segs: &[Seg]| [path.clone(), segs.to_vec()].concat();
    let mut names: HashSet<String> = HashSet::new();
    let mut columns = Vec::new();
    if t.columns.is_empty() {
        c.add(path.clone(), "a silver table needs at least one column");
    }
    for (i, col) in t.columns.iter().enumerate() {
        let here = |field: &str| sub(&[key("columns"), Seg::Index(i), key(field)]);
        if !is_identifier(&col.name) {
            c.add(
                here("name"),
                format!(
                    "column name {:?} must be lowercase letters, digits and '_', starting with a letter",
                    col.name
                ),
            );
        }
        if !names.insert(col.name.clone()) {
            c.add(
                here("name"),
                format!("column {:?} is declared twice", col.name),
            );
        }
        let Some(ty) = ColumnType::parse(&col.ty) else {
            c.add(
                here("type"),
                format!(
                    "column {:?}: unknown type {:?} (expected one of: {})",
                    col.name,
                    col.ty,
                    ColumnType::NAMES
                ),
            );
            continue;
        };
        if (col.min.is_some() || col.max.is_some()) && !ty.is_numeric() {
            c.add(
                here(if col.min.is_some() { "min" } else { "max" }),
                format!(
                    "column {:?}: min/max apply to numeric columns, not {}",
                    col.name,
                    ty.name()
                ),
            );
        }
        if let (Some(lo), Some(hi)) = (col.min, col.max)
            && lo > hi
        {
            c.add(
                here("min"),
                format!("column {:?}: min {lo} is greater than max {hi}", col.name),
            );
        }
        if let Some(p) = &col.pattern
            && let Err(e) = regex::Regex::new(p)
        {
            c.add(
                here("pattern"),
                format!(
                    "column {:?}: bad pattern: {}",
                    col.name,
                    first_line(&e.to_string())
                ),
            );
        }
        if !col.format.is_empty() && !matches!(ty, ColumnType::Date | ColumnType::Timestamp) {
            c.add(
                here("format"),
                format!(
                    "column {:?}: format applies to date and timestamp columns",
                    col.name
                ),
            );
        }
        if let Some(tz) = &col.timezone {
            if ty != ColumnType::Timestamp {
                c.add(
                    here("timezone"),
                    format!(
                        "column {:?}: timezone applies to timestamp columns",
                        col.name
                    ),
                );
            } else if tz.parse::<chrono_tz::Tz>().is_err() {
                c.add(
                    here("timezone"),
                    format!("column {:?}: unknown time zone {tz:?} (use an IANA name such as America/New_York)", col.name),
                );
            }
        }
        let nullable = col.nullable.unwrap_or(true);
        columns.push(Column {
            name: col.name.clone(),
            source: col.source.clone(),
            ty,
            nullable,
            optional: col.optional.unwrap_or(nullable),
            min: col.min,
            max: col.max,
            allowed: col.allowed.clone(),
            pattern: col.pattern.clone(),
            formats: col.format.clone(),
            timezone: col.timezone.clone(),
            map: col
                .map
                .iter()
                .map(|(k, v)| (k.trim().to_lowercase(), v.clone()))
                .collect(),
            description: col.description.clone(),
        });
    }
    let mut derived = Vec::new();
    for (i, d) in t.derive.iter().enumerate() {
        if !is_identifier(&d.name) {
            c.add(
                sub(&[key("derive"), Seg::Index(i), key("name")]),
                format!(
                    "derived column name {:?} must be lowercase letters, digits and '_'",
                    d.name
                ),
            );
        }
        if !names.insert(d.name.clone()) {
            c.add(
                sub(&[key("derive"), Seg::Index(i), key("name")]),
                format!("column {:?} is declared twice", d.name),
            );
        }
        if d.expr.trim().is_empty() {
            c.add(
                sub(&[key("derive"), Seg::Index(i), key("expr")]),
                "empty expression",
            );
        }
        derived.push(Derived {
            name: d.name.clone(),
            expr: d.expr.clone(),
        });
    }
    let mut checks = Vec::new();
    let mut check_names = HashSet::new();
    for (i, ch) in t.checks.iter().enumerate() {
        if !check_names.insert(ch.name.clone()) {
            c.add(
                sub(&[key("checks"), Seg::Index(i), key("name")]),
                format!("check {:?} is declared twice", ch.name),
            );
        }
        if ch.expr.trim().is_empty() {
            c.add(
                sub(&[key("checks"), Seg::Index(i), key("expr")]),
                "empty expression",
            );
        }
        checks.push(Check {
            name: ch.name.clone(),
            expr: ch.expr.clone(),
            message: ch
                .message
                .clone()
                .unwrap_or_else(|| format!("check {} failed: {}", ch.name, ch.expr)),
        });
    }
    for (i, u) in t.unique.iter().enumerate() {
        if !names.contains(u) {
            c.add(
                sub(&[key("unique"), Seg::Index(i)]),
                format!("unique column {u:?} is not a column of this table"),
            );
        }
    }
    if let Some(k) = &t.key_fields {
        match regex::Regex::new(k) {
            Err(e) => c.add(
                sub(&[key("key_fields")]),
                format!("bad key_fields regex: {}", first_line(&e.to_string())),
            ),
            Ok(re) if re.capture_names().flatten().next().is_none() => c.add(
                sub(&[key("key_fields")]),
                "key_fields needs at least one named group, e.g. (?P<year>\\d{4})",
            ),
            Ok(_) => {}
        }
    }
    Contract {
        columns,
        derived,
        checks,
        unique: t.unique.clone(),
        key_fields: t.key_fields.clone(),
    }
}

#[cfg(test)]
mod tests;
