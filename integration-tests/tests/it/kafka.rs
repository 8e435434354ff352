//! `clickstream run` against a real Apache Kafka broker and the S3 API server on loopback
//! (`scripts/services up`), held against the shared oracle.

use integration_tests::services::{self, brokers};
use integration_tests::{Running, python, root, shared_data};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

const PARTITIONS: i32 = 4;

/// Every line of `file`, as `clickstream produce` sends them (an empty last line is none).
pub(crate) fn lines(file: &Path) -> Vec<Vec<u8>> {
    let data = std::fs::read(file).unwrap();
    let body = data.strip_suffix(b"\n").unwrap_or(&data);
    body.split(|&b| b == b'\n').map(<[u8]>::to_vec).collect()
}

/// Every line of `file` keyed by its customer id (what producers are asked to do), read with
/// the shipped schemas; lines without one get their line number as key.
pub(crate) fn keyed_lines(file: &Path) -> Vec<(Vec<u8>, Vec<u8>)> {
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

pub(crate) struct Expected {
    pub(crate) rows: std::path::PathBuf,
    pub(crate) rejects: BTreeMap<String, u64>,
}

pub(crate) fn oracle(input: &Path, dir: &Path) -> Expected {
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

/// Compares `rows` with the oracle's rows file `expected` using the shared `compare.py` (the
/// rows written to `dir/actual.jsonl`); panics with its report, naming the rows `what`.
pub(crate) fn assert_same_rows(expected: &Path, rows: &[String], dir: &Path, what: &str) {
    let actual = dir.join("actual.jsonl");
    std::fs::write(&actual, rows.join("\n") + "\n").unwrap();
    let o = std::process::Command::new(python())
        .arg(shared_data().join("compare.py"))
        .arg(expected)
        .arg(&actual)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "{what} differ from the oracle's: {}",
        String::from_utf8_lossy(&o.stdout)
    );
}

/// Compares S3's rows with the oracle's using the shared `compare.py`; panics with its report.
pub(crate) fn assert_rows_equal(bucket: &str, prefix: &str, expected: &Expected, dir: &Path) {
    let got = services::lines(bucket, &format!("{prefix}/sessions/"));
    assert_same_rows(&expected.rows, &got, dir, "S3 rows");
    let mut dead: BTreeMap<String, u64> = BTreeMap::new();
    for l in services::lines(bucket, &format!("{prefix}/dead-letter/")) {
        let v: serde_json::Value = serde_json::from_str(&l).unwrap();
        *dead.entry(v["reason"].as_str().unwrap().to_owned()).or_default() += 1;
    }
    assert_eq!(dead, expected.rejects, "dead letters by reason");
}

pub(crate) fn run_env<'a>(
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
        // Size-based rolling too (≈ 15 MB per partition of the 100k file): early checkpoints
        // must not change the result.
        ("CLICKSTREAM__RUN__CHECKPOINT_BYTES", "3000000"),
        ("CLICKSTREAM__RUN__IDLE_TIMEOUT", "4s"),
        ("CLICKSTREAM__SESSION__ALLOWED_LATENESS", "7h"),
        ("CLICKSTREAM__ADMIN__LISTEN", "127.0.0.1:0"),
    ]);
    env
}

pub(crate) fn kafka_env() -> (&'static str, String) {
    ("CLICKSTREAM__KAFKA__BROKERS", brokers())
}

/// SIGTERM: final checkpoint, then a clean exit.
pub(crate) fn terminate(mut p: Running) {
    let st = std::process::Command::new("kill").args(["-TERM", &p.child.id().to_string()]).status();
    assert!(st.unwrap().success());
    assert_eq!(p.child.wait().unwrap().code(), Some(0), "{}", p.log().join("\n"));
}

/// Waits until `done` holds, for at most `secs`.
pub(crate) fn wait_for(what: &str, secs: u64, mut done: impl FnMut() -> bool) {
    let until = Instant::now() + Duration::from_secs(secs);
    while !done() {
        assert!(Instant::now() < until, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(250));
    }
}

pub(crate) fn rows_in(bucket: &str, prefix: &str) -> usize {
    services::lines(bucket, &format!("{prefix}/sessions/")).len()
}

pub(crate) fn expected_rows(e: &Expected) -> usize {
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
    let records = lines(&input);
    services::produce_lines(&topic, &records);
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
    let dlq = format!("{topic}-dead");
    services::create_topic(&dlq, 1);
    env.push(("CLICKSTREAM__SINK__DEAD_LETTER_TOPIC", &dlq));
    let p = Running::start(&["run"], &env);
    let admin = p.admin_addr();
    let want = expected_rows(&expected);
    let until = Instant::now() + Duration::from_mins(4);
    while rows_in(&bucket, "v1") < want {
        assert!(
            Instant::now() < until,
            "rows missing; log:\n{}",
            p.log()[p.log().len().saturating_sub(30)..].join("\n")
        );
        std::thread::sleep(Duration::from_millis(250));
    }
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
    terminate(p);
    assert_rows_equal(&bucket, "v1", &expected, dir.path());
    // Kafka's committed offsets reached the end of every partition, and not beyond.
    let committed: i64 = services::committed(&topic, &group, PARTITIONS).iter().sum();
    assert_eq!(committed, records.len() as i64);
    // The optional dead-letter topic got a copy of each (at least once; here exactly, as
    // nothing was redone).
    let dead: u64 = expected.rejects.values().sum();
    let copies = integration_tests::consume_all(&dlq, dead as usize + 1, 30);
    assert_eq!(copies.len() as u64, dead, "dead letters on the Kafka topic");
    let v: serde_json::Value = serde_json::from_slice(&copies[0]).unwrap();
    assert!(v["reason"].is_string() && v["source"]["file"].is_string(), "{v}");
}

/// Kafka's committed offsets are never ahead of the state published in S3 (which the output
/// objects precede).
pub(crate) fn assert_offsets_behind_s3(topic: &str, group: &str, bucket: &str, partitions: i32) {
    let committed = services::committed(topic, group, partitions);
    let published = published_offsets(bucket, "v1", partitions);
    for (p, c) in committed.iter().enumerate() {
        let p = p as i32;
        assert!(
            *c <= published.get(&p).copied().unwrap_or(0),
            "partition {p}: Kafka offset {c} is ahead of the state in S3 ({published:?})"
        );
    }
}

/// The next offset of each partition's committed state (`_state/pNNNN/LATEST`).
pub(crate) fn published_offsets(bucket: &str, prefix: &str, partitions: i32) -> BTreeMap<i32, i64> {
    let mut out = BTreeMap::new();
    for p in 0..partitions {
        if let Some(r) = latest(bucket, prefix, p)
            && let Some(pos) = r["position"].as_str()
        {
            out.insert(p, pos.parse().unwrap());
        }
    }
    out
}

/// A partition's commit record, if it has one.
pub(crate) fn latest(bucket: &str, prefix: &str, partition: i32) -> Option<serde_json::Value> {
    let body = services::get(bucket, &format!("{prefix}/_state/p{partition:04}/LATEST"))?;
    Some(serde_json::from_slice(&body).unwrap())
}

#[test]
#[allow(clippy::too_many_lines)] // one scenario, told in order
fn instances_join_and_die_mid_stream_and_the_output_still_equals_the_oracle() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("events.jsonl");
    integration_tests::generate(&input, 60_000, 42, "0.02");
    let expected = oracle(&input, dir.path());
    let topic = format!("raw-group-{}", std::process::id());
    services::create_topic(&topic, PARTITIONS);
    let records = lines(&input);
    let third = records.len() / 3;
    let bucket = services::fresh_bucket("group");
    let sink = format!("s3://{bucket}/v1");
    let s3 = services::s3_env();
    let group = format!("{topic}-g");
    let schemas = root().join("schemas");
    let kafka = kafka_env();
    let start = |name: &str| {
        let state = dir.path().join(name);
        let mut env = run_env(&topic, &group, &sink, state.to_str().unwrap(), &s3);
        env.push((kafka.0, &kafka.1));
        env.push(("CLICKSTREAM__REPLAY__SCHEMAS", schemas.to_str().unwrap()));
        // Longer than any pause in this test: sessions close on the watermark, or at the end.
        env.push(("CLICKSTREAM__RUN__IDLE_TIMEOUT", "25s"));
        Running::start(&["run"], &env)
    };

    services::produce_lines(&topic, &records[..third]);
    let first = start("a");
    let _ = first.admin_addr();
    let second = start("b");
    second.wait_log("Split assigned", 60);
    wait_for("output from both instances", 60, || {
        services::objects(&bucket, "v1/sessions/").len() >= 2
    });
    // SIGKILL: no final checkpoint, no revoke. Committed offsets never ran ahead of the state
    // published in S3 (which the output objects precede).
    drop(first);
    assert_offsets_behind_s3(&topic, &group, &bucket, PARTITIONS);
    services::produce_lines(&topic, &records[third..2 * third]);
    let first = start("a");
    first.wait_log("Split assigned", 60);
    let third_instance = start("c");
    third_instance.wait_log("Consuming", 60);
    services::produce_lines(&topic, &records[2 * third..]);
    // Kill the newcomer again at a random moment while the last third is consumed, and check
    // the offsets once more.
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
    let delay = 300 + u64::from(nanos.unwrap().subsec_nanos() % 2_500);
    std::thread::sleep(Duration::from_millis(delay));
    drop(third_instance);
    assert_offsets_behind_s3(&topic, &group, &bucket, PARTITIONS);
    let third_instance = start("c");
    third_instance.wait_log("Consuming", 60);

    let want = expected_rows(&expected);
    wait_for("every session row in S3", 300, || rows_in(&bucket, "v1") >= want);
    let logs: String = [&first, &second, &third_instance].map(|i| i.log().join("\n")).join("\n");
    for instance in [first, second, third_instance] {
        terminate(instance);
    }
    // The scenario happened: partitions moved, and state came back from S3 snapshots.
    assert!(logs.contains("Partitions revoked"), "no rebalance took a partition away");
    assert!(logs.contains("Restoring split state from its S3 snapshot"), "no restore from S3");
    assert_rows_equal(&bucket, "v1", &expected, dir.path());
    let committed: i64 = services::committed(&topic, &group, PARTITIONS).iter().sum();
    assert_eq!(committed, records.len() as i64);
}

#[test]
fn thirty_seconds_without_s3_lose_nothing_and_memory_stays_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("events.jsonl");
    integration_tests::generate(&input, 40_000, 1, "0.02");
    let expected = oracle(&input, dir.path());
    let topic = format!("raw-outage-{}", std::process::id());
    services::create_topic(&topic, PARTITIONS);
    let records = lines(&input);
    let half = records.len() / 2;
    let bucket = services::fresh_bucket("outage");
    let sink = format!("s3://{bucket}/v1");
    let mut s3 = services::s3_env();
    let endpoint = s3[0].1.clone();
    let cut = integration_tests::proxy::FaultProxy::start(endpoint.trim_start_matches("http://"));
    s3[0].1 = cut.url();
    let group = format!("{topic}-g");
    let state = dir.path().join("state");
    let mut env = run_env(&topic, &group, &sink, state.to_str().unwrap(), &s3);
    let kafka = kafka_env();
    env.push((kafka.0, &kafka.1));
    let schemas = root().join("schemas");
    env.push(("CLICKSTREAM__REPLAY__SCHEMAS", schemas.to_str().unwrap()));
    env.push(("CLICKSTREAM__RUN__IDLE_TIMEOUT", "20s"));
    services::produce_lines(&topic, &records[..half]);
    let p = Running::start(&["run"], &env);
    wait_for("first output", 60, || !services::objects(&bucket, "v1/sessions/").is_empty());

    cut.set_down(true);
    services::produce_lines(&topic, &records[half..]);
    let mut peak = 0;
    let until = Instant::now() + Duration::from_secs(30);
    while Instant::now() < until {
        peak = peak.max(integration_tests::rss_kib(p.child.id()));
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(p.log().iter().any(|l| l.contains("S3 request failed; retrying")), "no retry seen");
    assert!(peak < 512 * 1024, "peak RSS {peak} KiB while S3 was down");
    cut.set_down(false);

    let want = expected_rows(&expected);
    wait_for("every session row in S3", 240, || rows_in(&bucket, "v1") >= want);
    terminate(p);
    assert_rows_equal(&bucket, "v1", &expected, dir.path());
    let committed: i64 = services::committed(&topic, &group, PARTITIONS).iter().sum();
    assert_eq!(committed, records.len() as i64);
    eprintln!("peak RSS while S3 was down: {} MiB", peak / 1024);
}

#[test]
fn replay_to_s3_writes_what_replay_to_a_directory_writes() {
    let dir = tempfile::tempdir().unwrap();
    let sample = root().join("integration-tests/fixtures/sample/clicks-2k.jsonl.gz");
    let local = dir.path().join("local");
    let o =
        integration_tests::replay(&local, &["--checkpoint-every", "500", sample.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    let bucket = services::fresh_bucket("replay");
    let s3 = services::s3_env();
    let state = dir.path().join("state");
    let args: Vec<String> = vec![
        "replay".into(),
        "--schemas".into(),
        root().join("schemas").to_string_lossy().into(),
        "--output".into(),
        format!("s3://{bucket}/out"),
        "--state".into(),
        state.to_string_lossy().into(),
        "--checkpoint-every".into(),
        "500".into(),
        sample.to_string_lossy().into(),
    ];
    let run = || {
        std::process::Command::new(integration_tests::bin())
            .args(&args)
            .envs(s3.iter().map(|(k, v)| (*k, v.as_str())))
            .env("RUST_LOG", "warn")
            .output()
            .unwrap()
    };
    let first = run();
    assert!(first.status.success(), "{}", String::from_utf8_lossy(&first.stderr));
    assert_eq!(integration_tests::summary(&first), integration_tests::summary(&o));
    let mut got = services::lines(&bucket, "out/sessions/");
    got.sort();
    assert_eq!(got, integration_tests::rows(&local, "sessions"));
    let mut dead = services::lines(&bucket, "out/dead-letter/");
    dead.sort();
    assert_eq!(dead, integration_tests::rows(&local, "dead-letter"));
    assert!(services::objects(&bucket, "out/_SUCCESS").len() == 1, "completion marker");
    // Again: a no-op that reports the same totals.
    let again = run();
    assert!(again.status.success());
    assert_eq!(integration_tests::summary(&again), integration_tests::summary(&o));
    assert_eq!(services::lines(&bucket, "out/sessions/").len(), got.len());
    let no_state = std::process::Command::new(integration_tests::bin())
        .args(["replay", "--output", &format!("s3://{bucket}/x"), sample.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&no_state.stderr).contains("needs a local --state"));
}

/// A Python with `DuckDB` (`scripts/setup` installs it).
fn duckdb_python() -> String {
    std::env::var("CLICKSTREAM_DUCKDB_PYTHON").unwrap_or_else(|_| {
        let home = std::env::var("HOME").unwrap_or_default();
        let tools = std::env::var("CLICKSTREAM_TOOLS_DIR")
            .unwrap_or_else(|_| format!("{home}/.cache/clickstream/tools"));
        format!("{tools}/test-venv/bin/python")
    })
}

#[test]
fn parquet_output_reads_back_in_duckdb_with_proper_types() {
    let dir = tempfile::tempdir().unwrap();
    let sample = root().join("integration-tests/fixtures/sample/clicks-2k.jsonl.gz");
    let local = dir.path().join("local");
    let o = integration_tests::replay(&local, &[sample.to_str().unwrap()]);
    assert!(o.status.success());
    let want: Vec<serde_json::Value> = integration_tests::rows(&local, "sessions")
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();

    let bucket = services::fresh_bucket("parquet");
    let mut env: Vec<(&str, String)> = services::s3_env();
    env.push(("CLICKSTREAM__SINK__FORMAT", "parquet".into()));
    let out = std::process::Command::new(integration_tests::bin())
        .args(["replay", "--schemas", root().join("schemas").to_str().unwrap()])
        .args(["--output", &format!("s3://{bucket}/pq"), "--state"])
        .arg(dir.path().join("state"))
        .arg(&sample)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let objects = services::objects(&bucket, "pq/sessions/");
    assert!(objects.keys().all(|k| k.ends_with(".parquet")), "{:?}", objects.keys());
    let files = dir.path().join("parquet");
    std::fs::create_dir_all(&files).unwrap();
    for (i, body) in objects.values().enumerate() {
        std::fs::write(files.join(format!("{i}.parquet")), body).unwrap();
    }
    let script = format!(
        "import duckdb, json\n\
         c = duckdb.connect()\n\
         t = c.sql(\"describe select * from read_parquet('{0}/*.parquet')\").fetchall()\n\
         n, views, first = c.sql(\"select count(*), sum(page_views), min(session_start)::VARCHAR from read_parquet('{0}/*.parquet')\").fetchone()\n\
         print(json.dumps({{'types': {{r[0]: r[1] for r in t}}, 'rows': n, 'page_views': int(views), 'first': str(first)}}))\n",
        files.display()
    );
    let py = std::process::Command::new(duckdb_python()).args(["-c", &script]).output();
    let py = py.expect("DuckDB's Python (scripts/setup installs it)");
    assert!(py.status.success(), "{}", String::from_utf8_lossy(&py.stderr));
    let got: serde_json::Value = serde_json::from_slice(&py.stdout).unwrap();
    assert_eq!(got["rows"], want.len());
    let views: u64 = want.iter().map(|r| r["page_views"].as_u64().unwrap()).sum();
    assert_eq!(got["page_views"], views);
    let t = &got["types"];
    assert_eq!(t["session_start"], "TIMESTAMP WITH TIME ZONE", "{got}");
    assert_eq!(t["page_views"], "BIGINT", "{got}");
    assert_eq!(t["customer_id"], "VARCHAR", "{got}");
    assert_eq!(t["schema_sets"], "VARCHAR[]", "{got}");
}

#[test]
fn large_objects_go_up_in_parts_and_come_back_whole() {
    let bucket = services::fresh_bucket("multipart");
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build();
    let rt = rt.unwrap();
    let location = clickstream::s3::S3Location { bucket: bucket.clone(), prefix: "p".into() };
    let sink = clickstream::sink::s3::S3Sink::new(
        services::s3(),
        location,
        "p0000",
        rt.handle().clone(),
        tokio_util::sync::CancellationToken::new(),
    );
    // 21 MiB of varied bytes: three parts of 8 MiB, the last one short.
    let body: Vec<u8> =
        (0..21u32 << 20).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8).collect();
    sink.put("big/object.bin", &body).unwrap();
    let got = services::objects(&bucket, "p/big/");
    assert_eq!(got.len(), 1);
    assert!(got["p/big/object.bin"] == body, "the object came back different");
}

/// The image's layout and user, without Docker: the binary in `usr/local/bin`, the shipped
/// `deploy/clickstream.toml` and schemas under `etc/clickstream`, state under
/// `var/lib/clickstream` owned by uid 10001, the process running as 10001:10001 with the
/// admin API on all interfaces (hence a token), as in the Kubernetes manifest.
#[test]
fn the_image_layout_runs_as_uid_10001_outside_docker() {
    use std::os::unix::fs::PermissionsExt as _;
    assert!(
        std::process::Command::new("id").arg("-u").output().unwrap().stdout == b"0\n",
        "this test switches to uid 10001 with setpriv: run the suite as root (CI does)"
    );
    let dir = tempfile::tempdir().unwrap();
    let top = dir.path();
    std::fs::set_permissions(top, std::fs::Permissions::from_mode(0o755)).unwrap();
    let (bin, etc, var) =
        (top.join("usr/local/bin"), top.join("etc/clickstream"), top.join("var/lib/clickstream"));
    for d in [&bin, &etc, &var] {
        std::fs::create_dir_all(d).unwrap();
    }
    std::fs::copy(integration_tests::bin(), bin.join("clickstream")).unwrap();
    std::fs::copy(root().join("deploy/clickstream.toml"), etc.join("clickstream.toml")).unwrap();
    let schemas = etc.join("schemas");
    std::fs::create_dir_all(&schemas).unwrap();
    for e in std::fs::read_dir(root().join("schemas")).unwrap() {
        let p = e.unwrap().path();
        std::fs::copy(&p, schemas.join(p.file_name().unwrap())).unwrap();
    }
    let st = std::process::Command::new("chown").args(["-R", "10001:10001"]).arg(&var).status();
    assert!(st.unwrap().success());

    let topic = format!("raw-image-{}", std::process::id());
    services::create_topic(&topic, 2);
    services::produce_lines(
        &topic,
        &lines(&root().join("integration-tests/fixtures/events/edge_cases.jsonl")),
    );
    let bucket = services::fresh_bucket("image");
    let mut env: Vec<(String, String)> =
        services::s3_env().into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
    env.extend(
        [
            ("CLICKSTREAM__REPLAY__SCHEMAS", schemas.to_str().unwrap().to_owned()),
            ("CLICKSTREAM__RUN__STATE", var.join("state").to_str().unwrap().to_owned()),
            ("CLICKSTREAM__KAFKA__BROKERS", brokers()),
            ("CLICKSTREAM__KAFKA__TOPIC", topic.clone()),
            ("CLICKSTREAM__KAFKA__GROUP", format!("{topic}-g")),
            ("CLICKSTREAM__SINK__LOCATION", format!("s3://{bucket}/sessions")),
            ("CLICKSTREAM__RUN__CHECKPOINT_INTERVAL", "500ms".to_owned()),
            ("CLICKSTREAM__RUN__IDLE_TIMEOUT", "1s".to_owned()),
            ("CLICKSTREAM__ADMIN__LISTEN", "0.0.0.0:0".to_owned()),
            ("CLICKSTREAM__ADMIN__TOKEN", "image-token-0123456789abcdef01234567".to_owned()),
            ("HOME", var.to_str().unwrap().to_owned()),
        ]
        .map(|(k, v)| (k.to_owned(), v)),
    );
    let config = etc.join("clickstream.toml");
    let exe = bin.join("clickstream");
    let args = [
        "--reuid=10001",
        "--regid=10001",
        "--clear-groups",
        "--",
        exe.to_str().unwrap(),
        "run",
        "--config",
        config.to_str().unwrap(),
    ];
    let env_ref: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let p = integration_tests::Running::start_program("setpriv", &args, &env_ref);
    let admin = p.admin_addr().replace("0.0.0.0", "127.0.0.1");
    wait_for("readiness", 60, || {
        integration_tests::curl(&[&format!("http://{admin}/readyz")]).0 == 200
    });
    assert_eq!(integration_tests::curl(&[&format!("http://{admin}/healthz")]).0, 200);
    assert_eq!(integration_tests::curl(&[&format!("http://{admin}/schemas")]).0, 401);
    wait_for("session rows", 60, || !services::objects(&bucket, "sessions/sessions/").is_empty());
    terminate(p);
    // State was written as 10001, where the volume is.
    let meta = std::fs::metadata(var.join("state")).unwrap();
    assert_eq!(std::os::unix::fs::MetadataExt::uid(&meta), 10001);
}
