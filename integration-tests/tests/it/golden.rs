//! Golden replays: every `fixtures/events/NAME.jsonl` against `fixtures/expected/NAME.*`,
//! which hold the reference oracle's answer (rows and reject counts). Hermetic: no generator,
//! no Python.

use integration_tests::{root, rows, run, summary};
use std::collections::BTreeMap;

#[test]
fn fixtures_match_their_expected_output() {
    let fixtures = root().join("integration-tests/fixtures");
    let mut cases = 0;
    for e in std::fs::read_dir(fixtures.join("events")).unwrap() {
        let input = e.unwrap().path();
        let Some(name) =
            input.file_name().and_then(|n| n.to_str()).and_then(|n| n.strip_suffix(".jsonl"))
        else {
            continue;
        };
        cases += 1;
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        let o = run(&[
            "replay",
            "--schemas",
            root().join("schemas").to_str().unwrap(),
            "--allowed-lateness",
            "7h",
            "--output",
            out.to_str().unwrap(),
            input.to_str().unwrap(),
        ]);
        assert!(o.status.success(), "{name}: {}", String::from_utf8_lossy(&o.stderr));

        let parse = |l: &str| serde_json::from_str::<serde_json::Value>(l).unwrap();
        let mut want: Vec<serde_json::Value> =
            std::fs::read_to_string(fixtures.join(format!("expected/{name}.sessions.jsonl")))
                .unwrap()
                .lines()
                .map(parse)
                .collect();
        let mut got: Vec<serde_json::Value> =
            rows(&out, "sessions/").iter().map(|l| parse(l)).collect();
        let key = |v: &serde_json::Value| {
            (v["customer_id"].as_str().unwrap().to_owned(), v["session_start"].as_i64().unwrap())
        };
        // Beyond the oracle's fields, each row names the schema set that read it.
        for r in &mut got {
            let sets = r.as_object_mut().unwrap().remove("schema_sets");
            assert_eq!(
                sets,
                Some(serde_json::json!(["session@1,segment@1,web@1,ivr@1,legacy@1"])),
                "{name}: {r}"
            );
        }
        want.sort_by_key(key);
        got.sort_by_key(key);
        assert_eq!(got, want, "{name}: session rows");

        let mut rejects: BTreeMap<String, u64> = serde_json::from_str(
            &std::fs::read_to_string(fixtures.join(format!("expected/{name}.rejects.json")))
                .unwrap(),
        )
        .unwrap();
        let dups = rejects.remove("duplicate").unwrap_or(0);
        let mut dead: BTreeMap<String, u64> = BTreeMap::new();
        for l in rows(&out, "dead-letter/") {
            *dead.entry(parse(&l)["reason"].as_str().unwrap().to_owned()).or_default() += 1;
        }
        assert_eq!(dead, rejects, "{name}: dead letters by reason");
        assert_eq!(summary(&o)["duplicates"], dups, "{name}: duplicates");
    }
    assert!(cases > 0, "no fixture found");
}
