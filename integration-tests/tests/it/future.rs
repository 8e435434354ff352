//! Event times far ahead of the wall clock: one device with a broken clock must not poison a
//! partition for good.

use integration_tests::{generate, replay, rows, summary};

/// A generated input with a copy of one of its events, under a new id, stamped 2099, put first.
fn with_one_event_from_2099(dir: &std::path::Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let clean = dir.join("clean.jsonl");
    generate(&clean, 3_000, 11, "0");
    let text = std::fs::read_to_string(&clean).unwrap();
    let mut event: serde_json::Value = text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["messageId"].is_string() && v["timestamp"].is_string())
        .expect("a segment-style event");
    event["messageId"] = "broken-clock-1".into();
    event["timestamp"] = "2099-06-01T00:00:00.000Z".into();
    let poisoned = dir.join("poisoned.jsonl");
    std::fs::write(&poisoned, format!("{event}\n{text}")).unwrap();
    (clean, poisoned)
}

#[test]
fn one_event_from_2099_moves_no_watermark() {
    let dir = tempfile::tempdir().unwrap();
    let (clean, poisoned) = with_one_event_from_2099(dir.path());
    let expected = dir.path().join("expected");
    let o = replay(&expected, &[clean.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // Checkpoints every 500 lines: the watermark is persisted at each, so an event that moved
    // it would make the rest of the input late for good.
    let out = dir.path().join("out");
    let o = replay(&out, &["--checkpoint-every", "500", poisoned.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let s = summary(&o);
    assert_eq!(s["dead_lettered"]["future_timestamp"], 1, "{s}");
    assert!(s["dead_lettered"].get("late").is_none_or(|n| n == 0), "{s}");
    assert_eq!(rows(&out, "sessions/"), rows(&expected, "sessions/"));
    let dead = rows(&out, "dead-letter/");
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert!(dead[0].contains("future_timestamp") && dead[0].contains("broken-clock-1"), "{dead:?}");
}

#[test]
fn the_bound_is_a_setting_and_off_with_zero() {
    let dir = tempfile::tempdir().unwrap();
    let (_, poisoned) = with_one_event_from_2099(dir.path());
    let out = dir.path().join("out");
    let o = replay(&out, &["--max-future", "0s", poisoned.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let s = summary(&o);
    assert!(s["dead_lettered"].get("future_timestamp").is_none(), "{s}");
    assert!(s["dead_lettered"]["late"].as_u64().unwrap() > 2_000, "{s}");
}
