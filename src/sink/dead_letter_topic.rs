//! An optional Kafka topic that receives a copy of every dead letter of `run`, for teams that
//! watch rejects in a stream. At least once: a checkpoint redone after a crash produces its
//! dead letters again (S3 keeps them exactly once, and stays the record of truth). Never fails
//! nor stalls the pipeline: the copies are handed to librdkafka's queue and delivered in the
//! background; when the queue is full (a broker down or slow) a send waits at most
//! [`QUEUE_WAIT`] in all, then drops the rest of its copies and counts them. Waiting for
//! delivery, or for room, as long as `message.timeout.ms` (5 min by default) would hold the
//! commit path of every partition behind one unreachable topic.

use super::DeadLetter;
use rdkafka::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::error::KafkaError;
use rdkafka::message::DeliveryResult;
use rdkafka::producer::{BaseRecord, Producer as _, ProducerContext, ThreadedProducer};
use rdkafka::types::RDKafkaErrorCode;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use tracing::{error, warn};

/// Largest dead-letter record produced whole to the topic (brokers refuse ~1 MB by default).
const MAX_TOPIC_RECORD: usize = 900 * 1024;

/// The longest one [`DeadLetterTopic::send`] waits, in all, for room in a full queue.
pub const QUEUE_WAIT: Duration = Duration::from_millis(200);

/// How long dropping the producer waits for copies still queued (at shutdown).
const FLUSH_AT_CLOSE: Duration = Duration::from_secs(5);

/// Counts copies that were queued but never delivered (librdkafka gave up on them).
struct Counted;

impl ClientContext for Counted {}

impl ProducerContext for Counted {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, (): ()) {
        if let Err((e, _)) = result {
            metrics::counter!("clickstream_dead_letter_topic_failures_total").increment(1);
            error!(error = %e, "A dead letter could not be delivered to the topic (it is in S3).");
        }
    }
}

/// What one [`DeadLetterTopic::send`] did with its copies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Sent {
    /// Handed to the producer's queue (delivered in the background).
    pub queued: u64,
    /// Dropped: no room in the queue within [`QUEUE_WAIT`], or refused outright.
    pub dropped: u64,
}

/// The producer and its topic.
pub struct DeadLetterTopic {
    producer: ThreadedProducer<Counted>,
    topic: String,
}

impl DeadLetterTopic {
    /// A producer for `topic` on `brokers` with the operator's `properties`.
    ///
    /// # Errors
    /// The producer cannot be created.
    pub fn open(
        brokers: &str,
        topic: &str,
        properties: &BTreeMap<String, String>,
    ) -> Result<DeadLetterTopic, KafkaError> {
        let mut pc = ClientConfig::new();
        pc.set("bootstrap.servers", brokers).set("enable.idempotence", "true");
        for (k, v) in properties {
            pc.set(k, v);
        }
        Ok(DeadLetterTopic { producer: pc.create_with_context(Counted)?, topic: topic.to_owned() })
    }

    /// Queues copies of `dead`, keyed by `split`; returns without waiting for delivery, and
    /// waits at most [`QUEUE_WAIT`] in all for room in a full queue.
    pub fn send(&self, split: &str, dead: &[DeadLetter]) -> Sent {
        let deadline = Instant::now() + QUEUE_WAIT;
        let mut sent = Sent::default();
        for d in dead {
            let mut payload = d.to_json_line();
            if payload.len() > MAX_TOPIC_RECORD {
                // Keep the start of the line, as the source does for lines too large to hold.
                let mut short = d.clone();
                short.truncated_from = Some(d.raw.len() as u64);
                short.raw.truncate(crate::source::replay::OVERSIZED_PREFIX);
                payload = short.to_json_line();
            }
            let mut rec = BaseRecord::to(&self.topic).key(split).payload(&payload);
            loop {
                match self.producer.send(rec) {
                    Ok(()) => {
                        sent.queued += 1;
                        break;
                    }
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back))
                        if Instant::now() < deadline =>
                    {
                        rec = back;
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    Err((e, _)) => {
                        sent.dropped += 1;
                        if !matches!(e, KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull))
                        {
                            error!(topic = %self.topic, error = %e, "A dead letter could not be produced to the topic (it is in S3).");
                        }
                        break;
                    }
                }
            }
        }
        if sent.dropped > 0 {
            metrics::counter!("clickstream_dead_letter_topic_dropped_total")
                .increment(sent.dropped);
            warn!(topic = %self.topic, dropped = sent.dropped, queued = sent.queued, "The dead-letter topic's producer queue stayed full: copies dropped (they are in S3).");
        }
        sent
    }
}

impl Drop for DeadLetterTopic {
    fn drop(&mut self) {
        if let Err(e) = self.producer.flush(FLUSH_AT_CLOSE) {
            warn!(topic = %self.topic, error = %e, "Dead letters still queued for the topic at shutdown were not all delivered (they are in S3).");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::LinePosition;
    use std::sync::Arc;

    fn letter(n: u64) -> DeadLetter {
        DeadLetter {
            reason: Arc::from("invalid_json"),
            detail: String::new(),
            input: Arc::from("t/0"),
            position: LinePosition { input: 0, line: n, offset: n },
            raw: b"{".to_vec(),
            truncated_from: None,
            schema_set: Arc::from("a@1"),
        }
    }

    /// A broker that is down (nothing listens on its port) and a queue of five: before, the
    /// sixth copy waited for room until librdkafka expired the first five (message.timeout.ms,
    /// here 10 min), and the flush after them waited 30 s more, holding the commit path.
    #[test]
    fn a_full_queue_drops_copies_after_a_bounded_wait_and_counts_them() {
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = closed.local_addr().unwrap().to_string();
        drop(closed);
        let props = BTreeMap::from([
            ("queue.buffering.max.messages".to_owned(), "5".to_owned()),
            ("message.timeout.ms".to_owned(), "600000".to_owned()),
        ]);
        let t = DeadLetterTopic::open(&addr, "dead", &props).unwrap();
        let dead: Vec<DeadLetter> = (0..50).map(letter).collect();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let sent = t.send("t/0", &dead);
            let again = t.send("t/0", &dead[..3]);
            let _ = tx.send((sent, again));
            std::mem::forget(t); // its flush at close would wait for the broker
        });
        // A hang detector, not a speed assertion: the bound is 2 x 200 ms.
        let (sent, again) = rx.recv_timeout(Duration::from_mins(1)).expect("send returned");
        assert_eq!(sent, Sent { queued: 5, dropped: 45 });
        assert_eq!(again, Sent { queued: 0, dropped: 3 });
    }
}
