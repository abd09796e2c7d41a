//! Definition text to a [`StateMachine`], with every problem found at once,
//! each naming the state and field (`States.Check.Choices[0].Next: …`).

use std::collections::{HashMap, HashSet};
use std::fmt;

use serde_json::{Map, Value};

use crate::definition::*;
use crate::intrinsics::{self, Call};
use crate::path::{Path, ReferencePath};
use crate::template::Template;

/// One thing wrong with a definition.
#[derive(Debug, Clone, PartialEq)]
pub struct Problem {
    /// Where: `States.<name>.<field>`, nested through `Branches[i]` and `ItemProcessor`.
    pub at: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "{}: {}", self.at, self.message)
    }
}

/// Why a definition was refused.
#[derive(Debug, thiserror::Error)]
pub enum DefinitionError {
    #[error("the definition is not valid JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("the definition is not valid ({} problem(s)):\n  {}", .0.len(), .0.iter().map(|p| p.to_string()).collect::<Vec<_>>().join("\n  "))]
    Invalid(Vec<Problem>),
}

/// Parses and validates a definition's JSON text (duplicate keys are refused).
pub fn parse_definition(text: &str) -> Result<StateMachine, DefinitionError> {
    let value = crate::json::parse_strict(text)?;
    from_value(&value)
}

/// Validates a definition already parsed as JSON.
pub fn from_value(value: &Value) -> Result<StateMachine, DefinitionError> {
    let mut v = Validator::default();
    let machine = v.machine(value, "", QueryLanguage::JsonPath, Scope::Top);
    match machine {
        Some(m) if v.problems.is_empty() => Ok(m),
        _ => Err(DefinitionError::Invalid(v.problems)),
    }
}

/// Whether any field of a definition may read the execution's input through
/// the context object (`$$.Execution.Input`, `$$`, `$states.context`):
/// when none does, the interpreter leaves the input out of each state's
/// context instead of copying it there (a Map over 10,000 items would copy
/// them 10,000 times).
fn reads_execution_input(value: &Value) -> bool {
    match value {
        Value::String(s) => {
            s.contains("Execution")
                || s.match_indices("$$")
                    .any(|(i, _)| !s[i + 2..].starts_with('.'))
                || s.match_indices("$states.context")
                    .any(|(i, _)| !s[i + 15..].starts_with('.'))
        }
        Value::Array(items) => items.iter().any(reads_execution_input),
        Value::Object(m) => m.iter().any(|(k, v)| {
            reads_execution_input(&Value::String(k.clone())) || reads_execution_input(v)
        }),
        _ => false,
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Scope {
    Top,
    Branch,
    Processor,
}

#[derive(Default)]
struct Validator {
    problems: Vec<Problem>,
    names: HashSet<String>,
}

const MAX_NAME: usize = 80;

fn join(at: &str, field: &str) -> String {
    if at.is_empty() {
        field.to_owned()
    } else {
        format!("{at}.{field}")
    }
}

fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// The fields each state type takes, by query language (besides Type, Comment, QueryLanguage).
fn allowed(kind: &str, lang: QueryLanguage) -> Option<&'static [&'static str]> {
    use QueryLanguage::*;
    Some(match (kind, lang) {
        ("Pass", JsonPath) => &[
            "Next",
            "End",
            "InputPath",
            "OutputPath",
            "ResultPath",
            "Parameters",
            "Result",
            "Assign",
        ],
        ("Pass", JsonAta) => &["Next", "End", "Output", "Assign"],
        ("Task", JsonPath) => &[
            "Next",
            "End",
            "InputPath",
            "OutputPath",
            "ResultPath",
            "Parameters",
            "ResultSelector",
            "Retry",
            "Catch",
            "Resource",
            "TimeoutSeconds",
            "TimeoutSecondsPath",
            "HeartbeatSeconds",
            "HeartbeatSecondsPath",
            "Credentials",
            "Assign",
        ],
        ("Task", JsonAta) => &[
            "Next",
            "End",
            "Arguments",
            "Output",
            "Retry",
            "Catch",
            "Resource",
            "TimeoutSeconds",
            "HeartbeatSeconds",
            "Credentials",
            "Assign",
        ],
        ("Choice", JsonPath) => &["Choices", "Default", "InputPath", "OutputPath", "Assign"],
        ("Choice", JsonAta) => &["Choices", "Default", "Output", "Assign"],
        ("Wait", JsonPath) => &[
            "Next",
            "End",
            "InputPath",
            "OutputPath",
            "Seconds",
            "Timestamp",
            "SecondsPath",
            "TimestampPath",
            "Assign",
        ],
        ("Wait", JsonAta) => &["Next", "End", "Output", "Seconds", "Timestamp", "Assign"],
        ("Succeed", JsonPath) => &["InputPath", "OutputPath"],
        ("Succeed", JsonAta) => &["Output"],
        ("Fail", JsonPath) => &["Error", "Cause", "ErrorPath", "CausePath"],
        ("Fail", JsonAta) => &["Error", "Cause"],
        ("Parallel", JsonPath) => &[
            "Next",
            "End",
            "InputPath",
            "OutputPath",
            "ResultPath",
            "Parameters",
            "ResultSelector",
            "Retry",
            "Catch",
            "Branches",
            "Assign",
        ],
        ("Parallel", JsonAta) => &[
            "Next",
            "End",
            "Arguments",
            "Output",
            "Retry",
            "Catch",
            "Branches",
            "Assign",
        ],
        ("Map", JsonPath) => &[
            "Next",
            "End",
            "InputPath",
            "OutputPath",
            "ResultPath",
            "Parameters",
            "ItemSelector",
            "ResultSelector",
            "Retry",
            "Catch",
            "Iterator",
            "ItemProcessor",
            "ItemsPath",
            "MaxConcurrency",
            "MaxConcurrencyPath",
            "ItemReader",
            "ItemBatcher",
            "ResultWriter",
            "ToleratedFailureCount",
            "ToleratedFailureCountPath",
            "ToleratedFailurePercentage",
            "ToleratedFailurePercentagePath",
            "Label",
            "Assign",
        ],
        ("Map", JsonAta) => &[
            "Next",
            "End",
            "Arguments",
            "Output",
            "ItemSelector",
            "Retry",
            "Catch",
            "ItemProcessor",
            "Items",
            "MaxConcurrency",
            "ItemReader",
            "ItemBatcher",
            "ResultWriter",
            "ToleratedFailureCount",
            "ToleratedFailurePercentage",
            "Label",
            "Assign",
        ],
        _ => return None,
    })
}

impl Validator {
    fn problem(&mut self, at: &str, message: impl Into<String>) {
        self.problems.push(Problem {
            at: if at.is_empty() {
                "$".into()
            } else {
                at.to_owned()
            },
            message: message.into(),
        });
    }

    fn machine(
        &mut self,
        value: &Value,
        at: &str,
        parent: QueryLanguage,
        scope: Scope,
    ) -> Option<StateMachine> {
        let Some(obj) = value.as_object() else {
            self.problem(
                at,
                format!("a state machine is an object, not {}", kind_of(value)),
            );
            return None;
        };
        let fields: &[&str] = match scope {
            Scope::Top => &[
                "StartAt",
                "States",
                "Comment",
                "Version",
                "TimeoutSeconds",
                "QueryLanguage",
            ],
            Scope::Branch => &["StartAt", "States", "Comment", "QueryLanguage"],
            Scope::Processor => &[
                "StartAt",
                "States",
                "Comment",
                "QueryLanguage",
                "ProcessorConfig",
            ],
        };
        for key in obj.keys() {
            if !fields.contains(&key.as_str()) {
                self.problem(
                    &join(at, key),
                    format!("unknown field (allowed here: {})", fields.join(", ")),
                );
            }
        }
        let lang = self.query_language(obj, at, parent);
        let timeout_seconds = match obj.get("TimeoutSeconds") {
            None => None,
            Some(v) => match v.as_u64().filter(|n| *n > 0) {
                Some(n) => Some(n),
                None => {
                    self.problem(&join(at, "TimeoutSeconds"), "must be a positive integer");
                    None
                }
            },
        };
        let start_at = match obj.get("StartAt") {
            Some(Value::String(s)) => Some(s.clone()),
            Some(other) => {
                self.problem(
                    &join(at, "StartAt"),
                    format!("must be a string, not {}", kind_of(other)),
                );
                None
            }
            None => {
                self.problem(at, "StartAt is required");
                None
            }
        };
        let Some(states_obj) = obj.get("States") else {
            self.problem(at, "States is required");
            return None;
        };
        let Some(states_obj) = states_obj.as_object() else {
            self.problem(&join(at, "States"), "must be an object of states by name");
            return None;
        };
        if states_obj.is_empty() {
            self.problem(&join(at, "States"), "needs at least one state");
        }
        let mut states = Vec::new();
        let mut index = HashMap::new();
        for (name, state) in states_obj {
            let here = join(at, &format!("States.{name}"));
            if name.chars().count() > MAX_NAME {
                self.problem(
                    &here,
                    format!("a state name is at most {MAX_NAME} characters"),
                );
            }
            if name.is_empty() {
                self.problem(&here, "a state name cannot be empty");
            }
            if !self.names.insert(name.clone()) {
                self.problem(&here, format!("the state name '{name}' is used more than once (names are unique across the whole state machine)"));
            }
            if let Some(s) = self.state(name, state, &here, lang) {
                index.insert(name.clone(), states.len());
                states.push(s);
            }
        }
        let start_at = start_at?;
        if !states_obj.contains_key(&start_at) {
            self.problem(
                &join(at, "StartAt"),
                format!("no state named '{start_at}' here"),
            );
        }
        self.check_graph(states_obj, &states, &start_at, at);
        Some(StateMachine {
            start_at,
            states,
            index,
            timeout_seconds,
            reads_execution_input: reads_execution_input(value),
        })
    }

    fn check_graph(
        &mut self,
        states_obj: &Map<String, Value>,
        states: &[State],
        start_at: &str,
        at: &str,
    ) {
        let mut edges: HashMap<&str, Vec<&str>> = HashMap::new();
        let mut terminal = false;
        for s in states {
            let here = join(at, &format!("States.{}", s.name));
            let mut targets: Vec<(String, &str)> = Vec::new();
            if let Some(Transition::Next(n)) = &s.transition {
                targets.push(("Next".into(), n));
            }
            if matches!(s.transition, Some(Transition::End))
                || matches!(s.kind, Kind::Succeed | Kind::Fail { .. })
            {
                terminal = true;
            }
            if let Kind::Choice { choices, default } = &s.kind {
                for (i, c) in choices.iter().enumerate() {
                    targets.push((format!("Choices[{i}].Next"), &c.next));
                }
                if let Some(d) = default {
                    targets.push(("Default".into(), d));
                }
            }
            for (i, c) in s.catch.iter().enumerate() {
                targets.push((format!("Catch[{i}].Next"), &c.next));
            }
            for (field, target) in targets {
                if !states_obj.contains_key(target) {
                    let elsewhere = if self.names.contains(target) {
                        " (a state of another branch or of the enclosing machine cannot be reached from here)"
                    } else {
                        ""
                    };
                    self.problem(
                        &join(&here, &field),
                        format!("no state named '{target}' here{elsewhere}"),
                    );
                }
                edges.entry(s.name.as_str()).or_default().push(target);
            }
        }
        if !terminal && !states.is_empty() {
            self.problem(at, "no terminal state: at least one state needs End: true, or be a Succeed or Fail state");
        }
        let mut seen: HashSet<&str> = HashSet::new();
        let mut todo = vec![start_at];
        while let Some(n) = todo.pop() {
            if seen.insert(n) {
                todo.extend(edges.get(n).into_iter().flatten().copied());
            }
        }
        for s in states {
            if !seen.contains(s.name.as_str()) && states_obj.contains_key(start_at) {
                self.problem(
                    &join(at, &format!("States.{}", s.name)),
                    "cannot be reached from StartAt",
                );
            }
        }
    }

    fn query_language(
        &mut self,
        obj: &Map<String, Value>,
        at: &str,
        parent: QueryLanguage,
    ) -> QueryLanguage {
        match obj.get("QueryLanguage") {
            None => parent,
            Some(Value::String(s)) if s == "JSONata" => QueryLanguage::JsonAta,
            Some(Value::String(s)) if s == "JSONPath" => QueryLanguage::JsonPath,
            Some(other) => {
                self.problem(
                    &join(at, "QueryLanguage"),
                    format!("must be \"JSONPath\" or \"JSONata\", not {other}"),
                );
                parent
            }
        }
    }

    fn state(
        &mut self,
        name: &str,
        value: &Value,
        at: &str,
        parent: QueryLanguage,
    ) -> Option<State> {
        let Some(obj) = value.as_object() else {
            self.problem(at, format!("a state is an object, not {}", kind_of(value)));
            return None;
        };
        let lang = self.query_language(obj, at, parent);
        let type_name = match obj.get("Type") {
            Some(Value::String(t)) => t.clone(),
            Some(other) => {
                self.problem(
                    &join(at, "Type"),
                    format!("must be a string, not {}", kind_of(other)),
                );
                return None;
            }
            None => {
                self.problem(
                    at,
                    "Type is required (Pass, Task, Choice, Wait, Succeed, Fail, Parallel or Map)",
                );
                return None;
            }
        };
        let Some(fields) = allowed(&type_name, lang) else {
            self.problem(&join(at, "Type"), format!("'{type_name}' is not a state type (Pass, Task, Choice, Wait, Succeed, Fail, Parallel or Map)"));
            return None;
        };
        for key in obj.keys() {
            if !matches!(key.as_str(), "Type" | "Comment" | "QueryLanguage")
                && !fields.contains(&key.as_str())
            {
                let why = if lang == QueryLanguage::JsonAta
                    && allowed(&type_name, QueryLanguage::JsonPath)
                        .is_some_and(|f| f.contains(&key.as_str()))
                {
                    "is a JSONPath field; a JSONata state does not take it".to_owned()
                } else if lang == QueryLanguage::JsonPath
                    && allowed(&type_name, QueryLanguage::JsonAta)
                        .is_some_and(|f| f.contains(&key.as_str()))
                {
                    "is a JSONata field; set QueryLanguage to \"JSONata\" to use it".to_owned()
                } else {
                    format!("unknown field for a {type_name} state")
                };
                self.problem(&join(at, key), why);
            }
        }
        let mut f = Fields {
            v: self,
            obj,
            at,
            lang,
        };
        let transition = match type_name.as_str() {
            "Choice" | "Succeed" | "Fail" => None,
            _ => f.transition(),
        };
        let kind = match type_name.as_str() {
            "Pass" => Kind::Pass {
                result: obj.get("Result").cloned(),
            },
            "Task" => f.task()?,
            "Choice" => f.choice()?,
            "Wait" => f.wait()?,
            "Succeed" => Kind::Succeed,
            "Fail" => Kind::Fail {
                error: f.text("Error", "ErrorPath"),
                cause: f.text("Cause", "CausePath"),
            },
            "Parallel" => f.parallel()?,
            "Map" => f.map()?,
            _ => unreachable!("allowed() knows the types"),
        };
        let input_path = f.select("InputPath");
        let output_path = f.select("OutputPath");
        let parameters = if type_name == "Map" {
            None
        } else {
            f.template("Parameters")
        };
        let result_selector = f.template("ResultSelector");
        let result_path = f.place("ResultPath", obj.get("ResultPath"));
        let assign = f.assign();
        let assign_jsonata = if lang == QueryLanguage::JsonAta {
            obj.get("Assign").cloned()
        } else {
            None
        };
        let arguments = f.jsonata_value("Arguments");
        let output = f.jsonata_value("Output");
        let retry = f.retry();
        let catch = f.catch();
        Some(State {
            name: name.to_owned(),
            kind,
            query_language: lang,
            input_path,
            output_path,
            parameters,
            result_selector,
            result_path,
            assign,
            assign_jsonata,
            arguments,
            output,
            transition,
            retry,
            catch,
        })
    }
}

/// Reads the fields of one state object, reporting problems with their place.
struct Fields<'a> {
    v: &'a mut Validator,
    obj: &'a Map<String, Value>,
    at: &'a str,
    lang: QueryLanguage,
}

impl Fields<'_> {
    fn here(&self, field: &str) -> String {
        join(self.at, field)
    }

    fn problem(&mut self, field: &str, message: impl Into<String>) {
        let at = self.here(field);
        self.v.problem(&at, message);
    }

    fn string(&mut self, field: &str) -> Option<String> {
        match self.obj.get(field)? {
            Value::String(s) => Some(s.clone()),
            other => {
                let why = format!("must be a string, not {}", kind_of(other));
                self.problem(field, why);
                None
            }
        }
    }

    fn exclusive(&mut self, a: &str, b: &str) -> bool {
        if self.obj.contains_key(a) && self.obj.contains_key(b) {
            self.problem(b, format!("{a} and {b} cannot both be set"));
            return false;
        }
        true
    }

    fn path(&mut self, field: &str, text: &str) -> Option<Path> {
        match Path::parse(text) {
            Ok(p) => Some(p),
            Err(e) => {
                self.problem(field, e.to_string());
                None
            }
        }
    }

    fn transition(&mut self) -> Option<Transition> {
        let next = self.string("Next");
        let end = match self.obj.get("End") {
            None => false,
            Some(Value::Bool(b)) => *b,
            Some(other) => {
                let why = format!("must be true or false, not {}", kind_of(other));
                self.problem("End", why);
                false
            }
        };
        match (next, end) {
            (Some(_), true) => {
                self.problem("End", "Next and End cannot both be set");
                None
            }
            (Some(n), false) => Some(Transition::Next(n)),
            (None, true) => Some(Transition::End),
            (None, false) => {
                if !self.obj.contains_key("Next") {
                    let at = self.at.to_owned();
                    self.v
                        .problem(&at, "needs Next (the state to go to) or End: true");
                }
                None
            }
        }
    }

    fn select(&mut self, field: &str) -> Select {
        match self.obj.get(field) {
            None => Select::All,
            Some(Value::Null) => Select::Nothing,
            Some(Value::String(s)) => {
                let s = s.clone();
                self.path(field, &s).map_or(Select::All, Select::Path)
            }
            Some(other) => {
                let why = format!("must be a path or null, not {}", kind_of(other));
                self.problem(field, why);
                Select::All
            }
        }
    }

    fn place(&mut self, field: &str, value: Option<&Value>) -> Place {
        match value {
            None => Place::Replace,
            Some(Value::Null) => Place::Discard,
            Some(Value::String(s)) => {
                if s.starts_with('$')
                    && !s.starts_with("$$")
                    && s[1..].starts_with(|c: char| c.is_alphanumeric() || c == '_')
                {
                    self.problem(
                        field,
                        format!("'{s}': a ResultPath cannot name a variable; use Assign"),
                    );
                    return Place::Replace;
                }
                match ReferencePath::parse(s) {
                    Ok(p) => Place::At(p),
                    Err(e) => {
                        self.problem(field, e.to_string());
                        Place::Replace
                    }
                }
            }
            Some(other) => {
                let why = format!("must be a reference path or null, not {}", kind_of(other));
                self.problem(field, why);
                Place::Replace
            }
        }
    }

    fn template_of(&mut self, field: &str, value: &Value) -> Option<Template> {
        match Template::parse(value, field) {
            Ok(t) => Some(t),
            Err(e) => {
                let at = self.at.to_owned();
                self.v.problem(&at, e);
                None
            }
        }
    }

    fn template(&mut self, field: &str) -> Option<Template> {
        if self.lang == QueryLanguage::JsonAta {
            return None;
        }
        let value = self.obj.get(field)?;
        if value.is_null() && field != "Credentials" {
            return None;
        }
        self.template_of(field, value)
    }

    fn assign(&mut self) -> Option<Template> {
        let value = self.obj.get("Assign")?;
        if !value.is_object() {
            self.problem(
                "Assign",
                format!("must be an object of variables, not {}", kind_of(value)),
            );
            return None;
        }
        if let Some(map) = value.as_object() {
            for name in map.keys() {
                let bare = name.strip_suffix(".$").unwrap_or(name);
                if bare.is_empty()
                    || bare.contains(['.', '$', '[', ']', ' '])
                    || bare.starts_with(|c: char| c.is_ascii_digit())
                {
                    self.problem(&format!("Assign.{name}"), "a variable name cannot be empty, start with a digit, or hold '.', '$', '[', ']' or spaces");
                }
            }
        }
        if self.lang == QueryLanguage::JsonAta {
            self.jsonata_tree("Assign", value);
            return None;
        }
        self.template_of("Assign", value)
    }

    fn jsonata_value(&mut self, field: &str) -> Option<Value> {
        let value = self.obj.get(field)?;
        self.jsonata_tree(field, value);
        Some(value.clone())
    }

    /// Checks every `{% … %}` string in a JSONata field.
    fn jsonata_tree(&mut self, field: &str, value: &Value) {
        match value {
            Value::String(s) => {
                if let Err(why) = crate::jsonata::check(s) {
                    self.problem(field, why);
                }
            }
            Value::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    self.jsonata_tree(&format!("{field}[{i}]"), item);
                }
            }
            Value::Object(map) => {
                for (k, item) in map {
                    self.jsonata_tree(&format!("{field}.{k}"), item);
                }
            }
            _ => {}
        }
    }

    fn amount(
        &mut self,
        field: &str,
        path_field: &str,
        check: fn(f64) -> Result<(), &'static str>,
    ) -> Option<Amount> {
        if !self.exclusive(field, path_field) {
            return None;
        }
        if let Some(v) = self.obj.get(field) {
            if self.lang == QueryLanguage::JsonAta && v.is_string() {
                self.jsonata_tree(field, v);
                return None;
            }
            let Some(n) = v.as_f64() else {
                let why = format!("must be a number, not {}", kind_of(v));
                self.problem(field, why);
                return None;
            };
            if let Err(why) = check(n) {
                self.problem(field, why);
                return None;
            }
            return Some(Amount::Fixed(n));
        }
        let text = self.string(path_field)?;
        self.path(path_field, &text).map(Amount::Path)
    }

    fn text(&mut self, field: &str, path_field: &str) -> Option<Text> {
        if !self.exclusive(field, path_field) {
            return None;
        }
        if self.lang == QueryLanguage::JsonAta
            && let Some(v) = self.obj.get(field)
        {
            self.jsonata_tree(field, v);
        }
        if let Some(s) = self.string(field) {
            return Some(Text::Fixed(s));
        }
        let text = self.string(path_field)?;
        if intrinsics::looks_like_call(&text) {
            return match Call::parse(&text) {
                Ok(c) => Some(Text::Call(c)),
                Err(e) => {
                    self.problem(path_field, e.to_string());
                    None
                }
            };
        }
        self.path(path_field, &text).map(Text::Path)
    }

    fn error_equals(&mut self, at: &str, obj: &Map<String, Value>) -> Vec<String> {
        let field = format!("{at}.ErrorEquals");
        let Some(list) = obj.get("ErrorEquals").and_then(Value::as_array) else {
            self.problem(&field, "is required: a non-empty array of error names");
            return Vec::new();
        };
        if list.is_empty() {
            self.problem(&field, "needs at least one error name");
        }
        let mut names = Vec::new();
        for (i, n) in list.iter().enumerate() {
            match n.as_str() {
                Some(s) => names.push(s.to_owned()),
                None => self.problem(
                    &format!("{field}[{i}]"),
                    format!("an error name is a string, not {}", kind_of(n)),
                ),
            }
        }
        if names.iter().any(|n| n == "States.ALL") && names.len() > 1 {
            self.problem(&field, "States.ALL must appear alone");
        }
        names
    }

    fn list(&mut self, field: &str) -> Vec<(String, Map<String, Value>)> {
        let Some(value) = self.obj.get(field) else {
            return Vec::new();
        };
        let Some(items) = value.as_array() else {
            self.problem(field, format!("must be an array, not {}", kind_of(value)));
            return Vec::new();
        };
        let mut out = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let at = format!("{field}[{i}]");
            match item.as_object() {
                Some(o) => out.push((at, o.clone())),
                None => self.problem(&at, format!("must be an object, not {}", kind_of(item))),
            }
        }
        out
    }

    fn unknown(&mut self, at: &str, obj: &Map<String, Value>, fields: &[&str]) {
        for key in obj.keys() {
            if !fields.contains(&key.as_str()) {
                self.problem(
                    &format!("{at}.{key}"),
                    format!("unknown field (allowed here: {})", fields.join(", ")),
                );
            }
        }
    }

    fn retry(&mut self) -> Vec<Retrier> {
        let mut out = Vec::new();
        let entries = self.list("Retry");
        let count = entries.len();
        for (n, (at, obj)) in entries.into_iter().enumerate() {
            self.unknown(
                &at,
                &obj,
                &[
                    "ErrorEquals",
                    "IntervalSeconds",
                    "MaxAttempts",
                    "BackoffRate",
                    "MaxDelaySeconds",
                    "JitterStrategy",
                    "Comment",
                ],
            );
            let error_equals = self.error_equals(&at, &obj);
            if error_equals.iter().any(|e| e == "States.ALL") && n + 1 != count {
                self.problem(
                    &format!("{at}.ErrorEquals"),
                    "a retrier with States.ALL must be the last one",
                );
            }
            let num = |s: &mut Self, key: &str, min: f64, int: bool| -> Option<f64> {
                let v = obj.get(key)?;
                match v.as_f64() {
                    Some(x) if x >= min && (!int || x.fract() == 0.0) => Some(x),
                    _ => {
                        let what = if int { "an integer" } else { "a number" };
                        s.problem(
                            &format!("{at}.{key}"),
                            format!("must be {what} >= {min}, not {v}"),
                        );
                        None
                    }
                }
            };
            let interval_seconds = num(self, "IntervalSeconds", 1.0, true).unwrap_or(1.0);
            let max_attempts = num(self, "MaxAttempts", 0.0, true).unwrap_or(3.0) as u32;
            let backoff_rate = num(self, "BackoffRate", 1.0, false).unwrap_or(2.0);
            let max_delay_seconds = num(self, "MaxDelaySeconds", 1.0, true);
            let full_jitter = match obj.get("JitterStrategy") {
                None => false,
                Some(Value::String(s)) if s == "FULL" => true,
                Some(Value::String(s)) if s == "NONE" => false,
                Some(other) => {
                    self.problem(
                        &format!("{at}.JitterStrategy"),
                        format!("must be \"FULL\" or \"NONE\", not {other}"),
                    );
                    false
                }
            };
            out.push(Retrier {
                error_equals,
                interval_seconds,
                max_attempts,
                backoff_rate,
                max_delay_seconds,
                full_jitter,
            });
        }
        out
    }

    fn catch(&mut self) -> Vec<Catcher> {
        let mut out = Vec::new();
        let entries = self.list("Catch");
        for (at, obj) in entries {
            let fields: &[&str] = match self.lang {
                QueryLanguage::JsonPath => {
                    &["ErrorEquals", "Next", "ResultPath", "Assign", "Comment"]
                }
                QueryLanguage::JsonAta => &["ErrorEquals", "Next", "Output", "Assign", "Comment"],
            };
            self.unknown(&at, &obj, fields);
            let error_equals = self.error_equals(&at, &obj);
            let next = match obj.get("Next") {
                Some(Value::String(s)) => s.clone(),
                _ => {
                    self.problem(&format!("{at}.Next"), "is required: the state to go to");
                    continue;
                }
            };
            let result_path = self.place(&format!("{at}.ResultPath"), obj.get("ResultPath"));
            let assign = match obj.get("Assign") {
                Some(v) if self.lang == QueryLanguage::JsonPath => {
                    self.template_of(&format!("{at}.Assign"), v)
                }
                Some(v) => {
                    self.jsonata_tree(&format!("{at}.Assign"), v);
                    None
                }
                None => None,
            };
            if let Some(v) = obj.get("Output") {
                self.jsonata_tree(&format!("{at}.Output"), v);
            }
            out.push(Catcher {
                error_equals,
                next,
                result_path,
                assign,
            });
        }
        out
    }

    fn task(&mut self) -> Option<Kind> {
        if let Some(Value::Object(cfn)) = self.obj.get("Resource") {
            // A CloudFormation intrinsic ({"Fn::GetAtt": …}, {"Ref": …}) resolved at deployment.
            if cfn.len() == 1 && cfn.keys().all(|k| k.starts_with("Fn::") || k == "Ref") {
                let positive = |x: f64| {
                    if x >= 1.0 && x.fract() == 0.0 {
                        Ok(())
                    } else {
                        Err("must be a positive integer")
                    }
                };
                return Some(Kind::Task {
                    resource: Value::Object(cfn.clone()).to_string(),
                    timeout: self.amount("TimeoutSeconds", "TimeoutSecondsPath", positive),
                    heartbeat: self.amount("HeartbeatSeconds", "HeartbeatSecondsPath", positive),
                });
            }
        }
        let Some(resource) = self.string("Resource") else {
            if !self.obj.contains_key("Resource") {
                self.problem("Resource", "is required: what the task runs");
            }
            return None;
        };
        if let Err(why) = check_resource(&resource) {
            self.problem("Resource", why);
        }
        if let Some(c) = self.obj.get("Credentials") {
            if !c.is_object() {
                self.problem(
                    "Credentials",
                    format!("must be an object, not {}", kind_of(c)),
                );
            } else if self.lang == QueryLanguage::JsonPath {
                self.template("Credentials");
            }
        }
        let positive = |x: f64| {
            if x >= 1.0 && x.fract() == 0.0 {
                Ok(())
            } else {
                Err("must be a positive integer")
            }
        };
        let timeout = self.amount("TimeoutSeconds", "TimeoutSecondsPath", positive);
        let heartbeat = self.amount("HeartbeatSeconds", "HeartbeatSecondsPath", positive);
        Some(Kind::Task {
            resource,
            timeout,
            heartbeat,
        })
    }

    fn choice(&mut self) -> Option<Kind> {
        let default = self.string("Default");
        let rules = match self.obj.get("Choices") {
            Some(Value::Array(a)) if !a.is_empty() => a.clone(),
            _ => {
                self.problem("Choices", "is required: a non-empty array of rules");
                return None;
            }
        };
        let mut choices = Vec::new();
        for (i, rule) in rules.iter().enumerate() {
            let at = format!("Choices[{i}]");
            let Some(obj) = rule.as_object() else {
                self.problem(&at, "a choice rule is an object");
                continue;
            };
            let next = match obj.get("Next") {
                Some(Value::String(s)) => s.clone(),
                _ => {
                    self.problem(&format!("{at}.Next"), "is required in a top-level choice rule (a Choice state cannot end the execution)");
                    continue;
                }
            };
            if obj.contains_key("End") {
                self.problem(
                    &format!("{at}.End"),
                    "a choice rule cannot end the execution; name the next state",
                );
            }
            let assign = match obj.get("Assign") {
                Some(v) if self.lang == QueryLanguage::JsonPath => {
                    self.template_of(&format!("{at}.Assign"), v)
                }
                Some(v) => {
                    self.jsonata_tree(&format!("{at}.Assign"), v);
                    None
                }
                None => None,
            };
            if let Some(v) = obj.get("Output") {
                self.jsonata_tree(&format!("{at}.Output"), v);
            }
            if let Some(condition) = self.condition(&at, obj, true) {
                let jsonata = self.lang == QueryLanguage::JsonAta;
                choices.push(ChoiceRule {
                    condition,
                    next,
                    assign,
                    output: obj.get("Output").cloned().filter(|_| jsonata),
                    assign_jsonata: obj.get("Assign").cloned().filter(|_| jsonata),
                });
            }
        }
        Some(Kind::Choice { choices, default })
    }

    fn condition(&mut self, at: &str, obj: &Map<String, Value>, top: bool) -> Option<Condition> {
        let extra: &[&str] = if top {
            &["Next", "Comment", "Assign", "Output", "End"]
        } else {
            &["Comment"]
        };
        if self.lang == QueryLanguage::JsonAta {
            self.unknown(at, obj, &[extra, &["Condition"]].concat());
            let condition = match obj.get("Condition") {
                Some(Value::String(c)) => {
                    if let Err(why) = crate::jsonata::check(c) {
                        self.problem(&format!("{at}.Condition"), why);
                    }
                    Value::String(c.clone())
                }
                Some(Value::Bool(b)) => Value::Bool(*b),
                _ => {
                    self.problem(
                        &format!("{at}.Condition"),
                        "is required in a JSONata choice rule: a {% … %} expression or a boolean",
                    );
                    return None;
                }
            };
            return Some(Condition::JsonAta(condition));
        }
        if !top && obj.contains_key("Next") {
            self.problem(
                &format!("{at}.Next"),
                "only a top-level choice rule has Next",
            );
        }
        for (key, combine) in [("And", true), ("Or", false)] {
            if let Some(v) = obj.get(key) {
                self.unknown(at, obj, &[extra, &[key]].concat());
                let Some(items) = v.as_array().filter(|a| !a.is_empty()) else {
                    self.problem(&format!("{at}.{key}"), "must be a non-empty array of rules");
                    return None;
                };
                let mut parts = Vec::new();
                for (i, item) in items.iter().enumerate() {
                    let here = format!("{at}.{key}[{i}]");
                    match item.as_object() {
                        Some(o) => parts.extend(self.condition(&here, o, false)),
                        None => self.problem(&here, "a rule is an object"),
                    }
                }
                return Some(if combine {
                    Condition::And(parts)
                } else {
                    Condition::Or(parts)
                });
            }
        }
        if let Some(v) = obj.get("Not") {
            self.unknown(at, obj, &[extra, &["Not"]].concat());
            let Some(o) = v.as_object() else {
                self.problem(&format!("{at}.Not"), "must be a rule (an object)");
                return None;
            };
            return self
                .condition(&format!("{at}.Not"), o, false)
                .map(|c| Condition::Not(Box::new(c)));
        }
        let variable = match obj.get("Variable") {
            Some(Value::String(s)) => {
                if intrinsics::looks_like_call(s) {
                    self.problem(
                        &format!("{at}.Variable"),
                        format!("'{s}': Variable must be a path, not an intrinsic function call"),
                    );
                    return None;
                }
                let s = s.clone();
                self.path(&format!("{at}.Variable"), &s)?
            }
            _ => {
                self.problem(
                    at,
                    "a choice rule needs Variable and one comparison, or And, Or or Not",
                );
                return None;
            }
        };
        let mut found = None;
        for key in obj.keys() {
            if matches!(
                key.as_str(),
                "Variable" | "Next" | "Comment" | "Assign" | "Output" | "End"
            ) {
                continue;
            }
            let (base, is_path) = match key.strip_suffix("Path") {
                Some(b) => (b, true),
                None => (key.as_str(), false),
            };
            let Some(&(_, op)) = Operator::ALL.iter().find(|(n, _)| *n == base) else {
                self.problem(&format!("{at}.{key}"), "unknown field in a choice rule");
                continue;
            };
            if is_path && (op.is_type_test() || op == Operator::StringMatches) {
                self.problem(&format!("{at}.{key}"), "unknown field in a choice rule");
                continue;
            }
            if found.is_some() {
                self.problem(
                    &format!("{at}.{key}"),
                    "a choice rule has exactly one comparison",
                );
                continue;
            }
            let value = &obj[key];
            let here = format!("{at}.{key}");
            let operand = if is_path {
                match value.as_str() {
                    Some(s) => {
                        let s = s.to_owned();
                        Operand::Path(self.path(&here, &s)?)
                    }
                    None => {
                        self.problem(&here, "must be a path (a string)");
                        return None;
                    }
                }
            } else {
                let ok = match op {
                    Operator::StringEquals
                    | Operator::StringLessThan
                    | Operator::StringGreaterThan
                    | Operator::StringLessThanEquals
                    | Operator::StringGreaterThanEquals
                    | Operator::StringMatches => value.is_string(),
                    Operator::NumericEquals
                    | Operator::NumericLessThan
                    | Operator::NumericGreaterThan
                    | Operator::NumericLessThanEquals
                    | Operator::NumericGreaterThanEquals => value.is_number(),
                    Operator::TimestampEquals
                    | Operator::TimestampLessThan
                    | Operator::TimestampGreaterThan
                    | Operator::TimestampLessThanEquals
                    | Operator::TimestampGreaterThanEquals => value
                        .as_str()
                        .is_some_and(|s| crate::choice::timestamp(s).is_some()),
                    _ => value.is_boolean(),
                };
                if !ok {
                    let what = match op {
                        o if o.is_type_test() || o == Operator::BooleanEquals => "a boolean",
                        Operator::NumericEquals
                        | Operator::NumericLessThan
                        | Operator::NumericGreaterThan
                        | Operator::NumericLessThanEquals
                        | Operator::NumericGreaterThanEquals => "a number",
                        Operator::TimestampEquals
                        | Operator::TimestampLessThan
                        | Operator::TimestampGreaterThan
                        | Operator::TimestampLessThanEquals
                        | Operator::TimestampGreaterThanEquals => "an RFC 3339 timestamp",
                        _ => "a string",
                    };
                    self.problem(&here, format!("must be {what}, not {value}"));
                    return None;
                }
                Operand::Literal(value.clone())
            };
            found = Some(Condition::Compare(Box::new(Comparison {
                variable: variable.clone(),
                operator: op,
                operand,
            })));
        }
        if found.is_none() {
            self.problem(at, "a choice rule with Variable needs one comparison (StringEquals, NumericGreaterThan, IsPresent, …)");
        }
        found
    }

    fn wait(&mut self) -> Option<Kind> {
        let given: Vec<&str> = ["Seconds", "Timestamp", "SecondsPath", "TimestampPath"]
            .into_iter()
            .filter(|k| self.obj.contains_key(*k))
            .collect();
        if given.len() != 1 {
            let at = self.at.to_owned();
            self.v.problem(&at, format!("a Wait state takes exactly one of Seconds, Timestamp, SecondsPath, TimestampPath (found {})", if given.is_empty() { "none".to_owned() } else { given.join(", ") }));
            return None;
        }
        let key = given[0];
        let value = &self.obj[key];
        if self.lang == QueryLanguage::JsonAta
            && let Value::String(s) = value
            && crate::jsonata::is_expression(s)
        {
            self.jsonata_tree(key, value);
            return Some(Kind::Wait(WaitFor::JsonAta {
                seconds: key == "Seconds",
                expression: s.clone(),
            }));
        }
        Some(Kind::Wait(match key {
            "Seconds" => match value.as_f64() {
                Some(n) if n >= 0.0 && n.fract() == 0.0 => WaitFor::Seconds(n),
                _ => {
                    self.problem(key, format!("must be a non-negative integer, not {value}"));
                    return None;
                }
            },
            "Timestamp" => match value.as_str() {
                Some(s) if crate::choice::timestamp(s).is_some() => {
                    WaitFor::Timestamp(s.to_owned())
                }
                _ => {
                    self.problem(key, format!("must be an RFC 3339 timestamp, not {value}"));
                    return None;
                }
            },
            other => {
                let text = self.string(other)?;
                let p = self.path(other, &text)?;
                if other == "SecondsPath" {
                    WaitFor::SecondsPath(p)
                } else {
                    WaitFor::TimestampPath(p)
                }
            }
        }))
    }

    fn parallel(&mut self) -> Option<Kind> {
        let Some(items) = self
            .obj
            .get("Branches")
            .and_then(Value::as_array)
            .filter(|a| !a.is_empty())
        else {
            self.problem(
                "Branches",
                "is required: a non-empty array of state machines",
            );
            return None;
        };
        let mut branches = Vec::new();
        for (i, b) in items.iter().enumerate() {
            let at = self.here(&format!("Branches[{i}]"));
            if let Some(m) = self.v.machine(b, &at, self.lang, Scope::Branch) {
                branches.push(m);
            }
        }
        Some(Kind::Parallel { branches })
    }

    fn map(&mut self) -> Option<Kind> {
        let (field, processor) = match (self.obj.get("ItemProcessor"), self.obj.get("Iterator")) {
            (Some(p), None) => ("ItemProcessor", p),
            (None, Some(p)) => ("Iterator", p),
            (Some(_), Some(_)) => {
                self.problem("Iterator", "ItemProcessor and Iterator cannot both be set");
                return None;
            }
            (None, None) => {
                self.problem(
                    "ItemProcessor",
                    "is required: the state machine run for each item",
                );
                return None;
            }
        };
        let mut distributed = false;
        if let Some(config) = processor.get("ProcessorConfig") {
            match config.get("Mode").and_then(Value::as_str) {
                None | Some("INLINE") => {}
                Some("DISTRIBUTED") => distributed = true,
                Some(other) => self.problem(
                    &format!("{field}.ProcessorConfig.Mode"),
                    format!("must be INLINE or DISTRIBUTED, not {other}"),
                ),
            }
            if let Some(t) = config.get("ExecutionType")
                && !matches!(t.as_str(), Some("STANDARD" | "EXPRESS"))
            {
                self.problem(
                    &format!("{field}.ProcessorConfig.ExecutionType"),
                    "must be STANDARD or EXPRESS",
                );
            }
        }
        let at = self.here(field);
        let processor = self
            .v
            .machine(processor, &at, self.lang, Scope::Processor)?;
        if self.lang == QueryLanguage::JsonAta && self.obj.contains_key("ItemsPath") {
            self.problem(
                "ItemsPath",
                "Items and ItemsPath are mutually exclusive; a JSONata Map takes Items",
            );
        }
        let items_path = self.select("ItemsPath");
        if let Some(items) = self.obj.get("Items") {
            self.jsonata_tree("Items", items);
        }
        if self.obj.contains_key("ItemSelector") && self.obj.contains_key("Parameters") {
            self.problem(
                "Parameters",
                "ItemSelector and Parameters cannot both be set (Parameters is the older name)",
            );
        }
        let item_selector = match self.obj.get("ItemSelector") {
            Some(v) if self.lang == QueryLanguage::JsonAta => {
                self.jsonata_tree("ItemSelector", v);
                None
            }
            Some(_) => self.template("ItemSelector"),
            None => self.template("Parameters"),
        };
        let non_negative = |x: f64| {
            if x >= 0.0 && x.fract() == 0.0 {
                Ok(())
            } else {
                Err("must be a non-negative integer")
            }
        };
        let percentage = |x: f64| {
            if (0.0..=100.0).contains(&x) {
                Ok(())
            } else {
                Err("must be between 0 and 100")
            }
        };
        let max_concurrency = self.amount("MaxConcurrency", "MaxConcurrencyPath", non_negative);
        let tolerated_failure_count = self.amount(
            "ToleratedFailureCount",
            "ToleratedFailureCountPath",
            non_negative,
        );
        let tolerated_failure_percentage = self.amount(
            "ToleratedFailurePercentage",
            "ToleratedFailurePercentagePath",
            percentage,
        );
        let batcher = match self.obj.get("ItemBatcher") {
            None => None,
            Some(Value::Object(b)) => {
                let b = b.clone();
                let mut sub = Fields {
                    v: &mut *self.v,
                    obj: &b,
                    at: &join(self.at, "ItemBatcher"),
                    lang: self.lang,
                };
                sub_unknown(
                    &mut sub,
                    &[
                        "MaxItemsPerBatch",
                        "MaxItemsPerBatchPath",
                        "MaxInputBytesPerBatch",
                        "MaxInputBytesPerBatchPath",
                        "BatchInput",
                    ],
                );
                let positive = |x: f64| {
                    if x >= 1.0 && x.fract() == 0.0 {
                        Ok(())
                    } else {
                        Err("must be a positive integer")
                    }
                };
                let max_items = sub.amount("MaxItemsPerBatch", "MaxItemsPerBatchPath", positive);
                let max_bytes = sub.amount(
                    "MaxInputBytesPerBatch",
                    "MaxInputBytesPerBatchPath",
                    positive,
                );
                let batch_input = sub.template("BatchInput");
                Some(Batcher {
                    max_items,
                    max_bytes,
                    batch_input,
                })
            }
            Some(other) => {
                self.problem(
                    "ItemBatcher",
                    format!("must be an object, not {}", kind_of(other)),
                );
                None
            }
        };
        let item_reader = self.obj.get("ItemReader").cloned();
        if let Some(Value::Object(r)) = &item_reader {
            if r.get("Resource").and_then(Value::as_str).is_none() {
                self.problem(
                    "ItemReader.Resource",
                    "is required: where the items are read from",
                );
            }
            if let Some(Value::Object(c)) = r.get("ReaderConfig") {
                let c = c.clone();
                let mut sub = Fields {
                    v: &mut *self.v,
                    obj: &c,
                    at: &join(self.at, "ItemReader.ReaderConfig"),
                    lang: self.lang,
                };
                sub.exclusive("MaxItems", "MaxItemsPath");
            }
        }
        let result_writer = self.obj.get("ResultWriter").cloned();
        Some(Kind::Map(Box::new(MapSpec {
            items_path,
            item_selector,
            processor: Box::new(processor),
            distributed,
            max_concurrency,
            tolerated_failure_count,
            tolerated_failure_percentage,
            batcher,
            item_reader,
            result_writer,
        })))
    }
}

fn sub_unknown(f: &mut Fields, fields: &[&str]) {
    let at = f.at.to_owned();
    let obj = f.obj;
    for key in obj.keys() {
        if !fields.contains(&key.as_str()) {
            f.v.problem(
                &join(&at, key),
                format!("unknown field (allowed here: {})", fields.join(", ")),
            );
        }
    }
}

/// Checks a Task's Resource: a URI (`arn:…`, `sluice:…`, `https://…`), with
/// CloudFormation-style `${…}` placeholders closed and Lambda aliases well formed.
fn check_resource(resource: &str) -> Result<(), String> {
    let mut rest = resource;
    while let Some(start) = rest.find("${") {
        match rest[start..].find('}') {
            Some(end) => rest = &rest[start + end + 1..],
            None => return Err(format!("'{resource}': an unclosed '${{' placeholder")),
        }
    }
    if resource.starts_with("${") {
        return Ok(());
    }
    if !resource.contains(':') {
        return Err(format!(
            "'{resource}' is not a resource URI (arn:…, sluice:…, https://…)"
        ));
    }
    if let Some(at) = resource.find(":function:")
        && resource.starts_with("arn:")
        && resource.contains(":lambda:")
    {
        let rest = &resource[at + ":function:".len()..];
        let mut parts = rest.split(':');
        let name = parts.next().unwrap_or("");
        let alias = parts.next();
        let good = |s: &str| {
            !s.is_empty()
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
        };
        if !good(name) && !name.contains("${") {
            return Err(format!(
                "'{resource}': '{name}' is not a Lambda function name"
            ));
        }
        if let Some(alias) = alias
            && !(alias == "$LATEST" || good(alias))
        {
            return Err(format!(
                "'{resource}': '{alias}' is not a Lambda version or alias"
            ));
        }
        if parts.next().is_some() {
            return Err(format!(
                "'{resource}': too many ':' after the function name"
            ));
        }
    }
    Ok(())
}
