//! Compatibility of a new schema version with the previous one, for the registry.
//!
//! A change is *breaking* when it can silently change the aggregates: a field the sessions
//! need (message id, customer id, event time) loses a candidate path or changes its time
//! format, or, on a sample, events move between kinds, get another customer id or time, or are
//! newly rejected. Rule changes without a sample cannot be judged and are refused too, with a
//! hint to give one. Pure: both versions and the sample come in as values.

use super::schema::{ClassifyRule, Condition, LoadedSchema, RejectRule};
use super::walk::Slot;
use super::{ExtractError, Extractor};
use crate::decode;
use crate::event::{ClickEvent, Kind};
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

const ID_FIELDS: [(&str, &str); 2] = [
    ("message_id", "duplicates are recognised by it"),
    ("customer_id", "sessions are kept per customer"),
];

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
                    "drops path {p} without keeping it as an alias: events that still send it would be dead-lettered; a rename keeps the old path as a fallback, e.g. {field} = ['$.new', '{p}']"
                ),
            ));
        }
        if op.iter().all(|p| np.contains(p)) && np.iter().filter(|p| op.contains(p)).ne(op.iter()) {
            out.push(Finding::info(
                &key,
                "changes the order of the candidate paths: an event carrying several of them takes its value from another path".into(),
            ));
        }
        for p in np.iter().filter(|p| !op.contains(p)) {
            out.push(Finding::info(&key, format!("adds path {p}")));
        }
    }
    let times = |s: &super::schema::SchemaFile| -> BTreeMap<String, String> {
        s.fields
            .event_time
            .iter()
            .map(|t| (t.path.get_ref().clone(), t.format.get_ref().clone()))
            .collect()
    };
    let (ot, nt) = (times(o), times(n));
    if !ot.is_empty() && nt.is_empty() {
        out.push(Finding::breaking(
            "fields.event_time",
            "removes event_time, which the aggregates use (sessions are cut in event time)".into(),
        ));
    } else {
        for (p, f) in &ot {
            match nt.get(p) {
                None => out.push(Finding::breaking(
                    "fields.event_time",
                    format!(
                        "drops path {p} without keeping it as an alias: events that still send it would be dead-lettered; keep {{ path = '{p}', format = \"{f}\" }} as a fallback"
                    ),
                )),
                Some(g) if g != f => out.push(Finding::breaking(
                    "fields.event_time",
                    format!("retypes {p} from {f} to {g}: the same values would mean other times"),
                )),
                Some(_) => {}
            }
        }
        for p in nt.keys().filter(|p| !ot.contains_key(*p)) {
            out.push(Finding::info("fields.event_time", format!("adds path {p}")));
        }
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
    Accepted { customer: String, time: i64, kind: Kind },
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
            kind: ev.kind,
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
                } else if *k1 == Kind::Other {
                    (Severity::Info, format!("become {} (were unclassified)", k2.name()))
                } else {
                    (Severity::Breaking, format!("move from {} to {}", k1.name(), k2.name()))
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
