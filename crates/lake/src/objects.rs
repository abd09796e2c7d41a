//! The object store of the landing zone: buckets and keys on local disk today, any S3 store later.
//!
//! Everything goes through the `object_store` crate rooted at the data
//! directory, so callers never build filesystem paths from keys.
//! **Invariant:** a key reaches the store only as a validated
//! [`ObjectKey`], so it can never escape `<data>/objects/<bucket>/`.
//! Writes are atomic (staged, then renamed) and hashed while streaming.
//!
//! Every stored object has a content hash (`sha256`) and a store version
//! (`version`, the store's ETag of the bytes written: inode, mtime and size on
//! local disk). The version lets a reader check that it holds the bytes an
//! event announced without hashing them again. An object assembled from
//! multipart parts gets a composite hash (see [`composite_sha256`]), so
//! completing an upload never reads its bytes back.

use std::sync::Arc;

use bytes::Bytes;
use chrono::Utc;
use futures::{Stream, StreamExt, TryStreamExt};
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, WriteMultipart};
use sha2::{Digest, Sha256};
use sluice_model::event::ObjectRef;
use sluice_model::key::{BucketName, ObjectKey};

use crate::Error;
use md5_lanes::Md5Stream;

mod md5_lanes;
mod slots;

/// The landing zone's objects.
#[derive(Clone, Debug)]
pub struct Objects {
    store: Arc<dyn ObjectStore>,
    /// The same store, when it is local disk: multipart parts are written in place (see
    /// [`slots`]) and completion moves or concatenates files in the kernel.
    local: Option<Arc<LocalFileSystem>>,
    slots: slots::Slots,
    /// Directories under `objects/` known to be durable in their parents.
    durable_dirs: Arc<crate::durable::KnownDirs>,
}

/// An object listed in a bucket.
#[derive(Debug, Clone)]
pub struct Listed {
    /// Key.
    pub key: String,
    /// Size in bytes.
    pub size: u64,
    /// Last write.
    pub last_modified: chrono::DateTime<Utc>,
}

const OBJECTS: &str = "objects";
/// How long a completion waits for part writes still under way in its slot file.
const SLOT_WRITES_PATIENCE: std::time::Duration = std::time::Duration::from_secs(60);
const UPLOADS: &str = "uploads";

fn part_path(upload_id: &str, part_number: u32) -> Path {
    Path::from(UPLOADS)
        .join(upload_id)
        .join(format!("{part_number:05}"))
}

/// A missing object is `ObjectNotFound`; anything else is a store error while doing `what`.
fn not_found_or(e: object_store::Error, bucket: &BucketName, key: &ObjectKey, what: &str) -> Error {
    match e {
        object_store::Error::NotFound { .. } => Error::ObjectNotFound {
            bucket: bucket.to_string(),
            key: key.to_string(),
        },
        other => Error::store(what, other),
    }
}

/// The bytes of a get, in 1 MiB chunks (object_store streams local files 8 KiB at a time,
/// which costs more per byte than the copying itself).
async fn large_chunks(
    result: object_store::GetResult,
) -> Result<futures::stream::BoxStream<'static, Result<Bytes, std::io::Error>>, std::io::Error> {
    let range = result.range.clone();
    match result.payload {
        object_store::GetResultPayload::File(mut file, _) => {
            use std::io::Seek;
            file.seek(std::io::SeekFrom::Start(range.start))?;
            let file = tokio::io::AsyncReadExt::take(
                tokio::fs::File::from_std(file),
                range.end - range.start,
            );
            Ok(tokio_util::io::ReaderStream::with_capacity(file, 1 << 20).boxed())
        }
        object_store::GetResultPayload::Stream(stream) => {
            Ok(stream.map_err(std::io::Error::other).boxed())
        }
    }
}

/// Which digests a write computes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Hashes {
    sha256: bool,
    md5: bool,
}

/// What the transport already knows about a body, so a write neither repeats nor skips a check.
#[derive(Debug, Clone, Default)]
pub struct BodyChecks {
    /// The body's SHA-256 (hex) as already verified by the transport (a SigV4 signed
    /// payload is checked while it streams): the write takes it instead of hashing again.
    pub verified_sha256: Option<String>,
    /// The MD5 (hex) the client declared (Content-MD5): the write fails and stores
    /// nothing unless the body has it.
    pub expected_md5: Option<String>,
}

/// A stored multipart part.
#[derive(Debug, Clone)]
pub struct StoredPart {
    /// Size in bytes.
    pub size: u64,
    /// Hex MD5 (the part's S3 ETag).
    pub md5: String,
    /// Hex SHA-256.
    pub sha256: String,
    /// Where the part starts in the upload's slot file; None when it has a file of its own.
    pub offset: Option<u64>,
}

/// A stored multipart part as its record names it for completion.
#[derive(Debug, Clone)]
pub struct PartRef {
    /// Part number.
    pub number: u32,
    /// Hex SHA-256, or empty for parts stored before sluice recorded it (completion then
    /// hashes that part).
    pub sha256: String,
    /// Size in bytes.
    pub size: u64,
    /// Where the part starts in the upload's slot file ([`StoredPart::offset`]).
    pub offset: Option<u64>,
}

/// The part an upload-part request stores.
pub struct PartTarget<'a> {
    /// The upload.
    pub upload_id: &'a str,
    /// Part number (1..=10000).
    pub number: u32,
    /// The body's length as declared before it (Content-Length): a part can be written in
    /// place only when it is known.
    pub declared_len: Option<u64>,
    /// The numbers of the upload's parts whose records place them in slots (None when they
    /// cannot be read); asked only the first time this process sees the upload.
    pub recorded_slots: &'a (dyn Fn() -> Option<Vec<u32>> + Send + Sync),
}

/// The content hash of an object assembled from parts: the SHA-256 of the parts' binary
/// SHA-256 digests in order, in hex, then `-<number of parts>` (S3's composite checksum,
/// in hex). The same parts give the same hash, so a retried upload is recognised without
/// reading the object back; `sha256sum` of the whole object differs, as S3's multipart
/// ETags and composite checksums differ from whole-object digests.
pub fn composite_sha256(part_sha256s: &[String]) -> Result<String, Error> {
    let mut outer = Sha256::new();
    for sha in part_sha256s {
        let raw = hex::decode(sha)
            .ok()
            .filter(|raw| raw.len() == 32)
            .ok_or_else(|| Error::Internal(format!("part hash {sha:?} is not a hex SHA-256")))?;
        outer.update(raw);
    }
    Ok(format!(
        "{}-{}",
        hex::encode(outer.finalize()),
        part_sha256s.len()
    ))
}

/// A stored object: its event payload and its MD5 (the S3 ETag of a single-part upload).
#[derive(Debug, Clone)]
pub struct Stored {
    /// What the object-created event carries.
    pub object: ObjectRef,
    /// Hex MD5 of the content.
    pub md5: String,
}

fn object_path(bucket: &BucketName, key: &ObjectKey) -> Path {
    let mut p = Path::from(OBJECTS).clone();
    p = p.clone().join(bucket.as_str());
    for segment in key.as_str().split('/') {
        p = p.clone().join(segment);
    }
    p
}

impl Objects {
    /// Objects under `<data_dir>/objects/`.
    pub fn open_local(data_dir: &std::path::Path) -> Result<Self, Error> {
        let root = data_dir.join(OBJECTS);
        std::fs::create_dir_all(&root).map_err(|e| Error::Io {
            what: format!("creating {}", root.display()),
            source: e,
        })?;
        let store = Arc::new(
            LocalFileSystem::new_with_prefix(data_dir)
                .map_err(|e| Error::store("opening the data directory", e))?,
        );
        Ok(Self {
            store: store.clone(),
            local: Some(store),
            slots: slots::Slots::default(),
            durable_dirs: Arc::default(),
        })
    }

    /// The underlying store (rooted at the data directory).
    pub fn store(&self) -> Arc<dyn ObjectStore> {
        self.store.clone()
    }

    /// Writes an object from a stream of chunks, hashing as it goes; atomic: readers see all or nothing.
    pub async fn put_stream<S, E>(
        &self,
        bucket: &BucketName,
        key: &ObjectKey,
        body: S,
        checks: &BodyChecks,
    ) -> Result<Stored, Error>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        let path = object_path(bucket, key);
        let hashes = Hashes {
            sha256: checks.verified_sha256.is_none(),
            md5: true,
        };
        let written = self.write_stream(&path, body, hashes, checks).await?;
        self.make_durable(&path).await?;
        let sha256 = checks.verified_sha256.clone().unwrap_or(written.sha256);
        Ok(Stored {
            object: object_ref(bucket, key, written.size, sha256, written.e_tag),
            md5: written.md5,
        })
    }

    /// Streams bytes to `path` atomically; returns size, digests (hex; empty when not asked
    /// for) and the store's ETag. Nothing is stored when the body does not have the MD5
    /// `checks` expects.
    async fn write_stream<S, E>(
        &self,
        path: &Path,
        mut body: S,
        hashes: Hashes,
        checks: &BodyChecks,
    ) -> Result<Written, Error>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        let upload = self
            .store
            .put_multipart(path)
            .await
            .map_err(|e| Error::store("starting the upload", e))?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, 8 << 20);
        let mut digests = Digests::new(hashes, checks)?;
        while let Some(chunk) = body.next().await {
            let chunk = match chunk {
                Ok(c) => c,
                Err(e) => {
                    let _ = writer.abort().await;
                    return Err(Error::UploadInterrupted(e.to_string()));
                }
            };
            if let Err(e) = digests.update(&chunk).await {
                let _ = writer.abort().await;
                return Err(e);
            }
            writer
                .wait_for_capacity(4)
                .await
                .map_err(|e| Error::store("writing the object", e))?;
            writer.put(chunk);
        }
        let written = match digests.finish(checks).await {
            Ok(written) => written,
            Err(e) => {
                let _ = writer.abort().await;
                return Err(e);
            }
        };
        let put = writer
            .finish()
            .await
            .map_err(|e| Error::store("finishing the object", e))?;
        Ok(Written {
            e_tag: put.e_tag,
            ..written
        })
    }

    /// Stores one part of a multipart upload (its SHA-256 is taken from `checks` when the
    /// transport verified it, else computed while it streams): in its slot when it can
    /// have one (see [`slots`]), else in a file of its own.
    pub async fn put_part<S, E>(
        &self,
        part: &PartTarget<'_>,
        body: S,
        checks: &BodyChecks,
    ) -> Result<StoredPart, Error>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        let hashes = Hashes {
            sha256: checks.verified_sha256.is_none(),
            md5: true,
        };
        let slot = match (&self.local, part.declared_len) {
            (Some(local), Some(len)) => {
                let dir = local
                    .path_to_filesystem(&Path::from(UPLOADS).join(part.upload_id))
                    .map_err(|e| Error::store("locating the upload", e))?;
                self.slots
                    .claim(&dir, part.upload_id, part.number, len, part.recorded_slots)
            }
            _ => None,
        };
        let written = match &slot {
            Some(slot) => slots::write(slot, body, hashes, checks).await?,
            None => {
                let path = part_path(part.upload_id, part.number);
                self.write_stream(&path, body, hashes, checks).await?
            }
        };
        Ok(StoredPart {
            size: written.size,
            md5: written.md5,
            sha256: checks.verified_sha256.clone().unwrap_or(written.sha256),
            offset: slot.map(|s| s.offset),
        })
    }

    /// Makes the object from uploaded parts, atomically, without reading its bytes in user
    /// space: on local disk, parts `1..=k` all in their slots become the object by a rename
    /// (no copy), anything else is concatenated by the kernel (`copy_file_range`);
    /// elsewhere the parts are streamed into one upload. The content hash is the parts'
    /// [`composite_sha256`]; a part stored without a recorded SHA-256 is hashed here.
    pub async fn assemble(
        &self,
        bucket: &BucketName,
        key: &ObjectKey,
        upload_id: &str,
        parts: &[PartRef],
    ) -> Result<Stored, Error> {
        self.slots.seal(upload_id, SLOT_WRITES_PATIENCE).await?;
        let mut part_shas = Vec::with_capacity(parts.len());
        for part in parts {
            if !part.sha256.is_empty() {
                part_shas.push(part.sha256.clone());
            } else if part.offset.is_none() {
                part_shas.push(self.sha256_of(&part_path(upload_id, part.number)).await?);
            } else {
                return Err(Error::Internal(format!(
                    "part {} of upload {upload_id} is in a slot without a hash",
                    part.number
                )));
            }
        }
        let sha256 = composite_sha256(&part_shas)?;
        let target = object_path(bucket, key);
        let (size, e_tag) = match &self.local {
            Some(local) => {
                let assembled = assemble_local(local, upload_id, parts, &target).await?;
                self.make_durable(&target).await?;
                assembled
            }
            None => {
                let paths: Vec<Path> = parts
                    .iter()
                    .map(|p| part_path(upload_id, p.number))
                    .collect();
                let written = self
                    .write_stream(
                        &target,
                        self.concatenated(paths),
                        Hashes {
                            sha256: false,
                            md5: false,
                        },
                        &BodyChecks::default(),
                    )
                    .await?;
                (written.size, written.e_tag)
            }
        };
        Ok(Stored {
            object: object_ref(bucket, key, size, sha256, e_tag),
            md5: String::new(),
        })
    }

    /// The parts' bytes, one after another.
    fn concatenated(
        &self,
        paths: Vec<Path>,
    ) -> futures::stream::BoxStream<'static, Result<Bytes, std::io::Error>> {
        let store = self.store.clone();
        futures::stream::iter(paths)
            .then(move |p| {
                let store = store.clone();
                let part: futures::future::BoxFuture<'static, _> = Box::pin(async move {
                    let result = store.get(&p).await.map_err(std::io::Error::other)?;
                    large_chunks(result).await
                });
                part
            })
            .try_flatten()
            .boxed()
    }

    /// Deletes the stored parts of an upload (its slot registry entry last, so that no part
    /// can claim a slot in a file about to go).
    pub async fn delete_parts(&self, upload_id: &str) -> Result<(), Error> {
        let root = Path::from(UPLOADS).join(upload_id);
        let mut stream = self.store.list(Some(&root));
        while let Some(meta) = stream.next().await {
            let meta = meta.map_err(|e| Error::store("listing upload parts", e))?;
            match self.store.delete(&meta.location).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(Error::store("deleting an upload part", e)),
            }
        }
        self.slots.forget(upload_id);
        Ok(())
    }

    /// Copies an object (a hard link on local disk: writes replace files, so the copies never
    /// share changes); returns the copy's store version.
    pub async fn copy(
        &self,
        from: (&BucketName, &ObjectKey),
        to: (&BucketName, &ObjectKey),
    ) -> Result<Option<String>, Error> {
        let (src, dst) = (object_path(from.0, from.1), object_path(to.0, to.1));
        if src != dst {
            self.store.copy(&src, &dst).await.map_err(|e| match e {
                object_store::Error::NotFound { .. } => Error::ObjectNotFound {
                    bucket: from.0.to_string(),
                    key: from.1.to_string(),
                },
                other => Error::store("copying the object", other),
            })?;
            self.make_durable(&dst).await?;
        }
        self.version(to.0, to.1).await
    }

    /// Makes a stored object survive a power loss, before its write is acknowledged (on
    /// local disk: [`crate::durable::sync_files`]). Other stores are durable when they
    /// answer.
    async fn make_durable(&self, path: &Path) -> Result<(), Error> {
        self.sync_local(&Path::from(OBJECTS), std::slice::from_ref(path))
            .await
    }

    /// On local disk, [`crate::durable::sync_files`] of `files` up to `root` (store
    /// paths); nothing on other stores, durable when they answer.
    async fn sync_local(&self, root: &Path, files: &[Path]) -> Result<(), Error> {
        let Some(local) = &self.local else {
            return Ok(());
        };
        let locate = |p: &Path| {
            local
                .path_to_filesystem(p)
                .map_err(|e| Error::store("locating a file to fsync", e))
        };
        let files = files.iter().map(locate).collect::<Result<Vec<_>, _>>()?;
        crate::durable::sync_files(&locate(root)?, &files, &self.durable_dirs)
            .await
            .map_err(|(path, source)| Error::Io {
                what: format!("fsyncing {}", path.display()),
                source,
            })
    }

    /// The store's version (ETag) of an object as it is now.
    pub async fn version(
        &self,
        bucket: &BucketName,
        key: &ObjectKey,
    ) -> Result<Option<String>, Error> {
        let meta = self
            .store
            .head(&object_path(bucket, key))
            .await
            .map_err(|e| not_found_or(e, bucket, key, "reading the object's version"))?;
        Ok(meta.e_tag)
    }

    /// Reads a byte range of an object (the whole object when `range` is None).
    pub async fn read_range(
        &self,
        bucket: &BucketName,
        key: &ObjectKey,
        range: Option<std::ops::Range<u64>>,
    ) -> Result<futures::stream::BoxStream<'static, Result<Bytes, std::io::Error>>, Error> {
        let options = object_store::GetOptions {
            range: range.map(object_store::GetRange::Bounded),
            ..Default::default()
        };
        let result = self
            .store
            .get_opts(&object_path(bucket, key), options)
            .await
            .map_err(|e| not_found_or(e, bucket, key, "reading the object"))?;
        large_chunks(result).await.map_err(|e| Error::Io {
            what: "reading the object".into(),
            source: e,
        })
    }

    /// Opens an object for reading: a file when the store is local (needed for Parquet), else a stream.
    pub async fn open_read(
        &self,
        bucket: &BucketName,
        key: &ObjectKey,
    ) -> Result<ObjectReader, Error> {
        let result = self
            .store
            .get(&object_path(bucket, key))
            .await
            .map_err(|e| not_found_or(e, bucket, key, "opening the object"))?;
        let size = result.meta.size;
        let e_tag = result.meta.e_tag.clone();
        match result.payload {
            object_store::GetResultPayload::File(file, _) => {
                Ok(ObjectReader::File { file, size, e_tag })
            }
            object_store::GetResultPayload::Stream(stream) => Ok(ObjectReader::Stream {
                stream: Box::pin(stream.map_err(std::io::Error::other)),
                size,
                e_tag,
            }),
        }
    }

    /// Reads a whole object into memory (small objects only: models, lookups).
    pub async fn get_bytes(&self, bucket: &BucketName, key: &ObjectKey) -> Result<Bytes, Error> {
        let result = self
            .store
            .get(&object_path(bucket, key))
            .await
            .map_err(|e| not_found_or(e, bucket, key, "reading the object"))?;
        result
            .bytes()
            .await
            .map_err(|e| Error::store("reading the object", e))
    }

    /// Deletes an object; deleting a missing object is not an error (as in S3).
    pub async fn delete(&self, bucket: &BucketName, key: &ObjectKey) -> Result<(), Error> {
        match self.store.delete(&object_path(bucket, key)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(Error::store("deleting the object", e)),
        }
    }

    /// Lists a bucket's objects under a prefix.
    pub async fn list(&self, bucket: &BucketName, prefix: &str) -> Result<Vec<Listed>, Error> {
        let root = Path::from(OBJECTS).join(bucket.as_str());
        let mut out = Vec::new();
        let mut stream = self.store.list(Some(&root));
        while let Some(meta) = stream.next().await {
            let meta = meta.map_err(|e| Error::store("listing the bucket", e))?;
            let key = meta
                .location
                .prefix_match(&root)
                .map(|parts| {
                    parts
                        .map(|p| p.as_ref().to_string())
                        .collect::<Vec<_>>()
                        .join("/")
                })
                .unwrap_or_default();
            if key.starts_with(prefix) {
                out.push(Listed {
                    key,
                    size: meta.size,
                    last_modified: meta.last_modified,
                });
            }
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    /// Copies the object into the bronze archive of `table` (a hard link on local disk), once
    /// per content version. None when the object no longer holds the bytes `object`
    /// announced (replaced or deleted since): the newer event archives its own bytes.
    pub async fn archive(&self, table: &str, object: &ObjectRef) -> Result<Option<String>, Error> {
        let bucket = BucketName::parse(&object.bucket).map_err(|e| Error::BadKey(e.to_string()))?;
        let key = ObjectKey::parse(&object.key).map_err(|e| Error::BadKey(e.to_string()))?;
        let mut target = Path::from("lake")
            .join("bronze")
            .join(table)
            .join(bucket.as_str());
        for segment in key.as_str().split('/') {
            target = target.join(segment);
        }
        let target = target.join(format!("sha256={}", object.sha256));
        if self.store.head(&target).await.is_ok() {
            return Ok(Some(target.to_string()));
        }
        match self.store.copy(&object_path(&bucket, &key), &target).await {
            Ok(()) => {}
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(Error::store("archiving the object to bronze", e)),
        }
        // The link shares the linked file's version: check it holds the announced bytes.
        let linked = self
            .store
            .head(&target)
            .await
            .map_err(|e| Error::store("reading the archived object", e))?;
        let vouched = linked.e_tag.as_deref() == Some(object.version.as_str());
        if !vouched && self.sha256_of(&target).await? != object.sha256 {
            self.store
                .delete(&target)
                .await
                .map_err(|e| Error::store("removing a superseded archive copy", e))?;
            return Ok(None);
        }
        Ok(Some(target.to_string()))
    }

    /// Makes the bronze copies [`Objects::archive`] returned (`paths`) survive a power
    /// loss: each is fdatasync'd (a hard link adds a name, not bytes, so this is cheap),
    /// and its directory and those above it the archive created are fsync'd, side by side.
    /// A copy is not durable until then: a crash could keep the rows an ingest wrote
    /// and lose the raw file they came from. Nothing to do off local disk.
    pub async fn make_archived_durable(&self, paths: &[String]) -> Result<(), Error> {
        let files = paths
            .iter()
            .map(|p| {
                Path::parse(p)
                    .map_err(|e| Error::store("reading an archived copy's path", e.into()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        self.sync_local(&Path::from("lake"), &files).await
    }

    /// The SHA-256 of a stored file, read back.
    async fn sha256_of(&self, path: &Path) -> Result<String, Error> {
        let mut bytes = self.concatenated(vec![path.clone()]);
        let mut hasher = Sha256::new();
        while let Some(chunk) = bytes.next().await {
            let chunk = chunk.map_err(|e| Error::Io {
                what: format!("reading {path}"),
                source: e,
            })?;
            hasher.update(&chunk);
        }
        Ok(hex::encode(hasher.finalize()))
    }
}

/// An object kept in a bronze table.
#[derive(Debug, Clone)]
pub struct Archived {
    /// `bucket/key` of the source object.
    pub source_object: String,
    /// SHA-256 of its content.
    pub sha256: String,
    /// Size in bytes.
    pub size: u64,
    /// Path under the data directory.
    pub path: String,
    /// When it was archived.
    pub archived_at: chrono::DateTime<Utc>,
}

impl Objects {
    /// Everything archived in a bronze table.
    pub async fn list_archive(&self, table: &str) -> Result<Vec<Archived>, Error> {
        let root = Path::from("lake").join("bronze").join(table);
        let mut out = Vec::new();
        let mut stream = self.store.list(Some(&root));
        while let Some(meta) = stream.next().await {
            let meta = meta.map_err(|e| Error::store("listing the bronze archive", e))?;
            let Some(parts) = meta.location.prefix_match(&root) else {
                continue;
            };
            let mut parts: Vec<String> = parts.map(|p| p.as_ref().to_string()).collect();
            let Some(sha) = parts
                .pop()
                .and_then(|last| last.strip_prefix("sha256=").map(String::from))
            else {
                continue;
            };
            out.push(Archived {
                source_object: parts.join("/"),
                sha256: sha,
                size: meta.size,
                path: meta.location.to_string(),
                archived_at: meta.last_modified,
            });
        }
        out.sort_by(|a, b| {
            (&a.source_object, a.archived_at).cmp(&(&b.source_object, b.archived_at))
        });
        Ok(out)
    }
}

/// A new version of an object with this content; `store_version` is the store's ETag of
/// the bytes written (a version made of the hash and the time stands in when the store
/// gives none, and then readers check the content by hashing it).
pub fn object_ref(
    bucket: &BucketName,
    key: &ObjectKey,
    size: u64,
    sha256: String,
    store_version: Option<String>,
) -> ObjectRef {
    let version = store_version.unwrap_or_else(|| {
        format!(
            "{}-{}",
            sha256.get(..16).unwrap_or(&sha256),
            Utc::now().timestamp_micros()
        )
    });
    ObjectRef {
        bucket: bucket.to_string(),
        key: key.to_string(),
        size,
        sha256,
        version,
    }
}

/// An open object.
pub enum ObjectReader {
    /// A local file.
    File {
        /// The file.
        file: std::fs::File,
        /// Its size.
        size: u64,
        /// The store's version of what was opened.
        e_tag: Option<String>,
    },
    /// A byte stream.
    Stream {
        /// The stream.
        stream: futures::stream::BoxStream<'static, Result<Bytes, std::io::Error>>,
        /// Its size.
        size: u64,
        /// The store's version of what was opened.
        e_tag: Option<String>,
    },
}

impl ObjectReader {
    /// Size in bytes.
    pub fn size(&self) -> u64 {
        match self {
            ObjectReader::File { size, .. } | ObjectReader::Stream { size, .. } => *size,
        }
    }

    /// The store's version (ETag) of the bytes opened: equal to an event's `version` when
    /// they are the bytes that event announced.
    pub fn e_tag(&self) -> Option<&str> {
        match self {
            ObjectReader::File { e_tag, .. } | ObjectReader::Stream { e_tag, .. } => {
                e_tag.as_deref()
            }
        }
    }
}

/// The digests a write computes while its bytes stream by, and their count.
struct Digests {
    sha256: Option<Sha256>,
    md5: Option<Md5Stream>,
    size: u64,
}

impl Digests {
    fn new(hashes: Hashes, checks: &BodyChecks) -> Result<Self, Error> {
        Ok(Self {
            sha256: hashes.sha256.then(Sha256::new),
            md5: if hashes.md5 || checks.expected_md5.is_some() {
                Some(Md5Stream::new()?)
            } else {
                None
            },
            size: 0,
        })
    }

    async fn update(&mut self, chunk: &Bytes) -> Result<(), Error> {
        if let Some(sha256) = &mut self.sha256 {
            sha256.update(chunk);
        }
        if let Some(md5) = &mut self.md5 {
            md5.update(chunk).await?;
        }
        self.size += chunk.len() as u64;
        Ok(())
    }

    /// The size and digests (hex; empty when not asked for), without a store ETag; fails
    /// when the body does not have the MD5 `checks` expects.
    async fn finish(self, checks: &BodyChecks) -> Result<Written, Error> {
        let md5 = match self.md5 {
            Some(md5) => md5.finish().await?,
            None => String::new(),
        };
        if let Some(expected) = &checks.expected_md5
            && !expected.eq_ignore_ascii_case(&md5)
        {
            return Err(Error::DigestMismatch {
                expected: expected.clone(),
                actual: md5,
            });
        }
        Ok(Written {
            size: self.size,
            sha256: self
                .sha256
                .map(|h| hex::encode(h.finalize()))
                .unwrap_or_default(),
            md5,
            e_tag: None,
        })
    }
}

/// What one streamed write stored.
struct Written {
    size: u64,
    sha256: String,
    md5: String,
    e_tag: Option<String>,
}

/// Where one part's bytes are on local disk.
enum PartBytes {
    /// A file of its own.
    File(std::path::PathBuf),
    /// `len` bytes at `offset` of the upload's slot file.
    Range {
        file: std::path::PathBuf,
        offset: u64,
        len: u64,
    },
}

/// Completes an upload on local disk: a rename when the listed parts are `1..=k` back to back
/// in the slot file, else a concatenation. Returns the size and the store's ETag.
async fn assemble_local(
    local: &Arc<LocalFileSystem>,
    upload_id: &str,
    parts: &[PartRef],
    target: &Path,
) -> Result<(u64, Option<String>), Error> {
    let fs_path = |p: &Path| {
        local
            .path_to_filesystem(p)
            .map_err(|e| Error::store("locating a file of the object", e))
    };
    let dir = fs_path(&Path::from(UPLOADS).join(upload_id))?;
    let target = fs_path(target)?;
    let slot_file = slots::find(&dir).map(|(file, _)| file);
    let mut sources = Vec::with_capacity(parts.len());
    let mut end = 0u64;
    let mut back_to_back = true;
    for part in parts {
        match (part.offset, &slot_file) {
            (Some(offset), Some(file)) => {
                back_to_back &= offset == end;
                sources.push(PartBytes::Range {
                    file: file.clone(),
                    offset,
                    len: part.size,
                });
            }
            (Some(_), None) => {
                return Err(Error::Internal(format!(
                    "part {} of upload {upload_id} is recorded in a slot file that is gone",
                    part.number
                )));
            }
            (None, _) => {
                back_to_back = false;
                sources.push(PartBytes::File(fs_path(&part_path(
                    upload_id,
                    part.number,
                ))?));
            }
        }
        end += part.size;
    }
    tokio::task::spawn_blocking(move || match slot_file {
        Some(file) if back_to_back => {
            let metadata = slots::move_into_place(&file, end, &target)?;
            Ok((end, Some(local_e_tag(&metadata))))
        }
        _ => concatenate(&sources, &target),
    })
    .await
    .map_err(|e| Error::Internal(format!("assembling the parts stopped: {e}")))?
}

/// Concatenates part bytes into `target` atomically: a staging file beside the target
/// (a `#<digits>` name, which listings skip, as object_store's own staging files), filled by
/// `copy_file_range` (std's `io::copy` between files), then renamed over the target.
/// Returns the size and the store's ETag of the new file.
fn concatenate(
    sources: &[PartBytes],
    target: &std::path::Path,
) -> Result<(u64, Option<String>), Error> {
    use std::io::{Read, Seek};
    let io = |what: &str, e: std::io::Error| Error::Io {
        what: format!("{what} {}", target.display()),
        source: e,
    };
    if let Some(dir) = target.parent() {
        std::fs::create_dir_all(dir).map_err(|e| io("creating the directory of", e))?;
    }
    let mut staging = target.to_path_buf().into_os_string();
    staging.push(format!("#{}", rand_digits()));
    let staging = std::path::PathBuf::from(staging);
    let result = (|| {
        let mut out = std::fs::File::create_new(&staging)
            .map_err(|e| io("staging the assembled object", e))?;
        let mut size = 0u64;
        for source in sources {
            let (path, range) = match source {
                PartBytes::File(path) => (path, None),
                PartBytes::Range { file, offset, len } => (file, Some((*offset, *len))),
            };
            let open_error = |e| Error::Io {
                what: format!("opening part file {}", path.display()),
                source: e,
            };
            let mut input = std::fs::File::open(path).map_err(open_error)?;
            let copied = match range {
                None => std::io::copy(&mut input, &mut out),
                Some((offset, len)) => input
                    .seek(std::io::SeekFrom::Start(offset))
                    .and_then(|_| std::io::copy(&mut input.take(len), &mut out)),
            }
            .map_err(|e| io("assembling the parts of", e))?;
            if let Some((_, len)) = range
                && copied != len
            {
                return Err(Error::Internal(format!(
                    "a part of {} is {copied} bytes on disk, {len} in its record",
                    target.display()
                )));
            }
            size += copied;
        }
        let metadata = out
            .metadata()
            .map_err(|e| io("reading the metadata of", e))?;
        std::fs::rename(&staging, target).map_err(|e| io("renaming the object to", e))?;
        Ok((size, Some(local_e_tag(&metadata))))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&staging);
    }
    result
}

/// Digits for a staging file name, unique enough among concurrent completions.
fn rand_digits() -> u64 {
    u64::from_le_bytes(
        uuid::Uuid::new_v4().as_bytes()[..8]
            .try_into()
            .unwrap_or_default(),
    )
}

/// The ETag object_store's local store gives a file (inode, mtime in microseconds and size,
/// in hex): a file renamed into place keeps it, so it can be taken before the rename.
/// A test checks it against what the store reports.
fn local_e_tag(metadata: &std::fs::Metadata) -> String {
    use std::os::unix::fs::MetadataExt;
    let mtime = metadata
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .unwrap_or_default()
        .as_micros();
    format!("{:x}-{mtime:x}-{:x}", metadata.ino(), metadata.len())
}

#[cfg(test)]
mod tests;
