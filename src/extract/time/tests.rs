//! Epoch times: every unit × strictness × rounding at the bounds, and the hints.

use super::*;
use crate::extract::schema::TimeField;

const MIN: i64 = TS_MIN;
const MAX: i64 = TS_MAX;

pub(super) fn field(keys: &str) -> TimeField {
    toml::from_str(&format!("path = '$.ts'\n{keys}")).unwrap_or_else(|e| panic!("{keys}: {e}"))
}

pub(super) fn spec(keys: &str) -> TimeSpec {
    TimeSpec::compile(&field(keys)).unwrap_or_else(|e| panic!("{keys}: {e:?}"))
}

pub(super) fn read_str(s: &TimeSpec, v: &str) -> Result<i64, String> {
    s.read(TimeValue::Str(v)).map_err(|f| f.detail)
}

pub(super) fn read_num(s: &TimeSpec, v: &str) -> Result<i64, String> {
    s.read(TimeValue::Num(v)).map_err(|f| f.detail)
}

/// RFC 8259 number text (no leading zeros, no `+`, no spaces).
pub(super) fn is_json_number(t: &str) -> bool {
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
