use super::*;
use crate::read::{CsvSource, Source};
use arrow::array::{Float64Array, Int32Array};
use proptest::prelude::*;
use sluice_model::contract::{Check, Column, ColumnType, Derived};

fn column(name: &str, ty: ColumnType) -> Column {
    Column {
        optional: false,
        ..Column::new(name, ty)
    }
}

fn contract() -> Contract {
    let mut fare = column("fare", ColumnType::Float);
    fare.min = Some(0.0);
    fare.nullable = false;
    Contract {
        columns: vec![
            column("id", ColumnType::Int),
            fare,
            column("start", ColumnType::Timestamp),
            column("stop", ColumnType::Timestamp),
        ],
        derived: vec![
            Derived {
                name: "minutes".into(),
                expr: "(date_part('epoch', stop) - date_part('epoch', start)) / 60.0".into(),
            },
            Derived {
                name: "yr".into(),
                expr: "CAST(date_part('year', start) AS INT)".into(),
            },
        ],
        checks: vec![
            Check {
                name: "stop_after_start".into(),
                expr: "stop > start".into(),
                message: "stop is not after start".into(),
            },
            Check {
                name: "from_key".into(),
                expr: "_key_year IS NULL OR yr = CAST(_key_year AS INT)".into(),
                message: "wrong year".into(),
            },
        ],
        unique: vec!["id".into()],
        key_fields: Some(r"(?P<year>\d{4})".into()),
    }
}

fn run(text: &str, key: &str) -> (Vec<RecordBatch>, Vec<Rejection>, u64) {
    let compiled = CompiledContract::compile(&contract(), &Format::default()).unwrap();
    let mut validator = compiled.validator("raw/x.csv", "v1", key);
    let mut source = CsvSource::new(
        Box::new(std::io::Cursor::new(text.as_bytes().to_vec())),
        compiled.contract(),
        &Format::default(),
    )
    .unwrap();
    let (mut valid, mut rejected, mut n) = (vec![], vec![], 0);
    while let Some(batch) = source.next_batch(2).unwrap() {
        n += batch.num_rows() as u64;
        let v = validator.validate(&batch).unwrap();
        valid.push(v.valid().unwrap());
        rejected.extend(v.rejected);
    }
    (valid, rejected, n)
}

const CSV: &str = "id,fare,start,stop
1,10.5,2024-01-01 10:00:00,2024-01-01 10:30:00
2,-1,2024-01-01 10:00:00,2024-01-01 10:30:00
3,5,2024-01-01 10:00:00,2024-01-01 09:00:00
1,7,2024-01-01 11:00:00,2024-01-01 11:30:00
4,,2024-01-01 10:00:00,2024-01-01 10:30:00
5,3,2023-12-31 10:00:00,2023-12-31 10:30:00
6,3,2024-01-02 10:00:00,
";

#[test]
fn every_row_is_either_valid_or_rejected_with_its_first_reason() {
    let (valid, rejected, n) = run(CSV, "landing/2024/01/x.csv");
    let n_valid: usize = valid.iter().map(|b| b.num_rows()).sum();
    assert_eq!(n, 7);
    assert_eq!(n_valid as u64 + rejected.len() as u64, n);
    let reasons: Vec<(u64, &str)> = rejected.iter().map(|r| (r.line, r.code.as_str())).collect();
    assert_eq!(
        reasons,
        vec![
            (3, "below_min"),
            (4, "stop_after_start"),
            (5, "duplicate"),
            (6, "missing"),
            (7, "from_key")
        ]
    );
    assert_eq!(rejected[0].column.as_deref(), Some("fare"));
    assert_eq!(rejected[0].message, "fare: -1 is below the minimum 0");
    assert_eq!(rejected[2].message, "duplicate of line 2 on (id)");
    assert_eq!(
        rejected[0].raw,
        r#"{"id":"2","fare":"-1","start":"2024-01-01 10:00:00","stop":"2024-01-01 10:30:00"}"#
    );
    // Line 8 has no stop: the check is NULL, which passes, like a SQL CHECK constraint.
    let last = valid.iter().rev().find(|b| b.num_rows() > 0).unwrap();
    let lines = last
        .column_by_name("_source_line")
        .unwrap()
        .as_any()
        .downcast_ref::<Int64Array>()
        .unwrap();
    assert_eq!(lines.value(lines.len() - 1), 8);
}

#[test]
fn derived_columns_are_typed_and_stored_with_lineage() {
    let (valid, _, _) = run(CSV, "no-year-here.csv");
    let first = &valid[0];
    let schema = first.schema();
    let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
    assert_eq!(
        names,
        vec![
            "id",
            "fare",
            "start",
            "stop",
            "minutes",
            "yr",
            "_source_object",
            "_source_version",
            "_source_line"
        ]
    );
    let minutes = first
        .column_by_name("minutes")
        .unwrap()
        .as_any()
        .downcast_ref::<Float64Array>()
        .unwrap();
    assert_eq!(minutes.value(0), 30.0);
    let yr = first
        .column_by_name("yr")
        .unwrap()
        .as_any()
        .downcast_ref::<Int32Array>()
        .unwrap();
    assert_eq!(yr.value(0), 2024);
}

#[test]
fn bad_expressions_are_config_errors_naming_the_expression() {
    let mut c = contract();
    c.derived.push(Derived {
        name: "oops".into(),
        expr: "no_such_column + 1".into(),
    });
    c.checks.push(Check {
        name: "not_bool".into(),
        expr: "fare + 1".into(),
        message: "x".into(),
    });
    let errors = CompiledContract::compile(&c, &Format::default())
        .err()
        .unwrap();
    let text: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
    assert!(
        text[0].starts_with("derived column \"oops\" = no_such_column + 1:"),
        "{text:?}"
    );
    assert!(text[0].contains("no_such_column"), "{text:?}");
    assert_eq!(
        text[1],
        "check \"not_bool\" = fare + 1: a check must be a boolean expression"
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    /// For any input, valid rows + quarantined rows = input rows.
    #[test]
    fn valid_plus_rejected_equals_input(rows in proptest::collection::vec(
        (any::<i8>(), prop_oneof![Just("1.5".to_string()), Just("-2".to_string()), Just("".to_string()), Just("x".to_string()), "[0-9]{1,4}"],
         prop_oneof![Just("2024-01-01 10:00:00"), Just("2023-05-01 10:00:00"), Just("bad"), Just("")],
         prop_oneof![Just("2024-01-01 10:30:00"), Just("2024-01-01 09:00:00"), Just("")],
         0usize..3),
        0..40)) {
        let mut text = String::from("id,fare,start,stop\n");
        for (id, fare, start, stop, extra) in &rows {
            text.push_str(&format!("{id},{fare},{start},{stop}{}\n", ",x".repeat(*extra)));
        }
        let (valid, rejected, n) = run(&text, "landing/2024/01/x.csv");
        let n_valid: usize = valid.iter().map(|b| b.num_rows()).sum();
        prop_assert_eq!(n, rows.len() as u64);
        prop_assert_eq!(n_valid as u64 + rejected.len() as u64, n);
    }
}

#[test]
fn repeated_text_is_the_column_built_value_by_value() {
    for (text, n) in [
        ("raw/landing/2024/01/a.csv", 1000),
        ("v1", 1),
        ("", 3),
        ("é", 0),
    ] {
        let built = StringArray::from(vec![text; n]);
        let repeated = repeated_text(text, n);
        assert_eq!(repeated, built, "{text:?} x {n}");
        assert_eq!(repeated.value_data().len(), text.len() * n);
    }
}
