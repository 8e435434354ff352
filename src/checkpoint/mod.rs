//! Checkpoint: ties the stages together at each barrier.
//!
//! # Invariant
//! A checkpoint's source position is committed **only after** every output it covers is
//! durable. At a barrier the coordinator
//! 1. writes the interval's session rows and dead letters under names derived from the
//!    checkpoint id (write, sync, rename), then
//! 2. writes state and source position in one atomic, synced `RocksDB` batch.
//!
//! A crash before 2 leaves the previous checkpoint in force: the re-run reprocesses the same
//! lines, deterministically, and rewrites the same file names with the same bytes. Recovery at
//! start-up removes output newer than the committed checkpoint, so even a re-run that cuts its
//! intervals differently (time-based barriers) leaves no row twice.

use crate::event::CheckpointId;
use crate::processor::EpochOutput;
use crate::sink::file::FileSink;
use crate::sink::{Sink, SinkError};
use crate::state::{CheckpointBatch, StateError, StateStore};
use std::sync::{Arc, Condvar, Mutex};
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
    /// The committer thread is gone (it panicked, or an earlier checkpoint failed).
    #[error("the checkpoint thread stopped")]
    Stopped,
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
pub struct Coordinator<S: StateStore, K: Sink = FileSink> {
    store: S,
    sink: K,
    last: CheckpointId,
}

impl<S: StateStore, K: Sink> Coordinator<S, K> {
    /// A coordinator continuing after checkpoint `last` (0 for a fresh run).
    pub fn new(store: S, sink: K, last: CheckpointId) -> Self {
        Coordinator { store, sink, last }
    }

    /// The state store (for snapshots).
    pub fn store(&self) -> &S {
        &self.store
    }

    /// The last committed checkpoint.
    pub fn last(&self) -> CheckpointId {
        self.last
    }

    /// The sink, for the completion marker.
    pub fn sink(&self) -> &K {
        &self.sink
    }

    /// Commits the next checkpoint: output first, then state and position.
    ///
    /// # Errors
    /// Either step failed; nothing of this checkpoint is committed.
    pub fn commit(
        &mut self,
        out: &mut EpochOutput,
        mut batch: CheckpointBatch,
    ) -> Result<CheckpointId, CheckpointError> {
        let id = self.last + 1;
        let (rows, dead) = out.parts();
        self.sink
            .write_epoch(id, rows, dead)
            .map_err(|source| CheckpointError::Sink { id, source })?;
        if let Some(m) = &mut batch.meta {
            m.checkpoint = id;
        }
        self.store.write_batch(&batch).map_err(|source| CheckpointError::State { id, source })?;
        self.last = id;
        Ok(id)
    }
}

/// One checkpoint handed to the [`Committer`].
#[derive(Debug)]
pub struct Job {
    /// The interval's output.
    pub out: EpochOutput,
    /// State and position to commit after it.
    pub batch: CheckpointBatch,
    /// Input lines read so far (for the log).
    pub lines: u64,
    /// Customers with open sessions, and those of them held in memory (for the log).
    pub customers: (u64, usize),
    /// How long the processor stopped to cut the checkpoint: closing what the watermark
    /// allows and taking the changes (for the log; a committer that is behind stops it longer).
    pub pause: std::time::Duration,
    /// Of `pause`, how long the processor was runnable but waited for a CPU (Linux only).
    pub pause_waited: Option<std::time::Duration>,
    /// When the processor took the barrier.
    pub taken: std::time::Instant,
}

/// Runs the [`Coordinator`] on its own thread, so that the next interval is processed while the
/// previous one is written and synced. Checkpoints still commit one at a time, in order, each
/// output before its state; at most one waits while one is being written, which bounds memory.
#[derive(Debug)]
pub struct Committer<S: StateStore + Send + 'static, K: Sink + Send + 'static = FileSink> {
    tx: Option<std::sync::mpsc::SyncSender<Job>>,
    /// Jobs submitted, and jobs committed (with the committer thread's signal).
    submitted: u64,
    committed: Arc<(Mutex<u64>, Condvar)>,
    handle: Option<std::thread::JoinHandle<Result<Coordinator<S, K>, CheckpointError>>>,
}

impl<S: StateStore + Send + 'static, K: Sink + Send + 'static> Committer<S, K> {
    /// Starts the committer thread.
    ///
    /// # Errors
    /// The thread cannot be started.
    pub fn spawn(mut coord: Coordinator<S, K>) -> std::io::Result<Self> {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Job>(1);
        let committed = Arc::new((Mutex::new(0u64), Condvar::new()));
        let count = Arc::clone(&committed);
        let handle = std::thread::Builder::new().name("checkpoint".into()).spawn(move || {
            for mut job in rx {
                let id = coord.commit(&mut job.out, job.batch)?;
                tracing::info!(
                    checkpoint = id,
                    lines = job.lines,
                    open_customers = job.customers.0,
                    cached_customers = job.customers.1,
                    pause_us = job.pause.as_micros() as u64,
                    pause_waited_us = job.pause_waited.map(|d| d.as_micros() as u64),
                    rows = job.out.len(),
                    dead_letters = job.out.dead.len(),
                    took_ms = job.taken.elapsed().as_millis() as u64,
                    "Committed checkpoint."
                );
                let (n, cv) = &*count;
                *n.lock().unwrap_or_else(std::sync::PoisonError::into_inner) += 1;
                cv.notify_all();
            }
            Ok(coord)
        })?;
        Ok(Committer { tx: Some(tx), submitted: 0, committed, handle: Some(handle) })
    }

    /// Queues a checkpoint; waits while another one is still queued.
    ///
    /// # Errors
    /// An earlier checkpoint failed (the committer has stopped); nothing after it is committed.
    pub fn submit(&mut self, job: Job) -> Result<(), CheckpointError> {
        let sent = self.tx.as_ref().is_some_and(|tx| tx.send(job).is_ok());
        if sent {
            self.submitted += 1;
            return Ok(());
        }
        match self.join() {
            Err(e) => Err(e),
            Ok(_) => Err(CheckpointError::Stopped),
        }
    }

    /// Waits until every checkpoint submitted so far is committed.
    ///
    /// # Errors
    /// A checkpoint failed (the committer has stopped).
    pub fn drain(&mut self) -> Result<(), CheckpointError> {
        let (n, cv) = &*self.committed;
        let mut done = n.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        while *done < self.submitted {
            if self.handle.as_ref().is_none_or(std::thread::JoinHandle::is_finished) {
                drop(done);
                return match self.join() {
                    Err(e) => Err(e),
                    Ok(_) => Err(CheckpointError::Stopped),
                };
            }
            // The thread signals every commit; the timeout only notices one that ended.
            done = cv
                .wait_timeout(done, std::time::Duration::from_millis(100))
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .0;
        }
        Ok(())
    }

    /// Waits until every queued checkpoint is committed and returns the coordinator.
    ///
    /// # Errors
    /// A checkpoint failed.
    pub fn finish(mut self) -> Result<Coordinator<S, K>, CheckpointError> {
        self.join()
    }

    fn join(&mut self) -> Result<Coordinator<S, K>, CheckpointError> {
        self.tx = None;
        match self.handle.take().map(std::thread::JoinHandle::join) {
            Some(Ok(r)) => r,
            Some(Err(_)) | None => Err(CheckpointError::Stopped),
        }
    }
}
