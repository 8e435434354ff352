//! Crash injection at the step boundaries of the commit protocol, for the crash-matrix tests.
//!
//! `CLICKSTREAM_FAILPOINT=NAME[:N]` makes the process abort (as `kill -9` would: no destructor,
//! no flush) the `N`th time (default: first) it reaches the point `NAME`. Unset, a point costs
//! one load of an already-initialised value. The names are listed in [`POINTS`] and
//! [`HANDOFF`].

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

/// Every failpoint, in protocol order.
pub const POINTS: &[&str] = &[
    "claim.written",
    "commit.staged",
    "commit.state_written",
    "commit.snapshot_uploaded",
    "commit.record_written",
    "commit.published_one",
    "commit.published",
    "commit.collected",
];

/// The failpoints of a closed split's handover to its children (Kinesis resharding), in order.
pub const HANDOFF: &[&str] = &["shard.read_to_end", "shard.end_committed", "child.seeded"];

struct Armed {
    name: String,
    at: u64,
    seen: AtomicU64,
}

fn armed() -> Option<&'static Armed> {
    static ARMED: OnceLock<Option<Armed>> = OnceLock::new();
    ARMED
        .get_or_init(|| {
            let v = std::env::var("CLICKSTREAM_FAILPOINT").ok()?;
            let (name, at) = match v.split_once(':') {
                Some((n, k)) => (n.to_owned(), k.parse().unwrap_or(1)),
                None => (v, 1),
            };
            Some(Armed { name, at, seen: AtomicU64::new(0) })
        })
        .as_ref()
}

/// Aborts the process here if this point is armed and its turn has come.
pub fn hit(name: &str) {
    let Some(a) = armed() else { return };
    if a.name == name && a.seen.fetch_add(1, Ordering::Relaxed) + 1 == a.at {
        eprintln!("{{\"level\":\"ERROR\",\"message\":\"Failpoint {name} reached: aborting.\"}}");
        std::process::abort();
    }
}
