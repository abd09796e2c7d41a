//! The benchmark harness (`bench/run`) at its toy size, as CI runs it: every case against
//! the real peers (DuckDB and Polars from PyPI) with this build's binary. Nothing here
//! asserts a time; it asserts that the harness still measures what it says it measures.

use std::process::Command;

use serde_json::Value;

use crate::support::{BIN, repo_root};

#[test]
fn the_benchmark_harness_runs_every_case_and_the_engines_agree() {
    let work = tempfile::tempdir().unwrap();
    let out = work.path().join("benchmarks.md");
    std::fs::write(
        &out,
        "# Benchmarks\n\nbefore\n\n<!-- bench/run: begin -->\nold\n<!-- bench/run: end -->\n\nafter\n",
    )
    .unwrap();
    let run = Command::new("python3")
        .arg(repo_root().join("bench").join("run"))
        .args(["--tiny", "--no-install", "--bin", BIN, "--work"])
        .arg(work.path().join("scratch"))
        .arg("--out")
        .arg(&out)
        .output()
        .expect("running python3 bench/run");
    assert!(
        run.status.success(),
        "bench/run failed:\n{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let raw: Value = serde_json::from_str(
        &std::fs::read_to_string(work.path().join("benchmarks.json")).unwrap(),
    )
    .unwrap();
    let results = &raw["results"];
    assert!(
        results.get("failed").is_none(),
        "a case failed: {}",
        results["failed"]
    );
    for case in [
        "ingest",
        "memory",
        "freshness",
        "small_files",
        "query",
        "startup",
    ] {
        assert!(!results[case].is_null(), "case {case} has no results");
    }

    // The three engines apply the same contract to the same file: they keep the same rows,
    // some of the generated dirt rejected and most rows kept.
    let ingest = &results["ingest"];
    let kept = &ingest["valid_rows"];
    let sluice = kept["sluice"].as_i64().unwrap();
    let rows = ingest["rows"].as_i64().unwrap();
    assert!(
        sluice > rows * 9 / 10 && sluice < rows,
        "rows kept: {kept} of {rows}"
    );
    assert_eq!(kept["duckdb"].as_i64(), Some(sluice), "DuckDB kept {kept}");
    assert_eq!(kept["polars"].as_i64(), Some(sluice), "Polars kept {kept}");
    // The yardstick (arrow-csv's bare decode, an example built beside the binary) ran.
    assert!(
        ingest["arrow_csv_decode_mb_s"].as_f64().unwrap_or(0.0) > 0.0,
        "no arrow-csv yardstick: {ingest}"
    );

    // Each query's time counts only with the same answer from both engines.
    let queries = results["query"]["queries"].as_object().unwrap();
    assert_eq!(queries.len(), 5);
    let runs = results["query"]["runs"].as_u64().unwrap() as usize;
    for (name, q) in queries {
        assert_eq!(q["same_answer"], Value::Bool(true), "{name}: {q}");
        // Each engine timed each query as many times, their runs alternating.
        for engine in ["sluice", "duckdb"] {
            let times = q[engine].as_array().unwrap();
            assert_eq!(times.len(), runs, "{name}: {engine}'s runs {q}");
            assert!(
                times.iter().all(|t| t.as_f64().unwrap() > 0.0),
                "{name}: {q}"
            );
        }
        assert!(q["rows"].as_u64().unwrap() > 0, "{name} answered no rows");
    }

    // Every object put in the freshness case became visible; compaction succeeded.
    for phase in ["sequential", "concurrent"] {
        assert_eq!(results["freshness"][phase].as_array().unwrap().len(), 5);
    }
    assert_eq!(results["small_files"]["compact_ok"], Value::Bool(true));
    // The vacuum after it deleted the files the compactions retired, and only those: what
    // is left on disk is the table's active files.
    let small = &results["small_files"];
    assert_eq!(small["vacuum_ok"], Value::Bool(true), "{small}");
    let on_disk = |k: &str| small[k][0].as_u64().unwrap();
    assert_eq!(
        on_disk("disk_before_vacuum") - on_disk("disk_after_vacuum"),
        small["vacuum"]["files"].as_u64().unwrap(),
        "{small}"
    );
    assert_eq!(
        on_disk("disk_after_vacuum"),
        small["files_after"].as_u64().unwrap(),
        "{small}"
    );

    // The report replaced what stood between its markers and kept the rest of the page.
    let report = std::fs::read_to_string(&out).unwrap();
    for heading in [
        "### 1. Ingest",
        "### 2. Memory",
        "### 3. Freshness",
        "### 4. Small files",
        "### 5. Queries",
        "### 6. Start-up",
    ] {
        assert!(report.contains(heading), "the report lacks {heading}");
    }
    assert!(report.starts_with("# Benchmarks\n\nbefore\n") && report.ends_with("\nafter\n"));
    assert!(
        !report.contains("\nold\n"),
        "the old block stayed:\n{report}"
    );
}
