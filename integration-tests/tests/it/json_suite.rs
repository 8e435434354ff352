//! A public JSON parser conformance suite (nst/JSONTestSuite, vendored under
//! `fixtures/jsontestsuite`): every document, as a whole line and as a property value of a valid
//! event, gets the oracle's verdict line by line. Lone surrogates in ids are included.

use integration_tests::{python, replay, root, shared_data};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;

/// The suite's documents, by name.
fn documents() -> Vec<(String, Vec<u8>)> {
    let dir = root().join("integration-tests/fixtures/jsontestsuite/test_parsing");
    let mut docs: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| {
            let p = e.unwrap().path();
            (p.file_name().unwrap().to_string_lossy().into_owned(), std::fs::read(&p).unwrap())
        })
        .collect();
    docs.sort();
    docs
}

/// Appends one input line per `\n`-separated piece of `line`, naming each after `name`.
fn push(input: &mut Vec<u8>, names: &mut Vec<String>, name: &str, line: &[u8]) {
    input.extend_from_slice(line);
    input.push(b'\n');
    names.extend(std::iter::repeat_n(name.to_owned(), line.split(|&b| b == b'\n').count()));
}

/// The oracle's verdict per line: `accepted`, `duplicate` or its reject reason.
fn oracle_verdicts(input: &Path) -> Vec<String> {
    let script = "import sys\nsys.path.insert(0, sys.argv[1])\nimport oracle\nseen = set()\n\
                  for raw in oracle.read_lines(sys.argv[2]):\n    try:\n        mid = oracle.process_line(raw)[0]\n\
                  \x20       v = 'duplicate' if mid in seen else 'accepted'\n        seen.add(mid)\n\
                  \x20   except oracle.Reject as e:\n        v = e.args[0]\n    print(v)\n";
    let out =
        Command::new(python()).args(["-c", script]).arg(shared_data()).arg(input).output().unwrap();
    assert!(out.status.success(), "oracle: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().lines().map(str::to_owned).collect()
}

/// The binary's verdict per line: dead-letter reasons by line, `accepted` elsewhere (duplicates
/// are counted, not dead-lettered: their count comes back beside).
fn binary_verdicts(input: &Path, lines: usize) -> (Vec<String>, u64) {
    let work = tempfile::tempdir().unwrap();
    let out = work.path().join("out");
    let run = replay(&out, &["--allowed-lateness", "7h", input.to_str().unwrap()]);
    assert!(run.status.success(), "replay: {}", String::from_utf8_lossy(&run.stderr));
    let mut v = vec!["accepted".to_owned(); lines];
    for (file, bytes) in integration_tests::tree(&out.join("dead-letter")) {
        for l in bytes.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
            let d: serde_json::Value = serde_json::from_slice(l).unwrap();
            let line = d["source"]["line"].as_u64().unwrap_or_else(|| panic!("{file}: {d}"));
            d["reason"].as_str().unwrap().clone_into(&mut v[usize::try_from(line).unwrap() - 1]);
        }
    }
    (v, integration_tests::summary(&run)["duplicates"].as_u64().unwrap())
}

fn compare(tag: &str, input: &[u8], names: &[String]) -> BTreeMap<String, usize> {
    let work = tempfile::tempdir().unwrap();
    let path = work.path().join(format!("{tag}.jsonl"));
    std::fs::write(&path, input).unwrap();
    let want = oracle_verdicts(&path);
    let (got, duplicates) = binary_verdicts(&path, want.len());
    let dup = |v: &str| if v == "duplicate" { "accepted".to_owned() } else { v.to_owned() };
    assert_eq!(want.len(), names.len(), "{tag}: lines vs names");
    let diffs: Vec<String> = (0..want.len())
        .filter(|&i| dup(&want[i]) != got[i])
        .map(|i| format!("line {} ({}): oracle {}, binary {}", i + 1, names[i], want[i], got[i]))
        .collect();
    eprintln!("{tag}: {} lines, {} agree", want.len(), want.len() - diffs.len());
    assert!(
        diffs.is_empty(),
        "{tag}: {} lines differ:\n{}",
        diffs.len(),
        diffs[..diffs.len().min(30)].join("\n")
    );
    let mut counts = BTreeMap::new();
    for v in want {
        *counts.entry(v).or_default() += 1;
    }
    let want_dups = counts.get("duplicate").copied().unwrap_or(0);
    assert_eq!(duplicates, u64::try_from(want_dups).unwrap(), "{tag}: duplicates");
    counts
}

/// A valid Segment event with message id `mid`, holding `doc` as a property value.
fn event(mid: &str, doc: &[u8]) -> Vec<u8> {
    let mut l = format!(
        r#"{{"type":"track","event":"Product Viewed","messageId":"{mid}","userId":"433120","timestamp":"2024-03-05T10:15:30.123Z","properties":{{"x":"#
    )
    .into_bytes();
    l.extend_from_slice(doc);
    l.extend_from_slice(b"}}");
    l
}

#[test]
fn every_suite_document_as_a_line_gets_the_oracles_verdict() {
    let docs = documents();
    assert!(docs.len() >= 300, "the vendored suite is missing: {} documents", docs.len());
    let (mut input, mut names) = (Vec::new(), Vec::new());
    for (name, doc) in &docs {
        push(&mut input, &mut names, name, doc);
    }
    let counts = compare("whole", &input, &names);
    // The suite is mostly not objects; the comparison must still have covered many reasons.
    assert!(counts.len() >= 5, "{counts:?}");
}

#[test]
fn every_suite_document_as_a_property_value_gets_the_oracles_verdict() {
    let (mut input, mut names) = (Vec::new(), Vec::new());
    for (i, (name, doc)) in documents().iter().enumerate() {
        push(&mut input, &mut names, name, &event(&format!("m-{i}"), doc));
    }
    let counts = compare("embedded", &input, &names);
    assert!(counts.get("accepted").copied().unwrap_or(0) >= 95, "{counts:?}");
}

#[test]
fn lone_surrogates_in_ids_get_the_oracles_verdict() {
    // Ids the reference holds apart (or equal): lone halves, their escaped spellings, U+FFFD.
    let ids = [
        r"\ud800",
        r"\ud800",
        r"\uD800",
        r"\ud801",
        r"\udc00",
        r"a\udc00b",
        r"\ufffd",
        r"\\ud800",
        r"\ud800\udc00",
        r"\ud800\ud800",
        "\u{fdd0}\u{e000}",
        r"\udbff",
        "\u{fdd0}",
    ];
    let (mut input, mut names) = (Vec::new(), Vec::new());
    for (i, id) in ids.iter().enumerate() {
        let l = format!(
            r#"{{"type":"track","event":"e","messageId":"{id}","userId":"{id}","timestamp":"2024-03-05T10:15:{i:02}Z"}}"#
        );
        push(&mut input, &mut names, &format!("id {id}"), l.as_bytes());
        let l = format!(r#"{{"event_id":"w{i}","customer":{{"id":"{id}"}},"time":"{id}"}}"#);
        push(&mut input, &mut names, &format!("time {id}"), l.as_bytes());
    }
    let counts = compare("lone", &input, &names);
    assert_eq!(counts.get("duplicate"), Some(&2), "{counts:?}");
}

/// The rows of customers whose ids hold lone surrogates are the oracle's rows: the id is
/// written back as the `\udXXX` text it was read from, not as the form it is held in.
#[test]
fn rows_of_customers_with_lone_surrogates_equal_the_oracles() {
    let ids = [r"a\ud800b", r"\udc00x", "x\u{fdd0}y", r"\ud83d\ude00", r"\ud800\ud800", "plain"];
    let mut input = String::new();
    for (i, id) in ids.iter().enumerate() {
        let _ = writeln!(
            input,
            "{{\"type\":\"track\",\"event\":\"Subscribe Button Hovered\",\"messageId\":\"m{i}\",\"userId\":\"{id}\",\"timestamp\":\"2024-03-05T10:15:{i:02}Z\"}}"
        );
    }
    let work = tempfile::tempdir().unwrap();
    let path = work.path().join("lone.jsonl");
    std::fs::write(&path, input).unwrap();
    let expected = work.path().join("expected.jsonl");
    let o = std::process::Command::new(integration_tests::python())
        .arg(integration_tests::shared_data().join("oracle.py"))
        .args(["--out", expected.to_str().unwrap(), path.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(o.status.success(), "oracle: {}", String::from_utf8_lossy(&o.stderr));
    let out = work.path().join("out");
    let run = replay(&out, &[path.to_str().unwrap()]);
    assert!(run.status.success(), "replay: {}", String::from_utf8_lossy(&run.stderr));
    let actual = work.path().join("actual.jsonl");
    std::fs::write(&actual, integration_tests::rows(&out, "sessions/").join("\n") + "\n").unwrap();
    let c = std::process::Command::new(integration_tests::python())
        .arg(integration_tests::shared_data().join("compare.py"))
        .args([expected.to_str().unwrap(), actual.to_str().unwrap(), "5"])
        .output()
        .unwrap();
    assert!(c.status.success(), "{}", String::from_utf8_lossy(&c.stdout));
}
