//! The lease loop: reads the shard list, keeps a lease per shard in the table, renews the ones
//! this worker holds, takes expired ones (and one more than its share from the busiest worker,
//! as KCL 2.x does), records checkpoints, and hands ready shards to the runtime.
//!
//! Renewals run every third of the lease duration and are judged locally: a lease this worker
//! could not renew for a whole duration is given up (its split stops writing) even if the table
//! was unreachable, because a peer may have taken it by then. The lease says who may work; the
//! runtime's conditional commit is what keeps a worker that missed this harmless.

use super::balance::{Observer, to_take};
use super::lease::{self, Lease, LeaseTable};
use super::position::ShardPosition;
use super::reader::ShardReader;
use super::shards::{Graph, Shard};
use super::{Initial, KinesisControl, KinesisSettings};
use crate::runtime::health::Health;
use crate::source::{Done, Note, SplitId};
use aws_sdk_kinesis::Client;
use aws_sdk_kinesis::error::ProvideErrorMetadata;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::mpsc::Sender;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

/// A lease this worker holds.
struct Held {
    lease: Lease,
    renewed: Instant,
    running: bool,
}

pub(super) struct Coordinator {
    s: KinesisSettings,
    client: Client,
    arn: String,
    table: LeaseTable,
    control: Arc<KinesisControl>,
    notes: Sender<Note<ShardReader>>,
    hints: mpsc::UnboundedReceiver<(SplitId, ShardPosition)>,
    health: Arc<Health>,
    graph: Graph,
    observer: Observer,
    held: BTreeMap<String, Held>,
    finished: BTreeSet<String>,
    synced: Option<Instant>,
    taken: Option<Instant>,
}

impl Coordinator {
    #[allow(clippy::too_many_arguments)] // the parts it coordinates, once
    pub(super) fn new(
        s: KinesisSettings,
        client: Client,
        arn: String,
        table: LeaseTable,
        control: Arc<KinesisControl>,
        notes: Sender<Note<ShardReader>>,
        hints: mpsc::UnboundedReceiver<(SplitId, ShardPosition)>,
        health: Arc<Health>,
    ) -> Coordinator {
        let observer = Observer::new(s.lease_duration);
        Coordinator {
            s,
            client,
            arn,
            table,
            control,
            notes,
            hints,
            health,
            graph: Graph::default(),
            observer,
            held: BTreeMap::new(),
            finished: BTreeSet::new(),
            synced: None,
            taken: None,
        }
    }

    pub(super) async fn run(mut self, stop: CancellationToken) {
        let renew_every = (self.s.lease_duration / 3).max(Duration::from_millis(100));
        let mut tick = tokio::time::interval(renew_every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = stop.cancelled() => break,
                _ = tick.tick() => {}
                Some((id, at)) = self.hints.recv() => {
                    self.hint(&id, &at).await;
                    continue;
                }
            }
            self.renew().await;
            let now = Instant::now();
            if self.synced.is_none_or(|t| now.duration_since(t) >= self.s.shard_sync) {
                self.sync().await;
            }
            // Every half lease duration (KCL: every two): a released lease (a peer's SIGTERM)
            // is taken within seconds; an expired one still needs a whole duration unrenewed.
            if self.taken.is_none_or(|t| now.duration_since(t) >= self.s.lease_duration / 2) {
                self.take().await;
            }
            self.assign();
        }
        // Graceful handoff: the last checkpoints the runtime committed, then every lease given
        // up so that peers take the shards at once.
        while let Ok((id, at)) = self.hints.try_recv() {
            self.hint(&id, &at).await;
        }
        let held: Vec<Lease> = self.held.values().map(|h| h.lease.clone()).collect();
        for l in held {
            match self.table.release(&l, &self.s.worker_id).await {
                Ok(true) => info!(shard = %l.key, "Lease released."),
                Ok(false) => {}
                Err(e) => {
                    warn!(shard = %l.key, error = %e, "Releasing the lease failed; it expires instead.");
                }
            }
        }
    }

    /// Records a committed position in the lease (KCL's checkpoint); a committed end also
    /// releases the lease, and lets the children start.
    async fn hint(&mut self, id: &SplitId, at: &ShardPosition) {
        let Some(h) = self.held.get_mut(id.as_str()) else { return };
        let (text, sub) = match at {
            ShardPosition::End => (lease::SHARD_END.to_owned(), 0),
            ShardPosition::After { seq, sub } => (seq.to_string(), sub.map_or(0, u64::from)),
        };
        if h.lease.checkpoint == text && h.lease.checkpoint_sub == sub {
            return;
        }
        match self.table.checkpoint(&h.lease, &self.s.worker_id, &text, sub).await {
            Ok(Some(l)) => {
                h.lease = l;
                h.renewed = Instant::now();
            }
            Ok(None) => {
                warn!(shard = %id, "The lease changed hands before its checkpoint was recorded.");
                return;
            }
            Err(e) => {
                warn!(shard = %id, error = %e, "Recording the checkpoint in the lease table failed; the next one will.");
                return;
            }
        }
        if *at == ShardPosition::End {
            info!(shard = %id, "Shard end committed; its children may start.");
            metrics::counter!("clickstream_kinesis_shards_finished_total").increment(1);
            self.finished.insert(id.as_str().to_owned());
            if let Some(h) = self.held.remove(id.as_str()) {
                let _ = self.table.release(&h.lease, &self.s.worker_id).await;
            }
            self.control.halt(id);
            // Children become ready now: look at the list again soon.
            self.synced = None;
            self.taken = None;
        }
    }

    async fn renew(&mut self) {
        let now = Instant::now();
        let keys: Vec<String> = self.held.keys().cloned().collect();
        for key in keys {
            let Some(h) = self.held.get(&key) else { continue };
            match self.table.renew(&h.lease, &self.s.worker_id).await {
                Ok(Some(l)) => {
                    if let Some(h) = self.held.get_mut(&key) {
                        h.lease = l;
                        h.renewed = now;
                    }
                }
                Ok(None) => self.lose(&key, "another worker took it"),
                Err(e) if now.duration_since(h.renewed) >= self.s.lease_duration => {
                    self.lose(&key, &format!("not renewed for a whole lease duration: {e}"));
                }
                Err(e) => warn!(shard = %key, error = %e, "Renewing the lease failed; retrying."),
            }
        }
        metrics::gauge!("clickstream_kinesis_leases_held").set(self.held.len() as f64);
    }

    /// Gives a lease up without a final checkpoint: someone else may hold it already.
    fn lose(&mut self, key: &str, why: &str) {
        let Some(h) = self.held.remove(key) else { return };
        warn!(shard = key, reason = why, "Lease lost; the shard stops writing at once.");
        metrics::counter!("clickstream_kinesis_leases_lost_total").increment(1);
        let id = SplitId::new(key);
        self.control.halt(&id);
        if h.running {
            let (done, _) = Done::new();
            let _ = self.notes.send(Note::Revoked { id, lost: true, done });
        }
    }

    /// Reads the shard list and makes sure each shard has a lease.
    async fn sync(&mut self) {
        let name = super::by_name(&self.s.stream);
        let listing = match list_shards(&self.client, &self.arn, name.as_deref()).await {
            Ok(l) => l,
            Err(e) => {
                self.health.source_ready(false, Some(format!("ListShards: {e}")));
                warn!(error = %e, "Listing the shards failed; retrying.");
                return;
            }
        };
        self.synced = Some(Instant::now());
        self.graph = Graph::new(listing);
        let existing = match self.table.list().await {
            Ok(l) => l.into_iter().map(|l| l.key).collect::<BTreeSet<_>>(),
            Err(e) => {
                self.health.source_ready(false, Some(format!("lease table: {e}")));
                warn!(error = %e, "Reading the lease table failed; retrying.");
                return;
            }
        };
        self.health.source_ready(true, None);
        for s in self.graph.shards() {
            if existing.contains(&s.id) {
                continue;
            }
            let start = if s.parents.iter().any(|p| self.graph.get(p).is_some()) {
                lease::TRIM_HORIZON
            } else {
                match self.s.initial {
                    Initial::TrimHorizon => lease::TRIM_HORIZON,
                    Initial::Latest => lease::LATEST,
                    Initial::AtTimestamp(_) => lease::AT_TIMESTAMP,
                }
            };
            let mut l = Lease::new(s.id.clone(), start);
            l.parents.clone_from(&s.parents);
            l.parents.sort();
            l.hash_range = Some(s.range);
            match self.table.create(&l).await {
                Ok(true) => info!(shard = %s.id, parents = ?s.parents, "Lease created."),
                Ok(false) => {}
                Err(e) => warn!(shard = %s.id, error = %e, "Creating the lease failed; retrying."),
            }
        }
    }

    /// Takes expired leases, and one more than this worker's share when it has too few.
    async fn take(&mut self) {
        let leases = match self.table.list().await {
            Ok(l) => l,
            Err(e) => {
                warn!(error = %e, "Reading the lease table failed; retrying.");
                return;
            }
        };
        let now = Instant::now();
        self.taken = Some(now);
        self.observer.observe(&leases, now);
        for l in &leases {
            if l.is_finished() {
                self.finished.insert(l.key.clone());
            }
        }
        // Only shards still listed are worked on; a lease of a shard past retention stays.
        let listed: Vec<Lease> =
            leases.into_iter().filter(|l| self.graph.get(&l.key).is_some()).collect();
        for l in to_take(&listed, &self.observer, &self.s.worker_id, now) {
            if self.held.contains_key(&l.key) {
                continue;
            }
            match self.table.take(&l, &self.s.worker_id).await {
                Ok(Some(mine)) => {
                    if let Some(from) = l.owner.as_deref().filter(|o| *o != self.s.worker_id) {
                        info!(shard = %l.key, from, "Took over a lease.");
                        metrics::counter!("clickstream_kinesis_lease_takeovers_total").increment(1);
                    } else {
                        info!(shard = %l.key, "Took a lease.");
                    }
                    self.held
                        .insert(l.key.clone(), Held { lease: mine, renewed: now, running: false });
                }
                Ok(None) => {}
                Err(e) => warn!(shard = %l.key, error = %e, "Taking the lease failed."),
            }
        }
    }

    /// Hands each held shard whose parents have finished to the runtime.
    fn assign(&mut self) {
        let finished = &self.finished;
        let ready: Vec<String> = self
            .held
            .iter()
            .filter(|(k, h)| {
                !h.running
                    && !h.lease.is_finished()
                    && self.graph.ready(k, &|p| finished.contains(p))
            })
            .map(|(k, _)| k.clone())
            .collect();
        for key in ready {
            let Some(shard) = self.graph.get(&key) else { continue };
            let id = SplitId::new(&key);
            let parents = self
                .graph
                .lineage(&key)
                .into_iter()
                .map(|(p, listed)| (SplitId::new(&p), listed))
                .collect();
            let reader = self.control.describe(&id, shard.range, parents);
            if self.notes.send(Note::Assigned { id, reader }).is_err() {
                error!("The runtime is gone.");
                return;
            }
            if let Some(h) = self.held.get_mut(&key) {
                h.running = true;
            }
        }
    }
}

/// Every shard of the stream (all pages).
async fn list_shards(client: &Client, arn: &str, name: Option<&str>) -> Result<Vec<Shard>, String> {
    let mut out = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let req = match &token {
            // A continuation names neither the stream nor a filter.
            Some(t) => client.list_shards().next_token(t),
            None => match name {
                Some(n) => client.list_shards().stream_name(n),
                None => client.list_shards().stream_arn(arn),
            },
        };
        let page =
            req.send().await.map_err(|e| format!("{e}: {}", e.message().unwrap_or_default()))?;
        for s in page.shards.unwrap_or_default() {
            let range = s.hash_key_range.as_ref().and_then(|r| {
                Some((r.starting_hash_key.parse().ok()?, r.ending_hash_key.parse().ok()?))
            });
            let Some(range) = range else {
                warn!(shard = %s.shard_id, "Skipping a shard with an unreadable hash-key range.");
                continue;
            };
            let parents =
                [s.parent_shard_id, s.adjacent_parent_shard_id].into_iter().flatten().collect();
            out.push(Shard { id: s.shard_id, parents, range });
        }
        match page.next_token {
            Some(t) if !t.is_empty() => token = Some(t),
            _ => return Ok(out),
        }
    }
}
