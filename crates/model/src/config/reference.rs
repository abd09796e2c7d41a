//! Generates the `sluice.toml` reference (docs/config.md) from the raw structs' doc comments.

use serde_json::Value;

/// Where each raw struct appears in `sluice.toml`.
const SECTIONS: &[(&str, &str)] = &[
    ("RawProject", "top level"),
    ("RawServer", "[server]"),
    ("RawWatch", "[watch]"),
    ("RawS3", "[s3]"),
    ("RawS3Key", "[[s3.keys]]"),
    ("RawBucket", "[buckets.NAME]"),
    ("RawTable", "[tables.NAME]"),
    ("RawFormat", "[tables.NAME.format]"),
    ("RawColumn", "[[tables.NAME.columns]]"),
    ("RawDerived", "[[tables.NAME.derive]]"),
    ("RawCheck", "[[tables.NAME.checks]]"),
    ("RawTrigger", "[triggers.NAME]"),
    ("RawPipeline", "[pipelines.NAME]"),
    ("RawStep", "pipelines.NAME.steps[]"),
    ("RawRetry", "[pipelines.NAME.retry]"),
    ("RawAcceptance", "[pipelines.NAME.acceptance]"),
    ("RawWorkflow", "[workflows.NAME]"),
    ("RawSchedule", "[schedules.NAME]"),
    ("RawRule", "[rules.NAME]"),
];

/// The reference of every field of `sluice.toml`, as Markdown.
pub fn reference_markdown() -> String {
    let schema = schemars::schema_for!(super::raw::RawProject);
    let schema = serde_json::to_value(&schema).expect("a JSON schema serializes");
    let defs = schema.get("$defs").cloned().unwrap_or(Value::Null);
    let mut out = String::from(
        "# sluice.toml reference\n\n\
         Generated from the doc comments in `crates/model/src/config/raw.rs` by\n\
         `cargo test -p sluice-model` (set `SLUICE_BLESS=1` to rewrite). Do not edit by hand.\n\n\
         Every problem in a file is reported at once as `sluice.toml:LINE:COL: what and why`;\n\
         unknown fields and references to undeclared buckets, tables or pipelines are errors.\n",
    );
    for (name, heading) in SECTIONS {
        let def = if *name == "RawProject" {
            &schema
        } else {
            match defs.get(*name) {
                Some(d) => d,
                None => continue,
            }
        };
        out.push_str(&format!("\n## `{heading}`\n\n"));
        if let Some(d) = def.get("description").and_then(Value::as_str) {
            out.push_str(d);
            out.push_str("\n\n");
        }
        out.push_str("| field | type | required | meaning |\n|---|---|---|---|\n");
        let required: Vec<&str> = def
            .get("required")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        if let Some(props) = def.get("properties").and_then(Value::as_object) {
            for (field, prop) in props {
                let description = prop
                    .get("description")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .replace('\n', " ")
                    .replace('|', "\\|");
                out.push_str(&format!(
                    "| `{field}` | {} | {} | {description} |\n",
                    type_name(prop),
                    if required.contains(&field.as_str()) {
                        "yes"
                    } else {
                        "no"
                    },
                ));
            }
        }
    }
    out
}

fn type_name(prop: &Value) -> String {
    if let Some(r) = prop.get("$ref").and_then(Value::as_str) {
        return section_of(r);
    }
    if let Some(any) = prop.get("anyOf").and_then(Value::as_array) {
        let names: Vec<String> = any.iter().map(type_name).filter(|n| n != "null").collect();
        return names.join(" or ");
    }
    match prop.get("type") {
        Some(Value::String(t)) => match t.as_str() {
            "array" => format!(
                "array of {}",
                prop.get("items").map(type_name).unwrap_or_default()
            ),
            "object" => match prop.get("additionalProperties") {
                Some(v @ Value::Object(_)) => format!("table of {}", type_name(v)),
                _ => "table".into(),
            },
            "integer" => "integer".into(),
            "number" => "number".into(),
            other => other.to_string(),
        },
        Some(Value::Array(ts)) => ts
            .iter()
            .filter_map(Value::as_str)
            .filter(|t| *t != "null")
            .collect::<Vec<_>>()
            .join(" or "),
        _ => "any".into(),
    }
}

fn section_of(reference: &str) -> String {
    let name = reference.rsplit('/').next().unwrap_or(reference);
    SECTIONS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, h)| format!("`{h}`"))
        .unwrap_or_else(|| name.to_string())
}
