//! SQL over a real Delta table on disk through the plain Parquet scan: the declared column
//! order, partition values (a null one too), files a later commit removed, and file
//! skipping by the log's statistics that never changes an answer.

use std::sync::Arc;

use arrow::array::{Date32Array, Decimal128Array, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use arrow::util::pretty::pretty_format_batches;
use deltalake::kernel::Add;
use deltalake::protocol::{DeltaOperation, SaveMode};
use sluice_lake::sql::{Session, TableEntry};
use sluice_lake::{LakePaths, delta};

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

struct Lake {
    _dir: tempfile::TempDir,
    paths: LakePaths,
    tables: delta::TableCache,
}

impl Lake {
    async fn new() -> Lake {
        let dir = tempfile::tempdir().unwrap();
        let paths = LakePaths::new(dir.path());
        let tables = delta::TableCache::default();
        let url = paths.url(LOCATION).unwrap();
        let table = delta::open_or_create(NAME, url.clone(), &schema(), &["day".into()], None)
            .await
            .unwrap();
        tables.keep(&url, &table);
        Lake {
            _dir: dir,
            paths,
            tables,
        }
    }

    /// Commits rows `(id, day as days since 1970, fare in cents)`, one file per day,
    /// retiring `replacing` in the same commit.
    async fn put(&self, rows: &[(i64, Option<i32>, i128)], replacing: &[Add]) -> Vec<Add> {
        let url = self.paths.url(LOCATION).unwrap();
        let mut table = self
            .tables
            .latest(NAME, url.clone())
            .await
            .unwrap()
            .unwrap();
        let mut writer = delta::FileWriter::new(NAME, &table).unwrap();
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
        writer.write(batch).await.unwrap();
        let adds = writer.finish(&[]).await.unwrap();
        let removes = replacing
            .iter()
            .map(|a| delta::remove_of(a, true))
            .collect();
        delta::commit(
            NAME,
            &mut table,
            adds.clone(),
            removes,
            Vec::new(),
            DeltaOperation::Write {
                mode: SaveMode::Append,
                partition_by: Some(vec!["day".into()]),
                predicate: None,
            },
        )
        .await
        .unwrap();
        self.tables.keep(&url, &table);
        adds
    }

    async fn sql(&self, sql: &str) -> String {
        let entry = TableEntry {
            schema: "silver".into(),
            name: NAME.into(),
            location: LOCATION.into(),
        };
        let session = Session::open(&self.paths, &[entry], &self.tables)
            .await
            .unwrap();
        let result = session.query(sql).await.unwrap();
        pretty_format_batches(&result.batches).unwrap().to_string()
    }
}

/// 2024-01-01 as days since 1970-01-01.
const JAN1: i32 = 19723;

async fn lake_with_rows() -> Lake {
    let lake = Lake::new().await;
    lake.put(&[(1, Some(JAN1), 1000), (2, Some(JAN1 + 1), 250)], &[])
        .await;
    // A replaced object: its file is removed in the commit that adds its new rows.
    let old = lake.put(&[(3, Some(JAN1 + 2), 9999)], &[]).await;
    lake.put(&[(3, Some(JAN1 + 2), 700), (4, None, 50)], &old)
        .await;
    lake
}

#[tokio::test]
async fn select_star_keeps_the_declared_column_order_and_skips_removed_files() {
    let lake = lake_with_rows().await;
    let table = lake.sql("SELECT * FROM trips ORDER BY id").await;
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
    let counted = lake.sql("SELECT count(*) AS n FROM trips").await;
    assert!(counted.contains("| 4 |"), "{counted}");
}

#[tokio::test]
async fn partition_filters_read_only_the_matching_files() {
    let lake = lake_with_rows().await;
    let rows = lake
        .sql("SELECT id, note FROM trips WHERE day = DATE '2024-01-02'")
        .await;
    assert!(rows.contains("| 2  | trip 2 |"), "{rows}");
    assert_eq!(rows.matches("trip").count(), 1, "{rows}");
    let plan = lake
        .sql("EXPLAIN SELECT id FROM trips WHERE day = DATE '2024-01-02'")
        .await;
    assert_eq!(
        plan.matches(".parquet").count(),
        1,
        "only the one file of 2024-01-02 is scanned: {plan}"
    );
    let nulls = lake
        .sql("SELECT id FROM trips WHERE day IS NULL ORDER BY id")
        .await;
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
    let rows = lake
        .sql("SELECT id FROM trips WHERE fare > 5 ORDER BY id")
        .await;
    let expected = "\
+----+
| id |
+----+
| 1  |
| 3  |
+----+";
    assert_eq!(rows, expected, "the removed 99.99 fare must not come back");
    let plan = lake
        .sql("EXPLAIN SELECT id FROM trips WHERE fare > 20")
        .await;
    assert!(
        !plan.contains(".parquet"),
        "no active file holds a fare above 20: {plan}"
    );
    let none = lake
        .sql("SELECT count(*) AS n FROM trips WHERE fare > 20")
        .await;
    assert!(none.contains("| 0 |"), "{none}");
}
