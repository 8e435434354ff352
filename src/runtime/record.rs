//! A split's commit record and where its objects live under the sink.
//!
//! ```text
//! SINK/_state/SPLIT/LATEST                       the commit record (JSON), replaced only by CAS
//! SINK/_state/SPLIT/eEPOCH/sst/FILE              RocksDB table files uploaded by that epoch
//! SINK/_state/SPLIT/eEPOCH/cCHECKPOINT/FILE      a snapshot's descriptor files (MANIFEST, …)
//! SINK/_state/SPLIT/eEPOCH/cCHECKPOINT/out       the checkpoint's output, staged before commit
//! SINK/_splits/SPLIT/created                     written once, when the split first starts
//! SINK/_splits/SPLIT/resets/TIME.json            every operator reset, with its reason
//! SINK/sessions/dt=D/hour=H/SPLIT-CHECKPOINT.*   published rows (deterministic keys)
//! SINK/dead-letter/stream=SPLIT/SPLIT-CHECKPOINT.jsonl.gz
//! ```
//!
//! Everything written before a commit point carries its writer's epoch in its key, so no two
//! epochs ever write the same key there; published keys are written once, with
//! `If-None-Match`, after the record that names them is committed.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Format of [`CommitRecord`]; 0 is the single-line `LATEST` of earlier versions.
pub const FORMAT: u32 = 1;

/// Object metadata naming the epoch that wrote an object (published objects: the committer's).
pub const META_EPOCH: &str = "clickstream-epoch";
/// Object metadata naming the checkpoint a published object belongs to (`SPLIT/CHECKPOINT`).
pub const META_COMMIT: &str = "clickstream-commit";
/// Object metadata: the MD5 (hex) of a published object's body.
pub const META_MD5: &str = "clickstream-md5";

/// The commit record of a split: its committed checkpoint, where the source resumes, its state
/// snapshot, and the output that checkpoint publishes. Only ever replaced by a conditional
/// write on the ETag its writer read, so the history of a split is a single chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommitRecord {
    /// [`FORMAT`].
    pub format: u32,
    /// The split (`p0003`).
    pub split: String,
    /// What the split reads (`kafka:TOPIC/PARTITION`); empty when unknown (format 0).
    pub source: String,
    /// The output-shaping settings the state was built with; empty when unknown (format 0).
    pub settings: String,
    /// Bumped by every write of the record, claims included.
    pub generation: u64,
    /// The epoch (owner) that wrote this record: the generation of its claim.
    pub epoch: u64,
    /// Who that is, for people (`host/pid`).
    pub owner: String,
    /// The last committed checkpoint (0: none yet).
    pub checkpoint: u64,
    /// Where the source resumes, in the source's encoding; `None`: its configured start.
    pub position: Option<String>,
    /// The state as of `checkpoint`; `None`: empty state.
    pub snapshot: Option<SnapshotRef>,
    /// Older snapshots kept (newest first), for operators; garbage-collected past the window.
    #[serde(default)]
    pub retained: Vec<SnapshotRef>,
    /// Output of `checkpoint` that may not be published yet.
    #[serde(default)]
    pub pending: Option<Pending>,
    /// When the record was written (ms since the epoch, wall clock, for people).
    pub written_at_ms: u64,
    /// Set when an operator reset the split (and copied forward until the next reset).
    #[serde(default)]
    pub reset: Option<ResetNote>,
}

/// A published state snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotRef {
    /// The checkpoint it holds.
    pub checkpoint: u64,
    /// The lineage that wrote it: `eEPOCH`, or an earlier version's lineage id.
    pub lineage: String,
    /// Its files: local name → key under the sink prefix.
    pub files: BTreeMap<String, String>,
}

/// Output staged in one bundle object, to be published under its final keys.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pending {
    /// The bundle's key.
    pub bundle: String,
    /// The checkpoint it belongs to.
    pub checkpoint: u64,
    /// The epoch that committed it (published objects carry it).
    pub epoch: u64,
    /// Its pieces.
    pub objects: Vec<Publication>,
}

/// One published object, a slice of the bundle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Publication {
    /// Final key under the sink prefix.
    pub key: String,
    /// Offset in the bundle.
    pub offset: u64,
    /// Length.
    pub len: u64,
    /// MD5 of the body, hex.
    pub md5: String,
}

/// What an operator reset recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResetNote {
    /// When (RFC 3339).
    pub at: String,
    /// Why, as given.
    pub reason: String,
    /// Where the source restarts.
    pub from: String,
    /// What was found instead of a good record.
    pub found: String,
}

impl CommitRecord {
    /// Parses `LATEST`: a JSON record, or an earlier version's `CHECKPOINT LINEAGE` line.
    ///
    /// # Errors
    /// Neither: the object is torn or foreign.
    pub fn parse(body: &[u8], split: &str) -> Result<CommitRecord, String> {
        if body.first() == Some(&b'{') {
            let r: CommitRecord =
                serde_json::from_slice(body).map_err(|e| format!("not a commit record: {e}"))?;
            if r.format != FORMAT {
                return Err(format!(
                    "commit record format {} (this build reads {FORMAT})",
                    r.format
                ));
            }
            if r.split != split {
                return Err(format!("the record is split {}'s, not {split}'s", r.split));
            }
            return Ok(r);
        }
        let text = std::str::from_utf8(body).map_err(|_| "neither JSON nor text".to_owned())?;
        let (n, lineage) =
            text.trim().split_once(' ').ok_or_else(|| format!("unreadable: {text:.80}"))?;
        let checkpoint: u64 = n.parse().map_err(|_| format!("unreadable: {text:.80}"))?;
        Ok(CommitRecord {
            format: 0,
            split: split.to_owned(),
            source: String::new(),
            settings: String::new(),
            generation: 0,
            epoch: 0,
            owner: String::new(),
            checkpoint,
            position: None,
            // Its files are listed in the snapshot's own files.json: see [`legacy_files`].
            snapshot: Some(SnapshotRef {
                checkpoint,
                lineage: lineage.to_owned(),
                files: BTreeMap::new(),
            }),
            retained: Vec::new(),
            pending: None,
            written_at_ms: 0,
            reset: None,
        })
    }

    /// The record as stored.
    #[must_use]
    pub fn to_bytes(&self) -> Vec<u8> {
        // Plain strings and integers: serializing to memory cannot fail.
        serde_json::to_vec_pretty(self).unwrap_or_default()
    }
}

/// Where a split's objects live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    split: String,
}

impl Layout {
    /// The layout of `split`.
    #[must_use]
    pub fn new(split: &str) -> Layout {
        Layout { split: split.to_owned() }
    }

    /// The split's name.
    #[must_use]
    pub fn split(&self) -> &str {
        &self.split
    }

    /// Every state object of the split is under this prefix.
    #[must_use]
    pub fn state_prefix(&self) -> String {
        format!("_state/{}/", self.split)
    }

    /// The commit record.
    #[must_use]
    pub fn latest(&self) -> String {
        format!("_state/{}/LATEST", self.split)
    }

    /// Proof that the split has started before (outside `_state/`, which lifecycle rules and
    /// cleanups touch): a missing `LATEST` beside it is an error, not a fresh start.
    #[must_use]
    pub fn marker(&self) -> String {
        format!("_splits/{}/created", self.split)
    }

    /// Where the reset that made epoch `epoch` is recorded.
    #[must_use]
    pub fn reset_note(&self, at_ms: u64, epoch: u64) -> String {
        format!("_splits/{}/resets/{at_ms:013}-e{epoch}.json", self.split)
    }

    /// A table file uploaded by `epoch`.
    #[must_use]
    pub fn sst(&self, epoch: u64, file: &str) -> String {
        format!("_state/{}/e{epoch:010}/sst/{file}", self.split)
    }

    /// The directory of checkpoint `n`'s objects written by `epoch`.
    #[must_use]
    pub fn checkpoint_dir(&self, epoch: u64, n: u64) -> String {
        format!("_state/{}/e{epoch:010}/c{n:010}/", self.split)
    }

    /// Checkpoint `n`'s staged output.
    #[must_use]
    pub fn bundle(&self, epoch: u64, n: u64) -> String {
        format!("{}out", self.checkpoint_dir(epoch, n))
    }

    /// The epoch that wrote a key under [`Layout::state_prefix`]: `eEPOCH/…`; objects of
    /// earlier versions (`sst/…`, `CHECKPOINT-LINEAGE/…`) count as epoch 0. `None` for
    /// `LATEST` and keys of other splits.
    #[must_use]
    pub fn epoch_of(&self, key: &str) -> Option<u64> {
        let rest = key.strip_prefix(&self.state_prefix())?;
        if rest == "LATEST" {
            return None;
        }
        let first = rest.split('/').next()?;
        Some(first.strip_prefix('e').and_then(|n| n.parse().ok()).unwrap_or(0))
    }

    /// The directory of an earlier version's snapshot (format 0).
    #[must_use]
    pub fn legacy_dir(&self, checkpoint: u64, lineage: &str) -> String {
        format!("_state/{}/{checkpoint:010}-{lineage}/", self.split)
    }
}

/// Milliseconds since the Unix epoch, wall clock.
#[must_use]
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_earlier_lines_are_read() {
        let r = CommitRecord::parse(b"12 abc123\n", "p0001").unwrap();
        assert_eq!((r.format, r.checkpoint), (0, 12));
        assert_eq!(r.snapshot.as_ref().unwrap().lineage, "abc123");
        let mut j = r.clone();
        j.format = FORMAT;
        assert_eq!(CommitRecord::parse(&j.to_bytes(), "p0001").unwrap(), j);
        assert!(CommitRecord::parse(&j.to_bytes(), "p0002").unwrap_err().contains("p0001"));
        assert!(CommitRecord::parse(b"{\"format\":1,", "p0001").is_err());
        assert!(CommitRecord::parse(b"\xff\xfe", "p0001").is_err());
        assert!(CommitRecord::parse(b"", "p0001").is_err());
    }

    #[test]
    fn keys_name_their_epoch() {
        let l = Layout::new("p0003");
        assert_eq!(l.epoch_of(&l.sst(7, "000012.sst")), Some(7));
        assert_eq!(l.epoch_of(&l.bundle(12, 3)), Some(12));
        assert_eq!(l.epoch_of("_state/p0003/sst/abc-000012.sst"), Some(0));
        assert_eq!(l.epoch_of("_state/p0003/0000000004-abc/files.json"), Some(0));
        assert_eq!(l.epoch_of(&l.latest()), None);
        assert_eq!(l.epoch_of("_state/p0004/e0000000001/sst/x"), None);
    }
}
