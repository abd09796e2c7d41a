//! JSONata fields (`"{% … %}"` strings), parsed and evaluated by jsonata-rs.
//!
//! Step Functions binds `$states` (`input`, `result`, `errorOutput`,
//! `context`) and the workflow's variables; everything else is JSONata's own.

use std::collections::HashMap;

use serde_json::{Map, Value};

/// True when a string is a JSONata expression rather than a literal.
pub fn is_expression(text: &str) -> bool {
    text.starts_with("{%") && text.ends_with("%}") && text.len() >= 4
}

/// Checks a string of a JSONata field: a literal, or `{% expression %}` with
/// one space inside each brace and an expression that parses.
pub fn check(text: &str) -> Result<(), String> {
    let opens = text.starts_with("{%");
    let closes = text.ends_with("%}");
    if !opens && !closes {
        return Ok(());
    }
    if !(opens && closes && text.len() >= 4) {
        return Err(format!(
            "'{text}': a JSONata expression is written \"{{% expression %}}\" (missing the {})",
            if opens { "closing %}" } else { "opening {%" }
        ));
    }
    let inner = &text[2..text.len() - 2];
    let expression = inner
        .strip_prefix(' ')
        .and_then(|i| i.strip_suffix(' '))
        .filter(|i| !i.is_empty() && !i.starts_with(char::is_whitespace))
        .ok_or_else(|| format!("'{text}': a JSONata expression is written \"{{% expression %}}\", one space inside each brace"))?;
    if let Some(number) = number_with_bare_dot(expression) {
        return Err(format!(
            "'{text}': JSONata syntax error: '{number}' is not a number (write {}0 or {})",
            number,
            number.trim_end_matches('.')
        ));
    }
    let arena = bumpalo::Bump::new();
    jsonata_rs::JsonAta::new(expression, &arena)
        .map(|_| ())
        .map_err(|e| format!("'{text}': JSONata syntax error: {e}"))
}

/// A number literal ending in a dot (`420.`), outside strings and names:
/// JSONata's grammar wants digits after the dot, and jsonata-rs lets it pass.
/// `1..5` (a range) and `a1.b` (a name, then a path) are not numbers.
fn number_with_bare_dot(expression: &str) -> Option<String> {
    let chars: Vec<char> = expression.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if matches!(c, '"' | '\'' | '`') {
            // Skip a string or a quoted name, with its escapes.
            i += 1;
            while i < chars.len() && chars[i] != c {
                i += if chars[i] == '\\' { 2 } else { 1 };
            }
            i += 1;
            continue;
        }
        if c == '/' {
            // A regex where a value is expected (after an operand, '/' divides).
            let before = chars[..i].iter().rev().find(|c| !c.is_whitespace());
            let divides = before.is_some_and(|b| {
                b.is_alphanumeric() || matches!(b, '_' | '$' | ')' | ']' | '}' | '"' | '\'' | '`')
            });
            i += 1;
            if !divides {
                while i < chars.len() && chars[i] != '/' {
                    i += if chars[i] == '\\' { 2 } else { 1 };
                }
                i += 1;
            }
            continue;
        }
        let starts_number = c.is_ascii_digit()
            && (i == 0
                || !(chars[i - 1].is_alphanumeric() || matches!(chars[i - 1], '_' | '$' | '.')));
        if !starts_number {
            i += 1;
            continue;
        }
        let start = i;
        while i < chars.len() && chars[i].is_ascii_digit() {
            i += 1;
        }
        if chars.get(i) == Some(&'.')
            && chars
                .get(i + 1)
                .is_none_or(|n| !n.is_ascii_digit() && *n != '.')
        {
            return Some(chars[start..=i].iter().collect());
        }
        // A fraction: skip its digits so the dot is not seen again.
        if chars.get(i) == Some(&'.') && chars.get(i + 1).is_some_and(char::is_ascii_digit) {
            i += 1;
            while i < chars.len() && chars[i].is_ascii_digit() {
                i += 1;
            }
        }
    }
    None
}

/// Evaluates one expression (without its braces); `None` when JSONata yields nothing.
pub fn eval(
    expression: &str,
    states: &Value,
    variables: &Map<String, Value>,
) -> Result<Option<Value>, String> {
    let arena = bumpalo::Bump::new();
    let program = jsonata_rs::JsonAta::new(expression, &arena).map_err(|e| e.to_string())?;
    register_aws_functions(&program);
    let mut bindings: HashMap<&str, &Value> =
        variables.iter().map(|(k, v)| (k.as_str(), v)).collect();
    bindings.insert("states", states);
    let result = program
        .evaluate(None, Some(&bindings))
        .map_err(|e| e.to_string())?;
    if result.is_undefined() {
        return Ok(None);
    }
    serde_json::from_str(&result.serialize(false))
        .map(Some)
        .map_err(|e| format!("the result is not JSON: {e}"))
}

/// Step Functions' own JSONata functions, backed by the intrinsic functions.
fn register_aws_functions(program: &jsonata_rs::JsonAta) {
    macro_rules! aws {
        ($($name:literal => $intrinsic:literal, $arity:literal;)*) => {$(
            program.register_function($name, $arity, |ctx, args| call(ctx, args, $intrinsic));
        )*};
    }
    aws! {
        "partition" => "States.ArrayPartition", 2;
        "hash" => "States.Hash", 2;
        "uuid" => "States.UUID", 0;
    }
    // $range yields a JSONata sequence: one number comes out as itself, not as [n].
    program.register_function("range", 3, |ctx, args| {
        let out = call(ctx.clone(), args, "States.ArrayRange")?;
        if out.len() == 1 {
            return Ok(out.get_member(0));
        }
        Ok(out)
    });
    program.register_function("parse", 1, |ctx, args| {
        let text = args.first().map(|v| v.serialize(false)).unwrap_or_default();
        let text: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        let Some(text) = text.as_str() else {
            return Err(jsonata_rs::Error::D3137Error(
                "$parse takes a string".into(),
            ));
        };
        let value: Value = serde_json::from_str(text)
            .map_err(|e| jsonata_rs::Error::D3137Error(format!("$parse: not JSON text: {e}")))?;
        Ok(to_jsonata(ctx.arena, &value))
    });
    program.register_function("random", 1, |ctx, args| {
        use rand::{Rng as _, SeedableRng as _};
        let seed = args.first().filter(|v| v.is_number()).map(|v| v.as_f64());
        let x: f64 = match seed {
            Some(seed) => rand::rngs::StdRng::seed_from_u64(seed as u64).random(),
            None => rand::random(),
        };
        Ok(jsonata_rs::Value::number(ctx.arena, x))
    });
}

fn call<'a>(
    ctx: jsonata_rs::FunctionContext<'a, '_>,
    args: &[&'a jsonata_rs::Value<'a>],
    intrinsic: &str,
) -> jsonata_rs::Result<&'a jsonata_rs::Value<'a>> {
    let values: Vec<Value> = args
        .iter()
        .map(|a| {
            if a.is_undefined() {
                Value::Null
            } else {
                serde_json::from_str(&a.serialize(false)).unwrap_or(Value::Null)
            }
        })
        .collect();
    let out =
        crate::intrinsics::apply(intrinsic, values, None).map_err(jsonata_rs::Error::D3137Error)?;
    Ok(to_jsonata(ctx.arena, &out))
}

fn to_jsonata<'a>(arena: &'a bumpalo::Bump, value: &Value) -> &'a jsonata_rs::Value<'a> {
    use jsonata_rs::Value as J;
    match value {
        Value::Null => J::null(arena),
        Value::Bool(b) => J::bool(*b),
        Value::Number(n) => J::number(arena, n.as_f64().unwrap_or(0.0)),
        Value::String(s) => J::string(arena, s),
        Value::Array(items) => {
            let array = J::array_with_capacity(arena, items.len(), jsonata_rs::ArrayFlags::empty());
            for item in items {
                array.push(to_jsonata(arena, item));
            }
            array
        }
        Value::Object(map) => {
            let object = J::object_with_capacity(arena, map.len());
            for (k, v) in map {
                object.insert(k, to_jsonata(arena, v));
            }
            object
        }
    }
}

/// Fills in a JSONata template: every `{% … %}` string is evaluated, the rest is literal.
pub fn fill(
    template: &Value,
    states: &Value,
    variables: &Map<String, Value>,
) -> Result<Value, String> {
    Ok(match template {
        Value::String(s) if is_expression(s) => {
            let expression = s[2..s.len() - 2].trim();
            eval(expression, states, variables)?.unwrap_or(Value::Null)
        }
        Value::Array(items) => Value::Array(
            items
                .iter()
                .map(|i| fill(i, states, variables))
                .collect::<Result<_, _>>()?,
        ),
        Value::Object(map) => {
            let mut out = Map::with_capacity(map.len());
            for (k, v) in map {
                out.insert(k.clone(), fill(v, states, variables)?);
            }
            Value::Object(out)
        }
        other => other.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn numbers_need_digits_after_their_dot() {
        assert!(
            check("{% 420. %}")
                .unwrap_err()
                .contains("'420.' is not a number")
        );
        assert!(check("{% [1, 2.] %}").is_err());
        assert!(check("{% $x / 2. %}").is_err());
        for fine in [
            "{% 420.5 %}",
            "{% [1..5] %}",
            "{% $states.input.a1.b %}",
            "{% 'price: 3.' & $x %}",
            "{% $x.`1.` %}",
            "{% 1.5e3 %}",
            "{% $arr[0].name %}",
            "{% $match($x, /^[a-z0-9.]+\\.[a-z]{2,}$/) %}",
            "{% $x / 2 %}",
        ] {
            assert!(check(fine).is_ok(), "{fine}: {:?}", check(fine));
        }
    }

    #[test]
    fn surround_and_syntax_are_checked() {
        assert!(check("{% 10 %}").is_ok());
        assert!(check("plain").is_ok());
        assert!(check("{%10%}").is_err());
        assert!(check("10 %}").is_err());
        assert!(check("{% \n10  %}").is_err());
        assert!(check("{% 1 + 2  %}").is_ok());
        assert!(check("{% 10 + * 2 %}").is_err());
    }

    #[test]
    fn states_and_variables_are_bound() {
        let states = json!({"input": {"a": 2}});
        let vars = Map::from_iter([("x".to_owned(), json!(40))]);
        let out = fill(
            &json!({"sum": "{% $states.input.a + $x %}", "k": 1}),
            &states,
            &vars,
        )
        .unwrap();
        assert_eq!(out, json!({"sum": 42, "k": 1}));
    }
}
