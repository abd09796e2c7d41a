//! Starting a real `sluice up`, talking to it, and waiting on its state (never on sleeps alone).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub const BIN: &str = env!("CARGO_BIN_EXE_sluice");

/// This crate's directory, as cargo sets it when it runs the test (a binary in a shared
/// target directory may have been built in another checkout).
fn manifest_dir() -> PathBuf {
    PathBuf::from(
        std::env::var("CARGO_MANIFEST_DIR")
            .unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").to_string()),
    )
}

pub fn repo_root() -> PathBuf {
    manifest_dir().join("../..").canonicalize().unwrap()
}

pub fn shared_data(rel: &str) -> PathBuf {
    let p = repo_root().join("../shared/data").join(rel);
    assert!(p.exists(), "test data {} is missing", p.display());
    p
}

/// Writes `rows` generated taxi trips (with the demo's dirt) to `dir/name`, by `sluice generate`.
pub fn generate(dir: &Path, name: &str, rows: usize, seed: u64) -> PathBuf {
    let out = dir.join(name);
    let status = Command::new(BIN)
        .args([
            "generate",
            "--rows",
            &rows.to_string(),
            "--seed",
            &seed.to_string(),
        ])
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
    out
}

/// A project directory holding the NYC taxi example, with `edit` applied to its sluice.toml.
pub fn taxi_project(edit: impl Fn(String) -> String) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let example = repo_root().join("examples/nyc-taxi");
    std::fs::create_dir_all(dir.path().join("models")).unwrap();
    std::fs::create_dir_all(dir.path().join("flows")).unwrap();
    for f in [
        "models/daily_revenue.sql",
        "models/zone_revenue.sql",
        "flows/nightly.asl.json",
    ] {
        std::fs::copy(example.join(f), dir.path().join(f)).unwrap();
    }
    let toml = std::fs::read_to_string(example.join("sluice.toml")).unwrap();
    std::fs::write(dir.path().join("sluice.toml"), edit(toml)).unwrap();
    dir
}

/// Config for a `reports` pipeline, started by any object under `raw/reports/`, whose one
/// step refreshes a model of `gold.daily_revenue`: it fails (and retries after `backoff`,
/// up to `max_backoff`, three attempts) until a taxi file has made that table.
pub fn failing_reports_pipeline(backoff: &str, max_backoff: &str) -> String {
    format!(
        r#"
[tables.weekly]
layer = "gold"
sql = "SELECT count(*) AS days FROM gold.daily_revenue"

[triggers.reports]
on = "object-created"
bucket = "raw"
prefix = "reports/"
pipeline = "reports"

[pipelines.reports]
steps = [{{ refresh = "weekly" }}]
retry = {{ max_attempts = 3, backoff = "{backoff}", max_backoff = "{max_backoff}" }}
"#
    )
}

/// A running `sluice up`; killed on drop.
pub struct Server {
    pub child: Child,
    pub base: String,
    pub s3: String,
    pub project: PathBuf,
}

impl Server {
    pub fn start(project_dir: &Path) -> Server {
        Self::start_with_env(project_dir, &[])
    }

    pub fn start_with_env(project_dir: &Path, env: &[(&str, &str)]) -> Server {
        let project = project_dir.join("sluice.toml");
        let mut child = Command::new(BIN)
            .envs(env.iter().copied())
            .args([
                "up",
                "--http-port",
                "0",
                "--s3-port",
                "0",
                "--workers",
                "2",
                "--log-format",
                "json",
                "-p",
            ])
            .arg(&project)
            .stdout(Stdio::piped())
            .stderr(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(project_dir.join("sluice.log"))
                    .unwrap(),
            )
            .spawn()
            .expect("starting sluice up");
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        let (mut base, mut s3) = (None, None);
        let mut seen = Vec::new();
        while let Some(Ok(line)) = lines.next() {
            if let Some(addr) = line.trim().strip_prefix("http  ") {
                base = Some(addr.trim().to_string());
            }
            if let Some(addr) = line.trim().strip_prefix("s3    ") {
                s3 = Some(addr.trim().to_string());
            }
            if base.is_some() && s3.is_some() {
                break;
            }
            seen.push(line);
        }
        let (Some(base), Some(s3)) = (base, s3) else {
            panic!("sluice up did not print its addresses; printed: {seen:?}");
        };
        // Keep draining stdout so the server never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Server {
            child,
            base,
            s3,
            project,
        }
    }

    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn put_bytes(&self, bucket: &str, key: &str, body: &[u8]) -> Value {
        let mut resp = ureq::put(&format!("{}/v1/objects/{bucket}/{key}", self.base))
            .send(body)
            .unwrap_or_else(|e| panic!("PUT {bucket}/{key}: {e}"));
        resp.body_mut().read_json().unwrap()
    }

    pub fn delete(&self, bucket: &str, key: &str) {
        let resp = ureq::delete(&format!("{}/v1/objects/{bucket}/{key}", self.base))
            .call()
            .unwrap_or_else(|e| panic!("DELETE {bucket}/{key}: {e}"));
        assert_eq!(resp.status(), 204);
    }

    /// POSTs to an API path without a body; returns the status and the JSON answer.
    pub fn post(&self, path: &str) -> (u16, Value) {
        let mut resp = ureq::post(&format!("{}{path}", self.base))
            .config()
            .http_status_as_error(false)
            .build()
            .send_empty()
            .unwrap();
        let status = resp.status().as_u16();
        (status, resp.body_mut().read_json().unwrap())
    }

    pub fn put_file(&self, bucket: &str, key: &str, file: &Path) -> Value {
        self.put_bytes(bucket, key, &std::fs::read(file).unwrap())
    }

    pub fn status(&self) -> Value {
        ureq::get(&format!("{}/v1/status", self.base))
            .call()
            .unwrap()
            .body_mut()
            .read_json()
            .unwrap()
    }

    /// Waits until no job is pending or running and every table's tail is committed to
    /// Delta (tests read the Delta files themselves).
    pub fn wait_idle(&self, timeout: Duration) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let s = self.status();
            let tails_empty = s["tails"].as_object().is_none_or(|t| t.is_empty());
            if s["jobs"]["pending"] == 0 && s["jobs"]["running"] == 0 && tails_empty {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "jobs still queued after {timeout:?}: {s}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until no job is pending or running (rows may still wait in a table's tail).
    pub fn wait_jobs(&self, timeout: Duration) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let s = self.status();
            if s["jobs"]["pending"] == 0 && s["jobs"]["running"] == 0 {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "jobs still queued after {timeout:?}: {s}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until some run is in progress.
    pub fn wait_for_a_running_job(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !self.runs().iter().any(|r| r["status"] == "running") {
            assert!(Instant::now() < deadline, "no run started");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    pub fn query(&self, sql: &str) -> Vec<Value> {
        let resp = ureq::post(&format!("{}/v1/query", self.base))
            .config()
            .http_status_as_error(false)
            .build()
            .send_json(serde_json::json!({ "sql": sql }))
            .unwrap();
        let status = resp.status();
        let mut resp = resp;
        let body: Value = resp.body_mut().read_json().unwrap();
        assert_eq!(status, 200, "query {sql:?} failed: {body}");
        body["rows"].as_array().unwrap().clone()
    }

    pub fn query_error(&self, sql: &str) -> (u16, String) {
        let mut resp = ureq::post(&format!("{}/v1/query", self.base))
            .config()
            .http_status_as_error(false)
            .build()
            .send_json(serde_json::json!({ "sql": sql }))
            .unwrap();
        let status = resp.status().as_u16();
        let body: Value = resp.body_mut().read_json().unwrap();
        (
            status,
            body["error"].as_str().unwrap_or_default().to_string(),
        )
    }

    pub fn scalar(&self, sql: &str) -> Value {
        let rows = self.query(sql);
        let row = rows
            .first()
            .unwrap_or_else(|| panic!("{sql:?} returned no rows"));
        row.as_object().unwrap().values().next().unwrap().clone()
    }

    pub fn runs(&self) -> Vec<Value> {
        let body: Value = ureq::get(&format!("{}/v1/runs?limit=1000", self.base))
            .call()
            .unwrap()
            .body_mut()
            .read_json()
            .unwrap();
        body["runs"].as_array().unwrap().clone()
    }

    /// The workflow executions the server lists, newest first.
    pub fn executions(&self) -> Vec<Value> {
        let body: Value = ureq::get(&format!("{}/v1/executions?limit=10000", self.base))
            .call()
            .unwrap()
            .body_mut()
            .read_json()
            .unwrap();
        body["executions"].as_array().unwrap().clone()
    }

    /// One execution with its event history.
    pub fn execution(&self, id: &str) -> Value {
        ureq::get(&format!("{}/v1/executions/{id}", self.base))
            .call()
            .unwrap()
            .body_mut()
            .read_json()
            .unwrap()
    }

    /// Polls the executions until `done` holds (at most 120 s); returns them.
    pub fn wait_for_executions(&self, what: &str, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let all = self.executions();
            if done(&all) {
                return all;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}: {all:#?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Polls one execution until it is no longer running; returns it with its history.
    pub fn wait_for_execution(&self, id: &str) -> Value {
        self.wait_for_executions(&format!("execution {id} to end"), |all| {
            all.iter()
                .any(|e| e["id"] == id && e["status"] != "RUNNING")
        });
        self.execution(id)
    }

    /// Runs a CLI command against this server's project.
    pub fn cli(&self, args: &[&str]) -> (bool, String, String) {
        cli(&self.project, args)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill9();
    }
}

pub fn cli(project: &Path, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(BIN)
        .arg("-p")
        .arg(project)
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

pub fn as_i64(v: &Value) -> i64 {
    v.as_i64()
        .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
        .unwrap_or_else(|| panic!("{v} is not an integer"))
}

pub fn as_f64(v: &Value) -> f64 {
    v.as_f64()
        .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
        .unwrap_or_else(|| panic!("{v} is not a number"))
}

/// Runs the DuckDB oracle over a Delta table's active Parquet files.
pub fn duckdb_oracle(table_dir: &Path, sql: &str) -> Value {
    let script = repo_root().join("crates/sluice/tests/it/oracle.py");
    let out = Command::new("python3")
        .arg(&script)
        .arg(table_dir)
        .arg(sql)
        .output()
        .expect("running python3");
    assert!(
        out.status.success(),
        "oracle failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Every action of a Delta table's JSON log, in commit order (read here, not by sluice).
pub fn log_actions(table_dir: &Path) -> Vec<Value> {
    let log = table_dir.join("_delta_log");
    let mut names: Vec<_> = std::fs::read_dir(&log)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".json"))
        .collect();
    names.sort();
    names
        .iter()
        .flat_map(|n| {
            std::fs::read_to_string(log.join(n))
                .unwrap()
                .lines()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect::<Vec<Value>>()
        })
        .collect()
}

/// Data files a Delta table's log says are active (replayed here, not by sluice's code).
pub fn active_files(table_dir: &Path) -> usize {
    let mut active = std::collections::BTreeSet::new();
    for action in log_actions(table_dir) {
        if let Some(path) = action["add"]["path"].as_str() {
            active.insert(path.to_string());
        } else if let Some(path) = action["remove"]["path"].as_str() {
            active.remove(path);
        }
    }
    active.len()
}
