//! Taking a split: claim its commit record, finish what the previous owner committed, restore
//! its state.
//!
//! The claim comes first and is a compare-and-swap of `LATEST` on the ETag just read: it gives
//! this owner a new epoch (the record's generation), and from then on every commit of the
//! previous owner fails its own compare-and-swap — whatever it was doing when it stalled. Only
//! then is anything else written. A record that is missing (while the split's marker says it
//! ran before) or unreadable, or one written with other settings or for another source, is
//! refused: the split waits for an operator (`clickstream state reset`); nothing is deleted.

use super::commit::{PublishError, SplitContext, publish};
use super::record::{CommitRecord, FORMAT, now_ms};
use super::snapshot::{self, SnapshotError};
use crate::event::SourcePosition;
use crate::sink::objects::{Condition, ObjectError};
use crate::state::rocksdb::RocksDbStore;
use crate::state::{Meta, StateError, StateStore};
use std::collections::BTreeMap;
use thiserror::Error;
use tracing::{info, warn};

/// Claims lost to other writers before giving up for now.
const CLAIM_ATTEMPTS: u32 = 5;

/// Why a split could not be taken.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum AcquireError {
    /// The split needs an operator; the message says why and what to do.
    #[error("{0}")]
    Refused(String),
    /// A parent split has not committed its end yet: try again later.
    #[error("waiting: {0}")]
    Waiting(String),
    /// Other writers kept changing the record; try again later.
    #[error("the commit record kept changing under {CLAIM_ATTEMPTS} claims")]
    Contended,
    /// S3 failed or the split was cancelled.
    #[error(transparent)]
    Object(#[from] ObjectError),
    /// The snapshot could not be restored.
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    /// Local state failed.
    #[error(transparent)]
    State(#[from] StateError),
}

/// A split taken by this owner.
#[derive(Debug)]
pub struct Acquired {
    /// Our claim, as written.
    pub record: CommitRecord,
    /// Its ETag: the next commit is conditional on it.
    pub etag: String,
    /// Our epoch.
    pub epoch: u64,
    /// The state store, as of the record's checkpoint.
    pub store: RocksDbStore,
    /// Its checkpoint record (the contents are read on demand).
    pub state: Option<Meta>,
    /// Table files already in S3 (name → key).
    pub uploaded: BTreeMap<String, String>,
    /// Where the state says the source resumes, when it predates positions in the record.
    pub legacy_position: Option<SourcePosition>,
}

/// Takes the split for this owner.
///
/// # Errors
/// See [`AcquireError`]; nothing of the split's output is ever deleted.
pub fn acquire(ctx: &SplitContext) -> Result<Acquired, AcquireError> {
    let layout = &ctx.layout;
    for _ in 0..CLAIM_ATTEMPTS {
        let (mut prev, cond) = match ctx.objects.get(&layout.latest())? {
            None => {
                if ctx.objects.head(&layout.marker())?.is_some() {
                    return Err(AcquireError::Refused(format!(
                        "split {split}: its commit record {key} is missing although the split has run before ({marker} exists). Its published output is kept. Start it again with `clickstream state reset --partition N --reason …`.",
                        split = layout.split(),
                        key = layout.latest(),
                        marker = layout.marker()
                    )));
                }
                if let Some(l) = ctx.lineage.as_ref().filter(|l| !l.parents.is_empty()) {
                    // Before the claim: a child waiting for its parents writes nothing.
                    super::lineage::parents_ended(ctx, l)?;
                }
                (fresh(ctx), Condition::IfAbsent)
            }
            Some(o) => match CommitRecord::parse(&o.body, layout.split()) {
                Ok(r) => (r, Condition::IfMatch(o.etag)),
                Err(why) => {
                    return Err(AcquireError::Refused(format!(
                        "split {split}: its commit record {key} is unreadable ({why}). Its published output is kept. Start it again with `clickstream state reset --partition N --reason …`.",
                        split = layout.split(),
                        key = layout.latest()
                    )));
                }
            },
        };
        check_identity(ctx, &prev.source, &prev.settings)?;
        if prev.format == 0
            && let Some(s) = &mut prev.snapshot
        {
            // Before the claim: the claim must reference these files, or a sweep would take them.
            snapshot::legacy_files(&*ctx.objects, layout, s, &ctx.prefix)?;
        }
        let epoch = prev.generation + 1;
        let claim = CommitRecord {
            format: FORMAT,
            source: ctx.identity.source.clone(),
            settings: ctx.identity.settings.clone(),
            generation: epoch,
            epoch,
            owner: ctx.identity.owner.clone(),
            written_at_ms: now_ms(),
            ..prev
        };
        let etag = match ctx.objects.put(&layout.latest(), claim.to_bytes().into(), &[], cond) {
            Ok(e) => e,
            Err(ObjectError::Precondition { .. }) => continue,
            Err(e) => return Err(e.into()),
        };
        info!(split = layout.split(), epoch, checkpoint = claim.checkpoint, "Claimed split.");
        super::failpoint::hit("claim.written");
        // After the claim, so that a crash in between cannot look like a lost record.
        match ctx.objects.put(
            &layout.marker(),
            claim.split.clone().into_bytes().into(),
            &[],
            Condition::IfAbsent,
        ) {
            Ok(_) | Err(ObjectError::Precondition { .. }) => {}
            Err(e) => return Err(e.into()),
        }
        if let Some(p) = &claim.pending {
            match publish(ctx, p, None) {
                Ok(n) if n > 0 => warn!(
                    split = layout.split(),
                    checkpoint = p.checkpoint,
                    objects = n,
                    "Published the committed output a previous owner left unpublished."
                ),
                Ok(_) => {}
                Err(PublishError::Object(e)) => return Err(e.into()),
                Err(PublishError::Refused(why)) => return Err(AcquireError::Refused(why)),
            }
        }
        return restore(ctx, claim, etag, epoch);
    }
    Err(AcquireError::Contended)
}

/// Whether the commit record is no longer the one written with `etag`.
fn moved_on(ctx: &SplitContext, etag: &str) -> Result<bool, AcquireError> {
    Ok(ctx.objects.head(&ctx.layout.latest())?.is_none_or(|h| h.etag != etag))
}

/// The record of a split that never ran.
fn fresh(ctx: &SplitContext) -> CommitRecord {
    CommitRecord {
        format: FORMAT,
        split: ctx.layout.split().to_owned(),
        source: ctx.identity.source.clone(),
        settings: ctx.identity.settings.clone(),
        generation: 0,
        epoch: 0,
        owner: String::new(),
        checkpoint: 0,
        position: None,
        snapshot: None,
        retained: Vec::new(),
        pending: None,
        written_at_ms: 0,
        reset: None,
    }
}

/// Refuses state of another source, or built with other output-shaping settings, unless the
/// operator allowed a settings change. Empty means unknown (an earlier version's record).
fn check_identity(ctx: &SplitContext, source: &str, settings: &str) -> Result<(), AcquireError> {
    let split = ctx.layout.split();
    if !source.is_empty() && source != ctx.identity.source {
        return Err(AcquireError::Refused(format!(
            "split {split}: its state was built from {source}, not {ours}: the sink location holds another stream's output. Use another sink prefix, or reset the split (`clickstream state reset`).",
            ours = ctx.identity.source
        )));
    }
    if !settings.is_empty() && settings != ctx.identity.settings {
        if ctx.identity.allow_settings_change {
            warn!(split, was = settings, now = %ctx.identity.settings, "Resuming with changed settings, as allowed (run.allow_settings_change): sessions already open keep their earlier boundaries.");
            return Ok(());
        }
        return Err(AcquireError::Refused(format!(
            "split {split}: its state was built with {settings}, not {ours}: resuming would mix two results. Restore the settings, or allow the change once with run.allow_settings_change = true.",
            ours = ctx.identity.settings
        )));
    }
    Ok(())
}

/// Makes local state exactly the claimed record's snapshot: reused when it already is (same
/// checkpoint and lineage), otherwise downloaded; empty when the record has none.
fn restore(
    ctx: &SplitContext,
    record: CommitRecord,
    etag: String,
    epoch: u64,
) -> Result<Acquired, AcquireError> {
    let dir = &ctx.state_dir;
    let split = ctx.layout.split();
    let local = snapshot::local_identity(dir).unwrap_or_else(|e| {
        warn!(split, error = %e, "Local state is unreadable; it is replaced.");
        None
    });
    match &record.snapshot {
        None => {
            if dir.exists() {
                std::fs::remove_dir_all(dir).map_err(snapshot::io("remove", dir))?;
            }
        }
        Some(s) if local.as_ref() == Some(&(s.checkpoint, s.lineage.clone())) => {}
        Some(s) => {
            info!(split, local = ?local, checkpoint = s.checkpoint, lineage = %s.lineage, "Restoring split state from its S3 snapshot.");
            match snapshot::restore(&*ctx.objects, s, dir) {
                Ok(()) => {}
                Err(SnapshotError::Missing { .. }) if moved_on(ctx, &etag)? => {
                    // A newer owner claimed the split while this one restored (it stalled), and
                    // has since collected the snapshot: this owner is stale, not the state lost.
                    return Err(AcquireError::Contended);
                }
                Err(SnapshotError::Missing { key }) => {
                    return Err(AcquireError::Refused(format!(
                        "split {split}: file {key} of its state snapshot (checkpoint {}) is missing in S3. Its published output is kept. Reset the split (`clickstream state reset`).",
                        s.checkpoint
                    )));
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
    std::fs::create_dir_all(dir).map_err(snapshot::io("create", dir))?;
    let opened = std::time::Instant::now();
    let mut store = RocksDbStore::open_with(dir, &ctx.memory)?;
    if record.snapshot.is_none()
        && let Some(l) = ctx.lineage.as_ref().filter(|l| !l.parents.is_empty())
    {
        // A child that never committed: it starts from its parents' ends (or waits for them).
        super::lineage::seed(ctx, l, &mut store)?;
    }
    let state = store.meta()?;
    info!(
        split,
        ms = opened.elapsed().as_millis() as u64,
        open_sessions = state.as_ref().map_or(0, |m| m.open.0),
        "Split state opened (read on demand, not loaded)."
    );
    let mut legacy_position = None;
    if let Some(s) = &record.snapshot {
        let Some(m) = &state else {
            return Err(AcquireError::Refused(format!(
                "split {split}: its state snapshot (checkpoint {}) holds no checkpoint record. Reset the split (`clickstream state reset`).",
                s.checkpoint
            )));
        };
        if m.checkpoint != s.checkpoint {
            return Err(AcquireError::Refused(format!(
                "split {split}: its state snapshot holds checkpoint {}, the commit record says {}. Reset the split (`clickstream state reset`).",
                m.checkpoint, s.checkpoint
            )));
        }
        if record.position.is_none() {
            // An earlier version's state: its own record says where it was, and with what.
            check_identity(ctx, "", &m.settings)?;
            legacy_position = Some(m.position);
        }
    }
    let uploaded = record
        .snapshot
        .as_ref()
        .map(|s| {
            s.files
                .iter()
                .filter(|(n, _)| std::path::Path::new(n).extension().is_some_and(|x| x == "sst"))
                .map(|(n, k)| (n.clone(), k.clone()))
                .collect()
        })
        .unwrap_or_default();
    Ok(Acquired { record, etag, epoch, store, state, uploaded, legacy_position })
}
