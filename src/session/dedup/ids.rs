//! Ids in one buffer: the ids a checkpoint batch carries, appended as they are accepted.

/// Message ids with their event times, their bytes in one buffer: an id accepted costs no
/// allocation of its own for the batch (perf, two cores, the system allocator: that copy of
/// each id past 24 bytes was ~1 % of a replay's samples, a third of the processor's time in
/// malloc's slow path, as the committer frees what the processor allocates).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Ids {
    bytes: String,
    /// End of each id in `bytes` (its start is the previous one's end), and its event time.
    ends: Vec<(usize, i64)>,
}

impl Ids {
    /// Room for `n` ids of `bytes` bytes in all.
    #[must_use]
    pub fn with_capacity(n: usize, bytes: usize) -> Self {
        Ids { bytes: String::with_capacity(bytes), ends: Vec::with_capacity(n) }
    }

    /// Appends `id` accepted at `time`.
    pub fn push(&mut self, id: &str, time: i64) {
        self.bytes.push_str(id);
        self.ends.push((self.bytes.len(), time));
    }

    /// The `i`th id and its time.
    ///
    /// # Panics
    /// If `i` is not below [`Ids::len`].
    #[must_use]
    pub fn get(&self, i: usize) -> (&str, i64) {
        let start = if i == 0 { 0 } else { self.ends[i - 1].0 };
        let (end, time) = self.ends[i];
        (&self.bytes[start..end], time)
    }

    /// Number of ids.
    #[must_use]
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    /// Whether there is none.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// Bytes of all the ids.
    #[must_use]
    pub fn bytes(&self) -> usize {
        self.bytes.len()
    }

    /// The ids in order, with their times.
    pub fn iter(&self) -> impl Iterator<Item = (&str, i64)> + '_ {
        (0..self.len()).map(|i| self.get(i))
    }

    /// Keeps the ids for which `keep(id, time)` holds, in order.
    pub fn retain(&mut self, mut keep: impl FnMut(&str, i64) -> bool) {
        let mut kept = Ids::with_capacity(self.len(), self.bytes.len());
        kept.extend(self.iter().filter(|&(id, t)| keep(id, t)));
        *self = kept;
    }
}

impl<S: AsRef<str>> Extend<(S, i64)> for Ids {
    fn extend<I: IntoIterator<Item = (S, i64)>>(&mut self, iter: I) {
        for (id, t) in iter {
            self.push(id.as_ref(), t);
        }
    }
}

impl<S: AsRef<str>> FromIterator<(S, i64)> for Ids {
    fn from_iter<I: IntoIterator<Item = (S, i64)>>(iter: I) -> Self {
        let mut ids = Ids::default();
        ids.extend(iter);
        ids
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_come_back_as_pushed_and_retained_in_order() {
        let mut ids: Ids =
            [("a", 1), ("", 2), ("long-id-past-twenty-four-bytes", 3)].into_iter().collect();
        assert_eq!(ids.get(1), ("", 2));
        assert_eq!(ids.len(), 3);
        ids.retain(|id, _| id != "a");
        assert_eq!(
            ids.iter().collect::<Vec<_>>(),
            vec![("", 2), ("long-id-past-twenty-four-bytes", 3)]
        );
        let mut more = Ids::default();
        more.push("z", 9);
        ids.extend(more.iter());
        assert_eq!(ids.get(2), ("z", 9));
        assert_eq!(ids.bytes(), 31);
    }
}
