//! `RocksDB` [`StateStore`]: one column family per record kind, one synced `WriteBatch` per
//! checkpoint, and the on-demand reads of the pipeline ([`Reader`]).
//!
//! - `sessions`: customer id → its open sessions.
//! - `closing`: end of the customer's first open session ‖ customer id → its sessions (the
//!   same value as in `sessions`, written in the same batch). The index the watermark closes
//!   by: a checkpoint reads the range that may close, never the table, and the sessions it
//!   closes come with the scan instead of a read each. (Stores written before carry no value
//!   there: those customers are read.)
//! - `ids`: hash ‖ message id → event time. One key each, so a lookup is one point read that
//!   the bloom filters answer without a block read for ids never seen (almost all of them).
//!   The hash prefix spreads ids that producers number in sequence: monotone keys would make
//!   every flush a file that compaction only moves, never merges (nor filters), so their count
//!   and the snapshot's would grow with the run.
//!   Forgetting is logical — readers ignore ids of hours before the checkpoint's cutoff — and
//!   physical at compaction: a compaction filter drops them once the cutoff is durable.
//! - `meta`: the checkpoint record.

mod migrate;
mod tune;

pub use tune::MemoryBudget;

use super::{CheckpointBatch, Contents, Meta, STATE_VERSION, StateError, StateStore, format};
use crate::session::backing::Stored;
use crate::session::dedup::HOUR_MS;
use crate::session::{Backing, Key, Session};
use rocksdb::{DB, IteratorMode, ReadOptions, WriteBatch, WriteOptions};
use std::path::Path;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

const CF_META: &str = "meta";
const CF_SESSIONS: &str = "sessions";
const CF_CLOSING: &str = "closing";
const CF_IDS: &str = "ids";
const META_KEY: &[u8] = b"checkpoint";

/// What the store and its readers share.
#[derive(Debug)]
struct Shared {
    path: String,
    /// The last batch number written.
    durable: AtomicU64,
    /// The durable dedup cutoff (an hour), for the compaction filter.
    cutoff: Arc<AtomicI64>,
    /// The first read failure not yet reported.
    error: Mutex<Option<String>>,
}

/// State in a `RocksDB` directory.
pub struct RocksDbStore {
    db: Arc<DB>,
    shared: Arc<Shared>,
    budget: MemoryBudget,
    /// What this store's tables hold of filters and indexes, in `budget`'s account.
    tables: Arc<AtomicU64>,
    /// The order a batch's ids are written in, kept for the next batch.
    id_order: Vec<(u64, usize)>,
}

impl std::fmt::Debug for RocksDbStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RocksDbStore").field("path", &self.shared.path).finish_non_exhaustive()
    }
}

impl RocksDbStore {
    /// Opens (creating if needed) the store in `dir` with the default memory budget.
    ///
    /// # Errors
    /// `RocksDB` cannot open the directory (missing permissions, locked by another process, …).
    pub fn open(dir: &Path) -> Result<Self, StateError> {
        Self::open_with(dir, &MemoryBudget::default())
    }

    /// Opens (creating if needed) the store in `dir`; its block cache and write buffers take
    /// their share of `budget`. A store of the previous layout is migrated first.
    ///
    /// # Errors
    /// `RocksDB` cannot open the directory, or the store is of an unknown version.
    pub fn open_with(dir: &Path, budget: &MemoryBudget) -> Result<Self, StateError> {
        let path = dir.display().to_string();
        let cutoff = Arc::new(AtomicI64::new(i64::MIN));
        let (opts, cfs) = tune::options(budget, &cutoff);
        let legacy = migrate::legacy_families(&opts, dir);
        let descriptors = cfs.into_iter().chain(legacy.iter().map(|n| tune::plain(n, budget)));
        let mut db = DB::open_cf_descriptors(&opts, dir, descriptors).map_err(|source| {
            if source.as_ref().contains("LOCK") {
                StateError::Locked { path: path.clone() }
            } else {
                StateError::Rocks { path: path.clone(), source }
            }
        })?;
        migrate::run(&mut db, &path, &legacy)?;
        let shared =
            Arc::new(Shared { path, durable: AtomicU64::new(0), cutoff, error: Mutex::new(None) });
        let store = RocksDbStore {
            db: Arc::new(db),
            shared,
            budget: budget.clone(),
            tables: budget.table_slot(),
            id_order: Vec::new(),
        };
        if let Some(h) = store.meta()?.and_then(|m| m.forgotten_before) {
            store.shared.cutoff.store(h, Ordering::Release);
        }
        store.charge_tables();
        Ok(store)
    }

    /// Charges the filters and indexes the open tables hold against the budget (they change
    /// with flushes and compactions; measured at each checkpoint). Returns the block cache's
    /// capacity after.
    fn charge_tables(&self) -> u64 {
        let held: u64 = [CF_META, CF_SESSIONS, CF_CLOSING, CF_IDS]
            .iter()
            .filter_map(|name| self.db.cf_handle(name))
            .filter_map(|cf| {
                self.db.property_int_value_cf(cf, "rocksdb.estimate-table-readers-mem").ok()?
            })
            .sum();
        self.budget.charge_tables(&self.tables, held)
    }

    /// Writes a consistent copy of the store into `dir` (which must not exist): hard links of
    /// the immutable files plus a copy of the rest, taken under `RocksDB`'s own checkpoint.
    ///
    /// # Errors
    /// `RocksDB` cannot create the checkpoint.
    pub fn snapshot_into(&self, dir: &Path) -> Result<(), StateError> {
        let cp = rocksdb::checkpoint::Checkpoint::new(&self.db).map_err(self.rocks())?;
        // Flush first so that the snapshot holds no write-ahead log to replay.
        cp.create_checkpoint_with_log_size(dir, 0).map_err(self.rocks())
    }

    fn rocks(&self) -> impl Fn(rocksdb::Error) -> StateError + '_ {
        |source| StateError::Rocks { path: self.shared.path.clone(), source }
    }

    fn corrupt(&self, what: &'static str) -> impl Fn(postcard::Error) -> StateError + '_ {
        move |source| StateError::Corrupt { path: self.shared.path.clone(), what, source }
    }

    fn cf(&self, name: &str) -> Result<&rocksdb::ColumnFamily, StateError> {
        cf(&self.db, &self.shared.path, name)
    }
}

fn cf<'a>(db: &'a DB, path: &str, name: &str) -> Result<&'a rocksdb::ColumnFamily, StateError> {
    // The column families are created at open; their absence means a foreign directory.
    db.cf_handle(name).ok_or_else(|| StateError::Version { path: path.to_owned(), found: 0 })
}

/// Decodes the checkpoint record, naming an unknown version as such.
fn decode_meta(path: &str, v: &[u8]) -> Result<Meta, StateError> {
    format::decode_meta(v).map_err(|e| {
        let found = format::version_of(v).unwrap_or(0);
        match e {
            Some(source) if (format::OLDEST_READABLE..=STATE_VERSION).contains(&found) => {
                StateError::Corrupt { path: path.to_owned(), what: "checkpoint", source }
            }
            _ => StateError::Version { path: path.to_owned(), found },
        }
    })
}

/// Index key: the end (sign bit flipped, so negative times order first) then the customer.
fn closing_key(end: i64, customer: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(8 + customer.len());
    closing_key_into(&mut k, closing_order(end), customer);
    k
}

/// Appends the [`closing_key`] of an end given as [`closing_order`] to `k`.
fn closing_key_into(k: &mut impl Extend<u8>, order: u64, customer: &str) {
    k.extend(order.to_be_bytes());
    k.extend(customer.bytes());
}

/// An end as the unsigned number a [`closing_key`] starts with (big-endian): in key order.
fn closing_order(end: i64) -> u64 {
    (end as u64) ^ (1 << 63)
}

/// The end a [`closing_key`] starts with.
fn closing_end(k: &[u8]) -> i64 {
    let head: [u8; 8] = k.get(..8).and_then(|h| h.try_into().ok()).unwrap_or_default();
    (u64::from_be_bytes(head) ^ (1 << 63)) as i64
}

/// Key of a message id: a stable hash (FNV-1a 64; stored, so it never changes), then the id.
fn id_key(id: &str) -> smallvec::SmallVec<[u8; 64]> {
    let mut k = smallvec::SmallVec::with_capacity(8 + id.len());
    k.extend_from_slice(&id_hash(id).to_be_bytes());
    k.extend_from_slice(id.as_bytes());
    k
}

fn id_hash(id: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in id.as_bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

fn id_time(v: &[u8]) -> Option<i64> {
    v.try_into().ok().map(i64::from_le_bytes)
}

impl StateStore for RocksDbStore {
    fn meta(&self) -> Result<Option<Meta>, StateError> {
        let Some(v) = self.db.get_pinned_cf(self.cf(CF_META)?, META_KEY).map_err(self.rocks())?
        else {
            return Ok(None);
        };
        decode_meta(&self.shared.path, &v).map(Some)
    }

    fn read_all(&self) -> Result<Contents, StateError> {
        let meta = self.meta()?;
        let mut sessions = Vec::new();
        for kv in self.db.iterator_cf(self.cf(CF_SESSIONS)?, IteratorMode::Start) {
            let (k, v) = kv.map_err(self.rocks())?;
            let s: Vec<Session> = format::decode_sessions(&v).map_err(self.corrupt("session"))?;
            sessions.push((String::from_utf8_lossy(&k).into(), s));
        }
        let cut = meta.as_ref().and_then(|m| m.forgotten_before);
        let mut ids = Vec::new();
        for kv in self.db.iterator_cf(self.cf(CF_IDS)?, IteratorMode::Start) {
            let (k, v) = kv.map_err(self.rocks())?;
            let t = id_time(&v).ok_or_else(|| StateError::Corrupt {
                path: self.shared.path.clone(),
                what: "message id",
                source: postcard::Error::DeserializeUnexpectedEnd,
            })?;
            if cut.is_none_or(|h| t.div_euclid(HOUR_MS) >= h) {
                ids.push((String::from_utf8_lossy(k.get(8..).unwrap_or_default()).into(), t));
            }
        }
        ids.sort();
        Ok(Contents { meta, sessions, ids })
    }

    fn backing(&self) -> Arc<dyn Backing> {
        Arc::new(Reader {
            db: Arc::clone(&self.db),
            shared: Arc::clone(&self.shared),
            point: ReadOptions::default(),
        })
    }

    fn write_batch(&mut self, b: &CheckpointBatch) -> Result<(), StateError> {
        let mut order = std::mem::take(&mut self.id_order);
        let (meta_cf, sess_cf, closing_cf, ids_cf) =
            (self.cf(CF_META)?, self.cf(CF_SESSIONS)?, self.cf(CF_CLOSING)?, self.cf(CF_IDS)?);
        // Every session record is encoded first, into one buffer (one allocation, not one per
        // customer), so that the batch is sized exactly: a batch of a million ids otherwise
        // grows its buffer by doubling, each step a copy into freshly faulted pages (measured:
        // most page faults of a replay).
        let enc = |e: postcard::Error| StateError::Corrupt {
            path: self.shared.path.clone(),
            what: "encoded",
            source: e,
        };
        let mut upserts: Vec<&(Key, Arc<Vec<Session>>)> = b.sessions.upserts.iter().collect();
        upserts.sort_unstable_by(|x, y| x.0.cmp(&y.0));
        let mut values = Vec::with_capacity(upserts.iter().map(|(_, v)| 2 + 64 * v.len()).sum());
        // The index is keyed by end first: in customer order its keys would land all over its
        // skip list, so they go in a pass of their own, in their own order.
        let mut index: Vec<(u64, &str, std::ops::Range<usize>)> = Vec::with_capacity(upserts.len());
        let mut put: Vec<Option<std::ops::Range<usize>>> = Vec::with_capacity(upserts.len());
        for (k, v) in &upserts {
            put.push(match v.first() {
                Some(first) => {
                    let at = values.len();
                    values = format::encode_sessions_into(v, values).map_err(enc)?;
                    index.push((closing_order(first.end), k, at..values.len()));
                    Some(at..values.len())
                }
                None => None,
            });
        }
        index.sort_unstable_by(|x, y| (x.0, x.1).cmp(&(y.0, y.1)));
        // Per entry: a tag, a family number and two lengths, a closing key's end.
        let per_entry = 1 + 5 + 5 + 5 + 8;
        let entries = b.dedup.inserts.len()
            + b.sessions.deletes.len()
            + b.sessions.unindex.len()
            + 2 * upserts.len()
            + 1;
        let keys: usize = upserts.iter().map(|(k, _)| 2 * k.len()).sum::<usize>()
            + b.sessions.unindex.iter().map(|(k, _)| k.len()).sum::<usize>()
            + b.sessions.deletes.iter().map(compact_str::CompactString::len).sum::<usize>();
        let ids_bytes = b.dedup.inserts.bytes() + b.dedup.inserts.len() * (8 + 8);
        let mut wb = WriteBatch::with_capacity_bytes(
            entries * per_entry + keys + 2 * values.len() + ids_bytes + 4096,
        );
        // Each family in key order (see the ids below); every key is in one list only, so the
        // order across lists does not matter.
        let mut deletes: Vec<&str> = b.sessions.deletes.iter().map(|k| &**k).collect();
        deletes.sort_unstable();
        for k in deletes {
            wb.delete_cf(sess_cf, k.as_bytes());
        }
        let mut key = smallvec::SmallVec::<[u8; 64]>::new();
        let mut unindex: Vec<(u64, &str)> =
            b.sessions.unindex.iter().map(|(k, end)| (closing_order(*end), &**k)).collect();
        unindex.sort_unstable();
        for (end, customer) in unindex {
            key.clear();
            closing_key_into(&mut key, end, customer);
            wb.delete_cf(closing_cf, &key);
        }
        for ((k, _), at) in upserts.iter().zip(put) {
            match at {
                Some(at) => wb.put_cf(sess_cf, k.as_bytes(), &values[at]),
                None => wb.delete_cf(sess_cf, k.as_bytes()),
            }
        }
        for (end, customer, at) in index {
            key.clear();
            closing_key_into(&mut key, end, customer);
            wb.put_cf(closing_cf, &key, &values[at]);
        }
        // In key order: the memtable's skip list then inserts each key next to the last one
        // instead of searching from its head (a third of a checkpoint's cost, unsorted). Sorted
        // as (hash, place) pairs in a vector kept from one checkpoint to the next, not as keys:
        // a fresh vector of 100 k keys was 8 MB of freshly zeroed pages at every checkpoint
        // (measured: 2 % of a one-core replay in the kernel's page clearing).
        let inserts = &b.dedup.inserts;
        order.clear();
        order.extend(inserts.iter().enumerate().map(|(i, (id, _))| (id_hash(id), i)));
        order.sort_unstable_by(|x, y| {
            x.0.cmp(&y.0).then_with(|| inserts.get(x.1).0.cmp(inserts.get(y.1).0))
        });
        // In hash order the ids are read from all over their buffer, a cache miss or two each:
        // a chunk's ids are loaded first, independently, so that the misses overlap instead of
        // each waiting behind the last one's memtable insert (perf, one core: reading the ids
        // was 6 % of a replay's samples one by one, 1.5 % in chunks).
        for chunk in order.chunks(16) {
            let warm = chunk.iter().map(|&(_, i)| inserts.get(i).0.bytes().next_back());
            std::hint::black_box(warm.fold(0u8, |x, b| x ^ b.unwrap_or(0)));
            for &(h, i) in chunk {
                let (id, t) = inserts.get(i);
                key.clear();
                key.extend_from_slice(&h.to_be_bytes());
                key.extend_from_slice(id.as_bytes());
                wb.put_cf(ids_cf, &key, t.to_le_bytes());
            }
        }
        if order.capacity() > 4 * order.len().max(1 << 16) {
            order = Vec::new(); // a burst's room is not kept for good
        }
        if let Some(m) = &b.meta {
            wb.put_cf(meta_cf, META_KEY, postcard::to_stdvec(m).map_err(enc)?);
        }
        let mut wo = WriteOptions::default();
        wo.set_sync(true); // the checkpoint is only a checkpoint once it survives a power cut
        self.db.write_opt(wb, &wo).map_err(self.rocks())?;
        self.shared.durable.fetch_max(b.seq, Ordering::AcqRel);
        if let Some(h) = b.meta.as_ref().and_then(|m| m.forgotten_before) {
            self.shared.cutoff.fetch_max(h, Ordering::AcqRel);
        }
        self.id_order = order;
        self.charge_tables();
        Ok(())
    }
}

/// The pipeline's on-demand reads of a [`RocksDbStore`], from any thread.
pub struct Reader {
    db: Arc<DB>,
    shared: Arc<Shared>,
    /// Made once: the default read options cost an allocation per lookup otherwise.
    point: ReadOptions,
}

impl Reader {
    fn fail(&self, what: &str, e: &dyn std::fmt::Display) {
        let mut slot = self.shared.error.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        slot.get_or_insert_with(|| {
            format!("state store {}: reading {what}: {e}", self.shared.path)
        });
    }

    fn family(&self, name: &str) -> Option<&rocksdb::ColumnFamily> {
        let cf = self.db.cf_handle(name);
        if cf.is_none() {
            self.fail(name, &"the column family is missing");
        }
        cf
    }
}

impl Backing for Reader {
    fn sessions(&self, customer: &str) -> Option<Vec<Session>> {
        let cf = self.family(CF_SESSIONS)?;
        match self.db.get_pinned_cf_opt(cf, customer.as_bytes(), &self.point) {
            Ok(Some(v)) => match format::decode_sessions(&v) {
                Ok(s) => Some(s),
                Err(e) => {
                    self.fail("sessions", &e);
                    None
                }
            },
            Ok(None) => None,
            Err(e) => {
                self.fail("sessions", &e);
                None
            }
        }
    }

    fn id_time(&self, id: &str) -> Option<i64> {
        let cf = self.family(CF_IDS)?;
        match self.db.get_pinned_cf_opt(cf, id_key(id), &self.point) {
            Ok(v) => v.and_then(|v| id_time(&v)),
            Err(e) => {
                self.fail("a message id", &e);
                None
            }
        }
    }

    fn ending_before(
        &self,
        from: i64,
        before: i64,
        f: &mut dyn FnMut(i64, &str, Stored<'_>) -> bool,
    ) {
        let Some(cf) = self.family(CF_CLOSING) else { return };
        let mut ro = ReadOptions::default();
        // Bounds let the iterator skip the tombstones of entries already closed below `from`.
        ro.set_iterate_lower_bound(closing_key(from, ""));
        ro.set_iterate_upper_bound(closing_key(before, ""));
        ro.fill_cache(false);
        for kv in self.db.iterator_cf_opt(cf, ro, IteratorMode::Start) {
            match kv {
                Ok((k, v)) => {
                    let stored = || {
                        if v.is_empty() {
                            return None; // an entry of a store written before they carried one
                        }
                        format::decode_sessions(&v)
                            .map_err(|e| self.fail("the closing index", &e))
                            .ok()
                    };
                    if !f(closing_end(&k), &String::from_utf8_lossy(&k[8..]), &stored) {
                        return;
                    }
                }
                Err(e) => return self.fail("the closing index", &e),
            }
        }
    }

    fn durable(&self) -> u64 {
        self.shared.durable.load(Ordering::Acquire)
    }

    fn take_error(&self) -> Option<String> {
        self.shared.error.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take()
    }
}

#[cfg(test)]
mod tests;
