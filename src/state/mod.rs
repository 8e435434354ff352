//! State: what a checkpoint saves so a restart resumes exactly where it stopped.
//!
//! Open sessions, remembered message ids, the watermark, the source position and the run's
//! counters are written in **one atomic batch** per checkpoint. The store is also the
//! authoritative copy the pipeline reads on demand ([`crate::session::Backing`]): memory holds
//! a bounded cache of sessions and the ids of batches not yet durable, so state may be far
//! larger than memory, and opening a store reads only its checkpoint record.

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
pub const STATE_VERSION: u32 = 4;

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
    /// Open sessions, and customers with one, now (kept as they change: the store is not
    /// scanned to count them).
    pub open: (u64, u64),
    /// Message ids of event-time hours before this one are forgotten.
    pub forgotten_before: Option<i64>,
}

/// Everything a store holds (for tests, tools and lineage seeding; the pipeline reads on
/// demand).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Contents {
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
    /// Its number in this process (from 1); once it is durable, the store's
    /// [`crate::session::Backing::durable`] says so and memory may let its entries go.
    pub seq: u64,
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
        // Index entries are removed before the upserts are indexed: removing one that an
        // earlier batch wrote and a later one replaced is harmless.
        self.sessions.unindex.extend(newer.sessions.unindex);
        self.sessions.unindex.sort();
        self.sessions.unindex.dedup();
        self.seq = self.seq.max(newer.seq);
        self.dedup.inserts.extend(newer.dedup.inserts.iter());
        if newer.meta.is_some() {
            self.meta = newer.meta;
        }
    }
}

/// Durable state with atomic batches. Two implementations: `RocksDB`, and memory for tests.
pub trait StateStore {
    /// The checkpoint record, if a checkpoint was committed.
    ///
    /// # Errors
    /// The record cannot be read or decoded, or is of an unknown version.
    fn meta(&self) -> Result<Option<Meta>, StateError>;

    /// Reads everything (the pipeline never does: it reads through [`StateStore::backing`]).
    ///
    /// # Errors
    /// The store cannot be read or holds undecodable records.
    fn read_all(&self) -> Result<Contents, StateError>;

    /// What the pipeline reads on demand.
    fn backing(&self) -> std::sync::Arc<dyn crate::session::Backing>;

    /// Applies one batch atomically and durably: all of it or none of it survives a crash.
    ///
    /// # Errors
    /// The write failed; nothing of the batch is visible.
    fn write_batch(&mut self, batch: &CheckpointBatch) -> Result<(), StateError>;
}

#[cfg(test)]
mod tests;
