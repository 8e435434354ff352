//! ISO 8601 / RFC 3339 date-times → UTC epoch milliseconds, and the civil-date arithmetic the
//! messages need.
//!
//! Strict: `YYYY-MM-DD[T ]hh:mm:ss[.f{1,9}](Z|±hh:mm)`, uppercase `T` and `Z` only. Lenient
//! also takes `±hhmm` and `±hh` offsets, lowercase `t` and `z`, and spaces around the value.
//! With a declared zone, a time without offset is local time in that zone.

use super::{Rounding, Why};
use jiff::tz::TimeZone;

const SHAPE: &str =
    "is not an ISO 8601 date-time of the form YYYY-MM-DD[T ]hh:mm:ss[.fff](Z|±hh:mm)";

fn digits<const N: usize>(b: &[u8], at: usize) -> Option<u32> {
    let mut v = 0u32;
    for i in 0..N {
        let c = *b.get(at + i)?;
        if !c.is_ascii_digit() {
            return None;
        }
        v = v * 10 + u32::from(c - b'0');
    }
    Some(v)
}

fn is_leap(y: i64) -> bool {
    y % 4 == 0 && (y % 100 != 0 || y % 400 == 0)
}

fn days_in_month(y: i64, m: i64) -> i64 {
    match m {
        2 if is_leap(y) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm, whose
/// names are kept).
#[allow(clippy::many_single_char_names)]
pub(super) fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The proleptic Gregorian (year, month, day) of a day count since 1970-01-01 (Hinnant).
#[allow(clippy::many_single_char_names)]
pub(super) fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = if z >= 0 { z } else { z - 146_096 } / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// The UTC offset at the end of `b` from `i` on, in milliseconds: `Ok(None)` when there is
/// none.
fn offset(b: &[u8], i: usize, lenient: bool) -> Result<Option<i64>, Why> {
    let rest = &b[i..];
    let (hh, mm) = match rest {
        [] => return Ok(None),
        [b'Z'] => return Ok(Some(0)),
        [b'z'] if lenient => return Ok(Some(0)),
        [b'z'] => return Err(Why::Shape(
            "has a lowercase `z`: text = \"strict\" takes `Z` only (text = \"lenient\" accepts it)"
                .into(),
        )),
        [b'+' | b'-', _, _, b':', _, _] => (digits::<2>(rest, 1), digits::<2>(rest, 4)),
        [b'+' | b'-', _, _, _, _] | [b'+' | b'-', _, _] if !lenient => {
            return Err(Why::Shape(
                "has an offset without `:` (±hhmm or ±hh): text = \"strict\" takes ±hh:mm only (text = \"lenient\" accepts it)".into(),
            ));
        }
        [b'+' | b'-', _, _, _, _] => (digits::<2>(rest, 1), digits::<2>(rest, 3)),
        [b'+' | b'-', _, _] => (digits::<2>(rest, 1), Some(0)),
        _ => return Err(Why::Shape(SHAPE.into())),
    };
    let (Some(hh), Some(mm)) = (hh, mm) else { return Err(Why::Shape(SHAPE.into())) };
    if hh > 23 || mm > 59 {
        return Err(Why::Shape(format!("has the offset {hh:02}:{mm:02} (at most 23:59)").into()));
    }
    let off = i64::from(hh * 60 + mm) * 60_000;
    Ok(Some(if rest[0] == b'-' { -off } else { off }))
}

/// Reads one ISO 8601 date-time. The result may be out of range.
#[allow(clippy::many_single_char_names)]
pub(super) fn parse(
    text: &str,
    lenient: bool,
    zone: Option<&TimeZone>,
    rounding: Rounding,
) -> Result<i64, Why> {
    let raw = text.as_bytes();
    let b = if lenient { raw.trim_ascii() } else { raw };
    if !lenient && b.trim_ascii().len() != b.len() && b.trim_ascii().len() >= 19 {
        return Err(Why::Shape(
            "has spaces around it: text = \"strict\" refuses them (text = \"lenient\" accepts them)"
                .into(),
        ));
    }
    let field = |n: usize, at: usize| match n {
        4 => digits::<4>(b, at),
        _ => digits::<2>(b, at),
    };
    let (Some(y), Some(mo), Some(d), Some(hh), Some(mi), Some(ss)) =
        (field(4, 0), field(2, 5), field(2, 8), field(2, 11), field(2, 14), field(2, 17))
    else {
        return Err(Why::Shape(SHAPE.into()));
    };
    if b[4] != b'-' || b[7] != b'-' || b[13] != b':' || b[16] != b':' {
        return Err(Why::Shape(SHAPE.into()));
    }
    match b[10] {
        b'T' | b' ' => {}
        b't' if lenient => {}
        b't' => {
            return Err(Why::Shape(
                "has a lowercase `t`: text = \"strict\" takes `T` or a space only (text = \"lenient\" accepts it)".into(),
            ));
        }
        _ => return Err(Why::Shape(SHAPE.into())),
    }
    let mut i = 19;
    let (mut frac_start, mut frac_len) = (i, 0);
    if b.get(i) == Some(&b'.') {
        frac_start = i + 1;
        frac_len = b[frac_start..].iter().take_while(|c| c.is_ascii_digit()).count();
        if frac_len == 0 {
            return Err(Why::Shape("has a `.` without fraction digits".into()));
        }
        if frac_len > 9 {
            return Err(Why::Shape(
                format!("has {frac_len} fraction digits (at most 9: nanoseconds)").into(),
            ));
        }
        i = frac_start + frac_len;
    }
    let off = offset(b, i, lenient)?;
    let (y, mo, d) = (i64::from(y), i64::from(mo), i64::from(d));
    if !(1..=12).contains(&mo) {
        return Err(Why::Shape(format!("has month {mo:02}").into()));
    }
    if d < 1 || d > days_in_month(y, mo) {
        return Err(Why::Shape(
            format!("has day {d:02}, and {y:04}-{mo:02} has {} days", days_in_month(y, mo)).into(),
        ));
    }
    if hh > 23 || mi > 59 || ss > 59 {
        return Err(Why::Shape(
            format!("has the time {hh:02}:{mi:02}:{ss:02} (at most 23:59:59; no leap seconds)")
                .into(),
        ));
    }
    // Milliseconds of the fraction, rounded; 1000 carries into the next second by addition.
    let frac = &b[frac_start..frac_start + frac_len];
    let digit = |k: usize| frac.get(k).map_or(0, |c| i64::from(c - b'0'));
    let mut frac_ms = digit(0) * 100 + digit(1) * 10 + digit(2);
    if rounding == Rounding::HalfEven {
        let up = match digit(3) {
            c if c > 5 => true,
            c if c < 5 => false,
            _ => frac.iter().skip(4).any(|&c| c != b'0') || frac_ms % 2 == 1,
        };
        frac_ms += i64::from(up);
    }
    let local_secs = ((days_from_civil(y, mo, d) * 24 + i64::from(hh)) * 60 + i64::from(mi)) * 60
        + i64::from(ss);
    match (off, zone) {
        (Some(off), _) => Ok(local_secs * 1000 + frac_ms - off),
        (None, Some(tz)) => {
            // Every field was checked above, so these conversions cannot fail; an error is
            // still reported, never unwrapped.
            let dt = jiff::civil::DateTime::new(
                y as i16, mo as i8, d as i8, hh as i8, mi as i8, ss as i8, 0,
            )
            .map_err(|e| Why::Shape(format!("cannot be read as a local time: {e}").into()))?;
            let ts = tz.to_ambiguous_timestamp(dt).compatible().map_err(|e| {
                Why::Shape(format!("cannot be placed in the declared zone: {e}").into())
            })?;
            Ok(ts.as_second() * 1000 + frac_ms)
        }
        (None, None) => Err(Why::Shape(
            "has no UTC offset (Z or ±hh:mm): if it is local time, declare its zone, e.g. zone = \"Europe/Berlin\"".into(),
        )),
    }
}
