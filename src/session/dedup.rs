//! Dedup by message id over a horizon of event time.
//!
//! An id is remembered with its event time until the watermark has moved `horizon` past it.
//! With `horizon ≥ allowed lateness`, forgetting loses nothing: any later copy of a forgotten
//! id is older than the watermark and would be refused as late anyway.

use compact_str::CompactString;
use rustc_hash::FxHashMap;

/// Ids are forgotten by whole hours of event time, so that the state store drops them with
/// one range delete.
pub const HOUR_MS: i64 = 3_600_000;

/// Remembered message ids.
#[derive(Debug, Default)]
pub struct Dedup {
    horizon: i64,
    /// id → (event time, written to the state store). Ids up to 24 bytes are stored inline,
    /// and forgetting or collecting new ids is a scan of one flat table, once per checkpoint.
    ids: FxHashMap<CompactString, (i64, bool)>,
    /// Hours before this one are forgotten.
    forgotten_before: Option<i64>,
}

/// What changed since the last checkpoint.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct DedupChanges {
    /// New ids with their event times.
    pub inserts: Vec<(CompactString, i64)>,
    /// Forget every id whose event-time hour (`time.div_euclid(HOUR_MS)`) is before this.
    pub forget_hours_before: Option<i64>,
}

impl Dedup {
    /// Remembers ids for at least `horizon` milliseconds of event time past the watermark.
    #[must_use]
    pub fn new(horizon: i64) -> Self {
        Dedup { horizon, ..Dedup::default() }
    }

    /// Restores ids a checkpoint saved.
    pub fn restore(&mut self, ids: impl IntoIterator<Item = (Box<str>, i64)>) {
        for (id, t) in ids {
            self.ids.insert(CompactString::from(&*id), (t, true));
        }
    }

    /// Whether `id` was accepted before.
    #[must_use]
    pub fn contains(&self, id: &str) -> bool {
        self.ids.contains_key(id)
    }

    /// Remembers an accepted id.
    pub fn insert(&mut self, id: &str, time: i64) {
        self.ids.insert(CompactString::from(id), (time, false));
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

    /// Forgets the ids of every hour that ends at or before `watermark − horizon`. Called at
    /// checkpoints only, so the remembered set is always exactly what the last checkpoint
    /// restores.
    pub fn expire(&mut self, watermark: Option<i64>) {
        let Some(w) = watermark else { return };
        let before = w.saturating_sub(self.horizon).div_euclid(HOUR_MS);
        if self.forgotten_before.is_some_and(|b| b >= before) {
            return;
        }
        self.ids.retain(|_, (t, _)| t.div_euclid(HOUR_MS) >= before);
        self.forgotten_before = Some(before);
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
        DedupChanges { inserts, forget_hours_before: self.forgotten_before }
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
        // Hour 0 holds times below HOUR_MS: forgotten once the cutoff reaches HOUR_MS.
        d.expire(Some(HOUR_MS + 99));
        assert!(d.contains("a"));
        d.expire(Some(HOUR_MS + 100));
        assert!(!d.contains("a"));
    }

    #[test]
    fn long_ids_work_like_short_ones() {
        let mut d = Dedup::new(100);
        let long = "x".repeat(300);
        d.insert(&long, 5);
        assert!(d.contains(&long));
        assert!(!d.contains(&long[1..]));
    }

    #[test]
    fn changes_carry_new_ids_and_the_hours_to_forget() {
        let mut d = Dedup::new(10);
        d.insert("a", 0);
        d.insert("b", 2 * HOUR_MS);
        let mut ins = d.take_changes().inserts;
        ins.sort();
        assert_eq!(ins, vec![("a".into(), 0), ("b".into(), 2 * HOUR_MS)]);
        d.insert("c", 5);
        d.expire(Some(HOUR_MS + 50));
        let ch = d.take_changes();
        assert!(ch.inserts.is_empty(), "c was forgotten before it was ever stored");
        assert_eq!(ch.forget_hours_before, Some(1));
        assert_eq!(d.len(), 1);
    }
}
