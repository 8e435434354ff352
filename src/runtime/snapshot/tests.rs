//! Snapshots against the memory object store and real `RocksDB` state: what may be garbage,
//! which names a restore writes, what an error leaves behind, and how torn state is replaced.

use super::*;
use crate::runtime::acquire::acquire;
use crate::runtime::commit::{Identity, SplitContext};
use crate::runtime::record::{CommitRecord, FORMAT};
use crate::sink::objects::MemoryObjects;
use crate::state::{CheckpointBatch, Contents, Meta, STATE_VERSION};
use std::path::PathBuf;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

fn snap(n: u64, files: &[(&str, &str)]) -> SnapshotRef {
    SnapshotRef {
        checkpoint: n,
        lineage: "e1".into(),
        files: files.iter().map(|(a, b)| ((*a).to_owned(), (*b).to_owned())).collect(),
    }
}

#[test]
fn only_files_no_kept_snapshot_needs_are_unreferenced() {
    let old = snap(1, &[("1.sst", "a/1.sst"), ("2.sst", "a/2.sst"), ("MANIFEST-1", "c1/M")]);
    let new = snap(2, &[("2.sst", "a/2.sst"), ("3.sst", "b/3.sst"), ("MANIFEST-1", "c2/M")]);
    assert_eq!(unreferenced(&[old], &[&new]), ["a/1.sst", "c1/M"]);
}

#[test]
fn garbage_is_older_epochs_unreferenced() {
    let l = Layout::new("p0000");
    let keys = vec![
        l.sst(1, "1.sst"),
        l.sst(1, "2.sst"),
        l.bundle(2, 5),
        l.sst(3, "9.sst"),
        l.latest(),
        "_state/p0000/sst/old-1.sst".to_owned(),
    ];
    let keep = l.sst(1, "2.sst");
    let referenced: BTreeSet<&str> = [keep.as_str()].into();
    assert_eq!(
        garbage(&keys, &l, 3, &referenced),
        [l.sst(1, "1.sst"), l.bundle(2, 5), "_state/p0000/sst/old-1.sst".to_owned()]
    );
}

/// Every path under `root`, relative, sorted.
fn tree(root: &Path) -> Vec<String> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            out.push(p.strip_prefix(root).unwrap().display().to_string());
            if p.is_dir() {
                walk(root, &p, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(root, root, &mut out);
    out.sort();
    out
}

fn put(objects: &MemoryObjects, key: &str, body: &[u8]) {
    objects.put(key, body.to_vec().into(), &[], Condition::None).unwrap();
}

#[test]
fn checkpoint_file_names_pass_and_paths_do_not() {
    for good in ["CURRENT", "MANIFEST-000005", "OPTIONS-000007", "000012.sst", "000004.log"] {
        assert!(check_name(good).is_ok(), "{good}");
    }
    let long = "a".repeat(256);
    for bad in [
        "",
        ".",
        "..",
        "../evil",
        "a/b",
        "/etc/passwd",
        "a\\b",
        "..\\x",
        ".hidden",
        "a\0b",
        "é",
        &long,
    ] {
        assert!(matches!(check_name(bad), Err(SnapshotError::BadName { .. })), "{bad:?}");
    }
}

#[test]
fn a_snapshot_naming_a_path_writes_nothing_anywhere() {
    let root = tempfile::tempdir().unwrap();
    let state = root.path().join("state");
    std::fs::create_dir_all(&state).unwrap();
    let objects = MemoryObjects::default();
    put(&objects, "k/CURRENT", b"MANIFEST-000001\n");
    put(&objects, "k/evil", b"owned");
    let absolute = root.path().join("absolute-evil").display().to_string();
    for bad in ["../evil", "../../evil", "a/b", absolute.as_str()] {
        let s = snap(1, &[("CURRENT", "k/CURRENT"), (bad, "k/evil")]);
        let e = restore(&objects, &s, &state.join("p0000")).unwrap_err();
        assert!(matches!(&e, SnapshotError::BadName { name, .. } if name == bad), "{bad}: {e}");
        assert!(e.to_string().contains("state reset"), "{e}");
        assert_eq!(tree(root.path()), ["state"], "{bad}: nothing is written, inside or out");
    }
}

#[test]
fn an_earlier_versions_file_list_naming_a_path_is_refused() {
    let objects = MemoryObjects::default();
    let layout = Layout::new("p0000");
    let mut s = snap(4, &[]);
    s.lineage = "old-lineage".into();
    let list = format!("{}files.json", layout.legacy_dir(4, "old-lineage"));
    put(&objects, &list, br#"{"CURRENT":"pre/k/CURRENT","../evil":"pre/k/evil"}"#);
    let e = legacy_files(&objects, &layout, &mut s, "pre/").unwrap_err();
    assert!(matches!(&e, SnapshotError::BadName { name, .. } if name == "../evil"), "{e}");
    assert!(s.files.is_empty(), "the refused list is not taken");
}

#[test]
fn a_failed_restore_leaves_no_scratch_and_the_old_state_in_place() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("p0000");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("CURRENT"), b"old").unwrap();
    let objects = MemoryObjects::default();
    put(&objects, "k/1", b"one");
    // Files are fetched in name order: the first is written, the second is missing.
    let s = snap(1, &[("000001.sst", "k/1"), ("000002.sst", "k/gone")]);
    let e = restore(&objects, &s, &dir).unwrap_err();
    assert!(matches!(e, SnapshotError::Missing { .. }), "{e}");
    assert_eq!(tree(root.path()), ["p0000", "p0000/CURRENT"]);
}

#[test]
fn a_restore_replaces_the_old_state_and_leaves_nothing_beside_it() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("p0000");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("000009.sst"), b"old").unwrap();
    // Left by a restore that a crash interrupted.
    std::fs::create_dir_all(root.path().join("p0000.restoring")).unwrap();
    std::fs::create_dir_all(root.path().join("p0000.replaced")).unwrap();
    let objects = MemoryObjects::default();
    put(&objects, "k/1", b"one");
    restore(&objects, &snap(1, &[("000001.sst", "k/1")]), &dir).unwrap();
    assert_eq!(tree(root.path()), ["p0000", "p0000/000001.sst"]);
    assert_eq!(std::fs::read(dir.join("000001.sst")).unwrap(), b"one");
}

#[test]
fn a_failed_upload_leaves_no_scratch() {
    let root = tempfile::tempdir().unwrap();
    let mut store = RocksDbStore::open(&root.path().join("db")).unwrap();
    store.write_batch(&batch(1)).unwrap();
    let objects = MemoryObjects::default();
    let layout = Layout::new("p0000");
    objects.fail_next_put("_state/");
    let scratch = root.path().join(".snapshot-p0000");
    let mut uploaded = BTreeMap::new();
    assert!(publish(&store, &objects, &layout, (1, 1), &mut uploaded, &scratch).is_err());
    assert!(!scratch.exists(), "the upload's scratch directory is removed");
}

fn batch(checkpoint: u64) -> CheckpointBatch {
    let meta = Meta {
        version: STATE_VERSION,
        checkpoint,
        position: crate::event::SourcePosition::default(),
        max_time: Some(7),
        counters: crate::state::Counters::default(),
        inputs: vec!["kafka:t/0".into(), format!("epoch={}", lineage(1))],
        settings: "s".into(),
        finished: false,
        schema_sets: vec![],
        kinds: vec!["page_view".into()],
        attributes: vec![],
        open: (0, 0),
        forgotten_before: None,
    };
    CheckpointBatch { meta: Some(meta), ..CheckpointBatch::default() }
}

fn context(objects: &Arc<MemoryObjects>, root: &Path) -> SplitContext {
    SplitContext {
        layout: Layout::new("p0000"),
        objects: Arc::clone(objects) as Arc<dyn ObjectStore>,
        cancel: CancellationToken::new(),
        identity: Identity {
            source: "kafka:t/0".into(),
            settings: "s".into(),
            owner: "test".into(),
            allow_settings_change: false,
        },
        state_dir: root.join("p0000"),
        tmp_dir: root.join(".snapshot-p0000"),
        prefix: String::new(),
        keep_snapshots: 2,
        memory: crate::state::rocksdb::MemoryBudget::new(16 << 20),
        session_cache: 1 << 20,
        parquet: false,
        lineage: None,
    }
}

/// Commits checkpoint 3 of epoch 1 with a snapshot, as an earlier owner would have; returns
/// what the state holds.
fn committed(objects: &MemoryObjects, root: &Path) -> Contents {
    let mut store = RocksDbStore::open(&root.join("earlier-owner")).unwrap();
    for n in 1..=3 {
        store.write_batch(&batch(n)).unwrap();
    }
    let layout = Layout::new("p0000");
    let mut uploaded = BTreeMap::new();
    let scratch = root.join("earlier-scratch");
    let snap = publish(&store, objects, &layout, (1, 3), &mut uploaded, &scratch).unwrap();
    let record = CommitRecord {
        format: FORMAT,
        split: "p0000".into(),
        source: "kafka:t/0".into(),
        settings: "s".into(),
        generation: 1,
        epoch: 1,
        owner: "earlier".into(),
        checkpoint: 3,
        position: Some("3".into()),
        snapshot: Some(snap),
        retained: vec![],
        pending: None,
        written_at_ms: 0,
        reset: None,
    };
    put(objects, &layout.latest(), &record.to_bytes());
    store.read_all().unwrap()
}

/// The local state's files whose names start with `prefix`.
fn files(dir: &Path, prefix: &str) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with(prefix))
        .collect();
    out.sort();
    out
}

fn truncate(path: &Path, len: u64) {
    std::fs::OpenOptions::new().write(true).open(path).unwrap().set_len(len).unwrap();
}

#[test]
fn torn_local_state_is_downloaded_again_at_start_up() {
    type Tear = fn(&Path);
    let tears: [(&str, Tear); 6] = [
        ("CURRENT removed", |d| std::fs::remove_file(d.join("CURRENT")).unwrap()),
        ("CURRENT empty", |d| truncate(&d.join("CURRENT"), 0)),
        ("CURRENT cut short", |d| truncate(&d.join("CURRENT"), 5)),
        ("MANIFEST empty", |d| {
            for m in files(d, "MANIFEST-") {
                truncate(&m, 0);
            }
        }),
        ("MANIFEST removed", |d| {
            for m in files(d, "MANIFEST-") {
                std::fs::remove_file(m).unwrap();
            }
        }),
        ("a table cut short", |d| {
            let t = files(d, "").into_iter().find(|p| p.extension().is_some_and(|x| x == "sst"));
            let t = t.unwrap();
            truncate(&t, std::fs::metadata(&t).unwrap().len() / 2);
        }),
    ];
    for (what, tear) in tears {
        let root = tempfile::tempdir().unwrap();
        let objects = Arc::new(MemoryObjects::default());
        let want = committed(&objects, root.path());
        let ctx = context(&objects, root.path());
        let first = acquire(&ctx).unwrap();
        assert_eq!(first.store.read_all().unwrap(), want);
        drop(first);
        tear(&ctx.state_dir);
        let again = acquire(&ctx).unwrap_or_else(|e| panic!("{what}: start-up failed: {e}"));
        assert_eq!(again.store.read_all().unwrap(), want, "{what}");
        drop(again);
        let left: Vec<String> =
            tree(root.path()).into_iter().filter(|p| p.contains(".re")).collect();
        assert!(left.is_empty(), "{what}: {left:?}");
    }
}

#[test]
fn a_state_path_that_is_not_a_directory_is_replaced_at_start_up() {
    let root = tempfile::tempdir().unwrap();
    let objects = Arc::new(MemoryObjects::default());
    let want = committed(&objects, root.path());
    let ctx = context(&objects, root.path());
    // What a copy or an unpacking cut short can leave where the state directory belongs.
    std::fs::write(&ctx.state_dir, b"").unwrap();
    let a = acquire(&ctx).unwrap();
    assert_eq!(a.store.read_all().unwrap(), want);
}
