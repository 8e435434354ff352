//! `clickstream produce`: pushes recorded events (files, stdin, archives: whatever `replay`
//! reads) into a Kafka topic or a Kinesis stream, keyed the way the pipeline needs them keyed,
//! at a fixed rate or as fast as the target takes them. The system tests and the load
//! benchmark feed Kafka and Kinesis with it.
//!
//! Layout: this module holds the pure parts (keying, the rate schedule) and the driver that
//! reads the inputs; `kafka` and `kinesis` are the two I/O edges behind [`Sink`].
//!
//! Keys: sessions are kept per partition (or shard), so every event of a customer must land on
//! the same one. [`Key::Customer`] takes the customer id exactly as the schemas extract it; a
//! line they do not extract (no customer id, or any other reason the pipeline would dead-letter
//! it) gets the stable fallback key [`fallback_key`], the lowercase hex MD5 of its bytes. Such
//! lines end as dead letters whatever partition they reach; the fallback only keeps a re-run
//! putting each on the same partition as before.

pub mod kafka;
pub mod kinesis;

use crate::extract::Extractor;
use crate::extract::path::JsonPath;
use crate::extract::path::eval::Budget;
use crate::extract::schema::SchemaErrors;
use crate::extract::walk::Slot;
use crate::source::replay::{self, Framed, Framer, Framing, Input, SourceError};
use indicatif::ProgressBar;
use std::borrow::Cow;
use std::io::{self, Read};
use std::path::PathBuf;
use std::str::FromStr;
use std::time::{Duration, Instant};
use thiserror::Error;

/// A produce failure.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ProduceError {
    /// An input cannot be listed, opened or read.
    #[error(transparent)]
    Source(#[from] SourceError),
    /// The schemas (for `--key customer`) cannot be loaded.
    #[error("schemas: {0}")]
    Schemas(#[from] SchemaErrors),
    /// `--key` is neither `customer`, `none` nor a `JSONPath`.
    #[error("--key {0}")]
    Key(String),
    /// The Kafka producer cannot be created or a record cannot be queued.
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    /// Kinesis refused a request for good (not a throttled entry, which is retried).
    #[error("kinesis: {0}")]
    Kinesis(String),
}

/// How records are keyed.
#[derive(Debug, Clone)]
pub enum Key {
    /// The customer id as the schemas extract it; the [`fallback_key`] where they do not.
    Customer,
    /// The first non-null match of a `JSONPath` (a string as it is, a number in its JSON
    /// spelling, anything else as its compact JSON); the [`fallback_key`] where nothing matches.
    Path(JsonPath),
    /// No key: Kafka's partitioner spreads the records; Kinesis needs a partition key, and gets
    /// the [`fallback_key`] of every record (not counted as fallback-keyed).
    None,
}

impl FromStr for Key {
    type Err = String;

    fn from_str(s: &str) -> Result<Key, String> {
        match s {
            "customer" => Ok(Key::Customer),
            "none" => Ok(Key::None),
            p if p.starts_with('$') => JsonPath::parse(p).map(Key::Path),
            other => Err(format!(
                "`{other}`: expected `customer`, `none` or a JSONPath such as `$.user.id`"
            )),
        }
    }
}

/// The stable key of a line that has none: the lowercase hex MD5 of its bytes (32 characters).
#[must_use]
pub fn fallback_key(line: &[u8]) -> String {
    crate::hash::md5_hex(line)
}

/// A line's key.
#[derive(Debug, PartialEq, Eq)]
pub enum Keyed<'a> {
    /// Found as asked.
    Found(Cow<'a, str>),
    /// Not found: the [`fallback_key`].
    Fallback(String),
    /// `--key none`.
    None,
}

/// Keys lines by a [`Key`].
#[derive(Debug)]
pub struct Keyer {
    key: Key,
    /// Loaded only for [`Key::Customer`].
    extractor: Option<Extractor>,
}

impl Keyer {
    /// A keyer; `extractor` is needed for [`Key::Customer`].
    ///
    /// # Errors
    /// [`Key::Customer`] without an extractor.
    pub fn new(key: Key, extractor: Option<Extractor>) -> Result<Keyer, ProduceError> {
        if matches!(key, Key::Customer) && extractor.is_none() {
            return Err(ProduceError::Key("customer needs the schemas".into()));
        }
        Ok(Keyer { key, extractor })
    }

    /// The key of one line (without its `\n`). `slots` is scratch, reused across lines.
    pub fn key<'a>(&self, line: &'a [u8], slots: &mut Vec<Slot<'a>>) -> Keyed<'a> {
        let found = match &self.key {
            Key::None => return Keyed::None,
            Key::Customer => self.extractor.as_ref().and_then(|x| {
                let text = crate::decode::decode(line).ok()?;
                x.extract(text, slots).ok().map(|ev| ev.customer_id)
            }),
            Key::Path(p) => path_key(p, line).map(Cow::Owned),
        };
        match found {
            Some(k) if !k.is_empty() => Keyed::Found(k),
            _ => Keyed::Fallback(fallback_key(line)),
        }
    }
}

fn path_key(p: &JsonPath, line: &[u8]) -> Option<String> {
    let text = crate::decode::decode(line).ok()?;
    let v: serde_json::Value = serde_json::from_str(text).ok()?;
    // The path's own bound on an event of this size; parsing succeeded, so it cannot run out.
    let mut budget = Budget::new(p.cost().at(text.len() as u64).saturating_add(1));
    match p.first_match(&v, &mut budget).ok()?? {
        serde_json::Value::String(s) => Some(s.clone()),
        other => Some(other.to_string()),
    }
}

/// A sending rate, records per second.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate(f64);

impl FromStr for Rate {
    type Err = String;

    /// `5000/s`, `300/m`, `60/h`; a bare number is per second.
    fn from_str(s: &str) -> Result<Rate, String> {
        let (n, per) = s.split_once('/').unwrap_or((s, "s"));
        let secs = match per {
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return Err(format!("`{s}`: expected N/s, N/m or N/h, e.g. 5000/s")),
        };
        match n.trim().parse::<f64>() {
            Ok(n) if n > 0.0 && n.is_finite() => Ok(Rate(n / secs)),
            _ => Err(format!("`{s}`: the count must be a number above 0, e.g. 5000/s")),
        }
    }
}

impl Rate {
    /// Records per second.
    #[must_use]
    pub fn per_second(self) -> f64 {
        self.0
    }

    /// When record `i` (from 0) may go, after the start. The schedule is absolute, so a late
    /// wake-up is made up by the next records instead of accumulating into a lower rate.
    #[must_use]
    pub fn due(self, i: u64) -> Duration {
        Duration::from_secs_f64(i as f64 / self.0)
    }
}

/// Where records go: a Kafka topic or a Kinesis stream.
pub trait Sink {
    /// Hands one record on (it may be batched and sent later).
    ///
    /// # Errors
    /// The target refused for good.
    fn send(&mut self, key: Option<&str>, payload: &[u8]) -> Result<(), ProduceError>;

    /// Sends what is held and waits until every record is delivered or failed.
    ///
    /// # Errors
    /// The target refused for good.
    fn finish(&mut self) -> Result<Delivery, ProduceError>;
}

/// What a sink's [`Sink::finish`] reports.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Delivery {
    /// Records that were not delivered (the target refused them, or retries ran out).
    pub failed: u64,
    /// Records larger than the target takes, not sent (Kinesis: 1 MiB with the key).
    pub too_large: u64,
    /// Kinesis: where the records landed, per shard id.
    pub shards: std::collections::BTreeMap<String, ShardTally>,
}

/// The records put into one Kinesis shard.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ShardTally {
    /// Kinesis records put (an aggregate counts once).
    pub records: u64,
    /// The highest sequence number Kinesis gave them: a reader of the shard that has passed it
    /// has read all of them (what `bench/run-kinesis` waits for).
    pub last: String,
}

impl ShardTally {
    /// Counts a record put at `sequence` (decimal digits, compared as numbers).
    pub fn put(&mut self, sequence: &str) {
        self.records += 1;
        if (sequence.len(), sequence) > (self.last.len(), self.last.as_str()) {
            sequence.clone_into(&mut self.last);
        }
    }
}

/// The summary line printed at the end.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Summary {
    /// Records delivered.
    pub records: u64,
    /// Their payload bytes.
    pub bytes: u64,
    /// Pieces of input that are no record: with `--skip-empty`, empty lines; with `--framing
    /// concatenated`, bytes that frame no value or a value over 64 MiB.
    pub skipped: u64,
    /// Records sent under the fallback key (the lowercase hex MD5 of the line) because the key
    /// was not found in them.
    pub fallback_keyed: u64,
    /// Records that could not be delivered (the command exits non-zero).
    pub failed: u64,
    /// Records too large for the target, not sent.
    pub too_large: u64,
    /// Wall time from the first record to the last delivery.
    pub seconds: f64,
    /// Kinesis: where the records landed, per shard id (empty for Kafka).
    pub shards: std::collections::BTreeMap<String, ShardTally>,
}

impl Summary {
    /// Records delivered per second.
    #[must_use]
    pub fn rate(&self) -> f64 {
        if self.seconds > 0.0 { self.records as f64 / self.seconds } else { 0.0 }
    }

    /// The summary as one JSON line.
    #[must_use]
    pub fn to_json(&self) -> String {
        let shards: serde_json::Map<String, serde_json::Value> = self
            .shards
            .iter()
            .map(|(id, t)| {
                (id.clone(), serde_json::json!({ "records": t.records, "last": t.last }))
            })
            .collect();
        let mut v = serde_json::json!({
            "records": self.records,
            "bytes": self.bytes,
            "skipped": self.skipped,
            "fallback_keyed": self.fallback_keyed,
            "failed": self.failed,
            "too_large": self.too_large,
            "seconds": (self.seconds * 1000.0).round() / 1000.0,
            "rate": self.rate().round(),
        });
        if !shards.is_empty() {
            v["shards"] = serde_json::Value::Object(shards);
        }
        v.to_string()
    }
}

/// Where to produce.
#[derive(Debug, Clone)]
pub enum Target {
    /// A Kafka topic.
    Kafka {
        /// Bootstrap servers.
        brokers: String,
        /// The topic.
        topic: String,
        /// Extra librdkafka properties (`[kafka.properties]`), over this command's defaults.
        properties: std::collections::BTreeMap<String, String>,
    },
    /// A Kinesis stream (client from the AWS environment).
    Kinesis {
        /// The stream's name.
        stream: String,
        /// KPL-aggregate records (see [`kinesis`]).
        aggregate: bool,
    },
}

/// What `clickstream produce` was asked.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Inputs, as `replay` takes them.
    pub inputs: Vec<String>,
    /// `--framing`.
    pub framing: Option<Framing>,
    /// `s3.force_path_style`, for archives in S3.
    pub force_path_style: bool,
    /// How records are keyed.
    pub key: Key,
    /// The schemas, for [`Key::Customer`].
    pub schemas: PathBuf,
    /// None: as fast as the target takes them.
    pub rate: Option<Rate>,
    /// Skip empty lines instead of sending them as empty records. Off by default: an empty
    /// line of a recording is an empty record of the stream (`record` writes one so), and the
    /// pipeline dead-letters it `empty_line`; sending it keeps every line accounted for.
    pub skip_empty: bool,
    /// Where to.
    pub target: Target,
}

/// Produces every input into the target. Blocking: call it off the async runtime, inside one
/// (Kinesis and S3 archives use its handle).
///
/// # Errors
/// An input or the schemas cannot be read, or the target refuses for good. Records the target
/// refused one by one are counted in [`Summary::failed`] instead.
pub fn produce(s: &Settings) -> Result<Summary, ProduceError> {
    let extractor = match s.key {
        Key::Customer => Some(Extractor::load(&s.schemas)?),
        _ => None,
    };
    let keyer = Keyer::new(s.key.clone(), extractor)?;
    let resolved = replay::resolve(
        &s.inputs,
        &replay::Options {
            framing: s.framing,
            force_path_style: s.force_path_style,
            ..replay::Options::default()
        },
    )?;
    let mut sink: Box<dyn Sink> = match &s.target {
        Target::Kafka { brokers, topic, properties } => {
            Box::new(kafka::KafkaSink::open(brokers, topic, properties)?)
        }
        Target::Kinesis { stream, aggregate } => {
            Box::new(kinesis::KinesisSink::open(stream, *aggregate)?)
        }
    };
    let progress = progress_bar(&resolved.inputs);
    let mut d = Driver {
        keyer: &keyer,
        rate: s.rate,
        skip_empty: s.skip_empty,
        start: Instant::now(),
        sink: sink.as_mut(),
        sum: Summary::default(),
        sent: 0,
    };
    for input in &resolved.inputs {
        read_input(input, &progress, &mut d)?;
    }
    let delivery = d.sink.finish()?;
    progress.finish_and_clear();
    let mut sum = d.sum;
    sum.seconds = d.start.elapsed().as_secs_f64();
    sum.failed = delivery.failed;
    sum.too_large = delivery.too_large;
    sum.records = d.sent - delivery.failed - delivery.too_large;
    sum.shards = delivery.shards;
    Ok(sum)
}

/// A bar of input bytes on stderr, only when stderr is a terminal.
fn progress_bar(inputs: &[Input]) -> ProgressBar {
    use std::io::IsTerminal as _;
    if !io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let total = inputs.iter().map(|i| i.size().unwrap_or(0)).sum();
    let bar = ProgressBar::new(total);
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "{bar:40} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
    ) {
        bar.set_style(style);
    }
    bar
}

/// Keys, paces and sends records.
struct Driver<'a> {
    keyer: &'a Keyer,
    rate: Option<Rate>,
    skip_empty: bool,
    start: Instant,
    sink: &'a mut dyn Sink,
    sum: Summary,
    /// Records handed to the sink.
    sent: u64,
}

impl Driver<'_> {
    /// Sends every record of `block`: lines each ended by `\n`, the last one maybe not (a block
    /// ending in `\n` holds no record after it).
    fn block(&mut self, block: &[u8]) -> Result<(), ProduceError> {
        if block.is_empty() {
            return Ok(());
        }
        let mut slots = Vec::new();
        let body = block.strip_suffix(b"\n").unwrap_or(block);
        for line in body.split(|&b| b == b'\n') {
            if line.is_empty() && self.skip_empty {
                self.sum.skipped += 1;
                continue;
            }
            let keyed = self.keyer.key(line, &mut slots);
            if let Some(rate) = self.rate {
                let due = self.start + rate.due(self.sent);
                let now = Instant::now();
                if due > now {
                    std::thread::sleep(due - now);
                }
            }
            match &keyed {
                Keyed::Found(k) => self.sink.send(Some(k), line)?,
                Keyed::Fallback(k) => {
                    self.sum.fallback_keyed += 1;
                    self.sink.send(Some(k), line)?;
                }
                Keyed::None => self.sink.send(None, line)?,
            }
            self.sent += 1;
            self.sum.bytes += line.len() as u64;
        }
        Ok(())
    }
}

/// Bytes read at a time.
const CHUNK: usize = 1 << 20;

/// Reads one input and sends its records.
fn read_input(
    input: &Input,
    progress: &ProgressBar,
    d: &mut Driver<'_>,
) -> Result<(), ProduceError> {
    let name = input.name.to_string();
    let read_err = |source| SourceError::Read { path: name.clone(), source };
    let mut r = input.reader(progress)?;
    let framing = match input.framing() {
        // As replay decides.
        Framing::Auto => {
            let (framing, again) =
                replay::detect_stream(r, replay::MAX_BUFFERED_LINE).map_err(read_err)?;
            r = again;
            framing
        }
        f => f,
    };
    let mut buf = Vec::with_capacity(2 * CHUNK);
    if framing == Framing::Lines {
        loop {
            let have = buf.len();
            let n = (&mut r).take(CHUNK as u64).read_to_end(&mut buf).map_err(read_err)?;
            if n == 0 {
                return d.block(&buf);
            }
            // Whole lines go now; the start of the last one waits for its end.
            if let Some(p) = memchr::memrchr(b'\n', &buf[have..]) {
                let cut = have + p + 1;
                d.block(&buf[..cut])?;
                buf.drain(..cut);
            }
        }
    }
    let mut framer = Framer::new(replay::MAX_BUFFERED_LINE);
    let mut pieces = Vec::new();
    loop {
        buf.clear();
        let n = (&mut r).take(CHUNK as u64).read_to_end(&mut buf).map_err(read_err)?;
        if n == 0 {
            framer.finish(&mut pieces);
        } else {
            framer.feed(&buf, &mut pieces);
        }
        for piece in pieces.drain(..) {
            match piece {
                Framed::Records(data) => d.block(&data)?,
                Framed::Bad { .. } | Framed::Oversized { .. } => d.sum.skipped += 1,
            }
        }
        if n == 0 {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests;
