//! `md5` for contract expressions: DataFusion's function, computed many rows at a time.
//!
//! A derived key such as the taxi contract's `trip_id = md5(concat_ws(...))` hashes
//! every row. DataFusion's `md5` hashes one value at a time and allocates a digest and a
//! hex string per row; this one hashes the batch's values side by side in SIMD lanes
//! (`md5_many`, as the S3 endpoint's ETags do) and writes the hex digits into one buffer.
//! Same input types, same lowercase hex text, same nulls; it returns `Utf8`, the type a
//! derived column is stored as anyway.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray as _, StringArray, StringBuilder};
use arrow::datatypes::DataType;
use datafusion::common::utils::take_function_args;
use datafusion::common::{Result, ScalarValue, exec_err};
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature,
};
use md5_many::{Md5Digest, Md5Many};

/// The `md5` contract expressions call.
pub(crate) fn udf() -> ScalarUDF {
    ScalarUDF::new_from_impl(LaneMd5 {
        signature: datafusion::functions::crypto::md5::Md5Func::new()
            .signature()
            .clone(),
    })
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct LaneMd5 {
    signature: Signature,
}

impl ScalarUDFImpl for LaneMd5 {
    fn name(&self) -> &str {
        "md5"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::Utf8)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let [data] = take_function_args("md5", &args.args)?;
        match data {
            ColumnarValue::Array(array) => Ok(ColumnarValue::Array(Arc::new(md5_hex(array)?))),
            ColumnarValue::Scalar(value) => {
                let digest = md5_hex(&value.to_array()?)?;
                Ok(ColumnarValue::Scalar(ScalarValue::try_from_array(
                    &digest, 0,
                )?))
            }
        }
    }
}

/// The lowercase hex MD5 of each value (null stays null).
fn md5_hex(array: &ArrayRef) -> Result<StringArray> {
    let values: Vec<Option<&[u8]>> = match array.data_type() {
        DataType::Utf8 => bytes(array.as_string::<i32>().iter(), str::as_bytes),
        DataType::LargeUtf8 => bytes(array.as_string::<i64>().iter(), str::as_bytes),
        DataType::Utf8View => bytes(array.as_string_view().iter(), str::as_bytes),
        DataType::Binary => array.as_binary::<i32>().iter().collect(),
        DataType::LargeBinary => array.as_binary::<i64>().iter().collect(),
        DataType::BinaryView => array.as_binary_view().iter().collect(),
        DataType::Null => vec![None; array.len()],
        other => return exec_err!("md5 of a {other} value"),
    };
    let present: Vec<&[u8]> = values.iter().flatten().copied().collect();
    let mut digests: Vec<Md5Digest> = vec![[0; 16]; present.len()];
    engine().hash_many(&present, &mut digests);
    let mut out = StringBuilder::with_capacity(values.len(), 32 * present.len());
    let mut digests = digests.iter();
    let mut hex_digits = [0u8; 32];
    for value in &values {
        // One digest per present value, in order.
        match value.and_then(|_| digests.next()) {
            Some(digest) => {
                hex::encode_to_slice(digest, &mut hex_digits).expect("16 bytes are 32 hex digits");
                out.append_value(std::str::from_utf8(&hex_digits).expect("hex digits are ASCII"));
            }
            None => out.append_null(),
        }
    }
    Ok(out.finish())
}

fn bytes<'a>(
    values: impl Iterator<Item = Option<&'a str>>,
    as_bytes: fn(&str) -> &[u8],
) -> Vec<Option<&'a [u8]>> {
    values.map(|v| v.map(as_bytes)).collect()
}

/// The SIMD level, detected once.
fn engine() -> Md5Many {
    static ENGINE: std::sync::OnceLock<Md5Many> = std::sync::OnceLock::new();
    *ENGINE.get_or_init(Md5Many::new)
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{BinaryArray, LargeStringArray, StringViewArray};

    /// DataFusion's own `md5` over the same values, as text.
    fn datafusion_md5(array: ArrayRef) -> Vec<Option<String>> {
        let reference = ScalarUDF::from(datafusion::functions::crypto::md5::Md5Func::new());
        let n = array.len();
        let field = Arc::new(arrow::datatypes::Field::new(
            "v",
            array.data_type().clone(),
            true,
        ));
        let out = reference
            .invoke_with_args(ScalarFunctionArgs {
                args: vec![ColumnarValue::Array(array)],
                arg_fields: vec![field],
                number_rows: n,
                return_field: Arc::new(arrow::datatypes::Field::new(
                    "md5",
                    DataType::Utf8View,
                    true,
                )),
                config_options: Arc::new(Default::default()),
            })
            .and_then(|v| v.into_array(n))
            .unwrap();
        let out = arrow::compute::cast(&out, &DataType::Utf8).unwrap();
        out.as_string::<i32>()
            .iter()
            .map(|v| v.map(String::from))
            .collect()
    }

    fn ours(array: ArrayRef) -> Vec<Option<String>> {
        md5_hex(&array)
            .unwrap()
            .iter()
            .map(|v| v.map(String::from))
            .collect()
    }

    #[test]
    fn digests_match_datafusion_for_every_input_type_and_length() {
        // Lengths around the 55/56/64-byte padding boundaries, empty values and nulls.
        let texts: Vec<Option<String>> = (0..200)
            .map(|i| (i % 13 != 5).then(|| "héllo/".repeat(i / 6) + &"x".repeat(i % 7)))
            .collect();
        let refs: Vec<Option<&str>> = texts.iter().map(|t| t.as_deref()).collect();
        let arrays: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from(refs.clone())),
            Arc::new(LargeStringArray::from(refs.clone())),
            Arc::new(StringViewArray::from(refs.clone())),
            Arc::new(BinaryArray::from(
                refs.iter()
                    .map(|t| t.map(str::as_bytes))
                    .collect::<Vec<_>>(),
            )),
        ];
        for array in arrays {
            let want = datafusion_md5(array.clone());
            assert_eq!(ours(array.clone()), want, "{}", array.data_type());
        }
        assert_eq!(
            ours(Arc::new(StringArray::from(vec!["foo"])))[0].as_deref(),
            Some("acbd18db4cc2f85cedef654fccc4a4d8")
        );
    }
}
