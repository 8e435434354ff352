//! `clickstream run` under what a cluster does to it: owners that stall and come back, slow
//! listings, crashes at every step of the commit protocol, a lost commit record, months of
//! checkpoints, S3 refusing requests. Real Apache Kafka and the S3 API server; faults come
//! from SIGSTOP, a failpoint, a fault proxy in front of the real server, or the server itself.

use crate::kafka::{
    Expected, assert_rows_equal, expected_rows, latest, lines, oracle, rows_in, terminate, wait_for,
};
use integration_tests::proxy::FaultProxy;
use integration_tests::services::{self, brokers};
use integration_tests::{Running, root};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// One topic, bucket and group, and the oracle's answer for their data.
pub(crate) struct Scenario {
    pub(crate) dir: tempfile::TempDir,
    pub(crate) expected: Expected,
    pub(crate) topic: String,
    pub(crate) group: String,
    pub(crate) bucket: String,
    pub(crate) records: Vec<Vec<u8>>,
    pub(crate) config: PathBuf,
    pub(crate) partitions: i32,
    /// The Kafka cluster.
    pub(crate) brokers: String,
}

/// The consumer settings of these tests: a group that notices a stalled member in seconds.
const CONFIG: &str = r#"
[kafka.properties]
"session.timeout.ms" = "6000"
"heartbeat.interval.ms" = "1000"
"max.poll.interval.ms" = "10000"

[run]
revoke_deadline = "3s"
"#;

impl Scenario {
    pub(crate) fn new(tag: &str, input: &Path, partitions: i32, versioned: bool) -> Scenario {
        Scenario::on(&brokers(), 1, tag, input, partitions, versioned)
    }

    /// A scenario on the cluster at `brokers`, its topic with `replicas` replicas.
    pub(crate) fn on(
        brokers: &str,
        replicas: i32,
        tag: &str,
        input: &Path,
        partitions: i32,
        versioned: bool,
    ) -> Scenario {
        let dir = tempfile::tempdir().unwrap();
        let expected = oracle(input, dir.path());
        let topic = format!("raw-{tag}-{}", std::process::id());
        services::create_topic_on(brokers, &topic, partitions, replicas);
        let bucket = services::fresh_bucket(tag);
        if versioned {
            services::enable_versioning(&bucket);
        }
        let config = dir.path().join("run.toml");
        std::fs::write(&config, CONFIG).unwrap();
        Scenario {
            records: lines(input),
            group: format!("{topic}-g"),
            dir,
            expected,
            topic,
            bucket,
            config,
            partitions,
            brokers: brokers.to_owned(),
        }
    }

    /// Starts an instance whose group member id sorts before the default ones (`rdkafka-…`):
    /// with one partition, the range assignor gives it the partition.
    pub(crate) fn start_first(&self, name: &str, extra: &[(&str, &str)]) -> Running {
        let config = self.dir.path().join(format!("{name}.toml"));
        let text = CONFIG
            .replace("[kafka.properties]\n", "[kafka.properties]\n\"client.id\" = \"aaa-first\"\n");
        std::fs::write(&config, text).unwrap();
        self.start_with(name, &config, extra)
    }

    pub(crate) fn produce(&self, range: std::ops::Range<usize>) {
        services::produce_lines_to(&self.brokers, &self.topic, &self.records[range]);
    }

    /// Starts an instance named `name` (its own state directory) with the test defaults,
    /// then `extra` settings (environment variables) over them.
    pub(crate) fn start(&self, name: &str, extra: &[(&str, &str)]) -> Running {
        self.start_with(name, &self.config, extra)
    }

    fn start_with(&self, name: &str, config: &Path, extra: &[(&str, &str)]) -> Running {
        let state = self.dir.path().join(name);
        let schemas = root().join("schemas");
        let sink = format!("s3://{}/v1", self.bucket);
        let mut env: Vec<(String, String)> =
            services::s3_env().into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
        for (k, v) in [
            ("CLICKSTREAM__KAFKA__BROKERS", self.brokers.clone()),
            ("CLICKSTREAM__KAFKA__TOPIC", self.topic.clone()),
            ("CLICKSTREAM__KAFKA__GROUP", self.group.clone()),
            ("CLICKSTREAM__SINK__LOCATION", sink),
            ("CLICKSTREAM__RUN__STATE", state.to_string_lossy().into_owned()),
            ("CLICKSTREAM__REPLAY__SCHEMAS", schemas.to_string_lossy().into_owned()),
            ("CLICKSTREAM__RUN__CHECKPOINT_INTERVAL", "500ms".into()),
            ("CLICKSTREAM__RUN__IDLE_TIMEOUT", "4s".into()),
            ("CLICKSTREAM__SESSION__ALLOWED_LATENESS", "7h".into()),
            ("CLICKSTREAM__ADMIN__LISTEN", "127.0.0.1:0".into()),
        ] {
            env.push((k.to_owned(), v));
        }
        let config = config.to_string_lossy().into_owned();
        Running::start_overriding(&["run", "--config", &config], env, extra)
    }

    /// The committed position of partition `p`.
    pub(crate) fn position(&self, p: i32) -> i64 {
        latest(&self.bucket, "v1", p)
            .and_then(|r| r["position"].as_str().map(|s| s.parse().unwrap()))
            .unwrap_or(0)
    }

    /// Waits until every produced record of every partition is committed.
    pub(crate) fn wait_committed(&self, records: usize, secs: u64) {
        wait_for("every record committed", secs, || {
            (0..self.partitions).map(|p| self.position(p)).sum::<i64>() >= records as i64
        });
    }

    /// Waits for every session row, then checks rows and dead letters against the oracle.
    pub(crate) fn assert_oracle(&self, secs: u64) {
        let want = expected_rows(&self.expected);
        wait_for("every session row in S3", secs, || rows_in(&self.bucket, "v1") >= want);
        assert_rows_equal(&self.bucket, "v1", &self.expected, self.dir.path());
    }
}

/// A generated input, shared by the tests of this file that use the same size and seed.
pub(crate) fn input(events: u64, seed: u64) -> PathBuf {
    static FILES: std::sync::Mutex<BTreeMap<(u64, u64), PathBuf>> =
        std::sync::Mutex::new(BTreeMap::new());
    let mut f = FILES.lock().unwrap();
    f.entry((events, seed))
        .or_insert_with(|| {
            let dir = std::env::temp_dir().join(format!("clickstream-it-{}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            let p = dir.join(format!("events-{events}-{seed}.jsonl"));
            integration_tests::generate(&p, events, seed, "0.02");
            p
        })
        .clone()
}

/// A reader of `sessions/` as Athena or `aws s3 sync` would be: it lists and reads every
/// 200 ms and fails on a duplicate row, an object that changes, or one that disappears.
struct Reader {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<Result<usize, String>>,
}

impl Reader {
    fn spawn(bucket: &str) -> Reader {
        let stop = Arc::new(AtomicBool::new(false));
        let (s, bucket) = (Arc::clone(&stop), bucket.to_owned());
        let thread = std::thread::spawn(move || {
            let mut seen: HashMap<String, String> = HashMap::new();
            let mut rows: BTreeSet<(String, i64)> = BTreeSet::new();
            loop {
                let last = s.load(Ordering::Acquire);
                let listing = services::listing(&bucket, "v1/sessions/");
                let now: HashMap<String, String> =
                    listing.into_iter().map(|(k, e, _)| (k, e)).collect();
                for (k, e) in &seen {
                    match now.get(k) {
                        None => return Err(format!("{k} disappeared")),
                        Some(e2) if e2 != e => return Err(format!("{k} changed")),
                        Some(_) => {}
                    }
                }
                for (k, e) in now {
                    if seen.contains_key(&k) {
                        continue;
                    }
                    let Some(body) = services::get(&bucket, &k) else {
                        return Err(format!("{k} listed but not readable"));
                    };
                    let mut text = String::new();
                    flate2::read::MultiGzDecoder::new(&body[..]).read_to_string(&mut text).unwrap();
                    for l in text.lines() {
                        let v: serde_json::Value = serde_json::from_str(l).unwrap();
                        let key = (
                            v["customer_id"].as_str().unwrap().to_owned(),
                            v["session_start"].as_i64().unwrap(),
                        );
                        if !rows.insert(key.clone()) {
                            return Err(format!("row {key:?} seen twice (again in {k})"));
                        }
                    }
                    seen.insert(k, e);
                }
                if last {
                    return Ok(rows.len());
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        });
        Reader { stop, thread }
    }

    fn finish(self) -> usize {
        self.stop.store(true, Ordering::Release);
        self.thread.join().unwrap().unwrap_or_else(|e| panic!("a reader of sessions/ saw: {e}"))
    }
}

/// Every key was written by one epoch; published keys exactly once; the commit record's
/// generations are unique and its epoch never goes back.
fn assert_writes_fenced(bucket: &str) {
    let versions = services::versions(bucket, "v1/");
    let mut epochs: BTreeMap<&str, BTreeSet<Option<&String>>> = BTreeMap::new();
    let mut count: BTreeMap<&str, usize> = BTreeMap::new();
    let mut records = Vec::new();
    for (k, body, meta) in &versions {
        if k.ends_with("/LATEST") {
            let r: serde_json::Value = serde_json::from_slice(body).unwrap();
            records.push((
                k.clone(),
                r["generation"].as_u64().unwrap(),
                r["epoch"].as_u64().unwrap(),
            ));
            continue;
        }
        epochs.entry(k).or_default().insert(meta.get("clickstream-epoch"));
        *count.entry(k).or_default() += 1;
    }
    for (k, e) in &epochs {
        assert!(e.len() == 1, "{k} was written by several epochs: {e:?}");
        if k.contains("/sessions/") || k.contains("/dead-letter/") {
            assert_eq!(count[k], 1, "{k} was written {} times", count[k]);
        }
    }
    records.sort_by_key(|r| (r.0.clone(), r.1));
    for w in records.windows(2) {
        if w[0].0 == w[1].0 {
            assert!(w[0].1 < w[1].1, "generation {} written twice in {}", w[0].1, w[0].0);
            assert!(w[0].2 <= w[1].2, "{}: epoch went back from {} to {}", w[0].0, w[0].2, w[1].2);
        }
    }
    assert!(!records.is_empty(), "no commit record was written");
}

/// Kafka's committed offsets never run ahead of the committed state.
pub(crate) fn assert_offsets_behind(sc: &Scenario) {
    let committed = services::committed_on(&sc.brokers, &sc.topic, &sc.group, sc.partitions);
    for (p, c) in committed.iter().enumerate() {
        let pos = sc.position(p as i32);
        assert!(*c <= pos, "partition {p}: Kafka offset {c} ahead of the committed position {pos}");
    }
}

#[test]
fn a_stalled_owner_that_resumes_is_fenced_and_no_row_is_lost_or_doubled() {
    let input = input(20_000, 11);
    let sc = Scenario::new("stall", &input, 1, true);
    let half = sc.records.len() / 2;
    sc.produce(0..half);
    let reader = Reader::spawn(&sc.bucket);
    // A checkpoints rarely: when it stalls, it holds unflushed events.
    let a = sc.start("a", &[("CLICKSTREAM__RUN__CHECKPOINT_INTERVAL", "30s")]);
    a.wait_log("Split assigned", 60);
    wait_for("A to read the first half", 60, || {
        let addr = a.admin_addr();
        let (_, m) = integration_tests::curl(&[&format!("http://{addr}/metrics")]);
        m.lines().any(|l| {
            l.starts_with("clickstream_records_read{partition=\"p0000\"}")
                && l.ends_with(&format!(" {half}"))
        })
    });
    a.signal("STOP");
    let b = sc.start("b", &[("CLICKSTREAM__RUN__CHECKPOINT_INTERVAL", "1s")]);
    b.wait_log("Split assigned", 60);
    sc.produce(half..sc.records.len());
    sc.wait_committed(sc.records.len(), 120);
    let generation = latest(&sc.bucket, "v1", 0).unwrap()["generation"].as_u64().unwrap();
    assert!(generation >= 3, "B committed at least twice after its claim");
    // A resumes: its 30 s interval has passed, so it cuts at once; it must write nothing
    // under a key another epoch wrote, nor move the record back.
    a.signal("CONT");
    wait_for("A to learn it lost the split", 60, || {
        a.logged("Another owner committed this split") || a.logged("lost\":true")
    });
    eprintln!(
        "A on resuming: {}",
        if a.logged("Another owner committed this split") {
            "its commit was refused (fenced)"
        } else {
            "its consumer found the assignment lost first"
        }
    );
    // Sessions close once the split is quiet (idle timeout), whoever owns it by then.
    sc.assert_oracle(90);
    terminate(b);
    terminate(a);
    sc.assert_oracle(10);
    let seen = reader.finish();
    assert_eq!(seen, expected_rows(&sc.expected), "the reader saw every row once");
    assert_writes_fenced(&sc.bucket);
    assert_offsets_behind(&sc);
}

#[test]
fn a_commit_that_arrives_after_its_split_moved_is_refused() {
    let input = input(8_000, 3);
    let sc = Scenario::new("latecommit", &input, 1, true);
    let half = sc.records.len() / 2;
    sc.produce(0..half);
    let reader = Reader::spawn(&sc.bucket);
    // A's writes of its commit record take minutes (an S3 brownout, a congested link).
    let proxy = FaultProxy::start(services::s3_env()[0].1.trim_start_matches("http://"));
    let url = proxy.url();
    let a = sc
        .start("a", &[("AWS_ENDPOINT_URL", &url), ("CLICKSTREAM__RUN__SHUTDOWN_DEADLINE", "90s")]);
    sc.wait_committed(half, 60);
    proxy.hold("/_state/p0000/LATEST", Duration::from_mins(2));
    sc.produce(half..sc.records.len());
    wait_for("A's commit to be held", 60, || proxy.held() >= 1);
    // B joins and takes the partition (its member id sorts first); A's handover cannot finish
    // in time, so the group moves on without it.
    let b = sc.start_first("b", &[]);
    b.wait_log("Claimed split", 60);
    sc.wait_committed(sc.records.len(), 120);
    // A's old request reaches S3 now: its condition fails, and A stops writing.
    proxy.release();
    a.wait_log("Another owner committed this split", 60);
    sc.assert_oracle(90);
    terminate(b);
    terminate(a);
    let seen = reader.finish();
    assert_eq!(seen, expected_rows(&sc.expected), "the reader saw every row once");
    assert_writes_fenced(&sc.bucket);
    assert_offsets_behind(&sc);
}

#[test]
fn a_slow_listing_never_deletes_what_a_newer_owner_committed() {
    let input = input(8_000, 5);
    let sc = Scenario::new("slowlist", &input, 1, false);
    let third = sc.records.len() / 3;
    // C leaves committed state behind (epoch 1).
    sc.produce(0..third);
    let c = sc.start("c", &[]);
    sc.wait_committed(third, 60);
    terminate(c);
    // What a crashed attempt of C's epoch would leave: garbage for the next owner's sweep.
    let garbage = "v1/_state/p0000/e0000000001/sst/999999.sst";
    services::put(&sc.bucket, garbage, b"left by a crashed attempt");
    // A's listing of the split's state (its sweep after taking the split) is held far past
    // max.poll.interval.ms (10 s here).
    let proxy = FaultProxy::start(services::s3_env()[0].1.trim_start_matches("http://"));
    proxy.hold("list-type=2", Duration::from_secs(90));
    let url = proxy.url();
    let a = sc
        .start("a", &[("AWS_ENDPOINT_URL", &url), ("CLICKSTREAM__RUN__SHUTDOWN_DEADLINE", "60s")]);
    a.wait_log("Claimed split", 60);
    wait_for("A's listing to be held", 30, || proxy.held() >= 1);
    // B joins; its client id sorts first, so the range assignor gives it the partition.
    let b = sc.start_first("b", &[]);
    b.wait_log("Claimed split", 60);
    sc.produce(third..sc.records.len());
    sc.wait_committed(sc.records.len(), 120);
    let committed = latest(&sc.bucket, "v1", 0).unwrap();
    assert!(committed["epoch"].as_u64().unwrap() >= 3, "{committed}");
    let published = keys(&sc.bucket, "v1/sessions/");
    let snapshot: Vec<String> = committed["snapshot"]["files"]
        .as_object()
        .unwrap()
        .values()
        .map(|k| format!("v1/{}", k.as_str().unwrap()))
        .collect();
    // A's listing goes through now, holding B's objects; A acts on it.
    proxy.release();
    wait_for("A to finish with the split", 90, || {
        a.logged("Swept state objects") || a.logged("Another owner committed this split")
    });
    std::thread::sleep(Duration::from_secs(3));
    for l in a.log().iter().filter(|l| l.contains("Swept") || l.contains("Another owner")) {
        eprintln!("A: {l}");
    }
    assert!(services::get(&sc.bucket, garbage).is_none(), "garbage of a dead epoch was not swept");
    let after = keys(&sc.bucket, "v1/sessions/");
    assert!(
        published.is_subset(&after),
        "published objects disappeared: {:?}",
        published.difference(&after).collect::<Vec<_>>()
    );
    let present = keys(&sc.bucket, "v1/_state/");
    for k in &snapshot {
        assert!(present.contains(k), "{k}, a file of the committed snapshot, was deleted");
    }
    sc.assert_oracle(90);
    terminate(b);
    terminate(a);
}

fn keys(bucket: &str, prefix: &str) -> BTreeSet<String> {
    services::listing(bucket, prefix).into_iter().map(|(k, _, _)| k).collect()
}

#[test]
fn a_crash_at_every_step_of_the_commit_protocol_leaves_the_oracles_rows() {
    let input = input(3_000, 21);
    for (i, point) in clickstream::runtime::failpoint::POINTS.iter().enumerate() {
        let sc = Scenario::new(&format!("crash{i}"), &input, 1, false);
        sc.produce(0..sc.records.len());
        let reader = Reader::spawn(&sc.bucket);
        // Small checkpoints, so that several commit before the armed one.
        let small = [("CLICKSTREAM__RUN__CHECKPOINT_BYTES", "150000")];
        let at =
            if point.starts_with("claim") { format!("{point}:1") } else { format!("{point}:2") };
        let mut first = sc.start("a", &[small[0], ("CLICKSTREAM_FAILPOINT", &at)]);
        let st = first.wait_exit(120);
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&st),
            Some(6),
            "{point}: the process did not abort there ({st}); log:\n{}",
            first.log().join("\n")
        );
        let second = sc.start("a", &small);
        sc.wait_committed(sc.records.len(), 120);
        sc.assert_oracle(60);
        terminate(second);
        assert_eq!(reader.finish(), expected_rows(&sc.expected), "{point}: rows the reader saw");
        eprintln!("crash at {at}: output equals the oracle");
    }
}

#[test]
fn an_s3_outage_longer_than_max_poll_interval_keeps_the_member_in_the_group() {
    let input = input(6_000, 23);
    let sc = Scenario::new("s3away", &input, 2, false);
    let half = sc.records.len() / 2;
    sc.produce(0..half);
    let proxy = FaultProxy::start(services::s3_env()[0].1.trim_start_matches("http://"));
    let url = proxy.url();
    let a = sc.start("a", &[("AWS_ENDPOINT_URL", &url)]);
    sc.wait_committed(half, 60);
    proxy.set_down(true);
    sc.produce(half..sc.records.len());
    // Twice max.poll.interval.ms (10 s here): the splits wait on S3, the poll thread polls on.
    std::thread::sleep(Duration::from_secs(20));
    assert!(a.logged("S3 request failed; retrying"), "S3 was not missed");
    proxy.set_down(false);
    sc.wait_committed(sc.records.len(), 120);
    sc.assert_oracle(60);
    assert!(!a.logged("Partitions revoked"), "the member left the group during the outage");
    terminate(a);
}

#[test]
fn a_missing_commit_record_stops_the_split_until_an_operator_resets_it() {
    let input = input(4_000, 9);
    let sc = Scenario::new("reset", &input, 1, false);
    let half = sc.records.len() / 2;
    sc.produce(0..half);
    let a = sc.start("a", &[]);
    sc.wait_committed(half, 60);
    wait_for("rows", 60, || rows_in(&sc.bucket, "v1") > 0);
    terminate(a);
    let before = services::objects(&sc.bucket, "v1/sessions/");
    // A lifecycle rule (or a person) removes the commit record.
    services::delete(&sc.bucket, "v1/_state/p0000/LATEST");
    let b = sc.start("b", &[]);
    let addr = b.admin_addr();
    b.wait_log("The split cannot start", 60);
    wait_for("/readyz to say why", 30, || {
        let (code, body) = integration_tests::curl(&[&format!("http://{addr}/readyz")]);
        code == 503 && body.contains("p0000") && body.contains("missing")
    });
    assert_eq!(services::objects(&sc.bucket, "v1/sessions/"), before, "published rows changed");
    // The operator resets it, with a reason; the running instance picks it up.
    let mut env: Vec<(String, String)> =
        services::s3_env().into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
    env.extend([
        ("CLICKSTREAM__KAFKA__BROKERS".to_owned(), sc.brokers.clone()),
        ("CLICKSTREAM__KAFKA__TOPIC".to_owned(), sc.topic.clone()),
        ("CLICKSTREAM__KAFKA__GROUP".to_owned(), sc.group.clone()),
        ("CLICKSTREAM__SINK__LOCATION".to_owned(), format!("s3://{}/v1", sc.bucket)),
        ("CLICKSTREAM__SESSION__ALLOWED_LATENESS".to_owned(), "7h".to_owned()),
    ]);
    let reset = |args: &[&str]| {
        std::process::Command::new(integration_tests::bin())
            .args(["state", "reset", "--config", sc.config.to_str().unwrap(), "--partition", "0"])
            .args(args)
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .output()
            .unwrap()
    };
    let refused = reset(&[]);
    assert!(!refused.status.success(), "a reset without a reason");
    let o = reset(&["--reason", "LATEST removed by a lifecycle rule (test)"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let rec: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(rec["reset"]["reason"], "LATEST removed by a lifecycle rule (test)");
    assert_eq!(rec["position"].as_str().unwrap().parse::<usize>().unwrap(), half);
    assert!(String::from_utf8_lossy(&o.stderr).contains("Split reset"));
    assert_eq!(services::objects(&sc.bucket, "v1/_splits/p0000/resets/").len(), 1);
    // A second reset of the now good record is refused without --force.
    assert!(!reset(&["--reason", "again"]).status.success());
    b.wait_log("Split assigned", 60);
    wait_for("/readyz", 30, || {
        integration_tests::curl(&[&format!("http://{addr}/readyz")]).0 == 200
    });
    sc.produce(half..sc.records.len());
    sc.wait_committed(sc.records.len(), 60);
    terminate(b);
    let after = services::objects(&sc.bucket, "v1/sessions/");
    for (k, body) in &before {
        assert_eq!(after.get(k), Some(body), "{k} changed or disappeared");
    }
    assert!(after.len() > before.len(), "no new output after the reset");
}

#[test]
fn two_thousand_checkpoints_keep_the_state_objects_bounded() {
    let input = input(3_000, 13);
    let sc = Scenario::new("trickle", &input, 1, false);
    let stop = Arc::new(AtomicBool::new(false));
    let producer = {
        let (stop, topic, records) = (Arc::clone(&stop), sc.topic.clone(), sc.records.clone());
        let trickle = services::Trickle::new(&sc.brokers);
        std::thread::spawn(move || {
            for v in records.iter().cycle() {
                if stop.load(Ordering::Acquire) {
                    break;
                }
                // One partition: any key will do; produce's stable one.
                trickle.send(&topic, clickstream::produce::fallback_key(v).as_bytes(), v);
                std::thread::sleep(Duration::from_millis(4));
            }
        })
    };
    let a = sc.start("a", &[("CLICKSTREAM__RUN__CHECKPOINT_INTERVAL", "5ms")]);
    let started = Instant::now();
    let mut looks = Vec::new();
    for at in [100u64, 500, 1000, 1500, 2000] {
        wait_for("checkpoints", 600, || {
            latest(&sc.bucket, "v1", 0).is_some_and(|r| r["checkpoint"].as_u64().unwrap() >= at)
        });
        // Objects in flight (the next checkpoint's uploads, the last one's files not yet
        // collected) come and go: the fewest of a few looks is what stays.
        let l = (0..5)
            .map(|_| {
                std::thread::sleep(Duration::from_millis(200));
                StateLook::take(&sc.bucket)
            })
            .min_by_key(|l| l.garbage.len())
            .unwrap();
        eprintln!("after {at} checkpoints ({:.0} s): {l}", started.elapsed().as_secs_f64());
        looks.push(l);
    }
    stop.store(true, Ordering::Release);
    producer.join().unwrap();
    terminate(a);
    // How many table files a snapshot holds is the LSM's business: with four column families
    // flushed at every checkpoint it swings with how far compaction lags (under load, up to
    // RocksDB's level-0 stop trigger per family). What must not grow with checkpoints is
    // what nothing references, how many snapshots are kept, their descriptor files, and bytes.
    let (settled, last) = (&looks[1], &looks[looks.len() - 1]);
    for l in &looks {
        assert!(l.garbage.len() <= 16, "unreferenced state objects stay: {l}");
        assert_eq!(l.snapshots, looks[0].snapshots, "the kept snapshots grew: {l}");
        assert!(l.descriptors <= 6 * l.snapshots, "descriptor files grew: {l}");
        assert!(l.manifest_bytes <= 256 << 10, "a MANIFEST grew: {l}");
        assert!(l.tables <= l.snapshots * 4 * (36 + 7), "more table files than an LSM holds: {l}");
    }
    assert!(
        last.bytes <= settled.bytes * 3 / 2 + 200_000,
        "state bytes grew with checkpoints: {settled} → {last}"
    );
}

/// The split's state objects beside the commit record that references them.
struct StateLook {
    /// Objects no kept snapshot references (nor the record itself, nor its staged output).
    garbage: Vec<String>,
    /// Snapshots the record keeps.
    snapshots: usize,
    /// Distinct table files they reference.
    tables: usize,
    /// Their other files (MANIFEST, CURRENT, OPTIONS, logs).
    descriptors: usize,
    /// The largest MANIFEST.
    manifest_bytes: i64,
    /// Bytes of every object under the split's state prefix.
    bytes: i64,
}

impl StateLook {
    fn take(bucket: &str) -> Self {
        let before = latest(bucket, "v1", 0).unwrap();
        let listing = services::listing(bucket, "v1/_state/p0000/");
        let after = latest(bucket, "v1", 0).unwrap();
        let snapshots = |r: &serde_json::Value| {
            let mut s: Vec<serde_json::Value> =
                r["retained"].as_array().cloned().unwrap_or_default();
            s.push(r["snapshot"].clone());
            s
        };
        let files = |s: &serde_json::Value| -> Vec<String> {
            s["files"].as_object().map_or_else(Vec::new, |f| {
                f.values().map(|k| format!("v1/{}", k.as_str().unwrap())).collect()
            })
        };
        let mut referenced = std::collections::BTreeSet::new();
        for r in [&before, &after] {
            referenced.extend(snapshots(r).iter().flat_map(files));
            if let Some(b) = r["pending"]["bundle"].as_str() {
                referenced.insert(format!("v1/{b}"));
            }
        }
        let kept = snapshots(&after);
        let named: std::collections::BTreeSet<String> = kept.iter().flat_map(files).collect();
        let table = |k: &&String| k.contains("/sst/");
        let size = |k: &str| listing.iter().find(|(n, _, _)| n == k).map_or(0, |(_, _, b)| *b);
        Self {
            garbage: listing
                .iter()
                .map(|(k, _, _)| k.clone())
                .filter(|k| !referenced.contains(k) && !k.ends_with("/LATEST"))
                .collect(),
            snapshots: kept.len(),
            tables: named.iter().filter(table).count(),
            descriptors: named.iter().filter(|k| !table(k)).count(),
            manifest_bytes: named
                .iter()
                .filter(|k| k.contains("MANIFEST"))
                .map(|k| size(k))
                .max()
                .unwrap_or(0),
            bytes: listing.iter().map(|(_, _, b)| b).sum(),
        }
    }
}

impl std::fmt::Display for StateLook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} snapshots kept: {} table files, {} descriptors (MANIFEST ≤ {} B); {} B in all; unreferenced: {:?}",
            self.snapshots,
            self.tables,
            self.descriptors,
            self.manifest_bytes,
            self.bytes,
            self.garbage
        )
    }
}

#[test]
fn a_removed_bucket_turns_readiness_off_and_the_process_exits_after_the_deadline() {
    let input = input(3_000, 17);
    let sc = Scenario::new("nobucket", &input, 1, false);
    let half = sc.records.len() / 2;
    sc.produce(0..half);
    let mut a = sc.start("a", &[("CLICKSTREAM__RUN__PERMANENT_ERROR_DEADLINE", "10s")]);
    let addr = a.admin_addr();
    sc.wait_committed(half, 60);
    services::delete_bucket(&sc.bucket);
    let removed = Instant::now();
    sc.produce(half..sc.records.len());
    wait_for("/readyz to fail on the sink", 20, || {
        let (code, body) = integration_tests::curl(&[&format!("http://{addr}/readyz")]);
        code == 503 && body.contains("NoSuchBucket")
    });
    eprintln!("readiness off {:.1}s after the bucket went", removed.elapsed().as_secs_f64());
    let st = a.wait_exit(60);
    assert!(!st.success(), "exit status {st}");
    assert!(removed.elapsed() >= Duration::from_secs(10), "exited before the deadline");
    assert!(a.logged("S3 keeps refusing requests"));
}

#[test]
fn access_denied_turns_readiness_off_and_the_process_exits_after_the_deadline() {
    let input = input(3_000, 17);
    let sc = Scenario::new("denied", &input, 1, false);
    let half = sc.records.len() / 2;
    sc.produce(0..half);
    let proxy = FaultProxy::start(services::s3_env()[0].1.trim_start_matches("http://"));
    let url = proxy.url();
    let mut a = sc.start(
        "a",
        &[("AWS_ENDPOINT_URL", &url), ("CLICKSTREAM__RUN__PERMANENT_ERROR_DEADLINE", "10s")],
    );
    let addr = a.admin_addr();
    sc.wait_committed(half, 60);
    proxy.set_deny(true);
    let denied = Instant::now();
    sc.produce(half..sc.records.len());
    wait_for("/readyz to fail on the sink", 20, || {
        let (code, body) = integration_tests::curl(&[&format!("http://{addr}/readyz")]);
        code == 503 && body.contains("AccessDenied")
    });
    eprintln!("readiness off {:.1}s after access was denied", denied.elapsed().as_secs_f64());
    let st = a.wait_exit(60);
    assert!(!st.success(), "exit status {st}");
    assert!(denied.elapsed() >= Duration::from_secs(10), "exited before the deadline");
    // Access comes back: a new instance takes over and nothing was lost.
    proxy.set_deny(false);
    let b = sc.start("b", &[]);
    sc.wait_committed(sc.records.len(), 60);
    sc.assert_oracle(60);
    terminate(b);
}

/// Lines of random base64: their dead letters barely compress, so one checkpoint's output is
/// a large (multipart) object.
fn junk(lines: usize, len: usize) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    (0..lines)
        .map(|i| {
            let line: Vec<u8> = (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    alphabet[(x % 64) as usize]
                })
                .collect();
            (format!("junk-{i}").into_bytes(), line)
        })
        .collect()
}

#[test]
fn no_multipart_upload_is_left_behind_by_a_sigterm_or_a_crash_during_a_large_upload() {
    let input = input(3_000, 19);
    let sc = Scenario::new("multipart", &input, 1, false);
    services::produce_to(&sc.brokers, &sc.topic, &junk(24_000, 1_000));
    let proxy = FaultProxy::start(services::s3_env()[0].1.trim_start_matches("http://"));
    proxy.throttle(1_500_000);
    let url = proxy.url();
    let env = [
        ("AWS_ENDPOINT_URL", url.as_str()),
        ("CLICKSTREAM__RUN__CHECKPOINT_INTERVAL", "5s"),
        ("CLICKSTREAM__RUN__SHUTDOWN_DEADLINE", "3s"),
    ];
    let uploading =
        || proxy.requests().iter().any(|r| r.starts_with("POST") && r.contains("uploads"));
    // SIGTERM while the staged output goes up in parts: the final checkpoint cannot finish
    // within the deadline, and its upload is aborted.
    let mut a = sc.start("a", &env);
    wait_for("the upload to start", 120, uploading);
    a.signal("TERM");
    let st = a.wait_exit(60);
    assert!(st.code().is_some(), "{st}");
    assert_eq!(
        services::multipart_uploads(&sc.bucket),
        Vec::<String>::new(),
        "after SIGTERM; log:\n{}",
        a.log()
            .iter()
            .filter(|l| !l.contains("Committed checkpoint"))
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
    // SIGKILL during the upload: nothing can abort it then; the next owner's recovery does.
    let before = proxy.requests().len();
    let b = sc.start("b", &env);
    wait_for("the upload to start again", 120, || {
        proxy.requests()[before..].iter().any(|r| r.starts_with("POST") && r.contains("uploads"))
    });
    std::thread::sleep(Duration::from_secs(2));
    drop(b);
    assert!(
        !services::multipart_uploads(&sc.bucket).is_empty(),
        "the kill left no upload to clean"
    );
    proxy.throttle(0);
    let c = sc.start("c", &[("CLICKSTREAM__RUN__CHECKPOINT_INTERVAL", "1s")]);
    c.wait_log("Swept state objects", 60);
    wait_for("the upload to be aborted", 30, || services::multipart_uploads(&sc.bucket).is_empty());
    terminate(c);
}
