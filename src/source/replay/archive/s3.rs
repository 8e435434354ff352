//! Archives in S3: listing a prefix (from the hour `--from` names, when keys are
//! `prefix/YYYY/MM/DD/HH/…`), and reading an object as listed, streamed, going on from where a
//! failed or stalled read stopped.

use super::{Archive, HOUR_MS, Window, hour_parts};
use crate::source::replay::SourceError;
use crate::source::replay::input::Input;
use aws_sdk_s3::Client;
use bytes::Bytes;
use std::fmt::Write as _;
use std::io::{self, Read};
use std::sync::Arc;
use std::time::Duration;
use tokio::runtime::Handle;

/// Attempts at reading on from where an interrupted read of an object stopped.
const READ_ATTEMPTS: u32 = 6;
/// A read that yields nothing for this long is abandoned and made again from where it stopped.
const STALL: Duration = Duration::from_mins(1);

/// Where an archive's objects live in S3, shared by its objects.
#[derive(Debug)]
struct Bucket {
    client: Client,
    rt: Handle,
    name: String,
}

/// An object of an S3 archive, as listed.
#[derive(Debug)]
pub struct Object {
    bucket: Arc<Bucket>,
    /// Its key.
    pub key: String,
    /// Its ETag when listed: every read is conditional on it.
    pub etag: String,
    /// Its size when listed.
    pub size: u64,
}

impl Object {
    /// The bucket's name.
    #[must_use]
    pub fn bucket(&self) -> &str {
        &self.bucket.name
    }

    /// Its bytes from the start, streamed.
    pub(in crate::source::replay) fn reader(&self) -> ObjectReader {
        ObjectReader {
            bucket: Arc::clone(&self.bucket),
            key: self.key.clone(),
            etag: self.etag.clone(),
            size: self.size,
            pos: 0,
            body: None,
            buf: Bytes::new(),
            failures: 0,
        }
    }
}

/// Lists an S3 archive `s3://bucket/prefix` (a folder: `prefix/` is listed; a prefix that
/// names one object and no folder is that object). With `--from`, when keys are
/// `prefix/YYYY/MM/DD/HH/…` the listing starts at that hour instead of the archive's start,
/// and with `--to` it stops past that hour: a year-old archive costs what the window holds.
///
/// # Errors
/// The listing fails.
pub fn list_s3(
    arg: &str,
    window: Window,
    client: &Client,
    rt: &Handle,
) -> Result<Archive, SourceError> {
    let err = |detail: String| SourceError::Open {
        path: arg.to_owned(),
        source: io::Error::other(detail),
    };
    let rest = arg.strip_prefix("s3://").unwrap_or(arg);
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    if bucket.is_empty() {
        return Err(err("no bucket: write s3://BUCKET/PREFIX".to_owned()));
    }
    let folder = if prefix.is_empty() || prefix.ends_with('/') {
        prefix.to_owned()
    } else {
        format!("{prefix}/")
    };
    let shared =
        Arc::new(Bucket { client: client.clone(), rt: rt.clone(), name: bucket.to_owned() });
    let mut listed = rt.block_on(list_keys(client, bucket, &folder, window)).map_err(err)?;
    if listed.is_empty() && !prefix.is_empty() && !prefix.ends_with('/') {
        // `s3://bucket/path/object.json.gz`: one object.
        listed = rt.block_on(list_keys(client, bucket, prefix, Window::default())).map_err(err)?;
        listed.retain(|(k, ..)| k == prefix);
    }
    let mut objects = Vec::with_capacity(listed.len());
    let mut listing = String::new();
    for (key, size, etag, modified) in listed {
        let below = key.strip_prefix(folder.as_str()).unwrap_or(&key);
        if !window.keeps(&key, modified) || below.split('/').any(super::hidden) {
            continue;
        }
        let _ = writeln!(listing, "{key}\t{size}\t{etag}");
        objects.push(Input::object(Object { bucket: Arc::clone(&shared), key, etag, size }));
    }
    Ok(Archive { arg: arg.to_owned(), objects, listing, window })
}

type Key = (String, u64, String, Option<i64>);

async fn list_keys(
    client: &Client,
    bucket: &str,
    prefix: &str,
    window: Window,
) -> Result<Vec<Key>, String> {
    let hour_path = |ms: i64| {
        jiff::Timestamp::from_millisecond(ms).ok().map(|t| t.strftime("%Y/%m/%d/%H/").to_string())
    };
    // Keys of an hour `prefix/YYYY/MM/DD/HH/…` sort after `prefix/YYYY/MM/DD/HH/` and before
    // the next hour's: start after the hour `from` falls in, stop at the first key past `to`.
    let start_after = window.from.and_then(|f| hour_path(f - f.rem_euclid(HOUR_MS))).map(|h| {
        let mut s = format!("{prefix}{h}");
        s.pop(); // `…/HH` sorts before every key of that hour
        s
    });
    let mut out = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let mut req = client.list_objects_v2().bucket(bucket).prefix(prefix);
        if let Some(t) = &token {
            req = req.continuation_token(t);
        } else if let Some(s) = &start_after {
            req = req.start_after(s);
        }
        let page = req.send().await.map_err(|e| crate::s3::describe(&e))?;
        for o in page.contents() {
            let Some(key) = o.key() else { continue };
            if let (Some(to), Some(h)) =
                (window.to, key.strip_prefix(prefix).and_then(hour_at_start))
                && h >= to
            {
                return Ok(out);
            }
            out.push((
                key.to_owned(),
                o.size().map_or(0, |s| s.max(0) as u64),
                o.e_tag().unwrap_or_default().to_owned(),
                o.last_modified().and_then(|t| t.to_millis().ok()),
            ));
        }
        token = page.next_continuation_token().map(str::to_owned);
        if token.is_none() {
            return Ok(out);
        }
    }
}

/// The hour a key names at its very start (`YYYY/MM/DD/HH/…`).
fn hour_at_start(rest: &str) -> Option<i64> {
    let parts: Vec<&str> = rest.splitn(5, '/').collect();
    match parts[..] {
        [year, month, day, hour, _] => hour_parts(year, month, day, hour),
        _ => None,
    }
}

/// A streamed read of one object that goes on from where it stopped when a read fails or
/// stalls, always of the version listed (`If-Match` its ETag).
pub(in crate::source::replay) struct ObjectReader {
    bucket: Arc<Bucket>,
    key: String,
    etag: String,
    size: u64,
    pos: u64,
    body: Option<aws_sdk_s3::primitives::ByteStream>,
    buf: Bytes,
    failures: u32,
}

impl ObjectReader {
    fn name(&self) -> String {
        format!("s3://{}/{}", self.bucket.name, self.key)
    }

    /// The body from `pos` on; an error that will not heal is `Err(Ok(e))`, one worth another
    /// attempt `Err(Err(e))`.
    fn request(&self) -> Result<aws_sdk_s3::primitives::ByteStream, Result<io::Error, io::Error>> {
        use aws_sdk_s3::error::SdkError;
        let mut req = self.bucket.client.get_object().bucket(&self.bucket.name).key(&self.key);
        if !self.etag.is_empty() {
            req = req.if_match(&self.etag);
        }
        if self.pos > 0 {
            req = req.range(format!("bytes={}-", self.pos));
        }
        let sent = self.bucket.rt.block_on(async { tokio::time::timeout(STALL, req.send()).await });
        match sent {
            Ok(Ok(out)) => Ok(out.body),
            Ok(Err(e)) => {
                let status = match &e {
                    SdkError::ServiceError(s) => Some(s.raw().status().as_u16()),
                    _ => None,
                };
                let text = crate::s3::describe(&e);
                match status {
                    Some(412) => Err(Ok(io::Error::other(format!(
                        "{} changed since the archive was listed (its ETag is no longer {}): the replay reads the archive as listed",
                        self.name(),
                        self.etag
                    )))),
                    Some(404) => Err(Ok(io::Error::new(
                        io::ErrorKind::NotFound,
                        format!("{} is gone since the archive was listed", self.name()),
                    ))),
                    Some(400 | 403) => Err(Ok(io::Error::other(text))),
                    _ => Err(Err(io::Error::other(text))),
                }
            }
            Err(_) => Err(Err(io::Error::new(io::ErrorKind::TimedOut, "GetObject took over 60 s"))),
        }
    }

    fn failed(&mut self, e: &io::Error) -> io::Result<()> {
        self.body = None;
        self.failures += 1;
        if self.failures >= READ_ATTEMPTS {
            return Err(io::Error::new(
                e.kind(),
                format!("{} failed {READ_ATTEMPTS} times at byte {}: {e}", self.name(), self.pos),
            ));
        }
        tracing::warn!(object = %self.name(), at = self.pos, error = %e, attempt = self.failures, "Reading an archive's object failed: reading on from where it stopped.");
        std::thread::sleep(Duration::from_millis(200 << self.failures.min(5)));
        Ok(())
    }
}

impl Read for ObjectReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        loop {
            if !self.buf.is_empty() {
                let n = out.len().min(self.buf.len());
                out[..n].copy_from_slice(&self.buf.split_to(n));
                self.pos += n as u64;
                return Ok(n);
            }
            if self.pos >= self.size || out.is_empty() {
                return Ok(0);
            }
            let Some(body) = self.body.as_mut() else {
                match self.request() {
                    Ok(b) => self.body = Some(b),
                    Err(Ok(fatal)) => return Err(fatal),
                    Err(Err(e)) => self.failed(&e)?,
                }
                continue;
            };
            let next =
                self.bucket.rt.block_on(async { tokio::time::timeout(STALL, body.next()).await });
            match next {
                Ok(Some(Ok(bytes))) => {
                    self.failures = 0;
                    self.buf = bytes;
                }
                Ok(Some(Err(e))) => self.failed(&io::Error::other(e.to_string()))?,
                // The body ended before the listed size: read on from there.
                Ok(None) => self.failed(&io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the body ended early",
                ))?,
                Err(_) => {
                    self.failed(&io::Error::new(io::ErrorKind::TimedOut, "no byte for 60 s"))?;
                }
            }
        }
    }
}
