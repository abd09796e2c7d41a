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
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload, WriteMultipart};
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
        mut body: S,
    ) -> Result<ObjectRef, Error>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        let path = object_path(bucket, key);
        let upload = self
            .store
            .put_multipart(&path)
            .await
            .map_err(|e| Error::store("starting the upload", e))?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, 8 << 20);
        let mut hasher = Sha256::new();
        let mut size = 0u64;
        while let Some(chunk) = body.next().await {
            let chunk = match chunk {
                Ok(c) => c,
                Err(e) => {
                    let _ = writer.abort().await;
                    return Err(Error::UploadInterrupted(e.to_string()));
                }
            };
            hasher.update(&chunk);
            size += chunk.len() as u64;
            writer
                .wait_for_capacity(4)
                .await
                .map_err(|e| Error::store("writing the object", e))?;
            writer.put(chunk);
        }
        writer
            .finish()
            .await
            .map_err(|e| Error::store("finishing the object", e))?;
        let sha256 = hex::encode(hasher.finalize());
        Ok(object_ref(bucket, key, size, sha256))
    }

    /// Writes a small object from memory.
    pub async fn put_bytes(
        &self,
        bucket: &BucketName,
        key: &ObjectKey,
        data: Bytes,
    ) -> Result<ObjectRef, Error> {
        let sha256 = hex::encode(Sha256::digest(&data));
        let size = data.len() as u64;
        self.store
            .put(&object_path(bucket, key), PutPayload::from_bytes(data))
            .await
            .map_err(|e| Error::store("writing the object", e))?;
        Ok(object_ref(bucket, key, size, sha256))
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
            .map_err(|e| match e {
                object_store::Error::NotFound { .. } => Error::ObjectNotFound {
                    bucket: bucket.to_string(),
                    key: key.to_string(),
                },
                other => Error::store("opening the object", other),
            })?;
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
            .map_err(|e| match e {
                object_store::Error::NotFound { .. } => Error::ObjectNotFound {
                    bucket: bucket.to_string(),
                    key: key.to_string(),
                },
                other => Error::store("reading the object", other),
            })?;
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

fn object_ref(bucket: &BucketName, key: &ObjectKey, size: u64, sha256: String) -> ObjectRef {
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
