//! Domain types that cross stage boundaries.

use serde::{Deserialize, Serialize};
use std::borrow::Cow;

/// What an accepted event counts as: the index of a kind the schema set declares (see
/// [`crate::extract::catalog`]), or [`Kind::OTHER`]. Kinds are data: their names, columns and
/// precedence come from the schema files, not from this type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Kind(pub u16);

impl Kind {
    /// No classification rule matched: the event counts only in `event_count`.
    pub const OTHER: Kind = Kind(u16::MAX);

    /// Whether some rule classified the event.
    #[must_use]
    pub fn is_classified(self) -> bool {
        self != Kind::OTHER
    }
}

/// An attribute value read from an event, coerced to the attribute's declared type.
#[derive(Debug, Clone, PartialEq)]
pub enum AttrValue<'a> {
    /// A string (already cut to the attribute's byte limit).
    Str(Cow<'a, str>),
    /// A 64-bit integer.
    Int(i64),
    /// A finite double.
    Num(f64),
    /// A boolean.
    Bool(bool),
}

/// One event after extraction: everything the sessionizer needs, borrowed from the input line
/// where possible.
#[derive(Debug, Clone, PartialEq)]
pub struct ClickEvent<'a> {
    /// Producer's message id, used for dedup (ids are compared as strings).
    pub message_id: Cow<'a, str>,
    /// Customer id as a string (JSON integers are written in decimal).
    pub customer_id: Cow<'a, str>,
    /// Event time, UTC epoch milliseconds.
    pub event_time: i64,
    /// Classification.
    pub kind: Kind,
    /// The set's attributes in declaration order; `None` where the event has no usable value.
    /// Empty (no allocation) when the set declares none.
    pub attrs: Vec<Option<AttrValue<'a>>>,
    /// How many of `attrs` were cut to their byte limit.
    pub truncated: u32,
}

/// Where a line came from: enough for an operator to find it again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct LinePosition {
    /// Index of the input in the replay's input list.
    pub input: u32,
    /// 1-based line number within that input.
    pub line: u64,
    /// Byte offset of the line's first byte within the (decompressed) input.
    pub offset: u64,
}

/// Position of the next unread line of a replay: the source resumes here after a restart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct SourcePosition {
    /// Index of the input being read.
    pub input: u32,
    /// Lines of that input already consumed.
    pub line: u64,
    /// Bytes of that (decompressed) input already consumed.
    pub offset: u64,
}

/// Monotonic checkpoint number; checkpoint `n` covers everything before its barrier.
pub type CheckpointId = u64;
