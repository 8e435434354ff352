//! State snapshots in the real S3 API server under `clickstream run`: a commit record whose file
//! list names a path is refused without writing outside the state directory, and local state
//! torn while the process was down is downloaded again with no change to the output.

use crate::kafka::{
    assert_rows_equal, expected_rows, kafka_env, lines, oracle, published_offsets, rows_in,
    run_env, terminate, wait_for,
};
use integration_tests::{Running, root, services};
use std::path::Path;

/// Every path under `dir`, relative.
fn paths(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            out.push(p.strip_prefix(dir).unwrap().display().to_string());
            if p.is_dir() {
                todo.push(p);
            }
        }
    }
    out
}

#[test]
fn a_snapshot_naming_a_path_outside_the_state_directory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let topic = format!("snapshot-names-{}", std::process::id());
    services::create_topic(&topic, 1);
    let bucket = services::fresh_bucket("names");
    // A commit record as another writer to the bucket could leave it: its snapshot lists
    // names that would resolve beside and above the split's state directory.
    let c = "v1/_state/p0000/e1/c3/";
    services::put(&bucket, &format!("{c}CURRENT"), b"MANIFEST-000001\n");
    services::put(&bucket, &format!("{c}evil"), b"written outside the state directory");
    let record = serde_json::json!({
        "format": 1, "split": "p0000", "source": "", "settings": "", "generation": 1,
        "epoch": 1, "owner": "someone", "checkpoint": 3, "position": null,
        "snapshot": { "checkpoint": 3, "lineage": "e1", "files": {
            "CURRENT": "_state/p0000/e1/c3/CURRENT",
            "../evil": "_state/p0000/e1/c3/evil",
            "../../evil": "_state/p0000/e1/c3/evil",
        }},
        "written_at_ms": 0,
    });
    services::put(&bucket, "v1/_state/p0000/LATEST", record.to_string().as_bytes());

    let sink = format!("s3://{bucket}/v1");
    let state = dir.path().join("state");
    let s3 = services::s3_env();
    let group = format!("{topic}-g");
    let mut env = run_env(&topic, &group, &sink, state.to_str().unwrap(), &s3);
    let k = kafka_env();
    env.push((k.0, &k.1));
    let schemas = root().join("schemas");
    env.push(("CLICKSTREAM__REPLAY__SCHEMAS", schemas.to_str().unwrap()));
    let mut p = Running::start(&["run"], &env);
    let refused = p.wait_log("../evil\\\" is refused", 60);
    assert!(refused.contains("state reset"), "{refused}");
    p.signal("TERM");
    p.wait_exit(60);
    let written: Vec<String> =
        paths(dir.path()).into_iter().filter(|p| p.ends_with("evil")).collect();
    assert!(written.is_empty(), "written outside the state directory: {written:?}");
}

#[test]
fn torn_local_state_is_downloaded_again_and_the_output_is_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("events.jsonl");
    integration_tests::generate(&input, 20_000, 5, "0.02");
    let expected = oracle(&input, dir.path());
    let records = lines(&input);
    let half = records.len() / 2;
    let topic = format!("snapshot-torn-{}", std::process::id());
    services::create_topic(&topic, 1);
    services::produce_lines(&topic, &records[..half]);
    let bucket = services::fresh_bucket("torn");
    let sink = format!("s3://{bucket}/v1");
    let state = dir.path().join("state");
    let s3 = services::s3_env();
    let group = format!("{topic}-g");
    let mut env = run_env(&topic, &group, &sink, state.to_str().unwrap(), &s3);
    let k = kafka_env();
    env.push((k.0, &k.1));
    let schemas = root().join("schemas");
    env.push(("CLICKSTREAM__REPLAY__SCHEMAS", schemas.to_str().unwrap()));
    env.push(("CLICKSTREAM__RUN__IDLE_TIMEOUT", "8s"));

    let a = Running::start(&["run"], &env);
    wait_for("the first half to be committed", 120, || {
        published_offsets(&bucket, "v1", 1).get(&0).copied().unwrap_or(0) >= half as i64
    });
    terminate(a);

    // As a crash or a disk can leave it: the store's descriptor is empty.
    let split = state.join("p0000");
    let manifests: Vec<_> = std::fs::read_dir(&split)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with("MANIFEST-"))
        .collect();
    assert!(!manifests.is_empty(), "{:?}", paths(&split));
    for m in &manifests {
        std::fs::OpenOptions::new().write(true).open(m).unwrap().set_len(0).unwrap();
    }

    let b = Running::start(&["run"], &env);
    b.wait_log("Restoring split state from its S3 snapshot", 60);
    services::produce_lines(&topic, &records[half..]);
    let want = expected_rows(&expected);
    wait_for("every row", 180, || rows_in(&bucket, "v1") >= want);
    terminate(b);
    assert_rows_equal(&bucket, "v1", &expected, dir.path());
}
