//! Compaction in two phases against real Delta tables on disk: ingests commit while the
//! merged files are written, and a commit that finds a merged file replaced drops its work
//! instead of bringing the replaced rows back.

use std::collections::BTreeSet;
use std::sync::Arc;

use arrow::array::{Array, AsArray};
use arrow::datatypes::{DataType, Int64Type, Schema};
use deltalake::kernel::Add;
use sluice_lake::compact::{self, Scope};
use sluice_lake::delta;

mod common;
use common::{Lake, parquet_files};

const NAME: &str = common::EVENTS;
const LOCATION: &str = common::EVENTS_LOCATION;

fn schema() -> Schema {
    common::events_schema()
}

/// The events table, partitioned by day, in a fresh lake.
async fn new_lake() -> Lake {
    Lake::new(NAME, LOCATION, &schema(), &["day"]).await
}

/// Commits an object's rows (one file), removing `replacing` in the same commit, as an
/// ingest does.
async fn put(lake: &Lake, object: &str, values: &[i64], replacing: &[Add]) -> Vec<Add> {
    let batch = common::events("2024-01-01", object, values);
    lake.commit(batch, &[(delta::TAG_SOURCE, object)], replacing)
        .await
}

/// Every (object, n) of the table's active files, with how often each appears.
async fn rows(lake: &Lake) -> Vec<(String, i64)> {
    let table = lake.table().await;
    let schema = Arc::new(schema());
    let mut rows = Vec::new();
    for add in delta::active_files(NAME, &table).await.unwrap() {
        for batch in delta::read_file(NAME, &table, &add, &schema).await.unwrap() {
            let objects = arrow::compute::cast(batch.column(1), &DataType::Utf8).unwrap();
            let objects = objects.as_string::<i32>();
            let n = batch.column(2).as_primitive::<Int64Type>();
            for i in 0..batch.num_rows() {
                rows.push((objects.value(i).to_string(), n.value(i)));
            }
            assert_eq!(n.null_count(), 0);
        }
    }
    rows.sort();
    rows
}

async fn active(lake: &Lake) -> BTreeSet<String> {
    let table = lake.table().await;
    delta::active_files(NAME, &table)
        .await
        .unwrap()
        .into_iter()
        .map(|a| a.path)
        .collect()
}

fn expected(objects: &[(&str, &[i64])]) -> Vec<(String, i64)> {
    let mut rows: Vec<(String, i64)> = objects
        .iter()
        .flat_map(|(o, ns)| ns.iter().map(|n| (o.to_string(), *n)))
        .collect();
    rows.sort();
    rows
}

#[tokio::test]
async fn an_ingest_committed_while_files_are_merged_keeps_its_rows() {
    let lake = new_lake().await;
    put(&lake, "raw/a.csv", &[1, 2], &[]).await;
    put(&lake, "raw/b.csv", &[3], &[]).await;
    put(&lake, "raw/c.csv", &[4, 5, 6], &[]).await;
    let prepared = compact::prepare(&lake.paths, NAME, LOCATION, Scope::All, &lake.tables)
        .await
        .unwrap()
        .expect("three small files in one partition need compacting");
    // An ingest commits between the rewrite and the compaction's commit.
    let late = put(&lake, "raw/d.csv", &[7], &[]).await;
    let report = prepared.commit(&lake.tables).await.unwrap();
    assert!(!report.superseded);
    assert!(report.version.is_some());
    assert_eq!((report.files_removed, report.files_added), (3, 1));
    let active = active(&lake).await;
    assert_eq!(
        active.len(),
        2,
        "the merged file and the late object's: {active:?}"
    );
    assert!(active.contains(&late[0].path));
    assert_eq!(
        rows(&lake).await,
        expected(&[
            ("raw/a.csv", &[1, 2]),
            ("raw/b.csv", &[3]),
            ("raw/c.csv", &[4, 5, 6]),
            ("raw/d.csv", &[7]),
        ])
    );
}

#[tokio::test]
async fn an_object_replaced_while_files_are_merged_drops_the_compaction() {
    let lake = new_lake().await;
    put(&lake, "raw/a.csv", &[1, 2], &[]).await;
    let b = put(&lake, "raw/b.csv", &[3], &[]).await;
    put(&lake, "raw/c.csv", &[4, 5, 6], &[]).await;
    let before = parquet_files(&lake);
    let prepared = compact::prepare(&lake.paths, NAME, LOCATION, Scope::All, &lake.tables)
        .await
        .unwrap()
        .expect("three small files in one partition need compacting");
    assert_eq!(
        parquet_files(&lake).len(),
        before.len() + 1,
        "the merged file is written"
    );
    // b.csv gets new content: its old file is removed, its new rows added.
    let b2 = put(&lake, "raw/b.csv", &[30, 31], &b).await;
    let report = prepared.commit(&lake.tables).await.unwrap();
    assert!(report.superseded, "{report:?}");
    assert_eq!(report.version, None);
    // Committing the merged file would have brought b.csv's old row 3 back.
    assert_eq!(
        rows(&lake).await,
        expected(&[
            ("raw/a.csv", &[1, 2]),
            ("raw/b.csv", &[30, 31]),
            ("raw/c.csv", &[4, 5, 6]),
        ])
    );
    // The merged file is deleted; only the replacement was added on disk.
    let mut now_expected = before.clone();
    now_expected.insert(b2[0].path.clone());
    assert_eq!(parquet_files(&lake), now_expected);
    // The next compaction starts from the table as it is now.
    let report = compact::prepare(&lake.paths, NAME, LOCATION, Scope::All, &lake.tables)
        .await
        .unwrap()
        .expect("the three files are still small")
        .commit(&lake.tables)
        .await
        .unwrap();
    assert_eq!((report.files_removed, report.superseded), (3, false));
    assert_eq!(
        rows(&lake).await,
        expected(&[
            ("raw/a.csv", &[1, 2]),
            ("raw/b.csv", &[30, 31]),
            ("raw/c.csv", &[4, 5, 6]),
        ])
    );
}

/// The codecs of every column chunk of the table's active files.
async fn codecs(lake: &Lake) -> BTreeSet<&'static str> {
    use parquet::basic::Compression;
    use parquet::file::reader::{FileReader, SerializedFileReader};
    let table = lake.table().await;
    let root = lake.paths.url(LOCATION).unwrap().to_file_path().unwrap();
    let mut found = BTreeSet::new();
    for add in delta::active_files(NAME, &table).await.unwrap() {
        let path = percent_encoding::percent_decode_str(&add.path).decode_utf8_lossy();
        let file = std::fs::File::open(root.join(path.as_ref())).unwrap();
        let reader = SerializedFileReader::new(file).unwrap();
        for group in reader.metadata().row_groups() {
            for column in group.columns() {
                found.insert(match column.compression() {
                    Compression::SNAPPY => "snappy",
                    Compression::ZSTD(_) => "zstd",
                    _ => "other",
                });
            }
        }
    }
    found
}

#[tokio::test]
async fn small_objects_are_written_with_snappy_and_compaction_writes_zstd() {
    let lake = new_lake().await;
    for (i, object) in ["landing/a.csv", "landing/b.csv", "landing/c.csv"]
        .into_iter()
        .enumerate()
    {
        let batch = common::events("2024-01-01", object, &[2 * i as i64, 2 * i as i64 + 1]);
        let table = lake.table().await;
        let mut writer = delta::FileWriter::small(NAME, &table).unwrap();
        writer.write(batch).await.unwrap();
        let adds = writer.finish(&[(delta::TAG_SOURCE, object)]).await.unwrap();
        lake.commit_adds(adds, &[]).await;
    }
    assert_eq!(codecs(&lake).await, BTreeSet::from(["snappy"]));
    let before = rows(&lake).await;
    assert_eq!(before.len(), 6);

    compact::prepare(&lake.paths, NAME, LOCATION, Scope::All, &lake.tables)
        .await
        .unwrap()
        .expect("three small files to merge")
        .commit(&lake.tables)
        .await
        .unwrap();
    assert_eq!(active(&lake).await.len(), 1);
    assert_eq!(codecs(&lake).await, BTreeSet::from(["zstd"]));
    assert_eq!(rows(&lake).await, before);
}
