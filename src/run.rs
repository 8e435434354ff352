//! `clickstream run`: Kafka in, S3 out, as a long-running service.
//!
//! Each assigned partition is its own pipeline — processor, `RocksDB` state
//! (`STATE/pNNNN`), checkpoint sequence and output stream (`pNNNN-CHECKPOINT` objects) — so a
//! rebalance moves whole partitions and nothing else. One thread polls the consumer and runs
//! the pipelines; rebalance callbacks run on it too, inside `poll`.
//!
//! Checkpoint of a partition, in order: (1) its rows and dead letters to S3, (2) its state and
//! next offset in one synced `RocksDB` batch, (3) the offset committed to Kafka. The state, not
//! Kafka, says where to resume: a partition with local state resumes at the offset it
//! recorded; one without takes the latest state snapshot from S3, or starts from the
//! beginning of the partition. Committed Kafka offsets therefore never run ahead of S3 (they
//! are for lag monitoring and for tools).

use crate::checkpoint::CheckpointError;
use crate::checkpoint::Coordinator;
use crate::event::{LinePosition, SourcePosition};
use crate::extract::Extractor;
use crate::processor::{MetaBase, Processor, Rules};
use crate::registry::watch::Switchboard;
use crate::s3::S3Location;
use crate::sink::s3::S3Sink;
use crate::sink::{Sink, SinkError};
use crate::state::StateStore;
use crate::state::rocksdb::RocksDbStore;
use anyhow::{Context as _, Result, anyhow, bail};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaError;
use rdkafka::message::Message as _;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer as _, ThreadedProducer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

/// Everything `clickstream run` needs, resolved from config.
#[derive(Debug, Clone)]
pub struct RunSettings {
    /// Bootstrap servers.
    pub brokers: String,
    /// Topic.
    pub topic: String,
    /// Consumer group.
    pub group: String,
    /// Extra librdkafka properties.
    pub properties: BTreeMap<String, String>,
    /// Output location.
    pub sink: S3Location,
    /// Local state root.
    pub state: PathBuf,
    /// Sessionization rules.
    pub rules: Rules,
    /// Wall time between checkpoints.
    pub checkpoint_interval: Duration,
    /// Input bytes of one partition that trigger its checkpoint before the interval is up.
    pub checkpoint_bytes: u64,
    /// Close a quiet partition's sessions after this long.
    pub idle_timeout: Duration,
    /// Time allowed for the final checkpoint.
    pub shutdown_deadline: Duration,
    /// S3 path-style addressing.
    pub force_path_style: bool,
    /// Session rows as Parquet.
    pub parquet: bool,
    /// Kafka topic that also receives every dead letter (at least once), if any.
    pub dead_letter_topic: Option<String>,
}

/// What `/readyz` reports.
#[derive(Debug, Default)]
pub struct Readiness {
    /// The consumer has an assignment or has fetched metadata.
    pub source: AtomicBool,
    /// Local state directory is usable.
    pub state: AtomicBool,
    /// A schema set is loaded.
    pub schemas: AtomicBool,
    /// The sink bucket answered.
    pub sink: AtomicBool,
}

impl Readiness {
    /// Each check by name.
    #[must_use]
    pub fn checks(&self) -> [(&'static str, bool); 4] {
        [
            ("source", self.source.load(Ordering::Relaxed)),
            ("state", self.state.load(Ordering::Relaxed)),
            ("schemas", self.schemas.load(Ordering::Relaxed)),
            ("sink", self.sink.load(Ordering::Relaxed)),
        ]
    }
}

fn stream(partition: i32) -> String {
    format!("p{partition:04}")
}

/// One partition's pipeline.
struct Partition {
    processor: Processor,
    coord: Coordinator<RocksDbStore, S3Sink>,
    base: MetaBase,
    /// Offset of the next message to process.
    next: i64,
    last_input: Instant,
    /// Events since the last checkpoint.
    dirty: bool,
    lines_at_checkpoint: u64,
    /// The lineage this owner writes: checkpoints it commits carry it, so that a history that
    /// diverged (another owner restored the same snapshot) is never taken for this one.
    epoch: String,
    /// State files already in S3: local file name → key.
    uploaded: BTreeMap<String, String>,
    /// Input bytes since the last checkpoint.
    bytes: u64,
}

/// The pipelines of the assigned partitions, shared between the poll loop and the rebalance
/// callbacks (both on the poll thread; the mutex only satisfies the context's `Sync`).
struct Pipelines {
    s: RunSettings,
    sink: S3Sink,
    extractor: Arc<Extractor>,
    parts: BTreeMap<i32, Partition>,
    /// A failure inside a callback, reported by the loop.
    failed: Option<anyhow::Error>,
    /// Where dead letters are also produced.
    dlq: Option<DeadLetterTopic>,
}

/// A Kafka topic that receives a copy of every dead letter. At least once: a checkpoint redone
/// after a crash produces its dead letters again (S3 keeps them exactly once).
struct DeadLetterTopic {
    producer: ThreadedProducer<DefaultProducerContext>,
    topic: String,
}

impl DeadLetterTopic {
    fn open(s: &RunSettings) -> Result<Option<DeadLetterTopic>> {
        let Some(topic) = &s.dead_letter_topic else { return Ok(None) };
        let mut pc = ClientConfig::new();
        pc.set("bootstrap.servers", &s.brokers).set("enable.idempotence", "true");
        for (k, v) in &s.properties {
            pc.set(k, v);
        }
        let producer = pc.create().context("creating the dead-letter producer")?;
        Ok(Some(DeadLetterTopic { producer, topic: topic.clone() }))
    }

    /// Produces copies of `dead`. Never fails the pipeline: S3 holds the records; a copy
    /// that cannot be produced is logged and counted.
    fn send(&self, partition: i32, dead: &[crate::sink::DeadLetter]) {
        let key = stream(partition);
        for d in dead {
            let mut payload = d.to_json_line();
            if payload.len() > MAX_TOPIC_RECORD {
                // Brokers refuse records over ~1 MB: keep the start of the line, as the source
                // does for lines too large to hold.
                let mut short = d.clone();
                short.truncated_from = Some(d.raw.len() as u64);
                short.raw.truncate(crate::source::replay::OVERSIZED_PREFIX);
                payload = short.to_json_line();
            }
            let mut rec = BaseRecord::to(&self.topic).key(&key).payload(&payload);
            loop {
                match self.producer.send(rec) {
                    Ok(()) => break,
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                        rec = back;
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    Err((e, _)) => {
                        metrics::counter!("clickstream_dead_letter_topic_failures_total")
                            .increment(1);
                        error!(topic = %self.topic, error = %e, "A dead letter could not be produced to the topic (it is in S3).");
                        break;
                    }
                }
            }
        }
        if !dead.is_empty()
            && let Err(e) = self.producer.flush(Duration::from_secs(30))
        {
            metrics::counter!("clickstream_dead_letter_topic_failures_total").increment(1);
            error!(topic = %self.topic, error = %e, "Dead letters could not be flushed to the topic (they are in S3).");
        }
    }
}

/// Largest dead-letter record produced whole to the topic.
const MAX_TOPIC_RECORD: usize = 900 * 1024;

struct Ctx {
    pipes: Arc<Mutex<Pipelines>>,
    ready: Arc<Readiness>,
}

impl ClientContext for Ctx {}

impl ConsumerContext for Ctx {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let mut p = self.pipes.lock().unwrap_or_else(PoisonError::into_inner);
        match rebalance {
            Rebalance::Revoke(tpl) => {
                for e in tpl.elements() {
                    if let Err(err) = p.release(e.partition(), consumer) {
                        error!(partition = e.partition(), error = %err, "Releasing a revoked partition failed.");
                        p.failed.get_or_insert(err);
                    }
                }
            }
            Rebalance::Assign(tpl) => {
                for mut e in tpl.elements() {
                    match p.acquire(e.partition()) {
                        Ok(Some(next)) => {
                            let _ = e.set_offset(Offset::Offset(next));
                        }
                        Ok(None) => {
                            let _ = e.set_offset(Offset::Beginning);
                        }
                        Err(err) => {
                            error!(partition = e.partition(), error = %err, "Opening an assigned partition failed.");
                            p.failed.get_or_insert(err);
                        }
                    }
                }
                self.ready.source.store(true, Ordering::Relaxed);
            }
            Rebalance::Error(e) => warn!(error = %e, "Rebalance error."),
        }
    }
}

impl Pipelines {
    fn dir(&self, partition: i32) -> PathBuf {
        self.s.state.join(stream(partition))
    }

    /// Opens a partition's pipeline. The S3 snapshot is the partition's committed state; local
    /// state is a cache of it, used only when it is exactly that snapshot. No snapshot: start
    /// from the partition's beginning. Returns the offset to resume at (`None`: the beginning).
    fn acquire(&mut self, partition: i32) -> Result<Option<i64>> {
        if let Some(p) = self.parts.get(&partition) {
            return Ok(Some(p.next));
        }
        let dir = self.dir(partition);
        let sink = self.sink.for_stream(&stream(partition));
        let remote = remote_snapshot(&sink)?;
        let local = local_snapshot(&dir)?;
        let mut uploaded = BTreeMap::new();
        match &remote {
            Some(r) if local.as_ref() == Some(r) => uploaded = snapshot_files(&sink, r)?,
            Some(r) => {
                info!(partition, local = ?local, snapshot = ?r, "Restoring partition state from its S3 snapshot.");
                uploaded = restore_snapshot(&sink, r, &dir)?;
            }
            None if local.is_some() => {
                // Committed here but never published: another owner may have redone it since.
                warn!(partition, "Local state has no S3 snapshot: starting the partition over.");
                std::fs::remove_dir_all(&dir)?;
            }
            None => {}
        }
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("state directory {}", dir.display()))?;
        let store = RocksDbStore::open(&dir)?;
        let snapshot = store.load()?;
        let (last, next) = snapshot
            .meta
            .as_ref()
            .map_or((0, None), |m| (m.checkpoint, Some(m.position.line as i64)));
        let removed = sink.recover(last)?;
        if removed > 0 {
            warn!(
                partition,
                removed,
                checkpoint = last,
                "Removed output written after the partition's last committed checkpoint."
            );
        }
        let name: Arc<str> = Arc::from(format!("{}/{partition}", self.s.topic));
        let mut processor =
            Processor::new(Arc::clone(&self.extractor), self.s.rules, vec![Arc::clone(&name)]);
        let lines = snapshot.meta.as_ref().map_or(0, |m| m.counters.lines);
        processor.restore(snapshot);
        let epoch = new_epoch(partition);
        let base = MetaBase {
            inputs: vec![format!("kafka:{name}"), format!("epoch={epoch}")],
            settings: format!(
                "gap_ms={} lateness_ms={} dedup_horizon_ms={}",
                self.s.rules.gap_ms, self.s.rules.lateness_ms, self.s.rules.dedup_horizon_ms
            ),
        };
        info!(partition, checkpoint = last, offset = ?next, "Partition assigned.");
        self.parts.insert(
            partition,
            Partition {
                processor,
                coord: Coordinator::new(store, sink, last),
                base,
                next: next.unwrap_or(0),
                last_input: Instant::now(),
                dirty: false,
                lines_at_checkpoint: lines,
                epoch,
                uploaded,
                bytes: 0,
            },
        );
        Ok(next)
    }

    /// Checkpoints a revoked partition, snapshots it to S3 for its next owner, and drops it.
    fn release(&mut self, partition: i32, consumer: &BaseConsumer<Ctx>) -> Result<()> {
        let Some(mut p) = self.parts.remove(&partition) else { return Ok(()) };
        if p.dirty {
            checkpoint(&mut p, partition, false, &self.s.state, self.dlq.as_ref())?;
        }
        commit_offset(consumer, &self.s.topic, partition, p.next);
        info!(
            partition,
            checkpoint = p.coord.last(),
            offset = p.next,
            "Partition revoked: state checkpointed and snapshot."
        );
        Ok(())
    }
}

/// A published state snapshot: its checkpoint and the lineage that wrote it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct SnapshotId {
    checkpoint: u64,
    epoch: String,
}

impl SnapshotId {
    fn dir(&self, stream: &str) -> String {
        format!("_state/{stream}/{:010}-{}/", self.checkpoint, self.epoch)
    }
}

/// A lineage id: unique per acquisition of a partition (time, process, partition).
fn new_epoch(partition: i32) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("{:x}{:x}{partition:x}", nanos, std::process::id())
}

/// The snapshot identity of a partition's local state, if it has any.
fn local_snapshot(dir: &Path) -> Result<Option<SnapshotId>> {
    if !dir.join("CURRENT").exists() {
        return Ok(None);
    }
    let store = RocksDbStore::open(dir)?;
    Ok(store.load()?.meta.and_then(|m| {
        let epoch = m.inputs.get(1)?.strip_prefix("epoch=")?.to_owned();
        Some(SnapshotId { checkpoint: m.checkpoint, epoch })
    }))
}

/// The partition's published snapshot (`_state/STREAM/LATEST`), if any.
fn remote_snapshot(sink: &S3Sink) -> Result<Option<SnapshotId>> {
    let latest = sink.get(&format!("_state/{}/LATEST", sink.stream_name()))?;
    Ok(latest.and_then(|b| {
        let text = String::from_utf8_lossy(&b).into_owned();
        let (n, epoch) = text.trim().split_once(' ')?;
        Some(SnapshotId { checkpoint: n.parse().ok()?, epoch: epoch.to_owned() })
    }))
}

/// The state files of a snapshot: local name → key (`files.json`).
fn snapshot_files(sink: &S3Sink, id: &SnapshotId) -> Result<BTreeMap<String, String>> {
    let key = format!("{}files.json", id.dir(sink.stream_name()));
    let body = sink.get(&key)?.ok_or_else(|| anyhow!("snapshot {id:?} has no files.json"))?;
    serde_json::from_slice(&body).with_context(|| format!("snapshot file list {key}"))
}

/// Replaces `dir` with snapshot `id`; returns its file list.
fn restore_snapshot(
    sink: &S3Sink,
    id: &SnapshotId,
    dir: &Path,
) -> Result<BTreeMap<String, String>> {
    let files = snapshot_files(sink, id)?;
    let tmp = dir.with_extension("restoring");
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp)?;
    let prefix = sink.parts().1.key("");
    for (name, key) in &files {
        let relative = key.strip_prefix(&prefix).unwrap_or(key);
        let body = sink.get(relative)?.ok_or_else(|| anyhow!("snapshot file {key} is missing"))?;
        std::fs::write(tmp.join(name), body)?;
    }
    if dir.exists() {
        std::fs::remove_dir_all(dir)?;
    }
    std::fs::rename(&tmp, dir)?;
    Ok(files)
}

/// Publishes the partition's state as of its last checkpoint: new table files (immutable, so
/// uploaded once each), the small descriptor files and the file list under the snapshot's own
/// prefix, then `LATEST`. Only after `LATEST` is written is the checkpoint the partition's
/// committed state for any other owner.
fn snapshot(p: &mut Partition, partition: i32, state_root: &Path) -> Result<()> {
    let id = SnapshotId { checkpoint: p.coord.last(), epoch: p.epoch.clone() };
    let name = stream(partition);
    let tmp = state_root.join(format!(".snapshot-{name}-{}", id.checkpoint));
    let _ = std::fs::remove_dir_all(&tmp);
    p.coord.store().snapshot_into(&tmp)?;
    let sink = p.coord.sink();
    let dir = id.dir(&name);
    let mut files = BTreeMap::new();
    for e in std::fs::read_dir(&tmp)? {
        let e = e?;
        let file = e.file_name().to_string_lossy().into_owned();
        let key = if Path::new(&file).extension().is_some_and(|x| x == "sst") {
            if let Some(k) = p.uploaded.get(&file) {
                files.insert(file, k.clone());
                continue;
            }
            format!("_state/{name}/sst/{}-{file}", p.epoch)
        } else {
            format!("{dir}{file}")
        };
        sink.put(&key, &std::fs::read(e.path())?)?;
        files.insert(file, sink.parts().1.key(&key));
    }
    let _ = std::fs::remove_dir_all(&tmp);
    sink.put(&format!("{dir}files.json"), &serde_json::to_vec(&files)?)?;
    sink.put(
        &format!("_state/{name}/LATEST"),
        format!("{} {}", id.checkpoint, id.epoch).as_bytes(),
    )?;
    p.uploaded = files
        .into_iter()
        .filter(|(f, _)| Path::new(f).extension().is_some_and(|x| x == "sst"))
        .collect();
    Ok(())
}

fn commit_offset(consumer: &BaseConsumer<Ctx>, topic: &str, partition: i32, next: i64) {
    let mut tpl = TopicPartitionList::new();
    if tpl.add_partition_offset(topic, partition, Offset::Offset(next)).is_ok()
        && let Err(e) = consumer.commit(&tpl, CommitMode::Sync)
    {
        // Only monitoring reads Kafka's offsets: the next checkpoint commits again.
        warn!(partition, error = %e, "Committing the offset to Kafka failed.");
    }
}

/// Checkpoints one partition: output, then state and offset (the caller commits to Kafka).
/// `idle` closes every open session (the partition has been quiet for the idle timeout).
fn checkpoint(
    p: &mut Partition,
    partition: i32,
    idle: bool,
    state_root: &Path,
    dlq: Option<&DeadLetterTopic>,
) -> Result<(), anyhow::Error> {
    let started = Instant::now();
    let pos = SourcePosition { input: 0, line: p.next as u64, offset: p.next as u64 };
    let (out, batch) = p.processor.checkpoint(pos, idle, p.base.clone());
    let (rows, dead) = (out.rows.len(), out.dead.len());
    let id = p.coord.commit(&out, batch)?;
    snapshot(p, partition, state_root)?;
    p.bytes = 0;
    if let Some(t) = dlq {
        t.send(partition, &out.dead);
    }
    p.dirty = false;
    let c = p.processor.counters();
    let label = stream(partition);
    metrics::counter!("clickstream_events_in_total", "partition" => label.clone())
        .increment(c.lines - p.lines_at_checkpoint);
    p.lines_at_checkpoint = c.lines;
    metrics::histogram!("clickstream_checkpoint_seconds").record(started.elapsed().as_secs_f64());
    metrics::gauge!("clickstream_last_checkpoint_timestamp_seconds", "partition" => label).set(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64()),
    );
    if rows > 0 || dead > 0 || idle {
        info!(
            partition,
            checkpoint = id,
            offset = p.next,
            rows,
            dead_letters = dead,
            idle,
            "Committed checkpoint."
        );
    }
    Ok(())
}

/// A consumer in the group, committing only what the pipelines say.
fn consumer(s: &RunSettings, ctx: Ctx) -> Result<BaseConsumer<Ctx>> {
    let mut cfg = ClientConfig::new();
    cfg.set("bootstrap.servers", &s.brokers)
        .set("group.id", &s.group)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", "false")
        // Bounds what librdkafka prefetches while the pipeline waits on S3.
        .set("queued.max.messages.kbytes", "16384")
        .set("session.timeout.ms", "10000");
    for (k, v) in &s.properties {
        cfg.set(k, v);
    }
    cfg.create_with_context(ctx).context("creating the Kafka consumer")
}

/// Runs until `cancel`, then drains: final checkpoint of every partition, offsets committed.
///
/// # Errors
/// Kafka, S3 or the state store failed in a way a restart must handle.
pub fn run(
    s: &RunSettings,
    extractor: Arc<Extractor>,
    board: &Switchboard,
    ready: &Arc<Readiness>,
    cancel: &CancellationToken,
) -> Result<()> {
    let rt = tokio::runtime::Handle::current();
    std::fs::create_dir_all(&s.state)
        .with_context(|| format!("state directory {}", s.state.display()))?;
    ready.state.store(true, Ordering::Relaxed);
    ready.schemas.store(true, Ordering::Relaxed);
    // Retries stop at the shutdown deadline, not at the signal: the final checkpoint needs S3.
    let s3_stop = CancellationToken::new();
    let client = rt.block_on(crate::s3::client(s.force_path_style));
    let sink =
        S3Sink::new(client, s.sink.clone(), "-", rt.clone(), s3_stop.clone()).parquet(s.parquet);
    ready.sink.store(sink.reachable(), Ordering::Relaxed);
    let dlq = DeadLetterTopic::open(s)?;
    let pipes = Arc::new(Mutex::new(Pipelines {
        s: s.clone(),
        sink,
        extractor,
        parts: BTreeMap::new(),
        failed: None,
        dlq,
    }));
    let ctx = Ctx { pipes: Arc::clone(&pipes), ready: Arc::clone(ready) };
    let consumer = consumer(s, ctx)?;
    consumer.subscribe(&[&s.topic]).context("subscribing")?;
    info!(topic = %s.topic, group = %s.group, brokers = %s.brokers, "Consuming.");
    let mut last_checkpoint = Instant::now();
    while !cancel.is_cancelled() {
        let msg = consumer.poll(Duration::from_millis(100));
        let mut guard = pipes.lock().unwrap_or_else(PoisonError::into_inner);
        let pl = &mut *guard;
        if let Some(e) = pl.failed.take() {
            return Err(e);
        }
        if let Some(x) = board.take() {
            info!(schemas = %x.versions(), "Schema set switched.");
            for p in pl.parts.values_mut() {
                p.processor.set_extractor(Arc::clone(&x));
            }
            pl.extractor = x;
        }
        match msg {
            Some(Ok(m)) => {
                let partition = m.partition();
                if let Some(p) = pl.parts.get_mut(&partition) {
                    let offset = m.offset();
                    if offset >= p.next {
                        let pos =
                            LinePosition { input: 0, line: offset as u64, offset: offset as u64 };
                        let payload = m.payload().unwrap_or_default();
                        p.processor.process_record(payload, pos);
                        p.next = offset + 1;
                        p.dirty = true;
                        p.last_input = Instant::now();
                        p.bytes += payload.len() as u64;
                        // Size-based rolling: a busy partition checkpoints before its objects
                        // (and the memory holding them) grow past the limit.
                        if p.bytes >= s.checkpoint_bytes {
                            checkpoint(p, partition, false, &s.state, pl.dlq.as_ref())?;
                            commit_offset(&consumer, &s.topic, partition, p.next);
                        }
                    }
                }
            }
            Some(Err(e)) => warn!(error = %e, "Kafka consumer error."),
            None => {}
        }
        if last_checkpoint.elapsed() >= s.checkpoint_interval {
            checkpoint_all(pl, &consumer, s, false)?;
            last_checkpoint = Instant::now();
        }
    }
    // Drain: the final checkpoint must finish within the deadline, S3 retries included.
    let deadline = s3_stop.clone();
    let timer = rt.spawn({
        let d = s.shutdown_deadline;
        async move {
            tokio::time::sleep(d).await;
            deadline.cancel();
        }
    });
    let mut guard = pipes.lock().unwrap_or_else(PoisonError::into_inner);
    let r = checkpoint_all(&mut guard, &consumer, s, true);
    timer.abort();
    drop(guard);
    r?;
    info!("Final checkpoint committed; stopping.");
    Ok(())
}

fn checkpoint_all(
    pl: &mut Pipelines,
    consumer: &BaseConsumer<Ctx>,
    s: &RunSettings,
    last: bool,
) -> Result<()> {
    let dlq = pl.dlq.as_ref();
    for (&partition, p) in &mut pl.parts {
        let quiet =
            !last && p.processor.open_sessions() > 0 && p.last_input.elapsed() >= s.idle_timeout;
        if !p.dirty && !quiet {
            continue;
        }
        // One watermark request per partition and checkpoint, for the idle test and the lag.
        let high = consumer
            .fetch_watermarks(&s.topic, partition, Duration::from_secs(5))
            .ok()
            .map(|(_, high)| high);
        // Quiet means nothing new for the idle timeout *and* caught up with the partition:
        // time spent blocked in our own checkpoints (S3 slow or down) is not quiet.
        let idle = quiet && high.is_some_and(|high| p.next >= high);
        if !p.dirty && !idle {
            continue;
        }
        match checkpoint(p, partition, idle, &s.state, dlq) {
            Ok(()) => {}
            Err(e)
                if e.downcast_ref::<CheckpointError>().is_some_and(|c| {
                    matches!(c, CheckpointError::Sink { source: SinkError::Cancelled(_), .. })
                }) =>
            {
                bail!(
                    "shutdown deadline passed while writing partition {partition}'s checkpoint: it stays uncommitted and is redone at the next start"
                );
            }
            Err(e) => return Err(e),
        }
        commit_offset(consumer, &s.topic, partition, p.next);
        let label = stream(partition);
        metrics::gauge!("clickstream_open_sessions", "partition" => label.clone())
            .set(p.processor.open_sessions() as f64);
        let c = p.processor.counters();
        for (reason, n) in &c.dead_lettered {
            metrics::counter!("clickstream_dead_letters_total", "partition" => label.clone(), "reason" => reason.clone())
                .absolute(*n);
        }
        metrics::counter!("clickstream_duplicates_total", "partition" => label.clone())
            .absolute(c.duplicates);
        metrics::counter!("clickstream_sessions_total", "partition" => label.clone())
            .absolute(c.sessions);
        if let Some(high) = high {
            metrics::gauge!("clickstream_consumer_lag", "partition" => label)
                .set((high - p.next).max(0) as f64);
        }
    }
    // Producers must key by customer; count those who break it (open here and elsewhere).
    let mut owner: std::collections::HashMap<&str, i32> = std::collections::HashMap::new();
    let mut split = std::collections::HashSet::new();
    for (&partition, p) in &pl.parts {
        for c in p.processor.open_customers() {
            if *owner.entry(c).or_insert(partition) != partition {
                split.insert(c);
            }
        }
    }
    metrics::gauge!("clickstream_customers_on_several_partitions").set(split.len() as f64);
    Ok(())
}
