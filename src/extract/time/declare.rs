//! Compiling a time declaration (one `event_time` candidate of a schema) into a [`TimeSpec`],
//! with every problem located at its key and a hint.

use super::{Format, Numbers, Rounding, SpecError, Text, TimeSpec, Unit};
use crate::extract::schema::TimeField;
use jiff::tz::TimeZone;
use std::fmt::Write as _;
use std::ops::Range;
use toml::Spanned;

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
}
