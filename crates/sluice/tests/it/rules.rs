//! Event rules from the command line, as `aws events test-event-pattern` answers.

use crate::support::*;

const EVENT: &str = r#"{"id": "1", "account": "123456789012", "source": "sluice.s3",
    "time": "2026-11-23T04:00:00Z", "region": "local", "detail-type": "Object Created",
    "detail": {"bucket": {"name": "raw"}, "object": {"key": "landing/2024/01/trips.csv", "size": 1048576}}}"#;

#[test]
fn test_pattern_answers_like_aws_for_matches_misses_and_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    let none = dir.path().join("no-project.toml");
    let test = |pattern: &str, event: &str| {
        cli(
            &none,
            &[
                "rules",
                "test-pattern",
                "--pattern",
                pattern,
                "--event",
                event,
            ],
        )
    };
    let hit = r#"{"detail-type": ["Object Created"], "detail": {"object": {"key": [{"wildcard": "landing/*.csv"}], "size": [{"numeric": [">", 0]}]}}}"#;
    let (ok, out, err) = test(hit, EVENT);
    assert!(ok, "{err}");
    assert_eq!(out.trim(), r#"{"result":true}"#);
    // The same pattern from a file, as the aws CLI reads file:// arguments.
    let file = dir.path().join("pattern.json");
    std::fs::write(
        &file,
        r#"{"detail": {"bucket": {"name": [{"anything-but": "raw"}]}}}"#,
    )
    .unwrap();
    let (ok, out, _) = test(&format!("file://{}", file.display()), EVENT);
    assert!(ok);
    assert_eq!(out.trim(), r#"{"result":false}"#);
    // A bad pattern and a bad event are refused with AWS's codes and reasons.
    let (ok, _, err) = test(r#"{"source": "sluice.s3"}"#, EVENT);
    assert!(!ok);
    assert!(
        err.contains("InvalidEventPatternException: Event pattern is not valid. Reason: \"source\" must be an object or an array"),
        "{err}"
    );
    let (ok, _, err) = test(hit, r#"{"detail": {}}"#);
    assert!(!ok);
    assert!(
        err.contains("ValidationException: Parameter Event is not valid."),
        "{err}"
    );
}
