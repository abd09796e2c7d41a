//! Content-based event routing as EventBridge does it.
//!
//! [`Pattern::parse`] validates an event pattern and reports what is wrong in
//! AWS's own words (`Event pattern is not valid. Reason: …`), so messages
//! users search for still lead somewhere; [`Pattern::matches`] tests an event
//! against it. [`test_event_pattern`] is `aws events test-event-pattern`.

pub mod pattern;

pub use pattern::{Pattern, PatternError};

/// Why `test-event-pattern` could not answer.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum TestError {
    /// The pattern is not valid (`InvalidEventPatternException`).
    #[error(transparent)]
    Pattern(#[from] PatternError),
    /// The event is not a JSON object with the envelope fields EventBridge requires
    /// (`ValidationException`).
    #[error("Parameter Event is not valid.")]
    Event,
}

impl TestError {
    /// The AWS error code for this error.
    pub fn code(&self) -> &'static str {
        match self {
            TestError::Pattern(_) => "InvalidEventPatternException",
            TestError::Event => "ValidationException",
        }
    }
}

/// The envelope fields every event must carry to be tested.
const ENVELOPE: [&str; 6] = ["id", "account", "source", "time", "region", "detail-type"];

/// Tests an event (JSON text) against a pattern (JSON text), as `aws events
/// test-event-pattern` does: the pattern must be valid and the event must carry
/// the envelope fields (`id`, `account`, `source`, `time`, `region`, `detail-type`).
pub fn test_event_pattern(pattern: &str, event: &str) -> Result<bool, TestError> {
    let event: serde_json::Value = serde_json::from_str(event).map_err(|_| TestError::Event)?;
    let envelope_ok = event
        .as_object()
        .is_some_and(|o| ENVELOPE.iter().all(|k| o.contains_key(*k)));
    if !envelope_ok {
        return Err(TestError::Event);
    }
    let pattern = Pattern::parse(pattern)?;
    Ok(pattern.matches(&event))
}
