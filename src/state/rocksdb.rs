//! `RocksDB` [`StateStore`]: one column family per record kind, one synced `WriteBatch` per
//! checkpoint.
//!
//! Message ids are not stored one key each (a million puts would cost more than the rest of a
//! checkpoint): each checkpoint writes its new ids as one segment per hour of event time, keyed
//! `hour ‖ segment number`. Forgetting is a range delete of whole hours below the cutoff, and
//! loading drops what the cutoff covers inside the hour that straddles it.

use super::{CheckpointBatch, Meta, STATE_VERSION, Snapshot, StateError, StateStore, format};
use crate::session::Session;
use crate::session::dedup::HOUR_MS;
use rocksdb::{
    ColumnFamilyDescriptor, DB, DBCompressionType, IteratorMode, Options, WriteBatch, WriteOptions,
};
use std::collections::BTreeMap;
use std::path::Path;

const CF_META: &str = "meta";
const CF_SESSIONS: &str = "sessions";
const CF_DEDUP: &str = "dedup";
const META_KEY: &[u8] = b"checkpoint";
const SEQ_KEY: &[u8] = b"dedup_segment";
/// Size at which `RocksDB` starts a new MANIFEST (which then holds just the live files).
const MAX_MANIFEST: usize = 64 << 10;

/// State in a `RocksDB` directory.
pub struct RocksDbStore {
    db: DB,
    path: String,
    /// Number of the next dedup segment.
    next_segment: u64,
}

impl std::fmt::Debug for RocksDbStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RocksDbStore").field("path", &self.path).finish_non_exhaustive()
    }
}

impl RocksDbStore {
    /// Opens (creating if needed) the store in `dir`.
    ///
    /// # Errors
    /// `RocksDB` cannot open the directory (missing permissions, locked by another process, …).
    pub fn open(dir: &Path) -> Result<Self, StateError> {
        let path = dir.display().to_string();
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        opts.set_compression_type(DBCompressionType::Lz4);
        // State is written once per checkpoint: a small write buffer keeps memory flat.
        opts.set_write_buffer_size(16 << 20);
        // The MANIFEST grows with every flush while the store is open and every snapshot uploads
        // it whole: roll it over at this size so a snapshot's cost stays flat over months.
        opts.set_max_manifest_file_size(MAX_MANIFEST);
        let cfs =
            [CF_META, CF_SESSIONS, CF_DEDUP].map(|n| ColumnFamilyDescriptor::new(n, opts.clone()));
        let db = DB::open_cf_descriptors(&opts, dir, cfs).map_err(|source| {
            if source.as_ref().contains("LOCK") {
                StateError::Locked { path: path.clone() }
            } else {
                StateError::Rocks { path: path.clone(), source }
            }
        })?;
        let mut store = RocksDbStore { db, path, next_segment: 0 };
        store.next_segment = store.read_meta::<u64>(SEQ_KEY)?.unwrap_or(0);
        Ok(store)
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

    /// The checkpoint record alone (without reading sessions and ids).
    ///
    /// # Errors
    /// The record cannot be read or decoded.
    pub fn meta(&self) -> Result<Option<Meta>, StateError> {
        let Some(v) = self.db.get_cf(self.cf(CF_META)?, META_KEY).map_err(self.rocks())? else {
            return Ok(None);
        };
        // The format version leads the record; the rest's shape depends on it.
        format::decode_meta(&v).map(Some).map_err(|e| {
            let found = format::version_of(&v).unwrap_or(0);
            match e {
                Some(e) if (format::OLDEST_READABLE..=STATE_VERSION).contains(&found) => {
                    self.corrupt("checkpoint")(e)
                }
                _ => StateError::Version { path: self.path.clone(), found },
            }
        })
    }

    fn read_meta<T: serde::de::DeserializeOwned>(
        &self,
        key: &[u8],
    ) -> Result<Option<T>, StateError> {
        match self.db.get_cf(self.cf(CF_META)?, key).map_err(self.rocks())? {
            Some(v) => Ok(Some(postcard::from_bytes(&v).map_err(self.corrupt("checkpoint"))?)),
            None => Ok(None),
        }
    }

    fn rocks(&self) -> impl Fn(rocksdb::Error) -> StateError + '_ {
        |source| StateError::Rocks { path: self.path.clone(), source }
    }

    fn corrupt(&self, what: &'static str) -> impl Fn(postcard::Error) -> StateError + '_ {
        move |source| StateError::Corrupt { path: self.path.clone(), what, source }
    }

    fn cf(&self, name: &str) -> Result<&rocksdb::ColumnFamily, StateError> {
        // The column families are created at open; their absence means a foreign directory.
        self.db
            .cf_handle(name)
            .ok_or_else(|| StateError::Version { path: self.path.clone(), found: 0 })
    }
}

impl StateStore for RocksDbStore {
    fn load(&self) -> Result<Snapshot, StateError> {
        let meta = self.meta()?;
        let mut sessions = Vec::new();
        for kv in self.db.iterator_cf(self.cf(CF_SESSIONS)?, IteratorMode::Start) {
            let (k, v) = kv.map_err(self.rocks())?;
            let s: Vec<Session> = format::decode_sessions(&v).map_err(self.corrupt("session"))?;
            sessions.push((String::from_utf8_lossy(&k).into(), s));
        }
        let mut ids = Vec::new();
        for kv in self.db.iterator_cf(self.cf(CF_DEDUP)?, IteratorMode::Start) {
            let (_, v) = kv.map_err(self.rocks())?;
            let seg: Vec<(Box<str>, i64)> =
                postcard::from_bytes(&v).map_err(self.corrupt("message id"))?;
            ids.extend(seg);
        }
        ids.sort();
        ids.dedup();
        Ok(Snapshot { meta, sessions, ids })
    }

    fn write_batch(&mut self, b: &CheckpointBatch) -> Result<(), StateError> {
        let (meta_cf, sess_cf, dedup_cf) =
            (self.cf(CF_META)?, self.cf(CF_SESSIONS)?, self.cf(CF_DEDUP)?);
        let mut wb = WriteBatch::default();
        let enc = |e: postcard::Error| StateError::Corrupt {
            path: self.path.clone(),
            what: "encoded",
            source: e,
        };
        for k in &b.sessions.deletes {
            wb.delete_cf(sess_cf, k.as_bytes());
        }
        for (k, v) in &b.sessions.upserts {
            if v.is_empty() {
                wb.delete_cf(sess_cf, k.as_bytes());
            } else {
                wb.put_cf(sess_cf, k.as_bytes(), format::encode_sessions(v).map_err(enc)?);
            }
        }
        let mut next_segment = self.next_segment;
        if !b.dedup.inserts.is_empty() {
            let mut by_hour: BTreeMap<i64, Vec<(&str, i64)>> = BTreeMap::new();
            for (id, t) in &b.dedup.inserts {
                by_hour.entry(t.div_euclid(HOUR_MS)).or_default().push((id, *t));
            }
            for (hour, seg) in by_hour {
                wb.put_cf(
                    dedup_cf,
                    segment_key(hour, next_segment),
                    postcard::to_stdvec(&seg).map_err(enc)?,
                );
            }
            next_segment += 1;
            wb.put_cf(meta_cf, SEQ_KEY, postcard::to_stdvec(&next_segment).map_err(enc)?);
        }
        if let Some(before) = b.dedup.forget_hours_before {
            wb.delete_range_cf(dedup_cf, segment_key(i64::MIN, 0), segment_key(before, 0));
        }
        if let Some(m) = &b.meta {
            wb.put_cf(meta_cf, META_KEY, postcard::to_stdvec(m).map_err(enc)?);
        }
        let mut wo = WriteOptions::default();
        wo.set_sync(true); // the checkpoint is only a checkpoint once it survives a power cut
        self.db.write_opt(wb, &wo).map_err(self.rocks())?;
        self.next_segment = next_segment;
        Ok(())
    }
}

/// Sorts by hour, then segment: the sign bit is flipped so negative hours order first.
fn segment_key(hour: i64, segment: u64) -> [u8; 16] {
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&((hour as u64) ^ (1 << 63)).to_be_bytes());
    k[8..].copy_from_slice(&segment.to_be_bytes());
    k
}

#[cfg(test)]
mod upgrade_tests {
    use super::*;
    use crate::session::{Counts, SessionChanges};

    #[test]
    fn a_version_2_store_opens_and_keeps_its_old_records_beside_new_ones() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = RocksDbStore::open(dir.path()).unwrap();
            let (meta, sessions) = format::version_2_records();
            let put = |cf: &str, k: &[u8], v: &[u8]| {
                store.db.put_cf(store.db.cf_handle(cf).unwrap(), k, v).unwrap();
            };
            put(CF_META, META_KEY, &meta);
            put(CF_SESSIONS, b"old", &sessions);
        }
        let mut store = RocksDbStore::open(dir.path()).unwrap();
        let snap = store.load().unwrap();
        let m = snap.meta.clone().unwrap();
        assert_eq!((m.version, m.checkpoint), (STATE_VERSION, 7));
        assert_eq!(m.kinds[..2], ["page_view".to_owned(), "subscribe_hover".to_owned()]);
        assert_eq!(
            snap.sessions[0].1[0].counts,
            Counts { events: 9, kinds: vec![1, 2, 3, 0].into() }
        );
        // A checkpoint of the new version rewrites only what changed: the old record stays.
        let mut new = snap.sessions[0].1[0].clone();
        new.counts.events = 1;
        let batch = CheckpointBatch {
            meta: Some(m),
            sessions: SessionChanges { upserts: vec![("new".into(), vec![new])], deletes: vec![] },
            ..CheckpointBatch::default()
        };
        store.write_batch(&batch).unwrap();
        drop(store);
        let snap = RocksDbStore::open(dir.path()).unwrap().load().unwrap();
        let events: Vec<(&str, u64)> =
            snap.sessions.iter().map(|(c, s)| (&**c, s[0].counts.events)).collect();
        assert_eq!(events, [("new", 1), ("old", 9)]);
        assert_eq!(snap.meta.unwrap().version, STATE_VERSION);
    }
}
