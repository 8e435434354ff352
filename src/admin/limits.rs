//! Bounds on the schema routes: body and sample sizes, and how many run at once.
//!
//! A sample is judged in memory, on a blocking thread: its size bounds the memory a request
//! holds, and the number of requests at once bounds the blocking threads and their memory.

use super::problem;
use crate::config::AdminConfig;
use axum::body::Body;
use axum::extract::{Multipart, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::Response;
use futures_util::StreamExt as _;
use std::sync::Arc;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Room for the multipart framing around the fields.
const FRAMING: usize = 64 << 10;

/// The `[admin]` limits (documented with their defaults in `config/default.toml`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest body without a sample (`/schemas/validate`), and largest multipart field other
    /// than `sample` (the schema, `force`, `reason`).
    pub max_body: usize,
    /// Largest `sample` field, in bytes.
    pub max_sample_bytes: usize,
    /// Most lines in a `sample` field.
    pub max_sample_lines: u64,
    /// Schema requests served at once; more are answered 503 at once.
    pub max_concurrency: usize,
}

impl Limits {
    /// The limits of an `[admin]` section.
    #[must_use]
    pub fn from_config(c: &AdminConfig) -> Limits {
        Limits {
            max_body: usize::try_from(c.max_body).unwrap_or(usize::MAX),
            max_sample_bytes: usize::try_from(c.max_sample_bytes).unwrap_or(usize::MAX),
            max_sample_lines: c.max_sample_lines,
            max_concurrency: c.max_concurrency.max(1),
        }
    }

    /// Largest multipart body: a sample, three small fields and their framing.
    pub(super) fn form_cap(&self) -> usize {
        self.max_sample_bytes
            .saturating_add(self.max_body.saturating_mul(3))
            .saturating_add(FRAMING)
    }
}

/// 413, naming the setting that refused the request.
fn too_large(what: &str, setting: &str, cap: impl std::fmt::Display) -> Response {
    problem(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!("{what} is over admin.{setting} = {cap}: send less, or raise the setting"),
    )
}

/// Whether the request's `Content-Length` already says it is over `cap`.
fn declared_over(headers: &HeaderMap, cap: usize) -> bool {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .is_some_and(|n| n > cap as u64)
}

/// A whole body of at most `limits.max_body` bytes.
pub(super) async fn read_body(
    headers: &HeaderMap,
    body: Body,
    limits: &Limits,
) -> Result<Vec<u8>, Response> {
    let over = || too_large("the body", "max_body", format_args!("{} bytes", limits.max_body));
    if declared_over(headers, limits.max_body) {
        return Err(over());
    }
    let mut out = Vec::new();
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk
            .map_err(|e| problem(StatusCode::BAD_REQUEST, format!("cannot read the body: {e}")))?;
        if out.len() + chunk.len() > limits.max_body {
            return Err(over());
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

/// Multipart fields of `test`, `explain` and `register`.
#[derive(Default)]
pub(super) struct Form {
    pub(super) schema: Option<Vec<u8>>,
    pub(super) sample: Option<Vec<u8>>,
    pub(super) force: bool,
    pub(super) reason: Option<String>,
}

/// Reads the form, each field within its cap: the sample within `max_sample_bytes` and
/// `max_sample_lines`, the others within `max_body`. Refused as soon as a cap is passed, not
/// after reading the rest.
pub(super) async fn read_form(
    headers: &HeaderMap,
    mut m: Multipart,
    limits: &Limits,
) -> Result<Form, Response> {
    let whole = || {
        too_large(
            "the request",
            "max_sample_bytes",
            format_args!(
                "{} bytes (plus admin.max_body = {} bytes per other field)",
                limits.max_sample_bytes, limits.max_body
            ),
        )
    };
    if declared_over(headers, limits.form_cap()) {
        return Err(whole());
    }
    let bad = |e: axum::extract::multipart::MultipartError| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            whole()
        } else {
            problem(e.status(), format!("bad multipart body: {}", e.body_text()))
        }
    };
    let mut f = Form::default();
    let mut seen: Vec<String> = Vec::new();
    while let Some(mut field) = m.next_field().await.map_err(bad)? {
        let name = field.name().unwrap_or_default().to_owned();
        if !matches!(name.as_str(), "schema" | "sample" | "force" | "reason") {
            return Err(problem(
                StatusCode::BAD_REQUEST,
                format!("unknown field `{name}`: expected schema, sample, force, reason"),
            ));
        }
        // Once each: repeats would let one request read without bound.
        if seen.contains(&name) {
            return Err(problem(StatusCode::BAD_REQUEST, format!("field `{name}` sent twice")));
        }
        let mut data = Vec::new();
        let mut newlines = 0u64;
        while let Some(chunk) = field.chunk().await.map_err(bad)? {
            if name == "sample" {
                if data.len() + chunk.len() > limits.max_sample_bytes {
                    let cap = format_args!("{} bytes", limits.max_sample_bytes);
                    return Err(too_large("the sample", "max_sample_bytes", cap));
                }
                newlines += memchr::memchr_iter(b'\n', &chunk).count() as u64;
                if newlines > limits.max_sample_lines {
                    return Err(too_many_lines(limits));
                }
            } else if data.len() + chunk.len() > limits.max_body {
                let cap = format_args!("{} bytes", limits.max_body);
                return Err(too_large(&format!("the field `{name}`"), "max_body", cap));
            }
            data.extend_from_slice(&chunk);
        }
        match name.as_str() {
            "schema" => f.schema = Some(data),
            "sample" => {
                let unterminated = data.last().is_some_and(|&b| b != b'\n');
                if newlines + u64::from(unterminated) > limits.max_sample_lines {
                    return Err(too_many_lines(limits));
                }
                f.sample = Some(data);
            }
            "force" => f.force = matches!(&data[..], b"true" | b"1" | b"yes"),
            _ => f.reason = Some(String::from_utf8_lossy(&data).into_owned()),
        }
        seen.push(name);
    }
    Ok(f)
}

fn too_many_lines(limits: &Limits) -> Response {
    let cap = format_args!("{} lines", limits.max_sample_lines);
    too_large("the sample", "max_sample_lines", cap)
}

/// The slots of the schema routes.
#[derive(Clone)]
pub(super) struct Gate {
    slots: Arc<Semaphore>,
    max: usize,
}

impl Gate {
    pub(super) fn new(max: usize) -> Gate {
        Gate { slots: Arc::new(Semaphore::new(max)), max }
    }
}

/// A slot held by a schema request. A handler hands it to its blocking job, so that the slot
/// stays taken until the work ends, even when the client hangs up first.
#[derive(Clone)]
pub(super) struct Slot {
    _held: Arc<OwnedSemaphorePermit>,
}

/// Takes a slot for the request, or answers 503 at once when all are taken: a queue would hold
/// each waiting request's connection (and soon its body) for an unknown time.
pub(super) async fn limit(State(gate): State<Gate>, mut req: Request, next: Next) -> Response {
    let Ok(permit) = Arc::clone(&gate.slots).try_acquire_owned() else {
        let mut r = problem(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "busy: admin.max_concurrency = {} schema requests are already running; retry shortly",
                gate.max
            ),
        );
        r.headers_mut().insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
        return r;
    };
    req.extensions_mut().insert(Slot { _held: Arc::new(permit) });
    next.run(req).await
}
