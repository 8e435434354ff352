//! Kafka as a partitioned source: a consumer-group member whose partitions are splits.
//!
//! One thread polls the consumer, and only that: rebalance callbacks, statistics, the
//! runtime's commands (position a split, commit an offset hint). Each partition's records come
//! from its own queue (`split_partition_queue`), read by the split's worker, so a split whose
//! pipeline is busy stops taking records and librdkafka stops fetching for that partition alone
//! — the member keeps polling and stays in the group however long S3 is slow.
//!
//! - **Assign**: the partition is paused at once (in the callback) and handed to the runtime
//!   with its queue; the worker restores its state outside the callback, then asks for a seek to
//!   its committed position and a resume. Nothing slow runs inside a callback.
//! - **Revoke**: the runtime is told (`lost` from `assignment_lost()`), and the callback waits
//!   for the splits to stop — a final checkpoint — at most `revoke_deadline`, which is below the
//!   session timeout; the rest of a slow handover finishes after it, fenced by the commit
//!   record. No offset commit happens inside a callback: offsets are hints, committed
//!   asynchronously after each checkpoint and never read back.
//! - **Liveness**: a separate probe thread watches positions and, when the member holds no
//!   partition, the group's committed offsets against the topic's end, and reports a consumer
//!   that is stuck (`/livez`).

mod poll;
mod probe;

use super::{Done, Note, Polled, Position, Record, SourceControl, SplitId, SplitReader, StartAt};
use crate::event::{LinePosition, SourcePosition};
use crate::runtime::health::Health;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::base_consumer::PartitionQueue;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use rdkafka::message::Message as _;
use rdkafka::statistics::Statistics;
use rdkafka::{ClientContext, TopicPartitionList};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};
use tracing::{debug, error, info, warn};

/// How the consumer is configured.
#[derive(Clone)]
pub struct KafkaSettings {
    /// Bootstrap servers.
    pub brokers: String,
    /// Topic.
    pub topic: String,
    /// Consumer group.
    pub group: String,
    /// Extra librdkafka properties (may hold credentials: never logged).
    pub properties: BTreeMap<String, String>,
    /// How long a revoke callback waits for the splits' final checkpoints.
    pub revoke_deadline: Duration,
    /// A consumer without progress for this long, while there is data, is stuck.
    pub liveness_timeout: Duration,
}

impl std::fmt::Debug for KafkaSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaSettings")
            .field("brokers", &self.brokers)
            .field("topic", &self.topic)
            .field("group", &self.group)
            .field("properties", &self.properties.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl KafkaSettings {
    /// The client configuration shared by the consumer and the probe: ours, then the
    /// operator's properties over it.
    fn client_config(&self) -> ClientConfig {
        let mut cfg = ClientConfig::new();
        cfg.set("bootstrap.servers", &self.brokers)
            .set("group.id", &self.group)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("enable.partition.eof", "false")
            .set("session.timeout.ms", "10000")
            // librdkafka postpones a partition's next fetch by this much whenever its
            // prefetch queue is full; the default (1 s) caps throughput at a queue per second.
            .set("fetch.queue.backoff.ms", "10")
            // Prefetch per partition: enough to keep a worker busy between fetches, bounded
            // while its pipeline waits on S3.
            .set("queued.max.messages.kbytes", "16384")
            .set("max.partition.fetch.bytes", "4194304")
            // High watermarks for lag and the idle test, without a request of our own.
            .set("statistics.interval.ms", "1000");
        for (k, v) in &self.properties {
            cfg.set(k, v);
        }
        cfg
    }

    /// The session timeout in force (the operator may set it).
    #[must_use]
    pub fn session_timeout(&self) -> Duration {
        let ms = self.properties.get("session.timeout.ms").and_then(|v| v.parse().ok());
        Duration::from_millis(ms.unwrap_or(10_000))
    }
}

/// Kafka's position: the offset of the next record to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Offset(pub i64);

impl Position for Offset {
    fn encode(&self) -> String {
        self.0.to_string()
    }

    fn decode(text: &str) -> Option<Self> {
        text.parse().ok().filter(|n: &i64| *n >= 0).map(Offset)
    }

    fn legacy(&self) -> SourcePosition {
        SourcePosition { input: 0, line: self.0 as u64, offset: self.0 as u64 }
    }

    fn from_legacy(p: SourcePosition) -> Option<Self> {
        Some(Offset(p.line as i64))
    }
}

/// The split of a partition.
#[must_use]
pub fn split_id(partition: i32) -> SplitId {
    SplitId::new(&format!("p{partition:04}"))
}

fn partition_of(id: &SplitId) -> Option<i32> {
    id.as_str().strip_prefix('p')?.parse().ok()
}

/// What the callbacks, the poll thread, the probe and the readers share.
struct Shared {
    topic: String,
    notes: Mutex<Sender<Note<KafkaReader>>>,
    revoke_deadline: Duration,
    /// Assigned to this member now.
    assigned: Mutex<BTreeSet<i32>>,
    /// Assigned, queue not split yet (the poll thread does it after the callback).
    fresh: Mutex<Vec<i32>>,
    /// Assigned and positioned by their workers (records flow).
    started: Mutex<BTreeSet<i32>>,
    /// High watermark per partition, from statistics.
    high: Mutex<HashMap<i32, Arc<AtomicI64>>>,
    /// The next offset each partition's reader will hand out (-1: not known yet).
    next: Mutex<HashMap<i32, Arc<AtomicI64>>>,
    /// When the assignment last changed (or the member first joined).
    last_assignment: Mutex<Option<Instant>>,
    /// Shutting down: callbacks no longer wait for the runtime.
    closing: AtomicBool,
}

impl Shared {
    fn high(&self, partition: i32) -> Arc<AtomicI64> {
        Arc::clone(
            lock(&self.high).entry(partition).or_insert_with(|| Arc::new(AtomicI64::new(-1))),
        )
    }

    fn next(&self, partition: i32) -> Arc<AtomicI64> {
        Arc::clone(
            lock(&self.next).entry(partition).or_insert_with(|| Arc::new(AtomicI64::new(-1))),
        )
    }

    fn note(&self, n: Note<KafkaReader>) -> bool {
        self.notes.lock().unwrap_or_else(PoisonError::into_inner).send(n).is_ok()
    }

    /// Tells the runtime the partitions are revoked and waits, at most the deadline, for their
    /// pipelines to stop.
    fn revoke(&self, partitions: &[i32], lost: bool) {
        let started = Instant::now();
        let mut waits = Vec::new();
        for &p in partitions {
            lock(&self.assigned).remove(&p);
            lock(&self.fresh).retain(|&f| f != p);
            lock(&self.started).remove(&p);
            let (done, rx) = Done::new();
            if self.note(Note::Revoked { id: split_id(p), lost, done }) {
                waits.push((p, rx));
            }
        }
        *lock(&self.last_assignment) = Some(Instant::now());
        if self.closing.load(Ordering::Acquire) {
            return;
        }
        let deadline = started + self.revoke_deadline;
        let mut late = Vec::new();
        for (p, rx) in waits {
            let left = deadline.saturating_duration_since(Instant::now());
            if rx.recv_timeout(left).is_err() {
                late.push(p);
            }
        }
        if late.is_empty() {
            info!(partitions = ?partitions, lost, took_ms = started.elapsed().as_millis() as u64, "Partitions revoked.");
        } else {
            warn!(partitions = ?late, lost, "Partitions revoked before their last checkpoint finished: it completes in the background, fenced by the commit record.");
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn partitions(tpl: &TopicPartitionList, topic: &str) -> Vec<i32> {
    tpl.elements()
        .iter()
        .filter(|e| e.topic() == topic)
        .map(rdkafka::topic_partition_list::TopicPartitionListElem::partition)
        .collect()
}

/// The consumer's context: rebalance callbacks and statistics.
pub struct KafkaContext {
    shared: Arc<Shared>,
}

impl ClientContext for KafkaContext {
    fn stats(&self, statistics: Statistics) {
        let Some(t) = statistics.topics.get(&self.shared.topic) else { return };
        let up: BTreeSet<i32> =
            statistics.brokers.values().filter(|b| b.state == "UP").map(|b| b.nodeid).collect();
        for (p, s) in &t.partitions {
            if *p < 0 {
                continue;
            }
            // A watermark is only news while its leader answers: during an outage "nothing
            // more to read" is unknown, not true (a quiet partition must not close its
            // sessions because the cluster is away).
            let high = if up.contains(&s.leader) && s.hi_offset >= 0 { s.hi_offset } else { -1 };
            self.shared.high(*p).store(high, Ordering::Relaxed);
        }
    }
}

impl ConsumerContext for KafkaContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Revoke(tpl) => {
                let lost = consumer.assignment_lost();
                self.shared.revoke(&partitions(tpl, &self.shared.topic), lost);
            }
            Rebalance::Assign(_) => {}
            Rebalance::Error(e) => {
                // rdkafka unassigns everything after an error: the partitions may be someone
                // else's already, so nothing more may be written for them.
                warn!(error = %e, "Rebalance error: dropping every partition without writing.");
                let all: Vec<i32> = lock(&self.shared.assigned).iter().copied().collect();
                self.shared.revoke(&all, true);
            }
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = rebalance {
            let parts = partitions(tpl, &self.shared.topic);
            // Held until each split has restored its state and asks for its position.
            if let Err(e) = consumer.pause(tpl) {
                error!(error = %e, "Pausing newly assigned partitions failed.");
            }
            lock(&self.shared.assigned).extend(&parts);
            lock(&self.shared.fresh).extend(&parts);
            *lock(&self.shared.last_assignment) = Some(Instant::now());
            info!(partitions = ?parts, "Partitions assigned.");
        }
    }

    fn commit_callback(
        &self,
        result: rdkafka::error::KafkaResult<()>,
        _offsets: &TopicPartitionList,
    ) {
        if let Err(e) = result {
            // Offsets are hints for lag monitoring; the next checkpoint commits again.
            debug!(error = %e, "Committing offsets to Kafka failed.");
        }
    }
}

/// The records of one partition, read by its split's worker.
pub struct KafkaReader {
    queue: PartitionQueue<KafkaContext>,
    partition: i32,
    high: Arc<AtomicI64>,
    /// Shared with the liveness probe.
    next: Arc<AtomicI64>,
    buf: Vec<u8>,
    /// The offset the next record should have (to notice gaps: retention, compaction).
    expect: Option<i64>,
}

impl SplitReader for KafkaReader {
    type Position = Offset;

    fn poll(&mut self, timeout: Duration) -> Polled<'_, Offset> {
        let offset = match self.queue.poll(timeout) {
            None => return Polled::Nothing,
            Some(Err(e)) => {
                warn!(partition = self.partition, error = %e, "Kafka partition error.");
                return Polled::Nothing;
            }
            Some(Ok(m)) => {
                self.buf.clear();
                self.buf.extend_from_slice(m.payload().unwrap_or_default());
                m.offset()
            }
        };
        if let Some(e) = self.expect
            && offset > e
        {
            warn!(
                partition = self.partition,
                from = e,
                to = offset,
                "Offsets skipped (deleted by retention or compaction before they were read)."
            );
            metrics::counter!("clickstream_offsets_skipped_total").increment((offset - e) as u64);
        }
        self.expect = Some(offset + 1);
        self.next.store(offset + 1, Ordering::Relaxed);
        Polled::Record(Record {
            payload: &self.buf,
            line: LinePosition { input: 0, line: offset as u64, offset: offset as u64 },
            end: Offset(offset + 1),
        })
    }

    fn lag(&self, at: Option<&Offset>) -> Option<u64> {
        let high = self.high.load(Ordering::Relaxed);
        // Before the first record the start is not known here: only an empty partition is
        // surely caught up.
        let at = match at {
            Some(o) => o.0,
            None if high == 0 => 0,
            None => return None,
        };
        (high >= 0).then(|| (high - at).max(0) as u64)
    }
}

/// The runtime's handle on the consumer.
pub struct KafkaControl {
    cmds: Mutex<Sender<poll::Cmd>>,
    topic: String,
}

impl SourceControl for KafkaControl {
    type Position = Offset;

    fn start(
        &self,
        id: &SplitId,
        at: &StartAt<Offset>,
        give_up: &dyn Fn() -> bool,
    ) -> Result<(), String> {
        let partition = partition_of(id).ok_or_else(|| format!("{id} is not a partition"))?;
        let offset = match at {
            StartAt::Initial => rdkafka::Offset::Beginning,
            StartAt::Resume(o) => rdkafka::Offset::Offset(o.0),
        };
        let (ack, rx) = std::sync::mpsc::channel();
        lock(&self.cmds)
            .send(poll::Cmd::Start { partition, offset, ack })
            .map_err(|_| "the consumer has stopped".to_owned())?;
        loop {
            match rx.recv_timeout(Duration::from_millis(100)) {
                Ok(r) => return r,
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) if !give_up() => {}
                Err(_) => return Err("stopped while waiting for the consumer".to_owned()),
            }
        }
    }

    fn commit_hint(&self, id: &SplitId, at: &Offset) {
        if let Some(partition) = partition_of(id) {
            let _ = lock(&self.cmds).send(poll::Cmd::Hint { partition, next: at.0 });
        }
    }

    fn identity(&self, id: &SplitId) -> String {
        format!("kafka:{}/{}", self.topic, partition_of(id).unwrap_or(-1))
    }
}

/// A running Kafka source: its poll thread and probe.
pub struct KafkaSource {
    control: Arc<KafkaControl>,
    shared: Arc<Shared>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<Result<(), String>>>,
    probe: Option<probe::Probe>,
}

impl KafkaSource {
    /// Joins the group and starts polling; assignments go to `notes`.
    ///
    /// # Errors
    /// The consumer cannot be created or subscribed.
    pub fn spawn(
        s: &KafkaSettings,
        notes: Sender<Note<KafkaReader>>,
        health: Arc<Health>,
    ) -> Result<KafkaSource, String> {
        let shared = Arc::new(Shared {
            topic: s.topic.clone(),
            notes: Mutex::new(notes),
            revoke_deadline: s.revoke_deadline,
            assigned: Mutex::default(),
            fresh: Mutex::default(),
            started: Mutex::default(),
            high: Mutex::default(),
            next: Mutex::default(),
            last_assignment: Mutex::default(),
            closing: AtomicBool::new(false),
        });
        let consumer: BaseConsumer<KafkaContext> = s
            .client_config()
            .create_with_context(KafkaContext { shared: Arc::clone(&shared) })
            .map_err(|e| format!("creating the Kafka consumer: {e}"))?;
        let consumer = Arc::new(consumer);
        consumer.subscribe(&[&s.topic]).map_err(|e| format!("subscribing to {}: {e}", s.topic))?;
        let (tx, rx) = std::sync::mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let probe = probe::Probe::spawn(s, Arc::clone(&shared), health, Arc::clone(&stop))?;
        let thread = std::thread::Builder::new()
            .name("kafka-poll".into())
            .spawn({
                let (shared, stop) = (Arc::clone(&shared), Arc::clone(&stop));
                move || poll::poll_loop(&consumer, &shared, &rx, &stop)
            })
            .map_err(|e| format!("starting the poll thread: {e}"))?;
        info!(topic = %s.topic, group = %s.group, brokers = %s.brokers, "Consuming.");
        Ok(KafkaSource {
            control: Arc::new(KafkaControl { cmds: Mutex::new(tx), topic: s.topic.clone() }),
            shared,
            stop,
            thread: Some(thread),
            probe: Some(probe),
        })
    }

    /// The handle the runtime positions splits and commits hints through.
    #[must_use]
    pub fn control(&self) -> Arc<KafkaControl> {
        Arc::clone(&self.control)
    }

    /// Whether the poll thread ended (a fatal consumer error), and why.
    pub fn failed(&mut self) -> Option<String> {
        if self.thread.as_ref().is_some_and(std::thread::JoinHandle::is_finished) {
            let r = self.thread.take().map(std::thread::JoinHandle::join);
            return Some(match r {
                Some(Ok(Err(e))) => e,
                _ => "the Kafka poll thread stopped".to_owned(),
            });
        }
        None
    }

    /// Leaves the group (bounded by `deadline`: a broker that is down cannot stall the exit).
    pub fn stop(mut self, deadline: Duration) {
        self.shared.closing.store(true, Ordering::Release);
        self.stop.store(true, Ordering::Release);
        if let Some(p) = self.probe.take() {
            p.stop();
        }
        let until = Instant::now() + deadline;
        while self.thread.as_ref().is_some_and(|t| !t.is_finished()) {
            if Instant::now() >= until {
                warn!("The Kafka consumer did not close in time; exiting without it.");
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// The group's committed offset of `partition`, if any (for `state reset --from committed`).
///
/// # Errors
/// The cluster cannot be asked.
pub fn committed_offset(s: &KafkaSettings, partition: i32) -> Result<Option<i64>, String> {
    let client: BaseConsumer =
        s.client_config().create().map_err(|e| format!("creating a Kafka client: {e}"))?;
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition(&s.topic, partition);
    let got = client
        .committed_offsets(tpl, Duration::from_secs(15))
        .map_err(|e| format!("reading the group's committed offsets: {e}"))?;
    Ok(match got.find_partition(&s.topic, partition).map(|e| e.offset()) {
        Some(rdkafka::Offset::Offset(o)) => Some(o),
        _ => None,
    })
}
