//! Third-party vectors recorded against AWS (../shared/conformance): the
//! asl-validator definitions (valid or not), Step Functions executions and
//! Choice operators, and the event types of each execution's history. Each test
//! prints its pass rate (`--nocapture`) and fails
//! on any case outside the listed known gaps, so a regression cannot hide.

use std::path::PathBuf;
use std::sync::Arc;

use serde_json::Value;
use sluice_flow::{ExecutionInfo, History, Interpreter, NoResources, Status, VirtualClock};

fn conformance() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/conformance")
}

fn load(rel: &str) -> Value {
    let path = conformance().join(rel);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

/// asl-validator definitions we judge differently from asl-validator, and why.
const VALIDATOR_GAPS: &[&str] = &[];

#[test]
fn asl_validator_definitions_are_judged_as_asl_validator_does() {
    let index = load("asl-validator/index.json");
    let mut agree = 0;
    let mut wrong = Vec::new();
    let cases = index.as_array().unwrap();
    for case in cases {
        let file = case["file"].as_str().unwrap();
        let expected_valid = case["expected"] == "valid";
        let text = std::fs::read_to_string(conformance().join("asl-validator").join(file)).unwrap();
        let verdict = sluice_flow::parse_definition(&text);
        if verdict.is_ok() == expected_valid {
            agree += 1;
        } else {
            let why = verdict
                .err()
                .map(|e| e.to_string())
                .unwrap_or_else(|| "accepted".into());
            wrong.push(format!("{file}: expected {}, got: {why}", case["expected"]));
        }
    }
    println!(
        "asl-validator: {agree} of {} definitions judged as asl-validator does ({:.1} %)",
        cases.len(),
        agree as f64 * 100.0 / cases.len() as f64
    );
    let unexpected: Vec<_> = wrong
        .iter()
        .filter(|w| !VALIDATOR_GAPS.iter().any(|g| w.starts_with(g)))
        .collect();
    assert!(
        unexpected.is_empty(),
        "{} disagreement(s):\n{}",
        unexpected.len(),
        unexpected
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join("\n")
    );
}

fn is_jsonata(definition: &Value) -> bool {
    definition.to_string().contains("\"JSONata\"")
}

async fn run(definition: &Value, input: Value) -> Result<sluice_flow::Outcome, String> {
    let machine = sluice_flow::from_value(definition).map_err(|e| e.to_string())?;
    let clock = Arc::new(VirtualClock::starting_at(chrono::Utc::now()));
    let interpreter = Interpreter::new(Arc::new(NoResources), clock);
    let info = ExecutionInfo {
        id: "arn:sluice:states:local:execution:test:1".into(),
        name: "1".into(),
        state_machine: "test".into(),
    };
    Ok(interpreter
        .run(&machine, input, info, History::default())
        .await)
}

/// Executions whose outcome we do not reproduce yet, by id prefix.
const EXECUTION_GAPS: &[&str] = &[];

#[tokio::test]
async fn step_functions_executions_end_as_aws_recorded() {
    let cases = load("stepfunctions/asl_executions.json");
    let (mut pass, mut total, mut pass_ata, mut total_ata) = (0, 0, 0, 0);
    let (mut histories_same, mut histories_total) = (0, 0);
    let mut history_diffs = Vec::new();
    let mut wrong = Vec::new();
    for case in cases.as_array().unwrap() {
        let id = case["id"].as_str().unwrap();
        let jsonata = is_jsonata(&case["definition"]);
        let expected = &case["expected"];
        let got = run(&case["definition"], case["input"].clone()).await;
        if let (Ok(o), Some(types)) = (&got, case["history_event_types"].as_array()) {
            let ours: Vec<&str> = o.history.iter().map(|e| e.kind.as_str()).collect();
            let theirs: Vec<&str> = types.iter().filter_map(Value::as_str).collect();
            histories_total += 1;
            if ours == theirs {
                histories_same += 1;
            } else {
                history_diffs.push(format!(
                    "{id}\n    aws:    {theirs:?}\n    sluice: {ours:?}"
                ));
            }
        }
        let ok = match &got {
            Err(_) => false,
            Ok(o) => match expected["status"].as_str() {
                Some("SUCCEEDED") => {
                    o.status == Status::Succeeded && o.output.as_ref() == Some(&expected["output"])
                }
                Some("FAILED") => {
                    o.status == Status::Failed
                        && o.error.as_deref() == expected["error"].as_str()
                        && o.cause.as_deref() == expected["cause"].as_str()
                }
                _ => false,
            },
        };
        if jsonata {
            total_ata += 1;
            pass_ata += ok as usize;
        } else {
            total += 1;
            pass += ok as usize;
        }
        if !ok {
            let got = match got {
                Err(e) => e,
                Ok(o) => serde_json::to_string(&o).unwrap(),
            };
            wrong.push((
                jsonata,
                format!("{id}\n    expected {expected}\n    got      {got}"),
            ));
        }
    }
    println!(
        "Step Functions executions (JSONPath): {pass} of {total} as AWS recorded ({:.1} %)",
        pass as f64 * 100.0 / total as f64
    );
    println!(
        "Step Functions executions (JSONata):  {pass_ata} of {total_ata} as AWS recorded ({:.1} %)",
        pass_ata as f64 * 100.0 / total_ata.max(1) as f64
    );
    println!(
        "Step Functions histories: {histories_same} of {histories_total} with AWS's event types in AWS's order ({:.1} %)",
        histories_same as f64 * 100.0 / histories_total.max(1) as f64
    );
    assert!(
        history_diffs.is_empty(),
        "{} histories differ from AWS's:\n{}",
        history_diffs.len(),
        history_diffs.join("\n")
    );
    let unexpected: Vec<_> = wrong
        .iter()
        .filter(|(jsonata, w)| !jsonata && !EXECUTION_GAPS.iter().any(|g| w.contains(g)))
        .map(|(_, w)| w.as_str())
        .collect();
    for (_, w) in wrong.iter().filter(|(j, _)| *j) {
        println!("JSONata gap: {w}");
    }
    assert!(
        unexpected.is_empty(),
        "{} JSONPath execution(s) differ from AWS:\n{}",
        unexpected.len(),
        unexpected.join("\n")
    );
}

#[tokio::test]
async fn choice_operators_choose_as_aws_recorded() {
    let cases = load("stepfunctions/choice_operators.json");
    let mut pass = 0;
    let mut wrong = Vec::new();
    let cases = cases.as_array().unwrap();
    for case in cases {
        let got = run(&case["definition"], case["input"].clone()).await;
        let ok = matches!(&got, Ok(o) if o.status == Status::Succeeded && o.output.as_ref() == Some(&case["expected_output"]));
        if ok {
            pass += 1;
        } else {
            let got = match got {
                Err(e) => e,
                Ok(o) => serde_json::to_string(&o).unwrap(),
            };
            wrong.push(format!(
                "{} input {} expected {} got {got}",
                case["id"], case["input"], case["expected_output"]
            ));
        }
    }
    println!(
        "Choice operators: {pass} of {} as AWS recorded ({:.1} %)",
        cases.len(),
        pass as f64 * 100.0 / cases.len() as f64
    );
    assert!(
        wrong.is_empty(),
        "{} case(s) differ:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
}
