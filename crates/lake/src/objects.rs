//! The object store of the landing zone: buckets and keys on local disk today, any S3 store later.
//!
//! Everything goes through the `object_store` crate rooted at the data
//! directory, so callers never build filesystem paths from keys.
//! **Invariant:** a key reaches the store only as a validated
//! [`ObjectKey`], so it can never escape `<data>/objects/<bucket>/`.
//! Writes are atomic (staged, then renamed) and hashed while streaming.

use std::sync::Arc;

use bytes::Bytes;
use chrono::Utc;
use futures::{Stream, StreamExt, TryStreamExt};
use md5::Md5;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, WriteMultipart};
use sha2::{Digest, Sha256};
use sluice_model::event::ObjectRef;
use sluice_model::key::{BucketName, ObjectKey};

use crate::Error;

/// The landing zone's objects.
#[derive(Clone, Debug)]
pub struct Objects {
    store: Arc<dyn ObjectStore>,
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
        let store = object_store::local::LocalFileSystem::new_with_prefix(data_dir)
            .map_err(|e| Error::store("opening the data directory", e))?;
        Ok(Self {
            store: Arc::new(store),
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
        let (size, sha256, md5) = self.write_stream(&path, body, hashes, checks).await?;
        let sha256 = checks.verified_sha256.clone().unwrap_or(sha256);
        Ok(Stored {
            object: object_ref(bucket, key, size, sha256),
            md5,
        })
    }

    /// Streams bytes to `path` atomically; returns size, SHA-256 and MD5 (hex; empty when not asked for).
    /// Nothing is stored when the body does not have the MD5 `checks` expects.
    async fn write_stream<S, E>(
        &self,
        path: &Path,
        mut body: S,
        hashes: Hashes,
        checks: &BodyChecks,
    ) -> Result<(u64, String, String), Error>
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
        let mut hasher = Sha256::new();
        let mut md5 = Md5::new();
        let mut size = 0u64;
        while let Some(chunk) = body.next().await {
            let chunk = match chunk {
                Ok(c) => c,
                Err(e) => {
                    let _ = writer.abort().await;
                    return Err(Error::UploadInterrupted(e.to_string()));
                }
            };
            if hashes.sha256 {
                hasher.update(&chunk);
            }
            if hashes.md5 || checks.expected_md5.is_some() {
                md5.update(&chunk);
            }
            size += chunk.len() as u64;
            writer
                .wait_for_capacity(4)
                .await
                .map_err(|e| Error::store("writing the object", e))?;
            writer.put(chunk);
        }
        let md5 = if hashes.md5 || checks.expected_md5.is_some() {
            hex::encode(md5.finalize())
        } else {
            String::new()
        };
        if let Some(expected) = &checks.expected_md5
            && !expected.eq_ignore_ascii_case(&md5)
        {
            let _ = writer.abort().await;
            return Err(Error::DigestMismatch {
                expected: expected.clone(),
                actual: md5,
            });
        }
        writer
            .finish()
            .await
            .map_err(|e| Error::store("finishing the object", e))?;
        let sha256 = if hashes.sha256 {
            hex::encode(hasher.finalize())
        } else {
            String::new()
        };
        Ok((size, sha256, md5))
    }

    /// Stores one part of a multipart upload; returns its size and MD5 (hex).
    pub async fn put_part<S, E>(
        &self,
        upload_id: &str,
        part_number: u32,
        body: S,
        checks: &BodyChecks,
    ) -> Result<(u64, String), Error>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        let hashes = Hashes {
            sha256: false,
            md5: true,
        };
        let (size, _, md5) = self
            .write_stream(&part_path(upload_id, part_number), body, hashes, checks)
            .await?;
        Ok((size, md5))
    }

    /// Concatenates uploaded parts into the object (streamed, atomic).
    pub async fn assemble(
        &self,
        bucket: &BucketName,
        key: &ObjectKey,
        upload_id: &str,
        parts: &[u32],
    ) -> Result<Stored, Error> {
        let store = self.store.clone();
        let paths: Vec<Path> = parts.iter().map(|n| part_path(upload_id, *n)).collect();
        let stream: futures::stream::BoxStream<'static, Result<Bytes, std::io::Error>> =
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
                .boxed();
        // The multipart ETag comes from the parts' MD5s: only the SHA-256 is needed here.
        let hashes = Hashes {
            sha256: true,
            md5: false,
        };
        let (size, sha256, _) = self
            .write_stream(
                &object_path(bucket, key),
                stream,
                hashes,
                &BodyChecks::default(),
            )
            .await?;
        Ok(Stored {
            object: object_ref(bucket, key, size, sha256),
            md5: String::new(),
        })
    }

    /// Deletes the stored parts of an upload.
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
        Ok(())
    }

    /// Copies an object (a hard link on local disk: writes replace files, so the copies never share changes).
    pub async fn copy(
        &self,
        from: (&BucketName, &ObjectKey),
        to: (&BucketName, &ObjectKey),
    ) -> Result<(), Error> {
        let (src, dst) = (object_path(from.0, from.1), object_path(to.0, to.1));
        if src == dst {
            return Ok(());
        }
        self.store.copy(&src, &dst).await.map_err(|e| match e {
            object_store::Error::NotFound { .. } => Error::ObjectNotFound {
                bucket: from.0.to_string(),
                key: from.1.to_string(),
            },
            other => Error::store("copying the object", other),
        })
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
        match result.payload {
            object_store::GetResultPayload::File(file, _) => Ok(ObjectReader::File { file, size }),
            object_store::GetResultPayload::Stream(stream) => Ok(ObjectReader::Stream {
                stream: Box::pin(stream.map_err(std::io::Error::other)),
                size,
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

    /// Copies the object into the bronze archive of `table` (a hard link on local disk), once per content version.
    pub async fn archive(&self, table: &str, object: &ObjectRef) -> Result<String, Error> {
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
            return Ok(target.to_string());
        }
        self.store
            .copy(&object_path(&bucket, &key), &target)
            .await
            .map_err(|e| Error::store("archiving the object to bronze", e))?;
        Ok(target.to_string())
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

/// A new version of an object with this content.
pub fn object_ref(bucket: &BucketName, key: &ObjectKey, size: u64, sha256: String) -> ObjectRef {
    let version = format!("{}-{}", &sha256[..16], Utc::now().timestamp_micros());
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
    },
    /// A byte stream.
    Stream {
        /// The stream.
        stream: futures::stream::BoxStream<'static, Result<Bytes, std::io::Error>>,
        /// Its size.
        size: u64,
    },
}

impl ObjectReader {
    /// Size in bytes.
    pub fn size(&self) -> u64 {
        match self {
            ObjectReader::File { size, .. } | ObjectReader::Stream { size, .. } => *size,
        }
    }
}
