//! Small files: automatic and requested compaction, and exactly-once per object across it.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::support::*;

const OBJECTS: usize = 24;
const ROWS: usize = 60;

/// Valid rows per source object, as sluice's SQL sees them.
fn counts(server: &Server) -> BTreeMap<String, i64> {
    server
        .query("SELECT _source_object AS o, count(*) AS n FROM silver.trips GROUP BY 1")
        .iter()
        .map(|r| (r["o"].as_str().unwrap().to_string(), as_i64(&r["n"])))
        .collect()
}

/// The same, by DuckDB over the files the Delta log says are active.
fn oracle_counts(trips: &std::path::Path) -> BTreeMap<String, i64> {
    duckdb_oracle(
        trips,
        "SELECT _source_object AS o, count(*) AS n FROM t GROUP BY 1",
    )
    .as_array()
    .unwrap()
    .iter()
    .map(|r| (r["o"].as_str().unwrap().to_string(), as_i64(&r["n"])))
    .collect()
}

/// Commits of the table that compaction made (read from the Delta log by hand).
fn optimize_commits(table_dir: &std::path::Path) -> usize {
    std::fs::read_dir(table_dir.join("_delta_log"))
        .unwrap()
        .filter_map(|e| {
            let path = e.unwrap().path();
            (path.extension()? == "json").then(|| std::fs::read_to_string(path).ok())?
        })
        .filter(|text| text.contains("\"operation\":\"OPTIMIZE\""))
        .count()
}

fn no_duplicate_trips(server: &Server) {
    let dupes = server.query(
        "SELECT trip_id, count(*) AS n FROM silver.trips GROUP BY 1 HAVING count(*) > 1 LIMIT 3",
    );
    assert!(dupes.is_empty(), "duplicated trips: {dupes:?}");
}

#[test]
fn small_objects_are_compacted_and_each_object_still_replaces_and_removes_exactly_its_rows() {
    let project = taxi_project(|t| t);
    let csv = project.path().join("month.csv");
    let (ok, _, err) = cli(
        project.path(),
        &[
            "generate",
            "--rows",
            &(OBJECTS * ROWS).to_string(),
            "--seed",
            "7",
            csv.to_str().unwrap(),
        ],
    );
    assert!(ok, "{err}");
    let text = std::fs::read_to_string(&csv).unwrap();
    let mut lines = text.lines();
    let header = lines.next().unwrap();
    let body: Vec<&str> = lines.collect();
    let object = |i: usize, rows: usize| {
        let mut s = format!("{header}\n");
        for l in &body[i * ROWS..i * ROWS + rows] {
            s.push_str(l);
            s.push('\n');
        }
        s
    };
    let key = |i: usize| format!("landing/2024/01/part-{i:02}.csv");
    let trips = project.path().join(".sluice/lake/silver/trips");

    let server = Server::start(project.path());
    for i in 0..OBJECTS {
        server.put_bytes("raw", &key(i), object(i, ROWS).as_bytes());
    }
    server.wait_idle(Duration::from_secs(300));
    // 60-row objects spread over a month of daily partitions make automatic compaction
    // run (in the background, after the runs).
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while optimize_commits(&trips) == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "no automatic compaction"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let runs = server.runs();
    let valid: i64 = runs.iter().map(|r| as_i64(&r["rows_valid"])).sum();
    let before = counts(&server);
    assert_eq!(before.len(), OBJECTS);
    assert_eq!(before.values().sum::<i64>(), valid);
    assert_eq!(oracle_counts(&trips), before);
    no_duplicate_trips(&server);

    // Compacting on request merges what is left; the rows stay the same.
    let files_before = active_files(&trips);
    let (status, report) = server.post("/v1/tables/trips/compact");
    assert_eq!(status, 200, "{report}");
    let files_after = active_files(&trips);
    assert!(
        files_after < files_before && files_after <= 31,
        "{files_before} -> {files_after} files: {report}"
    );
    assert_eq!(counts(&server), before);
    assert_eq!(oracle_counts(&trips), before);

    // Replacing an object whose rows now share files with others replaces exactly its rows.
    server.put_bytes("raw", &key(3), object(3, ROWS / 2).as_bytes());
    // Removing one removes exactly its rows.
    server.delete("raw", &key(5));
    // Sending one again unchanged changes nothing (its content hash survived compaction).
    server.put_bytes("raw", &key(7), object(7, ROWS).as_bytes());
    server.wait_idle(Duration::from_secs(120));
    let after = counts(&server);
    let o = |i: usize| format!("raw/{}", key(i));
    assert!(
        after[&o(3)] > 0 && after[&o(3)] < before[&o(3)],
        "{} -> {}",
        before[&o(3)],
        after[&o(3)]
    );
    assert!(!after.contains_key(&o(5)), "{after:?}");
    assert_eq!(after[&o(7)], before[&o(7)]);
    let resent = server.scalar(&format!(
        "SELECT r.status FROM sluice.runs r JOIN sluice.events e ON r.event_id = e.event_id \
         WHERE e.key = '{}' ORDER BY e.seq DESC LIMIT 1",
        key(7)
    ));
    assert_eq!(resent, "skipped");
    for i in (0..OBJECTS).filter(|i| ![3, 5].contains(i)) {
        assert_eq!(after[&o(i)], before[&o(i)], "object {i} must be untouched");
    }
    assert_eq!(oracle_counts(&trips), after);
    no_duplicate_trips(&server);

    // The CLI does not compact under a running server's feet; it says how to ask it.
    let (ok, _, err) = server.cli(&["compact", "trips"]);
    assert!(!ok);
    assert!(err.contains("/v1/tables/trips/compact"), "{err}");
    let (status, body) = server.post("/v1/tables/daily_revenue/compact");
    assert_eq!(status, 400, "{body}");
    drop(server);
    let (ok, out, err) = cli(&project.path().join("sluice.toml"), &["compact", "trips"]);
    assert!(ok, "{err}");
    assert!(out.contains("trips"), "{out}");
}
