//! `clickstream run` against a real Apache Kafka broker and the S3 API server on loopback
//! (`scripts/services up`), held against the shared oracle.

use integration_tests::services::{self, brokers};
use integration_tests::{Running, python, root, shared_data};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

const PARTITIONS: i32 = 4;

/// Every line of `file` keyed by its customer id (what producers are asked to do), read with
/// the shipped schemas; lines without one get their line number as key.
fn keyed_lines(file: &Path) -> Vec<(Vec<u8>, Vec<u8>)> {
    let x = clickstream::extract::Extractor::load(&root().join("schemas")).unwrap();
    let data = std::fs::read(file).unwrap();
    let body = data.strip_suffix(b"\n").unwrap_or(&data);
    body.split(|&b| b == b'\n')
        .enumerate()
        .map(|(i, line)| {
            let mut slots = Vec::new();
            let key = clickstream::decode::decode(line)
                .ok()
                .and_then(|t| x.extract(t, &mut slots).ok())
                .map_or_else(|| format!("line-{i}"), |e| e.customer_id.into_owned());
            (key.into_bytes(), line.to_vec())
        })
        .collect()
}

struct Expected {
    rows: std::path::PathBuf,
    rejects: BTreeMap<String, u64>,
}

fn oracle(input: &Path, dir: &Path) -> Expected {
    let (rows, rejects) = (dir.join("expected.jsonl"), dir.join("rejects.json"));
    let st = std::process::Command::new(python())
        .arg(shared_data().join("oracle.py"))
        .arg(input)
        .arg("--out")
        .arg(&rows)
        .arg("--rejects")
        .arg(&rejects)
        .status()
        .unwrap();
    assert!(st.success());
    let mut rejects: BTreeMap<String, u64> =
        serde_json::from_str(&std::fs::read_to_string(&rejects).unwrap()).unwrap();
    rejects.remove("duplicate");
    Expected { rows, rejects }
}

/// Compares S3's rows with the oracle's using the shared `compare.py`; panics with its report.
fn assert_rows_equal(bucket: &str, prefix: &str, expected: &Expected, dir: &Path) {
    let got = services::lines(bucket, &format!("{prefix}/sessions/"));
    let actual = dir.join("actual.jsonl");
    std::fs::write(&actual, got.join("\n") + "\n").unwrap();
    let o = std::process::Command::new(python())
        .arg(shared_data().join("compare.py"))
        .arg(&expected.rows)
        .arg(&actual)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "S3 rows differ from the oracle's: {}",
        String::from_utf8_lossy(&o.stdout)
    );
    let mut dead: BTreeMap<String, u64> = BTreeMap::new();
    for l in services::lines(bucket, &format!("{prefix}/dead-letter/")) {
        let v: serde_json::Value = serde_json::from_str(&l).unwrap();
        *dead.entry(v["reason"].as_str().unwrap().to_owned()).or_default() += 1;
    }
    assert_eq!(dead, expected.rejects, "dead letters by reason");
}

fn run_env<'a>(
    topic: &'a str,
    group: &'a str,
    sink: &'a str,
    state: &'a str,
    s3: &'a [(&'static str, String)],
) -> Vec<(&'a str, &'a str)> {
    let mut env: Vec<(&str, &str)> = s3.iter().map(|(k, v)| (*k, v.as_str())).collect();
    env.extend([
        ("CLICKSTREAM__KAFKA__TOPIC", topic),
        ("CLICKSTREAM__KAFKA__GROUP", group),
        ("CLICKSTREAM__SINK__LOCATION", sink),
        ("CLICKSTREAM__RUN__STATE", state),
        ("CLICKSTREAM__RUN__CHECKPOINT_INTERVAL", "500ms"),
        ("CLICKSTREAM__RUN__IDLE_TIMEOUT", "4s"),
        ("CLICKSTREAM__RUN__SNAPSHOT_EVERY", "1"),
        ("CLICKSTREAM__SESSION__ALLOWED_LATENESS", "7h"),
        ("CLICKSTREAM__ADMIN__LISTEN", "127.0.0.1:0"),
    ]);
    env
}

fn kafka_env() -> (&'static str, String) {
    ("CLICKSTREAM__KAFKA__BROKERS", brokers())
}

/// Waits until `done` holds, for at most `secs`.
fn wait_for(what: &str, secs: u64, mut done: impl FnMut() -> bool) {
    let until = Instant::now() + Duration::from_secs(secs);
    while !done() {
        assert!(Instant::now() < until, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn rows_in(bucket: &str, prefix: &str) -> usize {
    services::lines(bucket, &format!("{prefix}/sessions/")).len()
}

fn expected_rows(e: &Expected) -> usize {
    std::fs::read_to_string(&e.rows).unwrap().lines().count()
}

#[test]
fn kafka_to_s3_equals_the_oracle() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("events.jsonl");
    integration_tests::generate(&input, 100_000, 7, "0.02");
    let expected = oracle(&input, dir.path());
    let topic = format!("raw-e2e-{}", std::process::id());
    services::create_topic(&topic, PARTITIONS);
    let records = keyed_lines(&input);
    services::produce(&topic, &records);
    let bucket = services::fresh_bucket("e2e");
    let sink = format!("s3://{bucket}/v1");
    let state = dir.path().join("state");
    let s3 = services::s3_env();
    let group = format!("{topic}-g");
    let mut env = run_env(&topic, &group, &sink, state.to_str().unwrap(), &s3);
    let k = kafka_env();
    env.push((k.0, &k.1));
    let schemas = root().join("schemas");
    env.push(("CLICKSTREAM__REPLAY__SCHEMAS", schemas.to_str().unwrap()));
    let p = Running::start(&["run"], &env);
    let admin = p.admin_addr();
    let want = expected_rows(&expected);
    wait_for("every session row in S3", 240, || rows_in(&bucket, "v1") >= want);
    let (code, ready) = integration_tests::curl(&[&format!("http://{admin}/readyz")]);
    assert_eq!(code, 200, "{ready}");
    let (_, metrics) = integration_tests::curl(&[&format!("http://{admin}/metrics")]);
    assert!(metrics.contains("clickstream_events_in_total{partition=\"p0000\"}"), "{metrics}");
    // Labels are partitions and reasons, never customer ids.
    let first: serde_json::Value = serde_json::from_str(
        std::fs::read_to_string(&expected.rows).unwrap().lines().next().unwrap(),
    )
    .unwrap();
    let cid = first["customer_id"].as_str().unwrap();
    assert!(!metrics.contains(&format!("\"{cid}\"")), "customer id {cid} in the metrics");
    // SIGTERM: final checkpoint, then a clean exit.
    let st = std::process::Command::new("kill").args(["-TERM", &p.child.id().to_string()]).status();
    assert!(st.unwrap().success());
    let mut p = p;
    assert_eq!(p.child.wait().unwrap().code(), Some(0), "{}", p.log().join("\n"));
    assert_rows_equal(&bucket, "v1", &expected, dir.path());
    // Kafka's committed offsets reached the end of every partition, and not beyond.
    let committed: i64 = services::committed(&topic, &group, PARTITIONS).iter().sum();
    assert_eq!(committed, records.len() as i64);
}
