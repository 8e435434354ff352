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
use tracing::warn;

mod local;
pub use local::check_name;
use local::{Scratch, parent_of, sync_dir, write_synced};

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
    /// A file name the snapshot lists is not a plain file name (it could name a path outside
    /// the state directory): nothing of the snapshot is written.
    #[error(
        "snapshot file name {name:?} is refused: {why}. A snapshot only holds RocksDB checkpoint files, so its file list in the bucket was not written by clickstream. Reset the split (`clickstream state reset`)."
    )]
    BadName {
        /// The name, as listed.
        name: String,
        /// What is wrong with it.
        why: &'static str,
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
    // Removed on every way out: it holds hard links to table files RocksDB has since deleted.
    let scratch = Scratch::claim(tmp.to_path_buf())?;
    store.snapshot_into(scratch.path())?;
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
    drop(scratch);
    // Only files of this snapshot stay known: RocksDB never brings a deleted table back.
    uploaded.retain(|name, _| files.contains_key(name));
    Ok(SnapshotRef { checkpoint: n, lineage: lineage(epoch), files })
}

/// The lineage name of an epoch, as local state records it.
#[must_use]
pub fn lineage(epoch: u64) -> String {
    format!("e{epoch}")
}

/// Replaces `dir` with the snapshot, through a scratch directory beside it that is renamed
/// into place once complete: `dir` is never a partial download, and the rename is the mark
/// that the download completed.
///
/// # Errors
/// A file name is not a plain file name (nothing is written then), a file is missing in S3,
/// or a local write failed; the scratch directory is removed in every case.
pub fn restore(
    objects: &dyn ObjectStore,
    snap: &SnapshotRef,
    dir: &Path,
) -> Result<(), SnapshotError> {
    // Every name before any write: a refused snapshot leaves the disk as it was.
    for name in snap.files.keys() {
        check_name(name)?;
    }
    let tmp = Scratch::claim(dir.with_extension("restoring"))?;
    std::fs::create_dir_all(tmp.path()).map_err(io("create", tmp.path()))?;
    for (name, key) in &snap.files {
        let o = objects.get(key)?.ok_or_else(|| SnapshotError::Missing { key: key.clone() })?;
        write_synced(&tmp.path().join(name), &o.body)?;
    }
    // The rename must not reach the disk before what it publishes. File systems order neither
    // by themselves (ext4 and XFS allocate data late): after a power loss, the directory could
    // be in place with empty or short files, and be taken for a complete restore. So: each
    // file is synced as written (above), then the directory's entries, then the rename, then
    // the parent's entries (which make the rename itself durable).
    sync_dir(tmp.path())?;
    // The old state leaves in one rename rather than file by file: a store partly removed by a
    // crash could still open, with tables missing.
    let old = Scratch::claim(dir.with_extension("replaced"))?;
    if std::fs::symlink_metadata(dir).is_ok() {
        std::fs::rename(dir, old.path()).map_err(io("rename", dir))?;
    }
    std::fs::rename(tmp.path(), dir).map_err(io("rename", dir))?;
    tmp.keep();
    sync_dir(parent_of(dir))?;
    drop(old);
    Ok(())
}

/// The snapshot identity (checkpoint, lineage) of local state in `dir`, if it has any. Torn
/// state (an empty or missing `CURRENT` or `MANIFEST`, or something other than a directory)
/// has none, so that start-up downloads the snapshot again instead of failing on it.
///
/// # Errors
/// The directory holds a store that cannot be opened.
pub fn local_identity(dir: &Path) -> Result<Option<(u64, String)>, StateError> {
    let empty = std::fs::read_dir(dir).map_or(true, |mut d| d.next().is_none());
    if empty {
        return Ok(None);
    }
    if let Some(why) = local::torn(dir) {
        // Not an error: the committed snapshot is the truth, and it is downloaded instead.
        warn!(path = %dir.display(), why, "Local state is torn; it is replaced by the snapshot.");
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
/// The list is missing, does not decode, or names a file that is not a plain file name.
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
    // Refused here, before the claim copies the list into the new commit record.
    for name in files.keys() {
        check_name(name)?;
    }
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
mod tests;
