//! The flush loop of `sluice up`: commits each table's write-ahead tail
//! (`sluice_lake::tail`) to Delta once its oldest rows have waited
//! `[server] flush_interval`, or sooner when it grows large, and everything on the way out.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sluice_lake::LakePaths;
use sluice_lake::tail::{self, Layout};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::platform::Platform;
use crate::worker;

/// How often the loop looks at the tails.
const TICK: Duration = Duration::from_millis(50);
/// Rows that flush a tail before its interval (memory stays bounded under a burst).
const FLUSH_ROWS: usize = 1 << 20;
/// Arrow bytes that flush a tail before its interval.
const FLUSH_BYTES: usize = 128 << 20;

/// How much less CPU the flushes' threads get: a nice value 5 above the requests', a
/// third of their share when both want the CPU.
const FLUSH_NICENESS: i32 = 5;

/// The first wait before a failed flush is tried again; it doubles up to [`MAX_RETRY`].
const FIRST_RETRY: Duration = Duration::from_secs(1);
const MAX_RETRY: Duration = Duration::from_secs(30);

/// Tables whose last flush failed: when to try again, and the wait after that.
type Retries = HashMap<String, (Instant, Duration)>;

/// Flushes due tails until `shutdown`, then flushes them all.
pub async fn run(platform: Arc<Platform>, shutdown: CancellationToken) {
    let mut retries = Retries::new();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(TICK) => {}
        }
        flush(&platform, false, &mut retries).await;
    }
    flush(&platform, true, &mut Retries::new()).await;
}

/// The tables that may have tails: silver tables, then the quarantine.
fn tables(platform: &Platform) -> Vec<(String, String, Layout)> {
    let mut names: Vec<&String> = platform.contracts.keys().collect();
    names.sort();
    let mut out: Vec<(String, String, Layout)> = names
        .into_iter()
        .filter_map(|name| {
            let location = platform.locations.get(name)?;
            Some((name.clone(), location.clone(), Layout::Shared))
        })
        .collect();
    out.push((
        "quarantine".into(),
        LakePaths::QUARANTINE.into(),
        Layout::Quarantine,
    ));
    out
}

/// Flushes the tails that are due (every tail holding rows, with `all`); a table whose
/// flush failed waits out its retry delay first.
async fn flush(platform: &Arc<Platform>, all: bool, retries: &mut Retries) {
    let interval = platform.project.server.flush_interval;
    for (name, location, layout) in tables(platform) {
        if retries
            .get(&name)
            .is_some_and(|(at, _)| Instant::now() < *at)
        {
            continue;
        }
        let Ok(Some(stats)) = tail::stats(&platform.tables, &platform.paths, &location) else {
            continue;
        };
        if stats.entries == 0 {
            continue;
        }
        let due = all
            || stats.oldest.is_some_and(|age| age >= interval)
            || stats.rows >= FLUSH_ROWS
            || stats.bytes >= FLUSH_BYTES;
        if !due {
            continue;
        }
        if flush_table(platform, &name, &location, layout).await {
            retries.remove(&name);
        } else {
            let wait = retries
                .get(&name)
                .map_or(FIRST_RETRY, |(_, w)| (*w * 2).min(MAX_RETRY));
            retries.insert(name, (Instant::now() + wait, wait));
        }
    }
}

/// The tails holding rows not yet committed, by table: entries, rows and the oldest's age.
pub fn waiting(platform: &Platform) -> serde_json::Map<String, serde_json::Value> {
    let mut out = serde_json::Map::new();
    for (name, location, _) in tables(platform) {
        if let Ok(Some(stats)) = tail::stats(&platform.tables, &platform.paths, &location)
            && stats.entries > 0
        {
            out.insert(
                name,
                serde_json::json!({
                    "entries": stats.entries,
                    "rows": stats.rows,
                    "oldest_ms": stats.oldest.map_or(0, |d| d.as_millis() as u64),
                }),
            );
        }
    }
    out
}

/// Whether a tail holds rows, not yet committed, of any of these objects (`bucket/key`)
/// for `table` (its own tail or the quarantine's).
pub fn holds_any(platform: &Platform, table: &str, objects: &[String]) -> bool {
    let held = |location: &str, apps: Vec<String>| {
        platform
            .paths
            .url(location)
            .ok()
            .and_then(|url| platform.tables.tail(&url))
            .is_some_and(|t| t.holds_any(&apps))
    };
    let Some(location) = platform.locations.get(table) else {
        return false;
    };
    held(
        location,
        objects
            .iter()
            .map(|o| sluice_lake::delta::app_id(o))
            .collect(),
    ) || held(
        LakePaths::QUARANTINE,
        objects
            .iter()
            .map(|o| sluice_lake::delta::app_id(&format!("{table}:{o}")))
            .collect(),
    )
}

/// Commits `table`'s tail and the quarantine's now: before an object whose earlier
/// version waits there is replaced or removed (a tail only appends).
pub async fn flush_now(platform: &Arc<Platform>, table: &str) {
    if let Some(location) = platform.locations.get(table) {
        flush_table(platform, table, location, Layout::Shared).await;
    }
    flush_table(
        platform,
        "quarantine",
        LakePaths::QUARANTINE,
        Layout::Quarantine,
    )
    .await;
}

/// Flushes one table's tail; false when it failed (its rows stay in the tail).
async fn flush_table(platform: &Arc<Platform>, name: &str, location: &str, layout: Layout) -> bool {
    let url = match platform.paths.url(location) {
        Ok(url) => url,
        Err(e) => {
            warn!(table = name, error = %e, "cannot flush the tail");
            return false;
        }
    };
    let flushed = {
        let (owned, table, at) = (platform.clone(), name.to_string(), url.clone());
        let flush = async move { tail::flush(&owned.tables, &table, &at, layout).await };
        match background() {
            Some(runtime) => match runtime.spawn(flush).await {
                Ok(flushed) => flushed,
                Err(e) => {
                    warn!(table = name, error = %e, "the tail flush task died; retrying");
                    return false;
                }
            },
            None => flush.await,
        }
    };
    match flushed {
        Ok(Some(flushed)) => {
            info!(
                table = name,
                version = flushed.version,
                entries = flushed.entries,
                rows = flushed.rows,
                "tail flushed"
            );
            // The quarantine too: a flush writes a few files into it each time.
            worker::compact_later(platform, name, flushed.partitions);
            true
        }
        Ok(None) => true,
        // The entries stay in the tail, durable and visible; tried again after a delay.
        Err(e) => {
            warn!(table = name, error = %e, "tail flush failed; retrying");
            false
        }
    }
}

/// The runtime tail flushes run on: one worker thread, and its blocking pool, at a lower
/// CPU priority ([`FLUSH_NICENESS`]). A flush writes a second's small objects as Parquet
/// (~100 ms of CPU under eight writers); on the request runtime's workers it held one of
/// them from HTTP requests for that long, and the objects in flight meanwhile waited. Here
/// it takes the CPU the requests leave. None (flushes run where they are asked) when the
/// runtime cannot be built. Never dropped: a runtime must not be dropped inside another.
pub(crate) fn background() -> Option<&'static tokio::runtime::Handle> {
    static RUNTIME: std::sync::OnceLock<Option<tokio::runtime::Runtime>> =
        std::sync::OnceLock::new();
    RUNTIME
        .get_or_init(|| niced_runtime("sluice-flush"))
        .as_ref()
        .map(|runtime| runtime.handle())
}

/// The runtime automatic compactions (`worker::compact_later`) run on: built like
/// [`background`]'s, with a thread of its own. On the flushes' one worker, a merge of
/// hundreds of files held the thread for seconds between its yields, and every tail's
/// flush waited behind it (in 30,000-object runs a table's flushes, due every second, were
/// up to 5.6-6.5 s apart, its tail growing meanwhile; 1.3-1.6 s on threads of their own,
/// docs/benchmarks.md, session 39): the kernel now shares the spare CPU between the two.
pub(crate) fn compactions() -> Option<&'static tokio::runtime::Handle> {
    static RUNTIME: std::sync::OnceLock<Option<tokio::runtime::Runtime>> =
        std::sync::OnceLock::new();
    RUNTIME
        .get_or_init(|| niced_runtime("sluice-compact"))
        .as_ref()
        .map(|runtime| runtime.handle())
}

/// A one-worker runtime whose threads (its worker and its blocking pool) run at
/// [`FLUSH_NICENESS`]; None, logged, when it cannot be built.
fn niced_runtime(name: &str) -> Option<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name(name)
        .on_thread_start(lower_priority)
        .enable_all()
        .build()
        .map_err(
            |e| warn!(error = %e, runtime = name, "no background runtime; running beside requests"),
        )
        .ok()
}

/// Lowers the calling thread's CPU priority by [`FLUSH_NICENESS`] (Linux: a nice value is
/// per thread); a failure only logs.
fn lower_priority() {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: gettid and setpriority take and return plain integers; the thread id
        // is the caller's own.
        #[allow(unsafe_code)]
        let done = unsafe {
            let tid = libc::gettid() as libc::id_t;
            let now = libc::getpriority(libc::PRIO_PROCESS, tid);
            libc::setpriority(libc::PRIO_PROCESS, tid, now + FLUSH_NICENESS)
        };
        if done != 0 {
            warn!(
                error = %std::io::Error::last_os_error(),
                "cannot lower a background thread's priority"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A compaction's merge holds its thread for seconds between yields: it must not hold
    /// the flushes' one worker meanwhile.
    #[test]
    fn a_compaction_runs_while_a_flush_holds_the_flushes_thread() {
        let (ran, ran_rx) = std::sync::mpsc::channel();
        let flush = background()
            .expect("a flush runtime")
            .spawn(async move { ran_rx.recv_timeout(Duration::from_secs(30)).is_ok() });
        compactions()
            .expect("a compaction runtime")
            .spawn(async move { ran.send(()).expect("the flush waits") });
        assert!(
            futures::executor::block_on(flush).expect("the flush task"),
            "the compaction waited for the flush's thread"
        );
    }
}
