//! Compatibility of a new schema version with the previous one, for the registry.
//!
//! A change is *breaking* when it can silently change the aggregates: a field the sessions
//! need (message id, customer id, event time) loses a candidate path or changes its time
//! format, or, on a sample, events move between kinds, get another customer id or time, or are
//! newly rejected. Rule changes without a sample cannot be judged and are refused too, with a
//! hint to give one. Pure: both versions and the sample come in as values.

use super::schema::{ClassifyRule, Condition, LoadedSchema, RejectRule, SchemaFile, TimeField};
use super::walk::Slot;
use super::{ExtractError, Extractor};
use crate::decode;
use crate::event::ClickEvent;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// How serious a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    /// Refused unless forced.
    Breaking,
    /// Not a change between versions, but a risk of registering (the registry would drop the
    /// shipped producers, or the sample's own events are mostly rejected): refused unless
    /// forced.
    Warning,
    /// Reported, not refused.
    Info,
}

impl Severity {
    /// `breaking` or `info`.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Severity::Breaking => "breaking",
            Severity::Warning => "warning",
            Severity::Info => "info",
        }
    }
}

/// One difference between two versions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finding {
    /// Breaking or informational.
    pub severity: Severity,
    /// The field or rule concerned (`fields.customer_id`, `classify`, `sample`).
    pub field: String,
    /// What changed and why it matters, with a hint.
    pub message: String,
}

impl Finding {
    fn breaking(field: &str, message: String) -> Finding {
        Finding { severity: Severity::Breaking, field: field.to_owned(), message }
    }

    fn info(field: &str, message: String) -> Finding {
        Finding { severity: Severity::Info, field: field.to_owned(), message }
    }
}

/// Whether any finding needs `--force` (breaking or a warning).
#[must_use]
pub fn needs_force(findings: &[Finding]) -> bool {
    findings.iter().any(|f| f.severity != Severity::Info)
}

/// Whether any finding is breaking.
#[must_use]
pub fn is_breaking(findings: &[Finding]) -> bool {
    findings.iter().any(|f| f.severity == Severity::Breaking)
}

fn paths(list: &[toml::Spanned<String>]) -> Vec<&str> {
    list.iter().map(|p| p.get_ref().as_str()).collect()
}

/// A time candidate as written: `epoch`, or `epoch (unit = "us", rounding = "floor")`; and as
/// an inline table to paste back.
fn written(t: &TimeField) -> (String, String) {
    let keys: Vec<String> = [
        ("unit", &t.unit),
        ("numbers", &t.numbers),
        ("text", &t.text),
        ("rounding", &t.rounding),
        ("zone", &t.zone),
    ]
    .into_iter()
    .filter_map(|(k, v)| v.as_ref().map(|v| format!("{k} = \"{}\"", v.get_ref())))
    .collect();
    let format = t.format.get_ref();
    let table = std::iter::once(format!("path = '{}', format = \"{format}\"", t.path.get_ref()))
        .chain(keys.iter().cloned())
        .collect::<Vec<_>>()
        .join(", ");
    let short =
        if keys.is_empty() { format.clone() } else { format!("{format} ({})", keys.join(", ")) };
    (short, format!("{{ {table} }}"))
}

/// What a time candidate means, defaults filled in: two candidates read every value alike
/// exactly when these are equal.
fn effective(t: &TimeField) -> [String; 6] {
    let get = |k: &Option<toml::Spanned<String>>, default: &str| {
        k.as_ref().map_or(default.to_owned(), |v| v.get_ref().clone())
    };
    let format = t.format.get_ref().as_str();
    let (family, alias) = match format {
        "epoch_seconds" => ("epoch", Some("s")),
        "epoch_millis" => ("epoch", Some("ms")),
        "epoch_micros" => ("epoch", Some("us")),
        "epoch_nanos" => ("epoch", Some("ns")),
        f => (f, None),
    };
    let iso = family == "iso8601";
    let text = get(&t.text, "strict");
    [
        family.to_owned(),
        alias.map_or_else(|| get(&t.unit, if iso { "" } else { "auto" }), str::to_owned),
        get(&t.numbers, "fractions"),
        if text == "digits" { "strict".into() } else { text },
        get(&t.rounding, if iso { "floor" } else { "half_even" }),
        get(&t.zone, ""),
    ]
}

/// A new schema `name` joining the set of `others` (their ids) without a sample to judge it on.
#[must_use]
pub fn joining_finding(name: &str, priority: i64, others: &[String]) -> Finding {
    Finding::breaking(
        "name",
        format!(
            "adds schema {name} (priority {priority}) to the set in force ({}): its reject and classify rules apply to every event, and its paths for ids and time are merged with theirs by priority; without a sample there is no telling which events it moves: give --sample EVENTS to check it on real events",
            others.join(", ")
        ),
    )
}

/// A change that may move an event's id, customer or time to another path: judged on the
/// sample when there is one (its diff shows the events that moved), refused without one.
fn precedence_finding(field: &str, what: &str, has_sample: bool) -> Finding {
    if has_sample {
        Finding::info(field, format!("{what} (judged on the sample)"))
    } else {
        Finding::breaking(
            field,
            format!(
                "{what}; without a sample there is no telling which events: give --sample EVENTS to check it on real events"
            ),
        )
    }
}

/// Paths added to a field's candidates: one appended after the old ones only fills events
/// that had none of them (dead-lettered before), but one put ahead of an old path takes the
/// value of every event that carries both.
fn path_added_findings(
    key: &str,
    op: &[&str],
    np: &[&str],
    has_sample: bool,
    out: &mut Vec<Finding>,
) {
    let last_old = np.iter().rposition(|p| op.contains(p));
    for (i, p) in np.iter().enumerate().filter(|(_, p)| !op.contains(p)) {
        match last_old {
            Some(last) if i < last => out.push(precedence_finding(
                key,
                &format!(
                    "adds path {p} ahead of {}: events that carry both take their value from it",
                    np[last]
                ),
                has_sample,
            )),
            _ => out.push(Finding::info(key, format!("adds path {p}"))),
        }
    }
}

/// A schema's event-time candidate paths, in order.
fn time_paths(s: &super::schema::SchemaFile) -> Vec<&str> {
    s.fields.event_time.iter().map(|t| t.path.get_ref().as_str()).collect()
}

const ID_FIELDS: [(&str, &str); 2] = [
    ("message_id", "duplicates are recognised by it"),
    ("customer_id", "sessions are kept per customer"),
];

/// Event-time candidates: a path dropped, or read otherwise, is breaking.
fn time_findings(
    o: &super::schema::SchemaFile,
    n: &super::schema::SchemaFile,
    out: &mut Vec<Finding>,
) {
    let times =
        |s: &super::schema::SchemaFile| -> BTreeMap<String, ((String, String), [String; 6])> {
            s.fields
                .event_time
                .iter()
                .map(|t| (t.path.get_ref().clone(), (written(t), effective(t))))
                .collect()
        };
    let (ot, nt) = (times(o), times(n));
    if !ot.is_empty() && nt.is_empty() {
        out.push(Finding::breaking(
            "fields.event_time",
            "removes event_time, which the aggregates use (sessions are cut in event time)".into(),
        ));
    } else {
        for (p, ((f, table), fe)) in &ot {
            match nt.get(p) {
                None => out.push(Finding::breaking(
                    "fields.event_time",
                    format!(
                        "drops path {p} without keeping it as an alias: events that still send it would be dead-lettered; keep {table} as a fallback"
                    ),
                )),
                Some(((g, _), ge)) if ge != fe => out.push(Finding::breaking(
                    "fields.event_time",
                    format!("retypes {p} from {f} to {g}: the same values would mean other times, or be refused"),
                )),
                Some(((g, _), _)) if g != f => out.push(Finding::info(
                    "fields.event_time",
                    format!("rewrites {p} from {f} to {g}, which reads every value alike"),
                )),
                Some(_) => {}
            }
        }
    }
}

/// Field-level checks, which need no sample.
#[must_use]
pub fn static_findings(old: &LoadedSchema, new: &LoadedSchema, has_sample: bool) -> Vec<Finding> {
    let (o, n) = (&old.schema, &new.schema);
    let mut out = Vec::new();
    for (field, why) in ID_FIELDS {
        let (op, np) = match field {
            "message_id" => (paths(&o.fields.message_id), paths(&n.fields.message_id)),
            _ => (paths(&o.fields.customer_id), paths(&n.fields.customer_id)),
        };
        let key = format!("fields.{field}");
        if !op.is_empty() && np.is_empty() {
            out.push(Finding::breaking(
                &key,
                format!("removes {field}, which the aggregates use ({why})"),
            ));
            continue;
        }
        for p in op.iter().filter(|p| !np.contains(p)) {
            out.push(Finding::breaking(
                &key,
                format!(
                    "drops path {p} without keeping it as an alias: events that still send it would be dead-lettered; a rename keeps the old path as a fallback, e.g. {field} = ['$.new', '{p}'] (judged on a sample: --sample EVENTS), or {field} = ['{p}', '$.new'] (no sample needed)"
                ),
            ));
        }
        if op.iter().all(|p| np.contains(p)) && np.iter().filter(|p| op.contains(p)).ne(op.iter()) {
            out.push(precedence_finding(
                &key,
                "changes the order of the candidate paths: an event carrying several of them takes its value from another path",
                has_sample,
            ));
        }
        path_added_findings(&key, &op, &np, has_sample, &mut out);
    }
    time_findings(o, n, &mut out);
    let (ot, nt) = (time_paths(o), time_paths(n));
    if ot.iter().all(|p| nt.contains(p)) && nt.iter().filter(|p| ot.contains(p)).ne(ot.iter()) {
        out.push(precedence_finding(
            "fields.event_time",
            "changes the order of the candidate paths: an event carrying several of them takes its time from another path",
            has_sample,
        ));
    }
    path_added_findings("fields.event_time", &ot, &nt, has_sample, &mut out);
    if o.priority != n.priority {
        out.push(precedence_finding(
            "priority",
            &format!(
                "changes the priority from {} to {}: the set's candidate paths for ids and time are merged by priority, so events may take their ids or time from another schema's paths",
                o.priority, n.priority
            ),
            has_sample,
        ));
    }
    // Rule changes move events between kinds or into the dead letters; only a sample shows
    // which. With one, `sample_findings` judges them.
    let rules_changed = [
        (
            "classify",
            normalized_classify(&o.classify) != normalized_classify(&n.classify),
            "moves events between kinds",
        ),
        (
            "reject",
            normalized_reject(&o.reject) != normalized_reject(&n.reject),
            "dead-letters events the previous version accepted",
        ),
        (
            "json_strings",
            paths(&o.json_strings) != paths(&n.json_strings),
            "changes which values are read",
        ),
    ];
    for (field, changed, risk) in rules_changed {
        if !changed {
            continue;
        }
        if has_sample {
            out.push(Finding::info(field, "rules changed (judged on the sample)".into()));
        } else {
            out.push(Finding::breaking(
                field,
                format!(
                    "rules changed, and without a sample there is no telling whether the change {risk}: give --sample EVENTS to check it on real events"
                ),
            ));
        }
    }
    out.extend(catalog_findings(o, n));
    out
}

/// Kinds and attributes: adding is compatible; removing, retyping or renaming a column
/// without `renamed_from` is breaking, because the rows' columns change under readers.
fn catalog_findings(o: &SchemaFile, n: &SchemaFile) -> Vec<Finding> {
    let mut out = Vec::new();
    let renamed = |r: &Option<toml::Spanned<String>>, old: &str| {
        r.as_ref().is_some_and(|r| r.get_ref() == old)
    };
    for k in &o.kinds {
        let (name, column) = (k.name.get_ref(), k.column.get_ref());
        match n.kinds.iter().find(|x| x.name.get_ref() == name) {
            None if n.kinds.iter().any(|x| renamed(&x.renamed_from, column)) => {
                out.push(Finding::info("kinds", format!("renames kind {name} (column {column} keeps an alias)")));
            }
            None => out.push(Finding::breaking(
                "kinds",
                format!("removes kind {name}: its column {column} disappears from the rows and its rules' events become unclassified"),
            )),
            Some(x) if x.column.get_ref() != column && !renamed(&x.renamed_from, column) => {
                out.push(Finding::breaking(
                    "kinds",
                    format!(
                        "renames column {column} of kind {name} to {}: readers of {column} lose it; add renamed_from = \"{column}\" to say it is a rename",
                        x.column.get_ref()
                    ),
                ));
            }
            Some(x) if x.precedence != k.precedence => out.push(Finding::info(
                "kinds",
                format!("changes the precedence of kind {name} (judged on the sample when rules overlap)"),
            )),
            Some(_) => {}
        }
    }
    for k in
        n.kinds.iter().filter(|x| !o.kinds.iter().any(|k| k.name.get_ref() == x.name.get_ref()))
    {
        out.push(Finding::info(
            "kinds",
            format!("adds kind {} (column {})", k.name.get_ref(), k.column.get_ref()),
        ));
    }
    for a in &o.attributes {
        let name = a.name.get_ref();
        let found = n
            .attributes
            .iter()
            .find(|x| x.name.get_ref() == name)
            .or_else(|| n.attributes.iter().find(|x| renamed(&x.renamed_from, name)));
        let Some(x) = found else {
            out.push(Finding::breaking(
                "attributes",
                format!("removes attribute {name}: its column disappears from the rows"),
            ));
            continue;
        };
        if x.name.get_ref() != name {
            out.push(Finding::info(
                "attributes",
                format!("renames attribute {name} to {} (renamed_from keeps it)", x.name.get_ref()),
            ));
        }
        if x.kind.get_ref() != a.kind.get_ref() || x.aggregate.get_ref() != a.aggregate.get_ref() {
            out.push(Finding::breaking(
                "attributes",
                format!(
                    "retypes attribute {name} from {} {} to {} {}: the column's values change meaning; add a new attribute instead",
                    a.kind.get_ref(), a.aggregate.get_ref(), x.kind.get_ref(), x.aggregate.get_ref()
                ),
            ));
        }
        let (op, np) = (paths(a.paths.get_ref()), paths(x.paths.get_ref()));
        for p in op.iter().filter(|p| !np.contains(p)) {
            out.push(Finding::breaking(
                "attributes",
                format!("attribute {name} drops path {p}: events that still send it would lose the value; keep it as a fallback"),
            ));
        }
        for p in np.iter().filter(|p| !op.contains(p)) {
            out.push(Finding::info("attributes", format!("attribute {name} adds path {p}")));
        }
    }
    for a in n.attributes.iter().filter(|x| {
        !o.attributes.iter().any(|a| a.name.get_ref() == x.name.get_ref())
            && x.renamed_from.is_none()
    }) {
        out.push(Finding::info("attributes", format!("adds attribute {}", a.name.get_ref())));
    }
    out
}

fn normalized_conditions(when: &[Condition]) -> Vec<String> {
    let mut v: Vec<String> = when
        .iter()
        .map(|c| {
            let mut set = c.one_of.clone().unwrap_or_default();
            set.sort();
            format!("{}|{:?}|{set:?}|{:?}", c.path.get_ref(), c.equals, c.exists)
        })
        .collect();
    v.sort();
    v
}

fn normalized_classify(rules: &[ClassifyRule]) -> Vec<(String, Vec<String>)> {
    rules
        .iter()
        .map(|r| (r.kind.get_ref().clone(), normalized_conditions(r.when.get_ref())))
        .collect()
}

fn normalized_reject(rules: &[RejectRule]) -> Vec<(String, Vec<String>)> {
    let mut v: Vec<_> = rules
        .iter()
        .map(|r| (r.reason.get_ref().clone(), normalized_conditions(r.when.get_ref())))
        .collect();
    v.sort();
    v
}

/// Longest example line quoted in a finding, in characters.
const EXAMPLE_CHARS: usize = 160;

fn example(raw: &[u8]) -> String {
    let s = String::from_utf8_lossy(raw);
    let t = s.trim_end();
    match t.char_indices().nth(EXAMPLE_CHARS) {
        Some((i, _)) => format!("{}…", &t[..i]),
        None => t.to_owned(),
    }
}

/// How the set `set` treats the sample lines that are `schema`'s own: the lines whose message
/// id or customer id was read through a path `schema` declares (one that reads the same value:
/// `$.a` and `$['a']` are one path), and the lines one of its reject rules dead-lettered.
/// A warning when more than half of them are dead-lettered, with the counts by reason and the
/// first example; `None` when the sample holds none of them or most are accepted.
#[must_use]
pub fn own_events_finding(
    schema: &LoadedSchema,
    set: &Extractor,
    sample: &[u8],
) -> Option<Finding> {
    use super::order::PathKey;
    use std::collections::HashMap;
    let s = &schema.schema;
    let name = s.name.get_ref().as_str();
    let keys = |l: &[toml::Spanned<String>]| -> Vec<PathKey> {
        l.iter().map(|p| PathKey::of(p.get_ref())).collect()
    };
    let (mine_m, mine_c) = (keys(&s.fields.message_id), keys(&s.fields.customer_id));
    let mut cache: HashMap<(usize, String), bool> = HashMap::new();
    let mut is_mine = |field: usize, path: &str| -> bool {
        *cache.entry((field, path.to_owned())).or_insert_with(|| {
            let k = PathKey::of(path);
            if field == 0 { mine_m.contains(&k) } else { mine_c.contains(&k) }
        })
    };
    let (mut claimed, mut rejected) = (0u64, 0u64);
    // reason → (count, first line number, its text)
    let mut reasons: BTreeMap<String, (u64, u64, String)> = BTreeMap::new();
    let mut slots: Vec<Slot<'_>> = Vec::new();
    let lines = sample.strip_suffix(b"\n").unwrap_or(sample);
    for (i, raw) in lines.split(|&b| b == b'\n').enumerate() {
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        let Ok(text) = decode::decode(raw) else { continue };
        let ex = set.explain(text, &mut slots);
        let own = match &ex.result {
            Err(ExtractError::Rejected { schema: by, .. }) => by.as_ref() == name,
            _ => ex.fields[..2]
                .iter()
                .enumerate()
                .any(|(f, src)| src.as_ref().is_some_and(|(p, _)| is_mine(f, p))),
        };
        if !own {
            continue;
        }
        claimed += 1;
        if let Err(e) = &ex.result {
            rejected += 1;
            let e = reasons.entry(e.reason().to_owned()).or_insert((0, i as u64 + 1, example(raw)));
            e.0 += 1;
        }
    }
    if claimed == 0 || rejected * 2 <= claimed {
        return None;
    }
    let (first_line, first) = reasons
        .values()
        .min_by_key(|(_, line, _)| *line)
        .map(|(_, l, t)| (*l, t.clone()))
        .unwrap_or_default();
    let by_reason: Vec<String> =
        reasons.iter().map(|(r, (n, line, _))| format!("{r} {n} (first at line {line})")).collect();
    Some(Finding {
        severity: Severity::Warning,
        field: "sample".into(),
        message: format!(
            "{rejected} of the {claimed} sample events that are {name}'s own (their message id or customer id read through its paths, or dead-lettered by its reject rules) would be dead-lettered by the set: {}; first at line {first_line}: {first}",
            by_reason.join(", ")
        ),
    })
}

/// What one line became under one schema set.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    Accepted { customer: String, time: i64, kind: String },
    Rejected(String),
}

fn outcome(x: &Extractor, line: &[u8]) -> Outcome {
    let text = match decode::decode(line) {
        Ok(t) => t,
        Err(e) => return Outcome::Rejected(e.reason().to_owned()),
    };
    let mut slots: Vec<Slot<'_>> = Vec::with_capacity(x.slot_count());
    let r: Result<ClickEvent<'_>, ExtractError> = x.extract(text, &mut slots);
    match r {
        Ok(ev) => Outcome::Accepted {
            customer: ev.customer_id.into_owned(),
            time: ev.event_time,
            kind: x.kind_name(ev.kind).to_owned(),
        },
        Err(e) => Outcome::Rejected(e.reason().to_owned()),
    }
}

/// Per-change counts of a sample run under two schema sets, with the first line of each.
#[derive(Debug, Default)]
pub struct SampleDiff {
    lines: u64,
    /// (what changed) → (count, first line number).
    changes: BTreeMap<(Severity, String), (u64, u64)>,
}

impl SampleDiff {
    /// Runs one sample line (1-based number `n`) through both sets.
    pub fn observe(&mut self, old: &Extractor, new: &Extractor, n: u64, line: &[u8]) {
        self.lines += 1;
        let (a, b) = (outcome(old, line), outcome(new, line));
        if a == b {
            return;
        }
        let change = match (&a, &b) {
            (
                Outcome::Accepted { customer: c1, time: t1, kind: k1 },
                Outcome::Accepted { customer: c2, time: t2, kind: k2 },
            ) => {
                if c1 != c2 {
                    (Severity::Breaking, "take another customer id".to_owned())
                } else if t1 != t2 {
                    (Severity::Breaking, "get another event time".to_owned())
                } else if k1 == "other" {
                    (Severity::Info, format!("become {k2} (were unclassified)"))
                } else {
                    (Severity::Breaking, format!("move from {k1} to {k2}"))
                }
            }
            (Outcome::Accepted { .. }, Outcome::Rejected(r)) => {
                (Severity::Breaking, format!("accepted before would be dead-lettered as {r}"))
            }
            (Outcome::Rejected(r), Outcome::Accepted { .. }) => {
                (Severity::Info, format!("dead-lettered as {r} before are now accepted"))
            }
            (Outcome::Rejected(r1), Outcome::Rejected(r2)) => {
                (Severity::Info, format!("dead-lettered as {r1} before are now {r2}"))
            }
        };
        let e = self.changes.entry(change).or_insert((0, n));
        e.0 += 1;
    }

    /// The findings, one per kind of change.
    #[must_use]
    pub fn findings(&self) -> Vec<Finding> {
        self.changes
            .iter()
            .map(|((sev, what), (count, first))| Finding {
                severity: *sev,
                field: "sample".into(),
                message: format!(
                    "{count} of {} sample events {what} (first at line {first})",
                    self.lines
                ),
            })
            .collect()
    }
}

#[cfg(test)]
mod catalog_tests {
    use super::*;

    fn load(extra: &str) -> LoadedSchema {
        let text = format!("name = \"p\"\nversion = 1\n[fields]\ncustomer_id = ['$.c']\n{extra}");
        super::super::schema::parse_bytes(std::path::Path::new("p.toml"), text.into_bytes())
            .unwrap()
    }

    fn findings(old: &str, new: &str) -> Vec<(Severity, String)> {
        static_findings(&load(old), &load(new), false)
            .into_iter()
            .map(|f| (f.severity, f.message))
            .collect()
    }

    const KIND: &str = "[[kinds]]\nname = \"play\"\ncolumn = \"plays\"\n";
    const ATTR: &str =
        "[[attributes]]\nname = \"os\"\npaths = ['$.os', '$.ctx.os']\naggregate = \"first\"\n";

    #[test]
    fn adding_is_compatible_removing_retyping_or_renaming_without_alias_is_not() {
        let added = findings("", &format!("{KIND}{ATTR}"));
        assert!(added.iter().all(|(s, _)| *s == Severity::Info), "{added:?}");
        assert_eq!(added.len(), 2, "{added:?}");
        let removed = findings(&format!("{KIND}{ATTR}"), "");
        assert_eq!(
            removed.iter().filter(|(s, _)| *s == Severity::Breaking).count(),
            2,
            "{removed:?}"
        );
        let retyped = findings(ATTR, &ATTR.replace("\"first\"", "\"distinct_count\""));
        assert!(
            retyped
                .iter()
                .any(|(s, m)| *s == Severity::Breaking && m.starts_with("retypes attribute os")),
            "{retyped:?}"
        );
        let dropped = findings(ATTR, &ATTR.replace(", '$.ctx.os'", ""));
        assert!(
            dropped
                .iter()
                .any(|(s, m)| *s == Severity::Breaking && m.contains("drops path $.ctx.os")),
            "{dropped:?}"
        );
        let renamed = KIND.replace("\"plays\"", "\"video_plays\"");
        let bare = findings(KIND, &renamed);
        assert!(
            bare.iter().any(|(s, m)| *s == Severity::Breaking && m.contains("add renamed_from")),
            "{bare:?}"
        );
        let aliased = findings(KIND, &format!("{renamed}renamed_from = \"plays\"\n"));
        assert!(aliased.iter().all(|(s, _)| *s == Severity::Info), "{aliased:?}");
        let attr_renamed =
            ATTR.replace("name = \"os\"", "name = \"platform\"\nrenamed_from = \"os\"");
        let r = findings(ATTR, &attr_renamed);
        assert!(
            r.iter().all(|(s, _)| *s == Severity::Info)
                && r.iter().any(|(_, m)| m.starts_with("renames attribute os to platform")),
            "{r:?}"
        );
    }
}
