//! A child split's first state: its parents' final states, cut to the keys it holds.
//!
//! When a Kinesis shard splits, each customer's key moves to exactly one child; when two merge,
//! both parents' customers move to the child. So a customer's open session and the message ids
//! seen go on in the child instead of being cut in two at the reshard: the child starts from
//! the sessions of its parents' final checkpoints whose customer key lies in its range, and
//! from every message id its parents remember (ids are not kept per customer; an id of a
//! customer now elsewhere is never seen here again, and is forgotten with its hour).
//!
//! Parents are read from their committed end only: a parent whose commit record does not say
//! `END` has not finished, and the child waits. A parent no longer listed by the source (past
//! retention) that left no committed end is skipped, with a warning: its records are gone.

use super::acquire::AcquireError;
use super::commit::SplitContext;
use super::record::{CommitRecord, Layout};
use super::snapshot;
use crate::session::Session;
use crate::source::kinesis::kpl::hash_key_of;
use crate::source::kinesis::shards::contains;
use crate::source::{END, Lineage};
use crate::state::rocksdb::RocksDbStore;
use crate::state::{CheckpointBatch, Contents, Meta, STATE_VERSION, StateStore};
use std::collections::BTreeMap;
use std::sync::Arc;
use tracing::{info, warn};

/// Writes the child's first state into `store` from its parents' committed ends.
///
/// # Errors
/// `Waiting` while a listed parent has not committed its end; S3 and state errors otherwise.
pub fn seed(
    ctx: &SplitContext,
    lineage: &Lineage,
    store: &mut RocksDbStore,
) -> Result<(), AcquireError> {
    let child = ctx.layout.split();
    let mut finals = Vec::new();
    for (parent, listed) in &lineage.parents {
        let Some(record) = ended(ctx, parent, *listed)? else { continue };
        let Some(snap) = &record.snapshot else { continue };
        let dir = ctx.tmp_dir.with_extension(format!("parent-{parent}"));
        if dir.exists() {
            std::fs::remove_dir_all(&dir).map_err(snapshot::io("remove", &dir))?;
        }
        snapshot::restore(&*ctx.objects, snap, &dir)?;
        let state = RocksDbStore::open(&dir)?.read_all()?;
        std::fs::remove_dir_all(&dir).map_err(snapshot::io("remove", &dir))?;
        finals.push(state);
    }
    let batch = cut(finals, lineage.range);
    let sessions = batch.sessions.upserts.len();
    store.write_batch(&batch)?;
    super::failpoint::hit("child.seeded");
    info!(
        split = child,
        parents = lineage.parents.len(),
        customers = sessions,
        "Child split starts from its parents' final state."
    );
    Ok(())
}

/// Waits (`AcquireError::Waiting`) until every parent still listed has committed its end:
/// checked before a child claims its record, so that a waiting child writes nothing.
///
/// # Errors
/// `Waiting`, or S3 errors.
pub fn parents_ended(ctx: &SplitContext, lineage: &Lineage) -> Result<(), AcquireError> {
    for (parent, listed) in &lineage.parents {
        ended(ctx, parent, *listed)?;
    }
    Ok(())
}

/// A parent's commit record, once it says `END`; `None` for a parent past retention that left
/// no record.
fn ended(
    ctx: &SplitContext,
    parent: &crate::source::SplitId,
    listed: bool,
) -> Result<Option<CommitRecord>, AcquireError> {
    let child = ctx.layout.split();
    let layout = Layout::new(parent.as_str());
    let record = match ctx.objects.get(&layout.latest())? {
        Some(o) => CommitRecord::parse(&o.body, parent.as_str()).map_err(|why| {
            AcquireError::Refused(format!(
                "split {child}: the commit record of its parent {parent} is unreadable ({why})"
            ))
        })?,
        None if listed => {
            return Err(AcquireError::Waiting(format!("parent {parent} has not started")));
        }
        None => {
            warn!(split = child, parent = %parent, "A parent past retention left no state: sessions it had open are not carried over.");
            return Ok(None);
        }
    };
    if !same_stream(&record.source, &ctx.identity.source) {
        return Err(AcquireError::Refused(format!(
            "split {child}: its parent {parent}'s state was built from {}, not this stream ({}). Use another sink prefix.",
            record.source, ctx.identity.source
        )));
    }
    if record.position.as_deref() != Some(END) {
        if listed {
            return Err(AcquireError::Waiting(format!(
                "parent {parent} has not committed its end"
            )));
        }
        warn!(split = child, parent = %parent, "A parent past retention never committed its end: records it had not read are gone.");
        metrics::counter!("clickstream_kinesis_expired_parents_total").increment(1);
    }
    Ok(Some(record))
}

/// Whether two identities (`kinesis:ARN@CREATED/SHARD`) name shards of one stream.
fn same_stream(a: &str, b: &str) -> bool {
    let stream = |s: &str| s.rsplit_once('/').map_or(s, |(st, _)| st).to_owned();
    stream(a) == stream(b)
}

/// The child's first state: sessions whose customer key lies in `range`, every id, the highest
/// event time of all (so the child's watermark does not go back), and the schema sets the
/// sessions name.
#[must_use]
pub fn cut(parents: Vec<Contents>, range: (u128, u128)) -> CheckpointBatch {
    let (mut sets, mut kinds, mut attrs) = (Vec::new(), Vec::new(), Vec::new());
    let mut sessions: BTreeMap<Box<str>, Vec<Session>> = BTreeMap::new();
    let mut batch = CheckpointBatch::default();
    let mut max_time: Option<i64> = None;
    for p in parents {
        max_time = max_time.max(p.meta.as_ref().and_then(|m| m.max_time));
        // Sessions name schema sets, kinds and attributes by number: map each parent's numbers
        // into the child's lists.
        let empty = Vec::new();
        let of = |f: fn(&Meta) -> &Vec<String>| p.meta.as_ref().map_or(&empty, f);
        let map = renumber(of(|m| &m.schema_sets), &mut sets);
        let kind_map = renumber(of(|m| &m.kinds), &mut kinds);
        let attr_map = renumber(of(|m| &m.attributes), &mut attrs);
        let remap = |i: u32| map.get(i as usize).copied().unwrap_or(i);
        for (customer, mut open) in p.sessions {
            if !contains(range, hash_key_of(customer.as_bytes())) {
                continue;
            }
            for s in &mut open {
                s.schema_sets = (remap(s.schema_sets.0), remap(s.schema_sets.1));
                s.renumber(&kind_map, &attr_map);
            }
            // A customer in two parents is a key that was not the customer: keep both.
            let entry = sessions.entry(customer).or_default();
            entry.extend(open);
            entry.sort_by_key(|s| s.start);
        }
        batch.dedup.inserts.extend(p.ids.iter().map(|(id, t)| (id, *t)));
    }
    batch.sessions.upserts = sessions.into_iter().map(|(k, v)| (k.into(), Arc::new(v))).collect();
    let open: u64 = batch.sessions.upserts.iter().map(|(_, s)| s.len() as u64).sum();
    batch.meta = Some(Meta {
        version: STATE_VERSION,
        checkpoint: 0,
        position: crate::event::SourcePosition::default(),
        max_time,
        counters: crate::state::Counters::default(),
        inputs: Vec::new(),
        settings: String::new(),
        finished: false,
        schema_sets: sets,
        kinds,
        attributes: attrs,
        open: (open, batch.sessions.upserts.len() as u64),
        forgotten_before: None,
    });
    batch
}

/// The numbers in `into` of `names`, appending those it lacks.
fn renumber(names: &[String], into: &mut Vec<String>) -> Vec<u32> {
    names
        .iter()
        .map(|name| {
            let i = into.iter().position(|s| s == name).unwrap_or_else(|| {
                into.push(name.clone());
                into.len() - 1
            });
            i as u32
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::Counts;

    fn session(start: i64, set: u32) -> Session {
        Session {
            start,
            end: start + 10,
            counts: Counts::default(),
            schema_sets: (set, set),
            attrs: Vec::new(),
        }
    }

    fn parent(customers: &[&str], sets: &[&str], max_time: i64, ids: &[&str]) -> Contents {
        Contents {
            meta: Some(Meta {
                version: STATE_VERSION,
                checkpoint: 7,
                position: crate::event::SourcePosition::default(),
                max_time: Some(max_time),
                counters: crate::state::Counters::default(),
                inputs: Vec::new(),
                settings: String::new(),
                finished: false,
                schema_sets: sets.iter().map(|&s| s.to_owned()).collect(),
                kinds: Vec::new(),
                attributes: Vec::new(),
                open: (0, 0),
                forgotten_before: None,
            }),
            sessions: customers
                .iter()
                .map(|&c| (c.into(), vec![session(1, sets.len() as u32 - 1)]))
                .collect(),
            ids: ids.iter().map(|&i| (i.into(), 5)).collect(),
        }
    }

    fn customers(b: &CheckpointBatch) -> Vec<&str> {
        b.sessions.upserts.iter().map(|(c, _)| &**c).collect()
    }

    #[test]
    fn a_split_hands_each_customer_to_the_child_holding_its_key() {
        let all: Vec<String> = (0..200).map(|i| format!("cust-{i}")).collect();
        let names: Vec<&str> = all.iter().map(String::as_str).collect();
        let half = u128::MAX / 2;
        let low = cut(vec![parent(&names, &["a@1"], 99, &["m1"])], (0, half));
        let high = cut(vec![parent(&names, &["a@1"], 99, &["m1"])], (half + 1, u128::MAX));
        let (l, h) = (customers(&low), customers(&high));
        assert_eq!(l.len() + h.len(), 200, "every customer goes to exactly one child");
        assert!(l.len() > 50 && h.len() > 50, "MD5 spreads keys: {} / {}", l.len(), h.len());
        assert!(l.iter().all(|c| hash_key_of(c.as_bytes()) <= half));
        for b in [&low, &high] {
            assert_eq!(b.meta.as_ref().unwrap().max_time, Some(99));
            assert_eq!(b.dedup.inserts.len(), 1, "ids go to both children");
        }
    }

    #[test]
    fn a_merge_is_the_union_with_schema_sets_renumbered() {
        let first = parent(&["x"], &["s@1"], 10, &["m1"]);
        let second = parent(&["y"], &["s@1", "s@2"], 20, &["m2"]);
        let child = cut(vec![first, second], (0, u128::MAX));
        assert_eq!(customers(&child), ["x", "y"]);
        let m = child.meta.as_ref().unwrap();
        assert_eq!(m.schema_sets, ["s@1", "s@2"]);
        assert_eq!(m.max_time, Some(20), "the child's watermark is the highest of its parents'");
        assert_eq!(child.sessions.upserts[1].1[0].schema_sets, (1, 1));
        assert_eq!(child.dedup.inserts.len(), 2);
    }

    #[test]
    fn a_merge_renumbers_kinds_and_attributes_into_the_childs_lists() {
        use crate::session::attrs::{AttrState, Value};
        let mut first = parent(&["x"], &["s@1"], 10, &[]);
        let mut second = parent(&["y"], &["s@1"], 10, &[]);
        let m = first.meta.as_mut().unwrap();
        m.kinds = vec!["page_view".into(), "play".into()];
        m.attributes = vec!["os:string:first".into()];
        let m = second.meta.as_mut().unwrap();
        m.kinds = vec!["play".into()];
        m.attributes = vec!["app:integer:max".into(), "os:string:first".into()];
        first.sessions[0].1[0].counts = Counts { events: 3, kinds: vec![1, 2].into() };
        first.sessions[0].1[0].attrs = vec![AttrState::At(1, Value::Str("ios".into()))];
        second.sessions[0].1[0].counts = Counts { events: 4, kinds: vec![4].into() };
        second.sessions[0].1[0].attrs =
            vec![AttrState::Extreme(Value::Int(7)), AttrState::At(2, Value::Str("mac".into()))];
        let child = cut(vec![first, second], (0, u128::MAX));
        let m = child.meta.as_ref().unwrap();
        assert_eq!(m.kinds, ["page_view", "play"]);
        assert_eq!(m.attributes, ["os:string:first", "app:integer:max"]);
        let y = &child.sessions.upserts[1].1[0];
        assert_eq!(y.counts.kinds[..], [0, 4], "y's plays are the child's kind 1");
        assert_eq!(
            y.attrs,
            [AttrState::At(2, Value::Str("mac".into())), AttrState::Extreme(Value::Int(7))],
            "y's attributes move to the child's numbers"
        );
        assert_eq!(child.sessions.upserts[0].1[0].counts.kinds[..], [1, 2], "x keeps its numbers");
    }

    #[test]
    fn identities_of_one_stream_match_across_shards_only() {
        let a = "kinesis:arn:aws:kinesis:us-east-1:1:stream/s@1700/shardId-000000000001";
        let b = "kinesis:arn:aws:kinesis:us-east-1:1:stream/s@1700/shardId-000000000004";
        let recreated = "kinesis:arn:aws:kinesis:us-east-1:1:stream/s@1800/shardId-000000000001";
        assert!(same_stream(a, b));
        assert!(!same_stream(a, recreated));
    }
}
