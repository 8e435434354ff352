//! What the sessionizer and dedup read when an entry is not in memory: the state as the last
//! durable checkpoint left it.
//!
//! Two implementations: the `RocksDB` store (`state::rocksdb::Reader`) and the in-memory model
//! (`state::memory`). Reads cannot fail from the core's point of view: an implementation keeps
//! its first failure and the processor refuses to end the interval ([`Backing::take_error`]), so
//! an interval that read wrong state is never committed.

use super::Session;

/// A customer's open sessions as an index entry holds them, decoded only when asked for; `None`
/// when the entry does not carry them (stores written before entries did).
pub type Stored<'a> = &'a dyn Fn() -> Option<Vec<Session>>;

/// Read access to durable state.
pub trait Backing: Send + Sync {
    /// The open sessions of `customer` as last written, if any.
    fn sessions(&self, customer: &str) -> Option<Vec<Session>>;

    /// The event time a remembered message id was stored with, if it was.
    fn id_time(&self, id: &str) -> Option<i64>;

    /// Calls `f` with the end and the customer of every customer whose first open session, as
    /// last written, ends in `[from, before)` (the ones the watermark may close), in the order
    /// of ends, until `f` returns false. The scan reads one snapshot, taken when it starts: `f`
    /// also gets the customer's sessions as that snapshot holds them ([`Stored`]), so that a
    /// close need not read them again — unless a batch carrying the customer became durable
    /// since.
    fn ending_before(
        &self,
        from: i64,
        before: i64,
        f: &mut dyn FnMut(i64, &str, Stored<'_>) -> bool,
    );

    /// The number of the last checkpoint batch that is durable (see
    /// [`crate::state::CheckpointBatch::seq`]); entries of later batches must stay in memory.
    fn durable(&self) -> u64;

    /// The first read failure since the last call.
    fn take_error(&self) -> Option<String>;
}
