//! Capturing Kinesis shards: `ListShards`, then per shard `GetShardIterator` and `GetRecords`
//! until the shard is closed, caught up with, or past `--to-time`, up to [`READERS`] shards at
//! once. KPL aggregates are split into user records by the de-aggregation `run` uses. An
//! iterator that expires (held over five minutes, e.g. while a slow S3 upload of a finished
//! file blocked the loop) is replaced by one after the last record read, so nothing is read
//! twice or skipped.

use super::sink::{SplitWriter, Target};
use super::{KinesisFrom, RecordError, Source, Summary};
use crate::source::kinesis::kpl::{Deaggregated, deaggregate};
use aws_sdk_kinesis::Client;
use aws_sdk_kinesis::error::{DisplayErrorContext, ProvideErrorMetadata};
use aws_sdk_kinesis::primitives::DateTime;
use aws_sdk_kinesis::types::ShardIteratorType;
use std::collections::BTreeMap;
use std::time::Duration;

/// Error codes that mean "slower": the same call again after a pause.
const THROTTLES: [&str; 3] =
    ["ProvisionedThroughputExceededException", "LimitExceededException", "KMSThrottlingException"];
/// Shards read at once, each by a thread of its own (a shard serves 5 reads a second, so one
/// reader per shard is what makes a capture of many shards as fast as of one).
const READERS: usize = 8;
/// Attempts of one call before the capture fails.
const ATTEMPTS: u32 = 20;

/// A sidecar line of a Kinesis user record.
#[derive(serde::Serialize)]
struct Position<'a> {
    stream: &'a str,
    shard: &'a str,
    sequence: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    subsequence: Option<u32>,
    arrival_ms: Option<i64>,
    partition_key: &'a str,
}

/// The error of a `GetRecords` whose iterator is older than five minutes.
const EXPIRED: &str = "ExpiredIteratorException";

/// Where an iterator starts.
#[derive(Clone)]
struct Start {
    ty: ShardIteratorType,
    sequence: Option<String>,
    at: Option<DateTime>,
}

/// A shard to read: id and hash-key range.
struct Shard {
    id: String,
    range: (u128, u128),
}

/// The stream as the calls name it: older endpoints (emulators) know names only.
#[derive(Clone, Copy)]
struct Stream<'a>(&'a str);

impl Stream<'_> {
    fn name(self) -> Option<String> {
        (!self.0.starts_with("arn:")).then(|| self.0.to_owned())
    }
    fn arn(self) -> Option<String> {
        self.0.starts_with("arn:").then(|| self.0.to_owned())
    }
}

fn describe<E: ProvideErrorMetadata + std::error::Error + 'static, R: std::fmt::Debug>(
    e: &aws_sdk_kinesis::error::SdkError<E, R>,
) -> String {
    format!("{}", DisplayErrorContext(e))
}

/// Runs `call` until it succeeds, again after throttling, at most [`ATTEMPTS`] times.
fn retrying<T, E, R, F, Fut>(
    rt: &tokio::runtime::Handle,
    what: &str,
    call: F,
) -> Result<T, RecordError>
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<T, aws_sdk_kinesis::error::SdkError<E, R>>>,
{
    let mut pause = Duration::from_millis(100);
    for attempt in 1..=ATTEMPTS {
        match rt.block_on(call()) {
            Ok(v) => return Ok(v),
            Err(e) => {
                let throttled = e.code().is_some_and(|c| THROTTLES.contains(&c));
                let transient = throttled
                    || matches!(
                        e,
                        aws_sdk_kinesis::error::SdkError::DispatchFailure(_)
                            | aws_sdk_kinesis::error::SdkError::TimeoutError(_)
                            | aws_sdk_kinesis::error::SdkError::ResponseError(_)
                    );
                if !transient || attempt == ATTEMPTS {
                    return Err(RecordError::Kinesis(format!("{what}: {}", describe(&e))));
                }
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_secs(5));
            }
        }
    }
    Err(RecordError::Kinesis(format!("{what}: no attempt left")))
}

fn list_shards(
    rt: &tokio::runtime::Handle,
    c: &Client,
    stream: Stream<'_>,
) -> Result<Vec<Shard>, RecordError> {
    let mut out = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let req = || {
            let r = c.list_shards();
            match &token {
                Some(t) => r.next_token(t),
                None => r.set_stream_name(stream.name()).set_stream_arn(stream.arn()),
            }
            .send()
        };
        let page = retrying(rt, "ListShards", req)?;
        for s in page.shards() {
            let range = s.hash_key_range().and_then(|r| {
                Some((r.starting_hash_key().parse().ok()?, r.ending_hash_key().parse().ok()?))
            });
            let range = range.unwrap_or((0, u128::MAX));
            out.push(Shard { id: s.shard_id().to_owned(), range });
        }
        token = page.next_token().map(str::to_owned);
        if token.is_none() {
            return Ok(out);
        }
    }
}

/// The start of each shard named by `--from-sequence` entries.
fn sequences(
    entries: &[String],
    shards: &[Shard],
) -> Result<BTreeMap<String, String>, RecordError> {
    let mut out = BTreeMap::new();
    for e in entries {
        match e.split_once('=') {
            Some((shard, seq)) => {
                out.insert(shard.to_owned(), seq.to_owned());
            }
            None if shards.len() == 1 => {
                out.insert(shards[0].id.clone(), e.clone());
            }
            None => {
                return Err(RecordError::Usage(format!(
                    "--from-sequence {e}: a sequence number belongs to one shard; write SHARD=SEQUENCE or capture one shard (--shards)"
                )));
            }
        }
    }
    Ok(out)
}

/// Captures the range of a `Source::Kinesis`.
pub(super) fn capture(
    rt: &tokio::runtime::Handle,
    s: &Source,
    target: &Target,
    roll: u64,
) -> Result<Summary, RecordError> {
    let Source::Kinesis { stream, shards, from, to_time } = s else {
        return Err(RecordError::Usage("not a Kinesis source".into()));
    };
    let conf = rt.block_on(crate::source::kinesis::sdk_config());
    let client = Client::new(&conf);
    let st = Stream(stream);
    // In file names, an ARN's last part (the name).
    let name = stream.rsplit('/').next().unwrap_or(stream);
    let mut listed = list_shards(rt, &client, st)?;
    if !shards.is_empty() {
        if let Some(missing) = shards.iter().find(|id| !listed.iter().any(|s| &s.id == *id)) {
            return Err(RecordError::Usage(format!("stream {stream} has no shard {missing}")));
        }
        listed.retain(|s| shards.contains(&s.id));
    }
    let starts = match from {
        KinesisFrom::Sequences(e) => sequences(e, &listed)?,
        _ => BTreeMap::new(),
    };
    let bar = super::progress(None);
    let queue = std::sync::Mutex::new(listed.iter());
    // Each reader takes the next shard when it is done with one.
    let read = || -> Result<Summary, RecordError> {
        let mut r = Reader {
            rt,
            client: &client,
            stream: st,
            name,
            target,
            to_time: *to_time,
            bar: bar.clone(),
            summary: Summary::default(),
        };
        loop {
            let next = queue.lock().unwrap_or_else(std::sync::PoisonError::into_inner).next();
            let Some(shard) = next else { return Ok(r.summary) };
            r.summary.splits.entry(shard.id.clone()).or_default();
            let start = start_of(shard, &starts, from);
            let mut writer = SplitWriter::new(name, &shard.id, roll);
            if let Err(e) = r.shard(shard, &start, &mut writer).and_then(|()| writer.finish(target))
            {
                // The capture fails: the other readers take no new shard.
                queue
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .by_ref()
                    .for_each(drop);
                return Err(e);
            }
            r.summary.files += writer.files;
        }
    };
    let results: Vec<Result<Summary, RecordError>> = std::thread::scope(|scope| {
        let readers: Vec<_> =
            (0..listed.len().clamp(1, READERS)).map(|_| scope.spawn(read)).collect();
        readers
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(RecordError::Kinesis("a shard reader panicked".into())))
            })
            .collect()
    });
    bar.finish_and_clear();
    let mut total = Summary::default();
    for r in results {
        let r = r?;
        total.records += r.records;
        total.bytes += r.bytes;
        total.files += r.files;
        total.splits.extend(r.splits);
    }
    Ok(total)
}

/// Where the iterator of `shard` starts: its `--from-sequence`, else `--from-time`, else the
/// oldest record kept.
fn start_of(shard: &Shard, starts: &BTreeMap<String, String>, from: &KinesisFrom) -> Start {
    match (starts.get(&shard.id), from) {
        (Some(seq), _) => {
            Start { ty: ShardIteratorType::AtSequenceNumber, sequence: Some(seq.clone()), at: None }
        }
        (None, KinesisFrom::Time(ms)) => Start {
            ty: ShardIteratorType::AtTimestamp,
            sequence: None,
            at: Some(DateTime::from_millis(*ms)),
        },
        (None, _) => Start { ty: ShardIteratorType::TrimHorizon, sequence: None, at: None },
    }
}

/// What reading a shard needs.
struct Reader<'a> {
    rt: &'a tokio::runtime::Handle,
    client: &'a Client,
    stream: Stream<'a>,
    /// The stream's name in sidecars.
    name: &'a str,
    target: &'a Target,
    to_time: Option<i64>,
    bar: indicatif::ProgressBar,
    summary: Summary,
}

impl Reader<'_> {
    /// An iterator of `shard` from `start`.
    fn iterator(&self, shard: &Shard, start: &Start) -> Result<Option<String>, RecordError> {
        let out = retrying(self.rt, "GetShardIterator", || {
            self.client
                .get_shard_iterator()
                .set_stream_name(self.stream.name())
                .set_stream_arn(self.stream.arn())
                .shard_id(&shard.id)
                .shard_iterator_type(start.ty.clone())
                .set_starting_sequence_number(start.sequence.clone())
                .set_timestamp(start.at)
                .send()
        })?;
        Ok(out.shard_iterator().map(str::to_owned))
    }

    /// Reads a shard from `start` to its end, the stream's tip, or `to_time`.
    fn shard(
        &mut self,
        shard: &Shard,
        start: &Start,
        writer: &mut SplitWriter,
    ) -> Result<(), RecordError> {
        let mut iterator = self.iterator(shard, start)?;
        // The sequence number of the last Kinesis record read (all its user records written).
        let mut last: Option<String> = None;
        let mut empty = 0u32;
        while let Some(it) = iterator.take() {
            let got = retrying(self.rt, "GetRecords", || {
                let req = self
                    .client
                    .get_records()
                    .set_stream_arn(self.stream.arn())
                    .shard_iterator(&it)
                    .limit(10_000);
                async move {
                    match req.send().await {
                        Err(e) if e.code() == Some(EXPIRED) => Ok(None),
                        r => r.map(Some),
                    }
                }
            })?;
            let Some(got) = got else {
                tracing::warn!(shard = %shard.id, after = last.as_deref().unwrap_or("the start"), "The shard iterator expired: reading on with a new one.");
                let again = match &last {
                    Some(seq) => Start {
                        ty: ShardIteratorType::AfterSequenceNumber,
                        sequence: Some(seq.clone()),
                        at: None,
                    },
                    None => start.clone(),
                };
                iterator = self.iterator(shard, &again)?;
                continue;
            };
            for record in got.records() {
                let arrival =
                    record.approximate_arrival_timestamp().and_then(|t| t.to_millis().ok());
                if let (Some(end), Some(t)) = (self.to_time, arrival)
                    && t >= end
                {
                    return Ok(());
                }
                let data = record.data().as_ref();
                let seqno = record.sequence_number();
                match deaggregate(data, shard.range) {
                    Deaggregated::Plain => {
                        let pk = record.partition_key().unwrap_or_default();
                        self.one(writer, shard, (seqno, None), arrival, pk, data)?;
                    }
                    Deaggregated::Aggregate(users) => {
                        for u in users {
                            let at = (seqno, Some(u.sub));
                            self.one(writer, shard, at, arrival, u.partition_key, u.data)?;
                        }
                    }
                    Deaggregated::WrongShard(n) => {
                        // The KPL put these user records again on their shard.
                        tracing::warn!(shard = %shard.id, sequence = seqno, records = n, "Dropped a KPL aggregate of another shard's records, as KCL does.");
                    }
                }
                last = Some(seqno.to_owned());
            }
            empty = if got.records().is_empty() { empty + 1 } else { 0 };
            // An endpoint that does not say how far behind it is: caught up after a few
            // empty answers in a row.
            let behind = got.millis_behind_latest();
            if empty > 0 && (behind == Some(0) || (behind.is_none() && empty >= 5)) {
                return Ok(());
            }
            iterator = got.next_shard_iterator().map(str::to_owned);
            if got.records().is_empty() {
                std::thread::sleep(Duration::from_millis(200));
            }
        }
        Ok(())
    }

    /// Writes one user record.
    fn one(
        &mut self,
        writer: &mut SplitWriter,
        shard: &Shard,
        (sequence, subsequence): (&str, Option<u32>),
        arrival_ms: Option<i64>,
        partition_key: &str,
        payload: &[u8],
    ) -> Result<(), RecordError> {
        let position = Position {
            stream: self.name,
            shard: &shard.id,
            sequence,
            subsequence,
            arrival_ms,
            partition_key,
        };
        writer.write(self.target, sequence, payload, &position)?;
        let at = match subsequence {
            Some(n) => format!("{sequence}/{n}"),
            None => sequence.to_owned(),
        };
        self.summary.note(&shard.id, at.into(), payload.len());
        self.bar.inc(1);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sidecar_lines_name_stream_shard_sequence_and_subsequence() {
        let mut p = Position {
            stream: "clicks",
            shard: "shardId-000000000001",
            sequence: "4959",
            subsequence: None,
            arrival_ms: Some(1_700_000_000_000),
            partition_key: "c1",
        };
        assert_eq!(
            serde_json::to_string(&p).unwrap(),
            r#"{"stream":"clicks","shard":"shardId-000000000001","sequence":"4959","arrival_ms":1700000000000,"partition_key":"c1"}"#
        );
        p.subsequence = Some(2);
        let v: serde_json::Value = serde_json::to_value(&p).unwrap();
        assert_eq!(v["subsequence"], 2);
    }

    #[test]
    fn a_bare_sequence_needs_one_shard() {
        let one = [Shard { id: "s0".into(), range: (0, 1) }];
        let two =
            [Shard { id: "s0".into(), range: (0, 1) }, Shard { id: "s1".into(), range: (2, 3) }];
        let got = sequences(&["123".into()], &one).unwrap();
        assert_eq!(got.get("s0").map(String::as_str), Some("123"));
        assert!(sequences(&["123".into()], &two).is_err());
        let got = sequences(&["s1=9".into()], &two).unwrap();
        assert_eq!(got.get("s1").map(String::as_str), Some("9"));
    }
}
