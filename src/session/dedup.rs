//! Dedup by message id over a horizon of event time.
//!
//! An id is remembered with its event time until the watermark has moved `horizon` past it.
//! With `horizon ≥ allowed lateness`, forgetting loses nothing: any later copy of a forgotten
//! id is older than the watermark and would be refused as late anyway.

mod ids;

pub use ids::Ids;

use super::Backing;
use compact_str::CompactString;
use hashbrown::HashTable;
use hashbrown::hash_table::Entry;
use std::collections::BTreeMap;
use std::hash::BuildHasher;
use std::sync::Arc;

/// Ids are forgotten by whole hours of event time, so that the state store drops them with
/// one range delete.
pub const HOUR_MS: i64 = 3_600_000;

/// Shards of the cache. A shrink passes over one shard, not the whole cache: measured at 1 M
/// customers before, one pass over the whole cache (1.7 M ids) was 30–69 ms of a checkpoint's
/// pause every ninth checkpoint or so, the largest part of its p99.
const SHARDS: usize = 16;

/// Shards a checkpoint shrinks before they must be (see [`Dedup::shrink_some`]).
const SHRINKS_AHEAD: usize = 2;

/// An id, its event time and the batch that carries it. Ids up to 24 bytes are stored inline.
type Slot = (CompactString, i64, u64);

/// Memory of one slot of a table: the id, its time and batch, and a control byte.
const SLOT_BYTES: usize = std::mem::size_of::<Slot>() + 1;

fn hash(id: &str) -> u64 {
    rustc_hash::FxBuildHasher.hash_one(id)
}

/// The shard of an id's hash: bits the tables use neither for the slot (the low bits) nor
/// for the control byte (the top seven), so that the ids of one shard still spread over all
/// of its slots.
fn shard_of(hash: u64) -> usize {
    (hash >> 40) as usize & (SHARDS - 1)
}

/// Remembered message ids.
///
/// With a [`Backing`], memory is a cache of at most `budget` bytes of ids: those of batches not
/// durable yet always, and the newest hours of the rest. Each shard of it holds *every*
/// remembered id of its hash range of the hours from its `disk_only_below` on, so an id missing
/// from memory is looked up in the backing only if some hour before that is not forgotten yet
/// (whose bloom filters answer "never seen" — almost every id — without reading a block).
/// After a restart, memory starts empty and the backing answers until the hours of before the
/// restart are forgotten. Exact either way: memory and filters only ever save a read.
pub struct Dedup {
    horizon: i64,
    /// The cache, by [`shard_of`] the id's hash.
    shards: Vec<Shard>,
    /// Ids accepted since the last batch was taken, for the next one (no scan of the table).
    fresh: Ids,
    /// The number the next batch will have.
    next_batch: u64,
    /// Hours before this one are forgotten.
    forgotten_before: Option<i64>,
    backing: Option<Arc<dyn Backing>>,
    /// The shard [`Dedup::shrink_some`] looks at first.
    turn: usize,
    /// Ids each shard may hold: its table is sized for them once, so that it never doubles
    /// (a doubling holds the old and the new table at once) while within its budget.
    limit: usize,
}

/// One hash range of the cache.
#[derive(Default)]
struct Shard {
    ids: HashTable<Slot>,
    /// Ids of this range of hours before this one may be in the backing only.
    disk_only_below: i64,
}

impl std::fmt::Debug for Dedup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dedup")
            .field("in_memory", &self.len())
            .field("forgotten_before", &self.forgotten_before)
            .finish_non_exhaustive()
    }
}

/// What changed since the last checkpoint.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct DedupChanges {
    /// New ids with their event times. (The hours forgotten travel in the checkpoint record,
    /// `Meta::forgotten_before`, the one copy stores and restarts read.)
    pub inserts: Ids,
}

impl Dedup {
    /// Remembers ids for at least `horizon` milliseconds of event time past the watermark.
    #[must_use]
    pub fn new(horizon: i64) -> Self {
        Dedup {
            horizon,
            shards: std::iter::repeat_with(Shard::default).take(SHARDS).collect(),
            fresh: Ids::default(),
            next_batch: 0,
            forgotten_before: None,
            backing: None,
            turn: 0,
            limit: 0,
        }
    }

    /// Continues from durable state: `backing` holds the ids, `forgotten_before` is the last
    /// checkpoint's cutoff (ids of earlier hours the backing may still hold do not count),
    /// `max_time` the highest event time it saw (no stored id is of a later hour), `budget` the
    /// bytes the cache of ids may hold.
    pub fn restore(
        &mut self,
        forgotten_before: Option<i64>,
        max_time: Option<i64>,
        backing: Arc<dyn Backing>,
        budget: usize,
    ) {
        self.forgotten_before = forgotten_before;
        self.backing = Some(backing);
        // Each table has a power of two of slots, filled to 7/8 at most.
        let slots = budget / SLOT_BYTES / SHARDS;
        self.limit = if slots < 16 { 0 } else { (1usize << slots.ilog2()) / 8 * 7 };
        let below = max_time.map_or(i64::MIN, |t| t.div_euclid(HOUR_MS) + 1);
        for shard in &mut self.shards {
            shard.disk_only_below = below;
            shard.ids.reserve(self.limit, |s| hash(&s.0));
        }
    }

    /// Whether `id` was accepted before.
    #[must_use]
    pub fn contains(&self, id: &str) -> bool {
        let cut = self.forgotten_before.unwrap_or(i64::MIN);
        let h = hash(id);
        let Some(shard) = self.shards.get(shard_of(h)) else { return false };
        if let Some((_, t, _)) = shard.ids.find(h, |s| s.0 == id) {
            // With a backing, forgotten hours leave memory lazily (see `expire`).
            return t.div_euclid(HOUR_MS) >= cut;
        }
        let Some(b) = &self.backing else { return false };
        if cut >= shard.disk_only_below {
            return false; // memory holds every id of this range not forgotten
        }
        b.id_time(id).is_some_and(|t| t.div_euclid(HOUR_MS) >= cut)
    }

    /// Remembers an accepted id.
    pub fn insert(&mut self, id: &str, time: i64) {
        self.fresh.push(id, time);
        let h = hash(id);
        let batch = self.next_batch.max(1);
        let Some(shard) = self.shards.get_mut(shard_of(h)) else { return };
        match shard.ids.entry(h, |s| s.0 == id, |s| hash(&s.0)) {
            // A copy of a forgotten hour that memory still held.
            Entry::Occupied(mut o) => {
                let s = o.get_mut();
                (s.1, s.2) = (time, batch);
            }
            Entry::Vacant(v) => {
                v.insert((id.into(), time, batch));
            }
        }
    }

    /// Where ids are forgotten: hours before this one.
    #[must_use]
    pub fn forgotten_before(&self) -> Option<i64> {
        self.forgotten_before
    }

    /// Number of ids held in memory (all of them without a backing).
    #[must_use]
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.ids.len()).sum()
    }

    /// Whether no id is remembered.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.shards.iter().all(|s| s.ids.is_empty())
    }

    /// Forgets the ids of every hour that ends at or before `watermark − horizon`. Called at
    /// checkpoints only, so the remembered set is always exactly what the last checkpoint
    /// restores.
    pub fn expire(&mut self, watermark: Option<i64>) {
        let Some(w) = watermark else { return };
        let before = w.saturating_sub(self.horizon).div_euclid(HOUR_MS);
        if self.forgotten_before.is_some_and(|b| b >= before) {
            return;
        }
        // With a backing the cache lets forgotten hours go when it shrinks (they are its oldest),
        // instead of a scan of the whole cache every hour of event time.
        if self.backing.is_none() {
            for shard in &mut self.shards {
                shard.ids.retain(|s| s.1.div_euclid(HOUR_MS) >= before);
            }
        }
        self.forgotten_before = Some(before);
    }

    /// Lets go of the store (see [`crate::session::Sessionizer::detach`]).
    pub fn detach(&mut self) {
        self.backing = None;
    }

    /// Takes what changed since the last call, for the checkpoint batch number `batch`; with a
    /// backing, ids of durable batches leave memory.
    pub fn take_changes(&mut self, batch: u64) -> DedupChanges {
        // Ids forgotten before any batch carried them are not written.
        let cut = self.forgotten_before.unwrap_or(i64::MIN);
        // The next interval's room, sized as this one: growing by doubling from nothing copied
        // the ids a dozen times into fresh pages.
        let room = Ids::with_capacity(self.fresh.len(), self.fresh.bytes());
        let mut inserts = std::mem::replace(&mut self.fresh, room);
        if inserts.iter().any(|(_, t)| t.div_euclid(HOUR_MS) < cut) {
            inserts.retain(|_, t| t.div_euclid(HOUR_MS) >= cut);
        }
        debug_assert!(self.next_batch.max(1) == batch, "batches are numbered in order");
        self.next_batch = batch + 1;
        if let Some(b) = &self.backing {
            self.shrink_some(b.durable(), cut);
        }
        DedupChanges { inserts }
    }

    /// Shrinks the shards that must (their table would have to grow for the next interval's
    /// ids) and, in turn, up to [`SHRINKS_AHEAD`] of those past half their room. Shards fill at
    /// the same pace: shrunk only when they must, they would all be at once. In turn, each is
    /// visited every `SHARDS / SHRINKS_AHEAD` checkpoints, before it must be.
    fn shrink_some(&mut self, durable: u64, cut: i64) {
        let limit = self.limit;
        for shard in &mut self.shards {
            // The room is what the table says it has (`capacity − len`): the slots of removed
            // ids stay used (tombstones) until it rehashes.
            let room = shard.ids.capacity() - shard.ids.len();
            if shard.ids.len() > limit / 8 * 7 || room < limit / 8 {
                shard.shrink(durable, cut, limit);
            }
        }
        let mut left = SHRINKS_AHEAD;
        for step in 0..self.shards.len() {
            let k = (self.turn + step) % self.shards.len();
            let Some(shard) = self.shards.get_mut(k) else { break };
            if shard.ids.len() > limit / 2 {
                shard.shrink(durable, cut, limit);
                self.turn = k + 1;
                left -= 1;
                if left == 0 {
                    break;
                }
            }
        }
    }
}

impl Shard {
    /// Drops the oldest hours of durable ids until the shard is within three eighths of
    /// `limit` (ids not durable stay whatever their hour); it then holds every id of its range
    /// only from the first hour kept. Down to three eighths, so that this pass runs now and
    /// then, not at every checkpoint once the shard is full, and so that the table can be
    /// rehashed in place (which follows). Two passes over this shard: one counts what may go
    /// by hour.
    fn shrink(&mut self, durable: u64, cut: i64, limit: usize) {
        self.drop_oldest(durable, cut, limit);
        self.rehash(limit);
    }

    /// The first half of [`Shard::shrink`]: the oldest durable hours leave.
    fn drop_oldest(&mut self, durable: u64, cut: i64, limit: usize) {
        let over = self.ids.len().saturating_sub(limit / 8 * 3);
        if over == 0 {
            return; // only the removed ids' tombstones were in the way: `rehash` is enough
        }
        let mut evictable: BTreeMap<i64, usize> = BTreeMap::new();
        for (_, t, carried) in &self.ids {
            let hour = t.div_euclid(HOUR_MS);
            if hour < cut || *carried <= durable {
                *evictable.entry(hour).or_default() += 1;
            }
        }
        let (mut below, mut left) = (i64::MIN, over);
        for (hour, n) in evictable {
            below = hour + 1;
            left = left.saturating_sub(n);
            if left == 0 {
                break;
            }
        }
        if below == i64::MIN {
            return;
        }
        self.ids.retain(|(_, t, carried)| {
            let hour = t.div_euclid(HOUR_MS);
            hour >= cut && (*carried > durable || hour >= below)
        });
        self.disk_only_below = self.disk_only_below.max(below);
    }

    /// Removed ids leave tombstones: once they use up the table's room, a table more than half
    /// full doubles (its budget with it) where one at most half full is rehashed in place.
    /// Rehashed after a shrink, while it is at most half full (measured before: 1.6 M slots of
    /// room became 3.7 M).
    fn rehash(&mut self, limit: usize) {
        let half = (limit / 2).saturating_sub(self.ids.len());
        if self.ids.capacity() - self.ids.len() < half {
            self.ids.reserve(half, |s| hash(&s.0));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_until_the_horizon_passes() {
        let mut d = Dedup::new(100);
        d.insert("a", 1000);
        assert!(d.contains("a"));
        // Hour 0 holds times below HOUR_MS: forgotten once the cutoff reaches HOUR_MS.
        d.expire(Some(HOUR_MS + 99));
        assert!(d.contains("a"));
        d.expire(Some(HOUR_MS + 100));
        assert!(!d.contains("a"));
    }

    #[test]
    fn long_ids_work_like_short_ones() {
        let mut d = Dedup::new(100);
        let long = "x".repeat(300);
        d.insert(&long, 5);
        assert!(d.contains(&long));
        assert!(!d.contains(&long[1..]));
    }

    #[test]
    fn changes_carry_new_ids_and_the_hours_to_forget() {
        let mut d = Dedup::new(10);
        d.insert("a", 0);
        d.insert("b", 2 * HOUR_MS);
        let ch = d.take_changes(1).inserts;
        let mut ins: Vec<(CompactString, i64)> = ch.iter().map(|(id, t)| (id.into(), t)).collect();
        ins.sort();
        assert_eq!(ins, vec![("a".into(), 0), ("b".into(), 2 * HOUR_MS)]);
        d.insert("c", 5);
        d.expire(Some(HOUR_MS + 50));
        let ch = d.take_changes(2);
        assert!(ch.inserts.is_empty(), "c was forgotten before it was ever stored");
        assert_eq!(d.forgotten_before(), Some(1));
        assert_eq!(d.len(), 1);
    }

    /// Every id memory holds, with its time.
    fn held(d: &Dedup) -> Vec<(String, i64)> {
        d.shards.iter().flat_map(|s| s.ids.iter().map(|(id, t, _)| (id.to_string(), *t))).collect()
    }

    #[test]
    fn shrinks_keep_every_id_not_forgotten_findable() {
        use crate::state::{CheckpointBatch, StateStore};
        let mut store = crate::state::memory::MemoryStore::default();
        let mut d = Dedup::new(2 * HOUR_MS);
        // Room for ~1,800 ids in all: a shrink of some shard every few batches, forgotten ids
        // held in between.
        d.restore(None, None, store.backing(), 4000 * SLOT_BYTES);
        let (mut shrunk, mut replaced) = (0, 0);
        let mut accepted: Vec<(String, i64)> = Vec::new();
        for batch in 1..=80u64 {
            let base = i64::try_from(batch).unwrap() * HOUR_MS / 4;
            for i in 0..60i64 {
                let id = format!("{batch}-{i}");
                assert!(!d.contains(&id));
                d.insert(&id, base + i * 1000);
                accepted.push((id, base + i * 1000));
            }
            // An id of an hour forgotten but still held comes again, a later time.
            if let Some(cut) = d.forgotten_before() {
                let old = held(&d).into_iter().find(|(_, t)| t.div_euclid(HOUR_MS) < cut);
                if let Some((id, t)) = old {
                    assert!(!d.contains(&id));
                    d.insert(&id, t + 5 * HOUR_MS);
                    accepted.push((id, t + 5 * HOUR_MS));
                    replaced += 1;
                }
            }
            d.expire(Some(base - HOUR_MS));
            let before = d.len();
            let ch = d.take_changes(batch);
            shrunk += usize::from(d.len() < before);
            store
                .write_batch(&CheckpointBatch { seq: batch, dedup: ch, ..Default::default() })
                .unwrap();
            // Exact: what memory let go, the store answers; what is forgotten counts nowhere.
            let cut = d.forgotten_before().unwrap_or(i64::MIN);
            for (id, t) in &accepted {
                let newest = accepted.iter().filter(|(i, _)| i == id).map(|(_, t)| *t).max();
                if newest != Some(*t) {
                    continue; // replaced by a later copy
                }
                let live = t.div_euclid(HOUR_MS) >= cut;
                assert_eq!(d.contains(id), live, "batch {batch}: {id} at {t}, cutoff hour {cut}");
            }
        }
        assert!(shrunk > 5, "the cache shrank {shrunk} times: the test shows nothing");
        assert!(replaced > 0, "no forgotten id came again");
    }

    /// Fills `d` (over `store`) with `per` ids a batch, four batches an hour, each batch
    /// durable at once; after each, calls `check` with the batch and the shards' sizes before
    /// it.
    fn fill(
        d: &mut Dedup,
        store: &mut crate::state::memory::MemoryStore,
        (batches, per): (u64, i64),
        mut check: impl FnMut(u64, &Dedup, &[usize]),
    ) {
        use crate::state::{CheckpointBatch, StateStore};
        for batch in 1..=batches {
            let hour = i64::try_from(batch).unwrap() / 4 * HOUR_MS;
            for i in 0..per {
                d.insert(&format!("{batch}-{i}"), hour + i);
            }
            let before: Vec<usize> = d.shards.iter().map(|s| s.ids.len()).collect();
            let ch = d.take_changes(batch);
            store
                .write_batch(&CheckpointBatch { seq: batch, dedup: ch, ..Default::default() })
                .unwrap();
            check(batch, d, &before);
        }
    }

    #[test]
    fn a_full_cache_shrinks_within_its_tables_and_never_doubles_them() {
        use crate::state::StateStore;
        let mut store = crate::state::memory::MemoryStore::default();
        let mut d = Dedup::new(100 * HOUR_MS);
        d.restore(None, None, store.backing(), 40_000 * SLOT_BYTES);
        let room: Vec<usize> = d.shards.iter().map(|s| s.ids.capacity()).collect();
        let mut shrinks = 0;
        fill(&mut d, &mut store, (200, 2_000), |batch, d, before| {
            // Hashbrown leaves tombstones where a shrink removed ids (its capacity counts them
            // out); a table filled past half with ids grows (doubles) instead of rehashing in
            // place once they use up its room.
            for (k, s) in d.shards.iter().enumerate() {
                shrinks += usize::from(s.ids.len() < before[k]);
                let now = s.ids.capacity();
                assert!(
                    now <= room[k],
                    "batch {batch}: shard {k} outgrew its budget: {} -> {now}",
                    room[k]
                );
            }
        });
        assert!(shrinks > 3 * SHARDS, "the shards shrank {shrinks} times: the test shows nothing");
    }

    #[test]
    fn shards_shrink_at_different_checkpoints() {
        use crate::state::StateStore;
        let mut store = crate::state::memory::MemoryStore::default();
        let mut d = Dedup::new(100 * HOUR_MS);
        d.restore(None, None, store.backing(), 64_000 * SLOT_BYTES);
        let (mut most, mut shrinks) = (0, 0);
        fill(&mut d, &mut store, (300, 1_000), |_, d, before| {
            let now = d.shards.iter().zip(before).filter(|(s, b)| s.ids.len() < **b).count();
            most = most.max(now);
            shrinks += now;
        });
        assert!(shrinks > 3 * SHARDS, "the shards shrank {shrinks} times: the test shows nothing");
        // One pass over the whole cache in a checkpoint was the pause's worst case: the shards
        // take their turns instead (two in turn, and those whose removed ids' tombstones used
        // up their room, a few).
        assert!(most <= SHARDS / 4, "{most} of {SHARDS} shards shrank at one checkpoint");
    }

    #[test]
    fn ids_numbered_in_sequence_spread_over_the_shards() {
        let mut per = [0usize; SHARDS];
        for i in 0..160_000 {
            per[shard_of(hash(&i.to_string()))] += 1;
        }
        let mean = 160_000 / SHARDS;
        assert!(per.iter().all(|&n| n.abs_diff(mean) < mean / 10), "{per:?}");
    }

    #[test]
    fn with_a_backing_durable_ids_leave_memory_and_forgotten_hours_do_not_count() {
        use crate::state::{CheckpointBatch, StateStore};
        let mut store = crate::state::memory::MemoryStore::default();
        let mut d = Dedup::new(0);
        d.restore(None, None, store.backing(), 0);
        d.insert("old", 10);
        d.insert("new", 3 * HOUR_MS);
        let ch = d.take_changes(1);
        assert_eq!(d.len(), 2, "not durable yet");
        store.write_batch(&CheckpointBatch { seq: 1, dedup: ch, ..Default::default() }).unwrap();
        let _ = d.take_changes(2);
        assert_eq!(d.len(), 0, "durable: read from the backing from now on");
        assert!(d.contains("old") && d.contains("new") && !d.contains("other"));
        // A restart after a checkpoint that forgot hour 0: the store may still hold "old".
        let mut again = Dedup::new(0);
        again.restore(Some(1), Some(3 * HOUR_MS), store.backing(), 0);
        assert!(!again.contains("old"), "a forgotten hour does not count, stored or not");
        assert!(again.contains("new"));
    }

    /// One step of a run: an event (an id from a small set, so that copies come, and an
    /// offset of its time from the run's clock), a checkpoint, or a restart.
    #[derive(Debug, Clone)]
    enum Step {
        Event(u16, i64),
        Checkpoint { durable_now: bool },
        Restart,
    }

    fn steps() -> impl proptest::strategy::Strategy<Value = Vec<Step>> {
        use proptest::prelude::*;
        let step = prop_oneof![
            20 => (0u16..400, -2 * HOUR_MS..HOUR_MS / 2).prop_map(|(id, dt)| Step::Event(id, dt)),
            2 => any::<bool>().prop_map(|durable_now| Step::Checkpoint { durable_now }),
            1 => Just(Step::Restart),
        ];
        proptest::collection::vec(step, 1..600)
    }

    /// A checkpoint of both caches, as the processor takes it: forget by the watermark, then
    /// take the changes. Returns the cache's batch (the model's has nothing to write).
    fn checkpoint(
        model: &mut Dedup,
        d: &mut Dedup,
        batch: u64,
        max_time: Option<i64>,
    ) -> crate::state::CheckpointBatch {
        let watermark = max_time.map(|t| t - HOUR_MS);
        model.expire(watermark);
        d.expire(watermark);
        let _ = model.take_changes(batch);
        crate::state::CheckpointBatch {
            seq: batch,
            dedup: d.take_changes(batch),
            ..Default::default()
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]
        /// A cache over a store, as small as a shard table gets, shrinking, restarted, its
        /// batches written late, answers every lookup as memory alone does.
        #[test]
        fn a_bounded_cache_over_a_store_answers_as_memory_alone(
            run in steps(),
            slots in proptest::sample::select(vec![0usize, 16 * 16, 16 * 64]),
        ) {
            use crate::state::{CheckpointBatch, StateStore};
            const HORIZON: i64 = 3 * HOUR_MS;
            let mut store = crate::state::memory::MemoryStore::default();
            let budget = slots * SLOT_BYTES;
            let mut model = Dedup::new(HORIZON);
            let mut d = Dedup::new(HORIZON);
            d.restore(None, None, store.backing(), budget);
            let (mut clock, mut max_time, mut batch) = (10 * HOUR_MS, None::<i64>, 0u64);
            let mut unwritten: Vec<CheckpointBatch> = Vec::new();
            for step in run {
                match step {
                    Step::Event(id, dt) => {
                        clock += 60_000;
                        let (id, t) = (format!("m-{id}"), clock + dt);
                        let seen = model.contains(&id);
                        proptest::prop_assert_eq!(d.contains(&id), seen, "{}", id);
                        if !seen {
                            model.insert(&id, t);
                            d.insert(&id, t);
                            max_time = max_time.max(Some(t));
                        }
                    }
                    Step::Checkpoint { durable_now } => {
                        batch += 1;
                        unwritten.push(checkpoint(&mut model, &mut d, batch, max_time));
                        if durable_now {
                            for b in unwritten.drain(..) {
                                store.write_batch(&b).unwrap();
                            }
                        }
                    }
                    Step::Restart => {
                        // From the last checkpoint, made durable first: the ids accepted since
                        // are gone with the process (their events come again).
                        batch += 1;
                        unwritten.push(checkpoint(&mut model, &mut d, batch, max_time));
                        for b in unwritten.drain(..) {
                            store.write_batch(&b).unwrap();
                        }
                        let forgotten = d.forgotten_before();
                        // A new process numbers its batches from 1 again: its store handle
                        // starts with none durable.
                        let ids = store.read_all().unwrap().ids.into_iter().collect::<Ids>();
                        store = crate::state::memory::MemoryStore::default();
                        let all = CheckpointBatch { dedup: DedupChanges { inserts: ids }, ..Default::default() };
                        store.write_batch(&all).unwrap();
                        d = Dedup::new(HORIZON);
                        d.restore(forgotten, max_time, store.backing(), budget);
                        batch = 0;
                        model.next_batch = 0;
                    }
                }
            }
            for id in 0..400 {
                let id = format!("m-{id}");
                proptest::prop_assert_eq!(d.contains(&id), model.contains(&id), "{}", id);
            }
        }
    }
}
