//! Read after write: small objects this process acknowledged whose jobs are not done yet.
//!
//! `POST /v1/query` first waits (up to `[server] read_after_write`) until every small
//! object acknowledged before the query arrived has had its jobs run, so a client that
//! uploads and then queries sees its rows without polling. While it waits, a query takes
//! no CPU from the ingests it waits for: under a burst of uploads, pollers that used to
//! re-ask every millisecond (each re-ask a planned and executed query) now ask once.
//!
//! Only objects up to [`crate::worker::BATCH`]'s object size are tracked: their ingest
//! takes milliseconds, where a large file's takes seconds and a query should not wait
//! for it. A job counts as done when its run ends, whichever way: succeeded, skipped,
//! failed and scheduled for a retry (a query does not wait out a back-off), or
//! dead-lettered. Nothing here is durable: after a restart there is nothing to wait for,
//! and jobs queued by another process are not seen.
//!
//! A query whose answer only rows of named objects can change
//! ([`sluice_lake::sql::Statement::source_objects`]: one silver table, filtered by
//! `_source_object`) waits for earlier writes of those objects alone: under a burst of
//! uploads, "did my file land?" no longer queues behind every other writer's ingest.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::Notify;
use uuid::Uuid;

/// The small objects acknowledged and not yet ingested, in the order they were acknowledged.
#[derive(Default)]
pub struct PendingWrites {
    inner: Mutex<Inner>,
    changed: Notify,
    /// Whether this process runs workers: without them, nothing here would ever finish.
    active: AtomicBool,
}

#[derive(Default)]
struct Inner {
    /// The sequence number the next write gets.
    next: u64,
    /// Writes with jobs left: event id -> (sequence number, jobs left).
    by_event: HashMap<Uuid, (u64, usize)>,
    /// The sequence numbers of `by_event`, ordered (the first is the oldest write left),
    /// each with the object written (`bucket/key`).
    open: BTreeMap<u64, String>,
}

impl Inner {
    /// Whether a write before `until` that `scope` covers (every write: None) has jobs left.
    fn waits(&self, until: u64, scope: Option<&BTreeSet<String>>) -> bool {
        let mut earlier = self.open.range(..until);
        match scope {
            None => earlier.next().is_some(),
            Some(objects) => earlier.any(|(_, object)| objects.contains(object)),
        }
    }
}

/// How a query's wait ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Waited {
    /// Every earlier write's jobs were done (or there were none).
    Caught,
    /// The bound ran out first; the query answers from what is there.
    TimedOut,
}

impl PendingWrites {
    /// Queries wait from now on: this process runs workers.
    pub fn activate(&self) {
        self.active.store(true, Ordering::Release);
    }

    /// Notes a write of `object` (`bucket/key`) with `jobs` jobs, before it is recorded
    /// (so that a worker that finishes its jobs at once still finds it).
    pub fn begin(&self, event: Uuid, jobs: usize, object: String) {
        if jobs == 0 {
            return;
        }
        let mut inner = self.inner.lock().expect("pending writes lock");
        let seq = inner.next;
        inner.next += 1;
        inner.by_event.insert(event, (seq, jobs));
        inner.open.insert(seq, object);
    }

    /// Forgets a write whose recording failed: no job of it will run.
    pub fn abandon(&self, event: Uuid) {
        let mut inner = self.inner.lock().expect("pending writes lock");
        if let Some((seq, _)) = inner.by_event.remove(&event) {
            inner.open.remove(&seq);
        }
        drop(inner);
        self.changed.notify_waiters();
    }

    /// One job of the write `event` ran to its end (of any kind).
    pub fn job_done(&self, event: Uuid) {
        let mut inner = self.inner.lock().expect("pending writes lock");
        let Some((seq, left)) = inner.by_event.get_mut(&event) else {
            return; // not tracked: a large object, another process's, or before a restart
        };
        *left = left.saturating_sub(1);
        if *left > 0 {
            return;
        }
        let seq = *seq;
        inner.by_event.remove(&event);
        inner.open.remove(&seq);
        drop(inner);
        self.changed.notify_waiters();
    }

    /// How many writes have jobs left.
    pub fn len(&self) -> usize {
        self.inner.lock().expect("pending writes lock").open.len()
    }

    /// Waits until every write noted before this call has no jobs left, or `bound`
    /// passes; with a `scope`, only the writes of those objects are waited for.
    pub async fn wait_for_earlier(
        &self,
        bound: Duration,
        scope: Option<&BTreeSet<String>>,
    ) -> Waited {
        if bound.is_zero() || !self.active.load(Ordering::Acquire) {
            return Waited::Caught;
        }
        let until = self.inner.lock().expect("pending writes lock").next;
        let deadline = tokio::time::Instant::now() + bound;
        loop {
            // Listen before looking: a job finishing between the look and the wait still wakes us.
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let waits = self
                .inner
                .lock()
                .expect("pending writes lock")
                .waits(until, scope);
            if !waits {
                return Waited::Caught;
            }
            tokio::select! {
                _ = changed => {}
                _ = tokio::time::sleep_until(deadline) => return Waited::TimedOut,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn active() -> std::sync::Arc<PendingWrites> {
        let p = std::sync::Arc::new(PendingWrites::default());
        p.activate();
        p
    }

    #[tokio::test]
    async fn a_query_waits_for_earlier_writes_and_not_for_later_ones() {
        let p = active();
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        p.begin(a, 2, "raw/a".into());
        let waiting = tokio::spawn({
            let p = p.clone();
            async move { p.wait_for_earlier(Duration::from_secs(60), None).await }
        });
        tokio::task::yield_now().await;
        p.begin(b, 1, "raw/b".into()); // acknowledged after the query arrived: not waited for
        p.job_done(a);
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(
            !waiting.is_finished(),
            "one of a's two jobs is still running"
        );
        p.job_done(a);
        assert_eq!(waiting.await.unwrap(), Waited::Caught);
        assert_eq!(p.len(), 1);
        p.job_done(b);
        assert_eq!(p.len(), 0);
    }

    #[tokio::test]
    async fn a_query_about_some_objects_waits_for_their_writes_alone() {
        let p = active();
        let (a, b, c) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
        p.begin(a, 1, "raw/a".into());
        p.begin(b, 1, "raw/b".into());
        let only = |o: &str| BTreeSet::from([o.to_string()]);
        // b's write is not done, but a query about c (or about nothing written) cannot
        // see it: no wait, even with a bound of an hour.
        let hour = Duration::from_secs(3600);
        assert_eq!(
            p.wait_for_earlier(hour, Some(&only("raw/c"))).await,
            Waited::Caught
        );
        assert_eq!(
            p.wait_for_earlier(hour, Some(&BTreeSet::new())).await,
            Waited::Caught
        );
        // A query about b waits for b, and not for a.
        let waiting = tokio::spawn({
            let p = p.clone();
            async move {
                p.wait_for_earlier(Duration::from_secs(60), Some(&only("raw/b")))
                    .await
            }
        });
        tokio::task::yield_now().await;
        p.begin(c, 1, "raw/b".into()); // b again, after the query: not waited for
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiting.is_finished(), "b's first write is still running");
        p.job_done(b);
        assert_eq!(waiting.await.unwrap(), Waited::Caught);
        assert_eq!(p.len(), 2, "a and b's second write are left");
        // A query about a and b still waits for a: the first write it covers.
        let both = BTreeSet::from(["raw/a".to_string(), "raw/b".to_string()]);
        let waited = p
            .wait_for_earlier(Duration::from_millis(30), Some(&both))
            .await;
        assert_eq!(waited, Waited::TimedOut);
    }

    #[tokio::test]
    async fn the_wait_is_bounded() {
        let p = active();
        p.begin(Uuid::now_v7(), 1, "raw/a".into());
        let waited = p.wait_for_earlier(Duration::from_millis(30), None).await;
        assert_eq!(waited, Waited::TimedOut);
    }

    #[tokio::test]
    async fn nothing_is_waited_for_without_workers_or_after_an_abandoned_write() {
        let p = std::sync::Arc::new(PendingWrites::default());
        p.begin(Uuid::now_v7(), 1, "raw/a".into());
        // Not active: no worker in this process would ever finish the job.
        assert_eq!(
            p.wait_for_earlier(Duration::from_secs(3600), None).await,
            Waited::Caught
        );
        let e = Uuid::now_v7();
        let q = active();
        q.begin(e, 3, "raw/a".into());
        q.abandon(e);
        assert_eq!(
            q.wait_for_earlier(Duration::from_secs(3600), None).await,
            Waited::Caught
        );
        // A job of a write never noted (another process's, a large object's) is ignored.
        q.job_done(Uuid::now_v7());
        assert_eq!(q.len(), 0);
    }
}
