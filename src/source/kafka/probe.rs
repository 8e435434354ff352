//! Is the consumer making progress? A thread of its own (a broker that is away must not stall
//! the poll thread) that tells the service's health.
//!
//! Stuck, for longer than the liveness timeout, means one of:
//! - partitions are positioned and have records to read, and none was read;
//! - the member holds no partition while the topic has records that no member of the group
//!   consumes (the group's committed offsets stand still below the end);
//! - the cluster cannot be reached.
//!
//! A member with nothing to do — caught up, or a spare beside busy peers — is not stuck.

use super::{KafkaSettings, Shared, lock};
use crate::runtime::health::Health;
use rdkafka::TopicPartitionList;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::util::Timeout;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// The probe thread.
pub(super) struct Probe {
    thread: std::thread::JoinHandle<()>,
    stop: Arc<AtomicBool>,
}

impl Probe {
    pub(super) fn spawn(
        s: &KafkaSettings,
        shared: Arc<Shared>,
        health: Arc<Health>,
        stop: Arc<AtomicBool>,
    ) -> Result<Probe, String> {
        // A plain client in the group's name that never subscribes: it reads the group's
        // committed offsets without joining it.
        let mut cfg = s.client_config();
        cfg.remove("statistics.interval.ms");
        let group: BaseConsumer =
            cfg.create().map_err(|e| format!("creating the probe client: {e}"))?;
        let timeout = s.liveness_timeout;
        let period = (timeout / 4).clamp(Duration::from_millis(200), Duration::from_secs(5));
        let st = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("kafka-probe".into())
            .spawn(move || {
                let mut p = State::new(timeout);
                while !st.load(Ordering::Acquire) {
                    let stuck = p.tick(&group, &shared);
                    health.source_ready(
                        p.joined,
                        (!p.joined).then(|| "not in the consumer group yet".to_owned()),
                    );
                    health.source_stuck(stuck);
                    let until = Instant::now() + period;
                    while Instant::now() < until && !st.load(Ordering::Acquire) {
                        std::thread::sleep(Duration::from_millis(50));
                    }
                }
            })
            .map_err(|e| format!("starting the probe thread: {e}"))?;
        Ok(Probe { thread, stop })
    }

    pub(super) fn stop(self) {
        self.stop.store(true, Ordering::Release);
        let _ = self.thread.join();
    }
}

struct State {
    timeout: Duration,
    started: Instant,
    joined: bool,
    /// The assignment change last seen: progress is judged anew after each.
    seen_change: Option<Instant>,
    last_progress: Instant,
    last_reached: Instant,
    positions: BTreeMap<i32, i64>,
    committed: BTreeMap<i32, i64>,
}

impl State {
    fn new(timeout: Duration) -> State {
        let now = Instant::now();
        State {
            timeout,
            started: now,
            joined: false,
            seen_change: None,
            last_progress: now,
            last_reached: now,
            positions: BTreeMap::new(),
            committed: BTreeMap::new(),
        }
    }

    fn tick(&mut self, group: &BaseConsumer, shared: &Shared) -> Option<String> {
        let now = Instant::now();
        let changed = *lock(&shared.last_assignment);
        self.joined |= changed.is_some();
        if changed != self.seen_change {
            self.seen_change = changed;
            self.last_progress = now;
        }
        let started: Vec<i32> = lock(&shared.started).iter().copied().collect();
        let held = !lock(&shared.assigned).is_empty();
        if !started.is_empty() {
            self.last_reached = now;
            let positions: BTreeMap<i32, i64> =
                started.iter().map(|p| (*p, shared.next(*p).load(Ordering::Relaxed))).collect();
            // A position not known yet (started at the beginning, nothing read) is judged at
            // the next tick.
            let lagging: Vec<i32> = positions
                .iter()
                .filter(|(p, next)| {
                    **next >= 0 && shared.high(**p).load(Ordering::Relaxed) > **next
                })
                .map(|(p, _)| *p)
                .collect();
            if positions != self.positions || lagging.is_empty() {
                self.last_progress = now;
            }
            self.positions = positions;
            let idle = now.duration_since(self.last_progress);
            return (idle > self.timeout).then(|| {
                format!(
                    "partitions {lagging:?} have records to read and none was read for {}s",
                    idle.as_secs()
                )
            });
        }
        self.positions.clear();
        if held {
            // Assigned, still restoring or waiting for an operator: readiness says so.
            self.last_progress = now;
            return None;
        }
        let since = changed.unwrap_or(self.started);
        match group_lag(group, &shared.topic) {
            Ok((unconsumed, committed)) => {
                self.last_reached = now;
                if unconsumed == 0 || committed != self.committed {
                    self.last_progress = now;
                }
                self.committed = committed;
                let idle = now.duration_since(self.last_progress.max(since));
                (idle > self.timeout).then(|| {
                    format!(
                        "no partition assigned for {}s while the topic has {unconsumed} records no member of the group consumes",
                        now.duration_since(since).as_secs()
                    )
                })
            }
            Err(e) => {
                let away = now.duration_since(self.last_reached);
                (away > self.timeout)
                    .then(|| format!("cannot reach Kafka for {}s: {e}", away.as_secs()))
            }
        }
    }
}

/// Records of the topic beyond the group's committed offsets, and those offsets.
fn group_lag(group: &BaseConsumer, topic: &str) -> Result<(i64, BTreeMap<i32, i64>), String> {
    let wait = Timeout::After(Duration::from_secs(5));
    let md = group.fetch_metadata(Some(topic), wait).map_err(|e| e.to_string())?;
    let parts: Vec<i32> = md
        .topics()
        .iter()
        .filter(|t| t.name() == topic)
        .flat_map(|t| t.partitions().iter().map(rdkafka::metadata::MetadataPartition::id))
        .collect();
    if parts.is_empty() {
        return Ok((0, BTreeMap::new()));
    }
    let mut tpl = TopicPartitionList::new();
    for p in &parts {
        tpl.add_partition(topic, *p);
    }
    let committed = group.committed_offsets(tpl, wait).map_err(|e| e.to_string())?;
    let mut out = BTreeMap::new();
    let mut unconsumed = 0;
    for p in parts {
        let (low, high) = group.fetch_watermarks(topic, p, wait).map_err(|e| e.to_string())?;
        let c = match committed.find_partition(topic, p).map(|e| e.offset()) {
            Some(rdkafka::Offset::Offset(o)) => o,
            _ => low,
        };
        out.insert(p, c);
        unconsumed += (high - c.max(low)).max(0);
    }
    Ok((unconsumed, out))
}
