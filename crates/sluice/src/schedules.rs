//! Schedules: each `[schedules.NAME]` of the project starts its workflow at
//! every tick, in the process that owns the data directory (`sluice up`).
//!
//! A tick is claimed and its execution created in one transaction
//! ([`ExecutionStore::fire_schedule_tick`](sluice_state::ExecutionStore)), so
//! a tick never starts two executions across restarts. Ticks missed while
//! nothing ran follow the schedule's policy: `skip` (the default) fires only
//! a tick that is due now, `catch-up` fires the missed ones, oldest first, at
//! most `catch_up_limit` of them.
//!
//! Inputs may carry EventBridge Scheduler's context attributes:
//! `<aws.scheduler.scheduled-time>`, `<aws.scheduler.execution-id>` and
//! `<aws.scheduler.schedule-arn>` are replaced in every string of the input.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::Value;
use sluice_model::config::{Missed, ScheduleSpec};
use tokio_util::sync::CancellationToken;

use crate::platform::Platform;
use crate::workflows;

/// How late a tick may be and still count as due now, not missed.
const GRACE: chrono::TimeDelta = chrono::TimeDelta::seconds(30);

/// What to do with a schedule's ticks at `now`.
#[derive(Debug, PartialEq)]
pub struct Plan {
    /// Ticks to fire, oldest first.
    pub fire: Vec<DateTime<Utc>>,
    /// The newest tick skipped and how many were, if any.
    pub skipped: Option<(DateTime<Utc>, usize)>,
}

/// Plans the ticks in `(after, now]` by the schedule's policy.
pub fn plan(spec: &ScheduleSpec, after: DateTime<Utc>, now: DateTime<Utc>) -> Plan {
    match spec.missed {
        Missed::Skip => {
            let (due, dropped) = spec.schedule.ticks_between(after, now, 1);
            match due.first() {
                Some(&tick) if now - tick <= GRACE => Plan {
                    fire: vec![tick],
                    skipped: None,
                },
                Some(&tick) => Plan {
                    fire: Vec::new(),
                    skipped: Some((tick, dropped + 1)),
                },
                None => Plan {
                    fire: Vec::new(),
                    skipped: None,
                },
            }
        }
        Missed::CatchUp(limit) => {
            let (due, dropped) = spec.schedule.ticks_between(after, now, limit);
            // The newest dropped tick is just before the first one kept.
            let skipped = (dropped > 0).then(|| {
                let first_kept = due.first().copied().unwrap_or(now);
                let mut newest = after;
                while let Some(t) = spec.schedule.next_after(newest) {
                    if t >= first_kept {
                        break;
                    }
                    newest = t;
                }
                (newest, dropped)
            });
            Plan { fire: due, skipped }
        }
    }
}

/// Runs the project's schedules until `shutdown`.
pub async fn run(platform: Arc<Platform>, shutdown: CancellationToken) {
    if platform.project.schedules.is_empty() {
        return;
    }
    // A schedule never fired before starts from now: its past is not missed.
    let started = Utc::now();
    loop {
        let now = Utc::now();
        let mut wake = now + chrono::TimeDelta::seconds(60);
        for spec in platform.project.schedules.values() {
            match tick(&platform, spec, started, now) {
                Ok(Some(next)) => wake = wake.min(next),
                Ok(None) => {}
                Err(e) => {
                    tracing::error!(schedule = %spec.name, error = %format!("{e:#}"), "schedule tick failed; retrying");
                    wake = wake.min(now + chrono::TimeDelta::seconds(1));
                }
            }
        }
        let sleep = (wake - Utc::now()).to_std().unwrap_or_default();
        tokio::select! {
            () = tokio::time::sleep(sleep.max(Duration::from_millis(5))) => {}
            () = shutdown.cancelled() => return,
        }
    }
}

/// Fires what is due of one schedule; returns when it next ticks.
fn tick(
    platform: &Arc<Platform>,
    spec: &ScheduleSpec,
    started: DateTime<Utc>,
    now: DateTime<Utc>,
) -> anyhow::Result<Option<DateTime<Utc>>> {
    let store = &platform.executions;
    let after = store.last_schedule_tick(&spec.name)?.unwrap_or(started);
    let plan = plan(spec, after, now);
    if let Some((newest, count)) = plan.skipped {
        tracing::warn!(schedule = %spec.name, skipped = count, newest = %newest, "skipping ticks missed while sluice was down");
        store.skip_schedule_ticks(&spec.name, newest)?;
    }
    let workflow = &platform.project.workflows[&spec.workflow];
    for at in &plan.fire {
        let id = uuid::Uuid::now_v7().to_string();
        let input = with_context(&spec.input, spec, *at, &id);
        let execution = workflows::new_execution(&id, &spec.workflow, &workflow.definition, &input);
        if store.fire_schedule_tick(&spec.name, *at, &execution)? {
            tracing::info!(schedule = %spec.name, tick = %at, execution = %id, "schedule fired");
            crate::routing::emit(
                platform,
                crate::routing::tick_envelope(&spec.name, *at, &platform.project.s3.region),
            );
            workflows::spawn(platform.clone(), execution);
        }
    }
    let last = plan.fire.last().copied().unwrap_or(after).max(now);
    Ok(spec.schedule.next_after(last))
}

/// The input with EventBridge Scheduler's context attributes filled in.
fn with_context(input: &Value, spec: &ScheduleSpec, at: DateTime<Utc>, id: &str) -> Value {
    match input {
        Value::String(s) if s.contains("<aws.scheduler.") => Value::String(
            s.replace(
                "<aws.scheduler.scheduled-time>",
                &at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            )
            .replace("<aws.scheduler.execution-id>", id)
            .replace(
                "<aws.scheduler.schedule-arn>",
                &format!("arn:sluice:scheduler:local:schedule/{}", spec.name),
            ),
        ),
        Value::Array(items) => Value::Array(
            items
                .iter()
                .map(|v| with_context(v, spec, at, id))
                .collect(),
        ),
        Value::Object(m) => Value::Object(
            m.iter()
                .map(|(k, v)| (k.clone(), with_context(v, spec, at, id)))
                .collect(),
        ),
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(expression: &str, missed: Missed) -> ScheduleSpec {
        ScheduleSpec {
            name: "nightly".into(),
            schedule: sluice_model::schedule::Schedule::parse(expression, "UTC").unwrap(),
            workflow: "nightly".into(),
            input: serde_json::json!({"at": "<aws.scheduler.scheduled-time>", "n": [1]}),
            missed,
        }
    }

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn a_tick_due_now_fires_and_the_past_is_not_missed_on_first_start() {
        let s = spec("cron(0 4 * * ? *)", Missed::Skip);
        let p = plan(&s, at("2024-01-15T03:59:59Z"), at("2024-01-15T04:00:00.2Z"));
        assert_eq!(p.fire, [at("2024-01-15T04:00:00Z")]);
        assert_eq!(p.skipped, None);
        let p = plan(&s, at("2024-01-15T04:00:00Z"), at("2024-01-15T05:00:00Z"));
        assert_eq!(
            p,
            Plan {
                fire: vec![],
                skipped: None
            }
        );
    }

    #[test]
    fn skip_drops_ticks_missed_during_downtime() {
        let s = spec("cron(0 4 * * ? *)", Missed::Skip);
        // Down from the 14th to the 17th at noon: the 15th, 16th and 17th were missed.
        let p = plan(&s, at("2024-01-14T04:00:00Z"), at("2024-01-17T12:00:00Z"));
        assert_eq!(p.fire, Vec::<DateTime<Utc>>::new());
        assert_eq!(p.skipped, Some((at("2024-01-17T04:00:00Z"), 3)));
    }

    #[test]
    fn catch_up_fires_missed_ticks_oldest_first_within_its_bound() {
        let s = spec("cron(0 4 * * ? *)", Missed::CatchUp(2));
        let p = plan(&s, at("2024-01-14T04:00:00Z"), at("2024-01-17T12:00:00Z"));
        assert_eq!(
            p.fire,
            [at("2024-01-16T04:00:00Z"), at("2024-01-17T04:00:00Z")]
        );
        assert_eq!(p.skipped, Some((at("2024-01-15T04:00:00Z"), 1)));
        let s = spec("cron(0 4 * * ? *)", Missed::CatchUp(10));
        let p = plan(&s, at("2024-01-14T04:00:00Z"), at("2024-01-17T12:00:00Z"));
        assert_eq!(p.fire.len(), 3);
        assert_eq!(p.skipped, None);
    }

    #[test]
    fn inputs_get_the_scheduler_context_attributes() {
        let s = spec("cron(0 4 * * ? *)", Missed::Skip);
        let v = with_context(&s.input, &s, at("2024-01-15T04:00:00Z"), "e1");
        assert_eq!(
            v,
            serde_json::json!({"at": "2024-01-15T04:00:00Z", "n": [1]})
        );
    }
}
