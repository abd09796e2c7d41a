//! The spine's guarantees: idempotency, replacement, thresholds, retries → DLQ → replay, crash safety.

use std::time::{Duration, Instant};

use crate::support::*;

fn count_for(server: &Server, object: &str) -> (i64, i64) {
    let valid = as_i64(&server.scalar(&format!(
        "SELECT count(*) FROM silver.trips WHERE _source_object = '{object}'"
    )));
    let quarantined = as_i64(&server.scalar(&format!(
        "SELECT count(*) FROM sluice.quarantine WHERE table_name = 'trips' AND source_object = '{object}'"
    )));
    (valid, quarantined)
}

#[test]
fn the_same_object_twice_adds_nothing_and_a_changed_object_replaces_its_rows() {
    let project = taxi_project(|t| t);
    let first = generate(project.path(), "a.csv", 2000, 1);
    let second = generate(project.path(), "b.csv", 1200, 2);
    let server = Server::start(project.path());
    let key = "landing/2024/01/trips.csv";
    let object = format!("raw/{key}");

    server.put_file("raw", key, &first);
    server.wait_idle(Duration::from_secs(120));
    let (v1, q1) = count_for(&server, &object);
    assert_eq!(v1 + q1, 2000);
    assert!(v1 > 1800, "{v1}");

    // The same content again, e.g. a client retrying its upload: nothing changes.
    server.put_file("raw", key, &first);
    server.wait_idle(Duration::from_secs(120));
    assert_eq!(count_for(&server, &object), (v1, q1));
    let runs = server.runs();
    assert_eq!(runs[0]["status"], "skipped", "{:#?}", runs[0]);

    // New content under the same key replaces the object's rows, in silver and in quarantine.
    server.put_file("raw", key, &second);
    server.wait_idle(Duration::from_secs(120));
    let (v2, q2) = count_for(&server, &object);
    assert_eq!(v2 + q2, 1200);
    assert_eq!(
        as_i64(&server.scalar("SELECT count(DISTINCT _source_version) FROM silver.trips")),
        1
    );
    assert_eq!(
        as_i64(&server.scalar("SELECT count(*) FROM silver.trips")),
        v2
    );
    // Gold followed.
    assert_eq!(
        as_i64(&server.scalar("SELECT sum(trips) FROM gold.daily_revenue")),
        v2
    );
}

#[test]
fn an_object_replaced_before_its_run_is_ingested_once_as_its_newest_content() {
    let project = taxi_project(|t| t);
    let first = generate(project.path(), "a.csv", 900, 4);
    let second = generate(project.path(), "b.csv", 700, 5);
    let toml = project.path().join("sluice.toml");
    let key = "landing/2024/01/replaced.csv";
    let object = format!("raw/{key}");
    // Both writes land while no worker runs: the first event's run finds the second's bytes.
    for file in [&first, &second] {
        let (ok, out, err) = cli(&toml, &["put", file.to_str().unwrap(), &object]);
        assert!(ok, "{out}{err}");
    }
    let server = Server::start(project.path());
    server.wait_idle(Duration::from_secs(120));
    let (valid, quarantined) = count_for(&server, &object);
    assert_eq!(valid + quarantined, 700, "only the newest content's rows");
    assert!(valid > 600, "{valid}");
    let newest = server.scalar(&format!(
        "SELECT version FROM sluice.events WHERE key = '{key}' ORDER BY seq DESC LIMIT 1"
    ));
    let versions = server.query(&format!(
        "SELECT DISTINCT _source_version AS v FROM silver.trips WHERE _source_object = '{object}'"
    ));
    assert_eq!(versions, vec![serde_json::json!({ "v": newest })]);
    // Bronze keeps each content under its own hash: the newest bytes, never under the old hash.
    let archived = server.query(&format!(
        "SELECT sha256, size FROM bronze.trips_raw WHERE source_object = '{object}'"
    ));
    let newest_sha = server.scalar(&format!(
        "SELECT sha256 FROM sluice.events WHERE key = '{key}' ORDER BY seq DESC LIMIT 1"
    ));
    assert_eq!(archived.len(), 1, "{archived:?}");
    assert_eq!(archived[0]["sha256"], newest_sha);
    assert_eq!(
        as_i64(&archived[0]["size"]),
        std::fs::metadata(&second).unwrap().len() as i64
    );
    // The older event's run applied nothing: it saw newer bytes (superseded) or a newer commit.
    let applied = server
        .runs()
        .into_iter()
        .filter(|r| r["status"] == "succeeded")
        .count();
    assert_eq!(applied, 1, "{:#?}", server.runs());
}

#[test]
fn landed_tables_keep_log_statistics_for_the_source_and_time_columns() {
    let project = taxi_project(|t| t);
    let file = generate(project.path(), "a.csv", 600, 7);
    let server = Server::start(project.path());
    let object = "raw/landing/2024/01/stats.csv";
    server.put_file("raw", "landing/2024/01/stats.csv", &file);
    server.wait_idle(Duration::from_secs(120));
    for (table, expected) in [
        (
            "silver/trips",
            vec![
                "_source_object",
                "dropoff_at",
                "dropoff_at_local",
                "pickup_at",
                "pickup_at_local",
            ],
        ),
        ("sluice/quarantine", vec!["quarantined_at", "source_object"]),
    ] {
        let actions = log_actions(&project.path().join(".sluice/lake").join(table));
        let declared = actions
            .iter()
            .find_map(|a| a["metaData"]["configuration"]["delta.dataSkippingStatsColumns"].as_str())
            .unwrap_or_else(|| panic!("{table} declares no statistics columns"));
        let mut declared: Vec<&str> = declared.split(',').collect();
        declared.sort();
        assert_eq!(declared, expected, "{table}");
        let mut adds = 0;
        for stats in actions.iter().filter_map(|a| a["add"]["stats"].as_str()) {
            let stats: serde_json::Value = serde_json::from_str(stats).unwrap();
            let mut columns: Vec<&str> = stats["minValues"]
                .as_object()
                .unwrap()
                .keys()
                .map(String::as_str)
                .collect();
            columns.sort();
            assert_eq!(columns, expected, "{table}: {stats}");
            adds += 1;
        }
        assert!(adds > 0, "{table} has no files");
    }
    // The lookups that need those statistics still answer exactly.
    let (valid, quarantined) = count_for(&server, object);
    assert_eq!(valid + quarantined, 600);
}

#[test]
fn too_many_invalid_rows_fail_the_run_keep_the_quarantine_and_publish_nothing() {
    let project = taxi_project(|t| t);
    let good = generate(project.path(), "good.csv", 100, 3);
    let text = std::fs::read_to_string(&good).unwrap();
    // Negative fares on 60 of 100 rows: 60% invalid, above the example's 40% threshold.
    let mut lines: Vec<String> = text.lines().map(String::from).collect();
    for line in lines.iter_mut().skip(1).take(60) {
        let mut fields: Vec<String> = line.split(',').map(String::from).collect();
        fields[14] = "-5.00".into();
        *line = fields.join(",");
    }
    let server = Server::start(project.path());
    server.put_bytes(
        "raw",
        "landing/2024/01/bad.csv",
        (lines.join("\n") + "\n").as_bytes(),
    );
    let status = server.wait_idle(Duration::from_secs(120));
    assert_eq!(status["jobs"]["dead"], 1, "{status}");
    let (valid, quarantined) = count_for(&server, "raw/landing/2024/01/bad.csv");
    assert_eq!(valid, 0);
    assert!(quarantined >= 60, "{quarantined}");
    let run = &server.runs()[0];
    assert_eq!(run["status"], "failed");
    let error = run["error"].as_str().unwrap();
    assert!(error.contains("above the threshold of 40%"), "{error}");
    let (ok, out, _) = server.cli(&["dlq", "list"]);
    assert!(ok);
    assert!(out.contains("above the threshold"), "{out}");
    assert!(out.contains("raw/landing/2024/01/bad.csv"), "{out}");
}

#[test]
fn a_missing_input_is_retried_with_backoff_then_dead_lettered_then_replayed() {
    let project = taxi_project(|t| t + &failing_reports_pipeline("100ms", "1s"));
    let server = Server::start(project.path());
    server.put_bytes("raw", "reports/go.txt", b"go");
    let status = server.wait_idle(Duration::from_secs(60));
    assert_eq!(status["jobs"]["dead"], 1, "{status}");
    let runs = server.runs();
    let attempts: Vec<_> = runs.iter().filter(|r| r["pipeline"] == "reports").collect();
    assert_eq!(attempts.len(), 3, "{attempts:#?}");
    for r in &attempts {
        assert_eq!(r["status"], "failed");
        assert!(
            r["error"].as_str().unwrap().contains("daily_revenue"),
            "{r}"
        );
    }
    // Backoff: the attempts are spread out, not back to back.
    let first =
        chrono::DateTime::parse_from_rfc3339(attempts[2]["started_at"].as_str().unwrap()).unwrap();
    let last =
        chrono::DateTime::parse_from_rfc3339(attempts[0]["started_at"].as_str().unwrap()).unwrap();
    assert!(
        (last - first).num_milliseconds() >= 150,
        "attempts {first} .. {last}"
    );

    // The input appears (a taxi file makes gold.daily_revenue), then the dead job is replayed.
    let trips = generate(project.path(), "t.csv", 300, 4);
    server.put_file("raw", "landing/2024/01/t.csv", &trips);
    server.wait_idle(Duration::from_secs(120));
    let (ok, out, _) = server.cli(&["dlq", "list"]);
    assert!(ok, "{out}");
    let job = out
        .lines()
        .find(|l| l.contains("reports"))
        .and_then(|l| {
            l.split_whitespace()
                .find(|w| w.len() == 36 && w.matches('-').count() == 4)
        })
        .unwrap_or_else(|| panic!("no job id in {out}"))
        .to_string();
    let (ok, out, err) = server.cli(&["dlq", "replay", &job]);
    assert!(ok, "{out}{err}");
    let deadline = Instant::now() + Duration::from_secs(60);
    while server.status()["jobs"]["dead"] != 0 || server.status()["jobs"]["pending"] != 0 {
        assert!(
            Instant::now() < deadline,
            "replay did not finish: {}",
            server.status()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    server.wait_idle(Duration::from_secs(60));
    assert!(as_i64(&server.scalar("SELECT days FROM gold.weekly")) >= 1);
    let (ok, out, _) = server.cli(&["dlq", "replay", &job]);
    assert!(!ok, "a replayed job cannot be replayed twice: {out}");
}

#[test]
fn kill_minus_nine_during_an_ingest_loses_and_duplicates_nothing() {
    let project = taxi_project(|t| t);
    let rows = 300_000;
    let file = generate(project.path(), "big.csv", rows, 5);
    let object = "raw/landing/2024/01/big.csv";
    let mut server = Server::start(project.path());
    server.put_file("raw", "landing/2024/01/big.csv", &file);
    // Kill at three different points of the run: early, later, and (maybe) around the commit.
    for delay_ms in [100u64, 700, 1500] {
        server.wait_for_a_running_job();
        std::thread::sleep(Duration::from_millis(delay_ms));
        server.kill9();
        server = Server::start(project.path());
    }
    let status = server.wait_idle(Duration::from_secs(300));
    assert_eq!(status["jobs"]["dead"], 0, "{status}");
    let (valid, quarantined) = count_for(&server, object);
    assert_eq!(
        valid + quarantined,
        rows as i64,
        "{valid} valid + {quarantined} quarantined"
    );
    assert_eq!(
        as_i64(&server.scalar("SELECT count(DISTINCT trip_id) FROM silver.trips")),
        valid
    );
    assert_eq!(
        as_i64(&server.scalar(&format!(
            "SELECT count(DISTINCT line) FROM sluice.quarantine WHERE source_object = '{object}'"
        ))),
        quarantined
    );
    // The lines of silver and quarantine together are exactly the file's lines.
    let lines = as_i64(&server.scalar(&format!(
        "SELECT count(*) FROM (SELECT _source_line AS l FROM silver.trips UNION SELECT line FROM sluice.quarantine WHERE source_object = '{object}')"
    )));
    assert_eq!(lines, rows as i64);
}

#[test]
fn parquet_and_json_lines_give_the_same_rows_as_csv() {
    let project = taxi_project(|t| {
        t.replace("suffix = \".csv\"\n", "")
            .replace("max_invalid_pct = 40", "max_invalid_pct = 100")
    });
    let csv = shared_data("nyc_tlc/yellow_tripdata_2019-06_sample.csv");
    let dir = project.path();
    // DuckDB writes the other formats from the same CSV (timestamps typed in Parquet, text in JSON).
    let script = format!(
        "import duckdb; c = duckdb.connect(); c.execute(\"CREATE TABLE t AS SELECT * FROM read_csv('{}')\"); \
         c.execute(\"COPY t TO '{}' (FORMAT parquet)\"); c.execute(\"COPY t TO '{}' (FORMAT json)\")",
        csv.display(),
        dir.join("sample.parquet").display(),
        dir.join("sample.jsonl").display()
    );
    let out = std::process::Command::new("python3")
        .args(["-c", &script])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let server = Server::start(dir);
    server.put_file("raw", "landing/csv/yellow_tripdata_2019-06.csv", &csv);
    server.put_file(
        "raw",
        "landing/parquet/yellow_tripdata_2019-06.parquet",
        &dir.join("sample.parquet"),
    );
    server.put_file(
        "raw",
        "landing/json/yellow_tripdata_2019-06.jsonl",
        &dir.join("sample.jsonl"),
    );
    let status = server.wait_idle(Duration::from_secs(120));
    assert_eq!(status["jobs"]["dead"], 0, "{status} {:#?}", server.runs());
    let per_format = |prefix: &str| {
        let object = format!("raw/landing/{prefix}");
        (
            count_for(&server, &object),
            server.query(&format!(
                "SELECT reason_code AS r, count(*) AS n FROM sluice.quarantine WHERE source_object = '{object}' GROUP BY 1 ORDER BY 1"
            )),
            server.scalar(&format!(
                "SELECT CAST(sum(total_amount) AS VARCHAR) FROM silver.trips WHERE _source_object = '{object}'"
            )),
        )
    };
    let csv_result = per_format("csv/yellow_tripdata_2019-06.csv");
    assert_eq!(csv_result.0, (946, 54));
    assert_eq!(
        per_format("parquet/yellow_tripdata_2019-06.parquet"),
        csv_result
    );
    assert_eq!(per_format("json/yellow_tripdata_2019-06.jsonl"), csv_result);
}

#[test]
fn bronze_keeps_every_raw_version_and_the_watched_folder_uploads_files() {
    let project = taxi_project(|t| {
        t + "\n[watch]\ndir = \"inbox\"\nbucket = \"raw\"\nprefix = \"landing/2024/01/\"\n"
    });
    let server = Server::start(project.path());
    let inbox = project.path().join("inbox");
    let first = generate(project.path(), "gen1.csv", 500, 8);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !inbox.exists() {
        assert!(
            Instant::now() < deadline,
            "the watched folder was not created"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    std::fs::copy(&first, inbox.join("dropped.csv")).unwrap();
    let object = "raw/landing/2024/01/dropped.csv";
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let n = as_i64(&server.scalar(
            "SELECT count(*) FROM sluice.events WHERE key = 'landing/2024/01/dropped.csv'",
        ));
        if n == 1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the dropped file was not uploaded"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    server.wait_idle(Duration::from_secs(60));
    assert!(inbox.join(".done/dropped.csv").exists());
    assert!(!inbox.join("dropped.csv").exists());
    let (v, q) = count_for(&server, object);
    assert_eq!(v + q, 500);

    // A second version of the same key: bronze keeps both, byte for byte.
    let second = generate(project.path(), "gen2.csv", 300, 9);
    server.put_file("raw", "landing/2024/01/dropped.csv", &second);
    server.wait_idle(Duration::from_secs(60));
    let archived = server.query(
        "SELECT source_object, sha256, size, path FROM bronze.trips_raw ORDER BY archived_at",
    );
    assert_eq!(archived.len(), 2, "{archived:?}");
    for (row, file) in archived.iter().zip([&first, &second]) {
        assert_eq!(row["source_object"], object);
        let kept = std::fs::read(
            project
                .path()
                .join(".sluice")
                .join(row["path"].as_str().unwrap()),
        )
        .unwrap();
        assert_eq!(kept, std::fs::read(file).unwrap());
    }
}

#[test]
fn a_contract_change_that_breaks_the_schema_needs_a_new_version() {
    let project = taxi_project(|t| t);
    let toml = project.path().join("sluice.toml");
    {
        let server = Server::start(project.path());
        server.put_file(
            "raw",
            "landing/2024/01/a.csv",
            &generate(project.path(), "a.csv", 100, 10),
        );
        server.wait_idle(Duration::from_secs(60));
    }
    let text = std::fs::read_to_string(&toml).unwrap();
    let changed = text.replace(
        "name = \"passenger_count\"\ntype = \"int\"",
        "name = \"passenger_count\"\ntype = \"float\"",
    );
    assert_ne!(text, changed);
    std::fs::write(&toml, &changed).unwrap();
    let (ok, _, err) = cli(&toml, &["up", "--http-port", "0"]);
    assert!(!ok);
    assert!(err.contains("table trips: the contract changes the stored schema of version 1 (column passenger_count: Int64 -> Float64); raise `schema_version` to 2"), "{err}");
    // Declared as a new version, it starts a new table beside the old one.
    std::fs::write(
        &toml,
        changed.replace(
            "owner = \"data-engineering\"",
            "owner = \"data-engineering\"\nschema_version = 2",
        ),
    )
    .unwrap();
    let server = Server::start(project.path());
    server.put_file(
        "raw",
        "landing/2024/01/b.csv",
        &generate(project.path(), "b.csv", 100, 11),
    );
    server.wait_idle(Duration::from_secs(60));
    assert!(as_i64(&server.scalar("SELECT count(*) FROM silver.trips")) > 80);
    assert!(
        project
            .path()
            .join(".sluice/lake/silver/trips_v2/_delta_log")
            .exists()
    );
    let (ok, out, _) = server.cli(&["describe", "trips"]);
    assert!(ok);
    assert!(
        out.contains("version 1 registered") && out.contains("version 2 registered"),
        "{out}"
    );
}

#[test]
fn ctrl_c_releases_the_job_in_flight_and_the_next_start_finishes_it() {
    let project = taxi_project(|t| t);
    let rows = 300_000;
    let file = generate(project.path(), "big.csv", rows, 12);
    let object = "raw/landing/2024/01/graceful.csv";
    let mut server = Server::start(project.path());
    server.put_file("raw", "landing/2024/01/graceful.csv", &file);
    server.wait_for_a_running_job();
    let pid = server.child.id().to_string();
    assert!(
        std::process::Command::new("kill")
            .args(["-INT", &pid])
            .status()
            .unwrap()
            .success()
    );
    let status = server.child.wait().unwrap();
    assert!(status.success(), "sluice up exited with {status} on SIGINT");
    let log = std::fs::read_to_string(project.path().join("sluice.log")).unwrap();
    let released = log.contains("job released");
    server = Server::start(project.path());
    server.wait_idle(Duration::from_secs(300));
    let (valid, quarantined) = count_for(&server, object);
    assert_eq!(valid + quarantined, rows as i64, "released: {released}");
    assert_eq!(
        as_i64(&server.scalar("SELECT count(DISTINCT trip_id) FROM silver.trips")),
        valid
    );
    let (ok, out, _) = server.cli(&["tables"]);
    assert!(ok);
    assert!(
        out.contains("silver.trips") && out.contains(&valid.to_string()),
        "{out}"
    );
}
