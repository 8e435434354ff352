//! Sink: session rows and dead-letter records out, durably, under deterministic names.
//!
//! Output of checkpoint `n` goes to files named after `n`, written to a temporary name, synced
//! and renamed. A re-run after a crash therefore rewrites the same names instead of adding new
//! ones, and recovery removes whatever a crashed run wrote after its last committed checkpoint.

pub mod dead_letter_topic;
pub mod file;
pub mod objects;
pub mod parquet;
pub mod s3;

use crate::event::LinePosition;
use base64::Engine;
use serde::Serialize;
use std::sync::Arc;
use thiserror::Error;

/// Where checkpoints' output goes. Two implementations: a local directory and S3.
pub trait Sink {
    /// Writes checkpoint `id`'s rows and dead letters durably, under names derived from `id`
    /// (a re-run rewrites the same names).
    ///
    /// # Errors
    /// Nothing of it may be relied on; the checkpoint must not commit.
    fn write_epoch(
        &self,
        id: crate::event::CheckpointId,
        rows: &[crate::aggregate::SessionRow],
        dead: &[DeadLetter],
    ) -> Result<(), SinkError>;

    /// Removes output written after checkpoint `committed` (by a run that crashed before
    /// committing it); returns how much it removed.
    ///
    /// # Errors
    /// The output cannot be listed or removed.
    fn recover(&self, committed: crate::event::CheckpointId) -> Result<usize, SinkError>;

    /// Marks the output complete (`_SUCCESS`, holding the summary), last.
    ///
    /// # Errors
    /// The marker cannot be written.
    fn write_success(&self, summary: &str) -> Result<(), SinkError>;

    /// Whether the completion marker is present.
    ///
    /// # Errors
    /// The output cannot be read.
    fn is_marked_complete(&self) -> Result<bool, SinkError>;

    /// Counts the records written: (session rows, dead letters).
    ///
    /// # Errors
    /// The output cannot be read.
    fn count_records(&self) -> Result<(u64, u64), SinkError>;
}

/// A sink failure.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum SinkError {
    /// A file-system operation failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// On which path.
        path: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// An S3 request failed (after retries).
    #[error("{op} {key}: {message}")]
    S3 {
        /// What was being done.
        op: &'static str,
        /// The object or prefix.
        key: String,
        /// What S3 said.
        message: String,
    },
    /// Shutting down while an S3 request was being retried.
    #[error("stopped while retrying {0}")]
    Cancelled(String),
}

/// A rejected line, with enough to find and replay it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// Why it was rejected.
    pub reason: Arc<str>,
    /// Details for a human (parser message, path, watermark).
    pub detail: String,
    /// The input's name.
    pub input: Arc<str>,
    /// Where in the input.
    pub position: LinePosition,
    /// The line as read, without its `\n`.
    pub raw: Vec<u8>,
    /// Set when `raw` is only the start of a line of this many bytes.
    pub truncated_from: Option<u64>,
    /// The schema set (`name@version,…`) in force when the line was processed.
    pub schema_set: Arc<str>,
}

#[derive(Serialize)]
struct DeadLetterJson<'a> {
    reason: &'a str,
    detail: &'a str,
    source: SourceJson<'a>,
    schema_set: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    raw: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    raw_base64: Option<String>,
    /// Length of the whole line when `raw` holds only its start.
    #[serde(skip_serializing_if = "Option::is_none")]
    raw_truncated_from: Option<u64>,
}

#[derive(Serialize)]
struct SourceJson<'a> {
    file: &'a str,
    line: u64,
    offset: u64,
}

impl DeadLetter {
    /// The record as one JSON line (with its `\n`).
    #[must_use]
    pub fn to_json_line(&self) -> Vec<u8> {
        let text = std::str::from_utf8(&self.raw).ok();
        let rec = DeadLetterJson {
            reason: &self.reason,
            detail: &self.detail,
            source: SourceJson {
                file: &self.input,
                line: self.position.line,
                offset: self.position.offset,
            },
            schema_set: &self.schema_set,
            raw: text,
            raw_base64: text
                .is_none()
                .then(|| base64::engine::general_purpose::STANDARD.encode(&self.raw)),
            raw_truncated_from: self.truncated_from,
        };
        // Serializing plain strings and integers to memory cannot fail.
        let mut out = serde_json::to_vec(&rec).unwrap_or_default();
        out.push(b'\n');
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dead_letter_keeps_the_original_line() {
        let mut d = DeadLetter {
            reason: "invalid_json".into(),
            detail: "EOF while parsing".into(),
            input: "in.jsonl".into(),
            position: LinePosition { input: 0, line: 3, offset: 120 },
            raw: b"{\"a\":\r".to_vec(),
            truncated_from: None,
            schema_set: "web@1".into(),
        };
        let v: serde_json::Value = serde_json::from_slice(&d.to_json_line()).unwrap();
        assert_eq!(v["raw"], "{\"a\":\r");
        assert_eq!(v["schema_set"], "web@1");
        assert_eq!(v["source"]["line"], 3);
        d.raw = b"caf\xe9".to_vec();
        let v: serde_json::Value = serde_json::from_slice(&d.to_json_line()).unwrap();
        assert_eq!(v["raw_base64"], "Y2Fm6Q==");
        assert!(v.get("raw").is_none());
    }
}
