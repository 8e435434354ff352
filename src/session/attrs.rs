//! Session attributes: values carried from events into their session and folded there
//! (`first`, `last`, `distinct_count`, `min`, `max`, `count_present`).
//!
//! A fold is associative, so sessions that an event bridges merge exactly: `first` and `last`
//! keep their event times, `distinct_count` keeps the values' hashes (up to
//! [`MAX_DISTINCT`](crate::extract::catalog::MAX_DISTINCT)).

use crate::event::AttrValue;
use crate::extract::catalog::{Aggregate, MAX_DISTINCT};
use serde::{Deserialize, Serialize};
use std::cmp::Ordering;

/// An owned attribute value, as state holds it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Value {
    /// Text.
    Str(Box<str>),
    /// Integer.
    Int(i64),
    /// Finite double.
    Num(f64),
    /// Boolean.
    Bool(bool),
}

impl Value {
    fn of(v: &AttrValue<'_>) -> Value {
        match v {
            AttrValue::Str(s) => Value::Str(Box::from(&**s)),
            AttrValue::Int(i) => Value::Int(*i),
            AttrValue::Num(x) => Value::Num(*x),
            AttrValue::Bool(b) => Value::Bool(*b),
        }
    }

    /// A total order; values of one attribute always have one type.
    fn order(&self, o: &Value) -> Ordering {
        match (self, o) {
            (Value::Str(a), Value::Str(b)) => a.as_bytes().cmp(b.as_bytes()),
            (Value::Int(a), Value::Int(b)) => a.cmp(b),
            (Value::Num(a), Value::Num(b)) => a.total_cmp(b),
            (Value::Bool(a), Value::Bool(b)) => a.cmp(b),
            _ => self.tag().cmp(&o.tag()),
        }
    }

    fn tag(&self) -> u8 {
        match self {
            Value::Str(_) => 0,
            Value::Int(_) => 1,
            Value::Num(_) => 2,
            Value::Bool(_) => 3,
        }
    }
}

impl PartialEq for Value {
    fn eq(&self, o: &Value) -> bool {
        self.order(o) == Ordering::Equal
    }
}

impl Eq for Value {}

/// A stable 64-bit hash of a value (FNV-1a; stored in state, so it must never change).
fn hash(v: &AttrValue<'_>) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |bytes: &[u8]| {
        for &b in bytes {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    };
    match v {
        AttrValue::Str(s) => {
            eat(&[0]);
            eat(s.as_bytes());
        }
        AttrValue::Int(i) => {
            eat(&[1]);
            eat(&i.to_le_bytes());
        }
        AttrValue::Num(x) => {
            eat(&[2]);
            eat(&x.to_bits().to_le_bytes());
        }
        AttrValue::Bool(b) => eat(&[3, u8::from(*b)]),
    }
    h
}

/// One attribute's state in one session.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum AttrState {
    /// No event of the session had a value.
    #[default]
    Unset,
    /// `first` or `last`: the value and its event's time.
    At(i64, Value),
    /// `min` or `max`.
    Extreme(Value),
    /// `distinct_count`: the sorted hashes of the values seen.
    Distinct(Vec<u64>),
    /// `count_present`.
    Present(u64),
}

impl AttrState {
    /// Folds in one event's value (the event arrived after everything folded so far).
    pub fn observe(&mut self, agg: Aggregate, time: i64, v: &AttrValue<'_>) {
        match (agg, &mut *self) {
            (Aggregate::First, AttrState::At(t, _)) if *t <= time => {}
            (Aggregate::Last, AttrState::At(t, _)) if *t > time => {}
            (Aggregate::First | Aggregate::Last, _) => *self = AttrState::At(time, Value::of(v)),
            (Aggregate::Min | Aggregate::Max, AttrState::Extreme(cur)) => {
                let o = Value::of(v).order(cur);
                let wins = if agg == Aggregate::Min { o.is_lt() } else { o.is_gt() };
                if wins {
                    *cur = Value::of(v);
                }
            }
            (Aggregate::Min | Aggregate::Max, _) => *self = AttrState::Extreme(Value::of(v)),
            (Aggregate::DistinctCount, AttrState::Distinct(seen)) => insert(seen, hash(v)),
            (Aggregate::DistinctCount, _) => *self = AttrState::Distinct(vec![hash(v)]),
            (Aggregate::CountPresent, AttrState::Present(n)) => *n += 1,
            (Aggregate::CountPresent, _) => *self = AttrState::Present(1),
        }
    }

    /// Merges a later session's state into this one (sessions merge in time order).
    pub fn merge(&mut self, agg: Aggregate, o: &AttrState) {
        match (agg, &mut *self, o) {
            (_, _, AttrState::Unset) => {}
            (Aggregate::DistinctCount, AttrState::Distinct(a), AttrState::Distinct(b)) => {
                for &h in b {
                    insert(a, h);
                }
            }
            (Aggregate::CountPresent, AttrState::Present(a), AttrState::Present(b)) => *a += b,
            (_, cur, _) => {
                if takes(agg, cur, o) {
                    *self = o.clone();
                }
            }
        }
    }

    /// The output value: `None` (null) when no event had one, except for the counting
    /// aggregates, which are 0.
    #[must_use]
    pub fn output(&self, agg: Aggregate) -> Option<Value> {
        match self {
            AttrState::Unset => matches!(agg, Aggregate::DistinctCount | Aggregate::CountPresent)
                .then_some(Value::Int(0)),
            AttrState::At(_, v) | AttrState::Extreme(v) => Some(v.clone()),
            AttrState::Distinct(seen) => Some(Value::Int(seen.len() as i64)),
            AttrState::Present(n) => Some(Value::Int(*n as i64)),
        }
    }
}

/// Whether merging `o` into `cur` replaces `cur` (`first`, `last`, `min`, `max`; a state of
/// another shape, which one identity cannot produce, is replaced rather than mixed).
fn takes(agg: Aggregate, cur: &AttrState, o: &AttrState) -> bool {
    match (agg, cur, o) {
        (_, _, AttrState::Unset) => false,
        (Aggregate::First, AttrState::At(t, _), AttrState::At(u, _)) => u < t,
        (Aggregate::Last, AttrState::At(t, _), AttrState::At(u, _)) => u >= t,
        (Aggregate::Min, AttrState::Extreme(a), AttrState::Extreme(b)) => b.order(a).is_lt(),
        (Aggregate::Max, AttrState::Extreme(a), AttrState::Extreme(b)) => b.order(a).is_gt(),
        _ => true,
    }
}

fn insert(seen: &mut Vec<u64>, h: u64) {
    if let Err(at) = seen.binary_search(&h)
        && seen.len() < MAX_DISTINCT
    {
        seen.insert(at, h);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::borrow::Cow;

    fn s(v: &str) -> AttrValue<'_> {
        AttrValue::Str(Cow::Borrowed(v))
    }

    fn fold(agg: Aggregate, events: &[(i64, AttrValue<'_>)]) -> Option<Value> {
        let mut st = AttrState::Unset;
        for (t, v) in events {
            st.observe(agg, *t, v);
        }
        st.output(agg)
    }

    #[test]
    fn each_aggregate_folds_by_event_time_not_arrival() {
        let ev = [(30, s("c")), (10, s("a")), (20, s("b")), (10, s("a2")), (30, s("c2"))];
        let str_ = |v: &str| Some(Value::Str(v.into()));
        assert_eq!(fold(Aggregate::First, &ev), str_("a"), "ties keep the earlier arrival");
        assert_eq!(fold(Aggregate::Last, &ev), str_("c2"), "ties take the later arrival");
        assert_eq!(fold(Aggregate::Min, &ev), str_("a"));
        assert_eq!(fold(Aggregate::Max, &ev), str_("c2"));
        assert_eq!(fold(Aggregate::DistinctCount, &ev), Some(Value::Int(5)));
        assert_eq!(fold(Aggregate::CountPresent, &ev), Some(Value::Int(5)));
        assert_eq!(fold(Aggregate::First, &[]), None);
        assert_eq!(fold(Aggregate::CountPresent, &[]), Some(Value::Int(0)));
        let nums = [(1, AttrValue::Num(2.5)), (2, AttrValue::Num(-1.0)), (3, AttrValue::Num(2.5))];
        assert_eq!(fold(Aggregate::Min, &nums), Some(Value::Num(-1.0)));
        assert_eq!(fold(Aggregate::DistinctCount, &nums), Some(Value::Int(2)));
    }

    #[test]
    fn merging_two_sessions_equals_folding_their_events_together() {
        let left = [(10, s("x")), (12, s("y"))];
        let right = [(40, s("y")), (41, s("z"))];
        for agg in [
            Aggregate::First,
            Aggregate::Last,
            Aggregate::Min,
            Aggregate::Max,
            Aggregate::DistinctCount,
            Aggregate::CountPresent,
        ] {
            let (mut a, mut b) = (AttrState::Unset, AttrState::Unset);
            for (t, v) in &left {
                a.observe(agg, *t, v);
            }
            for (t, v) in &right {
                b.observe(agg, *t, v);
            }
            a.merge(agg, &b);
            let all: Vec<_> = left.iter().chain(&right).cloned().collect();
            assert_eq!(a.output(agg), fold(agg, &all), "{agg:?}");
        }
    }

    #[test]
    fn distinct_values_stop_at_the_cap() {
        let mut st = AttrState::Unset;
        for i in 0..(MAX_DISTINCT as i64 + 50) {
            st.observe(Aggregate::DistinctCount, i, &AttrValue::Int(i));
        }
        assert_eq!(st.output(Aggregate::DistinctCount), Some(Value::Int(MAX_DISTINCT as i64)));
    }

    #[test]
    fn the_hash_is_stable_across_builds() {
        // Stored in state: a change here would double-count values after an upgrade.
        // Values computed independently (FNV-1a 64 of a type tag and the value's bytes).
        assert_eq!(hash(&s("ios")), 0xe9b8_f27e_d468_e4cc);
        assert_eq!(hash(&AttrValue::Int(42)), 0xb960_a184_f070_32c6);
    }
}

#[cfg(test)]
mod sizes {
    /// `schemas/README.md` ("Memory per open session") quotes these sizes.
    #[test]
    fn the_documented_sizes_hold() {
        assert_eq!(std::mem::size_of::<super::AttrState>(), 32);
        assert_eq!(std::mem::size_of::<crate::session::Session>(), 104);
    }
}
