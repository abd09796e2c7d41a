//! One test per CSV edge case the readers must handle.
use super::*;
use sluice_model::contract::{Column, ColumnType};

fn column(name: &str, source: &[&str], optional: bool) -> Column {
    Column {
        source: source.iter().map(|s| s.to_string()).collect(),
        optional,
        ..Column::new(name, ColumnType::String)
    }
}

fn contract() -> Contract {
    Contract {
        columns: vec![
            column("vendor", &["VendorID", "vendor_id"], false),
            column("fare", &["fare_amount"], false),
            column("note", &[], true),
        ],
        derived: vec![],
        checks: vec![],
        unique: vec![],
        key_fields: None,
    }
}

type Rows = Vec<(u64, Vec<Option<String>>, Vec<String>)>;

fn read_csv(text: &str, format: &Format) -> Result<Rows, ReadError> {
    read_csv_sized(text, format, None)
}

fn read_csv_sized(text: &str, format: &Format, size: Option<u64>) -> Result<Rows, ReadError> {
    let mut source = CsvSource::sized(
        Box::new(std::io::Cursor::new(text.as_bytes().to_vec())),
        &contract(),
        format,
        size,
    )?;
    let mut rows = Vec::new();
    while let Some(batch) = source.next_batch(2)? {
        for row in 0..batch.num_rows() {
            let values = batch
                .columns
                .iter()
                .map(|c| c.as_ref().and_then(|c| text_at(c, row)))
                .collect();
            let problems = batch
                .problems
                .iter()
                .filter(|p| p.row == row)
                .map(|p| p.message.clone())
                .collect();
            rows.push((batch.lines[row], values, problems));
        }
    }
    Ok(rows)
}

/// A text column's value at `row` (None: null).
fn text_at(column: &ArrayRef, row: usize) -> Option<String> {
    let text = column.as_any().downcast_ref::<StringArray>().unwrap();
    (!text.is_null(row)).then(|| text.value(row).to_string())
}

fn values(rows: &Rows) -> Vec<Vec<Option<&str>>> {
    rows.iter()
        .map(|r| r.1.iter().map(|v| v.as_deref()).collect())
        .collect()
}

#[test]
fn other_delimiters() {
    let f = Format {
        delimiter: b';',
        ..Format::default()
    };
    let rows = read_csv("VendorID;fare_amount\n1;2.5\n", &f).unwrap();
    assert_eq!(values(&rows), vec![vec![Some("1"), Some("2.5"), None]]);
}

#[test]
fn quoted_fields_with_delimiters_quotes_and_newlines() {
    let rows = read_csv(
        "VendorID,fare_amount,note\n1,\"2,5\",\"say \"\"hi\"\"\nthere\"\n2,3,x\n",
        &Format::default(),
    )
    .unwrap();
    assert_eq!(rows[0].1[1].as_deref(), Some("2,5"));
    assert_eq!(rows[0].1[2].as_deref(), Some("say \"hi\"\nthere"));
    assert_eq!(rows[1].0, 4, "line numbers count the embedded newline");
}

#[test]
fn crlf_line_endings() {
    let rows = read_csv("VendorID,fare_amount\r\n1,2\r\n3,4\r\n", &Format::default()).unwrap();
    assert_eq!(rows[0].0, 2);
    assert_eq!(
        values(&rows),
        vec![
            vec![Some("1"), Some("2"), None],
            vec![Some("3"), Some("4"), None]
        ]
    );
    assert_eq!(rows[1].0, 3);
}

#[test]
fn utf8_byte_order_mark() {
    let rows = read_csv("\u{feff}VendorID,fare_amount\n1,2\n", &Format::default()).unwrap();
    assert_eq!(values(&rows), vec![vec![Some("1"), Some("2"), None]]);
    assert_eq!(rows[0].0, 2);
}

#[test]
fn header_names_with_stray_spaces_and_other_case() {
    let rows = read_csv(" vendorid , Fare_Amount \n1,2\n", &Format::default()).unwrap();
    assert_eq!(values(&rows), vec![vec![Some("1"), Some("2"), None]]);
}

#[test]
fn blank_lines_are_skipped_and_line_numbers_stay_true() {
    // As in the real TLC files: a blank line after the header, and a line holding only a CR.
    let rows = read_csv(
        "VendorID,fare_amount\n\n\r\n1,2\r\n\n3,4\n",
        &Format::default(),
    )
    .unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0].0, 4);
    assert_eq!(rows[1].0, 6);
}

#[test]
fn extra_trailing_empty_fields_are_accepted() {
    let rows = read_csv("VendorID,fare_amount\n1,2,,\n", &Format::default()).unwrap();
    assert!(rows[0].2.is_empty(), "{:?}", rows[0].2);
    assert_eq!(values(&rows), vec![vec![Some("1"), Some("2"), None]]);
}

#[test]
fn extra_non_empty_fields_and_short_rows_are_row_problems() {
    let rows = read_csv("VendorID,fare_amount\n1,2,3\n1\n", &Format::default()).unwrap();
    assert_eq!(
        rows[0].2,
        vec!["row has 3 fields but the header has 2 (the extra fields are not empty)"]
    );
    assert_eq!(rows[1].2, vec!["row has 1 fields but the header has 2"]);
}

#[test]
fn a_missing_required_column_refuses_the_file_naming_it() {
    let err = read_csv("VendorID,total\n1,2\n", &Format::default()).unwrap_err();
    let text = err.to_string();
    assert!(text.contains("no column for \"fare\""), "{text}");
    assert!(text.contains("looked for: fare, fare_amount"), "{text}");
}

#[test]
fn invalid_utf8_is_a_row_problem_not_a_crash() {
    let mut bytes = b"VendorID,fare_amount\n1,".to_vec();
    bytes.extend_from_slice(&[0xff, 0xfe]);
    bytes.extend_from_slice(b"\n2,3\n");
    let mut source = CsvSource::new(
        Box::new(std::io::Cursor::new(bytes)),
        &contract(),
        &Format::default(),
    )
    .unwrap();
    let batch = source.next_batch(10).unwrap().unwrap();
    assert_eq!(batch.num_rows(), 2);
    assert_eq!(batch.problems.len(), 1);
    assert_eq!(batch.problems[0].code, "bad_utf8");
}

#[test]
fn an_empty_file_is_refused() {
    assert!(read_csv("", &Format::default()).is_err());
}

#[test]
fn json_lines_map_names_and_stringify_values() {
    let text = "{\"VendorID\": 1, \"fare_amount\": 2.5}\n\n{\"vendor\": \"x\", \"fare\": null}\nnot json\n";
    let mut source = JsonLinesSource::new(
        Box::new(std::io::Cursor::new(text.as_bytes().to_vec())),
        &contract(),
    );
    let batch = source.next_batch(10).unwrap().unwrap();
    assert_eq!(batch.lines, vec![1, 3, 4]);
    let vendor = batch.columns[0]
        .as_ref()
        .unwrap()
        .as_any()
        .downcast_ref::<StringArray>()
        .unwrap();
    assert_eq!(vendor.value(0), "1");
    assert_eq!(vendor.value(1), "x");
    assert_eq!(batch.problems.len(), 1);
    assert_eq!(batch.problems[0].row, 2);
    assert_eq!(batch.raw_row(2), "not json");
}

#[test]
fn formats_come_from_the_key() {
    assert_eq!(SourceFormat::from_key("a/b.CSV"), Some(SourceFormat::Csv));
    assert_eq!(
        SourceFormat::from_key("a/b.ndjson"),
        Some(SourceFormat::JsonLines)
    );
    assert_eq!(
        SourceFormat::from_key("b.parquet"),
        Some(SourceFormat::Parquet)
    );
    assert_eq!(SourceFormat::from_key("b.xlsx"), None);
}

#[test]
fn raw_rows_render_each_field_as_json_text() {
    use arrow::array::{Float64Array, Int64Array};
    let batch = SourceBatch {
        columns: vec![],
        lines: vec![1, 2],
        problems: vec![],
        raw_names: Arc::new(vec!["id".into(), "note \"q\"".into(), "fare".into()]),
        raw_columns: vec![
            Arc::new(Int64Array::from(vec![Some(7), None])),
            Arc::new(StringArray::from(vec![Some("a,\"b\"\n\\"), Some("ü")])),
            Arc::new(Float64Array::from(vec![2.5, -0.0])),
        ],
    };
    let raw = batch.raw_rows();
    assert_eq!(
        raw.row(0),
        r#"{"id":"7","note \"q\"":"a,\"b\"\n\\","fare":"2.5"}"#
    );
    assert_eq!(raw.row(1), r#"{"id":null,"note \"q\"":"ü","fare":"-0.0"}"#);
    // Each row is a JSON object a reader can parse back.
    let parsed: serde_json::Value = serde_json::from_str(&raw.row(0)).unwrap();
    assert_eq!(parsed["note \"q\""], "a,\"b\"\n\\");
}

#[test]
fn raw_values_are_json_strings_exactly_as_serde_json_writes_them() {
    for text in [
        "",
        "plain 1.5",
        "quote \" inside",
        "back\\slash",
        "tab\tnew\nline\r",
        "\u{1}\u{1f}\u{7f}",
        "héllo ✓ 𝄞",
    ] {
        let mut ours = Vec::new();
        assert!(json_string(&mut ours, text));
        assert_eq!(
            String::from_utf8(ours).unwrap(),
            serde_json::to_string(text).unwrap(),
            "{text:?}"
        );
    }
}

#[test]
fn a_sized_reader_reads_the_same_rows_whatever_size_it_was_told() {
    // ~40 KB: more than the smallest buffer (8 KiB), with quoted fields spanning lines
    // and blank lines, so records cross the buffer's refills.
    let mut text = String::from("VendorID,fare_amount,note\n");
    for i in 0..1_500 {
        if i % 97 == 0 {
            text.push_str(&format!("{i},\"1.{i}\",\"two\nlines {i}\"\n\n"));
        } else {
            text.push_str(&format!("{i},{i}.50,note number {i}\n"));
        }
    }
    let f = Format::default();
    let whole = read_csv(&text, &f).unwrap();
    assert_eq!(whole.len(), 1_500);
    for size in [Some(text.len() as u64), Some(10), Some(0), Some(u64::MAX)] {
        let sized = read_csv_sized(&text, &f, size).unwrap();
        assert_eq!(sized, whole, "told {size:?} bytes");
    }
    // The last record's line: 1,500 records, 16 of them two lines and a blank after.
    assert_eq!(whole.last().unwrap().0, 1 + 1_500 + 16 * 2);
}

/// Hands out a reader's bytes a few at a time, so records cross every refill.
struct Trickle {
    bytes: Vec<u8>,
    at: usize,
    step: usize,
}

impl Read for Trickle {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.step.min(buf.len()).min(self.bytes.len() - self.at);
        buf[..n].copy_from_slice(&self.bytes[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

/// A row as read: its line, its raw fields and its problems' codes.
type RawRow = (u64, Vec<Option<String>>, Vec<&'static str>);

/// Every row of a reader over `bytes`: its line, its raw fields (None: absent or null) and
/// its problems' codes.
fn raw_rows_of(bytes: &[u8], step: usize, batch_rows: usize) -> Vec<RawRow> {
    let reader = Trickle {
        bytes: bytes.to_vec(),
        at: 0,
        step,
    };
    let mut source = CsvSource::new(Box::new(reader), &contract(), &Format::default()).unwrap();
    let mut rows = Vec::new();
    while let Some(batch) = source.next_batch(batch_rows).unwrap() {
        for row in 0..batch.num_rows() {
            let fields = batch.raw_columns.iter().map(|c| text_at(c, row)).collect();
            let codes = batch
                .problems
                .iter()
                .filter(|p| p.row == row)
                .map(|p| p.code)
                .collect();
            rows.push((batch.lines[row], fields, codes));
        }
    }
    rows
}

#[test]
fn a_field_of_bytes_that_are_not_text_is_null_and_named_the_rest_of_its_row_kept() {
    // Two halves of one character, split by a delimiter: each field alone is not text,
    // although the record's bytes end to end would be.
    let mut bytes = b"VendorID,fare_amount,note\n1,2,caf\xc3\xa9\n".to_vec();
    bytes.extend_from_slice(b"\xc3,\xa9,ok\n3,4,\xff\n");
    let rows = raw_rows_of(&bytes, 5, 100);
    assert_eq!(rows.len(), 3);
    assert_eq!(
        rows[0].1[2].as_deref(),
        Some("café"),
        "text that is not ASCII is kept"
    );
    assert!(rows[0].2.is_empty());
    assert_eq!(rows[1].1, vec![None, None, Some("ok".to_string())]);
    assert_eq!(rows[1].2, vec!["bad_utf8", "bad_utf8"]);
    assert_eq!(
        rows[2].1[..2],
        [Some("3".to_string()), Some("4".to_string())]
    );
    assert_eq!(rows[2].2, vec!["bad_utf8"]);
    assert_eq!(rows.iter().map(|r| r.0).collect::<Vec<_>>(), vec![2, 3, 4]);
}

#[test]
fn a_quote_never_closed_refuses_the_file_naming_the_line_its_record_began() {
    let mut text = String::from("VendorID,fare_amount\n1,2\n3,\"4\n");
    let filler = "x".repeat(1 << 10);
    while text.len() <= 80 << 10 {
        text.push_str(&filler);
        text.push('\n');
    }
    let mut source = CsvSource::new(
        Box::new(std::io::Cursor::new(text.into_bytes())),
        &contract(),
        &Format::default(),
    )
    .unwrap();
    assert_eq!(MAX_RECORD_BYTES, 64 << 20);
    source.record_limit = 64 << 10;
    let err = source.next_batch(10).unwrap_err().to_string();
    assert!(
        err.starts_with("line 3: a record longer than 64 KiB"),
        "{err}"
    );
    assert_eq!(binary_size(MAX_RECORD_BYTES), "64 MiB");
}

mod generated {
    use super::*;
    use proptest::prelude::*;

    /// A field as written: quoted when it holds a delimiter, a quote or a line break.
    fn written(field: &str) -> String {
        if field.contains([',', '"', '\n', '\r']) {
            format!("\"{}\"", field.replace('"', "\"\""))
        } else {
            field.to_string()
        }
    }

    fn field() -> impl Strategy<Value = String> {
        proptest::collection::vec(
            prop_oneof![
                Just("a"),
                Just("7"),
                Just(","),
                Just("\""),
                Just("\n"),
                Just("\r\n"),
                Just(" "),
                Just("é"),
                Just(""),
            ],
            0..4,
        )
        .prop_map(|parts| parts.concat())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]

        /// Any file of quoted and unquoted fields, LF or CRLF ends and blank lines, handed
        /// over a few bytes at a time and read in batches of any size, gives back every
        /// record's fields as written and the line each record starts on.
        #[test]
        fn records_come_back_as_written_on_the_lines_they_start(
            records in proptest::collection::vec(
                (proptest::collection::vec(field(), 3), 0..3usize, any::<bool>()),
                1..40,
            ),
            step in 1..64usize,
            batch_rows in 1..8usize,
        ) {
            let mut text = String::from("VendorID,fare_amount,note\n");
            let mut expected = Vec::new();
            for (fields, blanks, crlf) in &records {
                for b in 0..*blanks {
                    text.push_str(if b % 2 == 0 { "\n" } else { "\r\n" });
                }
                let line = 1 + text.matches('\n').count() as u64;
                let written: Vec<String> = fields.iter().map(|f| written(f)).collect();
                text.push_str(&written.join(","));
                text.push_str(if *crlf { "\r\n" } else { "\n" });
                let values: Vec<Option<String>> = fields.iter().cloned().map(Some).collect();
                expected.push((line, values, Vec::<&'static str>::new()));
            }
            let rows = raw_rows_of(text.as_bytes(), step, batch_rows);
            prop_assert_eq!(rows, expected);
        }
    }
}

#[test]
fn each_source_parses_from_its_own_start_after_another_stopped_midway() {
    // Parsers are handed on from a source that ended to the next one on the thread: one
    // dropped inside a quoted field, two lines in, must leave nothing to the next.
    let first = "VendorID,fare_amount\n1,2\n3,\"open\nstill open";
    let mut source = CsvSource::new(
        Box::new(std::io::Cursor::new(first.as_bytes().to_vec())),
        &contract(),
        &Format::default(),
    )
    .unwrap();
    assert_eq!(source.next_batch(1).unwrap().unwrap().lines, vec![2]);
    drop(source);
    let semicolons = Format {
        delimiter: b';',
        ..Format::default()
    };
    for _ in 0..2 {
        let rows = read_csv("\n\nVendorID,fare_amount\n5,6\n", &Format::default()).unwrap();
        assert_eq!(rows[0].0, 4);
        assert_eq!(values(&rows), vec![vec![Some("5"), Some("6"), None]]);
        let rows = read_csv("VendorID;fare_amount\n7;8\n", &semicolons).unwrap();
        assert_eq!(rows[0].0, 2);
        assert_eq!(values(&rows), vec![vec![Some("7"), Some("8"), None]]);
    }
}

#[test]
fn buffers_handed_on_from_sources_that_ended_give_only_each_sources_own_rows() {
    // A source's buffers go to the next one with the bytes and field ends it left in
    // them: long fields first, then short files read into the same buffers, larger and
    // smaller than what they were sized for, must come back exactly as written.
    let long = format!(
        "VendorID,fare_amount\n{},{}\n\"{}\",x\n",
        "9".repeat(5000),
        "8".repeat(7000),
        "7,".repeat(3000)
    );
    let rows = read_csv_sized(&long, &Format::default(), Some(long.len() as u64)).unwrap();
    assert_eq!(rows.len(), 2);
    for size in [None, Some(10), Some(40), Some(200_000)] {
        let rows = read_csv_sized(
            "VendorID,fare_amount\n1,23\n456,7\n",
            &Format::default(),
            size,
        )
        .unwrap();
        assert_eq!(
            values(&rows),
            vec![
                vec![Some("1"), Some("23"), None],
                vec![Some("456"), Some("7"), None]
            ],
            "told {size:?}"
        );
        assert!(rows.iter().all(|(_, _, problems)| problems.is_empty()));
    }
}
