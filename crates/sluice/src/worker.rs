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
use sluice_lake::ingest::{Outcome, Source, Target};
use sluice_lake::{compact, gold, ingest};
use sluice_model::config::Step;
use sluice_model::event::EventKind;
use sluice_state::{BatchLimits, JobEnd, JobOutcome, LeasedJob, Run, RunStatus};
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
/// Rows per batch in ingest. Parsing, casting and checking a batch allocate a few times its
/// size in intermediates; 16 Ki rows (~4 MiB of taxi rows) instead of 64 Ki took ~90 MiB
/// off a 1 GB ingest's peak memory (docs/benchmarks.md, session 10).
pub const BATCH_ROWS: usize = 16_384;

/// Runs `workers` workers until `shutdown`; in-flight jobs finish or are released.
pub async fn run_pool(platform: Arc<Platform>, workers: usize, shutdown: CancellationToken) {
    platform.pending.activate();
    // The tails' flush loop stops after the workers: its last round commits what they left.
    let flushing = CancellationToken::new();
    let flusher = tokio::spawn(crate::tails::run(platform.clone(), flushing.clone()));
    let vacuums = tokio::spawn(crate::vacuums::run(platform.clone(), shutdown.clone()));
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
    flushing.cancel();
    let _ = flusher.await;
    let _ = vacuums.await;
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
        let mut jobs = vec![leased];
        if batchable(&platform, &jobs[0]) {
            match platform
                .state
                .lease_companions(&name, Utc::now(), LEASE, &jobs[0], BATCH)
            {
                Ok(more) => jobs.extend(more),
                Err(e) => {
                    warn!(worker = %name, error = %e, "cannot lease a batch; running one job")
                }
            }
        }
        let job_ids: Vec<_> = jobs.iter().map(|l| l.job.id).collect();
        let heartbeat = {
            let platform = platform.clone();
            let name = name.clone();
            let job_ids = job_ids.clone();
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(HEARTBEAT).await;
                    let until = Utc::now() + chrono::Duration::from_std(LEASE).unwrap_or_default();
                    for id in &job_ids {
                        if platform.state.extend_lease(*id, &name, until).is_err() {
                            return;
                        }
                    }
                }
            })
        };
        let run = execute(&platform, &name, jobs);
        let _stop_heartbeat = AbortOnDrop(heartbeat);
        tokio::select! {
            _ = run => {}
            _ = shutdown.cancelled() => {
                // Ctrl-C mid-job: give the jobs back; their uncommitted files are orphans and their commit never happened.
                for id in job_ids {
                    let _ = platform.state.release_job(id, &name);
                    warn!(job_id = %id, "shutdown: job released, it will run again at the next start");
                }
                return;
            }
        }
    }
}

/// How many more jobs a worker takes with a small object's ingest: they share one Delta
/// commit per table (and one run of each refresh), so a burst of small objects costs a
/// few commits instead of one per object.
pub const BATCH: BatchLimits = BatchLimits {
    jobs: 63,
    object_bytes: 4 << 20,
    total_bytes: 32 << 20,
};

/// Whether a leased job may take companions: an object-created event of a small object
/// for a pipeline that ingests.
fn batchable(platform: &Platform, leased: &LeasedJob) -> bool {
    leased.event.kind == EventKind::ObjectCreated
        && leased.event.object.size <= BATCH.object_bytes
        && platform
            .project
            .pipelines
            .get(&leased.job.pipeline)
            .is_some_and(|p| p.steps.iter().any(|s| matches!(s, Step::Ingest { .. })))
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// One job of a batch: its run and how its steps went.
struct Member {
    leased: LeasedJob,
    run: Run,
    span: tracing::Span,
    steps: Vec<serde_json::Value>,
    /// Why it failed, and whether another attempt may help.
    failure: Option<(String, bool)>,
    ingests: usize,
    applied: bool,
}

impl Member {
    fn fail(&mut self, message: String, retryable: bool) {
        if self.failure.is_none() {
            self.failure = Some((message, retryable));
        }
    }
}

/// Runs leased jobs of one pipeline to completion together and records one run each.
pub async fn execute(platform: &Arc<Platform>, worker: &str, jobs: Vec<LeasedJob>) {
    let started_at = Utc::now();
    let size = jobs.len();
    let mut members: Vec<Member> = jobs
        .into_iter()
        .map(|leased| {
            let run_id = Uuid::now_v7();
            let span = info_span!("run", run_id = %run_id, event_id = %leased.event.id, job_id = %leased.job.id, pipeline = %leased.job.pipeline);
            let mut detail = json!({"object": format!("{}/{}", leased.event.object.bucket, leased.event.object.key), "steps": []});
            if size > 1 {
                detail["batch"] = json!(size);
            }
            let run = Run {
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
                detail,
            };
            Member {
                leased,
                run,
                span,
                steps: Vec::new(),
                failure: None,
                ingests: 0,
                applied: false,
            }
        })
        .collect();
    // One state-store transaction for the batch's starts and one for its ends, not one
    // per object: each is a commit under the store's one lock. Neither waits for the
    // disk: a power loss that forgets them runs the jobs again, and their steps are
    // idempotent (an object already applied is skipped).
    let starts: Vec<&Run> = members.iter().map(|m| &m.run).collect();
    if let Err(e) = platform.state.save_runs(&starts) {
        error!(error = %e, runs = size, "cannot record the runs");
    }
    for m in &members {
        let _entered = m.span.enter();
        info!(
            object = m.run.detail["object"].as_str().unwrap_or_default(),
            attempt = m.run.attempt,
            batch = size,
            "run started"
        );
    }
    run_steps(platform, &mut members).await;
    finish(platform, worker, members, started_at);
}

/// A member's run as it ended, and what becomes of its job.
struct Ended {
    leased: LeasedJob,
    run: Run,
    span: tracing::Span,
    failure: Option<String>,
    retry_at: Option<chrono::DateTime<Utc>>,
}

/// Records how the members' runs ended and completes, retries or dead-letters their jobs,
/// all in one transaction.
fn finish(
    platform: &Platform,
    worker: &str,
    members: Vec<Member>,
    started_at: chrono::DateTime<Utc>,
) {
    let ended: Vec<Ended> = members.into_iter().map(|m| settle(platform, m)).collect();
    let ends: Vec<JobEnd<'_>> = ended
        .iter()
        .map(|e| JobEnd {
            run: &e.run,
            outcome: match &e.failure {
                None => JobOutcome::Done,
                Some(error) => JobOutcome::Failed {
                    error,
                    retry_at: e.retry_at,
                },
            },
        })
        .collect();
    match platform.state.end_jobs(worker, &ends, Utc::now()) {
        Ok(lost) => {
            for job in lost {
                warn!(job_id = %job, "job state not updated (lease lost); another worker owns it now");
            }
        }
        Err(e) => {
            error!(error = %e, "cannot record the runs' ends; their jobs run again when their leases expire")
        }
    }
    for e in ended {
        let _entered = e.span.enter();
        let run = &e.run;
        crate::routing::emit(
            platform,
            crate::routing::run_status_envelope(run, &platform.project.s3.region),
        );
        platform.pending.job_done(e.leased.event.id.0);
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
}

/// How a member's run ended: its final status, and when its job runs again if it failed.
fn settle(platform: &Platform, m: Member) -> Ended {
    let Member {
        leased,
        mut run,
        span,
        steps,
        failure,
        ingests,
        applied,
    } = m;
    let _entered = span.enter();
    run.detail["steps"] = json!(steps);
    run.finished_at = Some(Utc::now());
    let job = &leased.job;
    let retry_at = match &failure {
        None => {
            run.status = if ingests > 0 && !applied {
                RunStatus::Skipped
            } else {
                RunStatus::Succeeded
            };
            None
        }
        Some((message, retryable)) => {
            run.status = RunStatus::Failed;
            run.error = Some(message.clone());
            let retry_at = (*retryable && job.attempts < job.max_attempts).then(|| {
                let policy = &platform
                    .project
                    .pipelines
                    .get(&job.pipeline)
                    .map(|p| p.retry.clone())
                    .unwrap_or_default();
                let base = policy.delay_after(job.attempts);
                // Full jitter on half the delay keeps retries of many jobs from marching in step.
                let jitter = rand::rng().random_range(0.0..=0.5);
                let delay = base.mul_f64(0.75 + jitter);
                Utc::now() + chrono::Duration::from_std(delay).unwrap_or_default()
            });
            match retry_at {
                Some(at) => {
                    warn!(error = %message, attempt = job.attempts, retry_at = %at, "run failed, will retry")
                }
                None => {
                    error!(error = %message, attempt = job.attempts, "run failed, job moved to the dead-letter queue")
                }
            }
            retry_at
        }
    };
    drop(_entered);
    Ended {
        leased,
        run,
        span,
        failure: failure.map(|(message, _)| message),
        retry_at,
    }
}

/// Compacts `table` in the background once one of the partitions an ingest wrote holds
/// many small files (then every partition with small files is merged). At most one per
/// table at a time; the run does not wait for it, and since its rows are already
/// committed, a failure is logged for the next ingest to try again, not retried.
pub(crate) fn compact_later(
    platform: &Arc<Platform>,
    table: &str,
    partitions: std::collections::BTreeSet<String>,
) {
    if !platform.begin_compaction(table) {
        return;
    }
    let (platform, table) = (platform.clone(), table.to_string());
    let compaction = async move {
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
            Ok(r) if r.superseded => info!(
                table,
                "compaction dropped: an ingest replaced files it merged; the next ingest retries"
            ),
            Ok(_) => {}
            Err(e) if e.is::<crate::platform::CommitCancelled>() => info!(
                table,
                "automatic compaction stopped: the server is stopping; a later ingest compacts again"
            ),
            Err(e) => warn!(table, error = %format!("{e:#}"), "automatic compaction failed"),
        }
        platform.end_compaction(&table);
    };
    // At the tails' flushes' lower priority, on a thread of its own: a compaction merges
    // hundreds of files for seconds, and on the request runtime it held a worker from
    // uploads and queries meanwhile (the small-files case's batches dropped ~25% while it
    // ran); on the flushes' thread it held their flushes.
    match crate::tails::compactions() {
        Some(runtime) => drop(runtime.spawn(compaction)),
        None => drop(tokio::spawn(compaction)),
    }
}

/// Runs every step of the members' pipeline; a member that fails drops out of the
/// steps after, the others go on. A step shared by all (a refresh) fails them all.
async fn run_steps(platform: &Arc<Platform>, members: &mut [Member]) {
    let Some(lead) = members.first() else {
        return;
    };
    let Some(pipeline) = platform.project.pipelines.get(&lead.leased.job.pipeline) else {
        let message = format!(
            "pipeline {:?} is no longer in sluice.toml",
            lead.leased.job.pipeline
        );
        for m in members.iter_mut() {
            m.fail(message.clone(), false);
        }
        return;
    };
    let removal = lead.leased.event.kind == EventKind::ObjectRemoved;
    // Refresh steps run even when nothing new was ingested: an earlier attempt may have
    // committed the ingest and then failed before its refreshes.
    for step in &pipeline.steps {
        if members.iter().all(|m| m.failure.is_some()) {
            return;
        }
        match step {
            Step::Ingest { table, .. } if removal => {
                let objects: Vec<String> = members
                    .iter()
                    .map(|m| {
                        let o = &m.leased.event.object;
                        format!("{}/{}", o.bucket, o.key)
                    })
                    .collect();
                if crate::tails::holds_any(platform, table, &objects) {
                    crate::tails::flush_now(platform, table).await;
                }
                for m in members.iter_mut().filter(|m| m.failure.is_none()) {
                    // The object is gone: so are its rows (bronze keeps its raw versions).
                    let lock = platform.table_lock(table);
                    let _shared = lock.read().await;
                    let removed = ingest::remove(
                        &platform.paths,
                        table,
                        &platform.locations[table],
                        &m.leased.event.object,
                        m.leased.event_seq,
                        &platform.tables,
                    )
                    .instrument(m.span.clone())
                    .await;
                    match removed {
                        Ok(removed) => m.steps.push(
                            json!({"step": "remove", "table": table, "files_removed": removed}),
                        ),
                        Err(e) => m.fail(
                            format!("removing rows from {table}: {e}"),
                            e.code().is_retryable(),
                        ),
                    }
                }
            }
            Step::Ingest { table, bronze } => {
                if let Some(bronze) = bronze {
                    // Which members' copies the batch's one round of fsyncs makes durable.
                    let mut archived: Vec<String> = Vec::new();
                    for m in members.iter_mut() {
                        if m.failure.is_some() {
                            continue;
                        }
                        match platform
                            .objects
                            .archive(bronze, &m.leased.event.object)
                            .await
                        {
                            Ok(Some(path)) => {
                                m.steps.push(
                                    json!({"step": "archive", "table": bronze, "path": path}),
                                );
                                archived.push(path);
                            }
                            Ok(None) => m.steps.push(
                                json!({"step": "archive", "table": bronze, "superseded": true}),
                            ),
                            Err(e) => m.fail(
                                format!("archiving to bronze {bronze}: {e}"),
                                e.code().is_retryable(),
                            ),
                        }
                    }
                    // The copies' fsyncs wait on the disk while the objects are read; no
                    // row is made durable or visible before they are done. Not ingested
                    // without its raw copy: a failure fails the batch, whose retry links
                    // and syncs again.
                    let copies_durable = async {
                        platform
                            .objects
                            .make_archived_durable(&archived)
                            .await
                            .map_err(|e| sluice_lake::Error::Archive {
                                table: bronze.clone(),
                                source: Box::new(e),
                            })
                    };
                    ingest_step(
                        platform,
                        pipeline.max_invalid_pct,
                        table,
                        members,
                        copies_durable,
                    )
                    .await;
                } else {
                    let nothing = async { Ok(()) };
                    ingest_step(platform, pipeline.max_invalid_pct, table, members, nothing).await;
                }
            }
            Step::Refresh { table } => {
                let t = &platform.project.tables[table];
                let sql = t.sql.as_deref().unwrap_or_default();
                let refreshed = async {
                    // Two refreshes of one gold table at once would conflict in Delta: one waits.
                    let lock = platform.table_lock(table);
                    let _alone = lock.write().await;
                    let session = platform
                        .lake_session()
                        .await
                        .map_err(|e| (format!("refresh {table}: {e:#}"), true))?;
                    gold::refresh(
                        &platform.paths,
                        &session,
                        table,
                        &platform.locations[table],
                        sql,
                        t.description.as_deref(),
                    )
                    .await
                    .map_err(|e| (format!("refresh {table}: {e}"), e.code().is_retryable()))
                }
                .await;
                let mut live = members.iter_mut().filter(|m| m.failure.is_none());
                match refreshed {
                    Ok(report) => {
                        let step = json!({"step": "refresh", "table": table, "rows": report.rows, "version": report.version});
                        // One refresh serves the batch; its bytes count once, in the first run.
                        if let Some(first) = live.next() {
                            first.run.bytes_written += report.bytes_written;
                            first.steps.push(step.clone());
                        }
                        for m in live {
                            m.steps.push(step.clone());
                        }
                    }
                    Err((message, retryable)) => {
                        for m in live {
                            m.fail(message.clone(), retryable);
                        }
                    }
                }
            }
        }
    }
}

/// Ingests the live members' objects into `table` in one batch and records each outcome.
async fn ingest_step(
    platform: &Arc<Platform>,
    max_invalid_pct: f64,
    table: &str,
    members: &mut [Member],
    ready: impl std::future::Future<Output = Result<(), sluice_lake::Error>>,
) {
    let live: Vec<usize> = (0..members.len())
        .filter(|&i| members[i].failure.is_none())
        .collect();
    if live.is_empty() {
        return;
    }
    let Some(compiled) = platform.contracts.get(table) else {
        for &i in &live {
            members[i].fail(format!("table {table} has no contract"), false);
        }
        return;
    };
    let t = &platform.project.tables[table];
    let target = Target {
        table,
        location: &platform.locations[table],
        partition_by: &t.partition_by,
        description: t.description.as_deref(),
        compiled,
        max_invalid_pct,
        batch_rows: BATCH_ROWS,
        tables: &platform.tables,
        tail: !platform.project.server.flush_interval.is_zero(),
    };
    // A tail only appends: an object replacing rows that still wait in one is committed
    // behind them.
    let objects: Vec<String> = live
        .iter()
        .map(|&i| {
            let o = &members[i].leased.event.object;
            format!("{}/{}", o.bucket, o.key)
        })
        .collect();
    if crate::tails::holds_any(platform, table, &objects) {
        crate::tails::flush_now(platform, table).await;
    }
    let sources: Vec<Source<'_>> = live
        .iter()
        .map(|&i| Source {
            object: &members[i].leased.event.object,
            event_seq: members[i].leased.event_seq,
            run_id: members[i].run.id,
        })
        .collect();
    let lock = platform.table_lock(table);
    let shared = lock.read().await;
    let results =
        ingest::ingest_batch_when(&platform.paths, &platform.objects, &target, &sources, ready)
            .instrument(members[live[0]].span.clone())
            .await;
    drop(shared);
    let results = match results {
        Ok(r) => r,
        Err(e) => {
            for &i in &live {
                members[i].ingests += 1;
                members[i].fail(format!("ingest into {table}: {e}"), e.code().is_retryable());
            }
            return;
        }
    };
    let mut partitions = std::collections::BTreeSet::new();
    let mut applied = false;
    for (&i, result) in live.iter().zip(results) {
        let m = &mut members[i];
        m.ingests += 1;
        let report = match result {
            Ok(r) => r,
            Err(e) => {
                m.fail(format!("ingest into {table}: {e}"), e.code().is_retryable());
                continue;
            }
        };
        m.run.rows_in += report.rows_in;
        m.run.rows_valid += report.rows_valid;
        m.run.rows_quarantined += report.rows_quarantined;
        m.run.bytes_read += report.bytes_read;
        m.run.bytes_written += report.bytes_written;
        let outcome = match &report.outcome {
            Outcome::Applied { version } => json!({"applied": {"version": version}}),
            Outcome::Logged { seq } => json!({"logged": {"tail_seq": seq}}),
            Outcome::AlreadyApplied => json!("already_applied"),
            Outcome::Superseded => json!("superseded"),
        };
        match report.outcome {
            Outcome::Applied { .. } => {
                m.applied = true;
                applied = true;
                partitions.extend(report.partitions.iter().cloned());
            }
            // Its files come with the tail's flush, which starts any compaction.
            Outcome::Logged { .. } => m.applied = true,
            Outcome::AlreadyApplied => {
                m.run.error = Some(format!(
                    "{table} already holds this object's content: nothing new to ingest"
                ))
            }
            Outcome::Superseded => {
                m.run.error = Some(
                    "the object changed after this event; the newer event's run ingests it"
                        .to_string(),
                )
            }
        }
        let reasons: BTreeMap<_, _> = report.reasons.clone();
        m.steps.push(json!({
            "step": "ingest",
            "table": table,
            "outcome": outcome,
            "rows_in": report.rows_in,
            "rows_valid": report.rows_valid,
            "rows_quarantined": report.rows_quarantined,
            "quarantine_reasons": reasons,
            "partitions": report.partitions,
        }));
    }
    if applied {
        compact_later(platform, table, partitions);
    }
}
