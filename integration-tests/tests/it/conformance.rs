//! The shared conformance check (the binary against the independent oracle) over the matrix
//! the replay issue names: seeds 1, 7, 42 × 10k and 100k lines × lateness 7h and 10m.

use integration_tests::{bin, python, root, shared_data};
use std::process::Command;

fn conformance(events: u64, seed: u64) {
    for lateness in ["7h", "10m"] {
        let work = tempfile::tempdir().unwrap();
        let out = Command::new(python())
            .arg(shared_data().join("conformance.py"))
            .arg("--bin")
            .arg(bin())
            .args([
                "--events",
                &events.to_string(),
                "--seed",
                &seed.to_string(),
                "--lateness",
                lateness,
            ])
            .arg("--workdir")
            .arg(work.path())
            .current_dir(root())
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && text.contains("conformance: all passed"),
            "conformance failed for {events} lines, seed {seed}, lateness {lateness}:\n{text}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        if lateness == "10m" && events >= 100_000 {
            // With a lateness below the data's, some events must actually have been late.
            assert!(text.contains("\"late\""), "no late dead letters at 10m lateness:\n{text}");
        }
    }
}

#[test]
fn conformance_seed_1_10k() {
    conformance(10_000, 1);
}

#[test]
fn conformance_seed_7_10k() {
    conformance(10_000, 7);
}

#[test]
fn conformance_seed_42_10k() {
    conformance(10_000, 42);
}

#[test]
fn conformance_seed_1_100k() {
    conformance(100_000, 1);
}

#[test]
fn conformance_seed_7_100k() {
    conformance(100_000, 7);
}

#[test]
fn conformance_seed_42_100k() {
    conformance(100_000, 42);
}
