//! MD5 of concurrent uploads, hashed side by side in SIMD lanes.
//!
//! S3 clients expect an MD5 ETag for every object and every multipart part,
//! and one MD5 stream cannot go faster than about 0.6 GB/s here: each 64-byte
//! block depends on the one before. Independent streams can share a vector
//! register, though (eight lanes with AVX2), which is how object stores keep
//! MD5 off the critical path. Every upload's hasher is a [`Md5Stream`]; its
//! chunks go to one hashing thread, which waits a moment for the other open
//! streams to have data too and then feeds them all through
//! `md5_many::Md5Many::update_many` together.
//!
//! The bytes waiting to be hashed are bounded ([`BUDGET_KIB`]): a stream's
//! `update` waits while the thread is that far behind, so memory stays flat
//! however many uploads run.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use md5_many::{Md5Digest, Md5Many, Md5State};
use tokio::sync::{Semaphore, oneshot};

use crate::Error;

/// At most this many KiB wait to be hashed, across all streams.
const BUDGET_KIB: usize = 64 * 1024;
/// How long the thread waits for the other open streams to have data before hashing what it has.
const GATHER: Duration = Duration::from_millis(2);

enum Msg {
    Data {
        id: u64,
        chunk: Bytes,
        kib: u32,
    },
    Finish {
        id: u64,
        reply: oneshot::Sender<Md5Digest>,
    },
    Close {
        id: u64,
    },
}

/// The process's hashing thread: started on first use, lives as long as the process.
struct Lanes {
    tx: mpsc::Sender<Msg>,
    budget: Arc<Semaphore>,
    next_id: AtomicU64,
}

fn lanes() -> Result<&'static Lanes, Error> {
    static LANES: OnceLock<Result<Lanes, String>> = OnceLock::new();
    LANES
        .get_or_init(|| {
            let (tx, rx) = mpsc::channel();
            let budget = Arc::new(Semaphore::new(BUDGET_KIB));
            let thread_budget = budget.clone();
            std::thread::Builder::new()
                .name("sluice-md5".into())
                .spawn(move || Hasher::new(rx, thread_budget).run())
                .map_err(|e| format!("starting the MD5 thread: {e}"))?;
            Ok(Lanes {
                tx,
                budget,
                next_id: AtomicU64::new(0),
            })
        })
        .as_ref()
        .map_err(|e| Error::Internal(e.clone()))
}

fn stopped() -> Error {
    Error::Internal("the MD5 hashing thread stopped".into())
}

/// The MD5 of one upload's bytes, computed by the shared hashing thread.
pub(crate) struct Md5Stream {
    id: u64,
    lanes: &'static Lanes,
    finished: bool,
}

impl Md5Stream {
    /// A new, empty stream.
    pub(crate) fn new() -> Result<Self, Error> {
        let lanes = lanes()?;
        Ok(Self {
            id: lanes.next_id.fetch_add(1, Ordering::Relaxed),
            lanes,
            finished: false,
        })
    }

    /// Appends bytes (the chunk is shared, not copied); waits while too many bytes are waiting.
    pub(crate) async fn update(&mut self, chunk: &Bytes) -> Result<(), Error> {
        if chunk.is_empty() {
            return Ok(());
        }
        let kib = chunk.len().div_ceil(1024).min(BUDGET_KIB) as u32;
        self.lanes
            .budget
            .acquire_many(kib)
            .await
            .map_err(|_| stopped())?
            .forget();
        self.lanes
            .tx
            .send(Msg::Data {
                id: self.id,
                chunk: chunk.clone(),
                kib,
            })
            .map_err(|_| stopped())
    }

    /// The hex MD5 of everything appended.
    pub(crate) async fn finish(mut self) -> Result<String, Error> {
        self.finished = true;
        let (reply, digest) = oneshot::channel();
        self.lanes
            .tx
            .send(Msg::Finish { id: self.id, reply })
            .map_err(|_| stopped())?;
        Ok(hex::encode(digest.await.map_err(|_| stopped())?))
    }
}

impl Drop for Md5Stream {
    /// An abandoned stream (an interrupted upload) frees its lane and its waiting bytes.
    fn drop(&mut self) {
        if !self.finished {
            let _ = self.lanes.tx.send(Msg::Close { id: self.id });
        }
    }
}

#[derive(Default)]
struct Lane {
    state: Md5State,
    pending: VecDeque<(Bytes, u32)>,
    finish: Option<oneshot::Sender<Md5Digest>>,
}

struct Hasher {
    rx: mpsc::Receiver<Msg>,
    budget: Arc<Semaphore>,
    engine: Md5Many,
    lanes: HashMap<u64, Lane>,
}

impl Hasher {
    fn new(rx: mpsc::Receiver<Msg>, budget: Arc<Semaphore>) -> Self {
        Self {
            rx,
            budget,
            engine: Md5Many::new(),
            lanes: HashMap::new(),
        }
    }

    /// Runs until every sender is gone (the process ends first: the senders are static).
    fn run(mut self) {
        loop {
            if !self.has_pending() {
                match self.rx.recv() {
                    Ok(msg) => self.apply(msg),
                    Err(_) => return,
                }
            }
            let open = self.gather();
            self.hash_pending();
            self.answer_finished();
            if !open {
                return;
            }
        }
    }

    fn has_pending(&self) -> bool {
        self.lanes
            .values()
            .any(|l| !l.pending.is_empty() || l.finish.is_some())
    }

    /// Takes what has arrived, then waits (briefly) until every open stream has bytes
    /// waiting, one of them is finishing, or half the budget waits. False once every
    /// sender is gone.
    fn gather(&mut self) -> bool {
        let deadline = Instant::now() + GATHER;
        loop {
            while let Ok(msg) = self.rx.try_recv() {
                self.apply(msg);
            }
            let all_fed = self.lanes.values().all(|l| !l.pending.is_empty());
            let finishing = self.lanes.values().any(|l| l.finish.is_some());
            let full = self.budget.available_permits() < BUDGET_KIB / 2;
            if all_fed || finishing || full {
                return true;
            }
            let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                return true;
            };
            match self.rx.recv_timeout(left) {
                Ok(msg) => self.apply(msg),
                Err(RecvTimeoutError::Timeout) => return true,
                Err(RecvTimeoutError::Disconnected) => return false,
            }
        }
    }

    fn apply(&mut self, msg: Msg) {
        match msg {
            Msg::Data { id, chunk, kib } => {
                self.lanes
                    .entry(id)
                    .or_default()
                    .pending
                    .push_back((chunk, kib));
            }
            Msg::Finish { id, reply } => self.lanes.entry(id).or_default().finish = Some(reply),
            Msg::Close { id } => {
                if let Some(lane) = self.lanes.remove(&id) {
                    let kib: usize = lane.pending.iter().map(|(_, k)| *k as usize).sum();
                    self.budget.add_permits(kib);
                }
            }
        }
    }

    /// Hashes every waiting chunk: each round takes the front chunk of every stream that has one.
    fn hash_pending(&mut self) {
        let mut ids = Vec::new();
        let mut states = Vec::new();
        let mut chunks = Vec::new();
        loop {
            ids.clear();
            states.clear();
            chunks.clear();
            for (id, lane) in self.lanes.iter_mut() {
                if let Some(front) = lane.pending.pop_front() {
                    ids.push(*id);
                    states.push(lane.state);
                    chunks.push(front);
                }
            }
            if ids.is_empty() {
                return;
            }
            let inputs: Vec<&[u8]> = chunks.iter().map(|(c, _)| c.as_ref()).collect();
            self.engine.update_many(&mut states, &inputs);
            for (id, state) in ids.iter().zip(&states) {
                if let Some(lane) = self.lanes.get_mut(id) {
                    lane.state = *state;
                }
            }
            let kib: usize = chunks.iter().map(|(_, k)| *k as usize).sum();
            self.budget.add_permits(kib);
        }
    }

    /// Sends the digest of every finished stream (its bytes are all hashed by now).
    fn answer_finished(&mut self) {
        let done: Vec<u64> = self
            .lanes
            .iter()
            .filter(|(_, l)| l.finish.is_some() && l.pending.is_empty())
            .map(|(id, _)| *id)
            .collect();
        if done.is_empty() {
            return;
        }
        let states: Vec<Md5State> = done.iter().map(|id| self.lanes[id].state).collect();
        let mut digests = vec![Md5Digest::default(); states.len()];
        self.engine.finalize_many(&states, &mut digests);
        for (id, digest) in done.iter().zip(digests) {
            if let Some(reply) = self.lanes.remove(id).and_then(|l| l.finish) {
                let _ = reply.send(digest);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use md5::{Digest, Md5};
    use proptest::prelude::*;

    fn reference(bytes: &[u8]) -> String {
        hex::encode(Md5::digest(bytes))
    }

    /// Streams `data` in chunks of the given lengths (cycled) and returns the hex MD5.
    async fn stream(data: Bytes, lengths: Vec<usize>) -> String {
        let mut md5 = Md5Stream::new().unwrap();
        let mut at = 0;
        for len in lengths.iter().cycle() {
            if at >= data.len() {
                break;
            }
            let end = (at + len).min(data.len());
            md5.update(&data.slice(at..end)).await.unwrap();
            at = end;
            tokio::task::yield_now().await;
        }
        md5.finish().await.unwrap()
    }

    fn bytes(len: usize, seed: u8) -> Bytes {
        (0..len)
            .map(|i| {
                (i as u8)
                    .wrapping_mul(31)
                    .wrapping_add(seed ^ (i >> 9) as u8)
            })
            .collect::<Vec<u8>>()
            .into()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_streams_of_any_chunking_get_the_md5_of_their_own_bytes() {
        let mut tasks = Vec::new();
        for s in 0..12u8 {
            let data = bytes(100_000 + 3_331 * s as usize, s);
            let lengths = vec![1 + 997 * s as usize, 65_536, 63, 4_096 + s as usize];
            let expected = reference(&data);
            tasks.push(tokio::spawn(async move {
                assert_eq!(stream(data, lengths).await, expected, "stream {s}");
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        // An empty stream, and one abandoned halfway, which must not disturb the next.
        assert_eq!(stream(Bytes::new(), vec![1]).await, reference(b""));
        let mut abandoned = Md5Stream::new().unwrap();
        abandoned.update(&bytes(10_000, 1)).await.unwrap();
        drop(abandoned);
        let data = bytes(5_000, 2);
        assert_eq!(stream(data.clone(), vec![700]).await, reference(&data));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        #[test]
        fn any_chunking_of_any_bytes_hashes_like_md5(
            data in proptest::collection::vec(any::<u8>(), 0..20_000),
            lengths in proptest::collection::vec(1usize..5_000, 1..6),
        ) {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            let data = Bytes::from(data);
            let got = rt.block_on(stream(data.clone(), lengths));
            prop_assert_eq!(got, reference(&data));
        }
    }
}
