//! The schema file format (TOML, one file per producer family) and its loader.
//!
//! Loading reports every problem of every file at once, each with `file:line:column`, the field
//! and a hint, so an analyst fixes a directory in one pass. See `schemas/README.md` for the
//! format as analysts read it.

use schemars::JsonSchema;
use serde::Deserialize;
use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};
use thiserror::Error;
use toml::Spanned;

/// Largest schema file read, in bytes: a schema is a page of rules, not data.
pub const MAX_SCHEMA_BYTES: u64 = 256 * 1024;

/// One schema file as written.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SchemaFile {
    /// Unique name of the producer family (letters, digits, `_` and `-`).
    #[schemars(with = "String", extend("pattern" = "^[A-Za-z0-9_-]+$"))]
    pub name: Spanned<String>,
    /// Version, recorded in the state so a resumed run uses the same rules.
    pub version: u32,
    /// Free text for humans.
    #[serde(default)]
    pub description: String,
    /// Lower goes first when field fallbacks of several schemas are merged.
    #[serde(default = "default_priority")]
    pub priority: i64,
    /// Paths whose string values hold JSON documents that longer paths read into.
    #[serde(default)]
    #[schemars(with = "Vec<String>")]
    pub json_strings: Vec<Spanned<String>>,
    /// Where the canonical fields are found.
    #[serde(default)]
    pub fields: Fields,
    /// Rules that reject an event with a named reason before its fields are read.
    #[serde(default)]
    pub reject: Vec<RejectRule>,
    /// Rules that classify an accepted event.
    #[serde(default)]
    pub classify: Vec<ClassifyRule>,
    /// Places one of this schema's field paths right before or after a path of another schema,
    /// where priority alone would put it elsewhere.
    #[serde(default)]
    pub order: Vec<OrderRule>,
    /// Kinds this schema declares: each gets a count column in the session rows. When no
    /// schema of a set declares any, the set has the four classic kinds.
    #[serde(default)]
    pub kinds: Vec<KindDecl>,
    /// Values carried from the events into their session, each with its own column.
    #[serde(default)]
    pub attributes: Vec<AttributeDecl>,
}

/// `path` (a candidate of `field` in this schema) is tried right before or right after
/// another candidate of the same field, whichever schema declares it.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OrderRule {
    /// `message_id`, `customer_id` or `event_time`.
    #[schemars(with = "String", extend("enum" = ["message_id", "customer_id", "event_time"]))]
    pub field: Spanned<String>,
    /// One of this schema's paths for that field.
    #[schemars(with = "String", extend("pattern" = "^\\$"))]
    pub path: Spanned<String>,
    /// The path it goes right before.
    #[schemars(with = "Option<String>")]
    pub before: Option<Spanned<String>>,
    /// The path it goes right after.
    #[schemars(with = "Option<String>")]
    pub after: Option<Spanned<String>>,
}

/// A kind of event that classification rules may target.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct KindDecl {
    /// The name rules use (`snake_case`).
    #[schemars(with = "String", extend("pattern" = "^[a-z][a-z0-9_]*$"))]
    pub name: Spanned<String>,
    /// The count column in session rows (`snake_case`, e.g. `video_plays`).
    #[schemars(with = "String", extend("pattern" = "^[a-z][a-z0-9_]*$"))]
    pub column: Spanned<String>,
    /// Free text for humans.
    #[serde(default)]
    pub description: String,
    /// When rules of several kinds match one event, the lowest precedence wins (ties: the kind
    /// declared first).
    #[serde(default = "default_priority")]
    pub precedence: i64,
    /// The column's previous name, when it was renamed: keeps the change compatible.
    #[schemars(with = "Option<String>")]
    pub renamed_from: Option<Spanned<String>>,
}

/// A value carried from the events into their session.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AttributeDecl {
    /// The output column (`snake_case`, e.g. `landing_path`).
    #[schemars(with = "String", extend("pattern" = "^[a-z][a-z0-9_]*$"))]
    pub name: Spanned<String>,
    /// Candidate `JSONPath`s, tried in order; the first present and not null is used.
    #[schemars(with = "Vec<String>", extend("minItems" = 1))]
    pub paths: Spanned<Vec<Spanned<String>>>,
    /// `string`, `integer`, `number` or `boolean`.
    #[serde(rename = "type", default = "default_attr_type")]
    #[schemars(with = "String", extend("enum" = ["string", "integer", "number", "boolean"]))]
    pub kind: Spanned<String>,
    /// `first`, `last`, `distinct_count`, `min`, `max` or `count_present`.
    #[schemars(with = "String", extend("enum" = ["first", "last", "distinct_count", "min", "max", "count_present"]))]
    pub aggregate: Spanned<String>,
    /// Longest string value kept, in bytes (longer ones are cut and counted).
    #[schemars(with = "Option<u32>", extend("minimum" = 1, "maximum" = 1024))]
    pub max_bytes: Option<Spanned<u32>>,
    /// Free text for humans.
    #[serde(default)]
    pub description: String,
    /// The column's previous name, when it was renamed: keeps the change compatible.
    #[schemars(with = "Option<String>")]
    pub renamed_from: Option<Spanned<String>>,
}

fn default_attr_type() -> Spanned<String> {
    Spanned::new(0..0, "string".to_owned())
}

fn default_priority() -> i64 {
    100
}

/// Candidate paths for the canonical fields, tried in order.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Fields {
    /// Message id paths (dedup key).
    #[serde(default)]
    #[schemars(with = "Vec<String>")]
    pub message_id: Vec<Spanned<String>>,
    /// Customer id paths.
    #[serde(default)]
    #[schemars(with = "Vec<String>")]
    pub customer_id: Vec<Spanned<String>>,
    /// Event time paths with their formats.
    #[serde(default)]
    pub event_time: Vec<TimeField>,
}

/// One event-time candidate.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TimeField {
    /// `JSONPath` of the value.
    #[schemars(with = "String", extend("pattern" = "^\\$"))]
    pub path: Spanned<String>,
    /// `iso8601`, or `epoch` (a number or numeric string counted from 1970-01-01T00:00:00Z).
    /// `epoch_seconds`, `epoch_millis`, `epoch_micros` and `epoch_nanos` are `epoch` with
    /// `unit` `s`, `ms`, `us` or `ns`.
    #[schemars(with = "String", extend("enum" = ["iso8601", "epoch", "epoch_seconds", "epoch_millis", "epoch_micros", "epoch_nanos"]))]
    pub format: Spanned<String>,
    /// Epoch only: `auto` (default: values ≥ 100000000000 are milliseconds, smaller ones
    /// seconds), `s`, `ms`, `us` or `ns`.
    #[serde(default)]
    #[schemars(with = "Option<String>", extend("enum" = ["auto", "s", "ms", "us", "ns"]))]
    pub unit: Option<Spanned<String>>,
    /// Epoch only: `fractions` (default: `1709548836.027` is accepted) or `integers` (no
    /// decimal point, whole values only).
    #[serde(default)]
    #[schemars(with = "Option<String>", extend("enum" = ["fractions", "integers"]))]
    pub numbers: Option<Spanned<String>>,
    /// How strings are written. Epoch: `digits` (default: `^[0-9]+(\.[0-9]+)?$`) or `lenient`
    /// (also a leading `+`/`-`, surrounding spaces and an exponent). ISO 8601: `strict`
    /// (default: `T` or space, `Z` or `±hh:mm`) or `lenient` (also `±hhmm`, `±hh`, lowercase
    /// `t`/`z` and surrounding spaces).
    #[serde(default)]
    #[schemars(with = "Option<String>", extend("enum" = ["digits", "strict", "lenient"]))]
    pub text: Option<Spanned<String>>,
    /// Rounding to whole milliseconds: `floor` (toward the past: what truncating clocks mean;
    /// default for `iso8601`) or `half_even` (default for epoch formats).
    #[serde(default)]
    #[schemars(with = "Option<String>", extend("enum" = ["floor", "half_even"]))]
    pub rounding: Option<Spanned<String>>,
    /// ISO 8601 only: the IANA time zone (`Europe/Berlin`) of times written without an offset.
    /// A time in a DST gap moves forward by the gap's length; in an overlap it takes the
    /// earlier offset. Times with an offset keep it.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub zone: Option<Spanned<String>>,
}

/// A reject rule: when all conditions hold, the event is dead-lettered with `reason`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RejectRule {
    /// The dead-letter reason (`snake_case`).
    #[schemars(with = "String", extend("pattern" = "^[a-z0-9_]+$"))]
    pub reason: Spanned<String>,
    /// Conditions, all of which must hold.
    #[schemars(with = "Vec<Condition>", extend("minItems" = 1))]
    pub when: Spanned<Vec<Condition>>,
}

/// A classification rule: when all conditions hold, the event counts as `kind`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ClassifyRule {
    /// A kind the set declares (`[[kinds]]` of any schema), or without declarations one of
    /// `support_call`, `subscribe_click`, `subscribe_hover`, `page_view`.
    #[schemars(with = "String", extend("pattern" = "^[a-z][a-z0-9_]*$"))]
    pub kind: Spanned<String>,
    /// Conditions, all of which must hold.
    #[schemars(with = "Vec<Condition>", extend("minItems" = 1))]
    pub when: Spanned<Vec<Condition>>,
}

/// One test on one path. Exactly one of `equals`, `in`, `exists` is given.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Condition {
    /// `JSONPath` of the value tested.
    #[schemars(with = "String", extend("pattern" = "^\\$"))]
    pub path: Spanned<String>,
    /// The value is this string (exact, case-sensitive; a non-string never matches).
    pub equals: Option<String>,
    /// The value is one of these strings.
    #[serde(rename = "in")]
    pub one_of: Option<Vec<String>>,
    /// The value is present and not null (`true`), or absent or null (`false`).
    pub exists: Option<bool>,
}

/// A schema file with where it came from.
#[derive(Debug)]
pub struct LoadedSchema {
    /// The file.
    pub file: PathBuf,
    /// Its text (kept to turn byte spans into lines and columns).
    pub text: String,
    /// The parsed content.
    pub schema: SchemaFile,
}

impl LoadedSchema {
    /// An error located at `span` in this file.
    #[must_use]
    pub fn error(
        &self,
        span: Range<usize>,
        field: &str,
        message: impl Into<String>,
    ) -> SchemaError {
        let (line, column) = line_col(&self.text, span.start);
        SchemaError {
            file: self.file.clone(),
            line,
            column,
            field: field.to_owned(),
            message: message.into(),
        }
    }
}

/// One problem in one schema file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchemaError {
    /// The file.
    pub file: PathBuf,
    /// 1-based line (0 when the problem is the file as a whole).
    pub line: usize,
    /// 1-based column.
    pub column: usize,
    /// The field concerned, as a dotted path (`fields.customer_id[2]`).
    pub field: String,
    /// What is wrong, and a hint.
    pub message: String,
}

impl fmt::Display for SchemaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}: {}",
            self.file.display(),
            self.line,
            self.column,
            self.field,
            self.message
        )
    }
}

impl std::error::Error for SchemaError {}

/// Every problem found in a schema set.
#[derive(Debug, Error)]
pub struct SchemaErrors(pub Vec<SchemaError>);

impl fmt::Display for SchemaErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0.len();
        if let [one] = &self.0[..] {
            return write!(f, "schema error: {one}");
        }
        write!(f, "{n} schema errors")?;
        for e in &self.0 {
            write!(f, "\n  {e}")?;
        }
        Ok(())
    }
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

/// The table or key written on `line` (1-based): what an analyst calls the field.
fn field_at(text: &str, line: usize) -> String {
    let Some(l) = line.checked_sub(1).and_then(|i| text.lines().nth(i)) else { return "-".into() };
    let l = l.trim();
    let name = if l.starts_with('[') {
        l.trim_matches(|c| c == '[' || c == ']' || c == ' ')
    } else {
        l.split('=').next().unwrap_or("").trim()
    };
    if name.is_empty() || name.len() > 80 { "-".into() } else { name.to_owned() }
}

fn whole_file(file: &Path, message: impl Into<String>) -> SchemaError {
    SchemaError {
        file: file.to_owned(),
        line: 0,
        column: 0,
        field: "-".into(),
        message: message.into(),
    }
}

/// The JSON Schema of the schema-file format, for editors (`schemas/schema.json`).
#[must_use]
pub fn json_schema() -> String {
    let mut schema = schemars::schema_for!(SchemaFile);
    schema.insert("title".into(), "clickstream schema file".into());
    // Serializing a JSON value to a string cannot fail.
    serde_json::to_string_pretty(&schema).unwrap_or_default() + "\n"
}

/// Reads one schema file; syntax and shape errors carry their position.
///
/// # Errors
/// Unreadable, too large, not UTF-8, not TOML, or not of the schema shape.
pub fn load_file(file: &Path) -> Result<LoadedSchema, SchemaError> {
    let meta =
        std::fs::metadata(file).map_err(|e| whole_file(file, format!("cannot read: {e}")))?;
    if meta.len() > MAX_SCHEMA_BYTES {
        return Err(whole_file(
            file,
            format!("file is {} bytes; a schema file is at most {MAX_SCHEMA_BYTES}", meta.len()),
        ));
    }
    let bytes = std::fs::read(file).map_err(|e| whole_file(file, format!("cannot read: {e}")))?;
    parse_bytes(file, bytes)
}

/// Parses a schema from its bytes; `file` names it in errors (a path, or `NAME@VERSION` for a
/// registered version).
///
/// # Errors
/// Not UTF-8, empty, not TOML, or not of the schema shape.
pub fn parse_bytes(file: &Path, bytes: Vec<u8>) -> Result<LoadedSchema, SchemaError> {
    if bytes.len() as u64 > MAX_SCHEMA_BYTES {
        return Err(whole_file(
            file,
            format!("the schema is {} bytes; a schema is at most {MAX_SCHEMA_BYTES}", bytes.len()),
        ));
    }
    let text = String::from_utf8(bytes).map_err(|e| {
        let at = e.utf8_error().valid_up_to();
        let (line, column) = line_col(&String::from_utf8_lossy(&e.into_bytes()[..at]), at);
        SchemaError {
            file: file.to_owned(),
            line,
            column,
            field: "-".into(),
            message: "the file is not valid UTF-8".into(),
        }
    })?;
    if text.trim().is_empty() {
        return Err(whole_file(
            file,
            "the file is empty: a schema needs at least `name` and `version`",
        ));
    }
    match toml::from_str::<SchemaFile>(&text) {
        Ok(schema) => Ok(LoadedSchema { file: file.to_owned(), text, schema }),
        Err(e) => {
            let (line, column) = e.span().map_or((0, 0), |s| line_col(&text, s.start));
            let mut message = e.message().trim().to_owned();
            if message.starts_with("invalid type")
                && (message.contains("map") || message.contains("sequence"))
            {
                message.push_str(
                    " (check the brackets: [name] is one table, [[name]] one entry of a list of tables, key = [ … ] a list)",
                );
            }
            let field =
                match message.strip_prefix("missing field `").and_then(|m| m.split('`').next()) {
                    Some(missing) => missing.to_owned(),
                    None => field_at(&text, line),
                };
            Err(SchemaError { file: file.to_owned(), line, column, field, message })
        }
    }
}

/// Lists the schema files of a path: the file itself, or every `*.toml` in a directory
/// (not recursive), sorted by name.
///
/// # Errors
/// The path does not exist or has no schema file.
pub fn list_files(path: &Path) -> Result<Vec<PathBuf>, SchemaErrors> {
    let one = |m: String| SchemaErrors(vec![whole_file(path, m)]);
    let meta = std::fs::metadata(path).map_err(|e| one(format!("cannot read the schemas: {e}")))?;
    if meta.is_file() {
        return Ok(vec![path.to_owned()]);
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(path)
        .map_err(|e| one(format!("cannot list the schemas: {e}")))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml") && p.is_file())
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(one("no schema file (*.toml) here".into()));
    }
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_count_from_one() {
        assert_eq!(line_col("a\nbc\nd", 0), (1, 1));
        assert_eq!(line_col("a\nbc\nd", 3), (2, 2));
        assert_eq!(line_col("a\nbc\nd", 5), (3, 1));
    }
}
