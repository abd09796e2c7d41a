//! Data contracts: the typed, checked shape a source row must have to enter a table.
//!
//! A [`Contract`] is built from `sluice.toml` by [`crate::config`]; the lake
//! crate applies it to Arrow batches. A row that fails any rule here is not an
//! error but a rejection with a reason (see the lake's `validate`).

use std::collections::BTreeMap;

/// The type a column is cast to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ColumnType {
    /// UTF-8 text.
    String,
    /// 64-bit signed integer.
    Int,
    /// 64-bit float.
    Float,
    /// Fixed-point decimal with precision and scale.
    Decimal {
        /// Total digits.
        precision: u8,
        /// Digits after the point.
        scale: i8,
    },
    /// true/false (also accepts t/f, yes/no, y/n, 1/0, case-insensitive).
    Bool,
    /// A calendar date.
    Date,
    /// An instant, stored in UTC with microsecond precision.
    Timestamp,
}

impl ColumnType {
    /// Parses a type name as written in sluice.toml.
    pub fn parse(s: &str) -> Option<Self> {
        let s = s.trim();
        Some(match s {
            "string" | "text" => ColumnType::String,
            "int" | "integer" | "bigint" => ColumnType::Int,
            "float" | "double" => ColumnType::Float,
            "bool" | "boolean" => ColumnType::Bool,
            "date" => ColumnType::Date,
            "timestamp" => ColumnType::Timestamp,
            _ => {
                let inner = s.strip_prefix("decimal(")?.strip_suffix(')')?;
                let (p, sc) = inner.split_once(',')?;
                let precision: u8 = p.trim().parse().ok()?;
                let scale: i8 = sc.trim().parse().ok()?;
                if precision == 0 || precision > 38 || scale < 0 || scale as u8 > precision {
                    return None;
                }
                ColumnType::Decimal { precision, scale }
            }
        })
    }
    /// The names accepted by [`ColumnType::parse`], for error messages.
    pub const NAMES: &'static str = "string, int, float, decimal(P,S), bool, date, timestamp";
    /// The canonical name, as shown in schemas and the catalog.
    pub fn name(&self) -> String {
        match self {
            ColumnType::String => "string".into(),
            ColumnType::Int => "int".into(),
            ColumnType::Float => "float".into(),
            ColumnType::Decimal { precision, scale } => format!("decimal({precision},{scale})"),
            ColumnType::Bool => "bool".into(),
            ColumnType::Date => "date".into(),
            ColumnType::Timestamp => "timestamp".into(),
        }
    }
    /// Whether min/max bounds apply.
    pub fn is_numeric(&self) -> bool {
        matches!(
            self,
            ColumnType::Int | ColumnType::Float | ColumnType::Decimal { .. }
        )
    }
}

/// One column of a contract: where it comes from, its type and its rules.
#[derive(Debug, Clone, PartialEq)]
pub struct Column {
    /// Name in the table.
    pub name: String,
    /// Header names in source files that map to this column, matched case-insensitively after trimming spaces; the column name itself always matches.
    pub source: Vec<String>,
    /// Target type.
    pub ty: ColumnType,
    /// Whether empty values are allowed.
    pub nullable: bool,
    /// Whether the column may be missing from a file's header entirely (then it is null for that file).
    pub optional: bool,
    /// Inclusive lower bound (numeric types).
    pub min: Option<f64>,
    /// Inclusive upper bound (numeric types).
    pub max: Option<f64>,
    /// Allowed values, compared after mapping, as text.
    pub allowed: Vec<String>,
    /// A regular expression the raw text must match entirely.
    pub pattern: Option<String>,
    /// chrono formats tried in order for date and timestamp columns; empty means ISO-8601 / RFC 3339.
    pub formats: Vec<String>,
    /// Time zone of timestamps that carry none (IANA name); UTC when absent.
    pub timezone: Option<String>,
    /// Raw values replaced before casting (keys compared case-insensitively after trimming).
    pub map: BTreeMap<String, String>,
    /// Free-text description for the catalog.
    pub description: Option<String>,
}

impl Column {
    /// A column of `ty` named `name` with a contract's defaults: it may be empty or
    /// missing from a file, and has no rules, formats, mapping or other source names.
    pub fn new(name: impl Into<String>, ty: ColumnType) -> Self {
        Self {
            name: name.into(),
            source: Vec::new(),
            ty,
            nullable: true,
            optional: true,
            min: None,
            max: None,
            allowed: Vec::new(),
            pattern: None,
            formats: Vec::new(),
            timezone: None,
            map: BTreeMap::new(),
            description: None,
        }
    }
}

/// A column computed from others with a SQL expression.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Derived {
    /// Name in the table.
    pub name: String,
    /// SQL expression over contract columns, earlier derived columns and the lineage columns.
    pub expr: String,
}

/// A row-level rule spanning columns: a SQL boolean expression that must not be false.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    /// Short name, used as the quarantine reason code.
    pub name: String,
    /// SQL boolean expression; NULL counts as passing, like a SQL CHECK constraint.
    pub expr: String,
    /// What a person reads in quarantine when the check fails.
    pub message: String,
}

/// The full contract of a silver table.
#[derive(Debug, Clone, PartialEq)]
pub struct Contract {
    /// Source columns, in order.
    pub columns: Vec<Column>,
    /// Derived columns, evaluated in order after casting.
    pub derived: Vec<Derived>,
    /// Row checks, evaluated after derivation, in order.
    pub checks: Vec<Check>,
    /// Columns whose combination must be unique within one source object.
    pub unique: Vec<String>,
    /// Regex with named groups applied to the object key; each group becomes a `_key_<name>` text column usable in expressions.
    pub key_fields: Option<String>,
}

/// Name of the lineage column holding `bucket/key` of the source object.
pub const SOURCE_OBJECT_COLUMN: &str = "_source_object";
/// Name of the lineage column holding the source object's version.
pub const SOURCE_VERSION_COLUMN: &str = "_source_version";
/// Name of the lineage column holding the 1-based line number in the source object.
pub const SOURCE_LINE_COLUMN: &str = "_source_line";
