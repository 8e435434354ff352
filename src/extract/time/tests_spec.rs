//! Declarations (errors at the key, descriptions) and the unchanged behaviour of the formats
//! that existed before, against a copy of the old parsers.

use super::tests::{field, is_json_number, read_num, read_str, spec};
use super::*;

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
