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

/// CSV: any delimiter, quoted fields, CRLF, a UTF-8 BOM, blank lines, stray spaces in the header, trailing empty fields.
///
/// `csv_core` parses a batch's records end to end into one buffer (`out`, each field's end
/// in `ends`), and each column's array is then cut from it in one pass: no per-record
/// buffer, no per-field builder call. (The csv crate's record-at-a-time reader with a
/// `StringBuilder` append per field cost 1.4x the parse itself on a 1,000-row object; this
/// way 0.9x: docs/benchmarks.md, session 46.) A record's line is 1 + the newlines before
/// its first byte, counted by the parser as it consumes them (blank lines it skips too).
pub struct CsvSource {
    input: Box<dyn Read + Send>,
    /// The parser (None only once dropped: it goes back to [`SPARE_PARSERS`]), and the
    /// delimiter and quote it was built for.
    core: Option<csv_core::Reader>,
    dialect: (u8, u8),
    /// Bytes read and not yet parsed: `buf[start..end]`.
    buf: Vec<u8>,
    start: usize,
    end: usize,
    /// The input has ended.
    eof: bool,
    header: Arc<Vec<String>>,
    mapping: Vec<Option<usize>>,
    /// A batch's fields, unquoted, end to end (kept from batch to batch: its pages stay).
    out: Vec<u8>,
    /// Where each field of the batch ends in `out`, after a 0: field `k` (from 1) is
    /// `out[ends[k - 1]..ends[k]]`.
    ends: Vec<usize>,
    /// The longest record read ([`MAX_RECORD_BYTES`]).
    record_limit: usize,
}

std::thread_local! {
    /// Parsers given back by the sources that ended on this thread (one per delimiter and
    /// quote), each reset for the next source: building one makes its state machine,
    /// ~270 K instructions, 0.7% of a 1,000-row object's ingest. (csv_core's `Clone` does
    /// not copy a built machine, so parsers are handed on, not copied.)
    static SPARE_PARSERS: std::cell::RefCell<Vec<((u8, u8), csv_core::Reader)>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

/// A source's three buffers: bytes read, a batch's fields, where each field ends.
struct Buffers {
    buf: Vec<u8>,
    out: Vec<u8>,
    ends: Vec<usize>,
}

/// Buffers of the sources that ended, for the next ones (at most one per core, each no
/// larger than a small object's): a 1,000-row object's reader took ~0.5 MB of fresh pages
/// for them, which the kernel faulted in and zeroed, ~3% of the server's CPU under eight
/// writers (docs/benchmarks.md, session 51). Shared by every thread: reads run on the
/// blocking pool's threads, whichever is free.
static SPARE_BUFFERS: std::sync::Mutex<Vec<Buffers>> = std::sync::Mutex::new(Vec::new());

impl Buffers {
    /// Buffers of at least `capacity` bytes (and a quarter as many field ends), a spare's
    /// when there is one. Their contents are whatever they held: the reader and the parser
    /// write every byte they read back, except the 0 before the first field end.
    fn take(capacity: usize) -> Self {
        let ends = (capacity / 4).max(64);
        let spare = SPARE_BUFFERS
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pop();
        let mut buffers = match spare {
            Some(mut b) => {
                for (v, len) in [(&mut b.buf, capacity), (&mut b.out, capacity)] {
                    if v.len() < len {
                        v.resize(len, 0);
                    }
                }
                if b.ends.len() < ends {
                    b.ends.resize(ends, 0);
                }
                b
            }
            None => Buffers {
                buf: vec![0; capacity],
                out: vec![0; capacity],
                ends: vec![0; ends],
            },
        };
        buffers.ends[0] = 0;
        buffers
    }

    /// Keeps the buffers for the next source, unless they grew past a small object's (a
    /// large file's batches) or enough are kept.
    fn give_back(self) {
        if self.buf.len() > MAX_BUFFER
            || self.out.len() > 2 * MAX_BUFFER
            || self.ends.len() > MAX_BUFFER / 4
        {
            return;
        }
        let mut spare = SPARE_BUFFERS.lock().unwrap_or_else(|p| p.into_inner());
        if spare.len() < crate::cores() {
            spare.push(self);
        }
    }
}

/// A parser for `delimiter` and `quote`, at its start.
fn parser(delimiter: u8, quote: u8) -> csv_core::Reader {
    let spare = SPARE_PARSERS.with_borrow_mut(|spare| {
        let at = spare.iter().position(|(k, _)| *k == (delimiter, quote))?;
        Some(spare.swap_remove(at).1)
    });
    match spare {
        Some(mut parser) => {
            parser.reset();
            parser
        }
        None => csv_core::ReaderBuilder::new()
            .delimiter(delimiter)
            .quote(quote)
            .build(),
    }
}

/// `bytes` in MiB when whole, else in KiB.
fn binary_size(bytes: usize) -> String {
    if bytes.is_multiple_of(1 << 20) {
        format!("{} MiB", bytes >> 20)
    } else {
        format!("{} KiB", bytes >> 10)
    }
}

/// The CSV reader's buffer: at most this, at least [`MIN_BUFFER`].
const MAX_BUFFER: usize = 1 << 20;
const MIN_BUFFER: usize = 8 << 10;

/// A record longer than this is refused with the file: a quote never closed makes the
/// rest of a file one field, which would otherwise be held in memory whole.
pub const MAX_RECORD_BYTES: usize = 64 << 20;

impl CsvSource {
    /// Reads the header and maps it onto the contract.
    pub fn new(
        reader: Box<dyn Read + Send>,
        contract: &Contract,
        options: &Format,
    ) -> Result<Self, ReadError> {
        Self::sized(reader, contract, options, None)
    }

    /// [`CsvSource::new`] for an object of `size` bytes: its buffers are sized to it, so a
    /// 150 KB object does not zero and fault in a 1 MiB buffer.
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
        let dialect = (options.delimiter, options.quote);
        // Unquoted fields are no longer than the object: its size is enough for a small
        // object's one batch (a large file's first batch doubles `out` once or twice).
        let Buffers { buf, out, ends } = Buffers::take(capacity);
        let mut source = Self {
            input: reader,
            core: Some(parser(dialect.0, dialect.1)),
            dialect,
            buf,
            start: 0,
            end: 0,
            eof: false,
            header: Arc::new(Vec::new()),
            mapping: Vec::new(),
            out,
            ends,
            record_limit: MAX_RECORD_BYTES,
        };
        let (mut out_len, mut ends_len) = (0, 1);
        let fields = match source.next_record(&mut out_len, &mut ends_len)? {
            Some(_) => ends_len - 1,
            None => 0,
        };
        let header: Vec<String> = (1..=fields)
            .map(|k| {
                String::from_utf8_lossy(source.field(k))
                    .trim()
                    .trim_start_matches('\u{feff}')
                    .to_string()
            })
            .collect();
        if header.is_empty() || (header.len() == 1 && header[0].is_empty()) {
            return Err(ReadError::Malformed {
                line: 1,
                why: "the file is empty: no header".into(),
            });
        }
        source.mapping = map_columns(contract, &header)?;
        source.header = Arc::new(header);
        Ok(source)
    }

    /// The bytes of the batch's field `k` (from 1).
    fn field(&self, k: usize) -> &[u8] {
        &self.out[self.ends[k - 1]..self.ends[k]]
    }

    /// Parses the next record after the batch's `out[..out_len]` and `ends[..ends_len]`,
    /// moving both past it; its line, or None at the end of the input.
    fn next_record(
        &mut self,
        out_len: &mut usize,
        ends_len: &mut usize,
    ) -> Result<Option<u64>, ReadError> {
        use csv_core::ReadRecordResult;
        let (record_out, record_ends) = (*out_len, *ends_len);
        let Some(core) = self.core.as_mut() else {
            return Ok(None);
        };
        loop {
            if self.start == self.end && !self.eof {
                self.start = 0;
                self.end = loop {
                    match self.input.read(&mut self.buf) {
                        Ok(n) => break n,
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                        Err(e) => return Err(e.into()),
                    }
                };
                self.eof = self.end == 0;
            }
            if *out_len == self.out.len() {
                self.out.resize(self.out.len() * 2, 0);
            }
            if *ends_len == self.ends.len() {
                self.ends.resize(self.ends.len() * 2, 0);
            }
            let input = &self.buf[self.start..self.end];
            let (result, nin, nout, nend) = core.read_record(
                input,
                &mut self.out[*out_len..],
                &mut self.ends[*ends_len..],
            );
            let ended_at_newline = nin > 0 && input[nin - 1] == b'\n';
            self.start += nin;
            *out_len += nout;
            *ends_len += nend;
            if *out_len - record_out > self.record_limit {
                let embedded = memchr::memchr_iter(b'\n', &self.out[record_out..*out_len]).count();
                return Err(ReadError::Malformed {
                    line: core.line().saturating_sub(embedded as u64),
                    why: format!(
                        "a record longer than {} (a quote never closed?)",
                        binary_size(self.record_limit)
                    ),
                });
            }
            match result {
                ReadRecordResult::InputEmpty if self.eof => return Ok(None),
                ReadRecordResult::InputEmpty
                | ReadRecordResult::OutputFull
                | ReadRecordResult::OutputEndsFull => {}
                ReadRecordResult::Record => {
                    // The parser gives field ends from the record's start.
                    for end in &mut self.ends[record_ends..*ends_len] {
                        *end += record_out;
                    }
                    // The parser's line is past the record's terminator when it was a
                    // newline; a CR alone (or the end of the input) leaves it on the
                    // record's last line.
                    let last = core.line() - u64::from(ended_at_newline);
                    let text = &self.out[record_out..*out_len];
                    let embedded = match memchr::memchr(b'\n', text) {
                        None => 0,
                        Some(_) => memchr::memchr_iter(b'\n', text).count() as u64,
                    };
                    return Ok(Some(last.saturating_sub(embedded)));
                }
                ReadRecordResult::End => return Ok(None),
            }
        }
    }

    /// Column `i` of a batch whose records' fields are `ends[firsts[r]..firsts[r + 1]]`:
    /// a row without the field is null, as is one `bad` marks (row-major, `width` a row).
    /// `whole`: every row has the field and none is marked.
    fn column(
        &self,
        i: usize,
        firsts: &[usize],
        bad: Option<&[bool]>,
        width: usize,
        whole: bool,
    ) -> Result<ArrayRef, ReadError> {
        let rows = firsts.len() - 1;
        let (out, ends) = (&self.out, &self.ends);
        let mut nulls = arrow::array::NullBufferBuilder::new(rows);
        let mut bytes = 0;
        if whole {
            nulls.append_n_non_nulls(rows);
            for &first in &firsts[..rows] {
                let k = first + i;
                bytes += ends[k] - ends[k - 1];
            }
        } else {
            for r in 0..rows {
                let k = firsts[r] + i;
                let good = k < firsts[r + 1] && bad.is_none_or(|bad| !bad[r * width + i]);
                if good {
                    bytes += ends[k] - ends[k - 1];
                    nulls.append_non_null();
                } else {
                    nulls.append_null();
                }
            }
        }
        if i32::try_from(bytes).is_err() {
            return Err(ReadError::Malformed {
                line: 0,
                why: format!(
                    "column {:?} holds more than 2 GiB of text in one batch",
                    self.header[i]
                ),
            });
        }
        // Values are copied COPY bytes at a time where both buffers have them (a fixed-size
        // move, not a call to memcpy per field); each next value overwrites the excess.
        const COPY: usize = 32;
        let mut values = vec![0u8; bytes + COPY];
        let mut offsets = vec![0i32; rows + 1];
        let mut at = 0;
        for (r, (&first, offset)) in firsts[..rows].iter().zip(&mut offsets[1..]).enumerate() {
            if whole || nulls.is_valid(r) {
                let k = first + i;
                let (start, end) = (ends[k - 1], ends[k]);
                let len = end - start;
                match (out.get(start..start + COPY), values.get_mut(at..at + COPY)) {
                    (Some(from), Some(to)) if len <= COPY => to.copy_from_slice(from),
                    _ => values[at..at + len].copy_from_slice(&out[start..end]),
                }
                at += len;
            }
            // At most `bytes`, which fits.
            *offset = at as i32;
        }
        values.truncate(at);
        let offsets = arrow::buffer::OffsetBuffer::new(offsets.into());
        StringArray::try_new(offsets, values.into(), nulls.finish())
            .map(|a| Arc::new(a) as ArrayRef)
            .map_err(|e| ReadError::Malformed {
                line: 0,
                why: format!("column {:?}: {e}", self.header[i]),
            })
    }
}

impl Drop for CsvSource {
    fn drop(&mut self) {
        Buffers {
            buf: std::mem::take(&mut self.buf),
            out: std::mem::take(&mut self.out),
            ends: std::mem::take(&mut self.ends),
        }
        .give_back();
        if let Some(core) = self.core.take() {
            // A thread ending drops its spares instead (`try_with` fails then).
            let _ = SPARE_PARSERS.try_with(|spare| {
                if let Ok(mut spare) = spare.try_borrow_mut()
                    && !spare.iter().any(|(k, _)| *k == self.dialect)
                {
                    spare.push((self.dialect, core));
                }
            });
        }
    }
}

impl Source for CsvSource {
    fn next_batch(&mut self, max_rows: usize) -> Result<Option<SourceBatch>, ReadError> {
        let width = self.header.len();
        let mut lines = Vec::with_capacity(max_rows.min(8192));
        // Where each record's fields begin in `ends`, and one past the last.
        let mut firsts = Vec::with_capacity(max_rows.min(8192) + 1);
        let mut problems = Vec::new();
        // Whether a row lacks some of the header's fields.
        let mut short = false;
        let (mut out_len, mut ends_len) = (0, 1);
        while lines.len() < max_rows {
            let (first, first_byte) = (ends_len, out_len);
            let Some(line) = self.next_record(&mut out_len, &mut ends_len)? else {
                break;
            };
            let fields = ends_len - first;
            // A record of one empty field is a blank line (or one holding only a stray CR).
            if fields == 1
                && self.out[first_byte..out_len]
                    .iter()
                    .all(|b| *b == b'\r' || *b == b' ')
            {
                (out_len, ends_len) = (first_byte, first);
                continue;
            }
            let row = lines.len();
            lines.push(line);
            firsts.push(first);
            if fields < width {
                short = true;
                problems.push(RowProblem {
                    row,
                    code: "field_count",
                    message: format!("row has {fields} fields but the header has {width}"),
                });
            } else if fields > width && (first + width..ends_len).any(|k| !self.field(k).is_empty())
            {
                problems.push(RowProblem {
                    row,
                    code: "field_count",
                    message: format!(
                        "row has {fields} fields but the header has {width} (the extra fields are not empty)"
                    ),
                });
            }
        }
        if lines.is_empty() {
            return Ok(None);
        }
        firsts.push(ends_len);
        // Text unless a field is not: every field of a batch holding only ASCII is; else
        // each field is checked (two fields' bytes may make a character together).
        let mut bad = None;
        if !self.out[..out_len].is_ascii() {
            let marks = bad.insert(vec![false; lines.len() * width]);
            for row in 0..lines.len() {
                let fields = firsts[row]..firsts[row + 1].min(firsts[row] + width);
                for (i, k) in fields.enumerate() {
                    if std::str::from_utf8(self.field(k)).is_err() {
                        marks[row * width + i] = true;
                        problems.push(RowProblem {
                            row,
                            code: "bad_utf8",
                            message: format!("{}: field is not valid UTF-8", self.header[i]),
                        });
                    }
                }
            }
        }
        let whole = !short && bad.is_none();
        let raw_columns = (0..width)
            .map(|i| self.column(i, &firsts, bad.as_deref(), width, whole))
            .collect::<Result<Vec<_>, _>>()?;
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
