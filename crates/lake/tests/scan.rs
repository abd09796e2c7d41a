//! SQL over a real Delta table on disk through the plain Parquet scan: the declared column
//! order, partition values (a null one too), files a later commit removed, and file
//! skipping by the log's statistics that never changes an answer.

use std::sync::Arc;

use arrow::array::{
    ArrayRef, Date32Array, Decimal128Array, Int32Array, Int64Array, RecordBatch, StringArray,
};
use arrow::datatypes::{DataType, Field, Schema};
use arrow::util::pretty::pretty_format_batches;
use deltalake::kernel::Add;
use sluice_lake::compact::{self, Scope};
use sluice_lake::delta;
use sluice_lake::sql::{Session, Statement, TableEntry};
use sluice_lake::tail::{self, Layout};

mod common;
use common::Lake;

/// A statement that parses.
fn parse(sql: &str) -> Statement {
    Statement::parse(sql).unwrap_or_else(|e| panic!("{sql}: {e}"))
}

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
    let batch_again = batch.clone();
    let batch_again_2 = batch.clone();
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

    // Compaction reads and rewrites those partitions' files where the writer put them
    // (`us%2Feast%3D1` on disk, not a directory `us/east=1`).
    lake.commit(batch_again, &[], &[]).await;
    let report = compact::prepare(
        &lake.paths,
        "visits",
        "silver/visits",
        Scope::All,
        &lake.tables,
    )
    .await
    .unwrap()
    .expect("each partition holds two small files")
    .commit(&lake.tables)
    .await
    .unwrap();
    assert_eq!(report.files_removed, 6);
    let merged = sql(
        &lake,
        "SELECT region, sum(n) AS total FROM visits GROUP BY region ORDER BY region",
    )
    .await;
    let expected = "\
+-----------+-------+
| region    | total |
+-----------+-------+
| eu west   | 8     |
| us/east=1 | 4     |
|           | 8     |
+-----------+-------+";
    assert_eq!(merged, expected);

    // Files written and then discarded (a failed ingest's) are deleted from those
    // partitions too, not left behind unreferenced.
    let table = lake.table().await;
    let root = table.table_url().to_file_path().unwrap();
    let before = parquet_count(&root);
    let mut writer = sluice_lake::delta::FileWriter::new("visits", &table).unwrap();
    writer.write(batch_again_2).await.unwrap();
    let adds = writer.finish(&[]).await.unwrap();
    assert_eq!(parquet_count(&root), before + 3);
    sluice_lake::delta::discard("visits", &table, &adds)
        .await
        .unwrap();
    assert_eq!(parquet_count(&root), before, "every discarded file is gone");
}

/// Parquet files under `dir`, at any depth.
fn parquet_count(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .map(|p| match p.is_dir() {
            true => parquet_count(&p),
            false => usize::from(p.extension().is_some_and(|x| x == "parquet")),
        })
        .sum()
}

/// Rows waiting in the table's tail (acknowledged, not yet committed) answer with the
/// committed ones; a filter skips the tail batches whose statistics rule it out, and no
/// answer changes for it.
#[tokio::test]
async fn tail_batches_are_skipped_by_their_statistics_without_changing_answers() {
    let lake = lake_with_rows().await;
    let tail = tail_of(&lake).await;
    let schema = Arc::new(schema());
    let batch = |ids: &[i64], note: Option<&str>| {
        RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(Int64Array::from_iter_values(ids.iter().copied())),
                Arc::new(Date32Array::from_iter(ids.iter().map(|_| Some(JAN1 + 2)))),
                Arc::new(
                    Decimal128Array::from_iter_values(ids.iter().map(|i| *i as i128 * 100))
                        .with_precision_and_scale(10, 2)
                        .unwrap(),
                ),
                Arc::new(StringArray::from_iter(ids.iter().map(|_| note))),
            ],
        )
        .unwrap()
    };
    for (app, ids, note) in [
        ("a", &[10, 11][..], Some("tail a")),
        ("b", &[20, 21][..], Some("tail b")),
        ("c", &[30][..], None),
    ] {
        let txns = vec![(format!("sluice-{app}"), 1)];
        tail.append(NAME, schema.clone(), vec![batch(ids, note)], txns)
            .await
            .unwrap();
    }

    let rows = sql(&lake, "SELECT id, note FROM trips WHERE id = 20").await;
    assert!(rows.contains("| 20 | tail b |"), "{rows}");
    assert_eq!(rows.matches("tail").count(), 1, "{rows}");
    let plan = sql(&lake, "EXPLAIN SELECT id FROM trips WHERE id = 20").await;
    assert!(
        plan.contains("partition_sizes=[1]"),
        "one of the three tail batches is read: {plan}"
    );
    let plan = sql(&lake, "EXPLAIN SELECT id FROM trips WHERE id = 99").await;
    assert!(
        !plan.contains("partition_sizes"),
        "no tail batch holds id 99: {plan}"
    );

    // Answers over the committed rows and every tail batch, with and without skipping.
    assert_counts(
        &lake,
        &[
            ("id >= 11", 4, 11 + 20 + 21 + 30),
            ("note IS NULL", 1, 30),
            ("note LIKE 'tail%'", 4, 10 + 11 + 20 + 21),
            ("fare BETWEEN 20.5 AND 30", 2, 21 + 30),
            (
                "day = DATE '2024-01-03' AND id < 25",
                4 + 1,
                10 + 11 + 20 + 21 + 3,
            ),
        ],
    )
    .await;
}

/// A session for one statement reads only the lake tables the statement names: a table
/// whose log cannot be read fails the statements naming it, and no other.
#[tokio::test]
async fn a_statement_reads_only_the_tables_it_names() {
    let lake = lake_with_rows().await;
    let zones_url = lake.paths.url("silver/zones").unwrap();
    let zones_schema = Schema::new(vec![Field::new("zone", DataType::Int64, false)]);
    sluice_lake::delta::open_or_create("zones", zones_url.clone(), &zones_schema, &[], None)
        .await
        .unwrap();
    let log = zones_url
        .to_file_path()
        .unwrap()
        .join("_delta_log/00000000000000000000.json");
    std::fs::write(&log, "this is not a delta log\n").unwrap();
    let entries = [
        TableEntry {
            schema: "silver".into(),
            name: NAME.into(),
            location: LOCATION.into(),
        },
        TableEntry {
            schema: "silver".into(),
            name: "zones".into(),
            location: "silver/zones".into(),
        },
    ];
    let run = |sql: &'static str| {
        let (lake, entries) = (&lake, &entries);
        async move {
            let statement = Statement::parse(sql)?;
            let session = Session::open_for(&lake.paths, entries, &lake.tables, &statement).await?;
            let result = session.run(&statement).await?;
            Ok::<_, sluice_lake::Error>(pretty_format_batches(&result.batches).unwrap().to_string())
        }
    };
    for sql in [
        "SELECT count(*) AS n FROM trips",
        "SELECT count(*) AS n FROM lake.silver.trips",
        "WITH t AS (SELECT id FROM silver.trips) SELECT count(*) AS n FROM t",
        "SELECT count(*) AS n FROM trips a JOIN trips b ON a.id = b.id",
    ] {
        let rows = run(sql).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
        assert!(rows.contains("| 4 |"), "{sql}: {rows}");
    }
    for sql in [
        "SELECT * FROM zones",
        "SELECT count(*) FROM trips JOIN silver.zones ON id = zone",
        "SELECT table_name FROM information_schema.tables",
    ] {
        let err = run(sql).await.expect_err(sql).to_string();
        assert!(
            err.contains("zones"),
            "{sql}: the error names the table: {err}"
        );
    }
    // A session over every table fails whatever the statement.
    assert!(
        Session::open(&lake.paths, &entries, &lake.tables)
            .await
            .is_err(),
        "the broken log is read by a session over all tables"
    );
}

/// Sessions opened from one cache start from one state built once, each with tables of
/// its own: a session opened later, with other tables or views, changes nothing in an
/// earlier one.
#[tokio::test]
async fn sessions_from_one_cache_keep_their_own_tables() {
    let lake = lake_with_rows().await;
    let entries = [TableEntry {
        schema: "silver".into(),
        name: NAME.into(),
        location: LOCATION.into(),
    }];
    let first = "SELECT count(*) AS n FROM trips";
    let one = Session::open_for(&lake.paths, &entries, &lake.tables, &parse(first))
        .await
        .unwrap();
    let two = Session::open_for(&lake.paths, &[], &lake.tables, &parse("SELECT 1"))
        .await
        .unwrap();
    let schema = Arc::new(Schema::new(vec![Field::new("k", DataType::Int64, false)]));
    let extra = RecordBatch::try_new(
        schema.clone(),
        vec![Arc::new(Int64Array::from(vec![7, 8, 9])) as ArrayRef],
    )
    .unwrap();
    two.register_batches("silver", "extra", schema, vec![extra])
        .unwrap();
    assert!(answer(&one, first).await.contains("| 4 |"));
    assert!(
        answer(&two, "SELECT count(*) AS n FROM extra")
            .await
            .contains("| 3 |")
    );
    let err = one.query("SELECT * FROM extra").await.unwrap_err();
    assert!(err.to_string().contains("extra"), "{err}");
    let err = two.query(first).await.unwrap_err();
    assert!(err.to_string().contains("trips"), "{err}");
    // A statement that changes its session (here a view) changes that session alone.
    two.query("CREATE VIEW big AS SELECT k FROM extra WHERE k > 7")
        .await
        .unwrap();
    assert!(
        answer(&two, "SELECT count(*) AS n FROM big")
            .await
            .contains("| 2 |")
    );
    let err = one.query("SELECT * FROM big").await.unwrap_err();
    assert!(err.to_string().contains("big"), "{err}");
}

/// Aggregates grouped by partition columns are folded a batch at a time
/// (`scan::ByPartitionExec`) and answer exactly as DataFusion's own hash aggregate does
/// over the same rows held in memory: several files per day, a null day, null values,
/// several batches per file, and a filter in between.
#[tokio::test]
async fn aggregates_by_partition_columns_answer_as_the_hash_aggregate_does() {
    let lake = new_lake().await;
    let schema = Arc::new(schema());
    let mut batches = Vec::new();
    // Three commits, each with rows of every day: several files per partition value.
    for commit in 0..3i64 {
        let ids: Vec<i64> = (0..20_000).map(|i| commit * 20_000 + i).collect();
        let day = |id: i64| (id % 5 != 4).then_some(JAN1 + (id % 5) as i32);
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(Int64Array::from(ids.clone())),
                Arc::new(Date32Array::from_iter(ids.iter().map(|&id| day(id)))),
                fares(&ids),
                notes(&ids),
            ],
        )
        .unwrap();
        lake.commit(batch.clone(), &[], &[]).await;
        batches.push(batch);
    }
    let entry = TableEntry {
        schema: "silver".into(),
        name: NAME.into(),
        location: LOCATION.into(),
    };
    let session = Session::open(&lake.paths, &[entry], &lake.tables)
        .await
        .unwrap();
    session
        .register_batches("bronze", "oracle", schema.clone(), batches)
        .unwrap();
    let text = |sql: String| {
        let session = &session;
        async move {
            let result = session
                .query(&sql)
                .await
                .unwrap_or_else(|e| panic!("{sql}: {e}"));
            pretty_format_batches(&result.batches).unwrap().to_string()
        }
    };
    let cases = [
        (
            "SELECT day, count(*) AS n, sum(fare) AS s, count(fare) AS nf, avg(fare) AS a, \
             min(note) AS lo, max(note) AS hi, max(id) AS top FROM {t} GROUP BY day ORDER BY day",
            true,
        ),
        (
            "SELECT count(*) AS n, sum(fare) AS s, day FROM {t} WHERE id % 3 = 0 \
             GROUP BY day ORDER BY day",
            true,
        ),
        (
            "SELECT day, count(*) AS n FROM {t} GROUP BY day ORDER BY day",
            true,
        ),
        (
            "SELECT day, count(*) AS n FROM {t} WHERE id % 2 = 3 GROUP BY day",
            true,
        ),
        (
            "SELECT day, note, count(*) AS n FROM {t} WHERE id % 97 < 3 \
             GROUP BY day, note ORDER BY day, note",
            false,
        ),
        (
            "SELECT day, count(DISTINCT note) AS n FROM {t} GROUP BY day ORDER BY day",
            false,
        ),
    ];
    for (query, folded) in cases {
        let ours = text(query.replace("{t}", "silver.trips")).await;
        let oracle = text(query.replace("{t}", "bronze.oracle")).await;
        assert_eq!(ours, oracle, "{query}");
        assert!(ours.lines().count() > 4 || query.contains("= 3"), "{ours}");
        let plan = text(format!("EXPLAIN {}", query.replace("{t}", "silver.trips"))).await;
        assert_eq!(plan.contains("ByPartitionExec"), folded, "{query}: {plan}");
    }
}

/// Aggregates grouped by one integer column go through `scan::DenseGroupsExec` and answer
/// exactly as DataFusion's own hash aggregate does over the same rows: null keys, null
/// values, several files and batches, a filter below (applied inside the exec), FILTER
/// clauses, and keys too wide for its window, handed over to DataFusion's aggregate at the
/// first batch or midway.
#[tokio::test]
async fn aggregates_by_an_integer_column_answer_as_the_hash_aggregate_does() {
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("code", DataType::Int32, true),
        Field::new("fare", DataType::Decimal128(10, 2), true),
        Field::new("note", DataType::Utf8, true),
    ]));
    let lake = Lake::new("rides", "silver/rides", &schema, &[]).await;
    let batch = |ids: &[i64], code: &dyn Fn(i64) -> Option<i32>| {
        RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(Int64Array::from(ids.to_vec())),
                Arc::new(Int32Array::from_iter(ids.iter().map(|&id| code(id)))),
                fares(ids),
                notes(ids),
            ],
        )
        .unwrap()
    };
    // Ids span more than a window; codes are 1..=6 and nulls in every file.
    let code = |id: i64| (id % 13 != 0).then_some(1 + (id % 6) as i32);
    let mut batches = Vec::new();
    for commit in 0..3i64 {
        let ids: Vec<i64> = (0..30_000).map(|i| commit * 40_000 + i).collect();
        let rows = batch(&ids, &code);
        lake.commit(rows.clone(), &[], &[]).await;
        batches.push(rows);
    }
    const { assert!(80_000 > sluice_lake::scan::DENSE_RANGE) };
    let entry = TableEntry {
        schema: "silver".into(),
        name: "rides".into(),
        location: "silver/rides".into(),
    };
    let session = Session::open(&lake.paths, &[entry], &lake.tables)
        .await
        .unwrap();
    // Rows in a known order: narrow keys, then one batch of keys far apart, then narrow.
    let ordered: Vec<RecordBatch> = (0..8i64)
        .map(|b| {
            let ids: Vec<i64> = (0..5_000).map(|i| b * 5_000 + i).collect();
            let wide = |id: i64| Some(if id % 2 == 0 { id as i32 * 1_000 } else { -7 });
            let keys: &dyn Fn(i64) -> Option<i32> = if b == 5 { &wide } else { &code };
            batch(&ids, keys)
        })
        .collect();
    session
        .register_batches("bronze", "ordered", schema.clone(), ordered.clone())
        .unwrap();
    // The oracle: DataFusion alone, the same rows in memory.
    let oracle = datafusion::prelude::SessionContext::new_with_config(
        datafusion::prelude::SessionConfig::new().with_target_partitions(2),
    );
    for (name, rows) in [("rides", batches), ("ordered", ordered)] {
        let table = datafusion::datasource::MemTable::try_new(schema.clone(), vec![rows]).unwrap();
        oracle.register_table(name, Arc::new(table)).unwrap();
    }
    let cases = [
        (
            "SELECT code, count(*) AS n, sum(fare) AS s, count(fare) AS nf, avg(fare) AS a, \
             min(note) AS lo, max(note) AS hi, max(id) AS top FROM {rides} GROUP BY code ORDER BY code",
            Some(false),
        ),
        (
            "SELECT count(*) AS n, sum(fare) AS s, code FROM {rides} WHERE fare > 1 AND id % 3 = 0 \
             GROUP BY code ORDER BY code",
            Some(false),
        ),
        (
            "SELECT code, count(*) FILTER (WHERE id % 2 = 0) AS even, \
             sum(fare) FILTER (WHERE note > 'n5') AS s FROM {rides} GROUP BY code ORDER BY code",
            Some(false),
        ),
        (
            "SELECT code, count(*) AS n FROM {rides} WHERE id % 2 = 3 GROUP BY code",
            Some(false),
        ),
        (
            "SELECT count(*) AS groups, sum(n) AS rows, sum(s) AS fares FROM \
             (SELECT id, count(*) AS n, sum(fare) AS s FROM {rides} GROUP BY id)",
            Some(true),
        ),
        (
            "SELECT code, count(*) AS n, sum(fare) AS s, min(id) AS lo FROM {ordered} \
             GROUP BY code ORDER BY code",
            Some(true),
        ),
        (
            "SELECT code, note, count(*) AS n FROM {rides} WHERE id % 97 < 3 \
             GROUP BY code, note ORDER BY code, note",
            None,
        ),
    ];
    for (query, handed_over) in cases {
        let ours = query
            .replace("{rides}", "silver.rides")
            .replace("{ordered}", "bronze.ordered");
        let theirs = query
            .replace("{rides}", "rides")
            .replace("{ordered}", "ordered");
        let answer_ours = answer(&session, &ours).await;
        let expected = oracle.sql(&theirs).await.unwrap().collect().await.unwrap();
        let expected = pretty_format_batches(&expected).unwrap().to_string();
        assert_eq!(answer_ours, expected, "{query}");
        assert!(
            answer_ours.lines().count() > 4 || query.contains("= 3 "),
            "{answer_ours}"
        );
        let plan = answer(&session, &format!("EXPLAIN ANALYZE {ours}")).await;
        assert_eq!(
            plan.contains("DenseGroupsExec"),
            handed_over.is_some(),
            "{query}: {plan}"
        );
        if let Some(handed_over) = handed_over {
            // A filter below is applied inside the exec.
            assert!(!plan.contains("FilterExec"), "{query}: {plan}");
            let dense = plan[plan.find("DenseGroupsExec").unwrap()..].lines().next();
            let dense = dense.unwrap_or_default();
            let empty = query.contains("= 3 ");
            assert_eq!(
                dense.contains("output_batches=0"),
                empty,
                "{query}: the exec counts the batches it emits: {plan}"
            );
            assert_eq!(
                !plan.contains("handed_over_rows=0,") && !plan.contains("handed_over_rows=0]"),
                handed_over,
                "{query}: {plan}"
            );
        }
    }
}

/// A decimal(10,2) fare per id, null for every seventh.
fn fares(ids: &[i64]) -> ArrayRef {
    let fares = ids
        .iter()
        .map(|&id| (id % 7 != 0).then_some(i128::from(id % 1000) * 13));
    Arc::new(
        Decimal128Array::from_iter(fares)
            .with_precision_and_scale(10, 2)
            .unwrap(),
    )
}

/// One of 97 notes per id, null for every eleventh.
fn notes(ids: &[i64]) -> ArrayRef {
    let notes = ids
        .iter()
        .map(|&id| (id % 11 != 0).then(|| format!("n{}", id % 97)));
    Arc::new(StringArray::from_iter(notes))
}

/// `sql`'s answer in `session`, as a text table.
async fn answer(session: &Session, sql: &str) -> String {
    let result = session
        .query(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    pretty_format_batches(&result.batches).unwrap().to_string()
}

/// A table of `id` and `_source_object`, the lineage column the poll filters on.
fn sourced_schema() -> Arc<Schema> {
    Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("_source_object", DataType::Utf8, false),
    ]))
}

/// Rows `(id, source object)` in [`sourced_schema`].
fn sourced_batch(schema: &Arc<Schema>, rows: &[(i64, &str)]) -> RecordBatch {
    RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.0))),
            Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.1))),
        ],
    )
    .unwrap()
}

/// A filter naming source objects (the read-after-write poll) reads the tail batches
/// holding one of them, found by each batch's source objects rather than by their min and
/// max (a batch of objects `a` and `c` does not hold `b`), and answers every filter as a
/// full read would, conjunct or not.
#[tokio::test]
async fn tail_batches_of_other_source_objects_are_skipped_without_changing_answers() {
    let schema = sourced_schema();
    let batch = |rows: &[(i64, &str)]| sourced_batch(&schema, rows);
    let lake = Lake::new(NAME, LOCATION, &schema, &[]).await;
    lake.commit(batch(&[(100, "raw/z.csv")]), &[], &[]).await;
    let tail = tail_of(&lake).await;
    for (app, rows) in [
        (
            "ac",
            &[(1, "raw/a.csv"), (2, "raw/a.csv"), (3, "raw/c.csv")][..],
        ),
        ("b", &[(4, "raw/b.csv"), (5, "raw/b.csv")][..]),
    ] {
        let txns = vec![(format!("sluice-{app}"), 1)];
        tail.append(NAME, schema.clone(), vec![batch(rows)], txns)
            .await
            .unwrap();
    }

    let plan = sql(
        &lake,
        "EXPLAIN SELECT id FROM trips WHERE _source_object = 'raw/b.csv'",
    )
    .await;
    assert!(
        plan.contains("partition_sizes=[1]"),
        "only the batch of raw/b.csv is read, though raw/a.csv..raw/c.csv spans it: {plan}"
    );
    let plan = sql(
        &lake,
        "EXPLAIN SELECT id FROM trips WHERE _source_object = 'raw/q.csv'",
    )
    .await;
    assert!(
        !plan.contains("partition_sizes"),
        "no batch holds raw/q.csv: {plan}"
    );

    assert_counts(
        &lake,
        &[
            ("_source_object = 'raw/b.csv'", 2, 9),
            ("'raw/c.csv' = _source_object", 1, 3),
            ("_source_object IN ('raw/a.csv', 'raw/b.csv')", 4, 12),
            ("_source_object = 'raw/z.csv'", 1, 100),
            ("_source_object = 'raw/a.csv' AND id > 1", 1, 2),
            ("_source_object = 'raw/b.csv' OR id = 1", 3, 10),
            ("_source_object NOT IN ('raw/b.csv')", 4, 106),
        ],
    )
    .await;
    // No object of that name: no rows (and a NULL sum, so not through `assert_counts`).
    let rows = sql(
        &lake,
        "SELECT count(*) AS n FROM trips WHERE _source_object = 'raw/q.csv'",
    )
    .await;
    assert!(rows.contains("| 0 |"), "{rows}");
}

/// The table's tail, read back by a first query as `sluice up` does at start.
async fn tail_of(lake: &Lake) -> Arc<sluice_lake::tail::Tail> {
    sql(lake, "SELECT count(*) FROM trips").await;
    let url = lake.paths.url(lake.location).unwrap();
    lake.tables
        .tail(&url)
        .expect("the tail is read on first use")
}

/// Asserts each `(filter, n, s)`: `n` rows of `trips` pass the filter and their ids sum to `s`.
async fn assert_counts(lake: &Lake, cases: &[(&str, i64, i64)]) {
    for (filter, n, s) in cases {
        let query = format!("SELECT count(*) AS n, sum(id) AS s FROM trips WHERE {filter}");
        let rows = sql(lake, &query).await;
        assert!(
            rows.contains(&format!("| {n} | {s} |")),
            "{filter}: expected {n} rows summing to {s}: {rows}"
        );
    }
}

/// The read-after-write poll (`WHERE _source_object = 'raw/b.csv'`, through the session
/// a statement opens) skips the table's files when the object's ingest has no `txn` in
/// the table yet (its rows wait in the tail), though a flush's files span it by min and
/// max; files sluice did not write are read all the same, and once the object's rows are
/// flushed its files are read again.
#[tokio::test]
async fn files_of_a_table_that_holds_no_rows_of_the_named_objects_are_skipped() {
    let schema = sourced_schema();
    let batch = |rows: &[(i64, &str)]| sourced_batch(&schema, rows);
    let lake = Lake::new(NAME, LOCATION, &schema, &[]).await;
    let url = lake.paths.url(LOCATION).unwrap();
    let tail = tail_of(&lake).await;
    let append = |rows: &'static [(i64, &'static str)], objects: &'static [&'static str]| {
        let (tail, batch) = (tail.clone(), batch(rows));
        let schema = schema.clone();
        async move {
            let txns = objects.iter().map(|o| (delta::app_id(o), 1)).collect();
            tail.append(NAME, schema, vec![batch], txns).await.unwrap();
        }
    };
    let flush = || async {
        tail::flush(&lake.tables, NAME, &url, Layout::Shared)
            .await
            .unwrap()
            .expect("the tail holds rows");
    };
    // A flush of raw/a.csv and raw/c.csv: its file's min and max span raw/b.csv.
    append(
        &[(1, "raw/a.csv"), (3, "raw/c.csv")],
        &["raw/a.csv", "raw/c.csv"],
    )
    .await;
    flush().await;
    append(&[(4, "raw/b.csv"), (5, "raw/b.csv")], &["raw/b.csv"]).await;

    let entries = [TableEntry {
        schema: "silver".into(),
        name: NAME.into(),
        location: LOCATION.into(),
    }];
    // The session a statement opens, asked the statement or (`explain`) its plan.
    let session_for = |query: &'static str, explain: bool| {
        let (lake, entries) = (&lake, &entries);
        async move {
            let session = Session::open_for(&lake.paths, entries, &lake.tables, &parse(query))
                .await
                .unwrap();
            match explain {
                true => answer(&session, &format!("EXPLAIN {query}")).await,
                false => answer(&session, query).await,
            }
        }
    };
    let poll = |query| session_for(query, false);
    let plan_of = |query| session_for(query, true);
    let count = "SELECT count(*) AS n, sum(id) AS s FROM trips WHERE _source_object = 'raw/b.csv'";
    let plan = plan_of("SELECT id FROM trips WHERE _source_object = 'raw/b.csv'").await;
    assert!(
        !plan.contains("file_type=parquet"),
        "raw/b.csv has no txn in the table: no file is read: {plan}"
    );
    let plan = sql(
        &lake,
        "EXPLAIN SELECT id FROM trips WHERE _source_object = 'raw/b.csv'",
    )
    .await;
    assert!(
        plan.contains("file_type=parquet"),
        "a session over every table still reads the file min/max keep: {plan}"
    );
    assert!(poll(count).await.contains("| 2 | 9 |"));
    let plan =
        plan_of("SELECT id FROM trips WHERE _source_object IN ('raw/a.csv', 'raw/b.csv')").await;
    assert!(
        plan.contains("file_type=parquet"),
        "raw/a.csv is in the table: its file is read: {plan}"
    );
    let both = "SELECT count(*) AS n, sum(id) AS s FROM trips \
                WHERE _source_object IN ('raw/a.csv', 'raw/b.csv')";
    assert!(poll(both).await.contains("| 3 | 10 |"));

    // A file another writer added (no sluice tags) may hold any object's rows: read.
    lake.commit(batch(&[(100, "raw/b.csv")]), &[], &[]).await;
    assert!(poll(count).await.contains("| 3 | 109 |"));

    // Flushed, raw/b.csv's rows are in the files, and the files are read again.
    flush().await;
    let plan = plan_of("SELECT id FROM trips WHERE _source_object = 'raw/b.csv'").await;
    assert!(plan.contains("file_type=parquet"), "{plan}");
    assert!(poll(count).await.contains("| 3 | 109 |"));
}
