//! Capturing Kafka partitions: `assign()`, never `subscribe()`, and never a commit, so that no
//! group (the processing one least of all) sees the capture.

use super::sink::{SplitWriter, Target};
use super::{KafkaFrom, KafkaTo, RecordError, Source, Summary};
use base64::Engine as _;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message as _;
use rdkafka::{Offset, TopicPartitionList};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// Metadata and watermark requests.
const TIMEOUT: Duration = Duration::from_secs(15);
/// No record and no progress for this long while records are due: the capture fails.
const STALL: Duration = Duration::from_mins(1);

/// A sidecar line of a Kafka record.
#[derive(serde::Serialize)]
struct Position<'a> {
    topic: &'a str,
    partition: i32,
    offset: i64,
    timestamp_ms: Option<i64>,
    key: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    key_b64: Option<String>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    tombstone: bool,
}

/// One partition's range, `[next, end)`, and its files.
struct Part {
    next: i64,
    end: i64,
    writer: SplitWriter,
}

fn kafka(what: &str) -> impl FnOnce(rdkafka::error::KafkaError) -> RecordError + '_ {
    move |e| RecordError::Kafka(format!("{what}: {e}"))
}

/// The consumer: the operator's properties (credentials, TLS), then ours over them, so that no
/// property can make it join or commit for a real group.
fn consumer(
    brokers: &str,
    properties: &BTreeMap<String, String>,
) -> Result<BaseConsumer, RecordError> {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let mut cfg = ClientConfig::new();
    for (k, v) in properties {
        cfg.set(k, v);
    }
    cfg.set("bootstrap.servers", brokers)
        .set("group.id", format!("clickstream-record-{}-{nanos}", std::process::id()))
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "false")
        .set("auto.offset.reset", "earliest")
        .set("fetch.queue.backoff.ms", "10");
    cfg.create().map_err(kafka("cannot create a consumer"))
}

/// The offset of the first record at or after `ms` in each partition (`high` if none).
fn offsets_at(
    c: &BaseConsumer,
    topic: &str,
    parts: &[(i32, i64, i64)],
    ms: i64,
) -> Result<BTreeMap<i32, i64>, RecordError> {
    let mut tpl = TopicPartitionList::new();
    for &(p, _, _) in parts {
        tpl.add_partition_offset(topic, p, Offset::Offset(ms)).map_err(kafka("offsets"))?;
    }
    let got = c.offsets_for_times(tpl, TIMEOUT).map_err(kafka("offsets for times"))?;
    Ok(parts
        .iter()
        .map(|&(p, low, high)| {
            let o = match got.find_partition(topic, p).map(|e| e.offset()) {
                Some(Offset::Offset(o)) => o.clamp(low, high),
                _ => high,
            };
            (p, o)
        })
        .collect())
}

/// Each chosen partition with its range `[start, end)`.
fn plan(consumer: &BaseConsumer, source: &Source) -> Result<Vec<(i32, i64, i64)>, RecordError> {
    let Source::Kafka { topic, partitions, from, to, .. } = source else {
        return Err(RecordError::Usage("not a Kafka source".into()));
    };
    let meta = consumer.fetch_metadata(Some(topic), TIMEOUT).map_err(kafka("metadata"))?;
    let all: Vec<i32> = meta
        .topics()
        .iter()
        .filter(|t| t.name() == topic && t.error().is_none())
        .flat_map(|t| t.partitions().iter().map(rdkafka::metadata::MetadataPartition::id))
        .collect();
    if all.is_empty() {
        return Err(RecordError::Kafka(format!(
            "topic {topic} does not exist or has no partitions"
        )));
    }
    let chosen: Vec<i32> = if partitions.is_empty() { all.clone() } else { partitions.clone() };
    if let Some(missing) = chosen.iter().find(|x| !all.contains(x)) {
        return Err(RecordError::Usage(format!("topic {topic} has no partition {missing}")));
    }
    let mut marks = Vec::new();
    for &partition in &chosen {
        let (low, high) =
            consumer.fetch_watermarks(topic, partition, TIMEOUT).map_err(kafka("watermarks"))?;
        marks.push((partition, low, high));
    }
    let starts = match from {
        KafkaFrom::Time(ms) => offsets_at(consumer, topic, &marks, *ms)?,
        KafkaFrom::Earliest => marks.iter().map(|&(x, low, _)| (x, low)).collect(),
        KafkaFrom::Offset(o) => marks.iter().map(|&(x, lo, hi)| (x, (*o).clamp(lo, hi))).collect(),
    };
    let ends = match to {
        KafkaTo::Time(ms) => offsets_at(consumer, topic, &marks, *ms)?,
        KafkaTo::HighWatermark => marks.iter().map(|&(x, _, high)| (x, high)).collect(),
        KafkaTo::Offset(o) => marks.iter().map(|&(x, lo, hi)| (x, (*o).clamp(lo, hi))).collect(),
    };
    Ok(marks.iter().map(|&(x, _, _)| (x, starts[&x], ends[&x])).collect())
}

/// Writes one record of a partition.
fn take(
    topic: &str,
    msg: &rdkafka::message::BorrowedMessage<'_>,
    part: &mut Part,
    target: &Target,
    summary: &mut Summary,
) -> Result<(), RecordError> {
    let (partition, offset) = (msg.partition(), msg.offset());
    let payload = msg.payload().unwrap_or_default();
    let (key, key_b64) = match msg.key() {
        None => (None, None),
        Some(bytes) => match std::str::from_utf8(bytes) {
            Ok(text) => (Some(text), None),
            Err(_) => (None, Some(base64::engine::general_purpose::STANDARD.encode(bytes))),
        },
    };
    let position = Position {
        topic,
        partition,
        offset,
        timestamp_ms: msg.timestamp().to_millis(),
        key,
        key_b64,
        tombstone: msg.payload().is_none(),
    };
    part.writer.write(target, &format!("{offset:020}"), payload, &position)?;
    summary.note(&partition.to_string(), offset.into(), payload.len());
    part.next = offset + 1;
    Ok(())
}

/// Captures the range of a `Source::Kafka`.
pub(super) fn capture(source: &Source, target: &Target, roll: u64) -> Result<Summary, RecordError> {
    let Source::Kafka { brokers, topic, properties, .. } = source else {
        return Err(RecordError::Usage("not a Kafka source".into()));
    };
    let consumer = consumer(brokers, properties)?;
    let mut summary = Summary::default();
    let mut parts: BTreeMap<i32, Part> = BTreeMap::new();
    let mut tpl = TopicPartitionList::new();
    for (partition, next, end) in plan(&consumer, source)? {
        summary.splits.entry(partition.to_string()).or_default();
        if next < end {
            tpl.add_partition_offset(topic, partition, Offset::Offset(next))
                .map_err(kafka("assign"))?;
            let writer = SplitWriter::new(topic, &partition.to_string(), roll);
            parts.insert(partition, Part { next, end, writer });
        }
    }
    let bar = super::progress(Some(parts.values().map(|x| (x.end - x.next) as u64).sum()));
    if !parts.is_empty() {
        consumer.assign(&tpl).map_err(kafka("assign"))?;
    }
    let mut progress_at = Instant::now();
    while parts.values().any(|x| x.next < x.end) {
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(msg)) => {
                let Some(part) = parts.get_mut(&msg.partition()) else { continue };
                if msg.offset() < part.next || msg.offset() >= part.end {
                    continue;
                }
                take(topic, &msg, part, target, &mut summary)?;
                bar.inc(1);
                progress_at = Instant::now();
                if part.next >= part.end {
                    part.writer.finish(target)?;
                    let mut done = TopicPartitionList::new();
                    done.add_partition(topic, msg.partition());
                    let _ = consumer.pause(&done);
                }
            }
            Some(Err(e)) => tracing::warn!(error = %e, "Kafka consumer error (retrying)."),
            None => {
                // Offsets may end in records a consumer never sees (transaction markers,
                // compacted away): the consumer's position says the range is read.
                if let Ok(pos) = consumer.position() {
                    for (partition, part) in &mut parts {
                        let at = pos.find_partition(topic, *partition).map(|e| e.offset());
                        if let Some(Offset::Offset(o)) = at
                            && o >= part.end
                            && part.next < part.end
                        {
                            part.next = part.end;
                            part.writer.finish(target)?;
                            progress_at = Instant::now();
                        }
                    }
                }
                if progress_at.elapsed() > STALL {
                    let left: Vec<String> = parts
                        .iter()
                        .filter(|(_, x)| x.next < x.end)
                        .map(|(x, part)| format!("{x}: {}..{}", part.next, part.end))
                        .collect();
                    return Err(RecordError::Kafka(format!(
                        "no progress for {}s; left to read: {}",
                        STALL.as_secs(),
                        left.join(", ")
                    )));
                }
            }
        }
    }
    for part in parts.values_mut() {
        part.writer.finish(target)?;
        summary.files += part.writer.files;
    }
    bar.finish_and_clear();
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sidecar_lines_name_topic_partition_offset_time_and_key() {
        let p = Position {
            topic: "t",
            partition: 2,
            offset: 41,
            timestamp_ms: Some(1_700_000_000_000),
            key: Some("c1"),
            key_b64: None,
            tombstone: false,
        };
        assert_eq!(
            serde_json::to_string(&p).unwrap(),
            r#"{"topic":"t","partition":2,"offset":41,"timestamp_ms":1700000000000,"key":"c1"}"#
        );
        let p = Position { key: None, key_b64: Some("/w==".into()), tombstone: true, ..p };
        assert_eq!(
            serde_json::to_string(&p).unwrap(),
            r#"{"topic":"t","partition":2,"offset":41,"timestamp_ms":1700000000000,"key":null,"key_b64":"/w==","tombstone":true}"#
        );
    }
}
