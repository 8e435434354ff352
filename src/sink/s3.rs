//! S3 as the sink: gzip JSON Lines objects under deterministic names.
//!
//! ```text
//! PREFIX/sessions/dt=YYYY-MM-DD/hour=HH/STREAM-CHECKPOINT.jsonl.gz   rows, by session start
//! PREFIX/dead-letter/stream=STREAM/STREAM-CHECKPOINT.jsonl.gz       dead letters
//! ```
//!
//! `STREAM` names the source partition (`p0003`) so that partitions checkpoint independently;
//! `CHECKPOINT` is the checkpoint that made the object. A re-run rewrites the same names, and
//! recovery deletes a stream's objects of checkpoints after its last committed one, so no row
//! appears twice even when a re-run cuts its checkpoints differently. Requests are retried with
//! exponential backoff and jitter until they succeed or the process stops: S3 being down stalls
//! the pipeline (and with it the consumer), it loses nothing.

use super::objects::{Condition, ObjectError, ObjectStore as _, S3Objects, SinkHealth};
use super::{DeadLetter, Sink, SinkError};
use crate::aggregate::SessionRow;
use crate::event::CheckpointId;
use crate::s3::S3Location;
use aws_sdk_s3::Client;
use flate2::Compression;
use flate2::write::GzEncoder;
use std::collections::BTreeMap;
use std::io::Write as _;
use std::sync::Arc;
use tokio::runtime::Handle;
use tokio_util::sync::CancellationToken;

/// Written last by a completed replay, with the summary.
const SUCCESS: &str = "_SUCCESS";

/// An S3 prefix as the sink of one stream (`replay --output s3://…`).
#[derive(Debug, Clone)]
pub struct S3Sink {
    objects: S3Objects,
    stream: String,
    parquet: bool,
}

/// Gzip at the fastest level: rows and dead letters are repetitive text that compresses almost
/// as well there, and `run` compresses every row it emits on its commit threads.
fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = GzEncoder::new(Vec::with_capacity(data.len() / 4 + 64), Compression::fast());
    // Writing to memory cannot fail.
    let _ = e.write_all(data);
    e.finish().unwrap_or_default()
}

/// `STREAM-CHECKPOINT.jsonl.gz` or `.parquet` → checkpoint, for this stream's objects.
fn object_id(key: &str, stream: &str) -> Option<CheckpointId> {
    let name = key.rsplit('/').next()?;
    let rest = name.strip_prefix(stream)?.strip_prefix('-')?;
    rest.strip_suffix(".jsonl.gz").or_else(|| rest.strip_suffix(".parquet"))?.parse().ok()
}

impl From<ObjectError> for SinkError {
    fn from(e: ObjectError) -> Self {
        match e {
            ObjectError::Cancelled(what) => SinkError::Cancelled(what),
            ObjectError::Failed { op, key, message } => SinkError::S3 { op, key, message },
            e @ ObjectError::Precondition { .. } => {
                SinkError::S3 { op: "put", key: String::new(), message: e.to_string() }
            }
        }
    }
}

impl S3Sink {
    /// A sink writing `stream`'s objects under `location`; blocking calls run on `rt`, and
    /// retries stop when `cancel` fires.
    #[must_use]
    pub fn new(
        client: Client,
        location: S3Location,
        stream: &str,
        rt: Handle,
        cancel: CancellationToken,
    ) -> Self {
        let objects = S3Objects::new(client, location, rt, cancel, Arc::new(SinkHealth::default()));
        S3Sink { objects, stream: stream.to_owned(), parquet: false }
    }

    /// Writes session rows as Parquet (`.parquet`) instead of gzip JSON Lines.
    #[must_use]
    pub fn parquet(mut self, on: bool) -> Self {
        self.parquet = on;
        self
    }

    /// Stores `body` at `relative` (under the prefix), in parts when it is large.
    ///
    /// # Errors
    /// Cancelled while retrying, or refused.
    pub fn put(&self, relative: &str, body: &[u8]) -> Result<(), SinkError> {
        self.objects.put(relative, body.to_vec().into(), &[], Condition::None)?;
        Ok(())
    }

    /// Reads an object under the prefix; `None` if it does not exist.
    ///
    /// # Errors
    /// Cancelled while retrying, or refused.
    pub fn get(&self, relative: &str) -> Result<Option<Vec<u8>>, SinkError> {
        Ok(self.objects.get(relative)?.map(|o| o.body.to_vec()))
    }

    /// This stream's row objects and dead-letter objects: (key under the prefix, checkpoint).
    fn stream_objects(&self) -> Result<[Vec<(String, CheckpointId)>; 2], SinkError> {
        let mine = |dir: &str| -> Result<Vec<(String, CheckpointId)>, SinkError> {
            Ok(self
                .objects
                .list(dir)?
                .into_iter()
                .filter_map(|k| object_id(&k, &self.stream).map(|id| (k, id)))
                .collect())
        };
        Ok([mine("sessions/")?, mine(&format!("dead-letter/stream={}/", self.stream))?])
    }
}

/// The objects of checkpoint `id` of `stream`: rows by session start hour (gzip JSON Lines or
/// Parquet) in the order of their hours, then dead letters; (key under the prefix, body) each.
///
/// # Errors
/// Parquet encoding failed.
pub fn encode(
    stream: &str,
    id: CheckpointId,
    rows: &[SessionRow],
    dead: &[DeadLetter],
    parquet: bool,
) -> Result<Vec<(String, Vec<u8>)>, SinkError> {
    // By hour since the epoch: no date string per row.
    let mut by_hour: BTreeMap<i64, Vec<&SessionRow>> = BTreeMap::new();
    for r in rows {
        by_hour.entry(r.session_start.div_euclid(3_600_000)).or_default().push(r);
    }
    let name = format!("{stream}-{id:010}.jsonl.gz");
    let mut out = Vec::new();
    for (hours, part) in by_hour {
        let (date, hour) = (crate::aggregate::utc_date(hours * 3_600_000), hours.rem_euclid(24));
        let dir = format!("sessions/dt={date}/hour={hour:02}");
        if parquet {
            let owned: Vec<SessionRow> = part.into_iter().cloned().collect();
            out.push((format!("{dir}/{stream}-{id:010}.parquet"), super::parquet::encode(&owned)?));
        } else {
            let mut buf = Vec::new();
            for r in part {
                r.write_json_line(&mut buf);
            }
            out.push((format!("{dir}/{name}"), gzip(&buf)));
        }
    }
    if !dead.is_empty() {
        let buf: Vec<u8> = dead.iter().flat_map(DeadLetter::to_json_line).collect();
        out.push((format!("dead-letter/stream={stream}/{name}"), gzip(&buf)));
    }
    Ok(out)
}

impl Sink for S3Sink {
    fn write_epoch(
        &self,
        id: CheckpointId,
        rows: &[SessionRow],
        dead: &[DeadLetter],
    ) -> Result<(), SinkError> {
        for (key, body) in encode(&self.stream, id, rows, dead, self.parquet)? {
            self.put(&key, &body)?;
        }
        Ok(())
    }

    fn write_success(&self, summary: &str) -> Result<(), SinkError> {
        self.put(SUCCESS, format!("{summary}\n").as_bytes())
    }

    fn is_marked_complete(&self) -> Result<bool, SinkError> {
        Ok(self.get(SUCCESS)?.is_some())
    }

    fn count_records(&self) -> Result<(u64, u64), SinkError> {
        let mut counts = [0u64; 2];
        for (i, keys) in self.stream_objects()?.into_iter().enumerate() {
            for (key, _) in keys {
                let body = self.get(&key)?.unwrap_or_default();
                if key.ends_with(".parquet") {
                    counts[i] += parquet_rows(body).map_err(|message| SinkError::S3 {
                        op: "read",
                        key: key.clone(),
                        message,
                    })?;
                    continue;
                }
                let mut text = Vec::new();
                std::io::Read::read_to_end(
                    &mut flate2::read::MultiGzDecoder::new(&body[..]),
                    &mut text,
                )
                .map_err(|e| SinkError::S3 {
                    op: "read",
                    key: key.clone(),
                    message: e.to_string(),
                })?;
                counts[i] += memchr::memchr_iter(b'\n', &text).count() as u64;
            }
        }
        Ok((counts[0], counts[1]))
    }

    fn recover(&self, committed: CheckpointId) -> Result<usize, SinkError> {
        // An unfinished run must not leave a marker of an earlier, finished one.
        self.objects.delete(&[SUCCESS.to_owned()])?;
        let stale: Vec<String> = self
            .stream_objects()?
            .into_iter()
            .flatten()
            .filter(|&(_, id)| id > committed)
            .map(|(key, _)| key)
            .collect();
        self.objects.delete(&stale)?;
        Ok(stale.len())
    }
}

fn parquet_rows(body: Vec<u8>) -> Result<u64, String> {
    use parquet::file::reader::FileReader as _;
    let reader = parquet::file::reader::SerializedFileReader::new(bytes::Bytes::from(body))
        .map_err(|e| e.to_string())?;
    Ok(reader.metadata().file_metadata().num_rows() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_names_belong_to_their_stream() {
        let k = "pre/sessions/dt=2024-03-04/hour=07/p0003-0000000012.jsonl.gz";
        assert_eq!(object_id(k, "p0003"), Some(12));
        assert_eq!(object_id(k, "p0001"), None);
        assert_eq!(object_id("pre/sessions/p00031-0000000012.jsonl.gz", "p0003"), None);
        assert_eq!(
            object_id("pre/dead-letter/stream=p0003/p0003-0000000002.jsonl.gz", "p0003"),
            Some(2)
        );
    }

    #[test]
    fn gzip_round_trips() {
        let data = b"{\"a\":1}\n".repeat(100);
        let mut out = Vec::new();
        std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&gzip(&data)[..]), &mut out)
            .unwrap();
        assert_eq!(out, data);
    }
}
