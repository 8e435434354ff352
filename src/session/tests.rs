use super::*;
use proptest::prelude::*;

const GAP: i64 = 1_800_000;

fn rows(out: &mut Vec<ClosedSession>) -> Vec<(String, i64, i64, u64)> {
    let mut v: Vec<_> = out
        .drain(..)
        .map(|c| {
            (c.customer_id.to_string(), c.session.start, c.session.end, c.session.counts.events)
        })
        .collect();
    v.sort();
    v
}

/// The definition, computed offline: sort each customer's events, split where a gap exceeds GAP.
fn offline(events: &[(String, i64)]) -> Vec<(String, i64, i64, u64)> {
    let mut by: std::collections::BTreeMap<&str, Vec<i64>> = std::collections::BTreeMap::default();
    for (c, t) in events {
        by.entry(c).or_default().push(*t);
    }
    let mut out = Vec::new();
    for (c, mut ts) in by {
        ts.sort_unstable();
        let (mut start, mut prev, mut n) = (ts[0], ts[0], 0);
        for t in ts {
            if t - prev > GAP {
                out.push((c.to_string(), start, prev, n));
                start = t;
                n = 0;
            }
            prev = t;
            n += 1;
        }
        out.push((c.to_string(), start, prev, n));
    }
    out.sort();
    out
}

#[test]
fn gap_of_exactly_thirty_minutes_stays_in_the_session() {
    let mut s = Sessionizer::new(GAP, 0);
    s.observe("c", 0, Some(0), &[]);
    s.observe("c", GAP, None, &[]);
    let mut out = Vec::new();
    s.close_all(&mut out);
    assert_eq!(rows(&mut out), vec![("c".into(), 0, GAP, 2)]);
}

#[test]
fn gap_of_thirty_minutes_and_one_ms_splits() {
    let mut s = Sessionizer::new(GAP, 0);
    s.observe("c", 0, Some(0), &[]);
    s.observe("c", GAP + 1, None, &[]);
    let mut out = Vec::new();
    s.close_all(&mut out);
    assert_eq!(rows(&mut out), vec![("c".into(), 0, 0, 1), ("c".into(), GAP + 1, GAP + 1, 1)]);
}

#[test]
fn late_event_within_lateness_bridges_two_sessions() {
    let mut s = Sessionizer::new(GAP, 3 * GAP);
    s.observe("c", 0, Some(0), &[]);
    s.observe("c", 2 * GAP, Some(1), &[]);
    assert_eq!(s.open_sessions(), 2);
    assert_eq!(s.observe("c", GAP, Some(2), &[]), Observed::Accepted);
    assert_eq!(s.open_sessions(), 1);
    let mut out = Vec::new();
    s.close_all(&mut out);
    let c = &out[0].session.counts;
    assert_eq!((out[0].session.start, out[0].session.end), (0, 2 * GAP));
    assert_eq!((c.events, c.of(0), c.of(1), c.of(2), c.of(3)), (3, 1, 1, 1, 0));
}

#[test]
fn event_older_than_the_watermark_is_late() {
    let mut s = Sessionizer::new(GAP, 1000);
    s.observe("c", 10_000, None, &[]);
    assert_eq!(s.observe("d", 9_000, None, &[]), Observed::Accepted); // == watermark: on time
    assert_eq!(s.observe("d", 8_999, None, &[]), Observed::Late { watermark: 9_000 });
}

#[test]
fn sessions_close_only_once_the_watermark_passes_end_plus_gap() {
    let mut s = Sessionizer::new(GAP, 0);
    s.observe("a", 0, None, &[]);
    s.observe("b", GAP, None, &[]);
    let mut out = Vec::new();
    s.close_expired(&mut out);
    assert!(out.is_empty(), "watermark == end + gap: an event at the watermark could still join");
    s.observe("b", GAP + 1, None, &[]);
    s.close_expired(&mut out);
    assert_eq!(rows(&mut out), vec![("a".into(), 0, 0, 1)]);
}

#[test]
fn changes_track_upserts_and_deletes() {
    let mut s = Sessionizer::new(GAP, 0);
    s.observe("a", 0, None, &[]);
    s.observe("b", 0, None, &[]);
    let ch = s.take_changes(1);
    assert_eq!(ch.upserts.len(), 2);
    assert!(s.take_changes(2).upserts.is_empty());
    s.observe("b", 10 * GAP, None, &[]);
    let mut out = Vec::new();
    s.close_expired(&mut out);
    let ch = s.take_changes(3);
    assert_eq!(ch.deletes, vec![crate::session::Key::from("a")]);
    assert_eq!(ch.upserts.iter().map(|u| &*u.0).collect::<Vec<_>>(), vec!["b"]);
    assert_eq!(ch.upserts[0].1.len(), 1);
}

fn events() -> impl Strategy<Value = Vec<(String, i64)>> {
    prop::collection::vec((prop::sample::select(vec!["a", "b", "c"]), 0i64..(6 * GAP)), 1..60)
        .prop_map(|v| v.into_iter().map(|(c, t)| (c.to_string(), t)).collect())
}

proptest! {
    #[test]
    fn order_does_not_matter_within_the_lateness(evs in events(), seed in any::<u64>()) {
        let mut shuffled = evs.clone();
        // Deterministic shuffle from the seed.
        let mut x = seed | 1;
        for i in (1..shuffled.len()).rev() {
            x ^= x << 13; x ^= x >> 7; x ^= x << 17;
            shuffled.swap(i, (x % (i as u64 + 1)) as usize);
        }
        let mut s = Sessionizer::new(GAP, 7 * GAP);
        let mut out = Vec::new();
        for (c, t) in &shuffled {
            prop_assert_eq!(s.observe(c, *t, None, &[]), Observed::Accepted);
            s.close_expired(&mut out);
        }
        s.close_all(&mut out);
        prop_assert_eq!(rows(&mut out), offline(&evs));
    }

    #[test]
    fn accepted_events_are_conserved_and_sessions_never_overlap(evs in events(), lateness in 0i64..(2 * GAP)) {
        let mut s = Sessionizer::new(GAP, lateness);
        let mut out = Vec::new();
        let mut accepted = Vec::new();
        for (c, t) in &evs {
            if s.observe(c, *t, None, &[]) == Observed::Accepted {
                accepted.push((c.clone(), *t));
            }
            s.close_expired(&mut out);
        }
        s.close_all(&mut out);
        let got = rows(&mut out);
        prop_assert_eq!(got.iter().map(|r| r.3).sum::<u64>(), accepted.len() as u64);
        for w in got.windows(2) {
            if w[0].0 == w[1].0 {
                prop_assert!(w[1].1 - w[0].2 > GAP, "{:?} overlaps or touches {:?}", w[0], w[1]);
            }
        }
        prop_assert_eq!(got, offline(&accepted));
    }
}

/// Events with checkpoints between them (`None`), for the bounded-cache model check.
fn run_with_checkpoints() -> impl Strategy<Value = Vec<Option<(String, i64)>>> {
    // Enough customers that most are not touched again in the next interval (their index entry
    // is then what decides when they close).
    prop::collection::vec(
        prop_oneof![
            6 => (0u8..40, 0i64..(8 * GAP)).prop_map(|(c, t)| Some((format!("c{c}"), t))),
            1 => Just(None),
        ],
        1..200,
    )
}

/// Closed sessions, and the open counts at each checkpoint.
type Outcome = (Vec<(String, i64, i64, u64)>, Vec<(u64, u64)>);

/// Runs `steps` through a sessionizer; with `store`, it has a backing and a cache of `budget`
/// bytes, and each batch becomes durable during the next interval or when the next one is
/// taken (a committer one checkpoint behind). Returns every closed session and the open counts at the end.
fn run_bounded(
    steps: &[Option<(String, i64)>],
    store: Option<crate::state::memory::MemoryStore>,
    budget: usize,
) -> Outcome {
    use crate::state::{CheckpointBatch, StateStore};
    let mut s = Sessionizer::new(GAP, GAP);
    let mut store = store;
    if let Some(st) = &store {
        s.restore(None, (0, 0), st.backing(), budget);
    }
    let (mut out, mut counts, mut waiting, mut batch) = (Vec::new(), Vec::new(), None, 0);
    for step in steps {
        if let Some((c, t)) = step {
            // The committer makes the last batch durable while the next interval goes on.
            if let (Some(st), Some(b)) = (&mut store, waiting.take_if(|_| *t % 2 == 0)) {
                st.write_batch(&b).unwrap();
            }
            s.observe(c, *t, None, &[]);
            // Between checkpoints, what the exact index already lets close.
            if *t % 3 == 0 {
                s.close_ahead(&mut out);
            }
            continue;
        }
        s.close_expired(&mut out);
        batch += 1;
        let sessions = s.take_changes(batch);
        let (held, afresh) = s.held_bytes();
        assert_eq!(held, afresh, "the cache's count of its bytes is off");
        counts.push((s.open_sessions(), s.open_customers()));
        if let Some(st) = &mut store {
            if let Some(b) = waiting.take() {
                st.write_batch(&b).unwrap();
            }
            waiting = Some(CheckpointBatch { seq: batch, sessions, ..Default::default() });
        }
    }
    s.close_all(&mut out);
    (rows(&mut out), counts)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]
    #[test]
    fn a_bounded_cache_over_a_backing_closes_exactly_what_memory_alone_does(
        steps in run_with_checkpoints(),
        budget in prop::sample::select(vec![0usize, 300, 1_000, usize::MAX]),
    ) {
        let (want, want_counts) = run_bounded(&steps, None, 0);
        let store = crate::state::memory::MemoryStore::default();
        let (got, got_counts) = run_bounded(&steps, Some(store), budget);
        prop_assert_eq!(got, want);
        prop_assert_eq!(got_counts, want_counts);
    }
}

#[test]
fn the_cache_counts_its_bytes_where_sessions_change_not_at_the_next_checkpoint() {
    use crate::state::StateStore;
    let store = crate::state::memory::MemoryStore::default();
    let mut s = Sessionizer::new(GAP, GAP);
    s.restore(None, (0, 0), store.backing(), usize::MAX);
    let counted = |s: &Sessionizer| {
        let (held, afresh) = s.held_bytes();
        assert_eq!(held, afresh, "the cache's count of its bytes is off");
    };
    s.observe("a", 0, None, &[]);
    s.observe("b", 0, None, &[]);
    counted(&s);
    s.observe("b", 3 * GAP, None, &[]); // a second session
    counted(&s);
    let _ = s.take_changes(1);
    counted(&s);
    // Closing changes them too: a's session and b's first close, b keeps one.
    s.observe("c", 5 * GAP, None, &[]);
    let mut out = Vec::new();
    s.close_expired(&mut out);
    assert_eq!(out.len(), 2);
    counted(&s);
}

#[test]
fn a_cache_over_budget_evicts_durable_customers_and_reads_them_back() {
    use crate::state::{CheckpointBatch, StateStore};
    let mut store = crate::state::memory::MemoryStore::default();
    let mut s = Sessionizer::new(GAP, GAP);
    s.restore(None, (0, 0), store.backing(), 0);
    for c in ["a", "b", "c"] {
        s.observe(c, 0, None, &[]);
    }
    let sessions = s.take_changes(1);
    assert_eq!(s.cached(), 3, "not durable yet: nothing may leave");
    store.write_batch(&CheckpointBatch { seq: 1, sessions, ..Default::default() }).unwrap();
    s.observe("d", 1, None, &[]);
    assert!(s.cached() < 4, "durable entries leave once the cache is over budget");
    s.observe("a", 2, None, &[]);
    let mut out = Vec::new();
    s.close_all(&mut out);
    let got = rows(&mut out);
    assert_eq!(got[0], ("a".into(), 0, 2, 2), "a's session was read back and extended");
    assert_eq!(got.len(), 4);
}

#[test]
fn what_a_durable_batch_makes_evictable_at_once_leaves_over_the_next_reads_not_in_the_pause() {
    use crate::state::{CheckpointBatch, StateStore};
    let mut store = crate::state::memory::MemoryStore::default();
    let mut s = Sessionizer::new(GAP, GAP);
    s.restore(None, (0, 0), store.backing(), 0);
    let n = 3 * super::sessionizer::EVICT_PER_BATCH;
    for c in 0..n {
        s.observe(&format!("c{c}"), 0, None, &[]);
    }
    let sessions = s.take_changes(1);
    store.write_batch(&CheckpointBatch { seq: 1, sessions, ..Default::default() }).unwrap();
    // Batch 1 is durable: every entry may go (budget 0), but taking batch 2 evicts a bounded
    // number of them.
    let _ = s.take_changes(2);
    assert_eq!(s.cached(), n - super::sessionizer::EVICT_PER_BATCH);
    // Each customer read in evicts one more entry than it adds (the new ones are not durable
    // yet): after as many reads as half the excess, only those reads are left.
    let reads = (n - super::sessionizer::EVICT_PER_BATCH) / 2;
    let mut cached = s.cached();
    for c in 0..reads {
        s.observe(&format!("new{c}"), 1, None, &[]);
        assert_eq!(s.cached(), cached - 1, "read {c}");
        cached = s.cached();
    }
    assert_eq!(cached, reads, "every entry of batch 1 left");
}

/// The model store, whose next batch becomes durable while an index scan runs: after the scan
/// took its snapshot and before it hands out the first entry (a committer finishing then).
struct CommitsDuringScan {
    store: crate::state::memory::MemoryStore,
    next: std::sync::Mutex<Option<crate::state::CheckpointBatch>>,
}

impl Backing for CommitsDuringScan {
    fn sessions(&self, customer: &str) -> Option<Vec<Session>> {
        self.store.sessions(customer)
    }

    fn id_time(&self, id: &str) -> Option<i64> {
        self.store.id_time(id)
    }

    fn ending_before(
        &self,
        from: i64,
        before: i64,
        f: &mut dyn FnMut(i64, &str, backing::Stored<'_>) -> bool,
    ) {
        use crate::state::StateStore;
        let mut snapshot = Vec::new();
        self.store.ending_before(from, before, &mut |end, key, stored| {
            snapshot.push((end, key.to_owned(), stored()));
            true
        });
        if let Some(b) = self.next.lock().unwrap().take() {
            self.store.clone().write_batch(&b).unwrap();
        }
        for (end, key, sessions) in snapshot {
            if !f(end, &key, &|| sessions.clone()) {
                return;
            }
        }
    }

    fn durable(&self) -> u64 {
        self.store.durable()
    }

    fn take_error(&self) -> Option<String> {
        None
    }
}

#[test]
fn a_close_reads_again_a_customer_whose_scanned_copy_a_batch_durable_since_replaced() {
    use crate::state::{CheckpointBatch, StateStore};
    use std::sync::{Arc, Mutex};
    const MIN: i64 = 60_000;
    let mut store = crate::state::memory::MemoryStore::default();
    let backing = Arc::new(CommitsDuringScan { store: store.clone(), next: Mutex::default() });
    let mut s = Sessionizer::new(GAP, GAP);
    s.restore(None, (0, 0), Arc::clone(&backing) as Arc<dyn Backing>, 0);
    let events = [("b", 0), ("a", MIN), ("a", 11 * MIN), ("c", MIN + 2 * GAP + 1)];
    s.observe("b", 0, None, &[]);
    s.observe("a", MIN, None, &[]);
    let sessions = s.take_changes(1);
    store.write_batch(&CheckpointBatch { seq: 1, sessions, ..Default::default() }).unwrap();
    // a's session grows to end at 11 min; the index holds it at 1 min until batch 2 is durable.
    s.observe("a", 11 * MIN, None, &[]);
    let sessions = s.take_changes(2);
    assert_eq!(s.cached(), 1, "b left (budget 0); a waits for its batch");
    *backing.next.lock().unwrap() =
        Some(CheckpointBatch { seq: 2, sessions, ..Default::default() });
    // The watermark passes 1 min + gap, not 11 min + gap.
    s.observe("c", MIN + 2 * GAP + 1, None, &[]);
    // The scan's snapshot has a at 1 min. Batch 2 is durable by the time it reads b back,
    // which evicts a: the snapshot's copy of a is stale then, and must not close.
    let mut out = Vec::new();
    s.close_expired(&mut out);
    assert_eq!(rows(&mut out), [("b".to_owned(), 0, 0, 1)]);
    s.close_all(&mut out);
    let all: Vec<(String, i64)> = events.iter().map(|(c, t)| ((*c).to_owned(), *t)).collect();
    let mut want = offline(&all);
    want.retain(|r| r.0 != "b");
    assert_eq!(rows(&mut out), want);
}
