//! Durable executions: a run cut off mid-state (its future dropped, as a
//! killed process drops it) and resumed from its store goes on at the state it
//! was in, runs no finished step again, and continues the same history.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use futures::FutureExt as _;
use futures::future::BoxFuture;
use serde_json::{Value, json};
use sluice_flow::history::Store;
use sluice_flow::{
    Event, ExecutionInfo, Failure, History, Interpreter, Resources, Status, TaskCall, VirtualClock,
};

/// Events and steps kept but not committed.
type Uncommitted = (Vec<Event>, Vec<(String, Value)>);

/// A store in memory, shared by the cut-off run and the resumed one. What is
/// kept goes to `pending` and becomes durable at `commit`; a cut-off run loses
/// what it had not committed, as a killed process would.
#[derive(Default)]
struct MemoryStore {
    events: Mutex<Vec<Event>>,
    steps: Mutex<HashMap<String, Value>>,
    pending: Mutex<Uncommitted>,
    commits: Mutex<usize>,
    /// How long a commit takes (an fsync's worth, for the group commit test).
    commit_time: std::time::Duration,
}

impl MemoryStore {
    /// What a restarted process reads back: the committed events.
    fn durable_events(&self) -> Vec<Event> {
        self.events.lock().unwrap().clone()
    }

    /// A "kill": everything not committed is gone.
    fn crash(&self) {
        *self.pending.lock().unwrap() = Default::default();
    }
}

impl Store for MemoryStore {
    fn record(&self, event: &Event) -> Result<(), String> {
        self.pending.lock().unwrap().0.push(event.clone());
        Ok(())
    }
    fn recall(&self, key: &str) -> Result<Option<Value>, String> {
        Ok(self.steps.lock().unwrap().get(key).cloned())
    }
    fn remember(&self, key: &str, value: &Value) -> Result<(), String> {
        self.pending
            .lock()
            .unwrap()
            .1
            .push((key.to_owned(), value.clone()));
        Ok(())
    }
    fn commit(&self) -> Result<(), String> {
        std::thread::sleep(self.commit_time);
        let (events, steps) = std::mem::take(&mut *self.pending.lock().unwrap());
        self.events.lock().unwrap().extend(events);
        self.steps.lock().unwrap().extend(steps);
        *self.commits.lock().unwrap() += 1;
        Ok(())
    }
}

/// Counts every call by `state:input`; the call named in `hang` never
/// answers (the process "dies" while it runs).
struct Counting {
    calls: Mutex<Vec<String>>,
    hang: Option<String>,
    hung: tokio::sync::Notify,
}

impl Counting {
    fn new(hang: Option<&str>) -> Arc<Counting> {
        Arc::new(Counting {
            calls: Mutex::default(),
            hang: hang.map(str::to_owned),
            hung: tokio::sync::Notify::new(),
        })
    }
    fn calls(&self) -> Vec<String> {
        self.calls.lock().unwrap().clone()
    }
}

impl Resources for Counting {
    fn invoke(&self, call: TaskCall) -> BoxFuture<'_, Result<Value, Failure>> {
        let name = format!("{}:{}", call.state, call.input["n"]);
        self.calls.lock().unwrap().push(name.clone());
        async move {
            if self.hang.as_deref() == Some(name.as_str()) {
                self.hung.notify_one();
                futures::future::pending::<()>().await;
            }
            Ok(json!({"done": name, "id": uuid_like(&name)}))
        }
        .boxed()
    }
}

fn uuid_like(name: &str) -> String {
    format!("{}-{}", name, name.len())
}

fn definition() -> sluice_flow::StateMachine {
    sluice_flow::from_value(&json!({
        "StartAt": "Extract",
        "States": {
            "Extract": {"Type": "Task", "Resource": "sluice:test", "Parameters": {"n": 0},
                        "ResultPath": "$.extracted", "Next": "Stamp"},
            "Stamp": {"Type": "Pass", "Parameters": {"id.$": "States.UUID()", "items": [1, 2, 3, 4]},
                      "ResultPath": "$.stamp", "Assign": {"stamp.$": "$.id"}, "Next": "Each"},
            "Each": {"Type": "Map", "ItemsPath": "$.stamp.items", "MaxConcurrency": 1,
                     "ItemProcessor": {"StartAt": "Load", "States": {
                         "Load": {"Type": "Task", "Resource": "sluice:test",
                                  "Parameters": {"n.$": "$"}, "End": true}}},
                     "ResultPath": "$.loaded", "Next": "Pause"},
            "Pause": {"Type": "Wait", "Seconds": 60, "Next": "Publish"},
            "Publish": {"Type": "Task", "Resource": "sluice:test",
                        "Parameters": {"n": 9, "stamp.$": "$stamp"},
                        "ResultPath": "$.published", "End": true}
        }
    }))
    .unwrap()
}

fn info() -> ExecutionInfo {
    ExecutionInfo {
        id: "arn:sluice:states:local:execution:durable:1".into(),
        name: "1".into(),
        state_machine: "durable".into(),
    }
}

/// Runs until the resource hangs on `hang`, then drops the run (the "kill").
async fn run_until_cut(store: &Arc<MemoryStore>, hang: &str) -> Vec<String> {
    let resources = Counting::new(Some(hang));
    let clock = Arc::new(VirtualClock::starting_at(chrono::Utc::now()));
    let interpreter = Interpreter::new(resources.clone(), clock);
    let machine = definition();
    let history = History::durable(store.clone(), store.durable_events());
    let run = interpreter.run(&machine, json!({"date": "2024-01-15"}), info(), history);
    tokio::select! {
        outcome = run => panic!("the run ended before it was cut off: {:?}", outcome.status),
        () = resources.hung.notified() => {}
    }
    store.crash();
    resources.calls()
}

async fn resume(store: &Arc<MemoryStore>) -> (sluice_flow::Outcome, Vec<String>) {
    let resources = Counting::new(None);
    let clock = Arc::new(VirtualClock::starting_at(chrono::Utc::now()));
    let interpreter = Interpreter::new(resources.clone(), clock);
    let history = History::durable(store.clone(), store.durable_events());
    let outcome = interpreter
        .run(
            &definition(),
            json!({"date": "2024-01-15"}),
            info(),
            history,
        )
        .await;
    (outcome, resources.calls())
}

#[tokio::test]
async fn a_run_cut_off_in_a_map_iteration_resumes_there_without_repeating_finished_tasks() {
    let store = Arc::new(MemoryStore::default());
    let first = run_until_cut(&store, "Load:3").await;
    assert_eq!(first, ["Extract:0", "Load:1", "Load:2", "Load:3"]);
    let cut_at = store.events.lock().unwrap().len();
    // The cut-off call was on record before it was made.
    let last = store.events.lock().unwrap().last().cloned().unwrap();
    assert_eq!(last.kind, "TaskScheduled");
    assert_eq!(last.details["parameters"]["n"], 3);

    let (outcome, second) = resume(&store).await;
    assert_eq!(outcome.status, Status::Succeeded, "{outcome:?}");
    // Only the cut-off iteration and what followed it ran again.
    assert_eq!(second, ["Load:3", "Load:4", "Publish:9"]);

    let output = outcome.output.unwrap();
    assert_eq!(output["extracted"]["done"], "Extract:0");
    let loaded: Vec<&str> = output["loaded"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["done"].as_str().unwrap())
        .collect();
    assert_eq!(loaded, ["Load:1", "Load:2", "Load:3", "Load:4"]);

    // The random UUID of the Pass state is the one the first run drew: the
    // variable assigned from it reached the last task unchanged.
    let history = store.events.lock().unwrap().clone();
    let stamp = output["stamp"]["id"].as_str().unwrap().to_owned();
    let first_stamp = history
        .iter()
        .find(|e| e.kind == "PassStateExited")
        .map(|e| e.details["output"]["stamp"]["id"].clone())
        .unwrap();
    assert_eq!(first_stamp, json!(stamp));
    let published = history.iter().rfind(|e| e.kind == "TaskScheduled").unwrap();
    assert_eq!(published.details["parameters"]["stamp"], json!(stamp));

    // One history: ids run on from where the first run stopped, with one
    // ExecutionStarted and one ExecutionSucceeded.
    assert!(history.len() > cut_at);
    for (i, e) in history.iter().enumerate() {
        assert_eq!(e.id, i as u64 + 1);
    }
    let count = |kind: &str| history.iter().filter(|e| e.kind == kind).count();
    assert_eq!(count("ExecutionStarted"), 1);
    assert_eq!(count("ExecutionSucceeded"), 1);
    assert_eq!(count("MapIterationSucceeded"), 4);
    assert_eq!(outcome.history, history);
}

#[tokio::test]
async fn a_run_cut_off_at_the_last_task_does_not_repeat_the_map_or_the_wait() {
    let store = Arc::new(MemoryStore::default());
    let first = run_until_cut(&store, "Publish:9").await;
    assert_eq!(first.len(), 6);
    let waits_before = store
        .events
        .lock()
        .unwrap()
        .iter()
        .filter(|e| e.kind == "WaitStateEntered")
        .count();
    assert_eq!(waits_before, 1);

    let (outcome, second) = resume(&store).await;
    assert_eq!(outcome.status, Status::Succeeded);
    assert_eq!(second, ["Publish:9"]);
    let history = store.events.lock().unwrap().clone();
    assert_eq!(
        history
            .iter()
            .filter(|e| e.kind == "WaitStateEntered" || e.kind == "MapStateStarted")
            .count(),
        2,
        "the finished Map and Wait states were not entered again"
    );
}

#[tokio::test]
async fn a_finished_execution_replays_to_the_same_outcome_without_running_anything() {
    let store = Arc::new(MemoryStore::default());
    let (first, calls) = resume(&store).await;
    assert_eq!(first.status, Status::Succeeded, "{first:?}");
    assert_eq!(calls.len(), 6);
    let (again, calls) = resume(&store).await;
    assert!(calls.is_empty(), "{calls:?}");
    assert_eq!(again.output, first.output);
}

/// A store that cannot commit stops the execution with a States.Runtime
/// error (no Catch takes it) instead of going on undurably.
#[tokio::test]
async fn a_store_that_cannot_write_stops_the_execution() {
    struct Full;
    impl Store for Full {
        fn record(&self, _: &Event) -> Result<(), String> {
            Ok(())
        }
        fn recall(&self, _: &str) -> Result<Option<Value>, String> {
            Ok(None)
        }
        fn remember(&self, _: &str, _: &Value) -> Result<(), String> {
            Ok(())
        }
        fn commit(&self) -> Result<(), String> {
            Err("disk full".into())
        }
    }
    let resources = Counting::new(None);
    let interpreter = Interpreter::new(
        resources.clone(),
        Arc::new(VirtualClock::starting_at(chrono::Utc::now())),
    );
    let outcome = interpreter
        .run(
            &definition(),
            json!({}),
            info(),
            History::durable(Arc::new(Full), Vec::new()),
        )
        .await;
    assert_eq!(outcome.status, Status::Failed);
    assert_eq!(outcome.error.as_deref(), Some("States.Runtime"));
    assert!(outcome.cause.unwrap().contains("disk full"));
    // Nothing is called that could not be put on record first.
    assert!(resources.calls().is_empty(), "{:?}", resources.calls());
}

/// Map iterations running at once share commits: far fewer store commits
/// than the three per iteration they would make alone, and the outcome is the
/// same as in memory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_map_iterations_share_commits() {
    let items: Vec<Value> = (0..50).map(|i| json!({"n": i})).collect();
    let machine = sluice_flow::from_value(&json!({"StartAt": "Each", "States": {"Each": {
        "Type": "Map", "MaxConcurrency": 50,
        "ItemProcessor": {"StartAt": "Load", "States": {"Load": {
            "Type": "Task", "Resource": "sluice:test", "Parameters": {"n.$": "$.n"}, "End": true}}},
        "End": true}}}))
    .unwrap();
    // Each commit takes 20 ms, as a slow fsync would: iterations that reach
    // their commit meanwhile wait for the next one, which takes them all.
    let store = Arc::new(MemoryStore {
        commit_time: std::time::Duration::from_millis(20),
        ..MemoryStore::default()
    });
    let resources = Counting::new(None);
    let interpreter = Interpreter::new(
        resources.clone(),
        Arc::new(VirtualClock::starting_at(chrono::Utc::now())),
    );
    let outcome = interpreter
        .run(
            &machine,
            Value::Array(items),
            info(),
            History::durable(store.clone(), Vec::new()),
        )
        .await;
    assert_eq!(outcome.status, Status::Succeeded);
    assert_eq!(outcome.output.unwrap().as_array().unwrap().len(), 50);
    assert_eq!(resources.calls().len(), 50);
    let commits = *store.commits.lock().unwrap();
    assert!(commits < 25, "{commits} commits for 50 iterations");
    // Everything was committed in the end: every iteration's step is saved.
    let steps = store.steps.lock().unwrap();
    assert_eq!(steps.keys().filter(|k| k.ends_with(']')).count(), 50);
}
