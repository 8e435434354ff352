//! Hot reload: watch a registry, compile each new set in force, and hand it to the processor,
//! which swaps it in between two batches. A set that does not validate is refused (ERROR log,
//! metric) and the previous set stays in force.

use super::Registry;
use crate::extract::Extractor;
use serde::Serialize;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

/// What the admin API shows about reloads.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Status {
    /// The set the processor uses now (`name@version,…`).
    pub active: String,
    /// The set compiled and waiting for the next batch boundary, if any.
    pub pending: Option<String>,
    /// Sets compiled and handed over since start.
    pub reloads: u64,
    /// Sets refused since start.
    pub refused: u64,
    /// Why the last refused set was refused.
    pub last_error: Option<String>,
    /// The registry's latest set is refused and an earlier one stays in force: why. Cleared
    /// when a later set is loaded.
    pub trouble: Option<String>,
}

/// Where the watcher leaves a new set and the processor picks it up.
#[derive(Debug, Default)]
pub struct Switchboard {
    ready: AtomicBool,
    pending: Mutex<Option<Arc<Extractor>>>,
    status: Mutex<Status>,
}

impl Switchboard {
    /// A switchboard whose active set is `active`.
    #[must_use]
    pub fn new(active: &Extractor) -> Self {
        let b = Switchboard::default();
        b.status.lock().unwrap_or_else(PoisonError::into_inner).active = active.versions();
        b
    }

    /// Offers a new set (replacing one not yet taken).
    pub fn offer(&self, x: Arc<Extractor>) {
        let id = x.versions();
        *self.pending.lock().unwrap_or_else(PoisonError::into_inner) = Some(x);
        self.with_status(|s| {
            s.pending = Some(id);
            s.reloads += 1;
            s.trouble = None;
        });
        self.ready.store(true, Ordering::Release);
    }

    /// Takes the offered set, if any; called by the processor between batches.
    pub fn take(&self) -> Option<Arc<Extractor>> {
        if !self.ready.swap(false, Ordering::Acquire) {
            return None;
        }
        let x = self.pending.lock().unwrap_or_else(PoisonError::into_inner).take()?;
        self.with_status(|s| {
            s.active = x.versions();
            s.pending = None;
        });
        Some(x)
    }

    /// Records a refused set.
    pub fn refuse(&self, why: String) {
        self.with_status(|s| {
            s.refused += 1;
            s.trouble =
                Some(format!("running {}: the registry's latest set is refused: {why}", s.active));
            s.last_error = Some(why);
        });
    }

    /// The current status.
    #[must_use]
    pub fn status(&self) -> Status {
        self.status.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    fn with_status(&self, f: impl FnOnce(&mut Status)) {
        f(&mut self.status.lock().unwrap_or_else(PoisonError::into_inner));
    }
}

/// Watches `registry` until `cancel`: file-system notifications for a directory (with polling
/// every `poll` as a safety net), polling every `poll` for S3. `seen` is the fingerprint of the
/// set already in force.
pub async fn watch(
    registry: Registry,
    board: Arc<Switchboard>,
    poll: Duration,
    mut seen: String,
    cancel: CancellationToken,
) {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    // Kept alive for the loop's lifetime; dropping it stops the notifications.
    let _watcher = registry.dir().and_then(|dir| {
        use notify::Watcher as _;
        let mut w = notify::recommended_watcher(move |_| {
            let _ = tx.send(());
        })
        .map_err(|e| warn!(error = %e, "No file-system notifications; polling only."))
        .ok()?;
        w.watch(dir, notify::RecursiveMode::Recursive)
            .map_err(|e| warn!(error = %e, "Cannot watch the registry; polling only."))
            .ok()?;
        Some(w)
    });
    let mut current = board.status().active;
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            Some(()) = rx.recv() => {
                // A registration is several file events; let them settle.
                tokio::time::sleep(Duration::from_millis(50)).await;
                while rx.try_recv().is_ok() {}
            }
            () = tokio::time::sleep(poll) => {}
        }
        let fp = match registry.fingerprint().await {
            Ok(fp) => fp,
            Err(e) => {
                warn!(error = %e, "Cannot list the schema registry; the schema set in force stays.");
                continue;
            }
        };
        if fp == seen {
            continue;
        }
        match registry.load_set().await {
            Ok((x, _)) => {
                seen = fp;
                let id = x.versions();
                if id == current {
                    continue;
                }
                info!(schemas = %id, previous = %current, "Loaded a new schema set; it takes over at the next batch.");
                metrics::counter!("clickstream_schema_reloads_total", "result" => "loaded")
                    .increment(1);
                current.clone_from(&id);
                board.offer(Arc::new(x));
            }
            Err(e @ super::RegistryError::Invalid(_)) => {
                // Reported once: the next registration changes the fingerprint.
                seen = fp;
                error!(error = %e, schemas = %current, "Refused a new schema set; the previous set stays in force.");
                metrics::counter!("clickstream_schema_reloads_total", "result" => "refused")
                    .increment(1);
                board.refuse(e.to_string());
            }
            Err(e) => {
                warn!(error = %e, "Cannot read the schema registry; retrying at the next poll.");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::extract::schema::parse_bytes;

    fn set(version: u32) -> Extractor {
        let text = format!(
            "name = \"a\"\nversion = {version}\n[fields]\nmessage_id = ['$.id']\ncustomer_id = ['$.c']\nevent_time = [{{ path = '$.t', format = \"epoch\" }}]\n"
        );
        let l = parse_bytes(std::path::Path::new("a.toml"), text.into_bytes()).unwrap();
        Extractor::compile(vec![l]).unwrap()
    }

    #[test]
    fn a_set_is_taken_once_and_the_latest_offer_wins() {
        let b = Switchboard::new(&set(1));
        assert!(b.take().is_none());
        b.offer(Arc::new(set(2)));
        b.offer(Arc::new(set(3)));
        assert_eq!(b.status().pending.as_deref(), Some("a@3"));
        assert_eq!(b.take().unwrap().versions(), "a@3");
        assert!(b.take().is_none());
        let s = b.status();
        assert_eq!((s.active.as_str(), s.pending, s.reloads), ("a@3", None, 2));
        b.refuse("bad".into());
        assert_eq!(b.status().last_error.as_deref(), Some("bad"));
    }
}
