//! Sessionize: accepted events → per-customer sessions in event time.
//!
//! A session is a maximal run of one customer's events whose gaps are all ≤ `gap`. Events may
//! arrive out of order: the watermark (highest event time seen − allowed lateness) says how far
//! back they may reach. An event older than the watermark is late and refused. A session closes
//! once `end + gap < watermark`, because no event that could still arrive can touch it; an event
//! that falls within `gap` of two open sessions bridges and merges them.
//!
//! Pure and clock-free: time is the events' own.

pub mod attrs;
pub mod backing;
pub mod dedup;
mod sessionizer;

pub use backing::Backing;
pub use sessionizer::{SessionChanges, Sessionizer};

/// A customer id as the session cache keys it: inline up to 24 bytes (customer ids usually
/// are shorter), so comparing or copying one reads no other allocation. (Shared `Arc<str>` keys
/// cost a cache miss at every lookup that found its customer and every clone in the pause.)
pub type Key = compact_str::CompactString;

use crate::event::AttrValue;
use crate::extract::catalog::Aggregate;
use attrs::AttrState;
use serde::{Deserialize, Serialize};
use smallvec::SmallVec;

/// Events per kind number: inline up to four kinds (the classic set allocates nothing per
/// session), on the heap beyond.
pub type KindCounts = SmallVec<[u64; 4]>;

/// Counters of one session.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    /// All events.
    pub events: u64,
    /// Events per kind, indexed by the state's kind number (see [`crate::state::Meta::kinds`]);
    /// kinds past the end counted none.
    #[serde(with = "kind_counts")]
    pub kinds: KindCounts,
}

/// `KindCounts` in state as a plain sequence: the same bytes as a `Vec<u64>`.
mod kind_counts {
    use super::KindCounts;
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(v: &KindCounts, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(v.iter())
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<KindCounts, D::Error> {
        Vec::<u64>::deserialize(d).map(KindCounts::from_vec)
    }
}

impl Counts {
    fn add(&mut self, kind: Option<u32>) {
        self.events += 1;
        if let Some(k) = kind {
            let k = k as usize;
            if self.kinds.len() <= k {
                self.kinds.resize(k + 1, 0);
            }
            self.kinds[k] += 1;
        }
    }

    fn merge(&mut self, o: &Counts) {
        self.events += o.events;
        if self.kinds.len() < o.kinds.len() {
            self.kinds.resize(o.kinds.len(), 0);
        }
        for (a, b) in self.kinds.iter_mut().zip(&o.kinds) {
            *a += b;
        }
    }

    /// Events of kind number `k`.
    #[must_use]
    pub fn of(&self, k: u32) -> u64 {
        self.kinds.get(k as usize).copied().unwrap_or(0)
    }
}

/// One event's attribute value, with the state's number of its attribute and its fold.
#[derive(Debug, Clone, PartialEq)]
pub struct EventAttr<'a> {
    /// The state's attribute number (see [`crate::state::Meta::attributes`]).
    pub id: u32,
    /// How it folds.
    pub aggregate: Aggregate,
    /// The value.
    pub value: AttrValue<'a>,
}

/// One session, open or closed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    /// Time of the first event (UTC epoch ms).
    pub start: i64,
    /// Time of the last event.
    pub end: i64,
    /// What happened in it.
    pub counts: Counts,
    /// Lowest and highest index of the schema sets that extracted its events (indices grow
    /// with each reload, so these are the first and the last set).
    pub schema_sets: (u32, u32),
    /// Attribute states, indexed by the state's attribute number; past the end, unset.
    pub attrs: Vec<AttrState>,
}

impl Session {
    pub(crate) fn new(time: i64, set: u32) -> Session {
        Session {
            start: time,
            end: time,
            counts: Counts::default(),
            schema_sets: (set, set),
            attrs: Vec::new(),
        }
    }

    pub(crate) fn observe(
        &mut self,
        time: i64,
        kind: Option<u32>,
        attrs: &[EventAttr<'_>],
        set: u32,
    ) {
        self.start = self.start.min(time);
        self.end = self.end.max(time);
        self.counts.add(kind);
        self.schema_sets = (self.schema_sets.0.min(set), self.schema_sets.1.max(set));
        for a in attrs {
            let i = a.id as usize;
            if self.attrs.len() <= i {
                self.attrs.resize(i + 1, AttrState::Unset);
            }
            self.attrs[i].observe(a.aggregate, time, &a.value);
        }
    }

    /// Moves kind and attribute numbers to another state's numbering (`map[old] = new`).
    pub fn renumber(&mut self, kinds: &[u32], attrs: &[u32]) {
        let mut counts = KindCounts::new();
        for (i, &n) in self.counts.kinds.iter().enumerate() {
            let k = kinds.get(i).copied().unwrap_or(i as u32) as usize;
            if counts.len() <= k {
                counts.resize(k + 1, 0);
            }
            counts[k] += n;
        }
        self.counts.kinds = counts;
        let mut states = Vec::new();
        for (i, st) in std::mem::take(&mut self.attrs).into_iter().enumerate() {
            let a = attrs.get(i).copied().unwrap_or(i as u32) as usize;
            if states.len() <= a {
                states.resize(a + 1, AttrState::Unset);
            }
            states[a] = st;
        }
        self.attrs = states;
    }

    /// Merges a later session into this one; `folds` gives each attribute number's fold.
    pub(crate) fn merge(&mut self, o: &Session, folds: &[Aggregate]) {
        self.start = self.start.min(o.start);
        self.end = self.end.max(o.end);
        self.counts.merge(&o.counts);
        self.schema_sets =
            (self.schema_sets.0.min(o.schema_sets.0), self.schema_sets.1.max(o.schema_sets.1));
        if self.attrs.len() < o.attrs.len() {
            self.attrs.resize(o.attrs.len(), AttrState::Unset);
        }
        for (i, (a, b)) in self.attrs.iter_mut().zip(&o.attrs).enumerate() {
            if let Some(&agg) = folds.get(i) {
                a.merge(agg, b);
            }
        }
    }
}

/// A session that will not change any more.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClosedSession {
    /// Whose it is: the cache's key (inline up to 24 bytes: copied, not shared, in the
    /// checkpoint's pause, with no read of another allocation).
    pub customer_id: Key,
    /// The session.
    pub session: Session,
}

/// The outcome of [`Sessionizer::observe`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Observed {
    /// The event joined, opened or merged sessions.
    Accepted,
    /// The event is older than the watermark.
    Late {
        /// The watermark it fell behind.
        watermark: i64,
    },
}

#[cfg(test)]
mod tests;
