//! Paths as Step Functions reads them: `$` for the state's input, `$$` for the
//! context object, `$name` for a variable.
//!
//! Queries go to serde_json_path (RFC 9535) after [`normalize`] has rewritten
//! what Step Functions' Jayway dialect accepts and the RFC does not (dot names
//! such as `$.sub-values`). A *definite* path (names and indices only) yields
//! its one value or fails; any other path yields the array of what it matched.
//! [`ReferencePath`] is the subset `ResultPath` uses to place a value.

use serde_json::{Map, Value};
use serde_json_path::JsonPath;

/// Why a path could not be parsed or applied.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PathError {
    #[error("'{0}' is not a valid path: {1}")]
    Syntax(String, String),
    #[error("Invalid path '{0}' : No results for path: {1}")]
    NoResults(String, String),
    #[error("The variable '{0}' is not defined")]
    UnknownVariable(String),
}

/// What a path is evaluated against.
#[derive(Debug, Clone, PartialEq)]
pub enum Root {
    /// `$…`: the value being processed.
    Input,
    /// `$$…`: the context object.
    Context,
    /// `$name…`: a workflow variable.
    Variable(String),
}

/// The values a path can reach.
pub struct Scope<'a> {
    pub input: &'a Value,
    pub context: &'a Value,
    pub variables: &'a Map<String, Value>,
}

/// A parsed path.
#[derive(Debug, Clone)]
pub struct Path {
    text: String,
    root: Root,
    normalized: String,
    query: Option<JsonPath>,
    definite: bool,
}

impl Path {
    pub fn parse(text: &str) -> Result<Path, PathError> {
        let syntax = |why: &str| PathError::Syntax(text.to_owned(), why.to_owned());
        let (root, rest) = if let Some(rest) = text.strip_prefix("$$") {
            (Root::Context, format!("${rest}"))
        } else if let Some(rest) = text.strip_prefix('$') {
            let name_len = rest
                .find(|c: char| !(c.is_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            if name_len > 0 {
                let (name, tail) = rest.split_at(name_len);
                (Root::Variable(name.to_owned()), format!("${tail}"))
            } else {
                (Root::Input, text.to_owned())
            }
        } else {
            return Err(syntax("a path starts with '$'"));
        };
        let (normalized, definite) = normalize(&rest).map_err(|why| syntax(&why))?;
        let query = match JsonPath::parse(&normalized) {
            Ok(q) => Some(q),
            // Jayway's script expressions (`[(@.length-1)]`, filters on bare
            // words) are accepted as Step Functions accepts them, and refused
            // with a clear error if evaluated.
            Err(_) if normalized.contains("(@") => None,
            Err(e) => return Err(syntax(&e.to_string())),
        };
        Ok(Path {
            text: text.to_owned(),
            root,
            normalized,
            query,
            definite,
        })
    }

    pub fn text(&self) -> &str {
        &self.text
    }

    pub fn root(&self) -> &Root {
        &self.root
    }

    /// True when the path names one place (names and indices only).
    pub fn is_definite(&self) -> bool {
        self.definite
    }

    /// The value the path names (definite) or the array of what it matched.
    pub fn eval(&self, scope: &Scope) -> Result<Value, PathError> {
        let base = match &self.root {
            Root::Input => scope.input,
            Root::Context => scope.context,
            Root::Variable(name) => scope
                .variables
                .get(name)
                .ok_or_else(|| PathError::UnknownVariable(name.clone()))?,
        };
        let Some(query) = &self.query else {
            return Err(PathError::Syntax(
                self.text.clone(),
                "this Jayway script expression is accepted in definitions but sluice cannot evaluate it; write it as an RFC 9535 filter".into(),
            ));
        };
        let nodes = query.query(base);
        if self.definite {
            nodes
                .exactly_one()
                .cloned()
                .map_err(|_| PathError::NoResults(self.text.clone(), self.normalized.clone()))
        } else {
            Ok(Value::Array(nodes.all().into_iter().cloned().collect()))
        }
    }

    /// Like [`Path::eval`], but a definite path that matches nothing is `None`.
    pub fn find(&self, scope: &Scope) -> Result<Option<Value>, PathError> {
        match self.eval(scope) {
            Ok(v) => Ok(Some(v)),
            Err(PathError::NoResults(..)) => Ok(None),
            Err(e) => Err(e),
        }
    }
}

fn is_shorthand(name: &str) -> bool {
    let mut chars = name.chars();
    match chars.next() {
        Some(c) if c.is_ascii_alphabetic() || c == '_' || !c.is_ascii() => {}
        _ => return false,
    }
    chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || !c.is_ascii())
}

fn quote(name: &str) -> String {
    format!("['{}']", name.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// Rewrites a Jayway-style path (starting with `$`) into RFC 9535 syntax, and
/// says whether it is definite.
pub(crate) fn normalize(path: &str) -> Result<(String, bool), String> {
    let chars: Vec<char> = path.chars().collect();
    if chars.first() != Some(&'$') {
        return Err("a path starts with '$'".into());
    }
    let mut out = String::from("$");
    let mut definite = true;
    let mut i = 1;
    while i < chars.len() {
        match chars[i] {
            '.' => {
                let descendant = chars.get(i + 1) == Some(&'.');
                if descendant {
                    definite = false;
                    i += 1;
                }
                i += 1;
                let start = i;
                while i < chars.len() && chars[i] != '.' && chars[i] != '[' {
                    i += 1;
                }
                let name: String = chars[start..i].iter().collect();
                out.push_str(if descendant { ".." } else { "" });
                if name == "*" {
                    definite = false;
                    out.push_str(if descendant { "*" } else { ".*" });
                } else if name.is_empty() {
                    if !descendant || chars.get(i) != Some(&'[') {
                        return Err("a '.' must be followed by a name".into());
                    }
                } else if is_shorthand(&name) {
                    if !descendant {
                        out.push('.');
                    }
                    out.push_str(&name);
                } else {
                    out.push_str(&quote(&name));
                }
            }
            '[' => {
                let start = i;
                let mut depth = 0;
                let mut quote_char: Option<char> = None;
                loop {
                    let Some(&c) = chars.get(i) else {
                        return Err("an unclosed '['".into());
                    };
                    match quote_char {
                        Some(q) => {
                            if c == '\\' {
                                i += 1;
                            } else if c == q {
                                quote_char = None;
                            }
                        }
                        None => match c {
                            '\'' | '"' => quote_char = Some(c),
                            '[' => depth += 1,
                            ']' => {
                                depth -= 1;
                                if depth == 0 {
                                    break;
                                }
                            }
                            _ => {}
                        },
                    }
                    i += 1;
                }
                let inner: String = chars[start + 1..i].iter().collect();
                if !is_definite_selector(inner.trim()) {
                    definite = false;
                }
                out.push('[');
                out.push_str(&inner);
                out.push(']');
                i += 1;
            }
            c => return Err(format!("unexpected '{c}'")),
        }
    }
    Ok((out, definite))
}

fn is_definite_selector(inner: &str) -> bool {
    let quoted = |q: char| {
        inner.len() >= 2
            && inner.starts_with(q)
            && inner.ends_with(q)
            && !inner[1..inner.len() - 1].contains(q)
    };
    quoted('\'') || quoted('"') || (!inner.is_empty() && inner.parse::<i64>().is_ok())
}

/// One step of a reference path.
#[derive(Debug, Clone, PartialEq)]
enum Step {
    Name(String),
    Index(usize),
}

/// A path that names one place (`ResultPath`): names and indices, no wildcards.
#[derive(Debug, Clone, PartialEq)]
pub struct ReferencePath {
    text: String,
    steps: Vec<Step>,
}

impl ReferencePath {
    pub fn parse(text: &str) -> Result<ReferencePath, PathError> {
        let syntax = |why: &str| PathError::Syntax(text.to_owned(), why.to_owned());
        let (normalized, definite) = normalize(text).map_err(|why| syntax(&why))?;
        if !definite {
            return Err(syntax(
                "a reference path names one place: no '..', '*', filters or slices",
            ));
        }
        // The normalized form is `$` followed by `.name`, `['name']` and `[n]` only.
        let mut steps = Vec::new();
        let mut rest = &normalized[1..];
        while !rest.is_empty() {
            if let Some(r) = rest.strip_prefix('.') {
                let end = r.find(['.', '[']).unwrap_or(r.len());
                steps.push(Step::Name(r[..end].to_owned()));
                rest = &r[end..];
            } else if let Some(r) = rest.strip_prefix('[') {
                let r = r.trim_start();
                if let Some(q) = r.chars().next().filter(|c| *c == '\'' || *c == '"') {
                    let body = &r[1..];
                    let mut name = String::new();
                    let mut chars = body.char_indices();
                    let mut end = None;
                    while let Some((at, c)) = chars.next() {
                        if c == '\\' {
                            if let Some((_, e)) = chars.next() {
                                name.push(e);
                            }
                        } else if c == q {
                            end = Some(at);
                            break;
                        } else {
                            name.push(c);
                        }
                    }
                    let end = end.ok_or_else(|| syntax("an unclosed quote"))?;
                    let after = body[end + 1..].trim_start();
                    rest = after
                        .strip_prefix(']')
                        .ok_or_else(|| syntax("expected ']'"))?;
                    steps.push(Step::Name(name));
                } else {
                    let close = r.find(']').ok_or_else(|| syntax("expected ']'"))?;
                    let index: i64 = r[..close].trim().parse().map_err(|_| syntax("bad index"))?;
                    let index = usize::try_from(index)
                        .map_err(|_| syntax("a reference path cannot use a negative index"))?;
                    steps.push(Step::Index(index));
                    rest = &r[close + 1..];
                }
            } else {
                return Err(syntax("unexpected character"));
            }
        }
        Ok(ReferencePath {
            text: text.to_owned(),
            steps,
        })
    }

    pub fn text(&self) -> &str {
        &self.text
    }

    /// Puts `value` at this path inside `target`, creating objects on the way.
    /// Fails (naming why) when a step meets a value of the wrong kind.
    pub fn set(&self, target: &mut Value, value: Value) -> Result<(), String> {
        let mut at = target;
        for (n, step) in self.steps.iter().enumerate() {
            let last = n + 1 == self.steps.len();
            at = match step {
                Step::Name(name) => {
                    let Value::Object(map) = at else {
                        return Err(format!(
                            "Unable to apply ResultPath '{}' to input: the value at step '{name}' is not an object",
                            self.text
                        ));
                    };
                    map.entry(name.clone()).or_insert_with(|| {
                        if last {
                            Value::Null
                        } else {
                            Value::Object(Map::new())
                        }
                    })
                }
                Step::Index(index) => {
                    let Some(item) = at.as_array_mut().and_then(|a| a.get_mut(*index)) else {
                        return Err(format!(
                            "Unable to apply ResultPath '{}' to input: no array item [{index}]",
                            self.text
                        ));
                    };
                    item
                }
            };
        }
        *at = value;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn eval(path: &str, input: Value) -> Result<Value, PathError> {
        let vars = Map::new();
        let ctx = json!({"Map": {"Item": {"Value": 7}}});
        Path::parse(path)?.eval(&Scope {
            input: &input,
            context: &ctx,
            variables: &vars,
        })
    }

    #[test]
    fn definite_paths_yield_one_value_and_others_an_array() {
        let input = json!({"a": {"sub-values": [1, 2, 3]}, "users": [{"s": 0, "n": "x"}, {"s": 1, "n": "y"}]});
        assert_eq!(eval("$.a.sub-values[1]", input.clone()).unwrap(), json!(2));
        assert_eq!(
            eval("$.a['sub-values'][-1]", input.clone()).unwrap(),
            json!(3)
        );
        assert_eq!(eval("$", input.clone()).unwrap(), input);
        assert_eq!(
            eval("$.users[?(@.s == 0)]", input.clone()).unwrap(),
            json!([{"s": 0, "n": "x"}])
        );
        assert_eq!(eval("$..n", input.clone()).unwrap(), json!(["x", "y"]));
        assert_eq!(eval("$.users[*].s", input.clone()).unwrap(), json!([0, 1]));
        assert_eq!(eval("$$.Map.Item.Value", json!(null)).unwrap(), json!(7));
        assert!(matches!(
            eval("$.missing", input.clone()),
            Err(PathError::NoResults(..))
        ));
        assert!(matches!(eval("$.a[", input), Err(PathError::Syntax(..))));
    }

    #[test]
    fn reference_paths_create_objects_and_refuse_wrong_kinds() {
        let mut v = json!({"a": 1, "list": [{}, {}]});
        ReferencePath::parse("$.b.c")
            .unwrap()
            .set(&mut v, json!(2))
            .unwrap();
        ReferencePath::parse("$.list[1].x")
            .unwrap()
            .set(&mut v, json!(3))
            .unwrap();
        assert_eq!(v, json!({"a": 1, "list": [{}, {"x": 3}], "b": {"c": 2}}));
        assert!(
            ReferencePath::parse("$.a.b")
                .unwrap()
                .set(&mut v, json!(0))
                .is_err()
        );
        assert!(ReferencePath::parse("$..a").is_err());
        let mut s = json!("text");
        ReferencePath::parse("$")
            .unwrap()
            .set(&mut s, json!({"r": 1}))
            .unwrap();
        assert_eq!(s, json!({"r": 1}));
    }
}
