//! A split's committer thread: checkpoints one at a time, in order, off the worker's thread, so
//! that S3 latency overlaps processing. A checkpoint that fails stays pending and later ones are
//! folded into it; once committed, only its publication is retried.

use super::commit::{CommitError, Committed, Committer, Job};
use super::health::Health;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};
use tracing::{error, warn};

/// Committer thread states.
pub(super) const RUNNING: u8 = 0;
pub(super) const FENCED: u8 = 1;
pub(super) const HALTED: u8 = 2;
const CANCELLED: u8 = 3;

/// A split's committer thread: checkpoints one at a time, in order.
pub(super) struct CommitterThread {
    tx: Option<SyncSender<Job>>,
    thread: Option<std::thread::JoinHandle<()>>,
    state: Arc<AtomicU8>,
    pub(super) halted: Arc<Mutex<Option<String>>>,
}

impl CommitterThread {
    pub(super) fn spawn(
        mut c: Committer,
        health: Arc<Health>,
        mut notify: Box<dyn FnMut(Committed) + Send>,
    ) -> std::io::Result<CommitterThread> {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Job>(1);
        let state = Arc::new(AtomicU8::new(RUNNING));
        let halted = Arc::new(Mutex::new(None));
        let (st, why) = (Arc::clone(&state), Arc::clone(&halted));
        let split = c.context().layout.split().to_owned();
        let thread = std::thread::Builder::new().name(format!("commit-{split}")).spawn(move || {
            if let Err(e) = c.sweep() {
                warn!(split = %split, error = %e, "Sweeping the split's state objects failed; the next sweep will.");
            }
            let end = committer_loop(&mut c, &rx, &health, &mut *notify);
            let code = match end {
                Ok(()) => RUNNING,
                Err(CommitError::Fenced) => {
                    warn!(split = %split, "Another owner committed this split: this one is stale and stops, writing nothing more.");
                    metrics::counter!("clickstream_fenced_total", "split" => split.clone()).increment(1);
                    FENCED
                }
                Err(CommitError::Halt(w)) => {
                    error!(split = %split, reason = %w, "The split stops: it needs an operator.");
                    *why.lock().unwrap_or_else(PoisonError::into_inner) = Some(w);
                    HALTED
                }
                Err(CommitError::Cancelled | CommitError::Retry(_)) => CANCELLED,
            };
            st.store(code, Ordering::Release);
            health.split_problem(&split, None);
        })?;
        Ok(CommitterThread { tx: Some(tx), thread: Some(thread), state, halted })
    }

    /// Hands over a job; waits while one is queued, unless `give_up` turns true or the thread
    /// stopped (the job is returned then).
    #[allow(clippy::result_large_err)] // the job comes back to its owner, not up a call chain
    pub(super) fn submit(&self, mut job: Job, give_up: &dyn Fn() -> bool) -> Result<(), Job> {
        let Some(tx) = &self.tx else { return Err(job) };
        loop {
            match tx.try_send(job) {
                Ok(()) => return Ok(()),
                Err(TrySendError::Disconnected(j)) => return Err(j),
                Err(TrySendError::Full(j)) => {
                    if give_up() || self.state.load(Ordering::Acquire) != RUNNING {
                        return Err(j);
                    }
                    job = j;
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
        }
    }

    pub(super) fn state(&self) -> u8 {
        self.state.load(Ordering::Acquire)
    }

    /// Lets the thread commit what it has and stop; waits until `deadline`. Whether it ended.
    pub(super) fn finish(&mut self, deadline: Instant) -> bool {
        self.tx = None;
        while self.thread.as_ref().is_some_and(|t| !t.is_finished()) {
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        true
    }
}

fn committer_loop(
    c: &mut Committer,
    rx: &Receiver<Job>,
    health: &Health,
    notify: &mut dyn FnMut(Committed),
) -> Result<(), CommitError> {
    let split = c.context().layout.split().to_owned();
    let cancel = c.context().cancel.clone();
    let mut pending: Option<Job> = None;
    let mut failures = 0u32;
    let mut since_sweep = 0u32;
    loop {
        let mut job = match pending.take() {
            Some(mut j) => {
                // Fold in what arrived meanwhile: one checkpoint commits both intervals.
                while let Ok(newer) = rx.try_recv() {
                    j.absorb(newer);
                }
                j
            }
            None => match rx.recv() {
                Ok(j) => j,
                Err(_) => return Ok(()),
            },
        };
        let (n, dropped) = match c.commit_job(&mut job) {
            Ok(r) => r,
            Err(CommitError::Retry(why)) => {
                failures += 1;
                error!(split = %split, checkpoint = c.last() + 1, error = %why, failures, "Checkpoint failed; its changes stay pending and it is tried again.");
                health.split_problem(&split, Some(format!("checkpoint failing: {why}")));
                pending = Some(job);
                backoff(&cancel, failures)?;
                continue;
            }
            Err(e) => return Err(e),
        };
        // Committed: from here on only the publication is retried, never the job.
        loop {
            match c.finish_publication() {
                Ok(()) => break,
                Err(CommitError::Retry(why)) => {
                    failures += 1;
                    error!(split = %split, checkpoint = n, error = %why, "Publishing a committed checkpoint failed; retrying.");
                    health.split_problem(&split, Some(format!("publication failing: {why}")));
                    backoff(&cancel, failures)?;
                }
                Err(e) => return Err(e),
            }
        }
        c.collect(&dropped);
        super::failpoint::hit("commit.collected");
        if failures > 0 {
            failures = 0;
            health.split_problem(&split, None);
        }
        notify(Committed {
            checkpoint: n,
            position: job.position,
            rows: job.out.len(),
            dead: job.out.dead,
            counters: job.counters,
            took: job.taken.elapsed(),
        });
        since_sweep += 1;
        if since_sweep >= 1000 {
            since_sweep = 0;
            if let Err(e) = c.sweep() {
                warn!(split = %split, error = %e, "Sweeping the split's state objects failed; the next sweep will.");
            }
        }
    }
}

fn backoff(cancel: &tokio_util::sync::CancellationToken, failures: u32) -> Result<(), CommitError> {
    let wait = Duration::from_millis(500 * u64::from(failures.min(60)));
    let until = Instant::now() + wait;
    while Instant::now() < until {
        if cancel.is_cancelled() {
            return Err(CommitError::Cancelled);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}
