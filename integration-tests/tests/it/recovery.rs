//! Kill/restart: SIGKILL at many moments, re-run the same command, and the output must be
//! byte-for-byte the output of an uninterrupted run.

use integration_tests::{bin, generate, run, summary, tree};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

/// The replay command under test; `every` is the count-based checkpoint interval (0: none).
fn args(input: &str, out: &str, state: &str, every: &str) -> Vec<String> {
    let schemas = integration_tests::root().join("schemas").to_string_lossy().to_string();
    [
        "replay",
        "--schemas",
        &schemas,
        "--output",
        out,
        "--state",
        state,
        "--checkpoint-every",
        every,
        "--allowed-lateness",
        "20m",
        input,
    ]
    .map(str::to_owned)
    .to_vec()
}

fn spawn_and_kill(a: &[String], after: Duration) -> bool {
    let mut child = Command::new(bin())
        .args(a)
        .env("RUST_LOG", "error")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(after);
    let finished = child.try_wait().unwrap().is_some();
    let _ = child.kill(); // SIGKILL on Unix
    let _ = child.wait();
    !finished
}

#[test]
fn sigkill_at_any_moment_then_rerun_gives_identical_output() {
    let dir = tempfile::tempdir().unwrap();
    let d = |p: &str| dir.path().join(p).to_string_lossy().to_string();
    let input = d("in.jsonl");
    generate(Path::new(&input), 60_000, 11, "0.02");

    let reference = run(&args(&input, &d("ref"), &d("ref-state"), "1500")
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>());
    assert!(reference.status.success(), "{}", String::from_utf8_lossy(&reference.stderr));
    let want = tree(Path::new(&d("ref")));
    assert!(want.keys().any(|k| k.starts_with("dead-letter/")));
    assert!(want.keys().filter(|k| k.starts_with("sessions/")).count() > 10);

    let mut killed_mid_run = 0;
    for (i, ms) in [3u64, 15, 40, 80, 140, 220, 350].into_iter().enumerate() {
        let (out, state) = (d(&format!("out{i}")), d(&format!("state{i}")));
        let a = args(&input, &out, &state, "1500");
        // Kill it twice at different moments before letting it finish.
        for delay in [ms, ms / 2 + 1] {
            if spawn_and_kill(&a, Duration::from_millis(delay))
                && !Path::new(&out).join("_SUCCESS").exists()
            {
                killed_mid_run += 1;
            }
        }
        let fin = run(&a.iter().map(String::as_str).collect::<Vec<_>>());
        assert!(fin.status.success(), "{}", String::from_utf8_lossy(&fin.stderr));
        assert_eq!(summary(&fin), summary(&reference), "summary after kills at {ms} ms");
        let got = tree(Path::new(&out));
        assert_eq!(
            got.keys().collect::<Vec<_>>(),
            want.keys().collect::<Vec<_>>(),
            "file names after kills at {ms} ms"
        );
        for (k, v) in &want {
            assert!(got[k] == *v, "{k} differs after kills at {ms} ms");
        }
    }
    assert!(
        killed_mid_run >= 3,
        "only {killed_mid_run} kills landed mid-run: the test did not test recovery"
    );
}

#[test]
fn sigint_on_a_silent_pipe_checkpoints_then_the_rerun_completes() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    generate(&input, 20_000, 13, "0.02");
    let data = std::fs::read(&input).unwrap();
    let half = data[..data.len() / 2].iter().rposition(|&b| b == b'\n').unwrap() + 1;
    let schemas = integration_tests::root().join("schemas").to_string_lossy().to_string();
    let out = dir.path().join("out").to_string_lossy().to_string();
    // The re-run feeds the same stream again from its start: it names it to resume it.
    let a = ["replay", "--schemas", &schemas, "--output", &out, "--stdin-id", "feed", "-"];

    // Half the input, then the pipe stays open and silent: SIGINT must not wait for more.
    let mut child = Command::new(bin())
        .args(a)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(&data[..half]).unwrap();
    std::thread::sleep(Duration::from_millis(800));
    let st = Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap();
    assert!(st.success());
    let waited = child.wait_with_output().unwrap();
    drop(stdin);
    assert_eq!(waited.status.code(), Some(130), "{}", String::from_utf8_lossy(&waited.stderr));
    assert!(String::from_utf8_lossy(&waited.stderr).contains("run the same command again"));
    assert!(!Path::new(&out).join("_SUCCESS").exists());

    let mut again = Command::new(bin())
        .args(a)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    again.stdin.take().unwrap().write_all(&data).unwrap();
    let fin = again.wait_with_output().unwrap();
    assert!(fin.status.success());

    let ref_out = dir.path().join("ref").to_string_lossy().to_string();
    let reference =
        run(&["replay", "--schemas", &schemas, "--output", &ref_out, input.to_str().unwrap()]);
    assert_eq!(summary(&fin), summary(&reference));
    assert_eq!(
        integration_tests::rows(Path::new(&out), "sessions/"),
        integration_tests::rows(Path::new(&ref_out), "sessions/")
    );
    assert_eq!(
        integration_tests::rows(Path::new(&out), "dead-letter/").len(),
        integration_tests::rows(Path::new(&ref_out), "dead-letter/").len()
    );
}

#[test]
fn kills_under_time_based_checkpoints_leave_the_same_rows() {
    // Wall-clock barriers cut a re-run's intervals differently from the killed run's: recovery
    // must drop what the killed run wrote after its last commit, or rows would appear twice.
    let dir = tempfile::tempdir().unwrap();
    let d = |p: &str| dir.path().join(p).to_string_lossy().to_string();
    let input = d("in.jsonl");
    generate(Path::new(&input), 40_000, 17, "0.02");
    let timed = |a: &[String]| {
        Command::new(bin())
            .args(a)
            .env("CLICKSTREAM__CHECKPOINT__INTERVAL", "20ms")
            .env("RUST_LOG", "error")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    };
    let reference =
        timed(&args(&input, &d("ref"), &d("ref-state"), "0")).wait_with_output().unwrap();
    assert!(reference.status.success());
    let want_rows = integration_tests::rows(Path::new(&d("ref")), "sessions/");
    let want_dead = integration_tests::rows(Path::new(&d("ref")), "dead-letter/");
    let mut mid_run = 0;
    for (i, ms) in [20u64, 60, 120, 200].into_iter().enumerate() {
        let a = args(&input, &d(&format!("out{i}")), &d(&format!("state{i}")), "0");
        let mut child = timed(&a);
        std::thread::sleep(Duration::from_millis(ms));
        let _ = child.kill();
        let _ = child.wait();
        if !Path::new(&d(&format!("out{i}"))).join("_SUCCESS").exists() {
            mid_run += 1;
        }
        let fin = timed(&a).wait_with_output().unwrap();
        assert!(fin.status.success(), "re-run after a kill at {ms} ms");
        assert_eq!(summary(&fin), summary(&reference), "summary after a kill at {ms} ms");
        let out = d(&format!("out{i}"));
        assert_eq!(
            integration_tests::rows(Path::new(&out), "sessions/"),
            want_rows,
            "rows after a kill at {ms} ms"
        );
        assert_eq!(
            integration_tests::rows(Path::new(&out), "dead-letter/"),
            want_dead,
            "dead letters after a kill at {ms} ms"
        );
    }
    assert!(mid_run >= 2, "only {mid_run} kills landed mid-run: the test did not test recovery");
}

/// State larger than its memory budget: sessions are evicted and read back, ids looked up in
/// `RocksDB`; kills at any moment and the re-run still give the uninterrupted run's bytes.
#[test]
fn sigkill_with_state_beyond_a_small_memory_budget_gives_identical_output() {
    let dir = tempfile::tempdir().unwrap();
    let d = |p: &str| dir.path().join(p).to_string_lossy().to_string();
    let input = d("in.jsonl");
    // 200k events over one day and 150k customers, with 6 h of lateness: ~50k customers have
    // an open session at any time, more than a 16 MiB budget holds (bench/scale's generator).
    let generator = bin().parent().unwrap().join("examples").join("scale_gen");
    let data = Command::new(&generator).args(["200000", "150000", "3"]).output().unwrap();
    assert!(data.status.success(), "{} (build it with --all-targets)", generator.display());
    std::fs::write(&input, &data.stdout).unwrap();
    let args = |input: &str, out: &str, state: &str, every: &str| {
        let mut a = args(input, out, state, every);
        let late = a.iter().position(|x| x == "20m").unwrap();
        a[late] = "6h".into();
        a
    };
    let reference = run(&args(&input, &d("ref"), &d("ref-state"), "5000")
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>());
    assert!(reference.status.success(), "{}", String::from_utf8_lossy(&reference.stderr));
    let want = tree(Path::new(&d("ref")));

    let small = |name: &str| {
        let mut a = args(&input, &d(name), &d(&format!("{name}-state")), "5000");
        a.splice(1..1, ["--memory-budget".to_owned(), "16MiB".to_owned()]);
        a
    };
    let same = |out: &str, what: &str| {
        let got = tree(Path::new(&d(out)));
        assert_eq!(got.keys().collect::<Vec<_>>(), want.keys().collect::<Vec<_>>(), "{what}");
        for (k, v) in &want {
            assert!(got[k] == *v, "{k} differs from the default budget's output ({what})");
        }
    };
    // Uninterrupted with the small budget: the budget binds, the bytes do not change.
    let once = Command::new(bin()).args(small("once")).env("RUST_LOG", "info").output().unwrap();
    assert!(once.status.success(), "{}", String::from_utf8_lossy(&once.stderr));
    assert_eq!(summary(&once), summary(&reference));
    same("once", "uninterrupted");
    let log = String::from_utf8_lossy(&once.stderr);
    let evicted =
        log.lines().filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok()).any(|v| {
            let (open, cached) = (v["open_customers"].as_u64(), v["cached_customers"].as_u64());
            matches!((open, cached), (Some(o), Some(c)) if o > 30_000 && c < o * 4 / 5)
        });
    assert!(evicted, "the cache never held less than 4/5 of the open customers:\n{log}");

    // Killed at several moments, state read back from disk each time.
    let a = small("killed");
    let mut killed = 0;
    for ms in [120u64, 300, 600] {
        if spawn_and_kill(&a, Duration::from_millis(ms))
            && !Path::new(&d("killed")).join("_SUCCESS").exists()
        {
            killed += 1;
        }
    }
    let fin = run(&a.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(fin.status.success(), "{}", String::from_utf8_lossy(&fin.stderr));
    assert_eq!(summary(&fin), summary(&reference));
    same("killed", "after kills");
    assert!(killed >= 1, "no kill landed mid-run: the test did not test recovery");
}
