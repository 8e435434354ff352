//! Record → replay round trips: `run` consumes a stream into S3; `record` captures the same
//! stream into files; `replay` of the recording's directory gives exactly the rows `run` wrote.
//! One partition or shard: sessions are kept per split, and a replay is one split.

use crate::kafka::{
    assert_rows_equal, expected_rows, kafka_env, keyed_lines, oracle, rows_in, run_env, terminate,
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

/// The rows of a replay of `recording` (as `run` is configured: 7h lateness), sorted.
fn replayed_rows(recording: &Path, out: &Path) -> Vec<String> {
    let o = integration_tests::replay(
        out,
        &[
            "--allowed-lateness",
            "7h",
            "--state",
            out.join("st").to_str().unwrap(),
            recording.to_str().unwrap(),
        ],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    rows(out, "sessions/")
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

#[test]
fn kafka_recorded_and_replayed_gives_the_rows_run_wrote() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("events.jsonl");
    integration_tests::generate(&input, 20_000, 21, "0.02");
    let expected = oracle(&input, dir.path());
    let topic = format!("roundtrip-{}", std::process::id());
    services::create_topic(&topic, 1);
    services::produce(&topic, &keyed_lines(&input));

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
    let replayed = replayed_rows(&recording, &dir.path().join("replayed"));
    assert_eq!(replayed.len(), by_run.len(), "rows: replayed recording vs run");
    assert!(replayed == by_run, "the replayed recording's rows differ from run's");
}

#[test]
fn kinesis_recorded_and_replayed_gives_the_rows_run_wrote() {
    let sc = Scenario::new("roundtrip", 5_000, 1);
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
    let replayed = replayed_rows(&recording, &sc.dir.path().join("replayed"));
    assert_eq!(replayed.len(), by_run.len(), "rows: replayed recording vs run");
    assert!(replayed == by_run, "the replayed recording's rows differ from run's");
}
