//! What `/readyz` and `/livez` report for a running service, gathered from the source, the
//! splits and the sink.
//!
//! Ready: the source is consuming (or has nothing to consume), every assigned split runs, the
//! sink answers. Live: the process makes progress — a consumer that has held no partition, or
//! received nothing, for `run.liveness_timeout` while its topic has records nobody consumes is
//! not, and the orchestrator restarts it.

use crate::sink::objects::SinkHealth;
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

/// One check of `/readyz`.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Check {
    /// Its name.
    pub name: &'static str,
    /// Whether it passes.
    pub ok: bool,
    /// Why not, when it does not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// The state of the service, shared by everything that runs in it.
#[derive(Debug, Default)]
pub struct Health {
    /// Permanent S3 trouble.
    pub sink: Arc<SinkHealth>,
    /// The local state directory is usable.
    pub state: AtomicBool,
    /// A schema set is loaded.
    pub schemas: AtomicBool,
    /// Where a refused schema set is reported (the `schemas` check's detail).
    board: Mutex<Option<Arc<crate::registry::watch::Switchboard>>>,
    source: Mutex<SourceStatus>,
    splits: Mutex<BTreeMap<String, String>>,
}

/// What the source says of itself.
#[derive(Debug, Clone, Default)]
struct SourceStatus {
    /// Connected and consuming, or nothing to consume.
    ready: bool,
    /// Stuck for longer than the liveness timeout: why.
    stuck: Option<String>,
    /// Why not ready.
    detail: Option<String>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Health {
    /// A health record with `sink` as the S3 trouble tracker.
    #[must_use]
    pub fn new(sink: Arc<SinkHealth>) -> Health {
        Health { sink, ..Health::default() }
    }

    /// The source's readiness (`detail` says why not).
    pub fn source_ready(&self, ready: bool, detail: Option<String>) {
        let mut s = lock(&self.source);
        s.ready = ready;
        s.detail = detail;
    }

    /// The source is stuck (`Some(why)`) or makes progress again (`None`).
    pub fn source_stuck(&self, why: Option<String>) {
        let mut s = lock(&self.source);
        if s.stuck != why {
            match &why {
                Some(w) => {
                    tracing::error!(reason = %w, "The consumer is stuck: /livez and /readyz fail until it recovers.");
                }
                None if s.stuck.is_some() => tracing::info!("The consumer makes progress again."),
                None => {}
            }
            metrics::gauge!("clickstream_consumer_stuck").set(f64::from(u8::from(why.is_some())));
        }
        s.stuck = why;
    }

    /// A split cannot run (`Some(why)`: it waits for an operator or retries) or runs (`None`).
    pub fn split_problem(&self, split: &str, why: Option<String>) {
        let mut m = lock(&self.splits);
        match why {
            Some(w) => {
                m.insert(split.to_owned(), w);
            }
            None => {
                m.remove(split);
            }
        }
        metrics::gauge!("clickstream_splits_not_running").set(m.len() as f64);
    }

    /// Reports the schema switchboard's trouble (a refused latest set) in `/readyz`.
    pub fn watch_schemas(&self, board: Arc<crate::registry::watch::Switchboard>) {
        *lock(&self.board) = Some(board);
    }

    /// Every check of `/readyz`.
    #[must_use]
    pub fn checks(&self) -> Vec<Check> {
        let src = lock(&self.source).clone();
        let splits = lock(&self.splits).clone();
        let sink = self.sink.trouble();
        let source_detail = src.stuck.clone().or(src.detail.clone());
        vec![
            Check { name: "source", ok: src.ready && src.stuck.is_none(), detail: source_detail },
            Check { name: "state", ok: self.state.load(Ordering::Relaxed), detail: None },
            Check {
                name: "schemas",
                ok: self.schemas.load(Ordering::Relaxed),
                // Still ready: the set in force keeps processing; the detail says what is wrong.
                detail: lock(&self.board).as_ref().and_then(|b| b.status().trouble),
            },
            Check {
                name: "sink",
                ok: sink.is_none(),
                detail: sink
                    .map(|(since, what)| format!("{what} (for {}s)", since.elapsed().as_secs())),
            },
            Check {
                name: "splits",
                ok: splits.is_empty(),
                detail: (!splits.is_empty()).then(|| {
                    splits.iter().map(|(s, w)| format!("{s}: {w}")).collect::<Vec<_>>().join("; ")
                }),
            },
        ]
    }

    /// Whether the process makes progress (`/livez`).
    ///
    /// # Errors
    /// It does not: why.
    pub fn live(&self) -> Result<(), String> {
        match &lock(&self.source).stuck {
            Some(why) => Err(why.clone()),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checks_name_what_is_wrong() {
        let h = Health::new(Arc::new(SinkHealth::default()));
        h.state.store(true, Ordering::Relaxed);
        h.schemas.store(true, Ordering::Relaxed);
        h.source_ready(true, None);
        assert!(h.checks().iter().all(|c| c.ok));
        h.split_problem("p0001", Some("commit record missing".into()));
        let c = h.checks();
        let splits = c.iter().find(|c| c.name == "splits").unwrap();
        assert!(!splits.ok && splits.detail.as_deref().unwrap().contains("p0001"));
        h.split_problem("p0001", None);
        h.source_stuck(Some("no partition for 60s".into()));
        assert!(h.live().is_err());
        assert!(!h.checks()[0].ok);
        h.source_stuck(None);
        assert!(h.live().is_ok() && h.checks().iter().all(|c| c.ok));
    }
}
