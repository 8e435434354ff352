//! Epoch times: every unit × strictness × rounding at the bounds, the hints, declarations, and
//! the unchanged behaviour of the formats that existed before.

use super::*;
use crate::extract::schema::TimeField;

const MIN: i64 = TS_MIN;
const MAX: i64 = TS_MAX;

fn field(keys: &str) -> TimeField {
    toml::from_str(&format!("path = '$.ts'\n{keys}")).unwrap_or_else(|e| panic!("{keys}: {e}"))
}

pub(super) fn spec(keys: &str) -> TimeSpec {
    TimeSpec::compile(&field(keys)).unwrap_or_else(|e| panic!("{keys}: {e:?}"))
}

pub(super) fn read_str(s: &TimeSpec, v: &str) -> Result<i64, String> {
    s.read(TimeValue::Str(v)).map_err(|f| f.detail)
}

fn read_num(s: &TimeSpec, v: &str) -> Result<i64, String> {
    s.read(TimeValue::Num(v)).map_err(|f| f.detail)
}

/// RFC 8259 number text (no leading zeros, no `+`, no spaces).
fn is_json_number(t: &str) -> bool {
    let t = t.strip_prefix('-').unwrap_or(t);
    let (mant, exp) = match t.find(['e', 'E']) {
        Some(p) => (&t[..p], Some(&t[p + 1..])),
        None => (t, None),
    };
    let (int, frac) = match mant.find('.') {
        Some(p) => (&mant[..p], Some(&mant[p + 1..])),
        None => (mant, None),
    };
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    digits(int)
        && (int == "0" || !int.starts_with('0'))
        && frac.is_none_or(digits)
        && exp.is_none_or(|e| digits(e.strip_prefix(['+', '-']).unwrap_or(e)))
}

/// One value in one unit: whether it needs `numbers = "fractions"` or (as a string)
/// `text = "lenient"`, and what it reads as under floor and half-even (`None`: out of range).
struct Row {
    unit: &'static str,
    text: &'static str,
    fraction: bool,
    lenient: bool,
    floor: Option<i64>,
    half_even: Option<i64>,
}

const fn row(
    unit: &'static str,
    text: &'static str,
    (fraction, lenient): (bool, bool),
    floor: Option<i64>,
    half_even: Option<i64>,
) -> Row {
    Row { unit, text, fraction, lenient, floor, half_even }
}

const PLAIN: (bool, bool) = (false, false);
const FRAC: (bool, bool) = (true, false);
const LEN: (bool, bool) = (false, true);
const BOTH: (bool, bool) = (true, true);
const T: i64 = 1_709_633_730_000; // 2024-03-05T10:15:30Z

#[rustfmt::skip]
const ROWS: &[Row] = &[
    // seconds
    row("s", "946684800", PLAIN, Some(MIN), Some(MIN)),
    row("s", "946684799", PLAIN, None, None),
    row("s", "946684799.9995", FRAC, None, Some(MIN)), // rounds up across the lower bound
    row("s", "946684799.9994", FRAC, None, None),
    row("s", "4102444799", PLAIN, Some(MAX - 1000), Some(MAX - 1000)),
    row("s", "4102444799.999", FRAC, Some(MAX - 1), Some(MAX - 1)),
    row("s", "4102444799.9995", FRAC, Some(MAX - 1), None), // rounds up across the upper bound
    row("s", "4102444799.9994999", FRAC, Some(MAX - 1), Some(MAX - 1)),
    row("s", "4102444800", PLAIN, None, None),
    row("s", "1709633730.123999", FRAC, Some(T + 123), Some(T + 124)),
    row("s", "1709633730.0005", FRAC, Some(T), Some(T)),
    row("s", "1709633730.0015", FRAC, Some(T + 1), Some(T + 2)),
    row("s", "1709633730.00050001", FRAC, Some(T), Some(T + 1)),
    row("s", "+1709633730", LEN, Some(T), Some(T)),
    row("s", " 1709633730\t", LEN, Some(T), Some(T)),
    row("s", "-1709633730", LEN, None, None),
    row("s", "1.70963373e9", BOTH, Some(T), Some(T)),
    row("s", "1709633730e0", LEN, Some(T), Some(T)),
    row("s", "17096337300E-1", LEN, Some(T), Some(T)), // whole despite the negative exponent
    row("s", "17096337305e-1", BOTH, Some(T + 500), Some(T + 500)),
    row("s", "0", PLAIN, None, None),
    // milliseconds
    row("ms", "946684800000", PLAIN, Some(MIN), Some(MIN)),
    row("ms", "946684799999", PLAIN, None, None),
    row("ms", "946684799999.5", FRAC, None, Some(MIN)),
    row("ms", "4102444799999", PLAIN, Some(MAX - 1), Some(MAX - 1)),
    row("ms", "4102444799999.5", FRAC, Some(MAX - 1), None),
    row("ms", "4102444799999.4999", FRAC, Some(MAX - 1), Some(MAX - 1)),
    row("ms", "4102444799998.5", FRAC, Some(MAX - 2), Some(MAX - 2)), // tie to even
    row("ms", "4102444800000", PLAIN, None, None),
    row("ms", "1709633730123.999", FRAC, Some(T + 123), Some(T + 124)),
    row("ms", "1709633730123", PLAIN, Some(T + 123), Some(T + 123)),
    row("ms", "1.709633730123e12", BOTH, Some(T + 123), Some(T + 123)),
    row("ms", "+1709633730123", LEN, Some(T + 123), Some(T + 123)),
    // microseconds
    row("us", "946684800000000", PLAIN, Some(MIN), Some(MIN)),
    row("us", "946684799999999", PLAIN, None, Some(MIN)),
    row("us", "946684799999499", PLAIN, None, None),
    row("us", "4102444799999999", PLAIN, Some(MAX - 1), None),
    row("us", "4102444799999499", PLAIN, Some(MAX - 1), Some(MAX - 1)),
    row("us", "4102444799999500", PLAIN, Some(MAX - 1), None),
    row("us", "4102444800000000", PLAIN, None, None),
    row("us", "1709633730123456", PLAIN, Some(T + 123), Some(T + 123)),
    row("us", "1709633730123999", PLAIN, Some(T + 123), Some(T + 124)),
    row("us", "1709633730123500", PLAIN, Some(T + 123), Some(T + 124)),
    row("us", "1709633730124500", PLAIN, Some(T + 124), Some(T + 124)),
    row("us", "1709633730123456.7", FRAC, Some(T + 123), Some(T + 123)),
    row("us", " 1709633730123999 ", LEN, Some(T + 123), Some(T + 124)),
    // nanoseconds
    row("ns", "946684800000000000", PLAIN, Some(MIN), Some(MIN)),
    row("ns", "946684799999999999", PLAIN, None, Some(MIN)),
    row("ns", "4102444799999999999", PLAIN, Some(MAX - 1), None),
    row("ns", "4102444799999499999", PLAIN, Some(MAX - 1), Some(MAX - 1)),
    row("ns", "4102444800000000000", PLAIN, None, None),
    row("ns", "1709633730123456789", PLAIN, Some(T + 123), Some(T + 123)),
    row("ns", "1709633730123999999", PLAIN, Some(T + 123), Some(T + 124)),
    row("ns", "1709633730123500000", PLAIN, Some(T + 123), Some(T + 124)),
    row("ns", "1709633730123500001", PLAIN, Some(T + 123), Some(T + 124)),
    row("ns", "1709633730124500000", PLAIN, Some(T + 124), Some(T + 124)),
    row("ns", "1.709633730123999999e18", BOTH, Some(T + 123), Some(T + 124)),
    // auto: ≥ 1e11 is milliseconds
    row("auto", "1709633730", PLAIN, Some(T), Some(T)),
    row("auto", "1709633730123", PLAIN, Some(T + 123), Some(T + 123)),
    row("auto", "1709633730.0015", FRAC, Some(T + 1), Some(T + 2)),
    row("auto", "99999999999", PLAIN, None, None),
    row("auto", "100000000000", PLAIN, None, None),
    row("auto", "4102444799999.5", FRAC, Some(MAX - 1), None),
];

#[test]
fn every_unit_strictness_and_rounding_at_the_bounds() {
    let mut checked = 0;
    for r in ROWS {
        for numbers in ["integers", "fractions"] {
            for text in ["digits", "lenient"] {
                for rounding in ["floor", "half_even"] {
                    let keys = format!(
                        "format = \"epoch\"\nunit = \"{}\"\nnumbers = \"{numbers}\"\ntext = \"{text}\"\nrounding = \"{rounding}\"",
                        r.unit
                    );
                    let s = spec(&keys);
                    let want = if rounding == "floor" { r.floor } else { r.half_even };
                    let mut forms = vec![(false, read_str(&s, r.text))];
                    if is_json_number(r.text) {
                        forms.push((true, read_num(&s, r.text)));
                    }
                    for (json, got) in forms {
                        let ctx = format!(
                            "{} ({}) with {keys}",
                            r.text,
                            if json { "number" } else { "string" }
                        );
                        let refused_text = r.lenient && !json && text == "digits";
                        let refused_numbers = r.fraction && numbers == "integers";
                        match (&got, want) {
                            _ if refused_text => {
                                let d = got.expect_err(&ctx);
                                assert!(d.contains("text = \"lenient\" accepts"), "{ctx}: {d}");
                            }
                            _ if refused_numbers => {
                                let d = got.expect_err(&ctx);
                                assert!(d.contains("numbers = \"integers\""), "{ctx}: {d}");
                            }
                            (Ok(ms), Some(w)) => assert_eq!(*ms, w, "{ctx}"),
                            (Err(d), None) => assert!(
                                d.contains("(outside [2000-01-01, 2100-01-01))"),
                                "{ctx}: {d}"
                            ),
                            _ => panic!("{ctx}: got {got:?}, want {want:?}"),
                        }
                        checked += 1;
                    }
                }
            }
        }
    }
    assert!(checked > 600, "{checked}");
}

#[test]
fn aliases_are_epoch_with_a_unit() {
    for (alias, unit) in [
        ("epoch_seconds", "s"),
        ("epoch_millis", "ms"),
        ("epoch_micros", "us"),
        ("epoch_nanos", "ns"),
    ] {
        let a = spec(&format!("format = \"{alias}\""));
        let b = spec(&format!("format = \"epoch\"\nunit = \"{unit}\""));
        assert_eq!(a.describe(), b.describe());
        let c = spec(&format!("format = \"{alias}\"\nunit = \"{unit}\"")); // agreeing: fine
        assert_eq!(a.describe(), c.describe());
    }
}

#[test]
fn other_types_and_malformed_text_are_refused_with_what_was_read() {
    let s = spec("format = \"epoch\"");
    for (v, want) in [
        (TimeValue::Other("a boolean"), "a boolean read as epoch, is not a number or a string"),
        (TimeValue::Other("an object"), "an object read as epoch, is not a number or a string"),
        (TimeValue::Str(""), "\"\" read as epoch, is empty"),
        (TimeValue::Str("abc"), "\"abc\" read as epoch, is not a decimal number"),
        (TimeValue::Str("1."), "\"1.\" read as epoch, is not a decimal number"),
        (TimeValue::Str(".5"), "\".5\" read as epoch, is not a decimal number"),
        (TimeValue::Str("1e"), "\"1e\" read as epoch, is not a decimal number"),
        (
            TimeValue::Str("1.7e9"),
            "\"1.7e9\" read as epoch, has an exponent: text = \"digits\" takes digits with an optional fraction only (text = \"lenient\" accepts it)",
        ),
        (
            TimeValue::Str("2024-03-05T10:15:30Z"),
            "\"2024-03-05T10:15:30Z\" read as epoch, is not a decimal number: is it an ISO 8601 time? (format = \"iso8601\")",
        ),
        (
            TimeValue::Num("-1"),
            "the number -1 read as epoch s, is 1969-12-31T23:59:59.000Z (outside [2000-01-01, 2100-01-01))",
        ),
        (
            TimeValue::Num("0"),
            "the number 0 read as epoch s, is 1970-01-01T00:00:00.000Z (outside [2000-01-01, 2100-01-01))",
        ),
        (
            TimeValue::Num("1e999999999"),
            "the number 1e999999999 read as epoch ms, is more than 10^18 ms after 1970 (outside [2000-01-01, 2100-01-01))",
        ),
        (
            TimeValue::Num("-1e30"),
            "the number -1e30 read as epoch ms, is more than 10^18 ms before 1970 (outside [2000-01-01, 2100-01-01))",
        ),
    ] {
        assert_eq!(s.read(v).unwrap_err().detail, want, "{v:?}");
    }
    assert_eq!(
        read_num(&s, "1e-999999999").unwrap_err(),
        "the number 1e-999999999 read as epoch s, is 1970-01-01T00:00:00.000Z (outside [2000-01-01, 2100-01-01))"
    );
}

#[test]
fn hints_name_the_unit_a_value_looks_like() {
    let auto = spec("format = \"epoch\"");
    assert_eq!(
        read_str(&auto, "1709633730123456").unwrap_err(),
        "\"1709633730123456\" read as epoch ms, is year 56,146 (outside [2000-01-01, 2100-01-01)): is it microseconds?"
    );
    let d = read_num(&auto, "1709633730123456789").unwrap_err();
    assert!(d.ends_with("): is it nanoseconds?"), "{d}");
    let ms = spec("format = \"epoch_millis\"");
    assert_eq!(
        read_num(&ms, "1709633730").unwrap_err(),
        "the number 1709633730 read as epoch ms, is 1970-01-20T18:53:53.730Z (outside [2000-01-01, 2100-01-01)): is it seconds?"
    );
    let s = spec("format = \"epoch\"\nunit = \"s\"");
    assert!(read_str(&s, "1709633730123").unwrap_err().ends_with(": is it milliseconds?"));
    let us = spec("format = \"epoch\"\nunit = \"us\"");
    assert!(read_str(&us, "1709633730123456789").unwrap_err().ends_with(": is it nanoseconds?"));
    assert!(read_str(&us, "1709633730").unwrap_err().ends_with(": is it seconds?"));
    // No unit puts these in range: no hint.
    for v in ["5", "31536000000000000000"] {
        assert!(read_str(&us, v).unwrap_err().ends_with("2100-01-01))"), "{v}");
    }
    // Long values are cut.
    let long = "9".repeat(100);
    let d = read_str(&s, &long).unwrap_err();
    assert!(d.starts_with(&format!("\"{}…\" (100 chars) read as epoch s", "9".repeat(40))), "{d}");
    let d = read_num(&s, &long).unwrap_err();
    assert!(d.starts_with(&format!("the number {}… (100 chars)", "9".repeat(40))), "{d}");
}

#[test]
fn declarations_are_checked_at_the_key() {
    for (keys, key, hint) in [
        ("format = \"unix\"", "format", "unknown time format `unix`"),
        ("format = \"iso8601\"\nunit = \"ms\"", "unit", "`unit` is for epoch formats"),
        (
            "format = \"iso8601\"\nnumbers = \"integers\"",
            "numbers",
            "`numbers` is for epoch formats",
        ),
        ("format = \"iso8601\"\ntext = \"digits\"", "text", "use strict, lenient"),
        ("format = \"epoch\"\ntext = \"strict\"", "text", "use digits, lenient"),
        ("format = \"epoch\"\nzone = \"Europe/Berlin\"", "zone", "UTC by definition"),
        (
            "format = \"epoch_seconds\"\nunit = \"ms\"",
            "unit",
            "contradicts format = \"epoch_seconds\" (unit s)",
        ),
        ("format = \"epoch\"\nunit = \"seconds\"", "unit", "(`seconds` is written `s`)"),
        ("format = \"epoch\"\nunit = \"micros\"", "unit", "(`micros` is written `us`)"),
        (
            "format = \"epoch\"\nrounding = \"half-even\"",
            "rounding",
            "(`half-even` is written `half_even`)",
        ),
        (
            "format = \"epoch\"\nrounding = \"truncate\"",
            "rounding",
            "(`truncate` is written `floor`)",
        ),
        ("format = \"epoch\"\nnumbers = \"int\"", "numbers", "use integers, fractions"),
        ("format = \"iso8601\"\nzone = \"Europe/Berln\"", "zone", "did you mean Europe/Berlin?"),
        ("format = \"iso8601\"\nzone = \"Berlin\"", "zone", "did you mean Europe/Berlin?"),
        ("format = \"iso8601\"\nzone = \"+01:00\"", "zone", "a fixed offset belongs in the values"),
    ] {
        let f = field(keys);
        let errs = TimeSpec::compile(&f).expect_err(keys);
        let (span, k, msg) = &errs[0];
        assert_eq!(*k, key, "{keys}: {msg}");
        assert!(msg.contains(hint), "{keys}: {msg}");
        let text = format!("path = '$.ts'\n{keys}");
        let line = text[span.start..].lines().next().unwrap_or("");
        assert!(line.starts_with('"'), "{keys}: span at {line}");
    }
    // Two problems at once.
    let errs =
        TimeSpec::compile(&field("format = \"iso8601\"\nunit = \"s\"\nnumbers = \"integers\""))
            .unwrap_err();
    assert_eq!(errs.len(), 2);
}

#[test]
fn describe_says_how_values_are_read() {
    assert_eq!(
        spec("format = \"epoch\"").describe(),
        "epoch auto (fractions, digit strings, half_even)"
    );
    assert_eq!(
        spec("format = \"epoch\"\nunit = \"us\"\nnumbers = \"integers\"\nrounding = \"floor\"")
            .describe(),
        "epoch us (integers, digit strings, floor)"
    );
    assert_eq!(
        spec("format = \"epoch_nanos\"\ntext = \"lenient\"").describe(),
        "epoch ns (fractions, lenient strings, half_even)"
    );
    assert_eq!(spec("format = \"iso8601\"").describe(), "iso8601 (strict, floor)");
    assert_eq!(
        spec("format = \"iso8601\"\ntext = \"lenient\"\nrounding = \"half_even\"\nzone = \"Europe/Berlin\"").describe(),
        "iso8601 (lenient, half_even, local times in Europe/Berlin)"
    );
}

/// Values of every shape the old parsers saw, as strings and as numbers.
const CORPUS: &[&str] = &[
    "1709512563",
    "1709633730123",
    "1709548836.027",
    "1.709548836027e9",
    "99999999999",
    "100000000000",
    "1709548836.0005",
    "1709548836.0015",
    "1709548836.00050001",
    "1709633730123.5",
    "1709633730123.4999",
    "946684800",
    "946684799.9995",
    "4102444799.9995",
    "4102444799999.5",
    "4102444800000",
    "946684800000",
    "946684799999.5",
    "0",
    "-0",
    "-1",
    "1",
    "0.5",
    "0.0005",
    "0.0015",
    "abc",
    "",
    " ",
    "1.7e9",
    "1.",
    ".5",
    "+5",
    "1e",
    "1e+",
    "1E3",
    "1e-999999999",
    "1e999999999",
    "17096337301230000",
    "1709633730e-0",
    "00001709633730",
    "1709633730.",
    "-1709633730",
    "-0.0",
    "-0e5",
    "1709633730 ",
    "１７０９６３３７３０",
    "1709633730\n",
    "170963373012.3e1",
    "17096337301.23e2",
    "4.1024448e12",
    "9.46684799999999e11",
    "2024-03-05T10:15:30.123Z",
    "2024-03-05T11:15:30+01:00",
    "2024-03-05T10:15:30.123456+00:00",
    "2024-03-05 07:15:30.123-03:00",
    "2024-03-05T10:15:30.5Z",
    "2024-03-05T10:15:30.999999999Z",
    "2000-01-01T00:00:00Z",
    "1999-12-31T23:59:59.999Z",
    "2099-12-31T23:59:59.999Z",
    "2100-01-01T00:00:00Z",
    "2000-01-01T00:59:59+01:00",
    "2024-13-45T10:00:00Z",
    "2024-02-30T10:00:00.000Z",
    "2023-02-29T10:00:00Z",
    "2024-02-29T00:00:00Z",
    "2024-03-05T24:00:00Z",
    "2024-03-05T10:60:00Z",
    "2024-03-05T10:00:60Z",
    "2024-03-05T10:15:30",
    "2024-03-05t10:15:30z",
    "2024-03-05T10:15:30.123+0100",
    "2024-03-05 10:15:30.123 +01:00",
    "2024-03-05T10:15:30.Z",
    "2024-03-05T10:15:30.1234567890Z",
    "2024-03-05T10:15:30+24:00",
    "2024-03-05T10:15:30+01:60",
    "2024-03-05T10:15:30+23:59",
    "2024-03-05T10:15:30-23:59",
    "2024-03-05T10:15:30ZZ",
    "05/03/2024 10:15:30",
    "yesterday",
    "2024-03-05T10:15:30+01:00 ",
    " 2024-03-05T10:15:30Z",
    "२०२४-03-05T10:15:30Z",
    "2024-03-05T10:15:30+01",
    "2024-03-05T10:15:30z",
    "2150-01-01T00:00:00Z",
    "0000-01-01T00:00:00Z",
    "2024-03-05T10:15:30.123Z\u{0}",
    "2024-03-05T10:15:30.123\u{e9}",
];

/// The reference: what the old code gave for a string or a number under a format name.
fn old_read(format: &str, v: &str, json: bool) -> Option<i64> {
    use super::old::{EpochUnit, parse_epoch, parse_iso8601};
    let ms = match format {
        "iso8601" if !json => parse_iso8601(v),
        "iso8601" => None,
        "epoch" => parse_epoch(v, json, EpochUnit::Auto),
        "epoch_seconds" => parse_epoch(v, json, EpochUnit::Seconds),
        _ => parse_epoch(v, json, EpochUnit::Millis),
    };
    ms.filter(|&ms| in_range(ms))
}

fn assert_unchanged(v: &str) {
    for format in ["iso8601", "epoch", "epoch_seconds", "epoch_millis"] {
        let s = spec(&format!("format = \"{format}\""));
        assert_eq!(read_str(&s, v).ok(), old_read(format, v, false), "{format} {v:?} (string)");
        if is_json_number(v) {
            assert_eq!(read_num(&s, v).ok(), old_read(format, v, true), "{format} {v} (number)");
        }
    }
}

#[test]
fn old_formats_unchanged() {
    for v in CORPUS {
        assert_unchanged(v);
    }
    // And a few pinned values, as computed by the old code.
    let (iso, epoch) = (spec("format = \"iso8601\""), spec("format = \"epoch\""));
    assert_eq!(read_str(&iso, "2024-03-05 07:15:30.123-03:00"), Ok(1_709_633_730_123));
    assert_eq!(read_str(&iso, "2024-03-05T10:15:30.999999999Z"), Ok(1_709_633_730_999));
    assert_eq!(read_num(&epoch, "1.709548836027e9"), Ok(1_709_548_836_027));
    assert_eq!(read_str(&epoch, "1709548836.00050001"), Ok(1_709_548_836_001));
    assert_eq!(read_str(&epoch, "1709633730123.5"), Ok(1_709_633_730_124));
}

mod unchanged_on_random_values {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(3000))]
        #[test]
        fn numbers_and_strings(v in "[-+ ]?[0-9]{0,20}(\\.[0-9]{0,12})?([eE][-+]?[0-9]{1,3})?") {
            assert_unchanged(&v);
        }

        #[test]
        fn iso_like(v in "[0-9]{4}-[0-9]{2}-[0-9]{2}[T t][0-9]{2}:[0-9]{2}:[0-9]{2}(\\.[0-9]{0,11})?(Z|z|[-+][0-9]{2}:?[0-9]{2})?") {
            assert_unchanged(&v);
        }

        #[test]
        fn never_panics(v in any::<String>(), json in any::<bool>()) {
            for keys in ["format = \"epoch\"\nunit = \"ns\"\ntext = \"lenient\"\nrounding = \"floor\"", "format = \"iso8601\"\ntext = \"lenient\"\nzone = \"Europe/Berlin\""] {
                let s = spec(keys);
                if let Ok(ms) = if json { read_num(&s, &v) } else { read_str(&s, &v) } {
                    prop_assert!(in_range(ms));
                }
            }
        }
    }
}
