//! Following a growing file (`--follow`): noticing that it was truncated or replaced.

use super::input::{FileId, Input};
use std::fmt;
use tokio_util::sync::CancellationToken;

/// How a followed file changed under its reader.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Change {
    /// Its path names another file now (log rotation: renamed, then created anew).
    Replaced,
    /// The same file holds fewer bytes than were read from it (`copytruncate`, or rewritten).
    Truncated {
        /// Its size now.
        size: u64,
        /// Bytes read from it.
        read: u64,
    },
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Change::Replaced => f.write_str("replaced by another file (rotated)"),
            Change::Truncated { size, read } => {
                write!(f, "truncated to {size} bytes after {read} were read")
            }
        }
    }
}

/// What a followed reader does at the end of what is written so far.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum AtEof {
    /// Stop: the replay was cancelled.
    Cancelled,
    /// Wait for more.
    Unchanged,
    /// Go on with the new file, from its start.
    Changed(Change),
}

/// A followed input and the file its reader has open.
pub(super) struct Follow<'a> {
    pub(super) input: &'a Input,
    pub(super) file: Option<FileId>,
    pub(super) cancel: &'a CancellationToken,
}

impl Follow<'_> {
    /// At the end of the open file, `read` bytes into it: whether to wait, switch or stop.
    pub(super) fn at_eof(&self, read: u64) -> AtEof {
        if self.cancel.is_cancelled() {
            return AtEof::Cancelled;
        }
        match change(self.file, self.input.path_now(), read) {
            Some(c) => AtEof::Changed(c),
            None => AtEof::Unchanged,
        }
    }
}

/// How the file now at the path (`now`: its identity and size; None while the path is missing,
/// as between a rotation's rename and the writer's new file) differs from the one open.
fn change(open: Option<FileId>, now: Option<(Option<FileId>, u64)>, read: u64) -> Option<Change> {
    let (id, size) = now?;
    if id.is_some() && open.is_some() && id != open {
        return Some(Change::Replaced);
    }
    (size < read).then_some(Change::Truncated { size, read })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotation_truncation_and_a_missing_path_are_told_apart() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a");
        let b = dir.path().join("b");
        std::fs::write(&a, b"12345").unwrap();
        std::fs::write(&b, b"1").unwrap();
        let id = |p: &std::path::Path| FileId::of(&std::fs::metadata(p).unwrap());
        let (ia, ib) = (id(&a), id(&b));
        assert_eq!(change(ia, Some((ia, 5)), 5), None);
        assert_eq!(change(ia, Some((ia, 9)), 5), None, "grown");
        assert_eq!(change(ia, Some((ia, 2)), 5), Some(Change::Truncated { size: 2, read: 5 }));
        assert_eq!(change(ia, Some((ib, 9)), 5), Some(Change::Replaced));
        assert_eq!(change(ia, None, 5), None, "no file at the path yet: keep waiting");
        assert!(Change::Truncated { size: 2, read: 5 }.to_string().contains("truncated"));
    }
}
