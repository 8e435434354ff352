//! The shard graph: which shards exist, their parents and hash-key ranges, and which may start.
//!
//! A child starts only after every parent that `ListShards` still lists has committed its end;
//! a parent no longer listed (past the stream's retention) counts as finished — its records
//! are gone either way, and waiting for it would stall the child for good. This is what KCL and
//! Flink do.

use std::collections::BTreeMap;

/// A hash-key range, both ends inclusive.
pub type HashRange = (u128, u128);

/// One shard as `ListShards` describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shard {
    /// `shardId-000000000007`.
    pub id: String,
    /// Its parent and, for a merge, the adjacent parent.
    pub parents: Vec<String>,
    /// The hash keys it holds.
    pub range: HashRange,
}

/// Every shard listed, by id.
#[derive(Debug, Clone, Default)]
pub struct Graph {
    shards: BTreeMap<String, Shard>,
}

impl Graph {
    /// The graph of a listing.
    #[must_use]
    pub fn new(listing: Vec<Shard>) -> Graph {
        Graph { shards: listing.into_iter().map(|s| (s.id.clone(), s)).collect() }
    }

    /// A listed shard.
    #[must_use]
    pub fn get(&self, id: &str) -> Option<&Shard> {
        self.shards.get(id)
    }

    /// Every listed shard.
    pub fn shards(&self) -> impl Iterator<Item = &Shard> {
        self.shards.values()
    }

    /// Whether `id` may start: every parent still listed has finished.
    #[must_use]
    pub fn ready(&self, id: &str, finished: &dyn Fn(&str) -> bool) -> bool {
        self.shards
            .get(id)
            .is_some_and(|s| s.parents.iter().all(|p| !self.shards.contains_key(p) || finished(p)))
    }

    /// The parents of `id` that a child's state comes from, each with whether it is still
    /// listed (a parent that is not may have left no final state).
    #[must_use]
    pub fn lineage(&self, id: &str) -> Vec<(String, bool)> {
        self.shards.get(id).map_or_else(Vec::new, |s| {
            s.parents.iter().map(|p| (p.clone(), self.shards.contains_key(p))).collect()
        })
    }
}

/// Whether `key` lies in `range`.
#[must_use]
pub fn contains(range: HashRange, key: u128) -> bool {
    range.0 <= key && key <= range.1
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    const MAX: u128 = u128::MAX;
    const HALF: u128 = u128::MAX / 2;

    fn shard(id: &str, parents: &[&str], range: HashRange) -> Shard {
        Shard { id: id.into(), parents: parents.iter().map(|&p| p.into()).collect(), range }
    }

    /// Which shards may start, given the finished ones.
    fn ready(g: &Graph, done: &[&str]) -> Vec<String> {
        let done: BTreeSet<&str> = done.iter().copied().collect();
        g.shards()
            .filter(|s| !done.contains(s.id.as_str()) && g.ready(&s.id, &|p| done.contains(p)))
            .map(|s| s.id.clone())
            .collect()
    }

    #[test]
    fn split_children_wait_for_their_parent() {
        let g = Graph::new(vec![
            shard("A", &[], (0, MAX)),
            shard("B", &["A"], (0, HALF)),
            shard("C", &["A"], (HALF + 1, MAX)),
        ]);
        assert_eq!(ready(&g, &[]), ["A"]);
        assert_eq!(ready(&g, &["A"]), ["B", "C"]);
        assert_eq!(g.lineage("B"), [("A".to_owned(), true)]);
    }

    #[test]
    fn a_merge_waits_for_both_parents() {
        let g = Graph::new(vec![
            shard("A", &[], (0, HALF)),
            shard("B", &[], (HALF + 1, MAX)),
            shard("C", &["A", "B"], (0, MAX)),
        ]);
        assert_eq!(ready(&g, &[]), ["A", "B"]);
        assert_eq!(ready(&g, &["A"]), ["B"]);
        assert_eq!(ready(&g, &["A", "B"]), ["C"]);
    }

    #[test]
    fn merge_then_split_waits_for_the_whole_chain() {
        // FLINK-32218's case: A,B → C → E,F.
        let g = Graph::new(vec![
            shard("A", &[], (0, HALF)),
            shard("B", &[], (HALF + 1, MAX)),
            shard("C", &["A", "B"], (0, MAX)),
            shard("E", &["C"], (0, HALF)),
            shard("F", &["C"], (HALF + 1, MAX)),
        ]);
        assert_eq!(ready(&g, &["A"]), ["B"]);
        assert_eq!(ready(&g, &["A", "B"]), ["C"]);
        assert_eq!(ready(&g, &["A", "B", "C"]), ["E", "F"]);
        // Parents past retention are no longer listed: they count as finished.
        let expired = Graph::new(
            g.shards().filter(|s| s.id != "A" && s.id != "B").cloned().collect::<Vec<_>>(),
        );
        assert_eq!(ready(&expired, &[]), ["C"]);
        assert_eq!(expired.lineage("C"), [("A".to_owned(), false), ("B".to_owned(), false)]);
    }

    #[test]
    fn ranges_are_inclusive() {
        assert!(contains((5, 9), 5) && contains((5, 9), 9));
        assert!(!contains((5, 9), 4) && !contains((5, 9), 10));
        assert!(contains((0, MAX), MAX));
    }
}
