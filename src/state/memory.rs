//! In-memory [`StateStore`]: the model the `RocksDB` store is checked against, and a store for
//! tests of the pipeline that need no disk.

use super::{CheckpointBatch, Contents, Meta, StateError, StateStore};
use crate::session::backing::Stored;
use crate::session::dedup::HOUR_MS;
use crate::session::{Backing, Session};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, PoisonError};

#[derive(Debug, Default, Clone)]
struct Inner {
    meta: Option<Meta>,
    sessions: BTreeMap<Box<str>, Vec<Session>>,
    closing: BTreeSet<(i64, Box<str>)>,
    ids: BTreeMap<Box<str>, i64>,
    durable: u64,
}

/// A state store in ordered maps; its backing reads the same maps.
#[derive(Debug, Default, Clone)]
pub struct MemoryStore {
    inner: Arc<Mutex<Inner>>,
}

impl MemoryStore {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The index by end time, as `(end, customer)` pairs.
    #[must_use]
    pub fn closing(&self) -> Vec<(i64, Box<str>)> {
        self.lock().closing.iter().cloned().collect()
    }
}

impl StateStore for MemoryStore {
    fn meta(&self) -> Result<Option<Meta>, StateError> {
        Ok(self.lock().meta.clone())
    }

    fn read_all(&self) -> Result<Contents, StateError> {
        let s = self.lock();
        let cut = s.meta.as_ref().and_then(|m| m.forgotten_before);
        Ok(Contents {
            meta: s.meta.clone(),
            sessions: s.sessions.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            ids: s
                .ids
                .iter()
                .filter(|(_, t)| cut.is_none_or(|h| t.div_euclid(HOUR_MS) >= h))
                .map(|(k, v)| (k.clone(), *v))
                .collect(),
        })
    }

    fn backing(&self) -> Arc<dyn Backing> {
        Arc::new(self.clone())
    }

    fn write_batch(&mut self, b: &CheckpointBatch) -> Result<(), StateError> {
        let mut s = self.lock();
        for k in &b.sessions.deletes {
            s.sessions.remove(&**k);
        }
        for (k, end) in &b.sessions.unindex {
            s.closing.remove(&(*end, Box::from(&**k)));
        }
        for (k, v) in &b.sessions.upserts {
            if let Some(first) = v.first() {
                let k: Box<str> = Box::from(&**k);
                s.closing.insert((first.end, k.clone()));
                s.sessions.insert(k, Vec::clone(v));
            } else {
                s.sessions.remove(&**k);
            }
        }
        for (k, t) in b.dedup.inserts.iter() {
            s.ids.insert(Box::from(k), t);
        }
        if let Some(m) = &b.meta {
            s.meta = Some(m.clone());
        }
        s.durable = s.durable.max(b.seq);
        Ok(())
    }
}

impl Backing for MemoryStore {
    fn sessions(&self, customer: &str) -> Option<Vec<Session>> {
        self.lock().sessions.get(customer).cloned()
    }

    fn id_time(&self, id: &str) -> Option<i64> {
        self.lock().ids.get(id).copied()
    }

    fn ending_before(
        &self,
        from: i64,
        before: i64,
        f: &mut dyn FnMut(i64, &str, Stored<'_>) -> bool,
    ) {
        // One snapshot, as the store's iterator reads: batches written during the scan are
        // not in it.
        let entries: Vec<(i64, Box<str>, Option<Vec<Session>>)> = {
            let s = self.lock();
            s.closing
                .iter()
                .filter(|(e, _)| (from..before).contains(e))
                .map(|(e, k)| (*e, k.clone(), s.sessions.get(k).cloned()))
                .collect()
        };
        for (end, k, sessions) in entries {
            if !f(end, &k, &|| sessions.clone()) {
                return;
            }
        }
    }

    fn durable(&self) -> u64 {
        self.lock().durable
    }

    fn take_error(&self) -> Option<String> {
        None
    }
}
