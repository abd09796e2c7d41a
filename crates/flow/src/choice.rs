//! Choice rules: comparisons as Step Functions makes them (a value of the
//! wrong kind compares false; a missing variable is an error except for
//! `IsPresent`).

use chrono::{DateTime, FixedOffset};
use serde_json::Value;

use crate::definition::{Comparison, Condition, Operand, Operator};
use crate::path::{PathError, Scope};

/// An RFC 3339 timestamp, as Step Functions accepts it (a `T` and a zone are required).
pub fn timestamp(text: &str) -> Option<DateTime<FixedOffset>> {
    if !text.contains('T') {
        return None;
    }
    DateTime::parse_from_rfc3339(text).ok()
}

/// Evaluates a JSONPath-mode condition.
pub fn eval(condition: &Condition, scope: &Scope) -> Result<bool, PathError> {
    Ok(match condition {
        Condition::And(parts) => {
            for p in parts {
                if !eval(p, scope)? {
                    return Ok(false);
                }
            }
            true
        }
        Condition::Or(parts) => {
            for p in parts {
                if eval(p, scope)? {
                    return Ok(true);
                }
            }
            false
        }
        Condition::Not(inner) => !eval(inner, scope)?,
        Condition::JsonAta(_) => {
            unreachable!("JSONata conditions are evaluated by the jsonata module")
        }
        Condition::Compare(c) => {
            let Comparison {
                variable,
                operator,
                operand,
            } = c.as_ref();
            let value = variable.find(scope)?;
            if *operator == Operator::IsPresent {
                return Ok(
                    value.is_some() == (operand_literal(operand) == Some(&Value::Bool(true)))
                );
            }
            let Some(value) = value else {
                return Err(PathError::NoResults(
                    variable.text().to_owned(),
                    variable.text().to_owned(),
                ));
            };
            let expected = match operand {
                Operand::Literal(v) => v.clone(),
                Operand::Path(p) => p.eval(scope)?,
            };
            compare(*operator, &value, &expected)
        }
    })
}

fn operand_literal(operand: &Operand) -> Option<&Value> {
    match operand {
        Operand::Literal(v) => Some(v),
        Operand::Path(_) => None,
    }
}

fn compare(op: Operator, value: &Value, expected: &Value) -> bool {
    use Operator::*;
    use std::cmp::Ordering::*;
    let test = |want: bool| expected.as_bool() == Some(want);
    match op {
        IsNull => test(value.is_null()),
        IsNumeric => test(value.is_number()),
        IsString => test(value.is_string()),
        IsBoolean => test(value.is_boolean()),
        IsTimestamp => test(value.as_str().and_then(timestamp).is_some()),
        IsPresent => unreachable!("handled by eval"),
        BooleanEquals => value.is_boolean() && value == expected,
        StringMatches => match (value.as_str(), expected.as_str()) {
            (Some(v), Some(p)) => wildcard(p, v),
            _ => false,
        },
        StringEquals
        | StringLessThan
        | StringGreaterThan
        | StringLessThanEquals
        | StringGreaterThanEquals => {
            let (Some(v), Some(e)) = (value.as_str(), expected.as_str()) else {
                return false;
            };
            let ord = v.cmp(e);
            match op {
                StringEquals => ord == Equal,
                StringLessThan => ord == Less,
                StringGreaterThan => ord == Greater,
                StringLessThanEquals => ord != Greater,
                _ => ord != Less,
            }
        }
        NumericEquals
        | NumericLessThan
        | NumericGreaterThan
        | NumericLessThanEquals
        | NumericGreaterThanEquals => {
            let (Some(v), Some(e)) = (value.as_f64(), expected.as_f64()) else {
                return false;
            };
            if !value.is_number() || !expected.is_number() {
                return false;
            }
            match op {
                NumericEquals => v == e,
                NumericLessThan => v < e,
                NumericGreaterThan => v > e,
                NumericLessThanEquals => v <= e,
                _ => v >= e,
            }
        }
        TimestampEquals
        | TimestampLessThan
        | TimestampGreaterThan
        | TimestampLessThanEquals
        | TimestampGreaterThanEquals => {
            let (Some(v), Some(e)) = (
                value.as_str().and_then(timestamp),
                expected.as_str().and_then(timestamp),
            ) else {
                return false;
            };
            let ord = v.cmp(&e);
            match op {
                TimestampEquals => ord == Equal,
                TimestampLessThan => ord == Less,
                TimestampGreaterThan => ord == Greater,
                TimestampLessThanEquals => ord != Greater,
                _ => ord != Less,
            }
        }
    }
}

/// `StringMatches`: `*` matches any run of characters; `\*` and `\\` are literal.
fn wildcard(pattern: &str, text: &str) -> bool {
    #[derive(PartialEq)]
    enum Tok {
        Star,
        Char(char),
    }
    let mut toks = Vec::new();
    let mut chars = pattern.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => toks.push(Tok::Char(chars.next().unwrap_or('\\'))),
            '*' => toks.push(Tok::Star),
            c => toks.push(Tok::Char(c)),
        }
    }
    let text: Vec<char> = text.chars().collect();
    // Greedy matching with backtracking to the last star.
    let (mut t, mut p) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < toks.len() && toks[p] == Tok::Char(text[t]) {
            t += 1;
            p += 1;
        } else if p < toks.len() && toks[p] == Tok::Star {
            star = Some((p, t));
            p += 1;
        } else if let Some((sp, st)) = star {
            p = sp + 1;
            t = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    while p < toks.len() && toks[p] == Tok::Star {
        p += 1;
    }
    p == toks.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn string_matches_takes_stars_and_escapes() {
        assert!(wildcard("log-*.txt", "log-2024-01.txt"));
        assert!(!wildcard("log-*.txt", "log-2024-01.csv"));
        assert!(wildcard("*", ""));
        assert!(wildcard("a\\*b", "a*b"));
        assert!(!wildcard("a\\*b", "axb"));
        assert!(timestamp("2016-03-14T01:59:00Z").is_some());
        assert!(timestamp("2016-03-14").is_none());
    }
}
