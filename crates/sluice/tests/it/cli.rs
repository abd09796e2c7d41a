//! The command line and the API's answers to bad input.

use std::time::Duration;

use crate::support::*;

#[test]
fn check_reports_every_problem_with_its_position_and_starts_nothing() {
    let project = taxi_project(|t| {
        t.replace(
            "type = \"decimal(10,2)\"\nsource = [\"Fare_Amt\"]",
            "type = \"decmial\"\nsource = [\"Fare_Amt\"]",
        )
        .replace("pipeline = \"zones\"", "pipeline = \"zonez\"")
        .replace("[buckets.raw]", "[buckets.raw]\ncolor = \"blue\"")
    });
    let (ok, out, err) = cli(&project.path().join("sluice.toml"), &["check"]);
    assert!(!ok, "{out}");
    let lines: Vec<&str> = err.lines().collect();
    assert!(
        lines
            .iter()
            .any(|l| l.contains("sluice.toml:11:1: unknown field `buckets.raw.color`")),
        "{err}"
    );
    assert!(
        lines.iter().any(|l| l.contains("unknown type \"decmial\"")),
        "{err}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains("pipeline \"zonez\" is not declared")),
        "{err}"
    );
    assert!(err.contains("3 problem(s)"), "{err}");
    assert!(
        !project.path().join(".sluice").exists(),
        "check must not create state"
    );
    let (ok, _, err) = cli(
        &project.path().join("sluice.toml"),
        &["up", "--http-port", "0"],
    );
    assert!(!ok);
    assert!(err.contains("nothing was started"), "{err}");
}

#[test]
fn bad_expressions_in_a_contract_are_refused_by_check() {
    let project = taxi_project(|t| {
        t.replace(
            "expr = \"trip_distance > 0\"",
            "expr = \"trip_distanse > 0\"",
        )
    });
    let (ok, _, err) = cli(&project.path().join("sluice.toml"), &["check"]);
    assert!(!ok);
    assert!(
        err.contains("table trips: check \"zero_distance\" = trip_distanse > 0"),
        "{err}"
    );
}

#[test]
fn init_writes_a_project_that_checks() {
    let dir = tempfile::tempdir().unwrap();
    let (ok, out, err) = cli(
        &dir.path().join("ignored.toml"),
        &["init", dir.path().to_str().unwrap()],
    );
    assert!(ok, "{out}{err}");
    let (ok, out, err) = cli(&dir.path().join("sluice.toml"), &["check"]);
    assert!(ok, "{out}{err}");
    assert!(
        out.contains(
            "ok (1 buckets, 5 tables, 3 triggers, 2 pipelines, 1 workflows, 1 schedules, 0 rules)"
        ),
        "{out}"
    );
    let (ok, _, err) = cli(
        &dir.path().join("ignored.toml"),
        &["init", dir.path().to_str().unwrap()],
    );
    assert!(!ok && err.contains("already exists"), "{err}");
}

#[test]
fn every_command_has_help_with_an_example() {
    for cmd in [
        vec!["init"],
        vec!["check"],
        vec!["up"],
        vec!["demo"],
        vec!["put"],
        vec!["query"],
        vec!["tables"],
        vec!["describe"],
        vec!["runs"],
        vec!["vacuum"],
        vec!["run", "show"],
        vec!["quarantine", "show"],
        vec!["dlq", "list"],
        vec!["dlq", "replay"],
        vec!["generate"],
        vec!["rules", "test-pattern"],
        vec!["workflow", "run"],
        vec!["workflow", "validate"],
        vec!["workflow", "start"],
        vec!["executions"],
        vec!["execution", "show"],
    ] {
        let mut args = cmd.clone();
        args.push("--help");
        let out = std::process::Command::new(BIN)
            .args(&args)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{cmd:?}");
        assert!(
            text.contains("Example: sluice"),
            "{cmd:?} --help has no example:\n{text}"
        );
    }
}

#[test]
fn a_file_put_while_the_server_is_down_runs_when_it_comes_up() {
    let project = taxi_project(|t| t);
    let toml = project.path().join("sluice.toml");
    let zones = shared_data("nyc_tlc/taxi_zone_lookup.csv");
    let (ok, out, err) = cli(
        &toml,
        &[
            "put",
            zones.to_str().unwrap(),
            "raw/reference/taxi_zone_lookup.csv",
        ],
    );
    assert!(ok, "{out}{err}");
    assert!(out.contains("1 pipeline run(s) queued"), "{out}");
    let server = Server::start(project.path());
    server.wait_idle(Duration::from_secs(60));
    assert_eq!(
        as_i64(&server.scalar("SELECT count(*) FROM silver.zones")),
        265
    );
    let (ok, out, _) = server.cli(&["runs"]);
    assert!(ok);
    assert!(out.contains("zones") && out.contains("succeeded"), "{out}");
    let run_id = server.runs()[0]["run_id"].as_str().unwrap().to_string();
    let (ok, out, _) = server.cli(&["run", "show", &run_id[..13]]);
    assert!(ok, "{out}");
    assert!(out.contains("265 in, 265 valid, 0 quarantined"), "{out}");
    let (ok, out, _) = server.cli(&[
        "query",
        "--format",
        "csv",
        "SELECT borough, count(*) AS n FROM silver.zones GROUP BY 1 ORDER BY 1",
    ]);
    assert!(ok);
    assert!(out.starts_with("borough,n\nBronx,43\n"), "{out}");
}

#[test]
fn bad_requests_get_a_4xx_that_says_why() {
    let project = taxi_project(|t| t);
    let server = Server::start(project.path());
    let put = |bucket: &str, key: &str| {
        let mut resp = ureq::put(&format!("{}/v1/objects/{bucket}/{key}", server.base))
            .config()
            .http_status_as_error(false)
            .build()
            .send(&b"x"[..])
            .unwrap();
        let status = resp.status().as_u16();
        let body: serde_json::Value = resp.body_mut().read_json().unwrap();
        (
            status,
            body["error"].as_str().unwrap_or_default().to_string(),
        )
    };
    // An object reads back byte for byte.
    let body = "id,name\n1,\"café, au lait\"\n".as_bytes();
    server.put_bytes("raw", "misc/x.csv", body);
    let mut resp = ureq::get(&format!("{}/v1/objects/raw/misc/x.csv", server.base))
        .call()
        .unwrap();
    assert_eq!(resp.body_mut().read_to_vec().unwrap(), body);
    let (status, error) = put("raw", "a/%2e%2e/%2e%2e/etc/passwd");
    assert_eq!(status, 400, "{error}");
    assert!(
        error.contains("'.' and '..' segments are not allowed"),
        "{error}"
    );
    let (status, error) = put("nope", "a.csv");
    assert_eq!(status, 404);
    assert!(error.contains("bucket \"nope\" is not declared"), "{error}");
    let (status, error) = server.query_error("SELECT * FROM silver.nope");
    assert_eq!(status, 400);
    assert!(error.contains("nope"), "{error}");
    let (status, error) = server.query_error("SELEC 1");
    assert_eq!(status, 400);
    assert!(error.to_lowercase().contains("selec"), "{error}");
    let (status, error) = server.query_error("SELECT no_such_column FROM silver.zones");
    assert_eq!(status, 400);
    assert!(error.contains("no_such_column"), "{error}");
    let (status, error) = server.query_error("SELECT 1; SELECT 2");
    assert_eq!(status, 400);
    assert!(error.contains("one SQL statement at a time"), "{error}");
}

#[test]
fn the_demo_runs_end_to_end_and_accounts_for_every_dirty_row() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(BIN)
        .args(["demo", "--rows", "5000", "--dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let number_after = |label: &str| -> i64 {
        let line = stdout
            .lines()
            .find(|l| l.trim_start().starts_with(label))
            .unwrap_or_else(|| panic!("no {label:?} in {stdout}"));
        line.split_whitespace().last().unwrap().parse().unwrap()
    };
    assert_eq!(number_after("rows in"), 5000);
    // The project's nightly workflow ran on what the pipelines produced.
    assert!(
        stdout.contains("nightly workflow (flows/nightly.asl.json): SUCCEEDED"),
        "{stdout}"
    );
    let dirt: i64 = stdout
        .lines()
        .find_map(|l| l.trim_start().strip_prefix("dirt generated: "))
        .unwrap()
        .split(", ")
        .map(|part| {
            part.split_whitespace()
                .next()
                .unwrap()
                .parse::<i64>()
                .unwrap()
        })
        .sum();
    // Each generated kind of dirt breaks exactly one rule, so every dirty row is quarantined once.
    assert_eq!(number_after("quarantined"), dirt);
    assert_eq!(number_after("valid"), 5000 - dirt);
    assert!(stdout.contains("gold.daily_revenue"), "{stdout}");
    assert!(
        stdout.contains(&format!("workspace: {}", dir.path().display())),
        "{stdout}"
    );
    // The workspace is a project the CLI can keep exploring.
    let (ok, out, _) = cli(
        &dir.path().join("sluice.toml"),
        &[
            "query",
            "--format",
            "csv",
            "SELECT count(*) AS n FROM silver.trips",
        ],
    );
    assert!(ok);
    assert_eq!(out.trim(), format!("n\n{}", 5000 - dirt));
}
