//! `clickstream produce`: a generated file into Kafka at a fixed rate (the rate measured within
//! 5 %, every line once, one partition per customer), and into Kinesis with and without KPL
//! aggregation (every line once, every user record on the shard its key maps to).

use crate::kinesis::Stream;
use integration_tests::{bin, generate, root, services, summary};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

fn var(k: &str, d: &str) -> String {
    std::env::var(k).unwrap_or_else(|_| d.to_owned())
}

/// The lines of a file, empty ones too, sorted: what produce must deliver, so that every line
/// is accounted for downstream (an empty one as an `empty_line` dead letter).
fn lines_of(p: &Path) -> Vec<Vec<u8>> {
    let data = std::fs::read(p).unwrap();
    let body = data.strip_suffix(b"\n").unwrap_or(&data);
    let mut v: Vec<Vec<u8>> = body.split(|&b| b == b'\n').map(<[u8]>::to_vec).collect();
    v.sort();
    v
}

/// The two tests one at a time: the rate test's wall clock must not share the machine with the
/// other's generator and emulator.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn produce(args: &[&str], env: &[(&str, String)]) -> Output {
    let schemas = root().join("schemas");
    let mut a = vec!["produce", "--schemas", schemas.to_str().unwrap()];
    a.extend_from_slice(args);
    let out = Command::new(bin())
        .args(&a)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    assert!(out.status.success(), "produce failed: {}", String::from_utf8_lossy(&out.stderr));
    out
}

/// Every record of `topic` with its key and partition.
fn consume_keyed(topic: &str, n: usize, secs: u64) -> Vec<(Option<Vec<u8>>, i32, Vec<u8>)> {
    use rdkafka::ClientConfig;
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::message::Message;
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", services::brokers())
        .set("group.id", format!("produce-{topic}-{}", std::process::id()))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    c.subscribe(&[topic]).unwrap();
    let until = Instant::now() + Duration::from_secs(secs);
    let mut out = Vec::new();
    while out.len() < n && Instant::now() < until {
        if let Some(Ok(m)) = c.poll(Duration::from_millis(200)) {
            out.push((
                m.key().map(<[u8]>::to_vec),
                m.partition(),
                m.payload().unwrap_or_default().to_vec(),
            ));
        }
    }
    // Anything more would be a duplicate.
    let extra = Instant::now() + Duration::from_secs(2);
    while Instant::now() < extra {
        if let Some(Ok(m)) = c.poll(Duration::from_millis(200)) {
            out.push((
                m.key().map(<[u8]>::to_vec),
                m.partition(),
                m.payload().unwrap_or_default().to_vec(),
            ));
        }
    }
    out
}

#[test]
fn produce_into_kafka_at_a_fixed_rate() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("events.jsonl");
    generate(&input, 20_000, 13, "0.01");
    let want = lines_of(&input);
    assert!(want.iter().any(Vec::is_empty), "the input has empty lines");
    let topic = format!("produce-rate-{}", std::process::id());
    services::create_topic(&topic, 4);
    let began = Instant::now();
    let out = produce(
        &[
            "--kafka-topic",
            &topic,
            "--brokers",
            &services::brokers(),
            "--rate",
            "4000/s",
            input.to_str().unwrap(),
        ],
        &[],
    );
    let wall = began.elapsed().as_secs_f64();
    let s = summary(&out);
    eprintln!("produce --rate 4000/s: {s}; {wall:.3} s by the test's clock");
    let n = want.len() as f64;
    assert_eq!(s["records"].as_u64(), Some(want.len() as u64), "{s}");
    assert_eq!(s["failed"], 0, "{s}");
    let rate = s["rate"].as_f64().unwrap();
    assert!((rate - 4000.0).abs() <= 200.0, "summary rate {rate}/s, not 4000/s within 5 %: {s}");
    let measured = n / wall;
    assert!(
        (measured - 4000.0).abs() <= 200.0,
        "{n} lines in {wall:.3} s by the test's clock = {measured:.0}/s, not 4000/s within 5 %"
    );
    eprintln!("produce at 4000/s: summary {rate}/s, test clock {measured:.0}/s ({wall:.3} s)");

    let got = consume_keyed(&topic, want.len(), 120);
    let mut payloads: Vec<Vec<u8>> = got.iter().map(|(_, _, p)| p.clone()).collect();
    payloads.sort();
    assert_eq!(payloads.len(), want.len(), "not every line arrived exactly once");
    assert!(payloads == want, "the records differ from the file's lines");

    // One partition per key, and the key of a web-tracker line is its customer.id.
    let mut partitions: BTreeMap<Vec<u8>, BTreeSet<i32>> = BTreeMap::new();
    let (mut web_checked, mut web_other) = (0, 0);
    for (key, partition, payload) in &got {
        let key = key.clone().expect("every record has a key");
        if let Ok(v) = serde_json::from_slice::<serde_json::Value>(payload)
            && let Some(id) = v.pointer("/customer/id").and_then(|c| c.as_str())
            && v.get("event_id").is_some_and(serde_json::Value::is_string)
            && v.get("time").is_some()
        {
            if key == id.as_bytes() {
                web_checked += 1;
            } else {
                // Only a line the schemas reject (a bad time, say) has another key.
                web_other += 1;
            }
        }
        partitions.entry(key).or_default().insert(*partition);
    }
    assert!(web_checked > 100, "few web lines keyed by customer.id: {web_checked}");
    assert!(partitions.values().all(|p| p.len() == 1), "a key on two partitions");
    assert!(partitions.len() < got.len() / 2, "customers repeat: keys should too");
    let fallback = s["fallback_keyed"].as_u64().unwrap();
    assert!(fallback > 0, "the malformed lines get the fallback key: {s}");
    assert!(web_other <= fallback, "{web_other} web lines not keyed by customer.id");
}

fn kinesis_env() -> Vec<(&'static str, String)> {
    vec![
        ("AWS_ENDPOINT_URL_KINESIS", var("AWS_ENDPOINT_URL_KINESIS", "http://127.0.0.1:4570")),
        ("AWS_ACCESS_KEY_ID", var("AWS_ACCESS_KEY_ID", "test")),
        ("AWS_SECRET_ACCESS_KEY", var("AWS_SECRET_ACCESS_KEY", "test")),
        ("AWS_REGION", var("AWS_REGION", "us-east-1")),
        ("AWS_EC2_METADATA_DISABLED", "true".into()),
    ]
}

/// Every user record of the stream, de-aggregated with each shard's hash-key range (an
/// aggregate holding a record of another shard would come out `WrongShard` and fail the test).
fn read_stream(stream: &str) -> Vec<Vec<u8>> {
    use aws_sdk_kinesis::config::{BehaviorVersion, Credentials, Region};
    use aws_sdk_kinesis::error::ProvideErrorMetadata as _;
    use aws_sdk_kinesis::types::ShardIteratorType;
    use clickstream::source::kinesis::kpl::{Deaggregated, deaggregate};
    let conf = aws_sdk_kinesis::config::Builder::new()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new(var("AWS_REGION", "us-east-1")))
        .endpoint_url(var("AWS_ENDPOINT_URL_KINESIS", "http://127.0.0.1:4570"))
        .credentials_provider(Credentials::new("test", "test", None, None, "tests"))
        .build();
    let c = aws_sdk_kinesis::Client::from_conf(conf);
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let mut out = Vec::new();
        let shards = c.list_shards().stream_name(stream).send().await.unwrap();
        for shard in shards.shards() {
            let r = shard.hash_key_range().unwrap();
            let range: (u128, u128) =
                (r.starting_hash_key().parse().unwrap(), r.ending_hash_key().parse().unwrap());
            let mut it = c
                .get_shard_iterator()
                .stream_name(stream)
                .shard_id(shard.shard_id())
                .shard_iterator_type(ShardIteratorType::TrimHorizon)
                .send()
                .await
                .unwrap()
                .shard_iterator()
                .unwrap()
                .to_owned();
            let mut empty = 0;
            while empty < 2 {
                match c.get_records().shard_iterator(&it).send().await {
                    Ok(r) => {
                        if r.records().is_empty() {
                            empty += 1;
                        }
                        for rec in r.records() {
                            let data = rec.data().as_ref();
                            match deaggregate(data, range) {
                                Deaggregated::Plain => out.push(data.to_vec()),
                                Deaggregated::Aggregate(users) => {
                                    out.extend(users.iter().map(|u| u.data.to_vec()));
                                }
                                Deaggregated::WrongShard(n) => {
                                    panic!("an aggregate of {n} records on the wrong shard")
                                }
                            }
                        }
                        r.next_shard_iterator().unwrap().clone_into(&mut it);
                    }
                    Err(e) => {
                        assert!(
                            e.code() == Some("ProvisionedThroughputExceededException"),
                            "GetRecords: {e:?}"
                        );
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
            }
        }
        out.sort();
        out
    })
}

#[test]
fn produce_into_kinesis_with_and_without_aggregation() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("events.jsonl");
    generate(&input, 3_000, 14, "0");
    let want = lines_of(&input);
    for aggregate in [false, true] {
        let stream = Stream::create(if aggregate { "produce-agg" } else { "produce-plain" }, 2);
        let mut args = vec!["--kinesis-stream", stream.name.as_str(), input.to_str().unwrap()];
        if aggregate {
            args.push("--aggregate");
        }
        let out = produce(&args, &kinesis_env());
        let s = summary(&out);
        assert_eq!(s["records"].as_u64(), Some(want.len() as u64), "{s}");
        // Where they landed: both shards, and (unaggregated) a record each.
        let shards = s["shards"].as_object().unwrap();
        assert_eq!(shards.len(), 2, "{s}");
        assert!(shards.values().all(|t| !t["last"].as_str().unwrap().is_empty()), "{s}");
        let put: u64 = shards.values().map(|t| t["records"].as_u64().unwrap()).sum();
        if !aggregate {
            assert_eq!(put, want.len() as u64, "{s}");
        }
        let got = read_stream(&stream.name);
        assert_eq!(got.len(), want.len(), "aggregate={aggregate}: not every line exactly once");
        assert!(got == want, "aggregate={aggregate}: the records differ from the lines");
    }
}
