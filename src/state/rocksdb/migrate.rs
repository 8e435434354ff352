//! Migration of a version-3 store, once, when it is opened.
//!
//! Version 3 kept message ids in segments per checkpoint and hour (`dedup`: `hour ‖ segment` →
//! ids) and had no index by end time; its pipeline read everything at start-up. Migration
//! moves each id to a key of its own, indexes every customer's first session by its end,
//! counts open sessions into the checkpoint record, and writes all of it in one synced batch
//! before the old column family is dropped: a crash in between leaves the old layout, which
//! migrates again.

use super::{CF_CLOSING, CF_IDS, CF_META, CF_SESSIONS, META_KEY, closing_key, decode_meta, format};
use crate::state::StateError;
use rocksdb::{DB, IteratorMode, Options, WriteBatch, WriteOptions};
use std::path::Path;
use std::time::Instant;
use tracing::info;

const CF_SEGMENTS: &str = "dedup";

/// The column families of the old layout present in `dir`.
pub(super) fn legacy_families(opts: &Options, dir: &Path) -> Vec<String> {
    DB::list_cf(opts, dir).unwrap_or_default().into_iter().filter(|n| n == CF_SEGMENTS).collect()
}

/// Migrates when the store is of the old layout; a no-op otherwise.
pub(super) fn run(db: &mut DB, path: &str, legacy: &[String]) -> Result<(), StateError> {
    let rocks = |source| StateError::Rocks { path: path.to_owned(), source };
    let corrupt = |what, source| StateError::Corrupt { path: path.to_owned(), what, source };
    let meta_raw = db.get_cf(super::cf(db, path, CF_META)?, META_KEY).map_err(rocks)?;
    let old = meta_raw.as_deref().is_some_and(|v| format::version_of(v).is_some_and(|n| n < 4));
    if !old {
        if legacy.iter().any(|n| n == CF_SEGMENTS) {
            db.drop_cf(CF_SEGMENTS).map_err(rocks)?;
        }
        return Ok(());
    }
    let started = Instant::now();
    let mut meta = decode_meta(path, meta_raw.as_deref().unwrap_or_default())?;
    let mut wb = WriteBatch::default();
    let (mut sessions, mut customers, mut ids) = (0u64, 0u64, 0u64);
    for kv in db.iterator_cf(super::cf(db, path, CF_SESSIONS)?, IteratorMode::Start) {
        let (k, v) = kv.map_err(rocks)?;
        let s = format::decode_sessions(&v).map_err(|e| corrupt("session", e))?;
        if let Some(first) = s.first() {
            let customer = String::from_utf8_lossy(&k);
            wb.put_cf(super::cf(db, path, CF_CLOSING)?, closing_key(first.end, &customer), []);
            sessions += s.len() as u64;
            customers += 1;
        }
    }
    if let Some(seg_cf) = db.cf_handle(CF_SEGMENTS) {
        for kv in db.iterator_cf(seg_cf, IteratorMode::Start) {
            let (_, v) = kv.map_err(rocks)?;
            let seg: Vec<(Box<str>, i64)> =
                postcard::from_bytes(&v).map_err(|e| corrupt("message id", e))?;
            for (id, t) in seg {
                wb.put_cf(super::cf(db, path, CF_IDS)?, super::id_key(&id), t.to_le_bytes());
                ids += 1;
            }
        }
    }
    meta.open = (sessions, customers);
    let enc = postcard::to_stdvec(&meta).map_err(|e| corrupt("encoded", e))?;
    wb.put_cf(super::cf(db, path, CF_META)?, META_KEY, enc);
    let mut wo = WriteOptions::default();
    wo.set_sync(true);
    db.write_opt(wb, &wo).map_err(rocks)?;
    if legacy.iter().any(|n| n == CF_SEGMENTS) {
        db.drop_cf(CF_SEGMENTS).map_err(rocks)?;
    }
    info!(
        path,
        sessions,
        customers,
        ids,
        ms = started.elapsed().as_millis() as u64,
        "Migrated a version-3 state store: ids one key each, sessions indexed by end time."
    );
    Ok(())
}
