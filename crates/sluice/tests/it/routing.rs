//! Event rules under `sluice up`: object events (from any writer, the CLI in
//! another process included), custom events sent with boto3's PutEvents, and
//! executions ending, each routed once to the rules' workflows, with the
//! event as the execution's input.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::*;

const PROJECT: &str = r#"
version = 1
name = "routing"

[buckets.raw]

[workflows.echo]
definition = "flows/echo.asl.json"

[workflows.audit]
definition = "flows/echo.asl.json"

[rules.landing_csv]
pattern = '{"source": ["aws.s3"], "detail-type": ["Object Created"], "detail": {"bucket": {"name": ["raw"]}, "object": {"key": [{"wildcard": "landing/*.CSV"}]}}}'
workflow = "echo"

[rules.big_orders]
pattern = '{"source": ["shop.orders"], "detail": {"amount": [{"numeric": [">", 100]}], "currency": [{"equals-ignore-case": "eur"}]}}'
workflow = "echo"

[rules.echo_done]
pattern = '{"source": ["aws.states"], "detail-type": ["Step Functions Execution Status Change"], "detail": {"status": ["SUCCEEDED"], "stateMachineArn": [{"suffix": ":echo"}]}}'
workflow = "audit"
"#;

const ECHO: &str = r#"{"StartAt": "Echo", "States": {"Echo": {"Type": "Pass", "Parameters": {"source.$": "$.source", "type.$": "$.detail-type", "detail.$": "$.detail"}, "End": true}}}"#;

fn settled(server: &Server, count: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let all = server.executions();
        if all.len() >= count && all.iter().all(|e| e["status"] != "RUNNING") {
            // Give the router a moment to show it starts nothing more.
            std::thread::sleep(Duration::from_millis(500));
            let again = server.executions();
            if again.len() == all.len() {
                return again;
            }
        }
        assert!(Instant::now() < deadline, "not settled: {all:#?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn put_events(server: &Server, entries: Value) -> Value {
    let script = format!(
        "import boto3, json, os\n\
         events = boto3.client('events', endpoint_url='{}', region_name='us-east-1', aws_access_key_id='x', aws_secret_access_key='y')\n\
         print(json.dumps(events.put_events(Entries=json.loads(os.environ['ENTRIES'])), default=str))",
        server.base
    );
    let out = std::process::Command::new("python3")
        .args(["-c", &script])
        .env("ENTRIES", entries.to_string())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn events_are_routed_once_to_the_rules_workflows() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("flows")).unwrap();
    std::fs::write(dir.path().join("flows/echo.asl.json"), ECHO).unwrap();
    std::fs::write(dir.path().join("sluice.toml"), PROJECT).unwrap();
    let toml = dir.path().join("sluice.toml");
    let (ok, out, err) = cli(&toml, &["check"]);
    assert!(ok && out.contains("3 rules"), "{out}{err}");

    let mut server = Server::start(dir.path());
    // Objects: one from the CLI (another process), two over HTTP; one matches.
    let file = dir.path().join("trips.csv");
    std::fs::write(&file, "a,b\n1,2\n").unwrap();
    let (ok, _, err) = cli(
        &toml,
        &["put", file.to_str().unwrap(), "raw/landing/2024/trips.CSV"],
    );
    assert!(ok, "{err}");
    server.put_bytes("raw", "elsewhere/trips.CSV", b"a\n1\n");
    server.put_bytes("raw", "landing/notes.txt", b"hi\n");

    // Custom events with boto3's PutEvents: one matches, one does not, one is malformed.
    let answer = put_events(
        &server,
        json!([
            {"Source": "shop.orders", "DetailType": "Order Placed", "Detail": "{\"amount\": 250, \"currency\": \"EUR\"}"},
            {"Source": "shop.orders", "DetailType": "Order Placed", "Detail": "{\"amount\": 20, \"currency\": \"EUR\"}"},
            {"Source": "shop.orders", "DetailType": "Order Placed", "Detail": "not json"}
        ]),
    );
    assert_eq!(answer["FailedEntryCount"], 1, "{answer}");
    assert_eq!(answer["Entries"][2]["ErrorCode"], "MalformedDetail");
    assert!(answer["Entries"][0]["EventId"].is_string());

    // 2 echo executions (the CSV under landing/, the big order), and an audit of each.
    let all = settled(&server, 4);
    let echo: Vec<&Value> = all.iter().filter(|e| e["workflow"] == "echo").collect();
    let audit: Vec<&Value> = all.iter().filter(|e| e["workflow"] == "audit").collect();
    assert_eq!((echo.len(), audit.len()), (2, 2), "{all:#?}");
    let object = echo
        .iter()
        .find(|e| e["output"]["source"] == "aws.s3")
        .unwrap();
    assert_eq!(object["output"]["type"], "Object Created");
    assert_eq!(
        object["output"]["detail"]["object"]["key"],
        "landing/2024/trips.CSV"
    );
    assert_eq!(object["output"]["detail"]["bucket"]["name"], "raw");
    let order = echo
        .iter()
        .find(|e| e["output"]["source"] == "shop.orders")
        .unwrap();
    assert_eq!(order["output"]["detail"]["amount"], 250);
    for a in &audit {
        assert_eq!(
            a["output"]["type"],
            "Step Functions Execution Status Change"
        );
        assert_eq!(a["output"]["detail"]["status"], "SUCCEEDED");
    }

    // The aws CLI sends the same call.
    let out = std::process::Command::new("aws")
        .args([
            "events",
            "put-events",
            "--endpoint-url",
            &server.base,
            "--region",
            "us-east-1",
            "--entries",
        ])
        .arg(r#"[{"Source": "cli.test", "DetailType": "Ping", "Detail": "{}"}]"#)
        .env("AWS_ACCESS_KEY_ID", "x")
        .env("AWS_SECRET_ACCESS_KEY", "y")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let answer: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(answer["FailedEntryCount"], 0, "{answer}");

    // Both are tables SQL can read.
    let by_source: std::collections::BTreeMap<String, i64> = server
        .query("SELECT source, count(*) AS n FROM sluice.custom_events GROUP BY 1")
        .iter()
        .map(|r| (r["source"].as_str().unwrap().to_string(), as_i64(&r["n"])))
        .collect();
    assert_eq!(by_source.get("shop.orders"), Some(&2), "{by_source:?}");
    assert_eq!(by_source.get("cli.test"), Some(&1), "{by_source:?}");
    assert_eq!(by_source.get("aws.states"), Some(&4), "{by_source:?}");
    let succeeded = server.scalar(
        "SELECT count(*) FROM sluice.executions WHERE status = 'SUCCEEDED' AND workflow IN ('echo', 'audit')",
    );
    assert_eq!(as_i64(&succeeded), 4);

    // A restart routes nothing again.
    server.kill9();
    let server = Server::start(dir.path());
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(server.executions().len(), 4);

    // The plain HTTP form, and a batch too large.
    let resp = ureq::post(&format!("{}/v1/events", server.base))
        .config()
        .http_status_as_error(false)
        .build()
        .send_json(json!({"Entries": (0..11).map(|_| json!({"Source": "s", "DetailType": "d", "Detail": "{}"})).collect::<Vec<_>>()}))
        .unwrap();
    assert_eq!(resp.status(), 400);
}

/// A rule whose target is a pipeline runs it on the object of the event, as
/// a trigger would, through the workflow `pipeline:NAME`.
#[test]
fn a_rule_runs_a_pipeline_on_the_object_of_its_event() {
    let project = taxi_project(|t| {
        t + "\n[rules.manual]\npattern = '{\"source\": [\"aws.s3\"], \"detail-type\": [\"Object Created\"], \"detail\": {\"object\": {\"key\": [{\"prefix\": \"manual/\"}]}}}'\npipeline = \"taxi\"\n"
    });
    let server = Server::start(project.path());
    let file = "yellow_tripdata_2016-09.csv";
    let resp = server.put_file(
        "raw",
        &format!("manual/{file}"),
        &shared_data(&format!("nyc_tlc/{file}")),
    );
    assert_eq!(resp["jobs"], 0, "no trigger covers manual/: {resp}");
    let all = server.wait_for_executions("the pipeline's execution", |all| {
        all.iter()
            .any(|e| e["workflow"] == "pipeline:taxi" && e["status"] != "RUNNING")
    });
    let done = all
        .iter()
        .find(|e| e["workflow"] == "pipeline:taxi")
        .unwrap()
        .clone();
    assert_eq!(done["status"], "SUCCEEDED", "{done}");
    let valid = as_i64(&done["output"]["Run"]["RowsValid"]);
    assert!(valid > 0, "{done}");
    assert_eq!(
        as_i64(&server.scalar("SELECT count(*) FROM silver.trips")),
        valid
    );
    // The pipeline's own re-run of the object is not a write: the rule does not start itself.
    std::thread::sleep(Duration::from_millis(500));
    let runs = server
        .executions()
        .iter()
        .filter(|e| e["workflow"] == "pipeline:taxi")
        .count();
    assert_eq!(runs, 1);
}
