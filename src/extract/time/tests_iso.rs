//! ISO 8601 times: offsets, separators, fraction digits, leap days, bounds, and local times in
//! a declared zone across DST gaps and overlaps.

use super::tests::{read_str, spec};
use super::*;

const T: i64 = 1_709_633_730_000; // 2024-03-05T10:15:30Z

fn utc(v: &str) -> i64 {
    read_str(&spec("format = \"iso8601\""), v).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn offsets_and_separators_strict_and_lenient() {
    let strict = spec("format = \"iso8601\"");
    let lenient = spec("format = \"iso8601\"\ntext = \"lenient\"");
    // (value, strict accepts, expected)
    for (v, in_strict, want) in [
        ("2024-03-05T10:15:30Z", true, T),
        ("2024-03-05 10:15:30Z", true, T),
        ("2024-03-05T11:15:30+01:00", true, T),
        ("2024-03-05T07:15:30-03:00", true, T),
        ("2024-03-05T15:45:30+05:30", true, T),
        ("2024-03-05T10:15:30+00:00", true, T),
        ("2024-03-05T10:15:30-00:00", true, T),
        ("2024-03-05T11:15:30+0100", false, T),
        ("2024-03-05T06:00:30-0415", false, T),
        ("2024-03-05T11:15:30+01", false, T),
        ("2024-03-05t10:15:30Z", false, T),
        ("2024-03-05T10:15:30z", false, T),
        ("2024-03-05t10:15:30z", false, T),
        (" 2024-03-05T10:15:30Z ", false, T),
        ("2024-03-05T10:15:30Z\r\n", false, T),
    ] {
        assert_eq!(read_str(&lenient, v), Ok(want), "{v:?} lenient");
        if in_strict {
            assert_eq!(read_str(&strict, v), Ok(want), "{v:?} strict");
        } else {
            let d = read_str(&strict, v).unwrap_err();
            assert!(d.contains("(text = \"lenient\" accepts"), "{v:?}: {d}");
        }
    }
    for v in [
        "2024-03-05T10:15:30",
        "2024-03-05T10:15:30+1:00",
        "2024-03-05T10:15:30+01:0",
        "2024-03-05T10:15:30+010",
        "2024-03-05T10:15:30+24:00",
        "2024-03-05T10:15:30+2400",
        "2024-03-05T10:15:30+01:60",
        "2024-03-05T10:15:30 Z",
        "2024-03-05T10:15:30ZZ",
        "2024-03-05X10:15:30Z",
        "2024-03-05T10.15.30Z",
        "20240305T101530Z",
        "2024-3-5T10:15:30Z",
        "",
    ] {
        assert!(read_str(&lenient, v).is_err(), "{v:?} lenient");
        assert!(read_str(&strict, v).is_err(), "{v:?} strict");
    }
    assert_eq!(
        read_str(&strict, "2024-03-05T10:15:30").unwrap_err(),
        "\"2024-03-05T10:15:30\" read as iso8601, has no UTC offset (Z or ±hh:mm): if it is local time, declare its zone, e.g. zone = \"Europe/Berlin\""
    );
}

#[test]
fn zero_to_nine_fraction_digits_floor_and_half_even() {
    let floor = spec("format = \"iso8601\"");
    let half = spec("format = \"iso8601\"\nrounding = \"half_even\"");
    let digits = "9876543210";
    // (fraction digits, floor ms, half-even ms)
    for (n, f, h) in [
        (0, 0, 0),
        (1, 900, 900),
        (2, 980, 980),
        (3, 987, 987),
        (4, 987, 988),
        (5, 987, 988),
        (9, 987, 988),
    ] {
        let frac = if n == 0 { String::new() } else { format!(".{}", &digits[..n]) };
        let v = format!("2024-03-05T10:15:30{frac}Z");
        assert_eq!(read_str(&floor, &v), Ok(T + f), "{v}");
        assert_eq!(read_str(&half, &v), Ok(T + h), "{v}");
    }
    for (v, f, h) in [
        ("2024-03-05T10:15:30.0005Z", 0, 0),
        ("2024-03-05T10:15:30.0015Z", 1, 2),
        ("2024-03-05T10:15:30.000500001Z", 0, 1),
        ("2024-03-05T10:15:30.9995Z", 999, 1000),
        ("2024-03-05T10:15:30.123999999+00:00", 123, 124),
    ] {
        assert_eq!(read_str(&floor, v), Ok(T + f), "{v}");
        assert_eq!(read_str(&half, v), Ok(T + h), "{v}");
    }
    for s in [&floor, &half] {
        let d = read_str(s, &format!("2024-03-05T10:15:30.{digits}Z")).unwrap_err();
        assert!(d.ends_with("has 10 fraction digits (at most 9: nanoseconds)"), "{d}");
        assert!(
            read_str(s, "2024-03-05T10:15:30.Z").unwrap_err().contains("without fraction digits")
        );
    }
}

#[test]
fn calendar_and_bounds() {
    let iso = spec("format = \"iso8601\"");
    let half = spec("format = \"iso8601\"\nrounding = \"half_even\"");
    assert_eq!(read_str(&iso, "2024-02-29T00:00:00Z"), Ok(1_709_164_800_000));
    assert_eq!(read_str(&iso, "2000-02-29T00:00:00Z"), Ok(951_782_400_000)); // divisible by 400
    for v in ["2023-02-29T00:00:00Z", "2100-02-29T00:00:00Z", "2024-04-31T00:00:00Z"] {
        assert!(read_str(&iso, v).unwrap_err().contains("has day"), "{v}");
    }
    assert!(read_str(&iso, "2024-13-01T00:00:00Z").unwrap_err().contains("has month 13"));
    assert!(read_str(&iso, "2024-03-05T24:00:00Z").unwrap_err().contains("no leap seconds"));
    assert!(read_str(&iso, "2024-03-05T23:59:60Z").unwrap_err().contains("no leap seconds"));
    assert_eq!(read_str(&iso, "2000-01-01T00:00:00Z"), Ok(TS_MIN));
    assert_eq!(read_str(&iso, "2000-01-01T01:00:00+01:00"), Ok(TS_MIN));
    assert_eq!(read_str(&iso, "2099-12-31T23:59:59.999999999Z"), Ok(TS_MAX - 1));
    assert_eq!(
        read_str(&half, "2099-12-31T23:59:59.9995Z").unwrap_err(),
        "\"2099-12-31T23:59:59.9995Z\" read as iso8601, is 2100-01-01T00:00:00.000Z (outside [2000-01-01, 2100-01-01))"
    );
    assert_eq!(read_str(&half, "1999-12-31T23:59:59.9995Z"), Ok(TS_MIN));
    for v in [
        "1999-12-31T23:59:59.999Z",
        "2100-01-01T00:00:00Z",
        "2000-01-01T00:59:59+01:00",
        "0000-01-01T00:00:00Z",
    ] {
        assert!(
            read_str(&iso, v).unwrap_err().contains("(outside [2000-01-01, 2100-01-01))"),
            "{v}"
        );
    }
    // A number, or digits, given to an iso8601 candidate: the hint says it looks like epoch.
    assert_eq!(
        iso.read(TimeValue::Num("1709633730123")).unwrap_err().detail,
        "the number 1709633730123 read as iso8601, is not a string: is it an epoch time in milliseconds? (format = \"epoch\")"
    );
    assert!(
        read_str(&iso, "1709633730")
            .unwrap_err()
            .ends_with(": is it an epoch time in seconds? (format = \"epoch\")")
    );
    assert!(
        iso.read(TimeValue::Other("a boolean"))
            .unwrap_err()
            .detail
            .starts_with("a boolean read as iso8601, is not a string")
    );
}

#[test]
fn local_times_in_a_declared_zone() {
    let berlin = spec("format = \"iso8601\"\nzone = \"Europe/Berlin\"");
    let ny = spec("format = \"iso8601\"\ntext = \"lenient\"\nzone = \"America/New_York\"");
    for (s, v, want) in [
        (&berlin, "2024-01-15 10:00:00", "2024-01-15T09:00:00Z"),
        (&berlin, "2024-07-15T10:00:00.250", "2024-07-15T08:00:00.250Z"),
        // Gap: 02:00 → 03:00 on 2024-03-31; 02:30 moves forward by the gap (1 h) to 03:30 CEST.
        (&berlin, "2024-03-31 02:30:00", "2024-03-31T01:30:00Z"),
        (&berlin, "2024-03-31 01:59:59.999", "2024-03-31T00:59:59.999Z"),
        (&berlin, "2024-03-31 03:00:00", "2024-03-31T01:00:00Z"),
        // Overlap: 03:00 → 02:00 on 2024-10-27; 02:30 takes the earlier offset (+02:00).
        (&berlin, "2024-10-27 02:30:00", "2024-10-27T00:30:00Z"),
        (&berlin, "2024-10-27 03:00:00", "2024-10-27T02:00:00Z"),
        // An explicit offset wins over the zone.
        (&berlin, "2024-07-15T10:00:00Z", "2024-07-15T10:00:00Z"),
        (&berlin, "2024-07-15T10:00:00-05:00", "2024-07-15T15:00:00Z"),
        (&ny, "2024-03-10 02:30:00", "2024-03-10T07:30:00Z"), // gap: 03:30 EDT
        (&ny, "2024-11-03 01:30:00", "2024-11-03T05:30:00Z"), // overlap: 01:30 EDT
        (&ny, "2024-11-03t02:30:00", "2024-11-03T07:30:00Z"),
        (&ny, " 2024-07-04 12:00:00 ", "2024-07-04T16:00:00Z"),
        (&ny, "2024-07-04 12:00:00+0000", "2024-07-04T12:00:00Z"),
    ] {
        assert_eq!(read_str(s, v), Ok(utc(want)), "{v} in {}", s.describe());
    }
    // Bounds apply to the UTC instant.
    assert_eq!(read_str(&berlin, "2000-01-01 01:00:00"), Ok(TS_MIN));
    assert!(read_str(&berlin, "2000-01-01 00:59:59").is_err());
    assert_eq!(read_str(&ny, "2099-12-31 18:59:59.999"), Ok(TS_MAX - 1));
    assert!(read_str(&ny, "2099-12-31 19:00:00").is_err());
    assert!(read_str(&berlin, "2024-02-30 10:00:00").unwrap_err().contains("has day 30"));
}
