//! A split's `RocksDB` state in S3: incremental snapshots, restore, and what is garbage.
//!
//! A snapshot is a `RocksDB` checkpoint: its table files are immutable, so each is uploaded once
//! (by the epoch that first needs it) and shared by later snapshots; the few small descriptor
//! files (`MANIFEST`, `CURRENT`, `OPTIONS`) go under the checkpoint's own directory. The
//! commit record lists every file of the snapshot it names, so a restore needs no listing and
//! garbage is a set difference.

use super::record::{Layout, SnapshotRef};
use crate::sink::objects::{Condition, ObjectError, ObjectStore};
use crate::state::rocksdb::RocksDbStore;
use crate::state::{StateError, StateStore};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use thiserror::Error;

/// A snapshot could not be written or read.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum SnapshotError {
    /// S3 failed.
    #[error(transparent)]
    Object(#[from] ObjectError),
    /// `RocksDB` failed.
    #[error(transparent)]
    State(#[from] StateError),
    /// A local file operation failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// On which path.
        path: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A file the snapshot names is not in S3 (removed by a lifecycle rule or by hand).
    #[error("snapshot file {key} is missing")]
    Missing {
        /// Its key.
        key: String,
    },
    /// An earlier version's file list does not decode.
    #[error("snapshot file list {key} is corrupt: {message}")]
    Corrupt {
        /// Its key.
        key: String,
        /// Why.
        message: String,
    },
}

/// A local file error, named by operation and path.
pub(super) fn io<'a>(
    op: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> SnapshotError + 'a {
    move |source| SnapshotError::Io { op, path: path.display().to_string(), source }
}

/// Publishes the store as of its last write as checkpoint `n` of `epoch`: table files not yet in
/// S3 (recorded in `uploaded` as they go up, so a retried checkpoint does not upload them
/// again) and the descriptor files. The snapshot is only a snapshot once a commit record
/// names it.
///
/// # Errors
/// `RocksDB` cannot make the checkpoint, or S3 refuses.
pub fn publish(
    store: &RocksDbStore,
    objects: &dyn ObjectStore,
    layout: &Layout,
    (epoch, n): (u64, u64),
    uploaded: &mut BTreeMap<String, String>,
    tmp: &Path,
) -> Result<SnapshotRef, SnapshotError> {
    if tmp.exists() {
        std::fs::remove_dir_all(tmp).map_err(io("remove", tmp))?;
    }
    store.snapshot_into(tmp)?;
    let meta = [(super::record::META_EPOCH, format!("{epoch}"))];
    let meta: Vec<(&str, &str)> = meta.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut files = BTreeMap::new();
    let dir = layout.checkpoint_dir(epoch, n);
    let mut names: Vec<String> = Vec::new();
    for e in std::fs::read_dir(tmp).map_err(io("list", tmp))? {
        let e = e.map_err(io("list", tmp))?;
        names.push(e.file_name().to_string_lossy().into_owned());
    }
    names.sort();
    let mut new = Vec::new();
    for file in names {
        let table = Path::new(&file).extension().is_some_and(|x| x == "sst");
        let key = match uploaded.get(&file) {
            Some(k) if table => k.clone(),
            _ => {
                let key = if table { layout.sst(epoch, &file) } else { format!("{dir}{file}") };
                new.push((file.clone(), key.clone(), table));
                key
            }
        };
        files.insert(file, key);
    }
    let up = |(file, key, _): &(String, String, bool)| -> Result<(), SnapshotError> {
        let path = tmp.join(file);
        let body = std::fs::read(&path).map_err(io("read", &path))?;
        objects.put(key, body.into(), &meta, Condition::None)?;
        Ok(())
    };
    super::commit::in_parallel(&new, up, || SnapshotError::Io {
        op: "upload",
        path: tmp.display().to_string(),
        source: std::io::Error::other("an upload thread panicked"),
    })?;
    uploaded.extend(new.into_iter().filter(|(_, _, t)| *t).map(|(f, k, _)| (f, k)));
    std::fs::remove_dir_all(tmp).map_err(io("remove", tmp))?;
    // Only files of this snapshot stay known: RocksDB never brings a deleted table back.
    uploaded.retain(|name, _| files.contains_key(name));
    Ok(SnapshotRef { checkpoint: n, lineage: lineage(epoch), files })
}

/// The lineage name of an epoch, as local state records it.
#[must_use]
pub fn lineage(epoch: u64) -> String {
    format!("e{epoch}")
}

/// Replaces `dir` with the snapshot (through a temporary directory beside it).
///
/// # Errors
/// A file is missing in S3, or a local write failed.
pub fn restore(
    objects: &dyn ObjectStore,
    snap: &SnapshotRef,
    dir: &Path,
) -> Result<(), SnapshotError> {
    let tmp = dir.with_extension("restoring");
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(io("remove", &tmp))?;
    }
    std::fs::create_dir_all(&tmp).map_err(io("create", &tmp))?;
    for (name, key) in &snap.files {
        let o = objects.get(key)?.ok_or_else(|| SnapshotError::Missing { key: key.clone() })?;
        let path = tmp.join(name);
        std::fs::write(&path, &o.body).map_err(io("write", &path))?;
    }
    if dir.exists() {
        std::fs::remove_dir_all(dir).map_err(io("remove", dir))?;
    }
    std::fs::rename(&tmp, dir).map_err(io("rename", dir))?;
    Ok(())
}

/// The snapshot identity (checkpoint, lineage) of local state in `dir`, if it has any.
///
/// # Errors
/// The directory holds a store that cannot be opened.
pub fn local_identity(dir: &Path) -> Result<Option<(u64, String)>, StateError> {
    if !dir.join("CURRENT").exists() {
        return Ok(None);
    }
    let store = RocksDbStore::open(dir)?;
    Ok(store.meta()?.and_then(|m| {
        let lineage = m.inputs.get(1)?.strip_prefix("epoch=")?.to_owned();
        Some((m.checkpoint, lineage))
    }))
}

/// Fills in the file list of an earlier version's snapshot (its `files.json`).
///
/// # Errors
/// The list is missing or does not decode.
pub fn legacy_files(
    objects: &dyn ObjectStore,
    layout: &Layout,
    snap: &mut SnapshotRef,
    prefix: &str,
) -> Result<(), SnapshotError> {
    let key = format!("{}files.json", layout.legacy_dir(snap.checkpoint, &snap.lineage));
    let o = objects.get(&key)?.ok_or_else(|| SnapshotError::Missing { key: key.clone() })?;
    let files: BTreeMap<String, String> = serde_json::from_slice(&o.body)
        .map_err(|e| SnapshotError::Corrupt { key: key.clone(), message: e.to_string() })?;
    // Earlier versions stored full keys (with the sink prefix).
    snap.files = files
        .into_iter()
        .map(|(name, k)| {
            let relative = k.strip_prefix(prefix).unwrap_or(&k).to_owned();
            (name, relative)
        })
        .collect();
    Ok(())
}

/// Keys that the `dropped` snapshots referenced and none of `kept` does.
#[must_use]
pub fn unreferenced(dropped: &[SnapshotRef], kept: &[&SnapshotRef]) -> Vec<String> {
    let live: BTreeSet<&String> = kept.iter().flat_map(|s| s.files.values()).collect();
    let mut out: Vec<String> = dropped
        .iter()
        .flat_map(|s| s.files.values())
        .filter(|k| !live.contains(k))
        .cloned()
        .collect();
    out.sort();
    out.dedup();
    out
}

/// Garbage in a listing of the split's state prefix: objects of epochs before `epoch` that the
/// record in force does not reference — uploads of owners that crashed or were fenced before
/// their commit, and what they left after it. Such an epoch can never commit again (the record
/// moved on), and a later epoch inherits only what the record references, so this never
/// removes anything a current or future owner needs. Objects of `epoch` and later are left
/// alone: if any exist, this owner is the stale one.
#[must_use]
pub fn garbage(
    keys: &[String],
    layout: &Layout,
    epoch: u64,
    referenced: &BTreeSet<&str>,
) -> Vec<String> {
    keys.iter()
        .filter(|k| layout.epoch_of(k).is_some_and(|e| e < epoch))
        .filter(|k| !referenced.contains(k.as_str()))
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
