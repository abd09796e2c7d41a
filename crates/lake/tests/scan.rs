//! SQL over a real Delta table on disk through the plain Parquet scan: the declared column
//! order, partition values (a null one too), files a later commit removed, and file
//! skipping by the log's statistics that never changes an answer.

use std::sync::Arc;

use arrow::array::{Date32Array, Decimal128Array, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use arrow::util::pretty::pretty_format_batches;
use deltalake::kernel::Add;
use sluice_lake::sql::{Session, TableEntry};

mod common;
use common::Lake;

const NAME: &str = "trips";
const LOCATION: &str = "silver/trips";

/// The partition column sits between file columns, as in tables whose contract lists it there.
fn schema() -> Schema {
    Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("day", DataType::Date32, true),
        Field::new("fare", DataType::Decimal128(10, 2), true),
        Field::new("note", DataType::Utf8, true),
    ])
}

async fn new_lake() -> Lake {
    Lake::new(NAME, LOCATION, &schema(), &["day"]).await
}

/// Commits rows `(id, day as days since 1970, fare in cents)`, one file per day,
/// retiring `replacing` in the same commit.
async fn put(lake: &Lake, rows: &[(i64, Option<i32>, i128)], replacing: &[Add]) -> Vec<Add> {
    let batch = RecordBatch::try_new(
        Arc::new(schema()),
        vec![
            Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.0))),
            Arc::new(Date32Array::from_iter(rows.iter().map(|r| r.1))),
            Arc::new(
                Decimal128Array::from_iter_values(rows.iter().map(|r| r.2))
                    .with_precision_and_scale(10, 2)
                    .unwrap(),
            ),
            Arc::new(StringArray::from_iter_values(
                rows.iter().map(|r| format!("trip {}", r.0)),
            )),
        ],
    )
    .unwrap();
    lake.commit(batch, &[], replacing).await
}

/// `sql`'s answer over the lake's table (registered as `silver.<name>`), as a text table.
async fn sql(lake: &Lake, sql: &str) -> String {
    let entry = TableEntry {
        schema: "silver".into(),
        name: lake.name.into(),
        location: lake.location.into(),
    };
    let session = Session::open(&lake.paths, &[entry], &lake.tables)
        .await
        .unwrap();
    let result = session.query(sql).await.unwrap();
    pretty_format_batches(&result.batches).unwrap().to_string()
}

/// 2024-01-01 as days since 1970-01-01.
const JAN1: i32 = 19723;

async fn lake_with_rows() -> Lake {
    let lake = new_lake().await;
    put(
        &lake,
        &[(1, Some(JAN1), 1000), (2, Some(JAN1 + 1), 250)],
        &[],
    )
    .await;
    // A replaced object: its file is removed in the commit that adds its new rows.
    let old = put(&lake, &[(3, Some(JAN1 + 2), 9999)], &[]).await;
    put(&lake, &[(3, Some(JAN1 + 2), 700), (4, None, 50)], &old).await;
    lake
}

#[tokio::test]
async fn select_star_keeps_the_declared_column_order_and_skips_removed_files() {
    let lake = lake_with_rows().await;
    let table = sql(&lake, "SELECT * FROM trips ORDER BY id").await;
    let expected = "\
+----+------------+-------+--------+
| id | day        | fare  | note   |
+----+------------+-------+--------+
| 1  | 2024-01-01 | 10.00 | trip 1 |
| 2  | 2024-01-02 | 2.50  | trip 2 |
| 3  | 2024-01-03 | 7.00  | trip 3 |
| 4  |            | 0.50  | trip 4 |
+----+------------+-------+--------+";
    assert_eq!(table, expected);
    let counted = sql(&lake, "SELECT count(*) AS n FROM trips").await;
    assert!(counted.contains("| 4 |"), "{counted}");
}

#[tokio::test]
async fn partition_filters_read_only_the_matching_files() {
    let lake = lake_with_rows().await;
    let rows = sql(
        &lake,
        "SELECT id, note FROM trips WHERE day = DATE '2024-01-02'",
    )
    .await;
    assert!(rows.contains("| 2  | trip 2 |"), "{rows}");
    assert_eq!(rows.matches("trip").count(), 1, "{rows}");
    let plan = sql(
        &lake,
        "EXPLAIN SELECT id FROM trips WHERE day = DATE '2024-01-02'",
    )
    .await;
    assert_eq!(
        plan.matches(".parquet").count(),
        1,
        "only the one file of 2024-01-02 is scanned: {plan}"
    );
    let nulls = sql(&lake, "SELECT id FROM trips WHERE day IS NULL ORDER BY id").await;
    assert!(nulls.contains("| 4  |"), "{nulls}");
    assert_eq!(
        nulls.matches("| ").count(),
        2,
        "header and one row: {nulls}"
    );
}

#[tokio::test]
async fn column_statistics_skip_files_without_changing_answers() {
    let lake = lake_with_rows().await;
    let rows = sql(&lake, "SELECT id FROM trips WHERE fare > 5 ORDER BY id").await;
    let expected = "\
+----+
| id |
+----+
| 1  |
| 3  |
+----+";
    assert_eq!(rows, expected, "the removed 99.99 fare must not come back");
    let plan = sql(&lake, "EXPLAIN SELECT id FROM trips WHERE fare > 20").await;
    assert!(
        !plan.contains(".parquet"),
        "no active file holds a fare above 20: {plan}"
    );
    let none = sql(&lake, "SELECT count(*) AS n FROM trips WHERE fare > 20").await;
    assert!(none.contains("| 0 |"), "{none}");
}

/// Text partition values come back as text, including ones that need escaping in a path.
#[tokio::test]
async fn text_partition_values_filter_and_read_back() {
    let schema = Schema::new(vec![
        Field::new("region", DataType::Utf8, true),
        Field::new("n", DataType::Int64, false),
    ]);
    let lake = Lake::new("visits", "silver/visits", &schema, &["region"]).await;
    let batch = RecordBatch::try_new(
        Arc::new(schema),
        vec![
            Arc::new(StringArray::from(vec![
                Some("eu west"),
                Some("us/east=1"),
                Some("eu west"),
                None,
            ])),
            Arc::new(Int64Array::from(vec![1, 2, 3, 4])),
        ],
    )
    .unwrap();
    lake.commit(batch, &[], &[]).await;

    let all = sql(&lake, "SELECT * FROM visits ORDER BY n").await;
    let expected = "\
+-----------+---+
| region    | n |
+-----------+---+
| eu west   | 1 |
| us/east=1 | 2 |
| eu west   | 3 |
|           | 4 |
+-----------+---+";
    assert_eq!(all, expected);
    let typed = sql(
        &lake,
        "SELECT DISTINCT arrow_typeof(region) AS t FROM visits",
    )
    .await;
    assert!(typed.contains("Utf8View"), "{typed}");

    let sums = sql(
        &lake,
        "SELECT region, sum(n) AS total FROM visits WHERE region IN ('eu west', 'us/east=1') \
         GROUP BY region ORDER BY region",
    )
    .await;
    let expected = "\
+-----------+-------+
| region    | total |
+-----------+-------+
| eu west   | 4     |
| us/east=1 | 2     |
+-----------+-------+";
    assert_eq!(sums, expected);

    let plan = sql(
        &lake,
        "EXPLAIN SELECT n FROM visits WHERE region = 'us/east=1'",
    )
    .await;
    assert_eq!(
        plan.matches(".parquet").count(),
        1,
        "only the one file of that region is scanned: {plan}"
    );
    let nulls = sql(&lake, "SELECT n FROM visits WHERE region IS NULL").await;
    assert!(nulls.contains("| 4 |"), "{nulls}");
    assert_eq!(
        nulls.matches("| ").count(),
        2,
        "header and one row: {nulls}"
    );
}
