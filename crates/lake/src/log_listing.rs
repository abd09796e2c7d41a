//! A table's Delta log listed from a version by looking each next version up, instead of
//! reading the whole `_delta_log` directory.
//!
//! deltalake lists the log from a version twice per commit (to find the version to write,
//! then to bring the snapshot up to it) and on every snapshot update. object_store's local
//! store answers each such listing by reading every entry of the directory and turning
//! each name into a path, so its cost grows with the log: a table flushed every second
//! writes 86,400 commits a day and keeps them 30 days (`delta.logRetentionDuration`). With
//! 100,000 entries a 1,000-row object cost ~15% more server CPU, and waits of up to 0.9 s
//! (docs/benchmarks.md, session 52).
//!
//! Two rules of the Delta protocol make lookups enough. Commit versions have no gaps. The
//! expired-log cleanup only deletes versions below the newest checkpoint, which
//! `_last_checkpoint` names before any cleanup after it starts. So from a version whose
//! commit exists, the log's files at or after it are that commit and each next one, with
//! the checkpoint and checksum files of those versions, up to the first version without a
//! commit, unless `_last_checkpoint` names that version or a later one (a cleanup removed
//! commits while they were looked up) or names a version of those without a single-file
//! checkpoint (one of a kind the lookups do not know: multi-part, UUID-named). Every other
//! listing (not the log's, from no version, from a version without a commit) and every
//! doubtful one is the store's own. The lookups leave out what a reader can do without:
//! compacted logs and sidecars of checkpoints the listing does not name.

use std::fmt;
use std::ops::Range;
use std::sync::{Arc, Once};

use bytes::Bytes;
use deltalake::DeltaResult;
use deltalake::logstore::{ObjectStoreFactory, StorageConfig, object_store_factories};
use futures::StreamExt;
use futures::stream::BoxStream;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    ObjectStoreExt, PutMultipartOptions, PutOptions, PutPayload, PutResult, RenameOptions, Result,
};

/// The log directory's name.
const LOG_DIR: &str = "_delta_log";
/// Per version, the files looked up beside its commit: a single-file checkpoint and a
/// checksum file.
const BESIDE_COMMIT: [&str; 2] = ["checkpoint.parquet", "crc"];

/// Makes deltalake open every local table (`file://`) through [`LogListing`]; once per
/// process, before a table is opened.
pub(crate) fn register() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let file = url::Url::parse("file://").expect("a URL scheme parses");
        object_store_factories().insert(file, Arc::new(LocalLogFactory));
    });
}

/// deltalake's default for `file://` URLs (object_store's local store), wrapped.
struct LocalLogFactory;

impl ObjectStoreFactory for LocalLogFactory {
    fn parse_url_opts(
        &self,
        url: &url::Url,
        config: &StorageConfig,
    ) -> DeltaResult<(Arc<dyn ObjectStore>, Path)> {
        let (store, path) = object_store::parse_url_opts(url, &config.raw)?;
        let mut store: Arc<dyn ObjectStore> = Arc::new(LogListing::new(Arc::from(store)));
        if let Some(runtime) = &config.runtime {
            store = Arc::new(deltalake::logstore::DeltaIOStorageBackend::new(
                store,
                runtime.clone(),
            ));
        }
        Ok((store, path))
    }
}

/// An object store whose listings of a Delta log from a version are lookups (see the
/// module's text); everything else is the inner store's.
#[derive(Debug)]
pub struct LogListing {
    inner: Arc<dyn ObjectStore>,
}

impl LogListing {
    /// `inner`, with its log listings looked up.
    pub fn new(inner: Arc<dyn ObjectStore>) -> Self {
        Self { inner }
    }
}

impl fmt::Display for LogListing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "LogListing({})", self.inner)
    }
}

/// The log directory and version of a listing of `prefix` from `offset`, when `prefix` is
/// a `_delta_log` and `offset` a 20-digit version in it (how deltalake lists from a
/// version).
fn log_version(prefix: &Path, offset: &Path) -> Option<u64> {
    if prefix.filename() != Some(LOG_DIR) {
        return None;
    }
    let mut rest = offset.prefix_match(prefix)?;
    let name = rest.next()?;
    let name = name.as_ref();
    if rest.next().is_some() || name.len() != 20 || !name.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    name.parse().ok()
}

/// A file's metadata; None when it does not exist.
async fn head(store: &dyn ObjectStore, location: &Path) -> Result<Option<ObjectMeta>> {
    match store.head(location).await {
        Ok(meta) => Ok(Some(meta)),
        Err(object_store::Error::NotFound { .. }) => Ok(None),
        Err(e) => Err(e),
    }
}

/// The version `_last_checkpoint` in the log directory `log` names; None without one, and
/// Err(()) when it cannot be read as one (the lookups are then not trusted).
pub(crate) async fn hinted_checkpoint(
    store: &dyn ObjectStore,
    log: &Path,
) -> Result<Option<u64>, ()> {
    let bytes = match store.get(&log.clone().join("_last_checkpoint")).await {
        Ok(got) => got.bytes().await.map_err(|_| ())?,
        Err(object_store::Error::NotFound { .. }) => return Ok(None),
        Err(_) => return Err(()),
    };
    let hint: serde_json::Value = serde_json::from_slice(&bytes).map_err(|_| ())?;
    hint.get("version")
        .and_then(|v| v.as_u64())
        .map(Some)
        .ok_or(())
}

/// The log's files at or after `from`, by lookups; None when the lookups cannot answer
/// for them (see the module's text), and the store must list.
async fn look_up(
    store: &dyn ObjectStore,
    log: &Path,
    from: u64,
) -> Result<Option<Vec<ObjectMeta>>> {
    let mut found = Vec::new();
    let mut checkpoints = Vec::new();
    let mut version = from;
    loop {
        let name = format!("{version:020}");
        let Some(commit) = head(store, &log.clone().join(format!("{name}.json"))).await? else {
            break;
        };
        found.push(commit);
        for kind in BESIDE_COMMIT {
            if let Some(meta) = head(store, &log.clone().join(format!("{name}.{kind}"))).await? {
                if kind == BESIDE_COMMIT[0] {
                    checkpoints.push(version);
                }
                found.push(meta);
            }
        }
        version += 1;
    }
    if version == from {
        return Ok(None);
    }
    let trusted = match hinted_checkpoint(store, log).await {
        Ok(None) => true,
        Ok(Some(hint)) => hint < from || (hint < version && checkpoints.contains(&hint)),
        Err(()) => false,
    };
    Ok(trusted.then_some(found))
}

#[async_trait::async_trait]
#[deny(clippy::missing_trait_methods)]
impl ObjectStore for LogListing {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> Result<PutResult> {
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> Result<Box<dyn MultipartUpload>> {
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        self.inner.get_opts(location, options).await
    }

    async fn get_ranges(&self, location: &Path, ranges: &[Range<u64>]) -> Result<Vec<Bytes>> {
        self.inner.get_ranges(location, ranges).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, Result<Path>>,
    ) -> BoxStream<'static, Result<Path>> {
        self.inner.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        self.inner.list(prefix)
    }

    fn list_with_offset(
        &self,
        prefix: Option<&Path>,
        offset: &Path,
    ) -> BoxStream<'static, Result<ObjectMeta>> {
        let Some(from) = prefix.and_then(|p| log_version(p, offset)) else {
            return self.inner.list_with_offset(prefix, offset);
        };
        let inner = self.inner.clone();
        let (log, offset) = (prefix.cloned().unwrap_or_default(), offset.clone());
        futures::stream::once(async move {
            match look_up(inner.as_ref(), &log, from).await {
                Ok(Some(found)) => futures::stream::iter(found.into_iter().map(Ok)).boxed(),
                Ok(None) => inner.list_with_offset(Some(&log), &offset),
                Err(e) => futures::stream::once(async { Err(e) }).boxed(),
            }
        })
        .flatten()
        .boxed()
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
        self.inner.copy_opts(from, to, options).await
    }

    async fn rename_opts(&self, from: &Path, to: &Path, options: RenameOptions) -> Result<()> {
        self.inner.rename_opts(from, to, options).await
    }
}

#[cfg(test)]
mod tests;
