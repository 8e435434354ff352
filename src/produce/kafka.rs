//! The Kafka edge of `produce`: a librdkafka `ThreadedProducer` tuned for throughput (batches
//! lingering a few milliseconds, lz4), idempotent so that a retried batch neither duplicates nor
//! reorders a customer's records within its partition. Deliveries are counted in the
//! background; [`Sink::finish`] flushes and reports the failures.

use super::{Delivery, ProduceError, Sink};
use rdkafka::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::error::KafkaError;
use rdkafka::message::DeliveryResult;
use rdkafka::producer::{BaseRecord, Producer as _, ProducerContext, ThreadedProducer};
use rdkafka::types::RDKafkaErrorCode;
use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tracing::error;

/// How long the final flush waits for the last deliveries (librdkafka gives up on a record
/// after `message.timeout.ms`, 5 minutes by default, and reports it failed before this).
const FLUSH: Duration = Duration::from_mins(6);

/// Counts failed deliveries, and keeps the first error for the log.
#[derive(Default)]
struct Deliveries {
    failed: AtomicU64,
    first: Mutex<Option<String>>,
}

impl ClientContext for Deliveries {}

impl ProducerContext for Deliveries {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, (): ()) {
        if let Err((e, _)) = result {
            self.failed.fetch_add(1, Ordering::Relaxed);
            if let Ok(mut first) = self.first.lock()
                && first.is_none()
            {
                *first = Some(e.to_string());
            }
        }
    }
}

/// A producer to one topic.
pub struct KafkaSink {
    producer: ThreadedProducer<Deliveries>,
    topic: String,
}

/// This command's producer settings, which `[kafka.properties]` may override.
#[must_use]
pub fn defaults(brokers: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", brokers)
        .set("enable.idempotence", "true")
        // The Java client's partitioner: a customer's records land on the partition a Java
        // producer of the same key would pick (librdkafka's default hashes with CRC32).
        .set("partitioner", "murmur2_random")
        .set("linger.ms", "5")
        .set("batch.size", "1048576")
        .set("compression.type", "lz4")
        .set("queue.buffering.max.messages", "1000000")
        .set("queue.buffering.max.kbytes", "1048576")
        // Recorded data may hold lines over the 1 MB default (the pipeline dead-letters them as
        // too_large): let the broker's topic limit decide, not the client's.
        .set("message.max.bytes", "16777216");
    c
}

impl KafkaSink {
    /// A producer for `topic` on `brokers`, with the operator's `properties` over
    /// [`defaults`].
    ///
    /// # Errors
    /// The producer cannot be created.
    pub fn open(
        brokers: &str,
        topic: &str,
        properties: &BTreeMap<String, String>,
    ) -> Result<KafkaSink, ProduceError> {
        let mut c = defaults(brokers);
        for (k, v) in properties {
            c.set(k, v);
        }
        let producer = c.create_with_context(Deliveries::default())?;
        Ok(KafkaSink { producer, topic: topic.to_owned() })
    }
}

impl Sink for KafkaSink {
    fn send(&mut self, key: Option<&str>, payload: &[u8]) -> Result<(), ProduceError> {
        let mut rec = BaseRecord::to(&self.topic).payload(payload);
        if let Some(k) = key {
            rec = rec.key(k);
        }
        loop {
            match self.producer.send(rec) {
                Ok(()) => return Ok(()),
                // The queue is full: the producer's thread is delivering; wait for room.
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    rec = back;
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge), _)) => {
                    // One record refused outright: counted like a failed delivery.
                    self.producer.context().failed.fetch_add(1, Ordering::Relaxed);
                    error!(topic = %self.topic, bytes = payload.len(), "A record is over message.max.bytes: not sent.");
                    return Ok(());
                }
                Err((e, _)) => return Err(e.into()),
            }
        }
    }

    fn finish(&mut self) -> Result<Delivery, ProduceError> {
        self.producer.flush(FLUSH)?;
        let ctx = self.producer.context();
        let failed = ctx.failed.load(Ordering::Relaxed);
        if failed > 0 {
            let first = ctx.first.lock().ok().and_then(|f| f.clone()).unwrap_or_default();
            error!(topic = %self.topic, failed, first_error = %first, "Records were not delivered.");
        }
        Ok(Delivery { failed, ..Delivery::default() })
    }
}
