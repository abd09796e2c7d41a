use super::*;
use serde_json::json;

fn check(pattern: Value, event: Value) -> bool {
    Pattern::from_value(&pattern).unwrap().matches(&event)
}

fn reason(pattern: &str) -> String {
    Pattern::parse(pattern).unwrap_err().reason
}

#[test]
fn fields_are_anded_conditions_ored_and_arrays_in_events_match_any_element() {
    let pattern = json!({"source": ["a", "b"], "detail": {"n": [1]}});
    assert!(check(
        pattern.clone(),
        json!({"source": "b", "detail": {"n": 1.0}})
    ));
    assert!(!check(
        pattern.clone(),
        json!({"source": "c", "detail": {"n": 1}})
    ));
    assert!(!check(pattern.clone(), json!({"source": "a"})));
    assert!(check(
        pattern,
        json!({"source": ["x", "a"], "detail": {"n": [5, 1]}})
    ));
    // Numbers and strings never equal each other.
    assert!(!check(json!({"n": ["1"]}), json!({"n": 1})));
}

#[test]
fn or_takes_alternatives_at_its_level() {
    let pattern = json!({"detail": {"$or": [{"a": [1]}, {"b": [{"numeric": [">", 5]}]}]}});
    assert!(check(pattern.clone(), json!({"detail": {"b": 6}})));
    assert!(!check(pattern, json!({"detail": {"b": 5}})));
}

#[test]
fn validation_speaks_awss_words() {
    assert_eq!(reason(r#"{"a": 1}"#), "\"a\" must be an object or an array");
    assert_eq!(reason(r#"{"a": []}"#), "Empty arrays are not allowed");
    assert_eq!(reason(r#"[1]"#), "Filter is not an object");
    assert_eq!(
        reason(r#"{"a": [{"EXISTS": true}]}"#),
        "Unrecognized match type EXISTS"
    );
    assert_eq!(
        reason(r#"{"a": [{"numeric": [">", 0, ">=", 1]}]}"#),
        "Bad numeric range operator: >="
    );
    assert_eq!(
        reason(r#"{"a": [{"wildcard": "a**"}]}"#),
        "Consecutive wildcard characters at pos 2"
    );
    assert!(reason("this is not json").starts_with("Unrecognized token 'this'"));
    assert!(reason("{'a': 1}").starts_with("Unexpected character (''' (code 39))"));
    assert_eq!(reason(r#"{"a": ["#), "Unexpected end-of-input");
    assert_eq!(
        PatternError { reason: "x".into() }.to_string(),
        "Event pattern is not valid. Reason: x"
    );
}
