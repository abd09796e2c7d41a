//! [`ExecutionStore`] on SQLite: executions, their histories and saved steps.

use chrono::{DateTime, Utc};
use rusqlite::{OptionalExtension as _, Row, params};

use super::{
    CachedSql as _, EVENT_COLUMNS, SqliteStore, check_event, event_from_row, from_micros, micros,
};
use crate::{Error, Execution, ExecutionEvent, ExecutionStatus, ExecutionStore, Result};

const COLUMNS: &str =
    "id, workflow, definition, status, input, output, error, cause, started_at, stopped_at";

fn insert_execution(conn: &rusqlite::Connection, e: &Execution) -> rusqlite::Result<usize> {
    conn.execute_cached(
        &format!(
            "INSERT INTO executions ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)"
        ),
        params![
            e.id,
            e.workflow,
            e.definition,
            e.status.as_str(),
            e.input,
            e.output,
            e.error,
            e.cause,
            micros(e.started_at),
            e.stopped_at.map(micros),
        ],
    )
}

fn execution_from_row(r: &Row<'_>) -> rusqlite::Result<Execution> {
    let status: String = r.get(3)?;
    Ok(Execution {
        id: r.get(0)?,
        workflow: r.get(1)?,
        definition: r.get(2)?,
        status: ExecutionStatus::parse(&status).ok_or_else(|| {
            rusqlite::Error::FromSqlConversionFailure(
                3,
                rusqlite::types::Type::Text,
                format!("unknown execution status {status:?}").into(),
            )
        })?,
        input: r.get(4)?,
        output: r.get(5)?,
        error: r.get(6)?,
        cause: r.get(7)?,
        started_at: from_micros(r.get(8)?),
        stopped_at: r.get::<_, Option<i64>>(9)?.map(from_micros),
    })
}

impl ExecutionStore for SqliteStore {
    fn create_execution(&self, e: &Execution) -> Result<()> {
        self.with(|conn| {
            insert_execution(conn, e)?;
            Ok(())
        })
    }

    fn finish_execution(&self, e: &Execution) -> Result<()> {
        self.with(|conn| {
            let changed = conn.execute_cached(
                "UPDATE executions SET status = ?2, output = ?3, error = ?4, cause = ?5, stopped_at = ?6
                 WHERE id = ?1",
                params![
                    e.id,
                    e.status.as_str(),
                    e.output,
                    e.error,
                    e.cause,
                    e.stopped_at.map(micros),
                ],
            )?;
            if changed == 0 {
                return Err(Error::NotFound {
                    what: "execution",
                    id: e.id.clone(),
                });
            }
            Ok(())
        })
    }

    fn list_executions(&self, limit: usize) -> Result<Vec<Execution>> {
        self.with(|conn| {
            let mut stmt = conn.prepare_cached(&format!(
                "SELECT {COLUMNS} FROM executions ORDER BY started_at DESC, id DESC LIMIT ?1"
            ))?;
            let rows = stmt.query_map([limit as i64], execution_from_row)?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
    }

    fn get_execution(&self, id: &str) -> Result<Execution> {
        self.with(|conn| {
            let pattern = format!("{}%", id.replace(['%', '_'], ""));
            let mut stmt = conn.prepare_cached(&format!(
                "SELECT {COLUMNS} FROM executions WHERE id LIKE ?1 ORDER BY started_at LIMIT 2"
            ))?;
            let mut found = stmt
                .query_map([pattern], execution_from_row)?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            if found.len() == 1 && !id.is_empty() {
                Ok(found.remove(0))
            } else {
                Err(Error::NotFound {
                    what: if found.is_empty() {
                        "execution"
                    } else {
                        "unique execution for prefix"
                    },
                    id: id.to_string(),
                })
            }
        })
    }

    fn running_executions(&self) -> Result<Vec<Execution>> {
        self.with(|conn| {
            let mut stmt = conn.prepare_cached(&format!(
                "SELECT {COLUMNS} FROM executions WHERE status = 'RUNNING' ORDER BY started_at, id"
            ))?;
            let rows = stmt.query_map([], execution_from_row)?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
    }

    fn append_execution_event(&self, execution: &str, e: &ExecutionEvent) -> Result<()> {
        self.append_execution_batch(execution, std::slice::from_ref(e), &[])
    }

    fn append_execution_batch(
        &self,
        execution: &str,
        events: &[ExecutionEvent],
        steps: &[(String, String)],
    ) -> Result<()> {
        self.with(|conn| {
            let tx = conn.transaction()?;
            {
                let mut insert_event = tx.prepare_cached(
                    "INSERT INTO execution_events (execution_id, id, previous_id, time, kind, details)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                )?;
                for e in events {
                    insert_event.execute(params![
                        execution,
                        e.id as i64,
                        e.previous_id as i64,
                        micros(e.time),
                        e.kind,
                        e.details,
                    ])?;
                }
                let mut save_step = tx.prepare_cached(
                    "INSERT INTO execution_steps (execution_id, key, value) VALUES (?1, ?2, ?3)
                     ON CONFLICT(execution_id, key) DO UPDATE SET value = excluded.value",
                )?;
                for (key, value) in steps {
                    save_step.execute(params![execution, key, value])?;
                }
            }
            tx.commit()?;
            Ok(())
        })
    }

    fn execution_events(&self, execution: &str) -> Result<Vec<ExecutionEvent>> {
        self.with(|conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT id, previous_id, time, kind, details FROM execution_events
                 WHERE execution_id = ?1 ORDER BY id",
            )?;
            let rows = stmt.query_map([execution], |r| {
                Ok(ExecutionEvent {
                    id: r.get::<_, i64>(0)? as u64,
                    previous_id: r.get::<_, i64>(1)? as u64,
                    time: from_micros(r.get(2)?),
                    kind: r.get(3)?,
                    details: r.get(4)?,
                })
            })?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
    }

    fn save_execution_step(&self, execution: &str, key: &str, value: &str) -> Result<()> {
        self.append_execution_batch(execution, &[], &[(key.to_owned(), value.to_owned())])
    }

    fn fire_schedule_tick(
        &self,
        schedule: &str,
        tick: DateTime<Utc>,
        execution: &Execution,
    ) -> Result<bool> {
        self.with(|conn| {
            let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let claimed = tx.execute_cached(
                "INSERT INTO schedule_ticks (schedule, tick, execution_id, recorded_at)
                 VALUES (?1, ?2, ?3, ?4) ON CONFLICT(schedule, tick) DO NOTHING",
                params![schedule, micros(tick), execution.id, micros(Utc::now())],
            )?;
            if claimed == 0 {
                return Ok(false);
            }
            insert_execution(&tx, execution)?;
            tx.commit()?;
            Ok(true)
        })
    }

    fn skip_schedule_ticks(&self, schedule: &str, tick: DateTime<Utc>) -> Result<()> {
        self.with(|conn| {
            conn.execute_cached(
                "INSERT INTO schedule_ticks (schedule, tick, execution_id, recorded_at)
                 VALUES (?1, ?2, NULL, ?3) ON CONFLICT(schedule, tick) DO NOTHING",
                params![schedule, micros(tick), micros(Utc::now())],
            )?;
            Ok(())
        })
    }

    fn last_schedule_tick(&self, schedule: &str) -> Result<Option<DateTime<Utc>>> {
        self.with(|conn| {
            let tick: Option<i64> = conn.query_row_cached(
                "SELECT MAX(tick) FROM schedule_ticks WHERE schedule = ?1",
                [schedule],
                |r| r.get(0),
            )?;
            Ok(tick.map(from_micros))
        })
    }

    fn put_custom_event(&self, id: &str, body: &str, time: DateTime<Utc>) -> Result<i64> {
        self.with(|conn| {
            conn.execute_cached(
                "INSERT INTO custom_events (id, body, time) VALUES (?1, ?2, ?3)",
                params![id, body, micros(time)],
            )?;
            Ok(conn.last_insert_rowid())
        })
    }

    fn custom_events_after(&self, after: i64, limit: usize) -> Result<Vec<(i64, String)>> {
        self.with(|conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT seq, body FROM custom_events WHERE seq > ?1 ORDER BY seq LIMIT ?2",
            )?;
            let rows =
                stmt.query_map(params![after, limit as i64], |r| Ok((r.get(0)?, r.get(1)?)))?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
    }

    fn object_events_after(&self, after: i64, limit: usize) -> Result<Vec<crate::StoredEvent>> {
        self.with(|conn| {
            let mut stmt = conn.prepare_cached(&format!(
                "SELECT {EVENT_COLUMNS} FROM events WHERE seq > ?1 ORDER BY seq LIMIT ?2"
            ))?;
            let rows = stmt.query_map(params![after, limit as i64], event_from_row)?;
            rows.map(|r| check_event(r?)).collect()
        })
    }

    fn stream_head(&self, stream: &str) -> Result<i64> {
        let table = match stream {
            "objects" => "events",
            "custom" => "custom_events",
            other => {
                return Err(Error::NotFound {
                    what: "event stream",
                    id: other.to_owned(),
                });
            }
        };
        self.with(|conn| {
            Ok(conn.query_row_cached(
                &format!("SELECT COALESCE(MAX(seq), 0) FROM {table}"),
                [],
                |r| r.get(0),
            )?)
        })
    }

    fn routing_cursor(&self, stream: &str) -> Result<Option<i64>> {
        self.with(|conn| {
            Ok(conn
                .query_row_cached(
                    "SELECT seq FROM routing_cursors WHERE stream = ?1",
                    [stream],
                    |r| r.get(0),
                )
                .optional()?)
        })
    }

    fn route_events(&self, stream: &str, seq: i64, executions: &[Execution]) -> Result<()> {
        self.with(|conn| {
            let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            tx.execute_cached(
                "INSERT INTO routing_cursors (stream, seq) VALUES (?1, ?2)
                 ON CONFLICT(stream) DO UPDATE SET seq = excluded.seq",
                params![stream, seq],
            )?;
            for e in executions {
                insert_execution(&tx, e)?;
            }
            tx.commit()?;
            Ok(())
        })
    }

    fn failed_executions(&self, limit: usize) -> Result<Vec<Execution>> {
        self.with(|conn| {
            let mut stmt = conn.prepare_cached(&format!(
                "SELECT {COLUMNS} FROM executions
                 WHERE status IN ('FAILED', 'TIMED_OUT') AND redriven_as IS NULL
                 ORDER BY stopped_at DESC, id DESC LIMIT ?1"
            ))?;
            let rows = stmt.query_map([limit as i64], execution_from_row)?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
    }

    fn redrive_execution(&self, failed: &str, new: &Execution) -> Result<()> {
        self.with(|conn| {
            let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let taken = tx.execute_cached(
                "UPDATE executions SET redriven_as = ?2
                 WHERE id = ?1 AND status IN ('FAILED', 'TIMED_OUT') AND redriven_as IS NULL",
                params![failed, new.id],
            )?;
            if taken == 0 {
                return Err(Error::NotFound {
                    what: "failed execution not yet redriven",
                    id: failed.to_owned(),
                });
            }
            insert_execution(&tx, new)?;
            tx.commit()?;
            Ok(())
        })
    }

    fn execution_steps(&self, execution: &str) -> Result<Vec<(String, String)>> {
        self.with(|conn| {
            let mut stmt = conn
                .prepare_cached("SELECT key, value FROM execution_steps WHERE execution_id = ?1")?;
            let rows = stmt.query_map([execution], |r| Ok((r.get(0)?, r.get(1)?)))?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::ExecutionWriter;

    fn execution(id: &str) -> Execution {
        Execution {
            id: id.into(),
            workflow: "taxi".into(),
            definition: r#"{"StartAt":"A","States":{"A":{"Type":"Succeed"}}}"#.into(),
            status: ExecutionStatus::Running,
            input: "{}".into(),
            output: None,
            error: None,
            cause: None,
            started_at: Utc::now(),
            stopped_at: None,
        }
    }

    #[test]
    fn an_execution_keeps_its_history_and_steps_across_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        {
            let store = SqliteStore::open(&path).unwrap();
            store.create_execution(&execution("0190-a")).unwrap();
            for id in 1..=3 {
                store
                    .append_execution_event(
                        "0190-a",
                        &ExecutionEvent {
                            id,
                            previous_id: id - 1,
                            time: Utc::now(),
                            kind: format!("Event{id}"),
                            details: "{}".into(),
                        },
                    )
                    .unwrap();
            }
            store
                .save_execution_step("0190-a", "A#1", r#"{"output":1}"#)
                .unwrap();
            store
                .save_execution_step("0190-a", "A#1", r#"{"output":2}"#)
                .unwrap();
        }
        let store = SqliteStore::open(&path).unwrap();
        let running = store.running_executions().unwrap();
        assert_eq!(running.len(), 1);
        assert_eq!(running[0].workflow, "taxi");
        let kinds: Vec<_> = store
            .execution_events("0190-a")
            .unwrap()
            .into_iter()
            .map(|e| e.kind)
            .collect();
        assert_eq!(kinds, ["Event1", "Event2", "Event3"]);
        assert_eq!(
            store.execution_steps("0190-a").unwrap(),
            [("A#1".to_string(), r#"{"output":2}"#.to_string())]
        );
        // An event id is recorded once.
        assert!(
            store
                .append_execution_event(
                    "0190-a",
                    &ExecutionEvent {
                        id: 2,
                        previous_id: 1,
                        time: Utc::now(),
                        kind: "Again".into(),
                        details: "{}".into(),
                    },
                )
                .is_err()
        );
    }

    #[test]
    fn a_writer_commits_what_was_buffered_in_one_transaction() {
        let store: Arc<SqliteStore> = Arc::new(SqliteStore::open_in_memory().unwrap());
        store.create_execution(&execution("0190-a")).unwrap();
        let writer = ExecutionWriter::new(store.clone(), "0190-a");
        for id in 1..=2 {
            writer.event(ExecutionEvent {
                id,
                previous_id: id - 1,
                time: Utc::now(),
                kind: format!("Event{id}"),
                details: "null".into(),
            });
        }
        writer.step("A#1", "{}".into());
        assert!(
            store.execution_events("0190-a").unwrap().is_empty(),
            "nothing before the commit"
        );
        writer.commit().unwrap();
        assert_eq!(store.execution_events("0190-a").unwrap().len(), 2);
        assert_eq!(store.execution_steps("0190-a").unwrap().len(), 1);
        writer.commit().unwrap(); // nothing buffered: nothing written, no error
        // A batch that cannot be written (event id 1 again) is refused whole.
        writer.event(ExecutionEvent {
            id: 1,
            previous_id: 0,
            time: Utc::now(),
            kind: "Again".into(),
            details: "null".into(),
        });
        writer.step("B#1", "{}".into());
        assert!(writer.commit().is_err());
        assert_eq!(store.execution_steps("0190-a").unwrap().len(), 1);
    }

    #[test]
    fn a_schedule_tick_starts_one_execution_whatever_happens() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        let tick = DateTime::parse_from_rfc3339("2024-01-15T04:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        {
            let store = SqliteStore::open(&path).unwrap();
            assert_eq!(store.last_schedule_tick("nightly").unwrap(), None);
            assert!(
                store
                    .fire_schedule_tick("nightly", tick, &execution("e1"))
                    .unwrap()
            );
            // The same tick again (a second process, a restart): nothing.
            assert!(
                !store
                    .fire_schedule_tick("nightly", tick, &execution("e2"))
                    .unwrap()
            );
        }
        let store = SqliteStore::open(&path).unwrap();
        assert!(
            !store
                .fire_schedule_tick("nightly", tick, &execution("e3"))
                .unwrap()
        );
        let ids: Vec<_> = store
            .list_executions(10)
            .unwrap()
            .into_iter()
            .map(|e| e.id)
            .collect();
        assert_eq!(ids, ["e1"]);
        assert_eq!(store.last_schedule_tick("nightly").unwrap(), Some(tick));
        // Skipped ticks move the schedule on without an execution.
        let later = tick + chrono::Duration::days(3);
        store.skip_schedule_ticks("nightly", later).unwrap();
        assert_eq!(store.last_schedule_tick("nightly").unwrap(), Some(later));
        assert!(
            !store
                .fire_schedule_tick("nightly", later, &execution("e4"))
                .unwrap()
        );
        assert_eq!(store.list_executions(10).unwrap().len(), 1);
        assert_eq!(store.last_schedule_tick("other").unwrap(), None);
    }

    #[test]
    fn routed_events_start_their_executions_with_the_cursor_in_one_transaction() {
        let store = SqliteStore::open_in_memory().unwrap();
        assert_eq!(store.routing_cursor("custom").unwrap(), None);
        let t = Utc::now();
        let a = store
            .put_custom_event("ev-a", r#"{"source":"my.app"}"#, t)
            .unwrap();
        let b = store
            .put_custom_event("ev-b", r#"{"source":"other"}"#, t)
            .unwrap();
        assert!(
            store.put_custom_event("ev-a", "{}", t).is_err(),
            "an event id is unique"
        );
        assert_eq!(store.stream_head("custom").unwrap(), b);
        assert_eq!(store.stream_head("objects").unwrap(), 0);
        let pending = store.custom_events_after(0, 10).unwrap();
        assert_eq!(pending.iter().map(|(s, _)| *s).collect::<Vec<_>>(), [a, b]);
        store.route_events("custom", b, &[execution("e1")]).unwrap();
        assert_eq!(store.routing_cursor("custom").unwrap(), Some(b));
        assert!(store.custom_events_after(b, 10).unwrap().is_empty());
        // A batch that cannot be created whole leaves the cursor where it was.
        store.put_custom_event("ev-c", "{}", t).unwrap();
        assert!(
            store
                .route_events("custom", b + 1, &[execution("e1")])
                .is_err()
        );
        assert_eq!(store.routing_cursor("custom").unwrap(), Some(b));
        assert!(store.stream_head("nope").is_err());
    }

    #[test]
    fn failed_executions_wait_in_the_dead_letter_queue_until_redriven_once() {
        let store = SqliteStore::open_in_memory().unwrap();
        store.create_execution(&execution("e1")).unwrap();
        assert!(
            store.failed_executions(10).unwrap().is_empty(),
            "running is not failed"
        );
        let mut failed = execution("e1");
        failed.status = ExecutionStatus::Failed;
        failed.stopped_at = Some(Utc::now());
        store.finish_execution(&failed).unwrap();
        assert_eq!(store.failed_executions(10).unwrap()[0].id, "e1");
        store.redrive_execution("e1", &execution("e2")).unwrap();
        assert!(store.failed_executions(10).unwrap().is_empty());
        assert!(
            store.redrive_execution("e1", &execution("e3")).is_err(),
            "once"
        );
        assert!(
            store.redrive_execution("e2", &execution("e4")).is_err(),
            "e2 runs"
        );
        assert_eq!(store.running_executions().unwrap()[0].id, "e2");
        assert_eq!(store.list_executions(10).unwrap().len(), 2);
    }

    #[test]
    fn finished_executions_are_not_resumed_and_are_found_by_prefix() {
        let store = SqliteStore::open_in_memory().unwrap();
        store.create_execution(&execution("0190-a")).unwrap();
        store.create_execution(&execution("0191-b")).unwrap();
        let mut done = execution("0190-a");
        done.status = ExecutionStatus::Failed;
        done.error = Some("States.TaskFailed".into());
        done.cause = Some("boom".into());
        done.stopped_at = Some(Utc::now());
        store.finish_execution(&done).unwrap();
        let running: Vec<_> = store
            .running_executions()
            .unwrap()
            .into_iter()
            .map(|e| e.id)
            .collect();
        assert_eq!(running, ["0191-b"]);
        let found = store.get_execution("0190").unwrap();
        assert_eq!(found.status, ExecutionStatus::Failed);
        assert_eq!(found.cause.as_deref(), Some("boom"));
        assert!(matches!(
            store.get_execution("019"),
            Err(Error::NotFound {
                what: "unique execution for prefix",
                ..
            })
        ));
        assert!(store.get_execution("zzz").is_err());
        assert!(store.finish_execution(&execution("nope")).is_err());
        assert_eq!(store.list_executions(1).unwrap().len(), 1);
    }
}
