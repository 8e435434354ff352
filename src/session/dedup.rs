//! Dedup by message id over a horizon of event time.
//!
//! An id is remembered with its event time until the watermark has moved `horizon` past it.
//! With `horizon ≥ allowed lateness`, forgetting loses nothing: any later copy of a forgotten
//! id is older than the watermark and would be refused as late anyway.

use rustc_hash::FxHashMap;

/// Remembered message ids.
#[derive(Debug, Default)]
pub struct Dedup {
    horizon: i64,
    /// id → (event time, already written to the state store).
    ids: FxHashMap<Box<str>, (i64, bool)>,
    /// Ids with an event time below this are forgotten.
    cutoff: Option<i64>,
}

/// What changed since the last checkpoint.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct DedupChanges {
    /// New ids with their event times.
    pub inserts: Vec<(Box<str>, i64)>,
    /// Forget every id with an event time below this.
    pub forget_before: Option<i64>,
}

impl Dedup {
    /// Remembers ids for `horizon` milliseconds of event time.
    #[must_use]
    pub fn new(horizon: i64) -> Self {
        Dedup { horizon, ..Dedup::default() }
    }

    /// Restores ids a checkpoint saved.
    pub fn restore(&mut self, ids: impl IntoIterator<Item = (Box<str>, i64)>) {
        self.ids.extend(ids.into_iter().map(|(id, t)| (id, (t, true))));
    }

    /// Whether `id` was accepted before.
    #[must_use]
    pub fn contains(&self, id: &str) -> bool {
        self.ids.contains_key(id)
    }

    /// Remembers an accepted id.
    pub fn insert(&mut self, id: &str, time: i64) {
        self.ids.insert(id.into(), (time, false));
    }

    /// Number of remembered ids.
    #[must_use]
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// Whether no id is remembered.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// Forgets ids older than `watermark − horizon`. Called at checkpoints only, so that the
    /// remembered set is always exactly what the last checkpoint restores.
    pub fn expire(&mut self, watermark: Option<i64>) {
        let Some(w) = watermark else { return };
        let cutoff = w.saturating_sub(self.horizon);
        self.cutoff = Some(cutoff);
        self.ids.retain(|_, &mut (t, _)| t >= cutoff);
    }

    /// Takes what changed since the last call, for the checkpoint's write batch.
    pub fn take_changes(&mut self) -> DedupChanges {
        let mut inserts = Vec::new();
        for (id, (t, stored)) in &mut self.ids {
            if !*stored {
                *stored = true;
                inserts.push((id.clone(), *t));
            }
        }
        inserts.sort();
        DedupChanges { inserts, forget_before: self.cutoff }
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
        d.expire(Some(1100));
        assert!(d.contains("a"));
        d.expire(Some(1101));
        assert!(!d.contains("a"));
    }

    #[test]
    fn changes_carry_new_ids_and_the_cutoff() {
        let mut d = Dedup::new(10);
        d.insert("a", 0);
        d.insert("b", 100);
        assert_eq!(d.take_changes().inserts, vec![("a".into(), 0), ("b".into(), 100)]);
        d.insert("c", 5);
        d.expire(Some(50));
        let ch = d.take_changes();
        assert!(ch.inserts.is_empty(), "c expired before it was ever stored");
        assert_eq!(ch.forget_before, Some(40));
        assert_eq!(d.len(), 1);
    }
}
