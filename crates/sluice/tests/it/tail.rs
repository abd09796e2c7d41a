//! A table's write-ahead tail: small objects' rows answer SQL before their Delta commit,
//! survive a kill -9, are counted once while a flush moves them into Delta, and end up
//! in the Delta files every other reader sees.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::support::*;

/// The taxi project with rows waiting `interval` in a tail before their Delta commit.
fn project_flushing_after(interval: &str) -> tempfile::TempDir {
    taxi_project(|t| {
        t.replace(
            "[server]\n",
            &format!("[server]\nflush_interval = \"{interval}\"\n"),
        )
    })
}

fn counts(server: &Server) -> (i64, i64) {
    (
        as_i64(&server.scalar("SELECT count(*) FROM silver.trips")),
        as_i64(&server.scalar("SELECT count(*) FROM sluice.quarantine WHERE table_name = 'trips'")),
    )
}

fn trips_dir(project: &Path) -> PathBuf {
    project.join(".sluice/lake/silver/trips")
}

#[test]
fn rows_answer_sql_from_the_tail_survive_kill_minus_nine_and_reach_delta_once() {
    let project = project_flushing_after("1h");
    let files: Vec<PathBuf> = (0..3)
        .map(|i| generate(project.path(), &format!("t{i}.csv"), 1000, 40 + i))
        .collect();
    let mut server = Server::start(project.path());
    for (i, file) in files.iter().enumerate() {
        server.put_file("raw", &format!("landing/2024/01/t{i}.csv"), file);
    }
    let status = server.wait_jobs(Duration::from_secs(120));
    let (valid, quarantined) = counts(&server);
    assert_eq!(valid + quarantined, 3000, "{status}");
    assert!(valid > 2700, "{valid}");
    // Acknowledged and queryable, but not in the Delta table yet: it is all in the tails.
    assert_eq!(status["tails"]["trips"]["rows"], valid, "{status}");
    assert_eq!(
        status["tails"]["quarantine"]["rows"], quarantined,
        "{status}"
    );
    assert_eq!(active_files(&trips_dir(project.path())), 0);
    let runs = server.runs();
    assert!(runs.iter().all(|r| r["status"] == "succeeded"), "{runs:#?}");

    // A kill -9 loses nothing acknowledged: the tail is read back from disk.
    server.kill9();
    server = Server::start(project.path());
    assert_eq!(counts(&server), (valid, quarantined));
    assert_eq!(
        as_i64(&server.scalar("SELECT count(DISTINCT trip_id) FROM silver.trips")),
        valid
    );

    // The same content again is recognised from the tail's keys: nothing is added.
    server.put_file("raw", "landing/2024/01/t0.csv", &files[0]);
    server.wait_jobs(Duration::from_secs(120));
    assert_eq!(counts(&server), (valid, quarantined));
    assert_eq!(server.runs()[0]["status"], "skipped");

    // New content under a key whose rows wait in the tail: the tail is committed first,
    // then the object's rows are replaced, in silver and in quarantine.
    let replacement = generate(project.path(), "r.csv", 500, 77);
    server.put_file("raw", "landing/2024/01/t1.csv", &replacement);
    let status = server.wait_jobs(Duration::from_secs(120));
    let object = "raw/landing/2024/01/t1.csv";
    let v1 = as_i64(&server.scalar(&format!(
        "SELECT count(*) FROM silver.trips WHERE _source_object = '{object}'"
    )));
    let q1 = as_i64(&server.scalar(&format!(
        "SELECT count(*) FROM sluice.quarantine WHERE source_object = '{object}'"
    )));
    assert_eq!(v1 + q1, 500, "{status}");
    let (valid_now, quarantined_now) = counts(&server);
    assert_eq!(valid_now + quarantined_now, 2500);
    assert!(active_files(&trips_dir(project.path())) > 0);

    // A graceful stop commits what waits; the Delta files alone then hold every row,
    // as DuckDB reads them.
    let pid = server.child.id().to_string();
    let stopped = std::process::Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .unwrap();
    assert!(stopped.success());
    assert!(server.child.wait().unwrap().success());
    let left = sluice_lake::tail::Tail::open(trips_dir(project.path()).join("_sluice_tail"), false)
        .unwrap()
        .capture();
    assert!(
        left.is_empty(),
        "the tail was not emptied on the way out: {left:?}"
    );
    let oracle = duckdb_oracle(
        &trips_dir(project.path()),
        "SELECT count(*) AS n, count(DISTINCT trip_id) AS d FROM t",
    );
    assert_eq!(oracle[0]["n"], valid_now, "{oracle}");
    assert_eq!(oracle[0]["d"], valid_now, "{oracle}");
    server = Server::start(project.path());
    assert_eq!(counts(&server), (valid_now, quarantined_now));
}

#[test]
fn queries_count_each_row_once_while_flushes_move_it_into_delta() {
    let project = project_flushing_after("30ms");
    let files: Vec<PathBuf> = (0..24)
        .map(|i| generate(project.path(), &format!("f{i}.csv"), 200, 100 + i))
        .collect();
    let server = Server::start(project.path());
    let poller = {
        let base = server.base.clone();
        std::thread::spawn(move || {
            let mut seen = Vec::new();
            let deadline = Instant::now() + Duration::from_secs(120);
            loop {
                let body: serde_json::Value = ureq::post(&format!("{base}/v1/query"))
                    .send_json(serde_json::json!({
                        "sql": "SELECT count(*) AS n, count(DISTINCT concat(_source_object, ':', CAST(_source_line AS VARCHAR))) AS d FROM silver.trips"
                    }))
                    .unwrap()
                    .body_mut()
                    .read_json()
                    .unwrap();
                let row = &body["rows"][0];
                let (n, d) = (as_i64(&row["n"]), as_i64(&row["d"]));
                seen.push((n, d));
                if n >= 24 * 150 || Instant::now() > deadline {
                    return seen;
                }
            }
        })
    };
    for (i, file) in files.iter().enumerate() {
        server.put_file("raw", &format!("landing/2024/01/f{i}.csv"), file);
    }
    let status = server.wait_idle(Duration::from_secs(120));
    let (valid, quarantined) = counts(&server);
    assert_eq!(valid + quarantined, 24 * 200, "{status}");
    let seen = poller.join().unwrap();
    // Every answer counted each row once (no row in both the tail and a commit), and no
    // answer lost rows an earlier one had (no row in neither).
    for pair in seen.windows(2) {
        assert!(pair[0].0 <= pair[1].0, "count went back: {pair:?}");
    }
    for (n, d) in &seen {
        assert_eq!(n, d, "a row was counted twice: {seen:?}");
        assert!(*n <= valid, "{n} > {valid}");
    }
    let oracle = duckdb_oracle(&trips_dir(project.path()), "SELECT count(*) AS n FROM t");
    assert_eq!(oracle[0]["n"], valid, "{oracle}");
}

/// A batch's quarantined rows and valid rows are written to their tails at once, so a
/// crash can keep the valid rows' entry without the quarantine's (the object was never
/// acknowledged). Its restart drops that entry, and the object's next ingest adds both
/// instead of skipping it as applied: no quarantined row is lost, no valid row doubled.
#[test]
fn valid_rows_kept_by_a_crash_without_their_quarantined_rows_are_ingested_again() {
    let project = project_flushing_after("1h");
    let file = generate(project.path(), "q.csv", 1000, 61);
    let mut server = Server::start(project.path());
    server.put_file("raw", "landing/2024/01/q.csv", &file);
    let status = server.wait_jobs(Duration::from_secs(120));
    let (valid, quarantined) = counts(&server);
    assert_eq!(valid + quarantined, 1000, "{status}");
    assert!(
        quarantined > 0,
        "the generated object has dirty rows: {status}"
    );
    server.kill9();

    // The crash as the disk could leave it: the quarantine's slot never written.
    let slots = project
        .path()
        .join(".sluice/lake/sluice/quarantine/_sluice_tail");
    let mut cleared = 0;
    for slot in std::fs::read_dir(&slots).unwrap() {
        let path = slot.unwrap().path();
        if path.extension().is_some_and(|e| e == "slot") {
            let mut bytes = std::fs::read(&path).unwrap();
            bytes[..32].fill(0);
            std::fs::write(&path, bytes).unwrap();
            cleared += 1;
        }
    }
    assert_eq!(cleared, 1, "one quarantine entry in {}", slots.display());

    server = Server::start(project.path());
    assert_eq!(
        counts(&server),
        (0, 0),
        "the valid rows' entry is dropped with its quarantined rows gone"
    );
    // The retry (here: the same object put again) ingests it whole.
    server.put_file("raw", "landing/2024/01/q.csv", &file);
    let status = server.wait_jobs(Duration::from_secs(120));
    assert_eq!(counts(&server), (valid, quarantined), "{status}");
    assert_eq!(
        as_i64(&server.scalar("SELECT count(DISTINCT trip_id) FROM silver.trips")),
        valid
    );
    let runs = server.runs();
    assert_eq!(runs[0]["status"], "succeeded", "{runs:#?}");

    // Read back again, both entries stand.
    server.kill9();
    server = Server::start(project.path());
    assert_eq!(counts(&server), (valid, quarantined));
}
