use proptest::prelude::*;

use super::*;

// Fixtures written by the KPL-format producer of PyPI `aws-kinesis-agg==1.2.3` (with protobuf
// 7.36.2 and six 1.17.0), by this script:
//
//     import hashlib
//     from aws_kinesis_agg.aggregator import RecordAggregator
//     from aws_kinesis_agg import messages_pb2, MAGIC
//
//     def agg(records):
//         a = RecordAggregator()
//         for r in records:
//             assert a.add_user_record(*r) is None
//         return a.clear_and_get().get_contents()[2]
//
//     def wrap(msg, partial=False):
//         body = msg.SerializePartialToString() if partial else msg.SerializeToString()
//         return MAGIC + body + hashlib.md5(body).digest()
//
//     def h(pk):
//         return int(hashlib.md5(pk.encode()).hexdigest(), 16)
//
//     three = agg([("alpha", b"one"), ("beta", b"two"), ("gamma", b"three")])
//     ehk = agg([("a", b"x", "0"), ("b", b"y", str(2**128 - 1)), ("a", b"z", str(2**127)),
//                ("c", b"w")])
//     json = agg([("c-1", b'{"customer_id":"c-1","type":"page_view","ts":"2026-01-01T00:00:00Z"}'),
//                 ("c-2", b'{"customer_id":"c-2","type":"click","ts":"2026-01-01T00:00:01Z"}\n'),
//                 ("c-1", b'{"customer_id":"c-1","type":"checkout","ts":"2026-01-01T00:00:02Z"}')])
//     for name, v in [("THREE", three), ("EHK", ehk), ("JSON", json)]:
//         print(name, len(v), v.hex())
//     for pk in ["alpha", "beta", "gamma", "c", "c-1", "c-2"]:
//         print(pk, h(pk))
//
//     # Built with the package's own protobuf classes: no producer emits these.
//     m = messages_pb2.AggregatedRecord(); m.partition_key_table.append("k")
//     print("ZERO_RECORDS", wrap(m).hex())
//     m = messages_pb2.AggregatedRecord(); m.partition_key_table.append("k")
//     r = m.records.add(); r.partition_key_index = 1; r.data = b"d"
//     print("PK_INDEX_OUT_OF_BOUNDS", wrap(m).hex())
//     m = messages_pb2.AggregatedRecord(); m.partition_key_table.append("k")
//     r = m.records.add(); r.partition_key_index = 0; r.explicit_hash_key_index = 0; r.data = b"d"
//     print("EHK_INDEX_OUT_OF_BOUNDS", wrap(m).hex())
//     m = messages_pb2.AggregatedRecord(); m.partition_key_table.append("k")
//     r = m.records.add(); r.partition_key_index = 0
//     print("MISSING_DATA", wrap(m, partial=True).hex())
//     m = messages_pb2.AggregatedRecord(); m.partition_key_table.append("k")
//     r = m.records.add(); r.data = b"d"
//     print("MISSING_PK_INDEX", wrap(m, partial=True).hex())
//     m = messages_pb2.AggregatedRecord(); m.partition_key_table.append("k")
//     m.explicit_hash_key_table.append("12a")
//     r = m.records.add(); r.partition_key_index = 0; r.explicit_hash_key_index = 0; r.data = b"d"
//     print("BAD_EHK", wrap(m).hex())
//     m = messages_pb2.AggregatedRecord(); m.partition_key_table.append("k")
//     r = m.records.add(); r.partition_key_index = 0; r.data = b"d"
//     t = r.tags.add(); t.key = "env"; t.value = "prod"; r.tags.add(key="bare")
//     print("TAGGED", wrap(m).hex())
//     m = messages_pb2.AggregatedRecord(); m.partition_key_table.append("k")
//     r = m.records.add(); r.partition_key_index = 0; r.data = b"d"
//     t = r.tags.add(); t.value = "no key"
//     print("TAG_WITHOUT_KEY", wrap(m, partial=True).hex())

/// Three records, partition keys alpha, beta, gamma; no explicit hash keys.
pub(crate) const THREE: &str = concat!(
    "f3899ac20a05616c7068610a04626574610a0567616d6d611a0708001a036f6e651a0708011a0374776f1a09",
    "08021a057468726565239687a96a8d21b607d2947ec9eb2be1",
);
/// Four records: three with explicit hash keys 0, 2^128-1 and 2^127 (partition key `a` twice),
/// one (`c`) without.
const EHK: &str = concat!(
    "f3899ac20a01610a01620a016312013012273334303238323336363932303933383436333436333337343630",
    "3734333137363832313134353512273137303134313138333436303436393233313733313638373330333731",
    "353838343130353732381a07080010001a01781a07080110011a01791a07080010021a017a1a0508021a0177",
    "abb8f5503e8d63b24c566fab8db323cc",
);
/// Three JSON lines, partition keys c-1, c-2, c-1; the second ends with a newline.
const JSON: &str = concat!(
    "f3899ac20a03632d310a03632d321a4808001a447b22637573746f6d65725f6964223a22632d31222c227479",
    "7065223a22706167655f76696577222c227473223a22323032362d30312d30315430303a30303a30305a227d",
    "1a4508011a417b22637573746f6d65725f6964223a22632d32222c2274797065223a22636c69636b222c2274",
    "73223a22323032362d30312d30315430303a30303a30315a227d0a1a4708001a437b22637573746f6d65725f",
    "6964223a22632d31222c2274797065223a22636865636b6f7574222c227473223a22323032362d30312d3031",
    "5430303a30303a30325a227d5df647cfeeb89687df786f5dd007aee7",
);
const ZERO_RECORDS: &str = "f3899ac20a016b6d44220b0eeac8bcfd28a28107a96ff4";
const PK_INDEX_OUT_OF_BOUNDS: &str = "f3899ac20a016b1a0508011a0164590dfeba268ec941fdc649e2267a66e4";
const EHK_INDEX_OUT_OF_BOUNDS: &str =
    "f3899ac20a016b1a07080010001a0164b1eaa0e33325fefdd93200c03b6b29e5";
const MISSING_DATA: &str = "f3899ac20a016b1a02080038de12ad837b3e2cef639ccf3e2e52a1";
const MISSING_PK_INDEX: &str = "f3899ac20a016b1a031a016464eb1cdf635bd414ad2872f6f6386ebe";
const BAD_EHK: &str = "f3899ac20a016b12033132611a07080010001a0164f926575e78207261bb9dbe44092b9f84";
const TAGGED: &str = concat!(
    "f3899ac20a016b1a1a08001a0164220b0a03656e76120470726f6422060a0462617265b6ddd648fa41320312",
    "267427d6bed0b7",
);
const TAG_WITHOUT_KEY: &str =
    "f3899ac20a016b1a0f08001a0164220812066e6f206b65794ba0b355b1c824c39b9737805009d8c8";

/// `int(hashlib.md5(pk.encode()).hexdigest(), 16)`, printed by the script above.
const H_ALPHA: u128 = 58_606_826_522_850_340_945_736_240_254_012_750_329;
const H_BETA: u128 = 202_685_418_872_336_884_493_770_735_918_403_116_178;
const H_GAMMA: u128 = 7_561_461_604_768_633_204_219_852_884_577_479_914;
const H_C: u128 = 99_079_589_977_253_916_124_855_502_156_832_923_443;
const H_C1: u128 = 55_216_959_874_999_687_108_986_260_873_158_888_222;
const H_C2: u128 = 269_797_977_540_446_273_904_734_428_576_392_847_470;

const ALL: (u128, u128) = (0, u128::MAX);

pub(crate) fn unhex(s: &str) -> Vec<u8> {
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
}

fn user<'a>(data: &'a [u8], partition_key: &'a str, hash_key: u128, sub: u32) -> UserRecord<'a> {
    UserRecord { data, partition_key, hash_key, sub }
}

fn records(d: Deaggregated<'_>) -> Vec<UserRecord<'_>> {
    match d {
        Deaggregated::Aggregate(v) => v,
        other => panic!("not an aggregate: {other:?}"),
    }
}

/// A hand encoder for the cases no producer writes.
fn varint(mut v: u64, out: &mut Vec<u8>) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn key(field: u64, wire: u64, out: &mut Vec<u8>) {
    varint(field << 3 | wire, out);
}

fn int_field(field: u64, v: u64, out: &mut Vec<u8>) {
    key(field, 0, out);
    varint(v, out);
}

fn bytes_field(field: u64, b: &[u8], out: &mut Vec<u8>) {
    key(field, 2, out);
    varint(b.len() as u64, out);
    out.extend_from_slice(b);
}

/// `MAGIC`, the message, its MD5.
fn wrap(message: &[u8]) -> Vec<u8> {
    let mut out = MAGIC.to_vec();
    out.extend_from_slice(message);
    out.extend_from_slice(&Md5::digest(message));
    out
}

/// A `Record { partition_key_index, explicit_hash_key_index?, data }`.
fn record(pk: u64, ehk: Option<u64>, data: &[u8]) -> Vec<u8> {
    let mut r = Vec::new();
    int_field(1, pk, &mut r);
    if let Some(e) = ehk {
        int_field(2, e, &mut r);
    }
    bytes_field(3, data, &mut r);
    r
}

/// An aggregate of one record `{pk 0, data "d"}` whose partition key is `pk`, with `extra`
/// appended to the record's fields and `outer` to the aggregate's.
fn one(pk: &[u8], extra: &[u8], outer: &[u8]) -> Vec<u8> {
    let mut m = Vec::new();
    bytes_field(1, pk, &mut m);
    let mut r = record(0, None, b"d");
    r.extend_from_slice(extra);
    bytes_field(3, &r, &mut m);
    m.extend_from_slice(outer);
    wrap(&m)
}

#[test]
fn plain_json_and_short_records_pass_as_plain() {
    let magic_and_empty_message = wrap(&[]);
    for data in [
        &br#"{"customer_id":"c-1","type":"page_view"}"#[..],
        b"",
        b"\xF3\x89\x9A",
        &MAGIC,
        // KCL wants more than 16 bytes after the magic: an empty protobuf is not an aggregate.
        &magic_and_empty_message,
    ] {
        assert_eq!(deaggregate(data, ALL), Deaggregated::Plain, "{data:?}");
    }
}

#[test]
fn three_records_come_out_in_order_with_their_keys() {
    let data = unhex(THREE);
    assert_eq!(data.len(), 69);
    assert_eq!(
        records(deaggregate(&data, ALL)),
        [
            user(b"one", "alpha", H_ALPHA, 0),
            user(b"two", "beta", H_BETA, 1),
            user(b"three", "gamma", H_GAMMA, 2),
        ]
    );
}

#[test]
fn hash_key_is_md5_read_big_endian() {
    assert_eq!(hash_key_of(b"alpha"), H_ALPHA);
    assert_eq!(hash_key_of(b"c-2"), H_C2);
    assert_eq!(hash_key_of(b""), 0xd41d_8cd9_8f00_b204_e980_0998_ecf8_427e);
}

#[test]
fn explicit_hash_keys_override_the_partition_key() {
    let data = unhex(EHK);
    assert_eq!(
        records(deaggregate(&data, ALL)),
        [
            user(b"x", "a", 0, 0),
            user(b"y", "b", u128::MAX, 1),
            user(b"z", "a", 1 << 127, 2),
            user(b"w", "c", H_C, 3),
        ]
    );
}

#[test]
fn json_lines_come_out_byte_for_byte() {
    let data = unhex(JSON);
    let users = records(deaggregate(&data, ALL));
    let keys: Vec<_> = users.iter().map(|u| (u.partition_key, u.hash_key, u.sub)).collect();
    assert_eq!(keys, [("c-1", H_C1, 0), ("c-2", H_C2, 1), ("c-1", H_C1, 2)]);
    assert_eq!(
        users[1].data,
        br#"{"customer_id":"c-2","type":"click","ts":"2026-01-01T00:00:01Z"}
"#
    );
    for u in &users {
        let v: serde_json::Value = serde_json::from_slice(u.data).unwrap();
        assert_eq!(v["customer_id"], u.partition_key);
    }
}

#[test]
fn any_flipped_bit_makes_the_record_plain() {
    // In the magic it is no aggregate; anywhere else the MD5 no longer matches.
    for fixture in [THREE, EHK, JSON] {
        let data = unhex(fixture);
        for bit in 0..data.len() * 8 {
            let mut flipped = data.clone();
            flipped[bit / 8] ^= 1 << (bit % 8);
            assert_eq!(deaggregate(&flipped, ALL), Deaggregated::Plain, "bit {bit}");
        }
    }
}

#[test]
fn every_truncation_is_plain() {
    for fixture in [THREE, EHK, JSON, ZERO_RECORDS, TAGGED] {
        let data = unhex(fixture);
        assert!(matches!(deaggregate(&data, ALL), Deaggregated::Aggregate(_)));
        for len in 0..data.len() {
            assert_eq!(deaggregate(&data[..len], ALL), Deaggregated::Plain, "{len}");
        }
    }
}

#[test]
fn a_truncated_message_with_a_good_md5_is_plain_or_a_prefix_of_the_records() {
    // Cut at a field boundary, a protobuf is still a valid (shorter) message.
    for fixture in [THREE, EHK, JSON] {
        let data = unhex(fixture);
        let message = &data[MAGIC.len()..data.len() - 16];
        let all = records(deaggregate(&data, ALL));
        for len in 0..message.len() {
            let cut = wrap(&message[..len]);
            match deaggregate(&cut, ALL) {
                Deaggregated::Plain => {}
                Deaggregated::Aggregate(v) => assert_eq!(v, all[..v.len()], "{len}"),
                Deaggregated::WrongShard(n) => panic!("{len}: wrong shard {n} in the full range"),
            }
        }
    }
}

#[test]
fn one_user_record_outside_the_range_drops_the_whole_aggregate() {
    let data = unhex(EHK);
    // 2^128-1 (sub 1) is past the end.
    assert_eq!(deaggregate(&data, (0, 1 << 127)), Deaggregated::WrongShard(4));
    // 0 (sub 0) is before the start.
    assert_eq!(deaggregate(&data, (1, u128::MAX)), Deaggregated::WrongShard(4));
    assert_eq!(deaggregate(&data, (0, u128::MAX - 1)), Deaggregated::WrongShard(4));
    // A range no key can be in.
    assert_eq!(deaggregate(&data, (1, 0)), Deaggregated::WrongShard(4));
}

#[test]
fn range_boundaries_are_inclusive() {
    // gamma's hash key is the smallest of the three, beta's the largest.
    let data = unhex(THREE);
    assert_eq!(records(deaggregate(&data, (H_GAMMA, H_BETA))).len(), 3);
    assert_eq!(deaggregate(&data, (H_GAMMA + 1, H_BETA)), Deaggregated::WrongShard(3));
    assert_eq!(deaggregate(&data, (H_GAMMA, H_BETA - 1)), Deaggregated::WrongShard(3));
    let ehk = unhex(EHK);
    assert_eq!(records(deaggregate(&ehk, ALL)).len(), 4);
}

#[test]
fn zero_records_is_an_empty_aggregate() {
    assert_eq!(deaggregate(&unhex(ZERO_RECORDS), ALL), Deaggregated::Aggregate(vec![]));
    // And no range can make it wrong: it holds nothing out of range.
    assert_eq!(deaggregate(&unhex(ZERO_RECORDS), (1, 0)), Deaggregated::Aggregate(vec![]));
}

#[test]
fn tags_are_skipped_but_must_have_their_key() {
    assert_eq!(records(deaggregate(&unhex(TAGGED), ALL)), [user(b"d", "k", hash_key_of(b"k"), 0)]);
    assert_eq!(deaggregate(&unhex(TAG_WITHOUT_KEY), ALL), Deaggregated::Plain);
}

#[test]
fn malformed_aggregates_are_plain() {
    for (name, fixture) in [
        ("pk index", PK_INDEX_OUT_OF_BOUNDS),
        ("ehk index", EHK_INDEX_OUT_OF_BOUNDS),
        ("missing data", MISSING_DATA),
        ("missing pk index", MISSING_PK_INDEX),
        ("bad ehk", BAD_EHK),
    ] {
        assert_eq!(deaggregate(&unhex(fixture), ALL), Deaggregated::Plain, "{name}");
    }
}

#[test]
fn a_malformed_aggregate_is_plain_even_after_a_record_out_of_range() {
    let mut m = Vec::new();
    bytes_field(1, b"k", &mut m);
    bytes_field(2, b"0", &mut m);
    bytes_field(3, &record(0, Some(0), b"out of range"), &mut m);
    bytes_field(3, &record(7, None, b"bad index"), &mut m);
    assert_eq!(deaggregate(&wrap(&m), (1, u128::MAX)), Deaggregated::Plain);
}

#[test]
fn unknown_fields_are_skipped_by_wire_type() {
    let mut unknown = Vec::new();
    int_field(9, u64::MAX, &mut unknown);
    key(10, 1, &mut unknown);
    unknown.extend_from_slice(&[0xAB; 8]);
    bytes_field(11, b"\xFF\xFE anything", &mut unknown);
    key(12, 5, &mut unknown);
    unknown.extend_from_slice(&[0xCD; 4]);
    // A known number under another wire type is unknown too.
    key(1, 5, &mut unknown);
    unknown.extend_from_slice(&[0; 4]);
    bytes_field(2, b"not an index", &mut unknown);
    let expected = [user(b"d", "k", hash_key_of(b"k"), 0)];
    assert_eq!(records(deaggregate(&one(b"k", &unknown, &[]), ALL)), expected);
    assert_eq!(records(deaggregate(&one(b"k", &[], &unknown), ALL)), expected);
}

#[test]
fn groups_bad_wire_types_and_field_zero_are_invalid() {
    for bad in [
        vec![0x0B, 0x0C],       // field 1: start group, end group
        vec![0x0C],             // field 1: end group
        vec![0x0E, 0x00],       // wire type 6
        vec![0x0F, 0x00],       // wire type 7
        vec![0x00, 0x00],       // field 0
        vec![0x48],             // field 9 varint, value missing
        vec![0x48, 0xFF],       // unterminated varint
        vec![0x4A, 0x05, 0x01], // length past the end
        vec![0x49, 0, 0, 0],    // fixed64 cut short
        vec![0x4D, 0, 0],       // fixed32 cut short
    ] {
        assert_eq!(deaggregate(&one(b"k", &bad, &[]), ALL), Deaggregated::Plain, "{bad:?}");
        assert_eq!(deaggregate(&one(b"k", &[], &bad), ALL), Deaggregated::Plain, "{bad:?}");
    }
}

#[test]
fn varints_take_ten_bytes_at_most() {
    let mut m = Vec::new();
    bytes_field(1, b"k", &mut m);
    // Index 0 in ten bytes (the last one's high bits dropped, as protobuf-java drops them).
    let ten = [8, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x7E, 0x1A, 1, b'd'];
    bytes_field(3, &ten, &mut m);
    assert_eq!(records(deaggregate(&wrap(&m), ALL)), [user(b"d", "k", hash_key_of(b"k"), 0)]);
    let mut m = Vec::new();
    bytes_field(1, b"k", &mut m);
    let eleven =
        [8, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x00, 0x1A, 1, b'd'];
    bytes_field(3, &eleven, &mut m);
    assert_eq!(deaggregate(&wrap(&m), ALL), Deaggregated::Plain);
}

#[test]
fn the_last_of_a_repeated_field_wins_and_tables_may_follow_records() {
    let mut m = Vec::new();
    let mut r = record(5, Some(5), b"first");
    int_field(1, 1, &mut r);
    int_field(2, 0, &mut r);
    bytes_field(3, b"last", &mut r);
    bytes_field(3, &r, &mut m);
    bytes_field(2, b"42", &mut m);
    bytes_field(1, b"k0", &mut m);
    bytes_field(1, b"k1", &mut m);
    assert_eq!(records(deaggregate(&wrap(&m), ALL)), [user(b"last", "k1", 42, 0)]);
}

#[test]
fn an_index_past_u32_is_out_of_bounds() {
    // KCL casts the index to int: 2^32 would wrap to 0 and read "k". We refuse it.
    let mut m = Vec::new();
    bytes_field(1, b"k", &mut m);
    bytes_field(3, &record(1 << 32, None, b"d"), &mut m);
    assert_eq!(deaggregate(&wrap(&m), ALL), Deaggregated::Plain);
    let mut m = Vec::new();
    bytes_field(1, b"k", &mut m);
    bytes_field(3, &record(u64::MAX, None, b"d"), &mut m);
    assert_eq!(deaggregate(&wrap(&m), ALL), Deaggregated::Plain);
}

#[test]
fn a_partition_key_that_is_not_utf8_is_plain() {
    assert_eq!(deaggregate(&one(b"k\xFF", &[], &[]), ALL), Deaggregated::Plain);
    // An unused entry is never read, as in KCL.
    let mut outer = Vec::new();
    bytes_field(1, b"\xFF", &mut outer);
    bytes_field(2, b"\xFF", &mut outer);
    assert_eq!(records(deaggregate(&one(b"k", &[], &outer), ALL)).len(), 1);
}

#[test]
fn explicit_hash_keys_in_the_table_parse_as_big_integer_does() {
    for (text, expected) in [
        ("007", Some(7)),
        ("+7", Some(7)),
        ("-1", None),
        (" 7", None),
        ("", None),
        ("7\u{0}", None),
    ] {
        let mut m = Vec::new();
        bytes_field(1, b"k", &mut m);
        bytes_field(2, text.as_bytes(), &mut m);
        bytes_field(3, &record(0, Some(0), b"d"), &mut m);
        let data = wrap(&m);
        let got = deaggregate(&data, ALL);
        match expected {
            Some(h) => assert_eq!(records(got), [user(b"d", "k", h, 0)], "{text:?}"),
            None => assert_eq!(got, Deaggregated::Plain, "{text:?}"),
        }
    }
}

#[test]
fn parse_hash_key_takes_0_to_2_pow_128_minus_1() {
    for (text, expected) in [
        ("0", Some(0)),
        ("340282366920938463463374607431768211455", Some(u128::MAX)),
        ("340282366920938463463374607431768211456", None),
        ("", None),
        ("-1", None),
        ("-0", None),
        ("01", Some(1)),
        ("+1", Some(1)),
        ("+", None),
        ("1 ", None),
        ("0x1", None),
        ("1e3", None),
    ] {
        assert_eq!(parse_hash_key(text), expected, "{text:?}");
    }
}

/// Encodes user records as an aggregate, tables deduplicated as the KPL does.
fn encode(users: &[(String, Option<u128>, Vec<u8>)]) -> Vec<u8> {
    let (mut pks, mut ehks): (Vec<&str>, Vec<String>) = (Vec::new(), Vec::new());
    let mut m = Vec::new();
    for (pk, ehk, data) in users {
        let pi = pks.iter().position(|p| p == pk).unwrap_or_else(|| {
            pks.push(pk);
            pks.len() - 1
        });
        let ei = ehk.map(|e| {
            let e = e.to_string();
            ehks.iter().position(|x| *x == e).unwrap_or_else(|| {
                ehks.push(e);
                ehks.len() - 1
            })
        });
        bytes_field(3, &record(pi as u64, ei.map(|i| i as u64), data), &mut m);
    }
    for p in pks {
        bytes_field(1, p.as_bytes(), &mut m);
    }
    for e in ehks {
        bytes_field(2, e.as_bytes(), &mut m);
    }
    wrap(&m)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..256)) {
        let got = deaggregate(&data, ALL);
        if !data.starts_with(&MAGIC) {
            prop_assert_eq!(got, Deaggregated::Plain);
        }
    }

    #[test]
    fn arbitrary_messages_with_a_good_md5_never_panic(
        message in proptest::collection::vec(any::<u8>(), 0..256),
        start in any::<u128>(),
        end in any::<u128>(),
    ) {
        let data = wrap(&message);
        let _ = deaggregate(&data, (start, end));
    }

    // At least one record: an empty message is too short to be an aggregate (tested above).
    #[test]
    fn encoded_records_come_back_and_are_filtered_as_a_whole(
        users in proptest::collection::vec(
            (
                "[a-c]{1,3}",
                proptest::option::of(any::<u128>()),
                proptest::collection::vec(any::<u8>(), 0..16),
            ),
            1..12,
        ),
        // Half the time an end of the key space, so that whole aggregates often fit.
        start in prop_oneof![Just(0), any::<u128>()],
        end in prop_oneof![Just(u128::MAX), any::<u128>()],
    ) {
        let data = encode(&users);
        let expected: Vec<_> = users
            .iter()
            .zip(0..)
            .map(|((pk, ehk, d), sub)| {
                user(d, pk, ehk.unwrap_or_else(|| hash_key_of(pk.as_bytes())), sub)
            })
            .collect();
        prop_assert_eq!(records(deaggregate(&data, ALL)), expected.clone());
        let inside = expected.iter().all(|u| (start..=end).contains(&u.hash_key));
        let got = deaggregate(&data, (start, end));
        if inside {
            prop_assert_eq!(got, Deaggregated::Aggregate(expected));
        } else {
            prop_assert_eq!(got, Deaggregated::WrongShard(users.len() as u32));
        }
    }
}
