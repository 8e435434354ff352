//! Which leases this worker should take: KCL 2.x's rules (`DynamoDBLeaseTaker`), as pure
//! functions of a table scan and this worker's own monotonic clock.
//!
//! A lease is alive while its counter moves. Whether it moved is judged on the observer's
//! clock, between its own scans, so workers need no clock agreement: a peer's lease expires
//! here once this worker has seen its counter stand still for the lease duration.

use super::lease::Lease;
use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

/// What was seen of one lease.
#[derive(Debug, Clone, Copy)]
struct Seen {
    counter: u64,
    owned: bool,
    /// When its counter was last seen to change; `None` when it has never been seen renewed
    /// (first seen without an owner), so it is expired from the start.
    changed: Option<Instant>,
}

/// Watches leases' counters on this worker's own monotonic clock. KCL's rule: a lease is
/// expired when its counter has not changed for the lease duration, judged locally, so no
/// clock sync is needed.
#[derive(Debug, Clone)]
pub struct Observer {
    duration: Duration,
    seen: HashMap<String, Seen>,
}

impl Observer {
    /// An observer that has seen nothing yet; leases expire after `lease_duration`.
    #[must_use]
    pub fn new(lease_duration: Duration) -> Self {
        Observer { duration: lease_duration, seen: HashMap::new() }
    }

    /// Records a scan of the whole table taken at `now`. Leases missing from it are forgotten.
    pub fn observe(&mut self, leases: &[Lease], now: Instant) {
        let mut seen = HashMap::with_capacity(leases.len());
        for lease in leases {
            let owned = lease.owner.is_some();
            let changed = match self.seen.get(&lease.key) {
                Some(old) if old.counter == lease.counter => old.changed,
                Some(_) => Some(now),
                // An owned lease seen for the first time gets a full duration: it may be
                // renewed right now, and this worker cannot know when it last was.
                None if owned => Some(now),
                None => None,
            };
            seen.insert(lease.key.clone(), Seen { counter: lease.counter, owned, changed });
        }
        self.seen = seen;
    }

    /// Whether the lease `key` is expired (or unowned) as seen so far. A lease seen for the
    /// first time is not expired until a full duration passes without a counter change, unless
    /// it has no owner. A lease never seen is not expired: nothing is known of it.
    #[must_use]
    pub fn expired(&self, key: &str, now: Instant) -> bool {
        self.seen.get(key).is_some_and(|s| {
            !s.owned || s.changed.is_none_or(|t| now.saturating_duration_since(t) > self.duration)
        })
    }
}

/// Which leases to take now, by KCL 2.x's rules (`DynamoDBLeaseTaker.computeLeasesToTake` and
/// `chooseLeasesToSteal`):
///
/// - Finished leases (checkpoint `SHARD_END`) are ignored: they need no reader.
/// - A lease is *available* when it has no owner or is expired. The workers are the distinct
///   owners of the other leases, plus `me`.
/// - The target is ⌈leases / workers⌉. If `me` holds fewer, it takes available leases up to
///   the deficit: ready ones first (every parent finished or absent from the table), then by
///   key, so that workers agree and a shard's children wait their turn.
/// - Only when none is available does it steal, and only one lease at a time
///   (`maxLeasesToStealAtOneTime` = 1), from the most loaded worker (ties go to the first owner
///   by name): if that worker holds more than the target, or holds the target while `me`
///   needs more than one. So 3 workers on 4 leases settle at 2/1/1 with no lease moving back
///   and forth.
///
/// It never takes `me` above the target. Departures from KCL: KCL picks at random where this
/// picks by key (a conditional take settles any contention), and KCL's "very old lease"
/// priority, which takes leases unrenewed for 3 durations regardless of the target, is not
/// applied.
#[must_use]
pub fn to_take(leases: &[Lease], observer: &Observer, me: &str, now: Instant) -> Vec<Lease> {
    let active: Vec<&Lease> = leases.iter().filter(|l| !l.is_finished()).collect();
    if active.is_empty() {
        return Vec::new();
    }
    let (mut available, held): (Vec<&Lease>, Vec<&Lease>) =
        active.iter().partition(|l| l.owner.is_none() || observer.expired(&l.key, now));
    // BTreeMap: the most loaded worker is found in owner order, so ties are deterministic.
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for owner in held.iter().filter_map(|l| l.owner.as_deref()) {
        *counts.entry(owner).or_default() += 1;
    }
    counts.entry(me).or_default();
    let target = active.len().div_ceil(counts.len());
    let mine = counts[me];
    let Some(needed) = target.checked_sub(mine).filter(|&n| n > 0) else {
        return Vec::new();
    };

    if !available.is_empty() {
        let status: HashMap<&str, bool> =
            leases.iter().map(|l| (l.key.as_str(), l.is_finished())).collect();
        let ready = |l: &Lease| l.parents.iter().all(|p| status.get(p.as_str()).is_none_or(|&f| f));
        available.sort_by(|a, b| ready(b).cmp(&ready(a)).then_with(|| a.key.cmp(&b.key)));
        return available.into_iter().take(needed).cloned().collect();
    }

    // Nothing is available: consider stealing from the most loaded worker (never `me`: it
    // holds fewer than the target, so it cannot be the one over it).
    let Some((&victim, &load)) = counts
        .iter()
        .filter(|&(&w, _)| w != me)
        .max_by(|a, b| a.1.cmp(b.1).then_with(|| b.0.cmp(a.0)))
    else {
        return Vec::new();
    };
    if load < target {
        return Vec::new();
    }
    let mut steal = needed.min(load - target);
    if steal == 0 && needed > 1 {
        // He holds exactly the target but I am more than one short: take one anyway, or a new
        // worker would never get a lease when every other worker sits at the target.
        steal = 1;
    }
    let steal = steal.min(MAX_LEASES_TO_STEAL_AT_ONE_TIME);
    held.into_iter().filter(|l| l.owner.as_deref() == Some(victim)).take(steal).cloned().collect()
}

/// KCL's default `maxLeasesToStealAtOneTime`: stealing moves a shard (and replays from its
/// last checkpoint), so the balance converges one lease per round.
const MAX_LEASES_TO_STEAL_AT_ONE_TIME: usize = 1;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::kinesis::lease::{SHARD_END, TRIM_HORIZON};

    const D: Duration = Duration::from_secs(10);

    fn lease(key: &str, owner: Option<&str>, counter: u64) -> Lease {
        Lease { owner: owner.map(str::to_owned), counter, ..Lease::new(key, TRIM_HORIZON) }
    }

    fn keys(leases: &[Lease]) -> Vec<&str> {
        leases.iter().map(|l| l.key.as_str()).collect()
    }

    /// Leases held by owners as given, all seen alive: observed once at `t0`, and judged at
    /// `t0` too.
    fn held(owners: &[&str]) -> Vec<Lease> {
        owners.iter().enumerate().map(|(i, o)| lease(&format!("s{i}"), Some(o), 1)).collect()
    }

    fn take_now(leases: &[Lease], me: &str) -> Vec<Lease> {
        let t0 = Instant::now();
        let mut obs = Observer::new(D);
        obs.observe(leases, t0);
        to_take(leases, &obs, me, t0)
    }

    #[test]
    fn first_sighting_of_an_owned_lease_is_not_expired() {
        let t0 = Instant::now();
        let mut obs = Observer::new(D);
        obs.observe(&[lease("a", Some("w1"), 5)], t0);
        assert!(!obs.expired("a", t0));
        assert!(!obs.expired("a", t0 + D), "exactly one duration is not yet expired");
        assert!(obs.expired("a", t0 + D + Duration::from_millis(1)));
    }

    #[test]
    fn expiry_counts_from_the_last_counter_change_seen_locally() {
        let t0 = Instant::now();
        let mut obs = Observer::new(D);
        obs.observe(&[lease("a", Some("w1"), 5)], t0);
        // Unchanged at t0+6: the clock keeps running from t0.
        obs.observe(&[lease("a", Some("w1"), 5)], t0 + Duration::from_secs(6));
        assert!(obs.expired("a", t0 + Duration::from_secs(11)));
        // Changed at t0+8: alive again for a full duration from then.
        obs.observe(&[lease("a", Some("w1"), 6)], t0 + Duration::from_secs(8));
        assert!(!obs.expired("a", t0 + Duration::from_secs(11)));
        assert!(!obs.expired("a", t0 + Duration::from_secs(18)));
        assert!(obs.expired("a", t0 + Duration::from_secs(19)));
    }

    #[test]
    fn unowned_lease_is_takeable_immediately() {
        let t0 = Instant::now();
        let mut obs = Observer::new(D);
        let leases = [lease("a", None, 0)];
        obs.observe(&leases, t0);
        assert!(obs.expired("a", t0));
        assert_eq!(keys(&to_take(&leases, &obs, "me", t0)), ["a"]);
        // Released by its owner (the counter moved, the owner is gone): takeable at once too.
        let mut obs = Observer::new(D);
        obs.observe(&[lease("a", Some("w1"), 3)], t0);
        obs.observe(&[lease("a", None, 4)], t0 + Duration::from_secs(1));
        assert!(obs.expired("a", t0 + Duration::from_secs(1)));
    }

    #[test]
    fn unknown_and_forgotten_leases_are_not_expired() {
        let t0 = Instant::now();
        let mut obs = Observer::new(D);
        assert!(!obs.expired("a", t0 + D * 10));
        obs.observe(&[lease("a", None, 0)], t0);
        obs.observe(&[], t0);
        assert!(!obs.expired("a", t0));
    }

    #[test]
    fn a_clock_behind_the_observation_never_expires_anything() {
        let t0 = Instant::now() + D;
        let mut obs = Observer::new(D);
        obs.observe(&[lease("a", Some("w1"), 1)], t0);
        assert!(!obs.expired("a", t0.checked_sub(D).unwrap()));
    }

    #[test]
    fn expired_leases_of_a_dead_worker_are_taken() {
        let t0 = Instant::now();
        let mut obs = Observer::new(D);
        let leases = held(&["dead", "dead", "me"]);
        obs.observe(&leases, t0);
        assert!(to_take(&leases, &obs, "me", t0).is_empty(), "2 and 1 is balanced for 2 workers");
        let later = t0 + D + Duration::from_secs(1);
        // Only my own renewal moved.
        let mut leases2 = leases.clone();
        leases2[2].counter += 1;
        obs.observe(&leases2, later);
        // "dead" holds nothing alive: one worker, target 3, I hold 1 and take both.
        assert_eq!(keys(&to_take(&leases2, &obs, "me", later)), ["s0", "s1"]);
    }

    #[test]
    fn two_workers_four_leases_settle_at_two_each_one_steal_per_round() {
        // A new worker "b" joins "a", which holds all four.
        let mut leases = held(&["a", "a", "a", "a"]);
        let mut rounds = 0;
        loop {
            let take = take_now(&leases, "b");
            assert!(take.len() <= 1, "never more than one steal at a time");
            let Some(t) = take.first() else { break };
            let i = leases.iter().position(|l| l.key == t.key).unwrap();
            leases[i].owner = Some("b".into());
            leases[i].counter += 1;
            rounds += 1;
        }
        assert_eq!(rounds, 2);
        let count = |w: &str| leases.iter().filter(|l| l.owner.as_deref() == Some(w)).count();
        assert_eq!((count("a"), count("b")), (2, 2));
        assert!(take_now(&leases, "a").is_empty(), "a does not steal back");
    }

    #[test]
    fn two_workers_start_together_on_four_new_leases() {
        // Both see four unowned leases: each sees only itself as a worker, so each would take
        // all four; the conditional takes decide. Say "a" won them all: "b" then steals.
        let leases: Vec<Lease> = (0..4).map(|i| lease(&format!("s{i}"), None, 0)).collect();
        assert_eq!(take_now(&leases, "a").len(), 4);
        let won: Vec<Lease> = leases
            .iter()
            .map(|l| Lease { owner: Some("a".into()), counter: 1, ..l.clone() })
            .collect();
        assert_eq!(take_now(&won, "b").len(), 1);
    }

    #[test]
    fn three_workers_four_leases_do_not_thrash() {
        // Target ⌈4/3⌉ = 2. Holding 1 while the most loaded holds exactly 2: no steal.
        assert!(take_now(&held(&["a", "a", "b", "c"]), "c").is_empty());
        assert!(take_now(&held(&["a", "a", "b", "c"]), "b").is_empty());
        assert!(take_now(&held(&["a", "a", "b", "c"]), "a").is_empty());
    }

    #[test]
    fn a_worker_two_short_steals_one_from_a_worker_at_the_target() {
        // KCL's case (b): the most loaded holds exactly the target and I need more than one.
        let take = take_now(&held(&["a", "a", "b", "b"]), "c");
        assert_eq!(keys(&take), ["s0"], "ties go to the first owner by name");
        assert_eq!(take[0].owner.as_deref(), Some("a"));
        // Then 1/2/1: stable.
        assert!(take_now(&held(&["c", "a", "b", "b"]), "a").is_empty());
        assert!(take_now(&held(&["c", "a", "b", "b"]), "c").is_empty());
    }

    #[test]
    fn steal_from_the_most_loaded_over_target() {
        // 3/1/0, target 2: c needs 2, a is 1 over: steal min(2, 1, max 1) = 1 from a.
        let take = take_now(&held(&["b", "a", "a", "a"]), "c");
        assert_eq!(keys(&take), ["s1"]);
        // b needs 1 and a is over: b steals one from a too.
        let take = take_now(&held(&["b", "a", "a", "a"]), "b");
        assert_eq!(take[0].owner.as_deref(), Some("a"));
        // 4/0, target 2: two over, still one at a time.
        assert_eq!(take_now(&held(&["a", "a", "a", "a"]), "b").len(), 1);
    }

    #[test]
    fn more_workers_than_leases_target_one() {
        // b and c hold nothing, so they are not counted: me and a, target ⌈2/2⌉ = 1; a holds 2.
        assert_eq!(take_now(&held(&["a", "a"]), "c").len(), 1);
        // a and b hold one each and I hold none: target ⌈2/3⌉ = 1, nobody over it, I need
        // only one: no steal.
        assert!(take_now(&held(&["a", "b"]), "c").is_empty());
    }

    #[test]
    fn available_leases_are_taken_before_any_steal_and_only_up_to_the_deficit() {
        let t0 = Instant::now();
        let mut leases = held(&["a", "a", "a", "a", "a", "a"]);
        leases.extend((6..10).map(|i| lease(&format!("s{i}"), None, 0)));
        let mut obs = Observer::new(D);
        obs.observe(&leases, t0);
        // 10 leases, workers a and me: target 5. Four are unowned: take all four, steal none.
        assert_eq!(keys(&to_take(&leases, &obs, "me", t0)), ["s6", "s7", "s8", "s9"]);
        // a holds 2 alive and 4 are unowned: target ⌈6/2⌉ = 3, so I take 3 of the 4.
        let few: Vec<Lease> = leases[4..].to_vec();
        let mut obs = Observer::new(D);
        obs.observe(&few, t0);
        assert_eq!(keys(&to_take(&few, &obs, "me", t0)), ["s6", "s7", "s8"]);
        // a holds more than the target but unowned leases exist, so I do not steal.
        let one_free: Vec<Lease> = leases[..7].to_vec();
        let mut obs = Observer::new(D);
        obs.observe(&one_free, t0);
        assert_eq!(keys(&to_take(&one_free, &obs, "me", t0)), ["s6"]);
    }

    #[test]
    fn ready_children_are_preferred_then_keys() {
        let t0 = Instant::now();
        let parent = Lease { checkpoint: SHARD_END.into(), ..lease("p", Some("x"), 9) };
        let running = lease("q", Some("me"), 3);
        let child_of_finished = Lease { parents: vec!["p".into()], ..lease("z1", None, 0) };
        let child_of_running = Lease { parents: vec!["q".into()], ..lease("c1", None, 0) };
        let child_of_gone = Lease { parents: vec!["gone".into()], ..lease("z2", None, 0) };
        let leases = [parent, running, child_of_finished, child_of_running, child_of_gone];
        let mut obs = Observer::new(D);
        obs.observe(&leases, t0);
        // Active: q, z1, c1, z2 with me alone: target 4, I hold 1, need 3.
        assert_eq!(keys(&to_take(&leases, &obs, "me", t0)), ["z1", "z2", "c1"]);
    }

    #[test]
    fn finished_leases_are_ignored() {
        let t0 = Instant::now();
        let done =
            |k: &str, o: Option<&str>| Lease { checkpoint: SHARD_END.into(), ..lease(k, o, 1) };
        let leases = [
            done("f0", Some("a")),
            done("f1", Some("a")),
            done("f2", None),
            lease("s0", Some("a"), 1),
            lease("s1", Some("me"), 1),
        ];
        let mut obs = Observer::new(D);
        obs.observe(&leases, t0);
        // Unowned and finished: not taken. a's finished leases do not make it "loaded".
        assert!(to_take(&leases, &obs, "me", t0).is_empty());
        // Even long after, expired finished leases stay untaken.
        assert!(to_take(&leases, &obs, "me", t0 + D * 3).iter().all(|l| !l.is_finished()));
        assert!(to_take(&[done("f", None)], &obs, "me", t0).is_empty());
    }

    #[test]
    fn my_own_expired_lease_is_taken_back() {
        let t0 = Instant::now();
        let leases = held(&["me", "a"]);
        let mut obs = Observer::new(D);
        obs.observe(&leases, t0);
        let later = t0 + D * 2;
        // a's counter moved, mine did not (my renewals failed): mine is available again.
        let mut now_seen = leases.clone();
        now_seen[1].counter += 1;
        obs.observe(&now_seen, t0 + D);
        assert_eq!(keys(&to_take(&now_seen, &obs, "me", later)), ["s0"]);
    }
}
