//! Replay inputs that change under a resume or while followed: stdin, files replaced by others
//! of the same name and size, followed files rotated or truncated, lines that never end, and a
//! followed pipe that closes.

use integration_tests::{Running, bin, generate, replay, root, rows, summary};
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn schemas() -> String {
    root().join("schemas").to_string_lossy().to_string()
}

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

/// `replay` of stdin with `extra` flags: writes `data`, and closes stdin unless `hold` (then
/// SIGINT after a while, as for a feed that stalls).
fn replay_stdin(out: &Path, extra: &[&str], data: &[u8], hold: bool) -> std::process::Output {
    let mut child = Command::new(bin())
        .args(["replay", "--schemas", &schemas(), "--output", out.to_str().unwrap()])
        .args(extra)
        .arg("-")
        .env("RUST_LOG", "warn")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    // A refused resume exits without reading: the pipe may be closed under the write.
    let _ = stdin.write_all(data);
    if !hold {
        drop(stdin);
        return child.wait_with_output().unwrap();
    }
    std::thread::sleep(Duration::from_millis(1500));
    let st = Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap();
    assert!(st.success());
    let res = child.wait_with_output().unwrap();
    drop(stdin);
    res
}

fn half_of(data: &[u8]) -> usize {
    data[..data.len() / 2].iter().rposition(|&b| b == b'\n').unwrap() + 1
}

#[test]
fn resuming_stdin_without_an_id_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    generate(&input, 4_000, 21, "0.02");
    let data = std::fs::read(&input).unwrap();
    let out = dir.path().join("out");
    let first = replay_stdin(&out, &["--checkpoint-every", "500"], &data[..half_of(&data)], true);
    assert_eq!(first.status.code(), Some(130), "{}", stderr(&first));

    // Other data on stdin: a resume would skip its first bytes as if they had been read.
    let other = replay_stdin(&out, &["--checkpoint-every", "500"], &data[half_of(&data)..], false);
    assert!(!other.status.success(), "a resume of stdin was accepted: {}", stderr(&other));
    let e = stderr(&other);
    assert!(e.contains("stdin (-) cannot be resumed without --stdin-id"), "{e}");
    assert!(!out.join("_SUCCESS").exists());

    // Naming the stream now does not make the unnamed checkpoint resumable.
    let named =
        replay_stdin(&out, &["--checkpoint-every", "500", "--stdin-id", "feed"], &data, false);
    assert!(!named.status.success());
    assert!(
        stderr(&named).contains("stdin was checkpointed without --stdin-id"),
        "{}",
        stderr(&named)
    );
}

#[test]
fn stdin_named_by_stdin_id_resumes_when_fed_again_from_its_start() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    generate(&input, 20_000, 22, "0.02");
    let data = std::fs::read(&input).unwrap();
    let out = dir.path().join("out");
    let flags = ["--checkpoint-every", "1000", "--stdin-id", "clicks-2026-12-01"];
    let first = replay_stdin(&out, &flags, &data[..half_of(&data)], true);
    assert_eq!(first.status.code(), Some(130), "{}", stderr(&first));

    let wrong =
        replay_stdin(&out, &["--checkpoint-every", "1000", "--stdin-id", "x"], &data, false);
    assert!(!wrong.status.success());
    let e = stderr(&wrong);
    assert!(e.contains("--stdin-id clicks-2026-12-01") && e.contains("--stdin-id x"), "{e}");

    let fin = replay_stdin(&out, &flags, &data, false);
    assert!(fin.status.success(), "{}", stderr(&fin));
    let ref_out = dir.path().join("ref");
    let reference = replay(&ref_out, &["--checkpoint-every", "1000", input.to_str().unwrap()]);
    assert!(reference.status.success());
    assert_eq!(summary(&fin), summary(&reference));
    assert_eq!(rows(&out, "sessions/"), rows(&ref_out, "sessions/"));
    assert_eq!(rows(&out, "dead-letter/").len(), rows(&ref_out, "dead-letter/").len());

    // The flag names stdin: without - it is a mistake.
    let stray = replay(&dir.path().join("o2"), &["--stdin-id", "x", input.to_str().unwrap()]);
    assert!(!stray.status.success());
    assert!(stderr(&stray).contains("no input is -"), "{}", stderr(&stray));
}

#[test]
fn a_different_file_of_the_same_name_and_size_is_not_taken_for_the_checkpointed_one() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    generate(&input, 3_000, 23, "0.02");
    let out = dir.path().join("out");
    let first = replay(&out, &[input.to_str().unwrap()]);
    assert!(first.status.success(), "{}", stderr(&first));

    // The same lines in another order: same name, same size, other content.
    let data = std::fs::read(&input).unwrap();
    let body = data.strip_suffix(b"\n").unwrap();
    let mut lines: Vec<&[u8]> = body.split(|&b| b == b'\n').collect();
    lines.reverse();
    let other: Vec<u8> = lines.iter().flat_map(|l| l.iter().chain(b"\n")).copied().collect();
    assert_eq!(other.len(), data.len());
    assert_ne!(other, data);
    std::fs::write(&input, &other).unwrap();
    let again = replay(&out, &[input.to_str().unwrap()]);
    assert!(!again.status.success(), "another file was taken for the checkpointed one");
    let e = stderr(&again);
    assert!(
        e.contains(&format!("input {} is not the file the checkpoint read", input.display())),
        "{e}"
    );

    // The same bytes again: recognised, and already complete.
    std::fs::write(&input, &data).unwrap();
    let same = replay(&out, &[input.to_str().unwrap()]);
    assert!(same.status.success(), "{}", stderr(&same));
    assert_eq!(summary(&same), summary(&first));
}

/// `replay --follow` of `file` into `out`, logging at info.
fn follow(out: &Path, file: &Path) -> Running {
    Running::start(
        &[
            "replay",
            "--follow",
            "--schemas",
            &schemas(),
            "--output",
            out.to_str().unwrap(),
            "--checkpoint-interval",
            "200ms",
            file.to_str().unwrap(),
        ],
        &[],
    )
}

/// Waits until a dead-letter row holds `needle`.
fn wait_dead_letter(p: &Running, out: &Path, needle: &str) {
    let until = Instant::now() + Duration::from_secs(30);
    // The output directory appears with the first checkpoint.
    while !out.join("dead-letter").is_dir()
        || !rows(out, "dead-letter/").iter().any(|r| r.contains(needle))
    {
        assert!(
            Instant::now() < until,
            "no dead letter with {needle} within 30 s; log:\n{}",
            p.log().join("\n")
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn append(path: &Path, bytes: &[u8]) {
    let mut f = std::fs::OpenOptions::new().append(true).create(true).open(path).unwrap();
    f.write_all(bytes).unwrap();
}

#[test]
fn a_followed_file_that_is_rotated_or_truncated_is_followed_anew_and_resumed_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let (file, out) = (dir.path().join("live.jsonl"), dir.path().join("out"));
    std::fs::write(&file, b"not json A1\n").unwrap();
    let p = follow(&out, &file);
    wait_dead_letter(&p, &out, "A1");

    // Rotation: renamed away (its writer finishes a line there), a new file in its place.
    std::fs::rename(&file, dir.path().join("live.jsonl.1")).unwrap();
    append(&dir.path().join("live.jsonl.1"), b"not json A2\n");
    std::fs::write(&file, b"not json B1, a longer line than the next file holds\n").unwrap();
    wait_dead_letter(&p, &out, "B1");
    p.wait_log("Followed input changed", 10);
    wait_dead_letter(&p, &out, "A2");

    // Truncation: the same file, rewritten shorter than what was read.
    std::fs::write(&file, b"not json C1\n").unwrap();
    wait_dead_letter(&p, &out, "C1");
    // The rewrite may be seen empty, before its line is written.
    assert!(p.log().iter().any(|l| l.contains("truncated to")), "{}", p.log().join("\n"));
    assert_eq!(p.interrupt(), Some(130));

    // The checkpoint points into the file now at the path: nothing is read twice or skipped.
    let p = follow(&out, &file);
    append(&file, b"not json D1\n");
    wait_dead_letter(&p, &out, "D1");
    assert_eq!(p.interrupt(), Some(130));
    let dead = rows(&out, "dead-letter/");
    for m in ["A1", "A2", "B1", "C1", "D1"] {
        assert_eq!(
            dead.iter().filter(|r| r.contains(&format!("not json {m}"))).count(),
            1,
            "{m}: {dead:#?}"
        );
    }
    assert_eq!(dead.len(), 5, "{dead:#?}");
}

/// Peak resident memory of a process, in KiB.
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn a_followed_line_that_never_ends_is_not_held_in_memory() {
    const MIB: usize = 1 << 20;
    let dir = tempfile::tempdir().unwrap();
    let (file, out) = (dir.path().join("live.jsonl"), dir.path().join("out"));
    std::fs::write(&file, b"not json A1\n").unwrap();
    let mut p = follow(&out, &file);
    wait_dead_letter(&p, &out, "A1");
    let before = peak_rss_kib(p.child.id());

    // A writer that writes no newline, a little at a time, far past the line limit.
    let long = 200 * MIB;
    let block = vec![b'x'; MIB];
    for _ in 0..long / MIB {
        append(&file, &block);
        std::thread::sleep(Duration::from_millis(2));
    }
    std::thread::sleep(Duration::from_millis(500));
    assert!(p.child.try_wait().unwrap().is_none(), "the followed replay ended inside a line");
    let grown = peak_rss_kib(p.child.id()).saturating_sub(before) as usize * 1024;
    eprintln!("peak memory grew by {} MiB for a {} MiB line", grown / MIB, long / MIB);
    assert!(grown < 120 * MIB, "memory grew by {} MiB for a {} MiB line", grown / MIB, long / MIB);

    append(&file, b"\nnot json B1\n");
    wait_dead_letter(&p, &out, "B1");
    let dead = rows(&out, "dead-letter/");
    let big: Vec<_> = dead.iter().filter(|r| r.contains("too_large")).collect();
    assert_eq!(
        big.len(),
        1,
        "{:#?}",
        dead.iter().map(|r| &r[..r.len().min(300)]).collect::<Vec<_>>()
    );
    assert!(big[0].contains(&format!("\"raw_truncated_from\":{long}")), "{}", &big[0][..300]);
    assert!(big[0].len() < MIB, "the record keeps only the line's start");
    p.signal("INT");
    assert_eq!(p.wait_exit(30).code(), Some(130));
}

#[test]
fn follow_of_stdin_ends_when_the_pipe_is_closed() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    generate(&input, 2_000, 24, "0.02");
    let data = std::fs::read(&input).unwrap();
    let out = dir.path().join("out");
    let mut child = Command::new(bin())
        .args([
            "replay",
            "--follow",
            "--schemas",
            &schemas(),
            "--output",
            out.to_str().unwrap(),
            "-",
        ])
        .env("RUST_LOG", "warn")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(&data).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    drop(stdin); // the writer is gone: end of input
    let until = Instant::now() + Duration::from_secs(30);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > until {
            let _ = child.kill();
            let _ = child.wait();
            panic!("--follow - still running 30 s after its pipe was closed");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let done = child.wait_with_output().unwrap();
    assert!(done.status.success(), "{}", stderr(&done));
    assert_eq!(summary(&done)["lines"], 2_000);
    assert!(out.join("_SUCCESS").is_file());
}
