//! The schema registry: immutable, numbered versions of each schema, in a local directory or
//! under an S3 prefix, with compatibility checks on registration.
//!
//! Layout (the same in a directory and under a prefix): `NAME/v000001.json`, one JSON record
//! per version holding the schema's TOML text, when it was registered, and — for a forced
//! change — why. A version is written once, atomically (a directory: hard link of a synced
//! temporary file, which fails if the name exists; S3: a conditional put), so a reader sees a
//! version whole or not at all. The set in force is the latest version of every name.

mod claim;
mod history;
mod plan;
pub mod watch;

pub use history::Loaded;
pub use plan::{compile_set, plan, plan_many};

use crate::extract::Extractor;
use crate::extract::compat::Finding;
use crate::extract::schema::{self, LoadedSchema, SchemaError, SchemaErrors};
use crate::s3::{self, S3Location};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use thiserror::Error;

/// A registry failure.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum RegistryError {
    /// A file-system operation failed.
    #[error("registry {path}: {source}")]
    Io {
        /// The file or directory.
        path: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// An S3 request failed.
    #[error("registry {location}: {message}")]
    S3 {
        /// The registry.
        location: String,
        /// What S3 said.
        message: String,
    },
    /// The location is neither a directory path nor `s3://bucket/prefix`.
    #[error("{0}")]
    Location(String),
    /// A stored record does not decode.
    #[error("registry record {key} is corrupt: {message}")]
    Corrupt {
        /// Its key.
        key: String,
        /// Why.
        message: String,
    },
    /// No such schema or version.
    #[error("{0} is not registered")]
    NotFound(String),
    /// The schema, or the set it would make, does not validate.
    #[error(transparent)]
    Invalid(#[from] SchemaErrors),
    /// The file's `version` is not the next one.
    #[error(
        "{name}: the file says version = {found}, but the next version is {expected}: set version = {expected} (versions are immutable and consecutive)"
    )]
    WrongVersion {
        /// Schema name.
        name: String,
        /// The version the file gives.
        found: u32,
        /// The version it must give.
        expected: u32,
    },
    /// The change is incompatible and was not forced.
    #[error("{name}@{version} is incompatible with {}:{}\nfix the schema, or register anyway with --force --reason \"…\"", against(.name, *.previous), list(.findings))]
    Incompatible {
        /// Schema name.
        name: String,
        /// The version refused.
        version: u32,
        /// The previous version.
        previous: u32,
        /// Everything found (breaking and not).
        findings: Vec<Finding>,
    },
    /// Registering would be risky (see [`compat::Severity::Warning`]) and was not forced.
    #[error("{id} was not registered:{}\nfix the schema or the registry, or register anyway with --force --reason \"…\"", list(.findings))]
    Unsafe {
        /// `NAME@VERSION` refused.
        id: String,
        /// Everything found (warnings and the rest).
        findings: Vec<Finding>,
    },
    /// Several files offered at once name the same schema.
    #[error("{0}")]
    Duplicate(String),
    /// `--force` without `--reason`.
    #[error("--force needs --reason \"…\": the reason is stored with the version")]
    ForceWithoutReason,
    /// Someone else registered the same version first.
    #[error(
        "{0} was registered by someone else meanwhile: look at it, then register the next version"
    )]
    Raced(String),
    /// A name that [`valid_name`] refuses (it would escape the registry's directory or prefix).
    #[error(
        "{0:?} is not a schema name: 1 to 64 letters, digits, `_` and `-`, not starting with `-`"
    )]
    BadName(String),
}

fn list(findings: &[Finding]) -> String {
    use std::fmt::Write as _;
    findings.iter().fold(String::new(), |mut out, f| {
        let _ = write!(out, "\n  {}: {}: {}", f.severity.name(), f.field, f.message);
        out
    })
}

/// One registered version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionRecord {
    /// Schema name.
    pub name: String,
    /// Version number (1, 2, …).
    pub version: u32,
    /// When it was registered (UTC, RFC 3339).
    pub registered_at: String,
    /// Registered over breaking findings with `--force`.
    pub forced: bool,
    /// Why it was forced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// What the compatibility check found.
    #[serde(default)]
    pub findings: Vec<Finding>,
    /// The schema file's text.
    pub source: String,
}

impl VersionRecord {
    /// `NAME@VERSION`.
    #[must_use]
    pub fn id(&self) -> String {
        format!("{}@{}", self.name, self.version)
    }

    /// Parses the stored schema text.
    ///
    /// # Errors
    /// The text is not a valid schema, or names another schema or version than the record.
    pub fn parse(&self) -> Result<LoadedSchema, SchemaError> {
        let label = PathBuf::from(self.id());
        let loaded = schema::parse_bytes(&label, self.source.clone().into_bytes())?;
        let s = &loaded.schema;
        if s.name.get_ref() != &self.name || s.version != self.version {
            return Err(loaded.error(
                s.name.span(),
                "name",
                format!("the stored text is {}@{}, not {}", s.name.get_ref(), s.version, self.id()),
            ));
        }
        Ok(loaded)
    }
}

/// Longest schema name, in bytes.
pub const MAX_NAME: usize = 64;

/// Whether `name` may name a schema: `[A-Za-z0-9_][A-Za-z0-9_-]{0,63}`, the one rule for every
/// way a name arrives (a schema file, the CLI, an HTTP path) and for the directory names and
/// S3 keys made from it. No `.`, `/` or `%`, so a name can never climb out of the registry
/// (`..`, an encoded slash); no leading `-`, so a name never reads as a command-line option.
#[must_use]
pub fn valid_name(name: &str) -> bool {
    let b = name.as_bytes();
    let part = |c: &u8| c.is_ascii_alphanumeric() || *c == b'_' || *c == b'-';
    !b.is_empty() && b.len() <= MAX_NAME && b[0] != b'-' && b.iter().all(part)
}

/// `Ok` for a name that [`valid_name`] accepts.
///
/// # Errors
/// [`RegistryError::BadName`] otherwise.
pub fn check_name(name: &str) -> Result<(), RegistryError> {
    if valid_name(name) { Ok(()) } else { Err(RegistryError::BadName(name.to_owned())) }
}

fn key(name: &str, version: u32) -> String {
    debug_assert!(valid_name(name), "unchecked schema name {name:?}");
    format!("{name}/v{version:06}.json")
}

/// Whether `key` is shaped `NAME/vNNNNNN.json` with a name [`valid_name`] refuses: a record
/// that an older binary may have written, left out of every set (and said so once).
fn refused_record(key: &str) -> bool {
    let Some((name, file)) = key.split_once('/') else { return false };
    let v = file.strip_prefix('v').and_then(|f| f.strip_suffix(".json")).unwrap_or_default();
    !valid_name(name) && v.len() == 6 && v.bytes().all(|b| b.is_ascii_digit())
}

/// `NAME/vNNNNNN.json` → (name, version); `None` for anything else, including a directory or
/// key whose name [`valid_name`] refuses (so it is never read back as a schema).
fn parse_key(key: &str) -> Option<(&str, u32)> {
    let (name, file) = key.split_once('/')?;
    let v = file.strip_prefix('v')?.strip_suffix(".json")?;
    if !valid_name(name) || v.len() != 6 || !v.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((name, v.parse().ok()?))
}

/// `NAME` or `NAME@VERSION`.
///
/// # Errors
/// A version that is not a number, or a name that [`valid_name`] refuses.
pub fn parse_ref(s: &str) -> Result<(String, Option<u32>), RegistryError> {
    let (name, version) = match s.split_once('@') {
        None => (s, None),
        Some((n, v)) => (
            n,
            Some(v.parse().map_err(|_| {
                RegistryError::Location(format!("`{s}`: write NAME or NAME@VERSION, e.g. web@2"))
            })?),
        ),
    };
    check_name(name)?;
    Ok((name.to_owned(), version))
}

/// Where versions are stored.
#[derive(Debug, Clone)]
enum Backend {
    Dir(PathBuf),
    S3 { client: aws_sdk_s3::Client, location: S3Location },
}

/// A registry, local or in S3.
#[derive(Debug, Clone)]
pub struct Registry {
    backend: Backend,
    /// Records left out for their names, already warned about (a poll lists every few
    /// seconds: one warning a record, not one a poll).
    refused: std::sync::Arc<std::sync::Mutex<std::collections::BTreeSet<String>>>,
}

/// What a registration did.
#[derive(Debug)]
pub enum Registered {
    /// A new version was stored.
    New(VersionRecord),
    /// The latest version already has exactly this text.
    Unchanged(VersionRecord),
}

/// A schema offered for registration.
#[derive(Debug, Clone)]
pub struct Candidate {
    /// The schema text.
    pub text: Vec<u8>,
    /// Its name in messages (the file path, or `request`).
    pub label: PathBuf,
    /// Sample events to judge rule changes on, one per line.
    pub sample: Option<Vec<u8>>,
    /// Register over breaking findings.
    pub force: bool,
    /// Why (required with `force`).
    pub reason: Option<String>,
    /// The schemas a processor reads without the registry (the schemas directory). A registry's
    /// set replaces the directory's: registering into an empty registry while the directory
    /// holds other schemas would drop them, and is refused unless forced.
    pub directory: Option<Directory>,
}

/// The schemas directory a processor reads without a registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Directory {
    /// Where it is, as given.
    pub path: String,
    /// The names of its schemas.
    pub names: Vec<String>,
}

impl Directory {
    /// Reads the names of the schemas under `path` (a directory or a file); `None` when there
    /// is none. A file that does not parse counts by its file name.
    #[must_use]
    pub fn read(path: &Path) -> Option<Directory> {
        let files = schema::list_files(path).ok()?;
        let mut names: Vec<String> = files
            .iter()
            .map(|f| match schema::load_file(f) {
                Ok(l) => l.schema.name.get_ref().clone(),
                Err(_) => {
                    f.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default()
                }
            })
            .collect();
        names.sort();
        names.dedup();
        Some(Directory { path: path.display().to_string(), names })
    }
}

impl Registry {
    /// Opens `location`: a directory (created if missing) or `s3://bucket/prefix`.
    ///
    /// # Errors
    /// A malformed `s3://` URL, or a directory that cannot be created.
    pub async fn open(location: &str, force_path_style: bool) -> Result<Registry, RegistryError> {
        match S3Location::parse(location) {
            Some(Ok(location)) => {
                let client = s3::client(force_path_style).await;
                Ok(Registry::on(Backend::S3 { client, location }))
            }
            Some(Err(m)) => Err(RegistryError::Location(m)),
            None if location.is_empty() => Err(RegistryError::Location(
                "no registry given: --registry DIR|s3://BUCKET/PREFIX".into(),
            )),
            None => {
                let dir = PathBuf::from(location);
                std::fs::create_dir_all(&dir)
                    .map_err(|source| RegistryError::Io { path: location.to_owned(), source })?;
                Ok(Registry::on(Backend::Dir(dir)))
            }
        }
    }

    fn on(backend: Backend) -> Registry {
        Registry { backend, refused: std::sync::Arc::default() }
    }

    /// Keeps `key` for [`Registry::keys`] if it names a version; warns once about a record
    /// whose name breaks the rule.
    fn keep(&self, key: &str, out: &mut Vec<String>) {
        if parse_key(key).is_some() {
            out.push(key.to_owned());
        } else if refused_record(key) {
            let mut refused =
                self.refused.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            if refused.insert(key.to_owned()) {
                tracing::warn!(registry = %self.location(), key, "A schema record whose name breaks the rule [A-Za-z0-9_][A-Za-z0-9_-]{{0,63}} is left out of every set: register the schema again under a name that keeps it.");
            }
        }
    }

    /// The location as given.
    #[must_use]
    pub fn location(&self) -> String {
        match &self.backend {
            Backend::Dir(d) => d.display().to_string(),
            Backend::S3 { location, .. } => location.to_string(),
        }
    }

    /// The directory, for a local registry (watched with file-system notifications).
    #[must_use]
    pub fn dir(&self) -> Option<&Path> {
        match &self.backend {
            Backend::Dir(d) => Some(d),
            Backend::S3 { .. } => None,
        }
    }

    fn s3_err(&self, message: String) -> RegistryError {
        RegistryError::S3 { location: self.location(), message }
    }

    /// Every version key, sorted.
    async fn keys(&self) -> Result<Vec<String>, RegistryError> {
        let mut out = Vec::new();
        match &self.backend {
            Backend::Dir(root) => {
                let io = |p: &Path| {
                    let path = p.display().to_string();
                    move |source| RegistryError::Io { path, source }
                };
                for e in std::fs::read_dir(root).map_err(io(root))? {
                    let e = e.map_err(io(root))?;
                    if !e.file_type().map_err(io(&e.path()))?.is_dir() {
                        continue;
                    }
                    let name = e.file_name().to_string_lossy().into_owned();
                    for f in std::fs::read_dir(e.path()).map_err(io(&e.path()))? {
                        let f = f.map_err(io(&e.path()))?;
                        let k = format!("{name}/{}", f.file_name().to_string_lossy());
                        self.keep(&k, &mut out);
                    }
                }
            }
            Backend::S3 { client, location } => {
                let base = location.list_prefix();
                let mut pages = client
                    .list_objects_v2()
                    .bucket(&location.bucket)
                    .prefix(&base)
                    .into_paginator()
                    .send();
                while let Some(page) = pages.next().await {
                    let page = page.map_err(|e| self.s3_err(s3::describe(&e)))?;
                    for o in page.contents() {
                        if let Some(k) = o.key().and_then(|k| k.strip_prefix(&base)) {
                            self.keep(k, &mut out);
                        }
                    }
                }
            }
        }
        out.sort();
        Ok(out)
    }

    async fn read(&self, key: &str) -> Result<Option<Vec<u8>>, RegistryError> {
        match &self.backend {
            Backend::Dir(root) => {
                let p = root.join(key);
                match std::fs::read(&p) {
                    Ok(b) => Ok(Some(b)),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                    Err(source) => Err(RegistryError::Io { path: p.display().to_string(), source }),
                }
            }
            Backend::S3 { client, location } => {
                let r = client
                    .get_object()
                    .bucket(&location.bucket)
                    .key(location.key(key))
                    .send()
                    .await;
                match r {
                    Ok(o) => {
                        let body =
                            o.body.collect().await.map_err(|e| self.s3_err(e.to_string()))?;
                        Ok(Some(body.into_bytes().to_vec()))
                    }
                    Err(e)
                        if e.as_service_error().is_some_and(
                            aws_sdk_s3::operation::get_object::GetObjectError::is_no_such_key,
                        ) =>
                    {
                        Ok(None)
                    }
                    Err(e) => Err(self.s3_err(s3::describe(&e))),
                }
            }
        }
    }

    /// Writes `key` if it does not exist; `Ok(false)` if it does.
    async fn create(&self, key: &str, bytes: Vec<u8>) -> Result<bool, RegistryError> {
        match &self.backend {
            Backend::Dir(root) => {
                let path = root.join(key);
                let io = |source| RegistryError::Io { path: path.display().to_string(), source };
                let dir = path.parent().unwrap_or(root);
                std::fs::create_dir_all(dir).map_err(io)?;
                let tmp =
                    dir.join(format!(".tmp-{}-{}", std::process::id(), key.replace('/', "_")));
                let mut f = std::fs::File::create(&tmp).map_err(io)?;
                f.write_all(&bytes).and_then(|()| f.sync_all()).map_err(io)?;
                drop(f);
                // A hard link fails when the name exists: create-if-absent, atomically.
                let linked = std::fs::hard_link(&tmp, &path);
                let _ = std::fs::remove_file(&tmp);
                match linked {
                    Ok(()) => {
                        if let Ok(d) = std::fs::File::open(dir) {
                            let _ = d.sync_all();
                        }
                        Ok(true)
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
                    Err(e) => Err(io(e)),
                }
            }
            Backend::S3 { client, location } => {
                let r = client
                    .put_object()
                    .bucket(&location.bucket)
                    .key(location.key(key))
                    .if_none_match("*")
                    .content_type("application/json")
                    .body(bytes.into())
                    .send()
                    .await;
                match r {
                    Ok(_) => Ok(true),
                    Err(e) if e.raw_response().is_some_and(|r| r.status().as_u16() == 412) => {
                        Ok(false)
                    }
                    Err(e) => Err(self.s3_err(s3::describe(&e))),
                }
            }
        }
    }

    /// Every name with its versions, ascending.
    ///
    /// # Errors
    /// The registry cannot be listed.
    pub async fn versions(&self) -> Result<BTreeMap<String, Vec<u32>>, RegistryError> {
        let mut m: BTreeMap<String, Vec<u32>> = BTreeMap::new();
        for k in self.keys().await? {
            if let Some((n, v)) = parse_key(&k) {
                m.entry(n.to_owned()).or_default().push(v);
            }
        }
        Ok(m)
    }

    /// A cheap token that changes whenever a version is added (for polling).
    ///
    /// # Errors
    /// The registry cannot be listed.
    pub async fn fingerprint(&self) -> Result<String, RegistryError> {
        Ok(self.keys().await?.join(","))
    }

    /// One version (the latest when `version` is `None`).
    ///
    /// # Errors
    /// Not registered, unreadable or corrupt.
    pub async fn get(
        &self,
        name: &str,
        version: Option<u32>,
    ) -> Result<VersionRecord, RegistryError> {
        check_name(name)?;
        let v = match version {
            Some(v) => v,
            None => *self
                .versions()
                .await?
                .get(name)
                .and_then(|v| v.last())
                .ok_or_else(|| RegistryError::NotFound(name.to_owned()))?,
        };
        let k = key(name, v);
        let bytes =
            self.read(&k).await?.ok_or_else(|| RegistryError::NotFound(format!("{name}@{v}")))?;
        let rec: VersionRecord = serde_json::from_slice(&bytes)
            .map_err(|e| RegistryError::Corrupt { key: k.clone(), message: e.to_string() })?;
        if rec.name != name || rec.version != v {
            return Err(RegistryError::Corrupt {
                key: k,
                message: format!("it holds {}", rec.id()),
            });
        }
        Ok(rec)
    }

    /// The set in force: the latest version of every name.
    ///
    /// # Errors
    /// Unreadable or corrupt.
    pub async fn current(&self) -> Result<Vec<VersionRecord>, RegistryError> {
        self.latest_of(&self.versions().await?).await
    }

    /// The latest record of every name in `versions` (a listing).
    async fn latest_of(
        &self,
        versions: &BTreeMap<String, Vec<u32>>,
    ) -> Result<Vec<VersionRecord>, RegistryError> {
        let mut out = Vec::new();
        for (name, versions) in versions {
            if let Some(&v) = versions.last() {
                out.push(self.get(name, Some(v)).await?);
            }
        }
        Ok(out)
    }

    /// Loads and compiles the set in force; also returns its records.
    ///
    /// # Errors
    /// Unreadable, empty, or the set does not validate.
    pub async fn load_set(&self) -> Result<(Extractor, Vec<VersionRecord>), RegistryError> {
        let records = self.current().await?;
        if records.is_empty() {
            return Err(RegistryError::NotFound(format!(
                "no schema in registry {} (register one with `clickstream schema register`)",
                self.location()
            )));
        }
        Ok((compile_set(&records, None)?, records))
    }

    /// Validates, checks compatibility and stores a new version.
    ///
    /// # Errors
    /// Invalid, incompatible and not forced, wrong version number, or a storage failure.
    pub async fn register(
        &self,
        c: Candidate,
    ) -> Result<(Registered, Vec<Finding>), RegistryError> {
        let mut all = self.register_many(vec![c]).await?;
        all.pop().ok_or_else(|| RegistryError::NotFound("no schema given".into()))
    }

    /// Validates, checks and stores several schemas as one change: each is judged within the
    /// set that holds all of them (seeding an empty registry with a whole directory). Nothing
    /// is stored unless every one passes.
    ///
    /// # Errors
    /// As [`Registry::register`], for any of them.
    pub async fn register_many(
        &self,
        cs: Vec<Candidate>,
    ) -> Result<Vec<(Registered, Vec<Finding>)>, RegistryError> {
        self.register_claimed(cs, &crate::aggregate::utc_datetime(now_ms())).await
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// What a refused version was judged against: its previous version, or for a first version
/// (a new name joining a set in force) the set.
fn against(name: &str, previous: u32) -> String {
    if previous == 0 { "the set in force".to_owned() } else { format!("{name}@{previous}") }
}

#[cfg(test)]
mod tests;
