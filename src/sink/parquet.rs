//! Session rows as a Parquet file, with column types that `DuckDB`, Athena and Spark read as
//! such: times as UTC timestamps (milliseconds), counts as 64-bit integers, the schema sets as
//! a list of strings.

use super::SinkError;
use crate::aggregate::SessionRow;
use parquet::basic::Compression;
use parquet::data_type::{ByteArray, ByteArrayType, Int64Type};
use parquet::file::properties::WriterProperties;
use parquet::file::writer::SerializedFileWriter;
use parquet::schema::parser::parse_message_type;
use std::sync::Arc;

const SCHEMA: &str = "
message session {
  REQUIRED BYTE_ARRAY customer_id (STRING);
  REQUIRED INT64 session_start (TIMESTAMP(MILLIS, true));
  REQUIRED INT64 session_end (TIMESTAMP(MILLIS, true));
  REQUIRED INT64 duration_ms;
  REQUIRED INT64 event_count;
  REQUIRED INT64 page_views;
  REQUIRED INT64 subscribe_hovers;
  REQUIRED INT64 subscribe_clicks;
  REQUIRED INT64 support_calls;
  REQUIRED GROUP schema_sets (LIST) {
    REPEATED GROUP list {
      REQUIRED BYTE_ARRAY element (STRING);
    }
  }
}";

fn err(e: &parquet::errors::ParquetError) -> SinkError {
    SinkError::S3 { op: "encode parquet", key: String::new(), message: e.to_string() }
}

/// Encodes `rows` as one Parquet file (one row group, Snappy).
///
/// # Errors
/// The encoder refused the data (not expected for valid rows).
pub fn encode(rows: &[SessionRow]) -> Result<Vec<u8>, SinkError> {
    let schema = Arc::new(parse_message_type(SCHEMA).map_err(|e| err(&e))?);
    let props = Arc::new(WriterProperties::builder().set_compression(Compression::SNAPPY).build());
    let mut w = SerializedFileWriter::new(Vec::new(), schema, props).map_err(|e| err(&e))?;
    let mut group = w.next_row_group().map_err(|e| err(&e))?;
    let ints: [fn(&SessionRow) -> i64; 8] = [
        |r| r.session_start,
        |r| r.session_end,
        |r| r.duration_ms,
        |r| r.event_count as i64,
        |r| r.page_views as i64,
        |r| r.subscribe_hovers as i64,
        |r| r.subscribe_clicks as i64,
        |r| r.support_calls as i64,
    ];
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
            1..=8 => {
                let v: Vec<i64> = rows.iter().map(ints[column - 1]).collect();
                c.typed::<Int64Type>().write_batch(&v, None, None).map_err(|e| err(&e))?;
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
            page_views: 2,
            subscribe_hovers: 1,
            subscribe_clicks: 0,
            support_calls: 0,
            schema_sets: sets.iter().map(|s| (*s).to_owned()).collect(),
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
