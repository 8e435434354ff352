//! One shard's records: a fetch task that calls `GetRecords` at the shard's pace and hands
//! whole responses over a bounded channel, and the [`ShardReader`] the split's worker thread
//! polls, which de-aggregates KPL records into user records, each with its own position.
//!
//! The channel holds two responses at most: a worker that falls behind (S3 slow) stops the
//! fetch task, which then stops calling Kinesis. Its iterator may expire meanwhile (after five
//! minutes): the task asks for a new one after the last record it handed over.

use super::kpl::{self, Deaggregated};
use super::pace::{Jitter, Pace};
use super::position::{SeqNo, ShardPosition};
use super::shards::HashRange;
use crate::event::LinePosition;
use crate::source::{Polled, Record, SplitId, SplitReader};
use aws_sdk_kinesis::Client;
use aws_sdk_kinesis::error::ProvideErrorMetadata;
use aws_sdk_kinesis::types::ShardIteratorType;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

/// What the fetch task hands over.
#[derive(Debug)]
pub(super) enum Fetched {
    /// One response's records, and how far behind the tip the shard still is.
    Batch { records: Vec<(SeqNo, Vec<u8>)>, behind_ms: i64 },
    /// The shard is closed and every record of it was handed over.
    End,
}

/// Where a fetch starts.
#[derive(Debug, Clone)]
pub(super) enum From {
    /// A position of ours.
    Position(ShardPosition),
    /// The oldest record kept.
    TrimHorizon,
    /// Records put from now on.
    Latest,
    /// Records put at or after this time (ms since the epoch).
    AtTimestamp(i64),
}

/// The receiving end a started fetch leaves for the reader (a restart replaces it).
#[derive(Debug, Default)]
pub(super) struct Handoff {
    generation: AtomicU64,
    rx: Mutex<Option<mpsc::Receiver<Fetched>>>,
}

impl Handoff {
    pub(super) fn put(&self, rx: mpsc::Receiver<Fetched>) {
        *self.rx.lock().unwrap_or_else(PoisonError::into_inner) = Some(rx);
        self.generation.fetch_add(1, Ordering::AcqRel);
    }
}

/// One user record waiting to be processed.
#[derive(Debug)]
struct Item {
    data: Vec<u8>,
    end: ShardPosition,
    sub: u32,
}

/// A shard's records, on its worker's thread.
#[derive(Debug)]
pub struct ShardReader {
    id: SplitId,
    range: HashRange,
    handoff: Arc<Handoff>,
    seen: u64,
    rx: Option<mpsc::Receiver<Fetched>>,
    rt: tokio::runtime::Handle,
    items: VecDeque<Item>,
    current: Item,
    ended: bool,
    behind_ms: Option<i64>,
    ordinal: u64,
}

impl ShardReader {
    pub(super) fn new(
        id: SplitId,
        range: HashRange,
        handoff: Arc<Handoff>,
        rt: tokio::runtime::Handle,
    ) -> ShardReader {
        ShardReader {
            id,
            range,
            handoff,
            seen: 0,
            rx: None,
            rt,
            items: VecDeque::new(),
            current: Item { data: Vec::new(), end: ShardPosition::End, sub: 0 },
            ended: false,
            behind_ms: None,
            ordinal: 0,
        }
    }

    /// Takes a newer fetch's channel, dropping what the old one left.
    fn refresh(&mut self) {
        let g = self.handoff.generation.load(Ordering::Acquire);
        if g != self.seen {
            self.seen = g;
            self.rx = self.handoff.rx.lock().unwrap_or_else(PoisonError::into_inner).take();
            self.items.clear();
            self.ended = false;
            self.behind_ms = None;
        }
    }

    /// Queues a response's user records (KCL's de-aggregation rules).
    fn unpack(&mut self, records: Vec<(SeqNo, Vec<u8>)>) {
        let label = self.id.as_str().to_owned();
        let (mut aggregates, mut dropped) = (0u64, 0u64);
        for (seq, data) in records {
            let users: Vec<Vec<u8>> = match kpl::deaggregate(&data, self.range) {
                Deaggregated::Plain => {
                    let end = ShardPosition::After { seq, sub: None };
                    self.items.push_back(Item { data, end, sub: 0 });
                    continue;
                }
                Deaggregated::Aggregate(users) => users.iter().map(|u| u.data.to_vec()).collect(),
                Deaggregated::WrongShard(n) => {
                    dropped += u64::from(n);
                    continue;
                }
            };
            aggregates += 1;
            let n = users.len();
            for (i, data) in users.into_iter().enumerate() {
                // The last user record completes the Kinesis record; a cut before it resumes
                // inside the aggregate (`AT_SEQUENCE_NUMBER`, skipping what is done).
                let sub = (i + 1 < n).then_some(i as u32);
                let end = ShardPosition::After { seq: seq.clone(), sub };
                self.items.push_back(Item { data, end, sub: i as u32 });
            }
        }
        if aggregates > 0 {
            metrics::counter!("clickstream_kinesis_aggregates_total", "partition" => label.clone())
                .increment(aggregates);
        }
        if dropped > 0 {
            warn!(split = %self.id, records = dropped, "Dropped KPL user records outside the shard's hash-key range (the producer re-puts them on the right shard).");
            metrics::counter!("clickstream_kinesis_wrong_shard_records_total", "partition" => label)
                .increment(dropped);
        }
    }
}

impl SplitReader for ShardReader {
    type Position = ShardPosition;

    fn poll(&mut self, timeout: Duration) -> Polled<'_, ShardPosition> {
        self.refresh();
        if self.items.is_empty() && !self.ended {
            let Some(rx) = self.rx.as_mut() else {
                std::thread::sleep(timeout);
                return Polled::Nothing;
            };
            let got = match rx.try_recv() {
                Ok(f) => Some(f),
                Err(mpsc::error::TryRecvError::Empty) => self.rt.block_on(async {
                    tokio::time::timeout(timeout, rx.recv()).await.ok().flatten()
                }),
                Err(mpsc::error::TryRecvError::Disconnected) => None,
            };
            match got {
                Some(Fetched::Batch { records, behind_ms }) => {
                    self.behind_ms = Some(behind_ms);
                    self.unpack(records);
                }
                Some(Fetched::End) => self.ended = true,
                None => return Polled::Nothing,
            }
        }
        match self.items.pop_front() {
            Some(item) => {
                self.ordinal += 1;
                self.current = item;
                Polled::Record(Record {
                    payload: &self.current.data,
                    // Dead letters name the shard (the input) and the record's number as read
                    // by this worker, and the user record within an aggregate.
                    line: LinePosition {
                        input: 0,
                        line: self.ordinal,
                        offset: u64::from(self.current.sub),
                    },
                    end: self.current.end.clone(),
                })
            }
            None if self.ended => Polled::End(ShardPosition::End),
            None => Polled::Nothing,
        }
    }

    fn lag(&self, _at: Option<&ShardPosition>) -> Option<u64> {
        // Caught up: nothing queued here, nothing waiting in the channel, and the last response
        // said the shard's tip was reached (an empty response alone does not say that).
        let waiting = self.items.len() + self.rx.as_ref().map_or(0, mpsc::Receiver::len);
        match self.behind_ms {
            Some(0) if waiting == 0 => Some(0),
            Some(_) => Some(waiting.max(1) as u64),
            None => None,
        }
    }
}

/// Error codes that mean "slower": retried with the same iterator after a back-off.
const THROTTLES: [&str; 3] =
    ["ProvisionedThroughputExceededException", "LimitExceededException", "KMSThrottlingException"];

/// What a fetch task needs.
pub(super) struct Fetch {
    pub client: Client,
    pub stream_arn: String,
    /// The stream's name when it was configured by name: older endpoints (emulators, some
    /// proxies) know calls by name only.
    pub stream_name: Option<String>,
    pub shard: String,
    pub split: SplitId,
    pub from: From,
    pub pace: Pace,
    pub max_records: i32,
    pub tx: mpsc::Sender<Fetched>,
    pub cancel: CancellationToken,
    /// Set when the stream is gone for good.
    pub fatal: Arc<Mutex<Option<String>>>,
    /// The last response handed over was empty at the shard's tip.
    pub at_tip: bool,
}

impl Fetch {
    /// Reads the shard until it ends, the reader goes away or `cancel` fires.
    pub(super) async fn run(mut self) {
        let label = self.split.as_str().to_owned();
        let mut jitter =
            Jitter::new(self.shard.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
                (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
            }));
        let mut iterator: Option<String> = None;
        let mut failures = 0u32;
        loop {
            if self.cancel.is_cancelled() || self.tx.is_closed() {
                return;
            }
            let it = match iterator.take() {
                Some(it) => it,
                None => match self.iterator().await {
                    Ok(Some(it)) => it,
                    Ok(None) => {
                        // A closed shard whose end we are past: nothing more to read.
                        let _ = self.tx.send(Fetched::End).await;
                        return;
                    }
                    Err(e) => {
                        failures += 1;
                        if self.failed(&e, &label) {
                            return;
                        }
                        self.sleep(Pace::backoff(failures, jitter.draw())).await;
                        continue;
                    }
                },
            };
            let call = self.client.get_records().shard_iterator(&it).limit(self.max_records).send();
            let out = tokio::select! {
                () = self.cancel.cancelled() => return,
                out = call => out,
            };
            iterator = match out {
                Ok(out) => {
                    failures = 0;
                    match self.hand_over(out, &label).await {
                        Some((next, wait)) => {
                            self.sleep(wait).await;
                            Some(next)
                        }
                        None => return,
                    }
                }
                Err(e) => {
                    let code = e.code().unwrap_or_default().to_owned();
                    if code == "ExpiredIteratorException" {
                        metrics::counter!("clickstream_kinesis_iterator_renewals_total", "partition" => label.clone()).increment(1);
                        warn!(split = %self.split, "Shard iterator expired; asking for a new one after the last record handed over.");
                        None
                    } else {
                        if THROTTLES.contains(&code.as_str()) {
                            metrics::counter!("clickstream_kinesis_throttles_total", "partition" => label.clone()).increment(1);
                        } else {
                            let message = format!("{e}: {}", e.message().unwrap_or_default());
                            if self.failed(&(code, message), &label) {
                                return;
                            }
                        }
                        failures += 1;
                        self.sleep(Pace::backoff(failures, jitter.draw())).await;
                        // The iterator is a position: reuse it.
                        Some(it)
                    }
                }
            };
        }
    }

    /// Hands a response's records to the reader; the next iterator and the wait before using
    /// it, or `None` when the shard ended or the reader is gone.
    async fn hand_over(
        &mut self,
        out: aws_sdk_kinesis::operation::get_records::GetRecordsOutput,
        label: &str,
    ) -> Option<(String, Duration)> {
        let behind = out.millis_behind_latest.unwrap_or(0);
        let records = out.records;
        let bytes: u64 = records.iter().map(|r| r.data.as_ref().len() as u64).sum();
        let n = records.len();
        metrics::counter!("clickstream_kinesis_records_in_total", "partition" => label.to_owned())
            .increment(n as u64);
        metrics::counter!("clickstream_kinesis_bytes_in_total", "partition" => label.to_owned())
            .increment(bytes);
        metrics::gauge!("clickstream_kinesis_millis_behind_latest", "partition" => label.to_owned()).set(behind as f64);
        let mut batch = Vec::with_capacity(n);
        for r in records {
            let Some(seq) = SeqNo::parse(&r.sequence_number) else {
                warn!(split = %self.split, seq = %r.sequence_number, "Skipping a record with a malformed sequence number.");
                continue;
            };
            batch.push((seq, r.data.into_inner()));
        }
        if let Some((seq, _)) = batch.last() {
            self.from = From::Position(ShardPosition::After { seq: seq.clone(), sub: None });
        }
        // An empty response only matters when it tells the reader something new (it reached
        // the tip): repeating it would keep the channel busy and the split never quiet.
        let news = !batch.is_empty() || (behind == 0 && !self.at_tip);
        self.at_tip = batch.is_empty() && behind == 0;
        if news {
            let sent = tokio::select! {
                () = self.cancel.cancelled() => return None,
                r = self.tx.send(Fetched::Batch { records: batch, behind_ms: behind }) => r,
            };
            sent.ok()?;
        }
        let Some(next) = out.next_shard_iterator else {
            debug!(split = %self.split, "Shard read to its end.");
            let _ = self.tx.send(Fetched::End).await;
            return None;
        };
        Some((next, self.pace.after(bytes, n, behind == 0)))
    }

    /// A new iterator at `self.from`; `None` when the shard is closed and read past its end.
    async fn iterator(&self) -> Result<Option<String>, (String, String)> {
        let mut req = self.client.get_shard_iterator().shard_id(&self.shard);
        req = match &self.stream_name {
            Some(name) => req.stream_name(name),
            None => req.stream_arn(&self.stream_arn),
        };
        req = match &self.from {
            From::TrimHorizon => req.shard_iterator_type(ShardIteratorType::TrimHorizon),
            From::Latest => req.shard_iterator_type(ShardIteratorType::Latest),
            From::AtTimestamp(ms) => req
                .shard_iterator_type(ShardIteratorType::AtTimestamp)
                .timestamp(aws_sdk_kinesis::primitives::DateTime::from_millis(*ms)),
            From::Position(ShardPosition::After { seq, sub: None }) => req
                .shard_iterator_type(ShardIteratorType::AfterSequenceNumber)
                .starting_sequence_number(seq.as_str()),
            // Inside an aggregate: read it again; the worker skips the user records it has.
            From::Position(ShardPosition::After { seq, sub: Some(_) }) => req
                .shard_iterator_type(ShardIteratorType::AtSequenceNumber)
                .starting_sequence_number(seq.as_str()),
            From::Position(ShardPosition::End) => return Ok(None),
        };
        let out = tokio::select! {
            () = self.cancel.cancelled() => return Err(("Cancelled".into(), "cancelled".into())),
            out = req.send() => out,
        };
        match out {
            Ok(o) => Ok(o.shard_iterator),
            Err(e) => Err((
                e.code().unwrap_or("Unknown").to_owned(),
                format!("{e}: {}", e.message().unwrap_or_default()),
            )),
        }
    }

    /// Logs a failed call; true when it can never succeed (the stream is gone).
    fn failed(&self, (code, message): &(String, String), label: &str) -> bool {
        if code == "Cancelled" {
            return true;
        }
        if code == "ResourceNotFoundException" {
            let why = format!(
                "the Kinesis stream {} or its shard {} no longer exists: {message}",
                self.stream_arn, self.shard
            );
            *self.fatal.lock().unwrap_or_else(PoisonError::into_inner) = Some(why);
            return true;
        }
        metrics::counter!("clickstream_kinesis_errors_total", "partition" => label.to_owned())
            .increment(1);
        warn!(split = %self.split, code = %code, error = %message, "Kinesis call failed; retrying.");
        false
    }

    async fn sleep(&self, d: Duration) {
        tokio::select! {
            () = self.cancel.cancelled() => {}
            () = tokio::time::sleep(d) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::Position as _;
    use crate::source::kinesis::kpl::tests::{THREE, unhex};

    #[test]
    fn user_records_of_an_aggregate_have_positions_of_their_own() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let handoff = Arc::new(Handoff::default());
        let id = SplitId::new("shardId-000000000000");
        let mut r = ShardReader::new(id, (0, u128::MAX), Arc::clone(&handoff), rt.handle().clone());
        assert_eq!(r.lag(None), None, "nothing known before the first response");
        let (tx, rx) = mpsc::channel(4);
        handoff.put(rx);
        let seq = |s: &str| SeqNo::parse(s).unwrap();
        // A plain record, then a KPL aggregate of three (built by aws-kinesis-agg).
        let records = vec![(seq("10"), b"{\"a\":1}".to_vec()), (seq("11"), unhex(THREE))];
        tx.try_send(Fetched::Batch { records, behind_ms: 0 }).unwrap();
        tx.try_send(Fetched::End).unwrap();
        let mut got: Vec<(Vec<u8>, String)> = Vec::new();
        loop {
            match r.poll(Duration::from_millis(50)) {
                Polled::Record(rec) => got.push((rec.payload.to_vec(), rec.end.encode())),
                Polled::End(e) => {
                    got.push((Vec::new(), e.encode()));
                    break;
                }
                Polled::Nothing => panic!("records were waiting"),
            }
        }
        let want: Vec<(Vec<u8>, String)> = [
            (&b"{\"a\":1}"[..], "10"),
            (b"one", "11/0"),
            (b"two", "11/1"),
            // The last user record completes the Kinesis record.
            (b"three", "11"),
            (b"", "END"),
        ]
        .iter()
        .map(|(d, p)| (d.to_vec(), (*p).to_owned()))
        .collect();
        assert_eq!(got, want);
        assert_eq!(r.lag(None), Some(0), "read to the tip");
    }
}
