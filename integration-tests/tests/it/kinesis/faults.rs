//! Instances, leases and faults: takeover of a dead instance, a stalled one coming back, KPL
//! aggregates with a crash, throttling, expired iterators, a recreated stream.

use super::*;
use crate::kafka::terminate;

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
    terminate(a);
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
    terminate(p);
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
    // Everything is put before the stall ends: a pause in the input longer than the idle
    // timeout would close sessions early, which the oracle (no clock) never does.
    s.put(n / 3..n);
    wait_for("b to take the stalled instance's shards", 60, || {
        owners(&s.table) == BTreeMap::from([("b".to_owned(), 2)])
    });
    b.wait_log("Committed checkpoint", 60);
    // 40 s stalled in all, then it comes back believing it still owns its shards.
    std::thread::sleep(Duration::from_secs(30));
    a.signal("CONT");
    s.assert_done(240);
    // Whatever the stale instance did after it came back, it committed nothing over b.
    let fenced = a.logged("Another owner committed this split") || a.logged("Lease lost");
    assert!(fenced, "the stale instance noticed: {}", a.log().join("\n"));
    terminate(b);
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
    terminate(p);
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
    terminate(p);
}

#[test]
fn kinesis_recreated_stream_state_is_refused() {
    let s = Scenario::new("krecreate", 1_000, 1);
    let p = s.start("a", &[]);
    s.put(0..s.records.len());
    p.wait_log("Committed checkpoint", 60);
    terminate(p);
    s.stream.recreate(1);
    s.put(0..10);
    let p = s.start("a", &[]);
    let refused = p.wait_log("The split cannot start", 60);
    assert!(refused.contains("was built from kinesis:"), "{refused}");
    terminate(p);
}

#[test]
fn kinesis_iterator_expired_during_an_s3_outage_is_reissued() {
    use integration_tests::proxy::FaultProxy;
    // S3 is unreachable for "more than five minutes" (kinesalite's clock jumps 301 s while it
    // is): the split cannot commit, stops reading, and its fetch holds an iterator that has
    // expired by the time S3 is back.
    let url = var("CLICKSTREAM_KINESALITE_URL", "http://127.0.0.1:4568");
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("events.jsonl");
    integration_tests::generate(&input, 6_000, 4, "0.01");
    let data = std::fs::read(&input).unwrap();
    let kept: Vec<&[u8]> =
        data.split_inclusive(|&b| b == b'\n').filter(|l| l.len() <= 1_000_000).collect();
    std::fs::write(&input, kept.concat()).unwrap();
    let expected = oracle(&input, dir.path());
    let stream = Stream::create_at(&url, "koutage", 1);
    let bucket = services::fresh_bucket("koutage");
    let table = format!("leases-{}", stream.name);
    let s = Scenario { records: keyed_lines(&input), dir, expected, stream, bucket, table };
    let n = s.records.len();
    let s3 = FaultProxy::start(services::s3_env()[0].1.trim_start_matches("http://"));
    let p = s.start(
        "a",
        &[
            ("AWS_ENDPOINT_URL_KINESIS", &url),
            ("AWS_ENDPOINT_URL", &s3.url()),
            ("CLICKSTREAM__KINESIS__MAX_RECORDS", "200"),
        ],
    );
    s.put(0..n / 3);
    p.wait_log("Committed checkpoint", 60);
    s3.set_down(true);
    s.put(n / 3..2 * n / 3);
    std::thread::sleep(Duration::from_secs(5));
    let skew = std::process::Command::new(root().join("scripts/services"))
        .arg("kinesalite-skew")
        .status()
        .unwrap();
    assert!(skew.success(), "scripts/services kinesalite-skew");
    std::thread::sleep(Duration::from_secs(2));
    s3.set_down(false);
    s.put(2 * n / 3..n);
    p.wait_log("Shard iterator expired", 60);
    s.assert_done(180);
    terminate(p);
}

#[test]
fn kinesis_sigterm_hands_the_leases_over_at_once() {
    let s = Scenario::new("kterm", 4_000, 4);
    let n = s.records.len();
    // Only a release, not an expiry, can move the shards within one lease duration.
    let lease = [("CLICKSTREAM__KINESIS__LEASE_DURATION", "10s")];
    let a = s.start("a", &lease);
    let b = s.start("b", &lease);
    std::thread::scope(|scope| {
        // Records keep coming (no shard is quiet for the idle timeout, which would close
        // sessions the oracle keeps open) while the leases move.
        scope.spawn(|| {
            for chunk in (0..n).step_by(50) {
                s.put(chunk..(chunk + 50).min(n));
                std::thread::sleep(Duration::from_millis(400));
            }
        });
        wait_for("an even share", 120, || {
            owners(&s.table) == BTreeMap::from([("a".to_owned(), 2), ("b".to_owned(), 2)])
        });
        let stopped = std::time::Instant::now();
        terminate(b);
        wait_for("the peer to take the released leases", 60, || {
            owners(&s.table) == BTreeMap::from([("a".to_owned(), 4)])
        });
        assert!(
            stopped.elapsed() < Duration::from_secs(10),
            "released leases are taken at the next round, not after the lease duration: {:?}",
            stopped.elapsed()
        );
    });
    s.assert_done(180);
    terminate(a);
}

#[test]
fn kinesis_deleted_stream_is_a_clear_fatal_error() {
    let s = Scenario::new("kdeleted", 500, 1);
    let mut p = s.start("a", &[]);
    s.put(0..s.records.len());
    p.wait_log("Committed checkpoint", 60);
    s.stream
        .rt
        .block_on(s.stream.client.delete_stream().stream_name(&s.stream.name).send())
        .unwrap();
    let st = p.wait_exit(120);
    assert!(!st.success(), "a deleted stream ends the process with an error");
    let log = p.log().join("\n");
    assert!(log.contains("no longer exists"), "{log}");
}

#[test]
fn kinesis_at_timestamp_starts_new_shards_at_that_time() {
    // Records put before the configured time are not read: the expected rows are the oracle's
    // for the later records alone.
    let (s, before) = Scenario::later_half("kattime", 2_000, 9, 2);
    s.stream.put(&before);
    std::thread::sleep(Duration::from_millis(1500));
    let at = humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string();
    std::thread::sleep(Duration::from_millis(1500));
    s.put(0..s.records.len());
    let p = s.start(
        "a",
        &[
            ("CLICKSTREAM__KINESIS__INITIAL_POSITION", "at_timestamp"),
            ("CLICKSTREAM__KINESIS__AT_TIMESTAMP", &at),
        ],
    );
    s.assert_done(180);
    terminate(p);
}
