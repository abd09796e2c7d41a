//! Source readers: CSV, JSON lines and Parquet, streamed batch by batch in bounded memory.
//!
//! Each reader maps the file's own column names onto the contract's columns
//! (names and `source` aliases, case-insensitive, spaces trimmed) and yields
//! [`SourceBatch`]es: one array per contract column, the line number of every
//! row, the raw fields (for quarantine) and any structural problem of a row
//! (wrong field count, invalid UTF-8). A file whose header lacks a required
//! column is refused whole with [`ReadError::MissingColumn`].

use std::io::{BufRead, BufReader, Read};
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, StringArray, StringBuilder};
use arrow::util::display::{ArrayFormatter, FormatOptions};
use sluice_model::config::Format;
use sluice_model::contract::Contract;

/// Why a whole source object cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The header lacks a column the contract requires.
    #[error(
        "line 1: header has no column for {column:?} (looked for: {looked_for}); header is: {header}"
    )]
    MissingColumn {
        /// Contract column.
        column: String,
        /// Names tried.
        looked_for: String,
        /// The header as read.
        header: String,
    },
    /// The file is not valid for its format (bad CSV quoting, not Parquet, …).
    #[error("line {line}: {why}")]
    Malformed {
        /// Where.
        line: u64,
        /// Why.
        why: String,
    },
    /// The object's key does not say which format it is.
    #[error(
        "cannot tell the format of {0:?}: use a .csv, .tsv, .txt, .jsonl, .ndjson, .json or .parquet key"
    )]
    UnknownFormat(String),
    /// Reading the bytes failed.
    #[error("reading the object: {0}")]
    Io(#[from] std::io::Error),
}

/// The kind of source file, from its key's suffix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceFormat {
    /// Delimited text.
    Csv,
    /// One JSON object per line.
    JsonLines,
    /// Apache Parquet.
    Parquet,
}

impl SourceFormat {
    /// Decides by the key's extension (a trailing `.gz` is not supported yet).
    pub fn from_key(key: &str) -> Option<Self> {
        let lower = key.to_ascii_lowercase();
        let ext = lower.rsplit('.').next()?;
        Some(match ext {
            "csv" | "tsv" | "txt" => SourceFormat::Csv,
            "jsonl" | "ndjson" | "json" => SourceFormat::JsonLines,
            "parquet" => SourceFormat::Parquet,
            _ => return None,
        })
    }
}

/// A row-level structural problem found while reading.
#[derive(Debug, Clone, PartialEq)]
pub struct RowProblem {
    /// Row index in the batch.
    pub row: usize,
    /// Reason code.
    pub code: &'static str,
    /// A sentence a person understands.
    pub message: String,
}

/// A batch of source rows, aligned to the contract's columns.
#[derive(Debug)]
pub struct SourceBatch {
    /// One array per contract column (None: the file lacks this optional column).
    pub columns: Vec<Option<ArrayRef>>,
    /// 1-based line (CSV, JSON lines) or row number (Parquet) of each row.
    pub lines: Vec<u64>,
    /// Structural problems of rows.
    pub problems: Vec<RowProblem>,
    /// Names of the raw fields (empty: `raw_columns[0]` holds the raw text of each row).
    pub raw_names: Arc<Vec<String>>,
    /// The raw fields as read.
    pub raw_columns: Vec<ArrayRef>,
}

impl SourceBatch {
    /// Rows in the batch.
    pub fn num_rows(&self) -> usize {
        self.lines.len()
    }

    /// The raw row as text: a JSON object of the file's fields, or the line itself.
    pub fn raw_row(&self, row: usize) -> String {
        self.raw_rows().row(row)
    }

    /// A renderer of this batch's raw rows (for many rows: it prepares each column once).
    pub fn raw_rows(&self) -> RawRows<'_> {
        let options = FormatOptions::default();
        RawRows {
            batch: self,
            names: self
                .raw_names
                .iter()
                .map(|n| serde_json::Value::String(n.clone()).to_string())
                .collect(),
            columns: self
                .raw_columns
                .iter()
                .map(|c| match c.as_any().downcast_ref::<StringArray>() {
                    Some(text) => RawColumn::Text(text),
                    None => ArrayFormatter::try_new(c.as_ref(), &options)
                        .map_or(RawColumn::Unprintable, RawColumn::Formatted),
                })
                .collect(),
        }
    }
}

/// Renders a [`SourceBatch`]'s rows as their raw text ([`SourceBatch::raw_row`]).
pub struct RawRows<'a> {
    batch: &'a SourceBatch,
    /// Each raw field's name as a JSON string.
    names: Vec<String>,
    columns: Vec<RawColumn<'a>>,
}

enum RawColumn<'a> {
    Text(&'a StringArray),
    Formatted(ArrayFormatter<'a>),
    /// A type arrow cannot display: rendered as null.
    Unprintable,
}

impl RawRows<'_> {
    /// The raw text of `row`: a JSON object of the file's fields in the file's order (each
    /// value as text), or the line itself when the batch kept lines.
    pub fn row(&self, row: usize) -> String {
        if self.batch.raw_names.is_empty() {
            return match self.columns.first() {
                Some(RawColumn::Text(c)) => c.value(row).to_string(),
                _ => String::new(),
            };
        }
        let mut out = Vec::with_capacity(16 * self.names.len());
        out.push(b'{');
        for (i, (name, column)) in self.names.iter().zip(&self.columns).enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(name.as_bytes());
            out.push(b':');
            let text = match column {
                _ if self.batch.raw_columns[i].is_null(row) => None,
                RawColumn::Text(c) => Some(std::borrow::Cow::Borrowed(c.value(row))),
                RawColumn::Formatted(f) => Some(f.value(row).to_string().into()),
                RawColumn::Unprintable => None,
            };
            // Writing a str into a Vec cannot fail; were it to, the value reads as null.
            let written = text.is_some_and(|t| json_string(&mut out, t.as_ref()));
            if !written {
                out.extend_from_slice(b"null");
            }
        }
        out.push(b'}');
        // Names and values went in as JSON strings of valid UTF-8.
        String::from_utf8(out).unwrap_or_default()
    }
}

fn normalize(name: &str) -> String {
    name.trim()
        .trim_start_matches('\u{feff}')
        .trim()
        .to_lowercase()
}

/// For each contract column, the index of the file column that feeds it.
fn map_columns(
    contract: &Contract,
    file_columns: &[String],
) -> Result<Vec<Option<usize>>, ReadError> {
    let normalized: Vec<String> = file_columns.iter().map(|c| normalize(c)).collect();
    contract
        .columns
        .iter()
        .map(|col| {
            let candidates: Vec<String> = std::iter::once(col.name.as_str())
                .chain(col.source.iter().map(String::as_str))
                .map(normalize)
                .collect();
            let found = candidates
                .iter()
                .find_map(|c| normalized.iter().position(|h| h == c));
            match found {
                Some(i) => Ok(Some(i)),
                None if col.optional => Ok(None),
                None => Err(ReadError::MissingColumn {
                    column: col.name.clone(),
                    looked_for: candidates.join(", "),
                    header: file_columns
                        .iter()
                        .map(|h| h.trim())
                        .collect::<Vec<_>>()
                        .join(","),
                }),
            }
        })
        .collect()
}

/// A source of batches.
pub trait Source: Send {
    /// The next batch of at most `max_rows` rows, or None at the end.
    fn next_batch(&mut self, max_rows: usize) -> Result<Option<SourceBatch>, ReadError>;
}

/// Opens a reader for a source object (of `size` bytes, when known).
pub fn open(
    format: SourceFormat,
    reader: Box<dyn Read + Send>,
    parquet_file: Option<std::fs::File>,
    contract: &Contract,
    options: &Format,
    size: Option<u64>,
) -> Result<Box<dyn Source>, ReadError> {
    Ok(match format {
        SourceFormat::Csv => Box::new(CsvSource::sized(reader, contract, options, size)?),
        SourceFormat::JsonLines => Box::new(JsonLinesSource::new(reader, contract)),
        SourceFormat::Parquet => {
            let file = parquet_file.ok_or_else(|| ReadError::Malformed {
                line: 0,
                why: "Parquet sources must be seekable files".into(),
            })?;
            Box::new(ParquetSource::new(file, contract)?)
        }
    })
}

/// Appends `text` as a JSON string, as serde_json writes it: most values need no escape
/// and are copied between quotes as they are.
fn json_string(out: &mut Vec<u8>, text: &str) -> bool {
    if text.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
        out.push(b'"');
        out.extend_from_slice(text.as_bytes());
        out.push(b'"');
        return true;
    }
    serde_json::to_writer(out, text).is_ok()
}

/// Where the newlines are in the bytes read so far but not yet consumed as records.
///
/// The csv crate's own line numbers skip blank lines, so lines are counted
/// here from the raw bytes: a record's line is 1 + the newlines before its
/// first byte. Only newlines past the last record are kept, so memory stays
/// bounded by the reader's buffer.
#[derive(Default)]
struct LineIndex {
    pending: std::collections::VecDeque<u64>,
    bytes: u64,
    newlines_consumed: u64,
}

struct LineCounting {
    inner: Box<dyn Read + Send>,
    index: Arc<std::sync::Mutex<LineIndex>>,
}

impl Read for LineCounting {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        let mut index = self.index.lock().unwrap_or_else(|p| p.into_inner());
        let base = index.bytes;
        for pos in memchr::memchr_iter(b'\n', &buf[..n]) {
            index.pending.push_back(base + pos as u64);
        }
        index.bytes += n as u64;
        Ok(n)
    }
}

impl LineIndex {
    fn line_at(&mut self, byte: u64) -> u64 {
        while self.pending.front().is_some_and(|&nl| nl < byte) {
            self.pending.pop_front();
            self.newlines_consumed += 1;
        }
        self.newlines_consumed + 1
    }
}

/// CSV: any delimiter, quoted fields, CRLF, a UTF-8 BOM, blank lines, stray spaces in the header, trailing empty fields.
pub struct CsvSource {
    reader: csv::Reader<LineCounting>,
    lines: Arc<std::sync::Mutex<LineIndex>>,
    header: Arc<Vec<String>>,
    mapping: Vec<Option<usize>>,
    record: csv::ByteRecord,
    /// Each column's text bytes per row in the batch before (in 1/256ths of a byte):
    /// the next batch's buffers are sized by them, so they do not grow (a reallocation
    /// copies the buffer and touches fresh pages) while a batch is read.
    widths: Vec<usize>,
    /// The object's size, when known: no column of the first batch holds more text.
    size: Option<u64>,
}

/// The CSV reader's buffer: at most this, at least [`MIN_BUFFER`].
const MAX_BUFFER: usize = 1 << 20;
const MIN_BUFFER: usize = 8 << 10;

impl CsvSource {
    /// Reads the header and maps it onto the contract.
    pub fn new(
        reader: Box<dyn Read + Send>,
        contract: &Contract,
        options: &Format,
    ) -> Result<Self, ReadError> {
        Self::sized(reader, contract, options, None)
    }

    /// [`CsvSource::new`] for an object of `size` bytes: its buffers are sized to it.
    /// The reader's buffer is zeroed once before its first read (the standard library
    /// initializes a buffer handed to a plain `Read`), so a 1 MiB buffer under each
    /// 150 KB object zeroed and faulted in 1 MiB per object.
    pub fn sized(
        reader: Box<dyn Read + Send>,
        contract: &Contract,
        options: &Format,
        size: Option<u64>,
    ) -> Result<Self, ReadError> {
        let capacity = size.map_or(MAX_BUFFER, |s| {
            usize::try_from(s.saturating_add(1))
                .unwrap_or(MAX_BUFFER)
                .clamp(MIN_BUFFER, MAX_BUFFER)
        });
        let lines = Arc::new(std::sync::Mutex::new(LineIndex::default()));
        let reader = LineCounting {
            inner: reader,
            index: lines.clone(),
        };
        let mut reader = csv::ReaderBuilder::new()
            .delimiter(options.delimiter)
            .quote(options.quote)
            .flexible(true)
            .has_headers(true)
            .buffer_capacity(capacity)
            .from_reader(reader);
        let header = reader.byte_headers().map_err(csv_error)?.clone();
        if header.is_empty() || (header.len() == 1 && header[0].is_empty()) {
            return Err(ReadError::Malformed {
                line: 1,
                why: "the file is empty: no header".into(),
            });
        }
        let header: Vec<String> = header
            .iter()
            .map(|h| {
                String::from_utf8_lossy(h)
                    .trim()
                    .trim_start_matches('\u{feff}')
                    .to_string()
            })
            .collect();
        let mapping = map_columns(contract, &header)?;
        Ok(Self {
            reader,
            lines,
            header: Arc::new(header),
            mapping,
            record: csv::ByteRecord::new(),
            widths: Vec::new(),
            size,
        })
    }
}

fn csv_error(e: csv::Error) -> ReadError {
    let line = e.position().map(|p| p.line()).unwrap_or(0);
    match e.into_kind() {
        csv::ErrorKind::Io(io) => ReadError::Io(io),
        other => ReadError::Malformed {
            line,
            why: format!("{other:?}"),
        },
    }
}

impl Source for CsvSource {
    fn next_batch(&mut self, max_rows: usize) -> Result<Option<SourceBatch>, ReadError> {
        let width = self.header.len();
        let rows = max_rows.min(8192);
        let mut builders: Vec<StringBuilder> = (0..width)
            .map(|i| {
                // A column's bytes in the batch before, scaled to this one, plus an eighth.
                let bytes = self.widths.get(i).map_or_else(
                    || {
                        // The first batch: a guess, no larger than the object.
                        let most = self
                            .size
                            .map_or(usize::MAX, |s| usize::try_from(s).unwrap_or(usize::MAX));
                        (16 * rows).min(most)
                    },
                    |w| w * rows / 256,
                );
                StringBuilder::with_capacity(rows, bytes + bytes / 8 + 64)
            })
            .collect();
        let mut lines = Vec::with_capacity(max_rows.min(8192));
        let mut problems = Vec::new();
        while lines.len() < max_rows {
            if !self
                .reader
                .read_byte_record(&mut self.record)
                .map_err(csv_error)?
            {
                break;
            }
            let row = lines.len();
            // The record's last line ends at its terminator, just before the reader's position
            // (the csv crate's own record positions count skipped blank lines wrongly).
            let end = self.reader.position().byte();
            let last_line = self
                .lines
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .line_at(end.saturating_sub(1));
            // One count over the record's fields, stored end to end.
            let embedded = memchr::memchr_iter(b'\n', self.record.as_slice()).count() as u64;
            let line = last_line.saturating_sub(embedded);
            let fields = self.record.len();
            // A record of one empty field is a blank line (or one holding only a stray CR).
            if fields == 1 && self.record[0].iter().all(|b| *b == b'\r' || *b == b' ') {
                continue;
            }
            lines.push(line);
            if fields < width {
                problems.push(RowProblem {
                    row,
                    code: "field_count",
                    message: format!("row has {fields} fields but the header has {width}"),
                });
            } else if fields > width && self.record.iter().skip(width).any(|f| !f.is_empty()) {
                problems.push(RowProblem {
                    row,
                    code: "field_count",
                    message: format!(
                        "row has {fields} fields but the header has {width} (the extra fields are not empty)"
                    ),
                });
            }
            // The record's UTF-8 checked in one pass (fields split at ASCII bytes are then
            // text too), not field by field; a record that is not text goes field by
            // field to name the bad ones.
            match csv::StringRecord::from_byte_record(std::mem::take(&mut self.record)) {
                Ok(text) => {
                    for (i, builder) in builders.iter_mut().enumerate() {
                        match text.get(i) {
                            None => builder.append_null(),
                            Some(value) => builder.append_value(value),
                        }
                    }
                    self.record = text.into_byte_record();
                    continue;
                }
                Err(e) => self.record = e.into_byte_record(),
            }
            for (i, builder) in builders.iter_mut().enumerate() {
                match self.record.get(i) {
                    None => builder.append_null(),
                    Some(bytes) => match std::str::from_utf8(bytes) {
                        Ok(s) => builder.append_value(s),
                        Err(_) => {
                            builder.append_null();
                            problems.push(RowProblem {
                                row,
                                code: "bad_utf8",
                                message: format!("{}: field is not valid UTF-8", self.header[i]),
                            });
                        }
                    },
                }
            }
        }
        if lines.is_empty() {
            return Ok(None);
        }
        self.widths = builders
            .iter()
            .map(|b| b.values_slice().len() * 256 / lines.len())
            .collect();
        let raw_columns: Vec<ArrayRef> = builders
            .into_iter()
            .map(|mut b| Arc::new(b.finish()) as ArrayRef)
            .collect();
        let columns = self
            .mapping
            .iter()
            .map(|m| m.map(|i| raw_columns[i].clone()))
            .collect();
        Ok(Some(SourceBatch {
            columns,
            lines,
            problems,
            raw_names: self.header.clone(),
            raw_columns,
        }))
    }
}

/// JSON lines: one object per line; values of any JSON type are read as their text.
pub struct JsonLinesSource {
    reader: BufReader<Box<dyn Read + Send>>,
    candidates: Vec<Vec<String>>,
    line_no: u64,
    buf: String,
}

impl JsonLinesSource {
    /// Prepares the name lookup.
    pub fn new(reader: Box<dyn Read + Send>, contract: &Contract) -> Self {
        let candidates = contract
            .columns
            .iter()
            .map(|col| {
                std::iter::once(col.name.as_str())
                    .chain(col.source.iter().map(String::as_str))
                    .map(normalize)
                    .collect()
            })
            .collect();
        Self {
            reader: BufReader::with_capacity(1 << 20, reader),
            candidates,
            line_no: 0,
            buf: String::new(),
        }
    }
}

impl Source for JsonLinesSource {
    fn next_batch(&mut self, max_rows: usize) -> Result<Option<SourceBatch>, ReadError> {
        let mut builders: Vec<StringBuilder> = self
            .candidates
            .iter()
            .map(|_| StringBuilder::new())
            .collect();
        let mut raw = StringBuilder::new();
        let mut lines = Vec::new();
        let mut problems = Vec::new();
        while lines.len() < max_rows {
            self.buf.clear();
            let n = match self.reader.read_line(&mut self.buf) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
                    return Err(ReadError::Malformed {
                        line: self.line_no + 1,
                        why: "not valid UTF-8".into(),
                    });
                }
                Err(e) => return Err(e.into()),
            };
            if n == 0 {
                break;
            }
            self.line_no += 1;
            let text = self.buf.trim_start_matches('\u{feff}').trim();
            if text.is_empty() {
                continue;
            }
            let row = lines.len();
            lines.push(self.line_no);
            raw.append_value(text);
            match serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(text) {
                Ok(object) => {
                    let fields: Vec<(String, &serde_json::Value)> =
                        object.iter().map(|(k, v)| (normalize(k), v)).collect();
                    for (builder, candidates) in builders.iter_mut().zip(&self.candidates) {
                        let value = candidates
                            .iter()
                            .find_map(|c| fields.iter().find(|(k, _)| k == c).map(|(_, v)| *v));
                        match value {
                            None | Some(serde_json::Value::Null) => builder.append_null(),
                            Some(serde_json::Value::String(s)) => builder.append_value(s),
                            Some(other) => builder.append_value(other.to_string()),
                        }
                    }
                }
                Err(e) => {
                    for builder in &mut builders {
                        builder.append_null();
                    }
                    problems.push(RowProblem {
                        row,
                        code: "bad_json",
                        message: format!("not a JSON object: {e}"),
                    });
                }
            }
        }
        if lines.is_empty() {
            return Ok(None);
        }
        Ok(Some(SourceBatch {
            columns: builders
                .into_iter()
                .map(|mut b| Some(Arc::new(b.finish()) as ArrayRef))
                .collect(),
            lines,
            problems,
            raw_names: Arc::new(Vec::new()),
            raw_columns: vec![Arc::new(raw.finish())],
        }))
    }
}

/// Parquet: typed columns are cast directly, without a detour through text.
pub struct ParquetSource {
    reader: parquet::arrow::arrow_reader::ParquetRecordBatchReader,
    names: Arc<Vec<String>>,
    mapping: Vec<Option<usize>>,
    rows_read: u64,
}

impl ParquetSource {
    /// Opens the file and maps its schema onto the contract.
    pub fn new(file: std::fs::File, contract: &Contract) -> Result<Self, ReadError> {
        let malformed = |e: parquet::errors::ParquetError| ReadError::Malformed {
            line: 0,
            why: format!("not a readable Parquet file: {e}"),
        };
        let builder = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
            .map_err(malformed)?;
        let names: Vec<String> = builder
            .schema()
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect();
        let mapping = map_columns(contract, &names)?;
        let reader = builder.with_batch_size(65536).build().map_err(malformed)?;
        Ok(Self {
            reader,
            names: Arc::new(names),
            mapping,
            rows_read: 0,
        })
    }
}

impl Source for ParquetSource {
    fn next_batch(&mut self, max_rows: usize) -> Result<Option<SourceBatch>, ReadError> {
        let _ = max_rows;
        let Some(batch) = self.reader.next() else {
            return Ok(None);
        };
        let batch = batch.map_err(|e| ReadError::Malformed {
            line: self.rows_read + 1,
            why: e.to_string(),
        })?;
        let first = self.rows_read + 1;
        self.rows_read += batch.num_rows() as u64;
        let raw_columns = batch.columns().to_vec();
        Ok(Some(SourceBatch {
            columns: self
                .mapping
                .iter()
                .map(|m| m.map(|i| raw_columns[i].clone()))
                .collect(),
            lines: (first..first + batch.num_rows() as u64).collect(),
            problems: Vec::new(),
            raw_names: self.names.clone(),
            raw_columns,
        }))
    }
}

#[cfg(test)]
mod tests;
