//! Workflow benchmark (issue 5): milliseconds per step of a 40-step sequential
//! workflow, in memory and durable (every history event committed to SQLite,
//! WAL, fsync'd, before the state it announces proceeds), and items
//! per second of a Map over 10,000 items.
//!
//! cargo run --release -p sluice-flow --example flow_bench [-- RUNS]

use std::sync::Arc;
use std::time::Instant;

use futures::FutureExt as _;
use serde_json::{Value, json};
use sluice_flow::history::Store;
use sluice_flow::{
    Event, ExecutionInfo, Failure, History, Interpreter, Resources, SystemClock, TaskCall,
};
use sluice_state::{
    Execution, ExecutionEvent, ExecutionStatus, ExecutionStore as _, ExecutionWriter, SqliteStore,
};

/// Tasks that answer at once: the orchestration's own cost, nothing else.
struct Echo;

impl Resources for Echo {
    fn invoke(&self, call: TaskCall) -> futures::future::BoxFuture<'_, Result<Value, Failure>> {
        async move { Ok(call.input) }.boxed()
    }
}

/// The product's own durable store (sluice-state on SQLite, WAL,
/// each commit fsync'd) through its group-committing writer, as `sluice` uses it:
/// one transaction per state transition, and one before each task call.
struct Durable(ExecutionWriter);

impl Store for Durable {
    fn record(&self, e: &Event) -> Result<(), String> {
        self.0.event(ExecutionEvent {
            id: e.id,
            previous_id: e.previous_event_id,
            time: e.timestamp,
            kind: e.kind.clone(),
            details: e.details.to_string(),
        });
        Ok(())
    }
    fn recall(&self, _key: &str) -> Result<Option<Value>, String> {
        Ok(None) // a new execution has no saved steps
    }
    fn remember(&self, key: &str, value: &Value) -> Result<(), String> {
        self.0.step(key, value.to_string());
        Ok(())
    }
    fn commit(&self) -> Result<(), String> {
        self.0.commit().map_err(|e| e.to_string())
    }
}

fn durable_store(
    dir: &std::path::Path,
    run: usize,
    definition: &Value,
    input: &Value,
) -> Arc<Durable> {
    let store = SqliteStore::open(&dir.join(format!("state-{run}.db"))).unwrap();
    let id = format!("bench-{run}");
    store
        .create_execution(&Execution {
            id: id.clone(),
            workflow: "bench".into(),
            definition: definition.to_string(),
            status: ExecutionStatus::Running,
            input: input.to_string(),
            output: None,
            error: None,
            cause: None,
            started_at: chrono::Utc::now(),
            stopped_at: None,
        })
        .unwrap();
    Arc::new(Durable(ExecutionWriter::new(Arc::new(store), &id)))
}

fn chain(steps: usize) -> Value {
    let mut states = serde_json::Map::new();
    for i in 0..steps {
        let name = format!("S{i}");
        let mut state = if i % 2 == 0 {
            json!({"Type": "Pass", "Parameters": {"step": i, "carried.$": "$.carried"}})
        } else {
            json!({"Type": "Task", "Resource": "sluice:echo", "ResultPath": "$"})
        };
        if i + 1 == steps {
            state["End"] = json!(true);
        } else {
            state["Next"] = json!(format!("S{}", i + 1));
        }
        states.insert(name, state);
    }
    json!({"StartAt": "S0", "States": states})
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(|a, b| a.partial_cmp(b).unwrap());
    xs[xs.len() / 2]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let runs: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(20);
    let interpreter = Interpreter::new(Arc::new(Echo), Arc::new(SystemClock));
    let info = || ExecutionInfo {
        id: "bench".into(),
        name: "bench".into(),
        state_machine: "bench".into(),
    };
    let machine = sluice_flow::from_value(&chain(40)).unwrap();
    let input = json!({"carried": "x"});

    let mut memory = Vec::new();
    for _ in 0..runs {
        let t = Instant::now();
        let o = interpreter
            .run(&machine, input.clone(), info(), History::default())
            .await;
        assert_eq!(o.status, sluice_flow::Status::Succeeded);
        memory.push(t.elapsed().as_secs_f64() * 1000.0 / 40.0);
    }

    let dir = tempfile::tempdir().unwrap();
    let mut durable = Vec::new();
    let mut events = 0;
    for run in 0..runs {
        let store = durable_store(dir.path(), run, &chain(40), &input);
        let t = Instant::now();
        let o = interpreter
            .run(
                &machine,
                input.clone(),
                info(),
                History::durable(store, Vec::new()),
            )
            .await;
        assert_eq!(o.status, sluice_flow::Status::Succeeded);
        durable.push(t.elapsed().as_secs_f64() * 1000.0 / 40.0);
        events = o.history.len();
    }

    let items: Vec<Value> = (0..10_000).map(|i| json!({"id": i})).collect();
    let mut map_rates = Vec::new();
    for concurrency in [0, 40] {
        let def = json!({"StartAt": "M", "States": {"M": {"Type": "Map", "MaxConcurrency": concurrency,
            "ItemProcessor": {"StartAt": "T", "States": {"T": {"Type": "Task", "Resource": "sluice:echo", "End": true}}},
            "End": true}}});
        let machine = sluice_flow::from_value(&def).unwrap();
        for is_durable in [false, true] {
            let mut rates = Vec::new();
            for run in 0..runs.div_ceil(4).max(3) {
                let history = if is_durable {
                    let store = durable_store(
                        dir.path(),
                        1000 + run + concurrency * 10,
                        &def,
                        &Value::Null,
                    );
                    History::durable(store, Vec::new())
                } else {
                    History::default()
                };
                let t = Instant::now();
                let o = interpreter
                    .run(&machine, Value::Array(items.clone()), info(), history)
                    .await;
                assert_eq!(
                    o.output.as_ref().and_then(Value::as_array).map(Vec::len),
                    Some(10_000)
                );
                rates.push(10_000.0 / t.elapsed().as_secs_f64());
            }
            map_rates.push((concurrency, is_durable, median(rates)));
        }
    }

    println!("40-step sequential workflow (20 Pass + 20 Task), median of {runs} runs:");
    println!("  in memory: {:.3} ms per step", median(memory));
    println!(
        "  durable ({events} events and 60 step results, committed to SQLite and fsync'd at each of the 40 transitions and before each of the 20 task calls): {:.3} ms per step",
        median(durable)
    );
    for (c, d, r) in map_rates {
        let how = if d { "durable" } else { "in memory" };
        println!("Map over 10,000 items (MaxConcurrency {c}, {how}): {r:.0} items/s");
    }
}
