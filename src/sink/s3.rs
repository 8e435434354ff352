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

use super::{DeadLetter, Sink, SinkError};
use crate::aggregate::SessionRow;
use crate::event::CheckpointId;
use crate::s3::{self, S3Location};
use aws_sdk_s3::Client;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart, Delete, ObjectIdentifier};
use backon::{ExponentialBuilder, Retryable};
use flate2::Compression;
use flate2::write::GzEncoder;
use std::collections::BTreeMap;
use std::future::Future;
use std::io::Write as _;
use std::time::{Duration, Instant};
use tokio::runtime::Handle;
use tokio_util::sync::CancellationToken;
use tracing::warn;

/// Written last by a completed replay, with the summary.
const SUCCESS: &str = "_SUCCESS";
/// Objects above this size are uploaded in parts.
const MULTIPART_ABOVE: usize = 16 << 20;
/// Part size of a multipart upload (S3's minimum is 5 MiB).
const PART_SIZE: usize = 8 << 20;

/// An S3 prefix as the sink of one stream.
#[derive(Debug, Clone)]
pub struct S3Sink {
    client: Client,
    location: S3Location,
    stream: String,
    rt: Handle,
    cancel: CancellationToken,
    parquet: bool,
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = GzEncoder::new(Vec::with_capacity(data.len() / 4 + 64), Compression::default());
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
        S3Sink { client, location, stream: stream.to_owned(), rt, cancel, parquet: false }
    }

    /// Writes session rows as Parquet (`.parquet`) instead of gzip JSON Lines.
    #[must_use]
    pub fn parquet(mut self, on: bool) -> Self {
        self.parquet = on;
        self
    }

    /// The same sink for another stream.
    #[must_use]
    pub fn for_stream(&self, stream: &str) -> S3Sink {
        S3Sink { stream: stream.to_owned(), ..self.clone() }
    }

    /// The stream this sink writes.
    #[must_use]
    pub fn stream_name(&self) -> &str {
        &self.stream
    }

    /// The client and location (for state snapshots next to the output).
    #[must_use]
    pub fn parts(&self) -> (&Client, &S3Location) {
        (&self.client, &self.location)
    }

    /// Runs `op` until it succeeds, with backoff and jitter, or until cancelled.
    fn retrying<T, E, F, Fut>(&self, what: &'static str, key: &str, op: F) -> Result<T, SinkError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, E>>,
        E: std::fmt::Display,
    {
        let backoff = ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(100))
            .with_max_delay(Duration::from_secs(5))
            .with_jitter()
            .without_max_times();
        let started = Instant::now();
        let run = op.retry(backoff).notify(|e: &E, after: Duration| {
            metrics::counter!("clickstream_s3_retries_total", "op" => what).increment(1);
            warn!(op = what, key, error = %e, retry_in_ms = after.as_millis() as u64, "S3 request failed; retrying.");
        });
        let cancel = self.cancel.clone();
        let r = self.rt.block_on(async move {
            tokio::select! {
                r = run => Some(r),
                () = cancel.cancelled() => None,
            }
        });
        metrics::histogram!("clickstream_s3_request_seconds", "op" => what)
            .record(started.elapsed().as_secs_f64());
        match r {
            Some(Ok(v)) => Ok(v),
            Some(Err(e)) => {
                Err(SinkError::S3 { op: what, key: key.to_owned(), message: e.to_string() })
            }
            None => Err(SinkError::Cancelled(format!("{what} {key}"))),
        }
    }

    /// Stores `body` at `relative` (under the prefix), in parts when it is large.
    ///
    /// # Errors
    /// Cancelled while retrying.
    pub fn put(&self, relative: &str, body: &[u8]) -> Result<(), SinkError> {
        let key = self.location.key(relative);
        if body.len() > MULTIPART_ABOVE {
            return self.put_multipart(&key, body);
        }
        let (c, bucket) = (&self.client, &self.location.bucket);
        self.retrying("put", &key, || async {
            c.put_object()
                .bucket(bucket)
                .key(&key)
                .body(ByteStream::from(body.to_vec()))
                .send()
                .await
                .map_err(|e| s3::describe(&e))
        })?;
        Ok(())
    }

    fn put_multipart(&self, key: &str, body: &[u8]) -> Result<(), SinkError> {
        let (c, bucket) = (&self.client, &self.location.bucket);
        let upload = self.retrying("create multipart upload", key, || async {
            c.create_multipart_upload()
                .bucket(bucket)
                .key(key)
                .send()
                .await
                .map_err(|e| s3::describe(&e))
        })?;
        let id = upload.upload_id().unwrap_or_default().to_owned();
        let mut parts = Vec::new();
        for (i, chunk) in body.chunks(PART_SIZE).enumerate() {
            let n = i as i32 + 1;
            let done = self.retrying("upload part", key, || async {
                c.upload_part()
                    .bucket(bucket)
                    .key(key)
                    .upload_id(&id)
                    .part_number(n)
                    .body(ByteStream::from(chunk.to_vec()))
                    .send()
                    .await
                    .map_err(|e| s3::describe(&e))
            })?;
            parts.push(
                CompletedPart::builder()
                    .part_number(n)
                    .set_e_tag(done.e_tag().map(str::to_owned))
                    .build(),
            );
        }
        let completed = CompletedMultipartUpload::builder().set_parts(Some(parts)).build();
        self.retrying("complete multipart upload", key, || async {
            c.complete_multipart_upload()
                .bucket(bucket)
                .key(key)
                .upload_id(&id)
                .multipart_upload(completed.clone())
                .send()
                .await
                .map_err(|e| s3::describe(&e))
        })?;
        Ok(())
    }

    /// Every key under `relative` (a prefix under the sink's prefix).
    ///
    /// # Errors
    /// Cancelled while retrying.
    pub fn list(&self, relative: &str) -> Result<Vec<String>, SinkError> {
        let prefix = self.location.key(relative);
        let (c, bucket) = (&self.client, &self.location.bucket);
        self.retrying("list", &prefix, || async {
            let mut keys = Vec::new();
            let mut pages =
                c.list_objects_v2().bucket(bucket).prefix(&prefix).into_paginator().send();
            while let Some(page) = pages.next().await {
                let page = page.map_err(|e| s3::describe(&e))?;
                keys.extend(page.contents().iter().filter_map(|o| o.key().map(str::to_owned)));
            }
            Ok::<_, String>(keys)
        })
    }

    /// Reads an object under the prefix; `None` if it does not exist.
    ///
    /// # Errors
    /// Cancelled while retrying.
    pub fn get(&self, relative: &str) -> Result<Option<Vec<u8>>, SinkError> {
        let key = self.location.key(relative);
        let (c, bucket) = (&self.client, &self.location.bucket);
        self.retrying("get", &key, || async {
            match c.get_object().bucket(bucket).key(&key).send().await {
                Ok(o) => {
                    let b = o.body.collect().await.map_err(|e| e.to_string())?;
                    Ok(Some(b.into_bytes().to_vec()))
                }
                Err(e)
                    if e.as_service_error().is_some_and(
                        aws_sdk_s3::operation::get_object::GetObjectError::is_no_such_key,
                    ) =>
                {
                    Ok(None)
                }
                Err(e) => Err(s3::describe(&e)),
            }
        })
    }

    /// Deletes full keys, 1000 per request.
    ///
    /// # Errors
    /// Cancelled while retrying.
    pub fn delete_keys(&self, keys: &[String]) -> Result<(), SinkError> {
        let (c, bucket) = (&self.client, &self.location.bucket);
        for batch in keys.chunks(1000) {
            let ids: Vec<ObjectIdentifier> = batch
                .iter()
                .filter_map(|k| ObjectIdentifier::builder().key(k).build().ok())
                .collect();
            let delete =
                Delete::builder().set_objects(Some(ids)).quiet(true).build().map_err(|e| {
                    SinkError::S3 { op: "delete", key: batch[0].clone(), message: e.to_string() }
                })?;
            self.retrying("delete", &batch[0], || async {
                c.delete_objects()
                    .bucket(bucket)
                    .delete(delete.clone())
                    .send()
                    .await
                    .map_err(|e| s3::describe(&e))
            })?;
        }
        Ok(())
    }

    /// This stream's row objects and dead-letter objects: (full key, checkpoint) each.
    fn stream_objects(&self) -> Result<[Vec<(String, CheckpointId)>; 2], SinkError> {
        let mine = |dir: &str| -> Result<Vec<(String, CheckpointId)>, SinkError> {
            Ok(self
                .list(dir)?
                .into_iter()
                .filter_map(|k| object_id(&k, &self.stream).map(|id| (k, id)))
                .collect())
        };
        Ok([mine("sessions/")?, mine(&format!("dead-letter/stream={}/", self.stream))?])
    }

    /// Whether the bucket answers (for readiness).
    #[must_use]
    pub fn reachable(&self) -> bool {
        let (c, bucket) = (&self.client, &self.location.bucket);
        self.rt.block_on(async {
            tokio::time::timeout(Duration::from_secs(5), c.head_bucket().bucket(bucket).send())
                .await
                .is_ok_and(|r| r.is_ok())
        })
    }
}

impl Sink for S3Sink {
    fn write_epoch(
        &self,
        id: CheckpointId,
        rows: &[SessionRow],
        dead: &[DeadLetter],
    ) -> Result<(), SinkError> {
        let mut by_hour: BTreeMap<(String, i64), Vec<&SessionRow>> = BTreeMap::new();
        for r in rows {
            let hour = r.session_start.div_euclid(3_600_000).rem_euclid(24);
            by_hour.entry((r.date(), hour)).or_default().push(r);
        }
        let name = format!("{}-{id:010}.jsonl.gz", self.stream);
        for ((date, hour), part) in by_hour {
            let dir = format!("sessions/dt={date}/hour={hour:02}");
            if self.parquet {
                let owned: Vec<SessionRow> = part.into_iter().cloned().collect();
                let body = super::parquet::encode(&owned)?;
                self.put(&format!("{dir}/{}-{id:010}.parquet", self.stream), &body)?;
            } else {
                let mut buf = Vec::new();
                for r in part {
                    // Serializing plain strings and integers to memory cannot fail.
                    let _ = serde_json::to_writer(&mut buf, r);
                    buf.push(b'\n');
                }
                self.put(&format!("{dir}/{name}"), &gzip(&buf))?;
            }
        }
        if !dead.is_empty() {
            let buf: Vec<u8> = dead.iter().flat_map(DeadLetter::to_json_line).collect();
            self.put(&format!("dead-letter/stream={}/{name}", self.stream), &gzip(&buf))?;
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
        let prefix = self.location.key("");
        let mut counts = [0u64; 2];
        for (i, keys) in self.stream_objects()?.into_iter().enumerate() {
            for (key, _) in keys {
                let relative = key.strip_prefix(&prefix).unwrap_or(&key);
                let body = self.get(relative)?.unwrap_or_default();
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
        self.delete_keys(&[self.location.key(SUCCESS)])?;
        let stale: Vec<String> = self
            .stream_objects()?
            .into_iter()
            .flatten()
            .filter(|&(_, id)| id > committed)
            .map(|(key, _)| key)
            .collect();
        self.delete_keys(&stale)?;
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
