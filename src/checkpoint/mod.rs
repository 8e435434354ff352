//! Checkpoint: ties the stages together at each barrier.
//!
//! # Invariant
//! A checkpoint's source position is committed **only after** every output it covers is
//! durable. At a barrier the coordinator
//! 1. writes the interval's session rows and dead letters under names derived from the
//!    checkpoint id (write, sync, rename), then
//! 2. writes state and source position in one atomic, synced RocksDB batch.
//!
//! A crash before 2 leaves the previous checkpoint in force: the re-run reprocesses the same
//! lines, deterministically, and rewrites the same file names with the same bytes. Recovery at
//! start-up removes output newer than the committed checkpoint, so even a re-run that cuts its
//! intervals differently (time-based barriers) leaves no row twice.

use crate::event::CheckpointId;
use crate::processor::EpochOutput;
use crate::sink::SinkError;
use crate::sink::file::FileSink;
use crate::state::{CheckpointBatch, StateError, StateStore};
use thiserror::Error;

/// A checkpoint failed; the previous one stays in force.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum CheckpointError {
    /// Output could not be made durable.
    #[error("writing checkpoint {id} output: {source}")]
    Sink {
        /// The checkpoint.
        id: CheckpointId,
        /// Why.
        #[source]
        source: SinkError,
    },
    /// State could not be committed.
    #[error("committing checkpoint {id}: {source}")]
    State {
        /// The checkpoint.
        id: CheckpointId,
        /// Why.
        #[source]
        source: StateError,
    },
}

/// Commits checkpoints in order.
#[derive(Debug)]
pub struct Coordinator<S: StateStore> {
    store: S,
    sink: FileSink,
    last: CheckpointId,
}

impl<S: StateStore> Coordinator<S> {
    /// A coordinator continuing after checkpoint `last` (0 for a fresh run).
    pub fn new(store: S, sink: FileSink, last: CheckpointId) -> Self {
        Coordinator { store, sink, last }
    }

    /// The last committed checkpoint.
    pub fn last(&self) -> CheckpointId {
        self.last
    }

    /// The sink, for the completion marker.
    pub fn sink(&self) -> &FileSink {
        &self.sink
    }

    /// Commits the next checkpoint: output first, then state and position.
    ///
    /// # Errors
    /// Either step failed; nothing of this checkpoint is committed.
    pub fn commit(
        &mut self,
        out: &EpochOutput,
        mut batch: CheckpointBatch,
    ) -> Result<CheckpointId, CheckpointError> {
        let id = self.last + 1;
        self.sink
            .write_epoch(id, &out.rows, &out.dead)
            .map_err(|source| CheckpointError::Sink { id, source })?;
        if let Some(m) = &mut batch.meta {
            m.checkpoint = id;
        }
        self.store.write_batch(&batch).map_err(|source| CheckpointError::State { id, source })?;
        self.last = id;
        Ok(id)
    }
}
