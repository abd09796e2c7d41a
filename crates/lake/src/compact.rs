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
//! Compaction runs in two phases so ingests wait for its commit, not for its rewrite:
//! [`prepare`] reads the small files and writes the merged ones (ingests may commit
//! meanwhile), then [`Prepared::commit`] publishes them only if every file it merged is
//! still active at the table's latest version, and otherwise deletes what it wrote.
//!
//! **Invariant:** no ingest commits between that check and the compaction's commit (the
//! caller holds the table's write lock for [`Prepared::commit`]): Delta does not treat a
//! compaction's removes as conflicting with a concurrent delete of the same file, so the
//! check is what keeps a replaced object's old rows from coming back.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use deltalake::kernel::{Add, Remove};
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
    /// Nothing was committed: an ingest replaced or removed files being merged meanwhile.
    pub superseded: bool,
}

/// Which partitions to look at, and which of their small files to merge.
#[derive(Debug, Clone, Copy)]
pub enum Scope<'a> {
    /// Every small file of every partition with at least two (a compaction command).
    All,
    /// Automatic compaction after an ingest: once [`tiered`] picks this many files of any
    /// of these partitions (`year=2024/month=1/...`), those it picks in every partition
    /// where it picks at least two. Partitions filled by the same objects are then
    /// compacted together, not one commit each as each reaches the threshold.
    WhenAnyOf(&'a BTreeSet<String>, usize),
}

/// How much larger than the files taken so far the next file may be and still be taken.
const TIER_RATIO: i64 = 2;

/// The small files of one partition an automatic compaction merges. In size order, a run
/// is a file and the larger ones after it, each at most [`TIER_RATIO`] times the size of
/// the run and the smaller files before it; the first run of at least `min` files is merged
/// with every smaller file (a large ingest's files of one size, with a few tiny ones before
/// them). With no such run, the run from the smallest file. Each merged file then lands in
/// one at least 1.5 times its size, so a row is rewritten a logarithmic number of times
/// however many objects arrive. Merging every small file each time rewrote the whole
/// partition at every compaction, and ingest slowed with the table's size (10,000 100-row
/// objects: 190 -> 85 objects/s, docs/benchmarks.md).
pub fn tiered(mut files: Vec<Add>, min: usize) -> Vec<Add> {
    files.sort_by(|a, b| (a.size, &a.path).cmp(&(b.size, &b.path)));
    let sizes: Vec<i64> = files.iter().map(|f| f.size.max(1)).collect();
    let mut below = 0;
    let mut from_smallest = 0;
    for start in 0..sizes.len() {
        below += sizes[start];
        let (mut taken, mut end) = (below, start + 1);
        while end < sizes.len() && sizes[end] <= TIER_RATIO * taken {
            taken += sizes[end];
            end += 1;
        }
        if start == 0 {
            from_smallest = end;
        }
        if end - start >= min.max(2) {
            files.truncate(end);
            return files;
        }
    }
    files.truncate(from_smallest);
    files
}

/// Merged files written by [`prepare`], not yet visible.
#[derive(Debug)]
pub struct Prepared {
    name: String,
    url: url::Url,
    adds: Vec<Add>,
    removes: Vec<Remove>,
    report: CompactReport,
}

/// Writes the merged files of a table's small files, one partition at a time (None when
/// nothing needs compacting). Nothing is visible until [`Prepared::commit`]; ingests may
/// commit meanwhile.
pub async fn prepare(
    paths: &LakePaths,
    name: &str,
    location: &str,
    scope: Scope<'_>,
    tables: &delta::TableCache,
) -> Result<Option<Prepared>, Error> {
    let mut report = CompactReport::default();
    let url = paths.url(location)?;
    let Some(table) = tables.latest(name, url.clone()).await? else {
        return Ok(None);
    };
    let partition_by = delta::partition_columns(name, &table)?;
    let mut groups: BTreeMap<String, Vec<Add>> = BTreeMap::new();
    for add in delta::active_files(name, &table).await? {
        if add.size < SMALL_FILE_BYTES {
            groups
                .entry(delta::partition_key(&add, &partition_by))
                .or_default()
                .push(add);
        }
    }
    if let Scope::WhenAnyOf(keys, min) = scope {
        for files in groups.values_mut() {
            *files = tiered(std::mem::take(files), min);
        }
        if !groups
            .iter()
            .any(|(key, files)| keys.contains(key) && files.len() >= min)
        {
            return Ok(None);
        }
    }
    groups.retain(|_, files| files.len() >= 2);
    if groups.is_empty() {
        return Ok(None);
    }
    let mut adds = Vec::new();
    let mut removes = Vec::new();
    let written = async {
        for files in groups.values_mut() {
            files.sort_by(|a, b| {
                (a.modification_time, &a.path).cmp(&(b.modification_time, &b.path))
            });
            // One partition per writer: its file stays open across windows, so merged files
            // reach the target size.
            let mut writer = FileWriter::with_target_size(name, &table, COMPACTED_FILE_BYTES)?;
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
        Ok::<_, Error>(())
    }
    .await;
    if let Err(e) = written {
        delta::discard(name, &table, &adds).await?;
        return Err(e);
    }
    Ok(Some(Prepared {
        name: name.to_string(),
        url,
        adds,
        removes,
        report,
    }))
}

impl Prepared {
    /// Publishes the merged files if every file they replace is still active at the
    /// table's latest version; otherwise (an ingest replaced or removed an object whose
    /// rows they hold) deletes them and reports nothing compacted: the next ingest's
    /// compaction starts again from the table as it is then.
    pub async fn commit(self, tables: &delta::TableCache) -> Result<CompactReport, Error> {
        let Prepared {
            name,
            url,
            adds,
            removes,
            mut report,
        } = self;
        let Some(mut table) = tables.latest(&name, url.clone()).await? else {
            return Err(Error::Internal(format!(
                "{name} disappeared while compacting"
            )));
        };
        let active: HashSet<String> = delta::active_files(&name, &table)
            .await?
            .into_iter()
            .map(|add| add.path)
            .collect();
        if !removes.iter().all(|r| active.contains(&r.path)) {
            delta::discard(&name, &table, &adds).await?;
            return Ok(CompactReport {
                superseded: true,
                ..CompactReport::default()
            });
        }
        // A failed commit leaves its files behind (unreferenced, for vacuum): the error may
        // come after the log entry was written, and then they are the table's.
        let version = tables
            .commit(
                &name,
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
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(sizes: &[i64]) -> Vec<Add> {
        sizes
            .iter()
            .enumerate()
            .map(|(i, &size)| Add {
                path: format!("part-{i:05}.parquet"),
                size,
                ..Add::default()
            })
            .collect()
    }

    fn sizes(files: &[Add]) -> Vec<i64> {
        files.iter().map(|f| f.size).collect()
    }

    #[test]
    fn similar_small_files_are_taken_and_a_much_larger_one_is_left() {
        let picked = tiered(files(&[3_100, 1 << 20, 2_900, 3_000, 3_050, 12_000]), 16);
        assert_eq!(sizes(&picked), [2_900, 3_000, 3_050, 3_100, 12_000]);
        // Alone, a small file has nothing to merge with.
        assert_eq!(sizes(&tiered(files(&[3_000, 1 << 20]), 16)), [3_000]);
        // Fifteen new small files do not pull in the large file beside them.
        let mut sizes_now = vec![3_000; 15];
        sizes_now.push(5 << 20);
        assert_eq!(tiered(files(&sizes_now), 16).len(), 15);
    }

    #[test]
    fn a_large_ingests_files_are_merged_with_the_tiny_ones_before_them() {
        // One file per partition per 64 MiB window: most of one size, a few tiny ones
        // (the rows of a partition at a window's edge).
        let mut sizes_now = vec![50_000; 3];
        sizes_now.extend([570_000; 40]);
        assert_eq!(tiered(files(&sizes_now), AUTO_COMPACT_FILES).len(), 43);
    }

    /// One partition receiving a 3 KB file per batch, compacted automatically whenever
    /// `plan` picks AUTO_COMPACT_FILES files: the bytes compaction writes over the bytes
    /// ingested, and the most files the partition held.
    fn simulate(batches: usize, plan: impl Fn(Vec<Add>) -> Vec<Add>) -> (f64, usize) {
        let mut active: Vec<Add> = Vec::new();
        let (mut written, mut most) = (0, 0);
        for batch in 0..batches {
            active.push(Add {
                path: format!("ingest-{batch}"),
                size: 3_000,
                ..Add::default()
            });
            let picked = plan(active.clone());
            if picked.len() >= AUTO_COMPACT_FILES {
                let merged: i64 = picked.iter().map(|f| f.size).sum();
                active.retain(|f| !picked.iter().any(|p| p.path == f.path));
                active.push(Add {
                    path: format!("compacted-{batch}"),
                    size: merged,
                    ..Add::default()
                });
                written += merged;
            }
            most = most.max(active.len());
        }
        (written as f64 / (batches as f64 * 3_000.0), most)
    }

    #[test]
    fn rows_are_rewritten_a_logarithmic_number_of_times() {
        let tiered = |f| tiered(f, AUTO_COMPACT_FILES);
        let (tiered_1k, most_1k) = simulate(1_000, tiered);
        let (tiered_10k, most_10k) = simulate(10_000, tiered);
        let (everything_1k, _) = simulate(1_000, |f| f);
        // Merging every small file rewrites the partition each time: ~n/32 per byte.
        assert!(everything_1k > 30.0, "{everything_1k}");
        // Tiered: each rewrite of a byte at least 1.5x its file, so at most log1.5(n) times.
        assert!(tiered_1k < 1000f64.log(1.5), "{tiered_1k}");
        assert!(tiered_10k < 10_000f64.log(1.5), "{tiered_10k}");
        assert!(tiered_10k < tiered_1k * 2.0, "{tiered_1k} -> {tiered_10k}");
        // And the partition keeps few files however long it runs.
        assert!(most_1k <= 2 * AUTO_COMPACT_FILES, "{most_1k}");
        assert!(most_10k <= 2 * AUTO_COMPACT_FILES, "{most_10k}");
    }
}
