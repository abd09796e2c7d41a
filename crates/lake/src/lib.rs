//! sluice-lake: the data plane. Objects in, validated Delta tables out, SQL over them.
//!
//! - [`objects`]: the landing zone's object store (local disk via `object_store`).
//! - [`read`]: CSV / JSON lines / Parquet readers, streamed in batches.
//! - [`cast`] and [`validate`]: the contract applied to each batch.
//! - [`delta`]: Delta Lake tables, commits that carry their own idempotency key.
//! - [`ingest`]: one object, or a batch of small ones, → one atomic commit to silver (+ quarantine).
//! - [`compact`]: small files merged, per partition, keeping which object wrote which rows.
//! - [`gold`]: SQL models recomputed as CREATE TABLE AS.
//! - [`scan`]: a Delta table's active files as DataFusion's own Parquet scan.
//! - [`sql`]: the DataFusion catalog (`bronze`, `silver`, `gold`, `sluice`).
//! - [`tail`]: a table's write-ahead tail: small ingests' rows, durable and queryable before their Delta commit.
//! - [`txns`]: a table's application transactions (exactly-once lookups), read once and kept current.
//!
//! **Invariant:** the data plane does not know the state store. "Was this
//! object already applied?" is answered by the Delta table itself (a
//! transaction identifier per source object), atomically with the data.

pub mod cast;
pub mod compact;
pub mod delta;
mod durable;
pub mod gold;
mod hour_slots;
pub mod ingest;
pub mod log_listing;
pub mod objects;
pub mod read;
pub mod scan;
pub mod sql;
pub mod tail;
pub mod txns;
pub mod vacuum;
pub mod validate;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use sluice_model::ErrorCode;

/// Errors of the data plane. Bad rows are not errors (they are rejections); a bad file is.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The object store failed.
    #[error("{what}: {source}")]
    Store {
        /// What was being done.
        what: String,
        /// The store's error.
        #[source]
        source: object_store::Error,
    },
    /// A filesystem operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The object does not exist.
    #[error("object {bucket}/{key} not found")]
    ObjectNotFound {
        /// Bucket.
        bucket: String,
        /// Key.
        key: String,
    },
    /// A bucket or key was refused.
    #[error("{0}")]
    BadKey(String),
    /// The client stopped sending before the upload completed; nothing was stored.
    #[error("upload interrupted: {0}")]
    UploadInterrupted(String),
    /// The body does not have the digest the client declared; nothing was stored.
    #[error("the body's MD5 is {actual}, not the {expected} the client declared")]
    DigestMismatch {
        /// Declared (hex).
        expected: String,
        /// Computed (hex).
        actual: String,
    },
    /// The source file cannot be read as its format (the whole file is refused).
    #[error("{object}: {source}")]
    BadFile {
        /// bucket/key.
        object: String,
        /// Why.
        #[source]
        source: read::ReadError,
    },
    /// Too many rows were invalid; nothing was published.
    #[error(
        "{invalid} of {total} rows ({pct:.2}%) are invalid, above the threshold of {threshold}%: nothing was written to {table}; see `sluice quarantine show {table}`"
    )]
    ThresholdExceeded {
        /// Table.
        table: String,
        /// Invalid rows.
        invalid: u64,
        /// All rows.
        total: u64,
        /// Invalid share in percent.
        pct: f64,
        /// The threshold.
        threshold: f64,
    },
    /// The contract's expressions do not compile.
    #[error("table {table}: {errors}")]
    Contract {
        /// Table.
        table: String,
        /// Every problem, one per line.
        errors: String,
    },
    /// Evaluating an expression failed.
    #[error(transparent)]
    Eval(#[from] validate::EvalError),
    /// The Delta table failed.
    #[error("delta table {table}: {source}")]
    Delta {
        /// Table.
        table: String,
        /// The error.
        #[source]
        source: deltalake::DeltaTableError,
    },
    /// A SQL statement failed.
    #[error("{0}")]
    Sql(String),
    /// A model reads a table that does not exist yet; it may appear later, so this is retried.
    #[error("{0} (an input of the model does not exist yet)")]
    MissingInput(String),
    /// Another operation holds what this one needs; retrying later succeeds.
    #[error("{0}")]
    Busy(String),
    /// An object's raw copy in a bronze table could not be made durable; its rows are
    /// not ingested without it.
    #[error("archiving to bronze {table}: {source}")]
    Archive {
        /// The bronze table.
        table: String,
        /// Why.
        #[source]
        source: Box<Error>,
    },
    /// A background task died; this is a bug in sluice.
    #[error("internal error: {0} (this is a bug in sluice)")]
    Internal(String),
}

impl Error {
    pub(crate) fn store(what: &str, source: object_store::Error) -> Self {
        Error::Store {
            what: what.to_string(),
            source,
        }
    }

    pub(crate) fn delta(table: &str, source: deltalake::DeltaTableError) -> Self {
        Error::Delta {
            table: table.to_string(),
            source,
        }
    }

    /// The edge error code; retryable codes get another attempt.
    pub fn code(&self) -> ErrorCode {
        match self {
            Error::Store { .. }
            | Error::Io { .. }
            | Error::Delta { .. }
            | Error::MissingInput(_)
            | Error::Busy(_) => {
                ErrorCode::Unavailable
            }
            Error::ObjectNotFound { .. } => ErrorCode::NotFound,
            Error::BadKey(_)
            | Error::UploadInterrupted(_)
            | Error::DigestMismatch { .. }
            | Error::BadFile { .. }
            | Error::ThresholdExceeded { .. }
            | Error::Contract { .. }
            | Error::Sql(_)
            // Expressions are deterministic: the same data fails the same way again.
            | Error::Eval(_) => ErrorCode::BadInput,
            Error::Internal(_) => ErrorCode::Internal,
            Error::Archive { source, .. } => source.code(),
        }
    }
}

/// The cores this process may use, asked of the system once: `available_parallelism`
/// reads the cgroup's CPU quota from /proc and /sys on every call (files opened, read
/// and closed), and each small object's batch asks.
pub(crate) fn cores() -> usize {
    static CORES: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *CORES.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// Where the lake lives: `<data_dir>/lake/<layer>/<table>` plus `<data_dir>/lake/sluice/quarantine`.
///
/// Each location's URL is resolved once (its directory created, symlinks resolved) and kept:
/// ingests, queries and the flush loop ask for a table's URL several times per object,
/// and resolving it walks the path with one `readlink` per component.
#[derive(Debug, Clone)]
pub struct LakePaths {
    root: PathBuf,
    urls: Arc<Mutex<HashMap<String, url::Url>>>,
}

impl LakePaths {
    /// The lake under a data directory.
    pub fn new(data_dir: &Path) -> Self {
        Self {
            root: data_dir.join("lake"),
            urls: Arc::default(),
        }
    }

    /// Relative location of a table's data (a new schema version starts a new location).
    pub fn location(layer: &str, table: &str, schema_version: u32) -> String {
        if schema_version <= 1 {
            format!("{layer}/{table}")
        } else {
            format!("{layer}/{table}_v{schema_version}")
        }
    }

    /// The `file://` URL of a location, its directory created the first time it is asked for.
    pub fn url(&self, location: &str) -> Result<url::Url, Error> {
        let urls = || self.urls.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(url) = urls().get(location) {
            return Ok(url.clone());
        }
        let path = self.root.join(location);
        std::fs::create_dir_all(&path).map_err(|e| Error::Io {
            what: format!("creating {}", path.display()),
            source: e,
        })?;
        let path = path.canonicalize().map_err(|e| Error::Io {
            what: format!("resolving {}", path.display()),
            source: e,
        })?;
        let url = url::Url::from_directory_path(&path)
            .map_err(|_| Error::Internal(format!("{} is not an absolute path", path.display())))?;
        urls().insert(location.to_string(), url.clone());
        Ok(url)
    }

    /// The quarantine table's location.
    pub const QUARANTINE: &'static str = "sluice/quarantine";
}
