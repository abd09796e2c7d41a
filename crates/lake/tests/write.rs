//! `delta::FileWriter` on a real partitioned Delta table: rows arriving in windows and in
//! any partition order land once each in their partition; a stream of one partition keeps
//! one file open across windows; rows a validator rejected are left out, partitions and
//! all; a failed write leaves no file behind; a table is absent until its first commit.

use std::sync::Arc;

use arrow::array::{AsArray as _, BooleanArray, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::Int64Type;
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

/// Which rows of a batch a validator rejected, by number.
type Rejects = fn(i64) -> bool;

/// Every fifth row is one a validator rejected, in a day no kept row has.
fn rejected(n: i64) -> bool {
    n % 5 == 0
}

fn three_days_or_rejected(n: i64) -> &'static str {
    if rejected(n) {
        "2099-01-01"
    } else {
        day_of_three(n)
    }
}

fn one_day_or_rejected(n: i64) -> &'static str {
    if rejected(n) {
        "2099-01-01"
    } else {
        "2024-01-01"
    }
}

#[tokio::test]
async fn only_selected_rows_are_written_and_rejected_rows_make_no_partition() {
    // Kept rows in three days (the partition sort's gather skips the others) and in one
    // (the window is written as it is, filtered).
    for days in [
        three_days_or_rejected as fn(i64) -> &'static str,
        one_day_or_rejected,
    ] {
        let lake = Lake::new("events", "silver/events", &schema(), &["day"]).await;
        let table = lake.table().await;
        let mut writer = delta::FileWriter::new(lake.name, &table).unwrap();
        let mut expected = Vec::new();
        let mut batches: Vec<(RecordBatch, Rejects)> = batches_over(2, days)
            .into_iter()
            .map(|b| (b, rejected as Rejects))
            .collect();
        // A batch whose rows were all rejected, and one with none rejected.
        batches.push((batch(5_000_000, 10, |_| "2099-01-01"), |_| true));
        batches.push((batch(6_000_000, 4, |_| "2024-01-02"), |_| false));
        for (b, rejected) in batches {
            let day = b.column(0).as_string::<i32>().clone();
            let n = b.column(1).as_primitive::<Int64Type>().clone();
            let keep = BooleanArray::from_iter(n.values().iter().map(|&n| Some(!rejected(n))));
            for i in (0..b.num_rows()).filter(|&i| keep.value(i)) {
                expected.push((day.value(i).to_string(), n.value(i)));
            }
            let keep = (keep.true_count() < keep.len()).then_some(keep);
            writer.write_selected(b, keep).await.unwrap();
        }
        assert_eq!(writer.rows(), expected.len() as u64);
        let adds = writer.finish(&[]).await.unwrap();
        for add in &adds {
            assert_ne!(
                add.partition_values
                    .get("day")
                    .cloned()
                    .flatten()
                    .as_deref(),
                Some("2099-01-01"),
                "a file of rejected rows only: {}",
                add.path
            );
        }
        lake.commit_adds(adds, &[]).await;
        let (rows, _) = contents(&lake).await;
        expected.sort();
        assert_eq!(rows.len(), expected.len());
        assert!(rows == expected, "every kept row once, in its own day");
    }
}

/// A tail entry's rows are stored in partition order (`delta::partition_sorted`): the
/// kept rows only, each day's together in the order the days sort in, each day's in their
/// own order; rows already so, all kept, come back as they are. Written, such batches
/// (which the writer takes without gathering them again) land once each in their day, as
/// unsorted ones do.
#[tokio::test]
async fn rows_in_partition_order_keep_their_order_within_a_day_and_land_once_each() {
    let by_day = ["day".to_string()];
    let lake = Lake::new("events", "silver/events", &schema(), &["day"]).await;
    let table = lake.table().await;
    let mut writer = delta::FileWriter::new(lake.name, &table).unwrap();
    let mut expected = Vec::new();
    for first in [0, 1_000, 2_000] {
        let b = batch(first, 300, three_days_or_rejected);
        let n = b.column(1).as_primitive::<Int64Type>().clone();
        let keep = BooleanArray::from_iter(n.values().iter().map(|&n| Some(!rejected(n))));
        let sorted = delta::partition_sorted(&b, Some(&keep), &by_day).unwrap();
        let firsts = sorted.firsts.clone();
        let sorted = sorted.rows;
        let days = sorted.column(0).as_string::<i32>();
        let ns = sorted.column(1).as_primitive::<Int64Type>();
        let got: Vec<(String, i64)> = (0..sorted.num_rows())
            .map(|i| (days.value(i).to_string(), ns.value(i)))
            .collect();
        let mut want: Vec<(String, i64)> = n
            .values()
            .iter()
            .filter(|&&n| !rejected(n))
            .map(|&n| (three_days_or_rejected(n).to_string(), n))
            .collect();
        want.sort();
        assert_eq!(got, want, "kept rows, by day, each day's in its own order");
        let day_starts: Vec<u32> = (0..got.len())
            .filter(|&i| i == 0 || got[i].0 != got[i - 1].0)
            .map(|i| i as u32)
            .collect();
        assert_eq!(firsts, day_starts, "where each day's rows start");
        expected.extend(want);

        let again = delta::partition_sorted(&sorted, None, &by_day).unwrap();
        assert_eq!(again.firsts, firsts, "each day's first row, found again");
        let again = again.rows;
        assert!(
            Arc::ptr_eq(again.column(2), sorted.column(2)),
            "rows already in order are not copied"
        );
        writer.write(sorted).await.unwrap();
    }
    // Without partition columns: the kept rows, in their order.
    let b = batch(0, 10, day_of_three);
    let keep = BooleanArray::from_iter((0..10).map(|n| Some(!rejected(n))));
    let kept = delta::partition_sorted(&b, Some(&keep), &[]).unwrap().rows;
    assert_eq!(
        kept.column(1).as_primitive::<Int64Type>().values().to_vec(),
        vec![1, 2, 3, 4, 6, 7, 8, 9]
    );

    let adds = writer.finish(&[]).await.unwrap();
    assert_eq!(adds.len(), 3, "one file per day");
    lake.commit_adds(adds, &[]).await;
    let (rows, _) = contents(&lake).await;
    expected.sort();
    assert_eq!(rows, expected, "every kept row once, in its own day");
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

/// Rows of many kinds of column: `id` an md5's hex digits, `at` whole seconds of one day
/// in random order (as trips' times), `line` ascending numbers, `amount` cents spread wide,
/// `kind` one of four words in random order, `lon` longitudes within a city (as trips'
/// coordinates).
fn mixed(rows: usize) -> RecordBatch {
    use arrow::array::{Decimal128Array, TimestampMicrosecondArray};
    use md5::Digest as _;
    let schema = Arc::new(Schema::new(vec![
        Field::new("day", DataType::Utf8, true),
        Field::new("id", DataType::Utf8, true),
        Field::new(
            "at",
            DataType::Timestamp(arrow::datatypes::TimeUnit::Microsecond, Some("UTC".into())),
            true,
        ),
        Field::new("line", DataType::Int64, true),
        Field::new("amount", DataType::Decimal128(10, 2), true),
        Field::new("kind", DataType::Utf8, true),
        Field::new("lon", DataType::Float64, true),
    ]));
    let digest = |i: usize| md5::Md5::digest(i.to_le_bytes());
    let day_start = 1_704_067_200_000_000i64; // 2024-01-01T00:00:00Z
    RecordBatch::try_new(
        schema,
        vec![
            Arc::new(StringArray::from_iter_values(
                (0..rows).map(|_| "2024-01-01"),
            )),
            Arc::new(StringArray::from_iter_values(
                (0..rows).map(|i| hex::encode(digest(i))),
            )),
            Arc::new(
                TimestampMicrosecondArray::from_iter_values((0..rows).map(|i| {
                    let d = digest(i);
                    let second = u32::from_le_bytes([d[0], d[1], d[2], d[3]]) % 86_400;
                    day_start + i64::from(second) * 1_000_000
                }))
                .with_timezone("UTC"),
            ),
            Arc::new(Int64Array::from_iter_values(
                (0..rows as i64).map(|i| 2 + i * 3),
            )),
            Arc::new(
                Decimal128Array::from_iter_values(
                    (0..rows).map(|i| i128::from(digest(i)[4]) * 397 + i128::from(digest(i)[5])),
                )
                .with_precision_and_scale(10, 2)
                .unwrap(),
            ),
            Arc::new(StringArray::from_iter_values((0..rows).map(|i| {
                ["cash", "card", "none", "dispute"][usize::from(digest(i)[6]) % 4]
            }))),
            Arc::new(arrow::array::Float64Array::from_iter_values((0..rows).map(
                |i| {
                    let d = digest(i);
                    let unit =
                        u64::from_le_bytes(d[8..16].try_into().unwrap()) as f64 / 2f64.powi(64);
                    -74.02 + 0.24 * unit
                },
            ))),
        ],
    )
    .unwrap()
}

/// Each column's encodings and compression in the one file that writing `mixed(rows)`
/// made, by name; and the rows written and read back.
async fn written_encodings(rows: usize) -> (Encodings, RecordBatch, RecordBatch) {
    written_encodings_in(rows, rows).await
}

/// [`written_encodings`], the rows handed to the writer `chunk` at a time.
async fn written_encodings_in(rows: usize, chunk: usize) -> (Encodings, RecordBatch, RecordBatch) {
    let written = mixed(rows);
    let schema = written.schema();
    let lake = Lake::new("events", "silver/events", schema.as_ref(), &["day"]).await;
    let table = lake.table().await;
    let mut writer = delta::FileWriter::new(lake.name, &table).unwrap();
    for start in (0..rows).step_by(chunk) {
        writer
            .write(written.slice(start, chunk.min(rows - start)))
            .await
            .unwrap();
    }
    let adds = writer.finish(&[]).await.unwrap();
    assert_eq!(adds.len(), 1, "one partition, one file");
    lake.commit_adds(adds.clone(), &[]).await;
    // Partition values of plain dates need no escaping in the path.
    let file = std::fs::File::open(lake.root().join(&adds[0].path)).unwrap();
    let reader = parquet::file::serialized_reader::SerializedFileReader::new(file).unwrap();
    let meta = parquet::file::reader::FileReader::metadata(&reader);
    let mut encodings = std::collections::BTreeMap::new();
    for column in meta.row_group(0).columns() {
        encodings.insert(
            column.column_path().string(),
            (column.encodings().collect(), column.compression()),
        );
    }
    let table = lake.table().await;
    let batches = delta::read_file(lake.name, &table, &adds[0], &schema)
        .await
        .unwrap();
    let read = arrow::compute::concat_batches(&schema, &batches).unwrap();
    (encodings, written, read)
}

/// Each column's encodings and compression, by name.
type Encodings = std::collections::BTreeMap<
    String,
    (Vec<parquet::basic::Encoding>, parquet::basic::Compression),
>;

/// Asserts what `column`'s encodings say: whether it has a dictionary, which encoding
/// other than PLAIN its values have (packed as deltas, split into byte streams), if any,
/// and whether it is compressed.
fn assert_encoded(
    encodings: &Encodings,
    column: &str,
    dictionary: bool,
    other: Option<parquet::basic::Encoding>,
    compressed: bool,
) {
    use parquet::basic::{Compression, Encoding};
    let (found, compression) = &encodings[column];
    let has_dictionary = found
        .iter()
        .any(|e| matches!(e, Encoding::RLE_DICTIONARY | Encoding::PLAIN_DICTIONARY));
    let has_other = found.iter().copied().find(|e| {
        matches!(
            e,
            Encoding::DELTA_BINARY_PACKED | Encoding::BYTE_STREAM_SPLIT
        )
    });
    assert_eq!(
        (
            has_dictionary,
            has_other,
            *compression != Compression::UNCOMPRESSED
        ),
        (dictionary, other, compressed),
        "{column}: (dictionary, encoding, compressed) from {found:?}, {compression:?}"
    );
}

#[tokio::test]
async fn each_column_is_encoded_as_its_first_rows_call_for() {
    use parquet::basic::Encoding::{BYTE_STREAM_SPLIT, DELTA_BINARY_PACKED};
    let (encodings, written, read) = written_encodings(80_000).await;
    // Mostly distinct values lose the dictionary; repeating ones and amounts keep it. A
    // large first window runs trials: instants in random order and evenly spaced numbers
    // are smaller packed as deltas than PLAIN; hex digits are not numbers; coordinates
    // are smaller split into byte streams. Four codes in random order are as small
    // without zstd as with it; amounts spread wide are not.
    assert_encoded(&encodings, "id", false, None, true);
    assert_encoded(&encodings, "at", false, Some(DELTA_BINARY_PACKED), true);
    assert_encoded(&encodings, "line", false, Some(DELTA_BINARY_PACKED), true);
    assert_encoded(&encodings, "amount", true, None, true);
    assert_encoded(&encodings, "kind", true, None, false);
    assert_encoded(&encodings, "lon", false, Some(BYTE_STREAM_SPLIT), true);
    // Whatever the encodings, the rows read back are the rows written.
    assert_eq!(read.num_rows(), written.num_rows());
    for name in ["id", "at", "line", "amount", "kind", "lon"] {
        assert_eq!(
            read.column_by_name(name).unwrap().as_ref(),
            written.column_by_name(name).unwrap().as_ref(),
            "column {name} reads back as written"
        );
    }
}

#[tokio::test]
async fn a_small_first_window_settles_dictionaries_without_trials() {
    let (encodings, written, read) = written_encodings(5_000).await;
    assert_encoded(&encodings, "id", false, None, true);
    // No trials under 64 Ki rows: instants and floats stay PLAIN, codes compressed.
    assert_encoded(&encodings, "at", false, None, true);
    assert_encoded(&encodings, "lon", false, None, true);
    assert_encoded(&encodings, "kind", true, None, true);
    assert_eq!(read, written);
}

#[tokio::test]
async fn a_window_of_small_batches_is_sampled_across_them() {
    // A tail flush hands its writer one small entry after another: the sample spans
    // them, so distinct digests lose their dictionary (the first 600 rows alone said
    // nothing of them, and every column kept one).
    let (encodings, written, read) = written_encodings_in(6_000, 600).await;
    assert_encoded(&encodings, "id", false, None, true);
    assert_encoded(&encodings, "kind", true, None, true);
    assert_encoded(&encodings, "amount", true, None, true);
    assert_eq!(read, written);
}

#[tokio::test]
async fn a_table_is_absent_until_its_first_commit_and_opens_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("t");
    std::fs::create_dir_all(&root).unwrap();
    let url = url::Url::from_directory_path(&root).unwrap();
    assert!(delta::open("t", url.clone()).await.unwrap().is_none());
    // A log directory with no commit in it (a create that stopped short) is no table yet.
    std::fs::create_dir_all(root.join("_delta_log")).unwrap();
    assert!(delta::open("t", url.clone()).await.unwrap().is_none());
    delta::open_or_create("t", url.clone(), &schema(), &["day".to_string()], None)
        .await
        .unwrap();
    let table = delta::open("t", url)
        .await
        .unwrap()
        .expect("a committed table opens");
    assert_eq!(table.version(), Some(0));
}

/// A window of many small batches, each in partition order (a tail flush's entries), is
/// joined into one batch in partition order before it is written: every row lands once,
/// in its own day's file, and each day's rows keep the batches' order and their own.
#[tokio::test]
async fn many_small_batches_in_partition_order_land_once_each_and_in_order() {
    // 30-34 rows each over three days; every fifth batch holds one day only, so some
    // batches have no rows of a partition.
    small_batches_land_once_each_and_in_order(40, |k| 30 + k % 5, day_of_three, 3).await;
}

/// The same, when the window is larger than one joined run of partitions: several runs,
/// each joined, written and dropped in turn, still land every row once and in order.
#[tokio::test]
async fn small_batches_over_several_joined_runs_land_once_each_and_in_order() {
    // 40 batches of ~1,000 rows of ~230 bytes (~9 MiB) over twelve days: about three runs.
    let rows = |k: i64| 990 + k % 7;
    let bytes: usize = (0..40)
        .map(|k| batch(0, rows(k), day_of_twelve).get_array_memory_size())
        .sum();
    assert!(bytes > 2 * delta::JOIN_BYTES, "{bytes} bytes make one run");
    small_batches_land_once_each_and_in_order(40, rows, day_of_twelve, 12).await;
}

/// Twelve days, the first row's not the first.
fn day_of_twelve(n: i64) -> &'static str {
    const DAYS: [&str; 12] = [
        "2024-01-07",
        "2024-01-03",
        "2024-01-11",
        "2024-01-01",
        "2024-01-05",
        "2024-01-09",
        "2024-01-02",
        "2024-01-12",
        "2024-01-04",
        "2024-01-08",
        "2024-01-06",
        "2024-01-10",
    ];
    DAYS[(n % 12) as usize]
}

/// Writes `count` batches of `rows(k)` rows, each in partition order, through one writer
/// and checks each of the `days` days' file holds its rows once, in the order they came.
async fn small_batches_land_once_each_and_in_order(
    count: i64,
    rows: fn(i64) -> i64,
    day_of: fn(i64) -> &'static str,
    days: usize,
) {
    let by_day = ["day".to_string()];
    let lake = Lake::new("events", "silver/events", &schema(), &["day"]).await;
    let table = lake.table().await;
    let mut writer = delta::FileWriter::new(lake.name, &table).unwrap();
    let mut expected = Vec::new();
    for k in 0..count {
        let n = rows(k);
        let day_of: fn(i64) -> &'static str = if k % 5 == 0 { |_| "2024-01-02" } else { day_of };
        let b = batch(k * 10_000, n, day_of);
        expected.extend((k * 10_000..k * 10_000 + n).map(|n| (day_of(n).to_string(), n)));
        let sorted = delta::partition_sorted(&b, None, &by_day).unwrap().rows;
        writer.write(sorted).await.unwrap();
    }
    let adds = writer.finish(&[]).await.unwrap();
    assert_eq!(adds.len(), days, "one file per day");
    lake.commit_adds(adds, &[]).await;

    let table = lake.table().await;
    let schema = Arc::new(schema());
    for add in delta::active_files(lake.name, &table).await.unwrap() {
        let mut ns: Vec<i64> = Vec::new();
        for batch in delta::read_file(lake.name, &table, &add, &schema)
            .await
            .unwrap()
        {
            ns.extend(batch.column(1).as_primitive::<Int64Type>().values().iter());
        }
        assert!(
            ns.windows(2).all(|w| w[0] < w[1]),
            "{}: a day's rows in the order they came",
            add.path
        );
    }
    let (rows, _) = contents(&lake).await;
    expected.sort();
    assert_eq!(rows, expected, "every row once, in its own day");
}
