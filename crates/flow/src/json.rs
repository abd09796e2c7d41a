//! JSON text to a [`Value`], refusing duplicate keys.
//!
//! serde_json keeps the last of two equal keys without a word; a definition
//! with `"Next"` twice in one state is a mistake its author wants to hear
//! about, with the place where it happened.

use std::fmt;

use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

/// Parses JSON text; a key repeated within one object is an error naming the
/// object's path (`$.States.Start`) and the key.
pub fn parse_strict(text: &str) -> Result<Value, serde_json::Error> {
    let mut de = serde_json::Deserializer::from_str(text);
    let value = Strict { path: "$".into() }.deserialize(&mut de)?;
    de.end()?;
    Ok(value)
}

struct Strict {
    path: String,
}

impl<'de> DeserializeSeed<'de> for Strict {
    type Value = Value;

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Strict {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(v.into())
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(v.into())
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element_seed(Strict {
            path: format!("{}[{}]", self.path, items.len()),
        })? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut object = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            let value = map.next_value_seed(Strict {
                path: format!("{}.{key}", self.path),
            })?;
            if object.contains_key(&key) {
                return Err(de::Error::custom(format_args!(
                    "duplicate key \"{key}\" in {}",
                    self.path
                )));
            }
            object.insert(key, value);
        }
        Ok(Value::Object(object))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duplicate_keys_are_named_with_their_object() {
        let err =
            parse_strict(r#"{"States": {"A": {"Type": "Pass", "Type": "Fail"}}}"#).unwrap_err();
        assert!(
            err.to_string()
                .contains("duplicate key \"Type\" in $.States.A"),
            "{err}"
        );
        let ok = parse_strict(r#"{"a": [{"b": 1}, {"b": 2.5}], "c": null}"#).unwrap();
        assert_eq!(
            ok,
            serde_json::json!({"a": [{"b": 1}, {"b": 2.5}], "c": null})
        );
    }
}
