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
pub mod dedup;

use crate::event::AttrValue;
use crate::extract::catalog::Aggregate;
use attrs::AttrState;
use hashbrown::HashMap;
use rustc_hash::FxBuildHasher;
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
    fn new(time: i64, set: u32) -> Session {
        Session {
            start: time,
            end: time,
            counts: Counts::default(),
            schema_sets: (set, set),
            attrs: Vec::new(),
        }
    }

    fn observe(&mut self, time: i64, kind: Option<u32>, attrs: &[EventAttr<'_>], set: u32) {
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
    fn merge(&mut self, o: &Session, folds: &[Aggregate]) {
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
    /// Whose it is.
    pub customer_id: Box<str>,
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

#[derive(Debug, Default)]
struct Customer {
    /// Sorted by start; consecutive sessions are more than `gap` apart.
    sessions: Vec<Session>,
    /// Changed since the last checkpoint.
    dirty: bool,
}

/// Open sessions of every customer, and the watermark.
#[derive(Debug)]
pub struct Sessionizer {
    gap: i64,
    lateness: i64,
    max_time: Option<i64>,
    customers: HashMap<String, Customer, FxBuildHasher>,
    /// Customers whose last open session closed since the last checkpoint.
    gone: Vec<Box<str>>,
    /// Index of the schema set extracting the events observed now.
    schema_set: u32,
    /// The fold of each attribute number, for merging sessions.
    folds: Vec<Aggregate>,
}

/// What changed since the last checkpoint, for write-back to the state store.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct SessionChanges {
    /// Customers whose open sessions changed, with their sessions now.
    pub upserts: Vec<(Box<str>, Vec<Session>)>,
    /// Customers with no open session any more.
    pub deletes: Vec<Box<str>>,
}

impl Sessionizer {
    /// A sessionizer with inactivity `gap` and `lateness`, both in milliseconds.
    #[must_use]
    pub fn new(gap: i64, lateness: i64) -> Self {
        Sessionizer {
            gap,
            lateness,
            max_time: None,
            customers: HashMap::default(),
            gone: Vec::new(),
            schema_set: 0,
            folds: Vec::new(),
        }
    }

    /// Marks the events observed from now on as extracted by schema set `index`.
    pub fn set_schema_set(&mut self, index: u32) {
        self.schema_set = index;
    }

    /// Sets the fold of each attribute number (they only ever grow with reloads).
    pub fn set_folds(&mut self, folds: Vec<Aggregate>) {
        self.folds = folds;
    }

    /// Restores the state a checkpoint saved.
    pub fn restore(
        &mut self,
        max_time: Option<i64>,
        open: impl IntoIterator<Item = (Box<str>, Vec<Session>)>,
    ) {
        self.max_time = max_time;
        for (c, sessions) in open {
            self.customers.insert(c.into(), Customer { sessions, dirty: false });
        }
    }

    /// Highest event time seen − allowed lateness; `None` before the first event.
    #[must_use]
    pub fn watermark(&self) -> Option<i64> {
        self.max_time.map(|m| m.saturating_sub(self.lateness))
    }

    /// Highest event time accepted so far.
    #[must_use]
    pub fn max_time(&self) -> Option<i64> {
        self.max_time
    }

    /// Whether an event at `time` would be refused as late.
    #[must_use]
    pub fn is_late(&self, time: i64) -> Option<i64> {
        self.watermark().filter(|&w| time < w)
    }

    /// Customers with an open session.
    pub fn customers(&self) -> impl Iterator<Item = &str> {
        self.customers.keys().map(String::as_str)
    }

    /// Number of open sessions.
    #[must_use]
    pub fn open_sessions(&self) -> usize {
        self.customers.values().map(|c| c.sessions.len()).sum()
    }

    /// Adds one event of kind number `kind` (`None`: unclassified) with its attribute values.
    pub fn observe(
        &mut self,
        customer: &str,
        time: i64,
        kind: Option<u32>,
        attrs: &[EventAttr<'_>],
    ) -> Observed {
        if let Some(watermark) = self.is_late(time) {
            return Observed::Late { watermark };
        }
        self.max_time = Some(self.max_time.map_or(time, |m| m.max(time)));
        let gap = self.gap;
        let c = self.customers.entry_ref(customer).or_default();
        c.dirty = true;
        let s = &mut c.sessions;
        // Sessions this event touches form a contiguous run [lo, hi).
        let lo = s.partition_point(|x| x.end.saturating_add(gap) < time);
        let hi = s.partition_point(|x| x.start.saturating_sub(gap) <= time);
        let set = self.schema_set;
        if lo >= hi {
            let mut new = Session::new(time, set);
            new.observe(time, kind, attrs, set);
            s.insert(lo, new);
        } else {
            // In place (no copy per event): the earlier sessions first, the event last, so ties
            // in `first`/`last` go by arrival.
            if hi - lo > 1 {
                let (head, rest) = s[lo..hi].split_at_mut(1);
                for x in rest.iter() {
                    head[0].merge(x, &self.folds);
                }
                s.drain(lo + 1..hi);
            }
            s[lo].observe(time, kind, attrs, set);
        }
        Observed::Accepted
    }

    /// Closes every session that no future on-time event can touch (`end + gap < watermark`).
    pub fn close_expired(&mut self, out: &mut Vec<ClosedSession>) {
        if let Some(w) = self.watermark() {
            self.close_where(out, |s, gap| s.end.saturating_add(gap) < w);
        }
    }

    /// Closes every open session (end of input).
    pub fn close_all(&mut self, out: &mut Vec<ClosedSession>) {
        self.close_where(out, |_, _| true);
    }

    fn close_where(&mut self, out: &mut Vec<ClosedSession>, done: impl Fn(&Session, i64) -> bool) {
        let gap = self.gap;
        let gone = &mut self.gone;
        self.customers.retain(|id, c| {
            let n = c.sessions.iter().take_while(|s| done(s, gap)).count();
            if n == 0 {
                return true;
            }
            out.extend(
                c.sessions
                    .drain(..n)
                    .map(|session| ClosedSession { customer_id: id.as_str().into(), session }),
            );
            c.dirty = true;
            if c.sessions.is_empty() {
                gone.push(id.as_str().into());
                return false;
            }
            true
        });
    }

    /// Takes what changed since the last call, for the checkpoint's write batch.
    pub fn take_changes(&mut self) -> SessionChanges {
        let mut upserts = Vec::new();
        for (id, c) in &mut self.customers {
            if std::mem::take(&mut c.dirty) {
                upserts.push((id.as_str().into(), c.sessions.clone()));
            }
        }
        upserts.sort_by(|a: &(Box<str>, Vec<Session>), b| a.0.cmp(&b.0));
        let mut deletes = std::mem::take(&mut self.gone);
        // A customer that left and came back in the same interval is an upsert, not a delete.
        deletes.retain(|d| !self.customers.contains_key(&**d));
        deletes.sort();
        deletes.dedup();
        SessionChanges { upserts, deletes }
    }
}

#[cfg(test)]
mod tests;
