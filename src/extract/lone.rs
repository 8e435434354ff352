//! Strings with lone UTF-16 surrogate escapes (`"\ud800"`). They are valid JSON and the
//! reference holds them as they are, but a Rust string cannot. A value a rule reads is therefore
//! held escaped: each lone surrogate becomes [`MARK`] and a private-use character that names it,
//! and a [`MARK`] already in an id is doubled, so that two ids are equal exactly when the
//! reference finds them equal (dedup and grouping by customer depend on that).

use std::borrow::Cow;

/// A noncharacter: real data does not hold it, so doubling it costs nothing in practice.
pub const MARK: char = '\u{FDD0}';

/// Lone surrogate `u` is written as [`MARK`] and `PRIVATE + (u - 0xD800)` (U+E000..=U+E7FF).
const PRIVATE: u32 = 0xE000;

/// Decodes the JSON string literal `text` (quotes included), escaping as the module says.
/// `None` if `text` is not a JSON string literal.
#[must_use]
pub fn decode(text: &str) -> Option<String> {
    let inner = text.strip_prefix('"')?.strip_suffix('"')?;
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    // A high surrogate waiting for its low half.
    let mut high: Option<u16> = None;
    while let Some(c) = chars.next() {
        if c != '\\' {
            flush(&mut out, &mut high);
            push(&mut out, c);
            continue;
        }
        let unit = match chars.next()? {
            'u' => {
                let hex: String = chars.by_ref().take(4).collect();
                if hex.len() != 4 {
                    return None;
                }
                u16::from_str_radix(&hex, 16).ok()?
            }
            e => {
                flush(&mut out, &mut high);
                out.push(match e {
                    '"' => '"',
                    '\\' => '\\',
                    '/' => '/',
                    'b' => '\u{8}',
                    'f' => '\u{c}',
                    'n' => '\n',
                    'r' => '\r',
                    't' => '\t',
                    _ => return None,
                });
                continue;
            }
        };
        match unit {
            0xD800..=0xDBFF => {
                flush(&mut out, &mut high);
                high = Some(unit);
            }
            0xDC00..=0xDFFF => match high.take() {
                Some(h) => {
                    let c = 0x10000 + ((u32::from(h) - 0xD800) << 10) + (u32::from(unit) - 0xDC00);
                    out.push(char::from_u32(c)?);
                }
                None => lone(&mut out, unit),
            },
            _ => {
                flush(&mut out, &mut high);
                push(&mut out, char::from_u32(u32::from(unit))?);
            }
        }
    }
    flush(&mut out, &mut high);
    Some(out)
}

/// An id that decoded as valid Unicode, escaped the same way (only [`MARK`] changes).
#[must_use]
pub fn escape_valid(s: Cow<'_, str>) -> Cow<'_, str> {
    if !s.contains(MARK) {
        return s;
    }
    let mut out = String::with_capacity(s.len() + 3);
    for c in s.chars() {
        push(&mut out, c);
    }
    Cow::Owned(out)
}

/// Writes `s`, held as this module says, as a JSON string literal with the reference's
/// meaning: each lone half as its `\uXXXX` escape, a doubled [`MARK`] as one, everything else
/// escaped as `serde_json` escapes it. (A Rust string cannot hold the half itself, but JSON
/// text can: parsed, the literal is the string the reference read.)
pub fn write_json(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    let mut run = String::new();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c != MARK {
            run.push(c);
            continue;
        }
        match chars.next() {
            // A doubled MARK stands for one; a MARK at the end was not written by `decode`.
            Some(MARK) | None => run.push(MARK),
            Some(p) if (PRIVATE..PRIVATE + 0x800).contains(&u32::from(p)) => {
                escape_into(out, &run);
                run.clear();
                let unit = 0xD800 + u32::from(p) - PRIVATE;
                out.extend_from_slice(format!("\\u{unit:04x}").as_bytes());
            }
            // Not written by `decode`: kept as it is.
            Some(other) => {
                run.push(MARK);
                run.push(other);
            }
        }
    }
    escape_into(out, &run);
    out.push(b'"');
}

/// `run` escaped as `serde_json` writes a string, without the quotes.
fn escape_into(out: &mut Vec<u8>, run: &str) {
    let quoted = serde_json::to_string(run).unwrap_or_default();
    let inner = quoted.strip_prefix('"').and_then(|q| q.strip_suffix('"')).unwrap_or_default();
    out.extend_from_slice(inner.as_bytes());
}

fn push(out: &mut String, c: char) {
    if c == MARK {
        out.push(MARK);
    }
    out.push(c);
}

fn flush(out: &mut String, high: &mut Option<u16>) {
    if let Some(h) = high.take() {
        lone(out, h);
    }
}

fn lone(out: &mut String, unit: u16) {
    out.push(MARK);
    // 0xE000 + (0..0x800) is private use: always a char.
    out.push(
        char::from_u32(PRIVATE + u32::from(unit) - 0xD800).unwrap_or(char::REPLACEMENT_CHARACTER),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn held_strings_are_written_back_as_the_json_the_reference_read() {
        let w = |held: &str| {
            let mut out = Vec::new();
            write_json(&mut out, held);
            String::from_utf8(out).unwrap()
        };
        assert_eq!(w(&d(r#""a\ud800b""#)), r#""a\ud800b""#);
        assert_eq!(w(&d(r#""\udc00\ud83d\ude00\ud800""#)), "\"\\udc00\u{1F600}\\ud800\"");
        assert_eq!(w(&d(r#""q\"\n\ud801""#)), r#""q\"\n\ud801""#);
        // A MARK that was in the id comes back single; text without one as serde writes it.
        assert_eq!(w(&escape_valid(Cow::Borrowed("x\u{fdd0}y"))), "\"x\u{fdd0}y\"");
        assert_eq!(w("plain \"id\""), serde_json::to_string("plain \"id\"").unwrap());
    }

    fn d(s: &str) -> String {
        decode(s).unwrap()
    }

    #[test]
    fn valid_strings_decode_as_serde_does() {
        for s in [
            r#""""#,
            r#""abc""#,
            r#""a\"b\\c\/d\b\f\n\r\t""#,
            r#""\u00e9\u4e2d\uD83D\uDE00""#,
            "\"caf\u{e9} \u{1F600}\"",
        ] {
            assert_eq!(d(s), serde_json::from_str::<String>(s).unwrap(), "{s}");
        }
    }

    #[test]
    fn lone_surrogates_are_held_distinct() {
        let all = [
            d(r#""\ud800""#),
            d(r#""\ud801""#),
            d(r#""\udc00""#),
            d(r#""\ud800\ud800""#),
            d(r#""\udc00\ud800""#),
            d(r#""\ud800A""#),
            escape_valid(Cow::Borrowed("\u{fffd}")).into_owned(),
            escape_valid(Cow::Borrowed("\\ud800")).into_owned(),
            // The escaped form written literally must not meet the escape itself.
            escape_valid(Cow::Borrowed("\u{fdd0}\u{e000}")).into_owned(),
            escape_valid(Cow::Borrowed("\u{e000}")).into_owned(),
        ];
        for (i, a) in all.iter().enumerate() {
            for b in &all[i + 1..] {
                assert_ne!(a, b);
            }
        }
        assert_eq!(d(r#""\ud800""#), d(r#""\uD800""#));
        // A high half followed by another high half: the first is lone, the pair after is whole.
        assert_eq!(d(r#""\ud800\ud83d\ude00""#), format!("{MARK}\u{e000}\u{1F600}"));
        assert_eq!(d("\"\u{fdd0}\""), escape_valid(Cow::Borrowed("\u{fdd0}")));
    }

    #[test]
    fn not_a_string_literal_is_none() {
        assert_eq!(decode("abc"), None);
        assert_eq!(decode(r#""\u12""#), None);
        assert_eq!(decode(r#""\x""#), None);
    }
}
