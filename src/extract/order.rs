//! The merge order of a schema set, as the extractor applies it: for `clickstream schema show
//! --set`, and for any tool that must know which schema's path or rule wins.
//!
//! A pure function over parsed files. It follows [`super::Extractor::compile`]: schemas sorted
//! by (priority, name); each canonical field's candidates appended in that order, each file's
//! in the order written; a path that reads the same value as an earlier candidate (the same
//! text, or the same simple steps: `$.a` and `$['a']`) shares that candidate's slot, so it is
//! tried at its first occurrence only; reject rules in merge order; classification rules in
//! kind precedence (support call, subscribe click, subscribe hover, page view), merge order
//! within a kind. Kept apart from the compiler so that explicit path placement can extend one
//! function, and the compiler could share it.

use super::catalog::{CLASSIC_KINDS, Catalog};
use super::path::{JsonPath, Step};
use super::schema::{Condition, LoadedSchema};
use serde::Serialize;
use std::fmt::Write as _;

/// What a path reads, as the extractor tells paths apart: simple paths by their steps (one trie
/// slot each), general queries and unparsable text by their text.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum PathKey {
    /// The steps of a simple path.
    Steps(Vec<Step>),
    /// The text of any other path.
    Text(String),
}

impl PathKey {
    /// The key of a path text.
    #[must_use]
    pub fn of(text: &str) -> PathKey {
        match JsonPath::parse(text) {
            Ok(p) => match p.steps() {
                Some(s) => PathKey::Steps(s.to_vec()),
                None => PathKey::Text(text.to_owned()),
            },
            Err(_) => PathKey::Text(text.to_owned()),
        }
    }
}

/// One schema of the set, in merge order.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct SchemaEntry {
    /// Its name.
    pub name: String,
    /// Its version.
    pub version: u32,
    /// Its priority (lower first).
    pub priority: i64,
    /// Where it was read from (a file, or `NAME@VERSION` for a registered version).
    pub file: String,
}

/// A later declaration of a path already tried: it never changes the outcome.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Shadowed {
    /// The schema that declares it again.
    pub schema: String,
    /// The text it uses.
    pub path: String,
    /// Its time format (event time only); the first occurrence's format is the one applied.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub format: Option<String>,
}

/// One candidate path of a canonical field, at the place the extractor tries it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct FieldCandidate {
    /// The path.
    pub path: String,
    /// The schema that declares it first.
    pub schema: String,
    /// The time format (event time only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub format: Option<String>,
    /// Later schemas (or later entries of the same one) that declare the same path again.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub also_declared_by: Vec<Shadowed>,
}

/// One reject or classification rule, at its place in evaluation order.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct RuleEntry {
    /// The schema that holds it.
    pub schema: String,
    /// Where in the file: `reject[0]`, `classify[2]`.
    pub rule: String,
    /// The reason (reject) or kind (classify).
    pub then: String,
    /// Its conditions, as `path equals "v"`, `path in ["a", "b"]`, `path exists`.
    pub when: Vec<String>,
}

/// The merged set: what is tried, in which order, and whose it is.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct MergedSet {
    /// Schemas in merge order.
    pub schemas: Vec<SchemaEntry>,
    /// Message id candidates in the order tried.
    pub message_id: Vec<FieldCandidate>,
    /// Customer id candidates in the order tried.
    pub customer_id: Vec<FieldCandidate>,
    /// Event time candidates in the order tried.
    pub event_time: Vec<FieldCandidate>,
    /// Reject rules in evaluation order (the first match names the reason).
    pub reject: Vec<RuleEntry>,
    /// Classification rules in evaluation order (the first match gives the kind).
    pub classify: Vec<RuleEntry>,
    /// The columns a session row gets after `event_count`, in order: each kind's count, then
    /// each attribute, described.
    pub columns: Vec<ColumnEntry>,
}

/// One declared column of the session rows.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ColumnEntry {
    /// The column.
    pub column: String,
    /// `kind NAME (precedence P)` or `TYPE AGGREGATE of PATHS`.
    pub from: String,
    /// The declaring schema (none for the implicit classic kinds).
    pub schema: Option<String>,
}

/// A request that `item` be tried right before (or after) `anchor`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Move<K> {
    /// What moves.
    pub item: K,
    /// Where to.
    pub anchor: K,
    /// After the anchor rather than before it.
    pub after: bool,
}

/// Applies `moves` in order to `list` (elements named by `key`); returns the indexes of the
/// moves whose item or anchor is not in the list, which are skipped.
pub fn place<T, K: PartialEq>(
    list: &mut Vec<T>,
    key: impl Fn(&T) -> K,
    moves: &[Move<K>],
) -> Vec<usize> {
    let mut missing = Vec::new();
    for (m, mv) in moves.iter().enumerate() {
        let (Some(from), true) =
            (list.iter().position(|x| key(x) == mv.item), list.iter().any(|x| key(x) == mv.anchor))
        else {
            missing.push(m);
            continue;
        };
        if mv.item == mv.anchor {
            continue;
        }
        let x = list.remove(from);
        let at = list.iter().position(|y| key(y) == mv.anchor).unwrap_or(list.len());
        list.insert(if mv.after { at + 1 } else { at }, x);
    }
    missing
}

/// Indexes of `schemas` in merge order: by (priority, name), stable.
#[must_use]
pub fn merge_order(schemas: &[LoadedSchema]) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..schemas.len()).collect();
    idx.sort_by(|&a, &b| {
        let (a, b) = (&schemas[a].schema, &schemas[b].schema);
        (a.priority, a.name.get_ref()).cmp(&(b.priority, b.name.get_ref()))
    });
    idx
}

fn push_candidate(
    list: &mut Vec<FieldCandidate>,
    keys: &mut Vec<PathKey>,
    schema: &str,
    path: &str,
    format: Option<&str>,
) {
    let key = PathKey::of(path);
    if let Some(i) = keys.iter().position(|k| *k == key) {
        list[i].also_declared_by.push(Shadowed {
            schema: schema.to_owned(),
            path: path.to_owned(),
            format: format.map(str::to_owned),
        });
        return;
    }
    keys.push(key);
    list.push(FieldCandidate {
        path: path.to_owned(),
        schema: schema.to_owned(),
        format: format.map(str::to_owned),
        also_declared_by: Vec::new(),
    });
}

fn describe(c: &Condition) -> String {
    let p = c.path.get_ref();
    match (&c.equals, &c.one_of, c.exists) {
        (Some(v), _, _) => format!("{p} equals {v:?}"),
        (None, Some(v), _) => format!("{p} in {v:?}"),
        (None, None, Some(true)) => format!("{p} exists"),
        (None, None, Some(false)) => format!("{p} is absent"),
        (None, None, None) => format!("{p} (no test)"),
    }
}

/// The merged order of a set of parsed schema files (valid or not: an unknown kind sorts last).
#[must_use]
pub fn merged(schemas: &[LoadedSchema]) -> MergedSet {
    let mut out = MergedSet::default();
    let (mut mk, mut ck, mut tk) = (Vec::new(), Vec::new(), Vec::new());
    let mut classify: Vec<((i64, usize), RuleEntry)> = Vec::new();
    // The set's kinds in merge order (the first declaration of a name counts), or the classic
    // ones when none is declared: rules sort by their kind's (precedence, position).
    let mut kinds: Vec<(String, i64)> = Vec::new();
    for i in merge_order(schemas) {
        for k in &schemas[i].schema.kinds {
            if !kinds.iter().any(|(n, _)| n == k.name.get_ref()) {
                kinds.push((k.name.get_ref().clone(), k.precedence));
            }
        }
    }
    if kinds.is_empty() {
        kinds = CLASSIC_KINDS.iter().map(|k| (k.0.to_owned(), k.2)).collect();
    }
    let key = |name: &str| {
        kinds
            .iter()
            .position(|(n, _)| n == name)
            .map_or((i64::MAX, usize::MAX), |i| (kinds[i].1, i))
    };
    for i in merge_order(schemas) {
        let l = &schemas[i];
        let s = &l.schema;
        let name = s.name.get_ref().as_str();
        out.schemas.push(SchemaEntry {
            name: name.to_owned(),
            version: s.version,
            priority: s.priority,
            file: l.file.display().to_string(),
        });
        for p in &s.fields.message_id {
            push_candidate(&mut out.message_id, &mut mk, name, p.get_ref(), None);
        }
        for p in &s.fields.customer_id {
            push_candidate(&mut out.customer_id, &mut ck, name, p.get_ref(), None);
        }
        for t in &s.fields.event_time {
            let f = Some(t.format.get_ref().as_str());
            push_candidate(&mut out.event_time, &mut tk, name, t.path.get_ref(), f);
        }
        for (n, r) in s.reject.iter().enumerate() {
            out.reject.push(RuleEntry {
                schema: name.to_owned(),
                rule: format!("reject[{n}]"),
                then: r.reason.get_ref().clone(),
                when: r.when.get_ref().iter().map(describe).collect(),
            });
        }
        for (n, r) in s.classify.iter().enumerate() {
            classify.push((
                key(r.kind.get_ref()),
                RuleEntry {
                    schema: name.to_owned(),
                    rule: format!("classify[{n}]"),
                    then: r.kind.get_ref().clone(),
                    when: r.when.get_ref().iter().map(describe).collect(),
                },
            ));
        }
    }
    // The compiler's stable sort by kind; an unknown kind (an invalid set) goes last.
    classify.sort_by_key(|(k, _)| *k);
    out.classify = classify.into_iter().map(|(_, r)| r).collect();
    out.columns = columns(schemas);
    // Explicit placements, in merge order (the compiler refuses those it cannot apply).
    for i in merge_order(schemas) {
        for o in &schemas[i].schema.order {
            let list = match o.field.get_ref().as_str() {
                "message_id" => &mut out.message_id,
                "customer_id" => &mut out.customer_id,
                "event_time" => &mut out.event_time,
                _ => continue,
            };
            let (anchor, after) = match (&o.before, &o.after) {
                (Some(b), None) => (b, false),
                (None, Some(a)) => (a, true),
                _ => continue,
            };
            let mv = Move {
                item: PathKey::of(o.path.get_ref()),
                anchor: PathKey::of(anchor.get_ref()),
                after,
            };
            place(list, |c| PathKey::of(&c.path), &[mv]);
        }
    }
    out
}

/// The session row's declared columns, as the compiler's catalog makes them.
fn columns(schemas: &[LoadedSchema]) -> Vec<ColumnEntry> {
    let ordered: Vec<&LoadedSchema> =
        merge_order(schemas).into_iter().map(|i| &schemas[i]).collect();
    let catalog = Catalog::build(&ordered, &mut Vec::new());
    let kinds = catalog.kinds.iter().map(|k| ColumnEntry {
        column: k.column.to_string(),
        from: format!("kind {} (precedence {})", k.name, k.precedence),
        schema: k.schema.as_deref().map(str::to_owned),
    });
    let attrs = catalog.attrs.iter().map(|a| ColumnEntry {
        column: a.name.to_string(),
        from: format!("{} {} of {}", a.ty.name(), a.aggregate.name(), a.paths.join(", ")),
        schema: Some(a.schema.to_string()),
    });
    kinds.chain(attrs).collect()
}

impl MergedSet {
    /// `name@version` of every schema, in merge order, comma-separated.
    #[must_use]
    pub fn versions(&self) -> String {
        self.schemas
            .iter()
            .map(|s| format!("{}@{}", s.name, s.version))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The set as text for a terminal.
    #[must_use]
    pub fn to_text(&self) -> String {
        let mut o = String::new();
        let _ = writeln!(o, "schemas in merge order (priority, name):");
        for (i, s) in self.schemas.iter().enumerate() {
            let at = format!("{}@{}", s.name, s.version);
            let _ = writeln!(o, "  {:>2}. {at:<24} priority {:<6} {}", i + 1, s.priority, s.file);
        }
        for (field, list) in [
            ("message_id", &self.message_id),
            ("customer_id", &self.customer_id),
            ("event_time", &self.event_time),
        ] {
            let _ =
                writeln!(o, "\n{field}: candidates in the order tried (the first present wins):");
            for (i, c) in list.iter().enumerate() {
                let format =
                    c.format.as_deref().map(|f| format!(" format {f}")).unwrap_or_default();
                let _ = writeln!(o, "  {:>2}. {:<32} {:<12}{format}", i + 1, c.path, c.schema);
                for d in &c.also_declared_by {
                    let format =
                        d.format.as_deref().map(|f| format!(" format {f}")).unwrap_or_default();
                    let _ = writeln!(
                        o,
                        "      also declared by {} ({}{format}): never tried again",
                        d.schema, d.path
                    );
                }
            }
        }
        let _ = writeln!(o, "\nsession row columns after event_count:");
        for c in &self.columns {
            let by = c.schema.as_deref().unwrap_or("(classic: no schema declares kinds)");
            let _ = writeln!(o, "  {:<20} {:<48} {by}", c.column, c.from);
        }
        for (title, rules) in [
            ("reject rules in evaluation order (the first match names the reason)", &self.reject),
            ("classify rules in evaluation order (the first match gives the kind)", &self.classify),
        ] {
            let _ = writeln!(o, "\n{title}:");
            if rules.is_empty() {
                let _ = writeln!(o, "  (none)");
            }
            for (i, r) in rules.iter().enumerate() {
                let _ = writeln!(
                    o,
                    "  {:>2}. {:<16} {}:{}  when {}",
                    i + 1,
                    r.then,
                    r.schema,
                    r.rule,
                    r.when.join(" and ")
                );
            }
        }
        o
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::extract::Extractor;
    use crate::extract::schema::parse_bytes;
    use crate::extract::walk::Slot;
    use std::path::Path;

    fn load(name: &str, text: &str) -> LoadedSchema {
        parse_bytes(Path::new(&format!("{name}.toml")), text.as_bytes().to_vec()).unwrap()
    }

    fn set() -> Vec<LoadedSchema> {
        vec![
            // Written first, merged last: priority 50 > 10.
            load(
                "late",
                r#"name = "late"
version = 3
priority = 50
[fields]
message_id = ['$.id', '$.mid']
customer_id = ['$.c', "$['user'].id"]
event_time = [{ path = '$.t', format = "epoch" }, { path = '$.ts', format = "epoch_millis" }]
[[reject]]
reason = "test_event"
when = [{ path = '$.test', exists = true }]
[[classify]]
kind = "page_view"
when = [{ path = '$.k', equals = "pv" }]
[[classify]]
kind = "support_call"
when = [{ path = '$.k', equals = "call" }]
"#,
            ),
            load(
                "early",
                r#"name = "early"
version = 1
priority = 10
[fields]
message_id = ['$.mid']
customer_id = ['$.user.id']
event_time = [{ path = '$.ts', format = "iso8601" }]
[[reject]]
reason = "bot"
when = [{ path = '$.bot', equals = "yes" }]
[[classify]]
kind = "page_view"
when = [{ path = '$.k', in = ["view", "screen"] }]
"#,
            ),
            // Same priority as `late`: ties go by name, so `a-tie` comes before it.
            load(
                "a-tie",
                r#"name = "a-tie"
version = 2
priority = 50
[fields]
customer_id = ['$.c']
"#,
            ),
        ]
    }

    #[test]
    fn order_is_priority_then_name_and_a_repeated_path_keeps_its_first_place() {
        let m = merged(&set());
        assert_eq!(m.versions(), "early@1, a-tie@2, late@3");
        let paths = |l: &[FieldCandidate]| {
            l.iter().map(|c| format!("{} {}", c.path, c.schema)).collect::<Vec<_>>()
        };
        assert_eq!(paths(&m.message_id), ["$.mid early", "$.id late"]);
        assert_eq!(m.message_id[0].also_declared_by[0].schema, "late");
        assert_eq!(paths(&m.customer_id), ["$.user.id early", "$.c a-tie"]);
        // `$['user'].id` reads what `$.user.id` reads: one slot, tried at its first place.
        assert_eq!(m.customer_id[0].also_declared_by[0].path, "$['user'].id");
        assert_eq!(m.customer_id[1].also_declared_by[0].schema, "late");
        assert_eq!(paths(&m.event_time), ["$.ts early", "$.t late"]);
        assert_eq!(m.event_time[0].format.as_deref(), Some("iso8601"));
        assert_eq!(m.event_time[0].also_declared_by[0].format.as_deref(), Some("epoch_millis"));
        let rules = |l: &[RuleEntry]| {
            l.iter().map(|r| format!("{} {}:{}", r.then, r.schema, r.rule)).collect::<Vec<_>>()
        };
        assert_eq!(rules(&m.reject), ["bot early:reject[0]", "test_event late:reject[0]"]);
        assert_eq!(
            rules(&m.classify),
            [
                "support_call late:classify[1]",
                "page_view early:classify[0]",
                "page_view late:classify[0]"
            ]
        );
        let text = m.to_text();
        assert!(text.contains("also declared by late ($.ts format epoch_millis)"), "{text}");
    }

    /// The order computed here is the one the extractor applies: an event carrying two
    /// candidates takes the earlier one's value, and the first matching rule wins.
    #[test]
    fn the_extractor_applies_this_order() {
        let schemas = set();
        let m = merged(&schemas);
        let x = Extractor::compile(schemas).unwrap();
        let mut slots: Vec<Slot<'_>> = Vec::new();
        // Both message ids and both customer ids present: the first candidates win.
        let line = r#"{"id":"from-id","mid":"from-mid","c":"from-c","user":{"id":"from-user"},"ts":"2024-03-05T10:15:30Z","t":1709633731,"k":"call"}"#;
        let ev = x.extract(line, &mut slots).unwrap();
        assert_eq!(ev.message_id, format!("from-{}", &m.message_id[0].path[2..]));
        assert_eq!(ev.customer_id, "from-user");
        assert_eq!(m.customer_id[0].path, "$.user.id");
        // `$.ts` is read as iso8601 (its first declaration), not epoch_millis.
        assert_eq!(ev.event_time, 1_709_633_730_000);
        assert_eq!(x.kind_name(ev.kind), m.classify[0].then);
        // Both reject rules match: the first in order names the reason.
        let line = r#"{"bot":"yes","test":1,"mid":"m","c":"c","ts":"2024-03-05T10:15:30Z"}"#;
        let err = x.extract(line, &mut slots).unwrap_err();
        assert_eq!(err.reason(), m.reject[0].then);
    }

    #[test]
    fn the_row_columns_follow_the_declared_kinds_and_attributes() {
        let load = |name: &str, text: &str| {
            parse_bytes(Path::new(name), text.as_bytes().to_vec()).unwrap()
        };
        let plain = load("a.toml", "name = \"a\"\nversion = 1\n[fields]\ncustomer_id = ['$.c']\n");
        let classic: Vec<String> =
            merged(&[plain]).columns.iter().map(|c| c.column.clone()).collect();
        assert_eq!(
            classic,
            ["page_views", "subscribe_hovers", "subscribe_clicks", "support_calls"]
        );
        let declared = load(
            "b.toml",
            "name = \"b\"\nversion = 1\n[[kinds]]\nname = \"play\"\ncolumn = \"plays\"\n[[attributes]]\nname = \"os\"\npaths = ['$.os']\naggregate = \"last\"\n",
        );
        let set = merged(&[declared]);
        let cols: Vec<(&str, &str)> =
            set.columns.iter().map(|c| (c.column.as_str(), c.from.as_str())).collect();
        assert_eq!(cols, [("plays", "kind play (precedence 100)"), ("os", "string last of $.os")]);
        assert!(set.to_text().contains("session row columns after event_count:\n  plays"));
    }
}
