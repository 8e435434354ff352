//! Framing checks on one raw line, before any JSON parsing: `&[u8]` → `&str`.
//!
//! The checks run in the order the data contract fixes, and the first failure names the reason:
//! empty line, too large, invalid UTF-8, too deep. Depth is measured by a byte scan so that a
//! deeply nested line is classified the same whatever the JSON parser's own recursion limit.

use thiserror::Error;

/// Longest accepted line, in bytes, not counting the `\n`.
pub const MAX_LINE_BYTES: usize = 1_048_576;
/// Deepest accepted nesting of `{` and `[` (a top-level object is depth 1).
pub const MAX_DEPTH: usize = 64;

/// Why a line failed framing.
#[derive(Debug, Error, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum DecodeError {
    /// Only spaces, tabs and carriage returns, or nothing at all.
    #[error("the line is empty or blank")]
    EmptyLine,
    /// Longer than [`MAX_LINE_BYTES`].
    #[error("the line is {0} bytes long, over the limit of {MAX_LINE_BYTES}")]
    TooLarge(usize),
    /// Not valid UTF-8 (overlong forms, surrogates and cut sequences included).
    #[error("invalid UTF-8 at byte {0}")]
    InvalidUtf8(usize),
    /// Nested deeper than [`MAX_DEPTH`].
    #[error("nesting depth exceeds {MAX_DEPTH}")]
    TooDeep,
}

impl DecodeError {
    /// The dead-letter reason.
    #[must_use]
    pub fn reason(&self) -> &'static str {
        match self {
            DecodeError::EmptyLine => "empty_line",
            DecodeError::TooLarge(_) => "too_large",
            DecodeError::InvalidUtf8(_) => "invalid_utf8",
            DecodeError::TooDeep => "too_deep",
        }
    }
}

/// Runs the framing checks and returns the line as text.
///
/// # Errors
/// The first failing check, in contract order.
pub fn decode(line: &[u8]) -> Result<&str, DecodeError> {
    if line.iter().all(|b| matches!(b, b' ' | b'\t' | b'\r')) {
        return Err(DecodeError::EmptyLine);
    }
    if line.len() > MAX_LINE_BYTES {
        return Err(DecodeError::TooLarge(line.len()));
    }
    let text = std::str::from_utf8(line).map_err(|e| DecodeError::InvalidUtf8(e.valid_up_to()))?;
    if max_depth_exceeds(line, MAX_DEPTH) {
        return Err(DecodeError::TooDeep);
    }
    Ok(text)
}

/// Whether the nesting of `{`/`[` outside JSON strings goes above `limit`.
#[must_use]
pub fn max_depth_exceeds(line: &[u8], limit: usize) -> bool {
    // Cheap pre-count: fewer brackets than the limit cannot nest deeper than it.
    // Counted in blocks of 255 bytes into a u8: a loop the compiler vectorizes.
    let openers: usize = line
        .chunks(255)
        .map(|c| {
            usize::from(c.iter().map(|&b| u8::from(b == b'{') + u8::from(b == b'[')).sum::<u8>())
        })
        .sum();
    if openers <= limit {
        return false;
    }
    let (mut depth, mut in_str, mut esc) = (0i64, false, false);
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    for &b in line {
        if in_str {
            if esc {
                esc = false;
            } else if b == b'\\' {
                esc = true;
            } else if b == b'"' {
                in_str = false;
            }
        } else {
            match b {
                b'"' => in_str = true,
                b'{' | b'[' => {
                    depth += 1;
                    if depth > limit {
                        return true;
                    }
                }
                // Unbalanced closers in broken JSON drive it below zero, as in the contract's
                // reference scan; later openers then start from there.
                b'}' | b']' => depth -= 1,
                _ => {}
            }
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nested(n: usize) -> String {
        format!("{}{}", "[".repeat(n), "]".repeat(n))
    }

    #[test]
    fn blank_lines() {
        for l in [&b""[..], b" ", b"\t", b"\r", b" \t\r "] {
            assert_eq!(decode(l), Err(DecodeError::EmptyLine));
        }
        assert_eq!(decode(b"\x0b").map(|_| ()), Ok(())); // vertical tab is not blank: JSON will refuse it
    }

    #[test]
    fn size_limit_is_inclusive() {
        let ok = vec![b' '; MAX_LINE_BYTES - 1].into_iter().chain([b'1']).collect::<Vec<_>>();
        assert!(decode(&ok).is_ok());
        let big = vec![b'1'; MAX_LINE_BYTES + 1];
        assert_eq!(decode(&big), Err(DecodeError::TooLarge(MAX_LINE_BYTES + 1)));
    }

    #[test]
    fn size_is_checked_before_utf8() {
        let mut big = vec![b'a'; MAX_LINE_BYTES + 1];
        big[0] = 0xff;
        assert_eq!(decode(&big).map_err(|e| e.reason()), Err("too_large"));
    }

    #[test]
    fn strict_utf8() {
        for bad in [
            &b"caf\xe9"[..],
            b"\xff\xfe",
            b"\xc3\x28",
            b"\xed\xa0\x80",
            b"ok\xf0\x9f\x8e",
            b"\xc0\xaf",
        ] {
            assert_eq!(decode(bad).map_err(|e| e.reason()), Err("invalid_utf8"));
        }
        assert!(decode("café ✓ 订阅".as_bytes()).is_ok());
    }

    #[test]
    fn depth_boundary() {
        assert!(decode(nested(64).as_bytes()).is_ok());
        assert_eq!(decode(nested(65).as_bytes()), Err(DecodeError::TooDeep));
        // brackets inside strings, including after escaped quotes, do not count
        let s = format!("{{\"a\":\"{}\\\"{}\"}}", "[".repeat(100), "{".repeat(100));
        assert!(decode(s.as_bytes()).is_ok());
        // an escaped backslash closes the escape: the quote after it ends the string
        let s = format!("{{\"a\":\"\\\\\",\"b\":{}}}", nested(70));
        assert_eq!(decode(s.as_bytes()), Err(DecodeError::TooDeep));
    }

    #[test]
    fn unbalanced_closers_lower_the_depth() {
        let s = format!("]]]]{}", "[".repeat(66));
        assert!(decode(s.as_bytes()).is_ok());
    }

    #[test]
    fn depth_of_many_siblings_is_not_depth() {
        let s = format!("[{}]", vec!["[]"; 500].join(","));
        assert!(decode(s.as_bytes()).is_ok());
    }
}
