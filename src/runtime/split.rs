//! A split's pipeline: one worker thread that processes its records, and one committer thread
//! that makes its checkpoints durable — so S3 latency overlaps processing, and one split's
//! trouble never stalls another's.
//!
//! The worker takes the split ([`super::acquire`]), asks the source to position it, then reads,
//! processes, and cuts a checkpoint every `run.checkpoint_interval`, at `run.checkpoint_bytes`,
//! when the split is quiet and caught up (`run.idle_timeout`, closing its sessions), and when
//! asked to stop. At most one checkpoint waits while one is committed; a worker whose committer
//! is behind stops reading, and the source stops fetching for that split alone.

use super::acquire::{AcquireError, Acquired, acquire};
use super::commit::{Committed, Committer, Job, SplitContext};
use super::committer::{CommitterThread, FENCED, HALTED, RUNNING};
use super::health::Health;
use crate::extract::Extractor;
use crate::processor::{MetaBase, Processor, Rules};
use crate::source::{Note, Polled, Position, SourceControl, SplitId, SplitReader, StartAt, Stop};
use crate::state::StateStore;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};
use tracing::{error, info, warn};

/// How long a refused split waits before looking at its commit record again.
const REFUSED_RETRY: Duration = Duration::from_secs(15);
/// How often the worker looks at its signals and whether a checkpoint is due.
const CHECK_PERIOD: Duration = Duration::from_millis(20);

/// Settings of every split's pipeline.
#[derive(Debug, Clone)]
pub struct PipelineSettings {
    /// Sessionization rules.
    pub rules: Rules,
    /// Wall time between checkpoints.
    pub checkpoint_interval: Duration,
    /// Input bytes that trigger a checkpoint early.
    pub checkpoint_bytes: u64,
    /// Close a quiet, caught-up split's sessions after this long.
    pub idle_timeout: Duration,
    /// How long a stopping split may take to commit its last checkpoint.
    pub stop_deadline: Duration,
}

/// What the runtime tells a running worker.
#[derive(Debug)]
pub struct Signals {
    /// 0: run; 1: stop after a final checkpoint; 2: stop now, write nothing more.
    stop: AtomicU8,
    /// Bumped when a new schema set is offered.
    version: AtomicU64,
    /// The schema set in force.
    schemas: Mutex<Arc<Extractor>>,
}

const RUN: u8 = 0;
const FINAL: u8 = 1;
const LOST: u8 = 2;

impl Signals {
    /// Signals of a worker that starts with schema set `x`.
    #[must_use]
    pub fn new(x: Arc<Extractor>) -> Signals {
        Signals { stop: AtomicU8::new(RUN), version: AtomicU64::new(0), schemas: Mutex::new(x) }
    }

    fn schemas(&self) -> Arc<Extractor> {
        Arc::clone(&self.schemas.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// Asks the worker to stop: after a final checkpoint, or (`lost`) at once.
    pub fn stop(&self, lost: bool) {
        let v = if lost { LOST } else { FINAL };
        self.stop.fetch_max(v, Ordering::AcqRel);
    }

    /// Whether the worker was asked to stop.
    #[must_use]
    pub fn stopping(&self) -> bool {
        self.stop.load(Ordering::Acquire) != RUN
    }

    /// Offers a new schema set.
    pub fn offer(&self, x: Arc<Extractor>) {
        *self.schemas.lock().unwrap_or_else(PoisonError::into_inner) = x;
        self.version.fetch_add(1, Ordering::Release);
    }
}

/// Everything a worker needs.
pub struct Worker<C: SourceControl> {
    /// The split.
    pub id: SplitId,
    /// Which worker of the split this is.
    pub generation: u64,
    /// Its protocol context.
    pub ctx: Arc<SplitContext>,
    /// The source.
    pub control: Arc<C>,
    /// Pipeline settings.
    pub settings: PipelineSettings,
    /// Signals from the runtime.
    pub signals: Arc<Signals>,
    /// The split's previous worker in this process, still finishing.
    pub previous: Option<std::thread::JoinHandle<()>>,
    /// Service health.
    pub health: Arc<Health>,
    /// Called for each committed checkpoint (log, metrics, dead-letter topic, position hint).
    pub on_commit: Box<dyn FnMut(Committed) + Send>,
}

impl<C: SourceControl> Worker<C> {
    /// Runs the split until it stops; reports to the runtime on `notes`.
    pub fn run<R>(mut self, mut reader: R, notes: &Sender<Note<R>>)
    where
        R: SplitReader<Position = C::Position>,
    {
        if let Some(p) = self.previous.take() {
            let _ = p.join();
        }
        let id = self.id.clone();
        let generation = self.generation;
        let why = self.work(&mut reader);
        match &why {
            Stop::Halted(w) | Stop::Failed(w) => {
                self.health.split_problem(id.as_str(), Some(w.clone()));
            }
            Stop::Asked | Stop::Fenced | Stop::Finished => {
                self.health.split_problem(id.as_str(), None);
            }
        }
        let keep = matches!(why, Stop::Fenced | Stop::Failed(_) | Stop::Halted(_));
        let _ = notes.send(Note::Stopped { id, generation, reader: keep.then_some(reader), why });
    }

    fn work<R>(&mut self, reader: &mut R) -> Stop
    where
        R: SplitReader<Position = C::Position>,
    {
        let split = self.id.as_str().to_owned();
        let a = match self.take() {
            Ok(a) => a,
            Err(stop) => return stop,
        };
        self.health.split_problem(&split, None);
        let position = match a.record.position.as_deref().map(C::Position::decode) {
            Some(Some(p)) => Some(p),
            Some(None) => {
                return Stop::Halted(format!(
                    "split {split}: the commit record's position {:?} does not decode",
                    a.record.position
                ));
            }
            None => a.legacy_position.and_then(C::Position::from_legacy),
        };
        let at = position.clone().map_or(StartAt::Initial, StartAt::Resume);
        let signals = Arc::clone(&self.signals);
        if let Err(e) = self.control.start(&self.id, &at, &|| signals.stopping()) {
            return if self.signals.stopping() { Stop::Asked } else { Stop::Failed(e) };
        }
        info!(split = %split, checkpoint = a.record.checkpoint, epoch = a.epoch, position = ?position, "Split assigned.");
        let mut pipe = match Pipeline::new(self, a, position) {
            Ok(p) => p,
            Err(e) => return Stop::Failed(e),
        };
        let stop = pipe.run(reader, &self.signals, &self.settings);
        // A split's end must be committed before its children may start: it gets as long as S3
        // needs, unless the split is taken away meanwhile.
        let finishing = stop == Stop::Finished && !self.signals.stopping();
        let allowed = if finishing { Duration::from_hours(1) } else { self.settings.stop_deadline };
        if !pipe.committer.finish(Instant::now() + allowed) {
            warn!(split = %split, "The split's last checkpoint did not finish in time; it stays uncommitted.");
            self.ctx.cancel.cancel();
            if stop == Stop::Finished {
                return Stop::Failed("the split's end was not committed".into());
            }
        }
        if let Some(e) = pipe.failed.take() {
            return Stop::Failed(e);
        }
        if stop == Stop::Finished && pipe.committer.state() == RUNNING {
            super::failpoint::hit("shard.end_committed");
        }
        match pipe.committer.state() {
            FENCED => Stop::Fenced,
            HALTED => Stop::Halted(
                pipe.committer
                    .halted
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .clone()
                    .unwrap_or_default(),
            ),
            _ => stop,
        }
    }

    /// Acquires the split, waiting through refusals (they need an operator) and contention.
    fn take(&self) -> Result<Acquired, Stop> {
        let split = self.id.as_str();
        let mut said = String::new();
        let mut failures = 0u32;
        loop {
            if self.signals.stopping() {
                return Err(Stop::Asked);
            }
            let wait = match acquire(&self.ctx) {
                Ok(a) => return Ok(a),
                Err(AcquireError::Refused(why)) => {
                    if why != said {
                        error!(split, reason = %why, "The split cannot start: it needs an operator. No output is deleted.");
                        said.clone_from(&why);
                    }
                    metrics::counter!("clickstream_split_refusals_total", "split" => split.to_owned()).increment(1);
                    self.health.split_problem(split, Some(why));
                    REFUSED_RETRY
                }
                Err(AcquireError::Contended) => Duration::from_secs(1),
                Err(AcquireError::Waiting(why)) => {
                    if why != said {
                        info!(split, reason = %why, "The split waits for its parents.");
                        said.clone_from(&why);
                    }
                    Duration::from_secs(1)
                }
                Err(AcquireError::Object(crate::sink::objects::ObjectError::Cancelled(_))) => {
                    return Err(Stop::Asked);
                }
                Err(e) => {
                    failures += 1;
                    warn!(split, error = %e, "Taking the split failed; retrying.");
                    self.health.split_problem(split, Some(format!("cannot take the split: {e}")));
                    Duration::from_secs(u64::from(failures.min(30)))
                }
            };
            let until = Instant::now() + wait;
            while Instant::now() < until && !self.signals.stopping() {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

/// A running split: processor, committer, and when to cut.
struct Pipeline<P: Position> {
    split: String,
    processor: Processor,
    committer: CommitterThread,
    base: MetaBase,
    next: Option<P>,
    bytes: u64,
    dirty: bool,
    last_cut: Instant,
    last_input: Instant,
    /// Since when the source has said, without interruption, that nothing more is there.
    caught_up_since: Option<Instant>,
    version: u64,
    /// The keys this split holds, when keys move between splits (Kinesis).
    range: Option<(u128, u128)>,
    /// Customers seen here whose key is another split's (the producer did not key by
    /// customer): their sessions are cut in two at a reshard.
    strays: std::collections::HashSet<crate::session::Key>,
    /// Why the pipeline cannot go on (state could not be read).
    failed: Option<String>,
}

impl<P: Position> Pipeline<P> {
    fn new<C: SourceControl<Position = P>>(
        w: &mut Worker<C>,
        a: Acquired,
        next: Option<P>,
    ) -> Result<Pipeline<P>, String> {
        let split = w.id.as_str().to_owned();
        // Dead letters name their input as the source does, without its scheme (`topic/3`).
        let source = &w.ctx.identity.source;
        let name: Arc<str> = Arc::from(source.split_once(':').map_or(&source[..], |(_, n)| n));
        let version = w.signals.version.load(Ordering::Acquire);
        let mut processor = Processor::new(w.signals.schemas(), w.settings.rules, vec![name]);
        processor.restore(a.state.as_ref(), a.store.backing(), w.ctx.session_cache);
        let base = MetaBase {
            inputs: vec![
                w.ctx.identity.source.clone(),
                format!("epoch={}", super::snapshot::lineage(a.epoch)),
            ],
            settings: w.ctx.identity.settings.clone(),
        };
        let committer =
            Committer::new(Arc::clone(&w.ctx), a.store, (a.record, a.etag, a.epoch), a.uploaded);
        let notify = std::mem::replace(&mut w.on_commit, Box::new(|_| {}));
        let committer = CommitterThread::spawn(committer, Arc::clone(&w.health), notify)
            .map_err(|e| format!("starting the committer thread: {e}"))?;
        let now = Instant::now();
        Ok(Pipeline {
            split,
            processor,
            committer,
            base,
            next,
            bytes: 0,
            dirty: false,
            last_cut: now,
            last_input: now,
            caught_up_since: None,
            version,
            range: w.ctx.lineage.as_ref().map(|l| l.range),
            strays: std::collections::HashSet::new(),
            failed: None,
        })
    }

    fn run<R: SplitReader<Position = P>>(
        &mut self,
        reader: &mut R,
        signals: &Signals,
        s: &PipelineSettings,
    ) -> Stop {
        let mut last_check = Instant::now();
        let mut seen = false;
        // The wall clock that bounds event times, read at each check (every 20 ms): a day's
        // margin does not need it fresher, and a second clock read per record would be waste.
        self.processor.set_now(super::record::now_ms() as i64);
        loop {
            // One clock read per record (tens of nanoseconds): checkpoints stay on time however
            // slowly or quickly records arrive.
            let now = Instant::now();
            if now.duration_since(last_check) >= CHECK_PERIOD {
                last_check = now;
                self.processor.set_now(super::record::now_ms() as i64);
                if std::mem::take(&mut seen) {
                    self.last_input = now;
                    metrics::counter!("clickstream_records_read", "partition" => self.split.clone())
                        .absolute(self.processor.counters().lines);
                }
                match signals.stop.load(Ordering::Acquire) {
                    RUN => {}
                    FINAL => return self.stop_final(signals, reader),
                    _ => return Stop::Asked,
                }
                if self.committer.state() != RUNNING {
                    return Stop::Asked;
                }
                self.swap_schemas(signals);
                if let Some(idle) = self.due(s, reader)
                    && !self.cut(idle, signals, reader)
                {
                    return Stop::Asked;
                }
            }
            match reader.poll(CHECK_PERIOD) {
                Polled::Record(r) => {
                    if self.next.as_ref().is_some_and(|n| r.end <= *n) {
                        continue; // a redelivery: already in the state
                    }
                    self.processor.process_record(r.payload, r.line);
                    self.bytes += r.payload.len() as u64;
                    self.next = Some(r.end);
                    self.dirty = true;
                    seen = true;
                    // Size-based rolling: a busy split cuts before its objects (and the memory
                    // holding them) grow past the limit.
                    if self.bytes >= s.checkpoint_bytes && !self.cut(false, signals, reader) {
                        return Stop::Asked;
                    }
                }
                Polled::Nothing => {}
                Polled::End(end) => return self.finish(end, signals, reader),
            }
        }
    }

    /// The split is closed: its final checkpoint records the end (without closing sessions:
    /// they go on in the split's children, which start from this state).
    fn finish<R: SplitReader<Position = P>>(
        &mut self,
        end: P,
        signals: &Signals,
        reader: &R,
    ) -> Stop {
        if self.next.as_ref() != Some(&end) {
            info!(split = %self.split, "Split read to its end; committing the end.");
            super::failpoint::hit("shard.read_to_end");
            self.next = Some(end);
            if !self.cut(false, signals, reader) {
                return Stop::Asked;
            }
        }
        // Only a committed end lets children start: wait for it (the caller's `finish` does).
        Stop::Finished
    }

    /// Whether a checkpoint is due, and whether it closes every session: the interval passed
    /// with input; or the split has been quiet and caught up for the idle timeout with
    /// sessions open (input stopped: close them, so output does not wait for new data).
    fn due<R: SplitReader<Position = P>>(
        &mut self,
        s: &PipelineSettings,
        reader: &R,
    ) -> Option<bool> {
        // Time spent blocked behind our own checkpoints (S3 slow or down), or while the source
        // could not tell (brokers away), is not quiet: the split must have had nothing more to
        // read, as far as the source knew, for the whole idle timeout.
        if reader.lag(self.next.as_ref()) == Some(0) {
            self.caught_up_since.get_or_insert_with(Instant::now);
        } else {
            self.caught_up_since = None;
        }
        if self.dirty {
            return (self.last_cut.elapsed() >= s.checkpoint_interval).then_some(false);
        }
        let quiet = self.last_input.elapsed() >= s.idle_timeout
            && self.caught_up_since.is_some_and(|t| t.elapsed() >= s.idle_timeout);
        (quiet && self.processor.open_customers() > 0).then_some(true)
    }

    fn swap_schemas(&mut self, signals: &Signals) {
        let v = signals.version.load(Ordering::Acquire);
        if v != self.version {
            self.version = v;
            let x = signals.schemas();
            info!(split = %self.split, schemas = %x.versions(), "Schema set switched.");
            self.processor.set_extractor(x);
        }
    }

    /// Cuts a checkpoint and hands it to the committer. False when the committer is gone or the
    /// worker was told to stop meanwhile (lost).
    fn cut<R: SplitReader<Position = P>>(
        &mut self,
        idle: bool,
        signals: &Signals,
        reader: &R,
    ) -> bool {
        let legacy = self.next.as_ref().map(Position::legacy).unwrap_or_default();
        let (out, batch) = match self.processor.checkpoint(legacy, idle, self.base.clone()) {
            Ok(x) => x,
            Err(e) => {
                error!(split = %self.split, error = %e, "State could not be read: the interval is not committed; the split starts again from its last checkpoint.");
                self.failed = Some(e.to_string());
                return false;
            }
        };
        let label = self.split.clone();
        if let Some(range) = self.range {
            self.count_strays(range, &batch.sessions.upserts);
        }
        metrics::gauge!("clickstream_open_sessions", "partition" => label.clone())
            .set(self.processor.open_sessions() as f64);
        if let Some(lag) = reader.lag(self.next.as_ref()) {
            metrics::gauge!("clickstream_consumer_lag", "partition" => label).set(lag as f64);
        }
        if idle {
            info!(split = %self.split, rows = out.len(), "Split quiet and caught up: closing its sessions.");
        }
        let job = Job {
            out,
            batch,
            position: self.next.as_ref().map(Position::encode),
            counters: self.processor.counters().clone(),
            taken: Instant::now(),
        };
        self.bytes = 0;
        self.dirty = false;
        self.last_cut = Instant::now();
        self.committer.submit(job, &|| signals.stop.load(Ordering::Acquire) == LOST).is_ok()
    }

    /// Counts customers whose key is not in this split's range: their events reached it under
    /// another partition key, so their sessions live on several splits.
    fn count_strays(
        &mut self,
        range: (u128, u128),
        touched: &[(crate::session::Key, std::sync::Arc<Vec<crate::session::Session>>)],
    ) {
        /// Enough to show the problem; a badly keyed stream must not grow this without bound.
        const MAX_STRAYS: usize = 100_000;
        let before = self.strays.len();
        for (customer, _) in touched {
            let key = crate::source::kinesis::kpl::hash_key_of(customer.as_bytes());
            if !(range.0..=range.1).contains(&key) && self.strays.len() < MAX_STRAYS {
                self.strays.insert(customer.clone());
            }
        }
        if self.strays.len() > before {
            warn!(split = %self.split, customers = self.strays.len(), "Customers arrived on a shard their id does not hash to: the partition key is not the customer id, so a reshard splits their sessions.");
        }
        metrics::gauge!("clickstream_customers_on_several_partitions", "partition" => self.split.clone())
            .set(self.strays.len() as f64);
    }

    fn stop_final<R: SplitReader<Position = P>>(&mut self, signals: &Signals, reader: &R) -> Stop {
        if self.dirty {
            let _ = self.cut(false, signals, reader);
        }
        Stop::Asked
    }
}
