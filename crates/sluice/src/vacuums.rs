//! The vacuum loop of `sluice up`: every `[server] vacuum_interval` (the first pass a
//! minute after start), each silver and gold table and the quarantine loses the data files
//! its commits retired longer than its `retention` ago, and, on the first pass and once
//! a day after, its old orphans ([`Platform::vacuum`]): finding orphans lists every file of
//! every table, where retired files are named by the log alone. A pass commits nothing and
//! takes no lock; it runs on the compactions' lower-priority runtime, beside requests,
//! ingests and flushes.

use std::sync::Arc;
use std::time::{Duration, Instant};

use sluice_lake::vacuum::Sweep;

use sluice_model::config::Layer;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::platform::{Platform, QUARANTINE};

/// The wait before the first pass: a server that restarts often still vacuums.
const FIRST: Duration = Duration::from_secs(60);

/// How often a pass also looks for orphans (a write's files its commit never named: rare,
/// a crash or a dropped commit), listing every file of every table.
const ORPHANS_EVERY: Duration = Duration::from_secs(24 * 3600);

/// Vacuums every table each interval until `shutdown` (never, with a zero interval).
pub async fn run(platform: Arc<Platform>, shutdown: CancellationToken) {
    let every = platform.project.server.vacuum_interval;
    if every.is_zero() {
        return;
    }
    let mut wait = FIRST.min(every);
    let mut orphans_swept: Option<Instant> = None;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
        wait = every;
        let sweep = match orphans_swept {
            Some(at) if at.elapsed() < ORPHANS_EVERY => Sweep::Retired,
            _ => {
                orphans_swept = Some(Instant::now());
                Sweep::WithOrphans
            }
        };
        for table in tables(&platform) {
            if shutdown.is_cancelled() {
                return;
            }
            let pass = {
                let (platform, table) = (platform.clone(), table.clone());
                async move { platform.vacuum(&table, None, sweep, false).await }
            };
            let result = match crate::tails::compactions() {
                Some(runtime) => match runtime.spawn(pass).await {
                    Ok(result) => result,
                    Err(e) => Err(anyhow::anyhow!("the vacuum task died: {e}")),
                },
                None => pass.await,
            };
            // Files it could not delete are found again by the next pass.
            if let Err(e) = result {
                warn!(table, error = %format!("{e:#}"), "vacuum failed");
            }
        }
    }
}

/// The Delta tables of the project: silver and gold tables, then the quarantine (which
/// exists once a silver table does).
fn tables(platform: &Platform) -> Vec<String> {
    let mut names: Vec<String> = platform
        .project
        .tables
        .values()
        .filter(|t| t.layer != Layer::Bronze)
        .map(|t| t.name.clone())
        .collect();
    names.sort();
    if !platform.contracts.is_empty() {
        names.push(QUARANTINE.to_string());
    }
    names
}
