//! Reference workload 1 on the real TLC files: every schema from 2009 to 2019 into one silver table.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::support::*;

const FILES: [&str; 9] = [
    "yellow_tripdata_2009-01.csv",
    "yellow_tripdata_2012-06.csv",
    "yellow_tripdata_2014-03.csv",
    "yellow_tripdata_2015-01.csv",
    "yellow_tripdata_2016-09.csv",
    "yellow_tripdata_2017-06.csv",
    "green_tripdata_2014-05.csv",
    "green_tripdata_2016-09.csv",
    "yellow_tripdata_2019-06_sample.csv",
];

/// (valid, quarantined) per file. Cross-checked by hand against the raw files (awk): the
/// 2019 sample has 16 pickups from May, 29 rows with passenger_count 0 and 1 negative fare
/// (30 below_min); the 2017 file has 3 dropoffs not after pickup; the 2012-2015 and green
/// 2014 files carry coordinates at 0.
const EXPECTED: [(&str, i64, i64); 9] = [
    ("yellow_tripdata_2009-01.csv", 97, 1),
    ("yellow_tripdata_2012-06.csv", 92, 6),
    ("yellow_tripdata_2014-03.csv", 95, 3),
    ("yellow_tripdata_2015-01.csv", 96, 3),
    ("yellow_tripdata_2016-09.csv", 98, 1),
    ("yellow_tripdata_2017-06.csv", 94, 4),
    ("green_tripdata_2014-05.csv", 79, 18),
    ("green_tripdata_2016-09.csv", 95, 3),
    ("yellow_tripdata_2019-06_sample.csv", 946, 54),
];

/// Quarantined rows per (file, reason) for the files whose reasons were checked by hand.
const EXPECTED_REASONS: [(&str, &str, i64); 6] = [
    ("yellow_tripdata_2019-06_sample.csv", "below_min", 30),
    ("yellow_tripdata_2019-06_sample.csv", "outside_month", 16),
    ("yellow_tripdata_2019-06_sample.csv", "zero_distance", 6),
    (
        "yellow_tripdata_2019-06_sample.csv",
        "duration_out_of_range",
        2,
    ),
    ("yellow_tripdata_2017-06.csv", "dropoff_before_pickup", 3),
    ("green_tripdata_2014-05.csv", "above_max", 16),
];

fn data_rows(file: &str) -> i64 {
    let text = std::fs::read_to_string(shared_data(&format!("nyc_tlc/{file}"))).unwrap();
    text.lines().filter(|l| !l.trim().is_empty()).count() as i64 - 1
}

#[test]
fn every_real_tlc_file_lands_in_silver_trips_exactly() {
    let project = taxi_project(|t| t.replace("max_invalid_pct = 40", "max_invalid_pct = 100"));
    let server = Server::start(project.path());
    server.put_file(
        "raw",
        "reference/taxi_zone_lookup.csv",
        &shared_data("nyc_tlc/taxi_zone_lookup.csv"),
    );
    server.wait_idle(Duration::from_secs(120));
    for file in FILES {
        let resp = server.put_file(
            "raw",
            &format!("landing/{file}"),
            &shared_data(&format!("nyc_tlc/{file}")),
        );
        assert_eq!(resp["jobs"], 1, "{resp}");
    }
    let status = server.wait_idle(Duration::from_secs(300));
    assert_eq!(
        status["jobs"]["dead"],
        0,
        "{status}; runs: {:#?}",
        server.runs()
    );

    assert_eq!(
        as_i64(&server.scalar("SELECT count(*) FROM silver.zones")),
        265
    );

    let valid: BTreeMap<String, i64> = server
        .query("SELECT _source_object AS o, count(*) AS n FROM silver.trips GROUP BY 1")
        .iter()
        .map(|r| {
            (
                r["o"]
                    .as_str()
                    .unwrap()
                    .trim_start_matches("raw/landing/")
                    .to_string(),
                as_i64(&r["n"]),
            )
        })
        .collect();
    let quarantined: BTreeMap<String, i64> = server
        .query("SELECT source_object AS o, count(*) AS n FROM sluice.quarantine WHERE table_name = 'trips' GROUP BY 1")
        .iter()
        .map(|r| (r["o"].as_str().unwrap().trim_start_matches("raw/landing/").to_string(), as_i64(&r["n"])))
        .collect();
    let mut report = Vec::new();
    for file in FILES {
        let v = valid.get(file).copied().unwrap_or(0);
        let q = quarantined.get(file).copied().unwrap_or(0);
        report.push(format!("(\"{file}\", {v}, {q}),"));
        // No row lost or duplicated: every data line of the file is valid or quarantined, once.
        assert_eq!(
            v + q,
            data_rows(file),
            "{file}: {v} valid + {q} quarantined"
        );
    }
    let report = report.join("\n");
    for (file, v, q) in EXPECTED {
        let got = (
            valid.get(file).copied().unwrap_or(0),
            quarantined.get(file).copied().unwrap_or(0),
        );
        assert_eq!(got, (v, q), "{file}; all files now:\n{report}");
    }

    for (file, reason, n) in EXPECTED_REASONS {
        let got = as_i64(&server.scalar(&format!(
            "SELECT count(*) FROM sluice.quarantine WHERE source_object = 'raw/landing/{file}' AND reason_code = '{reason}'"
        )));
        assert_eq!(got, n, "{file} {reason}");
    }

    // The oracle: DuckDB over the Parquet files the Delta log says are active.
    let table_dir = project.path().join(".sluice/lake/silver/trips");
    let oracle = duckdb_oracle(
        &table_dir,
        "SELECT _source_object AS o, count(*) AS n, sum(total_amount) AS total, sum(fare_amount) AS fare FROM t GROUP BY 1 ORDER BY 1",
    );
    let ours = server.query(
        "SELECT _source_object AS o, count(*) AS n, sum(total_amount) AS total, sum(fare_amount) AS fare FROM silver.trips GROUP BY 1 ORDER BY 1",
    );
    assert_eq!(oracle.as_array().unwrap().len(), ours.len());
    for (a, b) in oracle.as_array().unwrap().iter().zip(&ours) {
        assert_eq!(a["o"], b["o"]);
        assert_eq!(as_i64(&a["n"]), as_i64(&b["n"]), "{a} vs {b}");
        assert!(
            (as_f64(&a["total"]) - as_f64(&b["total"])).abs() < 0.005,
            "{a} vs {b}"
        );
        assert!(
            (as_f64(&a["fare"]) - as_f64(&b["fare"])).abs() < 0.005,
            "{a} vs {b}"
        );
    }

    // Partitions are year/month/date and match the pickup time in New York.
    let bad_partition = server.scalar(
        "SELECT count(*) FROM silver.trips WHERE date <> CAST(pickup_at_local AS DATE) OR year <> date_part('year', pickup_at_local)",
    );
    assert_eq!(as_i64(&bad_partition), 0);
    let dirs = std::fs::read_dir(&table_dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("year="))
        .count();
    assert!(
        dirs >= 5,
        "expected a year= directory per year, found {dirs}"
    );

    // Gold models were recomputed from silver.
    let gold_trips = as_i64(&server.scalar("SELECT sum(trips) FROM gold.daily_revenue"));
    assert_eq!(gold_trips, valid.values().sum::<i64>());
    let zone_trips = as_i64(&server.scalar("SELECT sum(trips) FROM gold.zone_revenue"));
    let with_zone = as_i64(
        &server.scalar("SELECT count(*) FROM silver.trips WHERE pu_location_id IS NOT NULL"),
    );
    assert_eq!(zone_trips, with_zone);
}

#[test]
fn quarantine_reasons_are_the_ones_a_person_would_give() {
    let project = taxi_project(|t| t.replace("max_invalid_pct = 40", "max_invalid_pct = 100"));
    let server = Server::start(project.path());
    let file = "yellow_tripdata_2019-06_sample.csv";
    server.put_file(
        "raw",
        &format!("landing/{file}"),
        &shared_data(&format!("nyc_tlc/{file}")),
    );
    server.wait_idle(Duration::from_secs(120));
    let reasons: BTreeMap<String, i64> = server
        .query("SELECT reason_code AS r, count(*) AS n FROM sluice.quarantine GROUP BY 1")
        .iter()
        .map(|r| (r["r"].as_str().unwrap().to_string(), as_i64(&r["n"])))
        .collect();
    // Independent count of zero-distance rows with otherwise plausible values, from the raw text.
    let text = std::fs::read_to_string(shared_data(&format!("nyc_tlc/{file}"))).unwrap();
    let passenger_zero = text
        .lines()
        .skip(1)
        .filter(|l| l.split(',').nth(3) == Some("0"))
        .count() as i64;
    assert!(
        reasons.get("below_min").copied().unwrap_or(0) >= 1,
        "{reasons:?}"
    );
    assert!(passenger_zero > 0);
    let runs = server.runs();
    let run = runs.iter().find(|r| r["pipeline"] == "taxi").unwrap();
    let step = &run["detail"]["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["step"] == "ingest")
        .unwrap()
        .clone();
    let per_reason: i64 = step["quarantine_reasons"]
        .as_object()
        .unwrap()
        .values()
        .map(as_i64)
        .sum();
    assert_eq!(per_reason, as_i64(&run["rows_quarantined"]));
    // The previous-month pickup in the sample is caught by the month check.
    let outside =
        server.query("SELECT line, raw FROM sluice.quarantine WHERE reason_code = 'outside_month'");
    assert!(!outside.is_empty(), "{reasons:?}");
    for row in &outside {
        assert!(row["raw"].as_str().unwrap().contains("2019-05"), "{row}");
    }
    // Every quarantined row names a line that exists and carries the raw row.
    let lines = text.lines().count() as i64;
    for row in server.query("SELECT line, raw, reason FROM sluice.quarantine") {
        let line = as_i64(&row["line"]);
        assert!(line >= 2 && line <= lines, "{row}");
        assert!(
            row["raw"]
                .as_str()
                .unwrap()
                .contains("tpep_pickup_datetime"),
            "{row}"
        );
        assert!(!row["reason"].as_str().unwrap().is_empty());
    }
}

/// A source over 4 MiB is parsed on a thread of its own, ahead of validation: every row
/// still lands once, and a quarantined row still names its own line, before and after a
/// malformed row in the middle of the file.
#[test]
fn a_file_parsed_on_its_own_thread_keeps_every_row_and_every_line() {
    let project = taxi_project(|t| t.replace("max_invalid_pct = 40", "max_invalid_pct = 100"));
    let server = Server::start(project.path());
    let file = "yellow_tripdata_2019-06_sample.csv";
    let text = std::fs::read_to_string(shared_data(&format!("nyc_tlc/{file}"))).unwrap();
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    let header = lines.next().unwrap();
    let rows: Vec<&str> = lines.collect();
    // Lines (1-based, header = 1) of the sample's May pickups: the month check's rows.
    let may: Vec<i64> = rows
        .iter()
        .enumerate()
        .filter(|(_, r)| {
            r.split(',')
                .nth(1)
                .is_some_and(|p| p.starts_with("2019-05"))
        })
        .map(|(i, _)| i as i64 + 2)
        .collect();
    assert_eq!(may.len(), 16);
    let (copies, broken_after) = (55usize, 27usize);
    let mut big = String::from(header);
    big.push('\n');
    let mut expected_may = Vec::new();
    let mut line = 1i64;
    for copy in 0..copies {
        if copy == broken_after {
            big.push_str("1,2019-06-03 10:00:00,oops\n");
            line += 1;
        }
        expected_may.extend(may.iter().map(|l| l + line - 1));
        for row in &rows {
            big.push_str(row);
            big.push('\n');
        }
        line += rows.len() as i64;
    }
    assert!(big.len() > 5 << 20, "{} bytes", big.len());
    let broken_line = 1 + (broken_after * rows.len()) as i64 + 1;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big.csv");
    std::fs::write(&path, &big).unwrap();
    server.put_file("raw", "landing/yellow_tripdata_2019-06_big.csv", &path);
    server.wait_idle(Duration::from_secs(300));

    let runs = server.runs();
    let run = runs.iter().find(|r| r["pipeline"] == "taxi").unwrap();
    assert_eq!(run["status"], "succeeded", "{run}");
    assert_eq!(as_i64(&run["rows_in"]), (copies * rows.len()) as i64 + 1);
    assert_eq!(as_i64(&run["rows_valid"]), 946 * copies as i64);
    assert_eq!(as_i64(&run["rows_quarantined"]), 54 * copies as i64 + 1);
    assert_eq!(
        as_i64(&server.scalar("SELECT count(*) FROM silver.trips")),
        946 * copies as i64
    );
    let broken =
        server.query("SELECT line FROM sluice.quarantine WHERE reason_code = 'field_count'");
    assert_eq!(broken.len(), 1);
    assert_eq!(as_i64(&broken[0]["line"]), broken_line);
    let mut outside: Vec<i64> = server
        .query("SELECT line FROM sluice.quarantine WHERE reason_code = 'outside_month'")
        .iter()
        .map(|r| as_i64(&r["line"]))
        .collect();
    outside.sort_unstable();
    expected_may.sort_unstable();
    assert_eq!(outside, expected_may);
}
