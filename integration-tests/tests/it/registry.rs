//! The schema registry through the CLI (a local directory and S3 on the loopback S3 API
//! server), hot reload under load, and the HTTP admin API through curl.

use integration_tests::{Running, curl, root, run};
use std::io::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

fn ok(o: &std::process::Output) -> String {
    assert!(o.status.success(), "stderr: {}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).to_string()
}

fn refused(o: &std::process::Output) -> String {
    assert_eq!(o.status.code(), Some(1), "stdout: {}", String::from_utf8_lossy(&o.stdout));
    String::from_utf8_lossy(&o.stderr).to_string()
}

fn register(reg: &str, file: &Path, extra: &[&str]) -> std::process::Output {
    let mut a = vec!["schema", "register", file.to_str().unwrap(), "--registry", reg];
    a.extend_from_slice(extra);
    run(&a)
}

/// The shipped `web` schema with `version = 1` replaced and `edit` applied.
fn web_version(dir: &Path, version: u32, edit: impl Fn(String) -> String) -> std::path::PathBuf {
    let text = std::fs::read_to_string(root().join("schemas/web.toml")).unwrap();
    let text = edit(text.replace("version = 1", &format!("version = {version}")));
    let f = dir.join(format!("web-v{version}.toml"));
    std::fs::write(&f, text).unwrap();
    f
}

/// Register, list, show, diff, refusals and --force on `reg` (a directory or s3:// URL).
fn registry_workflow(reg: &str, env: &[(&str, &str)]) {
    let work = tempfile::tempdir().unwrap();
    let runv = |a: &[&str]| {
        std::process::Command::new(integration_tests::bin())
            .args(a)
            .envs(env.iter().copied())
            .env("RUST_LOG", "warn")
            .output()
            .unwrap()
    };
    let reg_args = |f: &Path, extra: &[&str]| {
        let mut a = vec!["schema", "register", f.to_str().unwrap(), "--registry", reg];
        a.extend_from_slice(extra);
        runv(&a)
    };
    let sample = root().join("integration-tests/fixtures/sample/clicks-2k.jsonl.gz");
    let sample_arg = ["--sample", sample.to_str().unwrap()];
    // The first seeds the registry; the others join a set in force, judged on a sample.
    let out = ok(&reg_args(&root().join("schemas/segment.toml"), &[]));
    assert!(out.contains("registered segment@1"), "{out}");
    let err = refused(&reg_args(&root().join("schemas/web.toml"), &[]));
    assert!(err.contains("web@1 is incompatible with the set in force"), "{err}");
    assert!(err.contains("breaking: name: adds schema web"), "{err}");
    for s in ["web", "ivr", "legacy"] {
        let out = ok(&reg_args(&root().join(format!("schemas/{s}.toml")), &sample_arg));
        assert!(out.contains(&format!("registered {s}@1")), "{out}");
    }
    // Again: nothing to do, and no new version.
    let out = ok(&reg_args(&root().join("schemas/web.toml"), &[]));
    assert!(out.contains("unchanged: web@1"), "{out}");

    // The new app version renamed customer.id to customer.uid: without an alias, refused.
    let renamed = web_version(work.path(), 2, |t| t.replace("'$.customer.id'", "'$.customer.uid'"));
    let err = refused(&reg_args(&renamed, &[]));
    assert!(err.contains("web@2 is incompatible with web@1"), "{err}");
    assert!(err.contains("breaking: fields.customer_id: drops path $.customer.id"), "{err}");
    // A wrong version number is named.
    let skipped = web_version(work.path(), 3, |t| t);
    assert!(refused(&reg_args(&skipped, &[])).contains("the next version is 2"));
    // With the old path kept as an alias: the new path leads, so it is judged on a sample.
    let aliased = web_version(work.path(), 2, |t| {
        t.replace("'$.customer.id'", "'$.customer.uid', '$.customer.id'")
    });
    let err = refused(&reg_args(&aliased, &[]));
    assert!(err.contains("adds path $.customer.uid ahead of $.customer.id"), "{err}");
    let out = ok(&reg_args(&aliased, &sample_arg));
    assert!(out.contains("registered web@2"), "{out}");

    // A classification change: refused without a sample, judged on one, forced with a reason.
    let moved = web_version(work.path(), 3, |t| {
        t.replace("in = [\"mouseover\", \"hover\"]", "in = [\"mouseover\"]")
            .replace("'$.customer.id'", "'$.customer.uid', '$.customer.id'")
    });
    let err = refused(&reg_args(&moved, &[]));
    assert!(err.contains("breaking: classify: rules changed") && err.contains("--sample"), "{err}");
    let err = refused(&reg_args(&moved, &["--sample", sample.to_str().unwrap()]));
    assert!(
        err.contains("sample events move from subscribe_hover to other")
            || err.contains("accepted before"),
        "{err}"
    );
    let o = reg_args(&moved, &["--force"]);
    assert_eq!(o.status.code(), Some(2), "clap refuses --force without --reason");
    let out = ok(&reg_args(
        &moved,
        &["--sample", sample.to_str().unwrap(), "--force", "--reason", "3.3 dropped hover"],
    ));
    assert!(out.contains("registered web@3") && out.contains("(forced)"), "{out}");

    let list = ok(&runv(&["schema", "list", "--registry", reg]));
    let web = list.lines().find(|l| l.starts_with("web ")).unwrap();
    assert!(web.contains(" 3 ") && web.ends_with("3  (forced)"), "{list}");
    assert_eq!(list.lines().count(), 5, "{list}");

    let shown = ok(&runv(&["schema", "show", "web@1", "--registry", reg]));
    assert_eq!(shown, std::fs::read_to_string(root().join("schemas/web.toml")).unwrap());
    let rec: serde_json::Value = serde_json::from_str(&ok(&runv(&[
        "schema",
        "show",
        "web",
        "--registry",
        reg,
        "--format",
        "json",
    ])))
    .unwrap();
    assert_eq!(rec["version"], 3);
    assert_eq!(rec["reason"], "3.3 dropped hover");
    assert_eq!(rec["forced"], true);
    let err = refused(&runv(&["schema", "show", "web@9", "--registry", reg]));
    assert!(err.contains("web@9 is not registered"), "{err}");

    let diff = ok(&runv(&["schema", "diff", "web@1", "web@2", "--registry", reg]));
    assert!(diff.contains("--- web@1") && diff.contains("+++ web@2"), "{diff}");
    assert!(diff.contains("+customer_id = ['$.customer.uid', '$.customer.id']"), "{diff}");
    // Without a sample, a path put ahead of the old one is a change only a sample can judge.
    assert!(
        diff.contains(
            "breaking: fields.customer_id: adds path $.customer.uid ahead of $.customer.id"
        ),
        "{diff}"
    );
}

#[test]
fn a_directory_registry_versions_and_guards_schemas() {
    let reg = tempfile::tempdir().unwrap();
    registry_workflow(reg.path().to_str().unwrap(), &[]);
    // Versions are plain files an operator can back up; nothing else is written there.
    let web: Vec<_> = std::fs::read_dir(reg.path().join("web"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    assert_eq!(web.len(), 3, "{web:?}");
}

use integration_tests::services::s3_env;

/// Creates a fresh bucket with curl (a real client; the S3 API server takes unsigned calls).
fn fresh_bucket(endpoint: &str) -> String {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let name = format!("registry-{}-{n}", std::process::id());
    let (code, body) = curl(&["-X", "PUT", &format!("{endpoint}/{name}")]);
    assert_eq!(
        code, 200,
        "cannot create a bucket on the S3 API server at {endpoint} (start it: scripts/services up s3): {body}"
    );
    name
}

#[test]
fn an_s3_registry_versions_and_guards_schemas() {
    let env = s3_env();
    let bucket = fresh_bucket(&env[0].1);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    registry_workflow(&format!("s3://{bucket}/team/schemas"), &env);
}

/// One generated event per line: its own customer, one second after the previous line, so
/// every session holds exactly one event and closes as the next lines arrive.
fn event_line(i: u64) -> String {
    if i.is_multiple_of(97) {
        return format!("{{\"id\": {i}, \"broken\": \n");
    }
    let evt = if i.is_multiple_of(2) { "signup" } else { "click" };
    format!(
        "{{\"id\": {i}, \"user\": \"u{i}\", \"ts\": {}, \"evt\": \"{evt}\"}}\n",
        1_709_510_400 + i
    )
}

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

const LINES: u64 = 60_000;

/// A registry at `reg` holding `app@1`.
fn register_app_v1(reg: &str, dir: &Path) {
    let v1 = dir.join("app-v1.toml");
    std::fs::write(&v1, APP_V1).unwrap();
    ok(&register(reg, &v1, &[]));
}

#[test]
#[allow(clippy::too_many_lines)] // one scenario, told in order
fn hot_reload_under_load_switches_whole_sets_between_batches() {
    let dir = tempfile::tempdir().unwrap();
    let (reg, out) = (dir.path().join("registry"), dir.path().join("out"));
    let reg_s = reg.to_str().unwrap();
    register_app_v1(reg_s, dir.path());

    let input = dir.path().join("events.jsonl");
    let mut file = std::fs::File::create(&input).unwrap();
    let p = Running::start(
        &[
            "replay",
            "--follow",
            "--registry",
            reg_s,
            "--admin-listen",
            "127.0.0.1:0",
            "--output",
            out.to_str().unwrap(),
            "--gap",
            "1s",
            "--allowed-lateness",
            "0s",
            "--checkpoint-every",
            "2000",
            "--checkpoint-interval",
            "200ms",
            input.to_str().unwrap(),
        ],
        &[],
    );
    let admin = p.admin_addr();
    // A writer keeps appending while the new version is registered. Halfway it waits until the
    // watcher has the new set, so that both sets certainly see events, whatever the load.
    let (go, halfway) = std::sync::mpsc::channel::<()>();
    let writer = std::thread::spawn(move || {
        for i in 1..=LINES {
            if i == LINES / 2 {
                file.flush().unwrap();
                halfway.recv().unwrap();
            }
            file.write_all(event_line(i).as_bytes()).unwrap();
            if i % 500 == 0 {
                file.flush().unwrap();
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    });
    // Register once the first rows are out, while lines keep coming. (The sessions directory
    // itself exists from the start: wait for rows in it.)
    let until = Instant::now() + Duration::from_secs(30);
    while integration_tests::rows(&out, "sessions").is_empty() {
        assert!(Instant::now() < until, "no rows from the first set");
        std::thread::sleep(Duration::from_millis(20));
    }
    // v2 also classifies sign-ups (as page views): compatible, it moves nothing classified.
    let v2 = dir.path().join("app-v2.toml");
    std::fs::write(
        &v2,
        APP_V1.replace("version = 1", "version = 2")
            + "[[classify]]\nkind = \"page_view\"\nwhen = [{ path = '$.evt', equals = \"signup\" }]\n",
    )
    .unwrap();
    // A rule change is judged on a sample: sign-ups were unclassified, so nothing moves.
    let sample = dir.path().join("sample.jsonl");
    std::fs::write(&sample, (1..=200).map(event_line).collect::<String>()).unwrap();
    let said = ok(&register(reg_s, &v2, &["--sample", sample.to_str().unwrap()]));
    assert!(said.contains("registered app@2"), "{said}");
    p.wait_log("Loaded a new schema set", 30);
    go.send(()).unwrap();
    p.wait_log("Schema set switched", 30);
    // A version that does not parse reaches the directory behind the registry's back: refused,
    // the set in force stays.
    std::fs::write(
        reg.join("app/v000003.json"),
        r#"{"name":"app","version":3,"registered_at":"x","forced":false,"source":"name = \"app\"\nversion = 3\n[fields]\nmessage_id = ['$.id[']\n"}"#,
    )
    .unwrap();
    p.wait_log("Refused a new schema set", 30);
    writer.join().unwrap();

    let (code, status) = curl(&[&format!("http://{admin}/schemas/active")]);
    assert_eq!(code, 200);
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(status["active"], "app@2");
    assert_eq!(status["refused"], 1);
    assert!(status["last_error"].as_str().unwrap().contains("app@3"), "{status}");
    let (_, metrics) = curl(&[&format!("http://{admin}/metrics")]);
    assert!(
        metrics.contains("clickstream_schema_reloads_total{result=\"refused\"} 1")
            && metrics.contains("clickstream_schema_reloads_total{result=\"loaded\"} 1"),
        "{metrics}"
    );

    // Wait for the rows of every closed session, then stop.
    // The last two sessions stay open: a session closes once the watermark is past end + gap.
    let expected = LINES - LINES / 97 - 2;
    let until = Instant::now() + Duration::from_mins(1);
    while !out.join("sessions").exists()
        || integration_tests::rows(&out, "sessions").len() < expected as usize
    {
        assert!(Instant::now() < until, "rows did not arrive");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(p.interrupt(), Some(130));

    let mut rows: Vec<serde_json::Value> = integration_tests::rows(&out, "sessions")
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len() as u64, expected, "every closed session once");
    rows.sort_by_key(|r| r["session_start"].as_i64().unwrap());
    // Each event was extracted by one whole set, and the sets switch once, in input order.
    let mut switch_at = None;
    for (i, r) in rows.iter().enumerate() {
        let sets = r["schema_sets"].as_array().unwrap();
        assert_eq!(sets.len(), 1, "{r}");
        let v2 = sets[0] == "app@2";
        assert!(v2 || sets[0] == "app@1", "{r}");
        let signup = (r["session_start"].as_i64().unwrap() / 1000 - 1_709_510_400) % 2 == 0;
        assert_eq!(r["page_views"] == 1, v2 && signup, "v2 and only v2 counts sign-ups: {r}");
        assert_eq!(r["subscribe_clicks"] == 1, !signup, "{r}");
        match (switch_at, v2) {
            (None, true) => switch_at = Some(i),
            (Some(_), false) => panic!("app@1 after the switch: {r}"),
            _ => {}
        }
    }
    let at = switch_at.expect("the switch is visible in the rows");
    assert!(at > 0, "some events were processed before the switch");
    // Dead letters name the set in force, switching at the same point of the input.
    let dead: Vec<serde_json::Value> = integration_tests::rows(&out, "dead-letter")
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(dead.len() as u64, LINES / 97);
    let line_of =
        |r: &serde_json::Value| r["session_start"].as_i64().unwrap() / 1000 - 1_709_510_400;
    let (last_v1, first_v2) = (line_of(&rows[at - 1]), line_of(&rows[at]));
    for d in &dead {
        let line = d["source"]["line"].as_i64().unwrap();
        let set = d["schema_set"].as_str().unwrap();
        if line < last_v1 {
            assert_eq!(set, "app@1", "{d}");
        } else if line > first_v2 {
            assert_eq!(set, "app@2", "{d}");
        } else {
            assert!(set == "app@1" || set == "app@2", "{d}");
        }
    }
}

#[test]
#[allow(clippy::too_many_lines)] // one scenario, told in order
fn the_admin_api_serves_schema_operations_behind_a_token() {
    let dir = tempfile::tempdir().unwrap();
    let reg = dir.path().join("registry");
    let reg_s = reg.to_str().unwrap();
    register_app_v1(reg_s, dir.path());
    let input = dir.path().join("events.jsonl");
    std::fs::write(&input, "").unwrap();
    let out = dir.path().join("out");
    let p = Running::start(
        &[
            "replay",
            "--follow",
            "--registry",
            reg_s,
            "--admin-listen",
            "127.0.0.1:0",
            "--output",
            out.to_str().unwrap(),
            input.to_str().unwrap(),
        ],
        &[("CLICKSTREAM__ADMIN__TOKEN", "s3cret-token-for-the-admin-api-tests")],
    );
    let base = format!("http://{}", p.admin_addr());
    let auth = "Authorization: Bearer s3cret-token-for-the-admin-api-tests";
    let url = |path: &str| format!("{base}{path}");

    assert_eq!(curl(&[&url("/healthz")]).0, 200);
    assert_eq!(curl(&[&url("/schemas")]).0, 401, "no token");
    assert_eq!(curl(&["-H", "Authorization: Bearer wrong", &url("/schemas")]).0, 401);
    let (code, body) = curl(&["-H", auth, &url("/schemas")]);
    assert_eq!(code, 200, "{body}");
    assert!(body.contains(r#""name":"app""#) && body.contains(r#""latest":1"#), "{body}");
    let (code, body) = curl(&["-H", auth, &url("/schemas/app/1")]);
    assert_eq!(code, 200);
    assert_eq!(serde_json::from_str::<serde_json::Value>(&body).unwrap()["source"], APP_V1);
    assert_eq!(curl(&["-H", auth, &url("/schemas/nope")]).0, 404);

    // Validate: errors carry line and column.
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, APP_V1.replace("'$.user'", "'$.user['")).unwrap();
    let (code, body) = curl(&[
        "-H",
        auth,
        "--data-binary",
        &format!("@{}", bad.display()),
        &url("/schemas/validate"),
    ]);
    assert_eq!(code, 422, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["errors"][0]["line"], 5, "{body}");
    assert_eq!(v["errors"][0]["field"], "fields.customer_id[0]", "{body}");

    // Test a candidate on a posted sample.
    let sample = dir.path().join("sample.jsonl");
    std::fs::write(&sample, (1..=10).map(event_line).collect::<String>()).unwrap();
    let v2 = dir.path().join("app-v2.toml");
    std::fs::write(
        &v2,
        APP_V1.replace("version = 1", "version = 2").replace("'$.user'", "'$.uid'"),
    )
    .unwrap();
    let (code, body) = curl(&[
        "-H",
        auth,
        "-F",
        &format!("schema=@{}", v2.display()),
        "-F",
        &format!("sample=@{}", sample.display()),
        &url("/schemas/test"),
    ]);
    assert_eq!(code, 200, "{body}");
    let r: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(r["lines"], 10, "{body}");
    assert_eq!(r["rejected"]["missing_customer_id"]["count"], 10, "{body}");

    // Explain one line of a posted sample under the set in force.
    let (code, body) = curl(&[
        "-H",
        auth,
        "-F",
        &format!("sample=@{}", sample.display()),
        &url("/schemas/explain?line=3"),
    ]);
    assert_eq!(code, 200, "{body}");
    let e: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(e["trace"]["outcome"], "accepted", "{body}");
    assert_eq!(e["trace"]["kind"], "subscribe_click", "line 3 is a click: {body}");
    assert_eq!(e["pipeline"], "joined a session", "{body}");
    assert_eq!(e["session"]["customer_id"], "u3", "{body}");
    let (code, body) = curl(&[
        "-H",
        auth,
        "-F",
        &format!("sample=@{}", sample.display()),
        &url("/schemas/explain?line=11"),
    ]);
    assert_eq!(code, 400, "a line past the end: {body}");

    // Register: the rename is refused (409), the aliased version is created (201).
    let (code, body) =
        curl(&["-H", auth, "-F", &format!("schema=@{}", v2.display()), &url("/schemas/register")]);
    assert_eq!(code, 409, "{body}");
    assert!(body.contains("drops path $.user"), "{body}");
    std::fs::write(
        &v2,
        // The old path first, the new one after it: an alias that needs no sample.
        APP_V1.replace("version = 1", "version = 2").replace("'$.user'", "'$.user', '$.uid'"),
    )
    .unwrap();
    let (code, body) = curl(&[
        "-H",
        "Authorization: Bearer wrong",
        "-F",
        &format!("schema=@{}", v2.display()),
        &url("/schemas/register"),
    ]);
    assert_eq!(code, 401, "{body}");
    let (code, body) =
        curl(&["-H", auth, "-F", &format!("schema=@{}", v2.display()), &url("/schemas/register")]);
    assert_eq!(code, 201, "{body}");
    assert!(body.contains(r#""registered":"app@2""#), "{body}");
    // The running processor picks it up.
    p.wait_log("Schema set switched", 30);
    let line = p.wait_log("Loaded a new schema set", 30);
    assert!(line.contains("app@2"), "{line}");
    // A new producer whose own sample events are all dead-lettered: 409 with the warning,
    // then registered with `force` and a `reason`.
    let probe = dir.path().join("probe.toml");
    std::fs::write(
        &probe,
        "name = \"probe\"\nversion = 1\n[fields]\nmessage_id = ['$.pid']\ncustomer_id = ['$.who']\nevent_time = [{ path = '$.ts', format = \"epoch\" }]\n",
    )
    .unwrap();
    let probe_sample = dir.path().join("probe.jsonl");
    std::fs::write(
        &probe_sample,
        "{\"pid\":\"p1\",\"ts\":1709510401}\n{\"pid\":\"p2\",\"ts\":1709510402}\n",
    )
    .unwrap();
    let form = [
        "-H",
        auth,
        "-F",
        &format!("schema=@{}", probe.display()),
        "-F",
        &format!("sample=@{}", probe_sample.display()),
    ];
    let (code, body) = curl(&[&form[..], &[&url("/schemas/register")]].concat());
    assert_eq!(code, 409, "{body}");
    assert!(body.contains("2 of the 2 sample events that are probe's own"), "{body}");
    assert!(body.contains(r#""severity":"warning""#), "{body}");
    let (code, body) = curl(
        &[
            &form[..],
            &["-F", "force=true", "-F", "reason=probe ships who in 1.1", &url("/schemas/register")],
        ]
        .concat(),
    );
    assert_eq!(code, 201, "{body}");
    assert!(
        body.contains(r#""registered":"probe@1""#) && body.contains(r#""forced":true"#),
        "{body}"
    );
    assert!(
        !p.log().join("\n").contains("s3cret-token-for-the-admin-api-tests"),
        "the token is never logged"
    );
    assert_eq!(p.interrupt(), Some(130));
}

#[test]
fn the_admin_api_needs_a_token_off_loopback() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("events.jsonl");
    std::fs::write(&input, "").unwrap();
    let o = run(&[
        "replay",
        "--admin-listen",
        "0.0.0.0:0",
        "--output",
        dir.path().join("out").to_str().unwrap(),
        "--schemas",
        root().join("schemas").to_str().unwrap(),
        input.to_str().unwrap(),
    ]);
    let err = refused(&o);
    assert!(err.contains("not a loopback address: set admin.token"), "{err}");
}

#[test]
fn an_s3_registry_is_polled_and_a_new_version_takes_over() {
    let env = s3_env();
    let bucket = fresh_bucket(&env[0].1);
    let mut env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    env.push(("CLICKSTREAM__REGISTRY__POLL_INTERVAL", "200ms"));
    let reg = format!("s3://{bucket}/schemas");
    let dir = tempfile::tempdir().unwrap();
    let register_s3 = |file: &Path| {
        std::process::Command::new(integration_tests::bin())
            .args(["schema", "register", file.to_str().unwrap(), "--registry", &reg])
            .args(["--sample", dir.path().join("sample.jsonl").to_str().unwrap()])
            .envs(env.iter().copied())
            .output()
            .unwrap()
    };
    std::fs::write(dir.path().join("sample.jsonl"), (1..=50).map(event_line).collect::<String>())
        .unwrap();
    let v1 = dir.path().join("app-v1.toml");
    std::fs::write(&v1, APP_V1).unwrap();
    ok(&register_s3(&v1));
    let input = dir.path().join("events.jsonl");
    std::fs::write(&input, (1..=1000).map(event_line).collect::<String>()).unwrap();
    let out = dir.path().join("out");
    let p = Running::start(
        &[
            "replay",
            "--follow",
            "--registry",
            &reg,
            "--output",
            out.to_str().unwrap(),
            "--gap",
            "1s",
            "--allowed-lateness",
            "0s",
            "--checkpoint-interval",
            "100ms",
            input.to_str().unwrap(),
        ],
        &env,
    );
    p.wait_log("Loaded schemas", 30);
    let v2 = dir.path().join("app-v2.toml");
    std::fs::write(
        &v2,
        APP_V1.replace("version = 1", "version = 2")
            + "[[classify]]\nkind = \"page_view\"\nwhen = [{ path = '$.evt', equals = \"signup\" }]\n",
    )
    .unwrap();
    ok(&register_s3(&v2));
    let line = p.wait_log("Schema set switched", 30);
    assert!(line.contains("app@2"), "{line}");
    // Lines written after the switch are read by app@2.
    let mut f = std::fs::OpenOptions::new().append(true).open(&input).unwrap();
    f.write_all((1001..=1010).map(event_line).collect::<String>().as_bytes()).unwrap();
    drop(f);
    let until = Instant::now() + Duration::from_secs(30);
    let v2_rows = || {
        out.join("sessions").exists()
            && integration_tests::rows(&out, "sessions").iter().any(|l| l.contains("app@2"))
    };
    while !v2_rows() {
        assert!(Instant::now() < until, "no row read by app@2");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(p.interrupt(), Some(130));
}

/// Two registrations that landed at once can leave a latest set that does not compile (here a
/// record written behind the registry's back stands for it): a processor starting then runs
/// the last good set instead of crash-looping, and says so.
#[test]
fn a_latest_set_that_does_not_compile_leaves_the_last_good_one_in_force() {
    let work = tempfile::tempdir().unwrap();
    let reg = work.path().join("reg");
    let reg_s = reg.to_str().unwrap();
    ok(&register(reg_s, &root().join("schemas"), &[]));
    let bad = serde_json::json!({ "name": "zz", "version": 1, "registered_at": "2999-01-01T00:00:00Z",
        "forced": false, "findings": [], "source": "name = \"zz\"\nversion = 1\n[fields\n" });
    std::fs::create_dir_all(reg.join("zz")).unwrap();
    std::fs::write(reg.join("zz/v000001.json"), bad.to_string()).unwrap();
    let input = work.path().join("in.jsonl");
    integration_tests::generate(&input, 2_000, 5, "0");
    let out = work.path().join("out");
    let o = std::process::Command::new(integration_tests::bin())
        .args(["replay", "--registry", reg_s, "--output", out.to_str().unwrap()])
        .arg(&input)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{log}");
    assert!(log.contains("running the last good set"), "{log}");
    assert!(log.contains("segment@1"), "{log}");
    let direct = work.path().join("direct");
    let d = integration_tests::replay(&direct, &[input.to_str().unwrap()]);
    assert!(d.status.success());
    assert_eq!(
        integration_tests::rows(&out, "sessions/"),
        integration_tests::rows(&direct, "sessions/")
    );
}
