//! An optional Kafka topic that receives a copy of every dead letter of `run`, for teams that
//! watch rejects in a stream. At least once: a checkpoint redone after a crash produces its
//! dead letters again (S3 keeps them exactly once). Never fails the pipeline: a copy that
//! cannot be produced is logged and counted.

use super::DeadLetter;
use rdkafka::config::ClientConfig;
use rdkafka::error::KafkaError;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer as _, ThreadedProducer};
use rdkafka::types::RDKafkaErrorCode;
use std::collections::BTreeMap;
use std::time::Duration;
use tracing::error;

/// Largest dead-letter record produced whole to the topic (brokers refuse ~1 MB by default).
const MAX_TOPIC_RECORD: usize = 900 * 1024;

/// The producer and its topic.
pub struct DeadLetterTopic {
    producer: ThreadedProducer<DefaultProducerContext>,
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
        Ok(DeadLetterTopic { producer: pc.create()?, topic: topic.to_owned() })
    }

    /// Produces copies of `dead`, keyed by `split`, and waits for them.
    pub fn send(&self, split: &str, dead: &[DeadLetter]) {
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
