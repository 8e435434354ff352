//! Session rows as a Parquet file, with column types that `DuckDB`, Athena and Spark read as
//! such: times as UTC timestamps (milliseconds), counts as 64-bit integers, attributes in their
//! declared type (string, 64-bit integer, double, boolean; nullable), the schema sets as a list
//! of strings.
//!
//! The columns follow the schema set: the file's schema is the union of its rows' layouts in
//! order of appearance. A count column every row has is required; one that only rows closed
//! after a reload have is nullable, null before it. An attribute column that a reload retyped
//! keeps its first type in the file and is null in rows of the other type.

use super::SinkError;
use crate::aggregate::{RowLayout, SessionRow};
use crate::extract::catalog::AttrType;
use crate::session::attrs::Value;
use parquet::basic::Compression;
use parquet::data_type::{BoolType, ByteArray, ByteArrayType, DoubleType, Int64Type};
use parquet::file::properties::WriterProperties;
use parquet::file::writer::SerializedFileWriter;
use parquet::schema::parser::parse_message_type;
use std::fmt::Write as _;
use std::sync::Arc;

fn err(e: &parquet::errors::ParquetError) -> SinkError {
    SinkError::S3 { op: "encode parquet", key: String::new(), message: e.to_string() }
}

/// A count column, and whether every row has it.
type CountColumn = (Arc<str>, bool);
/// An attribute column and its type.
type AttrColumn = (Arc<str>, AttrType);

/// The union of the rows' layouts: count columns (with whether every row has them) and
/// attribute columns with their type.
fn columns(rows: &[SessionRow]) -> (Vec<CountColumn>, Vec<AttrColumn>) {
    let (mut kinds, mut attrs): (Vec<CountColumn>, Vec<AttrColumn>) = (Vec::new(), Vec::new());
    let mut last: Option<&Arc<RowLayout>> = None;
    for r in rows {
        if last.is_some_and(|l| Arc::ptr_eq(l, &r.layout)) {
            continue;
        }
        last = Some(&r.layout);
        for (c, _) in &r.layout.kinds {
            if !kinds.iter().any(|(k, _)| k == c) {
                kinds.push((Arc::clone(c), true));
            }
        }
        for (c, t, ..) in &r.layout.attrs {
            if !attrs.iter().any(|(a, _)| a == c) {
                attrs.push((Arc::clone(c), *t));
            }
        }
    }
    for (c, every) in &mut kinds {
        *every = rows.iter().all(|r| r.layout.kinds.iter().any(|(k, _)| k == c));
    }
    (kinds, attrs)
}

fn message_type(kinds: &[CountColumn], attrs: &[AttrColumn]) -> String {
    let mut m = String::from(
        "message session {
  REQUIRED BYTE_ARRAY customer_id (STRING);
  REQUIRED INT64 session_start (TIMESTAMP(MILLIS, true));
  REQUIRED INT64 session_end (TIMESTAMP(MILLIS, true));
  REQUIRED INT64 duration_ms;
  REQUIRED INT64 event_count;
",
    );
    for (c, every) in kinds {
        let rep = if *every { "REQUIRED" } else { "OPTIONAL" };
        let _ = writeln!(m, "  {rep} INT64 {c};");
    }
    for (c, t) in attrs {
        let ty = match t {
            AttrType::String => "BYTE_ARRAY",
            AttrType::Integer => "INT64",
            AttrType::Number => "DOUBLE",
            AttrType::Boolean => "BOOLEAN",
        };
        let ann = if *t == AttrType::String { " (STRING)" } else { "" };
        let _ = writeln!(m, "  OPTIONAL {ty} {c}{ann};");
    }
    m.push_str(
        "  REQUIRED GROUP schema_sets (LIST) {
    REPEATED GROUP list {
      REQUIRED BYTE_ARRAY element (STRING);
    }
  }
}",
    );
    m
}

/// The value of attribute column `c` in row `r`, if the row has it with type `t`.
fn cell<'r>(r: &'r SessionRow, c: &str, t: AttrType) -> Option<&'r Value> {
    let i = r.layout.attrs.iter().position(|(a, ty, ..)| &**a == c && *ty == t)?;
    r.attrs.get(i)?.as_ref()
}

/// Values and definition levels of an optional column.
fn optional<T>(rows: &[SessionRow], get: impl Fn(&SessionRow) -> Option<T>) -> (Vec<T>, Vec<i16>) {
    let (mut v, mut def) = (Vec::with_capacity(rows.len()), Vec::with_capacity(rows.len()));
    for r in rows {
        match get(r) {
            Some(x) => {
                v.push(x);
                def.push(1);
            }
            None => def.push(0),
        }
    }
    (v, def)
}

/// Encodes `rows` as one Parquet file (one row group, Snappy).
///
/// # Errors
/// The encoder refused the data (not expected for valid rows).
pub fn encode(rows: &[SessionRow]) -> Result<Vec<u8>, SinkError> {
    let (kinds, attrs) = columns(rows);
    let schema = Arc::new(parse_message_type(&message_type(&kinds, &attrs)).map_err(|e| err(&e))?);
    let props = Arc::new(WriterProperties::builder().set_compression(Compression::SNAPPY).build());
    let mut w = SerializedFileWriter::new(Vec::new(), schema, props).map_err(|e| err(&e))?;
    let mut group = w.next_row_group().map_err(|e| err(&e))?;
    let ints: [fn(&SessionRow) -> i64; 4] =
        [|r| r.session_start, |r| r.session_end, |r| r.duration_ms, |r| r.event_count as i64];
    let first_attr = 5 + kinds.len();
    let last_attr = first_attr + attrs.len();
    let mut column = 0;
    while let Some(mut c) = group.next_column().map_err(|e| err(&e))? {
        match column {
            0 => {
                let v: Vec<ByteArray> = rows
                    .iter()
                    .map(|r| ByteArray::from(r.customer_id.as_bytes().to_vec()))
                    .collect();
                c.typed::<ByteArrayType>().write_batch(&v, None, None).map_err(|e| err(&e))?;
            }
            1..=4 => {
                let v: Vec<i64> = rows.iter().map(ints[column - 1]).collect();
                c.typed::<Int64Type>().write_batch(&v, None, None).map_err(|e| err(&e))?;
            }
            k if k < first_attr => {
                let (name, every) = &kinds[k - 5];
                let (v, def) = optional(rows, |r| r.count(name).map(|n| n as i64));
                let def = if *every { None } else { Some(&def[..]) };
                c.typed::<Int64Type>().write_batch(&v, def, None).map_err(|e| err(&e))?;
            }
            a if a < last_attr => {
                let (name, t) = &attrs[a - first_attr];
                let t = *t;
                match t {
                    AttrType::String => {
                        let (v, def) = optional(rows, |r| match cell(r, name, t) {
                            Some(Value::Str(s)) => Some(ByteArray::from(s.as_bytes().to_vec())),
                            _ => None,
                        });
                        c.typed::<ByteArrayType>().write_batch(&v, Some(&def), None)
                    }
                    AttrType::Integer => {
                        let (v, def) = optional(rows, |r| match cell(r, name, t) {
                            Some(Value::Int(i)) => Some(*i),
                            _ => None,
                        });
                        c.typed::<Int64Type>().write_batch(&v, Some(&def), None)
                    }
                    AttrType::Number => {
                        let (v, def) = optional(rows, |r| match cell(r, name, t) {
                            Some(Value::Num(x)) => Some(*x),
                            _ => None,
                        });
                        c.typed::<DoubleType>().write_batch(&v, Some(&def), None)
                    }
                    AttrType::Boolean => {
                        let (v, def) = optional(rows, |r| match cell(r, name, t) {
                            Some(Value::Bool(b)) => Some(*b),
                            _ => None,
                        });
                        c.typed::<BoolType>().write_batch(&v, Some(&def), None)
                    }
                }
                .map_err(|e| err(&e))?;
            }
            _ => {
                // A list: repetition level 0 starts a row, 1 continues it; every row has at
                // least one set, so every definition level is the maximum (1).
                let (mut v, mut def, mut rep) = (Vec::new(), Vec::new(), Vec::new());
                for r in rows {
                    for (i, s) in r.schema_sets.iter().enumerate() {
                        v.push(ByteArray::from(s.as_bytes().to_vec()));
                        def.push(1);
                        rep.push(i16::from(i > 0));
                    }
                    if r.schema_sets.is_empty() {
                        def.push(0);
                        rep.push(0);
                    }
                }
                c.typed::<ByteArrayType>()
                    .write_batch(&v, Some(&def), Some(&rep))
                    .map_err(|e| err(&e))?;
            }
        }
        c.close().map_err(|e| err(&e))?;
        column += 1;
    }
    group.close().map_err(|e| err(&e))?;
    w.into_inner().map_err(|e| err(&e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use parquet::file::reader::{FileReader, SerializedFileReader};

    #[test]
    fn rows_round_trip_with_their_types() {
        let row = |c: &str, sets: &[&str]| SessionRow {
            customer_id: c.into(),
            session_start: 1_709_510_400_000,
            session_end: 1_709_510_460_000,
            duration_ms: 60_000,
            event_count: 3,
            counts: [2, 1, 0, 0].into(),
            attrs: Vec::new(),
            layout: Arc::new(RowLayout::classic()),
            schema_sets: sets.iter().map(|s| Arc::from(*s)).collect(),
        };
        let bytes = encode(&[row("a", &["web@1"]), row("b", &["web@1", "web@2"])]).unwrap();
        let mut f = tempfile::tempfile().unwrap();
        std::io::Write::write_all(&mut f, &bytes).unwrap();
        let reader = SerializedFileReader::new(f).unwrap();
        assert_eq!(reader.metadata().file_metadata().num_rows(), 2);
        let rows: Vec<String> =
            reader.get_row_iter(None).unwrap().map(|r| r.unwrap().to_string()).collect();
        assert!(rows[1].contains("customer_id: \"b\""), "{rows:?}");
        assert!(rows[1].contains("schema_sets: [\"web@1\", \"web@2\"]"), "{rows:?}");
        assert!(rows[0].contains("session_start: 2024-03-04 00:00:00.000 +00:00"), "{rows:?}");
    }
}
