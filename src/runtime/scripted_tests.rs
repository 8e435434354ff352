//! The runtime driven by a scripted source in memory: two instances share the memory object
//! store, and a seeded script moves splits between them — handovers, lost assignments, and
//! owners that keep running after their split moved — while records arrive. Whatever the
//! script, the published rows equal those of one processor reading each split once, and no
//! key but the commit record is written by two epochs. A second implementation of the
//! source traits besides Kafka's and Kinesis's; it also closes a split and starts its children
//! from its final state, as a Kinesis reshard does.

use super::split::PipelineSettings;
use super::tests::{RULES, extractor, rows};
use super::{RunSettings, Runtime};
use crate::event::{LinePosition, SourcePosition};
use crate::processor::{MetaBase, Processor};
use crate::registry::watch::Switchboard;
use crate::sink::objects::{MemoryObjects, ObjectStore};
use crate::source::kafka::KafkaSettings;
use crate::source::{
    Done, Lineage, Note, Polled, Position, Record, SourceControl, SplitId, SplitReader, StartAt,
};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

const SPLITS: usize = 3;
const RECORDS: usize = 1_500;

/// The position: the index of the next record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct At(u64);

impl At {
    /// A closed split's end.
    const END: At = At(u64::MAX);
}

impl Position for At {
    fn encode(&self) -> String {
        if *self == At::END { crate::source::END.to_owned() } else { self.0.to_string() }
    }
    fn decode(text: &str) -> Option<Self> {
        if text == crate::source::END {
            return Some(At::END);
        }
        text.parse().ok().map(At)
    }
    fn legacy(&self) -> SourcePosition {
        SourcePosition { input: 0, line: self.0, offset: self.0 }
    }
    fn from_legacy(p: SourcePosition) -> Option<Self> {
        Some(At(p.line))
    }
}

/// One split's records, of which the first `produced` exist.
struct Log {
    records: Vec<Vec<u8>>,
    produced: AtomicUsize,
    /// Closed (a parent of a reshard): its reader ends after the last record.
    closed: bool,
}

/// Records of split `s`: customers `s-0`..`s-9` in turn, 40 ms apart, with a pause of two
/// seconds every 97 records, so that with a gap of one second a session spans dozens of
/// records — and many handovers fall inside one; the last record moves the watermark a day
/// on, so every real session closes at the next checkpoint, however the checkpoints were cut.
fn log(s: usize) -> Log {
    let t0: u64 = 1_709_510_400_000;
    let mut records: Vec<Vec<u8>> = (0..RECORDS - 1)
        .map(|i| {
            let t = t0 + i as u64 * 40 + (i / 97) as u64 * 2_000;
            format!(r#"{{"id":"{s}-{i}","c":"{s}-{}","t":{t}}}"#, (i * 7) % 10).into_bytes()
        })
        .collect();
    records.push(format!(r#"{{"id":"{s}-end","c":"flush","t":{}}}"#, t0 + 86_400_000).into_bytes());
    Log { records, produced: AtomicUsize::new(0), closed: false }
}

fn split(s: usize) -> SplitId {
    SplitId::new(&format!("p{s:04}"))
}

/// One instance's view of the source: where each of its readers was positioned.
struct Control {
    seeks: Mutex<HashMap<SplitId, Arc<Mutex<Option<u64>>>>>,
    /// Splits that continue others (a reshard).
    lineage: HashMap<SplitId, Lineage>,
}

impl Control {
    fn seek(&self, id: &SplitId) -> Arc<Mutex<Option<u64>>> {
        Arc::clone(self.seeks.lock().unwrap().entry(id.clone()).or_default())
    }
}

impl SourceControl for Control {
    type Position = At;

    fn start(&self, id: &SplitId, at: &StartAt<At>, _: &dyn Fn() -> bool) -> Result<(), String> {
        let n = match at {
            StartAt::Initial => 0,
            StartAt::Resume(At(n)) => *n,
        };
        *self.seek(id).lock().unwrap() = Some(n);
        Ok(())
    }

    fn commit_hint(&self, _: &SplitId, _: &At) {}

    fn identity(&self, id: &SplitId) -> String {
        // One stream: the lineage check compares what precedes the split's name.
        format!("memory/{id}")
    }

    fn lineage(&self, id: &SplitId) -> Option<Lineage> {
        self.lineage.get(id).cloned()
    }
}

struct Reader {
    log: Arc<Log>,
    seek: Arc<Mutex<Option<u64>>>,
    next: u64,
}

impl SplitReader for Reader {
    type Position = At;

    fn poll(&mut self, timeout: Duration) -> Polled<'_, At> {
        if let Some(n) = self.seek.lock().unwrap().take() {
            self.next = n;
        }
        let produced = self.log.produced.load(Ordering::Acquire);
        if self.log.closed && produced == self.log.records.len() && self.next as usize >= produced {
            return Polled::End(At::END);
        }
        if self.next as usize >= produced {
            std::thread::sleep(timeout.min(Duration::from_millis(2)));
            return Polled::Nothing;
        }
        let i = self.next as usize;
        self.next += 1;
        Polled::Record(Record {
            payload: &self.log.records[i],
            line: LinePosition { input: 0, line: i as u64, offset: i as u64 },
            end: At(self.next),
        })
    }

    fn lag(&self, at: Option<&At>) -> Option<u64> {
        let at = at.map_or(0, |a| a.0);
        Some((self.log.produced.load(Ordering::Acquire) as u64).saturating_sub(at))
    }
}

/// A running instance: its runtime thread, and the channel a source would feed.
struct Instance {
    control: Arc<Control>,
    notes: Sender<Note<Reader>>,
    cancel: CancellationToken,
    thread: std::thread::JoinHandle<()>,
}

impl Instance {
    fn start(store: &MemoryObjects, state: &std::path::Path) -> Instance {
        Instance::with_lineage(store, state, HashMap::new())
    }

    fn with_lineage(
        store: &MemoryObjects,
        state: &std::path::Path,
        lineage: HashMap<SplitId, Lineage>,
    ) -> Instance {
        let s = RunSettings {
            kafka: KafkaSettings {
                brokers: String::new(),
                topic: String::new(),
                group: String::new(),
                properties: BTreeMap::new(),
                revoke_deadline: Duration::from_secs(1),
                liveness_timeout: Duration::from_mins(1),
            },
            kinesis: None,
            sink: crate::s3::S3Location { bucket: "memory".into(), prefix: String::new() },
            state: state.to_path_buf(),
            pipeline: PipelineSettings {
                rules: RULES,
                checkpoint_interval: Duration::from_millis(20),
                checkpoint_bytes: 4_000,
                idle_timeout: Duration::from_hours(1),
                stop_deadline: Duration::from_secs(5),
            },
            shutdown_deadline: Duration::from_secs(10),
            force_path_style: false,
            parquet: false,
            dead_letter_topic: None,
            keep_snapshots: 2,
            memory: crate::state::rocksdb::MemoryBudget::default(),
            permanent_error_deadline: Duration::from_mins(1),
            allow_settings_change: false,
        };
        let control = Arc::new(Control { seeks: Mutex::default(), lineage });
        let (tx, rx) = std::sync::mpsc::channel();
        let cancel = CancellationToken::new();
        let (c, k, objects) = (Arc::clone(&control), cancel.clone(), store.clone());
        let notes = tx.clone();
        let thread = std::thread::spawn(move || {
            let x = extractor();
            let board = Switchboard::new(&x);
            let mut rtm = Runtime {
                s: &s,
                control: c,
                notes: (tx, rx),
                slots: BTreeMap::new(),
                objects: Arc::new(objects),
                root: CancellationToken::new(),
                extractor: x,
                health: Arc::default(),
                dlq: None,
                fence_retry: Duration::from_secs(10),
            };
            rtm.drive(&board, &k, &mut || None).unwrap();
            rtm.shutdown();
        });
        Instance { control, notes, cancel, thread }
    }

    fn assign(&self, logs: &[Arc<Log>], s: usize) {
        let id = split(s);
        let reader = Reader { log: Arc::clone(&logs[s]), seek: self.control.seek(&id), next: 0 };
        self.notes.send(Note::Assigned { id, reader }).unwrap();
    }

    /// Revokes as the Kafka source does: waits (at most a deadline) for the split to stop.
    fn revoke(&self, s: usize, lost: bool) {
        let (done, rx) = Done::new();
        self.notes.send(Note::Revoked { id: split(s), lost, done }).unwrap();
        let _ = rx.recv_timeout(Duration::from_secs(1));
    }

    fn stop(self) {
        self.cancel.cancel();
        self.thread.join().unwrap();
    }
}

/// What one processor reading split `s` once publishes: rows of every session the final
/// watermark closes.
fn reference(log: &Log) -> Vec<String> {
    let mut p = Processor::new(extractor(), RULES, vec![Arc::from("x")]);
    let mut slots = Vec::new();
    for (i, r) in log.records.iter().enumerate() {
        p.process_line(r, LinePosition { input: 0, line: i as u64, offset: i as u64 }, &mut slots);
        slots.clear();
    }
    let base = MetaBase { inputs: Vec::new(), settings: String::new() };
    let (mut out, _) = p.checkpoint(SourcePosition::default(), false, base).unwrap();
    out.rows().iter().map(|r| serde_json::to_string(r).unwrap()).collect()
}

/// A small deterministic generator.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

fn committed(store: &MemoryObjects, s: usize) -> u64 {
    let key = format!("_state/{}/LATEST", split(s));
    store.get(&key).unwrap().map_or(0, |o| {
        let r = super::record::CommitRecord::parse(&o.body, split(s).as_str()).unwrap();
        r.position.map_or(0, |p| p.parse().unwrap())
    })
}

#[test]
fn splits_moved_lost_and_left_running_by_a_script_publish_every_row_once() {
    for seed in [7u64, 11, 23] {
        let dir = tempfile::tempdir().unwrap();
        let store = MemoryObjects::default();
        let logs: Vec<Arc<Log>> = (0..SPLITS).map(|s| Arc::new(log(s))).collect();
        let instances = [
            Instance::start(&store, &dir.path().join("a")),
            Instance::start(&store, &dir.path().join("b")),
        ];
        let mut owner: Vec<Option<usize>> = vec![None; SPLITS];
        let mut rng = Rng(seed);
        for _ in 0..40 {
            let s = rng.below(SPLITS as u64) as usize;
            let log = &logs[s];
            let more = rng.below(120) as usize;
            let n = (log.produced.load(Ordering::Acquire) + more).min(RECORDS - 1);
            log.produced.store(n, Ordering::Release);
            let to = rng.below(2) as usize;
            match (owner[s], rng.below(4)) {
                (None, _) => instances[to].assign(&logs, s),
                // An eager rebalance: revoked and given back to the same instance.
                (Some(from), _) if from == to => {
                    instances[from].revoke(s, false);
                    instances[to].assign(&logs, s);
                }
                // A handover: the old owner stops with a final checkpoint, the new one takes over.
                (Some(from), 0 | 1) => {
                    instances[from].revoke(s, false);
                    instances[to].assign(&logs, s);
                }
                // Lost: the old owner stops writing at once.
                (Some(from), 2) => {
                    instances[from].revoke(s, true);
                    instances[to].assign(&logs, s);
                }
                // A stalled owner that has not heard yet: both run for a while; the newer
                // claim fences the older one.
                (Some(from), _) => {
                    instances[to].assign(&logs, s);
                    for _ in 0..5 {
                        let n = (log.produced.load(Ordering::Acquire) + 20).min(RECORDS - 1);
                        log.produced.store(n, Ordering::Release);
                        std::thread::sleep(Duration::from_millis(40));
                    }
                    instances[from].revoke(s, true);
                }
            }
            owner[s] = Some(to);
            std::thread::sleep(Duration::from_millis(rng.below(60)));
        }
        // Everything arrives; whoever owns each split reads it to the end.
        for (s, log) in logs.iter().enumerate() {
            log.produced.store(RECORDS, Ordering::Release);
            if owner[s].is_none() {
                instances[0].assign(&logs, s);
            }
        }
        let until = Instant::now() + Duration::from_mins(1);
        while (0..SPLITS).any(|s| committed(&store, s) < RECORDS as u64) {
            assert!(Instant::now() < until, "splits did not finish: {owner:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
        for i in instances {
            i.stop();
        }
        let got = rows(&store);
        let mut want: Vec<String> = logs.iter().flat_map(|l| reference(l)).collect();
        want.sort();
        assert_eq!(got.len(), want.len(), "seed {seed}: row count");
        assert!(got == want, "seed {seed}: rows differ");
        let mut epochs: BTreeMap<String, BTreeSet<Option<String>>> = BTreeMap::new();
        for (k, meta) in store.puts() {
            if !k.ends_with("/LATEST") {
                epochs.entry(k).or_default().insert(meta.get(super::record::META_EPOCH).cloned());
            }
        }
        for (k, e) in &epochs {
            assert_eq!(e.len(), 1, "seed {seed}: {k} written by epochs {e:?}");
        }
        let claims: Vec<u64> = (0..SPLITS)
            .map(|s| {
                let o = store.get(&format!("_state/{}/LATEST", split(s))).unwrap().unwrap();
                super::record::CommitRecord::parse(&o.body, split(s).as_str()).unwrap().epoch
            })
            .collect();
        // The script moved every split several times: each move is a claim, a new epoch.
        assert!(claims.iter().all(|e| *e >= 3), "seed {seed}: epochs {claims:?}");
        eprintln!("seed {seed}: {} rows, final epochs {claims:?}", got.len());
    }
}

/// The position in split `s`'s commit record.
fn position(store: &MemoryObjects, s: usize) -> Option<String> {
    let o = store.get(&format!("_state/{}/LATEST", split(s))).unwrap()?;
    super::record::CommitRecord::parse(&o.body, split(s).as_str()).unwrap().position
}

#[test]
fn a_parent_read_to_its_end_hands_open_sessions_to_the_children_holding_their_keys() {
    use crate::source::kinesis::kpl::hash_key_of;
    let half = u128::MAX / 2;
    let ranges = [(0, half), (half + 1, u128::MAX)];
    let t0: u64 = 1_709_510_400_000;
    let child_of = |c: &str| usize::from(hash_key_of(c.as_bytes()) > half);
    let line =
        |id: String, c: &str, t: u64| format!(r#"{{"id":"{id}","c":"{c}","t":{t}}}"#).into_bytes();
    // Ten customers, one event each 40 ms, 300 on the parent then 300 on the child holding
    // each customer's key: every session spans the reshard.
    let customers: Vec<String> = (0..10).map(|i| format!("c{i}")).collect();
    assert!(
        customers.iter().any(|c| child_of(c) == 0) && customers.iter().any(|c| child_of(c) == 1)
    );
    let mut timed: Vec<(u64, usize, Vec<u8>)> = Vec::new();
    for i in 0..600 {
        let c = &customers[i % 10];
        let t = t0 + i as u64 * 40;
        let on = if i < 300 { 0 } else { 1 + child_of(c) };
        timed.push((t, on, line(format!("e-{i}"), c, t)));
    }
    // Each child ends with an event a day later, of a customer in its own range: every session
    // it holds closes.
    for k in 0..2 {
        let flush = (0..1000).map(|n| format!("flush-{n}")).find(|c| child_of(c) == k).unwrap();
        timed.push((t0 + 86_400_000, 1 + k, line(format!("f-{k}"), &flush, t0 + 86_400_000)));
    }
    let split_log = |s: usize| {
        let records: Vec<Vec<u8>> =
            timed.iter().filter(|(_, on, _)| *on == s).map(|(_, _, r)| r.clone()).collect();
        let n = records.len();
        Arc::new(Log { records, produced: AtomicUsize::new(n), closed: s == 0 })
    };
    let logs: Vec<Arc<Log>> = (0..3).map(split_log).collect();
    // What one processor reading every event once, in time order, publishes.
    let all = Log {
        records: timed.iter().map(|(_, _, r)| r.clone()).collect(),
        produced: AtomicUsize::new(0),
        closed: false,
    };
    let mut want = reference(&all);
    want.sort();

    let dir = tempfile::tempdir().unwrap();
    let store = MemoryObjects::default();
    let lineage = HashMap::from([
        (split(1), Lineage { parents: vec![(split(0), true)], range: ranges[0] }),
        (split(2), Lineage { parents: vec![(split(0), true)], range: ranges[1] }),
    ]);
    let instance = Instance::with_lineage(&store, &dir.path().join("a"), lineage);
    instance.assign(&logs, 0);
    let until = Instant::now() + Duration::from_mins(1);
    while position(&store, 0).as_deref() != Some(crate::source::END) {
        assert!(Instant::now() < until, "the parent did not commit its end");
        std::thread::sleep(Duration::from_millis(20));
    }
    let parent_rows = rows(&store).len();
    instance.assign(&logs, 1);
    instance.assign(&logs, 2);
    for (s, log) in logs.iter().enumerate().skip(1) {
        let end = log.records.len().to_string();
        while position(&store, s) != Some(end.clone()) {
            assert!(Instant::now() < until, "child {s} did not read its records");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    instance.stop();
    let got = rows(&store);
    assert!(parent_rows < want.len(), "sessions went on in the children");
    assert_eq!(got.len(), want.len(), "row count");
    assert!(got == want, "rows differ from one processor reading every event once");
}
