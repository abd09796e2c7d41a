//! Workflows from the command line: `sluice workflow run` and `validate`, on
//! definition files written as Step Functions users write them.

use serde_json::{Value, json};

use crate::support::*;

/// Validate → Choice on the invalid share → Map over partitions (2 at a
/// time) → Parallel summary: the taxi workflow's shape, with Pass states
/// standing in for the tasks.
const FLOW: &str = r#"{
  "Comment": "taxi-shaped flow",
  "StartAt": "Validate",
  "States": {
    "Validate": {
      "Type": "Pass",
      "Parameters": {
        "invalidShare.$": "$.invalid",
        "partitions.$": "States.StringSplit($.dates, ',')",
        "run.$": "States.Format('run-{}', $$.Execution.Name)"
      },
      "ResultPath": "$.validation",
      "Next": "TooDirty?"
    },
    "TooDirty?": {
      "Type": "Choice",
      "Choices": [{"Variable": "$.validation.invalidShare", "NumericGreaterThan": 0.05, "Next": "Reject"}],
      "Default": "EachPartition"
    },
    "Reject": {"Type": "Fail", "Error": "TooManyInvalidRows", "CausePath": "States.Format('{} of rows invalid', $.validation.invalidShare)"},
    "EachPartition": {
      "Type": "Map",
      "ItemsPath": "$.validation.partitions",
      "MaxConcurrency": 2,
      "ItemSelector": {"date.$": "$$.Map.Item.Value", "n.$": "$$.Map.Item.Index"},
      "ItemProcessor": {"StartAt": "Refresh", "States": {"Refresh": {"Type": "Pass", "Parameters": {"refreshed.$": "$.date", "n.$": "$.n"}, "End": true}}},
      "ResultPath": "$.refreshed",
      "Next": "Summarize"
    },
    "Summarize": {
      "Type": "Parallel",
      "Branches": [
        {"StartAt": "Count", "States": {"Count": {"Type": "Pass", "Parameters": {"partitions.$": "States.ArrayLength($.refreshed)"}, "End": true}}},
        {"StartAt": "Hash", "States": {"Hash": {"Type": "Pass", "Parameters": {"sha.$": "States.Hash($.dates, 'SHA-256')"}, "End": true}}}
      ],
      "OutputPath": "$",
      "End": true
    }
  }
}"#;

fn run(
    dir: &std::path::Path,
    definition: &str,
    input: &str,
    extra: &[&str],
) -> (bool, Value, String) {
    let file = dir.join("flow.asl.json");
    std::fs::write(&file, definition).unwrap();
    let mut args = vec!["workflow", "run", file.to_str().unwrap(), "--input", input];
    args.extend_from_slice(extra);
    let (ok, out, err) = cli(&dir.join("no-project.toml"), &args);
    let printed = serde_json::from_str(out.trim())
        .unwrap_or_else(|e| panic!("stdout is not one JSON object ({e}): {out}\nstderr: {err}"));
    (ok, printed, err)
}

#[test]
fn workflow_run_prints_the_output_of_a_definition_run_here() {
    let dir = tempfile::tempdir().unwrap();
    let (ok, printed, err) = run(
        dir.path(),
        FLOW,
        r#"{"invalid": 0.01, "dates": "2024-01-01,2024-01-02,2024-01-03"}"#,
        &[],
    );
    assert!(ok, "{printed} {err}");
    assert_eq!(printed["status"], "SUCCEEDED");
    let output = &printed["output"];
    assert_eq!(output[0], json!({"partitions": 3}));
    let expected_sha = {
        use sha2::Digest as _;
        hex::encode(sha2::Sha256::digest(b"2024-01-01,2024-01-02,2024-01-03"))
    };
    assert_eq!(output[1], json!({"sha": expected_sha}));
    assert!(printed.get("error").is_none());

    // The Choice sends a dirty input to the Fail state: status, error and cause, exit 1.
    let (ok, printed, _) = run(
        dir.path(),
        FLOW,
        r#"{"invalid": 0.2, "dates": "2024-01-01"}"#,
        &["--history"],
    );
    assert!(!ok);
    assert_eq!(printed["status"], "FAILED");
    assert_eq!(printed["error"], "TooManyInvalidRows");
    assert_eq!(printed["cause"], "0.2 of rows invalid");
    let kinds: Vec<&str> = printed["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        [
            "ExecutionStarted",
            "PassStateEntered",
            "PassStateExited",
            "ChoiceStateEntered",
            "ChoiceStateExited",
            "FailStateEntered",
            "ExecutionFailed"
        ]
    );
}

#[test]
fn workflow_run_explains_what_it_cannot_do_here() {
    let dir = tempfile::tempdir().unwrap();
    // A Task needing a project fails with a States.* error a Catch can route.
    let task = r#"{"StartAt": "Load", "States": {
        "Load": {"Type": "Task", "Resource": "sluice:pipeline:trips", "Catch": [{"ErrorEquals": ["States.TaskFailed"], "ResultPath": "$.failure", "Next": "Caught"}], "End": true},
        "Caught": {"Type": "Pass", "End": true}}}"#;
    let (ok, printed, _) = run(dir.path(), task, "{}", &[]);
    assert!(ok, "{printed}");
    assert_eq!(printed["output"]["failure"]["Error"], "States.TaskFailed");
    let cause = printed["output"]["failure"]["Cause"].as_str().unwrap();
    assert!(
        cause.contains("sluice:pipeline:trips") && cause.contains("sluice project"),
        "{cause}"
    );

    // A definition with mistakes: every one, each naming its state and field.
    let file = dir.path().join("bad.asl.json");
    std::fs::write(&file, r#"{"StartAt": "A", "States": {
        "A": {"Type": "Pass", "Next": "Nowhere"},
        "B": {"Type": "Wait", "Seconds": 5, "SecondsPath": "$.s", "End": true},
        "C": {"Type": "Choice", "Choices": [{"Variable": "$.x", "NumericEquals": "one", "Next": "A"}]}}}"#).unwrap();
    let none = dir.path().join("no-project.toml");
    let (ok, _, err) = cli(&none, &["workflow", "validate", file.to_str().unwrap()]);
    assert!(!ok);
    for expected in [
        "States.A.Next: no state named 'Nowhere' here",
        "States.B: a Wait state takes exactly one of Seconds, Timestamp, SecondsPath, TimestampPath (found Seconds, SecondsPath)",
        "States.C.Choices[0].NumericEquals: must be a number, not \"one\"",
        "States.C: cannot be reached from StartAt",
    ] {
        assert!(err.contains(expected), "missing {expected:?} in:\n{err}");
    }
    // Duplicate keys are refused, not silently collapsed.
    std::fs::write(
        &file,
        r#"{"StartAt": "A", "States": {"A": {"Type": "Pass", "End": true, "End": false}}}"#,
    )
    .unwrap();
    let (ok, _, err) = cli(&none, &["workflow", "run", file.to_str().unwrap()]);
    assert!(!ok);
    assert!(err.contains("duplicate key \"End\" in $.States.A"), "{err}");
    let (ok, out, _) = cli(
        &none,
        &[
            "workflow",
            "validate",
            dir.path().join("flow.asl.json").to_str().unwrap(),
        ],
    );
    assert!(ok && out.contains("valid"), "{out}");
}

/// A small HTTP endpoint the workflows call: it counts requests by path, answers
/// JSON, holds the first request to `hold` without an answer (the process that
/// sent it is killed meanwhile), answers 404 to `/missing` and 500 to the first
/// request to `/flaky`.
struct Endpoint {
    base: String,
    calls: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    held: std::sync::mpsc::Receiver<()>,
}

impl Endpoint {
    fn start(hold: Option<&'static str>) -> Endpoint {
        use std::io::{BufRead as _, BufReader, Read as _, Write as _};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let calls = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
        let (tx, held) = std::sync::mpsc::channel();
        let seen = calls.clone();
        std::thread::spawn(move || {
            let mut kept = Vec::new();
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut head = String::new();
                let mut length = 0;
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                    if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                        length = v.trim().parse().unwrap_or(0);
                    }
                    head.push_str(&line);
                }
                let mut body = vec![0; length];
                reader.read_exact(&mut body).ok();
                let target = head.split_whitespace().nth(1).unwrap_or("/").to_string();
                let path = target.split('?').next().unwrap().to_string();
                let first = {
                    let mut calls = seen.lock().unwrap();
                    calls.push(path.clone());
                    calls.iter().filter(|c| **c == path).count() == 1
                };
                if hold == Some(path.as_str()) && first {
                    kept.push(stream);
                    tx.send(()).ok();
                    continue;
                }
                let (status, answer) = match path.as_str() {
                    "/missing" => ("404 Not Found", json!({"message": "no such thing"})),
                    "/flaky" if first => (
                        "500 Internal Server Error",
                        json!({"message": "try again later"}),
                    ),
                    _ => (
                        "200 OK",
                        json!({"path": path, "target": target, "rows": 1000, "received": String::from_utf8_lossy(&body)}),
                    ),
                };
                let answer = answer.to_string();
                let _ = write!(
                    stream,
                    "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{answer}",
                    answer.len()
                );
            }
        });
        Endpoint { base, calls, held }
    }

    fn count(&self, path: &str) -> usize {
        self.calls
            .lock()
            .unwrap()
            .iter()
            .filter(|c| *c == path)
            .count()
    }
}

fn http_task(endpoint: &str, method: &str, extra: Value) -> Value {
    let mut parameters = json!({"ApiEndpoint": endpoint, "Method": method,
        "Authentication": {"ConnectionArn": "arn:aws:events:us-east-1:123456789012:connection/local/1"}});
    if let (Value::Object(p), Value::Object(e)) = (&mut parameters, extra) {
        p.extend(e);
    }
    json!({"Type": "Task", "Resource": "arn:aws:states:::http:invoke", "Parameters": parameters})
}

/// Extract → Stamp (a random UUID) → Load → Notify, every Task an HTTP call.
fn durable_flow(base: &str) -> Value {
    let mut extract = http_task(
        &format!("{base}/extract"),
        "POST",
        json!({"RequestBody": {"date.$": "$.date"}}),
    );
    extract["ResultSelector"] = json!({"rows.$": "$.ResponseBody.rows"});
    extract["ResultPath"] = json!("$.extract");
    extract["Next"] = json!("Stamp");
    let mut load = http_task(
        &format!("{base}/load"),
        "POST",
        json!({"RequestBody": {"stamp.$": "$.stamp.id"}}),
    );
    load["ResultSelector"] = json!({"status.$": "$.StatusCode"});
    load["ResultPath"] = json!("$.load");
    load["Next"] = json!("Notify");
    let mut notify = http_task(
        &format!("{base}/notify"),
        "GET",
        json!({"QueryParameters": {"stamp.$": "$.stamp.id"}}),
    );
    notify["ResultSelector"] = json!({"target.$": "$.ResponseBody.target"});
    notify["ResultPath"] = json!("$.notify");
    notify["End"] = json!(true);
    json!({"StartAt": "Extract", "States": {
        "Extract": extract,
        "Stamp": {"Type": "Pass", "Parameters": {"id.$": "States.UUID()"}, "ResultPath": "$.stamp", "Next": "Load"},
        "Load": load,
        "Notify": notify
    }})
}

/// The issue's durability test: kill -9 the process running an execution in
/// the middle of a Task; `sluice up` resumes it at that Task, and no Task that
/// had completed runs again.
#[test]
fn an_execution_killed_mid_task_resumes_at_that_state_after_restart() {
    let endpoint = Endpoint::start(Some("/load"));
    let project = taxi_project(|t| t);
    let file = project.path().join("nightly.asl.json");
    std::fs::write(&file, durable_flow(&endpoint.base).to_string()).unwrap();
    let mut child = std::process::Command::new(BIN)
        .args(["-p"])
        .arg(project.path().join("sluice.toml"))
        .args(["workflow", "start"])
        .arg(&file)
        .args(["--input", r#"{"date": "2024-01-15"}"#])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    endpoint
        .held
        .recv_timeout(std::time::Duration::from_secs(120))
        .expect("the execution reached the Load task");
    child.kill().unwrap(); // SIGKILL
    let killed = child.wait_with_output().unwrap();
    assert!(!killed.status.success());
    let stderr = String::from_utf8_lossy(&killed.stderr);
    let id = stderr
        .split_whitespace()
        .skip_while(|w| *w != "execution")
        .nth(1)
        .unwrap_or_else(|| panic!("no execution id in: {stderr}"))
        .to_string();
    assert_eq!(
        (
            endpoint.count("/extract"),
            endpoint.count("/load"),
            endpoint.count("/notify")
        ),
        (1, 1, 0)
    );

    // Before the restart the execution is on record as running, its history ending in Load.
    let (ok, out, err) = cli(
        &project.path().join("sluice.toml"),
        &["execution", "show", &id[..13]],
    );
    assert!(ok, "{err}");
    let before: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(before["status"], "RUNNING");
    let last = before["events"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["type"], "TaskScheduled", "{last}");

    let server = Server::start(project.path());
    let done = server.wait_for_execution(&id);
    assert_eq!(done["status"], "SUCCEEDED", "{done}");
    // Extract completed before the kill and did not run again; Load, cut off, ran again.
    assert_eq!(
        (
            endpoint.count("/extract"),
            endpoint.count("/load"),
            endpoint.count("/notify")
        ),
        (1, 2, 1)
    );
    let output = &done["output"];
    assert_eq!(output["extract"]["rows"], 1000);
    assert_eq!(output["load"]["status"], 200);
    // The UUID drawn before the kill is the one the later tasks were given.
    let stamp = output["stamp"]["id"].as_str().unwrap();
    assert_eq!(output["notify"]["target"], format!("/notify?stamp={stamp}"));
    let events = done["events"].as_array().unwrap();
    let kinds: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(
        kinds.iter().filter(|k| **k == "ExecutionStarted").count(),
        1
    );
    assert_eq!(
        kinds.iter().filter(|k| **k == "PassStateEntered").count(),
        1,
        "{kinds:?}"
    );
    assert_eq!(kinds.last(), Some(&"ExecutionSucceeded"));
    for (i, e) in events.iter().enumerate() {
        assert_eq!(e["id"], i + 1);
    }

    // The CLI lists it with the others.
    let (ok, out, _) = server.cli(&["executions"]);
    assert!(
        ok && out.contains(&id) && out.contains("SUCCEEDED"),
        "{out}"
    );
}

/// Started over the HTTP API while `sluice up` serves: Task resources of a
/// project (SQL over the lake, HTTP calls), and HTTP errors Catch can route.
#[test]
fn executions_started_over_http_run_sql_and_http_tasks() {
    let endpoint = Endpoint::start(None);
    let project = taxi_project(|t| t);
    let server = Server::start(project.path());
    let mut missing = http_task(&format!("{}/missing", endpoint.base), "GET", json!({}));
    missing["Catch"] = json!([{"ErrorEquals": ["States.Http.StatusCode.404"], "ResultPath": "$.caught", "Next": "Done"}]);
    missing["End"] = json!(true);
    let definition = json!({"StartAt": "Count", "States": {
        "Count": {"Type": "Task", "Resource": "sluice:sql",
                  "Parameters": {"Sql.$": "States.Format('SELECT {} + 1 AS answer', $.n)"},
                  "ResultSelector": {"answer.$": "$.Rows[0].answer", "rows.$": "$.RowCount"},
                  "ResultPath": "$.sql", "Next": "Missing"},
        "Missing": missing,
        "Done": {"Type": "Pass", "End": true}
    }});
    let mut resp = ureq::post(&format!("{}/v1/executions", server.base))
        .send_json(json!({"definition": definition, "input": {"n": 41}, "workflow": "checks"}))
        .unwrap();
    assert_eq!(resp.status(), 201);
    let started: Value = resp.body_mut().read_json().unwrap();
    let id = started["id"].as_str().unwrap();
    let done = server.wait_for_execution(id);
    assert_eq!(done["status"], "SUCCEEDED", "{done}");
    assert_eq!(done["workflow"], "checks");
    assert_eq!(done["output"]["sql"], json!({"answer": 42, "rows": 1}));
    assert_eq!(
        done["output"]["caught"]["Error"],
        "States.Http.StatusCode.404"
    );
    let cause: Value =
        serde_json::from_str(done["output"]["caught"]["Cause"].as_str().unwrap()).unwrap();
    assert_eq!(cause["StatusCode"], 404);
    assert_eq!(cause["ResponseBody"]["message"], "no such thing");
    assert_eq!(endpoint.count("/missing"), 1);

    // A definition with mistakes is refused before anything runs.
    let resp = ureq::post(&format!("{}/v1/executions", server.base))
        .config()
        .http_status_as_error(false)
        .build()
        .send_json(json!({"definition": {"StartAt": "Nowhere", "States": {}}}))
        .unwrap();
    assert_eq!(resp.status(), 400);
}

fn run_to_end(server: &Server, body: Value) -> Value {
    let mut resp = ureq::post(&format!("{}/v1/executions", server.base))
        .send_json(body)
        .unwrap();
    assert_eq!(resp.status(), 201);
    let started: Value = resp.body_mut().read_json().unwrap();
    server.wait_for_execution(started["id"].as_str().unwrap())
}

/// The taxi example's nightly workflow (examples/nyc-taxi/flows/nightly.asl.json)
/// on a real TLC file: validation, the Choice on the invalid share, and a Map
/// summarizing each partition two at a time, checked against SQL.
#[test]
fn the_taxi_nightly_workflow_summarizes_each_partition_or_stops_on_dirty_data() {
    let project = taxi_project(|t| t.replace("max_invalid_pct = 40", "max_invalid_pct = 100"));
    let server = Server::start(project.path());
    for file in [
        "yellow_tripdata_2016-09.csv",
        "yellow_tripdata_2017-06.csv",
        "yellow_tripdata_2019-06_sample.csv",
    ] {
        server.put_file(
            "raw",
            &format!("landing/{file}"),
            &shared_data(&format!("nyc_tlc/{file}")),
        );
    }
    server.wait_idle(std::time::Duration::from_secs(120));
    let expected: Vec<Value> = server
        .query("SELECT CAST(date AS VARCHAR) AS date, count(*) AS trips FROM silver.trips GROUP BY 1 ORDER BY 1")
        .into_iter()
        .map(|r| json!({"date": r["date"], "trips": as_i64(&r["trips"])}))
        .collect();
    assert!(expected.len() > 2, "{expected:?}");
    let share = server.scalar(
        "SELECT CAST(SUM(rows_quarantined) AS DOUBLE) * 100 / SUM(rows_in) FROM sluice.runs WHERE status = 'succeeded'",
    );

    // 4.9 % of these files' rows are quarantined: under the workflow's 5 % bar.
    assert!(
        as_f64(&share) > 4.0 && as_f64(&share) < 5.0,
        "{share}: {:#?}",
        server.runs()
    );
    let done = run_to_end(&server, json!({"workflow": "nightly"}));
    assert_eq!(done["status"], "SUCCEEDED", "{done}");
    let output = &done["output"];
    assert_eq!(output["partitions"], expected.len());
    let got: Vec<Value> = output["summaries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| json!({"date": s["date"], "trips": s["trips"]}))
        .collect();
    assert_eq!(got, expected);
    // Map iterations ran two at a time: never more than two started and not finished.
    let mut open = 0i32;
    let mut most = 0;
    for e in done["events"].as_array().unwrap() {
        match e["type"].as_str().unwrap() {
            "MapIterationStarted" => open += 1,
            "MapIterationSucceeded" | "MapIterationFailed" => open -= 1,
            _ => {}
        }
        most = most.max(open);
    }
    assert_eq!(most, 2);
    // The gold models were refreshed (in parallel) to what their SQL gives now.
    let daily = as_i64(&server.scalar("SELECT count(*) FROM gold.daily_revenue"));
    assert!(daily > 0);
    assert_eq!(as_i64(&output["gold"]["dailyRevenueRows"]), daily);
    assert_eq!(
        as_i64(&output["gold"]["zoneRevenueRows"]),
        as_i64(&server.scalar("SELECT count(*) FROM gold.zone_revenue"))
    );
    // The completion event went out for the rules.
    assert_eq!(output["published"]["FailedEntryCount"], 0, "{output}");
    assert!(output["published"]["Entries"][0]["EventId"].is_string());

    // A threshold in the input overrides the default 5 %.
    let stricter = run_to_end(
        &server,
        json!({"workflow": "nightly", "input": {"maxInvalidPct": 4}}),
    );
    assert_eq!(stricter["error"], "TooManyInvalidRows", "{stricter}");

    // With a stricter threshold the Choice routes to the Fail state, naming the share.
    let strict =
        std::fs::read_to_string(repo_root().join("examples/nyc-taxi/flows/nightly.asl.json"))
            .unwrap()
            .replace("\"NumericGreaterThan\": 5", "\"NumericGreaterThan\": -1");
    let failed = run_to_end(&server, json!({"workflow": "strict", "definition": strict}));
    assert_eq!(failed["status"], "FAILED");
    assert_eq!(failed["error"], "TooManyInvalidRows");
    assert!(
        failed["cause"].as_str().unwrap().contains(" percent of "),
        "{failed}"
    );
}

/// A project with workflows `parent`, `child` (calls the endpoint) and `broken` (fails).
fn nested_project(base: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("flows")).unwrap();
    let mut call = http_task(
        &format!("{base}/child"),
        "POST",
        json!({"RequestBody": {"n.$": "$.n"}}),
    );
    call["ResultPath"] = json!(null);
    call["Next"] = json!("Double");
    let child = json!({"StartAt": "Call", "States": {
        "Call": call,
        "Double": {"Type": "Pass", "Parameters": {"doubled.$": "States.MathAdd($.n, $.n)"}, "End": true}}});
    let broken = json!({"StartAt": "Fail", "States": {"Fail": {"Type": "Fail", "Error": "Broken", "Cause": "on purpose"}}});
    let parent = json!({"StartAt": "Child", "States": {
        "Child": {"Type": "Task", "Resource": "arn:aws:states:::states:startExecution.sync:2",
                  "Parameters": {"StateMachineArn": "arn:aws:states:us-east-1:123456789012:stateMachine:child", "Input": {"n.$": "$.n"}},
                  "ResultSelector": {"doubled.$": "$.Output.doubled", "status.$": "$.Status"},
                  "ResultPath": "$.child", "Next": "Broken"},
        "Broken": {"Type": "Task", "Resource": "arn:aws:states:::states:startExecution.sync",
                   "Parameters": {"StateMachineArn": "broken"},
                   "Catch": [{"ErrorEquals": ["States.TaskFailed"], "ResultPath": "$.broken", "Next": "Missing"}], "End": true},
        "Missing": {"Type": "Task", "Resource": "arn:aws:states:::states:startExecution",
                    "Parameters": {"StateMachineArn": "nope"},
                    "Catch": [{"ErrorEquals": ["States.ALL"], "ResultPath": "$.missing", "Next": "Done"}], "End": true},
        "Done": {"Type": "Pass", "End": true}}});
    for (name, def) in [("child", child), ("broken", broken), ("parent", parent)] {
        std::fs::write(
            dir.path().join(format!("flows/{name}.asl.json")),
            def.to_string(),
        )
        .unwrap();
    }
    std::fs::write(
        dir.path().join("sluice.toml"),
        "version = 1\n[workflows.parent]\ndefinition = \"flows/parent.asl.json\"\n\
         [workflows.child]\ndefinition = \"flows/child.asl.json\"\n\
         [workflows.broken]\ndefinition = \"flows/broken.asl.json\"\n",
    )
    .unwrap();
    dir
}

/// Nested executions (startExecution.sync:2, .sync, and a missing state
/// machine), and a parent killed while its child runs: after the restart the
/// child resumes, the parent finds it instead of starting another, and both end.
#[test]
fn nested_executions_run_once_even_when_the_parent_is_killed_while_the_child_runs() {
    let endpoint = Endpoint::start(Some("/child"));
    let project = nested_project(&endpoint.base);
    let toml = project.path().join("sluice.toml");
    let mut child = std::process::Command::new(BIN)
        .arg("-p")
        .arg(&toml)
        .args(["workflow", "start", "parent", "--input", r#"{"n": 21}"#])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    endpoint
        .held
        .recv_timeout(std::time::Duration::from_secs(120))
        .expect("the child execution reached its HTTP task");
    child.kill().unwrap();
    child.wait().unwrap();

    let server = Server::start(project.path());
    let all = server.wait_for_executions("the parent and its child to end", |all| {
        all.iter().all(|e| e["status"] != "RUNNING")
            && all.iter().any(|e| e["workflow"] == "parent")
    });
    let of = |w: &str| {
        all.iter()
            .filter(|e| e["workflow"] == w)
            .collect::<Vec<_>>()
    };
    assert_eq!(
        of("child").len(),
        1,
        "one child, not one per parent run: {all:#?}"
    );
    assert_eq!(of("broken").len(), 1);
    assert_eq!(
        endpoint.count("/child"),
        2,
        "the cut-off call, then the resumed one"
    );
    let parent = of("parent")[0];
    assert_eq!(parent["status"], "SUCCEEDED", "{parent}");
    let output = &parent["output"];
    assert_eq!(
        output["child"],
        json!({"doubled": 42, "status": "SUCCEEDED"})
    );
    assert_eq!(output["broken"]["Error"], "States.TaskFailed");
    let cause: Value = serde_json::from_str(output["broken"]["Cause"].as_str().unwrap()).unwrap();
    assert_eq!(
        (cause["Status"].as_str(), cause["Error"].as_str()),
        (Some("FAILED"), Some("Broken"))
    );
    assert_eq!(
        output["missing"]["Error"],
        "StepFunctions.StateMachineDoesNotExistException"
    );
}

/// A pipeline as a Task: `sluice workflow start` queues the taxi pipeline's
/// job for an object no trigger covers, runs it on its own worker, and hands
/// back the run's counts; a missing object is an error a Catch can take.
#[test]
fn a_pipeline_task_ingests_an_object_and_reports_its_run() {
    // A rule routes the end of every pipeline run to an `echo` workflow.
    let project = taxi_project(|t| {
        t.replace("max_invalid_pct = 40", "max_invalid_pct = 100")
            + "\n[workflows.echo]\ndefinition = \"flows/echo.asl.json\"\n\
               [rules.runs]\npattern = '{\"source\": [\"sluice.pipelines\"], \"detail-type\": [\"Pipeline Run Status Change\"]}'\nworkflow = \"echo\"\n"
    });
    std::fs::write(
        project.path().join("flows/echo.asl.json"),
        r#"{"StartAt": "Echo", "States": {"Echo": {"Type": "Pass", "OutputPath": "$.detail", "End": true}}}"#,
    )
    .unwrap();
    let toml = project.path().join("sluice.toml");
    let file = "yellow_tripdata_2017-06.csv";
    let (ok, _, err) = cli(
        &toml,
        &[
            "put",
            shared_data(&format!("nyc_tlc/{file}")).to_str().unwrap(),
            &format!("raw/manual/{file}"),
        ],
    );
    assert!(ok, "{err}");
    let definition = json!({"StartAt": "Ingest", "States": {
        "Ingest": {"Type": "Task", "Resource": "sluice:pipeline:taxi",
                   "Parameters": {"Bucket": "raw", "Key.$": "States.Format('manual/{}', $.file)"},
                   "ResultSelector": {"status.$": "$.Status", "run.$": "$.Run"},
                   "ResultPath": "$.ingest", "Next": "Missing"},
        "Missing": {"Type": "Task", "Resource": "sluice:pipeline:taxi",
                    "Parameters": {"Bucket": "raw", "Key": "manual/nope.csv"},
                    "Catch": [{"ErrorEquals": ["Sluice.NoSuchKey"], "ResultPath": "$.missing", "Next": "Count"}], "End": true},
        "Count": {"Type": "Task", "Resource": "sluice:sql",
                  "Parameters": {"Sql": "SELECT count(*) AS n FROM silver.trips"},
                  "ResultSelector": {"n.$": "$.Rows[0].n"}, "ResultPath": "$.count", "End": true}}});
    let flow = project.path().join("ingest.asl.json");
    std::fs::write(&flow, definition.to_string()).unwrap();
    let (ok, out, err) = cli(
        &toml,
        &[
            "workflow",
            "start",
            flow.to_str().unwrap(),
            "--input",
            &json!({"file": file}).to_string(),
        ],
    );
    assert!(ok, "{out}\n{err}");
    let done: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(done["status"], "SUCCEEDED", "{done}");
    let output = &done["output"];
    assert_eq!(output["ingest"]["status"], "done");
    let run = &output["ingest"]["run"];
    let rows = std::fs::read_to_string(shared_data(&format!("nyc_tlc/{file}")))
        .unwrap()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .count() as i64
        - 1;
    assert_eq!(as_i64(&run["RowsIn"]), rows);
    assert_eq!(
        as_i64(&run["RowsValid"]) + as_i64(&run["RowsQuarantined"]),
        rows
    );
    assert_eq!(as_i64(&output["count"]["n"]), as_i64(&run["RowsValid"]));
    assert_eq!(output["missing"]["Error"], "Sluice.NoSuchKey");

    // The next `sluice up` routes the run's end to the rule's workflow.
    let server = Server::start(project.path());
    let echo_done = |e: &&Value| e["workflow"] == "echo" && e["status"] == "SUCCEEDED";
    let all = server.wait_for_executions("the echo execution", |all| {
        all.iter().any(|e| echo_done(&e))
    });
    let echo = all.iter().find(echo_done).unwrap();
    let detail = &echo["output"];
    assert_eq!(detail["pipeline"], "taxi");
    assert_eq!(detail["status"], "SUCCEEDED");
    assert_eq!(as_i64(&detail["rowsIn"]), rows);
    assert_eq!(detail["object"], format!("raw/manual/{file}"));
}

/// A failed execution waits in the dead-letter queue with its cause; `sluice
/// dlq replay` redrives it once (a new execution with the same input, picked up
/// by the running `sluice up`), and it leaves the queue.
#[test]
fn failed_executions_wait_in_the_dlq_and_are_redriven_once() {
    let endpoint = Endpoint::start(None);
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("flows")).unwrap();
    let mut call = http_task(
        &format!("{}/flaky", endpoint.base),
        "POST",
        json!({"RequestBody": {"day.$": "$.day"}}),
    );
    call["Catch"] =
        json!([{"ErrorEquals": ["States.ALL"], "ResultPath": "$.failure", "Next": "Stop"}]);
    call["End"] = json!(true);
    let flow = json!({"StartAt": "Sync", "States": {
        "Sync": call,
        "Stop": {"Type": "Fail", "Error": "SyncFailed", "CausePath": "$.failure.Cause"}}});
    std::fs::write(dir.path().join("flows/sync.asl.json"), flow.to_string()).unwrap();
    std::fs::write(
        dir.path().join("sluice.toml"),
        "version = 1\n[workflows.sync]\ndefinition = \"flows/sync.asl.json\"\n",
    )
    .unwrap();
    let toml = dir.path().join("sluice.toml");
    let server = Server::start(dir.path());

    let failed = run_to_end(
        &server,
        json!({"workflow": "sync", "input": {"day": "2024-01-15"}}),
    );
    assert_eq!(failed["status"], "FAILED");
    assert_eq!(failed["error"], "SyncFailed");
    assert!(
        failed["cause"]
            .as_str()
            .unwrap()
            .contains("try again later"),
        "{failed}"
    );
    let id = failed["id"].as_str().unwrap().to_string();
    let (ok, out, err) = cli(&toml, &["dlq", "list"]);
    assert!(ok, "{err}");
    assert!(
        out.contains(&id) && out.contains("SyncFailed") && out.contains("1 failed execution"),
        "{out}"
    );

    let (ok, out, err) = cli(&toml, &["dlq", "replay", &id]);
    assert!(ok, "{err}");
    assert!(out.contains("redriving"), "{out}");
    let redriven_done = |e: &&Value| e["id"] != id.as_str() && e["status"] != "RUNNING";
    let all = server.wait_for_executions("the redriven execution", |all| {
        all.iter().any(|e| redriven_done(&e))
    });
    let redriven = all.iter().find(redriven_done).unwrap();
    assert_eq!(redriven["status"], "SUCCEEDED", "{redriven}");
    assert_eq!(redriven["input"], json!({"day": "2024-01-15"}));
    assert_eq!(endpoint.count("/flaky"), 2);
    let (_, out, _) = cli(&toml, &["dlq", "list"]);
    assert!(!out.contains(&id), "{out}");
    let (ok, _, err) = cli(&toml, &["dlq", "replay", &id]);
    assert!(!ok, "a redriven execution is not redriven twice");
    assert!(err.contains("not in the dead-letter queue"), "{err}");
}

/// An execution record that cannot run (a damaged definition) ends as failed,
/// saying why, instead of being picked up again and again.
#[test]
fn an_execution_that_cannot_run_ends_failed_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("sluice.toml"), "version = 1\n").unwrap();
    let server = Server::start(dir.path());
    // Written behind sluice's back, as another version or a damaged file could leave it.
    let db = dir.path().join(".sluice/state.db");
    let out = std::process::Command::new("python3")
        .args(["-c", "import sqlite3, sys\nc = sqlite3.connect(sys.argv[1], timeout=10)\nc.execute(\"INSERT INTO executions (id, workflow, definition, status, input, started_at) VALUES ('damaged-1', 'w', '{\\\"StartAt\\\": ', 'RUNNING', '{}', 0)\")\nc.commit()"])
        .arg(&db)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let done = server.wait_for_execution("damaged-1");
    assert_eq!(done["status"], "FAILED", "{done}");
    assert_eq!(done["error"], "States.Runtime");
    assert!(
        done["cause"]
            .as_str()
            .unwrap()
            .contains("its definition does not parse"),
        "{done}"
    );
}
