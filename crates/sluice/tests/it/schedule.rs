//! Schedules under `sluice up`: ticks start workflow executions, a tick never
//! starts two across a kill -9 and restart, and ticks missed while the server
//! was down follow the schedule's policy (catch-up fires them, skip does not).

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::Value;

use crate::support::*;

const PROJECT: &str = r#"
version = 1
name = "ticks"

[workflows.tick]
definition = "flows/tick.asl.json"

[workflows.seen]
definition = "flows/seen.asl.json"

# Each tick of `skipping` is also an event the rules see.
[rules.skipping_ticks]
pattern = '{"source": ["aws.events"], "detail-type": ["Scheduled Event"], "resources": [{"suffix": "schedule/skipping"}]}'
workflow = "seen"

[schedules.catching_up]
expression = "rate(1 second)"
workflow = "tick"
input = '{"schedule": "catching_up", "at": "<aws.scheduler.scheduled-time>"}'
missed = "catch-up"
catch_up_limit = 100

[schedules.skipping]
expression = "rate(1 second)"
workflow = "tick"
input = '{"schedule": "skipping", "at": "<aws.scheduler.scheduled-time>"}'
"#;

const TICK: &str = r#"{"StartAt": "Stamp", "States": {"Stamp": {"Type": "Pass", "Parameters": {"schedule.$": "$.schedule", "at.$": "$.at", "ran.$": "$$.Execution.StartTime"}, "End": true}}}"#;

/// Ticks (scheduled times) of one schedule's succeeded executions, sorted.
fn ticks(all: &[Value], schedule: &str) -> Vec<DateTime<Utc>> {
    let mut ticks: Vec<DateTime<Utc>> = all
        .iter()
        .filter(|e| e["status"] == "SUCCEEDED" && e["output"]["schedule"] == schedule)
        .map(|e| e["output"]["at"].as_str().unwrap().parse().unwrap())
        .collect();
    ticks.sort();
    ticks
}

#[test]
fn schedules_fire_once_per_tick_across_a_kill_and_follow_their_missed_policy() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("flows")).unwrap();
    std::fs::write(dir.path().join("flows/tick.asl.json"), TICK).unwrap();
    std::fs::write(
        dir.path().join("flows/seen.asl.json"),
        r#"{"StartAt": "Seen", "States": {"Seen": {"Type": "Pass", "Parameters": {"type.$": "$.detail-type"}, "End": true}}}"#,
    )
    .unwrap();
    std::fs::write(dir.path().join("sluice.toml"), PROJECT).unwrap();
    let (ok, out, err) = cli(&dir.path().join("sluice.toml"), &["check"]);
    assert!(
        ok && out.contains("2 workflows, 2 schedules, 1 rules"),
        "{out}{err}"
    );

    let mut server = Server::start(dir.path());
    server.wait_for_executions("three ticks of each schedule", |all| {
        ticks(all, "catching_up").len() >= 3 && ticks(all, "skipping").len() >= 3
    });
    server.kill9();
    let down_at = Utc::now();
    std::thread::sleep(Duration::from_secs(4));
    let server = Server::start(dir.path());
    let up_at = Utc::now();
    let all = server.wait_for_executions("ticks after the restart", |all| {
        let after = |s| {
            ticks(all, s)
                .last()
                .is_some_and(|t| *t > up_at + chrono::TimeDelta::seconds(2))
        };
        after("catching_up") && after("skipping")
    });

    // Every tick of the catch-up schedule ran exactly once: one second apart,
    // with the seconds the server was down filled in after it came back.
    let caught = ticks(&all, "catching_up");
    for pair in caught.windows(2) {
        assert_eq!(
            pair[1] - pair[0],
            chrono::TimeDelta::seconds(1),
            "{caught:?}"
        );
    }
    assert!(caught.first().unwrap() < &down_at && caught.last().unwrap() > &up_at);

    // The skipping schedule ran each tick at most once and left the downtime out.
    let skipped = ticks(&all, "skipping");
    let mut unique = skipped.clone();
    unique.dedup();
    assert_eq!(unique, skipped, "a tick ran twice");
    let gap = skipped.windows(2).map(|p| p[1] - p[0]).max().unwrap();
    assert!(
        gap >= chrono::TimeDelta::seconds(3),
        "no ticks were skipped: {skipped:?}"
    );

    // The skipping schedule's ticks reached the rule as Scheduled Events.
    let seen = all
        .iter()
        .filter(|e| e["workflow"] == "seen" && e["output"]["type"] == "Scheduled Event")
        .count();
    assert!(
        seen >= 3 && seen <= skipped.len(),
        "{seen} of {}",
        skipped.len()
    );

    // The scheduled time reached the execution through the input template.
    let e = all
        .iter()
        .find(|e| e["output"]["schedule"] == "catching_up")
        .unwrap();
    assert_eq!(e["workflow"], "tick");
    assert!(e["output"]["at"].as_str().unwrap().ends_with('Z'), "{e}");
}

/// A schedule whose target is a refresh-only pipeline runs its refreshes
/// (through the generated workflow `pipeline:NAME`).
#[test]
fn a_schedule_runs_a_refresh_only_pipeline() {
    let project = taxi_project(|t| {
        t + "\n[pipelines.gold]\nsteps = [{ refresh = \"daily_revenue\" }, { refresh = \"zone_revenue\" }]\n\
             [schedules.gold]\nexpression = \"rate(1 second)\"\npipeline = \"gold\"\n"
    });
    let server = Server::start(project.path());
    let all = server.wait_for_executions("a run of pipeline:gold", |all| {
        all.iter()
            .any(|e| e["workflow"] == "pipeline:gold" && e["status"] == "SUCCEEDED")
    });
    let run = all
        .iter()
        .find(|e| e["workflow"] == "pipeline:gold" && e["status"] == "SUCCEEDED")
        .unwrap();
    let id = run["id"].as_str().unwrap();
    let shown: Value = ureq::get(&format!("{}/v1/executions/{id}", server.base))
        .call()
        .unwrap()
        .body_mut()
        .read_json()
        .unwrap();
    let entered: Vec<&str> = shown["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == "TaskStateEntered")
        .map(|e| e["details"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(entered, ["Refresh daily_revenue", "Refresh zone_revenue"]);
}
