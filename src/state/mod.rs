//! State: what a checkpoint saves so a restart resumes exactly where it stopped.
//!
//! Open sessions, remembered message ids, the watermark, the source position and the run's
//! counters are written in **one atomic batch** per checkpoint. Between checkpoints everything
//! lives in memory; the store is read only at start-up (no read per event).

pub mod format;
pub mod memory;
pub mod rocksdb;

use crate::event::{CheckpointId, SourcePosition};
use crate::session::Session;
use crate::session::SessionChanges;
use crate::session::dedup::DedupChanges;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use thiserror::Error;

/// Format version of the stored records; bump on an incompatible change.
pub const STATE_VERSION: u32 = 3;

/// A state-store failure.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum StateError {
    /// `RocksDB` refused an operation.
    #[error("state store {path}: {source}")]
    Rocks {
        /// The store's directory.
        path: String,
        /// `RocksDB`'s error.
        #[source]
        source: ::rocksdb::Error,
    },
    /// Another process has the store open.
    #[error(
        "state store {path} is in use by another process (a replay or run with the same --state is still going)"
    )]
    Locked {
        /// The store's directory.
        path: String,
    },
    /// A stored record does not decode.
    #[error("state store {path}: corrupt {what} record: {source}")]
    Corrupt {
        /// The store's directory.
        path: String,
        /// Which record.
        what: &'static str,
        /// The decoder's error.
        #[source]
        source: postcard::Error,
    },
    /// Written by an incompatible version.
    #[error(
        "state store {path} has format version {found}, this build reads {}..={STATE_VERSION}",
        format::OLDEST_READABLE
    )]
    Version {
        /// The store's directory.
        path: String,
        /// The version found.
        found: u32,
    },
}

/// Running totals of a replay, saved with each checkpoint so a resumed run reports the whole.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    /// Input lines read.
    pub lines: u64,
    /// Events accepted into sessions.
    pub accepted: u64,
    /// Copies of accepted messages, dropped.
    pub duplicates: u64,
    /// Dead-letter records by reason.
    pub dead_lettered: BTreeMap<String, u64>,
    /// Session rows emitted.
    pub sessions: u64,
    /// Attribute values cut to their byte limit.
    pub truncated_values: u64,
}

/// The checkpoint record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Meta {
    /// Format version.
    pub version: u32,
    /// Last committed checkpoint.
    pub checkpoint: CheckpointId,
    /// Where the source resumes.
    pub position: SourcePosition,
    /// Highest event time accepted (the watermark is derived from it).
    pub max_time: Option<i64>,
    /// Totals so far.
    pub counters: Counters,
    /// Identity of the inputs (name and size of each), to refuse resuming on other data.
    pub inputs: Vec<String>,
    /// Settings that shape the output (gap, lateness, horizon, schema versions).
    pub settings: String,
    /// Every input was read to the end and every session flushed.
    pub finished: bool,
    /// Schema sets (`name@version,…`) by the index that open sessions record.
    pub schema_sets: Vec<String>,
    /// Kind names by the number that open sessions count them under; only ever appended to.
    pub kinds: Vec<String>,
    /// Attribute identities (`name:type:aggregate`) by the number open sessions keep them
    /// under; only ever appended to.
    pub attributes: Vec<String>,
}

/// Everything a store holds, read at start-up.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// The checkpoint record, if any checkpoint was committed.
    pub meta: Option<Meta>,
    /// Open sessions by customer.
    pub sessions: Vec<(Box<str>, Vec<Session>)>,
    /// Remembered message ids with their event times.
    pub ids: Vec<(Box<str>, i64)>,
}

/// One checkpoint's writes, applied atomically.
#[derive(Debug, Default)]
pub struct CheckpointBatch {
    /// The new checkpoint record.
    pub meta: Option<Meta>,
    /// Open-session changes.
    pub sessions: SessionChanges,
    /// Dedup changes.
    pub dedup: DedupChanges,
}

impl CheckpointBatch {
    /// Folds a later batch into this one: applying the result leaves what applying both in
    /// order would. A checkpoint that failed keeps its changes this way for the next one.
    pub fn absorb(&mut self, newer: CheckpointBatch) {
        let touched: std::collections::HashSet<&str> = newer
            .sessions
            .upserts
            .iter()
            .map(|(k, _)| &**k)
            .chain(newer.sessions.deletes.iter().map(|k| &**k))
            .collect();
        self.sessions.upserts.retain(|(k, _)| !touched.contains(&**k));
        // Deletes are applied before upserts: a delete then a newer upsert leaves the upsert.
        self.sessions.upserts.extend(newer.sessions.upserts);
        self.sessions.upserts.sort_by(|a, b| a.0.cmp(&b.0));
        self.sessions.deletes.extend(newer.sessions.deletes);
        self.sessions.deletes.sort();
        self.sessions.deletes.dedup();
        // Inserts are written before the range delete of forgotten hours, as they would be in
        // two batches.
        self.dedup.inserts.extend(newer.dedup.inserts);
        self.dedup.forget_hours_before =
            self.dedup.forget_hours_before.max(newer.dedup.forget_hours_before);
        if newer.meta.is_some() {
            self.meta = newer.meta;
        }
    }
}

/// Durable state with atomic batches. Two implementations: `RocksDB`, and memory for tests.
pub trait StateStore {
    /// Reads everything.
    ///
    /// # Errors
    /// The store cannot be read or holds undecodable records.
    fn load(&self) -> Result<Snapshot, StateError>;

    /// Applies one batch atomically and durably: all of it or none of it survives a crash.
    ///
    /// # Errors
    /// The write failed; nothing of the batch is visible.
    fn write_batch(&mut self, batch: &CheckpointBatch) -> Result<(), StateError>;
}

#[cfg(test)]
mod tests;
