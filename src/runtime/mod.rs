//! `clickstream run`: the runtime that every partitioned source shares.
//!
//! ```text
//!  source thread (source/kafka.rs)            runtime thread (this file)
//!  polls, rebalances, positions splits ──Note──▶ one worker per assigned split,
//!  ◀── start / offset hints ─────────────────── schema swaps, revocations, deadlines
//!                                                   │
//!        ┌──────────────────────────────────────────┘ per split (split.rs)
//!        ▼
//!  worker thread: reader → processor → cut ──Job──▶ committer thread (commit.rs)
//!                                                   stage → state → snapshot → CAS → publish
//! ```
//!
//! The source knows membership and positions; everything else is here: which splits run, their
//! pipelines, checkpoints, the fenced commit protocol, recovery, snapshots, health. A split is
//! a Kafka partition today and can be a Kinesis shard without touching the protocol.

pub mod acquire;
pub mod commit;
mod committer;
pub mod failpoint;
pub mod health;
pub mod lineage;
pub mod record;
pub mod reset;
pub mod snapshot;
pub mod split;

use crate::extract::Extractor;
use crate::processor::Rules;
use crate::registry::watch::Switchboard;
use crate::s3::S3Location;
use crate::sink::dead_letter_topic::DeadLetterTopic;
use crate::sink::objects::{ObjectStore, S3Objects};
use crate::source::kafka::{KafkaSettings, KafkaSource};
use crate::source::kinesis::{KinesisSettings, KinesisSource};
use crate::source::{Done, Note, Position, SourceControl, SplitId, SplitReader, Stop};
use anyhow::{Context as _, Result, anyhow};
use commit::{Committed, Identity, SplitContext};
use health::Health;
use split::{PipelineSettings, Signals, Worker};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

/// Everything `clickstream run` needs, resolved from config.
#[derive(Debug, Clone)]
pub struct RunSettings {
    /// The Kafka consumer.
    pub kafka: KafkaSettings,
    /// The Kinesis source, when the source is Kinesis (`[source] kind = "kinesis"`).
    pub kinesis: Option<KinesisSettings>,
    /// Output location.
    pub sink: S3Location,
    /// Local state root.
    pub state: PathBuf,
    /// Pipeline settings.
    pub pipeline: PipelineSettings,
    /// Time allowed for the final checkpoints on a signal.
    pub shutdown_deadline: Duration,
    /// S3 path-style addressing.
    pub force_path_style: bool,
    /// Session rows as Parquet.
    pub parquet: bool,
    /// Kafka topic that also receives every dead letter (at least once), if any.
    pub dead_letter_topic: Option<String>,
    /// Snapshots kept per split.
    pub keep_snapshots: usize,
    /// What state may hold in memory, for every split of the process together.
    pub memory: crate::state::rocksdb::MemoryBudget,
    /// Exit after S3 has refused requests (access, bucket) for this long.
    pub permanent_error_deadline: Duration,
    /// Resume state written with other settings.
    pub allow_settings_change: bool,
}

/// The settings that shape output: a split's state is refused when they differ.
#[must_use]
pub fn settings_fingerprint(rules: &Rules) -> String {
    format!(
        "gap_ms={} lateness_ms={} dedup_horizon_ms={}",
        rules.gap_ms, rules.lateness_ms, rules.dedup_horizon_ms
    )
}

/// This machine's name (the pod's, on Kubernetes).
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map_or_else(|_| "unknown".into(), |h| h.trim().to_owned())
}

/// This process, for the commit record.
fn owner() -> String {
    format!("{}/{}", hostname(), std::process::id())
}

/// Runs until `cancel`, then stops every split with a final checkpoint.
///
/// # Errors
/// The consumer failed for good, S3 refused requests past the deadline, or the state root is
/// unusable.
pub fn run(
    s: &RunSettings,
    extractor: Arc<Extractor>,
    board: &Switchboard,
    health: &Arc<Health>,
    cancel: &CancellationToken,
) -> Result<()> {
    let rt = tokio::runtime::Handle::current();
    std::fs::create_dir_all(&s.state)
        .with_context(|| format!("state directory {}", s.state.display()))?;
    health.state.store(true, Ordering::Relaxed);
    health.schemas.store(true, Ordering::Relaxed);
    // S3 retries stop at the shutdown deadline, not at the signal: the final checkpoints need S3.
    let root = CancellationToken::new();
    let client = rt.block_on(crate::s3::client(s.force_path_style));
    let objects =
        S3Objects::new(client, s.sink.clone(), rt.clone(), root.clone(), Arc::clone(&health.sink));
    if !objects.reachable() {
        warn!(sink = %s.sink, "The sink bucket does not answer yet.");
    }
    let dlq = match &s.dead_letter_topic {
        Some(t) => Some(Arc::new(
            DeadLetterTopic::open(&s.kafka.brokers, t, &s.kafka.properties)
                .context("creating the dead-letter producer")?,
        )),
        None => None,
    };
    let parts =
        Parts { objects: Arc::new(objects), root, extractor, health: Arc::clone(health), dlq };
    if let Some(k) = &s.kinesis {
        let (tx, rx) = std::sync::mpsc::channel();
        let mut source =
            KinesisSource::spawn(k, tx.clone(), Arc::clone(health)).map_err(anyhow::Error::msg)?;
        let fence_retry = (k.lease_duration * 2).max(Duration::from_secs(10));
        let r =
            drive(s, source.control(), (tx, rx), parts, fence_retry, board, cancel, &mut || {
                source.failed()
            });
        // Final checkpoints are in the lease table, then every lease is released.
        source.stop(Duration::from_secs(10));
        return r;
    }
    let (tx, rx) = std::sync::mpsc::channel();
    let mut source =
        KafkaSource::spawn(&s.kafka, tx.clone(), Arc::clone(health)).map_err(anyhow::Error::msg)?;
    let fence_retry = (s.kafka.session_timeout() * 2).max(Duration::from_secs(10));
    let r = drive(s, source.control(), (tx, rx), parts, fence_retry, board, cancel, &mut || {
        source.failed()
    });
    // Readers (partition queues) are gone with the runtime; the consumer can close.
    source.stop(Duration::from_secs(10));
    r
}

/// What every split shares.
struct Parts {
    objects: Arc<dyn ObjectStore>,
    root: CancellationToken,
    extractor: Arc<Extractor>,
    health: Arc<Health>,
    dlq: Option<Arc<DeadLetterTopic>>,
}

/// Runs the splits of one source until `cancel`, then stops them with a final checkpoint.
#[allow(clippy::too_many_arguments)] // one call per source kind
fn drive<C: SourceControl, R: SplitReader<Position = C::Position>>(
    s: &RunSettings,
    control: Arc<C>,
    notes: (Sender<Note<R>>, Receiver<Note<R>>),
    parts: Parts,
    fence_retry: Duration,
    board: &Switchboard,
    cancel: &CancellationToken,
    failed: &mut dyn FnMut() -> Option<String>,
) -> Result<()> {
    let mut rtm = Runtime {
        s,
        control,
        notes,
        slots: BTreeMap::new(),
        objects: parts.objects,
        root: parts.root,
        extractor: parts.extractor,
        health: parts.health,
        dlq: parts.dlq,
        fence_retry,
    };
    let r = rtm.drive(board, cancel, failed);
    let complete = rtm.shutdown();
    drop(rtm);
    r?;
    if complete {
        info!("Every split checkpointed; stopping.");
    }
    Ok(())
}

/// A split this process has had.
struct Slot<R: SplitReader> {
    signals: Arc<Signals>,
    worker: Option<std::thread::JoinHandle<()>>,
    generation: u64,
    assigned: bool,
    /// Revocations waiting for a worker generation to stop.
    waiting: Vec<(u64, Done)>,
    cancel: CancellationToken,
    /// A revoked worker's last checkpoint gets until then; its own token (a newer worker of
    /// the split may run meanwhile, with another).
    cancel_at: Vec<(u64, Instant, CancellationToken)>,
    /// Still assigned after its worker stopped (fenced, failed): taken again then.
    restart: Option<(Instant, R)>,
}

/// The runtime's thread.
struct Runtime<'a, C: SourceControl, R: SplitReader<Position = C::Position>> {
    s: &'a RunSettings,
    control: Arc<C>,
    notes: (Sender<Note<R>>, Receiver<Note<R>>),
    slots: BTreeMap<SplitId, Slot<R>>,
    objects: Arc<dyn ObjectStore>,
    root: CancellationToken,
    extractor: Arc<Extractor>,
    health: Arc<Health>,
    dlq: Option<Arc<DeadLetterTopic>>,
    /// How long a fenced split waits before it is taken again (if still assigned).
    fence_retry: Duration,
}

impl<C: SourceControl, R: SplitReader<Position = C::Position>> Runtime<'_, C, R> {
    fn drive(
        &mut self,
        board: &Switchboard,
        cancel: &CancellationToken,
        source_failed: &mut dyn FnMut() -> Option<String>,
    ) -> Result<()> {
        while !cancel.is_cancelled() {
            if let Some(why) = source_failed() {
                return Err(anyhow!(why));
            }
            if let Some((since, what)) = self.health.sink.trouble()
                && since.elapsed() >= self.s.permanent_error_deadline
            {
                error!(error = %what, seconds = since.elapsed().as_secs(), "S3 keeps refusing requests; exiting so that the orchestrator restarts the service.");
                return Err(anyhow!(
                    "S3 has refused requests for {}s (run.permanent_error_deadline): {what}",
                    since.elapsed().as_secs()
                ));
            }
            if let Some(x) = board.take() {
                info!(schemas = %x.versions(), "Schema set switched.");
                for slot in self.slots.values() {
                    slot.signals.offer(Arc::clone(&x));
                }
                self.extractor = x;
            }
            self.timers();
            match self.notes.1.recv_timeout(Duration::from_millis(100)) {
                Ok(n) => self.note(n),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return Err(anyhow!("the source stopped")),
            }
        }
        Ok(())
    }

    fn note(&mut self, n: Note<R>) {
        match n {
            Note::Assigned { id, reader } => self.start(id, reader),
            Note::Revoked { id, lost, done } => {
                let Some(slot) = self.slots.get_mut(&id) else { return done.done() };
                slot.assigned = false;
                slot.restart = None;
                if slot.worker.is_none() {
                    return done.done();
                }
                slot.signals.stop(lost);
                if lost {
                    // Nothing more may be written: stop retries of requests not yet sent.
                    slot.cancel.cancel();
                } else {
                    let at = Instant::now() + self.s.pipeline.stop_deadline;
                    slot.cancel_at.push((slot.generation, at, slot.cancel.clone()));
                }
                slot.waiting.push((slot.generation, done));
            }
            Note::Committed { id, position } => self.control.commit_hint(&id, &position),
            Note::Stopped { id, generation, reader, why } => {
                let Some(slot) = self.slots.get_mut(&id) else { return };
                for (_, d) in slot.waiting.extract_if(.., |(g, _)| *g <= generation) {
                    d.done();
                }
                slot.cancel_at.retain(|(g, _, _)| *g > generation);
                if generation != slot.generation {
                    return;
                }
                if let Some(w) = slot.worker.take() {
                    let _ = w.join();
                }
                if let (true, Some(reader)) = (slot.assigned, reader) {
                    // Fenced while still assigned: the group will most likely revoke it soon;
                    // if not, this member owns it after all and takes it again.
                    let after = match why {
                        Stop::Fenced => self.fence_retry,
                        _ => Duration::from_secs(15),
                    };
                    warn!(split = %id, reason = ?why, retry_in_s = after.as_secs(), "Split worker stopped while the split is still assigned; it is taken again later unless revoked.");
                    slot.restart = Some((Instant::now() + after, reader));
                }
            }
        }
    }

    fn timers(&mut self) {
        let now = Instant::now();
        let mut again = Vec::new();
        for (id, slot) in &mut self.slots {
            for (_, _, token) in slot.cancel_at.extract_if(.., |(_, t, _)| now >= *t) {
                warn!(split = %id, "A revoked split's last checkpoint ran out of time; it stays uncommitted and the next owner redoes it.");
                token.cancel();
            }
            if slot.restart.as_ref().is_some_and(|(t, _)| now >= *t)
                && let Some((_, r)) = slot.restart.take()
            {
                again.push((id.clone(), r));
            }
        }
        for (id, r) in again {
            self.start(id, r);
        }
    }

    /// Starts a worker for an assigned split (after its previous worker here, if one is still
    /// finishing).
    #[allow(clippy::needless_pass_by_value)] // the id is kept in the slot map and the worker
    fn start(&mut self, id: SplitId, reader: R) {
        let s = self.s;
        // This split's share of the session cache: the budget divided by the splits held.
        let held = 1 + self.slots.iter().filter(|(k, s)| s.assigned && **k != id).count();
        let slot = self.slots.entry(id.clone()).or_insert_with(|| Slot {
            signals: Arc::new(Signals::new(Arc::clone(&self.extractor))),
            worker: None,
            generation: 0,
            assigned: false,
            waiting: Vec::new(),
            cancel: CancellationToken::new(),
            cancel_at: Vec::new(),
            restart: None,
        });
        slot.generation += 1;
        slot.assigned = true;
        slot.restart = None;
        slot.signals = Arc::new(Signals::new(Arc::clone(&self.extractor)));
        // The previous worker keeps its own token: a new owner must not cancel its handover.
        slot.cancel = self.root.child_token();
        let split = id.as_str();
        let ctx = Arc::new(SplitContext {
            layout: record::Layout::new(split),
            objects: self.objects.with_cancel(slot.cancel.clone()),
            cancel: slot.cancel.clone(),
            identity: Identity {
                source: self.control.identity(&id),
                settings: settings_fingerprint(&s.pipeline.rules),
                owner: owner(),
                allow_settings_change: s.allow_settings_change,
            },
            state_dir: s.state.join(split),
            tmp_dir: s.state.join(format!(".snapshot-{split}")),
            prefix: s.sink.list_prefix(),
            keep_snapshots: s.keep_snapshots,
            memory: s.memory.clone(),
            session_cache: s.memory.sessions(held),
            parquet: s.parquet,
            lineage: self.control.lineage(&id),
        });
        let worker = Worker {
            id: id.clone(),
            generation: slot.generation,
            ctx,
            control: Arc::clone(&self.control),
            settings: s.pipeline.clone(),
            signals: Arc::clone(&slot.signals),
            previous: slot.worker.take(),
            health: Arc::clone(&self.health),
            on_commit: on_commit::<R::Position>(&id, self.notes.0.clone(), self.dlq.clone()),
        };
        let notes = self.notes.0.clone();
        match std::thread::Builder::new()
            .name(format!("split-{split}"))
            .spawn(move || worker.run(reader, &notes))
        {
            Ok(h) => slot.worker = Some(h),
            Err(e) => error!(split, error = %e, "Cannot start the split's thread."),
        }
    }

    /// Stops every split with a final checkpoint, within the shutdown deadline; then cancels
    /// what is left (aborting uploads in flight). Whether every split finished in time.
    fn shutdown(&mut self) -> bool {
        for slot in self.slots.values() {
            slot.signals.stop(false);
        }
        let deadline = Instant::now() + self.s.shutdown_deadline;
        let mut complete = true;
        while self.slots.values().any(|s| s.worker.as_ref().is_some_and(|w| !w.is_finished())) {
            if Instant::now() >= deadline {
                warn!(
                    "The shutdown deadline passed before every split committed its last checkpoint; the rest is redone at the next start."
                );
                self.root.cancel();
                complete = false;
                break;
            }
            // Revocations and commits still arrive meanwhile.
            if let Ok(n) = self.notes.1.recv_timeout(Duration::from_millis(20)) {
                self.note(n);
            }
        }
        let grace = Instant::now() + Duration::from_secs(5);
        for slot in self.slots.values_mut() {
            while slot.worker.as_ref().is_some_and(|w| !w.is_finished()) && Instant::now() < grace {
                std::thread::sleep(Duration::from_millis(20));
            }
            if let Some(w) = slot.worker.take().filter(std::thread::JoinHandle::is_finished) {
                let _ = w.join();
            }
        }
        while let Ok(n) = self.notes.1.try_recv() {
            if let Note::Committed { id, position } = n {
                self.control.commit_hint(&id, &position);
            }
        }
        complete
    }
}

/// What happens after a split commits: the dead-letter copies, metrics, the log line, and the
/// source's position hint (through the runtime thread).
fn on_commit<P: Position>(
    id: &SplitId,
    notes: Sender<Note<impl SplitReader<Position = P>>>,
    dlq: Option<Arc<DeadLetterTopic>>,
) -> Box<dyn FnMut(Committed) + Send> {
    let id = id.clone();
    Box::new(move |c: Committed| {
        let label = id.as_str().to_owned();
        if let Some(t) = &dlq {
            t.send(&label, &c.dead);
        }
        let k = &c.counters;
        metrics::counter!("clickstream_events_in_total", "partition" => label.clone())
            .absolute(k.lines);
        for (reason, n) in &k.dead_lettered {
            metrics::counter!("clickstream_dead_letters_total", "partition" => label.clone(), "reason" => reason.clone())
                .absolute(*n);
        }
        metrics::counter!("clickstream_duplicates_total", "partition" => label.clone())
            .absolute(k.duplicates);
        metrics::counter!("clickstream_sessions_total", "partition" => label.clone())
            .absolute(k.sessions);
        metrics::counter!("clickstream_attribute_values_truncated_total", "partition" => label.clone())
            .absolute(k.truncated_values);
        metrics::histogram!("clickstream_checkpoint_seconds").record(c.took.as_secs_f64());
        metrics::gauge!("clickstream_last_checkpoint_timestamp_seconds", "partition" => label)
            .set(record::now_ms() as f64 / 1000.0);
        if c.rows > 0 || !c.dead.is_empty() {
            info!(split = %id, checkpoint = c.checkpoint, offset = ?c.position, rows = c.rows, dead_letters = c.dead.len(), took_ms = c.took.as_millis() as u64, "Committed checkpoint.");
        }
        if let Some(position) = c.position.as_deref().and_then(P::decode) {
            let _ = notes.send(Note::Committed { id: id.clone(), position });
        }
    })
}

#[cfg(test)]
mod scripted_tests;
#[cfg(test)]
mod tests;
