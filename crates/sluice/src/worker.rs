//! The worker pool: lease due jobs, run their pipeline's steps, record the run, retry or dead-letter.
//!
//! Workers hold no state of their own: a job is leased from the state store,
//! its effects land in Delta commits keyed by the source object, and a crash
//! at any point leaves a lease that expires and a retry that finds the
//! commit either done (skips) or not (redoes it from scratch).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use rand::Rng;
use serde_json::json;
use sluice_lake::ingest::{IngestRequest, Outcome};
use sluice_lake::{compact, gold, ingest};
use sluice_model::config::Step;
use sluice_model::event::EventKind;
use sluice_state::{LeasedJob, Run, RunStatus};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, error, info, info_span, warn};
use uuid::Uuid;

use crate::platform::Platform;

/// How long a lease lasts before another worker may take the job over.
pub const LEASE: Duration = Duration::from_secs(60);
/// How often a running job renews its lease.
const HEARTBEAT: Duration = Duration::from_secs(20);
/// How often idle workers look for jobs queued by other processes.
const POLL: Duration = Duration::from_millis(100);
/// Rows per batch in ingest.
pub const BATCH_ROWS: usize = 65_536;

/// Runs `workers` workers until `shutdown`; in-flight jobs finish or are released.
pub async fn run_pool(platform: Arc<Platform>, workers: usize, shutdown: CancellationToken) {
    let mut handles = Vec::new();
    for n in 0..workers.max(1) {
        let platform = platform.clone();
        let shutdown = shutdown.clone();
        let name = format!(
            "{}-w{n}-{}",
            std::process::id(),
            &Uuid::now_v7().simple().to_string()[24..]
        );
        handles.push(tokio::spawn(async move {
            worker(platform, name, shutdown).await
        }));
    }
    for h in handles {
        let _ = h.await;
    }
}

async fn worker(platform: Arc<Platform>, name: String, shutdown: CancellationToken) {
    loop {
        if shutdown.is_cancelled() {
            return;
        }
        // Listen before looking: a job queued between the look and the wait still wakes us.
        let notified = platform.wake.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let leased = match platform.state.lease_job(&name, Utc::now(), LEASE) {
            Ok(l) => l,
            Err(e) => {
                error!(worker = %name, error = %e, "cannot lease jobs");
                None
            }
        };
        let Some(leased) = leased else {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = notified => {}
                _ = tokio::time::sleep(POLL) => {}
            }
            continue;
        };
        let job_id = leased.job.id;
        let heartbeat = {
            let platform = platform.clone();
            let name = name.clone();
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(HEARTBEAT).await;
                    let until = Utc::now() + chrono::Duration::from_std(LEASE).unwrap_or_default();
                    if platform.state.extend_lease(job_id, &name, until).is_err() {
                        return;
                    }
                }
            })
        };
        let run = execute(&platform, &name, leased);
        let _stop_heartbeat = AbortOnDrop(heartbeat);
        tokio::select! {
            _ = run => {}
            _ = shutdown.cancelled() => {
                // Ctrl-C mid-job: give the job back; its uncommitted files are orphans and its commit never happened.
                let _ = platform.state.release_job(job_id, &name);
                warn!(job_id = %job_id, "shutdown: job released, it will run again at the next start");
                return;
            }
        }
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Runs one leased job to completion and records the run.
pub async fn execute(platform: &Arc<Platform>, worker: &str, leased: LeasedJob) {
    let run_id = Uuid::now_v7();
    let span = info_span!("run", run_id = %run_id, event_id = %leased.event.id, job_id = %leased.job.id, pipeline = %leased.job.pipeline);
    async move {
        let started_at = Utc::now();
        let mut run = Run {
            id: run_id,
            job_id: leased.job.id,
            event_id: leased.event.id.0,
            pipeline: leased.job.pipeline.clone(),
            attempt: leased.job.attempts,
            status: RunStatus::Running,
            started_at,
            finished_at: None,
            rows_in: 0,
            rows_valid: 0,
            rows_quarantined: 0,
            bytes_read: 0,
            bytes_written: 0,
            error: None,
            detail: json!({"object": format!("{}/{}", leased.event.object.bucket, leased.event.object.key), "steps": []}),
        };
        if let Err(e) = platform.state.save_run(&run) {
            error!(error = %e, "cannot record the run");
        }
        info!(object = run.detail["object"].as_str().unwrap_or_default(), attempt = run.attempt, "run started");
        let result = run_steps(platform, &leased, &mut run).await;
        run.finished_at = Some(Utc::now());
        let job = &leased.job;
        let outcome = match result {
            Ok(()) => {
                if run.status == RunStatus::Running {
                    run.status = RunStatus::Succeeded;
                }
                platform.state.complete_job(job.id, worker, Utc::now())
            }
            Err((message, retryable)) => {
                run.status = RunStatus::Failed;
                run.error = Some(message.clone());
                let retry_at = (retryable && job.attempts < job.max_attempts).then(|| {
                    let policy = &platform.project.pipelines.get(&job.pipeline).map(|p| p.retry.clone()).unwrap_or_default();
                    let base = policy.delay_after(job.attempts);
                    // Full jitter on half the delay keeps retries of many jobs from marching in step.
                    let jitter = rand::rng().random_range(0.0..=0.5);
                    let delay = base.mul_f64(0.75 + jitter);
                    Utc::now() + chrono::Duration::from_std(delay).unwrap_or_default()
                });
                match retry_at {
                    Some(at) => warn!(error = %message, attempt = job.attempts, retry_at = %at, "run failed, will retry"),
                    None => error!(error = %message, attempt = job.attempts, "run failed, job moved to the dead-letter queue"),
                }
                platform.state.fail_job(job.id, worker, &message, retry_at, Utc::now())
            }
        };
        if let Err(e) = platform.state.save_run(&run) {
            error!(error = %e, "cannot record the run");
        }
        if let Err(e) = outcome {
            warn!(error = %e, "job state not updated (lease lost); another worker owns it now");
        }
        info!(
            status = run.status.as_str(),
            rows_in = run.rows_in,
            rows_valid = run.rows_valid,
            rows_quarantined = run.rows_quarantined,
            bytes_read = run.bytes_read,
            bytes_written = run.bytes_written,
            duration_ms = (Utc::now() - started_at).num_milliseconds(),
            "run finished"
        );
    }
    .instrument(span)
    .await
}

/// Compacts `table` in the background once one of the partitions an ingest wrote holds
/// many small files (then every partition with small files is merged). At most one per
/// table at a time; the run does not wait for it, and since its rows are already
/// committed, a failure is logged for the next ingest to try again, not retried.
fn compact_later(
    platform: &Arc<Platform>,
    table: &str,
    partitions: std::collections::BTreeSet<String>,
) {
    if !platform.begin_compaction(table) {
        return;
    }
    let (platform, table) = (platform.clone(), table.to_string());
    tokio::spawn(async move {
        let scope = compact::Scope::WhenAnyOf(&partitions, compact::AUTO_COMPACT_FILES);
        match platform.compact(&table, scope).await {
            Ok(r) if r.files_removed > 0 => info!(
                table,
                partitions = r.partitions,
                files_removed = r.files_removed,
                files_added = r.files_added,
                version = r.version,
                "compacted small files"
            ),
            Ok(_) => {}
            Err(e) => warn!(table, error = %format!("{e:#}"), "automatic compaction failed"),
        }
        platform.end_compaction(&table);
    });
}

/// Runs every step; Err carries the message and whether another attempt may help.
async fn run_steps(
    platform: &Arc<Platform>,
    leased: &LeasedJob,
    run: &mut Run,
) -> Result<(), (String, bool)> {
    let Some(pipeline) = platform.project.pipelines.get(&leased.job.pipeline) else {
        return Err((
            format!(
                "pipeline {:?} is no longer in sluice.toml",
                leased.job.pipeline
            ),
            false,
        ));
    };
    let removal = leased.event.kind == EventKind::ObjectRemoved;
    let mut steps = Vec::new();
    // Refresh steps run even when nothing new was ingested: an earlier attempt may have
    // committed the ingest and then failed before its refreshes.
    let mut ingests = 0;
    let mut applied = false;
    for step in &pipeline.steps {
        match step {
            Step::Ingest { table, .. } if removal => {
                // The object is gone: so are its rows (bronze keeps its raw versions).
                let lock = platform.table_lock(table);
                let _shared = lock.read().await;
                let removed = ingest::remove(
                    &platform.paths,
                    table,
                    &platform.locations[table],
                    &leased.event.object,
                    leased.event_seq,
                    &platform.tables,
                )
                .await
                .map_err(|e| {
                    (
                        format!("removing rows from {table}: {e}"),
                        e.code().is_retryable(),
                    )
                })?;
                steps.push(json!({"step": "remove", "table": table, "files_removed": removed}));
            }
            Step::Ingest { table, bronze } => {
                if let Some(bronze) = bronze {
                    let archived = platform
                        .objects
                        .archive(bronze, &leased.event.object)
                        .await
                        .map_err(|e| {
                            (
                                format!("archiving to bronze {bronze}: {e}"),
                                e.code().is_retryable(),
                            )
                        })?;
                    steps.push(match archived {
                        Some(path) => json!({"step": "archive", "table": bronze, "path": path}),
                        None => json!({"step": "archive", "table": bronze, "superseded": true}),
                    });
                }
                let t = &platform.project.tables[table];
                let compiled = platform
                    .contracts
                    .get(table)
                    .ok_or_else(|| (format!("table {table} has no contract"), false))?;
                ingests += 1;
                let lock = platform.table_lock(table);
                let shared = lock.read().await;
                let report = ingest::ingest(
                    &platform.paths,
                    &platform.objects,
                    IngestRequest {
                        table,
                        location: &platform.locations[table],
                        partition_by: &t.partition_by,
                        description: t.description.as_deref(),
                        compiled,
                        object: &leased.event.object,
                        event_seq: leased.event_seq,
                        run_id: run.id,
                        max_invalid_pct: pipeline.max_invalid_pct,
                        batch_rows: BATCH_ROWS,
                        tables: &platform.tables,
                    },
                )
                .await;
                drop(shared);
                let report = match report {
                    Ok(r) => r,
                    Err(e) => {
                        run.detail["steps"] = json!(steps);
                        return Err((format!("ingest into {table}: {e}"), e.code().is_retryable()));
                    }
                };
                run.rows_in += report.rows_in;
                run.rows_valid += report.rows_valid;
                run.rows_quarantined += report.rows_quarantined;
                run.bytes_read += report.bytes_read;
                run.bytes_written += report.bytes_written;
                let outcome = match &report.outcome {
                    Outcome::Applied { version } => json!({"applied": {"version": version}}),
                    Outcome::AlreadyApplied => json!("already_applied"),
                    Outcome::Superseded => json!("superseded"),
                };
                if matches!(report.outcome, Outcome::Applied { .. }) {
                    applied = true;
                } else {
                    run.error = Some(match report.outcome {
                        Outcome::AlreadyApplied => format!(
                            "{table} already holds this object's content: nothing new to ingest"
                        ),
                        _ => {
                            "the object changed after this event; the newer event's run ingests it"
                                .to_string()
                        }
                    });
                }
                let reasons: BTreeMap<_, _> = report.reasons.clone();
                steps.push(json!({
                    "step": "ingest",
                    "table": table,
                    "outcome": outcome,
                    "rows_in": report.rows_in,
                    "rows_valid": report.rows_valid,
                    "rows_quarantined": report.rows_quarantined,
                    "quarantine_reasons": reasons,
                    "partitions": report.partitions,
                }));
                if matches!(report.outcome, Outcome::Applied { .. }) {
                    compact_later(platform, table, report.partitions.clone());
                }
            }
            Step::Refresh { table } => {
                let t = &platform.project.tables[table];
                let sql = t.sql.as_deref().unwrap_or_default();
                let session = platform
                    .lake_session()
                    .await
                    .map_err(|e| (format!("refresh {table}: {e:#}"), true))?;
                let report = gold::refresh(
                    &platform.paths,
                    &session,
                    table,
                    &platform.locations[table],
                    sql,
                    t.description.as_deref(),
                )
                .await
                .map_err(|e| (format!("refresh {table}: {e}"), e.code().is_retryable()))?;
                run.bytes_written += report.bytes_written;
                steps.push(json!({"step": "refresh", "table": table, "rows": report.rows, "version": report.version}));
            }
        }
    }
    run.detail["steps"] = json!(steps);
    if ingests > 0 && !applied {
        run.status = RunStatus::Skipped;
    }
    Ok(())
}
