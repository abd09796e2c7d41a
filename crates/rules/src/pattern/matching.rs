//! Matching: the event is flattened once into dotted paths and their leaf values.

use std::collections::HashMap;
use std::net::IpAddr;

use serde_json::Value;

use super::{Bound, Clause, Cond, Exclusion, Scalar, Text};

/// The event's leaf values (strings, numbers, booleans, nulls) by dotted path; the
/// elements of arrays are values of the array's path.
fn flatten<'a>(value: &'a Value, path: String, out: &mut HashMap<String, Vec<&'a Value>>) {
    match value {
        Value::Object(map) => {
            for (key, child) in map {
                let child_path = if path.is_empty() {
                    key.clone()
                } else {
                    format!("{path}.{key}")
                };
                flatten(child, child_path, out);
            }
        }
        Value::Array(items) => {
            for item in items {
                flatten(item, path.clone(), out);
            }
        }
        leaf => out.entry(path).or_default().push(leaf),
    }
}

pub(super) fn matches(clauses: &[Clause], event: &Value) -> bool {
    let mut leaves = HashMap::new();
    flatten(event, String::new(), &mut leaves);
    all(clauses, &leaves)
}

fn all(clauses: &[Clause], leaves: &HashMap<String, Vec<&Value>>) -> bool {
    clauses.iter().all(|clause| match clause {
        Clause::Or(alternatives) => alternatives.iter().any(|a| all(a, leaves)),
        Clause::Field { path, conditions } => {
            let values = leaves.get(path).map(Vec::as_slice).unwrap_or_default();
            conditions.iter().any(|c| field(c, values))
        }
    })
}

fn field(cond: &Cond, values: &[&Value]) -> bool {
    match cond {
        Cond::Exists(exists) => values.is_empty() != *exists,
        _ => values.iter().any(|v| value(cond, v)),
    }
}

fn same(scalar: &Scalar, v: &Value) -> bool {
    match (scalar, v) {
        (Scalar::Str(s), Value::String(t)) => s == t,
        (Scalar::Num(n), Value::Number(m)) => m.as_f64() == Some(*n),
        (Scalar::Bool(b), Value::Bool(c)) => b == c,
        (Scalar::Null, Value::Null) => true,
        _ => false,
    }
}

fn lower(s: &str) -> String {
    s.to_lowercase()
}

fn has_prefix(text: &Text, s: &str) -> bool {
    if text.ignore_case {
        lower(s).starts_with(&lower(&text.text))
    } else {
        s.starts_with(&text.text)
    }
}

fn has_suffix(text: &Text, s: &str) -> bool {
    if text.ignore_case {
        lower(s).ends_with(&lower(&text.text))
    } else {
        s.ends_with(&text.text)
    }
}

fn value(cond: &Cond, v: &Value) -> bool {
    let string = v.as_str();
    match cond {
        Cond::Exact(scalar) => same(scalar, v),
        Cond::Prefix(text) => string.is_some_and(|s| has_prefix(text, s)),
        Cond::Suffix(text) => string.is_some_and(|s| has_suffix(text, s)),
        Cond::EqualsIgnoreCase(text) => string.is_some_and(|s| lower(s) == lower(text)),
        Cond::Wildcard(glob) => string.is_some_and(|s| wildcard_matches(glob, s)),
        Cond::Numeric(bounds) => v.as_f64().is_some_and(|n| {
            v.is_number()
                && bounds.iter().all(|b| match *b {
                    Bound::Above(x, inclusive) => n > x || (inclusive && n == x),
                    Bound::Below(x, inclusive) => n < x || (inclusive && n == x),
                    Bound::Equal(x) => n == x,
                })
        }),
        Cond::Exists(_) => true,
        Cond::Cidr { net, bits } => string
            .and_then(|s| s.parse::<IpAddr>().ok())
            .is_some_and(|ip| in_network(ip, *net, *bits)),
        Cond::AnythingBut(exclusion) => !excluded(exclusion, v),
    }
}

fn excluded(exclusion: &Exclusion, v: &Value) -> bool {
    let string = v.as_str();
    let any = |texts: &[String], test: &dyn Fn(&str, &str) -> bool| {
        string.is_some_and(|s| texts.iter().any(|t| test(s, t)))
    };
    match exclusion {
        Exclusion::Values(values) => values.iter().any(|x| same(x, v)),
        Exclusion::Prefixes(texts) => any(texts, &|s, t| s.starts_with(t)),
        Exclusion::Suffixes(texts) => any(texts, &|s, t| s.ends_with(t)),
        Exclusion::IgnoringCase(texts) => any(texts, &|s, t| lower(s) == lower(t)),
        Exclusion::Wildcards(globs) => any(globs, &|s, g| wildcard_matches(g, s)),
    }
}

fn in_network(ip: IpAddr, net: IpAddr, bits: u8) -> bool {
    match (ip, net) {
        (IpAddr::V4(ip), IpAddr::V4(net)) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(bits)).unwrap_or(0);
            u32::from(ip) & mask == u32::from(net) & mask
        }
        (IpAddr::V6(ip), IpAddr::V6(net)) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(bits)).unwrap_or(0);
            u128::from(ip) & mask == u128::from(net) & mask
        }
        _ => false,
    }
}

/// A wildcard token: a literal character or `*`.
#[derive(Clone, Copy, PartialEq)]
enum Token {
    Char(char),
    Star,
}

fn tokens(glob: &str) -> Vec<Token> {
    let mut out = Vec::new();
    let mut chars = glob.chars();
    while let Some(c) = chars.next() {
        match c {
            '*' => out.push(Token::Star),
            '\\' => match chars.next() {
                Some(next @ ('*' | '\\')) => out.push(Token::Char(next)),
                Some(other) => out.extend([Token::Char('\\'), Token::Char(other)]),
                None => out.push(Token::Char('\\')),
            },
            other => out.push(Token::Char(other)),
        }
    }
    out
}

/// Glob matching with `*` (any run, possibly empty): linear backtracking to the last star.
fn wildcard_matches(glob: &str, s: &str) -> bool {
    let pattern = tokens(glob);
    let text: Vec<char> = s.chars().collect();
    let (mut p, mut t) = (0, 0);
    let mut resume: Option<(usize, usize)> = None;
    while t < text.len() {
        match pattern.get(p) {
            Some(Token::Star) => {
                resume = Some((p, t));
                p += 1;
            }
            Some(Token::Char(c)) if *c == text[t] => {
                p += 1;
                t += 1;
            }
            _ => match resume {
                Some((star, at)) => {
                    p = star + 1;
                    t = at + 1;
                    resume = Some((star, at + 1));
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|token| *token == Token::Star)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_match_runs_and_escapes_stand_for_themselves() {
        assert!(wildcard_matches("/Users/*/doc.txt", "/Users/ana/doc.txt"));
        assert!(wildcard_matches("/Users/*/doc.txt", "/Users/a/b/doc.txt"));
        assert!(!wildcard_matches(
            "/Users/*/doc.txt",
            "/Users/ana/doc.txt.bak"
        ));
        assert!(wildcard_matches("*", ""));
        assert!(wildcard_matches("a*b*c", "aXbYbZc"));
        assert!(!wildcard_matches("a*b*c", "aXbYbZ"));
        assert!(wildcard_matches("\\*", "*"));
        assert!(!wildcard_matches("\\*", "x"));
        assert!(wildcard_matches("\\\\", "\\"));
        assert!(wildcard_matches("", ""));
        assert!(!wildcard_matches("", "x"));
    }

    #[test]
    fn networks_compare_the_masked_bits() {
        let net = |s: &str| s.parse::<IpAddr>().unwrap();
        assert!(in_network(net("10.0.0.77"), net("10.0.0.0"), 24));
        assert!(!in_network(net("10.0.1.77"), net("10.0.0.0"), 24));
        assert!(in_network(net("1.2.3.4"), net("0.0.0.0"), 0));
        assert!(in_network(
            net("2001:db8:1234:1a00::1"),
            net("2001:db8:1234:1a00::"),
            64
        ));
        assert!(!in_network(net("10.0.0.1"), net("2001:db8::"), 0));
    }
}
