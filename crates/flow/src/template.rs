//! Payload templates (`Parameters`, `ResultSelector`, `ItemSelector`,
//! `Credentials`, `Assign`): JSON in which a key ending in `.$` takes its value
//! from a path or an intrinsic function call.

use serde_json::{Map, Value};

use crate::intrinsics::{self, Call, IntrinsicError};
use crate::path::{Path, PathError, Scope};

/// A parsed template.
#[derive(Debug, Clone)]
pub enum Template {
    Literal(Value),
    Object(Vec<(String, Template)>),
    Array(Vec<Template>),
    Path(Path),
    Call(Call),
}

/// Why a template could not be filled in.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TemplateError {
    #[error(
        "The JSONPath '{path}' specified for the field '{field}' could not be found in the input '{input}'"
    )]
    NotFound {
        path: String,
        field: String,
        input: String,
    },
    #[error("{0}")]
    Path(PathError),
    #[error("The function '{field}' failed: {error}")]
    Intrinsic {
        field: String,
        error: IntrinsicError,
    },
}

impl Template {
    /// Parses a template; `at` names where it sits, for the error.
    pub fn parse(value: &Value, at: &str) -> Result<Template, String> {
        Ok(match value {
            Value::Object(map) => {
                let mut fields = Vec::with_capacity(map.len());
                for (key, v) in map {
                    let here = format!("{at}.{key}");
                    if let Some(name) = key.strip_suffix(".$")
                        && map.contains_key(name)
                    {
                        return Err(format!(
                            "{here}: the fields '{name}' and '{key}' name the same output field"
                        ));
                    }
                    if let Some(name) = key.strip_suffix(".$") {
                        let Some(text) = v.as_str() else {
                            return Err(format!(
                                "{here}: a field ending in '.$' takes a path or an intrinsic function call (a string)"
                            ));
                        };
                        let t = if intrinsics::looks_like_call(text) {
                            Template::Call(Call::parse(text).map_err(|e| format!("{here}: {e}"))?)
                        } else {
                            Template::Path(Path::parse(text).map_err(|e| format!("{here}: {e}"))?)
                        };
                        fields.push((name.to_owned(), t));
                    } else {
                        fields.push((key.clone(), Template::parse(v, &here)?));
                    }
                }
                Template::Object(fields)
            }
            Value::Array(items) => Template::Array(
                items
                    .iter()
                    .enumerate()
                    .map(|(i, v)| Template::parse(v, &format!("{at}[{i}]")))
                    .collect::<Result<_, _>>()?,
            ),
            other => Template::Literal(other.clone()),
        })
    }

    /// Fills the template in against `scope`.
    pub fn eval(&self, scope: &Scope) -> Result<Value, TemplateError> {
        self.eval_field(scope, "")
    }

    fn eval_field(&self, scope: &Scope, field: &str) -> Result<Value, TemplateError> {
        Ok(match self {
            Template::Literal(v) => v.clone(),
            Template::Object(fields) => {
                let mut out = Map::with_capacity(fields.len());
                for (name, t) in fields {
                    let field = match t {
                        Template::Path(_) | Template::Call(_) => format!("{name}.$"),
                        _ => name.clone(),
                    };
                    out.insert(name.clone(), t.eval_field(scope, &field)?);
                }
                Value::Object(out)
            }
            Template::Array(items) => Value::Array(
                items
                    .iter()
                    .map(|t| t.eval_field(scope, field))
                    .collect::<Result<_, _>>()?,
            ),
            Template::Path(path) => path.eval(scope).map_err(|e| match e {
                PathError::NoResults(..) => TemplateError::NotFound {
                    path: path.text().to_owned(),
                    field: field.to_owned(),
                    input: match path.root() {
                        crate::path::Root::Context => scope.context.to_string(),
                        _ => scope.input.to_string(),
                    },
                },
                other => TemplateError::Path(other),
            })?,
            Template::Call(call) => call.eval(scope).map_err(|error| TemplateError::Intrinsic {
                field: field.to_owned(),
                error,
            })?,
        })
    }
}
