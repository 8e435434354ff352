//! Kinesis Data Streams: a shard is a split. Leases in a DynamoDB table in KCL's schema say who
//! works on which shard (`coordinator.rs`); the runtime's conditional commit is what makes a
//! stale worker harmless. A child shard starts only after its parents committed their ends, and
//! from their final state cut to its hash-key range (`crate::runtime::lineage`), so a reshard
//! cuts no session in two. This requires the producer's partition key to be the customer id.
//!
//! ```text
//!  coordinator task: ListShards, leases (renew, take, checkpoint, release) ──Note──▶ runtime
//!  fetch task per shard: GetShardIterator/GetRecords at the shard's pace ──▶ ShardReader
//! ```

pub mod balance;
mod coordinator;
pub mod kpl;
pub mod lease;
pub mod pace;
pub mod position;
pub mod reader;
pub mod shards;

use crate::runtime::health::Health;
use crate::source::{Lineage, Note, SourceControl, SplitId, StartAt};
use aws_sdk_kinesis::Client;
use aws_sdk_kinesis::error::ProvideErrorMetadata;
use pace::Pace;
use position::ShardPosition;
use reader::{Fetch, From, Handoff, ShardReader};
use shards::HashRange;
use std::collections::BTreeMap;
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Where a shard seen for the first time starts (children of a reshard always start at their
/// beginning).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Initial {
    /// The oldest record kept.
    TrimHorizon,
    /// Records put from the start on.
    Latest,
    /// Records put at or after this time (ms since the epoch).
    AtTimestamp(i64),
}

/// The Kinesis source's settings.
#[derive(Debug, Clone)]
pub struct KinesisSettings {
    /// Stream name or ARN.
    pub stream: String,
    /// DynamoDB lease table (created if missing).
    pub lease_table: String,
    /// Start of a shard without a lease.
    pub initial: Initial,
    /// Wait after an empty response at the shard's tip.
    pub idle_poll: Duration,
    /// Records per `GetRecords`.
    pub max_records: i32,
    /// A lease not renewed for this long (on the observer's clock) may be taken.
    pub lease_duration: Duration,
    /// How often the shard list is read.
    pub shard_sync: Duration,
    /// This worker's name in the lease table.
    pub worker_id: String,
}

/// A shard the control knows.
#[derive(Debug)]
struct Entry {
    range: HashRange,
    parents: Vec<(SplitId, bool)>,
    handoff: Arc<Handoff>,
    fetch: Option<CancellationToken>,
}

/// What the runtime asks of the Kinesis source.
pub struct KinesisControl {
    rt: tokio::runtime::Handle,
    client: Client,
    arn: String,
    created_ms: i64,
    s: KinesisSettings,
    shards: Mutex<BTreeMap<SplitId, Entry>>,
    hints: mpsc::UnboundedSender<(SplitId, ShardPosition)>,
    fatal: Arc<Mutex<Option<String>>>,
}

impl std::fmt::Debug for KinesisControl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KinesisControl").field("arn", &self.arn).finish_non_exhaustive()
    }
}

impl KinesisControl {
    fn entry<T>(&self, id: &SplitId, f: impl FnOnce(&mut Entry) -> T) -> Option<T> {
        self.shards.lock().unwrap_or_else(PoisonError::into_inner).get_mut(id).map(f)
    }

    /// Records what the shard list says of a shard; a reader for it.
    fn describe(
        &self,
        id: &SplitId,
        range: HashRange,
        parents: Vec<(SplitId, bool)>,
    ) -> ShardReader {
        let mut map = self.shards.lock().unwrap_or_else(PoisonError::into_inner);
        let e = map.entry(id.clone()).or_insert_with(|| Entry {
            range,
            parents: Vec::new(),
            handoff: Arc::new(Handoff::default()),
            fetch: None,
        });
        e.range = range;
        e.parents = parents;
        ShardReader::new(id.clone(), range, Arc::clone(&e.handoff), self.rt.clone())
    }

    /// Stops a shard's fetch.
    fn halt(&self, id: &SplitId) {
        if let Some(Some(t)) = self.entry(id, |e| e.fetch.take()) {
            t.cancel();
        }
    }
}

impl SourceControl for KinesisControl {
    type Position = ShardPosition;

    fn start(
        &self,
        id: &SplitId,
        at: &StartAt<ShardPosition>,
        _give_up: &dyn Fn() -> bool,
    ) -> Result<(), String> {
        let (tx, rx) = mpsc::channel(2);
        let cancel = CancellationToken::new();
        let has_parents = self
            .entry(id, |e| {
                e.handoff.put(rx);
                if let Some(old) = e.fetch.replace(cancel.clone()) {
                    old.cancel();
                }
                !e.parents.is_empty()
            })
            .ok_or_else(|| format!("shard {id} is not ours"))?;
        let from = match at {
            StartAt::Resume(p) => {
                if *p == ShardPosition::End {
                    // Committed before the lease heard of it (a crash in between): tell it now.
                    let _ = self.hints.send((id.clone(), ShardPosition::End));
                }
                From::Position(p.clone())
            }
            // A child holds its parents' customers from the reshard on: all of it is read.
            StartAt::Initial if has_parents => From::TrimHorizon,
            StartAt::Initial => match self.s.initial {
                Initial::TrimHorizon => From::TrimHorizon,
                Initial::Latest => From::Latest,
                Initial::AtTimestamp(ms) => From::AtTimestamp(ms),
            },
        };
        let fetch = Fetch {
            client: self.client.clone(),
            stream_arn: self.arn.clone(),
            stream_name: by_name(&self.s.stream),
            shard: id.as_str().to_owned(),
            split: id.clone(),
            from,
            pace: Pace { idle: self.s.idle_poll },
            max_records: self.s.max_records,
            tx,
            cancel,
            fatal: Arc::clone(&self.fatal),
            at_tip: false,
        };
        self.rt.spawn(fetch.run());
        Ok(())
    }

    fn commit_hint(&self, id: &SplitId, at: &ShardPosition) {
        let _ = self.hints.send((id.clone(), at.clone()));
    }

    fn identity(&self, id: &SplitId) -> String {
        // The creation time tells a recreated stream (same name, same shard ids) from the old.
        format!("kinesis:{}@{}/{id}", self.arn, self.created_ms)
    }

    fn lineage(&self, id: &SplitId) -> Option<Lineage> {
        self.entry(id, |e| Lineage { parents: e.parents.clone(), range: e.range })
    }
}

/// The running source: its coordinator task and the control the runtime uses.
pub struct KinesisSource {
    control: Arc<KinesisControl>,
    stop: CancellationToken,
    task: Option<tokio::task::JoinHandle<()>>,
    rt: tokio::runtime::Handle,
}

/// The AWS settings Kinesis clients are made from: the environment's (endpoint, region,
/// credentials), each attempt cut at 30 s so that a hung request is retried, not waited on.
pub async fn sdk_config() -> aws_config::SdkConfig {
    aws_config::defaults(aws_config::BehaviorVersion::latest())
        .timeout_config(
            aws_config::timeout::TimeoutConfig::builder()
                .operation_attempt_timeout(Duration::from_secs(30))
                .build(),
        )
        .load()
        .await
}

impl KinesisSource {
    /// Finds the stream, makes sure the lease table exists, and starts coordinating.
    ///
    /// # Errors
    /// The stream does not exist or cannot be described, or the lease table cannot be made.
    pub fn spawn(
        s: &KinesisSettings,
        notes: Sender<Note<ShardReader>>,
        health: Arc<Health>,
    ) -> Result<KinesisSource, String> {
        let rt = tokio::runtime::Handle::current();
        let conf = rt.block_on(sdk_config());
        // Throttling is retried per shard, paced and counted (`reader.rs`), not hidden inside
        // the SDK's retries.
        let kconf = aws_sdk_kinesis::config::Builder::from(&conf)
            .retry_config(aws_config::retry::RetryConfig::standard().with_max_attempts(1))
            .build();
        let client = Client::from_conf(kconf);
        let (arn, created_ms) = rt.block_on(describe(&client, &s.stream))?;
        let table = lease::LeaseTable::new(aws_sdk_dynamodb::Client::new(&conf), &s.lease_table);
        rt.block_on(table.ensure()).map_err(|e| format!("lease table {}: {e}", s.lease_table))?;
        let (hints_tx, hints_rx) = mpsc::unbounded_channel();
        let control = Arc::new(KinesisControl {
            rt: rt.clone(),
            client: client.clone(),
            arn: arn.clone(),
            created_ms,
            s: s.clone(),
            shards: Mutex::new(BTreeMap::new()),
            hints: hints_tx,
            fatal: Arc::new(Mutex::new(None)),
        });
        let stop = CancellationToken::new();
        let c = coordinator::Coordinator::new(
            s.clone(),
            client,
            arn,
            table,
            Arc::clone(&control),
            notes,
            hints_rx,
            health,
        );
        let task = rt.spawn(c.run(stop.clone()));
        Ok(KinesisSource { control, stop, task: Some(task), rt })
    }

    /// What the runtime uses to start splits.
    #[must_use]
    pub fn control(&self) -> Arc<KinesisControl> {
        Arc::clone(&self.control)
    }

    /// Why the source cannot go on, if it cannot (the stream was deleted).
    pub fn failed(&mut self) -> Option<String> {
        if let Some(why) = self.control.fatal.lock().unwrap_or_else(PoisonError::into_inner).clone()
        {
            return Some(why);
        }
        if self.task.as_ref().is_some_and(tokio::task::JoinHandle::is_finished) {
            return Some("the Kinesis coordinator stopped".into());
        }
        None
    }

    /// Records the last checkpoints in the lease table and gives every lease up, so that peers
    /// take the shards at once instead of after the lease duration.
    pub fn stop(mut self, deadline: Duration) {
        self.stop.cancel();
        if let Some(t) = self.task.take() {
            let _ = self.rt.block_on(async { tokio::time::timeout(deadline, t).await });
        }
        let ids: Vec<SplitId> = self
            .control
            .shards
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .keys()
            .cloned()
            .collect();
        for id in ids {
            self.control.halt(&id);
        }
    }
}

/// The stream's name, when it was configured by name.
fn by_name(stream: &str) -> Option<String> {
    (!stream.starts_with("arn:")).then(|| stream.to_owned())
}

/// The stream's ARN and creation time.
async fn describe(client: &Client, stream: &str) -> Result<(String, i64), String> {
    let mut req = client.describe_stream_summary();
    req = if stream.starts_with("arn:") { req.stream_arn(stream) } else { req.stream_name(stream) };
    let mut attempt = 0;
    loop {
        match req.clone().send().await {
            Ok(o) => {
                let d = o.stream_description_summary.ok_or("DescribeStreamSummary: no summary")?;
                return Ok((d.stream_arn, d.stream_creation_timestamp.to_millis().unwrap_or(0)));
            }
            Err(e) if e.code() == Some("ResourceNotFoundException") => {
                return Err(format!("the Kinesis stream {stream} does not exist"));
            }
            Err(e) if attempt < 5 => {
                attempt += 1;
                tracing::warn!(stream, error = %e, "DescribeStreamSummary failed; retrying.");
                tokio::time::sleep(Duration::from_secs(attempt)).await;
            }
            Err(e) => {
                return Err(format!(
                    "describing the Kinesis stream {stream}: {e}: {}",
                    e.message().unwrap_or_default()
                ));
            }
        }
    }
}
