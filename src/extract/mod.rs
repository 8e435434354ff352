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
mod compile;
pub mod explain;
pub mod lone;
pub mod order;
pub mod path;
pub mod sample;
pub mod schema;
pub mod time;
pub mod walk;

use crate::event::{ClickEvent, Kind};
use catalog::{AttrType, Catalog};
use path::JsonPath;
use schema::SchemaErrors;
use std::borrow::Cow;
use std::fmt::Write as _;
use std::path::Path;
use std::sync::Arc;
use thiserror::Error;
use time::{TimeSpec, TimeValue};
use walk::{Slot, Trie};

/// Reasons the pipeline itself gives (schema reject rules add their own).
pub const BUILTIN_REASONS: [&str; 16] = [
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
    "path_budget",
    "future_timestamp",
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
    /// The set's general queries ran out of their node budget on this event. The language bound
    /// checked when the set compiles keeps this from happening; the budget is a second line.
    #[error("the schema set's general JSONPath queries ran out of their node budget")]
    PathBudget,
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
            ExtractError::PathBudget => "path_budget",
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
            path::run_queries(&self.queries, text, slots)
                .map_err(|path::eval::OverBudget| ExtractError::PathBudget)?;
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
            Slot::Str(s) if !s.is_empty() => Some(lone::escape_valid(s)),
            Slot::Lone(s) if !s.is_empty() => Some(Cow::Owned(s)),
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
            Slot::Lone(_) => TimeValue::Other("a string with a lone surrogate escape"),
            Slot::Absent | Slot::Null => TimeValue::Other("null"),
        };
        spec.read(value).map_err(|f| ExtractError::BadTimestamp {
            path: Arc::clone(&self.slot_paths[*slot]),
            detail: f.detail,
        })
    }
}

#[cfg(test)]
mod tests;
