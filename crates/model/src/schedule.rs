//! Schedule expressions as EventBridge writes them, and standard cron.
//!
//! - `cron(minutes hours day-of-month month day-of-week year)`: EventBridge's
//!   six fields, with `?`, `L`, `W`, `#`, names (`MON`, `JAN`) and
//!   day-of-week 1-7 = SUN-SAT; one of the two day fields must be `?`.
//! - `rate(N unit)`: every N minutes, hours or days (`rate(1 hour)`,
//!   `rate(5 minutes)`), on the multiples of N units since 1970-01-01 00:00
//!   in the schedule's time zone offset (UTC: a day rate fires at midnight), so
//!   the ticks do not move when the process restarts. `second(s)` is also
//!   accepted (a sluice extension, for tests and demos).
//! - Five-field cron (`0 4 * * *`): minute hour day-of-month month
//!   day-of-week, day-of-week 0-7 with 0 and 7 = Sunday, as crontab has it.
//!
//! Times are evaluated in the schedule's IANA time zone, across daylight
//! saving changes as croner handles them.

use std::time::Duration;

use chrono::{DateTime, Offset as _, TimeZone as _, Utc};
use chrono_tz::Tz;
use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};

/// A parsed schedule expression with its time zone.
#[derive(Debug, Clone)]
pub struct Schedule {
    expression: String,
    timezone: Tz,
    kind: Kind,
}

#[derive(Debug, Clone)]
enum Kind {
    Cron(Box<Cron>),
    Rate(Duration),
}

/// Why an expression was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("schedule expression {expression:?} is not valid: {why}")]
pub struct ScheduleError {
    /// The expression.
    pub expression: String,
    /// Why.
    pub why: String,
}

impl Schedule {
    /// Parses an expression to be evaluated in `timezone` (an IANA name, e.g. `Europe/Paris`).
    pub fn parse(expression: &str, timezone: &str) -> Result<Schedule, ScheduleError> {
        let fail = |why: String| ScheduleError {
            expression: expression.to_owned(),
            why,
        };
        let timezone: Tz = timezone.parse().map_err(|_| {
            fail(format!(
                "{timezone:?} is not an IANA time zone (e.g. UTC, America/New_York)"
            ))
        })?;
        let text = expression.trim();
        let kind = if let Some(inner) = strip_call(text, "cron") {
            Kind::Cron(Box::new(eventbridge_cron(inner).map_err(fail)?))
        } else if let Some(inner) = strip_call(text, "rate") {
            Kind::Rate(rate(inner).map_err(fail)?)
        } else if text.split_whitespace().count() == 5 {
            let cron = CronParser::builder()
                .seconds(Seconds::Optional)
                .year(Year::Optional)
                .build()
                .parse(text)
                .map_err(|e| fail(e.to_string()))?;
            Kind::Cron(Box::new(cron))
        } else {
            return Err(fail(
                "write cron(minutes hours day-of-month month day-of-week year), rate(N minutes|hours|days) or a five-field cron line".into(),
            ));
        };
        Ok(Schedule {
            expression: expression.to_owned(),
            timezone,
            kind,
        })
    }

    /// The expression as written.
    pub fn expression(&self) -> &str {
        &self.expression
    }

    /// The time zone it is evaluated in.
    pub fn timezone(&self) -> Tz {
        self.timezone
    }

    /// The first tick strictly after `after`, if there is one.
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match &self.kind {
            Kind::Cron(cron) => {
                // Ticks fall on whole seconds: start from the second `after` is in.
                let start = DateTime::from_timestamp(after.timestamp(), 0)?;
                let local = start.with_timezone(&self.timezone);
                cron.find_next_occurrence(&local, false)
                    .ok()
                    .map(|t| t.with_timezone(&Utc))
            }
            Kind::Rate(every) => {
                let every = every.as_secs() as i64;
                let offset = self
                    .timezone
                    .offset_from_utc_datetime(&after.naive_utc())
                    .fix()
                    .local_minus_utc() as i64;
                let local = after.timestamp() + offset;
                let next = (local.div_euclid(every) + 1) * every - offset;
                Utc.timestamp_opt(next, 0).single()
            }
        }
    }

    /// The ticks in `(after, until]`, oldest first, at most `limit` of them
    /// (the newest when there are more).
    pub fn ticks_between(
        &self,
        after: DateTime<Utc>,
        until: DateTime<Utc>,
        limit: usize,
    ) -> (Vec<DateTime<Utc>>, usize) {
        let mut ticks = std::collections::VecDeque::new();
        let mut dropped = 0;
        let mut at = after;
        while let Some(next) = self.next_after(at) {
            if next > until {
                break;
            }
            if ticks.len() == limit {
                ticks.pop_front();
                dropped += 1;
            }
            if limit > 0 {
                ticks.push_back(next);
            } else {
                dropped += 1;
            }
            at = next;
        }
        (ticks.into(), dropped)
    }
}

fn strip_call<'a>(text: &'a str, name: &str) -> Option<&'a str> {
    text.strip_prefix(name)?
        .trim_start()
        .strip_prefix('(')?
        .strip_suffix(')')
}

/// EventBridge's six cron fields, with its rule that one day field is `?`.
fn eventbridge_cron(inner: &str) -> Result<Cron, String> {
    let fields: Vec<&str> = inner.split_whitespace().collect();
    if fields.len() != 6 {
        return Err(format!(
            "cron() takes 6 fields (minutes hours day-of-month month day-of-week year), found {}",
            fields.len()
        ));
    }
    let (dom, dow) = (fields[2], fields[4]);
    if (dom == "?") == (dow == "?") {
        return Err(
            "one of day-of-month and day-of-week must be `?` (e.g. cron(0 4 * * ? *))".into(),
        );
    }
    let seven = format!("0 {}", fields.join(" "));
    CronParser::builder()
        .seconds(Seconds::Optional)
        .year(Year::Optional)
        .alternative_weekdays(true)
        .build()
        .parse(&seven)
        .map_err(|e| e.to_string())
}

fn rate(inner: &str) -> Result<Duration, String> {
    let mut parts = inner.split_whitespace();
    let (Some(value), Some(unit), None) = (parts.next(), parts.next(), parts.next()) else {
        return Err("rate() takes a value and a unit, e.g. rate(5 minutes)".into());
    };
    let n: u64 = value
        .parse()
        .ok()
        .filter(|n| *n > 0)
        .ok_or_else(|| format!("the rate value {value:?} is not a positive whole number"))?;
    let (singular, seconds) = match unit {
        "second" | "seconds" => ("second", 1),
        "minute" | "minutes" => ("minute", 60),
        "hour" | "hours" => ("hour", 3600),
        "day" | "days" => ("day", 86_400),
        other => {
            return Err(format!(
                "the rate unit {other:?} is not minute(s), hour(s) or day(s)"
            ));
        }
    };
    // EventBridge's own rule: `1 minute`, `5 minutes`.
    if (n == 1) != (unit == singular) {
        return Err(format!(
            "write rate(1 {singular}) for one and rate(N {singular}s) for more"
        ));
    }
    Ok(Duration::from_secs(n * seconds))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn next(expr: &str, tz: &str, after: &str) -> String {
        Schedule::parse(expr, tz)
            .unwrap()
            .next_after(at(after))
            .unwrap()
            .to_rfc3339()
    }

    #[test]
    fn the_taxi_schedule_fires_daily_at_four_utc() {
        let s = Schedule::parse("cron(0 4 * * ? *)", "UTC").unwrap();
        let (ticks, dropped) =
            s.ticks_between(at("2024-01-01T03:00:00Z"), at("2024-01-04T04:00:00Z"), 10);
        let ticks: Vec<String> = ticks.iter().map(|t| t.to_rfc3339()).collect();
        assert_eq!(
            ticks,
            [
                "2024-01-01T04:00:00+00:00",
                "2024-01-02T04:00:00+00:00",
                "2024-01-03T04:00:00+00:00",
                "2024-01-04T04:00:00+00:00"
            ]
        );
        assert_eq!(dropped, 0);
        // A tick exactly at `after` is not after it.
        assert_eq!(
            next("cron(0 4 * * ? *)", "UTC", "2024-01-01T04:00:00.5Z"),
            "2024-01-02T04:00:00+00:00"
        );
    }

    #[test]
    fn eventbridge_cron_fields_mean_what_aws_documents() {
        // 10:15 UTC every day.
        assert_eq!(
            next("cron(15 10 * * ? *)", "UTC", "2024-03-01T11:00:00Z"),
            "2024-03-02T10:15:00+00:00"
        );
        // 18:00 Monday to Friday (2024-03-01 is a Friday).
        assert_eq!(
            next("cron(0 18 ? * MON-FRI *)", "UTC", "2024-03-01T19:00:00Z"),
            "2024-03-04T18:00:00+00:00"
        );
        // Day-of-week numbers: 1 = Sunday.
        assert_eq!(
            next("cron(0 8 ? * 1 *)", "UTC", "2024-03-01T00:00:00Z"),
            "2024-03-03T08:00:00+00:00"
        );
        // 08:00 on the first day of each month.
        assert_eq!(
            next("cron(0 8 1 * ? *)", "UTC", "2024-03-01T09:00:00Z"),
            "2024-04-01T08:00:00+00:00"
        );
        // Every 10 minutes, Monday to Friday.
        assert_eq!(
            next("cron(0/10 * ? * MON-FRI *)", "UTC", "2024-03-01T23:55:00Z"),
            "2024-03-04T00:00:00+00:00"
        );
        // The last day of the month, and the years field.
        assert_eq!(
            next("cron(0 12 L * ? 2025)", "UTC", "2024-03-01T00:00:00Z"),
            "2025-01-31T12:00:00+00:00"
        );
        // The third Friday of the month.
        assert_eq!(
            next("cron(0 9 ? * 6#3 *)", "UTC", "2024-03-01T00:00:00Z"),
            "2024-03-15T09:00:00+00:00"
        );
    }

    #[test]
    fn time_zones_follow_daylight_saving() {
        // 04:00 in New York is 09:00 UTC in winter and 08:00 UTC in summer.
        assert_eq!(
            next(
                "cron(0 4 * * ? *)",
                "America/New_York",
                "2024-03-09T12:00:00Z"
            ),
            "2024-03-10T08:00:00+00:00"
        );
        assert_eq!(
            next("0 4 * * *", "America/New_York", "2024-01-09T12:00:00Z"),
            "2024-01-10T09:00:00+00:00"
        );
    }

    #[test]
    fn five_field_cron_is_crontab() {
        // 0 and 7 are Sunday; 2024-03-01 is a Friday.
        assert_eq!(
            next("30 6 * * 0", "UTC", "2024-03-01T00:00:00Z"),
            "2024-03-03T06:30:00+00:00"
        );
        assert_eq!(
            next("30 6 * * 7", "UTC", "2024-03-01T00:00:00Z"),
            "2024-03-03T06:30:00+00:00"
        );
        assert_eq!(
            next("*/15 * * * *", "UTC", "2024-03-01T00:07:00Z"),
            "2024-03-01T00:15:00+00:00"
        );
    }

    #[test]
    fn rates_tick_on_fixed_multiples_that_survive_restarts() {
        let s = Schedule::parse("rate(5 minutes)", "UTC").unwrap();
        assert_eq!(
            s.next_after(at("2024-03-01T00:07:30Z"))
                .unwrap()
                .to_rfc3339(),
            "2024-03-01T00:10:00+00:00"
        );
        assert_eq!(
            next("rate(1 day)", "UTC", "2024-03-01T00:00:00Z"),
            "2024-03-02T00:00:00+00:00"
        );
        // A day rate in a zone fires at its local midnight.
        assert_eq!(
            next("rate(1 day)", "Europe/Paris", "2024-01-10T12:00:00Z"),
            "2024-01-10T23:00:00+00:00"
        );
        let s = Schedule::parse("rate(1 second)", "UTC").unwrap();
        let (ticks, dropped) =
            s.ticks_between(at("2024-03-01T00:00:00Z"), at("2024-03-01T00:01:00Z"), 3);
        assert_eq!(dropped, 57);
        assert_eq!(
            ticks.last().unwrap().to_rfc3339(),
            "2024-03-01T00:01:00+00:00"
        );
    }

    #[test]
    fn bad_expressions_say_why() {
        for (expr, why) in [
            (
                "cron(0 4 * * * *)",
                "one of day-of-month and day-of-week must be `?`",
            ),
            (
                "cron(0 4 ? * ? *)",
                "one of day-of-month and day-of-week must be `?`",
            ),
            ("cron(0 4 * * ?)", "cron() takes 6 fields"),
            ("cron(61 4 * * ? *)", "61"),
            ("rate(0 minutes)", "not a positive whole number"),
            (
                "rate(5 minute)",
                "write rate(1 minute) for one and rate(N minutes) for more",
            ),
            ("rate(1 minutes)", "write rate(1 minute)"),
            ("rate(2 weeks)", "is not minute(s), hour(s) or day(s)"),
            ("every day", "write cron("),
            ("0 4 * *", "write cron("),
        ] {
            let e = Schedule::parse(expr, "UTC").unwrap_err();
            assert!(e.to_string().contains(why), "{expr}: {e}");
        }
        let e = Schedule::parse("rate(1 day)", "Mars/Olympus").unwrap_err();
        assert!(e.why.contains("not an IANA time zone"), "{e}");
    }
}
