//! Defensive typed conversions of ids from raw JSON leaves (event times are read by
//! [`super::time`]).
//!
//! Every function here is total: it returns `None` for anything it does not accept and never
//! panics, whatever the input. Numbers are handled as decimal text so that results are exact
//! (no 64-bit overflow on ids).

use std::borrow::Cow;

/// A valid id from a JSON number's text: a non-negative integer (no fraction, no exponent),
/// written in decimal. `-0` is the integer zero.
#[must_use]
pub fn id_from_number(text: &str) -> Option<Cow<'_, str>> {
    let (neg, digits) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None; // fraction or exponent: a float, never an id
    }
    if neg {
        return digits.bytes().all(|b| b == b'0').then_some(Cow::Borrowed("0"));
    }
    Some(Cow::Borrowed(digits))
}

/// A valid id from a JSON string: any non-empty string, used as is.
#[must_use]
pub fn id_from_string(s: &str) -> Option<&str> {
    (!s.is_empty()).then_some(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids() {
        assert_eq!(id_from_number("633123").as_deref(), Some("633123"));
        assert_eq!(id_from_number("0").as_deref(), Some("0"));
        assert_eq!(id_from_number("-0").as_deref(), Some("0"));
        assert_eq!(
            id_from_number("123456789012345678901234567890").as_deref(),
            Some("123456789012345678901234567890")
        );
        assert_eq!(id_from_number("-5"), None);
        assert_eq!(id_from_number("1.5"), None);
        assert_eq!(id_from_number("12.0"), None);
        assert_eq!(id_from_number("1e3"), None);
        assert_eq!(id_from_string(""), None);
        assert_eq!(id_from_string(" "), Some(" "));
    }
}
