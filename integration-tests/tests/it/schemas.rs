//! `clickstream schema validate` on the shipped schemas and on a corpus of broken ones: every
//! broken file is refused with its file, line, field and a message an analyst can act on.

use integration_tests::{root, run};

/// Validates a file of the corpus on its own (one file is judged within the files beside it,
/// and the corpus files are independent), or a directory of it as one set.
fn validate(path: &std::path::Path) -> (Option<i32>, String) {
    let alone = tempfile::tempdir().unwrap();
    let path = if path.is_file() {
        let copy = alone.path().join(path.file_name().unwrap());
        std::fs::copy(path, &copy).unwrap();
        copy
    } else {
        path.to_owned()
    };
    let o = run(&["schema", "validate", path.to_str().unwrap()]);
    (o.status.code(), String::from_utf8_lossy(&o.stderr).to_string())
}

#[test]
fn shipped_schemas_are_valid() {
    let o = run(&["schema", "validate", root().join("schemas").to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stdout).contains("segment@1"));
}

#[test]
fn every_broken_schema_is_refused_with_position_field_and_reason() {
    let dir = root().join("integration-tests/fixtures/bad-schemas");
    let cases: &[(&str, &str, &str)] = &[
        ("01-unclosed-string.toml", "1:10: name:", "invalid basic string"),
        ("02-unclosed-table.toml", "3:8: fields:", "unclosed table"),
        (
            "03-jsonpath-open-bracket.toml",
            "5:16: fields.customer_id[0]:",
            "expected selector at character 8",
        ),
        ("04-jsonpath-no-root.toml", "4:15: fields.message_id[0]:", "starts with `$`"),
        (
            "05-jsonpath-broken-filter.toml",
            "10:18: classify[0].when[0].path:",
            "not a valid JSONPath",
        ),
        (
            "06-unknown-time-format.toml",
            "6:41: fields.event_time[0].format:",
            "unknown time format `unix`",
        ),
        ("07-unknown-kind.toml", "9:8: classify[0].kind:", "unknown kind `purchase`"),
        ("08-unknown-key.toml", "1:1: nmae:", "unknown field `nmae`"),
        ("09-fields-as-array.toml", "3:1: fields:", "check the brackets"),
        ("10-when-as-table.toml", "10:1: classify.when:", "check the brackets"),
        ("11-empty.toml", ":0:0: -:", "the file is empty"),
        ("12-not-utf8.toml", "1:12: -:", "not valid UTF-8"),
        ("13-version-as-string.toml", "2:11: version:", "expected u32"),
        ("14-missing-name.toml", "1:1: name:", "missing field `name`"),
        ("15-reason-not-snake-case.toml", "9:10: reject[0].reason:", "snake_case"),
        ("16-empty-in.toml", "10:18: classify[0].when[0]:", "can never match"),
        ("17-two-tests.toml", "10:18: classify[0].when[0]:", "exactly one of"),
        ("18-never-matches.toml", "10:52: classify[0].when[1]:", "the rule never applies"),
        (
            "19-conflicting-classification.toml",
            "13:8: classify[1].kind:",
            "conflicting classification",
        ),
        ("20-json-strings-not-simple.toml", "3:17: json_strings[0]:", "simple paths only"),
        ("21-path-too-long.toml", "4:15: fields.message_id[0]:", "longer than 256"),
        ("22-no-fields.toml", "1:1: fields.message_id:", "no schema of the set gives a path"),
        ("23-builtin-reason.toml", "9:10: reject[0].reason:", "the pipeline gives itself"),
        ("24-duplicate-names", "b.toml:1:8: name:", "duplicate schema name `x`"),
        ("25-no-test.toml", "10:18: classify[0].when[0]:", "exactly one of"),
    ];
    let on_disk = std::fs::read_dir(&dir).unwrap().count();
    assert_eq!(on_disk, cases.len(), "every file of the corpus has a case");
    for (file, at, message) in cases {
        let (code, err) = validate(&dir.join(file));
        assert_eq!(code, Some(1), "{file}: {err}");
        let line = err
            .lines()
            .find(|l| l.contains(at))
            .unwrap_or_else(|| panic!("{file}: no `{at}` in:\n{err}"));
        assert!(
            line.contains(message) || err.contains(message),
            "{file}: `{message}` missing in:\n{err}"
        );
        assert!(!err.contains("panicked"), "{file}");
    }
}

#[test]
fn a_huge_schema_file_is_refused_before_it_is_read() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("huge.toml");
    let mut text = String::from("name = \"x\"\nversion = 1\n");
    while text.len() < 300 * 1024 {
        text.push_str("# padding padding padding padding padding padding padding padding\n");
    }
    std::fs::write(&f, text).unwrap();
    let (code, err) = validate(&f);
    assert_eq!(code, Some(1));
    assert!(err.contains("a schema file is at most"), "{err}");
}

#[test]
fn schema_test_reports_on_a_sample_without_touching_anything() {
    let sample = root().join("integration-tests/fixtures/events/edge_cases.jsonl");
    let before: Vec<_> =
        std::fs::read_dir(root()).unwrap().map(|e| e.unwrap().file_name()).collect();
    let o = run(&[
        "schema",
        "test",
        root().join("schemas").to_str().unwrap(),
        "--sample",
        sample.to_str().unwrap(),
        "--format",
        "json",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    // The oracle's answer for this fixture: 31 lines, 20 accepted + 1 duplicate (dedup needs
    // state, so a dry run counts the copy as accepted), 10 rejected.
    assert_eq!(r["lines"], 31);
    assert_eq!(r["accepted"], 21);
    assert_eq!(r["rejected"]["bad_timestamp"]["count"], 2);
    assert_eq!(r["kinds"]["support_call"], 4);
    assert_eq!(r["fields"]["customer_id"]["by_path"]["$.user.id"], 2);
    assert_eq!(r["schemas"]["legacy"], 6);
    let after: Vec<_> =
        std::fs::read_dir(root()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(before, after, "a dry run writes nothing");

    let text = run(&[
        "schema",
        "test",
        root().join("schemas").to_str().unwrap(),
        "--sample",
        sample.to_str().unwrap(),
    ]);
    let t = String::from_utf8_lossy(&text.stdout);
    assert!(t.contains("31 lines, 21 accepted, 10 rejected"), "{t}");
}

#[test]
fn the_committed_json_schema_is_the_one_the_loader_implies() {
    let o = run(&["schema", "json-schema"]);
    assert!(o.status.success());
    let committed = std::fs::read_to_string(root().join("schemas/schema.json")).unwrap();
    assert!(
        String::from_utf8_lossy(&o.stdout) == committed,
        "schemas/schema.json is stale: regenerate it with `clickstream schema json-schema > schemas/schema.json`"
    );
    let v: serde_json::Value = serde_json::from_str(&committed).unwrap();
    assert_eq!(v["additionalProperties"], false, "unknown keys are errors for editors too");
    assert!(v["required"].as_array().unwrap().contains(&"name".into()));
}
