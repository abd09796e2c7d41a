//! Vacuum: delete the data files a table no longer needs.
//!
//! A Delta commit never deletes a file: compaction, a replaced or removed object and a
//! gold refresh only mark files removed (tombstones), so readers of an older version, and
//! time travel, still find them. Files written by a write that never committed (a
//! compaction whose commit was dropped, a crash between a file and its commit) are named
//! by no commit at all (orphans). Both stay on disk until a vacuum.
//!
//! [`vacuum`] deletes files removed longer than a retention ago (the table's
//! `delta.deletedFileRetentionDuration`, seven days unless set, or what the caller asks),
//! and, with [`Sweep::WithOrphans`], orphans older than both that retention and
//! [`ORPHAN_MIN_AGE`]: a younger file may belong to a write still in flight, in this
//! process or another. Finding orphans lists every file of the table; retired files are
//! named by the log alone ([`Sweep::Retired`]). It plans with
//! deltalake's vacuum (a dry run: `Lite` mode for tombstones, `Full` for orphans) and
//! deletes the planned files itself, so it commits nothing: the log, the versions queries
//! and ingests see, and the durability of its entries are left as they were.
//!
//! **What a short retention costs:** a query, compaction or CLI reader still on a version
//! older than the retention may find a file gone and fail (it is retried on the latest
//! version; no row is lost), and time travel to such a version fails.

use std::collections::BTreeSet;
use std::time::Duration;

use deltalake::operations::vacuum::VacuumMode;
use deltalake::table::config::TablePropertiesExt as _;
use object_store::ObjectStoreExt as _;

use crate::Error;
use crate::delta::TableCache;

/// The youngest an orphan can be and be deleted: files a write still in flight has made
/// are younger (a 5 GB ingest writes for about a minute before its commit).
pub const ORPHAN_MIN_AGE: Duration = Duration::from_secs(3600);

/// What a vacuum looks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sweep {
    /// Files the table's commits removed longer than the retention ago: found in the log.
    Retired,
    /// Those, and orphans (files no commit names) older than the retention and
    /// [`ORPHAN_MIN_AGE`]: found by listing every file under the table's root.
    WithOrphans,
}

/// What a vacuum deleted, or would delete (a dry run).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VacuumReport {
    /// The files, relative to the table's root, in order.
    pub files: Vec<String>,
    /// Their bytes.
    pub bytes: u64,
    /// The retention applied to removed files.
    pub retention: Duration,
    /// Nothing was deleted: the files are what a vacuum would delete.
    pub dry_run: bool,
}

/// Deletes the files the table at `url` removed more than `retain` ago (None: the table's
/// own retention) and, as `sweep` asks, its orphans older than that and
/// [`ORPHAN_MIN_AGE`]; with `dry_run`, only reports them. None when nothing was ever
/// committed there.
pub async fn vacuum(
    tables: &TableCache,
    name: &str,
    url: url::Url,
    retain: Option<Duration>,
    sweep: Sweep,
    dry_run: bool,
) -> Result<Option<VacuumReport>, Error> {
    let Some(table) = tables.latest(name, url).await? else {
        return Ok(None);
    };
    let retention = match retain {
        Some(r) => r,
        None => table
            .snapshot()
            .map_err(|e| Error::delta(name, e))?
            .table_config()
            .deleted_file_retention_duration(),
    };
    let mut files = planned(name, &table, VacuumMode::Lite, retention).await?;
    if sweep == Sweep::WithOrphans {
        files.extend(
            planned(
                name,
                &table,
                VacuumMode::Full,
                retention.max(ORPHAN_MIN_AGE),
            )
            .await?,
        );
    }
    let store = table.log_store().object_store(None);
    let mut report = VacuumReport {
        files: Vec::with_capacity(files.len()),
        bytes: 0,
        retention,
        dry_run,
    };
    for file in files {
        // As the store spells it on disk (a partition value's `%20` stays as it is).
        let path =
            deltalake::Path::parse(&file).unwrap_or_else(|_| deltalake::Path::from(file.as_str()));
        // A file another vacuum deleted meanwhile is not counted.
        let size = match store.head(&path).await {
            Ok(meta) => meta.size,
            Err(object_store::Error::NotFound { .. }) => continue,
            Err(e) => return Err(store_error(name, &file, e)),
        };
        if !dry_run {
            match store.delete(&path).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(store_error(name, &file, e)),
            }
        }
        report.bytes += size;
        report.files.push(file);
    }
    if !dry_run && !report.files.is_empty() {
        tracing::info!(
            table = name,
            files = report.files.len(),
            bytes = report.bytes,
            retention_s = retention.as_secs(),
            "vacuumed"
        );
    }
    Ok(Some(report))
}

/// The files deltalake's vacuum in `mode` would delete at `retention` (its dry run: it
/// commits nothing).
async fn planned(
    name: &str,
    table: &deltalake::DeltaTable,
    mode: VacuumMode,
    retention: Duration,
) -> Result<BTreeSet<String>, Error> {
    let retention = chrono::Duration::from_std(retention).map_err(|_| {
        Error::Internal(format!("{name}: a retention of {retention:?} is too long"))
    })?;
    let (_, metrics) = table
        .clone()
        .vacuum()
        .with_mode(mode)
        .with_retention_period(retention)
        // The caller's retention is the one that applies, shorter than the table's or not.
        .with_enforce_retention_duration(false)
        .with_dry_run(true)
        .await
        .map_err(|e| Error::delta(name, e))?;
    Ok(metrics.files_deleted.into_iter().collect())
}

fn store_error(name: &str, file: &str, source: object_store::Error) -> Error {
    Error::Store {
        what: format!("{name}: vacuuming {file}"),
        source,
    }
}
