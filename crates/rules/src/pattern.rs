//! An event pattern: parsed once, validated with AWS's messages, matched many times.
//!
//! A pattern is a JSON object whose leaves are arrays of conditions; a field
//! matches when any of its conditions matches any of the event's values at that
//! path, and a pattern matches when all of its fields do (`$or` takes
//! alternatives). Paths are joined with `.`, in patterns and events alike, so
//! `{"a.b": …}` and `{"a": {"b": …}}` name the same field.

use std::net::IpAddr;

use serde_json::{Map, Value};

mod json_error;
mod matching;

/// A pattern AWS would refuse, with its reason.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("Event pattern is not valid. Reason: {reason}")]
pub struct PatternError {
    /// Why, in AWS's words.
    pub reason: String,
}

fn invalid(reason: impl Into<String>) -> PatternError {
    PatternError {
        reason: reason.into(),
    }
}

/// A validated event pattern.
#[derive(Debug, Clone)]
pub struct Pattern {
    clauses: Vec<Clause>,
}

/// One requirement of a pattern: a field's conditions, or alternatives (`$or`).
#[derive(Debug, Clone)]
enum Clause {
    Field { path: String, conditions: Vec<Cond> },
    Or(Vec<Vec<Clause>>),
}

/// A scalar of an exact match or an anything-but list.
#[derive(Debug, Clone)]
enum Scalar {
    Str(String),
    Num(f64),
    Bool(bool),
    Null,
}

/// A string match with or without case.
#[derive(Debug, Clone)]
struct Text {
    text: String,
    ignore_case: bool,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Bound {
    Above(f64, bool),
    Below(f64, bool),
    Equal(f64),
}

/// One condition on a field's values.
#[derive(Debug, Clone)]
enum Cond {
    Exact(Scalar),
    Prefix(Text),
    Suffix(Text),
    EqualsIgnoreCase(String),
    Wildcard(String),
    Numeric(Vec<Bound>),
    Exists(bool),
    Cidr { net: IpAddr, bits: u8 },
    AnythingBut(Exclusion),
}

/// What `anything-but` excludes.
#[derive(Debug, Clone)]
enum Exclusion {
    Values(Vec<Scalar>),
    Prefixes(Vec<String>),
    Suffixes(Vec<String>),
    IgnoringCase(Vec<String>),
    Wildcards(Vec<String>),
}

impl Pattern {
    /// Parses and validates a pattern given as JSON text.
    pub fn parse(text: &str) -> Result<Self, PatternError> {
        let value: Value = serde_json::from_str(text)
            .map_err(|e| invalid(json_error::jackson_message(text, &e)))?;
        Self::from_value(&value)
    }

    /// Validates a pattern given as a JSON value.
    pub fn from_value(value: &Value) -> Result<Self, PatternError> {
        let Value::Object(map) = value else {
            return Err(invalid("Filter is not an object"));
        };
        Ok(Self {
            clauses: object_clauses(map, "")?,
        })
    }

    /// Whether an event (a JSON object) matches.
    pub fn matches(&self, event: &Value) -> bool {
        matching::matches(&self.clauses, event)
    }
}

fn join(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key.to_string()
    } else {
        format!("{prefix}.{key}")
    }
}

fn object_clauses(map: &Map<String, Value>, prefix: &str) -> Result<Vec<Clause>, PatternError> {
    let mut clauses = Vec::new();
    for (key, value) in map {
        if key == "$or" {
            clauses.push(or_clause(value, prefix)?);
            continue;
        }
        let path = join(prefix, key);
        match value {
            Value::Object(nested) => clauses.extend(object_clauses(nested, &path)?),
            Value::Array(items) => clauses.push(Clause::Field {
                conditions: conditions(items)?,
                path,
            }),
            _ => return Err(invalid(format!("\"{key}\" must be an object or an array"))),
        }
    }
    Ok(clauses)
}

fn or_clause(value: &Value, prefix: &str) -> Result<Clause, PatternError> {
    let Value::Array(alternatives) = value else {
        return Err(invalid("Value of $or must be an array"));
    };
    if alternatives.len() < 2 {
        return Err(invalid("Value of $or must have at least 2 elements"));
    }
    alternatives
        .iter()
        .map(|alternative| match alternative {
            Value::Object(map) => object_clauses(map, prefix),
            _ => Err(invalid("Value of $or must be an array of objects")),
        })
        .collect::<Result<_, _>>()
        .map(Clause::Or)
}

fn conditions(items: &[Value]) -> Result<Vec<Cond>, PatternError> {
    if items.is_empty() {
        return Err(invalid("Empty arrays are not allowed"));
    }
    items.iter().map(condition).collect()
}

fn scalar(value: &Value) -> Option<Scalar> {
    match value {
        Value::String(s) => Some(Scalar::Str(s.clone())),
        Value::Number(n) => n.as_f64().map(Scalar::Num),
        Value::Bool(b) => Some(Scalar::Bool(*b)),
        Value::Null => Some(Scalar::Null),
        _ => None,
    }
}

fn condition(item: &Value) -> Result<Cond, PatternError> {
    let Value::Object(operator) = item else {
        return scalar(item)
            .map(Cond::Exact)
            .ok_or_else(|| invalid("Match value must be String, number, true, false, or null"));
    };
    let mut entries = operator.iter();
    let (Some((name, value)), None) = (entries.next(), entries.next()) else {
        return Err(invalid(
            "Only one key allowed in match expression, e.g. {\"prefix\": \"abc\"}",
        ));
    };
    match name.as_str() {
        "prefix" => text_operator("prefix", value).map(Cond::Prefix),
        "suffix" => text_operator("suffix", value).map(Cond::Suffix),
        "equals-ignore-case" => match value {
            Value::String(s) => Ok(Cond::EqualsIgnoreCase(s.clone())),
            _ => Err(invalid("equals-ignore-case match pattern must be a string")),
        },
        "wildcard" => wildcard(value).map(Cond::Wildcard),
        "numeric" => numeric(value).map(Cond::Numeric),
        "exists" => match value {
            Value::Bool(b) => Ok(Cond::Exists(*b)),
            _ => Err(invalid(
                "exists match pattern must be either true or false.",
            )),
        },
        "cidr" => cidr(value),
        "anything-but" => anything_but(value).map(Cond::AnythingBut),
        other => Err(invalid(format!("Unrecognized match type {other}"))),
    }
}

/// `prefix`/`suffix`: a string, or `{"equals-ignore-case": string}`.
fn text_operator(name: &str, value: &Value) -> Result<Text, PatternError> {
    let must = || invalid(format!("{name} match pattern must be a string"));
    match value {
        Value::String(s) => Ok(Text {
            text: s.clone(),
            ignore_case: false,
        }),
        Value::Object(inner) if inner.len() == 1 => match inner.get("equals-ignore-case") {
            Some(Value::String(s)) => Ok(Text {
                text: s.clone(),
                ignore_case: true,
            }),
            Some(_) => Err(invalid("equals-ignore-case match pattern must be a string")),
            None => Err(must()),
        },
        _ => Err(must()),
    }
}

/// A wildcard: `*` matches any run of characters, `\*` and `\\` stand for themselves.
fn wildcard(value: &Value) -> Result<String, PatternError> {
    let Value::String(glob) = value else {
        return Err(invalid("wildcard match pattern must be a string"));
    };
    let mut stars = 0;
    let mut previous_star = false;
    let mut escaped = false;
    for (pos, c) in glob.char_indices() {
        let star = c == '*' && !escaped;
        if star && previous_star {
            return Err(invalid(format!(
                "Consecutive wildcard characters at pos {pos}"
            )));
        }
        stars += usize::from(star);
        escaped = c == '\\' && !escaped;
        previous_star = star;
    }
    // AWS bounds the matching work a wildcard may cause; like other emulators we bound
    // the number of wildcards, which is what drives that work.
    if stars > 5 {
        return Err(invalid(
            "Rule is too complex - try using fewer wildcard characters or fewer repeating character sequences after a wildcard character",
        ));
    }
    Ok(glob.clone())
}

fn numeric(value: &Value) -> Result<Vec<Bound>, PatternError> {
    let Value::Array(items) = value else {
        return Err(invalid("Value of numeric must be an array."));
    };
    if items.is_empty() {
        return Err(invalid("Empty arrays are not allowed"));
    }
    let mut bounds = Vec::new();
    let (mut lower, mut upper, mut equal) = (false, false, false);
    for pair in items.chunks(2) {
        let op = pair[0]
            .as_str()
            .ok_or_else(|| invalid(format!("Invalid member in numeric match: {}", pair[0])))?;
        let Some(n) = pair.get(1).and_then(Value::as_f64) else {
            return Err(invalid(format!("Value of {op} must be numeric")));
        };
        let conflict = match op {
            ">" | ">=" => std::mem::replace(&mut lower, true) || equal,
            "<" | "<=" => std::mem::replace(&mut upper, true) || equal,
            "=" => std::mem::replace(&mut equal, true) || lower || upper,
            _ => {
                return Err(invalid(format!(
                    "Unrecognized numeric range operator: {op}"
                )));
            }
        };
        if conflict {
            return Err(invalid(format!("Bad numeric range operator: {op}")));
        }
        bounds.push(match op {
            ">" => Bound::Above(n, false),
            ">=" => Bound::Above(n, true),
            "<" => Bound::Below(n, false),
            "<=" => Bound::Below(n, true),
            _ => Bound::Equal(n),
        });
    }
    Ok(bounds)
}

fn cidr(value: &Value) -> Result<Cond, PatternError> {
    let Value::String(text) = value else {
        return Err(invalid("prefix match pattern must be a string"));
    };
    let Some((ip, mask)) = text.split_once('/') else {
        return Err(invalid("Malformed CIDR, one '/' required"));
    };
    let bits: u8 = mask
        .parse()
        .map_err(|_| invalid("Malformed CIDR, mask bits must be an integer"))?;
    let net: IpAddr = ip
        .parse()
        .map_err(|_| invalid(format!("Nonstandard IP address: {ip}")))?;
    let max = if net.is_ipv4() { 32 } else { 128 };
    if bits > max {
        return Err(invalid(format!(
            "Malformed CIDR, mask bits must be between 0 and {max}"
        )));
    }
    Ok(Cond::Cidr { net, bits })
}

fn anything_but(value: &Value) -> Result<Exclusion, PatternError> {
    let single =
        || invalid("Value of anything-but must be an array or single string/number value.");
    match value {
        Value::String(_) | Value::Number(_) => {
            Ok(Exclusion::Values(scalar(value).into_iter().collect()))
        }
        Value::Array(items) => {
            if items.is_empty() {
                return Err(invalid("Empty arrays are not allowed"));
            }
            items
                .iter()
                .map(|item| match item {
                    Value::String(_) | Value::Number(_) => Ok(scalar(item).ok_or_else(single)?),
                    _ => Err(invalid(
                        "Inside anything but list, start|null|boolean is not supported.",
                    )),
                })
                .collect::<Result<_, _>>()
                .map(Exclusion::Values)
        }
        Value::Object(inner) => {
            let mut entries = inner.iter();
            let (Some((name, value)), None) = (entries.next(), entries.next()) else {
                return Err(single());
            };
            match name.as_str() {
                "prefix" => affixes(value).map(Exclusion::Prefixes),
                "suffix" => affixes(value).map(Exclusion::Suffixes),
                "equals-ignore-case" => strings(value, || {
                    invalid("Inside anything-but/equals-ignore-case list, number|start|null|boolean is not supported.")
                }, || invalid("equals-ignore-case match pattern must be a string"))
                .map(Exclusion::IgnoringCase),
                "wildcard" => {
                    let globs = strings(
                        value,
                        || invalid("wildcard match pattern must be a string"),
                        || invalid("wildcard match pattern must be a string"),
                    )?;
                    for glob in &globs {
                        wildcard(&Value::String(glob.clone()))?;
                    }
                    Ok(Exclusion::Wildcards(globs))
                }
                other => Err(invalid(format!("Unsupported anything-but pattern: {other}"))),
            }
        }
        _ => Err(single()),
    }
}

/// A string or a non-empty list of strings; `in_list` errs for a list member that is not a
/// string, `not_string` for anything else.
fn strings(
    value: &Value,
    in_list: impl Fn() -> PatternError,
    not_string: impl Fn() -> PatternError,
) -> Result<Vec<String>, PatternError> {
    match value {
        Value::String(s) => Ok(vec![s.clone()]),
        Value::Array(items) if !items.is_empty() => items
            .iter()
            .map(|item| item.as_str().map(str::to_string).ok_or_else(&in_list))
            .collect(),
        Value::Array(_) => Err(invalid("Empty arrays are not allowed")),
        _ => Err(not_string()),
    }
}

/// The prefixes or suffixes of `anything-but`: non-empty strings.
fn affixes(value: &Value) -> Result<Vec<String>, PatternError> {
    if value.is_object() {
        return Err(invalid(
            "Value of anything-but must be an array or single string/number value.",
        ));
    }
    let must = || invalid("prefix/suffix match pattern must be a string");
    let texts = strings(value, must, must)?;
    if texts.iter().any(String::is_empty) {
        return Err(invalid("Null prefix/suffix not allowed"));
    }
    Ok(texts)
}

impl std::str::FromStr for Pattern {
    type Err = PatternError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

#[cfg(test)]
mod tests;
