//! The EventBridge conformance vectors (recorded against AWS's TestEventPattern) from
//! ../shared/conformance/eventbridge: every case must agree. Prints the pass rate.

use std::path::PathBuf;

use serde_json::Value;
use sluice_rules::{TestError, test_event_pattern};

fn vectors() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/conformance/eventbridge")
}

fn load(name: &str) -> Vec<Value> {
    let path = vectors().join(name);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

/// A case's verdict against what AWS said; None when they agree, else the disagreement.
fn judge(
    name: &str,
    expected: &Value,
    aws_error: Option<&Value>,
    got: Result<bool, TestError>,
) -> Option<String> {
    let agrees = match (expected.as_str(), &got) {
        (Some("match"), Ok(true)) | (Some("no_match"), Ok(false)) => true,
        (Some("error"), Err(e)) => {
            let aws = aws_error.expect("an error case names AWS's error");
            let message = e.to_string();
            let same_message = match (aws.get("message"), aws.get("message_starts")) {
                (Some(m), _) => m.as_str() == Some(message.as_str()),
                (None, Some(start)) => message.starts_with(start.as_str().unwrap()),
                (None, None) => true,
            };
            aws["code"].as_str() == Some(e.code()) && same_message
        }
        _ => false,
    };
    (!agrees).then(|| format!("{name}: AWS said {expected} {aws_error:?}, sluice {got:?}"))
}

#[test]
fn every_recorded_eventbridge_case_agrees_with_aws() {
    let mut failures = Vec::new();
    let mut total = 0;
    for case in load("cases.json") {
        total += 1;
        let name = case["name"].as_str().unwrap();
        let pattern = case["case"]["EventPattern"].to_string();
        let event = case["case"]["Event"].to_string();
        let got = test_event_pattern(&pattern, &event);
        failures.extend(judge(name, &case["expected"], case.get("aws_error"), got));
    }
    for case in load("extras.json") {
        total += 1;
        let name = case["name"].as_str().unwrap();
        let event = match case.get("event_file") {
            Some(file) => std::fs::read_to_string(vectors().join(file.as_str().unwrap())).unwrap(),
            None => case["event_raw"].as_str().unwrap().to_string(),
        };
        let got = test_event_pattern(case["pattern_raw"].as_str().unwrap(), &event);
        failures.extend(judge(name, &case["expected"], case.get("aws_error"), got));
    }
    println!(
        "EventBridge conformance: {} of {total} cases agree with AWS ({:.1} %)",
        total - failures.len(),
        100.0 * (total - failures.len()) as f64 / total as f64
    );
    assert!(
        failures.is_empty(),
        "{} disagreements:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
