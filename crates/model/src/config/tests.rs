use super::*;

fn parse(text: &str) -> Result<Project, Problems> {
    Project::parse(text, "sluice.toml", &|f| {
        if f == "models/daily.sql" {
            Ok("SELECT 1".into())
        } else {
            Err("no such file".into())
        }
    })
}

fn errors(text: &str) -> String {
    parse(text).expect_err("should be refused").to_string()
}

const GOOD: &str = r#"
version = 1
[buckets.raw]
[tables.trips]
layer = "silver"
partition_by = ["year"]
columns = [
  { name = "fare", type = "float", min = 0, max = 10000 },
  { name = "pickup_at", type = "timestamp", format = ["%Y-%m-%d %H:%M:%S"], timezone = "America/New_York", nullable = false },
]
derive = [{ name = "year", expr = "date_part('year', pickup_at)" }]
checks = [{ name = "positive", expr = "fare > 0" }]
[tables.daily]
layer = "gold"
sql_file = "models/daily.sql"
[triggers.landing]
on = "object-created"
bucket = "raw"
prefix = "landing/"
pipeline = "taxi"
[pipelines.taxi]
steps = [{ ingest = "trips" }, { refresh = "daily" }]
retry = { max_attempts = 5, backoff = "200ms" }
acceptance = { max_invalid_pct = 20 }
"#;

#[test]
fn a_good_project_parses() {
    let p = parse(GOOD).unwrap();
    assert_eq!(p.tables["trips"].layer, Layer::Silver);
    assert_eq!(p.tables["daily"].sql.as_deref(), Some("SELECT 1"));
    let pipeline = &p.pipelines["taxi"];
    assert_eq!(pipeline.retry.max_attempts, 5);
    assert_eq!(pipeline.retry.backoff, Duration::from_millis(200));
    assert_eq!(pipeline.max_invalid_pct, 20.0);
    let c = p.tables["trips"].contract.as_ref().unwrap();
    assert_eq!(c.columns[1].ty, ColumnType::Timestamp);
    assert!(!c.columns[1].nullable);
    assert_eq!(
        p.pipelines_for(EventKind::ObjectCreated, "raw", "landing/a.csv")
            .len(),
        1
    );
    assert!(
        p.pipelines_for(EventKind::ObjectCreated, "raw", "other/a.csv")
            .is_empty()
    );
}

#[test]
fn every_problem_is_reported_at_once_with_positions() {
    let text = GOOD
        .replace("type = \"float\"", "type = \"flaot\"")
        .replace("pipeline = \"taxi\"", "pipeline = \"taxis\"")
        .replace("[buckets.raw]", "[buckets.raw]\ncolour = \"blue\"");
    let out = errors(&text);
    assert!(
        out.contains("sluice.toml:4:1: unknown field `buckets.raw.colour`"),
        "{out}"
    );
    assert!(
        out.contains(r#"column "fare": unknown type "flaot" (expected one of: string, int"#),
        "{out}"
    );
    assert!(
        out.contains(r#"sluice.toml:21:1: pipeline "taxis" is not declared under [pipelines]"#),
        "{out}"
    );
    assert_eq!(out.lines().count(), 3, "{out}");
}

#[test]
fn type_errors_in_several_entries_are_all_reported() {
    let text = GOOD
        .replace("partition_by = [\"year\"]", "partition_by = \"year\"")
        .replace("bucket = \"raw\"", "bucket = 7")
        .replace(
            "retry = { max_attempts = 5,",
            "retry = { max_attempts = \"five\",",
        );
    let out = errors(&text);
    assert_eq!(out.lines().count(), 3, "{out}");
    assert!(
        out.contains(
            "sluice.toml:6:16: tables.trips: invalid type: string \"year\", expected a sequence"
        ),
        "{out}"
    );
    assert!(
        out.contains(
            "sluice.toml:18:10: triggers.landing: invalid type: integer `7`, expected a string"
        ),
        "{out}"
    );
    assert!(
        out.contains(
            "sluice.toml:23:26: pipelines.taxi: invalid type: string \"five\", expected u32"
        ),
        "{out}"
    );
}

#[test]
fn syntax_errors_name_the_position() {
    let out = errors("version = 1\n[buckets.raw\n");
    assert!(out.starts_with("sluice.toml:2:"), "{out}");
}

#[test]
fn wrong_version_is_refused() {
    assert!(errors("version = 2").contains("unsupported version 2"));
}

#[test]
fn references_must_exist_and_have_the_right_layer() {
    let text = GOOD.replace("{ refresh = \"daily\" }", "{ refresh = \"trips\" }");
    let out = errors(&text);
    assert!(
        out.contains("table is silver but refresh needs a gold table"),
        "{out}"
    );
    let text = GOOD.replace("sql_file = \"models/daily.sql\"", "sql_file = \"nope.sql\"");
    assert!(errors(&text).contains("cannot read model \"nope.sql\": no such file"));
}

#[test]
fn partition_columns_and_checks_are_validated() {
    let text = GOOD
        .replace("partition_by = [\"year\"]", "partition_by = [\"yr\"]")
        .replace(
            "timezone = \"America/New_York\"",
            "timezone = \"Mars/Olympus\"",
        )
        .replace("backoff = \"200ms\"", "backoff = \"soon\"");
    let out = errors(&text);
    assert!(out.contains("partition column \"yr\""), "{out}");
    assert!(out.contains("unknown time zone \"Mars/Olympus\""), "{out}");
    assert!(out.contains("backoff \"soon\" is not a duration"), "{out}");
}

#[test]
fn server_durations_have_defaults_and_are_validated() {
    let p = parse(GOOD).unwrap();
    assert_eq!(p.server.flush_interval, Duration::from_secs(1));
    assert_eq!(p.server.read_after_write, Duration::from_millis(250));
    let text = GOOD.replace(
        "version = 1\n",
        "version = 1\n[server]\nflush_interval = \"0s\"\nread_after_write = \"2s\"\n",
    );
    let p = parse(&text).unwrap();
    assert_eq!(p.server.flush_interval, Duration::ZERO);
    assert_eq!(p.server.read_after_write, Duration::from_secs(2));
    let text = GOOD.replace(
        "version = 1\n",
        "version = 1\n[server]\nflush_interval = \"often\"\nread_after_write = \"a bit\"\n",
    );
    let out = errors(&text);
    assert!(
        out.contains("flush_interval \"often\" is not a duration"),
        "{out}"
    );
    assert!(
        out.contains("read_after_write \"a bit\" is not a duration"),
        "{out}"
    );
}

#[test]
fn retry_delays_grow_exponentially_and_are_capped() {
    let r = Retry {
        max_attempts: 5,
        backoff: Duration::from_millis(100),
        max_backoff: Duration::from_millis(350),
    };
    assert_eq!(r.delay_after(1), Duration::from_millis(100));
    assert_eq!(r.delay_after(2), Duration::from_millis(200));
    assert_eq!(r.delay_after(3), Duration::from_millis(350));
}

#[test]
fn the_reference_in_docs_is_current() {
    let generated = reference_markdown();
    // The runtime value: a shared target directory may hold a binary built in another checkout.
    let dir = std::env::var("CARGO_MANIFEST_DIR")
        .unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").to_string());
    let path = format!("{dir}/../../docs/config.md");
    if std::env::var_os("SLUICE_BLESS").is_some() {
        std::fs::write(&path, &generated).unwrap();
    }
    let on_disk = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        on_disk == generated,
        "docs/config.md is out of date: run `SLUICE_BLESS=1 cargo test -p sluice-model`"
    );
    for field in ["max_invalid_pct", "partition_by", "timezone", "suffix"] {
        assert!(generated.contains(&format!("`{field}`")), "{field} missing");
    }
}

const SCHEDULED: &str = r#"
[workflows.nightly]
definition = "models/daily.sql"
[schedules.nightly]
expression = "cron(0 4 * * ? *)"
workflow = "nightly"
input = '{"source": "schedule"}'
missed = "catch-up"
catch_up_limit = 3
"#;

#[test]
fn schedules_start_declared_workflows_with_a_fixed_input() {
    let project = parse(&format!("{GOOD}{SCHEDULED}")).unwrap();
    let s = &project.schedules["nightly"];
    assert_eq!(s.workflow, "nightly");
    assert_eq!(s.input, serde_json::json!({"source": "schedule"}));
    assert_eq!(s.missed, Missed::CatchUp(3));
    assert_eq!(s.schedule.timezone(), chrono_tz::UTC);
    assert_eq!(project.workflows["nightly"].definition, "SELECT 1");

    let bad = format!("{GOOD}{SCHEDULED}")
        .replace("cron(0 4 * * ? *)", "cron(0 4 * * * *)")
        .replace("workflow = \"nightly\"", "workflow = \"weekly\"")
        .replace("'{\"source\": \"schedule\"}'", "'{source}'")
        .replace("missed = \"catch-up\"", "missed = \"later\"")
        .replace(
            "definition = \"models/daily.sql\"",
            "definition = \"flows/nope.json\"",
        );
    let out = errors(&bad);
    for expected in [
        "one of day-of-month and day-of-week must be `?`",
        "workflow \"weekly\" is not declared under [workflows]",
        "input is not JSON",
        "\"later\" is not `skip` or `catch-up`",
        "catch_up_limit",
        "cannot read \"flows/nope.json\"",
    ] {
        assert!(out.contains(expected), "missing {expected:?} in:\n{out}");
    }
    let out = errors(&format!("{GOOD}{SCHEDULED}timezone = \"Mars/Olympus\"\n"));
    assert!(out.contains("not an IANA time zone"), "{out}");
}

#[test]
fn rules_route_events_to_declared_workflows_and_bad_patterns_say_why_as_aws_does() {
    let rule = r#"
[rules.uploads]
pattern = '{"source": ["aws.s3"], "detail": {"bucket": {"name": ["raw"]}}}'
workflow = "nightly"
"#;
    let project = parse(&format!("{GOOD}{SCHEDULED}{rule}")).unwrap();
    let r = &project.rules["uploads"];
    assert!(
        r.pattern.matches(
            &serde_json::json!({"source": "aws.s3", "detail": {"bucket": {"name": "raw"}}})
        )
    );
    let bad_rule = rule
        .replace("[\"raw\"]}}}", "\"raw\"}}}")
        .replace("workflow = \"nightly\"", "workflow = \"none\"");
    let out = errors(&format!("{GOOD}{SCHEDULED}{bad_rule}"));
    assert!(out.contains("Event pattern is not valid. Reason:"), "{out}");
    assert!(out.contains("workflow \"none\" is not declared"), "{out}");
}

#[test]
fn pipelines_are_targets_through_the_workflow_that_runs_them() {
    let targets = r#"
[pipelines.gold]
steps = [{ refresh = "daily" }]
[schedules.hourly]
expression = "rate(1 hour)"
pipeline = "gold"
[rules.landed]
pattern = '{"source": ["aws.s3"]}'
pipeline = "taxi"
"#;
    let project = parse(&format!("{GOOD}{targets}")).unwrap();
    assert_eq!(project.schedules["hourly"].workflow, "pipeline:gold");
    assert_eq!(project.rules["landed"].workflow, "pipeline:taxi");
    let refresh: serde_json::Value =
        serde_json::from_str(&project.workflows["pipeline:gold"].definition).unwrap();
    assert_eq!(
        refresh["States"]["Refresh daily"]["Resource"],
        "sluice:refresh:daily"
    );
    let ingest: serde_json::Value =
        serde_json::from_str(&project.workflows["pipeline:taxi"].definition).unwrap();
    assert_eq!(ingest["States"]["Run"]["Resource"], "sluice:pipeline:taxi");
    assert_eq!(
        ingest["States"]["Run"]["Parameters"]["Key.$"],
        "$.detail.object.key"
    );

    // A schedule has no object for a pipeline that ingests; a target is one thing.
    let bad = targets
        .replace("pipeline = \"gold\"", "pipeline = \"taxi\"")
        .replace(
            "pipeline = \"taxi\"\n\"#",
            "pipeline = \"taxi\"\nworkflow = \"x\"\n\"#",
        );
    let out = errors(&format!("{GOOD}{bad}workflow = \"x\"\n"));
    assert!(
        out.contains("ingests objects and a schedule has none to give it"),
        "{out}"
    );
    assert!(
        out.contains("give exactly one of `workflow` or `pipeline`"),
        "{out}"
    );
}

#[test]
fn retention_and_the_vacuum_interval_are_durations_with_defaults() {
    let p = parse(GOOD).unwrap();
    assert_eq!(p.tables["trips"].retention, DEFAULT_RETENTION);
    assert_eq!(p.server.vacuum_interval, Duration::from_secs(3600));
    let text = GOOD
        .replace(
            "[buckets.raw]",
            "[server]\nvacuum_interval = \"10m\"\n[buckets.raw]",
        )
        .replace("layer = \"gold\"", "layer = \"gold\"\nretention = \"1.5d\"");
    let p = parse(&text).unwrap();
    assert_eq!(p.tables["daily"].retention, Duration::from_secs(129_600));
    assert_eq!(p.server.vacuum_interval, Duration::from_secs(600));

    let text = GOOD
        .replace(
            "layer = \"gold\"",
            "layer = \"gold\"\nretention = \"a week\"",
        )
        .replace(
            "[buckets.raw]",
            "[buckets.raw]\n[tables.raw_files]\nlayer = \"bronze\"\nretention = \"1h\"",
        );
    let e = errors(&text);
    assert!(e.contains("retention \"a week\" is not a duration"), "{e}");
    assert!(e.contains("bronze tables keep every object"), "{e}");
}
