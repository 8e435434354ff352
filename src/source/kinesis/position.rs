//! Where a shard resumes: after a sequence number (and a user record of a KPL aggregate), or
//! at the shard's end.
//!
//! Sequence numbers are decimal strings of up to 129 digits (real ones have 56): they do not
//! fit in a `u128`, so they are compared as numbers by length, then digits.

use crate::event::SourcePosition;
use crate::source::{END, Position};
use std::cmp::Ordering;
use std::fmt;

/// A Kinesis sequence number: `0|[1-9][0-9]{0,128}`.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct SeqNo(Box<str>);

impl SeqNo {
    /// Parses a sequence number; `None` for anything else (leading zeros included: the service
    /// never writes them, and allowing them would give one number two spellings).
    #[must_use]
    pub fn parse(text: &str) -> Option<SeqNo> {
        let b = text.as_bytes();
        let ok = match b {
            [b'0'] => true,
            [] | [b'0', ..] => false,
            _ => b.len() <= 129 && b.iter().all(u8::is_ascii_digit),
        };
        ok.then(|| SeqNo(text.into()))
    }

    /// The digits.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Ord for SeqNo {
    fn cmp(&self, other: &Self) -> Ordering {
        // Without leading zeros, a longer number is a larger one.
        self.0.len().cmp(&other.0.len()).then_with(|| self.0.cmp(&other.0))
    }
}

impl PartialOrd for SeqNo {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Debug for SeqNo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Display for SeqNo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Where a shard resumes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShardPosition {
    /// After the record `seq`: all of it (`sub: None`), or its user records up to `sub` (a KPL
    /// aggregate cut in the middle).
    After {
        /// The Kinesis record.
        seq: SeqNo,
        /// The last user record of an aggregate that is done, when not all of them are.
        sub: Option<u32>,
    },
    /// The shard is closed and every record of it is done: its children may start.
    End,
}

impl Ord for ShardPosition {
    fn cmp(&self, other: &Self) -> Ordering {
        use ShardPosition::{After, End};
        match (self, other) {
            (End, End) => Ordering::Equal,
            (End, After { .. }) => Ordering::Greater,
            (After { .. }, End) => Ordering::Less,
            (After { seq: a, sub: x }, After { seq: b, sub: y }) => {
                // A whole record (`None`) is after every one of its user records.
                let rank = |s: &Option<u32>| s.map_or(u64::MAX, u64::from);
                a.cmp(b).then_with(|| rank(x).cmp(&rank(y)))
            }
        }
    }
}

impl PartialOrd for ShardPosition {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Position for ShardPosition {
    fn encode(&self) -> String {
        match self {
            ShardPosition::End => END.to_owned(),
            ShardPosition::After { seq, sub: None } => seq.to_string(),
            ShardPosition::After { seq, sub: Some(s) } => format!("{seq}/{s}"),
        }
    }

    fn decode(text: &str) -> Option<Self> {
        if text == END {
            return Some(ShardPosition::End);
        }
        let (seq, sub) = match text.split_once('/') {
            Some((q, s)) => (q, Some(s.parse().ok()?)),
            None => (text, None),
        };
        Some(ShardPosition::After { seq: SeqNo::parse(seq)?, sub })
    }

    fn legacy(&self) -> SourcePosition {
        // The state's own record predates Kinesis: nothing reads this back.
        SourcePosition::default()
    }

    fn from_legacy(_: SourcePosition) -> Option<Self> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seq(s: &str) -> SeqNo {
        SeqNo::parse(s).unwrap()
    }

    #[test]
    fn sequence_numbers_order_as_numbers_past_u128() {
        let a = "49590338271490256608559692538361571095921575989136588898";
        let b = "49590338271490256608559692540925702759324208523137515618";
        assert_eq!(a.len(), 56);
        assert!(a.parse::<u128>().is_err(), "real sequence numbers do not fit a u128");
        assert!(seq(a) < seq(b));
        assert!(seq("9") < seq("10"));
        assert!(seq("0") < seq("1"));
        assert_eq!(seq(a).cmp(&seq(a)), Ordering::Equal);
        let longest = format!("1{}", "0".repeat(128));
        assert!(SeqNo::parse(&longest).is_some());
        assert!(SeqNo::parse(&format!("{longest}0")).is_none());
        for bad in ["", "01", "-1", "1a", " 1", "1.0"] {
            assert!(SeqNo::parse(bad).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn positions_order_user_records_before_their_whole_record_and_end_last() {
        let p = |s: &str| ShardPosition::decode(s).unwrap();
        let mut v = [p("END"), p("12"), p("11/2"), p("11"), p("11/0"), p("9")];
        v.sort();
        let text: Vec<String> = v.iter().map(Position::encode).collect();
        assert_eq!(text, ["9", "11/0", "11/2", "11", "12", "END"]);
        assert!(ShardPosition::decode("11/x").is_none());
        assert!(ShardPosition::decode("end").is_none());
        for t in ["END", "7", "49590338271490256608559692538361571095921575989136588898/3"] {
            assert_eq!(p(t).encode(), t);
        }
    }
}
