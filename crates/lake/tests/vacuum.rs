//! Vacuum against a real Delta table on disk: files compaction replaced and old orphans
//! go, the active files, young orphans, the tail's slots and the log stay.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arrow::array::Int64Array;
use arrow::datatypes::Schema;
use sluice_lake::compact::{self, Scope};
use sluice_lake::{delta, vacuum};

mod common;
use common::{Lake, parquet_files};

const NAME: &str = common::EVENTS;
const LOCATION: &str = common::EVENTS_LOCATION;

fn schema() -> Schema {
    common::events_schema()
}

async fn put(lake: &Lake, object: &str, values: &[i64]) {
    put_on(lake, "2024-01-01", object, values).await
}

async fn put_on(lake: &Lake, day: &str, object: &str, values: &[i64]) {
    let batch = common::events(day, object, values);
    lake.commit(batch, &[(delta::TAG_SOURCE, object)], &[])
        .await;
}

/// The sum of `n` over the table's active files, and their paths.
async fn contents(lake: &Lake) -> (i64, BTreeSet<String>) {
    let table = lake.table().await;
    let schema = Arc::new(schema());
    let (mut sum, mut paths) = (0, BTreeSet::new());
    for add in delta::active_files(NAME, &table).await.unwrap() {
        for batch in delta::read_file(NAME, &table, &add, &schema).await.unwrap() {
            let n = batch
                .column(2)
                .as_any()
                .downcast_ref::<Int64Array>()
                .unwrap();
            sum += n.iter().flatten().sum::<i64>();
        }
        paths.insert(add.path);
    }
    (sum, paths)
}

/// A file under the table's root, last modified `age` ago.
fn file_aged(lake: &Lake, relative: &str, bytes: &[u8], age: Duration) {
    let path = lake.root().join(relative);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, bytes).unwrap();
    let file = std::fs::File::options().write(true).open(&path).unwrap();
    file.set_modified(SystemTime::now() - age).unwrap();
}

async fn run(lake: &Lake, retain: Option<Duration>, dry_run: bool) -> vacuum::VacuumReport {
    sweep(lake, retain, vacuum::Sweep::WithOrphans, dry_run).await
}

async fn sweep(
    lake: &Lake,
    retain: Option<Duration>,
    sweep: vacuum::Sweep,
    dry_run: bool,
) -> vacuum::VacuumReport {
    let url = lake.paths.url(LOCATION).unwrap();
    vacuum::vacuum(&lake.tables, NAME, url, retain, sweep, dry_run)
        .await
        .unwrap()
        .expect("the table exists")
}

#[tokio::test]
async fn vacuum_deletes_replaced_files_past_the_retention_and_old_orphans_only() {
    let lake = common::Lake::new(NAME, LOCATION, &schema(), &["day"]).await;
    put(&lake, "raw/a.csv", &[1, 2]).await;
    put(&lake, "raw/b.csv", &[3]).await;
    put(&lake, "raw/c.csv", &[4, 5, 6]).await;
    let small = parquet_files(&lake);
    let report = compact::prepare(&lake.paths, NAME, LOCATION, Scope::All, &lake.tables)
        .await
        .unwrap()
        .expect("three small files to merge")
        .commit(&lake.tables)
        .await
        .unwrap();
    assert_eq!(report.files_removed, 3);
    let (sum, active) = contents(&lake).await;
    assert_eq!(sum, 21);
    let version = lake.table().await.version();

    // An orphan from a write that never committed, two hours old; one written just now
    // (a write that may still be in flight); and a tail slot, which is not a data file.
    let old_orphan = "day=2024-01-01/part-00000-orphan-old.parquet";
    let young_orphan = "day=2024-01-01/part-00000-orphan-young.parquet";
    file_aged(&lake, old_orphan, b"PAR1 old", Duration::from_secs(7200));
    file_aged(&lake, young_orphan, b"PAR1 young", Duration::ZERO);
    file_aged(
        &lake,
        "_sluice_tail/0.slot",
        b"slot",
        Duration::from_secs(7200),
    );
    let on_disk = parquet_files(&lake);

    // The table's own retention (seven days): the replaced files are minutes old and the
    // orphan two hours.
    let kept = run(&lake, None, false).await;
    assert_eq!(kept.retention, Duration::from_secs(7 * 24 * 3600));
    assert!(kept.files.is_empty(), "{:?}", kept.files);
    assert_eq!(parquet_files(&lake), on_disk);

    // Retired files only (the automatic pass between its daily orphan sweeps): the
    // replaced files, not the old orphan, which only a listing finds.
    let retired = sweep(&lake, Some(Duration::ZERO), vacuum::Sweep::Retired, true).await;
    assert_eq!(
        retired.files.iter().cloned().collect::<BTreeSet<_>>(),
        small
    );

    // A retention of zero: the three replaced files and the old orphan, not the young one.
    let mut expected: BTreeSet<String> = small.clone();
    expected.insert(old_orphan.to_string());
    let dry = run(&lake, Some(Duration::ZERO), true).await;
    assert!(dry.dry_run);
    assert_eq!(dry.files.iter().cloned().collect::<BTreeSet<_>>(), expected);
    assert_eq!(parquet_files(&lake), on_disk, "a dry run deletes nothing");

    let done = run(&lake, Some(Duration::ZERO), false).await;
    assert_eq!(done.files, dry.files);
    assert_eq!(done.bytes, dry.bytes);
    assert!(done.bytes > 8, "sizes counted: {}", done.bytes);
    let mut left = active.clone();
    left.insert(young_orphan.to_string());
    assert_eq!(parquet_files(&lake), left);
    assert!(lake.root().join("_sluice_tail/0.slot").exists());
    assert_eq!(contents(&lake).await, (sum, active));
    assert_eq!(
        lake.table().await.version(),
        version,
        "vacuum commits nothing"
    );

    // Nothing left to do.
    assert!(
        run(&lake, Some(Duration::ZERO), false)
            .await
            .files
            .is_empty()
    );
}

/// A partition value the store escapes on disk (`day=eu%20west`): its retired files are
/// found and deleted as the store names them.
#[tokio::test]
async fn retired_files_of_a_partition_with_an_escaped_value_are_deleted() {
    let lake = common::Lake::new(NAME, LOCATION, &schema(), &["day"]).await;
    put_on(&lake, "eu west", "raw/a.csv", &[1]).await;
    put_on(&lake, "eu west", "raw/b.csv", &[2]).await;
    compact::prepare(&lake.paths, NAME, LOCATION, Scope::All, &lake.tables)
        .await
        .unwrap()
        .expect("two small files to merge")
        .commit(&lake.tables)
        .await
        .unwrap();
    let (_, active) = contents(&lake).await;
    assert_eq!(parquet_files(&lake).len(), 3);
    let done = run(&lake, Some(Duration::ZERO), false).await;
    assert_eq!(done.files.len(), 2, "{:?}", done.files);
    assert_eq!(parquet_files(&lake).len(), 1);
    assert_eq!(contents(&lake).await, (3, active));
}

#[tokio::test]
async fn a_table_never_committed_has_nothing_to_vacuum() {
    let dir = tempfile::tempdir().unwrap();
    let paths = sluice_lake::LakePaths::new(dir.path());
    let tables = delta::TableCache::default();
    let url = paths.url("silver/none").unwrap();
    let report = vacuum::vacuum(
        &tables,
        "none",
        url,
        None,
        vacuum::Sweep::WithOrphans,
        false,
    )
    .await
    .unwrap();
    assert_eq!(report, None);
}
