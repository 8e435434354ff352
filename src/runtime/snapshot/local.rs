//! The local side of a snapshot: which file names a restore may write, writes that survive a
//! power loss, scratch directories that never outlive an error, and what counts as torn state.

use super::{SnapshotError, io};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use tracing::warn;

/// Longest file name accepted (the common file-system limit).
const NAME_MAX: usize = 255;

/// Refuses a snapshot file name that is not a plain name of a `RocksDB` checkpoint file
/// (`000012.sst`, `MANIFEST-000005`, `OPTIONS-000007`, `CURRENT`). The names come from the
/// bucket (a commit record, or an earlier version's `files.json`), which anyone with write access
/// to the sink can change: a name with a separator or `..` would be joined into a path outside
/// the state directory. An allow-list, not a deny-list, so that no platform's path syntax
/// (`\`, drive letters, NUL) has to be thought of.
///
/// # Errors
/// [`SnapshotError::BadName`], saying why.
pub fn check_name(name: &str) -> Result<(), SnapshotError> {
    let why = if name.is_empty() {
        "it is empty"
    } else if name.len() > NAME_MAX {
        "it is longer than 255 bytes"
    } else if name.starts_with('.') {
        // Also `.` and `..`; no checkpoint file is hidden.
        "it starts with a dot"
    } else if !name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-')) {
        "it has a character other than A-Z, a-z, 0-9, '.', '_' and '-'"
    } else {
        return Ok(());
    };
    Err(SnapshotError::BadName { name: name.to_owned(), why })
}

/// Writes `body` to a new file at `path` and flushes it to the disk before returning.
pub(super) fn write_synced(path: &Path, body: &[u8]) -> Result<(), SnapshotError> {
    let mut f = std::fs::File::create(path).map_err(io("create", path))?;
    f.write_all(body).map_err(io("write", path))?;
    f.sync_all().map_err(io("sync", path))
}

/// Flushes a directory's entries (names created, removed or renamed in it) to the disk.
pub(super) fn sync_dir(dir: &Path) -> Result<(), SnapshotError> {
    let d = std::fs::File::open(dir).map_err(io("open", dir))?;
    d.sync_all().map_err(io("sync", dir))
}

/// The directory `path` is in (`.` for a bare name).
pub(super) fn parent_of(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Removes whatever is at `path` (a directory tree or a file); nothing there is fine.
pub(super) fn remove_any(path: &Path) -> Result<(), SnapshotError> {
    let removed = match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => Err(e),
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(path),
        Ok(_) => std::fs::remove_file(path),
    };
    removed.map_err(io("remove", path))
}

/// A scratch path (a snapshot being uploaded or downloaded) that is removed when this is
/// dropped, unless [`Scratch::keep`] was called: every `?` and every panic between its claim
/// and the end of its use cleans up, with no cleanup code at each exit.
#[derive(Debug)]
pub(super) struct Scratch {
    path: PathBuf,
    kept: bool,
}

impl Scratch {
    /// Takes `path` for scratch use, removing what an interrupted earlier run left there.
    pub(super) fn claim(path: PathBuf) -> Result<Self, SnapshotError> {
        remove_any(&path)?;
        Ok(Scratch { path, kept: false })
    }

    pub(super) fn path(&self) -> &Path {
        &self.path
    }

    /// The path has become something else (renamed into place): do not remove it.
    pub(super) fn keep(mut self) {
        self.kept = true;
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if self.kept {
            return;
        }
        if let Err(e) = remove_any(&self.path) {
            // The next claim of the same path removes it; only disk space is at stake.
            warn!(error = %e, "A scratch directory could not be removed.");
        }
    }
}

/// Why the state in `dir` is torn — present, but not a store `RocksDB` can open as it was
/// last written — or `None` when it looks whole (or is absent). Checked before opening
/// because a store that opens may still be missing what its descriptor names: the descriptor
/// files are what a torn copy loses first, and `RocksDB`'s own error for them does not say
/// that the cure is a fresh download.
pub(super) fn torn(dir: &Path) -> Option<&'static str> {
    let current = dir.join("CURRENT");
    let Ok(text) = std::fs::read_to_string(&current) else {
        return Some("its CURRENT file is missing or unreadable");
    };
    // CURRENT holds the name of the live MANIFEST and a newline, written in one go.
    let Some(manifest) = text.strip_suffix('\n') else {
        return Some("its CURRENT file is empty or cut short");
    };
    if check_name(manifest).is_err() || !manifest.starts_with("MANIFEST-") {
        return Some("its CURRENT file does not name a MANIFEST");
    }
    match std::fs::metadata(dir.join(manifest)) {
        Ok(m) if m.len() > 0 => None,
        Ok(_) => Some("its MANIFEST is empty"),
        Err(_) => Some("its MANIFEST is missing"),
    }
}
