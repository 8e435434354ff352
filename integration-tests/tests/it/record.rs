//! `clickstream record` against real servers (`scripts/services up kafka kinesis s3`): every
//! record captured once with its source position, byte-exact, and a replay of a recording
//! equal to the oracle (which `run` equals on the same data, it/kafka.rs); an expired Kinesis
//! iterator is replaced without a record read twice or missed.

use crate::kafka::{assert_same_rows, keyed_lines, oracle};
use crate::kinesis::Stream;
use base64::Engine as _;
use integration_tests::kinesis_proxy::KinesisProxy;
use integration_tests::services::{self, brokers};
use integration_tests::{bin, generate, rows, summary};
use std::collections::BTreeMap;
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

/// A record to produce or put: key (partition key) and payload.
type Keyed = (Vec<u8>, Vec<u8>);

fn var(k: &str, d: &str) -> String {
    std::env::var(k).unwrap_or_else(|_| d.to_owned())
}

fn record(args: &[&str], env: &[(&str, String)]) -> Output {
    let mut c = Command::new(bin());
    c.arg("record").args(args).env("RUST_LOG", "warn");
    for (k, v) in env {
        c.env(k, v);
    }
    let o = c.output().unwrap();
    assert!(o.status.success(), "record failed: {}", String::from_utf8_lossy(&o.stderr));
    o
}

fn gunzip(p: &Path) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(std::fs::File::open(p).unwrap()).read_to_end(&mut out).unwrap();
    out
}

/// The data files of a recording, in name order.
fn data_files(dir: &Path) -> Vec<PathBuf> {
    let mut names: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let n = p.file_name().unwrap().to_str().unwrap();
            let tmp = Path::new(n).extension().is_some_and(|x| x.eq_ignore_ascii_case("tmp"));
            assert!(!tmp, "a half-written file was left: {n}");
            n.ends_with(".jsonl.gz")
        })
        .collect();
    names.sort();
    names
}

/// Every record of a recording: its sidecar line and its exact bytes (`raw_b64`, else the data
/// line).
fn captured(dir: &Path) -> Vec<(serde_json::Value, Vec<u8>)> {
    let mut out = Vec::new();
    for data in data_files(dir) {
        let name = data.file_name().unwrap().to_str().unwrap();
        let side = dir.join(clickstream::record::SIDECARS).join(name);
        let (data, side) = (gunzip(&data), String::from_utf8(gunzip(&side)).unwrap());
        let lines: Vec<&[u8]> = data.strip_suffix(b"\n").unwrap().split(|&b| b == b'\n').collect();
        let sides: Vec<serde_json::Value> =
            side.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(lines.len(), sides.len(), "a sidecar line per data line");
        for (line, pos) in lines.into_iter().zip(sides) {
            let bytes = match pos["raw_b64"].as_str() {
                Some(b) => {
                    let raw = base64::engine::general_purpose::STANDARD.decode(b).unwrap();
                    let flat: Vec<u8> = raw
                        .iter()
                        .map(|&c| if c == b'\n' || c == b'\r' { b' ' } else { c })
                        .collect();
                    assert_eq!(flat, line, "the data line is the record with spaces for newlines");
                    raw
                }
                None => line.to_vec(),
            };
            out.push((pos, bytes));
        }
    }
    out
}

/// Every record of `topic` read directly: (partition, offset) → payload.
fn read_topic(topic: &str, partitions: i32, n: usize) -> BTreeMap<(i32, i64), Vec<u8>> {
    use rdkafka::ClientConfig;
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::message::Message;
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("group.id", format!("check-{topic}"))
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut tpl = rdkafka::TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, rdkafka::Offset::Beginning).unwrap();
    }
    c.assign(&tpl).unwrap();
    let until = std::time::Instant::now() + Duration::from_mins(1);
    let mut out = BTreeMap::new();
    while out.len() < n && std::time::Instant::now() < until {
        if let Some(Ok(m)) = c.poll(Duration::from_millis(200)) {
            out.insert((m.partition(), m.offset()), m.payload().unwrap_or_default().to_vec());
        }
    }
    out
}

/// Commits offsets for `group` as a processing consumer would.
fn commit(topic: &str, group: &str, offsets: &[i64]) {
    use rdkafka::ClientConfig;
    use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut tpl = rdkafka::TopicPartitionList::new();
    for (p, o) in offsets.iter().enumerate() {
        tpl.add_partition_offset(topic, p as i32, rdkafka::Offset::Offset(*o)).unwrap();
    }
    c.commit(&tpl, CommitMode::Sync).unwrap();
}

fn unique(tag: &str) -> String {
    let ms =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis();
    format!("{tag}-{}-{}", std::process::id(), ms % 1_000_000)
}

#[test]
fn kafka_record_is_exact_positioned_and_replays_to_the_oracle() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("events.jsonl");
    generate(&input, 20_000, 13, "0.02");
    let records = keyed_lines(&input);

    // Three partitions, two awkward records, and a processing group with commits.
    let topic3 = unique("rec3");
    services::create_topic(&topic3, 3);
    let mut with_odd = records.clone();
    with_odd.push((b"nl".to_vec(), b"{\"a\":\n1}".to_vec()));
    with_odd.push((b"bin".to_vec(), b"{\"a\":\"\xff\xfe\"}".to_vec()));
    services::produce(&topic3, &with_odd);
    let group = unique("processing");
    commit(&topic3, &group, &[5, 6, 7]);
    let idle = unique("idle");

    let out3 = dir.path().join("rec3");
    let run = record(
        &[
            "--kafka-topic",
            &topic3,
            "--brokers",
            &brokers(),
            "--output",
            out3.to_str().unwrap(),
            "--roll",
            "1MiB",
        ],
        &[],
    );
    let sum = summary(&run);
    assert_eq!(sum["records"].as_u64(), Some(with_odd.len() as u64), "{sum}");
    assert!(sum["files"].as_u64().unwrap() > 3, "1 MiB rolls: several files a partition: {sum}");
    let want = read_topic(&topic3, 3, with_odd.len());
    assert_eq!(want.len(), with_odd.len());
    let mut got: BTreeMap<(i32, i64), Vec<u8>> = BTreeMap::new();
    for (pos, bytes) in captured(&out3) {
        assert_eq!(pos["topic"], topic3.as_str());
        let at = (pos["partition"].as_i64().unwrap() as i32, pos["offset"].as_i64().unwrap());
        assert!(got.insert(at, bytes).is_none(), "{at:?} recorded twice");
    }
    assert_eq!(got.len(), want.len(), "every record once");
    assert!(got == want, "each (partition, offset) holds exactly the bytes Kafka holds");
    assert!(got.values().any(|v| v == b"{\"a\":\n1}"), "a record with a newline round-trips");
    assert!(got.values().any(|v| v == b"{\"a\":\"\xff\xfe\"}"), "non-UTF-8 bytes round-trip");
    for (p, split) in sum["splits"].as_object().unwrap() {
        let p: i32 = p.parse().unwrap();
        let n = want.keys().filter(|(q, _)| *q == p).count() as u64;
        assert_eq!(split["records"].as_u64(), Some(n));
        assert_eq!(split["first"].as_i64(), Some(0));
        assert_eq!(split["last"].as_i64(), Some(n as i64 - 1));
    }
    // No group moved: the processing group keeps its commits, a group that never committed
    // still has none.
    assert_eq!(services::committed(&topic3, &group, 3), vec![5, 6, 7]);
    assert_eq!(services::committed(&topic3, &idle, 3), vec![0, 0, 0]);

    // A range: partition 1 from offset 10 to 20.
    let part = dir.path().join("part");
    let run = record(
        &[
            "--kafka-topic",
            &topic3,
            "--brokers",
            &brokers(),
            "--output",
            part.to_str().unwrap(),
            "--partitions",
            "1",
            "--from-offset",
            "10",
            "--to-offset",
            "20",
        ],
        &[],
    );
    let got: Vec<(i64, Vec<u8>)> =
        captured(&part).into_iter().map(|(p, b)| (p["offset"].as_i64().unwrap(), b)).collect();
    let slice: Vec<(i64, Vec<u8>)> = (10..20).map(|o| (o, want[&(1, o)].clone())).collect();
    assert_eq!(got, slice, "{}", String::from_utf8_lossy(&run.stdout));

    // By time: all of partition 1 was stamped after 2000 and before 2100.
    let n1 = want.keys().filter(|(p, _)| *p == 1).count() as u64;
    for (range, n) in [
        (["--from-time", "2000-01-01T00:00:00Z"], n1),
        (["--to-time", "2000-01-01T00:00:00Z"], 0),
        (["--from-time", "2100-01-01T00:00:00Z"], 0),
    ] {
        let d = tempfile::tempdir().unwrap();
        let mut a = vec!["--kafka-topic", &topic3, "--output", d.path().to_str().unwrap()];
        a.extend(["--partitions", "1"]);
        a.extend(range);
        let run = record(&a, &[("CLICKSTREAM__KAFKA__BROKERS", brokers())]);
        assert_eq!(summary(&run)["records"].as_u64(), Some(n), "{range:?}");
    }

    one_partition_replays_to_the_oracle(dir.path(), &input, &records);
}

/// One partition: the recording, replayed, gives the oracle's rows; to S3 it is the same.
fn one_partition_replays_to_the_oracle(dir: &Path, input: &Path, records: &[Keyed]) {
    // One partition: the recording, replayed, gives the oracle's rows.
    let topic1 = unique("rec1");
    services::create_topic(&topic1, 1);
    services::produce(&topic1, records);
    let out1 = dir.join("rec1");
    record(
        &[
            "--kafka-topic",
            &topic1,
            "--brokers",
            &brokers(),
            "--output",
            out1.to_str().unwrap(),
            "--roll",
            "2MiB",
        ],
        &[],
    );
    let files: Vec<String> =
        data_files(&out1).iter().map(|p| p.to_str().unwrap().to_owned()).collect();
    assert!(files.len() > 1, "rolled");
    // To S3: the same files, put whole.
    let bucket = services::fresh_bucket("record");
    let env = services::s3_env();
    let run = record(
        &[
            "--kafka-topic",
            &topic1,
            "--brokers",
            &brokers(),
            "--output",
            &format!("s3://{bucket}/cap"),
            "--roll",
            "2MiB",
        ],
        &env.iter().map(|(k, v)| (*k, v.clone())).collect::<Vec<_>>(),
    );
    assert_eq!(summary(&run)["records"].as_u64(), Some(records.len() as u64));
    let local: BTreeMap<String, Vec<u8>> =
        integration_tests::tree(&out1).into_iter().map(|(k, v)| (format!("cap/{k}"), v)).collect();
    assert!(local.keys().any(|k| k.starts_with("cap/_positions/")), "{local:?}");
    assert!(services::objects(&bucket, "cap/") == local, "S3 holds what the directory holds");
    let replayed = dir.join("replayed");
    // The recording's directory, as an archive: its `_positions/` sidecars are left out.
    let replay = integration_tests::replay(&replayed, &[out1.to_str().unwrap()]);
    assert!(replay.status.success(), "{}", String::from_utf8_lossy(&replay.stderr));
    let expected = oracle(input, dir);
    assert_same_rows(&expected.rows, &rows(&replayed, "sessions/"), dir, "replayed rows");
    // And from a replay of the original file, dead letters included.
    let direct = dir.join("direct");
    assert!(integration_tests::replay(&direct, &[input.to_str().unwrap()]).status.success());
    let (mut ours, mut theirs) = (rows(&replayed, "sessions/"), rows(&direct, "sessions/"));
    ours.sort();
    theirs.sort();
    assert!(ours == theirs, "the rows of the recording differ from those of the file");
    // Dead letters name their input file and line: compare them by reason.
    let reasons = |out: &Path| {
        let mut by: BTreeMap<String, u64> = BTreeMap::new();
        for line in rows(out, "dead-letter/") {
            let v: serde_json::Value = serde_json::from_str(&line).unwrap();
            *by.entry(v["reason"].as_str().unwrap().to_owned()).or_default() += 1;
        }
        by
    };
    assert_eq!(reasons(&replayed), reasons(&direct), "dead letters by reason");
}

/// KPL aggregates (the reference library, through the fixture) of `groups` of
/// `(partition key, data)`: each `(partition key, data)` to put.
fn aggregates(groups: &[Vec<Keyed>]) -> Vec<(String, Vec<u8>)> {
    let b64 = base64::engine::general_purpose::STANDARD;
    let batch: Vec<serde_json::Value> = groups
        .iter()
        .map(|g| {
            let records: Vec<serde_json::Value> = g
                .iter()
                .map(|(k, v)| serde_json::json!({"pk": String::from_utf8_lossy(k), "data_b64": b64.encode(v)}))
                .collect();
            serde_json::json!({"records": records})
        })
        .collect();
    crate::kinesis::kpl_fixture(&batch)
        .iter()
        .map(|v| {
            (
                v["pk"].as_str().unwrap().to_owned(),
                b64.decode(v["data_b64"].as_str().unwrap()).unwrap(),
            )
        })
        .collect()
}

#[test]
fn kinesis_record_has_every_user_record_once_with_its_shard_and_sequence() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("events.jsonl");
    generate(&input, 3_000, 17, "0.02");
    // Kinesis takes records up to 1 MiB; the generator writes a few larger lines.
    let records: Vec<Keyed> =
        keyed_lines(&input).into_iter().filter(|(_, v)| v.len() < 100_000).collect();
    let stream = Stream::create("record", 2);
    let shards = stream.open_shards();
    let shard_of = |pk: &[u8]| {
        let h = clickstream::source::kinesis::kpl::hash_key_of(pk);
        shards.iter().find(|o| o.start <= h && h <= o.end).unwrap().id.clone()
    };
    // The first two thirds put plain, the rest aggregated by fours bound for one shard.
    let (plain, rest) = records.split_at(records.len() * 2 / 3);
    stream.put(plain);
    let mut per_shard: BTreeMap<String, Vec<Keyed>> = BTreeMap::new();
    for r in rest {
        per_shard.entry(shard_of(&r.0)).or_default().push(r.clone());
    }
    let groups: Vec<Vec<Keyed>> =
        per_shard.values().flat_map(|v| v.chunks(4).map(<[_]>::to_vec)).collect();
    for (pk, data) in aggregates(&groups) {
        stream.put_one(&pk, None, data);
    }
    stream.put(&[(b"nl".to_vec(), b"{\"a\":\n1}".to_vec())]);

    // The second and third GetRecords find their iterator expired (as after a stall of five
    // minutes): the capture goes on after the last record it read, nothing twice or missing.
    let target = var("AWS_ENDPOINT_URL_KINESIS", "http://127.0.0.1:4570");
    let proxy = KinesisProxy::start(target.trim_start_matches("http://"));
    let expired = (400, "ExpiredIteratorException".to_owned(), "Iterator expired.".to_owned());
    proxy.fail_calls("GetRecords", &[2, 3], expired);
    let env: Vec<(&str, String)> = vec![
        ("AWS_ENDPOINT_URL_KINESIS", proxy.url()),
        ("AWS_ACCESS_KEY_ID", var("AWS_ACCESS_KEY_ID", "test")),
        ("AWS_SECRET_ACCESS_KEY", var("AWS_SECRET_ACCESS_KEY", "test")),
        ("AWS_REGION", var("AWS_REGION", "us-east-1")),
        ("AWS_EC2_METADATA_DISABLED", "true".into()),
    ];
    let out = dir.path().join("rec");
    let run = record(&["--kinesis-stream", &stream.name, "--output", out.to_str().unwrap()], &env);
    let sum = summary(&run);
    assert_eq!(proxy.injected(), 2);
    assert_eq!(proxy.calls("GetShardIterator"), 2 + 2, "one a shard, one an expiry");
    let total = records.len() + 1;
    assert_eq!(sum["records"].as_u64(), Some(total as u64), "{sum}");
    let mut seen = std::collections::BTreeSet::new();
    let mut aggregated = 0;
    let mut got: Vec<Vec<u8>> = Vec::new();
    for (pos, bytes) in captured(&out) {
        assert_eq!(pos["stream"], stream.name.as_str());
        let pk = pos["partition_key"].as_str().unwrap();
        assert_eq!(pos["shard"].as_str().unwrap(), shard_of(pk.as_bytes()), "{pos}");
        assert!(pos["arrival_ms"].as_i64().is_some());
        let sub = pos.get("subsequence").and_then(serde_json::Value::as_u64);
        aggregated += usize::from(sub.is_some());
        let at = (pos["sequence"].as_str().unwrap().to_owned(), sub);
        assert!(seen.insert(at), "{pos} recorded twice");
        got.push(bytes);
    }
    assert_eq!(aggregated, rest.len(), "the aggregated records come out as user records");
    let mut want: Vec<Vec<u8>> = records.iter().map(|(_, v)| v.clone()).collect();
    want.push(b"{\"a\":\n1}".to_vec());
    got.sort();
    want.sort();
    assert!(got == want, "every user record once, byte for byte");
    assert_eq!(sum["splits"].as_object().unwrap().len(), 2);
}
