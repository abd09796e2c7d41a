//! A real Delta table in a temporary data directory, shared by the lake's test binaries.

// Each test binary uses its own part of this module.
#![allow(dead_code)]

use std::sync::Arc;

use arrow::array::{Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use deltalake::DeltaTable;
use deltalake::kernel::{Add, Remove};
use deltalake::protocol::{DeltaOperation, SaveMode};
use sluice_lake::{LakePaths, delta};

/// The compaction and vacuum tests' table: a `day` partition, the source object, a number.
pub const EVENTS: &str = "events";
pub const EVENTS_LOCATION: &str = "silver/events";

pub fn events_schema() -> Schema {
    Schema::new(vec![
        Field::new("day", DataType::Utf8, true),
        Field::new("_source_object", DataType::Utf8, true),
        Field::new("n", DataType::Int64, true),
    ])
}

/// `object`'s rows of the events table, all on `day`.
pub fn events(day: &str, object: &str, values: &[i64]) -> RecordBatch {
    let n = values.len();
    RecordBatch::try_new(
        Arc::new(events_schema()),
        vec![
            Arc::new(StringArray::from(vec![day; n])),
            Arc::new(StringArray::from(vec![object; n])),
            Arc::new(Int64Array::from(values.to_vec())),
        ],
    )
    .unwrap()
}

/// The Parquet files under the table's directory (committed or not), relative to it.
pub fn parquet_files(lake: &Lake) -> std::collections::BTreeSet<String> {
    parquet_files_under(&lake.root())
}

/// The Parquet files under `root` (committed or not), relative to it.
pub fn parquet_files_under(root: &std::path::Path) -> std::collections::BTreeSet<String> {
    let root = root.to_path_buf();
    let mut found = std::collections::BTreeSet::new();
    let mut dirs = vec![root.clone()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "parquet") {
                let relative = path.strip_prefix(&root).unwrap();
                found.insert(relative.to_string_lossy().to_string());
            }
        }
    }
    found
}

/// One table (`name` at `location` under the lake), kept open in a [`delta::TableCache`]
/// as the platform keeps its tables.
pub struct Lake {
    _dir: tempfile::TempDir,
    pub paths: LakePaths,
    pub tables: delta::TableCache,
    pub name: &'static str,
    pub location: &'static str,
    partition_by: Vec<String>,
}

impl Lake {
    /// Creates the table with `schema`, partitioned by `partition_by`.
    pub async fn new(
        name: &'static str,
        location: &'static str,
        schema: &Schema,
        partition_by: &[&str],
    ) -> Lake {
        let dir = tempfile::tempdir().unwrap();
        let paths = LakePaths::new(dir.path());
        let tables = delta::TableCache::default();
        let partition_by: Vec<String> = partition_by.iter().map(|p| p.to_string()).collect();
        let url = paths.url(location).unwrap();
        let table = delta::open_or_create(name, url.clone(), schema, &partition_by, None)
            .await
            .unwrap();
        tables.keep(&url, &table);
        Lake {
            _dir: dir,
            paths,
            tables,
            name,
            location,
            partition_by,
        }
    }

    /// The table's directory.
    pub fn root(&self) -> std::path::PathBuf {
        self.paths
            .url(self.location)
            .unwrap()
            .to_file_path()
            .unwrap()
    }

    /// The table at its latest version.
    pub async fn table(&self) -> DeltaTable {
        let url = self.paths.url(self.location).unwrap();
        self.tables.latest(self.name, url).await.unwrap().unwrap()
    }

    /// Writes `batch` into new files tagged with `tags` and commits them, retiring
    /// `replacing` in the same commit, as an ingest does. Returns the files added.
    pub async fn commit(
        &self,
        batch: RecordBatch,
        tags: &[(&str, &str)],
        replacing: &[Add],
    ) -> Vec<Add> {
        let table = self.table().await;
        let mut writer = delta::FileWriter::new(self.name, &table).unwrap();
        writer.write(batch).await.unwrap();
        let adds = writer.finish(tags).await.unwrap();
        self.commit_adds(adds.clone(), replacing).await;
        adds
    }

    /// Commits files already written, retiring `replacing` in the same commit.
    pub async fn commit_adds(&self, adds: Vec<Add>, replacing: &[Add]) {
        let mut table = self.table().await;
        let removes: Vec<Remove> = replacing
            .iter()
            .map(|a| delta::remove_of(a, true))
            .collect();
        delta::commit(
            self.name,
            &mut table,
            adds,
            removes,
            Vec::new(),
            DeltaOperation::Write {
                mode: SaveMode::Append,
                partition_by: Some(self.partition_by.clone()),
                predicate: None,
            },
        )
        .await
        .unwrap();
        self.tables
            .keep(&self.paths.url(self.location).unwrap(), &table);
    }
}
