//! Hostile lines through decode + extract with the shipped schemas (issue 12).
//!
//! The case count comes from `PROPTEST_CASES` (proptest's default config reads it; 256 when
//! unset, so CI stays fast); `bench/proptest` runs them with a million cases. Properties, for
//! every line: no panic; a rejection names a known reason; the same line twice (the second time
//! with the scratch slots the first left) gives the same result; an accepted event's ids are
//! text the line holds and its time is in range; `invalid_json` agrees with `serde_json`.

use super::*;
use crate::decode::{self, MAX_DEPTH};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use std::sync::OnceLock;

/// Compiled once: a million cases must not pay for a million schema loads.
fn x() -> &'static Extractor {
    static X: OnceLock<Extractor> = OnceLock::new();
    X.get_or_init(shipped)
}

/// What decode + extract made of a line, owned so two runs can be compared.
#[derive(Debug, PartialEq)]
enum Outcome {
    Rejected { reason: String, detail: String },
    Accepted { message_id: String, customer_id: String, time: i64, kind: Kind, rest: String },
}

fn outcome<'a>(x: &Extractor, text: &'a str, slots: &mut Vec<walk::Slot<'a>>) -> Outcome {
    match x.extract(text, slots) {
        Ok(e) => Outcome::Accepted {
            message_id: e.message_id.into_owned(),
            customer_id: e.customer_id.into_owned(),
            time: e.event_time,
            kind: e.kind,
            rest: format!("{:?} {}", e.attrs, e.truncated),
        },
        Err(e) => Outcome::Rejected { reason: e.reason().to_owned(), detail: e.to_string() },
    }
}

/// Every string literal of `text` (keys and values, outside other strings), unescaped, and
/// again inside those that are themselves JSON (`json_strings` paths). Literals whose escapes
/// are not valid Unicode are left out: no id can come from them.
fn literals(text: &str, out: &mut Vec<String>, depth: u32) {
    let b = text.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] != b'"' {
            i += 1;
            continue;
        }
        let start = i;
        i += 1;
        while i < b.len() && b[i] != b'"' {
            i += if b[i] == b'\\' { 2 } else { 1 };
        }
        let end = (i + 1).min(b.len());
        if let Some(lit) = text.get(start..end)
            && let Ok(s) = serde_json::from_str::<String>(lit)
        {
            if depth < 3 && s.contains('"') {
                literals(&s, out, depth + 1);
            }
            out.push(s);
        }
        i = end;
    }
}

/// Whether an accepted id is something the line holds: its text verbatim (a borrowed string,
/// or a number's digits), the zero a `-0` stands for, or the unescaped value of a literal.
fn id_is_in(id: &str, text: &str) -> bool {
    if text.contains(id) || (id == "0" && text.contains("-0")) {
        return true;
    }
    if id.contains('\u{FDD0}') {
        // Held escaped (see `lone`): weaker, the line must hold an escape or the mark itself.
        return text.contains("\\u") || text.contains('\u{FDD0}');
    }
    let mut lits = Vec::new();
    literals(text, &mut lits, 0);
    lits.iter().any(|l| l == id)
}

fn known(x: &Extractor, reason: &str) -> bool {
    BUILTIN_REASONS.contains(&reason) || x.rejects.iter().any(|r| &*r.then.0 == reason)
}

const OTHER_EVENT: &str = r#"{"id":"o","uid":"1","user":{"id":"2"},"ts":1709633730,"evt":"screen_view","messageId":"m","userId":"u","timestamp":"2024-03-05T10:15:30Z","type":"page","event_id":"e","customer":{"id":3},"time":"2024-03-05T10:15:30Z","props":"{\"channel\":\"phone\"}"}"#;

/// The properties, for one line.
fn check(line: &[u8]) -> Result<(), TestCaseError> {
    let x = x();
    let text = match decode::decode(line) {
        Ok(t) => t,
        Err(e) => {
            prop_assert_eq!(decode::decode(line), Err(e), "decode is deterministic");
            prop_assert!(known(x, e.reason()));
            return Ok(());
        }
    };
    prop_assert!(!decode::max_depth_exceeds(line, MAX_DEPTH));
    let first = outcome(x, text, &mut Vec::new());
    // Again on scratch another event filled: nothing from it may leak into this one.
    let mut slots = Vec::new();
    let _ = x.extract(OTHER_EVENT, &mut slots);
    let second = outcome(x, text, &mut slots);
    prop_assert_eq!(&first, &second, "extract is deterministic");
    // A surrogate escape is where the walker (which keeps going past a lone one) and serde_json
    // may legitimately differ; everywhere else they must agree on what is JSON.
    let comparable = !text.contains("\\u");
    match &first {
        Outcome::Rejected { reason, detail } => {
            prop_assert!(known(x, reason), "unknown reason {reason}: {detail}");
            if comparable {
                let serde_ok = serde_json::from_str::<serde::de::IgnoredAny>(text).is_ok();
                prop_assert_eq!(reason == "invalid_json", !serde_ok, "{}", detail);
            }
        }
        Outcome::Accepted { message_id, customer_id, time: t, .. } => {
            prop_assert!(time::in_range(*t), "time {t} out of range");
            prop_assert!(!message_id.is_empty() && !customer_id.is_empty());
            prop_assert!(id_is_in(message_id, text), "message id {message_id:?} not in the line");
            prop_assert!(
                id_is_in(customer_id, text),
                "customer id {customer_id:?} not in the line"
            );
            if comparable {
                prop_assert!(serde_json::from_str::<serde::de::IgnoredAny>(text).is_ok());
            }
        }
    }
    Ok(())
}

const KEYS: [&str; 24] = [
    "messageId",
    "userId",
    "timestamp",
    "type",
    "event",
    "properties",
    "id",
    "uid",
    "ts",
    "user",
    "props",
    "evt",
    "channel",
    "call_id",
    "account",
    "customer_id",
    "started_at",
    "kind",
    "event_id",
    "customer",
    "time",
    "event_type",
    "target",
    "x",
];

/// Leaves that stress ids and times: every JSON type, odd numbers, odd strings and escapes.
const LEAVES: [&str; 52] = [
    "null",
    "true",
    "false",
    "0",
    "-0",
    "-1",
    "1.5",
    "1e3",
    "1E+2",
    "0.0",
    "-0.0",
    "1.0e-400",
    "1e999",
    "-1e999",
    "18446744073709551616",
    "123456789012345678901234567890",
    "1709633730",
    "1709633730123",
    "1709633730123456",
    "1709633730.5",
    "946684799",
    "4102444800",
    "[]",
    "{}",
    "[1,\"a\"]",
    "{\"a\":{}}",
    "\"\"",
    "\" \"",
    "\"42\"",
    "\"\\u0034\\u0032\"",
    "\"\\ud800\"",
    "\"\\udc00\\ud800\"",
    "\"\\ud83d\\ude00\"",
    "\"a\\u0000b\"",
    "\"\\\"\\\\\\/\\b\\f\\n\\r\\t\"",
    "\"2024-03-05T10:15:30Z\"",
    "\"2024-03-05T10:15:30.123456789+01:00\"",
    "\"2024-02-30T00:00:00Z\"",
    "\"1999-12-31T23:59:59Z\"",
    "\"2100-01-01T00:00:00Z\"",
    "\"9999-99-99T99:99:99Z\"",
    "\"2024-03-05 10:15:30\"",
    "\"2024-03-05T10:15:30+24:00\"",
    "\"1709633730\"",
    "\"é✓订\"",
    "\"\u{0}\"",
    "\"{\\\"channel\\\":\\\"phone\\\"}\"",
    "\"{\\\"channel\\\":\\\"\\\\ud800\\\"}\"",
    "NaN",
    "01",
    "+1",
    ".5",
];

/// Whitespace, legal and not (a no-break space and a BOM are not JSON whitespace).
const SPACES: [&str; 8] = ["", "", " ", "\t", "\n", "\r", "\u{a0}", "\u{feff}"];

fn leaf() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => prop::sample::select(&LEAVES[..]).prop_map(str::to_owned),
        1 => any::<i64>().prop_map(|n| n.to_string()),
        1 => any::<f64>().prop_map(|f| format!("{f:e}")),
        1 => any::<String>().prop_map(|s| serde_json::to_string(&s).unwrap_or_default()),
        1 => (0usize..20_000, prop::sample::select(vec!["a", "\\n", "\\u00e9", "é", "\\\""]))
            .prop_map(|(n, p)| format!("\"{}\"", p.repeat(n / p.len().max(1)))),
    ]
}

fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        6 => prop::sample::select(&KEYS[..]).prop_map(|k| format!("\"{k}\"")),
        // The same names spelled with escapes: they must reach the same paths.
        1 => prop::sample::select(&KEYS[..]).prop_map(|k| {
            let mut s = String::from("\"");
            for c in k.chars() {
                let _ = write!(s, "\\u{:04x}", u32::from(c));
            }
            s + "\""
        }),
        1 => leaf(),
    ]
}

/// JSON text of random shape; duplicate keys come for free (members are a list, not a map).
fn value() -> impl Strategy<Value = String> {
    leaf().prop_recursive(6, 64, 8, |inner| {
        let sp = prop::sample::select(&SPACES[..]);
        prop_oneof![
            prop::collection::vec((inner.clone(), sp.clone()), 0..8).prop_map(|v| {
                let items: Vec<String> = v.into_iter().map(|(x, s)| format!("{s}{x}{s}")).collect();
                format!("[{}]", items.join(","))
            }),
            prop::collection::vec((key(), inner, sp), 0..8).prop_map(|v| {
                let m: Vec<String> =
                    v.into_iter().map(|(k, x, s)| format!("{s}{k}{s}:{x}")).collect();
                format!("{{{}}}", m.join(","))
            }),
        ]
    })
}

/// A value wrapped in `n` arrays or objects: around and past the depth limit.
fn deep() -> impl Strategy<Value = String> {
    (value(), 0usize..(MAX_DEPTH + 8), any::<bool>(), any::<bool>()).prop_map(|(v, n, obj, cut)| {
        let (open, close) = if obj { ("{\"userId\":", "}") } else { ("[", "]") };
        let closes = if cut { n.saturating_sub(1) } else { n };
        format!("{{\"messageId\":\"m\",\"x\":{}{v}{}}}", open.repeat(n), close.repeat(closes))
    })
}

/// Real events of every shipped schema, as (key, raw value) members.
fn templates() -> Vec<Vec<(&'static str, String)>> {
    let s = |v: &str| v.to_owned();
    vec![
        vec![
            ("type", s("\"track\"")),
            ("event", s("\"Subscribe Button Clicked\"")),
            ("messageId", s("\"ajs-1\"")),
            ("userId", s("\"433120\"")),
            ("timestamp", s("\"2024-03-05T10:15:30.123Z\"")),
            ("properties", s("{\"button_id\":\"subscribe-btn\"}")),
        ],
        vec![
            ("event_id", s("\"w-1\"")),
            ("customer", s("{\"id\":433120}")),
            ("time", s("\"2024-03-05T10:15:30+01:00\"")),
            ("event_type", s("\"hover\"")),
            ("target", s("{\"id\":\"subscribe-btn\"}")),
        ],
        vec![
            ("call_id", s("\"c-1\"")),
            ("account", s("{\"customer_id\":\"77\"}")),
            ("started_at", s("\"2024-03-05T10:15:30Z\"")),
            ("kind", s("\"support_call\"")),
        ],
        vec![
            ("id", s("9")),
            ("uid", s("\"5\"")),
            ("user", s("{\"id\":\"6\"}")),
            ("ts", s("1709633730")),
            ("evt", s("\"contact_support\"")),
            ("props", s("\"{\\\"channel\\\":\\\"phone\\\"}\"")),
        ],
    ]
}

#[derive(Debug, Clone)]
enum Mutation {
    Replace(usize, String),
    Remove(usize),
    /// Appends a second member with the same key.
    Duplicate(usize, String),
    /// Swaps two members' values.
    Swap(usize, usize),
}

fn mutated() -> impl Strategy<Value = String> {
    let mutation = prop_oneof![
        4 => (any::<usize>(), value()).prop_map(|(i, v)| Mutation::Replace(i, v)),
        1 => any::<usize>().prop_map(Mutation::Remove),
        1 => (any::<usize>(), leaf()).prop_map(|(i, v)| Mutation::Duplicate(i, v)),
        1 => (any::<usize>(), any::<usize>()).prop_map(|(i, j)| Mutation::Swap(i, j)),
    ];
    let sp = prop::sample::select(&SPACES[..5]);
    (0..templates().len(), prop::collection::vec(mutation, 0..4), sp, any::<bool>()).prop_map(
        |(t, muts, sp, bom)| {
            let mut ev = templates().swap_remove(t);
            for one in muts {
                let n = ev.len();
                if n == 0 {
                    break;
                }
                match one {
                    Mutation::Replace(i, v) => ev[i % n].1 = v,
                    Mutation::Remove(i) => {
                        ev.remove(i % n);
                    }
                    Mutation::Duplicate(i, v) => ev.push((ev[i % n].0, v)),
                    Mutation::Swap(i, j) => {
                        let v = ev[i % n].1.clone();
                        ev[i % n].1 = std::mem::replace(&mut ev[j % n].1, v);
                    }
                }
            }
            let body: Vec<String> =
                ev.iter().map(|(k, v)| format!("{sp}\"{k}\"{sp}:{sp}{v}{sp}")).collect();
            format!("{}{{{}}}", if bom { "\u{feff}" } else { "" }, body.join(","))
        },
    )
}

/// Breaks valid text at the byte level: invalid UTF-8, NUL, cuts.
fn corrupt(text: String, edits: Vec<(usize, u8)>) -> Vec<u8> {
    let mut b = text.into_bytes();
    for (at, byte) in edits {
        let at = if b.is_empty() { 0 } else { at % (b.len() + 1) };
        match byte % 4 {
            0 => b.insert(at, byte | 0x80),
            1 => b.insert(at, 0),
            2 => b.truncate(at),
            _ => b.insert(at, byte),
        }
    }
    b
}

proptest! {
    #![proptest_config(ProptestConfig { failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn hostile_arbitrary_bytes(bytes in prop_oneof![
        prop::collection::vec(any::<u8>(), 0..512),
        any::<String>().prop_map(String::into_bytes),
        "[ -~\t\r]{0,300}".prop_map(String::into_bytes),
        "[{}\\[\\]\":,0-9a-z\\\\ -]{0,300}".prop_map(String::into_bytes),
    ]) {
        check(&bytes)?;
    }

    #[test]
    fn hostile_random_json(v in value(), sp in prop::sample::select(&SPACES[..])) {
        check(format!("{sp}{v}{sp}").as_bytes())?;
    }

    #[test]
    fn hostile_deep_json(v in deep()) {
        check(v.as_bytes())?;
    }

    #[test]
    fn hostile_mutated_events(v in mutated(), edits in prop::collection::vec((any::<usize>(), any::<u8>()), 0..2)) {
        let clean = v.clone();
        check(clean.as_bytes())?;
        check(&corrupt(v, edits))?;
    }
}

#[test]
fn the_templates_are_accepted_unmutated() {
    // Without this the mutation strategy could drift to lines every schema rejects anyway.
    for t in templates() {
        let body: Vec<String> = t.iter().map(|(k, v)| format!("\"{k}\":{v}")).collect();
        let line = format!("{{{}}}", body.join(","));
        let mut slots = Vec::new();
        assert!(x().extract(&line, &mut slots).is_ok(), "{line}");
    }
}

#[test]
fn a_raw_control_character_in_a_string_is_invalid_json() {
    // Found by `hostile_mutated_events`: a key is read as unvalidated bytes once the fast walk
    // gives up, so a raw NUL, tab or newline inside it passed as JSON.
    for line in [
        "{\"type\":\"track\",\"messageId\":\"m\",\"userId\":\"1\",\"\0timestamp\":\"2024-03-05T10:15:30Z\"}",
        "{\"messageId\":\"m\",\"userId\":\"1\",\"timestamp\":\"2024-03-05T10:15:30Z\",\"a\tb\":1}",
        "{\"messageId\":\"m\",\"userId\":\"1\",\"timestamp\":\"2024-03-05T10:15:30Z\",\"x\":{\"\n\":1}}",
        "{\"messageId\":\"m\",\"userId\":\"1\",\"timestamp\":\"2024-03-05T10:15:30Z\",\"\u{1f}\":1e400}",
    ] {
        let mut slots = Vec::new();
        let got = x().extract(line, &mut slots).map(|e| e.message_id.into_owned());
        assert_eq!(
            got.map_err(|e| e.reason().to_owned()),
            Err("invalid_json".to_owned()),
            "{line:?}"
        );
    }
    // The same characters escaped are valid.
    let line =
        r#"{"messageId":"m","userId":"1","timestamp":"2024-03-05T10:15:30Z","\u0000\t":1e400}"#;
    let mut slots = Vec::new();
    assert!(x().extract(line, &mut slots).is_ok());
    // Inside a stringified `props`, the nested document is not JSON: nothing is read from it.
    let line = r#"{"id":"m","uid":"1","ts":1709633730,"evt":"contact_support","props":"{\"channel\":\"phone\",\"x\u0001\":1}"}"#;
    let e = x().extract(line, &mut slots).map_err(|e| e.to_string());
    assert_eq!(e.map(|e| x().kind_name(e.kind).to_owned()), Ok("other".to_owned()));
}
