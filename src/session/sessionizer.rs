//! The open sessions of every customer: a bounded cache in front of durable state.
//!
//! With a [`Backing`], memory holds only the customers touched lately. A customer not in memory
//! is read from the backing on its next event; one whose entry is clean (not changed since it
//! was last written, and that write durable) may be evicted, second-chance (CLOCK) order, when
//! the cache passes its byte budget. Changed entries stay until the batch that carries them is
//! durable — including the empty entries of customers whose last session closed — so the
//! backing is never read for a customer whose newest state it does not hold yet.
//!
//! Closing by watermark never scans all customers: the candidates are the customers whose
//! first open session *as last written* ends before the cutoff (the store's index by end time),
//! plus those changed since (their index entry may be stale or missing). Cutoffs only rise and
//! a new session never ends before the watermark, so each scan starts where the last one
//! stopped. Without a backing everything stays in memory and a close looks at every customer.

use super::{Backing, EventAttr, Key, Observed, Session};
use crate::extract::catalog::Aggregate;
use indexmap::IndexMap;
use rustc_hash::{FxBuildHasher, FxHashSet};
use std::collections::VecDeque;
use std::sync::Arc;

mod close;

#[derive(Debug, Default)]
struct Customer {
    /// Sorted by start; consecutive sessions are more than `gap` apart (and ends are sorted too).
    /// Shared with the batch that carries them ([`Sessionizer::take_changes`] hands out the
    /// `Arc`, not a copy): a change clones them only while that batch is still being written.
    sessions: Arc<Vec<Session>>,
    /// Its place in [`Sessionizer::touched`] while changed since the last
    /// [`Sessionizer::take_changes`]; [`CLEAN`] otherwise.
    touched_at: usize,
    /// The batch that last carried this entry; evictable once that batch is durable.
    batch: u64,
    /// The first session's end as the index holds it (after the batches taken so far).
    indexed: Option<i64>,
    /// The first session's end now (`None`: no open session). Kept here so that the pause
    /// (closing the changed customers, taking the changes) and eviction do not read each
    /// session vector, a cache miss each (measured: most of the pause at 1 M customers).
    first: Option<i64>,
    /// Used since the clock hand last passed.
    used: bool,
    /// Approximate bytes held.
    cost: usize,
}

impl Customer {
    fn dirty(&self) -> bool {
        self.touched_at != CLEAN
    }

    fn cost_of(key: &str, sessions: &Vec<Session>) -> usize {
        // The map's entry and index slot with the map's spare room (~2×: it doubles), the key's
        // allocation (past 24 bytes; shorter keys are inline), and each session the vector has
        // room for, with a share for attributes
        // (measured: 950k cached customers held ~1 GB while estimated at 100 MB before).
        2 * (std::mem::size_of::<(u64, Key, Customer)>() + 16)
            + if key.len() > 24 { key.len().next_multiple_of(16) } else { 0 }
            + sessions.capacity() * (std::mem::size_of::<Session>() + 32)
    }
}

/// Counts `c`'s bytes again after its sessions changed, into the cache's `bytes`: where they
/// change, so that the cache's count is right at once (a new customer's first session is most
/// of its bytes) and taking the changes in the pause reads no session vector (a cache miss per
/// customer there; measured: running pause p50 25-27 -> 22-23 ms at 1 M customers).
fn recount(bytes: &mut usize, key: &str, c: &mut Customer) {
    let cost = Customer::cost_of(key, &c.sessions);
    *bytes = *bytes - c.cost + cost;
    c.cost = cost;
}

/// [`Customer::touched_at`] of an entry not changed since the last batch.
const CLEAN: usize = usize::MAX;

/// Entries evicted at most per customer read in (once they freed its bytes), and when a batch
/// is taken. A batch made durable can make a third of the cache evictable at once: evicted in
/// one go, that was about a fifth of the checkpoint's pause at 1 M customers (34 k entries,
/// 9 ms). The cache stays over its budget meanwhile by no more than it already was, and each
/// read takes it closer.
const EVICT_PER_READ: usize = 2;
pub(super) const EVICT_PER_BATCH: usize = 4096;

/// A batch taken but not known durable yet: the index entries of its customers may be stale.
#[derive(Debug)]
struct Pending {
    batch: u64,
    /// Its customers with open sessions, with their first session's end (as the batch writes
    /// it; a customer changed since is in `touched`); sorted by it once `sorted`.
    by_end: Vec<(i64, Key)>,
    /// Sorted by the first close that needs it, between checkpoints, not in the pause that
    /// takes the batch.
    sorted: bool,
    /// Those before it were visited by a close: each had its first session closed, and what
    /// is left of it is indexed by a later batch or changed since.
    next: usize,
}

impl Pending {
    fn sort(&mut self) {
        if !self.sorted {
            self.by_end.sort_unstable_by_key(|(end, _)| *end);
            self.sorted = true;
        }
    }

    /// The lowest end not visited yet.
    fn lowest(&self) -> Option<i64> {
        if self.sorted {
            self.by_end.get(self.next).map(|(end, _)| *end)
        } else {
            self.by_end.iter().map(|(end, _)| *end).min()
        }
    }
}

/// Open sessions of every customer, and the watermark.
pub struct Sessionizer {
    gap: i64,
    lateness: i64,
    max_time: Option<i64>,
    customers: IndexMap<Key, Customer, FxBuildHasher>,
    /// Cache indexes of the customers changed since the last checkpoint (each once). An index
    /// and not the key: the checkpoint visits each of them twice (close, take), and a key is a
    /// hash, a probe and a compare each time (measured: most of a checkpoint's pause at 100k
    /// customers changed). An eviction that moves a changed entry updates its slot here.
    touched: Vec<usize>,
    /// Batches taken but not known durable yet, oldest first.
    pending: VecDeque<Pending>,
    /// Number of the last batch taken.
    batch: u64,
    backing: Option<Arc<dyn Backing>>,
    /// Byte budget of the cache, and what it holds now.
    budget: usize,
    bytes: usize,
    /// The clock hand, and the durable batch at which a whole turn last found nothing to evict
    /// (eviction waits until a later batch is durable).
    hand: usize,
    stuck: Option<u64>,
    /// Index scans start here: every customer whose exact index entry (durable, and not
    /// changed since) is below has nothing left to close. A batch that becomes durable may
    /// index customers below it: [`Sessionizer::settle`] moves it back then.
    scanned_to: i64,
    /// While an index scan runs: the durable batch when its snapshot was taken, and the
    /// customers evicted since whose entry a later batch carried (the snapshot's copy of them
    /// is stale: they are read again, not taken from the scan).
    scan_from: Option<u64>,
    evicted_since_scan: FxHashSet<Key>,
    open_sessions: u64,
    open_customers: u64,
    /// Index of the schema set extracting the events observed now.
    schema_set: u32,
    /// The fold of each attribute number, for merging sessions.
    folds: Vec<Aggregate>,
}

impl std::fmt::Debug for Sessionizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sessionizer")
            .field("max_time", &self.max_time)
            .field("cached", &self.customers.len())
            .field("open_sessions", &self.open_sessions)
            .finish_non_exhaustive()
    }
}

/// What changed since the last checkpoint, for write-back to the state store. In no particular
/// order: a store that writes faster in key order sorts on its own thread, not in the pause.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct SessionChanges {
    /// Customers whose open sessions changed, with their sessions now.
    pub upserts: Vec<(Key, Arc<Vec<Session>>)>,
    /// Customers with no open session any more.
    pub deletes: Vec<Key>,
    /// Index entries (customer, first session's end) that no longer hold; the store indexes
    /// each upsert under its first session's end.
    pub unindex: Vec<(Key, i64)>,
}

impl Sessionizer {
    /// A sessionizer with inactivity `gap` and `lateness`, both in milliseconds.
    #[must_use]
    pub fn new(gap: i64, lateness: i64) -> Self {
        Sessionizer {
            gap,
            lateness,
            max_time: None,
            customers: IndexMap::default(),
            touched: Vec::new(),
            pending: VecDeque::new(),
            batch: 0,
            backing: None,
            budget: usize::MAX,
            bytes: 0,
            hand: 0,
            stuck: None,
            scanned_to: i64::MIN,
            scan_from: None,
            evicted_since_scan: FxHashSet::default(),
            open_sessions: 0,
            open_customers: 0,
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

    /// Continues from durable state: `backing` holds the sessions (read on demand), the
    /// numbers come from the checkpoint record. The cache holds at most about `budget` bytes
    /// of entries that are durable.
    pub fn restore(
        &mut self,
        max_time: Option<i64>,
        open: (u64, u64),
        backing: Arc<dyn Backing>,
        budget: usize,
    ) {
        self.max_time = max_time;
        (self.open_sessions, self.open_customers) = open;
        self.backing = Some(backing);
        self.budget = budget;
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

    /// Number of open sessions.
    #[must_use]
    pub fn open_sessions(&self) -> u64 {
        self.open_sessions
    }

    /// Number of customers with an open session.
    #[must_use]
    pub fn open_customers(&self) -> u64 {
        self.open_customers
    }

    /// Customers held in memory now.
    #[must_use]
    pub fn cached(&self) -> usize {
        self.customers.len()
    }

    /// Bytes the cache counts itself to hold now, and the same counted afresh.
    #[cfg(test)]
    pub(crate) fn held_bytes(&self) -> (usize, usize) {
        let afresh = self.customers.iter().map(|(k, c)| Customer::cost_of(k, &c.sessions)).sum();
        (self.bytes, afresh)
    }

    /// Adds one event of kind number `kind` (`None`: unclassified) with its attribute values.
    ///
    /// # Panics
    /// Never: the cache index comes from the map just before it is used.
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
        let set = self.schema_set;
        let i = self.slot(customer);
        let c = &mut self.customers[i];
        c.used = true;
        if !c.dirty() {
            c.touched_at = self.touched.len();
            self.touched.push(i);
        }
        let s = Arc::make_mut(&mut c.sessions);
        let before = s.len();
        // Sessions this event touches form a contiguous run [lo, hi).
        let lo = s.partition_point(|x| x.end.saturating_add(gap) < time);
        let hi = s.partition_point(|x| x.start.saturating_sub(gap) <= time);
        if lo >= hi {
            let mut new = Session::new(time, set);
            new.observe(time, kind, attrs, set);
            // One more slot, not the doubling's four: most customers hold one session
            // (measured, 5 M events / 10 M customers: peak RSS 813 MiB with four, 727 MiB with
            // one, when the room was counted only at the next checkpoint).
            s.reserve_exact(1);
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
        let after = s.len();
        c.first = s.first().map(|x| x.end);
        recount(&mut self.bytes, customer, c);
        self.open_sessions = self.open_sessions + after as u64 - before as u64;
        if before == 0 {
            self.open_customers += 1;
        }
        Observed::Accepted
    }

    /// The cache index of `customer`, read from the backing (or created empty) if absent.
    fn slot(&mut self, customer: &str) -> usize {
        if let Some(i) = self.customers.get_index_of(customer) {
            return i;
        }
        let sessions = self.backing.as_ref().and_then(|b| b.sessions(customer)).unwrap_or_default();
        self.insert(customer, sessions)
    }

    /// Caches `customer` (not cached) with its durable `sessions`; returns its cache index.
    fn insert(&mut self, customer: &str, sessions: Vec<Session>) -> usize {
        let cost = Customer::cost_of(customer, &sessions);
        let indexed = sessions.first().map(|s| s.end);
        self.bytes += cost;
        // Room is made before the entry goes in, so that it cannot be the one evicted: at least
        // its own bytes and one entry more, so an excess that a batch made evictable at once
        // (see `take_changes`) goes over the next interval's reads, not in the pause.
        if self.bytes > self.budget && self.may_evict() {
            self.evict(EVICT_PER_READ, cost);
        }
        let c = Customer {
            sessions: Arc::new(sessions),
            touched_at: CLEAN,
            batch: 0,
            indexed,
            first: indexed,
            used: true,
            cost,
        };
        self.customers.insert_full(customer.into(), c).0
    }

    fn may_evict(&self) -> bool {
        let durable = self.backing.as_ref().map_or(0, |b| b.durable());
        self.backing.is_some() && self.stuck.is_none_or(|d| durable > d)
    }

    /// Evicts clean, durable entries in second-chance order until the cache is within budget,
    /// or `most` of them once they freed `need` bytes.
    fn evict(&mut self, most: usize, need: usize) {
        let durable = self.backing.as_ref().map_or(0, |b| b.durable());
        self.stuck = None;
        let (mut passed, mut evicted, mut freed) = (0usize, 0usize, 0usize);
        while self.bytes > self.budget && (evicted < most || freed < need) {
            let n = self.customers.len();
            if passed > 2 * n || n == 0 {
                // Everything left is changed or not yet durable: wait for the next batch.
                self.stuck = Some(durable);
                return;
            }
            if self.hand >= n {
                self.hand = 0;
            }
            let (_, c) = self.customers.get_index_mut(self.hand).expect("hand is in range");
            passed += 1;
            if c.dirty() || c.batch > durable {
                self.hand += 1;
            } else if c.used && c.first.is_some() {
                // A customer without open sessions gets no second chance: it saves only a
                // read that the bloom filter mostly answers.
                c.used = false;
                self.hand += 1;
            } else {
                evicted += 1;
                freed += c.cost;
                self.bytes -= c.cost;
                if self.scan_from.is_some_and(|from| c.batch > from) {
                    let key = self.customers.get_index(self.hand).map(|(k, _)| k.clone());
                    self.evicted_since_scan.extend(key);
                }
                // The last entry moves into the hole, which the hand looks at next.
                self.customers.swap_remove_index(self.hand);
                if let Some(moved) = self.customers.get_index(self.hand).map(|(_, c)| c.touched_at)
                    && moved != CLEAN
                {
                    self.touched[moved] = self.hand;
                }
            }
        }
    }

    /// Lets go of the store, so that it can close while the cache is still held (see
    /// [`crate::processor::Processor::release`]); nothing is read from it after.
    pub fn detach(&mut self) {
        self.backing = None;
    }

    /// Takes what changed since the last call, for the checkpoint batch number `batch`.
    pub fn take_changes(&mut self, batch: u64) -> SessionChanges {
        self.batch = batch;
        let mut touched = std::mem::take(&mut self.touched);
        touched.sort_unstable(); // in cache order (see `close_where`); sorted but for a few
        debug_assert!(touched.windows(2).all(|w| w[0] < w[1]), "each changed customer once");
        // Sized up front: grown by doubling, these were copied into freshly zeroed pages.
        let mut ch =
            SessionChanges { upserts: Vec::with_capacity(touched.len()), ..Default::default() };
        let mut by_end = Vec::with_capacity(touched.len());
        // Customers in chunks: first a plain load of each one's entry and sessions, loads
        // independent of each other that the CPU has in flight at once, then the increments of
        // the sessions' counts, which now find their lines in the cache. An atomic increment
        // that misses waits for its line and lets no later load pass it: one after the other,
        // the misses were half of this loop (running pause p50/p90/max at 1 M customers,
        // 112 k changed: 20/39/69 ms before, 15/30/35 ms after).
        for chunk in touched.chunks(32) {
            let warm = chunk.iter().filter_map(|&i| self.customers.get_index(i));
            std::hint::black_box(warm.fold(0, |x, (_, c)| x ^ Arc::strong_count(&c.sessions)));
            for &i in chunk {
                let Some((key, c)) = self.customers.get_index_mut(i) else { continue };
                c.touched_at = CLEAN;
                c.batch = batch;
                let first = c.first;
                if first.is_none() {
                    ch.deletes.push(key.clone());
                } else {
                    ch.upserts.push((key.clone(), Arc::clone(&c.sessions)));
                }
                if let Some(was) = c.indexed.filter(|&e| Some(e) != first) {
                    ch.unindex.push((key.clone(), was));
                }
                c.indexed = first;
                if let Some(end) = first {
                    by_end.push((end, key.clone()));
                }
            }
        }
        match &self.backing {
            Some(b) => {
                let durable = b.durable();
                self.settle(durable);
                self.pending.push_back(Pending { batch, by_end, sorted: false, next: 0 });
                if self.bytes > self.budget && self.may_evict() {
                    self.evict(EVICT_PER_BATCH, 0);
                }
            }
            None => {
                // Nothing reads them back: customers without sessions go.
                for key in &ch.deletes {
                    if let Some(c) = self.customers.swap_remove(&**key) {
                        self.bytes -= c.cost;
                    }
                }
            }
        }
        ch
    }
}
