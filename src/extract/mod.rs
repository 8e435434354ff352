//! Extract: one line of JSON text → [`ClickEvent`], driven entirely by the schema files.
//!
//! The Rust code names no producer field. A schema set says where the message id, customer id
//! and event time are (with fallbacks across field names), which events to reject and which to
//! classify as page views, hovers, clicks or support calls. The checks run in contract order:
//! JSON validity, object-ness, reject rules, message id, customer id, timestamp.
//!
//! Compiling merges all schema files into one [`Extractor`]: every simple path goes into one
//! trie that the parser follows in a single pass (see [`walk`]); general `JSONPath` queries are
//! evaluated by jsonpath-rust on a parsed `Value`, only when the set has some.

pub mod catalog;
pub mod coerce;
pub mod compat;
pub mod explain;
pub mod order;
pub mod path;
pub mod sample;
pub mod schema;
pub mod time;
pub mod walk;

use crate::event::{ClickEvent, Kind};
use catalog::{AttrType, Catalog};
use path::{JsonPath, Step};
use schema::{Condition, LoadedSchema, SchemaError, SchemaErrors};
use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::Path;
use std::sync::Arc;
use thiserror::Error;
use time::{TimeSpec, TimeValue};
use walk::{Slot, Trie};

/// Reasons the pipeline itself gives (schema reject rules add their own).
pub const BUILTIN_REASONS: [&str; 14] = [
    "empty_line",
    "too_large",
    "invalid_utf8",
    "too_deep",
    "invalid_json",
    "not_object",
    "missing_message_id",
    "bad_message_id",
    "missing_customer_id",
    "bad_customer_id",
    "missing_timestamp",
    "bad_timestamp",
    "late",
    "duplicate",
];

/// Why an event was rejected by extraction.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ExtractError {
    /// Not exactly one RFC 8259 JSON value.
    #[error("invalid JSON: {0}")]
    InvalidJson(serde_json::Error),
    /// Valid JSON, but not an object.
    #[error("the top-level value is not an object")]
    NotObject,
    /// A schema's reject rule matched.
    #[error("rejected by a rule of schema {schema}")]
    Rejected {
        /// The rule's reason.
        reason: Arc<str>,
        /// The schema that holds the rule.
        schema: Arc<str>,
    },
    /// No message id path is present.
    #[error("no message id at any of {0}")]
    MissingMessageId(Arc<str>),
    /// The message id is not a non-empty string or a non-negative integer.
    #[error("the message id at {0} is not a non-empty string or a non-negative integer")]
    BadMessageId(Arc<str>),
    /// No customer id path is present.
    #[error("no customer id at any of {0}")]
    MissingCustomerId(Arc<str>),
    /// The customer id is not a non-empty string or a non-negative integer.
    #[error("the customer id at {0} is not a non-empty string or a non-negative integer")]
    BadCustomerId(Arc<str>),
    /// No event time path is present.
    #[error("no event time at any of {0}")]
    MissingTimestamp(Arc<str>),
    /// The event time does not parse as declared, or is outside [2000, 2100).
    #[error("the event time at {path}, {detail}")]
    BadTimestamp {
        /// The path read.
        path: Arc<str>,
        /// The value read, how it was read, what is wrong, and a hint when one applies.
        detail: String,
    },
}

impl ExtractError {
    /// The dead-letter reason.
    #[must_use]
    pub fn reason(&self) -> &str {
        match self {
            ExtractError::InvalidJson(_) => "invalid_json",
            ExtractError::NotObject => "not_object",
            ExtractError::Rejected { reason, .. } => reason,
            ExtractError::MissingMessageId(_) => "missing_message_id",
            ExtractError::BadMessageId(_) => "bad_message_id",
            ExtractError::MissingCustomerId(_) => "missing_customer_id",
            ExtractError::BadCustomerId(_) => "bad_customer_id",
            ExtractError::MissingTimestamp(_) => "missing_timestamp",
            ExtractError::BadTimestamp { .. } => "bad_timestamp",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Test {
    Equals(String),
    In(Vec<String>),
    Exists(bool),
}

impl Test {
    /// The strings this test accepts, if it accepts only strings.
    fn strings(&self) -> Option<&[String]> {
        match self {
            Test::Equals(s) => Some(std::slice::from_ref(s)),
            Test::In(v) => Some(v),
            Test::Exists(_) => None,
        }
    }

    /// Whether no value can pass both tests.
    fn excludes(&self, other: &Test) -> bool {
        match (self, other) {
            (Test::Exists(a), Test::Exists(b)) => a != b,
            (Test::Exists(false), t) | (t, Test::Exists(false)) => t.strings().is_some(),
            (Test::Exists(true), _) | (_, Test::Exists(true)) => false,
            (a, b) => match (a.strings(), b.strings()) {
                (Some(x), Some(y)) => !x.iter().any(|v| y.contains(v)),
                _ => false,
            },
        }
    }
}

#[derive(Debug)]
struct Cond {
    slot: usize,
    test: Test,
}

impl Cond {
    fn holds(&self, slots: &[Slot<'_>]) -> bool {
        let v = &slots[self.slot];
        match &self.test {
            Test::Equals(want) => matches!(v, Slot::Str(s) if s == want),
            Test::In(set) => matches!(v, Slot::Str(s) if set.iter().any(|w| w == s)),
            Test::Exists(want) => v.is_present() == *want,
        }
    }
}

/// A classification rule already seen while compiling: its conditions (slot, test) sorted, its
/// kind, and where it was written.
type SeenRule = (Vec<(usize, Test)>, Kind, String);

#[derive(Debug)]
struct Rule<T> {
    when: Vec<Cond>,
    then: T,
    /// `schema:classify[i]`, for explanations.
    origin: Arc<str>,
}

/// A compiled schema set.
#[derive(Debug)]
pub struct Extractor {
    trie: Trie,
    /// General queries and the slot each fills.
    queries: Vec<(JsonPath, usize)>,
    rejects: Vec<Rule<(Arc<str>, Arc<str>)>>,
    message_id: Vec<usize>,
    customer_id: Vec<usize>,
    event_time: Vec<(usize, TimeSpec)>,
    /// Path lists for error messages, per field, and each slot's path.
    described: [Arc<str>; 3],
    slot_paths: Vec<Arc<str>>,
    classify: Vec<Rule<Kind>>,
    /// Per attribute: its candidate slots, type and byte limit.
    attrs: Vec<(Vec<usize>, AttrType, u32)>,
    catalog: Catalog,
    versions: Vec<(String, u32)>,
    /// For each slot, the first schema (in merge order) that names it as a field candidate.
    slot_schema: Vec<Option<Arc<str>>>,
}

/// The path that supplied a field, and the schema that declared it.
pub type Source = (Arc<str>, Option<Arc<str>>);

/// What [`Extractor::explain`] found out about one line, for analysts' reports.
#[derive(Debug)]
pub struct Explanation<'a> {
    /// The extraction's outcome, as the pipeline would see it.
    pub result: Result<ClickEvent<'a>, ExtractError>,
    /// Per canonical field (message id, customer id, event time): the path that supplied it
    /// and the schema that declared that path. `None` when the line never got that far or
    /// no candidate was present.
    pub fields: [Option<Source>; 3],
    /// `path=value` of every classification input present as a string (for events no rule
    /// classified).
    pub label: String,
}

/// Collects slots for paths while a schema set compiles.
#[derive(Default)]
struct Paths {
    ids: HashMap<String, usize>,
    compiled: Vec<JsonPath>,
}

impl Paths {
    fn intern(
        &mut self,
        s: &LoadedSchema,
        text: &toml::Spanned<String>,
        field: &str,
        errs: &mut Vec<SchemaError>,
    ) -> usize {
        if let Some(&i) = self.ids.get(text.get_ref()) {
            return i;
        }
        match JsonPath::parse(text.get_ref()) {
            Ok(p) => {
                self.compiled.push(p);
                let i = self.compiled.len() - 1;
                self.ids.insert(text.get_ref().clone(), i);
                i
            }
            Err(msg) => {
                errs.push(s.error(text.span(), field, msg));
                usize::MAX
            }
        }
    }
}

impl Extractor {
    /// Loads and compiles every schema file under `path` (a file or a directory).
    ///
    /// # Errors
    /// Every problem in every file, at once.
    pub fn load(path: &Path) -> Result<Extractor, SchemaErrors> {
        let mut errs = Vec::new();
        let mut loaded = Vec::new();
        for f in schema::list_files(path)? {
            match schema::load_file(&f) {
                Ok(l) => loaded.push(l),
                Err(e) => errs.push(e),
            }
        }
        if loaded.is_empty() && !errs.is_empty() {
            return Err(SchemaErrors(errs));
        }
        match Extractor::compile(loaded) {
            Ok(x) if errs.is_empty() => Ok(x),
            Ok(_) => Err(SchemaErrors(errs)),
            Err(SchemaErrors(more)) => {
                errs.extend(more);
                Err(SchemaErrors(errs))
            }
        }
    }

    /// Compiles parsed schema files into one extractor.
    ///
    /// # Errors
    /// Every semantic problem found (bad paths, unknown formats or kinds, duplicate names, …).
    #[allow(clippy::too_many_lines)]
    pub fn compile(mut schemas: Vec<LoadedSchema>) -> Result<Extractor, SchemaErrors> {
        schemas.sort_by(|a, b| {
            (a.schema.priority, a.schema.name.get_ref())
                .cmp(&(b.schema.priority, b.schema.name.get_ref()))
        });
        let mut errs = Vec::new();
        let mut seen_names: HashMap<String, &Path> = HashMap::new();
        let mut paths = Paths::default();
        let mut json_strings = Vec::new();
        let (mut message_id, mut customer_id, mut event_time) =
            (Vec::new(), Vec::new(), Vec::new());
        let (mut rejects, mut classify) = (Vec::new(), Vec::new());
        let mut seen_rules: Vec<SeenRule> = Vec::new();
        // (field, move, schema index, rule index) of every explicit placement.
        let mut moves: Vec<(String, order::Move<usize>, usize, usize)> = Vec::new();
        let catalog = Catalog::build(&schemas, &mut errs);
        // Attribute name → its paths' indexes, from the first declaration.
        let mut attr_paths: HashMap<String, Vec<usize>> = HashMap::new();
        // (path index, schema) of every field candidate, in merge order.
        let mut field_owner: Vec<(usize, Arc<str>)> = Vec::new();
        for s in &schemas {
            let sc = &s.schema;
            let name = sc.name.get_ref();
            let owner: Arc<str> = Arc::from(name.as_str());
            if name.is_empty()
                || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            {
                errs.push(s.error(
                    sc.name.span(),
                    "name",
                    "a schema name is letters, digits, `_` and `-` only",
                ));
            }
            if let Some(other) = seen_names.insert(name.clone(), &s.file) {
                errs.push(s.error(
                    sc.name.span(),
                    "name",
                    format!("duplicate schema name `{name}`, also used by {}", other.display()),
                ));
            }
            for (i, p) in sc.json_strings.iter().enumerate() {
                let field = format!("json_strings[{i}]");
                match JsonPath::parse(p.get_ref()) {
                    Ok(jp) if jp.steps().is_some() => json_strings.push(jp),
                    Ok(_) => errs.push(s.error(
                        p.span(),
                        &field,
                        "json_strings take simple paths only (names and indexes)",
                    )),
                    Err(m) => errs.push(s.error(p.span(), &field, m)),
                }
            }
            for (i, p) in sc.fields.message_id.iter().enumerate() {
                let idx = paths.intern(s, p, &format!("fields.message_id[{i}]"), &mut errs);
                field_owner.push((idx, Arc::clone(&owner)));
                message_id.push(idx);
            }
            for (i, p) in sc.fields.customer_id.iter().enumerate() {
                let idx = paths.intern(s, p, &format!("fields.customer_id[{i}]"), &mut errs);
                field_owner.push((idx, Arc::clone(&owner)));
                customer_id.push(idx);
            }
            for (i, t) in sc.fields.event_time.iter().enumerate() {
                let field = format!("fields.event_time[{i}]");
                let slot = paths.intern(s, &t.path, &field, &mut errs);
                field_owner.push((slot, Arc::clone(&owner)));
                match TimeSpec::compile(t) {
                    Ok(spec) => event_time.push((slot, spec)),
                    Err(problems) => errs.extend(
                        problems
                            .into_iter()
                            .map(|(span, key, msg)| s.error(span, &format!("{field}.{key}"), msg)),
                    ),
                }
            }
            let schema_name: Arc<str> = Arc::from(name.as_str());
            for (i, r) in sc.reject.iter().enumerate() {
                let field = format!("reject[{i}]");
                let reason = r.reason.get_ref();
                if reason.is_empty()
                    || !reason
                        .chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
                {
                    errs.push(s.error(
                        r.reason.span(),
                        &format!("{field}.reason"),
                        "a reason is snake_case: lowercase letters, digits and `_`",
                    ));
                } else if BUILTIN_REASONS.contains(&reason.as_str()) && reason != "not_activity" {
                    errs.push(s.error(
                        r.reason.span(),
                        &format!("{field}.reason"),
                        format!(
                            "`{reason}` is a reason the pipeline gives itself: pick another name"
                        ),
                    ));
                }
                let when = conditions(s, &r.when, &field, &mut paths, &mut errs);
                rejects.push(Rule {
                    when,
                    then: (Arc::from(reason.as_str()), Arc::clone(&schema_name)),
                    origin: Arc::from(format!("{name}:{field}")),
                });
            }
            for (i, o) in sc.order.iter().enumerate() {
                let si = schemas.iter().position(|x| std::ptr::eq(x, s)).unwrap_or(0);
                if let Some(mv) = placement(s, o, i, &mut paths, &mut errs) {
                    moves.push((o.field.get_ref().clone(), mv, si, i));
                }
            }
            for (i, a) in sc.attributes.iter().enumerate() {
                let ids: Vec<usize> = a
                    .paths
                    .get_ref()
                    .iter()
                    .enumerate()
                    .map(|(j, p)| {
                        paths.intern(s, p, &format!("attributes[{i}].paths[{j}]"), &mut errs)
                    })
                    .collect();
                attr_paths.entry(a.name.get_ref().clone()).or_insert(ids);
            }
            for (i, r) in sc.classify.iter().enumerate() {
                let field = format!("classify[{i}]");
                let when = conditions(s, &r.when, &field, &mut paths, &mut errs);
                match catalog.kind(r.kind.get_ref()).map(|k| Kind(k as u16)) {
                    Some(kind) => {
                        let mut key: Vec<(usize, Test)> =
                            when.iter().map(|c| (c.slot, c.test.clone())).collect();
                        key.sort();
                        if let Some((other_kind, where_)) = seen_rules
                            .iter()
                            .find(|(k, _, _)| *k == key)
                            .map(|(_, kd, w)| (*kd, w.clone()))
                        {
                            if other_kind != kind {
                                errs.push(s.error(
                                    r.kind.span(),
                                    &format!("{field}.kind"),
                                    format!(
                                        "conflicting classification: {where_} has the same conditions and classifies as {}; only the first kind in precedence order would ever apply",
                                        catalog.kinds[other_kind.0 as usize].name
                                    ),
                                ));
                            }
                        } else {
                            seen_rules.push((key, kind, format!("{}:{field}", s.file.display())));
                        }
                        classify.push(Rule {
                            when,
                            then: kind,
                            origin: Arc::from(format!("{name}:{field}")),
                        });
                    }
                    None => errs.push(s.error(
                        r.kind.span(),
                        &format!("{field}.kind"),
                        format!(
                                "unknown kind `{}`: the set declares {}{}",
                                r.kind.get_ref(),
                                catalog
                                    .kinds
                                    .iter()
                                    .map(|k| k.name.to_string())
                                    .collect::<Vec<_>>()
                                    .join(", "),
                                if catalog.kinds.iter().all(|k| k.schema.is_none()) {
                                    " (the classic kinds: declare a new one under [[kinds]])"
                                } else {
                                    " (declare it under [[kinds]] in one schema of the set)"
                                }
                            ),
                    )),
                }
            }
        }
        if schemas.is_empty() {
            errs.push(SchemaError {
                file: "schemas".into(),
                line: 0,
                column: 0,
                field: "-".into(),
                message: "no schema file".into(),
            });
        }
        let declared = |f: fn(&schema::Fields) -> usize| {
            schemas.iter().map(|s| f(&s.schema.fields)).sum::<usize>()
        };
        for (field, n) in [
            ("message_id", declared(|f| f.message_id.len())),
            ("customer_id", declared(|f| f.customer_id.len())),
            ("event_time", declared(|f| f.event_time.len())),
        ] {
            if n == 0 && !schemas.is_empty() {
                let s = &schemas[0];
                errs.push(s.error(
                    0..0,
                    &format!("fields.{field}"),
                    "no schema of the set gives a path for this field",
                ));
            }
        }
        for (field, mv, si, i) in &moves {
            let s = &schemas[*si];
            let o = &s.schema.order[*i];
            let own = match field.as_str() {
                "message_id" => {
                    s.schema.fields.message_id.iter().any(|p| p.get_ref() == o.path.get_ref())
                }
                "customer_id" => {
                    s.schema.fields.customer_id.iter().any(|p| p.get_ref() == o.path.get_ref())
                }
                _ => {
                    s.schema.fields.event_time.iter().any(|t| t.path.get_ref() == o.path.get_ref())
                }
            };
            let missing = match field.as_str() {
                "message_id" => order::place(&mut message_id, |&x| x, std::slice::from_ref(mv)),
                "customer_id" => order::place(&mut customer_id, |&x| x, std::slice::from_ref(mv)),
                _ => order::place(
                    &mut event_time,
                    |x: &(usize, TimeSpec)| x.0,
                    std::slice::from_ref(mv),
                ),
            };
            if !own {
                errs.push(s.error(
                    o.path.span(),
                    &format!("order[{i}].path"),
                    format!("{} is not one of this schema's {field} paths: a schema places only its own paths", o.path.get_ref()),
                ));
            } else if !missing.is_empty() {
                let anchor =
                    o.before.as_ref().or(o.after.as_ref()).map_or(0..0, toml::Spanned::span);
                errs.push(s.error(
                    anchor,
                    &format!("order[{i}]"),
                    format!("no schema of the set has that path for {field}: see `clickstream schema show --set` for the candidates"),
                ));
            }
        }
        if !errs.is_empty() {
            return Err(SchemaErrors(errs));
        }
        // A path two schemas declare is one candidate, at its first place (with its first
        // format): a second copy could never be the one that supplies the field.
        let mut seen = std::collections::HashSet::new();
        message_id.retain(|&p| seen.insert(p));
        seen.clear();
        customer_id.retain(|&p| seen.insert(p));
        seen.clear();
        event_time.retain(|(p, _)| seen.insert(*p));
        // Stable: by the kinds' precedence, then the kinds' order, then the rules' own order.
        classify
            .sort_by_key(|r: &Rule<Kind>| (catalog.kinds[r.then.0 as usize].precedence, r.then.0));

        let simple: Vec<&[Step]> = paths.compiled.iter().filter_map(JsonPath::steps).collect();
        let json: Vec<&[Step]> = json_strings.iter().filter_map(JsonPath::steps).collect();
        let (trie, simple_slots) = Trie::build(&simple, &json);
        // Path index → slot: simple paths got trie slots; general queries get slots after them.
        let mut slot_of = Vec::with_capacity(paths.compiled.len());
        let mut queries = Vec::new();
        let mut simple_iter = simple_slots.into_iter();
        let mut extra = trie.slot_count();
        for p in &paths.compiled {
            if p.steps().is_some() {
                slot_of.push(simple_iter.next().unwrap_or(0));
            } else {
                slot_of.push(extra);
                queries.push((p.clone(), extra));
                extra += 1;
            }
        }
        if queries.len() > path::MAX_GENERAL_QUERIES
            && let Some(first) = schemas.first()
        {
            return Err(SchemaErrors(vec![first.error(
                0..0,
                "-",
                format!(
                    "the set uses {} general JSONPath queries (wildcards, filters, ..); at most {} are allowed, because each costs a second parse of every event: use simple paths ($.a.b, $.a[0]) where you can",
                    queries.len(),
                    path::MAX_GENERAL_QUERIES
                ),
            )]));
        }
        let mut slot_paths = vec![Arc::<str>::from("?"); extra];
        for (p, &slot) in paths.compiled.iter().zip(&slot_of) {
            slot_paths[slot] = Arc::from(p.as_str());
        }
        let remap = |conds: &mut Vec<Cond>| conds.iter_mut().for_each(|c| c.slot = slot_of[c.slot]);
        for r in &mut rejects {
            remap(&mut r.when);
        }
        for r in &mut classify {
            remap(&mut r.when);
        }
        let message_id: Vec<usize> = message_id.iter().map(|&i| slot_of[i]).collect();
        let customer_id: Vec<usize> = customer_id.iter().map(|&i| slot_of[i]).collect();
        let event_time: Vec<(usize, TimeSpec)> =
            event_time.into_iter().map(|(i, f)| (slot_of[i], f)).collect();
        let describe = |slots: &mut dyn Iterator<Item = usize>| -> Arc<str> {
            Arc::from(slots.map(|s| slot_paths[s].to_string()).collect::<Vec<_>>().join(", "))
        };
        let described = [
            describe(&mut message_id.iter().copied()),
            describe(&mut customer_id.iter().copied()),
            describe(&mut event_time.iter().map(|(s, _)| *s)),
        ];
        let attrs = catalog
            .attrs
            .iter()
            .map(|a| {
                let ids = attr_paths.get(&*a.name).map_or(&[][..], Vec::as_slice);
                (ids.iter().map(|&i| slot_of[i]).collect(), a.ty, a.max_bytes)
            })
            .collect();
        let mut slot_schema: Vec<Option<Arc<str>>> = vec![None; extra];
        for (idx, owner) in field_owner {
            slot_schema[slot_of[idx]].get_or_insert(owner);
        }
        let versions =
            schemas.iter().map(|s| (s.schema.name.get_ref().clone(), s.schema.version)).collect();
        Ok(Extractor {
            trie,
            queries,
            rejects,
            message_id,
            customer_id,
            event_time,
            described,
            slot_paths,
            classify,
            attrs,
            catalog,
            versions,
            slot_schema,
        })
    }

    /// Extracts one line like [`Extractor::extract`], and tells which path and schema supplied
    /// each field. For analysts' reports, not for the hot path.
    pub fn explain<'a>(&self, text: &'a str, slots: &mut Vec<Slot<'a>>) -> Explanation<'a> {
        let result = self.extract(text, slots);
        let mut fields: [Option<Source>; 3] = [None, None, None];
        let got_that_far = !matches!(
            result,
            Err(ExtractError::InvalidJson(_)
                | ExtractError::NotObject
                | ExtractError::Rejected { .. })
        );
        let mut label = String::new();
        if got_that_far {
            let times: Vec<usize> = self.event_time.iter().map(|(s, _)| *s).collect();
            for (i, list) in [&self.message_id, &self.customer_id, &times].into_iter().enumerate() {
                fields[i] = list
                    .iter()
                    .find(|&&s| slots[s].is_present())
                    .map(|&s| (Arc::clone(&self.slot_paths[s]), self.slot_schema[s].clone()));
            }
            let mut seen = Vec::new();
            for c in self.classify.iter().flat_map(|r| &r.when) {
                if seen.contains(&c.slot) {
                    continue;
                }
                seen.push(c.slot);
                if let Slot::Str(v) = &slots[c.slot] {
                    if !label.is_empty() {
                        label.push(' ');
                    }
                    let _ = write!(label, "{}={v}", self.slot_paths[c.slot]);
                }
            }
        }
        Explanation { result, fields, label }
    }

    /// `name@version` of every schema in the set, in merge order.
    #[must_use]
    pub fn versions(&self) -> String {
        self.versions.iter().map(|(n, v)| format!("{n}@{v}")).collect::<Vec<_>>().join(",")
    }

    /// Slots one event needs; size the scratch passed to [`Extractor::extract`] with it.
    #[must_use]
    pub fn slot_count(&self) -> usize {
        self.slot_paths.len()
    }

    /// Extracts one event from one line of text. `slots` is scratch space, reused across calls.
    ///
    /// # Errors
    /// The first failing check, in contract order.
    pub fn extract<'a>(
        &self,
        text: &'a str,
        slots: &mut Vec<Slot<'a>>,
    ) -> Result<ClickEvent<'a>, ExtractError> {
        slots.clear();
        slots.resize(self.slot_paths.len(), Slot::Absent);
        let is_object = self.trie.walk(text, slots).map_err(ExtractError::InvalidJson)?;
        if !is_object {
            return Err(ExtractError::NotObject);
        }
        if !self.queries.is_empty() {
            // General queries need the whole document; parse it again only for them.
            if let Ok(value) = serde_json::from_str::<serde_json::Value>(text) {
                for (q, slot) in &self.queries {
                    if let Some(v) = q.first_match(&value) {
                        slots[*slot] = Slot::from_value(v);
                    }
                }
            }
        }
        let slots = &mut slots[..];
        for r in &self.rejects {
            if r.when.iter().all(|c| c.holds(slots)) {
                return Err(ExtractError::Rejected {
                    reason: Arc::clone(&r.then.0),
                    schema: Arc::clone(&r.then.1),
                });
            }
        }
        let message_id = self.id(slots, &self.message_id, 0)?;
        let customer_id = self.id(slots, &self.customer_id, 1)?;
        let event_time = self.time(slots)?;
        let kind = self.classify_slots(slots);
        let mut attrs = Vec::new();
        let mut truncated = 0;
        if !self.attrs.is_empty() {
            attrs.reserve_exact(self.attrs.len());
            for (candidates, ty, max) in &self.attrs {
                let v = candidates.iter().find(|&&s| slots[s].is_present()).and_then(|&s| {
                    catalog::coerce(&slots[s], *ty, *max).ok().map(|(v, cut)| {
                        truncated += u32::from(cut);
                        v
                    })
                });
                attrs.push(v);
            }
        }
        Ok(ClickEvent { message_id, customer_id, event_time, kind, attrs, truncated })
    }

    /// The kind the classification rules give filled slots (whether or not the fields parse).
    #[must_use]
    pub fn classify_slots(&self, slots: &[Slot<'_>]) -> Kind {
        self.classify
            .iter()
            .find(|r| r.when.iter().all(|c| c.holds(slots)))
            .map_or(Kind::OTHER, |r| r.then)
    }

    /// For each attribute: its name, and the path that supplied a value with whether the value
    /// coerced to the attribute's type (`None`: no path had one). Slots as `extract` left them.
    pub fn attribute_sources<'s>(
        &'s self,
        slots: &'s [Slot<'_>],
    ) -> impl Iterator<Item = (&'s str, Option<(&'s str, bool)>)> + 's {
        self.catalog.attrs.iter().zip(&self.attrs).map(move |(spec, (candidates, ty, max))| {
            let found = candidates
                .iter()
                .find(|&&s| slots[s].is_present())
                .map(|&s| (&*self.slot_paths[s], catalog::coerce(&slots[s], *ty, *max).is_ok()));
            (&*spec.name, found)
        })
    }

    /// The set's kinds and attributes.
    #[must_use]
    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    /// The name of a kind of this set (`other` for unclassified events).
    #[must_use]
    pub fn kind_name(&self, k: Kind) -> &str {
        self.catalog.kinds.get(k.0 as usize).map_or("other", |s| &s.name)
    }

    fn id<'a>(
        &self,
        slots: &[Slot<'a>],
        candidates: &[usize],
        field: usize,
    ) -> Result<Cow<'a, str>, ExtractError> {
        let Some(&slot) = candidates.iter().find(|&&s| slots[s].is_present()) else {
            let d = Arc::clone(&self.described[field]);
            return Err(if field == 0 {
                ExtractError::MissingMessageId(d)
            } else {
                ExtractError::MissingCustomerId(d)
            });
        };
        // Cloned, not taken: a borrowed slot costs nothing, and `explain` reads the slots after.
        let id = match slots[slot].clone() {
            Slot::Str(s) if !s.is_empty() => Some(s),
            Slot::Num(n) => match n {
                Cow::Borrowed(t) => coerce::id_from_number(t),
                Cow::Owned(t) => coerce::id_from_number(&t).map(|c| Cow::Owned(c.into_owned())),
            },
            _ => None,
        };
        id.ok_or_else(|| {
            let p = Arc::clone(&self.slot_paths[slot]);
            if field == 0 { ExtractError::BadMessageId(p) } else { ExtractError::BadCustomerId(p) }
        })
    }

    fn time(&self, slots: &[Slot<'_>]) -> Result<i64, ExtractError> {
        let Some((slot, spec)) = self.event_time.iter().find(|(s, _)| slots[*s].is_present())
        else {
            return Err(ExtractError::MissingTimestamp(Arc::clone(&self.described[2])));
        };
        let value = match &slots[*slot] {
            Slot::Str(s) => TimeValue::Str(s),
            Slot::Num(n) => TimeValue::Num(n),
            Slot::Bool(_) => TimeValue::Other("a boolean"),
            Slot::Object => TimeValue::Other("an object"),
            Slot::Array => TimeValue::Other("an array"),
            Slot::Invalid => TimeValue::Other("a string with a lone surrogate escape"),
            Slot::Absent | Slot::Null => TimeValue::Other("null"),
        };
        spec.read(value).map_err(|f| ExtractError::BadTimestamp {
            path: Arc::clone(&self.slot_paths[*slot]),
            detail: f.detail,
        })
    }
}

/// The move an `[[order]]` entry asks for, in path indexes (interning the paths it names).
fn placement(
    s: &LoadedSchema,
    o: &schema::OrderRule,
    i: usize,
    paths: &mut Paths,
    errs: &mut Vec<SchemaError>,
) -> Option<order::Move<usize>> {
    let field = format!("order[{i}]");
    if !["message_id", "customer_id", "event_time"].contains(&o.field.get_ref().as_str()) {
        errs.push(s.error(
            o.field.span(),
            &format!("{field}.field"),
            "field is message_id, customer_id or event_time",
        ));
        return None;
    }
    let (anchor, after) = match (&o.before, &o.after) {
        (Some(b), None) => (b, false),
        (None, Some(a)) => (a, true),
        _ => {
            errs.push(s.error(o.path.span(), &field, "give exactly one of `before` or `after`"));
            return None;
        }
    };
    let item = paths.intern(s, &o.path, &format!("{field}.path"), errs);
    let anchor = paths.intern(s, anchor, &field, errs);
    Some(order::Move { item, anchor, after })
}

fn conditions(
    s: &LoadedSchema,
    when: &toml::Spanned<Vec<Condition>>,
    field: &str,
    paths: &mut Paths,
    errs: &mut Vec<SchemaError>,
) -> Vec<Cond> {
    if when.get_ref().is_empty() {
        errs.push(s.error(
            when.span(),
            &format!("{field}.when"),
            "a rule needs at least one condition",
        ));
    }
    let mut out = Vec::new();
    for (i, c) in when.get_ref().iter().enumerate() {
        let f = format!("{field}.when[{i}]");
        let slot = paths.intern(s, &c.path, &format!("{f}.path"), errs);
        let test = match (&c.equals, &c.one_of, c.exists) {
            (Some(v), None, None) => Test::Equals(v.clone()),
            (None, Some(v), None) if !v.is_empty() => Test::In(v.clone()),
            (None, Some(_), None) => {
                errs.push(s.error(
                    c.path.span(),
                    &f,
                    "`in = []` can never match: list at least one value",
                ));
                continue;
            }
            (None, None, Some(b)) => Test::Exists(b),
            _ => {
                errs.push(s.error(
                    c.path.span(),
                    &f,
                    "give exactly one of `equals`, `in` or `exists`",
                ));
                continue;
            }
        };
        if let Some(other) =
            out.iter().position(|o: &Cond| o.slot == slot && o.test.excludes(&test))
        {
            errs.push(s.error(
                c.path.span(),
                &f,
                format!("can never match together with {field}.when[{other}] on the same path: the rule never applies"),
            ));
        }
        out.push(Cond { slot, test });
    }
    out
}

#[cfg(test)]
mod tests;
