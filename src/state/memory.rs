//! In-memory [`StateStore`]: the model the `RocksDB` store is checked against, and a store for
//! tests of the pipeline that need no disk.

use super::{CheckpointBatch, Meta, Snapshot, StateError, StateStore};
use crate::session::Session;
use crate::session::dedup::HOUR_MS;
use std::collections::BTreeMap;

/// A state store in ordered maps.
#[derive(Debug, Default, Clone)]
pub struct MemoryStore {
    meta: Option<Meta>,
    sessions: BTreeMap<Box<str>, Vec<Session>>,
    ids: BTreeMap<Box<str>, i64>,
}

impl StateStore for MemoryStore {
    fn load(&self) -> Result<Snapshot, StateError> {
        Ok(Snapshot {
            meta: self.meta.clone(),
            sessions: self.sessions.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            ids: self.ids.iter().map(|(k, v)| (k.clone(), *v)).collect(),
        })
    }

    fn write_batch(&mut self, b: &CheckpointBatch) -> Result<(), StateError> {
        for k in &b.sessions.deletes {
            self.sessions.remove(k);
        }
        for (k, v) in &b.sessions.upserts {
            if v.is_empty() {
                self.sessions.remove(k);
            } else {
                self.sessions.insert(k.clone(), v.clone());
            }
        }
        for (k, t) in &b.dedup.inserts {
            self.ids.insert(Box::from(&**k), *t);
        }
        if let Some(before) = b.dedup.forget_hours_before {
            self.ids.retain(|_, t| t.div_euclid(HOUR_MS) >= before);
        }
        if let Some(m) = &b.meta {
            self.meta = Some(m.clone());
        }
        Ok(())
    }
}
