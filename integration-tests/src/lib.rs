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
                // The tree may be read while a process writes it: its temporary files come
                // and go (renamed into place); they are not output.
                if p.extension().is_some_and(|x| x == "tmp") {
                    continue;
                }
                let mut bytes = match std::fs::read(&p) {
                    Ok(b) => b,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(e) => panic!("{}: {e}", p.display()),
                };
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
        Running::start_program(bin().to_str().unwrap(), args, env)
    }

    /// Starts `program` (which runs the binary, e.g. through `setpriv`) likewise.
    #[must_use]
    pub fn start_program(program: &str, args: &[&str], env: &[(&str, &str)]) -> Running {
        use std::io::BufRead;
        let mut child = Command::new(program)
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

/// The loopback services (`scripts/services up`): endpoints from the standard variables, with
/// loopback defaults.
pub mod services {
    use rdkafka::ClientConfig;
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;
    use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
    use std::io::Read;
    use std::time::Duration;

    fn var(k: &str, d: &str) -> String {
        std::env::var(k).unwrap_or_else(|_| d.to_owned())
    }

    /// Kafka bootstrap servers.
    #[must_use]
    pub fn brokers() -> String {
        var("CLICKSTREAM_KAFKA_BROKERS", "127.0.0.1:9092")
    }

    /// The environment that points the binary (and the SDK) at the S3 API server.
    #[must_use]
    pub fn s3_env() -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ENDPOINT_URL", var("AWS_ENDPOINT_URL", "http://127.0.0.1:5000")),
            ("AWS_ACCESS_KEY_ID", var("AWS_ACCESS_KEY_ID", "test")),
            ("AWS_SECRET_ACCESS_KEY", var("AWS_SECRET_ACCESS_KEY", "test")),
            ("AWS_REGION", var("AWS_REGION", "us-east-1")),
            ("AWS_EC2_METADATA_DISABLED", "true".into()),
            ("CLICKSTREAM__S3__FORCE_PATH_STYLE", "true".into()),
        ]
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap()
    }

    /// An S3 client for the loopback server.
    #[must_use]
    pub fn s3() -> aws_sdk_s3::Client {
        let env = s3_env();
        let get = |k: &str| env.iter().find(|(n, _)| *n == k).map(|(_, v)| v.clone()).unwrap();
        let creds = aws_sdk_s3::config::Credentials::new(
            get("AWS_ACCESS_KEY_ID"),
            get("AWS_SECRET_ACCESS_KEY"),
            None,
            None,
            "tests",
        );
        let conf = aws_sdk_s3::config::Builder::new()
            .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
            .region(aws_sdk_s3::config::Region::new(get("AWS_REGION")))
            .endpoint_url(get("AWS_ENDPOINT_URL"))
            .credentials_provider(creds)
            .force_path_style(true)
            .build();
        aws_sdk_s3::Client::from_conf(conf)
    }

    /// A new, empty bucket.
    #[must_use]
    pub fn fresh_bucket(tag: &str) -> String {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let name = format!("{tag}-{}-{n}", std::process::id());
        let rt = runtime();
        let c = s3();
        rt.block_on(c.create_bucket().bucket(&name).send()).unwrap_or_else(|e| {
            panic!("cannot create bucket {name} (start the S3 API server: scripts/services up s3): {e:?}")
        });
        name
    }

    /// Every object under `prefix` in `bucket`: key → bytes (gzip objects decompressed).
    #[must_use]
    pub fn objects(bucket: &str, prefix: &str) -> std::collections::BTreeMap<String, Vec<u8>> {
        let rt = runtime();
        let c = s3();
        rt.block_on(async {
            let mut out = std::collections::BTreeMap::new();
            let mut pages =
                c.list_objects_v2().bucket(bucket).prefix(prefix).into_paginator().send();
            while let Some(page) = pages.next().await {
                for o in page.unwrap().contents() {
                    let key = o.key().unwrap().to_owned();
                    let body = c.get_object().bucket(bucket).key(&key).send().await.unwrap();
                    let mut bytes = body.body.collect().await.unwrap().into_bytes().to_vec();
                    if std::path::Path::new(&key)
                        .extension()
                        .is_some_and(|x| x.eq_ignore_ascii_case("gz"))
                    {
                        let mut s = Vec::new();
                        flate2::read::MultiGzDecoder::new(&bytes[..]).read_to_end(&mut s).unwrap();
                        bytes = s;
                    }
                    out.insert(key, bytes);
                }
            }
            out
        })
    }

    /// One object's bytes, if it exists.
    #[must_use]
    pub fn get(bucket: &str, key: &str) -> Option<Vec<u8>> {
        let rt = runtime();
        let c = s3();
        rt.block_on(async {
            let o = c.get_object().bucket(bucket).key(key).send().await.ok()?;
            Some(o.body.collect().await.ok()?.into_bytes().to_vec())
        })
    }

    /// All JSON lines of the objects under `prefix`.
    #[must_use]
    pub fn lines(bucket: &str, prefix: &str) -> Vec<String> {
        objects(bucket, prefix)
            .values()
            .flat_map(|b| String::from_utf8_lossy(b).lines().map(str::to_owned).collect::<Vec<_>>())
            .collect()
    }

    /// Creates `topic` with `partitions` partitions.
    pub fn create_topic(topic: &str, partitions: i32) {
        let admin: AdminClient<DefaultClientContext> =
            ClientConfig::new().set("bootstrap.servers", brokers()).create().unwrap();
        let rt = runtime();
        // Messages up to 16 MiB: the data holds lines over the 1 MiB default, which the
        // pipeline must dead-letter as too_large rather than never see.
        let t = NewTopic::new(topic, partitions, TopicReplication::Fixed(1))
            .set("max.message.bytes", "16777216");
        let r = rt
            .block_on(admin.create_topics(&[t], &AdminOptions::new()))
            .unwrap_or_else(|e| panic!("Kafka at {} (scripts/services up kafka): {e}", brokers()));
        for x in r {
            x.unwrap();
        }
    }

    /// Produces `(key, payload)` records to `topic`, waiting until all are acknowledged.
    pub fn produce(topic: &str, records: &[(Vec<u8>, Vec<u8>)]) {
        let p: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
            .set("bootstrap.servers", brokers())
            .set("linger.ms", "20")
            .set("enable.idempotence", "true")
            .set("message.max.bytes", "16777216")
            .create()
            .unwrap();
        for (k, v) in records {
            let mut rec = BaseRecord::to(topic).key(k).payload(v);
            loop {
                match p.send(rec) {
                    Ok(()) => break,
                    Err((
                        rdkafka::error::KafkaError::MessageProduction(
                            rdkafka::types::RDKafkaErrorCode::QueueFull,
                        ),
                        back,
                    )) => {
                        rec = back;
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    Err((e, _)) => panic!("producing to {topic}: {e}"),
                }
            }
        }
        p.flush(Duration::from_mins(1)).unwrap();
    }

    /// The group's committed offset per partition.
    #[must_use]
    pub fn committed(topic: &str, group: &str, partitions: i32) -> Vec<i64> {
        use rdkafka::consumer::{BaseConsumer, Consumer};
        let c: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", brokers())
            .set("group.id", group)
            .create()
            .unwrap();
        let mut tpl = rdkafka::TopicPartitionList::new();
        for p in 0..partitions {
            tpl.add_partition(topic, p);
        }
        let got = c.committed_offsets(tpl, Duration::from_secs(10)).unwrap();
        (0..partitions)
            .map(|p| match got.find_partition(topic, p).map(|e| e.offset()) {
                Some(rdkafka::Offset::Offset(o)) => o,
                _ => 0,
            })
            .collect()
    }
}

/// A TCP forwarder in front of a real server, whose link can be cut: connections are refused
/// and open ones closed while it is down. Fault injection, not a stand-in for the server.
pub struct Cut {
    /// `127.0.0.1:PORT` to connect to instead of the server.
    pub addr: String,
    down: std::sync::Arc<std::sync::atomic::AtomicBool>,
    open: std::sync::Arc<std::sync::Mutex<Vec<std::net::TcpStream>>>,
}

impl Cut {
    /// Forwards a new loopback port to `target` (`host:port`).
    #[must_use]
    pub fn start(target: &str) -> Cut {
        use std::sync::atomic::Ordering;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let down = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let open = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (d, o, target) =
            (std::sync::Arc::clone(&down), std::sync::Arc::clone(&open), target.to_owned());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                if d.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                let Ok(server) = std::net::TcpStream::connect(&target) else { continue };
                let mut list = o.lock().unwrap();
                list.push(client.try_clone().unwrap());
                list.push(server.try_clone().unwrap());
                for (mut from, mut to) in
                    [(client.try_clone().unwrap(), server.try_clone().unwrap()), (server, client)]
                {
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut to);
                        let _ = to.shutdown(std::net::Shutdown::Both);
                    });
                }
            }
        });
        Cut { addr, down, open }
    }

    /// Cuts the link (`true`) or restores it.
    pub fn set_down(&self, down: bool) {
        self.down.store(down, std::sync::atomic::Ordering::SeqCst);
        if down {
            for s in self.open.lock().unwrap().drain(..) {
                let _ = s.shutdown(std::net::Shutdown::Both);
            }
        }
    }
}

/// Resident memory of a process, in KiB (Linux).
#[must_use]
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|n| n.parse().ok())
        })
        .unwrap_or(0)
}

/// Reads `topic` from the beginning until `n` messages arrived or `secs` passed; the payloads.
#[must_use]
pub fn consume_all(topic: &str, n: usize, secs: u64) -> Vec<Vec<u8>> {
    use rdkafka::ClientConfig;
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::message::Message;
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", services::brokers())
        .set("group.id", format!("reader-{topic}-{}", std::process::id()))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    c.subscribe(&[topic]).unwrap();
    let until = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    let mut out = Vec::new();
    while out.len() < n && std::time::Instant::now() < until {
        if let Some(Ok(m)) = c.poll(std::time::Duration::from_millis(200)) {
            out.push(m.payload().unwrap_or_default().to_vec());
        }
    }
    out
}
