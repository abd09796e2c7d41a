//! Casting raw source values to a contract column's type, row by row, with a reason for every failure.
//!
//! Input is whatever the reader produced for one column: text (CSV, JSON
//! lines) or an already-typed Arrow array (Parquet). The output is an array of
//! the contract type plus, for each row that failed a cast or a column rule
//! (not null, min/max, allowed values, pattern), a [`ColumnFailure`]. Bad
//! values are data, never an `Err`.

use std::collections::HashSet;
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, BooleanBuilder, Date32Builder, Decimal128Builder, Float64Builder,
    Int64Builder, StringArray, StringBuilder, TimestampMicrosecondBuilder,
};
use arrow::compute::kernels::cast::{CastOptions, cast_with_options};
use arrow::datatypes::{DataType, TimeUnit};
use chrono::{Datelike as _, NaiveDate, NaiveDateTime, TimeZone};
use sluice_model::contract::{Column, ColumnType};

use crate::hour_slots::HourSlots;

/// Why one value of one column was refused.
#[derive(Debug, Clone, PartialEq)]
pub struct ColumnFailure {
    /// Row index within the batch.
    pub row: usize,
    /// Reason code (`missing`, `bad_int`, `below_min`, …).
    pub code: &'static str,
    /// A sentence a person understands.
    pub message: String,
}

/// The Arrow type a contract type is stored as.
pub fn arrow_type(ty: &ColumnType) -> DataType {
    match ty {
        ColumnType::String => DataType::Utf8,
        ColumnType::Int => DataType::Int64,
        ColumnType::Float => DataType::Float64,
        ColumnType::Decimal { precision, scale } => DataType::Decimal128(*precision, *scale),
        ColumnType::Bool => DataType::Boolean,
        ColumnType::Date => DataType::Date32,
        ColumnType::Timestamp => DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
    }
}

/// A column's rules in the form casts use them: its pattern compiled, its allowed values
/// hashed, its zone resolved, its decimal bounds scaled. Built once per compiled contract
/// and shared by every object's [`PreparedColumn`] (compiling them per object was ~1% of
/// the server's CPU under a stream of 1,000-row objects).
pub struct ColumnRules {
    pattern: Option<regex::Regex>,
    allowed: HashSet<String>,
    tz: Option<chrono_tz::Tz>,
    /// Bytes of the longest `map` key.
    longest_map_key: usize,
    /// Bit `n` set when an ASCII `map` key has `n` bytes (every bit when a key is not
    /// ASCII): an ASCII value of another length is no key, and is not looked up.
    map_lengths: u64,
    /// A decimal column's `min` and `max` in units of its scale (`0.01` of a
    /// `decimal(10,2)` is 1), so a value is checked with two integer comparisons; a value
    /// outside them goes through [`PreparedColumn::check_range`] for its message.
    decimal_bounds: (i128, i128),
    /// An int or float column's `min` and `max` (infinite when absent), so a value in
    /// range costs two comparisons inline; one outside goes through
    /// [`PreparedColumn::check_range`] for its message.
    bounds: (f64, f64),
    /// The zone's offset for the local hours seen lately (see [`HourOffsets`]); empty
    /// for a column without a zone.
    hours: HourOffsets,
}

impl ColumnRules {
    /// Prepares a column's rules; the contract was validated, so regexes and zones parse.
    pub fn new(column: &Column) -> Self {
        let tz: Option<chrono_tz::Tz> = column.timezone.as_ref().and_then(|t| t.parse().ok());
        Self {
            hours: if tz.is_some() {
                HourOffsets::new()
            } else {
                HourOffsets::none()
            },
            tz,
            pattern: column
                .pattern
                .as_ref()
                .and_then(|p| regex::Regex::new(&format!("^(?:{p})$")).ok()),
            allowed: column.allowed.iter().cloned().collect(),
            longest_map_key: column.map.keys().map(String::len).max().unwrap_or(0),
            map_lengths: column.map.keys().fold(0, |m, k| {
                if k.is_ascii() {
                    m | length_bit(k.len())
                } else {
                    u64::MAX
                }
            }),
            decimal_bounds: match column.ty {
                ColumnType::Decimal { scale, .. } => {
                    let unit = 10f64.powi(i32::from(scale));
                    (
                        column
                            .min
                            .map_or(i128::MIN, |m| scaled_bound(m, unit, f64::ceil)),
                        column
                            .max
                            .map_or(i128::MAX, |m| scaled_bound(m, unit, f64::floor)),
                    )
                }
                _ => (i128::MIN, i128::MAX),
            },
            bounds: (
                column.min.unwrap_or(f64::NEG_INFINITY),
                column.max.unwrap_or(f64::INFINITY),
            ),
        }
    }
}

/// A column prepared for casting: its values' [`ColumnRules`], shared by every object.
pub struct PreparedColumn<'a> {
    column: &'a Column,
    rules: Arc<ColumnRules>,
    null_values: &'a [String],
    /// Bit `n` (`n` < 63; 63 for longer) is set when a null spelling has `n` bytes: most
    /// values have a length no null spelling has, and are not compared with any.
    null_lengths: u64,
    /// `null_lengths` and the rules' `map_lengths` together: the lengths at which a
    /// value that needs no trimming may still be null or mapped.
    special_lengths: u64,
    /// The column maps values (`map`).
    maps: bool,
}

/// Bit of a text length in [`PreparedColumn::null_lengths`].
fn length_bit(len: usize) -> u64 {
    1 << len.min(63)
}

/// `bound` (a contract's `min` or `max`) times `unit`, as a whole number of units: a
/// product within a billionth of a whole number is that number (`0.1 * 100` is
/// 10.000000000000002 in floating point), else `round` (ceil for a minimum, floor for a
/// maximum) brings it to the nearest whole unit inside the range.
fn scaled_bound(bound: f64, unit: f64, round: fn(f64) -> f64) -> i128 {
    let scaled = bound * unit;
    let whole = scaled.round();
    let units = if (scaled - whole).abs() <= 1e-9 * whole.abs().max(1.0) {
        whole
    } else {
        round(scaled)
    };
    // Saturates at i128's ends (and a NaN, which validation rejects, becomes 0).
    units as i128
}

/// A time zone's UTC offset per local hour ([`HourSlots`]), so a column of local times is
/// converted with one subtraction per value instead of a search through the zone's
/// transitions (chrono-tz's, about a tenth of a timestamp's cast). An hour is cached
/// only when its first and last microsecond have one and the same offset (no transition
/// inside it: a daylight-saving gap or overlap is resolved by the zone itself, value by
/// value).
///
/// It belongs to the column's [`ColumnRules`], so every object cast with the contract
/// shares it: a month of hours fits, where a cache per object missed on most values of
/// a 1,000-row object (each row a new hour).
struct HourOffsets {
    slots: HourSlots,
}

impl HourOffsets {
    const MIXED: i32 = HourSlots::MIXED;

    fn new() -> Self {
        Self {
            slots: HourSlots::new(),
        }
    }

    /// No slots: for a column without a zone, which never asks.
    fn none() -> Self {
        Self {
            slots: HourSlots::none(),
        }
    }

    /// `local`, a wall-clock time in `tz` (as microseconds since the epoch of that wall
    /// clock), as microseconds since the epoch (UTC); None when the local time does not
    /// exist (skipped by a daylight-saving change). An ambiguous time is the earlier of
    /// its two instants.
    fn to_utc_micros(&self, tz: chrono_tz::Tz, local: i64) -> Option<i64> {
        let hour = local.div_euclid(3_600_000_000);
        let offset = self
            .slots
            .offset(hour, |hour| Self::uniform_offset(tz, hour));
        if offset != Self::MIXED {
            return Some(local - i64::from(offset) * 1_000_000);
        }
        let naive = chrono::DateTime::from_timestamp_micros(local)?.naive_utc();
        tz.from_local_datetime(&naive)
            .earliest()
            .map(|t| t.timestamp_micros())
    }

    fn uniform_offset(tz: chrono_tz::Tz, hour: i64) -> i32 {
        use chrono::{LocalResult, Offset};
        let Some(start) = chrono::DateTime::from_timestamp(hour * 3600, 0) else {
            return Self::MIXED;
        };
        let start = start.naive_utc();
        let end = start + chrono::Duration::microseconds(3_600_000_000 - 1);
        match (
            tz.offset_from_local_datetime(&start),
            tz.offset_from_local_datetime(&end),
        ) {
            (LocalResult::Single(a), LocalResult::Single(b)) if a.fix() == b.fix() => {
                a.fix().local_minus_utc()
            }
            _ => Self::MIXED,
        }
    }
}

impl<'a> PreparedColumn<'a> {
    /// Prepares a column, its rules included.
    pub fn new(column: &'a Column, null_values: &'a [String]) -> Self {
        Self::with_rules(column, Arc::new(ColumnRules::new(column)), null_values)
    }

    /// Prepares a column whose rules were prepared before (`rules` must be `column`'s).
    pub fn with_rules(
        column: &'a Column,
        rules: Arc<ColumnRules>,
        null_values: &'a [String],
    ) -> Self {
        let null_lengths = null_values.iter().fold(0, |m, n| m | length_bit(n.len()));
        Self {
            maps: !column.map.is_empty(),
            special_lengths: null_lengths | rules.map_lengths,
            column,
            rules,
            null_values,
            null_lengths,
        }
    }

    /// Casts one column of a batch. `input` is None when the file lacks the column (all null).
    pub fn cast(&self, input: Option<&ArrayRef>, n_rows: usize) -> (ArrayRef, Vec<ColumnFailure>) {
        let mut failures = Vec::new();
        let Some(input) = input else {
            if !self.column.nullable {
                for row in 0..n_rows {
                    failures.push(self.missing(row));
                }
            }
            return (
                arrow::array::new_null_array(&arrow_type(&self.column.ty), n_rows),
                failures,
            );
        };
        let array = match input.as_any().downcast_ref::<StringArray>() {
            Some(text) => self.cast_text(text, &mut failures),
            None => self.cast_typed(input, &mut failures),
        };
        (array, failures)
    }

    fn missing(&self, row: usize) -> ColumnFailure {
        ColumnFailure {
            row,
            code: "missing",
            message: format!("{}: value is required but empty", self.column.name),
        }
    }

    fn fail(&self, row: usize, code: &'static str, message: String) -> ColumnFailure {
        ColumnFailure {
            row,
            code,
            message: format!("{}: {message}", self.column.name),
        }
    }

    /// Applies map, trimming and null spellings; None means null. Inline for the usual
    /// value (nothing to trim, no null spelling or ASCII map key of its length): a test of
    /// its two ends and a bit; the rest in [`Self::normalize_other`]. One-byte values
    /// (a passenger count, a flag) and codes a column maps but that are no key of it
    /// (`1` where the keys are `CSH`, `CRD`) stay on this path.
    #[inline]
    fn normalize<'v>(&'v self, raw: Option<&'v str>) -> Option<&'v str> {
        let v = raw?;
        let bytes = v.as_bytes();
        let (Some(first), Some(last)) = (bytes.first(), bytes.last()) else {
            return None;
        };
        if first.is_ascii_graphic()
            && last.is_ascii_graphic()
            && self.special_lengths & length_bit(bytes.len()) == 0
            // A value that is not ASCII may lower to a key of another length.
            && (!self.maps || v.is_ascii())
        {
            return Some(v);
        }
        self.normalize_other(v)
    }

    #[inline(never)]
    fn normalize_other<'v>(&'v self, v: &'v str) -> Option<&'v str> {
        // Most values start and end with a visible ASCII character: nothing to trim, and no
        // UTF-8 decoding at either end to find that out.
        let v = match v.as_bytes() {
            [first, .., last] if first.is_ascii_graphic() && last.is_ascii_graphic() => v,
            [only] if only.is_ascii_graphic() => v,
            _ => v.trim(),
        };
        if v.is_empty()
            || (self.null_lengths & length_bit(v.len()) != 0
                && self.null_values.iter().any(|n| n == v))
        {
            return None;
        }
        if let Some(mapped) = self.mapped(v) {
            return (!mapped.is_empty()).then_some(mapped);
        }
        Some(v)
    }

    /// The value `v` maps to (keys compare case-insensitively). Short ASCII values, the
    /// usual codes, are lowered on the stack: no allocation per value.
    fn mapped(&self, v: &str) -> Option<&str> {
        if !self.maps {
            return None;
        }
        let mut buf = [0u8; 32];
        let found = if v.is_ascii() {
            // Lowering ASCII keeps its length: a longer value cannot be a key.
            if v.len() > self.rules.longest_map_key {
                return None;
            }
            if v.len() > buf.len() {
                return self
                    .column
                    .map
                    .get(&v.to_ascii_lowercase())
                    .map(String::as_str);
            }
            let lowered = &mut buf[..v.len()];
            lowered.copy_from_slice(v.as_bytes());
            lowered.make_ascii_lowercase();
            // ASCII lowered is ASCII.
            std::str::from_utf8(lowered)
                .ok()
                .and_then(|k| self.column.map.get(k))
        } else {
            self.column.map.get(&v.to_lowercase())
        };
        found.map(String::as_str)
    }

    fn check_text(&self, row: usize, v: &str) -> Option<ColumnFailure> {
        if let Some(re) = &self.rules.pattern
            && !re.is_match(v)
        {
            return Some(self.fail(
                row,
                "pattern",
                format!(
                    "{v:?} does not match pattern {}",
                    self.column.pattern.as_deref().unwrap_or_default()
                ),
            ));
        }
        if !self.rules.allowed.is_empty() && !self.rules.allowed.contains(v) {
            let mut allowed: Vec<&str> = self.column.allowed.iter().map(String::as_str).collect();
            allowed.truncate(10);
            return Some(self.fail(
                row,
                "not_allowed",
                format!(
                    "{v:?} is not one of the allowed values ({})",
                    allowed.join(", ")
                ),
            ));
        }
        None
    }

    /// Whether `x` is within the column's `min` and `max`: two comparisons inline, the
    /// failure's message only for a value outside.
    #[inline]
    fn in_range(&self, row: usize, x: f64, shown: &str) -> Result<(), ColumnFailure> {
        let (lo, hi) = self.rules.bounds;
        if lo <= x && x <= hi {
            return Ok(());
        }
        self.check_range(row, x, shown).map_or(Ok(()), Err)
    }

    #[inline(never)]
    fn check_range(&self, row: usize, x: f64, shown: &str) -> Option<ColumnFailure> {
        if let Some(min) = self.column.min
            && x < min
        {
            return Some(self.fail(
                row,
                "below_min",
                format!("{shown} is below the minimum {min}"),
            ));
        }
        if let Some(max) = self.column.max
            && x > max
        {
            return Some(self.fail(
                row,
                "above_max",
                format!("{shown} is above the maximum {max}"),
            ));
        }
        None
    }

    fn cast_text(&self, text: &StringArray, failures: &mut Vec<ColumnFailure>) -> ArrayRef {
        let n = text.len();
        // Most columns have neither a pattern nor allowed values: no call per value.
        let text_rules = self.rules.pattern.is_some() || !self.rules.allowed.is_empty();
        macro_rules! each_value {
            ($builder:expr, |$row:ident, $v:ident| $parse:expr) => {{
                let mut builder = $builder;
                for $row in 0..n {
                    let raw = (!text.is_null($row)).then(|| text.value($row));
                    match self.normalize(raw) {
                        None => {
                            if !self.column.nullable {
                                failures.push(self.missing($row));
                            }
                            builder.append_null();
                        }
                        Some($v) => {
                            if text_rules && let Some(f) = self.check_text($row, $v) {
                                failures.push(f);
                                builder.append_null();
                                continue;
                            }
                            match $parse {
                                Ok(value) => builder.append_value(value),
                                Err(f) => {
                                    failures.push(f);
                                    builder.append_null();
                                }
                            }
                        }
                    }
                }
                Arc::new(builder.finish()) as ArrayRef
            }};
        }
        match &self.column.ty {
            ColumnType::String => each_value!(
                StringBuilder::with_capacity(n, text.value_data().len()),
                |row, v| Ok::<_, ColumnFailure>(v)
            ),
            ColumnType::Int => each_value!(Int64Builder::with_capacity(n), |row, v| {
                parse_int(v)
                    .ok_or_else(|| self.fail(row, "bad_int", format!("{v:?} is not an integer")))
                    .and_then(|x| self.in_range(row, x as f64, v).map(|()| x))
            }),
            ColumnType::Float => each_value!(Float64Builder::with_capacity(n), |row, v| {
                parse_float(v)
                    .filter(|x| x.is_finite())
                    .ok_or_else(|| self.fail(row, "bad_number", format!("{v:?} is not a number")))
                    .and_then(|x| self.in_range(row, x, v).map(|()| x))
            }),
            ColumnType::Decimal { precision, scale } => {
                let (p, s) = (*precision, *scale);
                let (lo, hi) = self.rules.decimal_bounds;
                let unit = 10f64.powi(s as i32);
                let array = each_value!(Decimal128Builder::with_capacity(n), |row, v| {
                    parse_decimal(v, p, s)
                        .ok_or_else(|| {
                            self.fail(
                                row,
                                "bad_decimal",
                                format!("{v:?} is not a decimal({p},{s})"),
                            )
                        })
                        .and_then(|x| {
                            if (lo..=hi).contains(&x) {
                                return Ok(x);
                            }
                            // Out of range: i128 to f64 (a library call) only to say why.
                            match self.check_range(row, x as f64 / unit, v) {
                                Some(f) => Err(f),
                                None => Ok(x),
                            }
                        })
                });
                let decimal = array
                    .as_any()
                    .downcast_ref::<arrow::array::Decimal128Array>()
                    .expect("built as Decimal128")
                    .clone()
                    .with_precision_and_scale(p, s)
                    .expect("precision and scale were validated with the contract");
                Arc::new(decimal)
            }
            ColumnType::Bool => each_value!(BooleanBuilder::with_capacity(n), |row, v| {
                parse_bool(v).ok_or_else(|| {
                    self.fail(
                        row,
                        "bad_bool",
                        format!("{v:?} is not a boolean (true/false, yes/no, 1/0)"),
                    )
                })
            }),
            ColumnType::Date => each_value!(Date32Builder::with_capacity(n), |row, v| {
                self.parse_date(v).ok_or_else(|| {
                    self.fail(
                        row,
                        "bad_date",
                        format!("{v:?} is not a date{}", self.formats_hint()),
                    )
                })
            }),
            ColumnType::Timestamp => {
                let array = each_value!(TimestampMicrosecondBuilder::with_capacity(n), |row, v| {
                    self.parse_timestamp(row, v)
                });
                Arc::new(
                    array
                        .as_any()
                        .downcast_ref::<arrow::array::TimestampMicrosecondArray>()
                        .expect("built as timestamps")
                        .clone()
                        .with_timezone("UTC"),
                )
            }
        }
    }

    fn formats_hint(&self) -> String {
        if self.column.formats.is_empty() {
            " (expected ISO 8601)".into()
        } else {
            format!(" (expected format {})", self.column.formats.join(" or "))
        }
    }

    fn parse_date(&self, v: &str) -> Option<i32> {
        let date = if self.column.formats.is_empty() {
            NaiveDate::parse_from_str(v, "%Y-%m-%d").ok()
        } else {
            self.column
                .formats
                .iter()
                .find_map(|f| NaiveDate::parse_from_str(v, f).ok())
        }?;
        let epoch = NaiveDate::from_ymd_opt(1970, 1, 1).expect("valid date");
        i32::try_from((date - epoch).num_days()).ok()
    }

    fn parse_timestamp(&self, row: usize, v: &str) -> Result<i64, ColumnFailure> {
        // The value's wall clock, as microseconds since the epoch of that clock.
        let local = if self.column.formats.is_empty() {
            if let Ok(t) = chrono::DateTime::parse_from_rfc3339(v) {
                return Ok(t.timestamp_micros());
            }
            parse_iso_micros(v)
        } else {
            self.column.formats.iter().find_map(|f| {
                if f == "%Y-%m-%d %H:%M:%S" {
                    parse_iso_micros(v)
                } else {
                    NaiveDateTime::parse_from_str(v, f)
                        .ok()
                        .map(|naive| naive.and_utc().timestamp_micros())
                }
            })
        };
        let Some(local) = local else {
            return Err(self.fail(
                row,
                "bad_timestamp",
                format!("{v:?} is not a timestamp{}", self.formats_hint()),
            ));
        };
        match self.rules.tz {
            None => Ok(local),
            Some(tz) => match self.rules.hours.to_utc_micros(tz, local) {
                Some(t) => Ok(t),
                None => Err(self.fail(
                    row,
                    "bad_timestamp",
                    format!("{v:?} does not exist in {tz} (skipped by a daylight-saving change)"),
                )),
            },
        }
    }

    /// Typed input (Parquet): cast with Arrow, then apply the same rules.
    fn cast_typed(&self, input: &ArrayRef, failures: &mut Vec<ColumnFailure>) -> ArrayRef {
        let target = arrow_type(&self.column.ty);
        let needs_text_rules = self.rules.pattern.is_some()
            || !self.rules.allowed.is_empty()
            || !self.column.map.is_empty();
        if needs_text_rules
            || matches!(
                input.data_type(),
                DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View
            )
        {
            // Text rules are defined on text: go through the text path.
            let text = cast_with_options(input, &DataType::Utf8, &CastOptions::default());
            if let Ok(text) = text
                && let Some(text) = text.as_any().downcast_ref::<StringArray>()
            {
                return self.cast_text(text, failures);
            }
        }
        let source = match (input.data_type(), &self.rules.tz) {
            // Naive timestamps are local time in the column's zone.
            (DataType::Timestamp(unit, None), Some(tz)) => cast_with_options(
                input,
                &DataType::Timestamp(*unit, Some(tz.name().into())),
                &CastOptions::default(),
            )
            .unwrap_or_else(|_| input.clone()),
            _ => input.clone(),
        };
        let options = CastOptions {
            safe: true,
            ..Default::default()
        };
        let cast = cast_with_options(&source, &target, &options)
            .unwrap_or_else(|_| arrow::array::new_null_array(&target, input.len()));
        for row in 0..input.len() {
            if input.is_null(row) {
                if !self.column.nullable {
                    failures.push(self.missing(row));
                }
            } else if cast.is_null(row) {
                failures.push(self.fail(
                    row,
                    "bad_value",
                    format!(
                        "value of type {} cannot be read as {}",
                        input.data_type(),
                        self.column.ty.name()
                    ),
                ));
            }
        }
        if (self.column.min.is_some() || self.column.max.is_some())
            && let Ok(as_f64) = cast_with_options(&cast, &DataType::Float64, &options)
            && let Some(values) = as_f64.as_any().downcast_ref::<arrow::array::Float64Array>()
        {
            for row in 0..values.len() {
                if values.is_valid(row)
                    && let Some(f) =
                        self.check_range(row, values.value(row), &values.value(row).to_string())
                {
                    failures.push(f);
                }
            }
        }
        cast
    }
}

fn parse_int(v: &str) -> Option<i64> {
    if let Ok(x) = v.parse::<i64>() {
        return Some(x);
    }
    // "3.0" is an integer written by a tool that only knows floats.
    let x: f64 = v.parse().ok()?;
    (x.fract() == 0.0 && x.abs() < 9.0e15).then_some(x as i64)
}

fn parse_bool(v: &str) -> Option<bool> {
    let is = |words: &[&str]| words.iter().any(|w| v.eq_ignore_ascii_case(w));
    if is(&["true", "t", "yes", "y", "1"]) {
        Some(true)
    } else if is(&["false", "f", "no", "n", "0"]) {
        Some(false)
    } else {
        None
    }
}

/// Parses a decimal, rounding half away from zero to `scale` digits (arrow's parser truncates).
fn parse_decimal(v: &str, precision: u8, scale: i8) -> Option<i128> {
    if let Some(plain) = parse_plain_decimal(v, precision, scale) {
        return plain;
    }
    parse_decimal_any(v, precision, scale)
}

/// The common spelling, `-?digits[.digits]` with at most 18 digits, in one pass over its
/// bytes into an i64 (no exponent, sign or overflow handling per digit, no second parse to
/// round). None: another spelling, for [`parse_decimal_any`]; Some(None): a plain number
/// that does not fit.
fn parse_plain_decimal(v: &str, precision: u8, scale: i8) -> Option<Option<i128>> {
    let b = v.as_bytes();
    let (negative, digits) = match b.first()? {
        b'-' => (true, &b[1..]),
        _ => (false, b),
    };
    // 18 digits and a point at most: the mantissa fits an i64.
    if digits.is_empty() || digits.len() > 19 || !(0..=18).contains(&scale) {
        return None;
    }
    let mut mantissa: i64 = 0;
    let mut frac_digits: Option<u32> = None;
    for (i, &c) in digits.iter().enumerate() {
        match c {
            b'0'..=b'9' if i < 18 || frac_digits.is_some() => {
                mantissa = mantissa * 10 + i64::from(c - b'0');
                if let Some(f) = &mut frac_digits {
                    *f += 1;
                }
            }
            // One point, with digits on both sides.
            b'.' if frac_digits.is_none() && i > 0 && i + 1 < digits.len() => frac_digits = Some(0),
            _ => return None,
        }
    }
    let frac_digits = frac_digits.unwrap_or(0);
    let scale = scale as u32;
    let mut value = i128::from(mantissa);
    if frac_digits <= scale {
        value *= 10i128.pow(scale - frac_digits);
    } else {
        // Round half away from zero to `scale` digits.
        let divisor = 10i128.pow(frac_digits - scale);
        let (q, r) = (value / divisor, value % divisor);
        value = if r * 2 >= divisor { q + 1 } else { q };
    }
    let fits = value < 10i128.pow(u32::from(precision.min(38)));
    Some(fits.then_some(if negative { -value } else { value }))
}

/// Any spelling arrow parses (exponents, a sign, a bare point), rounded like
/// [`parse_plain_decimal`].
fn parse_decimal_any(v: &str, precision: u8, scale: i8) -> Option<i128> {
    use arrow::compute::kernels::cast_utils::parse_decimal as arrow_parse;
    use arrow::datatypes::Decimal128Type;
    let frac_digits = v
        .split_once('.')
        .map(|(_, f)| f.bytes().take_while(u8::is_ascii_digit).count())
        .unwrap_or(0);
    let has_exponent = v.contains(['e', 'E']);
    if has_exponent || frac_digits as i8 <= scale {
        return arrow_parse::<Decimal128Type>(v, precision, scale).ok();
    }
    let extra = (frac_digits as i8 - scale) as u32;
    let wide_precision = (precision as u32 + extra).min(38) as u8;
    let wide = arrow_parse::<Decimal128Type>(v, wide_precision, frac_digits as i8).ok()?;
    let divisor = 10i128.checked_pow(extra)?;
    let (q, r) = (wide / divisor, wide % divisor);
    let rounded = if r.abs() * 2 >= divisor {
        q + wide.signum()
    } else {
        q
    };
    (rounded.abs() < 10i128.pow(precision as u32)).then_some(rounded)
}

/// A float, as `str::parse` reads it. The usual spelling, `-?digits.digits` with at most
/// 15 digits (a coordinate, a distance), is read in one pass into an integer and divided
/// by a power of ten: both are exact in an f64, so the one rounded division is the
/// correctly rounded value (Clinger's fast path, which the standard parser also takes,
/// after a general scan that cost ~150 instructions a value). Any other spelling goes to
/// the standard parser.
fn parse_float(v: &str) -> Option<f64> {
    const POW10: [f64; 16] = [
        1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15,
    ];
    let b = v.as_bytes();
    let (negative, digits) = match b.first() {
        Some(b'-') => (true, &b[1..]),
        _ => (false, b),
    };
    if digits.is_empty() || digits.len() > 16 {
        return v.parse().ok();
    }
    let mut mantissa: u64 = 0;
    let mut point: Option<usize> = None;
    for (i, &c) in digits.iter().enumerate() {
        let d = c.wrapping_sub(b'0');
        if d < 10 {
            mantissa = mantissa * 10 + u64::from(d);
        } else if c == b'.' && point.is_none() && i > 0 && i + 1 < digits.len() {
            point = Some(i);
        } else {
            return v.parse().ok();
        }
    }
    let fraction = point.map_or(0, |p| digits.len() - p - 1);
    let count = digits.len() - usize::from(point.is_some());
    if count > 15 {
        return v.parse().ok();
    }
    let x = mantissa as f64 / POW10[fraction];
    Some(if negative { -x } else { x })
}

/// `YYYY-MM-DD HH:MM:SS[.f]` (also with `T`, up to 9 fractional digits, truncated to
/// microseconds), the commonest timestamp spelling, as microseconds since the epoch of
/// its own wall clock. That spelling is read straight into the count (only the date goes
/// through chrono: its time and epoch conversions took most of ~330 instructions a value,
/// the largest share of a taxi row's cast); others go through chrono's parser.
fn parse_iso_micros(v: &str) -> Option<i64> {
    let b = v.as_bytes();
    if b.len() < 19
        || b[4] != b'-'
        || b[7] != b'-'
        || !(b[10] == b' ' || b[10] == b'T')
        || b[13] != b':'
        || b[16] != b':'
    {
        return NaiveDateTime::parse_from_str(v, "%Y-%m-%d %H:%M:%S%.f")
            .or_else(|_| NaiveDateTime::parse_from_str(v, "%Y-%m-%dT%H:%M:%S%.f"))
            .ok()
            .map(|naive| naive.and_utc().timestamp_micros());
    }
    let num = |digits: &[u8]| -> Option<u32> {
        digits.iter().try_fold(0u32, |acc, &c| {
            let d = c.wrapping_sub(b'0');
            (d < 10).then_some(acc * 10 + u32::from(d))
        })
    };
    let (year, month, day) = (num(&b[0..4])?, num(&b[5..7])?, num(&b[8..10])?);
    let (hour, minute, second) = (num(&b[11..13])?, num(&b[14..16])?, num(&b[17..19])?);
    // chrono checks the date (month lengths, leap years) and counts its days.
    let date = NaiveDate::from_ymd_opt(i32::try_from(year).ok()?, month, day)?;
    if hour > 23 || minute > 59 || second > 59 {
        return None;
    }
    let mut micros = 0u32;
    if b.len() > 19 {
        if b[19] != b'.' || b.len() == 20 || b.len() > 29 {
            return None;
        }
        let frac = &b[20..];
        let digits = num(frac)?;
        micros = match frac.len() {
            n @ 1..=6 => digits * 10u32.pow(6 - n as u32),
            n => digits / 10u32.pow(n as u32 - 6),
        };
    }
    // Days from 0001-01-01 (day 1) to 1970-01-01.
    const EPOCH_DAYS_FROM_CE: i64 = 719_163;
    let days = i64::from(date.num_days_from_ce()) - EPOCH_DAYS_FROM_CE;
    let seconds = days * 86_400 + i64::from(hour * 3600 + minute * 60 + second);
    Some(seconds * 1_000_000 + i64::from(micros))
}

#[cfg(test)]
mod tests;
