//! The words of a failure: the value as read (cut to a readable length), the instant it
//! denotes, and hints.

use super::{Numbers, Rounding, Text, TimeFailure, TimeValue, Unit, epoch, in_range, iso};

/// Longest part of a value quoted in a failure's detail, in characters.
const QUOTE_CHARS: usize = 40;

/// `epoch ms`, or `epoch` for `auto` before the unit is known.
pub(super) fn short(unit: Unit) -> String {
    match unit {
        Unit::Auto => "epoch".into(),
        u => format!("epoch {}", u.name()),
    }
}

pub(super) fn fail(v: TimeValue<'_>, how: &str, what: &str, hint: &str) -> TimeFailure {
    TimeFailure { detail: format!("{} read as {how}, {what}{hint}", quote(v)) }
}

/// The value as a message shows it: a string quoted, a number as written, at most
/// [`QUOTE_CHARS`] characters of either.
fn quote(v: TimeValue<'_>) -> String {
    let cut = |s: &str| -> (String, bool) {
        let mut it = s.chars();
        let head: String = it.by_ref().take(QUOTE_CHARS).collect();
        (head, it.next().is_some())
    };
    match v {
        TimeValue::Str(s) => {
            let (head, more) = cut(s);
            let q = format!("{head:?}");
            if more {
                format!("{}…\" ({} chars)", &q[..q.len() - 1], s.chars().count())
            } else {
                q
            }
        }
        TimeValue::Num(n) => {
            let (head, more) = cut(n);
            if more {
                format!("the number {head}… ({} chars)", n.len())
            } else {
                format!("the number {head}")
            }
        }
        TimeValue::Other(what) => what.to_owned(),
    }
}

pub(super) fn out_of_range(when: &str) -> String {
    format!("is {when} (outside [2000-01-01, 2100-01-01))")
}

/// An epoch-millisecond instant in words: the UTC date-time for years 0 to 9999, else the year.
pub(super) fn when(ms: i64) -> String {
    let (days, ms_of_day) = (ms.div_euclid(86_400_000), ms.rem_euclid(86_400_000));
    let (y, m, d) = iso::civil_from_days(days);
    if (0..=9999).contains(&y) {
        let s = ms_of_day / 1000;
        format!(
            "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
            s / 3600,
            s / 60 % 60,
            s % 60,
            ms_of_day % 1000
        )
    } else {
        let digits = y.unsigned_abs().to_string();
        let mut grouped = String::new();
        for (i, c) in digits.chars().enumerate() {
            if i > 0 && (digits.len() - i) % 3 == 0 {
                grouped.push(',');
            }
            grouped.push(c);
        }
        format!("year {}{grouped}", if y < 0 { "-" } else { "" })
    }
}

/// For a value given to an iso8601 candidate: a hint when it reads as an epoch time.
pub(super) fn epoch_hint(t: &str, json: bool) -> String {
    match epoch::parse(t, json, Unit::Auto, Numbers::Fractions, Text::Strict, Rounding::HalfEven) {
        Ok((ms, used)) if in_range(ms) => {
            format!(": is it an epoch time in {}? (format = \"epoch\")", used.long())
        }
        _ => String::new(),
    }
}
