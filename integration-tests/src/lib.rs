//! Harness for the system tests: where the binary, the shared oracle and the generator are,
//! and helpers to run the binary and read its output tree.
#![allow(clippy::unwrap_used, clippy::missing_panics_doc, missing_docs)]

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub mod kinesis_proxy;
pub mod proxy;

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

    /// Starts the binary with `base` settings (environment variables), then `extra` over them.
    #[must_use]
    pub fn start_overriding(
        args: &[&str],
        mut base: Vec<(String, String)>,
        extra: &[(&str, &str)],
    ) -> Running {
        for (k, v) in extra {
            base.retain(|(n, _)| n != k);
            base.push(((*k).to_owned(), (*v).to_owned()));
        }
        let env: Vec<(&str, &str)> = base.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        Running::start(args, &env)
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

    /// Sends `sig` (`STOP`, `CONT`, `TERM`, …).
    pub fn signal(&self, sig: &str) {
        let st = Command::new("kill")
            .args([format!("-{sig}"), self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(st.success(), "kill -{sig}");
    }

    /// Waits up to `secs` for the process to exit; its status.
    pub fn wait_exit(&mut self, secs: u64) -> std::process::ExitStatus {
        let until = std::time::Instant::now() + std::time::Duration::from_secs(secs);
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st;
            }
            assert!(
                std::time::Instant::now() < until,
                "still running after {secs}s; log:\n{}",
                self.log().join("\n")
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }

    /// Whether some log line contains `needle`.
    #[must_use]
    pub fn logged(&self, needle: &str) -> bool {
        self.log().iter().any(|l| l.contains(needle))
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

    /// Keys under `prefix` with their ETags and sizes, without reading the bodies.
    #[must_use]
    pub fn listing(bucket: &str, prefix: &str) -> Vec<(String, String, i64)> {
        let rt = runtime();
        let c = s3();
        rt.block_on(async {
            let mut out = Vec::new();
            let mut pages =
                c.list_objects_v2().bucket(bucket).prefix(prefix).into_paginator().send();
            while let Some(page) = pages.next().await {
                for o in page.unwrap().contents() {
                    out.push((
                        o.key().unwrap().to_owned(),
                        o.e_tag().unwrap_or_default().to_owned(),
                        o.size().unwrap_or(0),
                    ));
                }
            }
            out
        })
    }

    /// Turns versioning on: every write of a key stays visible as a version.
    pub fn enable_versioning(bucket: &str) {
        use aws_sdk_s3::types::{BucketVersioningStatus, VersioningConfiguration};
        let rt = runtime();
        let conf =
            VersioningConfiguration::builder().status(BucketVersioningStatus::Enabled).build();
        rt.block_on(
            s3().put_bucket_versioning().bucket(bucket).versioning_configuration(conf).send(),
        )
        .unwrap();
    }

    /// Every version of every key under `prefix`: (key, its body, its user metadata).
    #[must_use]
    pub fn versions(
        bucket: &str,
        prefix: &str,
    ) -> Vec<(String, Vec<u8>, std::collections::HashMap<String, String>)> {
        let rt = runtime();
        let c = s3();
        rt.block_on(async {
            let mut out = Vec::new();
            let (mut key_marker, mut version_marker) = (None::<String>, None::<String>);
            loop {
                let page = c
                    .list_object_versions()
                    .bucket(bucket)
                    .prefix(prefix)
                    .set_key_marker(key_marker.clone())
                    .set_version_id_marker(version_marker.clone())
                    .send()
                    .await
                    .unwrap();
                for v in page.versions() {
                    let key = v.key().unwrap().to_owned();
                    let o = c
                        .get_object()
                        .bucket(bucket)
                        .key(&key)
                        .version_id(v.version_id().unwrap())
                        .send()
                        .await
                        .unwrap();
                    let meta = o.metadata().cloned().unwrap_or_default();
                    let body = o.body.collect().await.unwrap().into_bytes().to_vec();
                    out.push((key, body, meta));
                }
                if page.is_truncated() != Some(true) {
                    return out;
                }
                key_marker = page.next_key_marker().map(str::to_owned);
                version_marker = page.next_version_id_marker().map(str::to_owned);
            }
        })
    }

    /// Deletes every object of `bucket`, then the bucket (again while a running instance
    /// keeps writing into it).
    pub fn delete_bucket(bucket: &str) {
        let rt = runtime();
        let c = s3();
        for _ in 0..50 {
            let keys: Vec<String> = listing(bucket, "").into_iter().map(|(k, _, _)| k).collect();
            let gone = rt.block_on(async {
                for k in keys {
                    c.delete_object().bucket(bucket).key(k).send().await.unwrap();
                }
                c.delete_bucket().bucket(bucket).send().await.is_ok()
            });
            if gone {
                return;
            }
        }
        panic!("bucket {bucket} could not be emptied and deleted");
    }

    /// Unfinished multipart uploads in `bucket`: their keys.
    #[must_use]
    pub fn multipart_uploads(bucket: &str) -> Vec<String> {
        let rt = runtime();
        rt.block_on(s3().list_multipart_uploads().bucket(bucket).send())
            .unwrap()
            .uploads()
            .iter()
            .filter_map(|u| u.key().map(str::to_owned))
            .collect()
    }

    /// Writes one object.
    pub fn put(bucket: &str, key: &str, body: &[u8]) {
        let rt = runtime();
        let body = aws_sdk_s3::primitives::ByteStream::from(body.to_vec());
        rt.block_on(s3().put_object().bucket(bucket).key(key).body(body).send()).unwrap();
    }

    /// Deletes one object.
    pub fn delete(bucket: &str, key: &str) {
        let rt = runtime();
        rt.block_on(s3().delete_object().bucket(bucket).key(key).send()).unwrap();
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
        create_topic_on(&brokers(), topic, partitions, 1);
    }

    /// Creates `topic` on the cluster at `brokers`, with `replicas` replicas.
    pub fn create_topic_on(brokers: &str, topic: &str, partitions: i32, replicas: i32) {
        let admin: AdminClient<DefaultClientContext> =
            ClientConfig::new().set("bootstrap.servers", brokers).create().unwrap();
        let rt = runtime();
        // Messages up to 16 MiB: the data holds lines over the 1 MiB default, which the
        // pipeline must dead-letter as too_large rather than never see.
        let t = NewTopic::new(topic, partitions, TopicReplication::Fixed(replicas))
            .set("max.message.bytes", "16777216");
        let r = rt
            .block_on(admin.create_topics(&[t], &AdminOptions::new()))
            .unwrap_or_else(|e| panic!("Kafka at {brokers} (scripts/services up kafka): {e}"));
        for x in r {
            x.unwrap();
        }
    }

    /// A producer that stays connected, for records sent one at a time.
    pub struct Trickle(ThreadedProducer<DefaultProducerContext>);

    impl Trickle {
        /// Connects to the cluster at `brokers`.
        #[must_use]
        pub fn new(brokers: &str) -> Trickle {
            Trickle(
                ClientConfig::new()
                    .set("bootstrap.servers", brokers)
                    .set("linger.ms", "0")
                    .set("message.max.bytes", "16777216")
                    .create()
                    .unwrap(),
            )
        }

        /// Sends one record (delivered in the background).
        pub fn send(&self, topic: &str, key: &[u8], payload: &[u8]) {
            self.0
                .send(BaseRecord::to(topic).key(key).payload(payload))
                .map_err(|(e, _)| e)
                .unwrap();
        }
    }

    /// Feeds `lines` into a Kafka topic or a Kinesis stream the way users do, with
    /// `clickstream produce --key customer` (every line a record, empty ones too), and waits
    /// until each is acknowledged. `target` is `--kafka-topic T --brokers B` or
    /// `--kinesis-stream S` with `env` pointing at the emulator.
    pub fn produce_lines_with(target: &[&str], env: &[(&str, String)], lines: &[Vec<u8>]) {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("lines.jsonl");
        let mut data = Vec::with_capacity(lines.iter().map(|l| l.len() + 1).sum());
        for l in lines {
            assert!(!l.contains(&b'\n'), "a line holds a newline: send it with `produce`");
            data.extend_from_slice(l);
            data.push(b'\n');
        }
        std::fs::write(&file, data).unwrap();
        let schemas = crate::root().join("schemas");
        let out = std::process::Command::new(crate::bin())
            .arg("produce")
            .args(target)
            .arg("--schemas")
            .arg(&schemas)
            .arg(&file)
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .env("RUST_LOG", "warn")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "clickstream produce {target:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        let summary: serde_json::Value =
            serde_json::from_str(stdout.lines().last().unwrap_or_default()).unwrap();
        assert_eq!(summary["records"], lines.len(), "produce's summary: {summary}");
    }

    /// Feeds `lines` into `topic` with `clickstream produce` ([`produce_lines_with`]).
    pub fn produce_lines(topic: &str, lines: &[Vec<u8>]) {
        produce_lines_to(&brokers(), topic, lines);
    }

    /// The same, to the cluster at `brokers`.
    pub fn produce_lines_to(brokers: &str, topic: &str, lines: &[Vec<u8>]) {
        produce_lines_with(&["--kafka-topic", topic, "--brokers", brokers], &[], lines);
    }

    /// Produces `(key, payload)` records to `topic`, waiting until all are acknowledged: for
    /// records a line cannot hold (a payload with a newline) or keys chosen by the test;
    /// otherwise feed topics with [`produce_lines`], as users do.
    pub fn produce(topic: &str, records: &[(Vec<u8>, Vec<u8>)]) {
        produce_to(&brokers(), topic, records);
    }

    /// The same, to the cluster at `brokers`.
    pub fn produce_to(brokers: &str, topic: &str, records: &[(Vec<u8>, Vec<u8>)]) {
        let p: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
            .set("bootstrap.servers", brokers)
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
        committed_on(&brokers(), topic, group, partitions)
    }

    /// The same, on the cluster at `brokers`.
    #[must_use]
    pub fn committed_on(brokers: &str, topic: &str, group: &str, partitions: i32) -> Vec<i64> {
        use rdkafka::consumer::{BaseConsumer, Consumer};
        let c: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", brokers)
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
