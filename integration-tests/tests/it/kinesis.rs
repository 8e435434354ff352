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
        let s = Stream { name, client, rt };
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
        for (k, v) in extra {
            env.retain(|(n, _)| n != k);
            env.push(((*k).to_owned(), (*v).to_owned()));
        }
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        Running::start(&["run"], &env)
    }

    pub(crate) fn put(&self, range: std::ops::Range<usize>) {
        self.stream.put(&self.records[range]);
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

#[test]
fn kinesis_reshard_loses_nothing_and_cuts_no_session() {
    let s = Scenario::new("kreshard", 20_000, 2);
    let n = s.records.len();
    let p = s.start("a", &[]);
    s.put(0..n / 4);
    p.wait_log("Committed checkpoint", 60);
    let open = s.stream.open_shards();
    s.stream.split(&open[0]);
    s.put(n / 4..n / 2);
    let mut children: Vec<OpenShard> =
        s.stream.open_shards().into_iter().filter(|o| o.id != open[1].id).collect();
    children.sort_by_key(|o| o.start);
    assert_eq!(children.len(), 2, "{children:?}");
    s.stream.merge(&children[0], &children[1]);
    s.put(n / 2..3 * n / 4);
    s.stream.update_shard_count(4);
    s.put(3 * n / 4..n);
    s.assert_done(240);
    let lineage = s.stream.lineage();
    assert!(lineage.len() >= 7, "split, merge and scaling made shards: {lineage:?}");
    assert_children_after_parents(&p, &lineage);
    assert!(events(&p, "Child split starts from its parents' final state").len() >= 4);
    let metrics = integration_tests::curl(&["-s", &format!("http://{}/metrics", p.admin_addr())]).1;
    let strays: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("clickstream_customers_on_several_partitions{"))
        .collect();
    assert!(!strays.is_empty(), "the metric is exported: {metrics}");
    assert!(strays.iter().all(|l| l.ends_with(" 0")), "{strays:?}");
    crate::kafka::terminate(p);
}

#[test]
fn kinesis_two_instances_share_shards_and_take_over_a_dead_one() {
    let s = Scenario::new("ktwo", 8_000, 4);
    let n = s.records.len();
    let a = s.start("a", &[]);
    let mut b = s.start("b", &[]);
    s.put(0..n / 2);
    // Balanced: two shards each once both took their share (KCL's rules: the second instance
    // steals one lease at a time from the first).
    wait_for("an even share", 90, || {
        owners(&s.table) == BTreeMap::from([("a".to_owned(), 2), ("b".to_owned(), 2)])
    });
    b.signal("KILL");
    let _ = b.wait_exit(10);
    let killed = std::time::Instant::now();
    s.put(n / 2..n);
    wait_for("the survivor to take the dead instance's shards", 40, || {
        owners(&s.table) == BTreeMap::from([("a".to_owned(), 4)])
    });
    assert!(killed.elapsed() < Duration::from_secs(30), "takeover took {:?}", killed.elapsed());
    assert!(events(&a, "Took over a lease").len() >= 2);
    s.assert_done(180);
    crate::kafka::terminate(a);
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
    let list: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    list.into_iter()
        .map(|v| {
            (
                v["pk"].as_str().unwrap().to_owned(),
                v["ehk"].as_str().map(str::to_owned),
                b64.decode(v["data_b64"].as_str().unwrap()).unwrap(),
            )
        })
        .collect()
}

#[test]
fn kinesis_kpl_aggregates_are_user_records() {
    let s = Scenario::new("kkpl", 3_000, 2);
    let shards = s.stream.open_shards();
    let shard_of = |pk: &[u8]| {
        let h = clickstream::source::kinesis::kpl::hash_key_of(pk);
        shards.iter().position(|o| o.start <= h && h <= o.end).unwrap()
    };
    // As the KPL does: user records bound for one shard are aggregated, here by runs of three
    // consecutive ones, with a plain record between runs. Each shard's records stay in input
    // order (so each customer's do), exactly as plain puts would have them.
    let mut groups: Vec<(Vec<Entry>, bool)> = Vec::new();
    let mut per_shard: Vec<Vec<Result<Entry, usize>>> = vec![Vec::new(); shards.len()];
    let mut run: Vec<Vec<Entry>> = vec![Vec::new(); shards.len()];
    for (k, v) in &s.records {
        let i = shard_of(k);
        let e = (String::from_utf8_lossy(k).into_owned(), None, v.clone());
        if run[i].is_empty() && per_shard[i].len().is_multiple_of(2) {
            per_shard[i].push(Ok(e));
            continue;
        }
        run[i].push(e);
        if run[i].len() == 3 {
            per_shard[i].push(Err(groups.len()));
            groups.push((std::mem::take(&mut run[i]), false));
        }
    }
    for (i, r) in run.into_iter().enumerate().filter(|(_, r)| !r.is_empty()) {
        per_shard[i].push(Err(groups.len()));
        groups.push((r, false));
    }
    // Interleave the shards; order across shards does not matter.
    let mut order: Vec<Result<Entry, usize>> = Vec::new();
    let mut iters: Vec<_> = per_shard.into_iter().map(Vec::into_iter).collect();
    loop {
        let before = order.len();
        for it in &mut iters {
            order.extend(it.next());
        }
        if order.len() == before {
            break;
        }
    }
    // Not in the oracle's input: one aggregate with a bad MD5 (one dead letter, never
    // mis-parsed), and one whose user records lie in shard 1's range but which is put on
    // shard 0 (dropped and counted, as KCL drops it).
    let line = |c: &str| {
        format!(r#"{{"customer_id":"{c}","event_type":"page_view","ts":1709510400,"message_id":"x-{c}"}}"#).into_bytes()
    };
    let bad = groups.len();
    groups.push(((0..3).map(|i| (format!("kpl-bad-{i}"), None, line("kpl-bad"))).collect(), true));
    let wrong = groups.len();
    let inside_1 = (shards[1].start + 5).to_string();
    groups.push((
        (0..3)
            .map(|i| (format!("kpl-wrong-{i}"), Some(inside_1.clone()), line("kpl-wrong")))
            .collect(),
        false,
    ));
    let aggs = aggregate(&groups);
    let mut entries: Vec<Entry> = order
        .into_iter()
        .map(|o| match o {
            Ok(e) => e,
            Err(g) => aggs[g].clone(),
        })
        .collect();
    let half = entries.len() / 2;
    entries.insert(half, aggs[bad].clone());
    let (pk, _, data) = aggs[wrong].clone();
    entries.insert(half + 1, (pk, Some(shards[0].start.to_string()), data));
    let p = s.start("a", &[]);
    s.stream.put_entries(&entries[..half + 2]);
    p.wait_log("Committed checkpoint", 60);
    // A crash between two aggregates, with some committed and some not.
    p.signal("KILL");
    let mut p = p;
    let _ = p.wait_exit(10);
    let p = s.start("a", &[]);
    s.stream.put_entries(&entries[half + 2..]);
    let mut expected =
        Expected { rows: s.expected.rows.clone(), rejects: s.expected.rejects.clone() };
    *expected.rejects.entry("invalid_utf8".into()).or_default() += 1;
    let want = expected_rows(&expected);
    wait_for("every session row", 240, || rows_in(&s.bucket, "v1") >= want);
    std::thread::sleep(Duration::from_secs(2));
    assert_rows_equal(&s.bucket, "v1", &expected, s.dir.path());
    let dropped: Vec<_> = events(&p, "outside the shard's hash-key range");
    assert!(!dropped.is_empty() || !events(&p, "Committed checkpoint").is_empty());
    let metrics = integration_tests::curl(&["-s", &format!("http://{}/metrics", p.admin_addr())]).1;
    assert!(metrics.contains("clickstream_kinesis_aggregates_total"), "{metrics}");
    crate::kafka::terminate(p);
}

/// A crash at `point` while a parent shard hands over to its children; the restarted
/// instance ends with exactly the oracle's rows.
fn crash_at_the_handoff(point: &str) {
    let s = Scenario::new("khand", 6_000, 1);
    let n = s.records.len();
    let mut p = s.start("a", &[("CLICKSTREAM_FAILPOINT", point)]);
    s.put(0..n / 2);
    p.wait_log("Committed checkpoint", 60);
    s.stream.split(&s.stream.open_shards()[0]);
    s.put(n / 2..n);
    let st = p.wait_exit(120);
    assert!(!st.success(), "the failpoint {point} aborted the process");
    assert!(p.logged(&format!("Failpoint {point} reached")), "{}", p.log().join("\n"));
    let p = s.start("a", &[]);
    s.assert_done(240);
    crate::kafka::terminate(p);
}

#[test]
fn kinesis_crash_after_a_parent_is_read_to_its_end() {
    crash_at_the_handoff("shard.read_to_end");
}

#[test]
fn kinesis_crash_after_a_parent_end_is_committed() {
    crash_at_the_handoff("shard.end_committed");
}

#[test]
fn kinesis_crash_before_a_child_first_checkpoint() {
    crash_at_the_handoff("child.seeded");
}

#[test]
fn kinesis_stalled_instance_writes_nothing_visible() {
    let s = Scenario::new("kstop", 6_000, 2);
    let n = s.records.len();
    let a = s.start("a", &[]);
    s.put(0..n / 3);
    a.wait_log("Committed checkpoint", 60);
    wait_for("a to hold both shards", 60, || {
        owners(&s.table) == BTreeMap::from([("a".to_owned(), 2)])
    });
    a.signal("STOP");
    let b = s.start("b", &[]);
    s.put(n / 3..2 * n / 3);
    wait_for("b to take the stalled instance's shards", 60, || {
        owners(&s.table) == BTreeMap::from([("b".to_owned(), 2)])
    });
    b.wait_log("Committed checkpoint", 60);
    // 40 s stalled in all, then it comes back believing it still owns its shards.
    std::thread::sleep(Duration::from_secs(30));
    a.signal("CONT");
    s.put(2 * n / 3..n);
    s.assert_done(240);
    // Whatever the stale instance did after it came back, it committed nothing over b.
    let fenced = a.logged("Another owner committed this split") || a.logged("Lease lost");
    assert!(fenced, "the stale instance noticed: {}", a.log().join("\n"));
    crate::kafka::terminate(b);
    let _ = a.interrupt();
}

#[test]
fn kinesis_throttled_reads_back_off_and_lose_nothing() {
    use integration_tests::kinesis_proxy::KinesisProxy;
    let s = Scenario::new("kthrottle", 6_000, 2);
    let n = s.records.len();
    let target = endpoint().trim_start_matches("http://").to_owned();
    let proxy = KinesisProxy::start(&target);
    proxy.throttle_get_records(0.5);
    let since = std::time::Instant::now();
    let p = s.start("a", &[("AWS_ENDPOINT_URL_KINESIS", &proxy.url())]);
    s.put(0..n);
    std::thread::sleep(Duration::from_secs(30).saturating_sub(since.elapsed()));
    let metrics = integration_tests::curl(&["-s", &format!("http://{}/metrics", p.admin_addr())]).1;
    proxy.throttle_get_records(0.0);
    assert!(proxy.injected() > 10, "throttled {} calls", proxy.injected());
    let throttles: f64 = metrics
        .lines()
        .filter(|l| l.starts_with("clickstream_kinesis_throttles_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert!(throttles > 10.0, "the throttle metric counts them: {metrics}");
    s.assert_done(240);
    crate::kafka::terminate(p);
}

#[test]
fn kinesis_parent_past_retention_counts_as_finished() {
    use integration_tests::kinesis_proxy::KinesisProxy;
    // The parent's records were never read and are past retention; the children's are all
    // there is: the expected rows are the oracle's for the children's records alone.
    let dir = tempfile::tempdir().unwrap();
    let all = dir.path().join("all.jsonl");
    integration_tests::generate(&all, 4_000, 5, "0.0");
    let records = keyed_lines(&all);
    let (before, after) = records.split_at(records.len() / 2);
    let later = dir.path().join("later.jsonl");
    let mut text: Vec<u8> = Vec::new();
    for (_, v) in after {
        text.extend_from_slice(v);
        text.push(b'\n');
    }
    std::fs::write(&later, text).unwrap();
    let s = Scenario::from_input("kexpired", &later, dir, 1);
    s.stream.put(before);
    let parent = s.stream.open_shards()[0].clone();
    s.stream.split(&parent);
    s.put(0..s.records.len());
    let target = endpoint().trim_start_matches("http://").to_owned();
    let proxy = KinesisProxy::start(&target);
    proxy.hide_shards(&[&parent.id]);
    let p = s.start("a", &[("AWS_ENDPOINT_URL_KINESIS", &proxy.url())]);
    s.assert_done(180);
    assert!(events(&p, "Split assigned").iter().all(|(_, v)| v["split"] != parent.id.as_str()));
    crate::kafka::terminate(p);
}

#[test]
fn kinesis_expired_iterator_is_reissued_from_the_position() {
    // kinesalite, whose clock a test can move 301 s ahead: every iterator held across the
    // jump has expired (the service's limit is 300 s).
    let url = var("CLICKSTREAM_KINESALITE_URL", "http://127.0.0.1:4568");
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("events.jsonl");
    integration_tests::generate(&input, 4_000, 3, "0.0");
    let expected = oracle(&input, dir.path());
    let stream = Stream::create_at(&url, "kexpire", 2);
    let bucket = services::fresh_bucket("kexpire");
    let table = format!("leases-{}", stream.name);
    let s = Scenario { records: keyed_lines(&input), dir, expected, stream, bucket, table };
    let n = s.records.len();
    let p = s.start("a", &[("AWS_ENDPOINT_URL_KINESIS", &url)]);
    s.put(0..n / 2);
    p.wait_log("Committed checkpoint", 60);
    let skew = std::process::Command::new(root().join("scripts/services"))
        .arg("kinesalite-skew")
        .status()
        .unwrap();
    assert!(skew.success(), "scripts/services kinesalite-skew");
    s.put(n / 2..n);
    p.wait_log("Shard iterator expired", 60);
    s.assert_done(180);
    crate::kafka::terminate(p);
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

#[test]
fn kinesis_recreated_stream_state_is_refused() {
    let s = Scenario::new("krecreate", 1_000, 1);
    let p = s.start("a", &[]);
    s.put(0..s.records.len());
    p.wait_log("Committed checkpoint", 60);
    crate::kafka::terminate(p);
    s.stream.recreate(1);
    s.put(0..10);
    let p = s.start("a", &[]);
    let refused = p.wait_log("The split cannot start", 60);
    assert!(refused.contains("was built from kinesis:"), "{refused}");
    crate::kafka::terminate(p);
}
