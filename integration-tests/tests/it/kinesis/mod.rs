//! `clickstream run` on Kinesis: shards as splits with leases in a DynamoDB table (moto),
//! resharding on kinesis-local (the emulator that routes puts to children), every result
//! compared with the oracle: nothing missing, nothing twice.

use crate::kafka::{
    Expected, assert_rows_equal, expected_rows, keyed_lines, oracle, rows_in, wait_for,
};
use integration_tests::services;
use integration_tests::{Running, root};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

fn var(k: &str, d: &str) -> String {
    std::env::var(k).unwrap_or_else(|_| d.to_owned())
}

/// The Kinesis endpoint of the tests (kinesis-local).
fn endpoint() -> String {
    var("AWS_ENDPOINT_URL_KINESIS", "http://127.0.0.1:4570")
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap()
}

/// A stream on the emulator, and a client of it.
pub(crate) struct Stream {
    pub(crate) name: String,
    /// The emulator's endpoint.
    endpoint: String,
    client: aws_sdk_kinesis::Client,
    rt: tokio::runtime::Runtime,
}

/// One open shard: id and hash-key range.
#[derive(Debug, Clone)]
pub(crate) struct OpenShard {
    pub(crate) id: String,
    pub(crate) start: u128,
    pub(crate) end: u128,
}

impl Stream {
    pub(crate) fn create(tag: &str, shards: i32) -> Stream {
        Stream::create_at(&endpoint(), tag, shards)
    }

    pub(crate) fn create_at(endpoint: &str, tag: &str, shards: i32) -> Stream {
        use aws_sdk_kinesis::config::{BehaviorVersion, Credentials, Region};
        let conf = aws_sdk_kinesis::config::Builder::new()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new(var("AWS_REGION", "us-east-1")))
            .endpoint_url(endpoint)
            .credentials_provider(Credentials::new("test", "test", None, None, "tests"))
            .build();
        let client = aws_sdk_kinesis::Client::from_conf(conf);
        let rt = runtime();
        let name = format!("{tag}-{}-{}", std::process::id(), now_ms() % 1_000_000);
        rt.block_on(client.create_stream().stream_name(&name).shard_count(shards).send())
            .unwrap_or_else(|e| panic!("create stream (scripts/services up kinesis): {e:?}"));
        let s = Stream { name, endpoint: endpoint.to_owned(), client, rt };
        s.wait_active();
        s
    }

    fn wait_active(&self) {
        wait_for("the stream to be ACTIVE", 60, || {
            let d = self
                .rt
                .block_on(self.client.describe_stream_summary().stream_name(&self.name).send())
                .unwrap();
            d.stream_description_summary.unwrap().stream_status
                == aws_sdk_kinesis::types::StreamStatus::Active
        });
    }

    /// Puts records `(partition key, data)` in order, 500 a call; failed ones are put again.
    pub(crate) fn put(&self, records: &[(Vec<u8>, Vec<u8>)]) {
        use aws_sdk_kinesis::primitives::Blob;
        use aws_sdk_kinesis::types::PutRecordsRequestEntry;
        for chunk in records.chunks(500) {
            let mut todo: Vec<&(Vec<u8>, Vec<u8>)> = chunk.iter().collect();
            while !todo.is_empty() {
                let entries = todo
                    .iter()
                    .map(|(k, v)| {
                        PutRecordsRequestEntry::builder()
                            .partition_key(String::from_utf8_lossy(k))
                            .data(Blob::new(v.clone()))
                            .build()
                            .unwrap()
                    })
                    .collect::<Vec<_>>();
                let out = self
                    .rt
                    .block_on(
                        self.client
                            .put_records()
                            .stream_name(&self.name)
                            .set_records(Some(entries))
                            .send(),
                    )
                    .unwrap();
                todo = todo
                    .into_iter()
                    .zip(out.records)
                    .filter(|(_, r)| r.error_code.is_some())
                    .map(|(t, _)| t)
                    .collect();
            }
        }
    }

    /// Puts one record with an explicit hash key.
    pub(crate) fn put_one(&self, key: &str, hash_key: Option<&str>, data: Vec<u8>) {
        self.rt
            .block_on(
                self.client
                    .put_record()
                    .stream_name(&self.name)
                    .partition_key(key)
                    .set_explicit_hash_key(hash_key.map(str::to_owned))
                    .data(aws_sdk_kinesis::primitives::Blob::new(data))
                    .send(),
            )
            .unwrap();
    }

    pub(crate) fn open_shards(&self) -> Vec<OpenShard> {
        let out =
            self.rt.block_on(self.client.list_shards().stream_name(&self.name).send()).unwrap();
        out.shards
            .unwrap_or_default()
            .into_iter()
            .filter(|s| {
                s.sequence_number_range.as_ref().is_some_and(|r| r.ending_sequence_number.is_none())
            })
            .map(|s| {
                let r = s.hash_key_range.unwrap();
                OpenShard {
                    id: s.shard_id,
                    start: r.starting_hash_key.parse().unwrap(),
                    end: r.ending_hash_key.parse().unwrap(),
                }
            })
            .collect()
    }

    /// Splits an open shard in the middle of its range; the two children's ids.
    pub(crate) fn split(&self, shard: &OpenShard) {
        let mid = shard.start + (shard.end - shard.start) / 2 + 1;
        self.rt
            .block_on(
                self.client
                    .split_shard()
                    .stream_name(&self.name)
                    .shard_to_split(&shard.id)
                    .new_starting_hash_key(mid.to_string())
                    .send(),
            )
            .unwrap();
        self.wait_active();
    }

    pub(crate) fn merge(&self, a: &OpenShard, b: &OpenShard) {
        self.rt
            .block_on(
                self.client
                    .merge_shards()
                    .stream_name(&self.name)
                    .shard_to_merge(&a.id)
                    .adjacent_shard_to_merge(&b.id)
                    .send(),
            )
            .unwrap();
        self.wait_active();
    }

    pub(crate) fn update_shard_count(&self, n: i32) {
        self.rt
            .block_on(
                self.client
                    .update_shard_count()
                    .stream_name(&self.name)
                    .target_shard_count(n)
                    .scaling_type(aws_sdk_kinesis::types::ScalingType::UniformScaling)
                    .send(),
            )
            .unwrap();
        self.wait_active();
    }

    /// Every shard: id → its parents.
    pub(crate) fn lineage(&self) -> BTreeMap<String, Vec<String>> {
        let out =
            self.rt.block_on(self.client.list_shards().stream_name(&self.name).send()).unwrap();
        out.shards
            .unwrap_or_default()
            .into_iter()
            .map(|s| {
                let parents =
                    [s.parent_shard_id, s.adjacent_parent_shard_id].into_iter().flatten().collect();
                (s.shard_id, parents)
            })
            .collect()
    }
}

fn now_ms() -> u128 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis()
}

/// A record to put: partition key and data.
pub(crate) type Keyed = (Vec<u8>, Vec<u8>);

/// A stream, its bucket and lease table, and the oracle's answer for the events.
pub(crate) struct Scenario {
    pub(crate) dir: tempfile::TempDir,
    pub(crate) expected: Expected,
    pub(crate) stream: Stream,
    pub(crate) bucket: String,
    pub(crate) table: String,
    pub(crate) records: Vec<(Vec<u8>, Vec<u8>)>,
}

impl Scenario {
    pub(crate) fn new(tag: &str, events: u64, shards: i32) -> Scenario {
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("events.jsonl");
        integration_tests::generate(&input, events, 11, "0.02");
        // Kinesis refuses records over 1 MiB: such a line never reaches the stream.
        let data = std::fs::read(&input).unwrap();
        let kept: Vec<&[u8]> =
            data.split_inclusive(|&b| b == b'\n').filter(|l| l.len() <= 1_000_000).collect();
        std::fs::write(&input, kept.concat()).unwrap();
        Scenario::from_input(tag, &input, dir, shards)
    }

    pub(crate) fn from_input(
        tag: &str,
        input: &Path,
        dir: tempfile::TempDir,
        shards: i32,
    ) -> Scenario {
        let expected = oracle(input, dir.path());
        let stream = Stream::create(tag, shards);
        let bucket = services::fresh_bucket(tag);
        let table = format!("leases-{}", stream.name);
        Scenario { records: keyed_lines(input), dir, expected, stream, bucket, table }
    }

    /// A scenario whose oracle covers only the later half of `events` generated records; the
    /// earlier half is returned, for a test to put where it will not be read.
    pub(crate) fn later_half(
        tag: &str,
        events: u64,
        seed: u64,
        shards: i32,
    ) -> (Scenario, Vec<Keyed>) {
        let dir = tempfile::tempdir().unwrap();
        let all = dir.path().join("all.jsonl");
        integration_tests::generate(&all, events, seed, "0.0");
        let mut records = keyed_lines(&all);
        let after = records.split_off(records.len() / 2);
        let later = dir.path().join("later.jsonl");
        let mut text: Vec<u8> = Vec::new();
        for (_, v) in &after {
            text.extend_from_slice(v);
            text.push(b'\n');
        }
        std::fs::write(&later, text).unwrap();
        (Scenario::from_input(tag, &later, dir, shards), records)
    }

    /// Starts an instance named `name` (its own state directory and worker id).
    pub(crate) fn start(&self, name: &str, extra: &[(&str, &str)]) -> Running {
        let state = self.dir.path().join(name);
        let schemas = root().join("schemas");
        let mut env: Vec<(String, String)> =
            services::s3_env().into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
        for (k, v) in [
            ("AWS_ENDPOINT_URL_KINESIS", endpoint()),
            (
                "AWS_ENDPOINT_URL_DYNAMODB",
                var("AWS_ENDPOINT_URL_DYNAMODB", "http://127.0.0.1:5000"),
            ),
            ("CLICKSTREAM__SOURCE__KIND", "kinesis".into()),
            ("CLICKSTREAM__KINESIS__STREAM", self.stream.name.clone()),
            ("CLICKSTREAM__KINESIS__LEASE_TABLE", self.table.clone()),
            ("CLICKSTREAM__KINESIS__LEASE_DURATION", "3s".into()),
            ("CLICKSTREAM__KINESIS__SHARD_SYNC", "5s".into()),
            ("CLICKSTREAM__KINESIS__IDLE_POLL", "200ms".into()),
            ("CLICKSTREAM__KINESIS__WORKER_ID", name.to_owned()),
            ("CLICKSTREAM__SINK__LOCATION", format!("s3://{}/v1", self.bucket)),
            ("CLICKSTREAM__RUN__STATE", state.to_string_lossy().into_owned()),
            ("CLICKSTREAM__REPLAY__SCHEMAS", schemas.to_string_lossy().into_owned()),
            ("CLICKSTREAM__RUN__CHECKPOINT_INTERVAL", "500ms".into()),
            // Long enough that a pause of the emulator (puts stall while it reshards) is not a quiet
            // shard whose sessions close early.
            ("CLICKSTREAM__RUN__IDLE_TIMEOUT", "15s".into()),
            ("CLICKSTREAM__SESSION__ALLOWED_LATENESS", "7h".into()),
            ("CLICKSTREAM__ADMIN__LISTEN", "127.0.0.1:0".into()),
        ] {
            env.push((k.to_owned(), v));
        }
        Running::start_overriding(&["run"], env, extra)
    }

    /// Feeds records `range` with `clickstream produce --kinesis-stream`, as users do.
    pub(crate) fn put(&self, range: std::ops::Range<usize>) {
        let lines: Vec<Vec<u8>> = self.records[range].iter().map(|(_, v)| v.clone()).collect();
        let mut env = services::s3_env();
        env.push(("AWS_ENDPOINT_URL_KINESIS", self.stream.endpoint.clone()));
        services::produce_lines_with(&["--kinesis-stream", &self.stream.name], &env, &lines);
    }

    /// Waits until S3 holds as many rows as the oracle, then compares them.
    pub(crate) fn assert_done(&self, secs: u64) {
        let want = expected_rows(&self.expected);
        wait_for("every session row", secs, || rows_in(&self.bucket, "v1") >= want);
        // Late extra rows would be doubles: give them a moment to show.
        std::thread::sleep(Duration::from_secs(2));
        assert_rows_equal(&self.bucket, "v1", &self.expected, self.dir.path());
    }
}

/// The JSON log lines whose message contains `needle`.
pub(crate) fn events(p: &Running, needle: &str) -> Vec<(usize, serde_json::Value)> {
    p.log()
        .iter()
        .enumerate()
        .filter(|(_, l)| l.contains(needle))
        .filter_map(|(i, l)| serde_json::from_str(l).ok().map(|v| (i, v)))
        .collect()
}

/// Asserts that each child started from its parents' state only after each parent's end was
/// committed (log order of one instance).
fn assert_children_after_parents(p: &Running, lineage: &BTreeMap<String, Vec<String>>) {
    let ends: BTreeMap<String, usize> = events(p, "Shard end committed")
        .into_iter()
        .filter_map(|(i, v)| Some((v["shard"].as_str()?.to_owned(), i)))
        .collect();
    let starts = events(p, "Split assigned");
    let mut checked = 0;
    for (i, v) in starts {
        let child = v["split"].as_str().unwrap_or_default();
        for parent in lineage.get(child).into_iter().flatten() {
            let end = ends.get(parent).unwrap_or_else(|| {
                panic!("child {child} started but its parent {parent} never committed its end")
            });
            assert!(
                *end < i,
                "child {child} started (line {i}) before its parent {parent} committed its end (line {end})"
            );
            checked += 1;
        }
    }
    assert!(checked >= 4, "the reshards gave children to check ({checked})");
}

/// Leases held per owner in the lease table (moto's DynamoDB).
pub(crate) fn owners(table: &str) -> BTreeMap<String, usize> {
    use aws_sdk_dynamodb::config::{BehaviorVersion, Credentials, Region};
    let conf = aws_sdk_dynamodb::config::Builder::new()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new(var("AWS_REGION", "us-east-1")))
        .endpoint_url(var("AWS_ENDPOINT_URL_DYNAMODB", "http://127.0.0.1:5000"))
        .credentials_provider(Credentials::new("test", "test", None, None, "tests"))
        .build();
    let client = aws_sdk_dynamodb::Client::from_conf(conf);
    let items = runtime()
        .block_on(client.scan().table_name(table).consistent_read(true).send())
        .map(|o| o.items.unwrap_or_default())
        .unwrap_or_default();
    let mut out = BTreeMap::new();
    for i in items {
        let finished =
            i.get("checkpoint").and_then(|v| v.as_s().ok()).is_some_and(|c| c == "SHARD_END");
        if let (false, Some(o)) = (finished, i.get("leaseOwner").and_then(|v| v.as_s().ok())) {
            *out.entry(o.clone()).or_default() += 1;
        }
    }
    out
}

/// One record to put: partition key, explicit hash key, data.
type Entry = (String, Option<String>, Vec<u8>);

impl Stream {
    /// Puts records with their explicit hash keys, in order.
    pub(crate) fn put_entries(&self, entries: &[Entry]) {
        for (pk, ehk, data) in entries {
            self.put_one(pk, ehk.as_deref(), data.clone());
        }
    }
}

/// KPL aggregates of `groups` (each a list of `(partition key, explicit hash key, data)`), built
/// by the reference library aws-kinesis-agg; `corrupt` flips a bit of the MD5 trailer.
/// Runs `integration-tests/fixtures/kpl_aggregate.py` (the Python KPL library) on `batch`: its
/// aggregates, as JSON (`pk`, `ehk`, `data_b64`).
pub(crate) fn kpl_fixture(batch: &[serde_json::Value]) -> Vec<serde_json::Value> {
    let python = std::env::var("CLICKSTREAM_KPL_PYTHON").unwrap_or_else(|_| {
        format!("{}/.cache/clickstream/services/kpl/venv/bin/python", var("HOME", "/root"))
    });
    let mut child = std::process::Command::new(python)
        .arg(root().join("integration-tests/fixtures/kpl_aggregate.py"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("the KPL fixture Python (scripts/services up kpl)");
    {
        use std::io::Write as _;
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(serde_json::json!({"batch": batch}).to_string().as_bytes()).unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "kpl_aggregate.py failed");
    serde_json::from_slice(&out.stdout).unwrap()
}

fn aggregate(groups: &[(Vec<Entry>, bool)]) -> Vec<Entry> {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD;
    let batch: Vec<serde_json::Value> = groups
        .iter()
        .map(|(records, corrupt)| {
            let records: Vec<serde_json::Value> = records
                .iter()
                .map(|(pk, ehk, data)| serde_json::json!({"pk": pk, "ehk": ehk, "data_b64": b64.encode(data)}))
                .collect();
            serde_json::json!({"records": records, "corrupt_md5": corrupt})
        })
        .collect();
    kpl_fixture(&batch)
        .into_iter()
        .map(|v| {
            (
                v["pk"].as_str().unwrap().to_owned(),
                v["ehk"].as_str().map(str::to_owned),
                b64.decode(v["data_b64"].as_str().unwrap()).unwrap(),
            )
        })
        .collect()
}

impl Stream {
    /// Deletes the stream and creates it again under the same name (same shard ids).
    fn recreate(&self, shards: i32) {
        self.rt.block_on(self.client.delete_stream().stream_name(&self.name).send()).unwrap();
        wait_for("the stream to be gone", 60, || {
            self.rt
                .block_on(self.client.describe_stream_summary().stream_name(&self.name).send())
                .is_err()
        });
        // The creation time is what tells the two apart: make sure it moves.
        std::thread::sleep(Duration::from_millis(1100));
        self.rt
            .block_on(
                self.client.create_stream().stream_name(&self.name).shard_count(shards).send(),
            )
            .unwrap();
        self.wait_active();
    }
}

mod faults;
mod reshard;
