//! State larger than memory under `run`: a partition whose state holds tens of thousands of
//! open sessions is assigned to a new instance (with a small memory budget) without loading it,
//! and the output still equals the oracle's.

use crate::kafka::{
    assert_rows_equal, expected_rows, kafka_env, lines, oracle, published_offsets, rows_in,
    run_env, terminate, wait_for,
};
use integration_tests::services;
use integration_tests::{Running, bin, root};
use std::process::Command;

#[test]
fn a_partition_with_a_large_state_is_assigned_without_loading_it() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("events.jsonl");
    // One day of 200k events over 150k customers: with 7 h of lateness, ~60k customers have an
    // open session at any moment.
    let generator = bin().parent().unwrap().join("examples").join("scale_gen");
    let data = Command::new(&generator).args(["200000", "150000", "9"]).output().unwrap();
    assert!(data.status.success(), "{} (build it with --all-targets)", generator.display());
    std::fs::write(&input, &data.stdout).unwrap();
    let expected = oracle(&input, dir.path());
    let records = lines(&input);
    let half = records.len() / 2;

    let topic = format!("large-state-{}", std::process::id());
    services::create_topic(&topic, 1);
    services::produce_lines(&topic, &records[..half]);
    let bucket = services::fresh_bucket("large");
    let sink = format!("s3://{bucket}/v1");
    let s3 = services::s3_env();
    let group = format!("{topic}-g");
    let schemas = root().join("schemas");
    let k = kafka_env();
    let (a_state, b_state) = (dir.path().join("a"), dir.path().join("b"));
    let (a_dir, b_dir) = (a_state.to_str().unwrap(), b_state.to_str().unwrap());
    let mut env_a = run_env(&topic, &group, &sink, a_dir, &s3);
    let mut env_b = run_env(&topic, &group, &sink, b_dir, &s3);
    for (env, budget) in [(&mut env_a, "512MiB"), (&mut env_b, "16MiB")] {
        env.push((k.0, &k.1));
        env.push(("CLICKSTREAM__REPLAY__SCHEMAS", schemas.to_str().unwrap()));
        env.push(("CLICKSTREAM__STATE__MEMORY_BUDGET", budget));
        // Only the end of the input may close sessions by idleness.
        env.push(("CLICKSTREAM__RUN__IDLE_TIMEOUT", "8s"));
    }
    let a = Running::start(&["run"], &env_a);
    wait_for("the first half to be committed", 120, || {
        published_offsets(&bucket, "v1", 1).get(&0).copied().unwrap_or(0) >= half as i64
    });
    terminate(a);

    // Another instance, another disk, a 16 MiB budget: the snapshot's files come from S3 and
    // the store opens without reading its sessions.
    let b = Running::start(&["run"], &env_b);
    wait_for("the split to be assigned", 60, || {
        b.log().iter().any(|l| l.contains("Split state opened"))
    });
    let opened: serde_json::Value = b
        .log()
        .iter()
        .find(|l| l.contains("Split state opened"))
        .map(|l| serde_json::from_str(l).unwrap())
        .unwrap();
    let open = opened["open_sessions"].as_u64().unwrap();
    println!("assigned a partition with {open} open sessions; store opened in {} ms", opened["ms"]);
    assert!(open > 30_000, "the state is not large: {opened}");
    services::produce_lines(&topic, &records[half..]);
    let want = expected_rows(&expected);
    wait_for("every row", 240, || rows_in(&bucket, "v1") >= want);
    terminate(b);
    assert_rows_equal(&bucket, "v1", &expected, dir.path());
}
