//! `clickstream state show|reset`: what an operator sees of a split, and the one way to start
//! a split again whose commit record is missing or unreadable.
//!
//! A reset never deletes output. It writes a new commit record (conditionally, so a running
//! owner that comes back is fenced) with empty state, a position to start from, an epoch above
//! every epoch whose objects are still there (so no key is ever written by two epochs), and a
//! checkpoint number above every published one (so published keys are never reused); and it
//! records the reset, with its reason, beside the split's marker.

use super::record::{CommitRecord, FORMAT, Layout, ResetNote, now_ms};
use crate::sink::objects::{Condition, ObjectError, ObjectStore};
use serde_json::json;
use thiserror::Error;

/// A reset or show that could not be done.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ResetError {
    /// S3 failed.
    #[error(transparent)]
    Object(#[from] ObjectError),
    /// The split's record is fine; resetting it would throw its state away.
    #[error(
        "split {0} has a good commit record (checkpoint {1}): resetting would discard its state; add --force to do it anyway"
    )]
    Healthy(String, u64),
}

/// What to reset, and how.
#[derive(Debug, Clone)]
pub struct ResetRequest {
    /// The split.
    pub split: String,
    /// Why (recorded).
    pub reason: String,
    /// Where the source restarts, in its encoding; `None`: its configured start.
    pub position: Option<String>,
    /// The same in words, for the record.
    pub from: String,
    /// The first checkpoint number is above this; `None`: above every published one (found by
    /// listing the split's output).
    pub checkpoint_base: Option<u64>,
    /// Reset even a split whose record is good.
    pub force: bool,
    /// What the split reads and its settings (recorded, checked at the next start).
    pub source: String,
    /// Output-shaping settings.
    pub settings: String,
}

/// Resets a split; returns the record written.
///
/// # Errors
/// See [`ResetError`].
pub fn reset(objects: &dyn ObjectStore, r: &ResetRequest) -> Result<CommitRecord, ResetError> {
    let layout = Layout::new(&r.split);
    let current = objects.get(&layout.latest())?;
    let (old, cond, found) = match &current {
        None => (None, Condition::IfAbsent, "no commit record".to_owned()),
        Some(o) => match CommitRecord::parse(&o.body, &r.split) {
            Ok(rec) if !r.force => {
                return Err(ResetError::Healthy(r.split.clone(), rec.checkpoint));
            }
            Ok(rec) => {
                let found = format!("a good record at checkpoint {} (forced)", rec.checkpoint);
                (Some(rec), Condition::IfMatch(o.etag.clone()), found)
            }
            Err(why) => {
                (None, Condition::IfMatch(o.etag.clone()), format!("an unreadable record: {why}"))
            }
        },
    };
    let keys = objects.list(&layout.state_prefix())?;
    let max_epoch = keys.iter().filter_map(|k| layout.epoch_of(k)).max().unwrap_or(0);
    let generation = max_epoch.max(old.as_ref().map_or(0, |o| o.generation)) + 1;
    let base = match r.checkpoint_base {
        Some(b) => b,
        None => published_max(objects, &r.split)?.max(old.as_ref().map_or(0, |o| o.checkpoint)),
    };
    let at = now_ms();
    let note = ResetNote {
        at: humantime::format_rfc3339_millis(
            std::time::UNIX_EPOCH + std::time::Duration::from_millis(at),
        )
        .to_string(),
        reason: r.reason.clone(),
        from: r.from.clone(),
        found,
    };
    let record = CommitRecord {
        format: FORMAT,
        split: r.split.clone(),
        source: r.source.clone(),
        settings: r.settings.clone(),
        generation,
        epoch: generation,
        owner: format!("reset by {}", whoami()),
        checkpoint: base,
        position: r.position.clone(),
        snapshot: None,
        retained: Vec::new(),
        pending: None,
        written_at_ms: at,
        reset: Some(note.clone()),
    };
    objects.put(&layout.latest(), record.to_bytes().into(), &[], cond)?;
    let audit = json!({ "split": r.split, "record": &record, "by": whoami() });
    objects.put(
        &layout.reset_note(at, generation),
        audit.to_string().into_bytes().into(),
        &[],
        Condition::IfAbsent,
    )?;
    match objects.put(
        &layout.marker(),
        r.split.clone().into_bytes().into(),
        &[],
        Condition::IfAbsent,
    ) {
        Ok(_) | Err(ObjectError::Precondition { .. }) => {}
        Err(e) => return Err(e.into()),
    }
    tracing::warn!(split = %r.split, reason = %r.reason, from = %r.from, checkpoint_base = base, epoch = generation, "Split reset: it starts again with empty state; its published output is kept.");
    Ok(record)
}

/// The highest checkpoint of the split's published objects (rows and dead letters).
fn published_max(objects: &dyn ObjectStore, split: &str) -> Result<u64, ObjectError> {
    let mut max = 0;
    let prefix = format!("{split}-");
    for dir in ["sessions/".to_owned(), format!("dead-letter/stream={split}/")] {
        for key in objects.list(&dir)? {
            let Some(name) = key.rsplit('/').next() else { continue };
            let Some(rest) = name.strip_prefix(&prefix) else { continue };
            let n = rest.split('.').next().and_then(|n| n.parse::<u64>().ok());
            max = max.max(n.unwrap_or(0));
        }
    }
    Ok(max)
}

fn whoami() -> String {
    let user = std::env::var("USER").unwrap_or_else(|_| "?".into());
    format!("{user}@{}", super::hostname())
}

/// What `state show` prints: the record (or why there is none), the marker, resets, and how
/// many state objects the split has.
///
/// # Errors
/// S3 failed.
pub fn show(objects: &dyn ObjectStore, split: &str) -> Result<serde_json::Value, ObjectError> {
    let layout = Layout::new(split);
    let record = match objects.get(&layout.latest())? {
        None => json!({ "missing": layout.latest() }),
        Some(o) => match CommitRecord::parse(&o.body, split) {
            Ok(r) => serde_json::to_value(&r).unwrap_or_default(),
            Err(why) => json!({ "unreadable": why }),
        },
    };
    let keys = objects.list(&layout.state_prefix())?;
    let resets = objects.list(&format!("_splits/{split}/resets/"))?;
    Ok(json!({
        "split": split,
        "record": record,
        "started_before": objects.head(&layout.marker())?.is_some(),
        "state_objects": keys.len(),
        "resets": resets,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sink::objects::MemoryObjects;

    fn request(split: &str) -> ResetRequest {
        ResetRequest {
            split: split.into(),
            reason: "LATEST removed by a lifecycle rule".into(),
            position: Some("42".into()),
            from: "offset 42".into(),
            checkpoint_base: None,
            force: false,
            source: "kafka:t/0".into(),
            settings: "s".into(),
        }
    }

    #[test]
    fn reset_continues_above_every_epoch_and_published_checkpoint() {
        let m = MemoryObjects::default();
        let l = Layout::new("p0000");
        for k in [
            l.sst(7, "1.sst"),
            "sessions/dt=2024-03-04/hour=01/p0000-0000000012.jsonl.gz".into(),
            "sessions/dt=2024-03-04/hour=01/p0001-0000000099.jsonl.gz".into(),
        ] {
            m.put(&k, bytes::Bytes::new(), &[], Condition::None).unwrap();
        }
        let r = reset(&m, &request("p0000")).unwrap();
        assert_eq!((r.generation, r.epoch, r.checkpoint), (8, 8, 12));
        assert_eq!(r.position.as_deref(), Some("42"));
        assert!(r.snapshot.is_none());
        assert_eq!(m.list("_splits/p0000/resets/").unwrap().len(), 1);
        // A good record is not reset without --force.
        assert!(matches!(reset(&m, &request("p0000")), Err(ResetError::Healthy(..))));
        let mut forced = request("p0000");
        forced.force = true;
        assert_eq!(reset(&m, &forced).unwrap().generation, 9);
    }
}
