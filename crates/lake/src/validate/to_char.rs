//! `to_char` for contract expressions: DataFusion's function, with the format parsed
//! once per batch instead of once per value.
//!
//! The taxi contract derives `pickup_day_of_week` with `to_char(pickup_at_local, '%A')`.
//! DataFusion formats each value through arrow's display, which hands chrono the format
//! string and has it parsed again for every value. For a column of local timestamps (no
//! zone) in microseconds and one format, this one parses it once into chrono's items
//! and formats each value with them: the same text, nulls and type. Anything else (other
//! types and units, a format per row, a format chrono refuses, a value chrono cannot
//! hold) goes to DataFusion's own implementation, errors included. A format of date
//! fields alone (`%A`, `%Y-%m-%d`) is formatted once per day the values fall on, and
//! the text reused for the day's other values: chrono's formatting took ~900
//! instructions a value, more than the rest of a taxi row's derived columns.

use std::fmt::Write as _;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray as _, StringBuilder};
use arrow::datatypes::{DataType, TimeUnit, TimestampMicrosecondType};
use arrow::temporal_conversions::as_datetime;
use chrono::format::{Fixed, Item, Numeric, StrftimeItems};
use datafusion::common::{Result, ScalarValue};
use datafusion::functions::datetime::to_char::ToCharFunc;
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature,
};

/// The `to_char` (and `date_format`) contract expressions call.
pub(crate) fn udf() -> ScalarUDF {
    ScalarUDF::new_from_impl(ParsedToChar {
        inner: ToCharFunc::new(),
    })
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct ParsedToChar {
    inner: ToCharFunc,
}

/// Whether a format's text depends on a value's date alone, not its time of day.
fn date_only(items: &[Item<'_>]) -> bool {
    items.iter().all(|item| match item {
        Item::Literal(_) | Item::OwnedLiteral(_) | Item::Space(_) | Item::OwnedSpace(_) => true,
        Item::Numeric(numeric, _) => matches!(
            numeric,
            Numeric::Year
                | Numeric::YearDiv100
                | Numeric::YearMod100
                | Numeric::IsoYear
                | Numeric::IsoYearDiv100
                | Numeric::IsoYearMod100
                | Numeric::Quarter
                | Numeric::Month
                | Numeric::Day
                | Numeric::WeekFromSun
                | Numeric::WeekFromMon
                | Numeric::IsoWeek
                | Numeric::NumDaysFromSun
                | Numeric::WeekdayFromMon
                | Numeric::Ordinal
        ),
        Item::Fixed(fixed) => matches!(
            fixed,
            Fixed::ShortMonthName
                | Fixed::LongMonthName
                | Fixed::ShortWeekdayName
                | Fixed::LongWeekdayName
        ),
        _ => false,
    })
}

/// Days a date-only format's texts are kept for, by day number modulo this: a month of
/// values in any order finds its day's text.
const DAY_SLOTS: usize = 64;

const MICROS_PER_DAY: i64 = 86_400_000_000;

/// `array` (local microseconds) formatted with `format`; None when a value or the
/// format needs DataFusion's own path.
fn format_local_micros(array: &ArrayRef, format: &str) -> Option<ArrayRef> {
    let values = array.as_primitive_opt::<TimestampMicrosecondType>()?;
    let items = StrftimeItems::new(format).parse_to_owned().ok()?;
    let mut out = StringBuilder::with_capacity(values.len(), values.len() * (format.len() + 10));
    let mut days: Vec<Option<(i64, String)>> = if date_only(&items) {
        vec![None; DAY_SLOTS]
    } else {
        Vec::new()
    };
    for value in values.iter() {
        let Some(value) = value else {
            out.append_null();
            continue;
        };
        if !days.is_empty() {
            let day = value.div_euclid(MICROS_PER_DAY);
            let slot = &mut days[day.rem_euclid(DAY_SLOTS as i64) as usize];
            if let Some((cached, text)) = slot
                && *cached == day
            {
                out.append_value(text);
                continue;
            }
            let naive = as_datetime::<TimestampMicrosecondType>(value)?;
            let mut text = String::new();
            write!(text, "{}", naive.format_with_items(items.iter())).ok()?;
            out.append_value(&text);
            *slot = Some((day, text));
            continue;
        }
        let naive = as_datetime::<TimestampMicrosecondType>(value)?;
        // Written straight into the builder's buffer, then committed as the value.
        write!(out, "{}", naive.format_with_items(items.iter())).ok()?;
        out.append_value("");
    }
    Some(Arc::new(out.finish()))
}

impl ScalarUDFImpl for ParsedToChar {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn aliases(&self) -> &[String] {
        self.inner.aliases()
    }

    fn signature(&self) -> &Signature {
        self.inner.signature()
    }

    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        self.inner.return_type(arg_types)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        if let [
            ColumnarValue::Array(array),
            ColumnarValue::Scalar(ScalarValue::Utf8(Some(format))),
        ] = args.args.as_slice()
            && let DataType::Timestamp(TimeUnit::Microsecond, None) = array.data_type()
            && let Some(text) = format_local_micros(array, format)
        {
            return Ok(ColumnarValue::Array(text));
        }
        self.inner.invoke_with_args(args)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::TimestampMicrosecondArray;
    use arrow::datatypes::Field;
    use datafusion::config::ConfigOptions;

    fn invoke(f: &dyn ScalarUDFImpl, input: &ArrayRef, format: &str) -> Result<ArrayRef> {
        let args = ScalarFunctionArgs {
            args: vec![
                ColumnarValue::Array(input.clone()),
                ColumnarValue::Scalar(ScalarValue::Utf8(Some(format.to_string()))),
            ],
            arg_fields: vec![
                Arc::new(Field::new("t", input.data_type().clone(), true)),
                Arc::new(Field::new("f", DataType::Utf8, false)),
            ],
            number_rows: input.len(),
            return_field: Arc::new(Field::new("r", DataType::Utf8, true)),
            config_options: Arc::new(ConfigOptions::default()),
        };
        Ok(match f.invoke_with_args(args)? {
            ColumnarValue::Array(a) => a,
            ColumnarValue::Scalar(s) => s.to_array()?,
        })
    }

    #[test]
    fn text_is_datafusions_for_every_format_and_value() {
        let ours = ParsedToChar {
            inner: ToCharFunc::new(),
        };
        let theirs = ToCharFunc::new();
        let values: Vec<Option<i64>> = (0..2_000i64)
            .map(|i| {
                (i % 17 != 0).then_some(
                    // From 1901 to 2038 in uneven steps, with microseconds.
                    -2_177_452_800_000_000 + i * 2_170_000_123_457,
                )
            })
            .collect();
        // And every 7 hours over 200 days, before and after the epoch: each day several
        // times, days far apart sharing a kept text's slot.
        let hours: Vec<Option<i64>> = (0..700i64)
            .map(|i| (i % 23 != 0).then_some(-100 * MICROS_PER_DAY + i * 7 * 3_600_000_000 + i))
            .collect();
        for values in [values.clone(), hours] {
            let naive: ArrayRef = Arc::new(TimestampMicrosecondArray::from(values));
            for format in [
                "%A",
                "%a %d %b %Y",
                "%Y-%m-%dT%H:%M:%S%.6f",
                "%j %U %W %u %w %G-W%V",
                "%I:%M %p, %e %B",
                "week %V of %G %%",
                "plain text",
                "",
                "%Y-%m-%d",
                "%d %B",
            ] {
                assert_eq!(
                    &invoke(&ours, &naive, format).unwrap(),
                    &invoke(&theirs, &naive, format).unwrap(),
                    "{format:?}"
                );
            }
        }
        let naive: ArrayRef = Arc::new(TimestampMicrosecondArray::from(values.clone()));
        // A format chrono refuses, or one a local time cannot fill, fails as it does.
        for format in ["%Q", "%Z", "%z"] {
            assert_eq!(
                invoke(&ours, &naive, format).map_err(|e| e.to_string()),
                invoke(&theirs, &naive, format).map_err(|e| e.to_string()),
                "{format:?}"
            );
        }
        // Zoned timestamps take DataFusion's path.
        let zoned: ArrayRef =
            Arc::new(TimestampMicrosecondArray::from(values).with_timezone("Asia/Tokyo"));
        assert_eq!(
            &invoke(&ours, &zoned, "%A %H:%M %Z").unwrap(),
            &invoke(&theirs, &zoned, "%A %H:%M %Z").unwrap()
        );
    }
}
