//! Sessionize: accepted events → per-customer sessions in event time.
//!
//! A session is a maximal run of one customer's events whose gaps are all ≤ `gap`. Events may
//! arrive out of order: the watermark (highest event time seen − allowed lateness) says how far
//! back they may reach. An event older than the watermark is late and refused. A session closes
//! once `end + gap < watermark`, because no event that could still arrive can touch it; an event
//! that falls within `gap` of two open sessions bridges and merges them.
//!
//! Pure and clock-free: time is the events' own.

pub mod dedup;

use crate::event::Kind;
use hashbrown::HashMap;
use rustc_hash::FxBuildHasher;
use serde::{Deserialize, Serialize};

/// Counters of one session.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    /// All events.
    pub events: u64,
    /// Page views.
    pub page_views: u64,
    /// Subscribe hovers.
    pub subscribe_hovers: u64,
    /// Subscribe clicks.
    pub subscribe_clicks: u64,
    /// Support calls.
    pub support_calls: u64,
}

impl Counts {
    fn add(&mut self, kind: Kind) {
        self.events += 1;
        match kind {
            Kind::PageView => self.page_views += 1,
            Kind::SubscribeHover => self.subscribe_hovers += 1,
            Kind::SubscribeClick => self.subscribe_clicks += 1,
            Kind::SupportCall => self.support_calls += 1,
            Kind::Other => {}
        }
    }

    fn merge(&mut self, o: &Counts) {
        self.events += o.events;
        self.page_views += o.page_views;
        self.subscribe_hovers += o.subscribe_hovers;
        self.subscribe_clicks += o.subscribe_clicks;
        self.support_calls += o.support_calls;
    }
}

/// One session, open or closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
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
        }
    }

    /// Marks the events observed from now on as extracted by schema set `index`.
    pub fn set_schema_set(&mut self, index: u32) {
        self.schema_set = index;
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

    /// Adds one event.
    pub fn observe(&mut self, customer: &str, time: i64, kind: Kind) -> Observed {
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
        let mut counts = Counts::default();
        counts.add(kind);
        let set = self.schema_set;
        if lo >= hi {
            s.insert(lo, Session { start: time, end: time, counts, schema_sets: (set, set) });
        } else {
            let mut merged = Session {
                start: time.min(s[lo].start),
                end: time.max(s[hi - 1].end),
                counts,
                schema_sets: (set, set),
            };
            for x in &s[lo..hi] {
                merged.counts.merge(&x.counts);
                merged.schema_sets.0 = merged.schema_sets.0.min(x.schema_sets.0);
                merged.schema_sets.1 = merged.schema_sets.1.max(x.schema_sets.1);
            }
            s.splice(lo..hi, [merged]);
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
