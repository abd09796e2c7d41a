//! The event history of an execution, shaped like Step Functions'
//! GetExecutionHistory: numbered events, each pointing at the one before;
//! and, for a durable execution, the [`Store`] that keeps it and the results
//! of the steps already done.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// One event of an execution's history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub id: u64,
    #[serde(rename = "previousEventId")]
    pub previous_event_id: u64,
    pub timestamp: DateTime<Utc>,
    #[serde(rename = "type")]
    pub kind: String,
    /// The event's details (`name`, `input`, `output`, `error`, `cause`, …).
    #[serde(default, skip_serializing_if = "Value::is_null")]
    pub details: Value,
}

/// Keeps a durable execution: each event as it is recorded, and each finished
/// step (a state's output and where it went, a task's result, a wait's end)
/// under a key that names it, so that a resumed run skips what was done.
///
/// `record` and `remember` may buffer; `commit` returns once everything given
/// so far is durable. The interpreter commits when a state ends (before the
/// next one begins), before it calls a task, before it sleeps in a Wait state,
/// when a Map iteration or Parallel branch ends, and when the execution ends.
/// [`History::commit`] calls `commit` off the async threads, one at a time:
/// branches that commit meanwhile wait for the next call, which takes what
/// they all kept (group commit).
pub trait Store: Send + Sync {
    /// Keeps one event of the history.
    fn record(&self, event: &Event) -> Result<(), String>;
    /// What was saved under `key` by an earlier run of this execution.
    fn recall(&self, key: &str) -> Result<Option<Value>, String>;
    /// Keeps a finished step's result under `key`.
    fn remember(&self, key: &str, value: &Value) -> Result<(), String>;
    /// Makes everything kept so far durable.
    fn commit(&self) -> Result<(), String>;
}

/// The history being written by a running execution (shared by its branches).
#[derive(Clone, Default)]
pub struct History {
    events: Arc<Mutex<Vec<Event>>>,
    store: Option<Arc<dyn Store>>,
    /// The first error of the store: the execution stops at its next step.
    broken: Arc<Mutex<Option<String>>>,
    /// Records no events (the iterations of a distributed Map, whose events
    /// AWS keeps in child executions, not in the parent's history).
    muted: bool,
    /// Group commit of the store (shared by the execution's branches).
    commits: Arc<Commits>,
}

/// Counts what was kept and what is durable, so that one store commit serves
/// every branch waiting on it.
#[derive(Default)]
struct Commits {
    /// Writes handed to the store (events and steps).
    kept: AtomicU64,
    /// Writes known durable.
    durable: AtomicU64,
    /// Held by the branch committing the store.
    writing: tokio::sync::Mutex<()>,
    /// Wakes the branches waiting for a commit.
    done: tokio::sync::Notify,
}

impl History {
    /// A durable history: `past` holds the events an earlier run of this
    /// execution recorded (empty for a new execution); new ones follow them.
    pub fn durable(store: Arc<dyn Store>, past: Vec<Event>) -> History {
        History {
            events: Arc::new(Mutex::new(past)),
            store: Some(store),
            broken: Arc::default(),
            muted: false,
            commits: Arc::default(),
        }
    }

    /// The same execution's record, recording no events: steps are still saved.
    pub fn muted(&self) -> History {
        History {
            muted: true,
            ..self.clone()
        }
    }

    /// True when this history continues one recorded by an earlier run.
    pub fn is_resumed(&self) -> bool {
        !self.lock().is_empty()
    }

    /// When the execution started (its first event), if it has.
    pub fn started_at(&self) -> Option<DateTime<Utc>> {
        self.lock().first().map(|e| e.timestamp)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Event>> {
        self.events.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn fail(&self, why: String) {
        let mut broken = self.broken.lock().unwrap_or_else(|p| p.into_inner());
        broken.get_or_insert(why);
    }

    /// Records an event after `previous` (0: after the last one) and returns its id.
    pub fn record(&self, previous: u64, now: DateTime<Utc>, kind: &str, details: Value) -> u64 {
        if self.muted {
            return 0;
        }
        let mut events = self.lock();
        let id = events.len() as u64 + 1;
        let event = Event {
            id,
            previous_event_id: if previous == 0 { id - 1 } else { previous },
            timestamp: now,
            kind: kind.to_owned(),
            details,
        };
        if let Some(store) = &self.store {
            match store.record(&event) {
                // Counted once handed over: a commit that sees the count includes it.
                Ok(()) => {
                    self.commits.kept.fetch_add(1, Ordering::SeqCst);
                }
                Err(why) => self.fail(why),
            }
        }
        events.push(event);
        id
    }

    /// True when steps are saved (a durable execution).
    pub fn is_durable(&self) -> bool {
        self.store.is_some()
    }

    /// The result saved under `key` by an earlier run, if any.
    pub fn recall(&self, key: &str) -> Result<Option<Value>, String> {
        match &self.store {
            None => Ok(None),
            Some(store) => store.recall(key),
        }
    }

    /// Saves a step's result (nothing for a history kept in memory only).
    pub fn remember(&self, key: &str, value: &Value) -> Result<(), String> {
        match &self.store {
            None => Ok(()),
            Some(store) => {
                store.remember(key, value)?;
                self.commits.kept.fetch_add(1, Ordering::SeqCst);
                Ok(())
            }
        }
    }

    /// Makes everything recorded and remembered so far durable. Branches
    /// committing at once share store commits: one commits, in a blocking
    /// thread, all that was kept; the others wait for it. `alone` says no other
    /// branch of the execution can be running (a top-level state): the commit
    /// is then made on this thread, which saves handing it to another.
    pub async fn commit(&self, alone: bool) -> Result<(), String> {
        if let Some(why) = self.broken() {
            return Err(why);
        }
        let Some(store) = &self.store else {
            return Ok(());
        };
        let c = &self.commits;
        let mine = c.kept.load(Ordering::SeqCst);
        loop {
            if c.durable.load(Ordering::SeqCst) >= mine {
                return Ok(());
            }
            let done = c.done.notified();
            tokio::pin!(done);
            done.as_mut().enable();
            match c.writing.try_lock() {
                Ok(_writing) => {
                    if c.durable.load(Ordering::SeqCst) >= mine {
                        return Ok(());
                    }
                    // Everything counted so far is in the store's buffer.
                    let upto = c.kept.load(Ordering::SeqCst);
                    let written = if alone {
                        store.commit()
                    } else {
                        let store = store.clone();
                        tokio::task::spawn_blocking(move || store.commit())
                            .await
                            .map_err(|e| format!("the commit did not finish: {e}"))
                            .and_then(|r| r)
                    };
                    if let Err(why) = &written {
                        self.fail(why.clone());
                    } else {
                        c.durable.fetch_max(upto, Ordering::SeqCst);
                    }
                    c.done.notify_waiters();
                    return written;
                }
                Err(_) => {
                    done.await;
                    if let Some(why) = self.broken() {
                        return Err(why);
                    }
                }
            }
        }
    }

    /// The store's first error, if it failed to keep an event.
    pub fn broken(&self) -> Option<String> {
        self.broken
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn events(&self) -> Vec<Event> {
        self.lock().clone()
    }
}
