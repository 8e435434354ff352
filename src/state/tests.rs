//! Model check: the `RocksDB` store behaves like the in-memory model under random batches and
//! reopens.

use super::memory::MemoryStore;
use super::rocksdb::RocksDbStore;
use super::*;
use crate::session::attrs::{AttrState, Value};
use crate::session::dedup::{DedupChanges, HOUR_MS};
use crate::session::{Counts, Session, SessionChanges};
use proptest::prelude::*;

fn key() -> impl Strategy<Value = Box<str>> {
    prop::sample::select(vec!["a", "b", "c", "d", "ünï"]).prop_map(Box::from)
}

fn message_id() -> impl Strategy<Value = Box<str>> {
    (0u32..300).prop_map(|i| format!("m{i}").into())
}

fn session() -> impl Strategy<Value = Session> {
    (0i64..1000, 0i64..1000, 0u64..9).prop_map(|(s, d, n)| Session {
        start: s,
        end: s + d,
        counts: Counts { events: n, kinds: vec![n / 2].into() },
        schema_sets: (n as u32 % 3, n as u32 % 3 + 1),
        attrs: if n % 2 == 0 {
            Vec::new()
        } else {
            vec![AttrState::Unset, AttrState::At(s, Value::Str(format!("v{n}").into()))]
        },
    })
}

#[derive(Debug, Clone)]
enum Op {
    Batch(
        Vec<(Box<str>, Vec<Session>)>,
        Vec<Box<str>>,
        Vec<(Box<str>, i64)>,
        Option<i64>,
        Option<u64>,
    ),
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (
            prop::collection::vec((key(), prop::collection::vec(session(), 0..3)), 0..4),
            prop::collection::vec(key(), 0..3),
            prop::collection::vec((message_id(), -20_000_000i64..20_000_000), 0..6),
            prop::option::of(-6i64..6),
            prop::option::of(0u64..100),
        )
            .prop_map(|(u, d, i, x, m)| Op::Batch(u, d, i, x, m)),
        1 => Just(Op::Reopen),
    ]
}

pub(crate) fn meta(checkpoint: u64) -> Meta {
    Meta {
        version: STATE_VERSION,
        checkpoint,
        position: crate::event::SourcePosition {
            input: 1,
            line: checkpoint,
            offset: checkpoint * 10,
        },
        max_time: Some(checkpoint as i64),
        counters: Counters { lines: checkpoint, ..Counters::default() },
        inputs: vec!["x.jsonl:10".into()],
        settings: "gap=30m".into(),
        finished: false,
        schema_sets: vec!["web@1".into()],
        kinds: vec!["page_view".into()],
        attributes: vec!["platform:string:last".into()],
        open: (checkpoint, checkpoint / 2),
        forgotten_before: None,
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]
    #[test]
    fn rocksdb_store_matches_the_model(ops in prop::collection::vec(op(), 1..12)) {
        let dir = tempfile::tempdir().unwrap();
        let mut model = MemoryStore::default();
        let mut real = RocksDbStore::open(dir.path()).unwrap();
        // As in the pipeline: the cutoff only rises, an id is inserted once, never below it.
        let mut cut = i64::MIN;
        let mut used = std::collections::HashSet::new();
        for op in ops {
            match op {
                Op::Batch(upserts, deletes, inserts, forget, m) => {
                    let forget = forget.map(|f| f.max(cut));
                    cut = forget.unwrap_or(cut);
                    let inserts = inserts
                        .into_iter()
                        .filter(|(k, t)| t.div_euclid(HOUR_MS) >= cut && used.insert(k.clone()))
                        .collect();
                    let b = CheckpointBatch {
                        seq: 0,
                        meta: m.map(|c| Meta { forgotten_before: (cut > i64::MIN).then_some(cut), ..meta(c) }),
                        sessions: SessionChanges {
                            upserts: upserts.into_iter().map(|(k, v)| (k.into(), v.into())).collect(),
                            deletes: deletes.into_iter().map(Into::into).collect(),
                            unindex: vec![],
                        },
                        dedup: DedupChanges { inserts },
                    };
                    model.write_batch(&b).unwrap();
                    real.write_batch(&b).unwrap();
                }
                Op::Reopen => {
                    drop(real);
                    real = RocksDbStore::open(dir.path()).unwrap();
                }
            }
            prop_assert_eq!(real.read_all().unwrap(), model.read_all().unwrap());
        }
    }
}

#[test]
fn a_store_from_a_future_version_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = RocksDbStore::open(dir.path()).unwrap();
    let mut m = meta(1);
    m.version = STATE_VERSION + 1;
    s.write_batch(&CheckpointBatch { meta: Some(m), ..CheckpointBatch::default() }).unwrap();
    let err = s.meta().unwrap_err().to_string();
    assert!(err.contains("format version"), "{err}");
}

#[test]
fn a_store_open_elsewhere_is_reported_as_in_use() {
    let dir = tempfile::tempdir().unwrap();
    let _first = RocksDbStore::open(dir.path()).unwrap();
    let err = RocksDbStore::open(dir.path()).unwrap_err().to_string();
    assert!(err.contains("in use by another process"), "{err}");
}
