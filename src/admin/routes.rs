//! The schema routes. Whatever judges a sample or compiles a set runs on a blocking thread:
//! the runtime's workers also drive the pipeline's S3 I/O and the probes.

use super::limits::{Slot, read_body, read_form};
use super::{Admin, problem};
use crate::extract::sample::SampleTest;
use crate::extract::schema::{self, SchemaError, SchemaErrors};
use crate::registry::{self, Candidate, Registered, RegistryError};
use axum::Json;
use axum::body::Body;
use axum::extract::{Extension, Multipart, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};
use std::sync::Arc;
use tracing::info;

/// Sample lines read by `/schemas/test` when no limit is given.
const DEFAULT_SAMPLE_LINES: u64 = 100_000;

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
        | RegistryError::BadName(_)
        | RegistryError::Location(_) => StatusCode::BAD_REQUEST,
        RegistryError::Raced(_) => StatusCode::CONFLICT,
        _ => StatusCode::BAD_GATEWAY,
    };
    problem(status, e.to_string())
}

fn no_registry() -> Response {
    problem(StatusCode::NOT_FOUND, "this service runs without a registry")
}

fn crashed(e: &tokio::task::JoinError) -> Response {
    problem(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
}

pub(super) async fn list(State(a): State<Admin>) -> Response {
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

pub(super) async fn active(State(a): State<Admin>) -> Response {
    match &a.board {
        Some(b) => Json(b.status()).into_response(),
        None => problem(StatusCode::NOT_FOUND, "no processor runs in this service"),
    }
}

pub(super) async fn show_latest(State(a): State<Admin>, Path(name): Path<String>) -> Response {
    show_one(&a, &name, None).await
}

pub(super) async fn show(
    State(a): State<Admin>,
    Path((name, version)): Path<(String, u32)>,
) -> Response {
    show_one(&a, &name, Some(version)).await
}

async fn show_one(a: &Admin, name: &str, version: Option<u32>) -> Response {
    // The path is decoded: `%2F` and `%2e%2e` arrive here as `/` and `..`.
    if let Err(e) = registry::check_name(name) {
        return registry_problem(&e);
    }
    let Some(r) = &a.registry else { return no_registry() };
    match r.get(name, version).await {
        Ok(rec) => Json(rec).into_response(),
        Err(e) => registry_problem(&e),
    }
}

/// Validates a schema (the body, TOML) on its own and within the set in force.
pub(super) async fn validate(
    State(a): State<Admin>,
    Extension(slot): Extension<Slot>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let body = match read_body(&headers, body, &a.limits).await {
        Ok(b) => b,
        Err(response) => return response,
    };
    let loaded = match schema::parse_bytes(std::path::Path::new("request"), body) {
        Ok(l) => l,
        Err(e) => return invalid(&SchemaErrors(vec![e])),
    };
    let current = match current_records(&a).await {
        Ok(c) => c,
        Err(response) => return *response,
    };
    let job = tokio::task::spawn_blocking(move || {
        let _slot = slot;
        registry::compile_set(&current, Some(loaded)).map(|x| x.versions())
    });
    match job.await {
        Ok(Ok(set)) => Json(json!({ "ok": true, "set": set })).into_response(),
        Ok(Err(e)) => invalid(&e),
        Err(e) => crashed(&e),
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

/// The multipart `sample` and the set to judge it by: the registry's, with the optional
/// `schema` standing in for its name. Shared by `test` and `explain`.
async fn sample_and_set(
    admin: &Admin,
    headers: &HeaderMap,
    multipart: Multipart,
) -> Result<(Vec<u8>, Vec<registry::VersionRecord>, Option<schema::LoadedSchema>), Box<Response>> {
    let form = read_form(headers, multipart, &admin.limits).await.map_err(Box::new)?;
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
pub(super) struct TestQuery {
    limit: Option<u64>,
    format: Option<String>,
}

/// Runs the set in force — with `schema` standing in for its name, if given — on `sample`.
pub(super) async fn test(
    State(admin): State<Admin>,
    Extension(slot): Extension<Slot>,
    Query(query): Query<TestQuery>,
    headers: HeaderMap,
    multipart: Multipart,
) -> Response {
    let (sample, current, candidate) = match sample_and_set(&admin, &headers, multipart).await {
        Ok(parts) => parts,
        Err(response) => return *response,
    };
    let limit = query.limit.unwrap_or(DEFAULT_SAMPLE_LINES);
    let text_format = query.format.as_deref() == Some("text");
    info!(sample_bytes = sample.len(), "Judging a sample (test) on a blocking thread.");
    let job = tokio::task::spawn_blocking(move || {
        let _slot = slot;
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
        Err(e) => crashed(&e),
    }
}

#[derive(Debug, Deserialize)]
pub(super) struct ExplainQuery {
    line: u64,
    format: Option<String>,
}

/// Explains line `line` of `sample` under the set in force (with `schema` standing in for its
/// name, if given), like `clickstream schema explain`.
pub(super) async fn explain(
    State(admin): State<Admin>,
    Extension(slot): Extension<Slot>,
    Query(query): Query<ExplainQuery>,
    headers: HeaderMap,
    multipart: Multipart,
) -> Response {
    let (sample, current, candidate) = match sample_and_set(&admin, &headers, multipart).await {
        Ok(parts) => parts,
        Err(response) => return *response,
    };
    let rules = admin.rules;
    let job = tokio::task::spawn_blocking(move || {
        let _slot = slot;
        let set = registry::compile_set(&current, candidate).map_err(|e| Box::new(invalid(&e)))?;
        crate::explain::explain(&Arc::new(set), rules, &sample[..], query.line)
            .map_err(|e| Box::new(problem(StatusCode::BAD_REQUEST, e.to_string())))
    });
    match job.await {
        Ok(Ok(e)) if query.format.as_deref() == Some("text") => e.to_text("sample").into_response(),
        Ok(Ok(e)) => Json(e).into_response(),
        Ok(Err(response)) => *response,
        Err(e) => crashed(&e),
    }
}

pub(super) async fn register(
    State(admin): State<Admin>,
    Extension(slot): Extension<Slot>,
    headers: HeaderMap,
    multipart: Multipart,
) -> Response {
    let Some(registry) = admin.registry.clone() else { return no_registry() };
    let form = match read_form(&headers, multipart, &admin.limits).await {
        Ok(f) => f,
        Err(e) => return e,
    };
    let Some(text) = form.schema else {
        return problem(
            StatusCode::BAD_REQUEST,
            "send the schema file as the multipart field `schema`",
        );
    };
    if let Some(s) = &form.sample {
        info!(sample_bytes = s.len(), "Judging a sample (register) on a blocking thread.");
    }
    let candidate = Candidate {
        text,
        label: "request".into(),
        sample: form.sample,
        force: form.force,
        reason: form.reason,
        directory: admin.schemas.as_deref().and_then(registry::Directory::read),
    };
    // The dry run (compiling both sets, judging the sample) is CPU work of seconds: on a
    // blocking thread, which drives the registry's few reads and the write itself.
    let rt = tokio::runtime::Handle::current();
    let job = tokio::task::spawn_blocking(move || {
        let _slot = slot;
        rt.block_on(registry.register(candidate))
    });
    match job.await {
        Ok(Ok((Registered::New(rec), findings))) => {
            info!(schema = %rec.id(), forced = rec.forced, "Registered a schema version (admin API).");
            (
                StatusCode::CREATED,
                Json(json!({ "registered": rec.id(), "forced": rec.forced, "findings": findings })),
            )
                .into_response()
        }
        Ok(Ok((Registered::Unchanged(rec), _))) => {
            Json(json!({ "unchanged": rec.id() })).into_response()
        }
        Ok(Err(e)) => registry_problem(&e),
        Err(e) => crashed(&e),
    }
}
