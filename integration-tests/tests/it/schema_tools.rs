//! The tools that answer an analyst's questions, through the release binary: registering
//! safely (an empty registry does not lose the schemas directory; a version whose own sample
//! events are mostly dead-lettered needs --force), validating one file within its set, one
//! error line format from every command, and `schema show --set`.

use integration_tests::{bin, root, run};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Output;

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).to_string()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

fn ok(o: &Output) -> String {
    assert!(o.status.success(), "stderr: {}", stderr(o));
    stdout(o)
}

fn refused(o: &Output) -> String {
    assert_eq!(o.status.code(), Some(1), "stdout: {}\nstderr: {}", stdout(o), stderr(o));
    stderr(o)
}

/// Runs the binary in `cwd` (where a relative `schemas` directory is the default one).
fn run_in(cwd: &Path, args: &[&str]) -> Output {
    std::process::Command::new(bin())
        .args(args)
        .current_dir(cwd)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap()
}

/// A copy of the shipped schemas in `dir/schemas`.
fn shipped_copy(dir: &Path) -> PathBuf {
    let s = dir.join("schemas");
    std::fs::create_dir_all(&s).unwrap();
    for n in ["segment", "web", "ivr", "legacy"] {
        std::fs::copy(root().join(format!("schemas/{n}.toml")), s.join(format!("{n}.toml")))
            .unwrap();
    }
    s
}

const APP: &str = r#"name = "app"
version = 1
[fields]
message_id = ['$.pid']
customer_id = ['$.who']
event_time = [{ path = '$.ts', format = "epoch" }]
"#;

#[test]
fn register_into_an_empty_registry_does_not_lose_the_schemas_directory() {
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    shipped_copy(w);
    // One shipped schema alone into an empty registry: the three others would be lost.
    let err = refused(&run_in(w, &["schema", "register", "schemas/web.toml", "--registry", "reg"]));
    assert!(err.contains("web@1 was not registered"), "{err}");
    assert!(err.contains("warning: registry: the registry is empty"), "{err}");
    assert!(err.contains("would lose its other schemas (ivr, legacy, segment)"), "{err}");
    assert!(err.contains("clickstream schema register schemas --registry"), "{err}");
    assert!(err.contains("--force --reason"), "{err}");
    assert!(!w.join("reg/web").exists(), "nothing stored");

    // A new producer into an empty registry, with the directory given: all four would be lost,
    // and the seed command names the new file too.
    let app = w.join("app.toml");
    std::fs::write(&app, APP).unwrap();
    let dir = w.join("schemas");
    let reg2 = w.join("reg2");
    let args = [
        "schema",
        "register",
        app.to_str().unwrap(),
        "--registry",
        reg2.to_str().unwrap(),
        "--schemas",
        dir.to_str().unwrap(),
    ];
    let err = refused(&run(&args));
    assert!(err.contains("(ivr, legacy, segment, web)"), "{err}");
    assert!(
        err.contains(&format!("register {} {} --registry", dir.display(), app.display())),
        "{err}"
    );

    // The whole directory in one command seeds the registry: no warning.
    let out = ok(&run_in(w, &["schema", "register", "schemas", "--registry", "reg"]));
    for s in ["segment", "web", "ivr", "legacy"] {
        assert!(out.contains(&format!("registered {s}@1 in reg\n")), "{out}");
    }
    // Then one more producer joins a registry that is not empty: its rules would see every
    // event, so it is judged on a sample (refused without one), with no warning.
    let err = refused(&run_in(w, &["schema", "register", "app.toml", "--registry", "reg"]));
    assert!(err.contains("app@1 is incompatible with the set in force"), "{err}");
    let sample = root().join("integration-tests/fixtures/sample/clicks-2k.jsonl.gz");
    let out = ok(&run_in(
        w,
        &[
            "schema",
            "register",
            "app.toml",
            "--registry",
            "reg",
            "--sample",
            sample.to_str().unwrap(),
        ],
    ));
    assert!(out.contains("registered app@1"), "{out}");

    // Forced with a reason: registered, the reason stored with the version.
    let mut forced = args.to_vec();
    forced.extend(["--force", "--reason", "app has a registry of its own"]);
    let out = ok(&run(&forced));
    assert!(out.contains("registered app@1") && out.contains("(forced)"), "{out}");
    let rec: serde_json::Value = serde_json::from_str(&ok(&run(&[
        "schema",
        "show",
        "app",
        "--registry",
        reg2.to_str().unwrap(),
        "--format",
        "json",
    ])))
    .unwrap();
    assert_eq!(rec["reason"], "app has a registry of its own");
    assert_eq!(rec["findings"][0]["severity"], "warning");
}

#[test]
fn register_refuses_a_version_whose_own_sample_events_are_mostly_dead_lettered() {
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let app = w.join("app.toml");
    std::fs::write(&app, APP).unwrap();
    // The producer sends `user`, not `who`: 9 of its 10 events lack a customer id. The
    // shipped producers' lines in the sample are not app's and do not count.
    let mut sample = String::new();
    for i in 1..=10 {
        let who = if i == 4 { "who" } else { "user" };
        let _ = writeln!(
            sample,
            "{{\"pid\":\"p{i}\",\"{who}\":\"c{i}\",\"ts\":{}}}",
            1_709_510_400 + i
        );
        let _ = writeln!(
            sample,
            "{{\"messageId\":\"s{i}\",\"userId\":\"u\",\"timestamp\":\"2024-03-05T10:15:3{}Z\",\"type\":\"page\"}}",
            i % 10
        );
    }
    let sample_file = w.join("sample.jsonl");
    std::fs::write(&sample_file, sample).unwrap();
    let reg = w.join("reg");
    let base = |extra: &[&str]| {
        let mut a = vec![
            "schema",
            "register",
            app.to_str().unwrap(),
            "--registry",
            reg.to_str().unwrap(),
            "--sample",
            sample_file.to_str().unwrap(),
        ];
        a.extend_from_slice(extra);
        run_in(w, &a)
    };
    // The registry holds the shipped set, so that only the sample speaks.
    ok(&run(&[
        "schema",
        "register",
        root().join("schemas").to_str().unwrap(),
        "--registry",
        reg.to_str().unwrap(),
    ]));
    let err = refused(&base(&[]));
    assert!(err.contains("app@1 was not registered"), "{err}");
    assert!(err.contains("warning: sample: 9 of the 10 sample events that are app's own"), "{err}");
    assert!(err.contains("missing_customer_id 9 (first at line 1)"), "{err}");
    assert!(err.contains(r#"first at line 1: {"pid":"p1","user":"c1""#), "{err}");
    let out = ok(&base(&["--force", "--reason", "user ships in 2.1"]));
    assert!(out.contains("registered app@1") && out.contains("(forced)"), "{out}");
}

#[test]
fn validate_judges_one_file_within_the_set_it_joins() {
    let work = tempfile::tempdir().unwrap();
    let dir = shipped_copy(work.path());
    // A file that only classifies: alone it has no fields, within the set it is valid.
    let extra = dir.join("extra.toml");
    std::fs::write(
        &extra,
        "name = \"extra\"\nversion = 1\n[[classify]]\nkind = \"page_view\"\nwhen = [{ path = '$.kind', equals = \"view\" }]\n",
    )
    .unwrap();
    let out = ok(&run(&["schema", "validate", extra.to_str().unwrap()]));
    assert!(
        out.contains(&format!(
            "{}: ok, validated as part of the set in {}: segment@1, web@1, ivr@1, legacy@1 + this file (extra@1)",
            extra.display(),
            dir.display()
        )),
        "{out}"
    );
    // Its conflict with another file is its own error.
    std::fs::write(
        &extra,
        "name = \"extra\"\nversion = 1\n[[classify]]\nkind = \"page_view\"\nwhen = [{ path = '$.kind', equals = \"support_call\" }]\n",
    )
    .unwrap();
    let err = refused(&run(&["schema", "validate", extra.to_str().unwrap()]));
    assert!(
        err.lines()
            .next()
            .unwrap()
            .starts_with(&format!("{}:4:8: classify[0].kind: conflicting", extra.display())),
        "{err}"
    );
    std::fs::remove_file(&extra).unwrap();

    // A broken neighbour is reported as the neighbour's, not blamed on the file validated.
    let broken = dir.join("broken.toml");
    std::fs::write(&broken, "name = \"broken\nversion = 1\n").unwrap();
    let web = dir.join("web.toml");
    let err = refused(&run(&["schema", "validate", web.to_str().unwrap()]));
    let web_s = web.display().to_string();
    assert!(
        err.contains(&format!(
            "1 schema error in other files of the set in {} (not in {web_s}):\n{}:1:",
            dir.display(),
            broken.display()
        )),
        "{err}"
    );
    // No error line (`FILE:LINE:…`) names web.toml.
    assert!(!err.lines().any(|l| l.starts_with(&format!("{web_s}:1"))), "{err}");
    assert!(
        err.contains(&format!(
            "{web_s}: no error in this file, but the set it joins does not validate"
        )),
        "{err}"
    );
    std::fs::remove_file(&broken).unwrap();

    // With --registry: the registry's set, the file standing in for its own name's version.
    let reg = work.path().join("reg");
    ok(&run(&["schema", "register", dir.to_str().unwrap(), "--registry", reg.to_str().unwrap()]));
    let v2 = work.path().join("web-v2.toml");
    std::fs::write(
        &v2,
        std::fs::read_to_string(&web).unwrap().replace("version = 1", "version = 2"),
    )
    .unwrap();
    let out = ok(&run(&[
        "schema",
        "validate",
        v2.to_str().unwrap(),
        "--registry",
        reg.to_str().unwrap(),
    ]));
    assert!(
        out.contains(&format!(
            "validated as part of the set in registry {}: segment@1, ivr@1, legacy@1 + this file (web@2, replacing web@1)",
            reg.display()
        )),
        "{out}"
    );
}

#[test]
fn the_same_broken_file_gives_the_same_error_line_from_validate_test_and_register() {
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("alone");
    std::fs::create_dir(&dir).unwrap();
    let bad = dir.join("bad.toml");
    std::fs::write(&bad, APP.replace("'$.who'", "'$.who['")).unwrap();
    let sample = work.path().join("s.jsonl");
    std::fs::write(&sample, "{}\n").unwrap();
    let reg = work.path().join("reg");
    let b = bad.to_str().unwrap();
    let outputs = [
        run(&["schema", "validate", b]),
        run(&["schema", "test", b, "--sample", sample.to_str().unwrap()]),
        run(&["schema", "register", b, "--registry", reg.to_str().unwrap()]),
    ];
    let lines: Vec<Vec<String>> = outputs
        .iter()
        .map(|o| {
            let err = refused(o);
            err.lines()
                .filter(|l| {
                    l.strip_prefix(b)
                        .and_then(|r| r.strip_prefix(':'))
                        .is_some_and(|r| r.starts_with(|c: char| c.is_ascii_digit()))
                })
                .map(str::to_owned)
                .collect()
        })
        .collect();
    let want = format!("{b}:5:16: fields.customer_id[0]: ");
    assert_eq!(lines[0].len(), 1, "{lines:?}");
    assert!(lines[0][0].starts_with(&want), "{lines:?}");
    assert_eq!(lines[0], lines[1], "validate and test");
    assert_eq!(lines[0], lines[2], "validate and register");
}

#[test]
fn show_set_prints_the_merged_order_from_a_directory_and_a_registry() {
    let work = tempfile::tempdir().unwrap();
    let dir = shipped_copy(work.path());
    // First in merge order (priority 5), it also reads `$.uid`: legacy's `$.uid` is never tried
    // again.
    std::fs::write(
        dir.join("early.toml"),
        "name = \"early\"\nversion = 1\npriority = 5\n[fields]\ncustomer_id = ['$.uid']\nevent_time = [{ path = '$.ts', format = \"epoch_millis\" }]\n",
    )
    .unwrap();
    let d = dir.to_str().unwrap();
    let json: serde_json::Value = serde_json::from_str(&ok(&run(&[
        "schema",
        "show",
        "--set",
        "--schemas",
        d,
        "--format",
        "json",
    ])))
    .unwrap();
    let set = &json["set"];
    let names: Vec<String> = set["schemas"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| format!("{}@{}", s["name"].as_str().unwrap(), s["version"]))
        .collect();
    assert_eq!(names, ["early@1", "segment@1", "web@1", "ivr@1", "legacy@1"]);
    let paths = |field: &str| -> Vec<String> {
        set[field]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| format!("{} {}", c["path"].as_str().unwrap(), c["schema"].as_str().unwrap()))
            .collect()
    };
    assert_eq!(
        paths("customer_id"),
        [
            "$.uid early",
            "$.userId segment",
            "$.customer.id web",
            "$.account.customer_id ivr",
            "$.user.id legacy"
        ]
    );
    assert_eq!(set["customer_id"][0]["also_declared_by"][0]["schema"], "legacy");
    assert_eq!(set["event_time"][0]["format"], "epoch_millis");
    assert_eq!(set["event_time"][0]["also_declared_by"][0]["format"], "epoch");
    assert_eq!(set["reject"][0]["schema"], "segment");
    assert_eq!(set["classify"][0]["then"], "support_call");
    assert_eq!(set["classify"][0]["schema"], "segment");
    assert_eq!(set["classify"][11]["rule"], "classify[3]");

    let text = ok(&run(&["schema", "show", "--set", "--schemas", d]));
    assert!(text.contains("   1. early@1"), "{text}");
    assert!(text.contains("also declared by legacy ($.uid): never tried again"), "{text}");
    assert!(text.contains("   1. support_call     segment:classify[0]"), "{text}");

    // The registry's set, after seeding it with the directory, is the same set.
    let reg = work.path().join("reg");
    let r = reg.to_str().unwrap();
    ok(&run(&["schema", "register", d, "--registry", r]));
    let from_reg: serde_json::Value = serde_json::from_str(&ok(&run(&[
        "schema",
        "show",
        "--set",
        "--registry",
        r,
        "--format",
        "json",
    ])))
    .unwrap();
    assert_eq!(from_reg["set"]["customer_id"], set["customer_id"]);
    assert_eq!(from_reg["set"]["classify"], set["classify"]);
    assert_eq!(from_reg["set"]["schemas"][0]["file"], "early@1");
}
