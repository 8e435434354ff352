//! The HTTP admin API: schema operations for analysts with curl, health and Prometheus metrics
//! for the platform.
//!
//! Schema routes (`/schemas…`) need `Authorization: Bearer TOKEN` when a token is configured,
//! and a token is required to listen anywhere but loopback. `/healthz` and `/metrics` are open:
//! they carry no customer data. Schema routes are bounded in body size and in how many run at
//! once ([`Limits`]); the probes are not, so a busy analyst never fails a liveness check.

mod limits;
mod routes;

pub use limits::Limits;

use crate::registry::Registry;
use crate::registry::watch::Switchboard;
use axum::extract::{ConnectInfo, DefaultBodyLimit, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{Next, from_fn_with_state};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use limits::Gate;
use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::sync::Arc;
use thiserror::Error;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// Shortest token accepted: 32 bytes, e.g. 16 random bytes in hex (`openssl rand -hex 16`), so
/// that guessing it over HTTP is hopeless.
pub const MIN_TOKEN: usize = 32;

/// An admin API start-up failure.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum AdminError {
    /// A non-loopback address without a token.
    #[error(
        "admin.listen = {0} is not a loopback address: set admin.token (CLICKSTREAM__ADMIN__TOKEN) so that only holders of the token can change schemas"
    )]
    NeedsToken(SocketAddr),
    /// A token too short to resist guessing.
    #[error(
        "admin.token (CLICKSTREAM__ADMIN__TOKEN) is {0} bytes long; it must be at least {MIN_TOKEN}: make one with `openssl rand -hex 32`"
    )]
    ShortToken(usize),
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
    /// Body sizes, sample sizes and concurrency of the schema routes.
    pub limits: Limits,
}

/// Binds `addr` and serves until `cancel`; returns the bound address (port 0 picks one).
///
/// # Errors
/// Refused address or token, or bind failure.
pub async fn serve(
    admin: Admin,
    addr: SocketAddr,
    cancel: CancellationToken,
) -> Result<SocketAddr, AdminError> {
    if let Some(t) = &admin.token
        && t.len() < MIN_TOKEN
    {
        return Err(AdminError::ShortToken(t.len()));
    }
    if !addr.ip().is_loopback() && admin.token.is_none() {
        return Err(AdminError::NeedsToken(addr));
    }
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| AdminError::Bind { addr, source })?;
    let bound = listener.local_addr().map_err(|source| AdminError::Bind { addr, source })?;
    let app = router(admin).into_make_service_with_connect_info::<SocketAddr>();
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
    let l = admin.limits;
    // Routes without a sample take a schema at most; the sample routes take a schema, a sample
    // and two small fields, each capped on its own while it is read (see `limits::read_form`).
    let small = DefaultBodyLimit::max(l.max_body);
    let form = DefaultBodyLimit::max(l.form_cap());
    let gate = Gate::new(l.max_concurrency);
    let schemas = Router::new()
        .route("/schemas", get(routes::list))
        .route("/schemas/active", get(routes::active))
        .route("/schemas/validate", post(routes::validate).layer(small))
        .route("/schemas/test", post(routes::test).layer(form))
        .route("/schemas/explain", post(routes::explain).layer(form))
        .route("/schemas/register", post(routes::register).layer(form))
        .route("/schemas/{name}", get(routes::show_latest))
        .route("/schemas/{name}/{version}", get(routes::show))
        // The last layer runs first: a request without the token never takes a slot.
        .route_layer(from_fn_with_state(gate, limits::limit))
        .route_layer(from_fn_with_state(admin.clone(), authorize));
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/metrics", get(metrics))
        .route("/readyz", get(readyz))
        .route("/livez", get(livez))
        .merge(schemas)
        .layer(small)
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
        let failure = match given {
            None => Some("missing"),
            Some(g) if !same(g.as_bytes(), token.as_bytes()) => Some("wrong"),
            Some(_) => None,
        };
        if let Some(reason) = failure {
            crate::telemetry::admin_auth_failed(reason);
            // Never the given value: a near miss may be the token with a typo.
            let from = req.extensions().get::<ConnectInfo<SocketAddr>>().map(|c| c.0.to_string());
            warn!(reason, path = %req.uri().path(), from = from.as_deref().unwrap_or("?"),
                "Admin API request refused: missing or wrong token.");
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
