//! Record → replay round trips: `run` consumes a stream into S3; `record` captures the same
//! stream into files; `replay` of the recording's directory gives exactly the rows `run` wrote.
//! Sessions are kept per split and a replay is one split: a recording of several partitions or
//! shards is replayed a split at a time (its files), and the rows of all together are `run`'s.

use crate::kafka::{
    assert_rows_equal, expected_rows, kafka_env, lines, oracle, rows_in, run_env, terminate,
    wait_for,
};
use crate::kinesis::Scenario;
use integration_tests::{Running, bin, root, rows, services};
use std::path::Path;
use std::process::Command;

/// `clickstream record ARGS --output DIR` with `env`; panics unless it succeeds.
fn record(args: &[&str], out: &Path, env: &[(&str, String)]) {
    let mut c = Command::new(bin());
    c.arg("record").args(args).arg("--output").arg(out).env("RUST_LOG", "warn");
    for (k, v) in env {
        c.env(k, v);
    }
    let o = c.output().unwrap();
    assert!(o.status.success(), "record failed: {}", String::from_utf8_lossy(&o.stderr));
}

/// The rows of a replay of `inputs` (as `run` is configured: 7h lateness).
fn replayed_rows(inputs: &[&Path], out: &Path) -> Vec<String> {
    let state = out.join("st");
    let mut args = vec!["--allowed-lateness", "7h", "--state", state.to_str().unwrap()];
    args.extend(inputs.iter().map(|p| p.to_str().unwrap()));
    let o = integration_tests::replay(out, &args);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    rows(out, "sessions/")
}

/// The rows of replays of a recording a split at a time (its files,
/// `{name}-{split}-{first position}.jsonl.gz`), together, sorted.
fn replayed_per_split(recording: &Path, name: &str, splits: &[String], dir: &Path) -> Vec<String> {
    let mut replayed = Vec::new();
    for split in splits {
        let mut files: Vec<std::path::PathBuf> = std::fs::read_dir(recording)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|f| {
                f.file_name().unwrap().to_str().unwrap().starts_with(&format!("{name}-{split}-"))
            })
            .collect();
        files.sort();
        assert!(!files.is_empty(), "split {split} recorded nothing");
        let inputs: Vec<&Path> = files.iter().map(std::path::PathBuf::as_path).collect();
        replayed.extend(replayed_rows(&inputs, &dir.join(format!("replayed-{split}"))));
    }
    sorted(replayed)
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

/// Partitions of the Kafka round trip's topic.
const PARTITIONS: i32 = 3;

#[test]
fn kafka_recorded_and_replayed_gives_the_rows_run_wrote() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("events.jsonl");
    integration_tests::generate(&input, 20_000, 21, "0.02");
    let expected = oracle(&input, dir.path());
    let topic = format!("roundtrip-{}", std::process::id());
    services::create_topic(&topic, PARTITIONS);
    services::produce_lines(&topic, &lines(&input));

    let bucket = services::fresh_bucket("roundtrip");
    let (sink, state) = (format!("s3://{bucket}/v1"), dir.path().join("state"));
    let s3 = services::s3_env();
    let group = format!("{topic}-g");
    let mut env = run_env(&topic, &group, &sink, state.to_str().unwrap(), &s3);
    let k = kafka_env();
    env.push((k.0, &k.1));
    let schemas = root().join("schemas");
    env.push(("CLICKSTREAM__REPLAY__SCHEMAS", schemas.to_str().unwrap()));
    let p = Running::start(&["run"], &env);
    let want = expected_rows(&expected);
    wait_for("every session row", 240, || rows_in(&bucket, "v1") >= want);
    terminate(p);
    assert_rows_equal(&bucket, "v1", &expected, dir.path());
    let by_run = sorted(services::lines(&bucket, "v1/sessions/"));

    let recording = dir.path().join("recording");
    record(&["--kafka-topic", &topic, "--brokers", &services::brokers()], &recording, &[]);
    let splits: Vec<String> = (0..PARTITIONS).map(|p| p.to_string()).collect();
    let replayed = replayed_per_split(&recording, &topic, &splits, dir.path());
    assert_eq!(replayed.len(), by_run.len(), "rows: replayed recording vs run");
    assert!(replayed == by_run, "the replayed recording's rows differ from run's");
}

#[test]
fn kinesis_recorded_and_replayed_gives_the_rows_run_wrote() {
    let sc = Scenario::new("roundtrip", 5_000, 2);
    sc.put(0..sc.records.len());
    let p = sc.start("w1", &[]);
    sc.assert_done(240);
    terminate(p);
    let by_run = sorted(services::lines(&sc.bucket, "v1/sessions/"));
    assert_eq!(by_run.len(), expected_rows(&sc.expected));

    let recording = sc.dir.path().join("recording");
    let endpoint = std::env::var("AWS_ENDPOINT_URL_KINESIS")
        .unwrap_or_else(|_| "http://127.0.0.1:4570".to_owned());
    let mut env: Vec<(&str, String)> = services::s3_env();
    env.push(("AWS_ENDPOINT_URL_KINESIS", endpoint));
    record(&["--kinesis-stream", &sc.stream.name], &recording, &env);
    let shards: Vec<String> = sc.stream.open_shards().into_iter().map(|s| s.id).collect();
    assert_eq!(shards.len(), 2);
    let replayed = replayed_per_split(&recording, &sc.stream.name, &shards, sc.dir.path());
    assert_eq!(replayed.len(), by_run.len(), "rows: replayed recording vs run");
    assert!(replayed == by_run, "the replayed recording's rows differ from run's");
}
