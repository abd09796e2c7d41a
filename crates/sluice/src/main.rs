//! `sluice`: an open, self-hosted serverless data platform in one binary.
//!
//! This file is the edge: it parses the command line, loads the project, opens
//! the [`platform::Platform`] and turns every error into a message and an exit
//! code. Each command is a plain function below.

mod demo;
mod http;
mod pending;
mod platform;
mod render;
mod routing;
mod s3;
mod schedules;
mod system;
mod tails;
mod vacuums;
mod watch;
mod worker;
mod workflows;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use crate::platform::{Platform, load_project};
use crate::render::Format;

/// jemalloc instead of the system allocator: glibc's per-thread arenas kept freed ingest
/// buffers (the reader thread frees what the writer allocated) and an ingest peaked at
/// 565 MiB where its live heap was ~320 MiB; see docs/benchmarks.md, issue 4.
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options, read at start-up (`_RJEM_MALLOC_CONF` in the environment overrides
/// them): a background thread returns freed pages to the system after half a second
/// instead of on the next allocation's slow path, and no pages are kept "muzzy".
#[allow(unsafe_code)] // jemalloc reads its options from this exported symbol.
#[unsafe(export_name = "_rjem_malloc_conf")]
static MALLOC_CONF: MallocConf =
    MallocConf(c"background_thread:true,dirty_decay_ms:500,muzzy_decay_ms:0".as_ptr());

/// jemalloc's `const char *malloc_conf`.
#[repr(transparent)]
struct MallocConf(*const std::ffi::c_char);

// SAFETY: the pointer is to a static, immutable C string.
#[allow(unsafe_code)]
unsafe impl Sync for MallocConf {}

/// sluice: drop a file in the landing zone; get validated, partitioned, queryable lakehouse tables.
#[derive(Parser)]
#[command(version, about, long_about = None, propagate_version = true)]
struct Cli {
    /// Project file, or the directory holding its sluice.toml.
    #[arg(
        long,
        short = 'p',
        global = true,
        default_value = "sluice.toml",
        env = "SLUICE_PROJECT"
    )]
    project: PathBuf,
    /// Data directory (objects, tables, state); default: the project's `data_dir`.
    #[arg(long, global = true, env = "SLUICE_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Log format: `text` on a terminal, `json` for machines.
    #[arg(long, global = true, env = "SLUICE_LOG_FORMAT", default_value = "auto")]
    log_format: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Write a commented example project (sluice.toml and models) into DIR.
    ///
    /// Example: sluice init my-project && cd my-project && sluice up
    Init {
        /// Directory to create the project in.
        #[arg(default_value = ".")]
        dir: PathBuf,
    },
    /// Validate a project without starting anything: every problem is reported at once.
    ///
    /// Example: sluice check -p examples/nyc-taxi/sluice.toml
    Check,
    /// Serve the platform: HTTP API, workers, watched folder. Ctrl-C stops it gracefully.
    ///
    /// Example: sluice up --http-port 0
    Up {
        /// HTTP port (0 picks a free one); default from sluice.toml.
        #[arg(long)]
        http_port: Option<u16>,
        /// S3 port (0 picks a free one); default from sluice.toml (9000).
        #[arg(long)]
        s3_port: Option<u16>,
        /// Address to bind; default from sluice.toml.
        #[arg(long)]
        bind: Option<String>,
        /// Worker count; default from sluice.toml, else the number of cores.
        #[arg(long)]
        workers: Option<usize>,
    },
    /// Run the NYC taxi pipeline end to end on generated, realistically dirty data.
    ///
    /// Example: sluice demo --rows 100000
    Demo {
        /// Trip rows to generate.
        #[arg(long, default_value_t = 100_000)]
        rows: usize,
        /// Workspace directory (default: a new temporary directory that is kept).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Random seed of the generator.
        #[arg(long, default_value_t = 42)]
        seed: u64,
    },
    /// Write the demo's generated taxi trips (January 2024, realistically dirty) to a CSV file.
    ///
    /// Example: sluice generate --rows 1000000 trips.csv
    Generate {
        /// Output CSV file.
        out: PathBuf,
        /// Trip rows to generate.
        #[arg(long, default_value_t = 100_000)]
        rows: usize,
        /// Random seed.
        #[arg(long, default_value_t = 42)]
        seed: u64,
    },
    /// Upload a file as an object; its triggers queue pipeline runs (run by `sluice up`).
    ///
    /// Example: sluice put trips.csv raw/landing/2024/01/trips.csv
    Put {
        /// Local file.
        file: PathBuf,
        /// Target as BUCKET/KEY.
        target: String,
    },
    /// Run SQL over the lake: bronze, silver, gold and the sluice system tables.
    ///
    /// Example: sluice query "SELECT date, count(*) FROM silver.trips GROUP BY 1 ORDER BY 1"
    Query {
        /// The SQL statement.
        sql: String,
        /// Output format.
        #[arg(long, value_enum, default_value = "table")]
        format: Format,
    },
    /// List tables with their layer, schema version, rows and description.
    ///
    /// Example: sluice tables
    Tables,
    /// Show a table's columns, partitions, versions and location.
    ///
    /// Example: sluice describe trips
    Describe {
        /// Table name.
        table: String,
    },
    /// Merge a silver table's small files into large ones, or the quarantine's (sluice up
    /// also does this by itself as partitions fill with small files). While `sluice up`
    /// serves the project, ask it instead: curl -X POST http://127.0.0.1:8080/v1/tables/TABLE/compact
    ///
    /// Example: sluice compact trips
    Compact {
        /// Silver table name, or `quarantine`.
        table: String,
    },
    /// Delete the data files a table no longer needs: those a compaction, a replaced or
    /// removed object or a gold refresh retired longer than the retention ago, and files no
    /// commit names (orphans) older than that and an hour (sluice up also does this by
    /// itself, every `[server] vacuum_interval`). It commits nothing and runs beside
    /// `sluice up`. Versions older than the retention can no longer be read.
    ///
    /// Example: sluice vacuum trips --retain 24h --dry-run
    Vacuum {
        /// Silver or gold table name, or `quarantine`.
        table: String,
        /// How long retired files are kept, e.g. `24h`, `7d`. Default: the table's
        /// `retention` in sluice.toml, seven days unless set.
        #[arg(long)]
        retain: Option<String>,
        /// List what would be deleted; delete nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// List recent runs: status, duration, rows in / valid / quarantined, bytes.
    ///
    /// Example: sluice runs --limit 20
    Runs {
        /// How many.
        #[arg(long, default_value_t = 20)]
        limit: usize,
    },
    /// Run details.
    Run {
        #[command(subcommand)]
        command: RunCommand,
    },
    /// Rows rejected by contracts.
    Quarantine {
        #[command(subcommand)]
        command: QuarantineCommand,
    },
    /// The dead-letter queue: jobs that ran out of attempts or failed for good.
    Dlq {
        #[command(subcommand)]
        command: DlqCommand,
    },
    /// EventBridge-style event rules.
    Rules {
        #[command(subcommand)]
        command: RulesCommand,
    },
    /// Step Functions workflows (Amazon States Language).
    Workflow {
        #[command(subcommand)]
        command: WorkflowCommand,
    },
    /// List recent workflow executions of the project: id, workflow, status, duration.
    ///
    /// Example: sluice executions --limit 20
    Executions {
        /// How many.
        #[arg(long, default_value_t = 20)]
        limit: usize,
    },
    /// One workflow execution.
    Execution {
        #[command(subcommand)]
        command: ExecutionCommand,
    },
}

#[derive(Subcommand)]
enum ExecutionCommand {
    /// Show an execution as JSON: status, input, output or error and cause, and its
    /// event history (shaped like Step Functions' GetExecutionHistory).
    ///
    /// Example: sluice execution show 0193a1b2
    Show {
        /// Execution id or a unique prefix of it.
        id: String,
    },
}

#[derive(Subcommand)]
enum WorkflowCommand {
    /// Run a definition here, outside any project, and print one JSON object:
    /// {"status", "output"} or {"status", "error", "cause"}. Exits 1 unless it succeeded.
    /// Task states that need a project fail with States.TaskFailed, saying so.
    ///
    /// Example: sluice workflow run flow.asl.json --input '{"date": "2024-01-15"}'
    Run {
        /// The definition (a JSON file in Amazon States Language).
        definition: PathBuf,
        /// The execution's input (JSON, or file://PATH).
        #[arg(long, default_value = "{}")]
        input: String,
        /// Also print the execution's event history (as GetExecutionHistory shapes it).
        #[arg(long)]
        history: bool,
    },
    /// Start a durable execution in the project and run it here to its end: every state
    /// transition is committed to the state store before the next begins, so if this
    /// process dies, the next `sluice up` resumes the execution at the state it was in.
    /// Meanwhile this process runs a worker, for the pipelines the workflow's tasks queue.
    /// Prints the execution (id, status, output or error and cause); exits 1 unless it
    /// succeeded. While `sluice up` serves the project, ask it instead:
    /// curl -X POST http://127.0.0.1:8080/v1/executions -d '{"definition": …, "input": …}'
    ///
    /// Example: sluice workflow start flows/nightly.asl.json --input '{"date": "2024-01-15"}'
    Start {
        /// A workflow of the project (a name under [workflows]), or a definition file.
        definition: PathBuf,
        /// The execution's input (JSON, or file://PATH).
        #[arg(long, default_value = "{}")]
        input: String,
    },
    /// Check a definition: every problem at once, each naming the state and field.
    ///
    /// Example: sluice workflow validate flow.asl.json
    Validate {
        /// The definition (a JSON file in Amazon States Language).
        definition: PathBuf,
    },
}

#[derive(Subcommand)]
enum RulesCommand {
    /// Test an event against an event pattern, as `aws events test-event-pattern` does:
    /// prints {"result": true|false}, or the error AWS would give.
    ///
    /// Example: sluice rules test-pattern --pattern '{"source": ["shop"]}' --event file://event.json
    TestPattern {
        /// The event pattern (JSON, or file://PATH).
        #[arg(long)]
        pattern: String,
        /// The event (JSON with id, account, source, time, region and detail-type, or file://PATH).
        #[arg(long)]
        event: String,
    },
}

#[derive(Subcommand)]
enum RunCommand {
    /// Show one run: steps, per-reason quarantine counts, partitions, error.
    ///
    /// Example: sluice run show 0193a1b2
    Show {
        /// Run id or a unique prefix of it.
        id: String,
    },
}

#[derive(Subcommand)]
enum QuarantineCommand {
    /// Show rejected rows of a table with reason, source object and line.
    ///
    /// Example: sluice quarantine show trips --limit 50
    Show {
        /// Table name.
        table: String,
        /// How many rows.
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
}

#[derive(Subcommand)]
enum DlqCommand {
    /// List dead-lettered jobs with their last error, and workflow executions that failed
    /// or timed out, with their error and cause.
    ///
    /// Example: sluice dlq list
    List,
    /// Queue a dead-lettered job again (it runs through the same path as the first time),
    /// or redrive a failed execution: a new execution of the same definition with the same
    /// input, run by `sluice up`.
    ///
    /// Example: sluice dlq replay 0193a1b2-...
    Replay {
        /// Job id or execution id (from `sluice dlq list`).
        id: String,
    },
}

fn main() {
    let cli = Cli::parse();
    let code = match run(cli) {
        Ok(()) => 0,
        Err(e) => {
            if let Some(io) = e.downcast_ref::<std::io::Error>()
                && io.kind() == std::io::ErrorKind::BrokenPipe
            {
                std::process::exit(0);
            }
            eprintln!("error: {e:#}");
            1
        }
    };
    std::process::exit(code);
}

fn init_logging(format: &str, default_level: &str) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("SLUICE_LOG").unwrap_or_else(|_| {
        EnvFilter::new(format!(
            "{default_level},datafusion=warn,deltalake=warn,deltalake_core=warn,buoyant_kernel=off"
        ))
    });
    let json = match format {
        "json" => true,
        "text" => false,
        _ => !std::io::IsTerminal::is_terminal(&std::io::stderr()),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .flatten_event(true)
            .init();
    } else {
        builder.compact().init();
    }
}

/// Reads and validates a workflow definition file.
fn load_workflow(path: &Path) -> Result<sluice_flow::StateMachine> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    sluice_flow::parse_definition(&text).with_context(|| format!("{}", path.display()))
}

/// A JSON argument given inline or, like the aws CLI's, as `file://PATH`.
fn json_argument(name: &str, value: &str) -> Result<String> {
    match value.strip_prefix("file://") {
        Some(path) => {
            std::fs::read_to_string(path).with_context(|| format!("reading {name} from {path}"))
        }
        None => Ok(value.to_string()),
    }
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

fn data_dir(
    cli_dir: &Option<PathBuf>,
    project_dir: &Path,
    project: &sluice_model::config::Project,
) -> PathBuf {
    cli_dir
        .clone()
        .unwrap_or_else(|| project_dir.join(&project.data_dir))
}

async fn open(cli: &Cli) -> Result<Platform> {
    let (project, dir) = load_project(&cli.project)?;
    let data = data_dir(&cli.data_dir, &dir, &project);
    Platform::open(project, dir, data).await
}

fn run(cli: Cli) -> Result<()> {
    let quiet_level = matches!(cli.command, Command::Up { .. }) as u8;
    init_logging(
        &cli.log_format,
        if quiet_level == 1 { "info" } else { "warn" },
    );
    let rt = runtime()?;
    match &cli.command {
        Command::Init { dir } => init(dir),
        Command::Check => {
            let (project, _) = load_project(&cli.project)?;
            platform::compile_contracts(&project)?;
            workflows::check_definitions(&project)?;
            println!(
                "{}: ok ({} buckets, {} tables, {} triggers, {} pipelines, {} workflows, {} schedules, {} rules)",
                cli.project.display(),
                project.buckets.len(),
                project.tables.len(),
                project.triggers.len(),
                project.pipelines.len(),
                project.workflows.len(),
                project.schedules.len(),
                project.rules.len()
            );
            Ok(())
        }
        Command::Up {
            http_port,
            s3_port,
            bind,
            workers,
        } => rt.block_on(up(&cli, *http_port, *s3_port, bind.clone(), *workers)),
        Command::Demo { rows, dir, seed } => rt.block_on(demo::run(*rows, dir.clone(), *seed)),
        Command::Generate { out, rows, seed } => {
            let file = std::fs::File::create(out).with_context(|| format!("creating {}", out.display()))?;
            let mut w = std::io::BufWriter::with_capacity(1 << 20, file);
            let dirt = demo::generate_trips(&mut w, *rows, *seed)?;
            w.flush()?;
            println!(
                "wrote {rows} trips to {} (dirty rows: {})",
                out.display(),
                dirt.iter().map(|(k, n)| format!("{n} {k}")).collect::<Vec<_>>().join(", ")
            );
            Ok(())
        }
        Command::Put { file, target } => rt.block_on(put(&cli, file, target)),
        Command::Query { sql, format } => rt.block_on(async {
            let platform = open(&cli).await?;
            let statement = sluice_lake::sql::Statement::parse(sql)?;
            let session = platform.session_for(&statement).await?;
            let result = session.run(&statement).await?;
            let mut out = std::io::stdout().lock();
            writeln!(out, "{}", render::render(&result.schema, &result.batches, *format))?;
            Ok(())
        }),
        Command::Tables => rt.block_on(tables(&cli)),
        Command::Describe { table } => rt.block_on(describe(&cli, table)),
        Command::Runs { limit } => rt.block_on(runs(&cli, *limit)),
        Command::Compact { table } => rt.block_on(async {
            let platform = std::sync::Arc::new(open(&cli).await?);
            let _lock = platform.lock_data_dir().with_context(|| {
                format!(
                    "sluice up is serving this project and compacts by itself; to compact now, ask it: curl -X POST http://127.0.0.1:{}/v1/tables/{table}/compact",
                    platform.project.server.http_port
                )
            })?;
            let started = std::time::Instant::now();
            let r = platform.compact(table, sluice_lake::compact::Scope::All).await?;
            platform.tables.settle().await;
            match r.version {
                None if r.superseded => println!(
                    "{table}: an ingest replaced files being merged meanwhile; nothing compacted, try again"
                ),
                None => println!("{table}: no partition has two small files; nothing to do"),
                Some(v) => println!(
                    "{table}: {} small files ({:.1} MiB) in {} partitions became {} files in {:.2} s (table version {v})",
                    r.files_removed,
                    r.bytes_removed as f64 / 1048576.0,
                    r.partitions,
                    r.files_added,
                    started.elapsed().as_secs_f64()
                ),
            }
            Ok(())
        }),
        Command::Vacuum {
            table,
            retain,
            dry_run,
        } => rt.block_on(vacuum(&cli, table, retain.as_deref(), *dry_run)),
        Command::Run { command: RunCommand::Show { id } } => rt.block_on(run_show(&cli, id)),
        Command::Rules { command: RulesCommand::TestPattern { pattern, event } } => {
            let pattern = json_argument("--pattern", pattern)?;
            let event = json_argument("--event", event)?;
            match sluice_rules::test_event_pattern(&pattern, &event) {
                Ok(result) => {
                    println!("{}", serde_json::json!({ "result": result }));
                    Ok(())
                }
                Err(e) => bail!("{}: {e}", e.code()),
            }
        }
        Command::Workflow { command: WorkflowCommand::Start { definition, input } } => {
            rt.block_on(workflow_start(&cli, definition, input))
        }
        Command::Executions { limit } => rt.block_on(executions(&cli, *limit)),
        Command::Execution { command: ExecutionCommand::Show { id } } => rt.block_on(async {
            let platform = open(&cli).await?;
            let shown = workflows::execution_with_history(&platform, id)?;
            println!("{}", serde_json::to_string_pretty(&shown)?);
            Ok(())
        }),
        Command::Workflow { command: WorkflowCommand::Validate { definition } } => {
            load_workflow(definition)?;
            println!("{}: valid", definition.display());
            Ok(())
        }
        Command::Workflow { command: WorkflowCommand::Run { definition, input, history } } => {
            let machine = load_workflow(definition)?;
            let input_text = json_argument("--input", input)?;
            let input: serde_json::Value = serde_json::from_str(&input_text)
                .with_context(|| format!("--input is not JSON: {input_text}"))?;
            let name = definition
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| "workflow".into());
            let id = uuid::Uuid::now_v7().to_string();
            let info = sluice_flow::ExecutionInfo {
                id: routing::execution_arn("local", &name, &id),
                name: id,
                state_machine: name,
            };
            let interpreter = sluice_flow::Interpreter::new(
                std::sync::Arc::new(sluice_flow::NoResources),
                std::sync::Arc::new(sluice_flow::SystemClock),
            );
            let outcome = rt.block_on(interpreter.run(&machine, input, info, sluice_flow::History::default()));
            let mut printed = serde_json::to_value(&outcome)?;
            if *history {
                printed["history"] = serde_json::to_value(&outcome.history)?;
            }
            println!("{printed}");
            if outcome.status != sluice_flow::Status::Succeeded {
                std::process::exit(1);
            }
            Ok(())
        }
        Command::Quarantine { command: QuarantineCommand::Show { table, limit } } => rt.block_on(async {
            let platform = open(&cli).await?;
            if !platform.project.tables.contains_key(table) {
                bail!("no table {table:?} in {}", cli.project.display());
            }
            let session = platform.session().await?;
            if !session.has_table("sluice", "quarantine") {
                println!("nothing quarantined yet");
                return Ok(());
            }
            let summary = session
                .query(&format!(
                    "SELECT reason_code, count(*) AS rows FROM sluice.quarantine WHERE table_name = '{table}' GROUP BY 1 ORDER BY 2 DESC, 1"
                ))
                .await?;
            println!("{}", render::render(&summary.schema, &summary.batches, Format::Table));
            let rows = session
                .query(&format!(
                    "SELECT source_object, line, reason_code, column_name, reason, raw FROM sluice.quarantine \
                     WHERE table_name = '{table}' ORDER BY source_object, line LIMIT {limit}"
                ))
                .await?;
            println!("{}", render::render(&rows.schema, &rows.batches, Format::Table));
            Ok(())
        }),
        Command::Dlq { command } => rt.block_on(async {
            let platform = open(&cli).await?;
            match command {
                DlqCommand::List => {
                    let dead = platform.state.list_dlq()?;
                    let mut t = render::table(vec!["job".into(), "pipeline".into(), "object".into(), "attempts".into(), "failed at".into(), "error".into()]);
                    for job in &dead {
                        let object = platform
                            .state
                            .get_event(sluice_model::event::EventId(job.event_id))
                            .map(|e| format!("{}/{}", e.event.object.bucket, e.event.object.key))
                            .unwrap_or_default();
                        t.add_row(vec![
                            job.id.to_string(),
                            job.pipeline.clone(),
                            object,
                            job.attempts.to_string(),
                            job.updated_at.format("%Y-%m-%d %H:%M:%S").to_string(),
                            job.last_error.clone().unwrap_or_default(),
                        ]);
                    }
                    println!("{t}\n({} dead-lettered job{})", dead.len(), if dead.len() == 1 { "" } else { "s" });
                    let failed = platform.executions.failed_executions(1000)?;
                    if !failed.is_empty() {
                        let mut t = render::table(vec!["execution".into(), "workflow".into(), "status".into(), "failed at".into(), "error".into(), "cause".into()]);
                        for e in &failed {
                            t.add_row(vec![
                                e.id.clone(),
                                e.workflow.clone(),
                                e.status.as_str().to_string(),
                                e.stopped_at.map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string()).unwrap_or_default(),
                                e.error.clone().unwrap_or_default(),
                                e.cause.clone().unwrap_or_default(),
                            ]);
                        }
                        println!("{t}\n({} failed execution{})", failed.len(), if failed.len() == 1 { "" } else { "s" });
                    }
                }
                DlqCommand::Replay { id } => {
                    let failed = platform.executions.failed_executions(100_000)?;
                    match failed.iter().find(|e| e.id == *id) {
                        Some(e) => {
                            let new_id = uuid::Uuid::now_v7().to_string();
                            let input: serde_json::Value = serde_json::from_str(&e.input)?;
                            let new = workflows::new_execution(&new_id, &e.workflow, &e.definition, &input);
                            platform.executions.redrive_execution(&e.id, &new)?;
                            println!("redriving execution {} as execution {new_id}; it runs when `sluice up` is running", e.id);
                        }
                        None if platform.executions.get_execution(id).is_ok_and(|e| e.id == *id) => {
                            bail!("execution {id} is not in the dead-letter queue: only a failed execution not redriven before can be redriven (see `sluice dlq list`)");
                        }
                        None => {
                            let job: sluice_state::JobId = id
                                .parse()
                                .with_context(|| format!("{id:?} is neither a failed execution nor a job id"))?;
                            let new = platform.state.replay_dlq(job, chrono::Utc::now())?;
                            println!("replaying job {job} as job {new}; it runs when `sluice up` is running");
                        }
                    }
                }
            }
            Ok(())
        }),
    }
}

fn init(dir: &Path) -> Result<()> {
    let target = dir.join("sluice.toml");
    if target.exists() {
        bail!("{} already exists; not overwriting it", target.display());
    }
    for sub in ["models", "flows"] {
        std::fs::create_dir_all(dir.join(sub))
            .with_context(|| format!("creating {}", dir.display()))?;
    }
    for (name, text) in demo::PROJECT_FILES {
        let path = dir.join(name);
        if !path.exists() {
            std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        }
    }
    // A fresh key pair for the S3 endpoint, so `aws --endpoint-url` works right away.
    let (key_id, secret) = s3::generate_key_pair();
    let mut project = std::fs::OpenOptions::new().append(true).open(&target)?;
    writeln!(
        project,
        "\n# The S3 endpoint (aws --endpoint-url http://127.0.0.1:9000 s3 ls). This key was generated by\n\
         # `sluice init`: keep this file private, or move the secret to an environment variable with\n\
         # secret_access_key_env = \"NAME\".\n\
         [s3]\nport = 9000\n\n[[s3.keys]]\naccess_key_id = \"{key_id}\"\nsecret_access_key = \"{secret}\"\naccess = \"read-write\"\n"
    )?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o600))?;
    }
    println!(
        "created {} (the NYC taxi example); next: `sluice check`, then `sluice up`",
        target.display()
    );
    println!(
        "an S3 access key was generated: {key_id}; its secret is in {} under [[s3.keys]] (file mode 600)",
        target.display()
    );
    Ok(())
}

async fn up(
    cli: &Cli,
    http_port: Option<u16>,
    s3_port: Option<u16>,
    bind: Option<String>,
    workers: Option<usize>,
) -> Result<()> {
    let started = Instant::now();
    let mut platform = open(cli).await?;
    let (keys, secrets) = s3::resolve_keys(&platform.project.s3.keys)?;
    platform.s3_keys = keys;
    let platform = Arc::new(platform);
    let _owned = platform.own_data_dir()?;
    routing::init_cursors(&platform)?;
    let resumed = workflows::pick_up(&platform)?;
    if resumed > 0 {
        tracing::warn!(
            executions = resumed,
            "resuming workflow executions left running by a process that stopped abruptly"
        );
    }
    let server = &platform.project.server;
    let bind = bind.unwrap_or_else(|| server.bind.clone());
    let port = http_port.unwrap_or(server.http_port);
    let workers = workers.or(server.workers).unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2)
    });
    let listener = tokio::net::TcpListener::bind((bind.as_str(), port))
        .await
        .with_context(|| format!("binding the HTTP API to {bind}:{port}"))?;
    let addr = listener.local_addr()?;
    let s3_port = s3_port.unwrap_or(platform.project.s3.port);
    let s3_listener = tokio::net::TcpListener::bind((bind.as_str(), s3_port))
        .await
        .with_context(|| format!("binding the S3 endpoint to {bind}:{s3_port}"))?;
    let s3_addr = s3_listener.local_addr()?;
    let shutdown = CancellationToken::new();
    let s3_server = tokio::spawn(s3::serve(
        platform.clone(),
        secrets,
        s3_listener,
        shutdown.clone(),
    ));
    let app = http::router(platform.clone());
    let http_shutdown = shutdown.clone();
    let http = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move { http_shutdown.cancelled().await })
            .await
    });
    let scheduler = tokio::spawn(schedules::run(platform.clone(), shutdown.clone()));
    let router = tokio::spawn(routing::run(platform.clone(), shutdown.clone()));
    let pickup = tokio::spawn(workflows::pick_up_loop(platform.clone(), shutdown.clone()));
    let pool = tokio::spawn(worker::run_pool(
        platform.clone(),
        workers,
        shutdown.clone(),
    ));
    let watcher = platform
        .project
        .watch
        .clone()
        .map(|w| tokio::spawn(watch::run(platform.clone(), w, shutdown.clone())));
    println!(
        "sluice {} is up ({} ms)",
        platform.project.name,
        started.elapsed().as_millis()
    );
    println!("  http  http://{addr}");
    println!("  s3    http://{s3_addr}");
    if platform.s3_keys.is_empty() {
        println!(
            "  (no S3 access keys: add [[s3.keys]] to sluice.toml or set SLUICE_S3_ACCESS_KEY_ID and SLUICE_S3_SECRET_ACCESS_KEY)"
        );
    } else {
        let ids: Vec<&str> = platform
            .s3_keys
            .iter()
            .map(|k| k.access_key_id.as_str())
            .collect();
        println!("  s3 keys {}", ids.join(", "));
    }
    println!("  data  {}", platform.data_dir.display());
    println!("  workers {workers}");
    if let Some(w) = &platform.project.watch {
        println!(
            "  watch {} -> {}/{}",
            platform.project_dir.join(&w.dir).display(),
            w.bucket,
            w.prefix
        );
    }
    std::io::stdout().flush()?;
    tracing::info!(http = %addr, "ready");
    shutdown_signal().await;
    eprintln!("shutting down: finishing in-flight work");
    shutdown.cancel();
    let _ = pool.await;
    let _ = scheduler.await;
    let _ = router.await;
    let _ = pickup.await;
    if let Some(w) = watcher {
        let _ = w.await;
    }
    let _ = http.await;
    let _ = s3_server.await;
    platform.tables.settle().await;
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

async fn put(cli: &Cli, file: &Path, target: &str) -> Result<()> {
    let platform = open(cli).await?;
    let (bucket, key) = target
        .split_once('/')
        .with_context(|| format!("target {target:?} must be BUCKET/KEY"))?;
    let f = tokio::fs::File::open(file)
        .await
        .with_context(|| format!("opening {}", file.display()))?;
    let stream = tokio_util::io::ReaderStream::with_capacity(f, 1 << 20);
    let (event, jobs, _) = platform
        .put_object(
            bucket,
            key,
            stream,
            "sluice:put",
            platform::PutOptions::default(),
        )
        .await?;
    println!(
        "stored {}/{} ({}, sha256 {}), event {}; {jobs} pipeline run(s) queued",
        event.object.bucket,
        event.object.key,
        render::bytes(event.object.size),
        &event.object.sha256[..12],
        event.id
    );
    Ok(())
}

async fn tables(cli: &Cli) -> Result<()> {
    let platform = open(cli).await?;
    let session = platform.session().await?;
    let mut t = render::table(vec![
        "table".into(),
        "layer".into(),
        "version".into(),
        "rows".into(),
        "partitions".into(),
        "description".into(),
    ]);
    for table in platform.project.tables.values() {
        let rows = if table.layer == sluice_model::config::Layer::Bronze {
            "-".to_string()
        } else if session.has_table(table.layer.as_str(), &table.name) {
            let r = session
                .query(&format!(
                    "SELECT count(*) FROM {}.{}",
                    table.layer.as_str(),
                    table.name
                ))
                .await?;
            render::render(&r.schema, &r.batches, Format::Csv)
                .lines()
                .nth(1)
                .unwrap_or("0")
                .to_string()
        } else {
            "0".into()
        };
        t.add_row(vec![
            format!("{}.{}", table.layer.as_str(), table.name),
            table.layer.as_str().into(),
            table.schema_version.to_string(),
            rows,
            table.partition_by.join(", "),
            table.description.clone().unwrap_or_default(),
        ]);
    }
    println!("{t}");
    Ok(())
}

async fn describe(cli: &Cli, name: &str) -> Result<()> {
    let platform = open(cli).await?;
    let Some(table) = platform.project.tables.get(name) else {
        bail!("no table {name:?}; `sluice tables` lists them");
    };
    println!(
        "{}.{}  (schema version {})",
        table.layer.as_str(),
        table.name,
        table.schema_version
    );
    if let Some(d) = &table.description {
        println!("  {d}");
    }
    if let Some(o) = &table.owner {
        println!("  owner: {o}");
    }
    println!(
        "  location: {}",
        platform
            .data_dir
            .join("lake")
            .join(&platform.locations[name])
            .display()
    );
    if !table.partition_by.is_empty() {
        println!("  partitioned by: {}", table.partition_by.join(", "));
    }
    let session = platform.session().await?;
    if session.has_table(table.layer.as_str(), name) {
        let r = session
            .query(&format!(
                "SELECT column_name, data_type, is_nullable FROM information_schema.columns WHERE table_schema = '{}' AND table_name = '{name}' ORDER BY ordinal_position",
                table.layer.as_str()
            ))
            .await?;
        println!("{}", render::render(&r.schema, &r.batches, Format::Table));
    }
    let versions = platform.state.table_versions(name)?;
    for v in versions {
        println!(
            "  version {} registered {}",
            v.version,
            v.registered_at.format("%Y-%m-%d %H:%M:%S UTC")
        );
    }
    Ok(())
}

/// `sluice workflow start`: a durable execution run in this process, which owns the data directory meanwhile.
async fn workflow_start(cli: &Cli, definition: &Path, input: &str) -> Result<()> {
    let input_text = json_argument("--input", input)?;
    let input: serde_json::Value = serde_json::from_str(&input_text)
        .with_context(|| format!("--input is not JSON: {input_text}"))?;
    let platform = Arc::new(open(cli).await?);
    let declared = definition
        .to_str()
        .and_then(|name| platform.project.workflows.get(name));
    let (name, text) = match declared {
        Some(w) => (w.name.clone(), w.definition.clone()),
        None => {
            let text = std::fs::read_to_string(definition).with_context(|| {
                format!(
                    "reading {} (not a workflow under [workflows] either)",
                    definition.display()
                )
            })?;
            sluice_flow::parse_definition(&text)
                .with_context(|| format!("{}", definition.display()))?;
            let name = definition
                .file_stem()
                .map(|s| s.to_string_lossy().trim_end_matches(".asl").to_owned())
                .unwrap_or_else(|| "workflow".into());
            (name, text)
        }
    };
    let _owned = platform.lock_data_dir().context(
        "workflow start runs the execution in this process; while `sluice up` serves the project, POST /v1/executions to it instead",
    )?;
    let execution = workflows::create(&platform, &name, &text, &input)?;
    eprintln!("execution {} of {name} started", execution.id);
    let id = execution.id.clone();
    // Events this execution raises are routed by the next `sluice up`.
    routing::init_cursors(&platform)?;
    // Pipeline tasks go through the job queue: this process runs workers meanwhile.
    let shutdown = CancellationToken::new();
    let pool = tokio::spawn(worker::run_pool(platform.clone(), 1, shutdown.clone()));
    let ran = workflows::run(platform.clone(), execution).await;
    shutdown.cancel();
    let _ = pool.await;
    platform.tables.settle().await;
    ran?;
    let finished = platform.executions.get_execution(&id)?;
    println!("{}", workflows::execution_json(&finished));
    if finished.status != sluice_state::ExecutionStatus::Succeeded {
        std::process::exit(1);
    }
    Ok(())
}

async fn executions(cli: &Cli, limit: usize) -> Result<()> {
    let platform = open(cli).await?;
    let list = platform.executions.list_executions(limit)?;
    let mut t = render::table(
        [
            "execution",
            "workflow",
            "status",
            "started",
            "duration",
            "error",
        ]
        .map(String::from)
        .to_vec(),
    );
    for e in &list {
        let duration = e
            .stopped_at
            .map(|s| {
                format!(
                    "{:.2}s",
                    (s - e.started_at).num_milliseconds() as f64 / 1000.0
                )
            })
            .unwrap_or_else(|| "running".into());
        t.add_row(vec![
            e.id.clone(),
            e.workflow.clone(),
            e.status.as_str().to_string(),
            e.started_at.format("%Y-%m-%d %H:%M:%S").to_string(),
            duration,
            e.error.clone().unwrap_or_default(),
        ]);
    }
    println!("{t}");
    Ok(())
}

async fn runs(cli: &Cli, limit: usize) -> Result<()> {
    let platform = open(cli).await?;
    let runs = platform.state.list_runs(limit)?;
    let mut t = render::table(
        [
            "run",
            "pipeline",
            "object",
            "status",
            "attempt",
            "duration",
            "rows in",
            "valid",
            "quarantined",
            "read",
            "written",
        ]
        .map(String::from)
        .to_vec(),
    );
    for r in &runs {
        let duration = r
            .finished_at
            .map(|f| {
                format!(
                    "{:.2}s",
                    (f - r.started_at).num_milliseconds() as f64 / 1000.0
                )
            })
            .unwrap_or_else(|| "running".into());
        t.add_row(vec![
            r.id.to_string()[..13].to_string(),
            r.pipeline.clone(),
            r.detail["object"].as_str().unwrap_or("").to_string(),
            r.status.as_str().to_string(),
            r.attempt.to_string(),
            duration,
            r.rows_in.to_string(),
            r.rows_valid.to_string(),
            r.rows_quarantined.to_string(),
            render::bytes(r.bytes_read),
            render::bytes(r.bytes_written),
        ]);
    }
    println!("{t}");
    let c = platform.state.job_counts()?;
    println!(
        "jobs: {} pending, {} running, {} done, {} dead-lettered",
        c.pending, c.running, c.done, c.dead
    );
    Ok(())
}

/// `sluice vacuum`: deletes (or, dry, lists) the files a table no longer needs.
async fn vacuum(cli: &Cli, table: &str, retain: Option<&str>, dry_run: bool) -> Result<()> {
    let retain = retain
        .map(|r| {
            sluice_model::config::parse_duration(r).with_context(|| {
                format!("--retain {r:?}: expected a duration such as 30m, 24h or 7d")
            })
        })
        .transpose()?;
    let platform = open(cli).await?;
    let started = std::time::Instant::now();
    let Some(r) = platform
        .vacuum(
            table,
            retain,
            sluice_lake::vacuum::Sweep::WithOrphans,
            dry_run,
        )
        .await?
    else {
        println!("{table}: nothing was ever written; nothing to vacuum");
        return Ok(());
    };
    if dry_run {
        for file in &r.files {
            println!("{file}");
        }
    }
    println!(
        "{table}: {} {} files ({:.1} MiB) retired more than {} ago or never committed, in {:.2} s",
        if dry_run { "would delete" } else { "deleted" },
        r.files.len(),
        r.bytes as f64 / 1048576.0,
        humantime_secs(r.retention),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// A retention as a person reads it: `7d`, `24h`, `90m`, `30s`.
fn humantime_secs(d: std::time::Duration) -> String {
    let s = d.as_secs();
    match s {
        0 => "0s".into(),
        s if s % 86400 == 0 => format!("{}d", s / 86400),
        s if s % 3600 == 0 => format!("{}h", s / 3600),
        s if s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

async fn run_show(cli: &Cli, id: &str) -> Result<()> {
    let platform = open(cli).await?;
    let r = platform.state.get_run(id)?;
    println!("run       {}", r.id);
    println!("job       {} (attempt {})", r.job_id, r.attempt);
    println!("event     {}", r.event_id);
    println!("pipeline  {}", r.pipeline);
    println!("object    {}", r.detail["object"].as_str().unwrap_or(""));
    println!("status    {}", r.status.as_str());
    println!("started   {}", r.started_at.to_rfc3339());
    if let Some(f) = r.finished_at {
        println!(
            "finished  {} ({:.3}s)",
            f.to_rfc3339(),
            (f - r.started_at).num_milliseconds() as f64 / 1000.0
        );
    }
    println!(
        "rows      {} in, {} valid, {} quarantined",
        r.rows_in, r.rows_valid, r.rows_quarantined
    );
    println!(
        "bytes     {} read, {} written",
        render::bytes(r.bytes_read),
        render::bytes(r.bytes_written)
    );
    if let Some(e) = &r.error {
        println!("note      {e}");
    }
    if let Some(n) = r.detail["batch"].as_u64() {
        println!(
            "batch     ran with {} other object(s): one commit per table",
            n - 1
        );
    }
    if let Some(steps) = r.detail["steps"].as_array() {
        for step in steps {
            match step["step"].as_str() {
                Some("ingest") => {
                    println!(
                        "step      ingest {}: {} in, {} valid, {} quarantined ({})",
                        step["table"].as_str().unwrap_or(""),
                        step["rows_in"],
                        step["rows_valid"],
                        step["rows_quarantined"],
                        step["outcome"]
                    );
                    if let Some(reasons) = step["quarantine_reasons"].as_object() {
                        for (reason, n) in reasons {
                            println!("            {n:>8}  {reason}");
                        }
                    }
                    if let Some(parts) = step["partitions"].as_array() {
                        println!("          {} partition(s) written", parts.len());
                    }
                }
                Some("refresh") => println!(
                    "step      refresh {}: {} rows",
                    step["table"].as_str().unwrap_or(""),
                    step["rows"]
                ),
                Some("archive") if step["superseded"] == true => println!(
                    "step      archive to bronze {}: skipped, the object changed after this event",
                    step["table"].as_str().unwrap_or("")
                ),
                Some("archive") => println!(
                    "step      archive to {}",
                    step["path"].as_str().unwrap_or("")
                ),
                _ => println!("step      {step}"),
            }
        }
    }
    Ok(())
}
