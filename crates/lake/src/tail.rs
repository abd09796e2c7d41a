//! A table's write-ahead tail: validated rows of small objects, durable and queryable
//! before they are Parquet files in a Delta commit.
//!
//! Writing a 1,000-row object spread over 31 daily partitions as 31 Parquet files and a
//! Delta commit takes ~100 ms; appending its rows to one fsync'd Arrow IPC file takes a
//! few. An ingest of small objects ([`crate::ingest`]) appends each batch's rows, with
//! the idempotency keys (`txn`s) its commit would carry, as one file under
//! `<table>/_sluice_tail/`; SQL sessions union the tail's rows with the table's
//! snapshot; [`flush`] later writes every pending entry as one batch of files in one
//! Delta commit carrying all their keys, then recycles the entries' files.
//!
//! **Invariant:** every row is in exactly one of the query's two sources. A flush marks
//! its entries before it commits and resolves the mark with the commit's version; a query
//! reads the table's version after capturing the entries, and leaves out an entry only
//! when that version holds the entry's flush (waiting, in the few milliseconds a commit is
//! in flight, only when its version could). Entries are dropped from memory only after
//! their commit is visible to every later read of the table.
//!
//! **Durability:** an entry is written into a slot file (`<n>.slot`) with a header that
//! names its sequence number, its length and a CRC-32 of it all, and fdatasync'd before
//! the append returns, so an acknowledged ingest survives a crash: one flush of the disk
//! per append, no rename and no directory fsync (a new slot's directory entry is fsync'd
//! once, when the slot is made). A crash in the middle of a write leaves a slot whose
//! checksum fails: never acknowledged, it reads as free. On start, the entries are read
//! back in sequence order; those whose `txn`s the Delta table already holds (a flushed
//! entry's slot keeps its rows until written over) are dropped.
//!
//! **Two tables, one round:** a batch's silver entry and its quarantine entry are
//! written and fdatasync'd side by side, and published once both are durable. The silver
//! entry names the quarantine `txn`s it [`Needs`]; on start, an entry whose needs neither
//! the quarantine's tail nor its Delta log holds (a crash kept one write, not the other)
//! is dropped, so the object's retry ingests it whole instead of skipping it as applied
//! and losing its quarantined rows.
//!
//! **Recycled slots:** a flushed entry's slot is kept as a spare (up to [`MAX_SPARES`])
//! and the next append writes over it in place instead of creating a file. A steady
//! stream of small objects then creates and deletes no inode per ingest: on ext4 without a
//! journal each new inode is found by stepping over every inode deleted in the last
//! minutes, which took 10% of the server's CPU in the freshness benchmark
//! (docs/benchmarks.md, session 27). A process reading the tail beside the server (a CLI
//! query) reads each slot whole: one written over meanwhile fails its checksum (an entry
//! not yet acknowledged when the listing was taken) or holds an entry the table's version,
//! read after, already holds. Entries of sluice before slots (`<seq>.arrow`) are read
//! back, and deleted once flushed.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use deltalake::protocol::{DeltaOperation, SaveMode};
use tokio::sync::watch;

use crate::delta::{self, FileWriter, TAG_COMPACTED, TableCache};
use crate::scan::TailBatch;
use crate::{Error, LakePaths};

/// The directory of a table's tail, inside the table's directory (Delta readers and
/// `VACUUM` leave directories starting with `_` alone).
pub const DIR: &str = "_sluice_tail";

/// Footer metadata key of an entry's `txn`s (a JSON list of `[app_id, version]`).
const TXNS_KEY: &str = "sluice.txns";

/// Footer metadata key of what an entry [`Needs`] of another table (JSON).
const NEEDS_KEY: &str = "sluice.needs";

/// Rows of another table that an entry's rows must not outlive: a batch's silver entry
/// needs the quarantine entry written beside it (both are fsync'd at once, so a crash can
/// keep the one without the other). An entry whose needs a restart does not find is
/// dropped ([`recover`]): its objects were never acknowledged, and their ingests run
/// again, quarantined rows and all, instead of being skipped as applied.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Needs {
    /// The other table's URL relative to this table's (`../../sluice/quarantine/`).
    pub table: String,
    /// The `txn`s (`[app_id, version]`) the other table must hold, in its Delta log or
    /// its tail.
    pub txns: Vec<(String, i64)>,
}

/// Flushed entries' slots a tail keeps to write later entries over ([`Tail::prune`]).
pub const MAX_SPARES: usize = 128;

/// The suffix of a slot file.
const SLOT: &str = ".slot";

/// The suffix of an entry file of sluice before slots: read back, deleted once flushed.
const LEGACY_ENTRY: &str = ".arrow";

/// A slot's header: [`MAGIC`], the entry's sequence number, the length of the Arrow IPC
/// file after the header (both little-endian u64) and the CRC-32 of the header's first 24
/// bytes and the IPC file (little-endian u32), then 4 bytes of zeros.
const HEADER: usize = 32;

/// The first bytes of a slot holding an entry.
const MAGIC: &[u8; 8] = b"SLTAIL01";

/// The rows of one ingest, waiting in the tail.
pub struct Entry {
    seq: u64,
    path: PathBuf,
    batches: Vec<RecordBatch>,
    txns: Vec<(String, i64)>,
    needs: Option<Needs>,
    rows: usize,
    bytes: usize,
    since: Instant,
    flush: Mutex<Option<Arc<FlushMark>>>,
    /// The rows as queries read them ([`Entry::batches_as`]), kept from query to query.
    query_form: Mutex<Option<QueryForm>>,
}

/// An entry's rows conformed to a query schema.
type QueryForm = (SchemaRef, Arc<[TailBatch]>);

impl std::fmt::Debug for Entry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Entry")
            .field("seq", &self.seq)
            .field("rows", &self.rows)
            .field("txns", &self.txns)
            .finish()
    }
}

impl Entry {
    /// The entry's rows.
    pub fn batches(&self) -> &[RecordBatch] {
        &self.batches
    }

    /// The entry's non-empty batches conformed to `schema` ([`conform`]), with their
    /// statistics: computed on the first query that reads the entry with that schema and
    /// kept, so a table polled while rows wait in its tail casts each row once, not once
    /// per query.
    pub fn batches_as(
        &self,
        schema: &SchemaRef,
    ) -> Result<Arc<[TailBatch]>, arrow::error::ArrowError> {
        let mut form = self.query_form.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((kept, rows)) = form.as_mut() {
            if Arc::ptr_eq(kept, schema) {
                return Ok(rows.clone());
            }
            if kept == schema {
                // Equal, another Arc: kept instead, so the next query's is found by pointer.
                *kept = schema.clone();
                return Ok(rows.clone());
            }
        }
        let rows: Arc<[TailBatch]> = self
            .batches
            .iter()
            .filter(|b| b.num_rows() > 0)
            .map(|b| conform(b, schema).map(TailBatch::new))
            .collect::<Result<_, _>>()?;
        *form = Some((schema.clone(), rows.clone()));
        Ok(rows)
    }

    fn mark(&self) -> Option<Arc<FlushMark>> {
        self.flush.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn set_mark(&self, mark: Option<Arc<FlushMark>>) {
        *self.flush.lock().unwrap_or_else(|p| p.into_inner()) = mark;
    }
}

/// A flush in progress over some entries.
struct FlushMark {
    /// The table's version the flush started from: a read at or below it cannot hold it.
    base: i64,
    /// The commit's version once known; `Some(None)` when the flush failed.
    outcome: watch::Sender<Option<Option<i64>>>,
}

impl FlushMark {
    /// Whether a read of the table at `version` holds this flush's rows, when that is
    /// known without waiting: None while the flush is still committing and `version` is
    /// past its base (the version may be its commit's).
    fn known(&self, version: i64) -> Option<bool> {
        if version <= self.base {
            return Some(false);
        }
        match *self.outcome.borrow() {
            Some(Some(v)) => Some(v <= version),
            Some(None) => Some(false),
            None => None,
        }
    }

    /// Whether a read of the table at `version` holds this flush's rows.
    async fn held_by(&self, version: i64) -> bool {
        if let Some(known) = self.known(version) {
            return known;
        }
        let mut rx = self.outcome.subscribe();
        match rx.wait_for(|o| o.is_some()).await {
            Ok(outcome) => matches!(*outcome, Some(Some(v)) if v <= version),
            // The flush was dropped without an outcome: it did not commit.
            Err(_) => false,
        }
    }
}

/// One table's tail.
pub struct Tail {
    dir: PathBuf,
    entries: Mutex<Vec<Arc<Entry>>>,
    next_seq: Mutex<u64>,
    /// Appends one at a time: a key already in the tail is refused, not written twice.
    appending: tokio::sync::Mutex<()>,
    /// Flushes one at a time.
    flushing: tokio::sync::Mutex<()>,
    /// Slots free to write over: flushed entries' and those a crash left half-written.
    spares: Mutex<Vec<PathBuf>>,
    /// The number the next new slot is named by.
    next_slot: Mutex<u64>,
}

impl std::fmt::Debug for Tail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tail").field("dir", &self.dir).finish()
    }
}

/// What a tail holds, for status pages and flush decisions.
#[derive(Debug, Clone, Copy, Default)]
pub struct TailStats {
    /// Entries (ingests) waiting.
    pub entries: usize,
    /// Rows waiting.
    pub rows: usize,
    /// Bytes of Arrow data waiting.
    pub bytes: usize,
    /// How long the oldest entry has waited.
    pub oldest: Option<Duration>,
}

fn io_error(what: String) -> impl FnOnce(std::io::Error) -> Error {
    move |source| Error::Io { what, source }
}

impl Tail {
    /// The tail directory of the table at `url` (None for a table not on local disk).
    pub fn dir_of(url: &url::Url) -> Option<PathBuf> {
        url.to_file_path().ok().map(|p| p.join(DIR))
    }

    /// Reads the tail back from `dir` (empty when there is none), its entries in sequence
    /// order. Slots that hold no entry (half-written by a crash, never acknowledged) are
    /// free for appends; files of sluice before slots that held none (`.tmp`, `.spare`)
    /// are deleted. Only when `owner` (the process serving the data directory): a CLI
    /// query beside it only reads.
    pub fn open(dir: PathBuf, owner: bool) -> Result<Self, Error> {
        let mut entries = Vec::new();
        let mut next_seq = 0;
        let (mut spares, mut next_slot) = (Vec::new(), 0);
        match std::fs::read_dir(&dir) {
            Ok(listing) => {
                let mut files = Vec::new();
                for item in listing {
                    let path = item.map_err(io_error(format!("listing {}", dir.display())))?;
                    files.push(path.path());
                }
                files.sort();
                for path in files {
                    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
                    if name.ends_with(".tmp") || name.ends_with(".spare") {
                        if owner {
                            let _ = std::fs::remove_file(&path);
                        }
                        continue;
                    }
                    let entry = if let Some(n) = slot_number(name) {
                        next_slot = next_slot.max(n + 1);
                        match read_slot(&path)? {
                            Some(entry) => entry,
                            None => {
                                if owner {
                                    spares.push(path);
                                }
                                continue;
                            }
                        }
                    } else if let Some(seq) =
                        name.strip_suffix(LEGACY_ENTRY).and_then(|s| s.parse().ok())
                    {
                        match read_entry(&path, seq) {
                            Ok(entry) => entry,
                            // Flushed and deleted by the serving process since the listing.
                            Err(Error::Io { source, .. })
                                if !owner && source.kind() == std::io::ErrorKind::NotFound =>
                            {
                                continue;
                            }
                            Err(e) => return Err(e),
                        }
                    } else {
                        continue;
                    };
                    next_seq = next_seq.max(entry.seq + 1);
                    entries.push(Arc::new(entry));
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_error(format!("reading {}", dir.display()))(e)),
        }
        entries.sort_by_key(|e| e.seq);
        Ok(Self {
            dir,
            entries: Mutex::new(entries),
            next_seq: Mutex::new(next_seq),
            appending: tokio::sync::Mutex::new(()),
            flushing: tokio::sync::Mutex::new(()),
            spares: Mutex::new(spares),
            next_slot: Mutex::new(next_slot),
        })
    }

    fn entries(&self) -> std::sync::MutexGuard<'_, Vec<Arc<Entry>>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Every entry now in the tail (flushed or not).
    pub fn capture(&self) -> Vec<Arc<Entry>> {
        self.entries().clone()
    }

    /// The app ids of the entries among `captured` whose flush may or may not be in a read
    /// of the table at `version`: it is committing now, and the version is past its base.
    /// What the table's `txn`s at that version say of them decides ([`Tail::visible`]).
    pub fn undecided(captured: &[Arc<Entry>], version: i64) -> Vec<String> {
        let mut apps = BTreeSet::new();
        for entry in captured {
            if entry
                .mark()
                .is_some_and(|mark| mark.known(version).is_none())
            {
                apps.extend(entry.txns.iter().map(|(app, _)| app.clone()));
            }
        }
        apps.into_iter().collect()
    }

    /// The entries a read of the table at `version` does not hold: those not flushed, and
    /// those whose flush commits after `version`. For an entry whose flush is committing
    /// as the read opens, `txns` (the table's at `version`, of [`Tail::undecided`]'s app
    /// ids) decides: the flush's commit carries the entry's `txn`s, and only that commit
    /// (or a later one, after it) can. Without them the read waits for the flush's outcome
    /// (the commit's log entry is written, then made durable, then the flush learns its
    /// version on its lower-priority thread: every query opened meanwhile waited).
    pub async fn visible(
        captured: Vec<Arc<Entry>>,
        version: i64,
        txns: Option<&HashMap<String, i64>>,
    ) -> Vec<Arc<Entry>> {
        let mut visible = Vec::with_capacity(captured.len());
        for entry in captured {
            let held = match entry.mark() {
                None => false,
                Some(mark) => match (mark.known(version), txns) {
                    (Some(known), _) => known,
                    (None, Some(txns)) => entry
                        .txns
                        .iter()
                        .all(|(app, v)| txns.get(app).is_some_and(|t| t >= v)),
                    (None, None) => mark.held_by(version).await,
                },
            };
            if !held {
                visible.push(entry);
            }
        }
        visible
    }

    /// The highest version of each of `app_ids` among `entries`.
    pub fn txn_versions<'a>(
        entries: &[Arc<Entry>],
        app_ids: impl IntoIterator<Item = &'a String>,
    ) -> HashMap<String, i64> {
        let wanted: BTreeSet<&String> = app_ids.into_iter().collect();
        let mut found: HashMap<String, i64> = HashMap::new();
        for entry in entries {
            for (app, version) in &entry.txns {
                if wanted.contains(app) {
                    let v = found.entry(app.clone()).or_insert(*version);
                    *v = (*v).max(*version);
                }
            }
        }
        found
    }

    /// Whether an entry still in the tail (a flush in flight included) holds any of
    /// `app_ids`.
    pub fn holds_any(&self, app_ids: &[String]) -> bool {
        self.entries()
            .iter()
            .any(|e| e.txns.iter().any(|(app, _)| app_ids.contains(app)))
    }

    /// What the tail holds (a flush in flight included: its rows are in Delta only once
    /// it is done).
    pub fn stats(&self) -> TailStats {
        let pending = self.entries();
        TailStats {
            entries: pending.len(),
            rows: pending.iter().map(|e| e.rows).sum(),
            bytes: pending.iter().map(|e| e.bytes).sum(),
            oldest: pending.iter().map(|e| e.since.elapsed()).max(),
        }
    }

    /// Appends one ingest's rows and the `txn`s its commit would carry, durably. Refused
    /// (retryably) when an entry still in the tail holds one of the same app ids: the
    /// caller checked before reading, so another ingest of the same object got there first.
    pub async fn append(
        &self,
        table: &str,
        schema: SchemaRef,
        batches: Vec<RecordBatch>,
        txns: Vec<(String, i64)>,
    ) -> Result<u64, Error> {
        self.stage(table, schema, batches, txns)
            .await?
            .publish()
            .await
    }

    /// The first half of [`Self::append`]: the entry encoded, with the slot it will be
    /// written into. Nothing is on disk or in the tail until [`Staged::publish`]; appends
    /// to this tail wait meanwhile, and dropping the stage frees its slot. A batch stages
    /// its silver rows while its quarantined rows are appended to the quarantine's tail,
    /// so the silver entry's encoding overlaps the quarantine's write, and its write waits
    /// for the quarantine entry to be durable (a retry finds the quarantined rows first,
    /// never the valid rows alone).
    pub async fn stage(
        &self,
        table: &str,
        schema: SchemaRef,
        batches: Vec<RecordBatch>,
        txns: Vec<(String, i64)>,
    ) -> Result<Staged<'_>, Error> {
        self.stage_needing(table, schema, batches, txns, None).await
    }

    /// [`Self::stage`] an entry that [`Needs`] rows of another table.
    pub async fn stage_needing(
        &self,
        table: &str,
        schema: SchemaRef,
        batches: Vec<RecordBatch>,
        txns: Vec<(String, i64)>,
        needs: Option<Needs>,
    ) -> Result<Staged<'_>, Error> {
        let one = self.appending.lock().await;
        let apps: Vec<String> = txns.iter().map(|(a, _)| a.clone()).collect();
        if self.holds_any(&apps) {
            return Err(Error::Busy(format!(
                "{table}: another ingest of the same object is waiting in the table's tail"
            )));
        }
        let seq = {
            let mut next = self.next_seq.lock().unwrap_or_else(|p| p.into_inner());
            *next += 1;
            *next - 1
        };
        let spare = self.spares.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let (path, new) = match spare {
            Some(path) => (path, false),
            None => {
                let mut next = self.next_slot.lock().unwrap_or_else(|p| p.into_inner());
                *next += 1;
                (self.dir.join(format!("{:020}{SLOT}", *next - 1)), true)
            }
        };
        let encoded = match encode_entry(seq, &schema, &batches, &txns, needs.as_ref()) {
            Ok(encoded) => encoded,
            Err(e) => {
                if !new {
                    self.spares
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push(path);
                }
                return Err(Error::Internal(format!(
                    "{table}: encoding tail entry {seq}: {e}"
                )));
            }
        };
        let rows = batches.iter().map(|b| b.num_rows()).sum();
        let bytes = batches.iter().map(|b| b.get_array_memory_size()).sum();
        Ok(Staged {
            tail: self,
            one: Some(one),
            entry: Some(Entry {
                seq,
                path,
                batches,
                txns,
                needs,
                rows,
                bytes,
                since: Instant::now(),
                flush: Mutex::new(None),
                query_form: Mutex::new(None),
            }),
            new,
            encoded,
        })
    }

    /// Forgets entries the table holds (a crash came between a flush's commit and its
    /// deletes), deleting their files when `owner`.
    fn drop_committed(
        &self,
        owner: bool,
        committed: impl Fn(&Entry) -> bool,
    ) -> Result<usize, Error> {
        let gone = self.take(committed);
        if owner {
            for entry in &gone {
                self.recycle(&entry.path)?;
            }
        }
        Ok(gone.len())
    }

    /// Takes the entries `which` picks out of the tail.
    fn take(&self, which: impl Fn(&Entry) -> bool) -> Vec<Arc<Entry>> {
        let mut entries = self.entries();
        let (gone, kept) = entries.drain(..).partition(|e| which(e));
        *entries = kept;
        gone
    }

    /// Clears the slot at `path` durably and keeps it as a spare.
    fn clear_to_spares(&self, path: &Path) -> std::io::Result<()> {
        clear_slot(path, true)?;
        self.spares
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(path.to_path_buf());
        Ok(())
    }

    /// Forgets entries that must not be read back (their [`Needs`] are missing), clearing
    /// their slots durably when `owner`: a slot read back later could find its needs met
    /// by its objects' next ingest, and hold their rows twice.
    fn drop_entries(&self, owner: bool, dropped: impl Fn(&Entry) -> bool) -> Result<usize, Error> {
        let gone = self.take(dropped);
        if owner {
            for entry in &gone {
                self.clear_to_spares(&entry.path)
                    .map_err(io_error(format!("clearing {}", entry.path.display())))?;
            }
        }
        Ok(gone.len())
    }

    /// Forgets flushed entries: their slots become spares for later appends (deleted
    /// past [`MAX_SPARES`]), their headers cleared so a restart does not read their rows
    /// again. Nothing is fsync'd: a slot whose clearing a crash undoes, or a file it
    /// brings back, holds a flushed entry, which a restart drops as the table holds its
    /// keys.
    fn prune(&self, flushed: &[Arc<Entry>]) -> Result<(), Error> {
        let seqs: BTreeSet<u64> = flushed.iter().map(|e| e.seq).collect();
        self.entries().retain(|e| !seqs.contains(&e.seq));
        for entry in flushed {
            self.recycle(&entry.path)?;
        }
        Ok(())
    }

    /// Keeps a flushed entry's slot as a spare, or deletes it when the tail keeps enough
    /// spares (an entry file of sluice before slots always).
    fn recycle(&self, path: &Path) -> Result<(), Error> {
        let mut spares = self.spares.lock().unwrap_or_else(|p| p.into_inner());
        let is_slot = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(slot_number)
            .is_some();
        if !is_slot || spares.len() >= MAX_SPARES {
            drop(spares);
            return remove_file(path);
        }
        match clear_slot(path, false) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io_error(format!("clearing {}", path.display()))(e)),
        }
        spares.push(path.to_path_buf());
        Ok(())
    }
}

/// The number of a slot file named `<n>.slot`.
fn slot_number(name: &str) -> Option<u64> {
    name.strip_suffix(SLOT).and_then(|n| n.parse().ok())
}

fn remove_file(path: &Path) -> Result<(), Error> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_error(format!("deleting {}", path.display()))(e)),
    }
}

fn sync_dir(dir: &Path) -> Result<(), Error> {
    fsync_dir(dir).map_err(io_error(format!("syncing {}", dir.display())))
}

fn fsync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir).and_then(|d| d.sync_all())
}

/// A tail entry encoded, with its slot ([`Tail::stage`]); the tail's appends wait until
/// it is published or dropped.
pub struct Staged<'a> {
    tail: &'a Tail,
    /// The tail's append lock, held until the entry is published or dropped.
    one: Option<tokio::sync::MutexGuard<'a, ()>>,
    /// The entry to publish; None once published or lost to a failed write.
    entry: Option<Entry>,
    /// Its slot is a file yet to be made.
    new: bool,
    /// The slot's bytes: header and Arrow IPC file.
    encoded: Vec<u8>,
}

impl<'a> Staged<'a> {
    /// Writes the entry into its slot, durably, and adds it to the tail, where queries see
    /// it; its sequence number.
    pub async fn publish(self) -> Result<u64, Error> {
        Ok(self.write().await?.publish())
    }

    /// Writes the entry into its slot, durably, without adding it to the tail yet (see
    /// [`Written`]).
    pub async fn write(mut self) -> Result<Written<'a>, Error> {
        let Some(entry) = self.entry.take() else {
            return Err(Error::Internal("a tail entry written twice".into()));
        };
        let (dir, path, new) = (self.tail.dir.clone(), entry.path.clone(), self.new);
        let encoded = std::mem::take(&mut self.encoded);
        let written = tokio::task::spawn_blocking(move || {
            let written = write_slot(&dir, &path, new, &encoded);
            keep_encoding(encoded);
            written
        })
        .await
        .map_err(|e| Error::Internal(format!("writing a tail entry: {e}")));
        // A failed write's slot leaves the spares (cleared by `write_slot`).
        written.and_then(|done| done)?;
        Ok(Written {
            tail: self.tail,
            _one: self.one.take(),
            entry: Some(entry),
        })
    }
}

/// A tail entry durable in its slot, not yet in the tail: [`Written::publish`] adds it
/// (queries see it from then on). Dropped unpublished (the other entry of its batch
/// failed to be written), its slot is cleared, durably, and kept as a spare, so a restart
/// does not read the entry back. The tail's appends wait meanwhile.
pub struct Written<'a> {
    tail: &'a Tail,
    _one: Option<tokio::sync::MutexGuard<'a, ()>>,
    entry: Option<Entry>,
}

impl Written<'_> {
    /// Adds the entry to the tail; its sequence number.
    pub fn publish(mut self) -> u64 {
        let Some(entry) = self.entry.take() else {
            return 0;
        };
        let seq = entry.seq;
        self.tail.entries().push(Arc::new(entry));
        seq
    }
}

impl Drop for Written<'_> {
    fn drop(&mut self) {
        let Some(entry) = self.entry.take() else {
            return;
        };
        if let Err(e) = self.tail.clear_to_spares(&entry.path) {
            tracing::error!(
                slot = %entry.path.display(),
                error = %e,
                "a tail entry left unpublished could not be cleared; a restart drops it only if its needs are missing"
            );
        }
    }
}

impl Drop for Staged<'_> {
    fn drop(&mut self) {
        keep_encoding(std::mem::take(&mut self.encoded));
        // Never written: its slot is free again (a new one was never made).
        if let Some(entry) = self.entry.take()
            && !self.new
        {
            self.tail
                .spares
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(entry.path);
        }
    }
}

/// A slot's bytes for an entry: the header, then the Arrow IPC file of `batches` with the
/// `txns` in its footer.
fn encode_entry(
    seq: u64,
    schema: &SchemaRef,
    batches: &[RecordBatch],
    txns: &[(String, i64)],
    needs: Option<&Needs>,
) -> Result<Vec<u8>, String> {
    let size: usize = batches.iter().map(|b| b.get_array_memory_size()).sum();
    let buffer = spare_encoding(HEADER + size + 4096);
    encode_entry_into(buffer, seq, schema, batches, txns, needs)
}

/// [`encode_entry`] into `buffer`, whatever it held.
fn encode_entry_into(
    mut buffer: Vec<u8>,
    seq: u64,
    schema: &SchemaRef,
    batches: &[RecordBatch],
    txns: &[(String, i64)],
    needs: Option<&Needs>,
) -> Result<Vec<u8>, String> {
    let schema = batches
        .first()
        .map(|b| b.schema())
        .unwrap_or(schema.clone());
    let ipc = |e: arrow::error::ArrowError| e.to_string();
    buffer.clear();
    buffer.resize(HEADER, 0);
    let mut writer = arrow::ipc::writer::FileWriter::try_new(buffer, &schema).map_err(ipc)?;
    let txns = serde_json::to_string(txns).map_err(|e| e.to_string())?;
    writer.write_metadata(TXNS_KEY, txns);
    if let Some(needs) = needs {
        writer.write_metadata(
            NEEDS_KEY,
            serde_json::to_string(needs).map_err(|e| e.to_string())?,
        );
    }
    for batch in batches {
        writer.write(batch).map_err(ipc)?;
    }
    writer.finish().map_err(ipc)?;
    let mut buffer = writer.into_inner().map_err(ipc)?;
    let len = (buffer.len() - HEADER) as u64;
    buffer[..8].copy_from_slice(MAGIC);
    buffer[8..16].copy_from_slice(&seq.to_le_bytes());
    buffer[16..24].copy_from_slice(&len.to_le_bytes());
    let crc = checksum(&buffer[..24], &buffer[HEADER..]);
    buffer[24..28].copy_from_slice(&crc.to_le_bytes());
    Ok(buffer)
}

/// Encodings of the entries written, for the next entries to be encoded into (at most
/// one per core, none larger than [`MAX_SPARE_ENCODING`]): each 1,000-row object's entry
/// (~250 KB) took fresh pages, which the kernel faulted in and zeroed, the largest fault
/// site left in session 51's profile under eight writers (2.5% of the server's samples,
/// docs/benchmarks.md). Shared by every thread: entries are encoded on the runtime's
/// threads and written on the blocking pool's.
static SPARE_ENCODINGS: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());

/// The largest encoding kept for the next entry: a small object's, not a large file's.
const MAX_SPARE_ENCODING: usize = 4 << 20;

/// An empty buffer of at least `capacity` bytes, a spare's when there is one.
fn spare_encoding(capacity: usize) -> Vec<u8> {
    let spare = SPARE_ENCODINGS
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .pop();
    match spare {
        Some(mut buffer) => {
            buffer.clear();
            buffer.reserve(capacity);
            buffer
        }
        None => Vec::with_capacity(capacity),
    }
}

/// Keeps an entry's encoding for the next entry, unless it is a large file's or enough
/// are kept.
fn keep_encoding(buffer: Vec<u8>) {
    if buffer.capacity() == 0 || buffer.capacity() > MAX_SPARE_ENCODING {
        return;
    }
    let mut spare = SPARE_ENCODINGS.lock().unwrap_or_else(|p| p.into_inner());
    if spare.len() < crate::cores() {
        spare.push(buffer);
    }
}

/// The CRC-32 of a header's first 24 bytes and the IPC file after it.
fn checksum(head: &[u8], body: &[u8]) -> u32 {
    let mut crc = crc32fast::Hasher::new();
    crc.update(head);
    crc.update(body);
    crc.finalize()
}

/// The sequence number and IPC file of a slot's bytes; None when they hold no whole entry
/// (a new slot a crash left empty, a write a crash cut short, a cleared slot).
fn slot_entry(bytes: &[u8]) -> Option<(u64, &[u8])> {
    if bytes.len() < HEADER || &bytes[..8] != MAGIC {
        return None;
    }
    let word = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap_or([0; 8]));
    let (seq, len) = (word(8), word(16));
    let end = usize::try_from(len).ok()?.checked_add(HEADER)?;
    let body = bytes.get(HEADER..end)?;
    let crc = u32::from_le_bytes(bytes[24..28].try_into().unwrap_or([0; 4]));
    (checksum(&bytes[..24], body) == crc).then_some((seq, body))
}

/// Writes a slot's bytes over it from the start, cut to their length, and fdatasyncs it;
/// a new slot (and a new tail directory) has its directory entry fsync'd too. A write
/// that fails is not acknowledged, so its slot must not read back as an entry beside the
/// retry's: it is cleared, as far as the disk lets it.
fn write_slot(dir: &Path, path: &Path, new: bool, bytes: &[u8]) -> Result<(), Error> {
    use std::io::Write as _;
    let what = || format!("writing {}", path.display());
    if new && !dir.exists() {
        std::fs::create_dir_all(dir).map_err(io_error(format!("creating {}", dir.display())))?;
        if let Some(table) = dir.parent() {
            sync_dir(table)?;
        }
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(new)
        .open(path)
        .map_err(io_error(what()))?;
    let written = file
        .write_all(bytes)
        // A spare may be longer than the entry written over it.
        .and_then(|()| file.set_len(bytes.len() as u64))
        .and_then(|()| file.sync_data())
        .and_then(|()| if new { fsync_dir(dir) } else { Ok(()) });
    if let Err(e) = written {
        if let Err(cleared) = clear_slot(path, true) {
            tracing::error!(
                slot = %path.display(),
                error = %cleared,
                "a tail entry whose write failed could not be cleared; a restart may read it back"
            );
        }
        return Err(io_error(what())(e));
    }
    Ok(())
}

/// Clears a slot's header, so it reads as free (`durable`: fdatasync'd).
fn clear_slot(path: &Path, durable: bool) -> std::io::Result<()> {
    use std::io::Write as _;
    let mut file = std::fs::OpenOptions::new().write(true).open(path)?;
    file.write_all(&[0; HEADER])?;
    if durable {
        file.sync_data()?;
    }
    Ok(())
}

/// Reads the slot at `path`: its entry, or None when it holds none (a free slot's header
/// alone is read) or is gone (another process serving the tail deleted it since the
/// listing).
fn read_slot(path: &Path) -> Result<Option<Entry>, Error> {
    use std::io::Read as _;
    let what = || format!("reading the tail entry {}", path.display());
    let mut file = match std::fs::File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_error(what())(e)),
    };
    let mut bytes = vec![0; HEADER];
    match file.read_exact(&mut bytes) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(io_error(what())(e)),
    }
    if &bytes[..8] != MAGIC {
        return Ok(None);
    }
    file.read_to_end(&mut bytes).map_err(io_error(what()))?;
    let Some((seq, body)) = slot_entry(&bytes) else {
        return Ok(None);
    };
    parse_entry(path, std::io::Cursor::new(body), seq).map(Some)
}

/// Reads the entry file of sluice before slots at `path`. Another process serving the tail
/// of sluice before slots may flush it meanwhile and write a later entry over its file:
/// sequence numbers are never reused, so a file still at `path` once read was there,
/// unchanged, all along; one that is not reads as not found (flushed since the listing),
/// whatever was read.
fn read_entry(path: &Path, seq: u64) -> Result<Entry, Error> {
    let what = || format!("reading the tail entry {}", path.display());
    let file = std::fs::File::open(path).map_err(io_error(what()))?;
    let opened = file.metadata().map_err(io_error(what()))?;
    let entry = parse_entry(path, std::io::BufReader::new(file), seq);
    if !still_at(path, &opened).map_err(io_error(what()))? {
        return Err(io_error(what())(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            "flushed and recycled while it was read",
        )));
    }
    entry
}

/// Whether `path` still names the file whose metadata is `opened`.
fn still_at(path: &Path, opened: &std::fs::Metadata) -> std::io::Result<bool> {
    match std::fs::metadata(path) {
        Ok(now) => Ok(same_file(&now, opened)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

#[cfg(unix)]
fn same_file(a: &std::fs::Metadata, b: &std::fs::Metadata) -> bool {
    use std::os::unix::fs::MetadataExt;
    a.dev() == b.dev() && a.ino() == b.ino()
}

#[cfg(not(unix))]
fn same_file(a: &std::fs::Metadata, b: &std::fs::Metadata) -> bool {
    a.len() == b.len() && a.modified().ok() == b.modified().ok()
}

fn parse_entry(
    path: &Path,
    ipc: impl std::io::Read + std::io::Seek,
    seq: u64,
) -> Result<Entry, Error> {
    let what = || format!("reading the tail entry {}", path.display());
    let bad = |e: arrow::error::ArrowError| Error::Internal(format!("{}: {e}", what()));
    let reader = arrow::ipc::reader::FileReader::try_new(ipc, None).map_err(bad)?;
    let txns: Vec<(String, i64)> = reader
        .custom_metadata()
        .get(TXNS_KEY)
        .map(|t| serde_json::from_str(t))
        .transpose()
        .map_err(|e| Error::Internal(format!("{}: {e}", what())))?
        .unwrap_or_default();
    let needs: Option<Needs> = reader
        .custom_metadata()
        .get(NEEDS_KEY)
        .map(|n| serde_json::from_str(n))
        .transpose()
        .map_err(|e| Error::Internal(format!("{}: {e}", what())))?;
    let batches = reader.collect::<Result<Vec<_>, _>>().map_err(bad)?;
    Ok(Entry {
        seq,
        path: path.to_path_buf(),
        rows: batches.iter().map(|b| b.num_rows()).sum(),
        bytes: batches.iter().map(|b| b.get_array_memory_size()).sum(),
        batches,
        txns,
        needs,
        since: Instant::now(),
        flush: Mutex::new(None),
        query_form: Mutex::new(None),
    })
}

/// `batch` with `schema`'s columns, by name: each cast to its type, and columns the
/// entry predates (a nullable column added to the contract since) as nulls.
fn conform(
    batch: &RecordBatch,
    schema: &SchemaRef,
) -> Result<RecordBatch, arrow::error::ArrowError> {
    let mut columns = Vec::with_capacity(schema.fields().len());
    for field in schema.fields() {
        columns.push(match batch.column_by_name(field.name()) {
            Some(column) if column.data_type() == field.data_type() => column.clone(),
            Some(column) => arrow::compute::cast(column, field.data_type())?,
            None if field.is_nullable() => {
                arrow::array::new_null_array(field.data_type(), batch.num_rows())
            }
            None => {
                return Err(arrow::error::ArrowError::SchemaError(format!(
                    "column {} is missing",
                    field.name()
                )));
            }
        });
    }
    RecordBatch::try_new_with_options(
        schema.clone(),
        columns,
        &arrow::array::RecordBatchOptions::new().with_row_count(Some(batch.num_rows())),
    )
}

/// Reads a table's tail files (before the table's version is read: an entry flushed
/// meanwhile is then in the table, and [`recover`] drops it).
pub(crate) async fn read(dir: PathBuf, owner: bool) -> Result<Tail, Error> {
    tokio::task::spawn_blocking(move || Tail::open(dir, owner))
        .await
        .map_err(|e| Error::Internal(format!("reading a tail: {e}")))?
}

/// Forgets the entries of a tail just read that its Delta table already holds, and those
/// whose [`Needs`] the other table does not hold (a crash kept the entry without the
/// other table's entry written beside it: never acknowledged, its ingests run again).
pub(crate) async fn recover(
    tables: &TableCache,
    name: &str,
    table: &deltalake::DeltaTable,
    tail: Tail,
    owner: bool,
) -> Result<Tail, Error> {
    let entries = tail.capture();
    if entries.is_empty() {
        return Ok(tail);
    }
    let mut dropped = 0;
    if table.version().is_some() {
        let apps: Vec<String> = entries
            .iter()
            .flat_map(|e| e.txns.iter().map(|(a, _)| a.clone()))
            .collect();
        let held = tables.txn_versions(name, table, apps).await?;
        dropped += tail.drop_committed(owner, |e| {
            !e.txns.is_empty()
                && e.txns
                    .iter()
                    .all(|(app, v)| held.get(app).is_some_and(|h| h >= *v))
        })?;
    }
    let unmet = unmet_needs(tables, table.table_url(), &tail.capture()).await?;
    if !unmet.is_empty() {
        tracing::warn!(
            table = name,
            entries = unmet.len(),
            "tail entries dropped: a crash lost the quarantined rows written beside them; their objects' ingests run again"
        );
        dropped += tail.drop_entries(owner, |e| unmet.contains(&e.seq))?;
    }
    tracing::info!(
        table = name,
        entries = entries.len() - dropped,
        dropped,
        "tail read back"
    );
    Ok(tail)
}

/// The sequence numbers of `entries` whose [`Needs`] are not met: a `txn` the other table
/// (at `url` joined with the needs' relative URL) holds neither in its tail nor in its
/// Delta log at the version needed.
async fn unmet_needs(
    tables: &TableCache,
    url: &url::Url,
    entries: &[Arc<Entry>],
) -> Result<BTreeSet<u64>, Error> {
    let mut unmet = BTreeSet::new();
    let mut by_table: HashMap<&str, Vec<&Arc<Entry>>> = HashMap::new();
    for entry in entries {
        if let Some(needs) = entry.needs.as_ref().filter(|n| !n.txns.is_empty()) {
            by_table
                .entry(needs.table.as_str())
                .or_default()
                .push(entry);
        }
    }
    for (relative, needing) in by_table {
        let other = url.join(relative).map_err(|e| {
            Error::Internal(format!(
                "a tail entry needs rows of {relative:?} beside {url}: {e}"
            ))
        })?;
        let apps: BTreeSet<String> = needing
            .iter()
            .flat_map(|e| {
                e.needs
                    .iter()
                    .flat_map(|n| n.txns.iter().map(|(a, _)| a.clone()))
            })
            .collect();
        // The other table's tail before its Delta log: an entry flushed in between is in
        // the log then.
        let other_tail = match tables.tail(&other) {
            Some(t) => t.capture(),
            None => match Tail::dir_of(&other) {
                Some(dir) => read(dir, false).await?.capture(),
                None => Vec::new(),
            },
        };
        let in_tail = Tail::txn_versions(&other_tail, &apps);
        let mut held = match delta::open(relative, other.clone()).await? {
            Some(other_table) if other_table.version().is_some() => {
                tables
                    .txn_versions(relative, &other_table, apps.into_iter().collect())
                    .await?
            }
            _ => delta::TxnVersions::default(),
        };
        held.merge(in_tail);
        for entry in needing {
            let met = entry
                .needs
                .iter()
                .flat_map(|n| n.txns.iter())
                .all(|(app, v)| held.get(app).is_some_and(|h| h >= *v));
            if !met {
                unmet.insert(entry.seq);
            }
        }
    }
    Ok(unmet)
}

/// What a flush committed.
#[derive(Debug, Clone, Default)]
pub struct Flushed {
    /// The Delta version of the commit.
    pub version: i64,
    /// Entries (ingests) committed.
    pub entries: usize,
    /// Rows committed.
    pub rows: usize,
    /// Partitions written (`year=2024/month=1/...`).
    pub partitions: BTreeSet<String>,
}

/// How a flush lays its rows out in files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// One set of files for all entries, tagged as shared (a silver table: replacing an
    /// object later rewrites them without its rows, like compaction's files), uncompressed
    /// as compaction rewrites them.
    Shared,
    /// The same for the quarantine, Snappy-compressed (its raw text shrinks ~3x). It wrote
    /// a file per quarantined object: one inode and a Parquet footer per object, ~0.8 M
    /// instructions each (docs/benchmarks.md, session 33).
    Quarantine,
}

/// Commits every entry of the table's tail not yet committed, as one set of files in one
/// Delta commit carrying every entry's `txn`s, then deletes the entries. None when the
/// tail is empty (or the table has none).
pub async fn flush(
    tables: &TableCache,
    name: &str,
    url: &url::Url,
    layout: Layout,
) -> Result<Option<Flushed>, Error> {
    let Some(tail) = tables.tail(url) else {
        return Ok(None);
    };
    let _one = tail.flushing.lock().await;
    let pending: Vec<Arc<Entry>> = tail
        .capture()
        .into_iter()
        .filter(|e| e.mark().is_none())
        .collect();
    if pending.is_empty() {
        return Ok(None);
    }
    let Some(mut table) = tables.latest(name, url.clone()).await? else {
        return Err(Error::Internal(format!(
            "{name}: the tail holds rows of a table that does not exist"
        )));
    };
    let partition_by = delta::partition_columns(name, &table)?;
    let rows: Vec<RecordBatch> = pending
        .iter()
        .flat_map(|e| e.batches.iter().cloned())
        .collect();
    let mut writer = match layout {
        Layout::Shared => FileWriter::staging(name, &table)?,
        Layout::Quarantine => FileWriter::small(name, &table)?,
    };
    let schema = writer.schema();
    for batch in rows {
        writer
            .write(conform(&batch, &schema).map_err(|e| {
                Error::Internal(format!("{name}: a tail entry does not fit the table: {e}"))
            })?)
            .await?;
    }
    let adds = writer.finish(&[(TAG_COMPACTED, "true")]).await?;
    let txns: Vec<(String, i64)> = {
        let mut latest: HashMap<String, i64> = HashMap::new();
        for (app, v) in pending.iter().flat_map(|e| e.txns.iter()) {
            let slot = latest.entry(app.clone()).or_insert(*v);
            *slot = (*slot).max(*v);
        }
        latest.into_iter().collect()
    };
    let partitions: BTreeSet<String> = if partition_by.is_empty() {
        BTreeSet::new()
    } else {
        adds.iter()
            .map(|a| delta::partition_key(a, &partition_by))
            .collect()
    };
    // The mark goes on before the commit can be seen, so a query that reads the new
    // version waits for the outcome instead of counting the rows twice.
    let (outcome, _) = watch::channel(None);
    let mark = Arc::new(FlushMark {
        base: table.version().map_or(-1, |v| v as i64),
        outcome,
    });
    for entry in &pending {
        entry.set_mark(Some(mark.clone()));
    }
    let committed = tables
        .commit(
            name,
            &mut table,
            adds.clone(),
            Vec::new(),
            txns,
            DeltaOperation::Write {
                mode: SaveMode::Append,
                partition_by: Some(partition_by),
                predicate: None,
            },
        )
        .await;
    let version = match committed {
        Ok(version) => version,
        Err(e) => {
            mark.outcome.send_replace(Some(None));
            for entry in &pending {
                entry.set_mark(None);
            }
            let _ = delta::discard(name, &table, &adds).await;
            return Err(e);
        }
    };
    tables.keep(url, &table);
    mark.outcome.send_replace(Some(Some(version)));
    tail.prune(&pending)?;
    Ok(Some(Flushed {
        version,
        entries: pending.len(),
        rows: pending.iter().map(|e| e.rows).sum(),
        partitions,
    }))
}

/// The tail of the table at `location`, if the cache has read it.
pub fn stats(
    tables: &TableCache,
    paths: &LakePaths,
    location: &str,
) -> Result<Option<TailStats>, Error> {
    Ok(tables.tail(&paths.url(location)?).map(|t| t.stats()))
}

#[cfg(test)]
mod tests;
