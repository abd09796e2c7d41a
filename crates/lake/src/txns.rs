//! A table's application transactions (Delta `txn` actions): the version each app id
//! last committed, which is how exactly-once asks "was this object applied?".
//!
//! deltalake answers one app id at a time by replaying the log from its last checkpoint,
//! to the end for an id the table has never seen (that is every new object), so a batch
//! of 64 new objects replayed the log 128 times and each replay grew with the table: 10,000
//! small objects slowed from 216 to 58 objects/s (docs/benchmarks.md). A [`TxnIndex`]
//! reads the checkpoint's `txn` column and the commits after it once per table and
//! process, and is then advanced by reading only the commits made since, so a lookup is a
//! hash probe however long the log is.
//!
//! Tables the index cannot read exactly (a transaction retention period, whose expiry the
//! kernel applies, or a log missing a commit after the newest checkpoint the index reads)
//! are answered by deltalake.

use std::collections::HashMap;

use arrow::array::{Array, AsArray as _, RecordBatch};
use arrow::datatypes::Int64Type;
use bytes::Bytes;
use deltalake::DeltaTable;
use deltalake::logstore::LogStore;
use futures::TryStreamExt as _;
use object_store::ObjectStoreExt as _;
use object_store::path::Path;
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use crate::Error;

/// The latest `txn` version of every app id of a table, as of one table version.
#[derive(Debug, Clone)]
pub struct TxnIndex {
    version: i64,
    apps: HashMap<String, i64>,
}

impl TxnIndex {
    /// Reads the transactions of `table` at its current version: the newest checkpoint's
    /// `txn` column, then the commits after it. None for a table whose transactions expire
    /// (`delta.setTransactionRetentionDuration`: the kernel applies the expiry) or whose
    /// log lacks a commit the index would need (cleaned up without a checkpoint it reads).
    pub async fn load(name: &str, table: &DeltaTable) -> Result<Option<Self>, Error> {
        let snapshot = table.snapshot().map_err(|e| Error::delta(name, e))?;
        if snapshot
            .snapshot()
            .table_properties()
            .set_transaction_retention_duration
            .is_some()
        {
            return Ok(None);
        }
        let version = table.version().map_or(-1, |v| v as i64);
        let log_store = table.log_store();
        let store = log_store.object_store(None);
        let mut index = TxnIndex {
            version: -1,
            apps: HashMap::new(),
        };
        if let Some((checkpoint, parts)) = newest_checkpoint(name, store.as_ref(), version).await? {
            for part in parts {
                let bytes = get(name, store.as_ref(), &part).await?;
                let read = if part.as_ref().ends_with(".parquet") {
                    checkpoint_txns(&bytes, &mut index.apps)
                } else {
                    commit_txns(&bytes, &mut index.apps)
                };
                if let Err(e) = read {
                    return Err(Error::Internal(format!(
                        "reading {name}'s checkpoint {part}: {e}"
                    )));
                }
            }
            index.version = checkpoint;
        }
        let complete = index.advance(name, log_store.as_ref(), version).await?;
        Ok(complete.then_some(index))
    }

    /// The table version this index reflects.
    pub fn version(&self) -> i64 {
        self.version
    }

    /// The latest version `app_id` committed, if it ever did.
    pub fn get(&self, app_id: &str) -> Option<i64> {
        self.apps.get(app_id).copied()
    }

    /// Brings the index to `version` by reading the commits after its own; false when one
    /// of them is no longer in the log (the index then stays where it was).
    pub async fn advance(
        &mut self,
        name: &str,
        log_store: &dyn LogStore,
        version: i64,
    ) -> Result<bool, Error> {
        let mut apps = Vec::new();
        for next in self.version + 1..=version {
            let Some(bytes) = log_store
                .read_commit_entry(next as u64)
                .await
                .map_err(|e| Error::delta(name, e))?
            else {
                return Ok(false);
            };
            commit_txns(&bytes, &mut apps).map_err(|e| {
                Error::Internal(format!("{name}: reading the txns of commit {next}: {e}"))
            })?;
        }
        self.apps.extend(apps);
        self.version = self.version.max(version);
        Ok(true)
    }
}

async fn get(
    name: &str,
    store: &dyn object_store::ObjectStore,
    path: &Path,
) -> Result<Bytes, Error> {
    async { store.get(path).await?.bytes().await }
        .await
        .map_err(|source| Error::Store {
            what: format!("reading {name}'s log file {path}"),
            source,
        })
}

/// The checkpoint files of one version: single-file ones, and multi-part ones by their
/// number of parts.
#[derive(Default)]
struct Checkpoints(Vec<Path>, HashMap<u32, Vec<Path>>);

/// The newest complete checkpoint at or before `version`: its version and its files.
/// A multi-part checkpoint counts only with all its parts; a V2 checkpoint is its top-level
/// file, which holds every `txn` (its sidecars hold only files).
///
/// The single-file checkpoint `_last_checkpoint` names is looked up first: listing the log
/// reads every entry of it (1.3 s for a log of 100,000 commits, the first query after a
/// restart; docs/benchmarks.md, session 52). A newer checkpoint than the hint's costs only
/// the replay of the commits between them.
async fn newest_checkpoint(
    name: &str,
    store: &dyn object_store::ObjectStore,
    version: i64,
) -> Result<Option<(i64, Vec<Path>)>, Error> {
    let log = Path::from("_delta_log");
    if let Ok(Some(hint)) = crate::log_listing::hinted_checkpoint(store, &log).await
        && let Ok(hint) = i64::try_from(hint)
        && hint <= version
    {
        let file = log.clone().join(format!("{hint:020}.checkpoint.parquet"));
        match store.head(&file).await {
            Ok(_) => return Ok(Some((hint, vec![file]))),
            Err(object_store::Error::NotFound { .. }) => {}
            Err(source) => {
                return Err(Error::Store {
                    what: format!("looking up {name}'s checkpoint {file}"),
                    source,
                });
            }
        }
    }
    let listed: Vec<_> = store
        .list(Some(&log))
        .try_collect()
        .await
        .map_err(|source| Error::Store {
            what: format!("listing {name}'s log"),
            source,
        })?;
    let mut found: HashMap<i64, Checkpoints> = HashMap::new();
    for meta in listed {
        let Some(file) = meta.location.filename() else {
            continue;
        };
        let Some((v, rest)) = file.split_once(".checkpoint") else {
            continue;
        };
        let Ok(v) = v.parse::<i64>() else { continue };
        if v > version {
            continue;
        }
        let entry = found.entry(v).or_default();
        let fields: Vec<&str> = rest.trim_start_matches('.').split('.').collect();
        match fields.as_slice() {
            // `N.checkpoint.parquet` or V2's `N.checkpoint.<uuid>.parquet|json`
            ["parquet"] | [_, "parquet" | "json"] => entry.0.push(meta.location.clone()),
            // `N.checkpoint.<part>.<parts>.parquet`
            [_, parts, "parquet"] => {
                if let Ok(parts) = parts.parse::<u32>() {
                    entry
                        .1
                        .entry(parts)
                        .or_default()
                        .push(meta.location.clone());
                }
            }
            _ => {}
        }
    }
    let mut versions: Vec<_> = found.into_iter().collect();
    versions.sort_by_key(|(v, _)| std::cmp::Reverse(*v));
    for (v, Checkpoints(single, multi)) in versions {
        if let Some(file) = single.into_iter().next() {
            return Ok(Some((v, vec![file])));
        }
        if let Some((_, mut parts)) = multi.into_iter().find(|(n, p)| p.len() == *n as usize) {
            parts.sort();
            return Ok(Some((v, parts)));
        }
    }
    Ok(None)
}

/// The `txn` actions of a checkpoint's Parquet file, read from its `txn` column alone.
fn checkpoint_txns(bytes: &Bytes, apps: &mut HashMap<String, i64>) -> Result<(), String> {
    let builder =
        ParquetRecordBatchReaderBuilder::try_new(bytes.clone()).map_err(|e| e.to_string())?;
    let schema = builder.parquet_schema();
    let leaves: Vec<usize> = (0..schema.num_columns())
        .filter(|&i| {
            let path = schema.column(i).path().parts().to_vec();
            path.len() == 2 && path[0] == "txn" && (path[1] == "appId" || path[1] == "version")
        })
        .collect();
    if leaves.len() != 2 {
        // No `txn` column: a table that never recorded one.
        return Ok(());
    }
    let mask = ProjectionMask::leaves(schema, leaves);
    let reader = builder
        .with_projection(mask)
        .build()
        .map_err(|e| e.to_string())?;
    for batch in reader {
        let batch: RecordBatch = batch.map_err(|e| e.to_string())?;
        let txn = batch.column(0).as_struct();
        let (Some(app), Some(version)) =
            (txn.column_by_name("appId"), txn.column_by_name("version"))
        else {
            return Err("the txn column lacks appId or version".into());
        };
        let app = app.as_string::<i32>();
        let version = version
            .as_primitive_opt::<Int64Type>()
            .ok_or("txn.version is not a long")?;
        for row in 0..txn.len() {
            if txn.is_valid(row) && app.is_valid(row) && version.is_valid(row) {
                // A checkpoint holds one txn per app id.
                apps.insert(app.value(row).to_string(), version.value(row));
            }
        }
    }
    Ok(())
}

/// The `txn` actions of a commit (or a JSON checkpoint), applied in log order.
fn commit_txns(bytes: &[u8], apps: &mut impl Extend<(String, i64)>) -> Result<(), String> {
    #[derive(serde::Deserialize)]
    struct Line {
        txn: Option<Txn>,
    }
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Txn {
        app_id: String,
        version: i64,
    }
    for line in serde_json::Deserializer::from_slice(bytes).into_iter::<Line>() {
        if let Some(txn) = line.map_err(|e| e.to_string())?.txn {
            apps.extend([(txn.app_id, txn.version)]);
        }
    }
    Ok(())
}
