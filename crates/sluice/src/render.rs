//! Turning query results and records into what a person (or a script) reads: aligned tables, CSV, JSON.

use arrow::array::{Array, RecordBatch};
use arrow::datatypes::SchemaRef;
use arrow::util::display::{ArrayFormatter, FormatOptions};
use comfy_table::{ContentArrangement, Table, presets::UTF8_FULL_CONDENSED};

/// Output formats of `sluice query`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// An aligned table.
    Table,
    /// CSV with a header.
    Csv,
    /// One JSON object per row (JSON lines).
    Json,
}

/// A new terminal table with the house style.
pub fn table(header: Vec<String>) -> Table {
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED)
        .set_content_arrangement(ContentArrangement::Dynamic)
        .set_header(header);
    t
}

fn cells(batch: &RecordBatch) -> Vec<Vec<Option<String>>> {
    let options = FormatOptions::default().with_display_error(true);
    let formatters: Vec<_> = batch
        .columns()
        .iter()
        .map(|c| ArrayFormatter::try_new(c.as_ref(), &options).ok())
        .collect();
    (0..batch.num_rows())
        .map(|row| {
            batch
                .columns()
                .iter()
                .zip(&formatters)
                .map(|(col, f)| {
                    if col.is_null(row) {
                        None
                    } else {
                        f.as_ref().map(|f| f.value(row).to_string())
                    }
                })
                .collect()
        })
        .collect()
}

/// Renders query results.
pub fn render(schema: &SchemaRef, batches: &[RecordBatch], format: Format) -> String {
    let names: Vec<String> = schema.fields().iter().map(|f| f.name().clone()).collect();
    match format {
        Format::Table => {
            let mut t = table(names);
            let mut n = 0;
            for batch in batches {
                for row in cells(batch) {
                    n += 1;
                    t.add_row(row.into_iter().map(|c| c.unwrap_or_else(|| "NULL".into())));
                }
            }
            format!("{t}\n({n} row{})", if n == 1 { "" } else { "s" })
        }
        Format::Csv => {
            let mut w = csv::Writer::from_writer(Vec::new());
            let _ = w.write_record(&names);
            for batch in batches {
                for row in cells(batch) {
                    let _ = w.write_record(row.iter().map(|c| c.as_deref().unwrap_or("")));
                }
            }
            String::from_utf8(w.into_inner().unwrap_or_default()).unwrap_or_default()
        }
        Format::Json => {
            let mut out = String::new();
            for batch in batches {
                for row in json_rows(batch) {
                    out.push_str(&serde_json::Value::Object(row).to_string());
                    out.push('\n');
                }
            }
            out
        }
    }
}

/// Rows as JSON objects with typed values (numbers stay numbers).
pub fn json_rows(batch: &RecordBatch) -> Vec<serde_json::Map<String, serde_json::Value>> {
    let mut writer = arrow::json::ArrayWriter::new(Vec::new());
    let ok = writer.write(batch).is_ok() && writer.finish().is_ok();
    let parsed: Vec<serde_json::Map<String, serde_json::Value>> = if ok {
        serde_json::from_slice(&writer.into_inner()).unwrap_or_default()
    } else {
        Vec::new()
    };
    // arrow's JSON writer leaves out nulls; put them back so every row has every column.
    parsed
        .into_iter()
        .map(|mut row| {
            for f in batch.schema().fields() {
                row.entry(f.name().clone())
                    .or_insert(serde_json::Value::Null);
            }
            row
        })
        .collect()
}

/// Bytes as a person reads them.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut x = n as f64;
    let mut unit = 0;
    while x >= 1024.0 && unit < UNITS.len() - 1 {
        x /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{x:.1} {}", UNITS[unit])
    }
}
