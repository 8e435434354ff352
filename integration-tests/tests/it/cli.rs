//! The command-line contract: summaries, accounting, resumption, and clear errors for bad
//! invocations.

use integration_tests::{generate, replay, root, rows, run, summary};
use std::path::Path;
use std::process::{Command, Stdio};

fn schemas() -> String {
    root().join("schemas").to_string_lossy().to_string()
}

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

#[test]
fn every_line_is_accounted_for_and_a_rerun_is_a_no_op() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    generate(&input, 5_000, 3, "0.05");
    let out = dir.path().join("out");
    let a = [
        "replay",
        "--schemas",
        &schemas(),
        "--output",
        out.to_str().unwrap(),
        input.to_str().unwrap(),
    ];
    let first = run(&a);
    assert!(first.status.success(), "{}", stderr(&first));
    let s = summary(&first);
    let dead: u64 =
        s["dead_lettered"].as_object().unwrap().values().map(|v| v.as_u64().unwrap()).sum();
    assert_eq!(s["lines"], 5_000);
    assert_eq!(s["accepted"].as_u64().unwrap() + s["duplicates"].as_u64().unwrap() + dead, 5_000);
    assert_eq!(rows(&out, "dead-letter/").len() as u64, dead);
    assert_eq!(rows(&out, "sessions/").len() as u64, s["sessions"].as_u64().unwrap());
    assert!(out.join("_state").is_dir(), "default state lives under the output");
    assert!(out.join("_SUCCESS").is_file());

    let again = run(&a);
    assert!(again.status.success(), "{}", stderr(&again));
    assert_eq!(summary(&again), s);
    let again_info =
        Command::new(integration_tests::bin()).args(a).env("RUST_LOG", "info").output().unwrap();
    assert!(stderr(&again_info).contains("already complete"), "{}", stderr(&again_info));
}

#[test]
fn stdin_plain_and_gzip_inputs_give_the_same_rows() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    generate(&input, 3_000, 5, "0.02");
    let gz = dir.path().join("in.jsonl.gz");
    let mut enc = flate2::write::GzEncoder::new(
        std::fs::File::create(&gz).unwrap(),
        flate2::Compression::fast(),
    );
    std::io::copy(&mut std::fs::File::open(&input).unwrap(), &mut enc).unwrap();
    enc.finish().unwrap();

    let plain_out = dir.path().join("plain");
    let plain = replay(&plain_out, &[input.to_str().unwrap()]);
    assert!(plain.status.success(), "{}", stderr(&plain));
    let gz_out = dir.path().join("gz");
    let gzr = replay(&gz_out, &[gz.to_str().unwrap()]);
    assert!(gzr.status.success(), "{}", stderr(&gzr));
    let stdin_out = dir.path().join("stdin");
    let st = Command::new(integration_tests::bin())
        .args(["replay", "--schemas", &schemas(), "--output", stdin_out.to_str().unwrap(), "-"])
        .stdin(Stdio::from(std::fs::File::open(&input).unwrap()))
        .output()
        .unwrap();
    assert!(st.status.success(), "{}", stderr(&st));
    assert_eq!(summary(&plain), summary(&gzr));
    assert_eq!(summary(&plain), summary(&st));
    let want = rows(&plain_out, "sessions/");
    assert!(!want.is_empty());
    assert_eq!(rows(&gz_out, "sessions/"), want);
    assert_eq!(rows(&stdin_out, "sessions/"), want);
}

#[test]
fn missing_input_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let o = replay(&dir.path().join("o"), &["/nonexistent/clicks.jsonl"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("/nonexistent/clicks.jsonl"), "{}", stderr(&o));
    assert!(!stderr(&o).contains("panicked"));
    assert!(o.stdout.is_empty(), "no summary on failure");
}

#[test]
fn bad_duration_is_named() {
    let o = run(&["replay", "--gap", "30 parsecs", "x.jsonl"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("--gap"), "{}", stderr(&o));
}

#[test]
fn invalid_schema_fails_with_file_line_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let s = dir.path().join("schemas");
    std::fs::create_dir(&s).unwrap();
    std::fs::write(
        s.join("bad.toml"),
        "name = \"bad\"\nversion = 1\n\n[fields]\nmessage_id = ['$.id']\ncustomer_id = ['$.user[']\nevent_time = [{ path = '$.ts', format = \"epoch\" }]\n",
    )
    .unwrap();
    let input = dir.path().join("in.jsonl");
    std::fs::write(&input, "{}\n").unwrap();
    let out = dir.path().join("out");
    let o = run(&[
        "replay",
        "--schemas",
        s.to_str().unwrap(),
        "--output",
        out.to_str().unwrap(),
        input.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(1));
    let e = stderr(&o);
    assert!(e.contains("bad.toml:6:"), "{e}");
    assert!(e.contains("fields.customer_id[0]"), "{e}");
    assert!(!out.join("sessions").exists(), "no output before the schemas are known good");
}

#[test]
fn unwritable_output_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    std::fs::write(&input, "{}\n").unwrap();
    let blocker = dir.path().join("file");
    std::fs::write(&blocker, "").unwrap();
    let out = blocker.join("out");
    let o = replay(&out, &[input.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains(out.to_str().unwrap()), "{}", stderr(&o));
}

#[test]
fn state_of_another_replay_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a.jsonl"), dir.path().join("b.jsonl"));
    std::fs::write(&a, "{}\n").unwrap();
    std::fs::write(&b, "{}\n{}\n").unwrap();
    let out = dir.path().join("out");
    let first = replay(&out, &[a.to_str().unwrap()]);
    assert!(first.status.success(), "{}", stderr(&first));
    let second = replay(&out, &[b.to_str().unwrap()]);
    assert_eq!(second.status.code(), Some(1));
    assert!(stderr(&second).contains("belongs to a replay of"), "{}", stderr(&second));
    let third = replay(&out, &["--gap", "10m", a.to_str().unwrap()]);
    assert_eq!(third.status.code(), Some(1));
    assert!(stderr(&third).contains("other settings"), "{}", stderr(&third));
}

#[test]
fn garbage_of_every_kind_is_dead_lettered_never_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    let mut data: Vec<u8> = Vec::new();
    for l in [
        &b""[..],
        b"\x00\x01\x02",
        b"\xff\xfe\xfd",
        b"{\"a\":",
        b"[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[",
        b"{\"messageId\":\"m\",\"userId\":\"1\",\"timestamp\":\"2024-03-05T10:15:30.123Z\",\"type\":\"page\"}",
        b"{\"messageId\":\"m\",\"userId\":\"1\",\"timestamp\":\"2024-03-05T10:15:30.123Z\",\"type\":\"page\"}",
        b"\"\\ud800\"",
        b"{\"id\":1e999,\"uid\":1,\"ts\":1}",
        b"{\"id\":99999999999999999999999999,\"uid\":-0,\"ts\":\"1709633730\"}",
    ] {
        data.extend_from_slice(l);
        data.push(b'\n');
    }
    data.extend_from_slice(b"{\"id\":\"last\",\"uid\":\"7\",\"ts\":1709633730}"); // no final newline
    std::fs::write(&input, &data).unwrap();
    let out = dir.path().join("out");
    let o = replay(&out, &[input.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let s = summary(&o);
    assert_eq!(s["lines"], 11);
    assert_eq!(s["duplicates"], 1);
    assert_eq!(s["accepted"], 3, "{s}");
    assert_eq!(s["dead_lettered"]["empty_line"], 1);
    assert_eq!(s["dead_lettered"]["invalid_utf8"], 1);
    assert_eq!(s["dead_lettered"]["too_deep"], 1);
    let dead = rows(&out, "dead-letter/");
    assert_eq!(dead.len(), 7);
    let first: serde_json::Value =
        serde_json::from_str(dead.iter().find(|d| d.contains("raw_base64")).unwrap()).unwrap();
    assert_eq!(first["reason"], "invalid_utf8");
    assert_eq!(first["source"]["line"], 3);
    assert!(Path::new(&out.join("_SUCCESS")).exists());
}

#[test]
fn corrupt_gzip_fails_clearly_and_marks_nothing_complete() {
    let dir = tempfile::tempdir().unwrap();
    let plain = dir.path().join("in.jsonl");
    generate(&plain, 2_000, 9, "0.0");
    let gz = dir.path().join("in.jsonl.gz");
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::copy(&mut std::fs::File::open(&plain).unwrap(), &mut enc).unwrap();
    let mut bytes = enc.finish().unwrap();
    let n = bytes.len();
    bytes[n / 2..n / 2 + 64].fill(0x55); // damage the deflate stream
    std::fs::write(&gz, &bytes).unwrap();
    let out = dir.path().join("out");
    let o = replay(&out, &[gz.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    let e = stderr(&o);
    assert!(e.contains("in.jsonl.gz") && e.contains("re-run to resume"), "{e}");
    assert!(!out.join("_SUCCESS").exists());
    assert!(o.stdout.is_empty());
}

#[test]
fn a_line_too_long_to_buffer_is_dead_lettered_by_its_start() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    let good = r#"{"id":"a","uid":"1","ts":1709633730,"evt":"screen_view"}"#;
    let huge_len = 70 << 20;
    let mut data = Vec::with_capacity(huge_len + 200);
    data.extend_from_slice(good.as_bytes());
    data.extend_from_slice(b"\n{\"id\":\"b\",\"pad\":\"");
    data.resize(data.len() + huge_len, b'x');
    data.extend_from_slice(b"\"}\n");
    data.extend_from_slice(good.replace("\"a\"", "\"c\"").as_bytes()); // no final newline
    std::fs::write(&input, &data).unwrap();
    let out = dir.path().join("out");
    let o = replay(&out, &["--checkpoint-every", "2", input.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let s = summary(&o);
    assert_eq!((s["lines"].as_u64(), s["accepted"].as_u64()), (Some(3), Some(2)), "{s}");
    assert_eq!(s["dead_lettered"]["too_large"], 1);
    let dead: serde_json::Value = serde_json::from_str(&rows(&out, "dead-letter/")[0]).unwrap();
    assert_eq!(dead["raw_truncated_from"].as_u64(), Some(huge_len as u64 + 19));
    assert_eq!(dead["raw"].as_str().unwrap().len(), 64 << 10);
    assert_eq!(dead["source"]["line"], 2);
}

#[test]
fn a_finished_state_whose_output_is_gone_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    std::fs::write(&input, "{\"id\":\"a\",\"uid\":\"1\",\"ts\":1709633730}\n").unwrap();
    let (out, state) = (dir.path().join("out"), dir.path().join("state"));
    let args = ["--state", state.to_str().unwrap(), input.to_str().unwrap()];
    assert!(replay(&out, &args).status.success());
    std::fs::remove_dir_all(&out).unwrap();
    let again = replay(&out, &args);
    assert_eq!(again.status.code(), Some(1));
    assert!(stderr(&again).contains("incomplete or gone"), "{}", stderr(&again));
}

#[test]
fn a_stop_between_the_last_commit_and_the_marker_completes_on_rerun() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    generate(&input, 2_000, 4, "0.02");
    let out = dir.path().join("out");
    let first = replay(&out, &[input.to_str().unwrap()]);
    assert!(first.status.success());
    // As if killed after the final checkpoint committed, before _SUCCESS was written.
    std::fs::remove_file(out.join("_SUCCESS")).unwrap();
    let again = replay(&out, &[input.to_str().unwrap()]);
    assert!(again.status.success(), "{}", stderr(&again));
    assert_eq!(summary(&again), summary(&first));
    assert!(out.join("_SUCCESS").is_file());
}

#[test]
fn schema_explain_follows_one_line_through_the_whole_pipeline() {
    let dir = tempfile::tempdir().unwrap();
    let sample = dir.path().join("s.jsonl");
    let web = |id: &str, t: &str| {
        format!(
            "{{\"event_id\":\"{id}\",\"customer\":{{\"id\":\"c1\"}},\"time\":\"{t}\",\"event_type\":\"click\",\"target\":{{\"id\":\"subscribe-btn\"}}}}\n"
        )
    };
    let text = [
        web("a", "2024-03-05T10:15:30Z"),
        web("b", "2024-03-05T10:16:30Z"),
        web("a", "2024-03-05T10:15:30Z"),
        web("c", "2024-03-05 10:17:30+0100"),
    ]
    .concat();
    std::fs::write(&sample, text).unwrap();
    let explain = |line: &str| {
        run(&[
            "schema",
            "explain",
            "--schemas",
            &schemas(),
            "--sample",
            sample.to_str().unwrap(),
            "--line",
            line,
            "--format",
            "json",
        ])
    };
    let o = explain("2");
    assert!(o.status.success(), "{}", stderr(&o));
    let e: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(e["trace"]["kind"], "subscribe_click");
    assert_eq!(e["session"]["event_count"], 2, "the session both accepted clicks joined: {e}");
    assert_eq!(e["session"]["subscribe_clicks"], 2, "{e}");
    let paths: Vec<&str> = e["trace"]["steps"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["stage"] == "message_id")
        .map(|s| s["subject"].as_str().unwrap())
        .collect();
    assert_eq!(paths.first(), Some(&"$.messageId"), "every path in the order tried: {paths:?}");
    let e: serde_json::Value = serde_json::from_slice(&explain("3").stdout).unwrap();
    assert!(e["pipeline"].as_str().unwrap().starts_with("duplicate"), "{e}");
    let e: serde_json::Value = serde_json::from_slice(&explain("4").stdout).unwrap();
    assert_eq!(e["trace"]["outcome"], "bad_timestamp", "+hhmm is strict iso8601's refusal: {e}");
    assert!(e["trace"]["detail"].as_str().unwrap().contains("lenient"), "with a hint: {e}");
    let o = explain("5");
    assert!(
        !o.status.success() && stderr(&o).contains("the sample has 4 lines, not 5"),
        "{}",
        stderr(&o)
    );
}
