//! Kinds and attributes declared by schemas (`[[kinds]]`, `[[attributes]]`): a producer of
//! its own with two new kinds and an attribute per fold, held against an independent
//! computation (`integration-tests/scripts/kinds_expected.py`, written from the documented
//! semantics), read back as Parquet by `DuckDB`, and a kind added by a hot reload while
//! `clickstream run` consumes Kafka.

use integration_tests::services::{self, brokers};
use integration_tests::{Running, python, root, rows, run, summary};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The video player's schema: two new kinds (one ranked between the classic ones), rules that
/// make kinds compete, and attributes covering every fold and the four types.
const PLAYER: &str = r#"name = "player"
version = 1
priority = 50
description = "The video player SDK."

[fields]
message_id = ['$.mid']
customer_id = ['$.viewer']
event_time = [{ path = '$.at_ms', format = "epoch_millis" }]

[[kinds]]
name = "video_play"
column = "video_plays"
precedence = 50

[[kinds]]
name = "paywall_view"
column = "paywall_views"
precedence = 35

[[classify]]
kind = "video_play"
when = [{ path = '$.action', equals = "video_play" }]

# An autoplaying page is a video play too, but page_view (40) outranks video_play (50).
[[classify]]
kind = "video_play"
when = [{ path = '$.action', equals = "page" }, { path = '$.autoplay', exists = true }]

# A paywall is a page too, but paywall_view (35) outranks page_view (40).
[[classify]]
kind = "page_view"
when = [{ path = '$.action', in = ["page", "paywall"] }]

[[classify]]
kind = "paywall_view"
when = [{ path = '$.action', equals = "paywall" }]

[[classify]]
kind = "subscribe_click"
when = [{ path = '$.action', equals = "subscribe" }]

[[attributes]]
name = "platform"
paths = ['$.context.os', '$.platform']
type = "string"
aggregate = "first"
max_bytes = 16

[[attributes]]
name = "exit_path"
paths = ['$.path']
type = "string"
aggregate = "last"

[[attributes]]
name = "app_versions"
paths = ['$.context.app_version']
type = "string"
aggregate = "distinct_count"

[[attributes]]
name = "pages_seen"
paths = ['$.path']
type = "string"
aggregate = "distinct_count"

[[attributes]]
name = "min_country"
paths = ['$.geo.country']
type = "string"
aggregate = "min"

[[attributes]]
name = "max_country"
paths = ['$.geo.country']
type = "string"
aggregate = "max"

[[attributes]]
name = "max_bitrate"
paths = ['$.bitrate_kbps']
type = "integer"
aggregate = "max"

[[attributes]]
name = "min_bitrate"
paths = ['$.bitrate_kbps']
type = "integer"
aggregate = "min"

[[attributes]]
name = "campaign_ref"
paths = ['$.campaign.id', '$.campaign_id']
type = "integer"
aggregate = "first"

[[attributes]]
name = "watch_events"
paths = ['$.watch_ms']
type = "integer"
aggregate = "count_present"

[[attributes]]
name = "min_buffer_s"
paths = ['$.buffer_s']
type = "number"
aggregate = "min"

[[attributes]]
name = "last_buffer_s"
paths = ['$.buffer_s']
type = "number"
aggregate = "last"

[[attributes]]
name = "max_position_s"
paths = ['$.position_s']
type = "number"
aggregate = "max"

[[attributes]]
name = "first_position_s"
paths = ['$.position_s']
type = "number"
aggregate = "first"

[[attributes]]
name = "last_premium"
paths = ['$.premium']
type = "boolean"
aggregate = "last"
"#;

/// The set the rows name: schemas in merge order (priority, then name).
const PLAYER_SET: &str = "session@1,segment@1,web@1,ivr@1,legacy@1,player@1";

/// Columns of `number` attributes: compared as doubles.
const NUMBER_COLUMNS: [&str; 4] =
    ["min_buffer_s", "last_buffer_s", "max_position_s", "first_position_s"];

/// The allowed lateness of the runs, as a flag and in milliseconds (the script's too).
const LATENESS: (&str, u64) = ("10m", 600_000);

fn script() -> PathBuf {
    root().join("integration-tests/scripts/kinds_expected.py")
}

/// The shipped schemas plus `player.toml`, in a directory of their own.
fn schema_dir(dir: &Path) -> PathBuf {
    let d = dir.join("schemas");
    std::fs::create_dir_all(&d).unwrap();
    for e in std::fs::read_dir(root().join("schemas")).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "toml") {
            std::fs::copy(&p, d.join(p.file_name().unwrap())).unwrap();
        }
    }
    std::fs::write(d.join("player.toml"), PLAYER).unwrap();
    d
}

/// A generated data set and what it must give.
struct DataSet {
    events: PathBuf,
    /// Expected rows, as the script wrote them (keys in column order).
    rows: Vec<String>,
    /// `dead_lettered` by reason, `duplicates`, `accepted`, `near_watermark`.
    accounting: Value,
}

fn data_set(dir: &Path, seed: u64) -> DataSet {
    let events = dir.join(format!("events-{seed}.jsonl"));
    let st = std::process::Command::new(python())
        .arg(script())
        .args(["gen", "--seed", &seed.to_string(), "--out"])
        .arg(&events)
        .status()
        .unwrap();
    assert!(st.success(), "kinds_expected.py gen failed");
    let (rows, acc) =
        (dir.join(format!("want-{seed}.jsonl")), dir.join(format!("acc-{seed}.json")));
    let st = std::process::Command::new(python())
        .arg(script())
        .arg("expect")
        .arg(&events)
        .args(["--lateness-ms", &LATENESS.1.to_string(), "--out"])
        .arg(&rows)
        .arg("--rejects")
        .arg(&acc)
        .status()
        .unwrap();
    assert!(st.success(), "kinds_expected.py expect failed");
    let accounting: Value = serde_json::from_str(&std::fs::read_to_string(&acc).unwrap()).unwrap();
    // No event sits within a second of the watermark, nor is a duplicate copy late: the data
    // tests the folds, not the order of the late and duplicate checks.
    assert_eq!(accounting["near_watermark"], 0, "seed {seed}: ambiguous data set");
    let rows = std::fs::read_to_string(&rows).unwrap().lines().map(str::to_owned).collect();
    DataSet { events, rows, accounting }
}

/// The top-level keys of a JSON object, in the order written.
fn keys_in_order(line: &str) -> Vec<String> {
    let b = line.as_bytes();
    let (mut keys, mut depth, mut i, mut want_key) = (Vec::new(), 0, 0, false);
    while i < b.len() {
        match b[i] {
            b'"' => {
                let start = i;
                i += 1;
                while b[i] != b'"' {
                    if b[i] == b'\\' {
                        i += 1;
                    }
                    i += 1;
                }
                if depth == 1 && want_key {
                    keys.push(serde_json::from_str::<String>(&line[start..=i]).unwrap());
                    want_key = false;
                }
            }
            b'{' | b'[' => {
                depth += 1;
                want_key = depth == 1;
            }
            b'}' | b']' => depth -= 1,
            b',' if depth == 1 => want_key = true,
            _ => {}
        }
        i += 1;
    }
    keys
}

fn row_key(v: &Value) -> (String, i64) {
    (v["customer_id"].as_str().unwrap().to_owned(), v["session_start"].as_i64().unwrap())
}

/// Whether two cells hold the same value; `number` columns compare as doubles.
fn same_cell(column: &str, got: &Value, want: &Value) -> bool {
    if NUMBER_COLUMNS.contains(&column) && !want.is_null() {
        return got.as_f64().is_some_and(|g| Some(g) == want.as_f64());
    }
    got == want
}

/// Every expected row is there once, with its keys in column order and every cell equal;
/// no other row. `sets`: the `schema_sets` every row must name.
fn assert_rows(got: &[String], want: &[String], sets: &Value) {
    let mut by_key: BTreeMap<(String, i64), (Value, Vec<String>)> = BTreeMap::new();
    for l in got {
        let v: Value = serde_json::from_str(l).unwrap();
        let k = row_key(&v);
        assert!(by_key.insert(k.clone(), (v, keys_in_order(l))).is_none(), "row twice: {k:?}");
    }
    let mut problems = Vec::new();
    for l in want {
        let w: Value = serde_json::from_str(l).unwrap();
        let k = row_key(&w);
        let Some((g, order)) = by_key.remove(&k) else {
            problems.push(format!("missing row {l}"));
            continue;
        };
        let mut want_order = keys_in_order(l);
        want_order.push("schema_sets".into());
        if *order != want_order {
            problems.push(format!("{k:?}: columns {order:?}, want {want_order:?}"));
        }
        for (c, wv) in w.as_object().unwrap() {
            if !same_cell(c, &g[c], wv) {
                problems.push(format!("{k:?}: {c} = {}, want {wv}", g[c]));
            }
        }
        if g["schema_sets"] != *sets {
            problems.push(format!("{k:?}: schema_sets {}", g["schema_sets"]));
        }
    }
    for (k, (g, _)) in &by_key {
        problems.push(format!("unexpected row {k:?}: {g}"));
    }
    assert!(
        problems.is_empty(),
        "{} differences from the independent computation ({} rows expected); first ones:\n{}",
        problems.len(),
        want.len(),
        problems.iter().take(40).cloned().collect::<Vec<_>>().join("\n")
    );
}

/// The data exercises what it claims to: each new column takes values and nulls (zeros).
fn assert_coverage(want: &[String]) {
    let rows: Vec<Value> = want.iter().map(|l| serde_json::from_str(l).unwrap()).collect();
    let first: &serde_json::Map<String, Value> = rows[0].as_object().unwrap();
    for c in first.keys().skip_while(|k| *k != "video_plays") {
        let set = rows.iter().filter(|r| !r[c].is_null() && r[c] != 0).count();
        assert!(set > 0 && set < rows.len(), "column {c}: set in {set} of {} rows", rows.len());
    }
    assert!(rows.iter().any(|r| r["pages_seen"] == 256), "the distinct cap is reached");
    let merged = rows.iter().find(|r| r["customer_id"] == "999003").unwrap();
    assert_eq!(merged["event_count"], 5, "the bridge merged two sessions: {merged}");
}

fn replay_player(out: &Path, schemas: &Path, events: &Path) -> std::process::Output {
    run(&[
        "replay",
        "--schemas",
        schemas.to_str().unwrap(),
        "--allowed-lateness",
        LATENESS.0,
        "--output",
        out.to_str().unwrap(),
        events.to_str().unwrap(),
    ])
}

#[test]
fn declared_kinds_and_attributes_match_an_independent_computation() {
    let dir = tempfile::tempdir().unwrap();
    let schemas = schema_dir(dir.path());
    for seed in [3, 8] {
        let data = data_set(dir.path(), seed);
        assert_coverage(&data.rows);
        let out = dir.path().join(format!("out-{seed}"));
        let o = replay_player(&out, &schemas, &data.events);
        assert!(o.status.success(), "seed {seed}: {}", String::from_utf8_lossy(&o.stderr));
        let s = summary(&o);
        let acc = &data.accounting;
        assert_eq!(s["accepted"], acc["accepted"], "seed {seed}: accepted; {s}");
        assert_eq!(s["duplicates"], acc["duplicates"], "seed {seed}: duplicates; {s}");
        assert_eq!(s["dead_lettered"], acc["dead_lettered"], "seed {seed}: dead letters; {s}");
        let mut dead: BTreeMap<String, u64> = BTreeMap::new();
        for l in rows(&out, "dead-letter/") {
            let v: Value = serde_json::from_str(&l).unwrap();
            *dead.entry(v["reason"].as_str().unwrap().to_owned()).or_default() += 1;
        }
        assert_eq!(serde_json::to_value(&dead).unwrap(), acc["dead_lettered"], "seed {seed}");
        assert_rows(&rows(&out, "sessions/"), &data.rows, &serde_json::json!([PLAYER_SET]));
    }
}

mod parquet;
mod reload;
