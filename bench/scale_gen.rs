//! Input for `bench/scale`: simple valid events of the acme-web tracker, written to stdout as
//! fast as a pipe takes them, so the state's size — not the generator — is what a run measures.
//!
//! `scale_gen EVENTS CUSTOMERS [SEED]`: EVENTS events over one day of event time
//! (2024-03-04), in time order with up to 30 minutes of disorder, customers drawn uniformly
//! from CUSTOMERS, every message id distinct, kinds in a fixed mix. Deterministic for a seed.
#![allow(clippy::unwrap_used, missing_docs)]

use std::io::Write;

/// splitmix64: small, fast and good enough to spread customers and jitter.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// `YYYY-MM-DDTHH:MM:SS.mmmZ` of a time on 2024-03-04 (ms since that midnight, UTC).
fn iso(ms_of_day: u64) -> String {
    let (s, ms) = (ms_of_day / 1000, ms_of_day % 1000);
    format!("2024-03-04T{:02}:{:02}:{:02}.{ms:03}Z", s / 3600, s / 60 % 60, s % 60)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let events: u64 = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(1_000_000);
    let customers: u64 = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(20_000);
    let seed: u64 = args.get(3).and_then(|a| a.parse().ok()).unwrap_or(42);
    let mut rng = Rng(seed);
    let day_ms: u64 = 86_400_000 - 1;
    let disorder = 30 * 60 * 1000;
    let out = std::io::stdout();
    let mut w = std::io::BufWriter::with_capacity(1 << 20, out.lock());
    for i in 0..events {
        let base = i * day_ms / events.max(1);
        let t = base.saturating_sub(rng.below(disorder)).min(day_ms);
        let customer = rng.below(customers);
        let kind = match rng.below(20) {
            0 => r#""event_type":"click","target":{"id":"subscribe-btn"}"#,
            1 => r#""event_type":"hover","target":{"id":"subscribe-btn"}"#,
            2..=11 => r#""event_type":"pageview","page":"/a""#,
            _ => r#""event_type":"scroll""#,
        };
        let line = format!(
            "{{\"event_id\":\"e{seed}-{i}\",\"customer\":{{\"id\":\"c{customer}\"}},\"time\":\"{}\",{kind}}}\n",
            iso(t)
        );
        if w.write_all(line.as_bytes()).is_err() {
            return; // the reader went away
        }
    }
    let _ = w.flush();
}
