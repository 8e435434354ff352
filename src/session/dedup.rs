//! Dedup by message id over a horizon of event time.
//!
//! An id is remembered with its event time until the watermark has moved `horizon` past it.
//! With `horizon ≥ allowed lateness`, forgetting loses nothing: any later copy of a forgotten
//! id is older than the watermark and would be refused as late anyway.

mod ids;

pub use ids::Ids;

use super::Backing;
use compact_str::CompactString;
use rustc_hash::FxHashMap;
use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

/// Ids are forgotten by whole hours of event time, so that the state store drops them with
/// one range delete.
pub const HOUR_MS: i64 = 3_600_000;

/// Remembered message ids.
///
/// With a [`Backing`], memory is a cache of at most `budget` bytes of ids: those of batches not
/// durable yet always, and the newest hours of the rest. Memory holds *every* remembered id of
/// the hours from `disk_only_below` on, so an id missing from memory is looked up in the
/// backing only if some hour before that is not forgotten yet (whose bloom filters answer
/// "never seen" — almost every id — without reading a block). After a restart, memory starts
/// empty and the backing answers until the hours of before the restart are forgotten. Exact
/// either way: memory and filters only ever save a read.
#[derive(Default)]
pub struct Dedup {
    horizon: i64,
    /// id → (event time, the batch that carries it). Ids up to 24 bytes are stored inline.
    ids: FxHashMap<CompactString, (i64, u64)>,
    /// Ids accepted since the last batch was taken, for the next one (no scan of the table).
    fresh: Ids,
    /// The number the next batch will have.
    next_batch: u64,
    /// Hours before this one are forgotten.
    forgotten_before: Option<i64>,
    backing: Option<Arc<dyn Backing>>,
    /// Ids of hours before this one may be in the backing only.
    disk_only_below: i64,
    /// Ids the cache may hold: the table is sized for them once, so that it never doubles
    /// (a doubling holds the old and the new table at once) while within its budget.
    limit: usize,
    /// How many ids memory holds of each hour, kept as ids come and go: which hours a shrink
    /// drops is chosen without a pass over the cache (measured: such a pass was 45–85 ms of a
    /// checkpoint's pause at 1.7M ids). A guide only: what memory must hold is decided by
    /// `disk_only_below`, not by these numbers.
    held: BTreeMap<i64, i64>,
    /// Ids of the current interval that replaced a forgotten copy of themselves: the copies'
    /// hours, counted out at the next batch (the new ids are counted in from `fresh` then).
    fresh_hours: Vec<(i64, i64)>,
    /// Per batch not known durable yet: its ids by hour (not evictable).
    unsettled: VecDeque<(u64, Vec<(i64, i64)>)>,
}

/// Adds `n` to `hour` in a short list of hours (the newest hours come last and are met first).
fn tally(hours: &mut Vec<(i64, i64)>, hour: i64, n: i64) {
    match hours.iter_mut().rev().find(|(h, _)| *h == hour) {
        Some((_, c)) => *c += n,
        None => hours.push((hour, n)),
    }
}

/// Memory of one slot of the table: the id (inline up to 24 bytes), its time and batch, and a
/// control byte.
const SLOT_BYTES: usize = std::mem::size_of::<(CompactString, (i64, u64))>() + 1;

impl std::fmt::Debug for Dedup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dedup")
            .field("in_memory", &self.ids.len())
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
        Dedup { horizon, ..Dedup::default() }
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
        self.disk_only_below = max_time.map_or(i64::MIN, |t| t.div_euclid(HOUR_MS) + 1);
        self.backing = Some(backing);
        // The table has a power of two of slots, filled to 7/8 at most.
        let slots = budget / SLOT_BYTES;
        self.limit = if slots < 16 { 0 } else { (1usize << slots.ilog2()) / 8 * 7 };
        self.ids.reserve(self.limit);
    }

    /// Whether `id` was accepted before.
    #[must_use]
    pub fn contains(&self, id: &str) -> bool {
        let cut = self.forgotten_before.unwrap_or(i64::MIN);
        if let Some((t, _)) = self.ids.get(id) {
            // With a backing, forgotten hours leave memory lazily (see `expire`).
            return t.div_euclid(HOUR_MS) >= cut;
        }
        let Some(b) = &self.backing else { return false };
        if cut >= self.disk_only_below {
            return false; // memory holds every id not forgotten
        }
        b.id_time(id).is_some_and(|t| t.div_euclid(HOUR_MS) >= cut)
    }

    /// Remembers an accepted id.
    pub fn insert(&mut self, id: &str, time: i64) {
        self.fresh.push(id, time);
        if let Some((was, _)) = self.ids.insert(id.into(), (time, self.next_batch.max(1))) {
            // A copy of a forgotten hour that memory still held.
            tally(&mut self.fresh_hours, was.div_euclid(HOUR_MS), -1);
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
        self.ids.len()
    }

    /// Whether no id is remembered.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
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
            self.ids.retain(|_, (t, _)| t.div_euclid(HOUR_MS) >= before);
            self.held = self.held.split_off(&before);
        }
        self.forgotten_before = Some(before);
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
        // Counted here, in the pass the batch makes anyway, not per event.
        let mut hours = std::mem::take(&mut self.fresh_hours);
        let mut forgotten = false;
        for (_, t) in inserts.iter() {
            let hour = t.div_euclid(HOUR_MS);
            tally(&mut hours, hour, 1);
            forgotten |= hour < cut;
        }
        if forgotten {
            inserts.retain(|_, t| t.div_euclid(HOUR_MS) >= cut);
        }
        debug_assert!(self.next_batch.max(1) == batch, "batches are numbered in order");
        self.next_batch = batch + 1;
        for &(h, n) in &hours {
            *self.held.entry(h).or_default() += n;
        }
        if let Some(b) = &self.backing {
            let durable = b.durable();
            self.unsettled.retain(|(carried, _)| *carried > durable);
            self.unsettled.push_back((batch, hours));
            // Room for the next interval's ids before the table would have to grow. The room is
            // what the table says it has (`capacity − len`): the slots of removed ids stay used
            // (tombstones) until it rehashes.
            let room = self.ids.capacity() - self.ids.len();
            if self.ids.len() > self.limit / 8 * 7 || room < self.limit / 8 {
                self.shrink(durable);
                self.rehash();
            }
        }
        DedupChanges { inserts }
    }

    /// Drops the oldest hours of durable ids until the cache is within budget (ids not durable
    /// stay whatever their hour); memory then holds every id only from the first hour kept.
    fn shrink(&mut self, durable: u64) {
        let mut evictable = self.held.clone();
        for (_, hours) in &self.unsettled {
            for &(h, n) in hours {
                *evictable.entry(h).or_default() -= n;
            }
        }
        // Down to three eighths of the table, so that this pass runs now and then, not at every
        // checkpoint once the cache is full, and so that the table can be rehashed in place.
        let mut over = self.ids.len().saturating_sub(self.limit / 8 * 3);
        if over == 0 {
            return; // only the removed ids' tombstones were in the way: `rehash` is enough
        }
        let mut below = i64::MIN;
        for (hour, n) in evictable {
            below = hour + 1;
            over = over.saturating_sub(usize::try_from(n).unwrap_or(0));
            if over == 0 {
                break;
            }
        }
        if below == i64::MIN {
            return;
        }
        let cut = self.forgotten_before.unwrap_or(i64::MIN);
        let mut gone: Vec<(i64, i64)> = Vec::new();
        self.ids.retain(|_, (t, carried)| {
            let hour = t.div_euclid(HOUR_MS);
            let keep = hour >= cut && (*carried > durable || hour >= below);
            if !keep {
                tally(&mut gone, hour, 1);
            }
            keep
        });
        for (h, n) in gone {
            if let Some(c) = self.held.get_mut(&h) {
                *c -= n;
            }
        }
        self.held.retain(|_, c| *c > 0);
        self.disk_only_below = self.disk_only_below.max(below);
    }

    /// Removed ids leave tombstones: once they use up the table's room, a table more than half
    /// full doubles (its budget with it) where one at most half full is rehashed in place.
    /// Rehashed after a shrink, while it is at most half full (measured before: 1.6 M slots of
    /// room became 3.7 M).
    fn rehash(&mut self) {
        let half = (self.limit / 2).saturating_sub(self.ids.len());
        if self.ids.capacity() - self.ids.len() < half {
            self.ids.reserve(half);
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

    /// The ids memory holds, by hour, counted the slow way.
    fn scanned(d: &Dedup) -> BTreeMap<i64, i64> {
        let mut by_hour = BTreeMap::new();
        for (t, _) in d.ids.values() {
            *by_hour.entry(t.div_euclid(HOUR_MS)).or_default() += 1;
        }
        by_hour
    }

    #[test]
    fn the_hours_memory_holds_are_counted_as_ids_come_and_go() {
        use crate::state::{CheckpointBatch, StateStore};
        let mut store = crate::state::memory::MemoryStore::default();
        let mut d = Dedup::new(0);
        // Room for ~900 ids: a shrink every dozen batches, forgotten ids held in between.
        d.restore(None, None, store.backing(), 2000 * SLOT_BYTES);
        let (mut shrunk, mut replaced) = (false, 0);
        for batch in 1..=80u64 {
            let base = i64::try_from(batch).unwrap() * HOUR_MS / 4;
            for i in 0..60i64 {
                d.insert(&format!("{batch}-{i}"), base + i * 1000);
            }
            // An id of an hour forgotten but still held comes again, a later time.
            if let Some(cut) = d.forgotten_before() {
                let old = d.ids.iter().find(|(_, (t, _))| t.div_euclid(HOUR_MS) < cut);
                if let Some((id, t)) = old.map(|(k, (t, _))| (k.to_string(), *t)) {
                    assert!(!d.contains(&id));
                    d.insert(&id, t + 5 * HOUR_MS);
                    replaced += 1;
                }
            }
            d.expire(Some(base - HOUR_MS));
            let before = d.len();
            let ch = d.take_changes(batch);
            shrunk |= d.len() < before;
            let mut held = d.held.clone();
            held.retain(|_, c| *c != 0);
            assert_eq!(held, scanned(&d), "batch {batch}");
            store
                .write_batch(&CheckpointBatch { seq: batch, dedup: ch, ..Default::default() })
                .unwrap();
        }
        assert!(shrunk, "the cache never shrank: the test shows nothing");
        assert!(replaced > 0, "no forgotten id came again");
    }

    #[test]
    fn a_full_cache_shrinks_within_its_table_and_never_doubles_it() {
        use crate::state::{CheckpointBatch, StateStore};
        let mut store = crate::state::memory::MemoryStore::default();
        let mut d = Dedup::new(100 * HOUR_MS);
        d.restore(None, None, store.backing(), 40_000 * SLOT_BYTES);
        let room = d.ids.capacity();
        let mut shrinks = 0;
        for batch in 1..=200u64 {
            let hour = i64::try_from(batch).unwrap() / 4 * HOUR_MS;
            for i in 0..2_000i64 {
                d.insert(&format!("{batch}-{i}"), hour + i);
            }
            let before = d.len();
            let ch = d.take_changes(batch);
            shrinks += usize::from(d.len() < before);
            store
                .write_batch(&CheckpointBatch { seq: batch, dedup: ch, ..Default::default() })
                .unwrap();
            // Hashbrown leaves tombstones where a shrink removed ids (its capacity counts them
            // out); a table filled past half with ids grows (doubles) instead of rehashing in
            // place once they use up its room.
            let now = d.ids.capacity();
            assert!(now <= room, "batch {batch}: the table outgrew its budget: {room} -> {now}");
        }
        assert!(shrinks > 3, "the cache shrank {shrinks} times: the test shows nothing");
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
}
