//! The commit protocol against the memory object store (the model of S3's conditional writes)
//! and real `RocksDB` state: fencing, roll-forward, refusals, failure safety, garbage.

use super::acquire::{AcquireError, acquire};
use super::commit::{CommitError, Committer, Identity, Job, SplitContext};
use super::record::{CommitRecord, Layout, META_EPOCH};
use crate::event::{LinePosition, SourcePosition};
use crate::extract::Extractor;
use crate::extract::schema::parse_bytes;
use crate::processor::{MetaBase, Processor, Rules};
use crate::sink::objects::{Condition, MemoryObjects, ObjectStore};
use crate::state::StateStore as _;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;
use tokio_util::sync::CancellationToken;

pub(super) const RULES: Rules =
    Rules { gap_ms: 1_000, lateness_ms: 0, dedup_horizon_ms: 0, max_future_ms: 0 };

pub(super) fn extractor() -> Arc<Extractor> {
    let text = "name = \"t\"\nversion = 1\n[fields]\nmessage_id = ['$.id']\ncustomer_id = ['$.c']\nevent_time = [{ path = '$.t', format = \"epoch_millis\" }]\n";
    let l = parse_bytes(Path::new("t.toml"), text.as_bytes().to_vec()).unwrap();
    Arc::new(Extractor::compile(vec![l]).unwrap())
}

fn ctx(objects: &Arc<MemoryObjects>, dir: &Path, owner: &str) -> Arc<SplitContext> {
    std::fs::create_dir_all(dir).unwrap();
    Arc::new(SplitContext {
        layout: Layout::new("p0000"),
        objects: Arc::clone(objects) as Arc<dyn ObjectStore>,
        cancel: CancellationToken::new(),
        identity: Identity {
            source: "kafka:t/0".into(),
            settings: super::settings_fingerprint(&RULES),
            owner: owner.into(),
            allow_settings_change: false,
        },
        state_dir: dir.join("p0000"),
        tmp_dir: dir.join(".snapshot-p0000"),
        prefix: String::new(),
        keep_snapshots: 2,
        memory: crate::state::rocksdb::MemoryBudget::new(16 << 20),
        session_cache: 1 << 20,
        parquet: false,
        lineage: None,
    })
}

/// An owner: its committer and processor, as the worker would hold them.
struct Owner {
    c: Committer,
    p: Processor,
    base: MetaBase,
    next: u64,
}

fn take(ctx: &Arc<SplitContext>) -> Result<Owner, AcquireError> {
    let a = acquire(ctx)?;
    let next = match (&a.record.position, a.legacy_position) {
        (Some(p), _) => p.parse().unwrap(),
        (None, Some(p)) => p.line,
        (None, None) => 0,
    };
    let mut p = Processor::new(extractor(), RULES, vec![Arc::from("t/0")]);
    p.restore(a.state.as_ref(), a.store.backing(), ctx.session_cache);
    let base = MetaBase {
        inputs: vec!["kafka:t/0".into(), format!("epoch={}", super::snapshot::lineage(a.epoch))],
        settings: super::settings_fingerprint(&RULES),
    };
    let c = Committer::new(Arc::clone(ctx), a.store, (a.record, a.etag, a.epoch), a.uploaded);
    Ok(Owner { c, p, base, next })
}

impl Owner {
    /// Processes events `from..to` (offset i: customer i % 3, time 10 s apart per offset) and
    /// cuts a job.
    fn read(&mut self, to: u64) -> Job {
        for i in self.next..to {
            let line =
                format!(r#"{{"id":{i},"c":"c{}","t":{}}}"#, i % 3, 1_709_510_400_000 + i * 10_000);
            let mut slots = Vec::new();
            let pos = LinePosition { input: 0, line: i, offset: i };
            self.p.process_line(line.as_bytes(), pos, &mut slots);
        }
        self.next = to;
        let pos = SourcePosition { input: 0, line: to, offset: to };
        let (out, batch) = self.p.checkpoint(pos, false, self.base.clone()).unwrap();
        Job {
            out,
            batch,
            position: Some(to.to_string()),
            counters: self.p.counters().clone(),
            taken: Instant::now(),
        }
    }

    fn commit(&mut self, job: &mut Job) -> Result<u64, CommitError> {
        let (n, dropped) = self.c.commit_job(job)?;
        self.c.finish_publication()?;
        self.c.collect(&dropped);
        Ok(n)
    }
}

/// Every published session row, sorted.
pub(super) fn rows(store: &MemoryObjects) -> Vec<String> {
    let mut out = Vec::new();
    for k in store.list("sessions/").unwrap() {
        let body = store.get(&k).unwrap().unwrap().body;
        let mut text = String::new();
        std::io::Read::read_to_string(&mut flate2::read::GzDecoder::new(&body[..]), &mut text)
            .unwrap();
        out.extend(text.lines().map(str::to_owned));
    }
    out.sort();
    out
}

/// What one owner reading `0..to` in one go publishes.
fn reference(to: u64) -> Vec<String> {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(MemoryObjects::default());
    let mut o = take(&ctx(&store, dir.path(), "ref")).unwrap();
    let mut j = o.read(to);
    o.commit(&mut j).unwrap();
    // Close what is left: an event far later closes every session of c0..c2.
    rows(&store)
}

fn latest(store: &MemoryObjects) -> CommitRecord {
    CommitRecord::parse(&store.get(&Layout::new("p0000").latest()).unwrap().unwrap().body, "p0000")
        .unwrap()
}

#[test]
fn a_stalled_owner_is_fenced_and_its_successor_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(MemoryObjects::default());
    let mut a = take(&ctx(&store, &dir.path().join("a"), "a")).unwrap();
    let mut j = a.read(40);
    assert_eq!(a.commit(&mut j).unwrap(), 1);
    // A stalls with work in hand; B takes over from A's commit and goes on.
    let mut stalled = a.read(80);
    let mut b = take(&ctx(&store, &dir.path().join("b"), "b")).unwrap();
    for to in [80, 120] {
        let mut j = b.read(to);
        b.commit(&mut j).unwrap();
    }
    let puts_before = store.puts().len();
    // A resumes: its commit fails its condition, and it has written only under its own epoch.
    assert!(matches!(a.commit(&mut stalled), Err(CommitError::Fenced)));
    let l = latest(&store);
    assert_eq!((l.checkpoint, l.position.as_deref()), (3, Some("120")));
    let zombie: Vec<_> = store.puts()[puts_before..].to_vec();
    assert!(
        zombie.iter().all(|(k, e)| k.contains("/e0000000001/")
            && e.get(META_EPOCH).map(String::as_str) == Some("1")),
        "{zombie:?}"
    );
    // No key was written by two epochs.
    let mut by_key =
        std::collections::BTreeMap::<String, std::collections::BTreeSet<Option<String>>>::new();
    for (k, e) in store.puts() {
        if k != Layout::new("p0000").latest() {
            by_key.entry(k).or_default().insert(e.get(META_EPOCH).cloned());
        }
    }
    assert!(by_key.values().all(|e| e.len() == 1), "{by_key:?}");
    // Rows: exactly what one owner reading 0..120 publishes.
    assert_eq!(rows(&store), reference(120));
}

#[test]
fn committed_output_left_unpublished_is_published_by_the_next_owner() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(MemoryObjects::default());
    let mut a = take(&ctx(&store, &dir.path().join("a"), "a")).unwrap();
    let mut j = a.read(60);
    // Committed, then A dies before publishing.
    a.c.commit_job(&mut j).unwrap();
    assert!(rows(&store).is_empty());
    assert!(latest(&store).pending.is_some());
    let mut b = take(&ctx(&store, &dir.path().join("b"), "b")).unwrap();
    assert_eq!(rows(&store), reference(60));
    // A comes back and publishes too: nothing changes.
    a.c.finish_publication().unwrap();
    assert_eq!(rows(&store), reference(60));
    let mut j = b.read(120);
    b.commit(&mut j).unwrap();
    assert_eq!(rows(&store), reference(120));
}

#[test]
fn a_missing_or_torn_record_is_refused_and_nothing_is_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(MemoryObjects::default());
    let context = ctx(&store, &dir.path().join("a"), "a");
    let mut owner = take(&context).unwrap();
    let mut job = owner.read(60);
    owner.commit(&mut job).unwrap();
    let published = store.list("sessions/").unwrap();
    assert!(!published.is_empty());
    let latest_key = Layout::new("p0000").latest();
    store.remove(&latest_key);
    let err = take(&context).err().unwrap();
    assert!(matches!(&err, AcquireError::Refused(w) if w.contains("missing")), "{err}");
    let torn = bytes::Bytes::from_static(b"{\"format\":1,\"spl");
    store.put(&latest_key, torn, &[], Condition::None).unwrap();
    let err = take(&context).err().unwrap();
    assert!(matches!(&err, AcquireError::Refused(w) if w.contains("unreadable")), "{err}");
    assert_eq!(store.list("sessions/").unwrap(), published);
}

#[test]
fn state_built_with_other_settings_is_refused_unless_allowed() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(MemoryObjects::default());
    let mut a = take(&ctx(&store, &dir.path().join("a"), "a")).unwrap();
    let mut j = a.read(10);
    a.commit(&mut j).unwrap();
    let mut other = Arc::into_inner(ctx(&store, &dir.path().join("b"), "b")).unwrap();
    other.identity.settings = "gap_ms=5 lateness_ms=0 dedup_horizon_ms=0".into();
    let e = acquire(&other).err().unwrap();
    assert!(matches!(&e, AcquireError::Refused(w) if w.contains("settings")), "{e}");
    other.identity.source = "kafka:other/0".into();
    let e = acquire(&other).err().unwrap();
    assert!(matches!(&e, AcquireError::Refused(w) if w.contains("kafka:t/0")), "{e}");
    other.identity.source = "kafka:t/0".into();
    other.identity.allow_settings_change = true;
    assert!(acquire(&other).is_ok());
}

#[test]
fn a_failed_checkpoint_leaves_every_change_pending_for_the_next() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(MemoryObjects::default());
    let c = ctx(&store, &dir.path().join("a"), "a");
    let mut a = take(&c).unwrap();
    let mut first = a.read(50);
    // The store refuses the staged output once: the job must not be lost.
    store.fail_next_put("_state/p0000/e0000000001/c0000000001/out");
    assert!(matches!(a.commit(&mut first), Err(CommitError::Retry(_))));
    let second = a.read(100);
    first.absorb(second);
    assert_eq!(a.commit(&mut first).unwrap(), 1);
    // The state holds both intervals: a new owner restoring it continues to the same rows.
    let mut b = take(&ctx(&store, &dir.path().join("b"), "b")).unwrap();
    assert_eq!(b.next, 100);
    let mut j = b.read(150);
    b.commit(&mut j).unwrap();
    assert_eq!(rows(&store), reference(150));
}

#[test]
fn a_foreign_object_at_a_published_key_halts_instead_of_being_overwritten() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(MemoryObjects::default());
    let mut a = take(&ctx(&store, &dir.path().join("a"), "a")).unwrap();
    let mut j = a.read(60);
    let (rows, dead) = j.out.parts();
    let keys: Vec<String> = crate::sink::s3::encode("p0000", 1, rows, dead, false)
        .unwrap()
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    store
        .put(&keys[0], bytes::Bytes::from_static(b"someone else's"), &[], Condition::None)
        .unwrap();
    a.c.commit_job(&mut j).unwrap();
    assert!(matches!(a.c.finish_publication(), Err(CommitError::Halt(w)) if w.contains(&keys[0])));
    assert_eq!(&store.get(&keys[0]).unwrap().unwrap().body[..], b"someone else's");
}

#[test]
fn state_objects_stay_bounded_over_many_checkpoints() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(MemoryObjects::default());
    let c = ctx(&store, &dir.path().join("a"), "a");
    let mut a = take(&c).unwrap();
    let mut counts = Vec::new();
    for i in 1..=300 {
        let mut j = a.read(i * 3);
        a.commit(&mut j).unwrap();
        counts.push(store.list("_state/").unwrap().len());
    }
    // Without collection each checkpoint would leave ~5 objects (a table file, descriptors,
    // the record's bundle): 250 checkpoints later, over a thousand more. With it, only the
    // number of live table files moves, with compactions (whose timing varies with the load of
    // the machine).
    let (early, late) =
        (counts[50..100].iter().max().unwrap(), counts[250..].iter().max().unwrap());
    assert!(*late <= early * 2, "state objects grew: {early} → {late}");
    // A new owner's sweep removes what the first one left, and keeps what the record needs.
    let b = take(&ctx(&store, &dir.path().join("b"), "b")).unwrap();
    b.c.sweep().unwrap();
    let rec = latest(&store);
    for k in rec.snapshot.iter().flat_map(|s| s.files.values()) {
        assert!(store.get(k).unwrap().is_some(), "{k} swept");
    }
    assert!(
        store
            .puts()
            .iter()
            .all(|(k, e)| !k.starts_with("_state/p0000/e") || e.contains_key(META_EPOCH)),
        "untagged state object"
    );
}

#[test]
fn state_published_by_the_previous_version_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(MemoryObjects::default());
    let mut old = take(&ctx(&store, &dir.path().join("a"), "a")).unwrap();
    let mut job = old.read(60);
    old.commit(&mut job).unwrap();
    // The same state in the previous version's layout: descriptor files under
    // `_state/p0000/CHECKPOINT-LINEAGE/` with a files.json of full keys, table files under
    // `_state/p0000/sst/`, and LATEST holding `CHECKPOINT LINEAGE`; no marker.
    let snap = latest(&store).snapshot.unwrap();
    let layout = Layout::new("p0000");
    let dir1 = layout.legacy_dir(snap.checkpoint, &snap.lineage);
    let mut files = std::collections::BTreeMap::new();
    for (name, key) in &snap.files {
        let body = store.get(key).unwrap().unwrap().body;
        let legacy = if std::path::Path::new(name).extension().is_some_and(|x| x == "sst") {
            format!("_state/p0000/sst/{}-{name}", snap.lineage)
        } else {
            format!("{dir1}{name}")
        };
        store.put(&legacy, body, &[], Condition::None).unwrap();
        files.insert(name.clone(), format!("pre/{legacy}"));
    }
    for k in
        store.list("_state/p0000/e").unwrap().into_iter().chain(store.list("_splits/").unwrap())
    {
        store.remove(&k);
    }
    let list = serde_json::to_vec(&files).unwrap();
    store.put(&format!("{dir1}files.json"), list.into(), &[], Condition::None).unwrap();
    let line = format!("{} {}\n", snap.checkpoint, snap.lineage);
    store.put(&layout.latest(), line.into_bytes().into(), &[], Condition::None).unwrap();
    // This version takes it over, from the state and the position that state recorded.
    let mut context = Arc::into_inner(ctx(&store, &dir.path().join("b"), "b")).unwrap();
    context.prefix = "pre/".into();
    let mut new = take(&Arc::new(context)).unwrap();
    assert_eq!(new.next, 60);
    let mut job = new.read(120);
    new.commit(&mut job).unwrap();
    assert_eq!(rows(&store), reference(120));
    assert_eq!(latest(&store).format, super::record::FORMAT);
}
