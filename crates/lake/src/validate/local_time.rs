//! `to_local_time` for contract expressions: DataFusion's function, with the zone's
//! offset asked once per hour instead of once per value.
//!
//! The taxi contract derives `pickup_at_local` and `dropoff_at_local` with
//! `to_local_time(arrow_cast(ts, 'Timestamp(µs, "America/New_York")'))`: DataFusion asks
//! the zone for each value's offset (a search through its transitions), which was most
//! of the function's cost. This one keeps each UTC hour's offset in [`HourSlots`], per
//! zone, for every object cast with the contract, and computes the rest as DataFusion
//! does: the same types, nulls and values. An hour that holds a transition is asked
//! value by value; any input it does not cover (other units, scalars, a value a
//! `DateTime` cannot hold) goes to DataFusion's own implementation, errors included.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};

use arrow::array::timezone::Tz;
use arrow::array::{ArrayRef, AsArray as _, PrimitiveArray};
use arrow::datatypes::{DataType, TimeUnit, TimestampMicrosecondType};
use chrono::{DateTime, Offset as _, TimeZone as _};
use datafusion::common::Result;
use datafusion::functions::datetime::to_local_time::ToLocalTimeFunc;
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature,
};

use crate::hour_slots::HourSlots;

const HOUR_MICROS: i64 = 3_600_000_000;

/// The `to_local_time` contract expressions call.
pub(crate) fn udf() -> ScalarUDF {
    ScalarUDF::new_from_impl(CachedLocalTime::new())
}

#[derive(Debug)]
struct CachedLocalTime {
    inner: ToLocalTimeFunc,
    /// Each zone's offsets by UTC hour, by the zone's name as the type spells it.
    zones: Mutex<HashMap<String, Arc<HourSlots>>>,
}

// The function is its definition: the cache does not make two instances differ.
impl PartialEq for CachedLocalTime {
    fn eq(&self, other: &Self) -> bool {
        self.inner == other.inner
    }
}

impl Eq for CachedLocalTime {}

impl Hash for CachedLocalTime {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.inner.hash(state);
    }
}

impl CachedLocalTime {
    fn new() -> Self {
        Self {
            inner: ToLocalTimeFunc::new(),
            zones: Mutex::default(),
        }
    }

    fn hours(&self, zone: &str) -> Arc<HourSlots> {
        let mut zones = self.zones.lock().unwrap_or_else(|p| p.into_inner());
        zones
            .entry(zone.to_string())
            .or_insert_with(|| Arc::new(HourSlots::new()))
            .clone()
    }

    /// `array` (microseconds in `zone`) as local times; None when a value needs
    /// DataFusion's own path.
    fn local_micros(&self, array: &ArrayRef, zone: &str) -> Option<ArrayRef> {
        let tz: Tz = zone.parse().ok()?;
        let hours = self.hours(zone);
        let values = array.as_primitive_opt::<TimestampMicrosecondType>()?;
        let local: PrimitiveArray<TimestampMicrosecondType> = values
            .try_unary(|ts| {
                let offset = match hours
                    .offset(ts.div_euclid(HOUR_MICROS), |hour| uniform_offset(&tz, hour))
                {
                    HourSlots::MIXED => offset_at(&tz, ts).ok_or(())?,
                    offset => offset,
                };
                ts.checked_add(i64::from(offset) * 1_000_000).ok_or(())
            })
            .ok()?;
        Some(std::sync::Arc::new(local))
    }
}

/// The zone's offset at `ts` (microseconds, UTC); None outside what a `DateTime` holds.
fn offset_at(tz: &Tz, ts: i64) -> Option<i32> {
    let utc = DateTime::from_timestamp_micros(ts)?.naive_utc();
    Some(tz.offset_from_utc_datetime(&utc).fix().local_minus_utc())
}

/// The offset through the UTC hour `hour`, or [`HourSlots::MIXED`] when its first and
/// last microsecond differ (a transition inside it) or are out of range.
fn uniform_offset(tz: &Tz, hour: i64) -> i32 {
    let Some((start, end)) = hour
        .checked_mul(HOUR_MICROS)
        .and_then(|start| Some((start, start.checked_add(HOUR_MICROS - 1)?)))
    else {
        return HourSlots::MIXED;
    };
    match (offset_at(tz, start), offset_at(tz, end)) {
        (Some(a), Some(b)) if a == b => a,
        _ => HourSlots::MIXED,
    }
}

impl ScalarUDFImpl for CachedLocalTime {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn signature(&self) -> &Signature {
        self.inner.signature()
    }

    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        self.inner.return_type(arg_types)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        if let [ColumnarValue::Array(array)] = args.args.as_slice()
            && let DataType::Timestamp(TimeUnit::Microsecond, Some(zone)) = array.data_type()
            && let Some(local) = self.local_micros(array, zone)
        {
            return Ok(ColumnarValue::Array(local));
        }
        self.inner.invoke_with_args(args)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Array, TimestampMicrosecondArray};
    use arrow::datatypes::Field;
    use datafusion::config::ConfigOptions;

    /// `f` over `input` as an array, or its error's text.
    fn try_invoke(f: &dyn ScalarUDFImpl, input: &ArrayRef) -> Result<ArrayRef, String> {
        let return_type = f.return_type(&[input.data_type().clone()]).unwrap();
        let args = ScalarFunctionArgs {
            args: vec![ColumnarValue::Array(input.clone())],
            arg_fields: vec![Arc::new(Field::new("t", input.data_type().clone(), true))],
            number_rows: input.len(),
            return_field: Arc::new(Field::new("r", return_type, true)),
            config_options: Arc::new(ConfigOptions::default()),
        };
        match f.invoke_with_args(args).map_err(|e| e.to_string())? {
            ColumnarValue::Array(a) => Ok(a),
            ColumnarValue::Scalar(s) => s.to_array().map_err(|e| e.to_string()),
        }
    }

    fn invoke(f: &dyn ScalarUDFImpl, input: &ArrayRef) -> ArrayRef {
        try_invoke(f, input).unwrap()
    }

    #[test]
    fn local_times_are_datafusions_across_transitions_and_before_the_epoch() {
        let ours = CachedLocalTime::new();
        let theirs = ToLocalTimeFunc::new();
        // Every 7 minutes and some seconds over days around transitions (whole-hour,
        // half-hour and one-minute-past-the-hour ones), with nulls; twice, the second
        // time from the cache.
        let cases = [
            (
                "America/New_York",
                ["2024-03-09T00:00:00Z", "2024-11-02T00:00:00Z"],
            ),
            (
                "Australia/Lord_Howe",
                ["2024-04-06T00:00:00Z", "2024-10-05T00:00:00Z"],
            ),
            (
                "America/St_Johns",
                ["2010-03-13T00:00:00Z", "2010-11-06T00:00:00Z"],
            ),
            (
                "Europe/London",
                ["1965-03-20T00:00:00Z", "1965-10-23T00:00:00Z"],
            ),
            ("+05:30", ["2024-01-01T00:00:00Z", "1960-01-01T00:00:00Z"]),
        ];
        for (zone, days) in cases {
            for day in days {
                let start = DateTime::parse_from_rfc3339(day)
                    .unwrap()
                    .timestamp_micros();
                let values: Vec<Option<i64>> = (0..(3 * 24 * 60 / 7))
                    .map(|step| {
                        (step % 50 != 0)
                            .then(|| start + step * 7 * 60_000_000 + step * 1_234_567 % 60_000_000)
                    })
                    .collect();
                let input: ArrayRef = Arc::new(
                    TimestampMicrosecondArray::from(values).with_timezone(zone.to_string()),
                );
                let want = invoke(&theirs, &input);
                for pass in 0..2 {
                    let got = invoke(&ours, &input);
                    assert_eq!(got.data_type(), want.data_type(), "{zone} {day}");
                    assert_eq!(&got, &want, "{zone} {day} (pass {pass})");
                }
            }
        }
    }

    #[test]
    fn values_a_date_cannot_hold_are_left_to_datafusion() {
        let ours = CachedLocalTime::new();
        let theirs = ToLocalTimeFunc::new();
        for extreme in [i64::MAX, i64::MIN, i64::MAX - 1] {
            let input: ArrayRef = Arc::new(
                TimestampMicrosecondArray::from(vec![Some(0), Some(extreme)])
                    .with_timezone("America/New_York"),
            );
            // The same answer, or the same error.
            assert_eq!(
                try_invoke(&ours, &input),
                try_invoke(&theirs, &input),
                "{extreme}"
            );
        }
    }

    #[test]
    fn inputs_it_does_not_cover_are_answered_by_datafusion() {
        let ours = CachedLocalTime::new();
        let theirs = ToLocalTimeFunc::new();
        let seconds: ArrayRef = Arc::new(
            arrow::array::TimestampSecondArray::from(vec![Some(1_700_000_000), None])
                .with_timezone("Europe/Paris"),
        );
        assert_eq!(&invoke(&ours, &seconds), &invoke(&theirs, &seconds));
        // A timestamp without a zone is returned as it is.
        let naive: ArrayRef = Arc::new(TimestampMicrosecondArray::from(vec![Some(5), None]));
        assert_eq!(&invoke(&ours, &naive), &naive);
    }
}
