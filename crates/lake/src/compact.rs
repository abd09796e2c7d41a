//! Compaction: a partition's many small files become a few large ones.
//!
//! Small objects make small files (a 100-row object spread over a month of daily
//! partitions writes 31 files of 3 rows), and every query and every ingest pays per file.
//! Compaction rewrites a partition's small files into files of up to
//! [`COMPACTED_FILE_BYTES`], in one commit that changes no data (`dataChange: false`).
//! Merged files are marked `sluice.compacted`; replacing or removing one of the objects
//! they hold later finds them by their `_source_object` column and rewrites them without
//! its rows: exactly-once per source object survives compaction.
//!
//! **Invariant:** compaction and ingests of the same table never run at the same time
//! (the caller holds the table's write lock): Delta does not treat a compaction's removes
//! as conflicting with a concurrent delete of the same file.

use std::collections::{BTreeMap, BTreeSet};

use deltalake::kernel::Add;
use deltalake::protocol::DeltaOperation;

use crate::delta::{self, FileWriter};
use crate::{Error, LakePaths};

/// Files below this size are compacted.
pub const SMALL_FILE_BYTES: i64 = 16 << 20;

/// Largest file compaction writes: small enough that rewriting one to replace an
/// object's rows stays cheap.
pub const COMPACTED_FILE_BYTES: u64 = 64 << 20;

/// Small files in one partition that make an ingest compact that partition.
pub const AUTO_COMPACT_FILES: usize = 16;

/// What a compaction did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CompactReport {
    /// Partitions rewritten.
    pub partitions: usize,
    /// Small files replaced.
    pub files_removed: usize,
    /// Files written.
    pub files_added: usize,
    /// Bytes of the files replaced.
    pub bytes_removed: u64,
    /// The commit's table version, when something was compacted.
    pub version: Option<i64>,
}

/// Which partitions to look at.
#[derive(Debug, Clone, Copy)]
pub enum Scope<'a> {
    /// Every partition with at least two small files.
    All,
    /// Once any of these partitions (`year=2024/month=1/...`) holds this many small files,
    /// every partition with at least two: partitions filled by the same objects are then
    /// compacted together, not one commit each as each reaches the threshold.
    WhenAnyOf(&'a BTreeSet<String>, usize),
}

/// Compacts a table's small files, one partition at a time, in one commit.
pub async fn compact(
    paths: &LakePaths,
    name: &str,
    location: &str,
    scope: Scope<'_>,
    tables: &delta::TableCache,
) -> Result<CompactReport, Error> {
    let mut report = CompactReport::default();
    let url = paths.url(location)?;
    let Some(mut table) = tables.latest(name, url.clone()).await? else {
        return Ok(report);
    };
    let partition_by = table
        .snapshot()
        .map_err(|e| Error::delta(name, e))?
        .metadata()
        .partition_columns()
        .to_vec();
    let mut groups: BTreeMap<String, Vec<Add>> = BTreeMap::new();
    for add in delta::active_files(name, &table).await? {
        if add.size < SMALL_FILE_BYTES {
            groups
                .entry(delta::partition_key(&add, &partition_by))
                .or_default()
                .push(add);
        }
    }
    if let Scope::WhenAnyOf(keys, min) = scope
        && !groups
            .iter()
            .any(|(key, files)| keys.contains(key) && files.len() >= min)
    {
        return Ok(report);
    }
    groups.retain(|_, files| files.len() >= 2);
    if groups.is_empty() {
        return Ok(report);
    }
    let mut adds = Vec::new();
    let mut removes = Vec::new();
    for files in groups.values_mut() {
        files.sort_by(|a, b| (a.modification_time, &a.path).cmp(&(b.modification_time, &b.path)));
        // One partition at a time: one open file, so no write window is needed.
        let mut writer =
            FileWriter::with_target_size(name, &table, COMPACTED_FILE_BYTES)?.without_window();
        let schema = writer.schema();
        for file in files.iter() {
            for batch in delta::read_file(name, &table, file, &schema).await? {
                writer.write(batch).await?;
            }
            removes.push(delta::remove_of(file, false));
            report.files_removed += 1;
            report.bytes_removed += file.size.max(0) as u64;
        }
        let mut written = writer.finish(&[(delta::TAG_COMPACTED, "true")]).await?;
        for add in &mut written {
            add.data_change = false;
        }
        report.files_added += written.len();
        report.partitions += 1;
        adds.extend(written);
    }
    let version = delta::commit(
        name,
        &mut table,
        adds,
        removes,
        Vec::new(),
        DeltaOperation::Optimize {
            predicate: None,
            target_size: COMPACTED_FILE_BYTES as i64,
        },
    )
    .await?;
    tables.keep(&url, &table);
    report.version = Some(version);
    Ok(report)
}
