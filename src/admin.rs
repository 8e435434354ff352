//! The HTTP admin API: schema operations for analysts with curl, health and Prometheus metrics
//! for the platform.
//!
//! Schema routes (`/schemas…`) need `Authorization: Bearer TOKEN` when a token is configured,
//! and a token is required to listen anywhere but loopback. `/healthz` and `/metrics` are open:
//! they carry no customer data.

use crate::extract::sample::SampleTest;
use crate::extract::schema::{self, SchemaError, SchemaErrors};
use crate::registry::watch::Switchboard;
use crate::registry::{self, Candidate, Registered, Registry, RegistryError};
use axum::extract::{DefaultBodyLimit, Multipart, Path, Query, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use metrics_exporter_prometheus::PrometheusHandle;
use serde::Deserialize;
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::sync::Arc;
use thiserror::Error;
use tokio_util::sync::CancellationToken;
use tracing::info;

/// Largest request body (a sample of events).
const MAX_BODY: usize = 64 << 20;
/// Sample lines read by `/schemas/test` when no limit is given.
const DEFAULT_SAMPLE_LINES: u64 = 100_000;

/// An admin API start-up failure.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum AdminError {
    /// A non-loopback address without a token.
    #[error(
        "admin.listen = {0} is not a loopback address: set admin.token (CLICKSTREAM__ADMIN__TOKEN) so that only holders of the token can change schemas"
    )]
    NeedsToken(SocketAddr),
    /// The address cannot be bound.
    #[error("admin API cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

/// What the routes work on.
#[derive(Clone)]
pub struct Admin {
    /// The schema registry, if the service has one.
    pub registry: Option<Registry>,
    /// Reload status of the running processor.
    pub board: Option<Arc<Switchboard>>,
    /// Required bearer token, if any.
    pub token: Option<Arc<str>>,
    /// Prometheus exposition.
    pub metrics: Option<PrometheusHandle>,
    /// Readiness of a running service (`/readyz`); absent for a replay, which is ready.
    pub ready: Option<Arc<crate::runtime::health::Health>>,
    /// Sessionization rules, for explanations.
    pub rules: crate::processor::Rules,
    /// The schemas directory the service reads without a registry: registering into an empty
    /// registry that would lose its schemas needs `force` and a `reason`.
    pub schemas: Option<std::path::PathBuf>,
}

/// Binds `addr` and serves until `cancel`; returns the bound address (port 0 picks one).
///
/// # Errors
/// Refused address or bind failure.
pub async fn serve(
    admin: Admin,
    addr: SocketAddr,
    cancel: CancellationToken,
) -> Result<SocketAddr, AdminError> {
    if !addr.ip().is_loopback() && admin.token.is_none() {
        return Err(AdminError::NeedsToken(addr));
    }
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| AdminError::Bind { addr, source })?;
    let bound = listener.local_addr().map_err(|source| AdminError::Bind { addr, source })?;
    let app = router(admin);
    info!(addr = %bound, "Admin API listening.");
    tokio::spawn(async move {
        let r = axum::serve(listener, app).with_graceful_shutdown(cancel.cancelled_owned()).await;
        if let Err(e) = r {
            tracing::error!(error = %e, "Admin API stopped.");
        }
    });
    Ok(bound)
}

/// The routes.
pub fn router(admin: Admin) -> Router {
    let schemas = Router::new()
        .route("/schemas", get(list))
        .route("/schemas/active", get(active))
        .route("/schemas/validate", post(validate))
        .route("/schemas/test", post(test))
        .route("/schemas/explain", post(explain))
        .route("/schemas/register", post(register))
        .route("/schemas/{name}", get(show_latest))
        .route("/schemas/{name}/{version}", get(show))
        .route_layer(axum::middleware::from_fn_with_state(admin.clone(), authorize));
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/metrics", get(metrics))
        .route("/readyz", get(readyz))
        .route("/livez", get(livez))
        .merge(schemas)
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(admin)
}

/// Byte comparison whose time does not depend on where the inputs differ.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn authorize(State(a): State<Admin>, req: Request, next: Next) -> Response {
    if let Some(token) = &a.token {
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if !given.is_some_and(|g| same(g.as_bytes(), token.as_bytes())) {
            return problem(
                StatusCode::UNAUTHORIZED,
                "missing or wrong token: send Authorization: Bearer TOKEN",
            );
        }
    }
    next.run(req).await
}

fn problem(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({ "error": message.into() }))).into_response()
}

fn schema_errors(e: &SchemaErrors) -> Value {
    json!(e.0.iter().map(error_json).collect::<Vec<_>>())
}

fn error_json(e: &SchemaError) -> Value {
    json!({
        "file": e.file.display().to_string(),
        "line": e.line,
        "column": e.column,
        "field": e.field,
        "message": e.message,
        "text": e.to_string(),
    })
}

fn registry_problem(e: &RegistryError) -> Response {
    let status = match e {
        RegistryError::NotFound(_) => StatusCode::NOT_FOUND,
        RegistryError::Invalid(errs) => {
            return (
                StatusCode::UNPROCESSABLE_ENTITY,
                Json(json!({ "error": e.to_string(), "errors": schema_errors(errs) })),
            )
                .into_response();
        }
        RegistryError::Incompatible { findings, .. } | RegistryError::Unsafe { findings, .. } => {
            return (
                StatusCode::CONFLICT,
                Json(json!({ "error": e.to_string(), "findings": findings })),
            )
                .into_response();
        }
        RegistryError::WrongVersion { .. }
        | RegistryError::Duplicate(_)
        | RegistryError::ForceWithoutReason
        | RegistryError::Location(_) => StatusCode::BAD_REQUEST,
        RegistryError::Raced(_) => StatusCode::CONFLICT,
        _ => StatusCode::BAD_GATEWAY,
    };
    problem(status, e.to_string())
}

fn no_registry() -> Response {
    problem(StatusCode::NOT_FOUND, "this service runs without a registry")
}

async fn metrics(State(a): State<Admin>) -> Response {
    match &a.metrics {
        Some(h) => {
            ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], h.render()).into_response()
        }
        None => problem(StatusCode::NOT_FOUND, "metrics are off"),
    }
}

async fn readyz(State(a): State<Admin>) -> Response {
    let Some(r) = &a.ready else { return "ready\n".into_response() };
    let checks = r.checks();
    let mut body: serde_json::Map<String, Value> =
        checks.iter().map(|c| (c.name.to_owned(), Value::Bool(c.ok))).collect();
    let problems: serde_json::Map<String, Value> = checks
        .iter()
        .filter_map(|c| Some((c.name.to_owned(), Value::String(c.detail.clone()?))))
        .collect();
    if !problems.is_empty() {
        body.insert("problems".into(), Value::Object(problems));
    }
    let status =
        if checks.iter().all(|c| c.ok) { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, Json(body)).into_response()
}

/// Whether the process makes progress: a stuck consumer answers 503 and is restarted by the
/// orchestrator's liveness probe.
async fn livez(State(a): State<Admin>) -> Response {
    match a.ready.as_ref().map(|r| r.live()) {
        Some(Err(why)) => problem(StatusCode::SERVICE_UNAVAILABLE, &why),
        _ => "live\n".into_response(),
    }
}

async fn list(State(a): State<Admin>) -> Response {
    let Some(r) = &a.registry else { return no_registry() };
    match r.versions().await {
        Ok(v) => {
            let schemas: Vec<Value> = v
                .iter()
                .map(|(n, vs)| json!({ "name": n, "latest": vs.last(), "versions": vs }))
                .collect();
            Json(json!({ "registry": r.location(), "schemas": schemas })).into_response()
        }
        Err(e) => registry_problem(&e),
    }
}

async fn active(State(a): State<Admin>) -> Response {
    match &a.board {
        Some(b) => Json(b.status()).into_response(),
        None => problem(StatusCode::NOT_FOUND, "no processor runs in this service"),
    }
}

async fn show_latest(State(a): State<Admin>, Path(name): Path<String>) -> Response {
    show_one(&a, &name, None).await
}

async fn show(State(a): State<Admin>, Path((name, version)): Path<(String, u32)>) -> Response {
    show_one(&a, &name, Some(version)).await
}

async fn show_one(a: &Admin, name: &str, version: Option<u32>) -> Response {
    let Some(r) = &a.registry else { return no_registry() };
    match r.get(name, version).await {
        Ok(rec) => Json(rec).into_response(),
        Err(e) => registry_problem(&e),
    }
}

/// Validates a schema (the body, TOML) on its own and within the set in force.
async fn validate(State(a): State<Admin>, body: axum::body::Bytes) -> Response {
    let label = std::path::PathBuf::from("request");
    let loaded = match schema::parse_bytes(&label, body.to_vec()) {
        Ok(l) => l,
        Err(e) => return invalid(&SchemaErrors(vec![e])),
    };
    let current = match current_records(&a).await {
        Ok(c) => c,
        Err(response) => return *response,
    };
    match registry::compile_set(&current, Some(loaded)) {
        Ok(x) => Json(json!({ "ok": true, "set": x.versions() })).into_response(),
        Err(e) => invalid(&e),
    }
}

/// The registry's set in force (none without a registry).
async fn current_records(a: &Admin) -> Result<Vec<registry::VersionRecord>, Box<Response>> {
    match &a.registry {
        Some(r) => r.current().await.map_err(|e| Box::new(registry_problem(&e))),
        None => Ok(Vec::new()),
    }
}

fn invalid(e: &SchemaErrors) -> Response {
    (
        StatusCode::UNPROCESSABLE_ENTITY,
        Json(json!({ "ok": false, "error": e.to_string(), "errors": schema_errors(e) })),
    )
        .into_response()
}

/// Multipart fields of `test` and `register`.
#[derive(Default)]
struct Form {
    schema: Option<Vec<u8>>,
    sample: Option<Vec<u8>>,
    force: bool,
    reason: Option<String>,
}

async fn read_form(mut m: Multipart) -> Result<Form, Response> {
    let bad = |e: axum::extract::multipart::MultipartError| {
        problem(StatusCode::BAD_REQUEST, format!("bad multipart body: {e}"))
    };
    let mut f = Form::default();
    while let Some(field) = m.next_field().await.map_err(bad)? {
        let name = field.name().unwrap_or_default().to_owned();
        let data = field.bytes().await.map_err(bad)?.to_vec();
        match name.as_str() {
            "schema" => f.schema = Some(data),
            "sample" => f.sample = Some(data),
            "force" => f.force = matches!(&data[..], b"true" | b"1" | b"yes"),
            "reason" => f.reason = Some(String::from_utf8_lossy(&data).into_owned()),
            other => {
                return Err(problem(
                    StatusCode::BAD_REQUEST,
                    format!("unknown field `{other}`: expected schema, sample, force, reason"),
                ));
            }
        }
    }
    Ok(f)
}

/// The multipart `sample` and the set to judge it by: the registry's, with the optional
/// `schema` standing in for its name. Shared by `test` and `explain`.
async fn sample_and_set(
    admin: &Admin,
    multipart: Multipart,
) -> Result<(Vec<u8>, Vec<registry::VersionRecord>, Option<schema::LoadedSchema>), Box<Response>> {
    let form = read_form(multipart).await.map_err(Box::new)?;
    let Some(sample) = form.sample else {
        return Err(Box::new(problem(
            StatusCode::BAD_REQUEST,
            "send the events as the multipart field `sample`",
        )));
    };
    let candidate = match form.schema {
        Some(text) => Some(
            schema::parse_bytes(std::path::Path::new("request"), text)
                .map_err(|e| Box::new(invalid(&SchemaErrors(vec![e]))))?,
        ),
        None => None,
    };
    let current = current_records(admin).await?;
    if current.is_empty() && candidate.is_none() {
        return Err(Box::new(problem(
            StatusCode::BAD_REQUEST,
            "no schema set: send one as the field `schema`",
        )));
    }
    Ok((sample, current, candidate))
}

#[derive(Deserialize)]
struct TestQuery {
    limit: Option<u64>,
    format: Option<String>,
}

/// Runs the set in force — with `schema` standing in for its name, if given — on `sample`.
async fn test(
    State(admin): State<Admin>,
    Query(query): Query<TestQuery>,
    multipart: Multipart,
) -> Response {
    let (sample, current, candidate) = match sample_and_set(&admin, multipart).await {
        Ok(parts) => parts,
        Err(response) => return *response,
    };
    let limit = query.limit.unwrap_or(DEFAULT_SAMPLE_LINES);
    let text_format = query.format.as_deref() == Some("text");
    let job = tokio::task::spawn_blocking(move || {
        let set = registry::compile_set(&current, candidate)?;
        let mut report = SampleTest::default();
        let lines = sample.strip_suffix(b"\n").unwrap_or(&sample);
        for (i, line) in lines.split(|&b| b == b'\n').take(limit as usize).enumerate() {
            report.observe(&set, i as u64 + 1, line.strip_suffix(b"\r").unwrap_or(line));
        }
        Ok::<_, SchemaErrors>(report.finish(10))
    });
    match job.await {
        Ok(Ok(report)) if text_format => report.to_text("sample").into_response(),
        Ok(Ok(report)) => Json(report).into_response(),
        Ok(Err(e)) => invalid(&e),
        Err(e) => problem(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

#[derive(Debug, serde::Deserialize)]
struct ExplainQuery {
    line: u64,
    format: Option<String>,
}

/// Explains line `line` of `sample` under the set in force (with `schema` standing in for its
/// name, if given), like `clickstream schema explain`.
async fn explain(
    State(admin): State<Admin>,
    Query(query): Query<ExplainQuery>,
    multipart: Multipart,
) -> Response {
    let (sample, current, candidate) = match sample_and_set(&admin, multipart).await {
        Ok(parts) => parts,
        Err(response) => return *response,
    };
    let rules = admin.rules;
    let job = tokio::task::spawn_blocking(move || {
        let set = registry::compile_set(&current, candidate).map_err(|e| Box::new(invalid(&e)))?;
        crate::explain::explain(&Arc::new(set), rules, &sample[..], query.line)
            .map_err(|e| Box::new(problem(StatusCode::BAD_REQUEST, e.to_string())))
    });
    match job.await {
        Ok(Ok(e)) if query.format.as_deref() == Some("text") => e.to_text("sample").into_response(),
        Ok(Ok(e)) => Json(e).into_response(),
        Ok(Err(response)) => *response,
        Err(e) => problem(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

async fn register(State(admin): State<Admin>, multipart: Multipart) -> Response {
    let Some(registry) = &admin.registry else { return no_registry() };
    let form = match read_form(multipart).await {
        Ok(f) => f,
        Err(e) => return e,
    };
    let Some(text) = form.schema else {
        return problem(
            StatusCode::BAD_REQUEST,
            "send the schema file as the multipart field `schema`",
        );
    };
    let candidate = Candidate {
        text,
        label: "request".into(),
        sample: form.sample,
        force: form.force,
        reason: form.reason,
        directory: admin.schemas.as_deref().and_then(registry::Directory::read),
    };
    match registry.register(candidate).await {
        Ok((Registered::New(rec), findings)) => {
            info!(schema = %rec.id(), forced = rec.forced, "Registered a schema version (admin API).");
            (
                StatusCode::CREATED,
                Json(json!({ "registered": rec.id(), "forced": rec.forced, "findings": findings })),
            )
                .into_response()
        }
        Ok((Registered::Unchanged(rec), _)) => {
            Json(json!({ "unchanged": rec.id() })).into_response()
        }
        Err(e) => registry_problem(&e),
    }
}

#[cfg(test)]
mod tests {
    use super::same;

    #[test]
    fn token_comparison() {
        assert!(same(b"abc", b"abc"));
        assert!(!same(b"abc", b"abd"));
        assert!(!same(b"abc", b"ab"));
    }
}
