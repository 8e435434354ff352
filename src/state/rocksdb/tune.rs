//! `state.memory_budget`: one number that bounds what state holds in memory, shared out as
//! `RocksDB` engineers would (numbers in ARCHITECTURE.md):
//!
//! - a quarter for the block cache together with the table files' bloom filters and indexes
//!   (about 1.3 bytes per stored key at 10 bits per key): these are held whole by the open
//!   tables, outside the cache, and each checkpoint gives the cache what they leave of the
//!   quarter (`MemoryBudget::charge_tables`);
//! - an eighth for the memtables of every column family, through one write-buffer manager;
//! - the rest for the caches in front of the store: three fifths for open sessions, two for
//!   message ids.
//!
//! One budget is shared by every store of the process (the splits of `run`): the block cache
//! and the write-buffer manager are one object each, and the session cache is divided between
//! the splits a process holds.

use rocksdb::{
    BlockBasedOptions, Cache, ColumnFamilyDescriptor, DBCompressionType, Options,
    WriteBufferManager, compaction_filter::Decision,
};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

/// The bytes state may hold in memory, and the shared `RocksDB` objects that enforce its share.
#[derive(Clone)]
pub struct MemoryBudget {
    total: u64,
    cache: Cache,
    buffers: WriteBufferManager,
    /// What each open store's tables hold of filters and indexes; a store's slot goes with it.
    tables: Arc<Mutex<Vec<Arc<AtomicU64>>>>,
}

impl std::fmt::Debug for MemoryBudget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryBudget").field("total", &self.total).finish_non_exhaustive()
    }
}

impl Default for MemoryBudget {
    fn default() -> Self {
        MemoryBudget::new(MemoryBudget::DEFAULT)
    }
}

impl MemoryBudget {
    /// The default: 512 MiB.
    pub const DEFAULT: u64 = 512 << 20;
    /// The smallest budget accepted.
    pub const MIN: u64 = 16 << 20;

    /// A budget of `total` bytes (at least [`MemoryBudget::MIN`]).
    #[must_use]
    pub fn new(total: u64) -> Self {
        let total = total.max(Self::MIN);
        MemoryBudget {
            total,
            cache: Cache::new_lru_cache(usize::try_from(total / 4).unwrap_or(usize::MAX)),
            buffers: WriteBufferManager::new_write_buffer_manager(
                usize::try_from(total / 8).unwrap_or(usize::MAX),
                false,
            ),
            tables: Arc::default(),
        }
    }

    /// A slot for one store's `MemoryBudget::charge_tables`, freed when the store drops it.
    pub(super) fn table_slot(&self) -> Arc<AtomicU64> {
        let slot = Arc::new(AtomicU64::new(0));
        self.tables.lock().unwrap_or_else(PoisonError::into_inner).push(Arc::clone(&slot));
        slot
    }

    /// Records that a store's tables hold `bytes` of filters and indexes (in `slot`) and gives
    /// the block cache what the tables of every open store leave of its quarter, never less
    /// than a sixteenth of it: past that, filters outgrow the budget (about 1.3 bytes per
    /// stored key; ARCHITECTURE.md says how to size it).
    pub(super) fn charge_tables(&self, slot: &AtomicU64, bytes: u64) -> u64 {
        slot.store(bytes, Ordering::Release);
        let mut tables = self.tables.lock().unwrap_or_else(PoisonError::into_inner);
        tables.retain(|s| Arc::strong_count(s) > 1);
        let held: u64 = tables.iter().map(|s| s.load(Ordering::Acquire)).sum();
        let share = self.total / 4;
        let cache = share.saturating_sub(held).max(share / 16);
        self.cache.clone().set_capacity(usize::try_from(cache).unwrap_or(usize::MAX));
        cache
    }

    /// The whole budget.
    #[must_use]
    pub fn total(&self) -> u64 {
        self.total
    }

    /// The share of the session cache, for one of `stores` stores.
    #[must_use]
    pub fn sessions(&self, stores: usize) -> usize {
        let share = self.total - self.total / 4 - self.total / 8;
        usize::try_from(share / stores.max(1) as u64).unwrap_or(usize::MAX)
    }

    /// Each memtable's size: small enough that every column family fits its share twice.
    fn memtable(&self) -> usize {
        usize::try_from((self.total / 8 / 8).clamp(1 << 20, 64 << 20)).unwrap_or(64 << 20)
    }
}

/// The database's options, and the descriptors of this layout's column families. The
/// compaction filter of `ids` drops ids of hours before `cutoff` (the durable one).
pub(super) fn options(
    budget: &MemoryBudget,
    cutoff: &Arc<AtomicI64>,
) -> (Options, Vec<ColumnFamilyDescriptor>) {
    let mut opts = Options::default();
    opts.create_if_missing(true);
    opts.create_missing_column_families(true);
    opts.set_write_buffer_manager(&budget.buffers);
    opts.set_max_background_jobs(2);
    // A column family that is seldom written (meta) would otherwise keep every write-ahead log
    // alive: past this size the oldest logs' families are flushed so the logs can go.
    opts.set_max_total_wal_size(budget.total / 8);

    // The MANIFEST grows with every flush while the store is open and every snapshot uploads
    // it whole: roll it over at this size so a snapshot's cost stays flat over months.
    opts.set_max_manifest_file_size(64 << 10);
    let mut ids = family(budget);
    // Ids are most of what a checkpoint writes: a larger memtable flushes (and compacts) them
    // four times less often.
    ids.set_write_buffer_size(budget.memtable() * 4);

    let cut = Arc::clone(cutoff);
    ids.set_compaction_filter("forgotten_ids", move |_level: u32, _key: &[u8], v: &[u8]| {
        let hour = v.try_into().map(i64::from_le_bytes).map(|t| t.div_euclid(HOUR_MS));
        match hour {
            Ok(h) if h < cut.load(Ordering::Acquire) => Decision::Remove,
            _ => Decision::Keep,
        }
    });
    let cfs = vec![
        ColumnFamilyDescriptor::new(super::CF_META, family(budget)),
        ColumnFamilyDescriptor::new(super::CF_SESSIONS, family(budget)),
        ColumnFamilyDescriptor::new(super::CF_CLOSING, family(budget)),
        ColumnFamilyDescriptor::new(super::CF_IDS, ids),
    ];
    (opts, cfs)
}

/// A column family of another layout, opened only to be migrated.
pub(super) fn plain(name: &str, budget: &MemoryBudget) -> ColumnFamilyDescriptor {
    ColumnFamilyDescriptor::new(name, family(budget))
}

use crate::session::dedup::HOUR_MS;

fn family(budget: &MemoryBudget) -> Options {
    let mut table = BlockBasedOptions::default();
    table.set_block_cache(&budget.cache);
    table.set_bloom_filter(10.0, false);
    // Each table holds its whole filter and index, outside the block cache (charged against
    // the cache's share instead, see `MemoryBudget::charge_tables`). At millions of customers
    // almost every event looks up an id and a customer the store does not hold, a filter probe
    // per sorted run each: in the cache, every probe was a partition-index seek and an LRU
    // lookup under a mutex (measured, 8 M events / 10 M customers: 50-56 k lines/s that way,
    // 60-70 k this way; peak RSS 0.97-1.06 GB either way). Whole filters in the cache are no alternative: a table
    // of a few million ids has a 3 MB filter, larger than a cache shard, which then never kept
    // it and read it from the file at every lookup (measured: 1.8 TB of reads in 4 minutes).
    table.set_cache_index_and_filter_blocks(false);
    table.set_format_version(5);
    let mut o = Options::default();
    o.set_block_based_table_factory(&table);
    o.set_compression_type(DBCompressionType::Lz4);
    o.set_write_buffer_size(budget.memtable());
    // A bloom filter in the memtable too: most lookups are of ids never seen.
    o.set_memtable_whole_key_filtering(true);
    o.set_memtable_prefix_bloom_ratio(0.05);
    o.set_level_compaction_dynamic_level_bytes(true);
    o
}
