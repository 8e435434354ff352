//! Epoch numbers: exact decimal text (a JSON number's or a string's) → UTC epoch milliseconds.
//!
//! No floats and no allocation: the digits are read in place, scaled by moving the decimal
//! point, and rounded once, at the millisecond.

use super::{Numbers, Rounding, Text, Unit, Why};

/// Exponents are clamped to ±10^6: anything beyond is far outside any range either way.
const EXP_CLAMP: i64 = 1_000_000;
/// A value with 19 or more integer digits of milliseconds (≥ 10^18 ms) is refused as too large.
const MAX_MS_DIGITS: i64 = 18;
/// Under `auto`, a value with at least 12 integer digits (≥ 100,000,000,000) is milliseconds.
const AUTO_MS_DIGITS: i64 = 12;

/// The parts of a decimal number's text.
struct Decimal<'a> {
    negative: bool,
    int: &'a [u8],
    frac: &'a [u8],
    exp: i64,
}

impl Decimal<'_> {
    /// The `i`-th mantissa digit, integer digits first (`0` past the end).
    fn digit(&self, i: usize) -> u8 {
        let b =
            if i < self.int.len() { self.int.get(i) } else { self.frac.get(i - self.int.len()) };
        b.map_or(0, |c| c - b'0')
    }

    fn len(&self) -> usize {
        self.int.len() + self.frac.len()
    }
}

/// What the lenient grammar saw beyond the strict one, to refuse it by name.
#[derive(Default)]
struct Extras {
    spaces: bool,
    sign: bool,
    exponent: bool,
}

fn all_digits(s: &[u8]) -> bool {
    !s.is_empty() && s.iter().all(u8::is_ascii_digit)
}

/// `space* [+-]? digits (. digits)? ([eE] [+-]? digits)? space*`, the widest grammar any
/// setting accepts. `None`: not a decimal number at all.
fn split(text: &str) -> Option<(Decimal<'_>, Extras)> {
    let mut extras = Extras::default();
    let raw = text.as_bytes();
    let s = raw.trim_ascii();
    extras.spaces = s.len() != raw.len();
    extras.sign = matches!(s.first(), Some(b'-' | b'+'));
    let (negative, s) = match s.first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    let mant_end = s.iter().position(|c| matches!(c, b'e' | b'E')).unwrap_or(s.len());
    let mant = &s[..mant_end];
    let (int, frac) = match mant.iter().position(|&c| c == b'.') {
        Some(p) => {
            let frac = &mant[p + 1..];
            if !all_digits(frac) {
                return None;
            }
            (&mant[..p], frac)
        }
        None => (mant, &b""[..]),
    };
    if !all_digits(int) {
        return None;
    }
    let mut exp = 0;
    if let Some(e) = s.get(mant_end + 1..) {
        extras.exponent = true;
        let (neg, e) = match e.first() {
            Some(b'-') => (true, &e[1..]),
            Some(b'+') => (false, &e[1..]),
            _ => (false, e),
        };
        if !all_digits(e) {
            return None;
        }
        for &c in e {
            exp = (exp * 10 + i64::from(c - b'0')).min(EXP_CLAMP);
        }
        if neg {
            exp = -exp;
        }
    }
    Some((Decimal { negative, int, frac, exp }, extras))
}

/// How many times the decimal point moves right to turn a value of `unit` into milliseconds.
fn shift(unit: Unit) -> i64 {
    match unit {
        Unit::S => 3,
        Unit::Auto | Unit::Ms => 0,
        Unit::Us => -3,
        Unit::Ns => -6,
    }
}

/// Reads an epoch time. `json_number`: the text is a JSON number's (already valid JSON, so it
/// may carry a `-` and an exponent whatever `text` says). Returns the milliseconds (possibly
/// out of range) and the unit they were read in (`auto` resolved to `s` or `ms`).
pub(super) fn parse(
    text: &str,
    json_number: bool,
    unit: Unit,
    numbers: Numbers,
    strictness: Text,
    rounding: Rounding,
) -> Result<(i64, Unit), Why> {
    let Some((d, extras)) = split(text) else {
        return Err(Why::Shape(if text.is_empty() {
            "is empty".into()
        } else {
            "is not a decimal number".into()
        }));
    };
    if !json_number && strictness == Text::Strict {
        let lenient = "text = \"digits\" takes digits with an optional fraction only (text = \"lenient\" accepts it)";
        let what = if extras.spaces {
            "has spaces around it"
        } else if extras.sign {
            "has a sign"
        } else if extras.exponent {
            "has an exponent"
        } else {
            ""
        };
        if !what.is_empty() {
            return Err(Why::Shape(format!("{what}: {lenient}").into()));
        }
    }
    let n = d.len();
    if numbers == Numbers::Integers {
        // Whole in its unit: no decimal point, and no digit other than 0 moved behind the point
        // by a negative exponent.
        let point = d.int.len() as i64 + d.exp;
        let whole =
            d.frac.is_empty() && (point.clamp(0, n as i64) as usize..n).all(|i| d.digit(i) == 0);
        if !whole {
            return Err(Why::Shape(
                "has a fraction: numbers = \"integers\" takes whole numbers only".into(),
            ));
        }
    }
    let lead = (0..n).take_while(|&i| d.digit(i) == 0).count();
    // Where the point of the value in its unit falls among the significant digits.
    let point_in_unit = d.int.len() as i64 + d.exp - lead as i64;
    let unit = match unit {
        Unit::Auto if point_in_unit < AUTO_MS_DIGITS => Unit::S,
        Unit::Auto => Unit::Ms,
        u => u,
    };
    if lead == n {
        return Ok((0, unit));
    }
    let point = point_in_unit + shift(unit);
    if point > MAX_MS_DIGITS {
        return Err(Why::TooLarge { negative: d.negative, unit });
    }
    let sig = |k: i64| -> u8 { if k < 0 { 0 } else { d.digit(lead + k as usize) } };
    let mut magnitude: i64 = 0;
    for k in 0..point.max(0) {
        magnitude = magnitude * 10 + i64::from(sig(k));
    }
    let sig_len = (n - lead) as i64;
    // Significant digits behind the millisecond point; the first significant digit is not 0.
    let rest_nonzero = point <= 0 || (point..sig_len).any(|k| sig(k) != 0);
    let up = match rounding {
        Rounding::Floor => d.negative && rest_nonzero,
        Rounding::HalfEven => match sig(point) {
            c if point < 0 || c < 5 => false,
            c if c > 5 => true,
            _ => (point + 1..sig_len).any(|k| sig(k) != 0) || magnitude % 2 == 1,
        },
    };
    magnitude += i64::from(up);
    Ok((if d.negative { -magnitude } else { magnitude }, unit))
}
