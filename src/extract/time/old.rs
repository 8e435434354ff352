//! The parsers as they were before declared units, strictness and zones: the reference the
//! default settings must match exactly (see `tests::old_formats_unchanged`). Test-only.

#![allow(clippy::pedantic, clippy::unwrap_used, dead_code)]

const MS_THRESHOLD_DIGITS: usize = 12; // 100_000_000_000 has 12 integer digits
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

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm, whose
/// names are kept).
#[allow(clippy::many_single_char_names)]
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Parses `YYYY-MM-DD[T ]hh:mm:ss[.f{1,9}](Z|±hh:mm)` to UTC epoch milliseconds.
/// Fractions are truncated to milliseconds; only uppercase `T` and `Z`; no leap seconds.
#[must_use]
#[allow(clippy::many_single_char_names)]
pub(super) fn parse_iso8601(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() < 20 {
        return None;
    }
    let y = digits::<4>(b, 0)?;
    let mo = digits::<2>(b, 5)?;
    let d = digits::<2>(b, 8)?;
    let hh = digits::<2>(b, 11)?;
    let mi = digits::<2>(b, 14)?;
    let ss = digits::<2>(b, 17)?;
    if b[4] != b'-'
        || b[7] != b'-'
        || !matches!(b[10], b'T' | b' ')
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let mut i = 19;
    let mut frac_ms = 0i64;
    if b.get(i) == Some(&b'.') {
        let start = i + 1;
        let mut end = start;
        while end < b.len() && b[end].is_ascii_digit() {
            end += 1;
        }
        let n = end - start;
        if n == 0 || n > 9 {
            return None;
        }
        for k in 0..3 {
            frac_ms = frac_ms * 10 + if k < n { i64::from(b[start + k] - b'0') } else { 0 };
        }
        i = end;
    }
    let offset_ms = match b.get(i)? {
        b'Z' if b.len() == i + 1 => 0,
        sign @ (b'+' | b'-') if b.len() == i + 6 => {
            let oh = digits::<2>(b, i + 1)?;
            let om = digits::<2>(b, i + 4)?;
            if b[i + 3] != b':' || oh > 23 || om > 59 {
                return None;
            }
            let off = i64::from(oh * 60 + om) * 60_000;
            if *sign == b'+' { off } else { -off }
        }
        _ => return None,
    };
    if !(1..=12).contains(&mo) || hh > 23 || mi > 59 || ss > 59 {
        return None;
    }
    let (y, mo, d) = (i64::from(y), i64::from(mo), i64::from(d));
    let dim = match mo {
        2 if is_leap(y) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    };
    if d < 1 || d > dim {
        return None;
    }
    let secs = ((days_from_civil(y, mo, d) * 24 + i64::from(hh)) * 60 + i64::from(mi)) * 60
        + i64::from(ss);
    Some(secs * 1000 + frac_ms - offset_ms)
}

/// How a numeric epoch is scaled to milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum EpochUnit {
    /// Values ≥ 1e11 are milliseconds, smaller ones seconds.
    Auto,
    /// Always seconds (fractions allowed).
    Seconds,
    /// Always milliseconds.
    Millis,
}

/// Epoch time from decimal text: `^[0-9]+(\.[0-9]+)?$` for strings, or a JSON number's text
/// (which may also carry a sign and an exponent). Values ≥ 1e11 are milliseconds, smaller ones
/// seconds; the result is rounded half-to-even to a whole millisecond, exactly.
/// Negative values are refused.
#[must_use]
pub(super) fn parse_epoch(text: &str, json_number: bool, unit: EpochUnit) -> Option<i64> {
    let mut s = text.as_bytes();
    if json_number && let Some(rest) = s.strip_prefix(b"-") {
        // -0 is zero (and out of range anyway); anything else negative is refused.
        let end = rest.iter().position(|c| matches!(c, b'e' | b'E')).unwrap_or(rest.len());
        if rest[..end].iter().any(|c| (b'1'..=b'9').contains(c)) {
            return None;
        }
        s = rest;
    }
    let mant_end = if json_number {
        s.iter().position(|c| matches!(c, b'e' | b'E')).unwrap_or(s.len())
    } else {
        s.len()
    };
    let (mant, exp_text) = (&s[..mant_end], s.get(mant_end + 1..).unwrap_or(b""));
    let (int_part, frac_part) = match mant.iter().position(|&c| c == b'.') {
        Some(p) => (&mant[..p], &mant[p + 1..]),
        None => (mant, &b""[..]),
    };
    if int_part.is_empty()
        || !int_part.iter().all(u8::is_ascii_digit)
        || (mant.contains(&b'.') && frac_part.is_empty())
        || !frac_part.iter().all(u8::is_ascii_digit)
    {
        return None;
    }
    let exp: i64 = if mant_end < s.len() {
        let (neg, e) = match exp_text.first() {
            Some(b'-') => (true, &exp_text[1..]),
            Some(b'+') => (false, &exp_text[1..]),
            _ => (false, exp_text),
        };
        if e.is_empty() || !e.iter().all(u8::is_ascii_digit) {
            return None;
        }
        // Clamp: anything beyond ±10^6 is far outside the accepted range either way.
        let mut v: i64 = 0;
        for &c in e {
            v = (v * 10 + i64::from(c - b'0')).min(1_000_000);
        }
        if neg { -v } else { v }
    } else {
        0
    };
    // All mantissa digits with the decimal point at `point` (digits before it are the integer).
    let all: Vec<u8> = int_part.iter().chain(frac_part).copied().collect();
    let lead = all.iter().take_while(|&&c| c == b'0').count();
    let sig = &all[lead..];
    if sig.is_empty() {
        return Some(0);
    }
    let mut point = int_part.len() as i64 + exp - lead as i64;
    let seconds = match unit {
        EpochUnit::Auto => point < MS_THRESHOLD_DIGITS as i64,
        EpochUnit::Seconds => true,
        EpochUnit::Millis => false,
    };
    if seconds {
        point += 3;
    }
    if point > 18 {
        return None; // ≥ 1e18 ms: out of any accepted range and of i64
    }
    if point <= 0 {
        // Below 0.1 ms rounds to zero; exactly 0.5 and above only when point == 0.
        let up = point == 0 && round_up(sig, 0, false);
        return Some(i64::from(up));
    }
    let point = point as usize;
    let mut ms: i64 = 0;
    for i in 0..point {
        ms = ms * 10 + i64::from(sig.get(i).map_or(0, |c| c - b'0'));
    }
    if round_up(sig, point, ms % 2 == 1) {
        ms += 1;
    }
    Some(ms)
}

/// Half-to-even rounding decision for the digits of `sig` from index `at` on.
fn round_up(sig: &[u8], at: usize, odd: bool) -> bool {
    match sig.get(at) {
        None => false,
        Some(&c) if c > b'5' => true,
        Some(&c) if c < b'5' => false,
        Some(_) => sig[at + 1..].iter().any(|&c| c != b'0') || odd,
    }
}
