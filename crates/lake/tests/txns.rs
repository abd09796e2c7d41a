//! The exactly-once lookups (`TableCache::txn_versions`, read from the table's txn index)
//! against deltalake's own answers on real Delta tables: across a checkpoint, with the
//! commits before it cleaned up, with commits another process made, and on a table whose
//! transactions expire.

use std::sync::Arc;

use arrow::array::{Int64Array, RecordBatch};
use arrow::datatypes::{DataType, Field, Schema};
use deltalake::DeltaTable;
use deltalake::kernel::StructType;
use deltalake::kernel::engine::arrow_conversion::TryIntoKernel as _;
use deltalake::protocol::{DeltaOperation, SaveMode};
use sluice_lake::delta;
use sluice_lake::txns::TxnIndex;

mod common;
use common::Lake;

fn schema() -> Schema {
    Schema::new(vec![Field::new("n", DataType::Int64, false)])
}

/// The app ids the tests commit txns for (and one never committed).
fn apps() -> Vec<String> {
    (0..12)
        .map(|i| format!("sluice:landing/object-{i}.csv"))
        .chain(["sluice:landing/never.csv".to_string()])
        .collect()
}

/// What deltalake itself answers for each app id, in `apps()` order.
async fn deltalake_says(name: &str, table: &DeltaTable) -> Vec<Option<i64>> {
    let snapshot = table.snapshot().unwrap();
    let mut out = Vec::new();
    for app in apps() {
        out.push(
            snapshot
                .transaction_version(table.log_store().as_ref(), app)
                .await
                .unwrap_or_else(|e| panic!("{name}: {e}")),
        );
    }
    out
}

/// What `tables` answers for each app id, in `apps()` order.
async fn index_says(
    tables: &delta::TableCache,
    name: &str,
    table: &DeltaTable,
) -> Vec<Option<i64>> {
    let found = tables.txn_versions(name, table, apps()).await.unwrap();
    apps().iter().map(|a| found.get(a)).collect()
}

/// Commit number `i` of the test's history: one row, and txns for two of the app ids. A
/// later commit may set a lower version than an earlier one (a removal records 0 as the
/// content hash): the newest in log order wins, not the highest.
async fn commit_number(name: &str, table: &mut DeltaTable, i: i64) {
    commit_number_via(None, name, table, i).await
}

/// [`commit_number`], through `tables` (its checkpoints written beside) when given.
async fn commit_number_via(
    tables: Option<&delta::TableCache>,
    name: &str,
    table: &mut DeltaTable,
    i: i64,
) {
    let ids = apps();
    let txns = if i % 4 == 3 {
        Vec::new() // a commit without txns (compaction's)
    } else {
        vec![
            (ids[(i % 5) as usize].clone(), 1000 - i),
            (ids[(5 + i % 7) as usize].clone(), i * 10),
        ]
    };
    let mut writer = delta::FileWriter::new(name, table).unwrap();
    let batch = RecordBatch::try_new(
        Arc::new(schema()),
        vec![Arc::new(Int64Array::from(vec![i]))],
    )
    .unwrap();
    writer.write(batch).await.unwrap();
    let adds = writer.finish(&[]).await.unwrap();
    let operation = DeltaOperation::Write {
        mode: SaveMode::Append,
        partition_by: None,
        predicate: None,
    };
    match tables {
        Some(tables) => {
            tables
                .commit(name, table, adds, Vec::new(), txns, operation)
                .await
        }
        None => delta::commit(name, table, adds, Vec::new(), txns, operation).await,
    }
    .unwrap();
}

/// The platform commits through its cache, which leaves the checkpoint a commit owes to a
/// task beside it. Once settled, the checkpoint is on disk, a cold reader loads the table
/// from it, and exactly-once lookups answer as deltalake does.
#[tokio::test]
async fn checkpoints_owed_by_commits_are_written_beside_them() {
    let lake = Lake::new("trips", "silver/trips", &schema(), &[]).await;
    let url = lake.paths.url(lake.location).unwrap();
    let log = url.to_file_path().unwrap().join("_delta_log");
    let mut table = lake.table().await;
    // The table was created as version 0; commits 1..=99 make version 99, the 100th, which
    // owes a checkpoint (delta.checkpointInterval defaults to 100).
    for i in 1..100 {
        commit_number_via(Some(&lake.tables), lake.name, &mut table, i).await;
        assert_eq!(
            table.version(),
            Some(i as u64),
            "the committed copy is current"
        );
    }
    lake.tables.settle().await;
    assert!(
        log.join("00000000000000000099.checkpoint.parquet").exists(),
        "checkpoint of version 99 written: {:?}",
        std::fs::read_dir(&log)
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| !e.file_name().to_string_lossy().ends_with(".json"))
            .map(|e| e.file_name())
            .collect::<Vec<_>>()
    );
    let last: serde_json::Value =
        serde_json::from_slice(&std::fs::read(log.join("_last_checkpoint")).unwrap()).unwrap();
    assert_eq!(last["version"], 99);
    // No other version was checkpointed: commits owe one every 100 versions, no more.
    let checkpoints = std::fs::read_dir(&log)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains(".checkpoint."))
        .count();
    assert_eq!(checkpoints, 1);

    let cold = delta::TableCache::default();
    let reopened = cold.latest(lake.name, url).await.unwrap().unwrap();
    assert_eq!(reopened.version(), Some(99));
    assert_eq!(
        delta::active_files(lake.name, &reopened)
            .await
            .unwrap()
            .len(),
        99,
        "every commit's file is active"
    );
    assert_eq!(
        index_says(&cold, lake.name, &reopened).await,
        deltalake_says(lake.name, &reopened).await
    );
}

#[tokio::test]
async fn lookups_agree_with_deltalake_before_and_after_a_checkpoint() {
    let lake = Lake::new("trips", "silver/trips", &schema(), &[]).await;
    let url = lake.paths.url(lake.location).unwrap();
    let mut table = lake.table().await;
    // The platform's cache is asked after every commit: it advances commit by commit.
    for i in 0..24 {
        commit_number(lake.name, &mut table, i).await;
        if i == 13 {
            deltalake::checkpoints::create_checkpoint(&table, None)
                .await
                .unwrap();
        }
        assert_eq!(
            index_says(&lake.tables, lake.name, &table).await,
            deltalake_says(lake.name, &table).await,
            "after commit {i}"
        );
    }
    let expected = deltalake_says(lake.name, &table).await;
    assert!(expected.iter().filter(|v| v.is_some()).count() >= 10);
    assert_eq!(expected.last(), Some(&None), "the never-committed id");

    // A new process reads the checkpoint and the ten commits after it, and still does
    // with the commits the checkpoint covers cleaned up.
    let cold = delta::TableCache::default();
    let latest = cold.latest(lake.name, url.clone()).await.unwrap().unwrap();
    assert_eq!(index_says(&cold, lake.name, &latest).await, expected);
    let log = url.to_file_path().unwrap().join("_delta_log");
    for v in 0..13 {
        std::fs::remove_file(log.join(format!("{v:020}.json"))).unwrap();
    }
    let cold = delta::TableCache::default();
    let latest = cold.latest(lake.name, url).await.unwrap().unwrap();
    assert_eq!(index_says(&cold, lake.name, &latest).await, expected);
    // The index itself (not deltalake's fallback) answered: it read the checkpoint.
    let index = TxnIndex::load(lake.name, &latest)
        .await
        .unwrap()
        .expect("indexable from the checkpoint and the commits after it");
    assert_eq!(index.version(), 24);
    let from_index: Vec<_> = apps().iter().map(|a| index.get(a)).collect();
    assert_eq!(from_index, expected);
}

#[tokio::test]
async fn commits_of_another_process_are_seen() {
    let lake = Lake::new("trips", "silver/trips", &schema(), &[]).await;
    let url = lake.paths.url(lake.location).unwrap();
    let mut mine = lake.table().await;
    commit_number(lake.name, &mut mine, 0).await;
    let before = index_says(&lake.tables, lake.name, &mine).await;

    // Another process (its own cache, its own copy of the table) commits twice.
    let other = delta::TableCache::default();
    let mut theirs = other.latest(lake.name, url.clone()).await.unwrap().unwrap();
    commit_number(lake.name, &mut theirs, 1).await;
    commit_number(lake.name, &mut theirs, 2).await;

    // This process's older copy still answers as of its own version...
    assert_eq!(index_says(&lake.tables, lake.name, &mine).await, before);
    // ...and the latest copy has the other process's txns.
    let latest = lake.table().await;
    assert_eq!(
        latest.version(),
        theirs.version(),
        "the cache sees their commits"
    );
    let now = index_says(&lake.tables, lake.name, &latest).await;
    assert_ne!(now, before);
    assert_eq!(now, deltalake_says(lake.name, &latest).await);
    // An older copy after the index has moved on is answered by deltalake, as of that copy.
    assert_eq!(index_says(&lake.tables, lake.name, &mine).await, before);
    // Nothing committed since: the cache's copy stands; one more commit: it is seen.
    let again = lake.table().await;
    assert_eq!(again.version(), theirs.version());
    commit_number(lake.name, &mut theirs, 3).await;
    let after = lake.table().await;
    assert_eq!(after.version(), theirs.version());
    assert_eq!(
        delta::active_files(lake.name, &after).await.unwrap().len(),
        delta::active_files(lake.name, &theirs).await.unwrap().len()
    );
}

#[tokio::test]
async fn a_table_whose_transactions_expire_is_answered_by_deltalake() {
    let dir = tempfile::tempdir().unwrap();
    let url = url::Url::from_directory_path(dir.path()).unwrap();
    let columns: StructType = (&schema()).try_into_kernel().unwrap();
    let mut table = DeltaTable::try_from_url(url.clone())
        .await
        .unwrap()
        .create()
        .with_table_name("expiring")
        .with_columns(columns.fields().cloned())
        .with_configuration_property(
            deltalake::TableProperty::SetTransactionRetentionDuration,
            Some("interval 7 days"),
        )
        .await
        .unwrap();
    for i in 0..3 {
        commit_number("expiring", &mut table, i).await;
    }
    assert!(TxnIndex::load("expiring", &table).await.unwrap().is_none());
    let tables = delta::TableCache::default();
    let says = index_says(&tables, "expiring", &table).await;
    assert_eq!(says, deltalake_says("expiring", &table).await);
    assert_eq!(says.iter().filter(|v| v.is_some()).count(), 6);
}
