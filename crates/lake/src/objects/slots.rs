//! Multipart parts written in place, so that completing an upload copies nothing.
//!
//! S3 clients cut a file into parts of one size (the last may be shorter) and
//! upload them in any order, several at once. On local disk each upload gets
//! one slot file, `uploads/<id>/slots-<S>`, where `S` is the length of the
//! first part that arrived (at least 5 MiB, the least a part before the last
//! may be): part `n` of at most `S` bytes is written at `(n - 1) * S`. When
//! the completed upload lists parts `1..=k` that all sit in their slots, the
//! object is the slot file cut to length and moved into place: no byte is
//! copied. Anything else (a part longer than `S`, a part uploaded again, a
//! gap in the list) keeps the part in a file of its own, and completion
//! concatenates as before.
//!
//! **Invariant:** a slot is written at most once per upload, so bytes a part
//! record points at are never overwritten: a part uploaded again goes to its
//! own file. The registry of used slots lives in memory; the first time a
//! process sees an upload it takes the slots its records name (parts stored
//! before a restart). Once completion starts, the upload takes no new slots,
//! and completion waits for the slot writes under way before it moves the slot
//! file to the object, so no write can land in an object.

use std::collections::{HashMap, HashSet};
use std::os::unix::fs::FileExt;
use std::path::{Path as FsPath, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::{Stream, StreamExt};

use super::{BodyChecks, Digests, Hashes, Written};
use crate::Error;

/// Parts shorter than this never define the slot size: only the last part may be.
const MIN_SLOT: u64 = 5 << 20;
/// Slots end below this offset (ext4 files stop at 16 TiB; S3 objects at 5 TiB).
const MAX_END: u64 = 5 << 40;
/// Bytes gathered before one positioned write.
const WRITE_BATCH: usize = 1 << 20;
const PREFIX: &str = "slots-";

/// A place claimed for one part; the claim counts as a write under way until dropped.
#[derive(Debug)]
pub(crate) struct Slot {
    pub(crate) file: PathBuf,
    pub(crate) offset: u64,
    /// The part's declared length (at most the slot size).
    pub(crate) len: u64,
    slots: Slots,
    upload_id: String,
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Ok(mut uploads) = self.slots.uploads.lock()
            && let Some(upload) = uploads.get_mut(&self.upload_id)
        {
            upload.writing = upload.writing.saturating_sub(1);
        }
    }
}

#[derive(Debug, Default)]
struct Upload {
    size: u64,
    used: HashSet<u32>,
    sealed: bool,
    writing: usize,
}

/// The slot files of the uploads this process has seen.
#[derive(Debug, Default, Clone)]
pub(crate) struct Slots {
    uploads: Arc<Mutex<HashMap<String, Upload>>>,
}

/// The slot file in an upload's directory and its slot size, if there is one.
pub(crate) fn find(dir: &FsPath) -> Option<(PathBuf, u64)> {
    std::fs::read_dir(dir).ok()?.flatten().find_map(|entry| {
        let name = entry.file_name();
        let size = name.to_str()?.strip_prefix(PREFIX)?.parse().ok()?;
        Some((entry.path(), size))
    })
}

impl Slots {
    /// Claims the slot of part `number` (`len` bytes, as declared) in the upload whose
    /// directory is `dir`, or None when the part must go to a file of its own.
    /// `recorded` names the parts already in slots by the upload's records; it is read only
    /// the first time this process sees the upload, and None there means "don't know".
    pub(crate) fn claim(
        &self,
        dir: &FsPath,
        upload_id: &str,
        number: u32,
        len: u64,
        recorded: &dyn Fn() -> Option<Vec<u32>>,
    ) -> Option<Slot> {
        let mut uploads = self.uploads.lock().ok()?;
        let upload = match uploads.entry(upload_id.to_string()) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => {
                let used = recorded()?.into_iter().collect();
                let size = match find(dir) {
                    Some((_, size)) => size,
                    None if len >= MIN_SLOT => {
                        std::fs::create_dir_all(dir).ok()?;
                        std::fs::File::create_new(dir.join(format!("{PREFIX}{len}"))).ok()?;
                        len
                    }
                    None => return None,
                };
                e.insert(Upload {
                    size,
                    used,
                    ..Upload::default()
                })
            }
        };
        let offset = u64::from(number.checked_sub(1)?).checked_mul(upload.size)?;
        if upload.sealed
            || len > upload.size
            || offset.checked_add(upload.size)? > MAX_END
            || !upload.used.insert(number)
        {
            return None;
        }
        upload.writing += 1;
        Some(Slot {
            file: dir.join(format!("{PREFIX}{}", upload.size)),
            offset,
            len,
            slots: self.clone(),
            upload_id: upload_id.to_string(),
        })
    }

    /// Completion has begun: the upload takes no new slots, and this returns once the
    /// slot writes under way have ended (or after `patience`, with an error).
    pub(crate) async fn seal(&self, upload_id: &str, patience: Duration) -> Result<(), Error> {
        let deadline = tokio::time::Instant::now() + patience;
        loop {
            let writing = {
                let mut uploads = self
                    .uploads
                    .lock()
                    .map_err(|_| Error::Internal("the slot registry is poisoned".into()))?;
                let upload = uploads.entry(upload_id.to_string()).or_default();
                upload.sealed = true;
                upload.writing
            };
            if writing == 0 {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(Error::Internal(format!(
                    "{writing} parts of upload {upload_id} are still being written"
                )));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Forgets a finished upload.
    pub(crate) fn forget(&self, upload_id: &str) {
        if let Ok(mut uploads) = self.uploads.lock() {
            uploads.remove(upload_id);
        }
    }
}

/// Streams a part's body into its slot with positioned writes, hashing as it goes.
/// A body longer than the slot is refused before any byte lands past it.
pub(crate) async fn write<S, E>(
    slot: &Slot,
    mut body: S,
    hashes: Hashes,
    checks: &BodyChecks,
) -> Result<Written, Error>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
    E: std::fmt::Display,
{
    let io = |what: &str, e: std::io::Error| Error::Io {
        what: format!("{what} {}", slot.file.display()),
        source: e,
    };
    let file = Arc::new(
        std::fs::OpenOptions::new()
            .write(true)
            .open(&slot.file)
            .map_err(|e| io("opening the slot file", e))?,
    );
    let mut digests = Digests::new(hashes, checks)?;
    let mut batch: Vec<Bytes> = Vec::new();
    let mut batch_len = 0usize;
    let mut in_flight: Option<tokio::task::JoinHandle<std::io::Result<()>>> = None;
    let mut done = false;
    while !done {
        match body.next().await {
            Some(Err(e)) => return Err(Error::UploadInterrupted(e.to_string())),
            Some(Ok(chunk)) => {
                if digests.size + chunk.len() as u64 > slot.len {
                    return Err(Error::UploadInterrupted(format!(
                        "the part is longer than its declared {} bytes",
                        slot.len
                    )));
                }
                digests.update(&chunk).await?;
                batch_len += chunk.len();
                batch.push(chunk);
                if batch_len < WRITE_BATCH {
                    continue;
                }
            }
            None => done = true,
        }
        // One positioned write of the batch at a time, while the next batch arrives.
        if let Some(previous) = in_flight.take() {
            join(previous)
                .await
                .map_err(|e| io("writing a part to", e))?;
        }
        let at = slot.offset + digests.size - batch_len as u64;
        let bufs = std::mem::take(&mut batch);
        batch_len = 0;
        let file = file.clone();
        in_flight = Some(tokio::task::spawn_blocking(move || {
            let mut at = at;
            for buf in bufs {
                file.write_all_at(&buf, at)?;
                at += buf.len() as u64;
            }
            Ok(())
        }));
    }
    if let Some(last) = in_flight.take() {
        join(last).await.map_err(|e| io("writing a part to", e))?;
    }
    digests.finish(checks).await
}

async fn join(handle: tokio::task::JoinHandle<std::io::Result<()>>) -> Result<(), std::io::Error> {
    handle.await.map_err(std::io::Error::other)?
}

/// Makes `target` the first `len` bytes of the slot file, without copying: the file is cut
/// to length and renamed over the target (a completion retried after a failure that
/// followed this step finds no slot file and says so). Returns the file's metadata for
/// its version.
pub(crate) fn move_into_place(
    slot_file: &FsPath,
    len: u64,
    target: &FsPath,
) -> Result<std::fs::Metadata, Error> {
    let io = |what: &str, e: std::io::Error| Error::Io {
        what: format!("{what} {}", target.display()),
        source: e,
    };
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(slot_file)
        .map_err(|e| io("opening the slot file of", e))?;
    let have = file
        .metadata()
        .map_err(|e| io("reading the slot file of", e))?
        .len();
    if have < len {
        return Err(Error::Internal(format!(
            "the slot file of {} holds {have} bytes, the parts {len}",
            target.display()
        )));
    }
    if have > len {
        file.set_len(len)
            .map_err(|e| io("cutting the slot file of", e))?;
    }
    let metadata = file
        .metadata()
        .map_err(|e| io("reading the slot file of", e))?;
    if let Some(dir) = target.parent() {
        std::fs::create_dir_all(dir).map_err(|e| io("creating the directory of", e))?;
    }
    std::fs::rename(slot_file, target).map_err(|e| io("renaming the object to", e))?;
    Ok(metadata)
}
