//! Event times: one schema candidate's declaration (format, unit, strictness, rounding, zone)
//! compiled into a [`TimeSpec`] that reads raw JSON leaves into UTC epoch milliseconds.
//!
//! Pure, synchronous and clock-free. Every function is total: whatever the input, it returns
//! a value or a [`TimeFailure`] and never panics. Numbers are read as exact decimal text (no
//! floats); nothing is allocated unless the value fails, to build the failure's detail.

mod epoch;
mod iso;
#[cfg(test)]
mod old;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_iso;

use super::schema::TimeField;
use jiff::tz::TimeZone;
use std::borrow::Cow;
use std::fmt::Write as _;
use std::ops::Range;
use toml::Spanned;

/// 2000-01-01T00:00:00Z: earliest accepted event time.
pub const TS_MIN: i64 = 946_684_800_000;
/// 2100-01-01T00:00:00Z: event times must be strictly before this.
pub const TS_MAX: i64 = 4_102_444_800_000;
/// Longest part of a value quoted in a failure's detail, in characters.
const QUOTE_CHARS: usize = 40;

/// Whether an epoch-millisecond value is inside the accepted range.
#[must_use]
pub fn in_range(ms: i64) -> bool {
    (TS_MIN..TS_MAX).contains(&ms)
}

/// The unit of an epoch number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    /// Values ≥ 100,000,000,000 are milliseconds, smaller ones seconds.
    Auto,
    /// Seconds.
    S,
    /// Milliseconds.
    Ms,
    /// Microseconds.
    Us,
    /// Nanoseconds.
    Ns,
}

impl Unit {
    const ALL: [(&'static str, Unit); 5] = [
        ("auto", Unit::Auto),
        ("s", Unit::S),
        ("ms", Unit::Ms),
        ("us", Unit::Us),
        ("ns", Unit::Ns),
    ];

    fn name(self) -> &'static str {
        Unit::ALL.iter().find(|(_, u)| *u == self).map_or("?", |(n, _)| n)
    }

    fn long(self) -> &'static str {
        match self {
            Unit::Auto => "seconds or milliseconds",
            Unit::S => "seconds",
            Unit::Ms => "milliseconds",
            Unit::Us => "microseconds",
            Unit::Ns => "nanoseconds",
        }
    }
}

/// Whether epoch values may have a fraction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Numbers {
    /// No decimal point; whole values of the unit only.
    Integers,
    /// Fractions allowed (they are rounded to milliseconds).
    Fractions,
}

/// How strictly strings are read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Text {
    /// Epoch: `^[0-9]+(\.[0-9]+)?$` (`digits`). ISO 8601: `T` or space, `Z` or `±hh:mm`
    /// (`strict`).
    Strict,
    /// Also a sign, spaces and an exponent (epoch); `±hhmm`, `±hh`, `t`, `z` and spaces (ISO).
    Lenient,
}

/// How a time finer than a millisecond becomes a whole millisecond.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rounding {
    /// Toward negative infinity: what truncating clocks mean.
    Floor,
    /// To the nearest, ties to the even millisecond.
    HalfEven,
}

#[derive(Debug, Clone)]
enum Format {
    Iso8601 { zone: Option<TimeZone> },
    Epoch(Unit),
}

/// One compiled event-time candidate: how its values are read.
#[derive(Debug, Clone)]
pub struct TimeSpec {
    format: Format,
    numbers: Numbers,
    text: Text,
    rounding: Rounding,
}

/// A raw JSON leaf, as the extractor found it.
#[derive(Debug, Clone, Copy)]
pub enum TimeValue<'a> {
    /// A JSON string, unescaped.
    Str(&'a str),
    /// A JSON number, as its text.
    Num(&'a str),
    /// Anything else, named for messages: `"a boolean"`, `"an object"`, …
    Other(&'static str),
}

/// Why a value is not an accepted event time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimeFailure {
    /// The value read, how it was read, what is wrong, and a hint when one applies:
    /// `"1709633730123456" read as epoch ms, is year 56,144 (outside [2000-01-01,
    /// 2100-01-01)): is it microseconds?`
    pub detail: String,
}

/// A problem in a time declaration: where (the key's span), which key (`unit`), and what, with
/// a hint.
pub type SpecError = (Range<usize>, &'static str, String);

/// Why the parsers refused a value (internal).
#[derive(Debug)]
enum Why {
    /// The text does not have the declared shape; says how.
    Shape(Cow<'static, str>),
    /// An epoch value of at least 10^18 ms (in `unit`).
    TooLarge { negative: bool, unit: Unit },
}

/// Reads an optional key among `choices`; records an error for any other value.
fn key<T: Copy>(
    k: Option<&Spanned<String>>,
    name: &'static str,
    choices: &[(&str, T)],
    errs: &mut Vec<SpecError>,
) -> Option<(T, Range<usize>)> {
    let k = k?;
    let v = k.get_ref().as_str();
    if let Some((_, t)) = choices.iter().find(|(n, _)| *n == v) {
        return Some((*t, k.span()));
    }
    let list: Vec<&str> = choices.iter().map(|(n, _)| *n).collect();
    let mut msg = format!("unknown {name} `{v}`: use {}", list.join(", "));
    let synonym = match v.to_ascii_lowercase().as_str() {
        "sec" | "secs" | "second" | "seconds" => "s",
        "milli" | "millis" | "millisecond" | "milliseconds" => "ms",
        "µs" | "micro" | "micros" | "microsecond" | "microseconds" => "us",
        "nano" | "nanos" | "nanosecond" | "nanoseconds" => "ns",
        "half-even" | "halfeven" | "banker" | "round" => "half_even",
        "truncate" | "trunc" | "down" => "floor",
        "integer" | "int" | "whole" => "integers",
        "fraction" | "float" | "decimal" => "fractions",
        _ => "",
    };
    if list.contains(&synonym) {
        let _ = write!(msg, " (`{v}` is written `{synonym}`)");
    }
    errs.push((k.span(), name, msg));
    None
}

/// The closest bundled zone names to an unknown one, for the hint.
fn zone_hint(name: &str) -> String {
    let want = name.to_ascii_lowercase();
    let tail = format!("/{want}");
    let mut best: Option<(usize, String)> = None;
    for tz in jiff::tz::db().available() {
        let n = tz.as_str();
        let l = n.to_ascii_lowercase();
        let d = if l.ends_with(&tail) { 0 } else { edit_distance(&l, &want) };
        if d <= 3 && best.as_ref().is_none_or(|(bd, _)| d < *bd) {
            best = Some((d, n.to_owned()));
        }
    }
    let example = "an IANA name such as Europe/Berlin, America/New_York or UTC";
    match best {
        Some((_, n)) => format!("did you mean {n}? ({example})"),
        None => format!("use {example}; a fixed offset belongs in the values, not here"),
    }
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, &cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

impl TimeSpec {
    /// Compiles one event-time candidate.
    ///
    /// # Errors
    /// Every problem of the declaration: unknown values, keys that do not apply to the format,
    /// a unit contradicting the format's, an unknown zone.
    pub fn compile(f: &TimeField) -> Result<TimeSpec, Vec<SpecError>> {
        let mut errs = Vec::new();
        let format = f.format.get_ref().as_str();
        let (iso, alias) = match format {
            "iso8601" => (true, None),
            "epoch" => (false, None),
            "epoch_seconds" => (false, Some(Unit::S)),
            "epoch_millis" => (false, Some(Unit::Ms)),
            "epoch_micros" => (false, Some(Unit::Us)),
            "epoch_nanos" => (false, Some(Unit::Ns)),
            _ => {
                errs.push((
                    f.format.span(),
                    "format",
                    format!("unknown time format `{format}`: use iso8601, epoch, epoch_seconds, epoch_millis, epoch_micros or epoch_nanos"),
                ));
                return Err(errs);
            }
        };
        let unit = key(f.unit.as_ref(), "unit", &Unit::ALL, &mut errs);
        let numbers = key(
            f.numbers.as_ref(),
            "numbers",
            &[("integers", Numbers::Integers), ("fractions", Numbers::Fractions)],
            &mut errs,
        );
        let text_choices: &[(&str, Text)] = if iso {
            &[("strict", Text::Strict), ("lenient", Text::Lenient)]
        } else {
            &[("digits", Text::Strict), ("lenient", Text::Lenient)]
        };
        let text = key(f.text.as_ref(), "text", text_choices, &mut errs);
        let rounding = key(
            f.rounding.as_ref(),
            "rounding",
            &[("floor", Rounding::Floor), ("half_even", Rounding::HalfEven)],
            &mut errs,
        );
        let mut zone = None;
        if iso {
            for (k, name) in [(&f.unit, "unit"), (&f.numbers, "numbers")] {
                if let Some(k) = k {
                    errs.push((
                        k.span(),
                        name,
                        format!("`{name}` is for epoch formats; an iso8601 value says its own unit (remove it, or use format = \"epoch\")"),
                    ));
                }
            }
            if let Some(z) = &f.zone {
                match TimeZone::get(z.get_ref()) {
                    Ok(tz) => zone = Some(tz),
                    Err(_) => errs.push((
                        z.span(),
                        "zone",
                        format!("unknown time zone `{}`: {}", z.get_ref(), zone_hint(z.get_ref())),
                    )),
                }
            }
        } else {
            if let Some(z) = &f.zone {
                errs.push((
                    z.span(),
                    "zone",
                    "`zone` is for iso8601 times without offset; an epoch time is UTC by definition".into(),
                ));
            }
            if let (Some(a), Some((u, span))) = (alias, &unit)
                && a != *u
            {
                errs.push((
                    span.clone(),
                    "unit",
                    format!(
                        "unit = \"{}\" contradicts format = \"{format}\" (unit {}): write format = \"epoch\", unit = \"{}\"",
                        u.name(),
                        a.name(),
                        u.name()
                    ),
                ));
            }
        }
        if !errs.is_empty() {
            return Err(errs);
        }
        let format = if iso {
            Format::Iso8601 { zone }
        } else {
            Format::Epoch(alias.or(unit.map(|u| u.0)).unwrap_or(Unit::Auto))
        };
        let default_rounding = if iso { Rounding::Floor } else { Rounding::HalfEven };
        Ok(TimeSpec {
            format,
            numbers: numbers.map_or(Numbers::Fractions, |n| n.0),
            text: text.map_or(Text::Strict, |t| t.0),
            rounding: rounding.map_or(default_rounding, |r| r.0),
        })
    }

    /// Reads one value into UTC epoch milliseconds in [2000-01-01, 2100-01-01).
    ///
    /// # Errors
    /// The value is of another type or shape than declared, or out of range; the failure's
    /// detail says which, and how the value was read.
    pub fn read(&self, v: TimeValue<'_>) -> Result<i64, TimeFailure> {
        match (&self.format, v) {
            (Format::Epoch(unit), TimeValue::Str(t) | TimeValue::Num(t)) => {
                let json = matches!(v, TimeValue::Num(_));
                match epoch::parse(t, json, *unit, self.numbers, self.text, self.rounding) {
                    Ok((ms, _)) if in_range(ms) => Ok(ms),
                    Ok((ms, used)) => Err(self.epoch_out_of_range(v, used, &when(ms))),
                    Err(Why::TooLarge { negative, unit: used }) => {
                        let side = if negative { "before" } else { "after" };
                        Err(self.epoch_out_of_range(
                            v,
                            used,
                            &format!("more than 10^18 ms {side} 1970"),
                        ))
                    }
                    Err(Why::Shape(what)) => {
                        let looks_iso = t
                            .trim_ascii()
                            .as_bytes()
                            .get(4..8)
                            .is_some_and(|b| b[0] == b'-' && b[3] == b'-');
                        let hint = if looks_iso {
                            ": is it an ISO 8601 time? (format = \"iso8601\")"
                        } else {
                            ""
                        };
                        Err(fail(v, &short(*unit), &what, hint))
                    }
                }
            }
            (Format::Epoch(unit), TimeValue::Other(_)) => {
                Err(fail(v, &short(*unit), "is not a number or a string", ""))
            }
            (Format::Iso8601 { zone }, TimeValue::Str(s)) => {
                match iso::parse(s, self.text == Text::Lenient, zone.as_ref(), self.rounding) {
                    Ok(ms) if in_range(ms) => Ok(ms),
                    Ok(ms) => Err(fail(v, "iso8601", &out_of_range(&when(ms)), "")),
                    Err(Why::Shape(what)) => Err(fail(v, "iso8601", &what, &epoch_hint(s, false))),
                    Err(Why::TooLarge { .. }) => Err(fail(v, "iso8601", "is out of range", "")),
                }
            }
            (Format::Iso8601 { .. }, TimeValue::Num(n)) => {
                Err(fail(v, "iso8601", "is not a string", &epoch_hint(n, true)))
            }
            (Format::Iso8601 { .. }, TimeValue::Other(_)) => {
                Err(fail(v, "iso8601", "is not a string", ""))
            }
        }
    }

    /// The declaration in words, for explanations and messages:
    /// `epoch us (integers, digit strings, floor)`, `iso8601 (strict, floor, local times in
    /// Europe/Berlin)`.
    #[must_use]
    pub fn describe(&self) -> String {
        let rounding = match self.rounding {
            Rounding::Floor => "floor",
            Rounding::HalfEven => "half_even",
        };
        match &self.format {
            Format::Epoch(unit) => {
                let numbers = match self.numbers {
                    Numbers::Integers => "integers",
                    Numbers::Fractions => "fractions",
                };
                let text = match self.text {
                    Text::Strict => "digit strings",
                    Text::Lenient => "lenient strings",
                };
                format!("epoch {} ({numbers}, {text}, {rounding})", unit.name())
            }
            Format::Iso8601 { zone } => {
                let text = match self.text {
                    Text::Strict => "strict",
                    Text::Lenient => "lenient",
                };
                let zone = zone.as_ref().map_or(String::new(), |z| {
                    format!(", local times in {}", z.iana_name().unwrap_or("the declared zone"))
                });
                format!("iso8601 ({text}, {rounding}{zone})")
            }
        }
    }

    fn epoch_out_of_range(&self, v: TimeValue<'_>, used: Unit, when: &str) -> TimeFailure {
        let (TimeValue::Str(t) | TimeValue::Num(t)) = v else {
            return fail(v, &short(used), &out_of_range(when), "");
        };
        let json = matches!(v, TimeValue::Num(_));
        let other = [Unit::S, Unit::Ms, Unit::Us, Unit::Ns].into_iter().find(|&u| {
            u != used
                && epoch::parse(t, json, u, self.numbers, self.text, self.rounding)
                    .is_ok_and(|(ms, _)| in_range(ms))
        });
        let hint = other.map_or(String::new(), |u| format!(": is it {}?", u.long()));
        fail(v, &short(used), &out_of_range(when), &hint)
    }
}

/// `epoch ms`, or `epoch` for `auto` before the unit is known.
fn short(unit: Unit) -> String {
    match unit {
        Unit::Auto => "epoch".into(),
        u => format!("epoch {}", u.name()),
    }
}

fn fail(v: TimeValue<'_>, how: &str, what: &str, hint: &str) -> TimeFailure {
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

fn out_of_range(when: &str) -> String {
    format!("is {when} (outside [2000-01-01, 2100-01-01))")
}

/// An epoch-millisecond instant in words: the UTC date-time for years 0 to 9999, else the year.
fn when(ms: i64) -> String {
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
fn epoch_hint(t: &str, json: bool) -> String {
    match epoch::parse(t, json, Unit::Auto, Numbers::Fractions, Text::Strict, Rounding::HalfEven) {
        Ok((ms, used)) if in_range(ms) => {
            format!(": is it an epoch time in {}? (format = \"epoch\")", used.long())
        }
        _ => String::new(),
    }
}
