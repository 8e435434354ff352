//! `clickstream record`: a slice of a live Kafka topic or Kinesis stream, captured to
//! `.jsonl.gz` files (a directory or an S3 prefix) that `replay` reads back as the stream.
//!
//! # Layout
//! Per split (Kafka partition, Kinesis shard), files rolled every `--roll` bytes of input:
//! - `{name}-{split}-{first}.jsonl.gz`: one record a line, in the split's order. `name` is the
//!   topic or stream, `split` the partition number or shard id, `first` the position of the
//!   file's first record (a Kafka offset zero-padded to 20 digits, a Kinesis sequence number),
//!   so that key order is stream order within a split.
//! - `_positions/{same stem}.jsonl.gz`, the sidecar: one JSON line per data line, same order,
//!   naming where the record came from (a replay of the recording's directory or prefix leaves
//!   `_positions/` out). Kafka: `{"topic","partition","offset","timestamp_ms","key"}` (`key` is
//!   the UTF-8 key or `null`; a key that is not UTF-8 is `null` with `"key_b64"` beside it; a
//!   record with no value at all, a tombstone, has `"tombstone":true` and an empty data line).
//!   Kinesis: `{"stream","shard","sequence","subsequence","arrival_ms","partition_key"}`,
//!   `subsequence` only for the user records of a KPL aggregate (de-aggregated as `run` does).
//!
//! A file is written as `….tmp` and renamed when complete (sidecar first, then data), so a reader
//! never sees half a file; to S3 each finished file is put whole.
//!
//! # Byte-exactness
//! A record whose bytes hold no `\n` and no `\r` is written as it is, one line: bytes that are
//! not UTF-8 too, so that `replay` dead-letters them as the stream would (replay reads bytes).
//! A record holding `\n` or `\r` cannot be one line: in its data line each of them becomes a
//! space between JSON tokens (whitespace as well) and U+0001 inside a string (a raw control
//! character as well, which no string may hold), so the line gets its record's verdict: the
//! same event, or the same dead letter. Its sidecar line carries `"raw_b64"`, the exact bytes
//! in standard base64. The exact record is thus `raw_b64` when present, else the data line.
//!
//! # Side effects on the source
//! None. Kafka is read with `assign()`, under a group id of its own
//! (`clickstream-record-<pid>-<nanos>`) with auto-commit off, and never commits: no consumer
//! group's offsets move. Kinesis is read with `GetShardIterator`/`GetRecords`, no lease table.

mod kafka;
mod kinesis;
mod sink;

pub use sink::{SIDECARS, data_line, data_name, file_stem, sidecar_name};

use std::collections::BTreeMap;
use std::io::IsTerminal as _;
use std::time::Instant;

/// A failure of `clickstream record`.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// The arguments do not make a capture.
    #[error("{0}")]
    Usage(String),
    /// Writing a file.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// Putting a file to S3.
    #[error("S3: {0}")]
    S3(String),
    /// Reading Kafka.
    #[error("Kafka: {0}")]
    Kafka(String),
    /// Reading Kinesis.
    #[error("Kinesis: {0}")]
    Kinesis(String),
}

/// Where a Kafka capture starts in each partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KafkaFrom {
    /// The oldest offset kept.
    Earliest,
    /// This offset (the oldest kept if it is older).
    Offset(i64),
    /// The first record stamped at or after this time (ms since the epoch).
    Time(i64),
}

/// Where a Kafka capture ends in each partition (exclusive).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KafkaTo {
    /// The high watermark when the capture starts.
    HighWatermark,
    /// Before this offset (at most the high watermark).
    Offset(i64),
    /// Before the first record stamped at or after this time.
    Time(i64),
}

/// Where a Kinesis capture starts in each shard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KinesisFrom {
    /// The oldest record kept (`TRIM_HORIZON`).
    TrimHorizon,
    /// At these sequence numbers (`AT_SEQUENCE_NUMBER`): `shard=sequence` entries, or one bare
    /// sequence when one shard is captured; shards not named start at the trim horizon.
    Sequences(Vec<String>),
    /// At this time (`AT_TIMESTAMP`, ms since the epoch).
    Time(i64),
}

/// What to capture.
#[derive(Debug, Clone)]
pub enum Source {
    /// A Kafka topic.
    Kafka {
        /// Bootstrap servers.
        brokers: String,
        /// The topic.
        topic: String,
        /// librdkafka properties (credentials; `group.id` and commits are ours).
        properties: BTreeMap<String, String>,
        /// Partitions to capture; empty: all.
        partitions: Vec<i32>,
        /// Start.
        from: KafkaFrom,
        /// End.
        to: KafkaTo,
    },
    /// A Kinesis stream (client from the AWS environment, `AWS_ENDPOINT_URL_KINESIS`).
    Kinesis {
        /// Stream name or ARN.
        stream: String,
        /// Shards to capture; empty: all.
        shards: Vec<String>,
        /// Start.
        from: KinesisFrom,
        /// Stop at the first record that arrived at or after this time (ms since the epoch).
        to_time: Option<i64>,
    },
}

/// A capture.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The source and its range.
    pub source: Source,
    /// A directory or `s3://bucket/prefix`.
    pub output: String,
    /// Input bytes per file before the next one starts.
    pub roll: u64,
    /// S3 path-style addressing (`[s3] force_path_style`).
    pub force_path_style: bool,
}

/// One split's part of the summary.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct SplitSummary {
    /// Position of the first record captured (`null`: none).
    pub first: serde_json::Value,
    /// Position of the last record captured.
    pub last: serde_json::Value,
    /// Records captured.
    pub records: u64,
}

/// What a capture wrote.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct Summary {
    /// Records captured (Kinesis: user records).
    pub records: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Data files written (each with its sidecar).
    pub files: u64,
    /// Per split.
    pub splits: BTreeMap<String, SplitSummary>,
    /// Wall time.
    pub seconds: f64,
}

impl Summary {
    /// The summary as one JSON line.
    #[must_use]
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    fn note(&mut self, split: &str, position: serde_json::Value, bytes: usize) {
        let s = self.splits.entry(split.to_owned()).or_default();
        if s.records == 0 {
            s.first = position.clone();
        }
        s.last = position;
        s.records += 1;
        self.records += 1;
        self.bytes += bytes as u64;
    }
}

/// A progress bar on stderr when it is a terminal, else nothing.
fn progress(total: Option<u64>) -> indicatif::ProgressBar {
    if !std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let (bar, template) = match total {
        Some(n) => (
            indicatif::ProgressBar::new(n),
            "{elapsed_precise} [{bar:40}] {pos}/{len} records ({per_sec}) {msg}",
        ),
        None => (
            indicatif::ProgressBar::new_spinner(),
            "{elapsed_precise} {spinner} {pos} records ({per_sec}) {msg}",
        ),
    };
    let style = indicatif::ProgressStyle::with_template(template)
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
    bar.set_style(style);
    bar
}

/// Captures the range of `s` to its output. Blocking; must be called inside a tokio runtime,
/// off its async threads.
///
/// # Errors
/// Bad arguments, the source cannot be read, or a file cannot be written or put.
pub fn record(s: &Settings) -> Result<Summary, RecordError> {
    let started = Instant::now();
    let rt = tokio::runtime::Handle::try_current()
        .map_err(|e| RecordError::Usage(format!("no runtime: {e}")))?;
    let target = sink::Target::open(&s.output, s.force_path_style, &rt)?;
    let mut summary = match &s.source {
        Source::Kafka { .. } => kafka::capture(&s.source, &target, s.roll)?,
        Source::Kinesis { .. } => kinesis::capture(&rt, &s.source, &target, s.roll)?,
    };
    target.close();
    summary.seconds = started.elapsed().as_secs_f64();
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_summary_counts_per_split() {
        let mut s = Summary::default();
        s.note("0", serde_json::json!(5), 10);
        s.note("0", serde_json::json!(6), 3);
        s.note("1", serde_json::json!(0), 1);
        let v: serde_json::Value = serde_json::from_str(&s.to_json()).unwrap();
        assert_eq!(v["records"], 3);
        assert_eq!(v["bytes"], 14);
        assert_eq!(v["splits"]["0"], serde_json::json!({"first": 5, "last": 6, "records": 2}));
        assert_eq!(v["splits"]["1"]["records"], 1);
    }
}
