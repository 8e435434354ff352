//! Harness for the system tests: where the binary, the shared oracle and the generator are,
//! and helpers to run the binary and read its output tree.
#![allow(clippy::unwrap_used, clippy::missing_panics_doc, missing_docs)]

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The workspace root.
#[must_use]
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// The `clickstream` binary: `CLICKSTREAM_BIN`, or the one cargo built beside this test.
#[must_use]
pub fn bin() -> PathBuf {
    if let Ok(p) = std::env::var("CLICKSTREAM_BIN") {
        return PathBuf::from(p);
    }
    // target/<profile>/deps/it-<hash> → target/<profile>/clickstream
    let exe = std::env::current_exe().unwrap();
    let p = exe.parent().unwrap().parent().unwrap().join("clickstream");
    assert!(
        p.exists(),
        "no clickstream binary at {}: build it (cargo build --release) or set CLICKSTREAM_BIN",
        p.display()
    );
    p
}

/// The shared data tools (generator, oracle, conformance): `CLICKSTREAM_SHARED_DATA`, or
/// `../shared/data` beside the checkout.
pub fn shared_data() -> PathBuf {
    let p = std::env::var("CLICKSTREAM_SHARED_DATA")
        .map_or_else(|_| root().join("../shared/data"), PathBuf::from);
    assert!(
        p.join("clickgen.py").exists(),
        "the data generator is not at {}: set CLICKSTREAM_SHARED_DATA to the folder with clickgen.py and oracle.py",
        p.display()
    );
    p
}

#[must_use]
pub fn python() -> String {
    std::env::var("PYTHON").unwrap_or_else(|_| "python3".into())
}

/// Generates a clickstream file with the shared generator.
pub fn generate(out: &Path, events: u64, seed: u64, malformed: &str) {
    let st = Command::new(python())
        .arg(shared_data().join("clickgen.py"))
        .args([
            "--events",
            &events.to_string(),
            "--seed",
            &seed.to_string(),
            "--malformed-fraction",
            malformed,
            "--out",
        ])
        .arg(out)
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(st.success(), "clickgen failed");
}

/// Runs the binary with `args`.
#[must_use]
pub fn run(args: &[&str]) -> Output {
    Command::new(bin()).args(args).env("RUST_LOG", "warn").output().unwrap()
}

/// `clickstream replay` with the shipped schemas, writing to `out`, then `args` (flags, inputs).
#[must_use]
pub fn replay(out: &Path, args: &[&str]) -> Output {
    let schemas = root().join("schemas");
    let mut a =
        vec!["replay", "--schemas", schemas.to_str().unwrap(), "--output", out.to_str().unwrap()];
    a.extend_from_slice(args);
    run(&a)
}

/// The last stdout line, parsed.
#[must_use]
pub fn summary(out: &Output) -> serde_json::Value {
    let s = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(s.lines().last().unwrap_or_default()).unwrap_or(serde_json::Value::Null)
}

/// Every file under `dir` (relative path → bytes), gz files decompressed, skipping `_state`.
#[must_use]
pub fn tree(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let rel = p.strip_prefix(dir).unwrap().to_string_lossy().to_string();
            if rel.starts_with("_state") {
                continue;
            }
            if p.is_dir() {
                stack.push(p);
            } else {
                let mut bytes = std::fs::read(&p).unwrap();
                if p.extension().is_some_and(|x| x == "gz") {
                    let mut s = Vec::new();
                    flate2::read::MultiGzDecoder::new(&bytes[..]).read_to_end(&mut s).unwrap();
                    bytes = s;
                }
                out.insert(rel, bytes);
            }
        }
    }
    out
}

/// All JSON lines of the files under `dir/sub`, sorted.
#[must_use]
pub fn rows(dir: &Path, sub: &str) -> Vec<String> {
    let mut v: Vec<String> = tree(dir)
        .into_iter()
        .filter(|(k, _)| k.starts_with(sub))
        .flat_map(|(_, b)| {
            String::from_utf8(b).unwrap().lines().map(str::to_owned).collect::<Vec<_>>()
        })
        .collect();
    v.sort();
    v
}
