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

/// Quarantined rows of silver.trips per source object.
fn quarantine_counts(server: &Server) -> BTreeMap<String, i64> {
    server
        .query(
            "SELECT source_object AS o, count(*) AS n FROM sluice.quarantine \
             WHERE table_name = 'trips' GROUP BY 1",
        )
        .iter()
        .map(|r| (r["o"].as_str().unwrap().to_string(), as_i64(&r["n"])))
        .collect()
}

fn no_duplicate_trips(server: &Server) {
    let dupes = server.query(
        "SELECT trip_id, count(*) AS n FROM silver.trips GROUP BY 1 HAVING count(*) > 1 LIMIT 3",
    );
    assert!(dupes.is_empty(), "duplicated trips: {dupes:?}");
}

/// `OBJECTS` small CSV objects cut from one generated month: `object(i, rows)` is the
/// `i`-th object's first `rows` rows, `key(i)` its key in the landing prefix.
struct Month {
    header: String,
    body: Vec<String>,
}

impl Month {
    fn generate(project: &std::path::Path, seed: u64) -> Month {
        let csv = project.join("month.csv");
        let (ok, _, err) = cli(
            project,
            &[
                "generate",
                "--rows",
                &(OBJECTS * ROWS).to_string(),
                "--seed",
                &seed.to_string(),
                csv.to_str().unwrap(),
            ],
        );
        assert!(ok, "{err}");
        let text = std::fs::read_to_string(&csv).unwrap();
        let mut lines = text.lines().map(String::from);
        let header = lines.next().unwrap();
        Month {
            header,
            body: lines.collect(),
        }
    }

    fn object(&self, i: usize, rows: usize) -> String {
        let mut s = format!("{}\n", self.header);
        for l in &self.body[i * ROWS..i * ROWS + rows] {
            s.push_str(l);
            s.push('\n');
        }
        s
    }

    fn key(i: usize) -> String {
        format!("landing/2024/01/part-{i:02}.csv")
    }
}

/// Replacing object 3 (half its rows), removing object 5 and sending object 7 again
/// unchanged touch exactly those objects' rows, whatever files the rows share.
fn replace_remove_and_resend_touch_exactly_their_rows(
    server: &Server,
    month: &Month,
    trips: &std::path::Path,
    before: &BTreeMap<String, i64>,
) {
    let key = Month::key;
    server.put_bytes("raw", &key(3), month.object(3, ROWS / 2).as_bytes());
    server.delete("raw", &key(5));
    server.put_bytes("raw", &key(7), month.object(7, ROWS).as_bytes());
    server.wait_idle(Duration::from_secs(120));
    let after = counts(server);
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
    for (object, n) in before {
        if object != &o(3) && object != &o(5) {
            assert_eq!(after.get(object), Some(n), "{object} must be untouched");
        }
    }
    assert_eq!(oracle_counts(trips), after);
    no_duplicate_trips(server);
    // Every row sent is once in silver or once in the quarantine, whatever files the
    // quarantined rows share: the replaced object's earlier rows and the removed
    // object's are gone from both.
    let quarantined = quarantine_counts(server);
    assert!(!quarantined.contains_key(&o(5)), "{quarantined:?}");
    for i in (0..OBJECTS).filter(|&i| i != 5) {
        let sent = if i == 3 { ROWS / 2 } else { ROWS };
        let kept = after.get(&o(i)).copied().unwrap_or(0);
        let held = quarantined.get(&o(i)).copied().unwrap_or(0);
        assert_eq!(
            kept + held,
            sent as i64,
            "{}: {kept} valid, {held} quarantined",
            o(i)
        );
    }
}

#[test]
fn small_objects_are_compacted_and_each_object_still_replaces_and_removes_exactly_its_rows() {
    let project = taxi_project(|t| t);
    let month = Month::generate(project.path(), 7);
    let key = Month::key;
    let trips = project.path().join(".sluice/lake/silver/trips");

    let server = Server::start(project.path());
    // One object at a time (objects queued together would share files and commits, see
    // below): each writes its own small files, 31 per object.
    for i in 0..OBJECTS {
        server.put_bytes("raw", &key(i), month.object(i, ROWS).as_bytes());
        server.wait_idle(Duration::from_secs(120));
    }
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

    // The quarantine's small files (a tail flush's each) merge the same way, rows unchanged.
    let quarantine = project.path().join(".sluice/lake/sluice/quarantine");
    let quarantined = quarantine_counts(&server);
    let files_before = active_files(&quarantine);
    let (status, report) = server.post("/v1/tables/quarantine/compact");
    assert_eq!(status, 200, "{report}");
    let files_after = active_files(&quarantine);
    assert!(
        files_after < files_before && files_after == 1,
        "{files_before} -> {files_after} quarantine files: {report}"
    );
    assert_eq!(quarantine_counts(&server), quarantined);

    // Replacing an object whose rows now share files with others replaces exactly its rows.
    replace_remove_and_resend_touch_exactly_their_rows(&server, &month, &trips, &before);

    vacuum_deletes_only_retired_files(&server, &trips, &before_vacuum(&server));

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

/// Parquet files on disk under a table's directory (committed or not).
fn parquet_on_disk(table_dir: &std::path::Path) -> usize {
    let mut n = 0;
    let mut dirs = vec![table_dir.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "parquet") {
                n += 1;
            }
        }
    }
    n
}

/// Waits out background compactions (their files are not committed until they end), then
/// the rows per object as SQL sees them. Settled means no compaction running and no tail
/// entry waiting for its flush, twice in a row 100 ms apart: a flush or a compaction in
/// flight has files on disk that no commit names yet, which the vacuum's count of retired
/// files rightly leaves out (a flush's last commit can also start a compaction).
fn before_vacuum(server: &Server) -> BTreeMap<String, i64> {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let busy = || {
        let status = server.status();
        status["compacting"]
            .as_array()
            .is_some_and(|c| !c.is_empty())
            || status["tails"].as_object().is_some_and(|t| !t.is_empty())
    };
    let mut quiet = 0;
    while quiet < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "compactions and tail flushes never ended: {}",
            server.status()
        );
        quiet = if busy() { 0 } else { quiet + 1 };
        std::thread::sleep(Duration::from_millis(100));
    }
    counts(server)
}

/// Vacuum beside a running server: a dry run lists the files compaction and the
/// replacements retired and deletes nothing; the vacuum deletes exactly those, and every
/// row still answers, in sluice's SQL and in DuckDB over the Delta log's files.
fn vacuum_deletes_only_retired_files(
    server: &Server,
    trips: &std::path::Path,
    before: &BTreeMap<String, i64>,
) {
    let on_disk = parquet_on_disk(trips);
    let active = active_files(trips);
    assert!(
        on_disk > active,
        "compaction left retired files: {on_disk} on disk, {active} active"
    );

    // The table's own retention (seven days) keeps them all.
    let (status, kept) = server.post("/v1/tables/trips/vacuum");
    assert_eq!(status, 200, "{kept}");
    assert_eq!(kept["files"], 0, "{kept}");
    assert_eq!(kept["retention_s"], 7 * 24 * 3600, "{kept}");

    let (status, dry) = server.post("/v1/tables/trips/vacuum?retain=0s&dry_run=true");
    assert_eq!(status, 200, "{dry}");
    assert_eq!(dry["files"], on_disk - active, "{dry}");
    assert_eq!(parquet_on_disk(trips), on_disk, "a dry run deletes nothing");

    let (status, done) = server.post("/v1/tables/trips/vacuum?retain=0s");
    assert_eq!(status, 200, "{done}");
    assert_eq!(done["files"], dry["files"], "{done}");
    assert_eq!(done["bytes"], dry["bytes"], "{done}");
    assert_eq!(parquet_on_disk(trips), active);
    assert_eq!(&counts(server), before);
    assert_eq!(&oracle_counts(trips), before);

    // The quarantine's files retired by its compaction go the same way, its rows stay.
    let quarantined = quarantine_counts(server);
    let (status, q) = server.post("/v1/tables/quarantine/vacuum?retain=0s");
    assert_eq!(status, 200, "{q}");
    assert!(q["files"].as_u64().unwrap() > 0, "{q}");
    assert_eq!(quarantine_counts(server), quarantined);

    // The CLI vacuums beside the server too; a second vacuum finds nothing.
    let (ok, out, err) = server.cli(&["vacuum", "trips", "--retain", "0s"]);
    assert!(ok, "{err}");
    assert!(out.contains("trips: deleted 0 files"), "{out}");
    let (ok, _, err) = server.cli(&["vacuum", "trips", "--retain", "soon"]);
    assert!(!ok);
    assert!(err.contains("--retain \"soon\""), "{err}");
    let (status, body) = server.post("/v1/tables/trips_raw/vacuum");
    assert_eq!(status, 400, "{body}");
    let (status, body) = server.post("/v1/tables/trips/vacuum?retain=soon");
    assert_eq!(status, 400, "{body}");
}

/// `sluice up` vacuums by itself on `[server] vacuum_interval`, at each table's `retention`:
/// the files a compaction retired leave the disk, every row stays.
#[test]
fn the_server_vacuums_the_files_compaction_retired_on_its_interval() {
    let project = taxi_project(|t| {
        t.replace("[server]\n", "[server]\nvacuum_interval = \"1s\"\n")
            .replace("[tables.trips]\n", "[tables.trips]\nretention = \"0s\"\n")
    });
    let month = Month::generate(project.path(), 11);
    let trips = project.path().join(".sluice/lake/silver/trips");
    let server = Server::start(project.path());
    // One object at a time: each flush writes its own file per partition.
    for i in 0..3 {
        server.put_bytes("raw", &Month::key(i), month.object(i, ROWS).as_bytes());
        server.wait_idle(Duration::from_secs(120));
    }
    let before = counts(&server);
    assert_eq!(before.len(), 3);
    let (status, report) = server.post("/v1/tables/trips/compact");
    assert_eq!(status, 200, "{report}");
    assert!(report["files_removed"].as_u64().unwrap() > 0, "{report}");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while parquet_on_disk(&trips) > active_files(&trips) {
        assert!(
            std::time::Instant::now() < deadline,
            "retired files still on disk: {} on disk, {} active",
            parquet_on_disk(&trips),
            active_files(&trips)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(counts(&server), before);
    assert_eq!(oracle_counts(&trips), before);
}

/// Commits of a table that published data (appends and replacements), from its log.
fn write_commits(table_dir: &std::path::Path) -> usize {
    log_actions(table_dir)
        .iter()
        .filter(|a| a["commitInfo"]["operation"] == "WRITE")
        .count()
}

#[test]
fn a_burst_of_small_objects_shares_commits_and_files_and_each_object_stays_exactly_once() {
    let project = taxi_project(|t| t);
    let toml = project.path().join("sluice.toml");
    let month = Month::generate(project.path(), 11);
    let trips = project.path().join(".sluice/lake/silver/trips");
    // Queued while no worker runs, as a burst of uploads finds the workers busy: the good
    // objects, one file with no usable header and one with 60% invalid rows.
    let put = |name: &str, text: &str, key: &str| {
        let file = project.path().join(name);
        std::fs::write(&file, text).unwrap();
        let (ok, out, err) = cli(
            &toml,
            &["put", file.to_str().unwrap(), &format!("raw/{key}")],
        );
        assert!(ok, "{out}{err}");
    };
    for i in 0..OBJECTS {
        put(
            &format!("part-{i}.csv"),
            &month.object(i, ROWS),
            &Month::key(i),
        );
    }
    put("junk.csv", "what,ever\n1,2\n", "landing/2024/01/junk.csv");
    let mut dirty: Vec<String> = month.object(0, ROWS).lines().map(String::from).collect();
    for line in dirty.iter_mut().skip(1).take(ROWS * 6 / 10) {
        let mut fields: Vec<String> = line.split(',').map(String::from).collect();
        fields[14] = "-5.00".into();
        *line = fields.join(",");
    }
    put(
        "dirty.csv",
        &(dirty.join("\n") + "\n"),
        "landing/2024/01/dirty.csv",
    );

    let server = Server::start(project.path());
    let status = server.wait_idle(Duration::from_secs(300));
    assert_eq!(status["jobs"]["dead"], 2, "{status}");
    let runs = server.runs();
    let object_of = |r: &serde_json::Value| {
        r["detail"]["object"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    for r in &runs {
        let object = object_of(r);
        if object.ends_with("junk.csv") {
            assert_eq!(r["status"], "failed", "{r:#}");
            assert!(r["error"].as_str().unwrap().contains("header"), "{r:#}");
        } else if object.ends_with("dirty.csv") {
            assert_eq!(r["status"], "failed", "{r:#}");
            assert!(
                r["error"].as_str().unwrap().contains("above the threshold"),
                "{r:#}"
            );
        } else {
            assert_eq!(r["status"], "succeeded", "{r:#}");
        }
    }
    // The two bad objects failed alone: every good object's rows are there, once.
    let before = counts(&server);
    assert_eq!(before.len(), OBJECTS, "{before:?}");
    let valid: i64 = runs
        .iter()
        .filter(|r| r["status"] == "succeeded")
        .map(|r| as_i64(&r["rows_valid"]))
        .sum();
    assert_eq!(before.values().sum::<i64>(), valid);
    assert_eq!(oracle_counts(&trips), before);
    no_duplicate_trips(&server);
    // The over-threshold object's quarantined rows are published: they say why it failed.
    let quarantined = as_i64(&server.scalar(
        "SELECT count(*) FROM sluice.quarantine WHERE source_object = 'raw/landing/2024/01/dirty.csv'",
    ));
    assert!(quarantined >= (ROWS * 6 / 10) as i64, "{quarantined}");

    // Batched: far fewer commits and files than one per object.
    let commits = write_commits(&trips);
    assert!(commits <= 4, "{commits} commits for {OBJECTS} objects");
    assert!(
        runs.iter().any(|r| r["detail"]["batch"].as_i64() > Some(1)),
        "{runs:#?}"
    );
    let files = active_files(&trips);
    assert!(files <= 31 * commits, "{files} files in {commits} commits");

    replace_remove_and_resend_touch_exactly_their_rows(&server, &month, &trips, &before);
}
