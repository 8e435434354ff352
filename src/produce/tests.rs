use super::*;
use std::path::Path;

fn customer_keyer() -> Keyer {
    let schemas = Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas");
    Keyer::new(Key::Customer, Some(Extractor::load(&schemas).unwrap())).unwrap()
}

const WEB: &[u8] = br#"{"event_id":"e1","customer":{"id":"c-42"},"time":"2026-11-30T13:00:00Z","event_type":"pageview"}"#;

#[test]
fn customer_keys_are_the_extracted_customer_id() {
    let k = customer_keyer();
    let mut slots = Vec::new();
    assert_eq!(k.key(WEB, &mut slots), Keyed::Found(Cow::Borrowed("c-42")));
    // The same customer under another producer's schema gets the same key.
    let segment = br#"{"messageId":"m1","userId":"c-42","timestamp":"2026-11-30T13:00:00Z","type":"track","event":"x"}"#;
    let mut slots = Vec::new();
    if let Keyed::Found(c) = k.key(segment, &mut slots) {
        assert_eq!(c, "c-42");
    }
}

#[test]
fn lines_without_a_customer_get_the_md5_of_their_bytes() {
    let k = customer_keyer();
    let no_customer = br#"{"event_id":"e1","time":"2026-11-30T13:00:00Z","event_type":"pageview"}"#;
    let mut slots = Vec::new();
    let want = fallback_key(no_customer);
    assert_eq!(want.len(), 32);
    assert!(want.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
    assert_eq!(k.key(no_customer, &mut slots), Keyed::Fallback(want.clone()));
    // Stable: the same line, the same key; not JSON at all, a key still.
    assert_eq!(k.key(no_customer, &mut slots), Keyed::Fallback(want));
    assert_eq!(k.key(b"not json", &mut slots), Keyed::Fallback(fallback_key(b"not json")));
    // md5("") is well known.
    assert_eq!(fallback_key(b""), "d41d8cd98f00b204e9800998ecf8427e");
}

#[test]
fn path_keys_take_the_first_match_as_text() {
    let mut slots = Vec::new();
    let k = Keyer::new("$.customer.id".parse().unwrap(), None).unwrap();
    assert_eq!(k.key(WEB, &mut slots), Keyed::Found(Cow::Borrowed("c-42")));
    let n = br#"{"customer":{"id":1234}}"#;
    assert_eq!(k.key(n, &mut slots), Keyed::Found(Cow::Borrowed("1234")));
    let missing = br#"{"customer":{}}"#;
    assert_eq!(k.key(missing, &mut slots), Keyed::Fallback(fallback_key(missing)));
    let k = Keyer::new("$.items[*].sku".parse().unwrap(), None).unwrap();
    let items = br#"{"items":[{"sku":null},{"sku":"s-9"}]}"#;
    assert_eq!(k.key(items, &mut slots), Keyed::Found(Cow::Borrowed("s-9")));
    let k = Keyer::new(Key::None, None).unwrap();
    assert_eq!(k.key(WEB, &mut slots), Keyed::None);
}

#[test]
fn key_arguments_parse() {
    assert!(matches!("customer".parse::<Key>(), Ok(Key::Customer)));
    assert!(matches!("none".parse::<Key>(), Ok(Key::None)));
    assert!(matches!("$.a".parse::<Key>(), Ok(Key::Path(_))));
    assert!("user".parse::<Key>().is_err());
    assert!("$.[".parse::<Key>().is_err());
    assert!(Keyer::new(Key::Customer, None).is_err());
}

#[test]
fn rates_parse_per_second_minute_and_hour() {
    assert!("5000/s".parse::<Rate>().unwrap().per_second().to_bits() == 5000.0_f64.to_bits());
    assert!("300/m".parse::<Rate>().unwrap().per_second().to_bits() == 5.0_f64.to_bits());
    assert!("7200/h".parse::<Rate>().unwrap().per_second().to_bits() == 2.0_f64.to_bits());
    assert!("10".parse::<Rate>().unwrap().per_second().to_bits() == 10.0_f64.to_bits());
    for bad in ["0/s", "-1/s", "x/s", "5/d", "", "inf/s"] {
        assert!(bad.parse::<Rate>().is_err(), "{bad}");
    }
}

#[test]
fn the_schedule_spaces_records_evenly_from_the_start() {
    let r: Rate = "4000/s".parse().unwrap();
    assert_eq!(r.due(0), Duration::ZERO);
    assert_eq!(r.due(1), Duration::from_micros(250));
    assert_eq!(r.due(4000), Duration::from_secs(1));
    // 20,000 records at 4,000/s: the last goes at 5 s less one interval.
    assert_eq!(r.due(19_999), Duration::from_micros(4_999_750));
    let slow: Rate = "1/m".parse().unwrap();
    assert_eq!(slow.due(2), Duration::from_mins(2));
}

/// Keeps what it is sent, to test the driver without a broker.
#[derive(Default)]
struct Kept(Vec<Vec<u8>>);

impl Sink for Kept {
    fn send(&mut self, _key: Option<&str>, payload: &[u8]) -> Result<(), ProduceError> {
        self.0.push(payload.to_vec());
        Ok(())
    }

    fn finish(&mut self) -> Result<Delivery, ProduceError> {
        Ok(Delivery::default())
    }
}

/// The records the driver sends for `blocks`, and what it skipped.
fn driven(blocks: &[&[u8]], skip_empty: bool) -> (Vec<Vec<u8>>, u64) {
    let keyer = Keyer::new(Key::None, None).unwrap();
    let mut sink = Kept::default();
    let mut d = Driver {
        keyer: &keyer,
        rate: None,
        skip_empty,
        start: Instant::now(),
        sink: &mut sink,
        sum: Summary::default(),
        sent: 0,
    };
    for b in blocks {
        d.block(b).unwrap();
    }
    let skipped = d.sum.skipped;
    (sink.0, skipped)
}

#[test]
fn every_line_is_a_record_empty_ones_too() {
    let v = |xs: &[&[u8]]| xs.iter().map(|x| x.to_vec()).collect::<Vec<_>>();
    assert_eq!(driven(&[b"a\n\nb\n"], false), (v(&[b"a", b"", b"b"]), 0));
    assert_eq!(driven(&[b"a\nb"], false), (v(&[b"a", b"b"]), 0));
    assert_eq!(driven(&[b"\n", b"\n"], false), (v(&[b"", b""]), 0));
    assert_eq!(driven(&[b"", b"a\n"], false), (v(&[b"a"]), 0));
    // A whitespace-only line is a record as it is: the pipeline judges it.
    assert_eq!(driven(&[b" \r\n"], false), (v(&[b" \r"]), 0));
    assert_eq!(driven(&[b"a\n\nb\n", b"\n"], true), (v(&[b"a", b"b"]), 2));
}

#[test]
fn a_shard_keeps_its_highest_sequence_number_as_a_number() {
    let mut t = ShardTally::default();
    for s in [
        "49590338271490256608559692538361571095921575989136588898",
        "9",
        "4959033827149025660855969253836157109592157598913658889",
    ] {
        t.put(s);
    }
    assert_eq!(t.records, 3);
    assert_eq!(t.last, "49590338271490256608559692538361571095921575989136588898");
    let mut t = ShardTally::default();
    t.put("10");
    t.put("9");
    assert_eq!(t.last, "10");
}

#[test]
fn the_summary_names_its_fields() {
    let s =
        Summary { records: 10, bytes: 100, fallback_keyed: 2, seconds: 2.0, ..Summary::default() };
    let v: serde_json::Value = serde_json::from_str(&s.to_json()).unwrap();
    assert_eq!(v["records"], 10);
    assert_eq!(v["fallback_keyed"], 2);
    assert_eq!(v["rate"], 5.0);
    for f in ["bytes", "skipped", "seconds", "failed"] {
        assert!(v.get(f).is_some(), "{f}");
    }
    assert!(v.get("shards").is_none(), "Kafka has no shards: {v}");
    let mut s = s;
    s.shards.entry("shardId-000000000001".into()).or_default().put("42");
    let v: serde_json::Value = serde_json::from_str(&s.to_json()).unwrap();
    assert_eq!(
        v["shards"]["shardId-000000000001"],
        serde_json::json!({"records": 1, "last": "42"})
    );
}
