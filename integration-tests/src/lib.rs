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

/// A `clickstream` process in the background whose stderr (JSON log lines) is collected.
pub struct Running {
    pub child: std::process::Child,
    log: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl Running {
    /// Starts the binary with `args` and `env`, logging at info level.
    #[must_use]
    pub fn start(args: &[&str], env: &[(&str, &str)]) -> Running {
        use std::io::BufRead;
        let mut child = Command::new(bin())
            .args(args)
            .envs(env.iter().copied())
            .env("RUST_LOG", "info")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (sink, stderr) = (std::sync::Arc::clone(&log), child.stderr.take().unwrap());
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                sink.lock().unwrap().push(line);
            }
        });
        Running { child, log }
    }

    /// The log lines so far.
    #[must_use]
    pub fn log(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    /// Waits up to `secs` for a log line containing `needle`; returns it.
    #[allow(clippy::must_use_candidate)] // called for the wait as often as for the line
    pub fn wait_log(&self, needle: &str, secs: u64) -> String {
        let until = std::time::Instant::now() + std::time::Duration::from_secs(secs);
        loop {
            if let Some(l) = self.log().into_iter().find(|l| l.contains(needle)) {
                return l;
            }
            assert!(
                std::time::Instant::now() < until,
                "no log line with `{needle}` within {secs}s; log:\n{}",
                self.log().join("\n")
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    /// The admin API's address, from its start-up log line.
    #[must_use]
    pub fn admin_addr(&self) -> String {
        let l = self.wait_log("Admin API listening", 30);
        let v: serde_json::Value = serde_json::from_str(&l).unwrap();
        v["addr"].as_str().unwrap().to_owned()
    }

    /// SIGINT, then the exit code.
    #[must_use]
    pub fn interrupt(mut self) -> Option<i32> {
        let st =
            Command::new("kill").args(["-INT", &self.child.id().to_string()]).status().unwrap();
        assert!(st.success());
        self.child.wait().unwrap().code()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `curl` with `args` (a real HTTP client); (status code, body).
#[must_use]
pub fn curl(args: &[&str]) -> (u16, String) {
    let o = Command::new("curl")
        .args(["-s", "-o", "-", "-w", "\n%{http_code}"])
        .args(args)
        .output()
        .expect("curl is needed by the admin API tests (scripts/setup installs it)");
    let text = String::from_utf8_lossy(&o.stdout).to_string();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_owned())
}
