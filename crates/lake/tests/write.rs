//! `delta::FileWriter` on a real partitioned Delta table: rows arriving in windows and in
//! any partition order land once each in their partition; a stream of one partition keeps
//! one file open across windows; a failed write leaves no file behind.

use std::sync::Arc;

use arrow::array::{Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use sluice_lake::delta;

mod common;
use common::{Lake, parquet_files};

fn schema() -> Schema {
    Schema::new(vec![
        Field::new("day", DataType::Utf8, true),
        Field::new("n", DataType::Int64, false),
        Field::new("payload", DataType::Utf8, false),
    ])
}

/// `rows` rows numbered from `first`, each in the day `day_of(n)`, with a 200-byte payload
/// so that a few batches fill a window.
fn batch(first: i64, rows: i64, day_of: impl Fn(i64) -> &'static str) -> RecordBatch {
    let n: Vec<i64> = (first..first + rows).collect();
    RecordBatch::try_new(
        Arc::new(schema()),
        vec![
            Arc::new(StringArray::from_iter_values(n.iter().map(|&i| day_of(i)))),
            Arc::new(Int64Array::from(n.clone())),
            Arc::new(StringArray::from_iter_values(
                n.iter().map(|i| format!("{i:0>200}")),
            )),
        ],
    )
    .unwrap()
}

/// Batches of 40k rows numbered from 0, days from `day_of`, until they hold more than
/// `windows` windows of bytes.
fn batches_over(windows: usize, day_of: fn(i64) -> &'static str) -> Vec<RecordBatch> {
    let mut batches = Vec::new();
    let mut bytes = 0;
    while bytes <= windows * delta::WINDOW_BYTES {
        let b = batch(batches.len() as i64 * 40_000, 40_000, day_of);
        bytes += b.get_array_memory_size();
        batches.push(b);
    }
    batches
}

/// Days in an order that is not theirs: the first row's day sorts last.
fn day_of_three(n: i64) -> &'static str {
    ["2024-01-03", "2024-01-01", "2024-01-02"][(n % 3) as usize]
}

/// Every (day, n) of the table's active files, sorted; and the number of files. Panics
/// when a row sits in a file of another day's partition.
async fn contents(lake: &Lake) -> (Vec<(String, i64)>, usize) {
    let table = lake.table().await;
    let files = delta::active_files(lake.name, &table).await.unwrap();
    let schema = Arc::new(schema());
    let mut rows = Vec::new();
    for add in &files {
        for batch in delta::read_file(lake.name, &table, add, &schema)
            .await
            .unwrap()
        {
            let days = batch
                .column(0)
                .as_any()
                .downcast_ref::<StringArray>()
                .unwrap();
            let n = batch
                .column(1)
                .as_any()
                .downcast_ref::<Int64Array>()
                .unwrap();
            // The partition the log records for the file is the rows' own day.
            let partition = add.partition_values.get("day").cloned().flatten();
            for i in 0..batch.num_rows() {
                assert_eq!(
                    partition.as_deref(),
                    Some(days.value(i)),
                    "row {} sits in {}",
                    n.value(i),
                    add.path
                );
                rows.push((days.value(i).to_string(), n.value(i)));
            }
        }
    }
    rows.sort();
    (rows, files.len())
}

#[tokio::test]
async fn rows_of_interleaved_partitions_land_once_each_across_windows() {
    let lake = Lake::new("events", "silver/events", &schema(), &["day"]).await;
    let batches = batches_over(2, day_of_three);
    let total = batches.len() as i64 * 40_000;
    let table = lake.table().await;
    let mut writer = delta::FileWriter::new(lake.name, &table).unwrap();
    for b in batches {
        writer.write(b).await.unwrap();
    }
    assert_eq!(writer.rows(), total as u64);
    let adds = writer.finish(&[]).await.unwrap();
    lake.commit_adds(adds, &[]).await;

    let (rows, _) = contents(&lake).await;
    let mut expected: Vec<(String, i64)> = (0..total)
        .map(|n| (day_of_three(n).to_string(), n))
        .collect();
    expected.sort();
    assert_eq!(rows.len(), expected.len());
    assert!(
        rows == expected,
        "every row once, in its own day's partition"
    );
}

#[tokio::test]
async fn one_partition_streamed_over_several_windows_makes_one_file() {
    let lake = Lake::new("events", "silver/events", &schema(), &["day"]).await;
    let table = lake.table().await;
    let mut writer = delta::FileWriter::new(lake.name, &table).unwrap();
    let batches = batches_over(2, |_| "2024-01-01");
    let total = batches.len() * 40_000;
    for b in batches {
        writer.write(b).await.unwrap();
    }
    let adds = writer.finish(&[]).await.unwrap();
    assert_eq!(
        adds.len(),
        1,
        "the file stays open across windows: {adds:?}"
    );
    lake.commit_adds(adds, &[]).await;
    let (rows, files) = contents(&lake).await;
    assert_eq!((rows.len(), files), (total, 1));
}

#[tokio::test]
async fn a_failed_write_leaves_no_file_behind() {
    let lake = Lake::new("events", "silver/events", &schema(), &["day"]).await;
    let table = lake.table().await;
    let mut writer = delta::FileWriter::new(lake.name, &table).unwrap();
    // More than a window of good rows is written into files first...
    for b in batches_over(1, day_of_three) {
        writer.write(b).await.unwrap();
    }
    // ...then rows without the partition column.
    let bad = RecordBatch::try_new(
        Arc::new(Schema::new(vec![Field::new("n", DataType::Int64, false)])),
        vec![Arc::new(Int64Array::from(vec![1, 2, 3]))],
    )
    .unwrap();
    let failure = match writer.write(bad).await {
        Err(e) => e,
        Ok(()) => writer.finish(&[]).await.unwrap_err(),
    };
    assert!(
        failure.to_string().contains("day"),
        "the error names the missing partition column: {failure}"
    );
    assert!(parquet_files(&lake).is_empty(), "no file is left behind");
    let (rows, files) = contents(&lake).await;
    assert_eq!((rows.len(), files), (0, 0));
}
