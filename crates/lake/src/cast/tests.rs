use super::*;
use arrow::array::{
    BooleanArray, Date32Array, Decimal128Array, Float64Array, Int64Array, TimestampMicrosecondArray,
};

fn column(ty: ColumnType) -> Column {
    Column::new("c", ty)
}

fn cast(col: &Column, values: &[Option<&str>]) -> (ArrayRef, Vec<ColumnFailure>) {
    let input: ArrayRef = Arc::new(StringArray::from(values.to_vec()));
    PreparedColumn::new(col, &[]).cast(Some(&input), values.len())
}

fn codes(f: &[ColumnFailure]) -> Vec<(usize, &str)> {
    f.iter().map(|f| (f.row, f.code)).collect()
}

#[test]
fn integers_accept_float_spellings_of_whole_numbers() {
    let (a, f) = cast(
        &column(ColumnType::Int),
        &[
            Some("1"),
            Some(" 2 "),
            Some("3.0"),
            Some("3.5"),
            Some("x"),
            None,
        ],
    );
    let a = a.as_any().downcast_ref::<Int64Array>().unwrap();
    assert_eq!(a.value(1), 2);
    assert_eq!(a.value(2), 3);
    assert!(a.is_null(5));
    assert_eq!(codes(&f), vec![(3, "bad_int"), (4, "bad_int")]);
    assert_eq!(f[1].message, "c: \"x\" is not an integer");
}

#[test]
fn floats_and_ranges() {
    let mut col = column(ColumnType::Float);
    col.min = Some(0.0);
    col.max = Some(10000.0);
    let (a, f) = cast(
        &col,
        &[
            Some("2.5"),
            Some("-1"),
            Some("1e9"),
            Some("NaN"),
            Some(".95"),
        ],
    );
    let a = a.as_any().downcast_ref::<Float64Array>().unwrap();
    assert_eq!(a.value(4), 0.95);
    assert_eq!(
        codes(&f),
        vec![(1, "below_min"), (2, "above_max"), (3, "bad_number")]
    );
    assert_eq!(f[0].message, "c: -1 is below the minimum 0");
}

#[test]
fn decimals_keep_scale() {
    let (a, f) = cast(
        &column(ColumnType::Decimal {
            precision: 10,
            scale: 2,
        }),
        &[
            Some("12.345"),
            Some("abc"),
            Some("-2.8999999999999999"),
            Some("9.4000000000000004"),
            Some("7"),
            Some("-0.005"),
        ],
    );
    let a = a.as_any().downcast_ref::<Decimal128Array>().unwrap();
    assert_eq!(a.scale(), 2);
    assert_eq!(a.value_as_string(0), "12.35");
    assert_eq!(a.value_as_string(2), "-2.90");
    assert_eq!(a.value_as_string(3), "9.40");
    assert_eq!(a.value_as_string(4), "7.00");
    assert_eq!(a.value_as_string(5), "-0.01");
    assert_eq!(codes(&f), vec![(1, "bad_decimal")]);
}

#[test]
fn decimal_ranges_hold_at_their_edges() {
    // Bounds that are not whole units of the scale, or that floating point cannot hold
    // exactly (0.1 * 100 is 10.000000000000002), bound the values a person would expect.
    let mut col = column(ColumnType::Decimal {
        precision: 10,
        scale: 2,
    });
    col.min = Some(0.1);
    col.max = Some(100.005);
    let (a, f) = cast(
        &col,
        &[
            Some("0.10"),
            Some("0.09"),
            Some("100.00"),
            Some("100.01"),
            Some(" 50.5 "),
            Some("-1"),
            Some("99999999.99"),
        ],
    );
    let a = a.as_any().downcast_ref::<Decimal128Array>().unwrap();
    assert_eq!(a.value_as_string(0), "0.10");
    assert_eq!(a.value_as_string(2), "100.00");
    assert_eq!(a.value_as_string(4), "50.50");
    assert_eq!(
        codes(&f),
        vec![
            (1, "below_min"),
            (3, "above_max"),
            (5, "below_min"),
            (6, "above_max")
        ]
    );
    assert_eq!(f[0].message, "c: 0.09 is below the minimum 0.1");
    assert_eq!(f[1].message, "c: 100.01 is above the maximum 100.005");
    // Only a minimum: no maximum is made up.
    col.max = None;
    let (_, f) = cast(&col, &[Some("99999999.99"), Some("0")]);
    assert_eq!(codes(&f), vec![(1, "below_min")]);
}

#[test]
fn values_are_trimmed_of_any_white_space() {
    let (a, f) = cast(
        &column(ColumnType::Int),
        &[
            Some("\t7\r"),
            Some("\u{a0}8"),
            Some("9 "),
            Some(" "),
            Some("1"),
        ],
    );
    let a = a.as_any().downcast_ref::<Int64Array>().unwrap();
    assert_eq!(
        (a.value(0), a.value(1), a.value(2), a.value(4)),
        (7, 8, 9, 1)
    );
    assert!(a.is_null(3));
    assert!(f.is_empty());
}

#[test]
fn booleans_in_many_spellings() {
    let (a, f) = cast(
        &column(ColumnType::Bool),
        &[Some("Y"), Some("n"), Some("TRUE"), Some("0"), Some("maybe")],
    );
    let a = a.as_any().downcast_ref::<BooleanArray>().unwrap();
    assert!(a.value(0) && !a.value(1) && a.value(2) && !a.value(3));
    assert_eq!(codes(&f), vec![(4, "bad_bool")]);
}

#[test]
fn dates_with_explicit_formats() {
    let mut col = column(ColumnType::Date);
    col.formats = vec!["%m/%d/%Y".into()];
    let (a, f) = cast(&col, &[Some("01/02/2024"), Some("2024-01-02")]);
    let a = a.as_any().downcast_ref::<Date32Array>().unwrap();
    assert_eq!(a.value_as_date(0).unwrap().to_string(), "2024-01-02");
    assert_eq!(codes(&f), vec![(1, "bad_date")]);
}

#[test]
fn timestamps_in_a_time_zone_become_utc() {
    let mut col = column(ColumnType::Timestamp);
    col.formats = vec!["%Y-%m-%d %H:%M:%S".into()];
    col.timezone = Some("America/New_York".into());
    let (a, f) = cast(
        &col,
        &[
            Some("2024-01-15 10:00:00"),
            Some("2024-07-15 10:00:00"),
            Some("2024-03-10 02:30:00"),
            Some("15/01/2024"),
        ],
    );
    let a = a
        .as_any()
        .downcast_ref::<TimestampMicrosecondArray>()
        .unwrap();
    assert_eq!(
        a.value_as_datetime(0).unwrap().to_string(),
        "2024-01-15 15:00:00"
    );
    assert_eq!(
        a.value_as_datetime(1).unwrap().to_string(),
        "2024-07-15 14:00:00"
    );
    assert_eq!(codes(&f), vec![(2, "bad_timestamp"), (3, "bad_timestamp")]);
    assert!(
        f[0].message.contains("does not exist in America/New_York"),
        "{}",
        f[0].message
    );
}

#[test]
fn timestamps_default_to_iso_and_rfc3339() {
    let (a, f) = cast(
        &column(ColumnType::Timestamp),
        &[
            Some("2024-01-15T10:00:00Z"),
            Some("2024-01-15 10:00:00.5"),
            Some("2024-01-15T10:00:00+01:00"),
        ],
    );
    assert!(f.is_empty(), "{f:?}");
    let a = a
        .as_any()
        .downcast_ref::<TimestampMicrosecondArray>()
        .unwrap();
    assert_eq!(a.value(1) - a.value(0), 500_000);
    assert_eq!(
        a.value_as_datetime(2).unwrap().to_string(),
        "2024-01-15 09:00:00"
    );
}

#[test]
fn not_null_map_allowed_and_pattern() {
    let mut col = column(ColumnType::Int);
    col.nullable = false;
    col.map = [
        ("csh".to_string(), "2".to_string()),
        ("crd".to_string(), "1".to_string()),
    ]
    .into();
    col.allowed = vec!["1".into(), "2".into(), "3".into()];
    let (a, f) = cast(
        &col,
        &[Some("CSH"), Some("Crd"), Some(""), Some("7"), Some("  ")],
    );
    let a = a.as_any().downcast_ref::<Int64Array>().unwrap();
    assert_eq!((a.value(0), a.value(1)), (2, 1));
    assert_eq!(
        codes(&f),
        vec![(2, "missing"), (3, "not_allowed"), (4, "missing")]
    );

    // Keys longer than the stack buffer, non-ASCII keys, and a key mapped to null.
    let mut col = column(ColumnType::String);
    let long = "a voided trip that the vendor never charged for".to_string();
    col.map = [
        (long.clone(), "void".to_string()),
        ("crédit".to_string(), "credit".to_string()),
        ("n/a".to_string(), String::new()),
    ]
    .into();
    let (a, f) = cast(
        &col,
        &[
            Some("A VOIDED TRIP that the vendor never charged for"),
            Some("CRÉDIT"),
            Some("N/A"),
            Some("a voided trip that the vendor never charged for, twice"),
            Some("crd"),
        ],
    );
    let a = a.as_any().downcast_ref::<StringArray>().unwrap();
    assert_eq!((a.value(0), a.value(1)), ("void", "credit"));
    assert!(a.is_null(2));
    assert_eq!(
        a.value(3),
        "a voided trip that the vendor never charged for, twice"
    );
    assert_eq!(a.value(4), "crd");
    assert!(f.is_empty());

    let mut col = column(ColumnType::String);
    col.pattern = Some("[A-Z]{3}".into());
    let (_, f) = cast(&col, &[Some("ABC"), Some("ABCD")]);
    assert_eq!(codes(&f), vec![(1, "pattern")]);
}

#[test]
fn a_missing_optional_column_is_null_and_a_missing_required_one_fails_every_row() {
    let col = column(ColumnType::Int);
    let (a, f) = PreparedColumn::new(&col, &[]).cast(None, 3);
    assert_eq!(a.null_count(), 3);
    assert!(f.is_empty());
    let mut col = column(ColumnType::Int);
    col.nullable = false;
    let (_, f) = PreparedColumn::new(&col, &[]).cast(None, 2);
    assert_eq!(codes(&f), vec![(0, "missing"), (1, "missing")]);
}

#[test]
fn typed_input_from_parquet_is_cast_without_text() {
    let mut col = column(ColumnType::Float);
    col.max = Some(10.0);
    let input: ArrayRef = Arc::new(Int64Array::from(vec![Some(1), None, Some(20)]));
    let (a, f) = PreparedColumn::new(&col, &[]).cast(Some(&input), 3);
    assert_eq!(
        a.as_any().downcast_ref::<Float64Array>().unwrap().value(0),
        1.0
    );
    assert_eq!(codes(&f), vec![(2, "above_max")]);
}

#[test]
fn the_iso_fast_path_agrees_with_chrono() {
    // Every spelling the fast path reads, and the ones it hands on, against chrono's
    // parser: calendar edges (leap days by the 4/100/400 rules, month lengths, the
    // first and last representable years, before the epoch), fractions of 1 to 9
    // digits, and values that are not times.
    let mut cases = vec![
        "2019-06-01 00:55:13".to_string(),
        "2019-06-01T00:55:13.123".into(),
        "2019-02-29 00:00:00".into(),
        "2024-02-29 23:59:59".into(),
        "2000-02-29 12:00:00".into(),
        "2100-02-29 12:00:00".into(),
        "2019-06-01 24:00:00".into(),
        "2019-06-01 23:60:00".into(),
        "2019-06-01 23:59:60".into(),
        "2019-13-01 00:00:00".into(),
        "2019-00-10 00:00:00".into(),
        "2019-04-31 00:00:00".into(),
        "2019-04-00 00:00:00".into(),
        "2019-6-1 00:00:00".into(),
        "0000-01-01 00:00:00".into(),
        "9999-12-31 23:59:59.999999".into(),
        "1969-12-31 23:59:59.5".into(),
        "1900-03-01 01:02:03".into(),
        "2019-06-01 00:55:13,5".into(),
        "2019-06-01 0a:55:13".into(),
        "2019-06-01 00:55:13.12a".into(),
    ];
    for digits in 1..=9 {
        cases.push(format!("2023-11-05 01:30:00.{}", &"987654321"[..digits]));
    }
    // Every day of four years, a leap year among them, at a time that moves.
    let mut day = NaiveDate::from_ymd_opt(2023, 1, 1).unwrap();
    for i in 0..4 * 366 {
        cases.push(format!(
            "{day} {:02}:{:02}:{:02}",
            i % 24,
            i % 60,
            (i * 7) % 60
        ));
        day = day.succ_opt().unwrap();
    }
    for s in &cases {
        let fast = parse_iso_micros(s);
        let slow = NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S%.f")
            .or_else(|_| NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%.f"))
            .ok()
            // chrono reads a 60th second as a leap second; a timestamp column does not.
            .filter(|t| t.and_utc().timestamp_subsec_nanos() < 1_000_000_000)
            .map(|t| t.and_utc().timestamp_micros());
        assert_eq!(fast, slow, "{s}");
    }
}

#[test]
fn cached_hour_offsets_agree_with_the_zone_across_its_transitions() {
    // Every 7 minutes (seconds and micros varied) over the days around each zone's
    // transitions, twice (the second pass answers from the cache), against chrono-tz.
    let cases = [
        ("America/New_York", ["2024-03-09", "2024-11-02"]),
        // Half-hour daylight saving.
        ("Australia/Lord_Howe", ["2024-04-06", "2024-10-05"]),
        ("Asia/Kathmandu", ["2024-01-01", "2024-06-30"]),
        ("Europe/London", ["2024-03-30", "2024-10-26"]),
        // Transitions one minute past the hour (until 2011): a gap and an overlap that
        // start inside an hour whose first microsecond is unremarkable.
        ("America/St_Johns", ["2010-03-13", "2010-11-06"]),
        // Before the epoch: negative hours.
        ("America/Chicago", ["1965-04-24", "1965-10-30"]),
    ];
    for (zone, days) in cases {
        let tz: chrono_tz::Tz = zone.parse().unwrap();
        let hours = HourOffsets::new();
        for day in days {
            let start = NaiveDate::parse_from_str(day, "%Y-%m-%d")
                .unwrap()
                .and_hms_opt(0, 0, 0)
                .unwrap();
            for pass in 0..2 {
                for step in 0..(3 * 24 * 60 / 7) {
                    let naive = start
                        + chrono::Duration::minutes(step * 7)
                        + chrono::Duration::microseconds(step * 1_234_567 % 60_000_000);
                    let want = tz
                        .from_local_datetime(&naive)
                        .earliest()
                        .map(|t| t.timestamp_micros());
                    assert_eq!(
                        hours.to_utc_micros(tz, naive.and_utc().timestamp_micros()),
                        want,
                        "{zone} {naive} (pass {pass})"
                    );
                }
            }
        }
    }
}

#[test]
fn objects_cast_at_once_share_a_columns_hours_and_agree_with_the_zone() {
    let tz: chrono_tz::Tz = "America/New_York".parse().unwrap();
    let hours = HourOffsets::new();
    std::thread::scope(|scope| {
        for t in 0..4i64 {
            let hours = &hours;
            scope.spawn(move || {
                let start = NaiveDate::from_ymd_opt(2024, 3, 1)
                    .unwrap()
                    .and_hms_opt(0, 0, 0)
                    .unwrap();
                // Each thread walks the same month in its own order, so the threads
                // overwrite each other's slots (2,976 hours into 1,024 slots).
                for step in 0..20_000i64 {
                    let minutes = (step * 7_919 + t * 104_729) % (124 * 24 * 60);
                    let naive = start + chrono::Duration::minutes(minutes);
                    let want = tz
                        .from_local_datetime(&naive)
                        .earliest()
                        .map(|v| v.timestamp_micros());
                    let local = naive.and_utc().timestamp_micros();
                    assert_eq!(hours.to_utc_micros(tz, local), want, "{naive}");
                }
            });
        }
    });
}

#[test]
fn the_plain_decimal_fast_path_rounds_and_bounds_like_arrow() {
    // (text, precision, scale, expected)
    let cases: &[(&str, u8, i8, Option<i128>)] = &[
        ("12.345", 10, 2, Some(1235)),
        ("-12.345", 10, 2, Some(-1235)),
        ("12.344", 10, 2, Some(1234)),
        ("0.005", 10, 2, Some(1)),
        ("-0.004", 10, 2, Some(0)),
        ("7", 10, 2, Some(700)),
        ("99999999.99", 10, 2, Some(9_999_999_999)),
        ("99999999.995", 10, 2, None),
        ("100000000", 10, 2, None),
        ("000000000001.5", 3, 1, Some(15)),
    ];
    for &(text, p, s, want) in cases {
        assert_eq!(
            parse_plain_decimal(text, p, s),
            Some(want),
            "{text} ({p},{s})"
        );
        assert_eq!(
            parse_decimal_any(text, p, s),
            want,
            "{text} ({p},{s}) via arrow"
        );
    }
    // Other spellings go to arrow's parser.
    for text in [
        "+1.5",
        ".5",
        "5.",
        "1e3",
        "1.2.3",
        "-",
        "",
        "12345678901234567890",
        " 1",
    ] {
        assert_eq!(parse_plain_decimal(text, 38, 2), None, "{text:?}");
    }
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2_000))]
    #[test]
    fn the_plain_decimal_fast_path_agrees_with_arrow(
        // At most 18 digits: all of them take the fast path.
        text in "-?[0-9]{1,10}(\\.[0-9]{1,8})?",
        precision in 1u8..=38,
        scale in 0i8..=12,
    ) {
        let scale = scale.min(precision as i8);
        proptest::prop_assert_eq!(
            parse_plain_decimal(&text, precision, scale),
            Some(parse_decimal_any(&text, precision, scale))
        );
    }
}

#[test]
fn bounds_are_inclusive_and_one_sided_bounds_leave_the_other_side_open() {
    let mut int = column(ColumnType::Int);
    int.min = Some(1.0);
    int.max = Some(265.0);
    let (a, f) = cast(
        &int,
        &[Some("1"), Some("265"), Some("0"), Some("266"), Some("2.0")],
    );
    let a = a.as_any().downcast_ref::<Int64Array>().unwrap();
    assert_eq!((a.value(0), a.value(1), a.value(4)), (1, 265, 2));
    assert_eq!(codes(&f), vec![(2, "below_min"), (3, "above_max")]);
    assert_eq!(f[1].message, "c: 266 is above the maximum 265");

    let mut float = column(ColumnType::Float);
    float.min = Some(-74.3);
    let (a, f) = cast(
        &float,
        &[Some("-74.3"), Some("-74.30001"), Some("1e300"), Some("inf")],
    );
    let a = a.as_any().downcast_ref::<Float64Array>().unwrap();
    assert_eq!((a.value(0), a.value(2)), (-74.3, 1e300));
    assert_eq!(codes(&f), vec![(1, "below_min"), (3, "bad_number")]);
}

#[test]
fn null_spellings_and_map_keys_of_a_values_length_are_still_recognized() {
    // "NULL" has the length of "1234" and of "CASH": each value of that length is compared.
    let mut col = column(ColumnType::Int);
    col.map = [
        ("cash".to_string(), "2".to_string()),
        ("none".to_string(), String::new()),
    ]
    .into_iter()
    .collect();
    let nulls = ["NULL".to_string(), "-".to_string()];
    let input: ArrayRef = Arc::new(StringArray::from(vec![
        Some("CASH"),
        Some("NULL"),
        Some("-"),
        Some("None"),
        Some("1234"),
        Some(" 7 "),
        Some("1"),
    ]));
    let (a, f) = PreparedColumn::new(&col, &nulls).cast(Some(&input), 7);
    let a = a.as_any().downcast_ref::<Int64Array>().unwrap();
    assert!(f.is_empty(), "{f:?}");
    assert_eq!(a.value(0), 2);
    assert!(a.is_null(1) && a.is_null(2) && a.is_null(3));
    assert_eq!((a.value(4), a.value(5), a.value(6)), (1234, 7, 1));
}

#[test]
fn one_byte_values_and_spellings_that_lower_to_a_key_are_mapped() {
    // One-byte keys; and the Kelvin sign (3 bytes) lowers to "k" (1 byte): a value's length
    // says nothing of a key's unless the value is ASCII.
    let mut col = column(ColumnType::Int);
    col.map = [
        ("y".to_string(), "1".to_string()),
        ("k".to_string(), "7".to_string()),
    ]
    .into();
    let (a, f) = cast(
        &col,
        &[
            Some("Y"),
            Some("\u{212A}"),
            Some("3"),
            Some("kk"),
            Some("x"),
        ],
    );
    let a = a.as_any().downcast_ref::<Int64Array>().unwrap();
    assert_eq!((a.value(0), a.value(1), a.value(2)), (1, 7, 3));
    assert_eq!(codes(&f), vec![(3, "bad_int"), (4, "bad_int")]);

    let mut flag = column(ColumnType::Bool);
    flag.map = [("?".to_string(), String::new())].into();
    let (a, f) = cast(
        &flag,
        &[Some("N"), Some("y"), Some("?"), Some("TRUE"), Some("No")],
    );
    let a = a.as_any().downcast_ref::<BooleanArray>().unwrap();
    assert!(f.is_empty(), "{f:?}");
    assert_eq!(
        (a.value(0), a.value(1), a.value(3), a.value(4)),
        (false, true, true, false)
    );
    assert!(a.is_null(2));
}

#[test]
fn floats_read_as_the_standard_parser_reads_them() {
    for text in [
        "0",
        "-0",
        "-0.0",
        "0.1",
        "-73.98765432",
        "40.75",
        "999999999999999",
        "1234567.89012345",
        "0.000000000000001",
        "9007199254740993",
        "1.7976931348623157",
        "00012.5",
        "+1.5",
        ".5",
        "5.",
        "1e3",
        "-1.5E-3",
        "inf",
        "-inf",
        "NaN",
        "1.2.3",
        "-",
        "",
        "--1",
        "1-",
        "0x10",
        "12345678901234567890",
        "1.23456789012345678",
    ] {
        let std = text.parse::<f64>().ok();
        let ours = parse_float(text);
        assert_eq!(
            ours.map(f64::to_bits),
            std.map(f64::to_bits),
            "{text:?}: {ours:?} against {std:?}"
        );
    }
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(5_000))]
    #[test]
    fn the_float_fast_path_agrees_with_the_standard_parser(
        text in "-?[0-9]{1,17}(\\.[0-9]{1,17})?",
    ) {
        proptest::prop_assert_eq!(
            parse_float(&text).map(f64::to_bits),
            text.parse::<f64>().ok().map(f64::to_bits)
        );
    }
}
