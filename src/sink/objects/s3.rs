//! [`ObjectStore`] on S3 (or any server of its API): retries with backoff, errors classified,
//! conditional puts, multipart uploads that are aborted when they cannot finish.

use super::{Condition, Head, Object, ObjectError, ObjectStore, SinkHealth};
use crate::s3::{S3Location, describe};
use aws_sdk_s3::Client;
use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart, Delete, ObjectIdentifier};
use backon::{ExponentialBuilder, Retryable};
use bytes::Bytes;
use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::runtime::Handle;
use tokio_util::sync::CancellationToken;
use tracing::warn;

/// Objects above this size are uploaded in parts (which retry one part at a time).
const MULTIPART_ABOVE: usize = 16 << 20;
/// Part size of a multipart upload (S3's minimum is 5 MiB).
const PART_SIZE: usize = 8 << 20;

/// How an S3 error is treated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    /// The condition of a conditional write failed.
    Precondition,
    /// No such key.
    NotFound,
    /// Retrying alone will not help (reported, still retried).
    Permanent,
    /// Retry.
    Transient,
    /// A malformed request: fail at once.
    Invalid,
}

fn classify<E: ProvideErrorMetadata>(e: &SdkError<E, HttpResponse>) -> Class {
    match e {
        SdkError::ServiceError(s) => {
            let status = s.raw().status().as_u16();
            match (status, s.err().code().unwrap_or_default()) {
                (412, _) => Class::Precondition,
                (301 | 403, _)
                | (404, "NoSuchBucket" | "NoSuchUpload")
                | (_, "InvalidAccessKeyId" | "SignatureDoesNotMatch")
                | (400, "InvalidBucketName" | "AuthorizationHeaderMalformed") => Class::Permanent,
                (404, _) => Class::NotFound,
                // A concurrent conditional write to the same key: retried, it gets its 412.
                (409, "ConditionalRequestConflict") | (400, "RequestTimeout" | "ExpiredToken") => {
                    Class::Transient
                }
                (400 | 405 | 411 | 413 | 416, _) => Class::Invalid,
                _ => Class::Transient,
            }
        }
        SdkError::ConstructionFailure(_) => Class::Invalid,
        _ => Class::Transient,
    }
}

/// One failed attempt, as the retry loop sees it.
#[derive(Debug)]
struct Attempt {
    class: Class,
    message: String,
}

impl std::fmt::Display for Attempt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

fn attempt<E>(e: &SdkError<E, HttpResponse>) -> Attempt
where
    E: std::error::Error + ProvideErrorMetadata + 'static,
{
    Attempt { class: classify(e), message: describe(e) }
}

/// Objects under an S3 prefix.
#[derive(Debug, Clone)]
pub struct S3Objects {
    client: Client,
    location: S3Location,
    rt: Handle,
    cancel: CancellationToken,
    health: Arc<SinkHealth>,
}

impl S3Objects {
    /// A store under `location`; blocking calls run on `rt`; retries stop when `cancel` fires.
    #[must_use]
    pub fn new(
        client: Client,
        location: S3Location,
        rt: Handle,
        cancel: CancellationToken,
        health: Arc<SinkHealth>,
    ) -> Self {
        S3Objects { client, location, rt, cancel, health }
    }

    /// The location.
    #[must_use]
    pub fn location(&self) -> &S3Location {
        &self.location
    }

    /// The token that stops this store's retries.
    #[must_use]
    pub fn cancel_token(&self) -> &CancellationToken {
        &self.cancel
    }

    /// Whether the bucket answers (for readiness at start).
    #[must_use]
    pub fn reachable(&self) -> bool {
        let (c, bucket) = (&self.client, &self.location.bucket);
        self.rt.block_on(async {
            tokio::time::timeout(Duration::from_secs(5), c.head_bucket().bucket(bucket).send())
                .await
                .is_ok_and(|r| r.is_ok())
        })
    }

    /// Runs `op` until it succeeds, fails for good, or the store is cancelled.
    fn retrying<T, F, Fut>(&self, what: &'static str, key: &str, op: F) -> Result<T, ObjectError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, Attempt>>,
    {
        let backoff = ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(100))
            .with_max_delay(Duration::from_secs(5))
            .with_jitter()
            .without_max_times();
        let started = Instant::now();
        let health = &self.health;
        let run = op
            .retry(backoff)
            .when(|a: &Attempt| matches!(a.class, Class::Transient | Class::Permanent))
            .notify(|a: &Attempt, after: Duration| {
                if a.class == Class::Permanent {
                    health.permanent(format!("{what} {key}: {a}"));
                }
                metrics::counter!("clickstream_s3_retries_total", "op" => what).increment(1);
                warn!(op = what, key, error = %a, retry_in_ms = after.as_millis() as u64, "S3 request failed; retrying.");
            });
        let cancel = self.cancel.clone();
        let r = self.rt.block_on(async move {
            tokio::select! {
                r = run => Some(r),
                () = cancel.cancelled() => None,
            }
        });
        metrics::histogram!("clickstream_s3_request_seconds", "op" => what)
            .record(started.elapsed().as_secs_f64());
        match r {
            Some(Ok(v)) => {
                self.health.ok();
                Ok(v)
            }
            Some(Err(a)) if a.class == Class::Precondition => {
                self.health.ok();
                Err(ObjectError::Precondition { key: key.to_owned() })
            }
            Some(Err(a)) => {
                Err(ObjectError::Failed { op: what, key: key.to_owned(), message: a.message })
            }
            None => Err(ObjectError::Cancelled(format!("{what} {key}"))),
        }
    }

    fn put_multipart(
        &self,
        key: &str,
        body: &Bytes,
        meta: &[(&str, &str)],
        cond: &Condition,
    ) -> Result<String, ObjectError> {
        let (c, bucket) = (&self.client, &self.location.bucket);
        let metadata: std::collections::HashMap<String, String> =
            meta.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        let upload = self.retrying("create multipart upload", key, || async {
            c.create_multipart_upload()
                .bucket(bucket)
                .key(key)
                .set_metadata(Some(metadata.clone()))
                .send()
                .await
                .map_err(|e| attempt(&e))
        })?;
        let id = upload.upload_id().unwrap_or_default().to_owned();
        let r = self.upload_parts(key, &id, body, cond);
        if r.is_err() {
            // Whatever stopped it (cancellation included), the parts must not linger: they are
            // billed and invisible. Bounded, and not subject to the cancelled token.
            let abort = c.abort_multipart_upload().bucket(bucket).key(key).upload_id(&id).send();
            let bounded = async { tokio::time::timeout(Duration::from_secs(10), abort).await };
            match self.rt.block_on(bounded) {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    warn!(key, error = %describe(&e), "Aborting a multipart upload failed; start-up recovery aborts it.");
                }
                Err(_) => warn!(
                    key,
                    "Aborting a multipart upload timed out; start-up recovery aborts it."
                ),
            }
        }
        r
    }

    fn upload_parts(
        &self,
        key: &str,
        id: &str,
        body: &Bytes,
        cond: &Condition,
    ) -> Result<String, ObjectError> {
        let (c, bucket) = (&self.client, &self.location.bucket);
        let mut parts = Vec::new();
        for (i, start) in (0..body.len()).step_by(PART_SIZE).enumerate() {
            let n = i as i32 + 1;
            let chunk = body.slice(start..(start + PART_SIZE).min(body.len()));
            let done = self.retrying("upload part", key, || async {
                c.upload_part()
                    .bucket(bucket)
                    .key(key)
                    .upload_id(id)
                    .part_number(n)
                    .body(ByteStream::from(chunk.clone()))
                    .send()
                    .await
                    .map_err(|e| attempt(&e))
            })?;
            parts.push(
                CompletedPart::builder()
                    .part_number(n)
                    .set_e_tag(done.e_tag().map(str::to_owned))
                    .build(),
            );
        }
        let completed = CompletedMultipartUpload::builder().set_parts(Some(parts)).build();
        let out = self.retrying("complete multipart upload", key, || async {
            let mut req = c
                .complete_multipart_upload()
                .bucket(bucket)
                .key(key)
                .upload_id(id)
                .multipart_upload(completed.clone());
            req = match cond {
                Condition::None => req,
                Condition::IfAbsent => req.if_none_match("*"),
                Condition::IfMatch(e) => req.if_match(e),
            };
            req.send().await.map_err(|e| attempt(&e))
        })?;
        Ok(out.e_tag().unwrap_or_default().to_owned())
    }
}

fn meta_map(m: Option<&std::collections::HashMap<String, String>>) -> BTreeMap<String, String> {
    m.map(|m| m.iter().map(|(k, v)| (k.to_ascii_lowercase(), v.clone())).collect())
        .unwrap_or_default()
}

impl ObjectStore for S3Objects {
    fn with_cancel(&self, cancel: CancellationToken) -> Arc<dyn ObjectStore> {
        Arc::new(S3Objects { cancel, ..self.clone() })
    }

    fn get(&self, relative: &str) -> Result<Option<Object>, ObjectError> {
        let key = self.location.key(relative);
        let (c, bucket) = (&self.client, &self.location.bucket);
        self.retrying("get", &key, || async {
            match c.get_object().bucket(bucket).key(&key).send().await {
                Ok(o) => {
                    let etag = o.e_tag().unwrap_or_default().to_owned();
                    let meta = meta_map(o.metadata());
                    let body = o.body.collect().await.map_err(|e| Attempt {
                        class: Class::Transient,
                        message: format!("reading the body: {e}"),
                    })?;
                    Ok(Some(Object { body: body.into_bytes(), etag, meta }))
                }
                Err(e) if classify(&e) == Class::NotFound => Ok(None),
                Err(e) => Err(attempt(&e)),
            }
        })
    }

    fn head(&self, relative: &str) -> Result<Option<Head>, ObjectError> {
        let key = self.location.key(relative);
        let (c, bucket) = (&self.client, &self.location.bucket);
        self.retrying("head", &key, || async {
            match c.head_object().bucket(bucket).key(&key).send().await {
                Ok(o) => Ok(Some(Head {
                    etag: o.e_tag().unwrap_or_default().to_owned(),
                    meta: meta_map(o.metadata()),
                })),
                Err(e) if classify(&e) == Class::NotFound => Ok(None),
                Err(e) => Err(attempt(&e)),
            }
        })
    }

    fn put(
        &self,
        relative: &str,
        body: Bytes,
        meta: &[(&str, &str)],
        cond: Condition,
    ) -> Result<String, ObjectError> {
        let key = self.location.key(relative);
        if body.len() > MULTIPART_ABOVE {
            return self.put_multipart(&key, &body, meta, &cond);
        }
        let (c, bucket) = (&self.client, &self.location.bucket);
        // S3 checks the body against its MD5: a torn upload is refused, never stored.
        let md5 = {
            use base64::Engine as _;
            use md5::Digest as _;
            base64::engine::general_purpose::STANDARD.encode(md5::Md5::digest(&body))
        };
        self.retrying("put", &key, || async {
            let mut req = c
                .put_object()
                .bucket(bucket)
                .key(&key)
                .content_md5(&md5)
                .body(ByteStream::from(body.clone()));
            for (k, v) in meta {
                req = req.metadata(*k, *v);
            }
            req = match &cond {
                Condition::None => req,
                Condition::IfAbsent => req.if_none_match("*"),
                Condition::IfMatch(e) => req.if_match(e),
            };
            match req.send().await {
                Ok(o) => Ok(o.e_tag().unwrap_or_default().to_owned()),
                // If-Match on a key that is gone: someone removed it; the condition failed.
                Err(e)
                    if classify(&e) == Class::NotFound && matches!(cond, Condition::IfMatch(_)) =>
                {
                    Err(Attempt { class: Class::Precondition, message: describe(&e) })
                }
                Err(e) => Err(attempt(&e)),
            }
        })
    }

    fn list(&self, relative: &str) -> Result<Vec<String>, ObjectError> {
        let prefix = self.location.key(relative);
        let strip = self.location.key("");
        let (c, bucket) = (&self.client, &self.location.bucket);
        self.retrying("list", &prefix, || async {
            let mut keys = Vec::new();
            let mut pages =
                c.list_objects_v2().bucket(bucket).prefix(&prefix).into_paginator().send();
            while let Some(page) = pages.next().await {
                let page = page.map_err(|e| attempt(&e))?;
                keys.extend(page.contents().iter().filter_map(|o| {
                    o.key().map(|k| k.strip_prefix(&strip).unwrap_or(k).to_owned())
                }));
            }
            Ok(keys)
        })
    }

    fn delete(&self, keys: &[String]) -> Result<(), ObjectError> {
        let (c, bucket) = (&self.client, &self.location.bucket);
        for batch in keys.chunks(1000) {
            let ids: Vec<ObjectIdentifier> = batch
                .iter()
                .filter_map(|k| ObjectIdentifier::builder().key(self.location.key(k)).build().ok())
                .collect();
            let delete =
                Delete::builder().set_objects(Some(ids)).quiet(true).build().map_err(|e| {
                    ObjectError::Failed {
                        op: "delete",
                        key: batch[0].clone(),
                        message: e.to_string(),
                    }
                })?;
            self.retrying("delete", &batch[0], || async {
                c.delete_objects()
                    .bucket(bucket)
                    .delete(delete.clone())
                    .send()
                    .await
                    .map_err(|e| attempt(&e))
            })?;
        }
        Ok(())
    }

    fn abort_uploads(
        &self,
        relative: &str,
        stale: &dyn Fn(&str) -> bool,
    ) -> Result<usize, ObjectError> {
        let prefix = self.location.key(relative);
        let strip = self.location.key("");
        let (c, bucket) = (&self.client, &self.location.bucket);
        let uploads = self.retrying("list multipart uploads", &prefix, || async {
            let mut found = Vec::new();
            let (mut key_marker, mut id_marker) = (None::<String>, None::<String>);
            loop {
                let page = c
                    .list_multipart_uploads()
                    .bucket(bucket)
                    .prefix(&prefix)
                    .set_key_marker(key_marker.clone())
                    .set_upload_id_marker(id_marker.clone())
                    .send()
                    .await
                    .map_err(|e| attempt(&e))?;
                for u in page.uploads() {
                    if let (Some(k), Some(id)) = (u.key(), u.upload_id()) {
                        found.push((k.to_owned(), id.to_owned()));
                    }
                }
                if page.is_truncated() != Some(true) {
                    return Ok(found);
                }
                key_marker = page.next_key_marker().map(str::to_owned);
                id_marker = page.next_upload_id_marker().map(str::to_owned);
            }
        })?;
        let mut aborted = 0;
        for (key, id) in uploads {
            if !stale(key.strip_prefix(&strip).unwrap_or(&key)) {
                continue;
            }
            self.retrying("abort multipart upload", &key, || async {
                match c
                    .abort_multipart_upload()
                    .bucket(bucket)
                    .key(&key)
                    .upload_id(&id)
                    .send()
                    .await
                {
                    Ok(_) => Ok(()),
                    Err(e) if classify(&e) == Class::NotFound => Ok(()),
                    Err(e)
                        if e.as_service_error()
                            .is_some_and(|s| s.code() == Some("NoSuchUpload")) =>
                    {
                        Ok(())
                    }
                    Err(e) => Err(attempt(&e)),
                }
            })?;
            aborted += 1;
        }
        Ok(aborted)
    }
}
