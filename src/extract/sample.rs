//! `clickstream schema test`: a dry run of a schema set on sample events, for analysts.
//!
//! Touches no state and writes no output: it reports what the pipeline would do with each
//! line — which schema matched, how full each field is and where it came from, how events were
//! classified, what was rejected and why — with an example line for everything it counts.

use super::walk::Slot;
use super::{ExtractError, Extractor};
use crate::decode;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;

/// Longest example text kept, in characters.
const EXAMPLE_CHARS: usize = 160;
const FIELDS: [&str; 3] = ["message_id", "customer_id", "event_time"];

/// A count with the first line that made it.
#[derive(Debug, Default, Clone, Serialize, PartialEq, Eq)]
pub struct Counted {
    /// How many lines.
    pub count: u64,
    /// 1-based number of the first such line.
    pub example_line: u64,
    /// Its text (shortened).
    pub example: String,
}

impl Counted {
    fn add(&mut self, line: u64, raw: &[u8]) {
        if self.count == 0 {
            self.example_line = line;
            self.example = shorten(raw);
        }
        self.count += 1;
    }
}

/// How one canonical field was filled.
#[derive(Debug, Default, Clone, Serialize, PartialEq, Eq)]
pub struct FieldReport {
    /// Events (JSON objects past the reject rules) in which some candidate path was present.
    pub filled: u64,
    /// Events in which none was.
    pub missing: u64,
    /// Present but not convertible (a bad id or an unreadable time), with an example.
    pub invalid: Counted,
    /// Which path supplied the field, how often.
    pub by_path: BTreeMap<String, u64>,
}

/// The whole report.
#[derive(Debug, Default, Clone, Serialize, PartialEq, Eq)]
pub struct SampleReport {
    /// Lines read.
    pub lines: u64,
    /// Lines the pipeline would accept (before dedup and lateness, which need state).
    pub accepted: u64,
    /// JSON objects that got past the reject rules: the denominator of fill rates.
    pub objects: u64,
    /// Events by the schema whose message-id path they matched.
    pub schemas: BTreeMap<String, u64>,
    /// Per canonical field.
    pub fields: BTreeMap<String, FieldReport>,
    /// Accepted events by kind.
    pub kinds: BTreeMap<String, u64>,
    /// Events past the reject rules that a field check then dead-lettered, by the kind their
    /// classification rules give: a new producer's kinds show before its fields parse.
    pub kinds_of_rejected: BTreeMap<String, u64>,
    /// Per attribute, over the events past the reject rules: filled, missing, not coercible.
    pub attributes: BTreeMap<String, FieldReport>,
    /// Rejected lines by reason.
    pub rejected: BTreeMap<String, Counted>,
    /// Accepted events no rule classified, by the values of the classification inputs.
    pub unclassified: Vec<(String, Counted)>,
    /// Objects with no message id at all, by their top-level keys: producers no schema knows.
    pub unmatched_shapes: Vec<(String, Counted)>,
}

/// Accumulates a [`SampleReport`] line by line.
#[derive(Debug, Default)]
pub struct SampleTest {
    report: SampleReport,
    unclassified: HashMap<String, Counted>,
    shapes: HashMap<String, Counted>,
}

fn shorten(raw: &[u8]) -> String {
    let s = String::from_utf8_lossy(raw);
    let t = s.trim_end();
    match t.char_indices().nth(EXAMPLE_CHARS) {
        Some((i, _)) => format!("{}…", &t[..i]),
        None => t.to_owned(),
    }
}

impl SampleTest {
    /// Adds line `line` (1-based) of the sample.
    pub fn observe(&mut self, x: &Extractor, line: u64, raw: &[u8]) {
        let r = &mut self.report;
        r.lines += 1;
        let text = match decode::decode(raw) {
            Ok(t) => t,
            Err(e) => {
                r.rejected.entry(e.reason().to_owned()).or_default().add(line, raw);
                return;
            }
        };
        let mut slots: Vec<Slot<'_>> = Vec::new();
        let ex = x.explain(text, &mut slots);
        let past_rules = !matches!(
            ex.result,
            Err(ExtractError::InvalidJson(_)
                | ExtractError::NotObject
                | ExtractError::Rejected { .. })
        );
        if past_rules {
            r.objects += 1;
            for (i, f) in ex.fields.iter().enumerate() {
                let fr = r.fields.entry(FIELDS[i].to_owned()).or_default();
                match f {
                    Some((path, _)) => {
                        fr.filled += 1;
                        *fr.by_path.entry(path.to_string()).or_default() += 1;
                    }
                    None => fr.missing += 1,
                }
            }
            if let Some((_, Some(schema))) = &ex.fields[0] {
                *r.schemas.entry(schema.to_string()).or_default() += 1;
            }
            for (name, found) in x.attribute_sources(&slots) {
                let fr = r.attributes.entry(name.to_owned()).or_default();
                match found {
                    Some((path, true)) => {
                        fr.filled += 1;
                        *fr.by_path.entry(path.to_owned()).or_default() += 1;
                    }
                    Some((_, false)) => fr.invalid.add(line, raw),
                    None => fr.missing += 1,
                }
            }
            if ex.result.is_err() {
                let kind = x.kind_name(x.classify_slots(&slots)).to_owned();
                *r.kinds_of_rejected.entry(kind).or_default() += 1;
            }
        }
        match &ex.result {
            Ok(ev) => {
                r.accepted += 1;
                *r.kinds.entry(x.kind_name(ev.kind).to_owned()).or_default() += 1;
                if !ev.kind.is_classified() {
                    let label = if ex.label.is_empty() {
                        "(no classification input)".to_owned()
                    } else {
                        ex.label
                    };
                    self.unclassified.entry(label).or_default().add(line, raw);
                }
            }
            Err(e) => {
                let reason = e.reason().to_owned();
                let field = match reason.as_str() {
                    "bad_message_id" => Some(0),
                    "bad_customer_id" => Some(1),
                    "bad_timestamp" => Some(2),
                    _ => None,
                };
                if let Some(i) = field {
                    r.fields.entry(FIELDS[i].to_owned()).or_default().invalid.add(line, raw);
                }
                if reason == "missing_message_id" {
                    self.shapes.entry(shape(text)).or_default().add(line, raw);
                }
                r.rejected.entry(reason).or_default().add(line, raw);
            }
        }
    }

    /// The report, keeping the `top` most frequent unclassified labels and shapes.
    #[must_use]
    pub fn finish(mut self, top: usize) -> SampleReport {
        let rank = |m: HashMap<String, Counted>| {
            let mut v: Vec<(String, Counted)> = m.into_iter().collect();
            v.sort_by(|a, b| b.1.count.cmp(&a.1.count).then_with(|| a.0.cmp(&b.0)));
            v.truncate(top);
            v
        };
        self.report.unclassified = rank(self.unclassified);
        self.report.unmatched_shapes = rank(self.shapes);
        self.report
    }
}

/// The sorted top-level keys of an object, as a producer's fingerprint.
fn shape(text: &str) -> String {
    match serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(text) {
        Ok(m) => {
            let mut keys: Vec<&str> = m.keys().map(String::as_str).collect();
            keys.sort_unstable();
            let more = keys.len().saturating_sub(12);
            keys.truncate(12);
            let mut s = keys.join(",");
            if more > 0 {
                let _ = write!(s, ",+{more}");
            }
            s
        }
        Err(_) => "(not readable)".to_owned(),
    }
}

fn pct(n: u64, d: u64) -> String {
    if d == 0 { "-".into() } else { format!("{:.1}%", 100.0 * n as f64 / d as f64) }
}

impl SampleReport {
    /// The report as aligned tables for a terminal.
    #[must_use]
    pub fn to_text(&self, sample: &str) -> String {
        let mut o = String::new();
        let rejected: u64 = self.rejected.values().map(|c| c.count).sum();
        let _ = writeln!(
            o,
            "sample {sample}: {} lines, {} accepted, {} rejected\n",
            self.lines, self.accepted, rejected
        );
        let _ = writeln!(o, "{:<24} {:>10}", "schema (by message id)", "events");
        for (s, n) in &self.schemas {
            let _ = writeln!(o, "{s:<24} {n:>10}");
        }
        let _ = writeln!(
            o,
            "\n{:<12} {:>10} {:>7} {:>8}  paths (events)",
            "field", "filled", "fill", "invalid"
        );
        for (f, r) in &self.fields {
            let paths: Vec<String> = r.by_path.iter().map(|(p, n)| format!("{p} ({n})")).collect();
            let _ = writeln!(
                o,
                "{f:<12} {:>10} {:>7} {:>8}  {}",
                r.filled,
                pct(r.filled, self.objects),
                r.invalid.count,
                paths.join(", ")
            );
            if r.invalid.count > 0 {
                let _ = writeln!(
                    o,
                    "{:<12} invalid, e.g. line {}: {}",
                    "", r.invalid.example_line, r.invalid.example
                );
            }
        }
        let _ = writeln!(o, "\n{:<24} {:>10} {:>7}", "kind", "events", "share");
        for (k, n) in &self.kinds {
            let _ = writeln!(o, "{k:<24} {n:>10} {:>7}", pct(*n, self.accepted));
        }
        if !self.kinds_of_rejected.is_empty() {
            let _ = writeln!(o, "\n{:<24} {:>10}", "kind (of rejected)", "events");
            for (k, n) in &self.kinds_of_rejected {
                let _ = writeln!(o, "{k:<24} {n:>10}");
            }
        }
        if !self.attributes.is_empty() {
            let _ = writeln!(
                o,
                "\n{:<16} {:>10} {:>7} {:>8}  paths (events)",
                "attribute", "filled", "fill", "invalid"
            );
            for (a, r) in &self.attributes {
                let paths: Vec<String> =
                    r.by_path.iter().map(|(p, n)| format!("{p} ({n})")).collect();
                let _ = writeln!(
                    o,
                    "{a:<16} {:>10} {:>7} {:>8}  {}",
                    r.filled,
                    pct(r.filled, self.objects),
                    r.invalid.count,
                    paths.join(", ")
                );
                if r.invalid.count > 0 {
                    let _ = writeln!(
                        o,
                        "{:<16} invalid, e.g. line {}: {}",
                        "", r.invalid.example_line, r.invalid.example
                    );
                }
            }
        }
        let mut table = |title: &str, rows: &mut dyn Iterator<Item = (&String, &Counted)>| {
            let rows: Vec<_> = rows.collect();
            if rows.is_empty() {
                return;
            }
            let w = rows.iter().map(|(k, _)| k.chars().count()).max().unwrap_or(0).clamp(10, 60);
            let _ = writeln!(o, "\n{title:<w$} {:>8}  example", "count");
            for (k, c) in rows {
                let _ =
                    writeln!(o, "{k:<w$} {:>8}  line {}: {}", c.count, c.example_line, c.example);
            }
        };
        table("rejected", &mut self.rejected.iter());
        table("unclassified (no rule matched)", &mut self.unclassified.iter().map(|(k, c)| (k, c)));
        table(
            "unmatched shapes (no message id)",
            &mut self.unmatched_shapes.iter().map(|(k, c)| (k, c)),
        );
        o
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    #[test]
    fn counts_fields_kinds_rejects_and_unknowns() {
        let x =
            Extractor::load(&PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("schemas")).unwrap();
        let mut t = SampleTest::default();
        let lines = [
            r#"{"type":"page","messageId":"m1","userId":"1","timestamp":"2024-03-05T10:15:30Z"}"#,
            r#"{"type":"track","event":"Product Viewed","messageId":"m2","userId":"1","timestamp":"2024-03-05T10:15:31Z"}"#,
            r#"{"id":7,"uid":"2","evt":"screen_view","ts":1709633730}"#,
            r#"{"id":8,"uid":"2","evt":"screen_view","ts":"soon"}"#,
            r#"{"batch":[],"sentAt":"x"}"#,
            "",
            "{\"a\":",
        ];
        for (i, l) in lines.iter().enumerate() {
            t.observe(&x, i as u64 + 1, l.as_bytes());
        }
        let r = t.finish(10);
        assert_eq!((r.lines, r.accepted, r.objects), (7, 3, 5));
        assert_eq!(r.schemas.get("segment"), Some(&2));
        assert_eq!(r.schemas.get("legacy"), Some(&2));
        let ts = &r.fields["event_time"];
        assert_eq!(
            (ts.filled, ts.missing, ts.invalid.count, ts.invalid.example_line),
            (4, 1, 1, 4)
        );
        assert_eq!(ts.by_path.get("$.ts"), Some(&2));
        assert_eq!(r.kinds.get("page_view"), Some(&2));
        assert_eq!(r.unclassified[0].0, "$.type=track $.event=Product Viewed");
        assert_eq!(r.unmatched_shapes[0].0, "batch,sentAt");
        assert_eq!(r.rejected["empty_line"].example_line, 6);
        assert_eq!(r.rejected["invalid_json"].count, 1);
        let text = r.to_text("s.jsonl");
        assert!(text.contains("sample s.jsonl: 7 lines, 3 accepted, 4 rejected"), "{text}");
        assert!(text.contains("line 4:"), "{text}");
    }

    #[test]
    fn attributes_fill_and_kinds_of_events_a_field_check_rejects() {
        let text = r#"
name = "p"
version = 1
[fields]
message_id = ['$.id']
customer_id = ['$.user']
event_time = [{ path = '$.ts', format = "epoch" }]
[[kinds]]
name = "video_play"
column = "video_plays"
[[classify]]
kind = "video_play"
when = [{ path = '$.e', equals = "play" }]
[[attributes]]
name = "app_build"
paths = ['$.build', '$.app.build']
type = "integer"
aggregate = "max"
"#;
        let loaded = crate::extract::schema::parse_bytes(
            std::path::Path::new("p.toml"),
            text.as_bytes().to_vec(),
        )
        .unwrap();
        let x = Extractor::compile(vec![loaded]).unwrap();
        let mut t = SampleTest::default();
        let lines = [
            r#"{"id":1,"user":"u","ts":1709633730,"e":"play","build":12}"#,
            r#"{"id":2,"user":"u","ts":"1709633730123456","e":"play","app":{"build":13}}"#,
            r#"{"id":3,"user":"u","ts":1709633731,"e":"stop","build":"beta"}"#,
            r#"{"id":4,"user":"u","ts":1709633732}"#,
        ];
        for (i, l) in lines.iter().enumerate() {
            t.observe(&x, i as u64 + 1, l.as_bytes());
        }
        let r = t.finish(10);
        assert_eq!(r.kinds.get("video_play"), Some(&1));
        assert_eq!(r.kinds_of_rejected.get("video_play"), Some(&1), "line 2's time fails");
        let a = &r.attributes["app_build"];
        assert_eq!((a.filled, a.missing, a.invalid.count, a.invalid.example_line), (2, 1, 1, 3));
        assert_eq!(a.by_path.get("$.app.build"), Some(&1));
        let text = r.to_text("s.jsonl");
        assert!(text.contains("kind (of rejected)"), "{text}");
        assert!(text.contains("app_build"), "{text}");
    }
}
