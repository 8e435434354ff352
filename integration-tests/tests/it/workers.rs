//! Decode and extract on several workers: the output does not depend on their number.

use integration_tests::{bin, generate, root, summary, tree};
use std::path::Path;
use std::process::Command;

/// `clickstream replay` of `input` into `out` with `workers`; the run's log must say so.
fn replay_with(input: &Path, out: &Path, workers: &str) -> serde_json::Value {
    let run = Command::new(bin())
        .args(["replay", "--schemas"])
        .arg(root().join("schemas"))
        .arg("--output")
        .arg(out)
        .args(["--checkpoint-every", "7001", "--allowed-lateness", "2h", "--workers", workers])
        .arg(input)
        .env("RUST_LOG", "info")
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{workers} workers: {log}");
    let done = log.lines().find(|l| l.contains("Replay complete.")).unwrap_or_default();
    assert!(done.contains(&format!("\"workers\":{workers}")), "{workers} workers: {done}");
    summary(&run)
}

#[test]
fn replay_writes_the_same_bytes_with_one_worker_or_several() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    // About 30 MB: several 4 MiB chunks, each cut into many slices; checkpoints fall inside
    // chunks; malformed lines, duplicates and late events throughout.
    generate(&input, 60_000, 17, "0.03");
    let one = dir.path().join("one");
    let want_summary = replay_with(&input, &one, "1");
    let want = tree(&one);
    let dead = want.keys().filter(|k| k.starts_with("dead-letter/")).count();
    assert!(dead > 5 && want.len() > dead + 5, "{:?}", want.keys());
    for reason in ["invalid_json", "late"] {
        assert!(want_summary["dead_lettered"][reason].as_u64() > Some(0), "{want_summary}");
    }
    assert!(want_summary["duplicates"].as_u64() > Some(0), "{want_summary}");

    for workers in ["2", "3"] {
        let out = dir.path().join(format!("w{workers}"));
        assert_eq!(replay_with(&input, &out, workers), want_summary, "{workers} workers");
        let got = tree(&out);
        assert_eq!(got.keys().collect::<Vec<_>>(), want.keys().collect::<Vec<_>>());
        for (k, v) in &want {
            assert!(got[k] == *v, "{k} differs with {workers} workers from one");
        }
    }
}
