//! Event times: one schema candidate's declaration (format, unit, strictness, rounding, zone)
//! compiled into a [`TimeSpec`] that reads raw JSON leaves into UTC epoch milliseconds.
//!
//! Pure, synchronous and clock-free. Every function is total: whatever the input, it returns
//! a value or a [`TimeFailure`] and never panics. Numbers are read as exact decimal text (no
//! floats); nothing is allocated unless the value fails, to build the failure's detail.

mod declare;
mod epoch;
mod iso;
mod message;
#[cfg(test)]
mod old;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_iso;
#[cfg(test)]
mod tests_spec;

use jiff::tz::TimeZone;
use message::{epoch_hint, fail, out_of_range, short, when};
use std::borrow::Cow;
use std::ops::Range;

/// 2000-01-01T00:00:00Z: earliest accepted event time.
pub const TS_MIN: i64 = 946_684_800_000;
/// 2100-01-01T00:00:00Z: event times must be strictly before this.
pub const TS_MAX: i64 = 4_102_444_800_000;

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

impl TimeSpec {
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
