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
fn parquet_rows_with_declared_columns_read_back_in_duckdb_with_their_types() {
    let dir = tempfile::tempdir().unwrap();
    let schemas = schema_dir(dir.path());
    let data = data_set(dir.path(), 3);
    let local = dir.path().join("local");
    let o = replay_player(&local, &schemas, &data.events);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let json_rows = rows(&local, "sessions/");
    assert_rows(&json_rows, &data.rows, &serde_json::json!([PLAYER_SET]));

    let bucket = services::fresh_bucket("kinds-pq");
    let mut env: Vec<(&str, String)> = services::s3_env();
    env.push(("CLICKSTREAM__SINK__FORMAT", "parquet".into()));
    let out = std::process::Command::new(integration_tests::bin())
        .args(["replay", "--schemas", schemas.to_str().unwrap()])
        .args(["--allowed-lateness", LATENESS.0])
        .args(["--output", &format!("s3://{bucket}/pq"), "--state"])
        .arg(dir.path().join("state"))
        .arg(&data.events)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let objects = services::objects(&bucket, "pq/sessions/");
    assert!(
        !objects.is_empty() && objects.keys().all(|k| k.ends_with(".parquet")),
        "{:?}",
        objects.keys()
    );
    let files = dir.path().join("parquet");
    std::fs::create_dir_all(&files).unwrap();
    for (i, body) in objects.values().enumerate() {
        std::fs::write(files.join(format!("{i}.parquet")), body).unwrap();
    }
    // Every row, times as epoch milliseconds, plus the types and a few sums.
    let script = format!(
        r#"import duckdb, json
c = duckdb.connect()
src = "read_parquet('{0}/*.parquet', union_by_name = true)"
d = c.sql(f"describe select * from {{src}}").fetchall()
cols = [r[0] for r in d]
sel = ", ".join(f"epoch_ms({{x}})" if x in ("session_start", "session_end") else x for x in cols)
rows = [list(r) for r in c.sql(f"select {{sel}} from {{src}}").fetchall()]
sums = c.sql(f"select count(*), sum(event_count), sum(video_plays), sum(paywall_views), sum(page_views), sum(pages_seen), sum(watch_events), max(max_bitrate), min(min_bitrate), min(min_buffer_s), max(max_position_s), count(platform), count(last_premium) from {{src}}").fetchone()
print(json.dumps({{"columns": cols, "types": {{r[0]: r[1] for r in d}}, "rows": rows, "sums": list(sums)}}))
"#,
        files.display()
    );
    let py = std::process::Command::new(duckdb_python()).args(["-c", &script]).output();
    let py = py.expect("DuckDB's Python (scripts/setup installs it)");
    assert!(py.status.success(), "{}", String::from_utf8_lossy(&py.stderr));
    let got: Value = serde_json::from_slice(&py.stdout).unwrap();

    let want: Vec<Value> = json_rows.iter().map(|l| serde_json::from_str(l).unwrap()).collect();
    let order = keys_in_order(&json_rows[0]);
    let columns: Vec<String> = serde_json::from_value(got["columns"].clone()).unwrap();
    assert_eq!(columns, order, "Parquet columns in the order of the JSON rows");
    let t = &got["types"];
    let expect_type = |c: &str| match c {
        "session_start" | "session_end" => "TIMESTAMP WITH TIME ZONE",
        "schema_sets" => "VARCHAR[]",
        "customer_id" | "platform" | "exit_path" | "min_country" | "max_country" => "VARCHAR",
        c if NUMBER_COLUMNS.contains(&c) => "DOUBLE",
        "last_premium" => "BOOLEAN",
        // counts, integer attributes, distinct_count and count_present
        _ => "BIGINT",
    };
    for c in &order {
        assert_eq!(t[c], expect_type(c), "type of {c}: {t}");
    }
    // Every row, cell by cell.
    let parquet: Vec<String> = got["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let m: serde_json::Map<String, Value> =
                order.iter().cloned().zip(r.as_array().unwrap().iter().cloned()).collect();
            Value::Object(m).to_string()
        })
        .collect();
    let sorted_keys = |v: &Value| {
        let mut m = v.as_object().unwrap().keys().cloned().collect::<Vec<_>>();
        m.sort();
        m
    };
    assert_eq!(sorted_keys(&serde_json::from_str(&parquet[0]).unwrap()), sorted_keys(&want[0]));
    // `assert_rows` checks key order on the text: rebuild it in column order.
    let want_text: Vec<String> = json_rows
        .iter()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            let body: Vec<String> = order
                .iter()
                .filter(|c| *c != "schema_sets")
                .map(|c| format!("{}:{}", Value::from(c.as_str()), v[c]))
                .collect();
            format!("{{{}}}", body.join(","))
        })
        .collect();
    let parquet_text: Vec<String> = parquet
        .iter()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            let body: Vec<String> =
                order.iter().map(|c| format!("{}:{}", Value::from(c.as_str()), v[c])).collect();
            format!("{{{}}}", body.join(","))
        })
        .collect();
    assert_rows(&parquet_text, &want_text, &serde_json::json!([PLAYER_SET]));
    // And the aggregates an analyst would run.
    let sum = |c: &str| want.iter().map(|r| r[c].as_i64().unwrap()).sum::<i64>();
    let max = |c: &str| want.iter().filter_map(|r| r[c].as_i64()).max().unwrap();
    let min = |c: &str| want.iter().filter_map(|r| r[c].as_i64()).min().unwrap();
    let fmin = |c: &str| want.iter().filter_map(|r| r[c].as_f64()).fold(f64::INFINITY, f64::min);
    let fmax =
        |c: &str| want.iter().filter_map(|r| r[c].as_f64()).fold(f64::NEG_INFINITY, f64::max);
    let present = |c: &str| want.iter().filter(|r| !r[c].is_null()).count() as i64;
    let s = got["sums"].as_array().unwrap();
    assert_eq!(s[0], want.len(), "rows");
    assert_eq!(s[1], sum("event_count"));
    assert_eq!(s[2], sum("video_plays"));
    assert_eq!(s[3], sum("paywall_views"));
    assert_eq!(s[4], sum("page_views"));
    assert_eq!(s[5], sum("pages_seen"));
    assert_eq!(s[6], sum("watch_events"));
    assert_eq!(s[7], max("max_bitrate"));
    assert_eq!(s[8], min("min_bitrate"));
    assert_eq!(s[9].as_f64().map(f64::to_bits), Some(fmin("min_buffer_s").to_bits()));
    assert_eq!(s[10].as_f64().map(f64::to_bits), Some(fmax("max_position_s").to_bits()));
    assert_eq!(s[11], present("platform"));
    assert_eq!(s[12], present("last_premium"));
}

/// A producer whose v1 counts page views only; v2 declares and classifies `video_play`.
const APP_V1: &str = r#"name = "app"
version = 1
priority = 50
[fields]
message_id = ['$.mid']
customer_id = ['$.viewer']
event_time = [{ path = '$.at_ms', format = "epoch_millis" }]
[[classify]]
kind = "page_view"
when = [{ path = '$.action', equals = "page" }]
[[attributes]]
name = "platform"
paths = ['$.os']
type = "string"
aggregate = "first"
"#;

const APP_V2_ADDS: &str = r#"[[kinds]]
name = "video_play"
column = "video_plays"
precedence = 50
[[classify]]
kind = "video_play"
when = [{ path = '$.action', equals = "video_play" }]
"#;

/// 2024-03-04T00:00:00Z.
const T0: i64 = 1_709_510_400_000;
const MIN: i64 = 60_000;

/// One event of the app: (message id, customer, minutes after T0, action, os).
fn app_event(mid: &str, viewer: &str, minutes: i64, action: &str, os: &str) -> (Vec<u8>, Vec<u8>) {
    let line = serde_json::json!({
        "mid": mid, "viewer": viewer, "at_ms": T0 + minutes * MIN, "action": action, "os": os,
    });
    (viewer.as_bytes().to_vec(), line.to_string().into_bytes())
}

fn ok(o: &std::process::Output) -> String {
    assert!(
        o.status.success(),
        "stdout: {}\nstderr: {}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).to_string()
}

fn wait_for(what: &str, secs: u64, p: &Running, mut done: impl FnMut() -> bool) {
    let until = Instant::now() + Duration::from_secs(secs);
    while !done() {
        let log = p.log();
        assert!(
            Instant::now() < until,
            "timed out waiting for {what}; log:\n{}",
            log[log.len().saturating_sub(40)..].join("\n")
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn session_rows(bucket: &str) -> Vec<(String, Value)> {
    services::lines(bucket, "v1/sessions/")
        .into_iter()
        .map(|l| {
            let v = serde_json::from_str(&l).unwrap();
            (l, v)
        })
        .collect()
}

#[test]
#[allow(clippy::too_many_lines)] // one scenario, told in order
fn a_kind_added_by_a_hot_reload_counts_from_the_switch_on() {
    let dir = tempfile::tempdir().unwrap();
    let reg = dir.path().join("registry");
    let reg_s = reg.to_str().unwrap();
    let v1 = dir.path().join("app-v1.toml");
    std::fs::write(&v1, APP_V1).unwrap();
    // Seed the registry with the shipped set and app@1 in one command.
    let said = ok(&run(&[
        "schema",
        "register",
        root().join("schemas").to_str().unwrap(),
        v1.to_str().unwrap(),
        "--registry",
        reg_s,
    ]));
    assert!(said.contains("app@1"), "{said}");

    // Before the reload. A: one session that closes before it (the watermark passes its end +
    // gap once D's event is read). B: a session open across it. D: open across it too.
    let before = vec![
        app_event("a1", "200001", 0, "page", "ios"),
        app_event("a2", "200001", 1, "video_play", "ios"),
        app_event("a3", "200001", 2, "page", "ios"),
        app_event("b1", "200002", 40, "video_play", "ios"),
        app_event("b2", "200002", 41, "page", "android"),
        app_event("b3", "200002", 42, "video_play", "android"),
        app_event("d1", "200004", 45, "page", "web"),
    ];
    // After it. B goes on, C opens, D goes on, A comes back (a new session), a copy of b1 is a
    // duplicate; the last event, a day later, closes every session above.
    let after = vec![
        app_event("b4", "200002", 50, "video_play", "web"),
        app_event("b5", "200002", 51, "page", "web"),
        app_event("b1", "200002", 40, "video_play", "ios"),
        app_event("c1", "200003", 52, "video_play", "tvos"),
        app_event("c2", "200003", 53, "video_play", "tvos"),
        app_event("d2", "200004", 55, "video_play", "web"),
        app_event("a4", "200001", 60, "video_play", "android"),
    ];
    let flush = vec![app_event("z1", "299999", 24 * 60, "page", "ios")];

    let topic = format!("raw-kinds-{}", std::process::id());
    services::create_topic(&topic, 1);
    let bucket = services::fresh_bucket("kinds-reload");
    let sink = format!("s3://{bucket}/v1");
    let state = dir.path().join("state");
    let group = format!("{topic}-g");
    let mut env: Vec<(&str, String)> = services::s3_env();
    env.extend([
        ("CLICKSTREAM__KAFKA__BROKERS", brokers()),
        ("CLICKSTREAM__KAFKA__TOPIC", topic.clone()),
        ("CLICKSTREAM__KAFKA__GROUP", group),
        ("CLICKSTREAM__SINK__LOCATION", sink),
        ("CLICKSTREAM__RUN__STATE", state.to_str().unwrap().to_owned()),
        ("CLICKSTREAM__RUN__CHECKPOINT_INTERVAL", "300ms".to_owned()),
        // Longer than the scenario: sessions close on the watermark only.
        ("CLICKSTREAM__RUN__IDLE_TIMEOUT", "10m".to_owned()),
        ("CLICKSTREAM__SESSION__ALLOWED_LATENESS", "1m".to_owned()),
        ("CLICKSTREAM__REGISTRY__LOCATION", reg_s.to_owned()),
        ("CLICKSTREAM__REGISTRY__POLL_INTERVAL", "200ms".to_owned()),
    ]);
    let env_ref: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let started = Instant::now();
    let p = Running::start(&["run"], &env_ref);
    let line = p.wait_log("Loaded schemas", 60);
    assert!(line.contains("app@1"), "{line}");

    services::produce(&topic, &before);
    wait_for("the row of A's first session", 60, &p, || !session_rows(&bucket).is_empty());
    let early = session_rows(&bucket);
    assert_eq!(early.len(), 1, "only A's first session closed: {early:?}");

    // app@2 declares video_play. Judged on a sample of the app's events.
    let sample = dir.path().join("sample.jsonl");
    let sample_text: String = before
        .iter()
        .chain(&after)
        .map(|(_, l)| String::from_utf8_lossy(l).to_string() + "\n")
        .collect();
    std::fs::write(&sample, sample_text).unwrap();
    let v2 = dir.path().join("app-v2.toml");
    std::fs::write(&v2, APP_V1.replace("version = 1", "version = 2") + APP_V2_ADDS).unwrap();
    let said = ok(&run(&[
        "schema",
        "register",
        v2.to_str().unwrap(),
        "--registry",
        reg_s,
        "--sample",
        sample.to_str().unwrap(),
    ]));
    assert!(said.contains("registered app@2"), "{said}");
    // The partition's pipeline has the new set once it says so.
    wait_for("the partition to switch to app@2", 60, &p, || {
        p.log().iter().any(|l| {
            l.contains("Schema set switched") && l.contains("\"split\"") && l.contains("app@2")
        })
    });
    services::produce(&topic, &after);
    services::produce(&topic, &flush);
    wait_for("the rows of every session but the last", 60, &p, || session_rows(&bucket).len() >= 5);
    // A little longer: nothing more may come.
    std::thread::sleep(Duration::from_secs(2));
    crate::kafka::terminate(p);
    eprintln!("hot reload scenario: {:?}", started.elapsed());

    let rows = session_rows(&bucket);
    let by_key: BTreeMap<(String, i64), &(String, Value)> =
        rows.iter().map(|r| (row_key(&r.1), r)).collect();
    assert_eq!(by_key.len(), rows.len(), "a row twice: {rows:#?}");
    assert_eq!(rows.len(), 5, "{rows:#?}");
    let row = |cid: &str, start_min: i64| -> &(String, Value) {
        by_key
            .get(&(cid.to_owned(), T0 + start_min * MIN))
            .unwrap_or_else(|| panic!("no row for {cid} at +{start_min} min: {rows:#?}"))
    };
    let set1 = "session@1,segment@1,web@1,ivr@1,legacy@1,app@1";
    let set2 = "session@1,segment@1,web@1,ivr@1,legacy@1,app@2";
    let classic = ["page_views", "subscribe_hovers", "subscribe_clicks", "support_calls"];
    let fixed = ["customer_id", "session_start", "session_end", "duration_ms", "event_count"];
    let columns = |with_new: bool| {
        let mut c: Vec<&str> = fixed.iter().chain(&classic).copied().collect();
        if with_new {
            c.push("video_plays");
        }
        c.extend(["platform", "schema_sets"]);
        c
    };
    // A's first session closed under app@1: no video_plays column at all.
    let (text, a_first) = row("200001", 0);
    assert_eq!(keys_in_order(text), columns(false), "{text}");
    assert_eq!(a_first["event_count"], 3, "{text}");
    assert_eq!(a_first["page_views"], 2, "{text}");
    assert_eq!(a_first["platform"], "ios", "{text}");
    assert_eq!(a_first["schema_sets"], serde_json::json!([set1]), "{text}");
    // B spans the switch: its two video plays before it count in event_count only.
    let (text, b_span) = row("200002", 40);
    assert_eq!(keys_in_order(text), columns(true), "{text}");
    assert_eq!(b_span["session_end"], T0 + 51 * MIN, "{text}");
    assert_eq!(b_span["event_count"], 5, "the copy of b1 is a duplicate: {text}");
    assert_eq!(b_span["video_plays"], 1, "only b4 counts: {text}");
    assert_eq!(b_span["page_views"], 2, "{text}");
    assert_eq!(b_span["platform"], "ios", "the attribute state survives the switch: {text}");
    assert_eq!(b_span["schema_sets"], serde_json::json!([set1, set2]), "{text}");
    // C opened after the switch.
    let (text, c_new) = row("200003", 52);
    assert_eq!(keys_in_order(text), columns(true), "{text}");
    assert_eq!(
        (c_new["event_count"].as_u64(), c_new["video_plays"].as_u64()),
        (Some(2), Some(2)),
        "{text}"
    );
    assert_eq!(c_new["schema_sets"], serde_json::json!([set2]), "{text}");
    // D spans the switch: its page view before, its video play after.
    let (text, d_span) = row("200004", 45);
    assert_eq!(
        (
            d_span["event_count"].as_u64(),
            d_span["page_views"].as_u64(),
            d_span["video_plays"].as_u64()
        ),
        (Some(2), Some(1), Some(1)),
        "{text}"
    );
    assert_eq!(d_span["schema_sets"], serde_json::json!([set1, set2]), "{text}");
    // A's second session, after the switch.
    let (text, a_second) = row("200001", 60);
    assert_eq!(
        (a_second["event_count"].as_u64(), a_second["video_plays"].as_u64()),
        (Some(1), Some(1)),
        "{text}"
    );
    assert_eq!(a_second["platform"], "android", "{text}");
    // Every accepted event once: 7 before, 6 after (b1's copy is not one), the flush still open.
    let events: u64 = rows.iter().map(|r| r.1["event_count"].as_u64().unwrap()).sum();
    assert_eq!(events, 13, "{rows:#?}");
    let plays: u64 = rows.iter().filter_map(|r| r.1["video_plays"].as_u64()).sum();
    assert_eq!(plays, 5, "the video plays after the switch: b4, c1, c2, d2, a4");
    assert!(services::lines(&bucket, "v1/dead-letter/").is_empty(), "no dead letter");
}
