//! Domain types that cross stage boundaries.

use serde::{Deserialize, Serialize};
use std::borrow::Cow;

/// What an accepted event counts as in a session row. The precedence when several
/// classification rules match is the declaration order: support call first, page view last.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Kind {
    /// A support call (phone, IVR, call-center bridge).
    SupportCall,
    /// A click on the subscribe button.
    SubscribeClick,
    /// A hover over the subscribe button.
    SubscribeHover,
    /// A page or screen view.
    PageView,
    /// Anything else: counts only in `event_count`.
    Other,
}

impl Kind {
    /// Kinds that a schema can assign, in precedence order.
    pub const CLASSIFIED: [Kind; 4] =
        [Kind::SupportCall, Kind::SubscribeClick, Kind::SubscribeHover, Kind::PageView];

    /// The name used in schema files.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Kind::SupportCall => "support_call",
            Kind::SubscribeClick => "subscribe_click",
            Kind::SubscribeHover => "subscribe_hover",
            Kind::PageView => "page_view",
            Kind::Other => "other",
        }
    }

    /// Parses a schema-file kind name.
    #[must_use]
    pub fn from_name(name: &str) -> Option<Kind> {
        Kind::CLASSIFIED.into_iter().find(|k| k.name() == name)
    }
}

/// One event after extraction: everything the sessionizer needs, borrowed from the input line
/// where possible.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClickEvent<'a> {
    /// Producer's message id, used for dedup (ids are compared as strings).
    pub message_id: Cow<'a, str>,
    /// Customer id as a string (JSON integers are written in decimal).
    pub customer_id: Cow<'a, str>,
    /// Event time, UTC epoch milliseconds.
    pub event_time: i64,
    /// Classification.
    pub kind: Kind,
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
