//! Objects under a prefix: the storage primitive of `run`'s commit protocol. Two
//! implementations: S3 (any API-compatible server) and memory (the model the protocol's unit
//! tests run against).
//!
//! What the protocol needs from S3, and nothing more: whole-object get and put, a put that is
//! **conditional** (`If-None-Match: *`: create only; `If-Match: ETAG`: replace only that
//! version), listing under a prefix, batched deletes, and cleanup of unfinished multipart
//! uploads. Requests are retried here, with exponential backoff and jitter, until they succeed,
//! fail their condition, or the store's cancellation token fires; errors that retrying will not
//! heal (access denied, no such bucket, bad credentials) are still retried — credentials get
//! rotated, buckets restored — but reported to [`SinkHealth`] at once so that readiness turns
//! false and the runtime can give up after its deadline.

mod memory;
mod s3;

pub use memory::MemoryObjects;
pub use s3::S3Objects;

use bytes::Bytes;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;
use thiserror::Error;
use tokio_util::sync::CancellationToken;
use tracing::{error, warn};

/// When a put may replace what is there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Condition {
    /// Always.
    None,
    /// Only if no object has the key (`If-None-Match: *`).
    IfAbsent,
    /// Only if the object has this ETag (`If-Match`).
    IfMatch(String),
}

/// An object as read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Object {
    /// Its bytes.
    pub body: Bytes,
    /// Its ETag, as S3 returns it (quoted).
    pub etag: String,
    /// Its user metadata (`x-amz-meta-*`, names lower-case).
    pub meta: BTreeMap<String, String>,
}

/// What a head request tells.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    /// The ETag.
    pub etag: String,
    /// User metadata.
    pub meta: BTreeMap<String, String>,
}

/// An object-store failure.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ObjectError {
    /// A conditional put found another version (or none, for `If-Match`): someone else
    /// wrote the key.
    #[error("{key} was changed by another writer (precondition failed)")]
    Precondition {
        /// The object.
        key: String,
    },
    /// The request failed in a way that was not retried (a bad request).
    #[error("{op} {key}: {message}")]
    Failed {
        /// What was being done.
        op: &'static str,
        /// The object or prefix.
        key: String,
        /// What the store said.
        message: String,
    },
    /// The store's token was cancelled while the request was being retried.
    #[error("stopped while retrying {0}")]
    Cancelled(String),
}

/// Keys are relative to the store's prefix.
pub trait ObjectStore: Send + Sync + std::fmt::Debug {
    /// Reads an object; `None` if it does not exist.
    ///
    /// # Errors
    /// Cancelled, or a request that cannot succeed.
    fn get(&self, key: &str) -> Result<Option<Object>, ObjectError>;

    /// Reads an object's ETag and metadata; `None` if it does not exist.
    ///
    /// # Errors
    /// As [`ObjectStore::get`].
    fn head(&self, key: &str) -> Result<Option<Head>, ObjectError>;

    /// Writes an object if `cond` holds; returns its new ETag.
    ///
    /// # Errors
    /// [`ObjectError::Precondition`] when `cond` does not hold (nothing was written), or as
    /// [`ObjectStore::get`].
    fn put(
        &self,
        key: &str,
        body: Bytes,
        meta: &[(&str, &str)],
        cond: Condition,
    ) -> Result<String, ObjectError>;

    /// Every key under `prefix`, in key order.
    ///
    /// # Errors
    /// As [`ObjectStore::get`].
    fn list(&self, prefix: &str) -> Result<Vec<String>, ObjectError>;

    /// Deletes keys (absent ones are fine).
    ///
    /// # Errors
    /// As [`ObjectStore::get`].
    fn delete(&self, keys: &[String]) -> Result<(), ObjectError>;

    /// Aborts unfinished multipart uploads under `prefix` whose key `stale` accepts; returns
    /// how many it aborted.
    ///
    /// # Errors
    /// As [`ObjectStore::get`].
    fn abort_uploads(
        &self,
        prefix: &str,
        stale: &dyn Fn(&str) -> bool,
    ) -> Result<usize, ObjectError>;

    /// The same store, whose requests stop with [`ObjectError::Cancelled`] once `cancel` fires
    /// (a split that is lost writes nothing more).
    fn with_cancel(&self, cancel: CancellationToken) -> Arc<dyn ObjectStore>;
}

/// Trouble with the sink that retrying does not heal by itself, for `/readyz` and the
/// runtime's deadline.
#[derive(Debug, Default)]
pub struct SinkHealth {
    trouble: Mutex<Option<(Instant, String)>>,
}

impl SinkHealth {
    /// Since when, and what: the first permanent error not yet followed by a success.
    #[must_use]
    pub fn trouble(&self) -> Option<(Instant, String)> {
        self.trouble.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    pub(super) fn permanent(&self, what: String) {
        let mut t = self.trouble.lock().unwrap_or_else(PoisonError::into_inner);
        if t.is_none() {
            metrics::counter!("clickstream_s3_permanent_errors_total").increment(1);
            error!(error = %what, "S3 refuses requests in a way retries will not heal (access, bucket, credentials); retrying until the deadline.");
            *t = Some((Instant::now(), what));
        }
    }

    pub(super) fn ok(&self) {
        let mut t = self.trouble.lock().unwrap_or_else(PoisonError::into_inner);
        if t.take().is_some() {
            warn!("S3 answers again.");
        }
    }
}
