//! The Kinesis edge of `produce`: `PutRecords` of up to 500 entries or 5 MiB, entries Kinesis
//! refused (throttled, internal failure) put again with backoff, and optional KPL aggregation.
//!
//! Aggregation (`--aggregate`) groups the records of ONE partition key per aggregate: every
//! user record of an aggregate then maps to the shard of the aggregate's own key, which a
//! KCL-style reader requires (it drops an aggregate holding a user record outside its shard's
//! range). Records wait per key until their aggregate would pass [`AGGREGATE_MAX`] (the KPL's
//! default `AggregationMaxSize`), until all held aggregates pass [`HELD_MAX`], or for at most
//! [`LINGER`]; a record too large to share an aggregate goes plain, after its key's held ones.
//!
//! Order per key: requests go one at a time, in order; an entry put again after a throttle can
//! land after a later record of its key that went through in the same request.

use super::{Delivery, ProduceError, Sink};
use aws_sdk_kinesis::Client;
use aws_sdk_kinesis::primitives::Blob;
use aws_sdk_kinesis::types::PutRecordsRequestEntry;
use md5::{Digest as _, Md5};
use std::collections::HashMap;
use std::time::{Duration, Instant};
use tracing::{error, warn};

/// Most entries per `PutRecords`.
const BATCH_RECORDS: usize = 500;
/// Most bytes (data and keys) per `PutRecords`.
const BATCH_BYTES: usize = 5 << 20;
/// Largest record Kinesis takes, data and partition key together.
pub const RECORD_MAX: usize = 1 << 20;
/// Longest partition key Kinesis takes, in characters.
pub const KEY_MAX: usize = 256;
/// Largest aggregate (the KPL's default `AggregationMaxSize`).
pub const AGGREGATE_MAX: usize = 51_200;
/// Most bytes held in unfinished aggregates before all are sent.
pub const HELD_MAX: usize = 4 << 20;
/// Longest a record waits in an aggregate or a batch.
pub const LINGER: Duration = Duration::from_millis(100);
/// Times an entry is put again before it counts as failed.
const ATTEMPTS: u32 = 30;

/// One Kinesis record to put, and how many user records it carries.
struct Entry {
    key: String,
    data: Vec<u8>,
    users: u64,
}

/// A producer to one stream.
pub struct KinesisSink {
    client: Client,
    rt: tokio::runtime::Handle,
    stream: String,
    batch: Vec<Entry>,
    batch_bytes: usize,
    batch_since: Option<Instant>,
    /// With `--aggregate`: the held aggregates.
    aggregator: Option<Aggregator>,
    delivery: Delivery,
}

impl KinesisSink {
    /// A producer for `stream`, its client from the AWS environment (`AWS_ENDPOINT_URL_KINESIS`
    /// and the rest). Must be called inside a tokio runtime, off its async threads.
    ///
    /// # Errors
    /// None yet: a missing stream shows at the first put.
    pub fn open(stream: &str, aggregate: bool) -> Result<KinesisSink, ProduceError> {
        let rt = tokio::runtime::Handle::try_current()
            .map_err(|e| ProduceError::Kinesis(format!("no runtime: {e}")))?;
        let conf = rt.block_on(crate::source::kinesis::sdk_config());
        Ok(KinesisSink {
            client: Client::new(&conf),
            rt,
            stream: stream.to_owned(),
            batch: Vec::new(),
            batch_bytes: 0,
            batch_since: None,
            aggregator: aggregate.then(Aggregator::default),
            delivery: Delivery::default(),
        })
    }

    fn push(&mut self, e: Entry) -> Result<(), ProduceError> {
        let size = e.data.len() + e.key.len();
        if self.batch.len() == BATCH_RECORDS || self.batch_bytes + size > BATCH_BYTES {
            self.put()?;
        }
        self.batch_since.get_or_insert_with(Instant::now);
        self.batch_bytes += size;
        self.batch.push(e);
        Ok(())
    }

    /// Puts the batch, again and again for the entries Kinesis refused, with backoff.
    fn put(&mut self) -> Result<(), ProduceError> {
        let mut todo = std::mem::take(&mut self.batch);
        self.batch_bytes = 0;
        self.batch_since = None;
        let mut backoff = Duration::from_millis(50);
        for attempt in 1..=ATTEMPTS {
            if todo.is_empty() {
                return Ok(());
            }
            let entries = todo
                .iter()
                .map(|e| {
                    PutRecordsRequestEntry::builder()
                        .partition_key(&e.key)
                        .data(Blob::new(e.data.clone()))
                        .build()
                        .map_err(|err| ProduceError::Kinesis(err.to_string()))
                })
                .collect::<Result<Vec<_>, _>>()?;
            let req =
                self.client.put_records().stream_name(&self.stream).set_records(Some(entries));
            match self.rt.block_on(req.send()) {
                Ok(out) => {
                    let mut first = None;
                    let shards = &mut self.delivery.shards;
                    let refused = todo
                        .into_iter()
                        .zip(out.records())
                        .filter(|(_, r)| {
                            let bad = r.error_code().is_some();
                            if bad && first.is_none() {
                                first = r.error_code().map(str::to_owned);
                            }
                            if let (false, Some(shard), Some(seq)) =
                                (bad, r.shard_id(), r.sequence_number())
                            {
                                shards.entry(shard.to_owned()).or_default().put(seq);
                            }
                            bad
                        })
                        .map(|(e, _)| e)
                        .collect::<Vec<_>>();
                    todo = refused;
                    if let Some(code) = first {
                        warn!(stream = %self.stream, refused = todo.len(), %code, attempt, "Entries refused: putting them again.");
                    }
                }
                Err(e) => {
                    let e = aws_sdk_kinesis::error::DisplayErrorContext(e);
                    if attempt == ATTEMPTS {
                        return Err(ProduceError::Kinesis(e.to_string()));
                    }
                    warn!(stream = %self.stream, error = %e, attempt, "PutRecords failed: trying again.");
                }
            }
            if !todo.is_empty() {
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
        let failed: u64 = todo.iter().map(|e| e.users).sum();
        if failed > 0 {
            error!(stream = %self.stream, failed, "Records still refused after {ATTEMPTS} attempts.");
        }
        self.delivery.failed += failed;
        Ok(())
    }

    fn drain_aggregates(&mut self, all: bool) -> Result<(), ProduceError> {
        let ready = self.aggregator.as_mut().map(|a| a.take(all)).unwrap_or_default();
        for e in ready {
            self.push(e)?;
        }
        Ok(())
    }
}

impl Sink for KinesisSink {
    fn send(&mut self, key: Option<&str>, payload: &[u8]) -> Result<(), ProduceError> {
        let key = key.map_or_else(|| super::fallback_key(payload), |k| truncate(k, KEY_MAX));
        if payload.len() + key.len() > RECORD_MAX {
            warn!(stream = %self.stream, bytes = payload.len(), "A record is over Kinesis's 1 MiB: not sent.");
            self.delivery.too_large += 1;
            return Ok(());
        }
        if let Some(a) = self.aggregator.as_mut() {
            let ready = a.add(&key, payload);
            let all = a.held > HELD_MAX || a.oldest.is_some_and(|t| t.elapsed() >= LINGER);
            for e in ready {
                self.push(e)?;
            }
            self.drain_aggregates(all)?;
        } else {
            self.push(Entry { key, data: payload.to_vec(), users: 1 })?;
        }
        if self.batch_since.is_some_and(|t| t.elapsed() >= LINGER) {
            self.put()?;
        }
        Ok(())
    }

    fn finish(&mut self) -> Result<Delivery, ProduceError> {
        self.drain_aggregates(true)?;
        self.put()?;
        Ok(std::mem::take(&mut self.delivery))
    }
}

/// The first `max` characters of `key`.
fn truncate(key: &str, max: usize) -> String {
    match key.char_indices().nth(max) {
        Some((i, _)) => key[..i].to_owned(),
        None => key.to_owned(),
    }
}

/// Unfinished aggregates, one per partition key.
#[derive(Default)]
struct Aggregator {
    /// Per key: the encoded `records` fields so far, and how many.
    open: HashMap<String, (Vec<u8>, u64)>,
    held: usize,
    oldest: Option<Instant>,
}

impl Aggregator {
    /// Adds a record; returns what must go first: its key's aggregate if the record does not
    /// fit in it any more, and the record itself if it is too large to share one.
    fn add(&mut self, key: &str, data: &[u8]) -> Vec<Entry> {
        let mut out = Vec::new();
        let field = record_field(data);
        let overhead = MAGIC_AND_DIGEST + key_field_len(key);
        if field.len() + overhead > AGGREGATE_MAX {
            out.extend(self.close(key));
            out.push(Entry { key: key.to_owned(), data: data.to_vec(), users: 1 });
            return out;
        }
        if self
            .open
            .get(key)
            .is_some_and(|(body, _)| body.len() + field.len() + overhead > AGGREGATE_MAX)
        {
            out.extend(self.close(key));
        }
        self.oldest.get_or_insert_with(Instant::now);
        self.held += field.len();
        let (body, n) = self.open.entry(key.to_owned()).or_default();
        body.extend_from_slice(&field);
        *n += 1;
        out
    }

    fn close(&mut self, key: &str) -> Option<Entry> {
        let (key, (body, n)) = self.open.remove_entry(key)?;
        self.held -= body.len();
        Some(Entry { data: finish_aggregate(&key, &body), key, users: n })
    }

    /// Every aggregate with `all`, else none.
    fn take(&mut self, all: bool) -> Vec<Entry> {
        if !all {
            return Vec::new();
        }
        self.held = 0;
        self.oldest = None;
        self.open
            .drain()
            .map(|(key, (body, n))| Entry { data: finish_aggregate(&key, &body), key, users: n })
            .collect()
    }
}

/// The magic and the MD5 trailer.
const MAGIC_AND_DIGEST: usize = 4 + 16;

fn varint(mut v: u64, out: &mut Vec<u8>) {
    while v >= 0x80 {
        out.push((v as u8 & 0x7F) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn varint_len(v: u64) -> usize {
    (64 - (v | 1).leading_zeros() as usize).div_ceil(7)
}

fn key_field_len(key: &str) -> usize {
    1 + varint_len(key.len() as u64) + key.len()
}

/// `AggregatedRecord.records` (field 3) holding `Record { partition_key_index: 0, data }`.
fn record_field(data: &[u8]) -> Vec<u8> {
    let inner = 2 + 1 + varint_len(data.len() as u64) + data.len();
    let mut f = Vec::with_capacity(1 + varint_len(inner as u64) + inner);
    f.push(0x1A);
    varint(inner as u64, &mut f);
    f.extend_from_slice(&[0x08, 0x00, 0x1A]);
    varint(data.len() as u64, &mut f);
    f.extend_from_slice(data);
    f
}

/// A whole aggregate: the magic, `AggregatedRecord { partition_key_table: [key], records }`
/// (`body`: encoded `records` fields), and the MD5 of the protobuf.
fn finish_aggregate(key: &str, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(MAGIC_AND_DIGEST + key_field_len(key) + body.len());
    out.extend_from_slice(&crate::source::kinesis::kpl::MAGIC);
    out.push(0x0A);
    varint(key.len() as u64, &mut out);
    out.extend_from_slice(key.as_bytes());
    out.extend_from_slice(body);
    let digest = Md5::digest(&out[4..]);
    out.extend_from_slice(&digest);
    out
}

/// The aggregate of `records`, all under `key` (for tests and tools).
#[must_use]
pub fn encode_aggregate(key: &str, records: &[&[u8]]) -> Vec<u8> {
    let body: Vec<u8> = records.iter().flat_map(|r| record_field(r)).collect();
    finish_aggregate(key, &body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::kinesis::kpl::{Deaggregated, deaggregate, hash_key_of};

    #[test]
    fn aggregates_decode_back_with_the_reader() {
        let big = vec![b'x'; 300];
        let recs: Vec<&[u8]> = vec![b"{\"a\":1}", b"", &big];
        let agg = encode_aggregate("cust-7", &recs);
        let Deaggregated::Aggregate(users) = deaggregate(&agg, (0, u128::MAX)) else {
            panic!("not an aggregate")
        };
        assert_eq!(users.len(), 3);
        for (i, u) in users.iter().enumerate() {
            assert_eq!(u.data, recs[i]);
            assert_eq!(u.partition_key, "cust-7");
            assert_eq!(u.hash_key, hash_key_of(b"cust-7"));
            assert_eq!(u.sub, i as u32);
        }
    }

    #[test]
    fn varint_lengths_match_the_encoding() {
        for v in [0u64, 1, 127, 128, 16_383, 16_384, u64::from(u32::MAX), u64::MAX] {
            let mut b = Vec::new();
            varint(v, &mut b);
            assert_eq!(b.len(), varint_len(v), "{v}");
        }
    }

    #[test]
    fn the_aggregator_keeps_one_key_per_aggregate_and_its_size() {
        let mut a = Aggregator::default();
        let line = vec![b'y'; 1000];
        let mut out = Vec::new();
        for i in 0..200 {
            out.extend(a.add(if i % 2 == 0 { "even" } else { "odd" }, &line));
        }
        out.extend(a.take(true));
        let mut total = 0;
        for e in &out {
            assert!(e.data.len() <= AGGREGATE_MAX, "{}", e.data.len());
            let Deaggregated::Aggregate(users) = deaggregate(&e.data, (0, u128::MAX)) else {
                panic!("not an aggregate")
            };
            assert!(users.iter().all(|u| u.partition_key == e.key && u.data == line));
            assert_eq!(users.len() as u64, e.users);
            total += e.users;
        }
        assert_eq!(total, 200);
        assert_eq!(a.held, 0);
        // A record too large to share an aggregate goes plain, after its key's held ones.
        a.add("k", b"small");
        let huge = vec![b'z'; AGGREGATE_MAX];
        let out = a.add("k", &huge);
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].users, 1);
        assert!(matches!(deaggregate(&out[0].data, (0, u128::MAX)), Deaggregated::Aggregate(_)));
        assert_eq!(out[1].data, huge);
    }

    #[test]
    fn keys_are_cut_to_256_characters() {
        assert_eq!(truncate(&"é".repeat(300), KEY_MAX).chars().count(), 256);
        assert_eq!(truncate("abc", KEY_MAX), "abc");
    }
}
