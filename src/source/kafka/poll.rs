//! The poll thread: it polls the consumer and does nothing slow — rebalance callbacks,
//! statistics, the runtime's commands (position a split, commit an offset hint), and splitting
//! the queues of newly assigned partitions.

use super::{KafkaContext, KafkaReader, Shared, lock, split_id};
use crate::source::Note;
use rdkafka::TopicPartitionList;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::message::Message as _;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, Sender};
use std::time::Duration;
use tracing::{debug, error, warn};

/// A command for the poll thread.
pub(super) enum Cmd {
    Start { partition: i32, offset: rdkafka::Offset, ack: Sender<Result<(), String>> },
    Hint { partition: i32, next: i64 },
}

/// Polls the consumer: callbacks, statistics, the runtime's commands, and splitting the queues
/// of new partitions. Messages on the main queue were fetched before a partition was split
/// and positioned: its worker seeks to its own position, so they are dropped.
pub(super) fn poll_loop(
    consumer: &Arc<BaseConsumer<KafkaContext>>,
    shared: &Arc<Shared>,
    cmds: &Receiver<Cmd>,
    stop: &AtomicBool,
) -> Result<(), String> {
    let mut retry: Vec<(Cmd, u32)> = Vec::new();
    let mut hints: BTreeMap<i32, i64> = BTreeMap::new();
    while !stop.load(Ordering::Acquire) {
        for (cmd, tries) in std::mem::take(&mut retry) {
            handle(consumer, shared, cmd, tries, &mut retry, &mut hints);
        }
        while let Ok(cmd) = cmds.try_recv() {
            handle(consumer, shared, cmd, 0, &mut retry, &mut hints);
        }
        commit_hints(consumer, shared, &mut hints, CommitMode::Async);
        match consumer.poll(Duration::from_millis(50)) {
            Some(Ok(m)) => debug!(
                partition = m.partition(),
                offset = m.offset(),
                "Dropped a record fetched before its partition was positioned."
            ),
            Some(Err(e)) => {
                if let Some((code, why)) = consumer.client().fatal_error() {
                    error!(code = ?code, error = %why, "Fatal Kafka consumer error.");
                    return Err(format!("fatal Kafka consumer error: {why}"));
                }
                warn!(error = %e, "Kafka consumer error.");
            }
            None => {}
        }
        let fresh: Vec<i32> = std::mem::take(&mut *lock(&shared.fresh));
        for p in fresh {
            let Some(queue) = consumer.split_partition_queue(&shared.topic, p) else {
                error!(partition = p, "Cannot split the partition's queue.");
                continue;
            };
            let reader = KafkaReader {
                queue,
                partition: p,
                high: shared.high(p),
                next: shared.next(p),
                buf: Vec::new(),
                expect: None,
            };
            shared.note(Note::Assigned { id: split_id(p), reader });
        }
    }
    // The final checkpoints' hints may still be in the channel, or queued asynchronously: the
    // group's offset is what `state reset --from committed` and a new member start from, so it
    // is committed synchronously before leaving (`stop` bounds how long this may take).
    while let Ok(cmd) = cmds.try_recv() {
        if let Cmd::Hint { partition, next } = cmd {
            hints.insert(partition, next);
        }
    }
    commit_hints(consumer, shared, &mut hints, CommitMode::Sync);
    consumer.unsubscribe();
    Ok(())
}

fn handle(
    consumer: &BaseConsumer<KafkaContext>,
    shared: &Shared,
    cmd: Cmd,
    tries: u32,
    retry: &mut Vec<(Cmd, u32)>,
    hints: &mut BTreeMap<i32, i64>,
) {
    match cmd {
        Cmd::Hint { partition, next } => {
            hints.insert(partition, next);
        }
        Cmd::Start { partition, offset, ack } => {
            if !lock(&shared.assigned).contains(&partition) {
                let _ = ack.send(Err(format!("partition {partition} is no longer assigned")));
                return;
            }
            match consumer.seek(&shared.topic, partition, offset, Duration::from_secs(2)) {
                Ok(()) => {}
                // The partition's fetcher may not be set up yet right after the assignment.
                Err(e) if tries < 100 => {
                    debug!(partition, error = %e, "Seek not possible yet; retrying.");
                    retry.push((Cmd::Start { partition, offset, ack }, tries + 1));
                    return;
                }
                Err(e) => {
                    let _ = ack.send(Err(format!("seeking partition {partition}: {e}")));
                    return;
                }
            }
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition(&shared.topic, partition);
            let r =
                consumer.resume(&tpl).map_err(|e| format!("resuming partition {partition}: {e}"));
            if r.is_ok() {
                let at = match offset {
                    rdkafka::Offset::Offset(n) => n,
                    _ => -1,
                };
                shared.next(partition).store(at, Ordering::Relaxed);
                lock(&shared.started).insert(partition);
            }
            let _ = ack.send(r);
        }
    }
}

/// Commits the latest hint of each partition still assigned; while running, asynchronously:
/// never blocks the poll thread on a coordinator that is away.
fn commit_hints(
    consumer: &BaseConsumer<KafkaContext>,
    shared: &Shared,
    hints: &mut BTreeMap<i32, i64>,
    mode: CommitMode,
) {
    if hints.is_empty() {
        return;
    }
    let assigned = lock(&shared.assigned).clone();
    let mut tpl = TopicPartitionList::new();
    for (p, next) in std::mem::take(hints) {
        if assigned.contains(&p) {
            let _ = tpl.add_partition_offset(&shared.topic, p, rdkafka::Offset::Offset(next));
        }
    }
    if tpl.count() > 0
        && let Err(e) = consumer.commit(&tpl, mode)
    {
        debug!(error = %e, "Could not queue an offset commit.");
    }
}
