//! What a session row holds, as the schema set declares it: the kinds counted and the
//! attributes carried from events into their session.
//!
//! Kinds and attributes are data. Any schema of a set may declare them; a name declared by two
//! schemas must be declared the same way. A set that declares no kind at all gets the four
//! classic ones (`support_call`, `subscribe_click`, `subscribe_hover`, `page_view`), so that
//! registries written before kinds were data keep their rows.

use super::schema::{AttributeDecl, KindDecl, LoadedSchema, SchemaError};
use crate::event::AttrValue;
use std::borrow::Cow;
use std::sync::Arc;

/// Most kinds a set may declare.
pub const MAX_KINDS: usize = 64;
/// Most attributes a set may declare.
pub const MAX_ATTRIBUTES: usize = 32;
/// Bytes kept of a string value when the attribute does not say.
pub const DEFAULT_MAX_BYTES: u32 = 128;
/// Largest `max_bytes` an attribute may declare.
pub const MAX_MAX_BYTES: u32 = 1024;
/// Distinct values a `distinct_count` attribute remembers per session; the count stops there.
pub const MAX_DISTINCT: usize = 256;

/// Columns every session row has; kinds and attributes may not take these names.
pub const FIXED_COLUMNS: [&str; 6] =
    ["customer_id", "session_start", "session_end", "duration_ms", "event_count", "schema_sets"];

/// The classic kinds, in column order: (name, column, precedence, description).
pub const CLASSIC_KINDS: [(&str, &str, i64, &str); 4] = [
    ("page_view", "page_views", 40, "A page or screen view."),
    ("subscribe_hover", "subscribe_hovers", 30, "A hover over the subscribe button."),
    ("subscribe_click", "subscribe_clicks", 20, "A click on the subscribe button."),
    ("support_call", "support_calls", 10, "A support call (phone, IVR, call-center bridge)."),
];

/// One declared kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KindSpec {
    /// The name rules use.
    pub name: Arc<str>,
    /// Its count column.
    pub column: Arc<str>,
    /// Lower wins when rules of several kinds match.
    pub precedence: i64,
    /// Free text.
    pub description: String,
    /// The column's previous name.
    pub renamed_from: Option<Arc<str>>,
    /// The schema that declared it (`None` for the implicit classic kinds).
    pub schema: Option<Arc<str>>,
}

/// The type an attribute's values are coerced to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum AttrType {
    /// Text; numbers and booleans are kept as their JSON text.
    String,
    /// A 64-bit integer; integral strings are read too.
    Integer,
    /// A double; numeric strings are read too.
    Number,
    /// `true`/`false`, also as strings.
    Boolean,
}

impl AttrType {
    fn parse(s: &str) -> Option<AttrType> {
        Some(match s {
            "string" => AttrType::String,
            "integer" => AttrType::Integer,
            "number" => AttrType::Number,
            "boolean" => AttrType::Boolean,
            _ => return None,
        })
    }

    /// The name used in schema files.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            AttrType::String => "string",
            AttrType::Integer => "integer",
            AttrType::Number => "number",
            AttrType::Boolean => "boolean",
        }
    }
}

/// How an attribute's values fold into one per session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Aggregate {
    /// The value of the earliest event (event time; ties: the earlier arrival).
    First,
    /// The value of the latest event (event time; ties: the later arrival).
    Last,
    /// How many different values (up to [`MAX_DISTINCT`]).
    DistinctCount,
    /// The smallest value (strings: byte order).
    Min,
    /// The largest value.
    Max,
    /// How many events had a value.
    CountPresent,
}

impl Aggregate {
    /// Parses a schema-file aggregate name.
    #[must_use]
    pub fn parse(s: &str) -> Option<Aggregate> {
        Some(match s {
            "first" => Aggregate::First,
            "last" => Aggregate::Last,
            "distinct_count" => Aggregate::DistinctCount,
            "min" => Aggregate::Min,
            "max" => Aggregate::Max,
            "count_present" => Aggregate::CountPresent,
            _ => return None,
        })
    }

    /// The name used in schema files.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Aggregate::First => "first",
            Aggregate::Last => "last",
            Aggregate::DistinctCount => "distinct_count",
            Aggregate::Min => "min",
            Aggregate::Max => "max",
            Aggregate::CountPresent => "count_present",
        }
    }
}

/// One declared attribute.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttrSpec {
    /// Its output column.
    pub name: Arc<str>,
    /// Candidate paths as written, in order.
    pub paths: Vec<Arc<str>>,
    /// The values' type.
    pub ty: AttrType,
    /// The fold.
    pub aggregate: Aggregate,
    /// Longest string value kept.
    pub max_bytes: u32,
    /// Free text.
    pub description: String,
    /// The column's previous name.
    pub renamed_from: Option<Arc<str>>,
    /// The schema that declared it.
    pub schema: Arc<str>,
}

impl AttrSpec {
    /// The type of the output column.
    #[must_use]
    pub fn column_type(&self) -> AttrType {
        match self.aggregate {
            Aggregate::DistinctCount | Aggregate::CountPresent => AttrType::Integer,
            _ => self.ty,
        }
    }

    /// What state may key on: a reload that changes any of these starts the attribute afresh.
    #[must_use]
    pub fn identity(&self) -> String {
        format!("{}:{}:{}", self.name, self.ty.name(), self.aggregate.name())
    }
}

/// Kinds and attributes of a set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Catalog {
    /// Kinds in column order.
    pub kinds: Vec<KindSpec>,
    /// Attributes in column order.
    pub attrs: Vec<AttrSpec>,
}

impl Catalog {
    /// The classic four kinds and no attribute.
    #[must_use]
    pub fn classic() -> Catalog {
        Catalog {
            kinds: CLASSIC_KINDS
                .iter()
                .map(|&(name, column, precedence, description)| KindSpec {
                    name: name.into(),
                    column: column.into(),
                    precedence,
                    description: description.to_owned(),
                    renamed_from: None,
                    schema: None,
                })
                .collect(),
            attrs: Vec::new(),
        }
    }

    /// The index of kind `name`.
    #[must_use]
    pub fn kind(&self, name: &str) -> Option<usize> {
        self.kinds.iter().position(|k| &*k.name == name)
    }

    /// Collects the declarations of `schemas` (already in merge order), reporting every
    /// problem.
    pub fn build(schemas: &[&LoadedSchema], errs: &mut Vec<SchemaError>) -> Catalog {
        let mut kinds: Vec<KindSpec> = Vec::new();
        let mut attrs: Vec<AttrSpec> = Vec::new();
        let mut columns: Vec<(Arc<str>, String)> = Vec::new();
        for s in schemas {
            let owner: Arc<str> = Arc::from(s.schema.name.get_ref().as_str());
            for (i, k) in s.schema.kinds.iter().enumerate() {
                let field = format!("kinds[{i}]");
                if let Some(spec) = kind(s, k, &field, &owner, errs) {
                    match kinds.iter().find(|o| o.name == spec.name) {
                        Some(o) if same_kind(o, &spec) => {}
                        Some(o) => errs.push(s.error(
                            k.name.span(),
                            &format!("{field}.name"),
                            format!(
                                "kind `{}` is also declared by schema {} with another column or precedence: declare it once, or the same way",
                                spec.name,
                                o.schema.as_deref().unwrap_or("?")
                            ),
                        )),
                        None => {
                            claim(s, &mut columns, &spec.column, k.column.span(), &field, errs);
                            kinds.push(spec);
                        }
                    }
                }
            }
            for (i, a) in s.schema.attributes.iter().enumerate() {
                let field = format!("attributes[{i}]");
                if let Some(spec) = attribute(s, a, &field, &owner, errs) {
                    match attrs.iter().find(|o| o.name == spec.name) {
                        Some(o) if o.ty == spec.ty && o.aggregate == spec.aggregate && o.paths == spec.paths => {}
                        Some(o) => errs.push(s.error(
                            a.name.span(),
                            &format!("{field}.name"),
                            format!(
                                "attribute `{}` is also declared by schema {} differently: one column has one declaration",
                                spec.name, o.schema
                            ),
                        )),
                        None => {
                            claim(s, &mut columns, &spec.name, a.name.span(), &field, errs);
                            attrs.push(spec);
                        }
                    }
                }
            }
        }
        let first = schemas.first().copied();
        if kinds.len() > MAX_KINDS
            && let Some(s) = first
        {
            errs.push(s.error(
                0..0,
                "kinds",
                format!("the set declares {} kinds; at most {MAX_KINDS}", kinds.len()),
            ));
        }
        if attrs.len() > MAX_ATTRIBUTES
            && let Some(s) = first
        {
            errs.push(s.error(
                0..0,
                "attributes",
                format!(
                    "the set declares {} attributes; at most {MAX_ATTRIBUTES}, since each costs memory in every open session",
                    attrs.len()
                ),
            ));
        }
        if kinds.is_empty() {
            let classic = Catalog::classic();
            for k in &classic.kinds {
                if let Some((_, by)) = columns.iter().find(|(c, _)| *c == k.column)
                    && let Some(s) = first
                {
                    errs.push(s.error(
                        0..0,
                        "attributes",
                        format!(
                            "{by} takes the column `{}` of the classic kind `{}`, which this set has because it declares no kinds: rename the attribute",
                            k.column, k.name
                        ),
                    ));
                }
            }
            kinds = classic.kinds;
        }
        Catalog { kinds, attrs }
    }
}

fn same_kind(a: &KindSpec, b: &KindSpec) -> bool {
    a.column == b.column && a.precedence == b.precedence && a.renamed_from == b.renamed_from
}

fn snake(s: &str) -> bool {
    s.starts_with(|c: char| c.is_ascii_lowercase())
        && s.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && s.len() <= 64
}

fn claim(
    s: &LoadedSchema,
    columns: &mut Vec<(Arc<str>, String)>,
    column: &Arc<str>,
    span: std::ops::Range<usize>,
    field: &str,
    errs: &mut Vec<SchemaError>,
) {
    let by = format!("{}:{field}", s.file.display());
    if FIXED_COLUMNS.contains(&&**column) {
        errs.push(s.error(
            span,
            field,
            format!("`{column}` is a column every session row has already: pick another name"),
        ));
    } else if let Some((_, other)) = columns.iter().find(|(c, _)| c == column) {
        errs.push(s.error(span, field, format!("column `{column}` is also declared by {other}")));
    } else {
        columns.push((Arc::clone(column), by));
    }
}

fn renamed(
    s: &LoadedSchema,
    r: Option<&toml::Spanned<String>>,
    field: &str,
    errs: &mut Vec<SchemaError>,
) -> Option<Arc<str>> {
    let r = r?;
    if !snake(r.get_ref()) {
        errs.push(s.error(
            r.span(),
            &format!("{field}.renamed_from"),
            "a column name is snake_case: a lowercase letter, then lowercase letters, digits and `_`",
        ));
    }
    Some(Arc::from(r.get_ref().as_str()))
}

fn kind(
    s: &LoadedSchema,
    k: &KindDecl,
    field: &str,
    owner: &Arc<str>,
    errs: &mut Vec<SchemaError>,
) -> Option<KindSpec> {
    let mut ok = true;
    for (what, v) in [("name", &k.name), ("column", &k.column)] {
        if !snake(v.get_ref()) {
            errs.push(s.error(
                v.span(),
                &format!("{field}.{what}"),
                "snake_case only: a lowercase letter, then lowercase letters, digits and `_` (at most 64)",
            ));
            ok = false;
        }
    }
    if k.name.get_ref() == "other" {
        errs.push(s.error(
            k.name.span(),
            &format!("{field}.name"),
            "`other` is what unclassified events are: pick another name",
        ));
        ok = false;
    }
    let renamed_from = renamed(s, k.renamed_from.as_ref(), field, errs);
    ok.then(|| KindSpec {
        name: Arc::from(k.name.get_ref().as_str()),
        column: Arc::from(k.column.get_ref().as_str()),
        precedence: k.precedence,
        description: k.description.clone(),
        renamed_from,
        schema: Some(Arc::clone(owner)),
    })
}

fn attribute(
    s: &LoadedSchema,
    a: &AttributeDecl,
    field: &str,
    owner: &Arc<str>,
    errs: &mut Vec<SchemaError>,
) -> Option<AttrSpec> {
    let mut ok = true;
    if !snake(a.name.get_ref()) {
        errs.push(s.error(
            a.name.span(),
            &format!("{field}.name"),
            "an attribute's name is its column: snake_case, a lowercase letter first (at most 64)",
        ));
        ok = false;
    }
    if a.paths.get_ref().is_empty() {
        errs.push(s.error(a.paths.span(), &format!("{field}.paths"), "give at least one path"));
        ok = false;
    }
    let ty = AttrType::parse(a.kind.get_ref());
    if ty.is_none() {
        errs.push(s.error(
            a.kind.span(),
            &format!("{field}.type"),
            format!("unknown type `{}`: use string, integer, number or boolean", a.kind.get_ref()),
        ));
    }
    let aggregate = Aggregate::parse(a.aggregate.get_ref());
    if aggregate.is_none() {
        errs.push(s.error(
            a.aggregate.span(),
            &format!("{field}.aggregate"),
            format!(
                "unknown aggregate `{}`: use first, last, distinct_count, min, max or count_present",
                a.aggregate.get_ref()
            ),
        ));
    }
    if ty == Some(AttrType::Boolean) && matches!(aggregate, Some(Aggregate::Min | Aggregate::Max)) {
        errs.push(s.error(
            a.aggregate.span(),
            &format!("{field}.aggregate"),
            "min and max of a boolean: use count_present with a condition-free path, or first/last",
        ));
        ok = false;
    }
    let max_bytes = match &a.max_bytes {
        Some(m) if !(1..=MAX_MAX_BYTES).contains(m.get_ref()) => {
            errs.push(s.error(
                m.span(),
                &format!("{field}.max_bytes"),
                format!("max_bytes is 1 to {MAX_MAX_BYTES}"),
            ));
            ok = false;
            DEFAULT_MAX_BYTES
        }
        Some(m) => *m.get_ref(),
        None => DEFAULT_MAX_BYTES,
    };
    let renamed_from = renamed(s, a.renamed_from.as_ref(), field, errs);
    let (Some(ty), Some(aggregate)) = (ty, aggregate) else { return None };
    ok.then(|| AttrSpec {
        name: Arc::from(a.name.get_ref().as_str()),
        paths: a.paths.get_ref().iter().map(|p| Arc::from(p.get_ref().as_str())).collect(),
        ty,
        aggregate,
        max_bytes,
        description: a.description.clone(),
        renamed_from,
        schema: Arc::clone(owner),
    })
}

/// Why a present value is not usable as an attribute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NotCoercible;

/// Coerces a present JSON leaf (`slot`) to `ty`. Strings longer than `max_bytes` are cut at a
/// character boundary; the flag says so.
///
/// # Errors
/// The value is not of a form the type reads (an object for a string, text for an integer, …).
pub fn coerce<'a>(
    slot: &super::walk::Slot<'a>,
    ty: AttrType,
    max_bytes: u32,
) -> Result<(AttrValue<'a>, bool), NotCoercible> {
    use super::walk::Slot;
    let v = match (ty, slot) {
        (AttrType::String, Slot::Str(s)) => {
            return Ok(cut(s.clone(), max_bytes as usize));
        }
        (AttrType::String, Slot::Num(n)) => return Ok(cut(n.clone(), max_bytes as usize)),
        (AttrType::String, Slot::Bool(b)) => {
            AttrValue::Str(Cow::Borrowed(if *b { "true" } else { "false" }))
        }
        (AttrType::Integer, Slot::Num(t) | Slot::Str(t)) => {
            AttrValue::Int(t.trim().parse::<i64>().map_err(|_| NotCoercible)?)
        }
        (AttrType::Number, Slot::Num(t) | Slot::Str(t)) => {
            let x = t.trim().parse::<f64>().map_err(|_| NotCoercible)?;
            if !x.is_finite() {
                return Err(NotCoercible);
            }
            // One zero: -0.0 and 0.0 are the same value to min, max and distinct.
            AttrValue::Num(if x == 0.0 { 0.0 } else { x })
        }
        (AttrType::Boolean, Slot::Bool(b)) => AttrValue::Bool(*b),
        (AttrType::Boolean, Slot::Str(s)) => match &**s {
            "true" => AttrValue::Bool(true),
            "false" => AttrValue::Bool(false),
            _ => return Err(NotCoercible),
        },
        _ => return Err(NotCoercible),
    };
    Ok((v, false))
}

fn cut(s: Cow<'_, str>, max: usize) -> (AttrValue<'_>, bool) {
    if s.len() <= max {
        return (AttrValue::Str(s), false);
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    let v = match s {
        Cow::Borrowed(b) => Cow::Borrowed(&b[..end]),
        Cow::Owned(mut o) => {
            o.truncate(end);
            Cow::Owned(o)
        }
    };
    (AttrValue::Str(v), true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::extract::walk::Slot;

    #[test]
    fn values_coerce_to_their_declared_type() {
        let s = |t: &'static str| Slot::Str(Cow::Borrowed(t));
        let n = |t: &'static str| Slot::Num(Cow::Borrowed(t));
        let ok = |slot: Slot<'static>, ty| coerce(&slot, ty, 8).map(|(v, _)| v);
        assert_eq!(ok(s("ios"), AttrType::String), Ok(AttrValue::Str("ios".into())));
        assert_eq!(ok(n("12"), AttrType::String), Ok(AttrValue::Str("12".into())));
        assert_eq!(ok(Slot::Bool(true), AttrType::String), Ok(AttrValue::Str("true".into())));
        assert_eq!(ok(n("12"), AttrType::Integer), Ok(AttrValue::Int(12)));
        assert_eq!(ok(s("-3"), AttrType::Integer), Ok(AttrValue::Int(-3)));
        assert_eq!(ok(n("1.5"), AttrType::Integer), Err(NotCoercible));
        assert_eq!(ok(n("99999999999999999999"), AttrType::Integer), Err(NotCoercible));
        assert_eq!(ok(n("1.5e3"), AttrType::Number), Ok(AttrValue::Num(1500.0)));
        assert_eq!(ok(n("-0.0"), AttrType::Number), Ok(AttrValue::Num(0.0)));
        assert_eq!(ok(s("NaN"), AttrType::Number), Err(NotCoercible));
        assert_eq!(ok(n("1e999"), AttrType::Number), Err(NotCoercible));
        assert_eq!(ok(s("false"), AttrType::Boolean), Ok(AttrValue::Bool(false)));
        assert_eq!(ok(s("yes"), AttrType::Boolean), Err(NotCoercible));
        assert_eq!(ok(Slot::Object, AttrType::String), Err(NotCoercible));
    }

    #[test]
    fn long_strings_are_cut_on_a_character_boundary() {
        let slot = Slot::Str(Cow::Borrowed("abcdéfgh"));
        let (v, cut) = coerce(&slot, AttrType::String, 5).unwrap();
        assert_eq!((v, cut), (AttrValue::Str("abcd".into()), true));
        let (v, cut) = coerce(&slot, AttrType::String, 6).unwrap();
        assert_eq!((v, cut), (AttrValue::Str("abcdé".into()), true));
        let (_, cut) = coerce(&slot, AttrType::String, 9).unwrap();
        assert!(!cut);
    }
}
