//! The commit protocol of a split, shared by every partitioned source.
//!
//! # Invariant
//! A split's committed history is the chain of its commit records (`LATEST`), each written by
//! compare-and-swap on the ETag its writer read. A checkpoint is committed exactly when its
//! record is written; everything before that is private to its epoch, everything after it is a
//! deterministic consequence of the record. Checkpoint `n` of epoch `e`:
//!
//! 1. **Stage**: the interval's output objects, concatenated, to `_state/S/eE/cN/out`.
//! 2. **State**: sessions, ids and the position in one synced `RocksDB` batch (local).
//! 3. **Snapshot**: new table files and the descriptor files to `_state/S/eE/…`.
//! 4. **Commit**: the record naming the snapshot and the staged output, `If-Match` the last
//!    ETag. A failed condition means another epoch has claimed the split: this one stops and
//!    writes nothing more.
//! 5. **Publish**: each output object to its final key, `If-None-Match: *` (a second publisher
//!    — a stalled owner resuming, or the next owner rolling forward — finds it there and checks
//!    it is the same), then the bundle is deleted.
//! 6. **Collect**: files only the snapshots leaving the retention window referenced.
//!
//! Readers of `sessions/` therefore see an object only once its checkpoint is committed, never
//! one of an attempt that is rolled back, and never one that disappears. A crash anywhere
//! leaves either the previous record (its epoch's private objects become garbage) or the new
//! one (the next owner publishes what it names before doing anything else).

use super::failpoint;
use super::record::{
    CommitRecord, Layout, META_COMMIT, META_EPOCH, META_MD5, Pending, Publication, SnapshotRef,
    now_ms,
};
use super::snapshot::{self, SnapshotError};
use crate::processor::EpochOutput;
use crate::sink::objects::{Condition, ObjectError, ObjectStore};
use crate::state::rocksdb::RocksDbStore;
use crate::state::{CheckpointBatch, StateStore};
use bytes::Bytes;
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// Objects published at once.
const PUBLISH_THREADS: usize = 8;

/// Who this owner is and what its state must match.
#[derive(Debug, Clone)]
pub struct Identity {
    /// What the split reads (`kafka:TOPIC/PARTITION`).
    pub source: String,
    /// The output-shaping settings.
    pub settings: String,
    /// This process, for people (`host/pid`).
    pub owner: String,
    /// Resume state built with other settings (an operator's decision).
    pub allow_settings_change: bool,
}

/// Everything a split's protocol needs.
#[derive(Debug)]
pub struct SplitContext {
    /// Where its objects live.
    pub layout: Layout,
    /// The sink, whose retries stop when `cancel` fires.
    pub objects: Arc<dyn ObjectStore>,
    /// Stops the split's S3 retries (lost, shutdown deadline).
    pub cancel: CancellationToken,
    /// Who we are.
    pub identity: Identity,
    /// Local state directory.
    pub state_dir: PathBuf,
    /// Scratch directory for snapshots.
    pub tmp_dir: PathBuf,
    /// The sink's key prefix with its `/` (earlier versions stored full keys).
    pub prefix: String,
    /// Snapshots kept, the committed one included.
    pub keep_snapshots: usize,
    /// Rows as Parquet.
    pub parquet: bool,
    /// Where the split's first state comes from, when keys move between splits.
    pub lineage: Option<crate::source::Lineage>,
    /// What the split's store may hold in memory (shared by the process's splits).
    pub memory: crate::state::rocksdb::MemoryBudget,
    /// This split's share for its session cache, in bytes.
    pub session_cache: usize,
}

/// Publishing could not finish.
#[derive(Debug)]
pub enum PublishError {
    /// S3 failed or the split was cancelled: try again.
    Object(ObjectError),
    /// Needs an operator: a foreign object at a final key, or committed output lost.
    Refused(String),
}

impl From<ObjectError> for PublishError {
    fn from(e: ObjectError) -> Self {
        PublishError::Object(e)
    }
}

/// Publishes a committed checkpoint's output under its final keys, from `bundle` if given
/// (the committer holds it) or from the staged object; returns how many objects it wrote.
/// Idempotent: an object already there with the same checkpoint and MD5 is left as it is.
///
/// # Errors
/// See [`PublishError`].
pub fn publish(
    ctx: &SplitContext,
    p: &Pending,
    bundle: Option<&Bytes>,
) -> Result<usize, PublishError> {
    let split = ctx.layout.split();
    let commit = format!("{split}/{}", p.checkpoint);
    let same = |meta: &BTreeMap<String, String>, o: &Publication| {
        meta.get(META_COMMIT) == Some(&commit) && meta.get(META_MD5) == Some(&o.md5)
    };
    let body = match bundle {
        Some(b) => Some(b.clone()),
        None => ctx.objects.get(&p.bundle)?.map(|o| o.body),
    };
    let Some(body) = body else {
        // The bundle is deleted only once every object is published: check that they are.
        for o in &p.objects {
            match ctx.objects.head(&o.key)? {
                Some(h) if same(&h.meta, o) => {}
                Some(_) => return Err(foreign(split, o, p.checkpoint)),
                None => {
                    return Err(PublishError::Refused(format!(
                        "split {split}: output {} of committed checkpoint {} is lost (neither published nor staged at {}). Reset the split (`clickstream state reset`).",
                        o.key, p.checkpoint, p.bundle
                    )));
                }
            }
        }
        return Ok(0);
    };
    let epoch = p.epoch.to_string();
    let written = AtomicUsize::new(0);
    let work = |o: &Publication| -> Result<(), PublishError> {
        let (start, end) = (o.offset as usize, (o.offset + o.len) as usize);
        let piece = body.get(start..end).map(|_| body.slice(start..end)).ok_or_else(|| {
            PublishError::Refused(format!(
                "split {split}: the staged output {} is shorter than its record says",
                p.bundle
            ))
        })?;
        let meta = [
            (META_EPOCH, epoch.as_str()),
            (META_COMMIT, commit.as_str()),
            (META_MD5, o.md5.as_str()),
        ];
        match ctx.objects.put(&o.key, piece, &meta, Condition::IfAbsent) {
            Ok(_) => {
                if written.fetch_add(1, Ordering::Relaxed) == 0 {
                    failpoint::hit("commit.published_one");
                }
                Ok(())
            }
            Err(ObjectError::Precondition { .. }) => match ctx.objects.head(&o.key)? {
                Some(h) if same(&h.meta, o) => Ok(()),
                _ => Err(foreign(split, o, p.checkpoint)),
            },
            Err(e) => Err(e.into()),
        }
    };
    in_parallel(&p.objects, work, || {
        PublishError::Refused("a publishing thread panicked".to_owned())
    })?;
    failpoint::hit("commit.published");
    ctx.objects.delete(std::slice::from_ref(&p.bundle))?;
    Ok(written.into_inner())
}

/// Runs `work` on every item, on up to [`PUBLISH_THREADS`] threads (S3 requests are mostly
/// waiting); the first error wins.
pub(super) fn in_parallel<T: Sync, E: Send>(
    items: &[T],
    work: impl Fn(&T) -> Result<(), E> + Sync,
    panicked: impl Fn() -> E,
) -> Result<(), E> {
    let chunk = items.len().div_ceil(PUBLISH_THREADS).max(1);
    std::thread::scope(|s| {
        let handles: Vec<_> =
            items.chunks(chunk).map(|part| s.spawn(|| part.iter().try_for_each(&work))).collect();
        handles.into_iter().try_for_each(|h| h.join().unwrap_or_else(|_| Err(panicked())))
    })
}

fn foreign(split: &str, o: &Publication, checkpoint: u64) -> PublishError {
    PublishError::Refused(format!(
        "split {split}: {} already holds another object than checkpoint {checkpoint}'s output; it is never overwritten. Move it away, or reset the split with a higher --checkpoint-base.",
        o.key
    ))
}

/// One checkpoint's worth of work for the committer.
#[derive(Debug)]
pub struct Job {
    /// The interval's output.
    pub out: EpochOutput,
    /// State changes, and the checkpoint record of the state.
    pub batch: CheckpointBatch,
    /// Where the source resumes after it (encoded); `None`: nothing read yet.
    pub position: Option<String>,
    /// The processor's totals at the cut (for metrics).
    pub counters: crate::state::Counters,
    /// When the worker took it.
    pub taken: Instant,
}

impl Job {
    /// Folds a newer job into this one (which failed): one checkpoint covering both, so that
    /// nothing of a failed interval is lost.
    pub fn absorb(&mut self, newer: Job) {
        self.out.absorb(newer.out);
        self.batch.absorb(newer.batch);
        if newer.position.is_some() {
            self.position = newer.position;
        }
        self.counters = newer.counters;
    }
}

/// Why a commit did not happen.
#[derive(Debug)]
pub enum CommitError {
    /// Another epoch claimed the split: stop, write nothing more.
    Fenced,
    /// Needs an operator.
    Halt(String),
    /// Failed; the job stays pending and is tried again (with later jobs folded in).
    Retry(String),
    /// The split's token was cancelled.
    Cancelled,
}

impl From<ObjectError> for CommitError {
    fn from(e: ObjectError) -> Self {
        match e {
            ObjectError::Cancelled(_) => CommitError::Cancelled,
            e => CommitError::Retry(e.to_string()),
        }
    }
}

impl From<SnapshotError> for CommitError {
    fn from(e: SnapshotError) -> Self {
        match e {
            SnapshotError::Object(o) => o.into(),
            e => CommitError::Retry(e.to_string()),
        }
    }
}

impl From<PublishError> for CommitError {
    fn from(e: PublishError) -> Self {
        match e {
            PublishError::Object(o) => o.into(),
            PublishError::Refused(why) => CommitError::Halt(why),
        }
    }
}

/// A committed checkpoint, for the log, metrics and the source's hint.
#[derive(Debug)]
pub struct Committed {
    /// Its number.
    pub checkpoint: u64,
    /// Where the source resumes (encoded).
    pub position: Option<String>,
    /// Session rows published.
    pub rows: usize,
    /// Its dead letters (for the optional Kafka copy).
    pub dead: Vec<crate::sink::DeadLetter>,
    /// The processor's totals at the cut.
    pub counters: crate::state::Counters,
    /// From the worker's cut to published.
    pub took: std::time::Duration,
}

/// The protocol state of a split owned by this process.
#[derive(Debug)]
pub struct Committer {
    ctx: Arc<SplitContext>,
    store: RocksDbStore,
    record: CommitRecord,
    etag: String,
    epoch: u64,
    uploaded: BTreeMap<String, String>,
    /// Committed output not yet published (with the bundle, when still in memory).
    unpublished: Option<(Pending, Option<Bytes>)>,
}

impl Committer {
    /// The committer of a split just acquired.
    #[must_use]
    pub fn new(
        ctx: Arc<SplitContext>,
        store: RocksDbStore,
        (record, etag, epoch): (CommitRecord, String, u64),
        uploaded: BTreeMap<String, String>,
    ) -> Committer {
        Committer { ctx, store, record, etag, epoch, uploaded, unpublished: None }
    }

    /// The last committed checkpoint.
    #[must_use]
    pub fn last(&self) -> u64 {
        self.record.checkpoint
    }

    /// The split's context.
    #[must_use]
    pub fn context(&self) -> &Arc<SplitContext> {
        &self.ctx
    }

    /// Commits `job` as the next checkpoint (steps 1–4); returns its number and the snapshots
    /// that left the retention window (for [`Committer::collect`], after publication).
    /// Publication follows with [`Committer::finish_publication`]: once this returns, the
    /// checkpoint is committed, and only its publication may be retried, never the job.
    ///
    /// # Errors
    /// See [`CommitError`]; nothing of the job is committed then.
    pub fn commit_job(&mut self, job: &mut Job) -> Result<(u64, Vec<SnapshotRef>), CommitError> {
        self.finish_publication()?;
        let layout = &self.ctx.layout;
        let n = self.record.checkpoint + 1;
        let (rows, dead) = job.out.parts();
        let objects = crate::sink::s3::encode(layout.split(), n, rows, dead, self.ctx.parquet)
            .map_err(|e| CommitError::Retry(e.to_string()))?;
        let pending = self.stage(n, objects)?;
        failpoint::hit("commit.staged");
        if let Some(m) = &mut job.batch.meta {
            m.checkpoint = n;
        }
        self.store.write_batch(&job.batch).map_err(|e| CommitError::Retry(e.to_string()))?;
        failpoint::hit("commit.state_written");
        let snap = snapshot::publish(
            &self.store,
            &*self.ctx.objects,
            layout,
            (self.epoch, n),
            &mut self.uploaded,
            &self.ctx.tmp_dir,
        )?;
        failpoint::hit("commit.snapshot_uploaded");
        let mut retained: Vec<_> =
            self.record.snapshot.iter().chain(&self.record.retained).cloned().collect();
        let dropped =
            retained.split_off(retained.len().min(self.ctx.keep_snapshots.saturating_sub(1)));
        let next = CommitRecord {
            generation: self.record.generation + 1,
            epoch: self.epoch,
            checkpoint: n,
            position: job.position.clone().or_else(|| self.record.position.clone()),
            snapshot: Some(snap),
            retained,
            pending: pending.as_ref().map(|(p, _)| p.clone()),
            written_at_ms: now_ms(),
            ..self.record.clone()
        };
        match self.ctx.objects.put(
            &layout.latest(),
            next.to_bytes().into(),
            &[],
            Condition::IfMatch(self.etag.clone()),
        ) {
            Ok(etag) => self.etag = etag,
            Err(ObjectError::Precondition { .. }) => return Err(CommitError::Fenced),
            Err(e) => return Err(e.into()),
        }
        self.record = next;
        self.unpublished = pending;
        failpoint::hit("commit.record_written");
        Ok((n, dropped))
    }

    /// Stages the output of checkpoint `n` as one bundle; `None` when there is none.
    fn stage(
        &self,
        n: u64,
        objects: Vec<(String, Vec<u8>)>,
    ) -> Result<Option<(Pending, Option<Bytes>)>, CommitError> {
        if objects.is_empty() {
            return Ok(None);
        }
        let mut bundle = Vec::with_capacity(objects.iter().map(|(_, b)| b.len()).sum());
        let mut pieces = Vec::with_capacity(objects.len());
        for (key, body) in objects {
            pieces.push(Publication {
                key,
                offset: bundle.len() as u64,
                len: body.len() as u64,
                md5: crate::hash::md5_hex(&body),
            });
            bundle.extend_from_slice(&body);
        }
        let bundle = Bytes::from(bundle);
        let key = self.ctx.layout.bundle(self.epoch, n);
        let epoch = self.epoch.to_string();
        self.ctx.objects.put(&key, bundle.clone(), &[(META_EPOCH, &epoch)], Condition::None)?;
        let p = Pending { bundle: key, checkpoint: n, epoch: self.epoch, objects: pieces };
        Ok(Some((p, Some(bundle))))
    }

    /// Publishes committed output still unpublished (after a failure).
    ///
    /// # Errors
    /// As [`publish`].
    pub fn finish_publication(&mut self) -> Result<(), CommitError> {
        if let Some((p, bundle)) = &self.unpublished {
            publish(&self.ctx, p, bundle.as_ref())?;
            self.unpublished = None;
        }
        Ok(())
    }

    /// Deletes what only `dropped` snapshots referenced. Best effort: a failure leaves garbage
    /// for the next sweep, never a missing file.
    pub fn collect(&self, dropped: &[SnapshotRef]) {
        if dropped.is_empty() {
            return;
        }
        let kept: Vec<_> = self.record.snapshot.iter().chain(&self.record.retained).collect();
        let keys = snapshot::unreferenced(dropped, &kept);
        if let Err(e) = self.ctx.objects.delete(&keys) {
            warn!(split = self.ctx.layout.split(), error = %e, "Could not delete old snapshot files; the next sweep will.");
        }
    }

    /// Deletes what earlier epochs left under the split's state prefix and the record does not
    /// reference, and aborts their unfinished uploads; returns (objects, uploads) removed.
    ///
    /// # Errors
    /// S3 failed; nothing is lost, the garbage stays for the next sweep.
    pub fn sweep(&self) -> Result<(usize, usize), ObjectError> {
        let layout = &self.ctx.layout;
        let keys = self.ctx.objects.list(&layout.state_prefix())?;
        let mut referenced: BTreeSet<&str> = BTreeSet::new();
        for s in self.record.snapshot.iter().chain(&self.record.retained) {
            referenced.extend(s.files.values().map(String::as_str));
        }
        if let Some((p, _)) = &self.unpublished {
            referenced.insert(&p.bundle);
        }
        let garbage = snapshot::garbage(&keys, layout, self.epoch, &referenced);
        self.ctx.objects.delete(&garbage)?;
        let epoch = self.epoch;
        let aborted = self.ctx.objects.abort_uploads(&layout.state_prefix(), &|k| {
            layout.epoch_of(k).is_some_and(|e| e < epoch)
        })?;
        let objects = keys.len() - garbage.len();
        metrics::gauge!("clickstream_state_objects", "split" => layout.split().to_owned())
            .set(objects as f64);
        info!(
            split = layout.split(),
            deleted = garbage.len(),
            aborted_uploads = aborted,
            kept = objects,
            "Swept state objects left by earlier owners."
        );
        Ok((garbage.len(), aborted))
    }
}
