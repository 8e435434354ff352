//! The admin API's guards, through curl against the real binary: one rule for schema names
//! (HTTP paths and the CLI), body and sample caps, the concurrency gate, a sample judged off the
//! runtime's worker while checkpoints to S3 commit, and the token's length and failure count.

use integration_tests::{Running, curl, run, services};
use std::path::Path;

const TOKEN: &str = "admin-limits-test-token-0123456789abcdef";

const APP_V1: &str = r#"name = "app"
version = 1
[fields]
message_id = ['$.id']
customer_id = ['$.user']
event_time = [{ path = '$.ts', format = "epoch" }]
[[classify]]
kind = "subscribe_click"
when = [{ path = '$.evt', equals = "click" }]
"#;

fn event_line(i: u64) -> String {
    let evt = if i.is_multiple_of(2) { "signup" } else { "click" };
    format!(
        "{{\"id\": {i}, \"user\": \"u{i}\", \"ts\": {}, \"evt\": \"{evt}\"}}\n",
        1_709_510_400 + i
    )
}

fn auth() -> String {
    format!("Authorization: Bearer {TOKEN}")
}

/// A registry under `dir` holding app@1.
fn registry_with_app(dir: &Path) -> String {
    let reg = dir.join("registry");
    let v1 = dir.join("app-v1.toml");
    std::fs::write(&v1, APP_V1).unwrap();
    let o = run(&["schema", "register", v1.to_str().unwrap(), "--registry", reg.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    reg.to_str().unwrap().to_owned()
}

/// `replay --follow` on an empty input, serving the admin API with `env` over the token.
fn serve(dir: &Path, reg: &str, env: &[(&str, &str)]) -> (Running, String) {
    let out = dir.join("out");
    serve_to(dir, reg, env, &["--output", out.to_str().unwrap()])
}

/// The same, with `args` saying where the output goes.
fn serve_to(dir: &Path, reg: &str, env: &[(&str, &str)], args: &[&str]) -> (Running, String) {
    let input = dir.join("events.jsonl");
    std::fs::write(&input, "").unwrap();
    let mut all = vec![("CLICKSTREAM__ADMIN__TOKEN", TOKEN)];
    all.extend_from_slice(env);
    let mut a = vec!["replay", "--follow", "--registry", reg, "--admin-listen", "127.0.0.1:0"];
    a.extend_from_slice(args);
    a.push(input.to_str().unwrap());
    let p = Running::start(&a, &all);
    let base = format!("http://{}", p.admin_addr());
    (p, base)
}

/// A version record outside the registry, where a name with `..` would lead.
fn plant(path: &Path, name: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let rec = serde_json::json!({ "name": name, "version": 1, "registered_at": "2026-01-01T00:00:00Z",
        "forced": false, "source": "LEAKED" });
    std::fs::write(path, rec.to_string()).unwrap();
}

#[test]
fn schema_names_that_climb_out_of_the_registry_are_refused_over_http_and_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let reg = registry_with_app(dir.path());
    // `registry/../leak/v000001.json` and `registry/../v000001.json`.
    plant(&dir.path().join("leak/v000001.json"), "../leak");
    plant(&dir.path().join("v000001.json"), "..");
    let (p, base) = serve(dir.path(), &reg, &[]);
    let a = auth();
    for path in ["/schemas/..%2Fleak/1", "/schemas/..%2fleak", "/schemas/%2e%2e/1", "/schemas/../1"]
    {
        let (code, body) = curl(&["--path-as-is", "-H", &a, &format!("{base}{path}")]);
        assert_eq!(code, 400, "{path}: {body}");
        assert!(body.contains("is not a schema name") && !body.contains("LEAKED"), "{body}");
    }
    assert_eq!(
        curl(&["-H", &a, &format!("{base}/schemas/app/1")]).0,
        200,
        "valid names still work"
    );

    // The CLI: a reference, and a schema file whose name would become a directory.
    let o = run(&["schema", "show", "../leak@1", "--registry", &reg]);
    let (out, err) = (String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    assert!(!o.status.success() && !out.contains("LEAKED"), "{out}");
    assert!(err.contains("\"../leak\" is not a schema name"), "{err}");
    let long = "a".repeat(65);
    let f = dir.path().join("long.toml");
    std::fs::write(&f, APP_V1.replace("\"app\"", &format!("\"{long}\""))).unwrap();
    let o = run(&["schema", "register", f.to_str().unwrap(), "--registry", &reg]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("is not a schema name: 1 to 64"), "{err}");
    assert!(!Path::new(&reg).join(&long).exists(), "no directory made for the refused name");
    assert_eq!(p.interrupt(), Some(130));
}

#[test]
fn bodies_and_samples_over_their_caps_are_refused_with_413_naming_the_setting() {
    let dir = tempfile::tempdir().unwrap();
    let reg = registry_with_app(dir.path());
    let (p, base) = serve(
        dir.path(),
        &reg,
        &[
            ("CLICKSTREAM__ADMIN__MAX_BODY", "4KiB"),
            ("CLICKSTREAM__ADMIN__MAX_SAMPLE_BYTES", "64KiB"),
            ("CLICKSTREAM__ADMIN__MAX_SAMPLE_LINES", "100"),
        ],
    );
    let a = auth();
    let write = |name: &str, text: &str| {
        let f = dir.path().join(name);
        std::fs::write(&f, text).unwrap();
        f.to_str().unwrap().to_owned()
    };
    let padded = format!("{APP_V1}{}", "# padding\n".repeat(500));
    // A route without a sample: the whole body.
    let big = write("big.toml", &padded);
    let (code, body) =
        curl(&["-H", &a, "--data-binary", &format!("@{big}"), &format!("{base}/schemas/validate")]);
    assert_eq!(code, 413, "{body}");
    assert!(body.contains("admin.max_body = 4096 bytes"), "{body}");
    let ok = write("ok.toml", APP_V1);
    let (code, body) =
        curl(&["-H", &a, "--data-binary", &format!("@{ok}"), &format!("{base}/schemas/validate")]);
    assert_eq!(code, 200, "{body}");

    let post = |schema: &str, sample: &str| {
        let mut args =
            vec!["-H".to_owned(), a.clone(), "-F".to_owned(), format!("sample=@{sample}")];
        if !schema.is_empty() {
            args.extend(["-F".to_owned(), format!("schema=@{schema}")]);
        }
        args.push(format!("{base}/schemas/test"));
        curl(&args.iter().map(String::as_str).collect::<Vec<_>>())
    };
    let lines = |n: u64| (1..=n).map(event_line).collect::<String>();
    // 100 lines pass, with or without the last newline; 101 do not.
    let s100 = write("s100.jsonl", &lines(100));
    assert_eq!(post("", &s100).0, 200);
    let s100_open = write("s100-open.jsonl", lines(100).trim_end());
    assert_eq!(post("", &s100_open).0, 200);
    let s101 = write("s101.jsonl", &lines(101));
    let (code, body) = post("", &s101);
    assert_eq!(code, 413, "{body}");
    assert!(body.contains("admin.max_sample_lines = 100 lines"), "{body}");
    let s101_open = write("s101-open.jsonl", lines(101).trim_end());
    assert_eq!(post("", &s101_open).0, 413, "the last line counts without its newline");
    // Few lines, many bytes.
    let wide = write("wide.jsonl", &format!("{}\n", "x".repeat(70 << 10)));
    let (code, body) = post("", &wide);
    assert_eq!(code, 413, "{body}");
    assert!(body.contains("admin.max_sample_bytes = 65536 bytes"), "{body}");
    // The schema field beside a sample is capped like a body.
    let (code, body) = post(&big, &s100);
    assert_eq!(code, 413, "{body}");
    assert!(body.contains("`schema` is over admin.max_body"), "{body}");
    assert_eq!(p.interrupt(), Some(130));
}

#[test]
fn a_large_sample_is_judged_off_the_runtime_while_probes_answer_and_the_gate_holds() {
    let dir = tempfile::tempdir().unwrap();
    let reg = registry_with_app(dir.path());
    // Checkpoints to S3, whose requests run on the runtime that also serves the admin API.
    let bucket = services::fresh_bucket("admin-judge");
    let (output, state) = (format!("s3://{bucket}/out"), dir.path().join("state"));
    let s3 = services::s3_env();
    let mut env: Vec<(&str, &str)> = s3.iter().map(|(k, v)| (*k, v.as_str())).collect();
    env.push(("CLICKSTREAM__ADMIN__MAX_CONCURRENCY", "1"));
    let (p, base) = serve_to(
        dir.path(),
        &reg,
        &env,
        &[
            "--output",
            &output,
            "--state",
            state.to_str().unwrap(),
            "--checkpoint-interval",
            "200ms",
        ],
    );
    let input = dir.path().join("events.jsonl");
    let feed = |from: u64| {
        let mut f = std::fs::OpenOptions::new().append(true).open(&input).unwrap();
        for i in from..from + 1000 {
            std::io::Write::write_all(&mut f, event_line(i).as_bytes()).unwrap();
        }
    };
    let commits = || p.log().iter().filter(|l| l.contains("Committed checkpoint")).count();
    feed(1);
    p.wait_log("Committed checkpoint", 60);
    let a = auth();
    // A rule change is judged on the sample, by both sets: seconds of CPU for 60 MiB.
    let v2 = dir.path().join("app-v2.toml");
    std::fs::write(
        &v2,
        APP_V1.replace("version = 1", "version = 2")
            + "[[classify]]\nkind = \"page_view\"\nwhen = [{ path = '$.evt', equals = \"signup\" }]\n",
    )
    .unwrap();
    let sample = dir.path().join("sample.jsonl");
    let mut text = String::with_capacity(61 << 20);
    let mut i = 0;
    while text.len() < 60 << 20 {
        i += 1;
        text.push_str(&event_line(i));
    }
    std::fs::write(&sample, text).unwrap();

    let register = {
        let (a, url) = (a.clone(), format!("{base}/schemas/register"));
        let (schema, sample) =
            (format!("schema=@{}", v2.display()), format!("sample=@{}", sample.display()));
        std::thread::spawn(move || curl(&["-H", &a, "-F", &schema, "-F", &sample, &url]))
    };
    p.wait_log("Judging a sample (register)", 120);
    // The runtime's single worker is free: the probe answers while the sample is judged…
    assert_eq!(curl(&[&format!("{base}/healthz")]).0, 200);
    // …and a checkpoint's S3 writes go through: new lines are committed to S3 while the
    // registration still holds its slot (below). Judged on the runtime, they would wait for it.
    let before = commits();
    feed(1_000_000);
    let until = std::time::Instant::now() + std::time::Duration::from_mins(1);
    while commits() == before {
        assert!(std::time::Instant::now() < until, "no checkpoint while the sample was judged");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let took: Vec<String> = p
        .log()
        .iter()
        .filter(|l| l.contains("Committed checkpoint"))
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .map(|v| v["took_ms"].to_string())
        .collect();
    eprintln!("checkpoint took_ms, the last while judging: {}", took.join(" "));
    // …which the server itself orders: after that answer, the registration still holds the one
    // slot, so another schema request is turned away at once. Had the probe waited for the
    // registration, the slot would be free by now.
    let (code, body) = curl(&["-H", &a, &format!("{base}/schemas")]);
    assert_eq!(code, 503, "the registration ended before /healthz answered: {body}");
    assert!(body.contains("admin.max_concurrency = 1"), "{body}");

    let (code, body) = register.join().unwrap();
    assert_eq!(code, 201, "{body}");
    assert!(body.contains(r#""registered":"app@2""#), "{body}");
    assert_eq!(curl(&["-H", &a, &format!("{base}/schemas")]).0, 200, "the slot is free again");
    assert_eq!(p.interrupt(), Some(130));
}

#[test]
fn a_short_token_is_refused_at_start_and_failed_authentications_are_counted() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("events.jsonl");
    std::fs::write(&input, "").unwrap();
    let schemas = integration_tests::root().join("schemas");
    let short = "only-31-bytes-of-token-xxxxxxxx";
    assert_eq!(short.len(), 31);
    let o = std::process::Command::new(integration_tests::bin())
        .args(["replay", "--admin-listen", "127.0.0.1:0", "--output"])
        .arg(dir.path().join("out"))
        .arg("--schemas")
        .arg(&schemas)
        .arg(&input)
        .env("CLICKSTREAM__ADMIN__TOKEN", short)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("admin.token (CLICKSTREAM__ADMIN__TOKEN) is 31 bytes long"), "{err}");
    assert!(err.contains("at least 32") && !err.contains(short), "{err}");

    let reg = registry_with_app(dir.path());
    let (p, base) = serve(dir.path(), &reg, &[]);
    let guess = "Authorization: Bearer a-guess-that-must-never-be-logged";
    assert_eq!(curl(&["-H", guess, &format!("{base}/schemas")]).0, 401);
    assert_eq!(curl(&["-H", guess, &format!("{base}/schemas/app")]).0, 401);
    assert_eq!(curl(&[&format!("{base}/schemas")]).0, 401);
    assert_eq!(curl(&["-H", &auth(), &format!("{base}/schemas")]).0, 200);
    let (_, metrics) = curl(&[&format!("{base}/metrics")]);
    assert!(
        metrics.contains(r#"clickstream_admin_auth_failures_total{reason="wrong"} 2"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"clickstream_admin_auth_failures_total{reason="missing"} 1"#),
        "{metrics}"
    );
    let warned = p.wait_log("Admin API request refused", 10);
    assert!(warned.contains("WARN") && warned.contains("/schemas"), "{warned}");
    let log = p.log().join("\n");
    assert!(!log.contains("a-guess-that") && !log.contains(TOKEN), "no token is logged");
    assert_eq!(p.interrupt(), Some(130));
}
