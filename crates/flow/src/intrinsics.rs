//! Intrinsic functions (`States.Format(…)`, `States.Array(…)`, …): a parser for
//! the call syntax and the functions themselves.

use base64::Engine as _;
use serde_json::{Map, Value};

use crate::path::{Path, PathError, Scope};

/// Why a call could not be parsed or evaluated (`States.IntrinsicFailure` at run time).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum IntrinsicError {
    #[error("'{text}' is not a valid intrinsic function call: {why} (at character {at})")]
    Syntax {
        text: String,
        why: String,
        at: usize,
    },
    #[error("{0}")]
    Failure(String),
    #[error(transparent)]
    Path(#[from] PathError),
}

/// One argument of a call.
#[derive(Debug, Clone)]
enum Arg {
    /// A string literal: its value, and its text with escapes kept (for `States.Format`).
    Str(String, String),
    Literal(Value),
    Path(Path),
    Call(Call),
}

/// A parsed intrinsic function call.
#[derive(Debug, Clone)]
pub struct Call {
    name: String,
    args: Vec<Arg>,
}

/// The functions there are, with the number of arguments each takes.
const FUNCTIONS: &[(&str, usize, Option<usize>)] = &[
    ("States.Format", 1, None),
    ("States.StringToJson", 1, Some(1)),
    ("States.JsonToString", 1, Some(1)),
    ("States.Array", 0, None),
    ("States.ArrayPartition", 2, Some(2)),
    ("States.ArrayContains", 2, Some(2)),
    ("States.ArrayRange", 3, Some(3)),
    ("States.ArrayGetItem", 2, Some(2)),
    ("States.ArrayLength", 1, Some(1)),
    ("States.ArrayUnique", 1, Some(1)),
    ("States.Base64Encode", 1, Some(1)),
    ("States.Base64Decode", 1, Some(1)),
    ("States.Hash", 2, Some(2)),
    ("States.JsonMerge", 3, Some(3)),
    ("States.MathRandom", 2, Some(3)),
    ("States.MathAdd", 2, Some(2)),
    ("States.StringSplit", 2, Some(2)),
    ("States.UUID", 0, Some(0)),
];

/// True when a string is meant as an intrinsic call rather than a path.
pub fn looks_like_call(text: &str) -> bool {
    text.trim_start().starts_with("States.")
}

impl Call {
    pub fn parse(text: &str) -> Result<Call, IntrinsicError> {
        let chars: Vec<char> = text.chars().collect();
        let mut parser = Parser {
            text,
            chars: &chars,
            at: 0,
        };
        parser.ws();
        let call = parser.call()?;
        parser.ws();
        if parser.at != chars.len() {
            return Err(parser.error("unexpected text after the call"));
        }
        Ok(call)
    }

    pub fn eval(&self, scope: &Scope) -> Result<Value, IntrinsicError> {
        let mut values = Vec::with_capacity(self.args.len());
        for arg in &self.args {
            values.push(match arg {
                Arg::Str(value, _) => Value::String(value.clone()),
                Arg::Literal(v) => v.clone(),
                Arg::Path(p) => p.eval(scope)?,
                Arg::Call(c) => c.eval(scope)?,
            });
        }
        let raw_template = match self.args.first() {
            Some(Arg::Str(_, raw)) => Some(raw.as_str()),
            _ => None,
        };
        apply(&self.name, values, raw_template).map_err(IntrinsicError::Failure)
    }
}

struct Parser<'a> {
    text: &'a str,
    chars: &'a [char],
    at: usize,
}

impl Parser<'_> {
    fn error(&self, why: &str) -> IntrinsicError {
        IntrinsicError::Syntax {
            text: self.text.to_owned(),
            why: why.to_owned(),
            at: self.at + 1,
        }
    }

    fn ws(&mut self) {
        while self.chars.get(self.at).is_some_and(|c| c.is_whitespace()) {
            self.at += 1;
        }
    }

    fn peek(&self) -> Option<char> {
        self.chars.get(self.at).copied()
    }

    fn call(&mut self) -> Result<Call, IntrinsicError> {
        let start = self.at;
        while self
            .peek()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == '.')
        {
            self.at += 1;
        }
        let name: String = self.chars[start..self.at].iter().collect();
        let Some(&(_, min, max)) = FUNCTIONS.iter().find(|(n, ..)| *n == name) else {
            self.at = start;
            return Err(self.error(&format!("unknown function '{name}'")));
        };
        self.ws();
        if self.peek() != Some('(') {
            return Err(self.error("expected '('"));
        }
        self.at += 1;
        let mut args = Vec::new();
        self.ws();
        if self.peek() == Some(')') {
            self.at += 1;
        } else {
            loop {
                args.push(self.arg()?);
                self.ws();
                match self.peek() {
                    Some(',') => self.at += 1,
                    Some(')') => {
                        self.at += 1;
                        break;
                    }
                    _ => return Err(self.error("expected ',' or ')'")),
                }
            }
        }
        if args.len() < min || max.is_some_and(|max| args.len() > max) {
            let want = match max {
                Some(max) if max == min => format!("{min}"),
                Some(max) => format!("{min} to {max}"),
                None => format!("at least {min}"),
            };
            return Err(self.error(&format!(
                "{name} takes {want} argument(s), not {}",
                args.len()
            )));
        }
        const NUMERIC: &[(&str, &[usize])] = &[
            ("States.MathAdd", &[0, 1]),
            ("States.MathRandom", &[0, 1, 2]),
            ("States.ArrayRange", &[0, 1, 2]),
            ("States.ArrayPartition", &[1]),
            ("States.ArrayGetItem", &[1]),
        ];
        if let Some((_, positions)) = NUMERIC.iter().find(|(n, _)| *n == name) {
            for &i in *positions {
                if let Some(Arg::Str(..) | Arg::Literal(Value::Bool(_) | Value::Null)) = args.get(i)
                {
                    return Err(self.error(&format!(
                        "{name}: argument {} must be a number or a path",
                        i + 1
                    )));
                }
            }
        }
        Ok(Call { name, args })
    }

    fn arg(&mut self) -> Result<Arg, IntrinsicError> {
        self.ws();
        match self.peek() {
            Some('\'') => self.string(),
            Some('$') => {
                let start = self.at;
                let mut depth = 0i32;
                let mut quote: Option<char> = None;
                while let Some(c) = self.peek() {
                    match quote {
                        Some(q) if c == q => quote = None,
                        Some(_) if c == '\\' => self.at += 1,
                        Some(_) => {}
                        None => match c {
                            '\'' | '"' => quote = Some(c),
                            '[' | '(' => depth += 1,
                            ']' | ')' if depth > 0 => depth -= 1,
                            ',' | ')' if depth == 0 => break,
                            _ => {}
                        },
                    }
                    self.at += 1;
                }
                let text: String = self.chars[start..self.at].iter().collect();
                let path = Path::parse(text.trim()).map_err(|e| {
                    self.at = start;
                    self.error(&e.to_string())
                })?;
                Ok(Arg::Path(path))
            }
            Some(c) if c.is_ascii_uppercase() => Ok(Arg::Call(self.call()?)),
            Some(_) => {
                let start = self.at;
                while self
                    .peek()
                    .is_some_and(|c| !matches!(c, ',' | ')') && !c.is_whitespace())
                {
                    self.at += 1;
                }
                let word: String = self.chars[start..self.at].iter().collect();
                match serde_json::from_str::<Value>(&word) {
                    Ok(v @ (Value::Number(_) | Value::Bool(_) | Value::Null)) => {
                        Ok(Arg::Literal(v))
                    }
                    _ => {
                        self.at = start;
                        Err(self.error(&format!(
                            "'{word}' is not a string, number, boolean, null, path or call"
                        )))
                    }
                }
            }
            None => Err(self.error("expected an argument")),
        }
    }

    fn string(&mut self) -> Result<Arg, IntrinsicError> {
        self.at += 1;
        let mut value = String::new();
        let mut raw = String::new();
        loop {
            match self.peek() {
                None => return Err(self.error("an unclosed string")),
                Some('\'') => {
                    self.at += 1;
                    return Ok(Arg::Str(value, raw));
                }
                Some('\\') => {
                    let Some(next) = self.chars.get(self.at + 1).copied() else {
                        return Err(self.error("an unclosed string"));
                    };
                    raw.push('\\');
                    raw.push(next);
                    value.push(next);
                    self.at += 2;
                }
                Some(c) => {
                    raw.push(c);
                    value.push(c);
                    self.at += 1;
                }
            }
        }
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn want_str<'a>(f: &str, n: usize, v: &'a Value) -> Result<&'a str, String> {
    v.as_str()
        .ok_or_else(|| format!("{f}: argument {n} must be a string, not {}", kind(v)))
}

fn want_array<'a>(f: &str, n: usize, v: &'a Value) -> Result<&'a Vec<Value>, String> {
    v.as_array()
        .ok_or_else(|| format!("{f}: argument {n} must be an array, not {}", kind(v)))
}

fn want_int(f: &str, n: usize, v: &Value) -> Result<i64, String> {
    let bad = || format!("{f}: argument {n} must be a number, not {}", kind(v));
    if let Some(i) = v.as_i64() {
        return Ok(i);
    }
    let x = v.as_f64().ok_or_else(bad)?;
    // Step Functions rounds decimals half up, as Java's Math.round does.
    Ok((x + 0.5).floor() as i64)
}

fn format_arg(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

pub(crate) fn apply(
    name: &str,
    args: Vec<Value>,
    raw_template: Option<&str>,
) -> Result<Value, String> {
    let a = |n: usize| &args[n];
    Ok(match name {
        "States.Format" => {
            let template = match raw_template {
                Some(raw) => raw.to_owned(),
                None => want_str(name, 1, a(0))?.to_owned(),
            };
            let escaped = raw_template.is_some();
            let mut out = String::new();
            let mut rest = args[1..].iter();
            let mut chars = template.chars().peekable();
            while let Some(c) = chars.next() {
                match c {
                    '\\' if escaped => {
                        if let Some(n) = chars.next() {
                            out.push(n);
                        }
                    }
                    '{' if chars.peek() == Some(&'}') => {
                        chars.next();
                        let v = rest.next().ok_or_else(|| {
                            format!("{name}: the template has more '{{}}' than arguments")
                        })?;
                        if v.is_object() || v.is_array() {
                            return Err(format!(
                                "{name}: an argument is an {}, not a string, number, boolean or null",
                                kind(v)
                            ));
                        }
                        out.push_str(&format_arg(v));
                    }
                    c => out.push(c),
                }
            }
            if rest.next().is_some() {
                return Err(format!(
                    "{name}: more arguments than '{{}}' in the template"
                ));
            }
            Value::String(out)
        }
        "States.StringToJson" => {
            let s = want_str(name, 1, a(0))?;
            let v: Value =
                serde_json::from_str(s).map_err(|e| format!("{name}: not JSON text: {e}"))?;
            // Step Functions reads -0 as the integer 0.
            if v.as_f64() == Some(0.0) {
                Value::from(0)
            } else {
                v
            }
        }
        "States.JsonToString" => Value::String(a(0).to_string()),
        "States.Array" => Value::Array(args),
        "States.ArrayPartition" => {
            let items = want_array(name, 1, a(0))?;
            let size = want_int(name, 2, a(1))?;
            if size <= 0 {
                return Err(format!(
                    "{name}: the chunk size must be positive, not {size}"
                ));
            }
            Value::Array(
                items
                    .chunks(size as usize)
                    .map(|c| Value::Array(c.to_vec()))
                    .collect(),
            )
        }
        "States.ArrayContains" => Value::Bool(want_array(name, 1, a(0))?.contains(a(1))),
        "States.ArrayRange" => {
            let (start, end, step) = (
                want_int(name, 1, a(0))?,
                want_int(name, 2, a(1))?,
                want_int(name, 3, a(2))?,
            );
            if step == 0 {
                return Err(format!("{name}: the step cannot be 0"));
            }
            let mut out = Vec::new();
            let mut x = start;
            while (step > 0 && x <= end) || (step < 0 && x >= end) {
                if out.len() == 1000 {
                    return Err(format!("{name}: the range has more than 1000 items"));
                }
                out.push(Value::from(x));
                x += step;
            }
            Value::Array(out)
        }
        "States.ArrayGetItem" => {
            let items = want_array(name, 1, a(0))?;
            let index = want_int(name, 2, a(1))?;
            usize::try_from(index)
                .ok()
                .and_then(|i| items.get(i))
                .cloned()
                .ok_or_else(|| {
                    format!(
                        "{name}: index {index} is out of bounds (length {})",
                        items.len()
                    )
                })?
        }
        "States.ArrayLength" => Value::from(want_array(name, 1, a(0))?.len()),
        "States.ArrayUnique" => {
            let mut out: Vec<Value> = Vec::new();
            for v in want_array(name, 1, a(0))? {
                if !out.contains(v) {
                    out.push(v.clone());
                }
            }
            Value::Array(out)
        }
        "States.Base64Encode" => Value::String(
            base64::engine::general_purpose::STANDARD.encode(want_str(name, 1, a(0))?),
        ),
        "States.Base64Decode" => {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(want_str(name, 1, a(0))?)
                .map_err(|e| format!("{name}: not base64: {e}"))?;
            Value::String(
                String::from_utf8(bytes)
                    .map_err(|_| format!("{name}: the decoded bytes are not UTF-8"))?,
            )
        }
        "States.Hash" => {
            use sha2::Digest as _;
            let data = match a(0) {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            let data = data.as_bytes();
            let algorithm = want_str(name, 2, a(1))?;
            Value::String(match algorithm {
                "MD5" => hex::encode(md5::Md5::digest(data)),
                "SHA-1" => hex::encode(sha1::Sha1::digest(data)),
                "SHA-256" => hex::encode(sha2::Sha256::digest(data)),
                "SHA-384" => hex::encode(sha2::Sha384::digest(data)),
                "SHA-512" => hex::encode(sha2::Sha512::digest(data)),
                other => {
                    return Err(format!(
                        "{name}: unknown algorithm '{other}' (MD5, SHA-1, SHA-256, SHA-384, SHA-512)"
                    ));
                }
            })
        }
        "States.JsonMerge" => {
            let (Value::Object(left), Value::Object(right)) = (a(0), a(1)) else {
                return Err(format!("{name}: arguments 1 and 2 must be objects"));
            };
            if a(2) != &Value::Bool(false) {
                return Err(format!("{name}: only a shallow merge (false) is supported"));
            }
            let mut out: Map<String, Value> = left.clone();
            for (k, v) in right {
                out.insert(k.clone(), v.clone());
            }
            Value::Object(out)
        }
        "States.MathRandom" => {
            use rand::{Rng as _, SeedableRng as _};
            let (start, end) = (want_int(name, 1, a(0))?, want_int(name, 2, a(1))?);
            if start >= end {
                return Err(format!("{name}: the start must be below the end"));
            }
            let n = match args.get(2) {
                Some(seed) => rand::rngs::StdRng::seed_from_u64(want_int(name, 3, seed)? as u64)
                    .random_range(start..end),
                None => rand::rng().random_range(start..end),
            };
            Value::from(n)
        }
        "States.MathAdd" => {
            let (x, y) = (want_int(name, 1, a(0))?, want_int(name, 2, a(1))?);
            Value::from(
                x.checked_add(y)
                    .ok_or_else(|| format!("{name}: the sum overflows"))?,
            )
        }
        "States.StringSplit" => {
            let s = want_str(name, 1, a(0))?;
            let delimiters: Vec<char> = want_str(name, 2, a(1))?.chars().collect();
            Value::Array(
                s.split(|c| delimiters.contains(&c))
                    .filter(|part| !part.is_empty())
                    .map(|part| Value::String(part.to_owned()))
                    .collect(),
            )
        }
        "States.UUID" => Value::String(uuid::Uuid::new_v4().to_string()),
        other => return Err(format!("unknown function '{other}'")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn call(text: &str, input: Value) -> Result<Value, IntrinsicError> {
        let vars = Map::new();
        let ctx = json!({});
        Call::parse(text)?.eval(&Scope {
            input: &input,
            context: &ctx,
            variables: &vars,
        })
    }

    #[test]
    fn calls_nest_and_take_paths_and_literals() {
        let input = json!({"a": [1, 2, 3, 4, 5], "name": "Ann"});
        assert_eq!(
            call(
                "States.Format('Hi {}, \\{not\\} {}', $.name, States.ArrayLength($.a))",
                input.clone()
            )
            .unwrap(),
            json!("Hi Ann, {not} 5")
        );
        assert_eq!(
            call("States.ArrayPartition($.a, 2)", input.clone()).unwrap(),
            json!([[1, 2], [3, 4], [5]])
        );
        assert_eq!(
            call("States.ArrayRange(10, 0, -5)", json!({})).unwrap(),
            json!([10, 5, 0])
        );
        assert_eq!(
            call("States.MathAdd(1.49, 1.5)", json!({})).unwrap(),
            json!(3)
        );
        assert_eq!(
            call("States.Hash('input data', 'SHA-1')", json!({})).unwrap(),
            json!("aaff4a450a104cd177d28d18d74485e8cae074b7")
        );
        assert_eq!(
            call("States.StringSplit('a,,b', ',')", json!({})).unwrap(),
            json!(["a", "b"])
        );
        assert_eq!(
            call("States.JsonToString($.a)", input).unwrap(),
            json!("[1,2,3,4,5]")
        );
    }

    #[test]
    fn bad_calls_say_where_and_why() {
        let err = Call::parse("States.Nope(1)").unwrap_err().to_string();
        assert!(err.contains("unknown function 'States.Nope'"), "{err}");
        let err = Call::parse("States.MathAdd(1)").unwrap_err().to_string();
        assert!(err.contains("takes 2 argument(s), not 1"), "{err}");
        let err = Call::parse("States.Format('x', ").unwrap_err().to_string();
        assert!(err.contains("expected an argument"), "{err}");
        assert!(call("States.ArrayGetItem(States.Array(1), 3)", json!({})).is_err());
    }
}
