//! A kind added by a hot reload while `clickstream run` consumes Kafka.

use super::*;

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
