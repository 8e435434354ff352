//! Extraction with the shipped schemas, on lines shaped like every producer's, and schema
//! errors.

use super::*;
use std::path::PathBuf;

fn shipped() -> Extractor {
    Extractor::load(&PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("schemas")).unwrap()
}

fn ok(x: &Extractor, line: &str) -> (String, String, i64, String) {
    let mut slots = Vec::new();
    let e = x.extract(line, &mut slots).unwrap_or_else(|e| panic!("{line}: {e}"));
    let kind = x.kind_name(e.kind).to_owned();
    (e.message_id.into_owned(), e.customer_id.into_owned(), e.event_time, kind)
}

fn reason(x: &Extractor, line: &str) -> String {
    let mut slots = Vec::new();
    match x.extract(line, &mut slots) {
        Ok(e) => panic!("{line}: accepted as {e:?}"),
        Err(e) => e.reason().to_owned(),
    }
}

#[test]
fn segment_shapes() {
    let x = shipped();
    let l = r#"{"type":"track","event":"Subscribe Button Hovered","messageId":"ajs-next-1","userId":"433120","anonymousId":"a","timestamp":"2024-03-05T10:15:30.123Z","originalTimestamp":"2024-03-05T11:15:33.000+01:00","properties":{}}"#;
    assert_eq!(
        ok(&x, l),
        ("ajs-next-1".into(), "433120".into(), 1_709_633_730_123, "subscribe_hover".into())
    );
    let l = r#"{"type":"screen","messageId":"m2","userId":"433120","timestamp":"2024-03-05T11:15:30+01:00"}"#;
    assert_eq!(ok(&x, l).3, "page_view");
    let l = r#"{"type":"track","event":"Support Call Started","messageId":"m3","userId":"1","timestamp":"2024-03-05T10:15:30.123456+00:00"}"#;
    assert_eq!(ok(&x, l).3, "support_call");
    // A hover whose properties is a string is still a hover; a numeric event name is "other".
    let l = r#"{"type":"track","event":"Subscribe Button Hovered","messageId":"m4","userId":"1","timestamp":"2024-03-05T10:15:30Z","properties":"{\"button_id\":\"subscribe-btn\"}"}"#;
    assert_eq!(ok(&x, l).3, "subscribe_hover");
    let l = r#"{"type":"track","event":42,"messageId":"m5","userId":"1","timestamp":"2024-03-05T10:15:30Z"}"#;
    assert_eq!(ok(&x, l).3, "other");
    for name in
        ["Subscribe Button Hovered V2", "subscribe button hovered", "Subscribe Button Clicked ", ""]
    {
        let l = format!(
            r#"{{"type":"track","event":"{name}","messageId":"m6","userId":"1","timestamp":"2024-03-05T10:15:30Z"}}"#
        );
        assert_eq!(ok(&x, &l).3, "other", "{name}");
    }
}

#[test]
fn legacy_shapes() {
    let x = shipped();
    let l = r#"{"id": 7000763757, "uid": 633123, "evt": "search", "ts": 1709512563, "props": "{\"screen\": \"Settings\", \"pos\": \"59\"}", "url": "https:\/\/x"}"#;
    assert_eq!(
        ok(&x, l),
        ("7000763757".into(), "633123".into(), 1_709_512_563_000, "other".into())
    );
    let l = r#"{"id":"3d77aa00bb11cc22","uid":"633123","evt":"contact_support","ts":"1709633730123","props":"{\"channel\": \"phone\"}"}"#;
    assert_eq!(ok(&x, l).2, 1_709_633_730_123);
    assert_eq!(ok(&x, l).3, "support_call");
    let l = r#"{"id":"a","uid":"1","evt":"contact_support","ts":1709633730123,"props":"{\"channel\": \"chat\"}"}"#;
    assert_eq!(ok(&x, l).3, "other");
    let l = r#"{"id":"a","uid":"1","evt":"contact_support","ts":1709633730123,"props":"{channel: phone}"}"#;
    assert_eq!(ok(&x, l).3, "other");
    let l = r#"{"id":"a","user":{"id":"112899"},"uid":"0","evt":"contact_support","ts":1709548836.027,"props":{"channel":"phone"}}"#;
    assert_eq!(ok(&x, l), ("a".into(), "112899".into(), 1_709_548_836_027, "support_call".into()));
    let l = r#"{"id":"a","user":{"id":"112899"},"evt":"hover_subscribe","ts":"1709548836.027"}"#;
    assert_eq!(ok(&x, l).3, "subscribe_hover");
    assert_eq!(
        reason(&x, r#"{"id":"a","user":"guest","evt":"app_open","ts":1709548836.027}"#),
        "missing_customer_id"
    );
}

#[test]
fn web_and_ivr_shapes() {
    let x = shipped();
    let l = r#"{"event_id":"w-1","event_type":"mouseover","target":{"id":"subscribe-btn","tag":"BUTTON"},"customer":{"id":"766234"},"time":"2024-03-03 23:05:53.750-03:00"}"#;
    assert_eq!(
        ok(&x, l),
        ("w-1".into(), "766234".into(), 1_709_517_953_750, "subscribe_hover".into())
    );
    for (et, target, kind) in [
        ("click", r#"{"id":"subscribe-btn"}"#, "subscribe_click"),
        ("hover", r#"{"id":"subscribe-btn"}"#, "subscribe_hover"),
        ("click", r#"{"id":"unsubscribe-btn"}"#, "other"),
        ("click", r#""subscribe-btn""#, "other"),
        ("dblclick", r#"{"id":"subscribe-btn"}"#, "other"),
        ("pageview", r#"{"id":"x"}"#, "page_view"),
    ] {
        let l = format!(
            r#"{{"event_id":"w","event_type":"{et}","target":{target},"customer":{{"id":"1"}},"time":"2024-03-04T10:00:00.000Z"}}"#
        );
        assert_eq!(ok(&x, &l).3, kind, "{et} {target}");
    }
    let l = "{\"call_id\":\"ivr-1\",\"kind\":\"support_call\",\"account\":{\"customer_id\":499721},\"started_at\":\"2024-03-04T02:07:58Z\"}\r";
    assert_eq!(
        ok(&x, l),
        ("ivr-1".into(), "499721".into(), 1_709_518_078_000, "support_call".into())
    );
}

#[test]
fn checks_run_in_contract_order() {
    let x = shipped();
    for (line, want) in [
        ("[]", "not_object"),
        ("42", "not_object"),
        ("{\"a\":1}{\"a\":2}", "invalid_json"),
        ("{\"progress\": NaN}", "invalid_json"),
        (r#"{"type":"identify","userId":"1"}"#, "not_activity"),
        (r#"{"batch":[{"messageId":"m"}],"sentAt":"x"}"#, "missing_message_id"),
        (r#"{"messageId":null,"userId":"1"}"#, "missing_message_id"),
        (r#"{"messageId":"","userId":"1"}"#, "bad_message_id"),
        (r#"{"messageId":{},"userId":"1"}"#, "bad_message_id"),
        (r#"{"id":-5,"uid":"1"}"#, "bad_message_id"),
        (r#"{"id":1.5,"uid":"1"}"#, "bad_message_id"),
        (r#"{"id":true,"uid":"1"}"#, "bad_message_id"),
        (r#"{"messageId":"m","anonymousId":"a","timestamp":"x"}"#, "missing_customer_id"),
        (r#"{"messageId":"m","userId":null,"timestamp":"x"}"#, "missing_customer_id"),
        (r#"{"messageId":"m","userId":[633123],"timestamp":"x"}"#, "bad_customer_id"),
        (r#"{"messageId":"m","userId":12.5}"#, "bad_customer_id"),
        (
            r#"{"messageId":"m","userId":"1","originalTimestamp":"2024-03-05T10:15:30Z"}"#,
            "missing_timestamp",
        ),
        (r#"{"messageId":"m","userId":"1","timestamp":1709633730}"#, "bad_timestamp"),
        (r#"{"messageId":"m","userId":"1","timestamp":"2150-01-01T00:00:00Z"}"#, "bad_timestamp"),
        (r#"{"id":"m","uid":"1","ts":true}"#, "bad_timestamp"),
        (r#"{"id":"m","uid":"1","ts":"1.7e9"}"#, "bad_timestamp"),
        (r#"{"id":"m","uid":"1","ts":{"s":1}}"#, "bad_timestamp"),
        (r#"{"id":"m","uid":"1","ts":0}"#, "bad_timestamp"),
        (r#"{"event_id":"m","customer":{"id":"1"},"time":1709633730123}"#, "bad_timestamp"),
    ] {
        assert_eq!(reason(&x, line), want, "{line}");
    }
}

#[test]
fn ids_are_strings_or_non_negative_integers() {
    let x = shipped();
    let l = r#"{"id":0,"uid":"0","ts":1709633730}"#;
    assert_eq!(ok(&x, l).0, "0");
    let l = r#"{"id":123456789012345678901234567890,"uid":" x ","ts":1709633730}"#;
    assert_eq!(
        (ok(&x, l).0.as_str(), ok(&x, l).1.as_str()),
        ("123456789012345678901234567890", " x ")
    );
}

fn compile_one(text: &str) -> Result<Extractor, SchemaErrors> {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("s.toml");
    std::fs::write(&f, text).unwrap();
    Extractor::load(&f)
}

const GOOD: &str = "name = \"s\"\nversion = 1\n[fields]\nmessage_id = ['$.id']\ncustomer_id = ['$.uid']\nevent_time = [{ path = '$.ts', format = \"epoch\" }]\n";

#[test]
fn schema_errors_name_file_line_and_field() {
    assert!(compile_one(GOOD).is_ok());
    for (text, line, field, hint) in [
        (GOOD.replace("'$.uid'", "'$.uid['"), 5, "fields.customer_id[0]", "JSONPath"),
        (GOOD.replace("'$.uid'", "'uid'"), 5, "fields.customer_id[0]", "starts with `$`"),
        (
            GOOD.replace("\"epoch\"", "\"unix\""),
            6,
            "fields.event_time[0].format",
            "unknown time format",
        ),
        (GOOD.replace("version = 1", "version = \"one\""), 2, "version", "invalid type"),
        (GOOD.replace("[fields]", "[fieldz]"), 3, "fieldz", "fieldz"),
        (
            format!(
                "{GOOD}[[classify]]\nkind = \"purchase\"\nwhen = [{{ path = '$.e', equals = \"x\" }}]\n"
            ),
            8,
            "classify[0].kind",
            "unknown kind",
        ),
        (
            format!("{GOOD}[[classify]]\nkind = \"page_view\"\nwhen = []\n"),
            9,
            "classify[0].when",
            "at least one",
        ),
        (
            format!(
                "{GOOD}[[classify]]\nkind = \"page_view\"\nwhen = [{{ path = '$.e', equals = \"x\", exists = true }}]\n"
            ),
            9,
            "classify[0].when[0]",
            "exactly one",
        ),
        (
            format!(
                "{GOOD}[[classify]]\nkind = \"page_view\"\nwhen = [{{ path = '$.e', in = [] }}]\n"
            ),
            9,
            "classify[0].when[0]",
            "never match",
        ),
        (
            format!(
                "{GOOD}[[reject]]\nreason = \"Not Activity\"\nwhen = [{{ path = '$.e', exists = true }}]\n"
            ),
            8,
            "reject[0].reason",
            "snake_case",
        ),
        (
            format!(
                "{GOOD}[[reject]]\nreason = \"duplicate\"\nwhen = [{{ path = '$.e', exists = true }}]\n"
            ),
            8,
            "reject[0].reason",
            "pipeline gives itself",
        ),
        (GOOD.replace("name = \"s\"", "name = \"a b\""), 1, "name", "letters"),
        ("json_strings = ['$..x']\n".to_owned() + GOOD, 1, "json_strings[0]", "simple paths"),
    ] {
        let errs = compile_one(&text).unwrap_err();
        let e = errs
            .0
            .iter()
            .find(|e| e.field == field)
            .unwrap_or_else(|| panic!("no error on {field}: {errs}"));
        assert_eq!(e.line, line, "{e}");
        assert!(e.message.contains(hint), "{e}");
        assert!(e.to_string().contains(&format!("s.toml:{line}:")), "{e}");
    }
}

#[test]
fn time_declarations_are_read_and_checked_at_the_key() {
    let text = GOOD.replace(
        "format = \"epoch\" }",
        "format = \"epoch\", unit = \"us\", numbers = \"integers\", rounding = \"floor\" }",
    );
    let x = compile_one(&text).unwrap();
    assert_eq!(ok(&x, r#"{"id":"m","uid":"1","ts":"1709633730123999"}"#).2, 1_709_633_730_123);
    assert_eq!(ok(&x, r#"{"id":"m","uid":"1","ts":1709633730123999}"#).2, 1_709_633_730_123);
    let mut slots = Vec::new();
    for (line, detail) in [
        (
            r#"{"id":"m","uid":"1","ts":"1709633730123"}"#,
            "the event time at $.ts, \"1709633730123\" read as epoch us, is 1970-01-20T18:53:53.730Z (outside [2000-01-01, 2100-01-01)): is it milliseconds?",
        ),
        (
            r#"{"id":"m","uid":"1","ts":1709633730123999.5}"#,
            "the event time at $.ts, the number 1709633730123999.5 read as epoch us, has a fraction: numbers = \"integers\" takes whole numbers only",
        ),
        (
            r#"{"id":"m","uid":"1","ts":[1]}"#,
            "the event time at $.ts, an array read as epoch us, is not a number or a string",
        ),
    ] {
        let e = x.extract(line, &mut slots).unwrap_err();
        assert_eq!((e.reason(), e.to_string().as_str()), ("bad_timestamp", detail));
    }
    assert_eq!(reason(&x, r#"{"id":"m","uid":"1","ts":null}"#), "missing_timestamp");
    for (keys, field, hint) in [
        (", unit = \"us\"", "unit", "contradicts"),
        (", text = \"strict\"", "text", "use digits, lenient"),
        (", zone = \"Europe/Berlin\"", "zone", "UTC by definition"),
    ] {
        let text =
            GOOD.replace("format = \"epoch\" }", &format!("format = \"epoch_millis\"{keys} }}"));
        let errs = compile_one(&text).unwrap_err();
        let e = &errs.0[0];
        assert_eq!(
            (e.line, e.field.as_str()),
            (6, format!("fields.event_time[0].{field}").as_str())
        );
        assert!(e.message.contains(hint), "{e}");
    }
    let text =
        GOOD.replace("format = \"epoch\" }", "format = \"iso8601\", zone = \"Europe/Paaris\" }");
    let e = compile_one(&text).unwrap_err().to_string();
    assert!(e.contains("s.toml:6:") && e.contains("did you mean Europe/Paris?"), "{e}");
}

#[test]
fn a_changed_time_declaration_is_breaking() {
    let load = |keys: &str| {
        let text = GOOD.replace("format = \"epoch\" }", &format!("{keys} }}"));
        schema::parse_bytes(Path::new("s.toml"), text.into_bytes()).unwrap()
    };
    let base = load("format = \"epoch_seconds\"");
    for (keys, breaking) in [
        ("format = \"epoch_seconds\"", false),
        ("format = \"epoch\", unit = \"s\"", false),
        ("format = \"epoch_seconds\", rounding = \"half_even\", text = \"digits\"", false),
        ("format = \"epoch\"", true),
        ("format = \"epoch_millis\"", true),
        ("format = \"epoch_seconds\", numbers = \"integers\"", true),
        ("format = \"epoch_seconds\", text = \"lenient\"", true),
        ("format = \"epoch_seconds\", rounding = \"floor\"", true),
        ("format = \"iso8601\"", true),
    ] {
        let f = compat::static_findings(&base, &load(keys), false);
        assert_eq!(compat::is_breaking(&f), breaking, "{keys}: {f:?}");
    }
    let iso = load("format = \"iso8601\"");
    let zoned = load("format = \"iso8601\", zone = \"Europe/Berlin\"");
    let f = compat::static_findings(&iso, &zoned, false);
    assert!(compat::is_breaking(&f), "{f:?}");
    assert!(
        f[0].message.contains("retypes $.ts from iso8601 to iso8601 (zone = \"Europe/Berlin\")"),
        "{f:?}"
    );
}

#[test]
fn all_errors_are_reported_at_once() {
    let text = GOOD.replace("'$.uid'", "'$.uid['").replace("\"epoch\"", "\"unix\"");
    assert_eq!(compile_one(&text).unwrap_err().0.len(), 2);
}

#[test]
fn whole_file_problems() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("empty.toml");
    std::fs::write(&f, "  \n").unwrap();
    assert!(Extractor::load(&f).unwrap_err().to_string().contains("empty"));
    std::fs::write(&f, b"name = \"caf\xe9\"\n").unwrap();
    assert!(Extractor::load(&f).unwrap_err().to_string().contains("UTF-8"));
    std::fs::write(&f, vec![b'#'; 300 * 1024]).unwrap();
    assert!(Extractor::load(&f).unwrap_err().to_string().contains("at most"));
    let empty_dir = tempfile::tempdir().unwrap();
    assert!(Extractor::load(empty_dir.path()).unwrap_err().to_string().contains("no schema file"));
    // Two files with the same name.
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("a.toml"), GOOD).unwrap();
    std::fs::write(d.path().join("b.toml"), GOOD).unwrap();
    assert!(Extractor::load(d.path()).unwrap_err().to_string().contains("duplicate schema name"));
}

#[test]
fn general_queries_work_beside_the_fast_path() {
    let text = GOOD.replace(
        "customer_id = ['$.uid']",
        "customer_id = ['$.uid', '$.people[?@.role == \"owner\"].id']",
    );
    let x = compile_one(&text).unwrap();
    let l = r#"{"id":"m","people":[{"role":"viewer","id":"1"},{"role":"owner","id":"2"}],"ts":1709633730}"#;
    assert_eq!(ok(&x, l).1, "2");
    let l = r#"{"id":"m","uid":"9","people":[{"role":"owner","id":"2"}],"ts":1709633730}"#;
    assert_eq!(ok(&x, l).1, "9");
}

#[test]
fn valid_json_that_serde_would_convert_badly_is_still_valid() {
    let x = shipped();
    // Numbers beyond f64 and lone surrogate escapes are valid JSON (RFC 8259 sets no limits).
    assert_eq!(reason(&x, "1e400"), "not_object");
    assert_eq!(reason(&x, r#""\ud800""#), "not_object");
    let l = r#"{"id":"a","uid":"1","ts":1709633730,"user":1e400,"customer":"\udc00","x":1e999}"#;
    assert_eq!(ok(&x, l).1, "1");
    let l = r#"{"id":"a","\ud800":1,"uid":"2","ts":1709633730}"#;
    assert_eq!(ok(&x, l).1, "2");
}

#[test]
fn ids_with_lone_surrogates_are_accepted_and_kept_apart_as_the_reference_does() {
    let x = shipped();
    let line = |mid: &str, cid: &str| {
        format!(
            r#"{{"messageId":"{mid}","userId":"{cid}","type":"track","event":"e","timestamp":"2024-03-05T10:15:30Z"}}"#
        )
    };
    let ids: Vec<(String, String)> =
        [r"\ud800", r"\ud801", r"\udc00", r"a\udc00b", r"\ufffd", r"\\ud800", r"\ud800\ud800"]
            .iter()
            .map(|id| {
                let (m, c, _, _) = ok(&x, &line(id, id));
                (m, c)
            })
            .collect();
    for (i, a) in ids.iter().enumerate() {
        assert_eq!(a.0, a.1);
        for b in &ids[i + 1..] {
            assert_ne!(a.0, b.0, "two different ids held equal");
        }
    }
    assert_eq!(ok(&x, &line(r"\ud800", "1")).0, ok(&x, &line(r"\uD800", "1")).0);
    // A lone surrogate where a rule compares, or in a timestamp, is read as the reference reads it.
    let l = r#"{"messageId":"m","userId":"1","type":"track","event":"\ud800","timestamp":"2024-03-05T10:15:30Z"}"#;
    assert_eq!(ok(&x, l).3, "other");
    let l = r#"{"messageId":"m","userId":"1","type":"track","event":"e","timestamp":"\ud800"}"#;
    assert_eq!(reason(&x, l), "bad_timestamp");
    // A stringified `props` with a lone surrogate inside one of its strings still parses.
    let l = r#"{"id":"m","uid":"1","ts":1709633730,"evt":"contact_support","props":"{\"channel\":\"phone\",\"x\":\"\ud800\"}"}"#;
    assert_eq!(ok(&x, l).3, "support_call");
}

mod never_panics {
    use super::*;
    use proptest::prelude::*;

    /// JSON-ish text: fragments of real events and of every kind of breakage, shuffled together.
    fn jsonish() -> impl Strategy<Value = String> {
        let frag = prop::sample::select(vec![
            "{",
            "}",
            "[",
            "]",
            ",",
            ":",
            "\"",
            "\\",
            "\\u",
            "\\ud800",
            "\"messageId\"",
            "\"userId\"",
            "\"timestamp\"",
            "\"ts\"",
            "\"id\"",
            "\"uid\"",
            "\"user\"",
            "\"props\"",
            "\"{\\\"channel\\\":\\\"phone\\\"}\"",
            "\"2024-03-05T10:15:30.123Z\"",
            "1709633730",
            "1e400",
            "-0",
            "0.5",
            "null",
            "true",
            "NaN",
            " ",
            "\t",
            "\r",
            "é",
            "\u{0}",
            "\"type\"",
            "\"track\"",
            "\"evt\"",
            "\"contact_support\"",
        ]);
        prop::collection::vec(frag, 0..40).prop_map(|v| v.concat())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]
        #[test]
        fn arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
            let x = shipped();
            if let Ok(t) = crate::decode::decode(&bytes) {
                let mut slots = Vec::new();
                let _ = x.extract(t, &mut slots);
            }
        }

        #[test]
        fn arbitrary_json_fragments(text in jsonish()) {
            let x = shipped();
            if let Ok(t) = crate::decode::decode(text.as_bytes()) {
                let mut slots = Vec::new();
                if let Ok(e) = x.extract(t, &mut slots) {
                    prop_assert!(time::in_range(e.event_time));
                    prop_assert!(!e.message_id.is_empty() && !e.customer_id.is_empty());
                }
            }
        }
    }
}

#[test]
fn a_schema_places_its_path_before_another_schemas_whatever_the_priorities() {
    let a = "name = \"a\"\nversion = 1\npriority = 10\n[fields]\nmessage_id = ['$.id']\ncustomer_id = ['$.uid']\nevent_time = [{ path = '$.t', format = \"epoch\" }]\n";
    let b = "name = \"b\"\nversion = 1\npriority = 20\n[fields]\ncustomer_id = ['$.user.id']\n[[order]]\nfield = \"customer_id\"\npath = '$.user.id'\nbefore = '$.uid'\n";
    let load = |name: &str, text: &str| {
        schema::parse_bytes(Path::new(name), text.as_bytes().to_vec()).unwrap()
    };
    let line = r#"{"id":1,"uid":"0","user":{"id":"42"},"t":1709633730}"#;
    let x = Extractor::compile(vec![load("a.toml", a), load("b.toml", b)]).unwrap();
    assert_eq!(ok(&x, line).1, "42", "b's path goes first despite its priority");
    let set = order::merged(&[load("a.toml", a), load("b.toml", b)]);
    let shown: Vec<&str> = set.customer_id.iter().map(|c| c.path.as_str()).collect();
    assert_eq!(shown, ["$.user.id", "$.uid"], "show --set tells the same order");
    let without =
        b.replace("[[order]]\nfield = \"customer_id\"\npath = '$.user.id'\nbefore = '$.uid'\n", "");
    let x = Extractor::compile(vec![load("a.toml", a), load("b.toml", &without)]).unwrap();
    assert_eq!(ok(&x, line).1, "0", "by priority alone, a's path goes first");

    let not_own = b.replace("path = '$.user.id'\nbefore", "path = '$.uid'\nbefore");
    let e = Extractor::compile(vec![load("a.toml", a), load("b.toml", &not_own)]).unwrap_err();
    assert!(e.to_string().contains("is not one of this schema's customer_id paths"), "{e}");
    let no_anchor = b.replace("before = '$.uid'", "after = '$.nobody'");
    let e = Extractor::compile(vec![load("a.toml", a), load("b.toml", &no_anchor)]).unwrap_err();
    assert!(
        e.to_string().contains("b.toml:9:9: order[0]: no schema of the set has that path"),
        "{e}"
    );
}

mod hostile;
mod path_bound;
