//! How often a shard is read: within the service's limits per shard (5 `GetRecords` a second,
//! 2 MiB/s shared by every consumer), slower when caught up, backing off with full jitter when
//! throttled or failing. Pure arithmetic, so the figures are tested without a clock.

use std::time::Duration;

/// `GetRecords` calls per second a shard allows.
const CALLS_PER_SECOND: u64 = 5;
/// Bytes per second a shard allows to be read.
const BYTES_PER_SECOND: u64 = 2 << 20;
/// First back-off after a throttle or failure.
const BACKOFF_BASE: Duration = Duration::from_millis(200);
/// Longest back-off.
const BACKOFF_CAP: Duration = Duration::from_secs(5);

/// A shard's pace.
#[derive(Debug, Clone, Copy)]
pub struct Pace {
    /// Wait after an empty response with nothing behind it.
    pub idle: Duration,
}

impl Pace {
    /// The wait before the next call, after a response of `bytes` with `records` records,
    /// `caught_up` when nothing lies further on (`MillisBehindLatest` = 0).
    #[must_use]
    pub fn after(&self, bytes: u64, records: usize, caught_up: bool) -> Duration {
        let calls = Duration::from_millis(1000 / CALLS_PER_SECOND);
        // The read budget refills at 2 MiB/s: a 10 MiB response costs 5 s of it.
        let budget = Duration::from_millis(bytes.saturating_mul(1000) / BYTES_PER_SECOND);
        let mut wait = calls.max(budget);
        if records == 0 && caught_up {
            wait = wait.max(self.idle);
        }
        wait
    }

    /// The wait before retry `attempt` (1, 2, …) after a throttle or failure, with full jitter
    /// (`jitter` uniform in [0, 1)): retries of many shards spread out instead of colliding.
    #[must_use]
    pub fn backoff(attempt: u32, jitter: f64) -> Duration {
        let ceiling =
            BACKOFF_BASE.saturating_mul(1 << attempt.saturating_sub(1).min(16)).min(BACKOFF_CAP);
        // Never zero: a tight retry loop is what throttling punishes.
        ceiling.mul_f64(jitter.clamp(0.0, 1.0)).max(Duration::from_millis(50))
    }
}

/// A cheap jitter source (no cryptographic need): xorshift seeded per shard.
#[derive(Debug, Clone)]
pub struct Jitter(u64);

impl Jitter {
    /// A source seeded from `seed` (never zero).
    #[must_use]
    pub fn new(seed: u64) -> Jitter {
        Jitter(seed | 1)
    }

    /// The next value in [0, 1).
    pub fn draw(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PACE: Pace = Pace { idle: Duration::from_secs(1) };

    #[test]
    fn at_most_five_calls_a_second() {
        assert_eq!(PACE.after(1_000, 10, false), Duration::from_millis(200));
        assert_eq!(PACE.after(0, 0, false), Duration::from_millis(200), "records lie further on");
    }

    #[test]
    fn reads_stay_within_two_mib_a_second() {
        assert_eq!(PACE.after(10 << 20, 10_000, false), Duration::from_secs(5));
        assert_eq!(PACE.after(1 << 20, 1_000, false), Duration::from_millis(500));
    }

    #[test]
    fn caught_up_waits_the_idle_pause() {
        assert_eq!(PACE.after(0, 0, true), Duration::from_secs(1));
        assert_eq!(PACE.after(100, 1, true), Duration::from_millis(200), "data came: go on");
    }

    #[test]
    fn backoff_grows_to_its_cap_with_jitter() {
        assert_eq!(Pace::backoff(1, 0.999_999), Duration::from_millis(200).mul_f64(0.999_999));
        assert_eq!(Pace::backoff(3, 0.5), Duration::from_millis(400));
        assert_eq!(Pace::backoff(30, 0.5), Duration::from_millis(2500));
        assert_eq!(Pace::backoff(2, 0.0), Duration::from_millis(50), "never a tight loop");
        let mut j = Jitter::new(7);
        let v: Vec<f64> = (0..1000).map(|_| j.draw()).collect();
        assert!(v.iter().all(|x| (0.0..1.0).contains(x)));
        let mean = v.iter().sum::<f64>() / v.len() as f64;
        assert!((0.4..0.6).contains(&mean), "{mean}");
    }
}
