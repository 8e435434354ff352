//! Answers to an analyst's questions about a schema set, for the `clickstream schema` commands:
//! whether one file is valid within the set it joins, and what the merged set is.

use crate::extract::Extractor;
use crate::extract::order::{self, MergedSet};
use crate::extract::schema::{self, LoadedSchema, SchemaError, SchemaErrors};
use crate::registry::{self, VersionRecord};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// One file validated within the set it joins.
#[derive(Debug)]
pub struct InSet {
    /// The file, as given.
    pub file: PathBuf,
    /// Where the rest of the set comes from: `DIR` or `registry LOCATION`.
    pub context: String,
    /// `name@version` of the other schemas of the set, in merge order.
    pub others: Vec<String>,
    /// `name@version` of the version this file replaces (registry only).
    pub replaces: Option<String>,
    /// `name@version` of the file itself, once it parses.
    pub this: Option<String>,
    /// Problems located in this file.
    pub errors: Vec<SchemaError>,
    /// Problems located in the other files of the set.
    pub other_errors: Vec<SchemaError>,
}

impl InSet {
    /// Whether the set with this file validates.
    #[must_use]
    pub fn ok(&self) -> bool {
        self.errors.is_empty() && self.other_errors.is_empty()
    }

    /// `validated as part of the set in DIR: a@1, b@1 + this file (c@2)`.
    #[must_use]
    pub fn summary(&self) -> String {
        let others = if self.others.is_empty() {
            "no other schema".to_owned()
        } else {
            self.others.join(", ")
        };
        let mut s =
            format!("validated as part of the set in {}: {others} + this file", self.context);
        match (&self.this, &self.replaces) {
            (Some(t), Some(r)) => {
                let _ = write!(s, " ({t}, replacing {r})");
            }
            (Some(t), None) => {
                let _ = write!(s, " ({t})");
            }
            _ => {}
        }
        s
    }

    /// The report: one `FILE:LINE:COL: FIELD: MESSAGE` line per problem, this file's first,
    /// then the other files' under their own heading, then the summary.
    #[must_use]
    pub fn to_text(&self) -> String {
        let mut o = String::new();
        for e in &self.errors {
            let _ = writeln!(o, "{e}");
        }
        if !self.other_errors.is_empty() {
            let _ = writeln!(
                o,
                "{} in other files of the set in {} (not in {}):",
                count(self.other_errors.len()),
                self.context,
                self.file.display()
            );
            for e in &self.other_errors {
                let _ = writeln!(o, "{e}");
            }
        }
        let verdict = if self.ok() {
            "ok".to_owned()
        } else if self.errors.is_empty() {
            "no error in this file, but the set it joins does not validate".to_owned()
        } else {
            count(self.errors.len())
        };
        let _ = writeln!(o, "{}: {verdict}, {}", self.file.display(), self.summary());
        o
    }
}

/// `1 schema error`, `3 schema errors`.
#[must_use]
pub fn count(n: usize) -> String {
    if n == 1 { "1 schema error".into() } else { format!("{n} schema errors") }
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    }
}

fn id(l: &LoadedSchema) -> String {
    format!("{}@{}", l.schema.name.get_ref(), l.schema.version)
}

fn ids_in_order(schemas: &[LoadedSchema]) -> Vec<String> {
    order::merge_order(schemas).into_iter().map(|i| id(&schemas[i])).collect()
}

/// Compiles `others` + `this`, and sorts the problems into this file's and the others'.
fn judge(
    mut out: InSet,
    others: Vec<LoadedSchema>,
    this: Result<LoadedSchema, SchemaError>,
) -> InSet {
    out.others = ids_in_order(&others);
    match this {
        Err(e) => out.errors.push(e),
        Ok(this) => {
            out.this = Some(id(&this));
            let mut set = others;
            set.push(this);
            if let Err(SchemaErrors(errs)) = Extractor::compile(set) {
                for e in errs {
                    if e.file == out.file {
                        out.errors.push(e);
                    } else {
                        out.other_errors.push(e);
                    }
                }
            }
        }
    }
    out
}

/// Validates `file` as part of the set of its directory: every other `*.toml` beside it.
#[must_use]
pub fn validate_in_directory(file: &Path) -> InSet {
    let dir = match file.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
        _ => PathBuf::from("."),
    };
    let mut out = InSet {
        file: file.to_owned(),
        context: dir.display().to_string(),
        others: Vec::new(),
        replaces: None,
        this: None,
        errors: Vec::new(),
        other_errors: Vec::new(),
    };
    let mut others = Vec::new();
    for f in schema::list_files(&dir).unwrap_or_default() {
        if same_file(&f, file) {
            continue;
        }
        match schema::load_file(&f) {
            Ok(l) => others.push(l),
            Err(e) => out.other_errors.push(e),
        }
    }
    judge(out, others, schema::load_file(file))
}

/// Validates `file` as part of the registry's latest set, standing in for its own name's
/// version.
#[must_use]
pub fn validate_in_registry(file: &Path, records: &[VersionRecord], location: &str) -> InSet {
    let this = schema::load_file(file);
    let name = this.as_ref().ok().map(|l| l.schema.name.get_ref().clone());
    let mut out = InSet {
        file: file.to_owned(),
        context: format!("registry {location}"),
        others: Vec::new(),
        replaces: None,
        this: None,
        errors: Vec::new(),
        other_errors: Vec::new(),
    };
    let mut others = Vec::new();
    for r in records {
        if name.as_deref() == Some(r.name.as_str()) {
            out.replaces = Some(r.id());
            continue;
        }
        match r.parse() {
            Ok(l) => others.push(l),
            Err(e) => out.other_errors.push(e),
        }
    }
    judge(out, others, this)
}

/// Reads every schema file under `path` (a directory or one file).
///
/// # Errors
/// Every file that does not parse, or no file at all.
pub fn load_directory(path: &Path) -> Result<Vec<LoadedSchema>, SchemaErrors> {
    let (mut loaded, mut errs) = (Vec::new(), Vec::new());
    for f in schema::list_files(path)? {
        match schema::load_file(&f) {
            Ok(l) => loaded.push(l),
            Err(e) => errs.push(e),
        }
    }
    if errs.is_empty() { Ok(loaded) } else { Err(SchemaErrors(errs)) }
}

/// The registry's latest set, parsed.
///
/// # Errors
/// A stored version that does not parse.
pub fn load_records(records: &[VersionRecord]) -> Result<Vec<LoadedSchema>, SchemaErrors> {
    let (mut loaded, mut errs) = (Vec::new(), Vec::new());
    for r in records {
        match r.parse() {
            Ok(l) => loaded.push(l),
            Err(e) => errs.push(e),
        }
    }
    if errs.is_empty() { Ok(loaded) } else { Err(SchemaErrors(errs)) }
}

/// The merged order of a set that validates.
///
/// # Errors
/// Every problem of the set.
pub fn merged_set(schemas: Vec<LoadedSchema>) -> Result<MergedSet, SchemaErrors> {
    let merged = order::merged(&schemas);
    Extractor::compile(schemas)?;
    Ok(merged)
}

/// The schema files named by `paths` (files, and every `*.toml` of directories), in order.
///
/// # Errors
/// A path with no schema file.
pub fn expand(paths: &[PathBuf]) -> Result<Vec<PathBuf>, SchemaErrors> {
    let mut out = Vec::new();
    for p in paths {
        out.extend(schema::list_files(p)?);
    }
    Ok(out)
}

/// The schema errors an error carries, whatever wraps them.
#[must_use]
pub fn schema_errors(e: &(dyn std::error::Error + 'static)) -> Option<Vec<SchemaError>> {
    let mut cur = Some(e);
    while let Some(e) = cur {
        if let Some(s) = e.downcast_ref::<SchemaErrors>() {
            return Some(s.0.clone());
        }
        if let Some(s) = e.downcast_ref::<SchemaError>() {
            return Some(vec![s.clone()]);
        }
        if let Some(registry::RegistryError::Invalid(s)) = e.downcast_ref() {
            return Some(s.0.clone());
        }
        cur = e.source();
    }
    None
}
