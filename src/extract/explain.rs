//! `clickstream schema explain`: for one event, every path tried in order with what it found,
//! the coercion applied and the rule that rejected or classified it.
//!
//! A trace re-runs the extractor's own steps on the slots the parser filled, in contract
//! order, so it cannot disagree with what the pipeline does with the line.

use super::walk::Slot;
use super::{Cond, ExtractError, Extractor, Test, catalog};
use crate::aggregate::utc_datetime;
use crate::event::AttrValue;
use serde::Serialize;
use std::fmt::Write as _;

/// One thing the extractor looked at.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Step {
    /// `reject`, `message_id`, `customer_id`, `event_time`, `classify` or `attribute`.
    pub stage: String,
    /// The path, or the rule (`schema:classify[2]`).
    pub subject: String,
    /// The schema that declared it, when one did.
    pub schema: Option<String>,
    /// What the event holds there (`"ios"`, `12`, `absent`, `null`, …), or the rule's
    /// conditions with what each found.
    pub found: String,
    /// What came of it.
    pub verdict: String,
}

/// The explanation of one line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Trace {
    /// `accepted` or the dead-letter reason.
    pub outcome: String,
    /// The dead-letter detail, as the record would carry it.
    pub detail: Option<String>,
    /// The kind it counts as, when it got as far as classification.
    pub kind: Option<String>,
    /// Every step, in the order the extractor takes them.
    pub steps: Vec<Step>,
}

/// How a slot reads in an explanation.
fn show(v: &Slot<'_>) -> String {
    const MAX: usize = 60;
    match v {
        Slot::Absent => "absent".into(),
        Slot::Null => "null".into(),
        Slot::Bool(b) => b.to_string(),
        Slot::Num(n) => n.to_string(),
        Slot::Str(s) => {
            let cut: String = s.chars().take(MAX).collect();
            let more = if s.chars().count() > MAX { "…" } else { "" };
            format!("{cut:?}{more}")
        }
        Slot::Object => "an object".into(),
        Slot::Array => "an array".into(),
        Slot::Lone(_) => "a string with a lone surrogate escape".into(),
    }
}

fn show_value(v: &AttrValue<'_>) -> String {
    match v {
        AttrValue::Str(s) => format!("{s:?}"),
        AttrValue::Int(i) => i.to_string(),
        AttrValue::Num(x) => x.to_string(),
        AttrValue::Bool(b) => b.to_string(),
    }
}

impl Extractor {
    fn show_test(t: &Test) -> String {
        match t {
            Test::Equals(v) => format!("equals {v:?}"),
            Test::In(v) => format!("in {v:?}"),
            Test::Exists(b) => format!("exists = {b}"),
        }
    }

    fn conditions(&self, when: &[Cond], slots: &[Slot<'_>]) -> String {
        let mut o = String::new();
        for (i, c) in when.iter().enumerate() {
            if i > 0 {
                o.push_str("; ");
            }
            let mark = if c.holds(slots) { "holds" } else { "fails" };
            let _ = write!(
                o,
                "{} {} (found {}): {mark}",
                self.slot_paths[c.slot],
                Self::show_test(&c.test),
                show(&slots[c.slot])
            );
        }
        o
    }

    fn candidates(&self, stage: &str, list: &[usize], slots: &[Slot<'_>], steps: &mut Vec<Step>) {
        let mut used = false;
        for &s in list {
            let v = &slots[s];
            let verdict = if used {
                "not tried: an earlier path was present".to_owned()
            } else if v.is_present() {
                used = true;
                "used".to_owned()
            } else {
                format!("{}: the next path is tried", show(v))
            };
            steps.push(Step {
                stage: stage.into(),
                subject: self.slot_paths[s].to_string(),
                schema: self.slot_schema[s].as_deref().map(str::to_owned),
                found: show(v),
                verdict,
            });
        }
    }

    fn classification_steps(&self, slots: &[Slot<'_>], steps: &mut Vec<Step>) {
        let mut decided = false;
        for r in &self.classify {
            let verdict = if decided {
                "not tried: an earlier rule matched".to_owned()
            } else if r.when.iter().all(|c| c.holds(slots)) {
                decided = true;
                format!("matched: counts as {}", self.kind_name(r.then))
            } else {
                "did not match".to_owned()
            };
            steps.push(Step {
                stage: "classify".into(),
                subject: r.origin.to_string(),
                schema: r.origin.split(':').next().map(str::to_owned),
                found: self.conditions(&r.when, slots),
                verdict,
            });
        }
        for (spec, (candidates, ty, max)) in self.catalog.attrs.iter().zip(&self.attrs) {
            let at = candidates.iter().position(|&s| slots[s].is_present());
            let (found, verdict) = match at {
                None => ("absent or null at every path".to_owned(), "null".to_owned()),
                Some(i) => {
                    let slot = &slots[candidates[i]];
                    let verdict = match catalog::coerce(slot, *ty, *max) {
                        Ok((v, cut)) => format!(
                            "{} as {}{}, folded by {}",
                            show_value(&v),
                            ty.name(),
                            if cut { format!(" (cut to {max} bytes)") } else { String::new() },
                            spec.aggregate.name()
                        ),
                        Err(_) => format!("not a {}: ignored (null)", ty.name()),
                    };
                    (format!("{} at {}", show(slot), self.slot_paths[candidates[i]]), verdict)
                }
            };
            steps.push(Step {
                stage: "attribute".into(),
                subject: format!("{} ({})", spec.name, spec.paths.join(", ")),
                schema: Some(spec.schema.to_string()),
                found,
                verdict,
            });
        }
    }

    /// Explains one line of text (already decoded).
    #[must_use]
    pub fn trace(&self, text: &str) -> Trace {
        let mut slots = Vec::new();
        let result = self.extract(text, &mut slots);
        let mut steps = Vec::new();
        let (outcome, detail) = match &result {
            Ok(_) => ("accepted".to_owned(), None),
            Err(e) => (e.reason().to_owned(), Some(e.to_string())),
        };
        if matches!(result, Err(ExtractError::InvalidJson(_) | ExtractError::NotObject)) {
            return Trace { outcome, detail, kind: None, steps };
        }
        for r in &self.rejects {
            let holds = r.when.iter().all(|c| c.holds(&slots));
            steps.push(Step {
                stage: "reject".into(),
                subject: r.origin.to_string(),
                schema: Some(r.then.1.to_string()),
                found: self.conditions(&r.when, &slots),
                verdict: if holds {
                    format!("matched: dead-lettered as {}", r.then.0)
                } else {
                    "did not match".into()
                },
            });
            if holds {
                return Trace { outcome, detail, kind: None, steps };
            }
        }
        self.candidates("message_id", &self.message_id, &slots, &mut steps);
        self.candidates("customer_id", &self.customer_id, &slots, &mut steps);
        let times: Vec<usize> = self.event_time.iter().map(|&(s, _)| s).collect();
        let before = steps.len();
        self.candidates("event_time", &times, &slots, &mut steps);
        for (step, (_, spec)) in steps[before..].iter_mut().zip(&self.event_time) {
            let _ = write!(step.subject, " ({})", spec.describe());
        }
        // The verdicts of the field that failed, or the time's reading.
        match &result {
            Err(e) => {
                let stage = match e {
                    ExtractError::MissingMessageId(_) | ExtractError::BadMessageId(_) => {
                        "message_id"
                    }
                    ExtractError::MissingCustomerId(_) | ExtractError::BadCustomerId(_) => {
                        "customer_id"
                    }
                    _ => "event_time",
                };
                if let Some(s) = steps.iter_mut().find(|s| s.stage == stage && s.verdict == "used")
                {
                    s.verdict = format!("used, but {e}");
                }
            }
            Ok(ev) => {
                if let Some(s) =
                    steps.iter_mut().find(|s| s.stage == "event_time" && s.verdict == "used")
                {
                    s.verdict =
                        format!("used: {} ({} ms)", utc_datetime(ev.event_time), ev.event_time);
                }
            }
        }
        // Classification and attributes read the slots whether or not the fields parse, so an
        // analyst sees a new producer's kinds before its time format is right.
        self.classification_steps(&slots, &mut steps);
        let kind = self.classify_slots(&slots);
        Trace { outcome, detail, kind: Some(self.kind_name(kind).to_owned()), steps }
    }
}

impl Trace {
    /// The trace as text for a terminal.
    #[must_use]
    pub fn to_text(&self) -> String {
        let mut o = String::new();
        let mut stage = "";
        for s in &self.steps {
            if s.stage != stage {
                stage = &s.stage;
                let _ = writeln!(o, "{stage}:");
            }
            let by = s.schema.as_deref().map(|x| format!(" [{x}]")).unwrap_or_default();
            let _ = writeln!(
                o,
                "  {}{by}\n    found:   {}\n    verdict: {}",
                s.subject, s.found, s.verdict
            );
        }
        let _ = write!(o, "outcome: {}", self.outcome);
        if let Some(k) = &self.kind {
            let _ = write!(o, " (kind {k})");
        }
        o.push('\n');
        if let Some(d) = &self.detail {
            let _ = writeln!(o, "detail: {d}");
        }
        o
    }
}

#[cfg(test)]
mod tests {
    use crate::extract::Extractor;
    use crate::extract::schema::parse_bytes;

    fn set() -> Extractor {
        let text = r#"
name = "p"
version = 1
[fields]
message_id = ['$.id', '$.mid']
customer_id = ['$.user']
event_time = [{ path = '$.ts', format = "epoch" }]
[[reject]]
reason = "test_traffic"
when = [{ path = '$.env', equals = "test" }]
[[kinds]]
name = "video_play"
column = "video_plays"
[[classify]]
kind = "video_play"
when = [{ path = '$.e', equals = "play" }]
[[attributes]]
name = "platform"
paths = ['$.os', '$.device.os']
aggregate = "first"
"#;
        let l = parse_bytes(std::path::Path::new("p.toml"), text.as_bytes().to_vec()).unwrap();
        Extractor::compile(vec![l]).unwrap()
    }

    #[test]
    fn a_trace_shows_every_path_tried_and_what_decided() {
        let t = set()
            .trace(r#"{"mid":"m1","user":"u","ts":1709633730,"e":"play","device":{"os":"ios"}}"#);
        assert_eq!((t.outcome.as_str(), t.kind.as_deref()), ("accepted", Some("video_play")));
        let text = t.to_text();
        assert!(
            text.contains(
                "$.id [p]\n    found:   absent\n    verdict: absent: the next path is tried"
            ),
            "{text}"
        );
        assert!(text.contains("$.mid [p]\n    found:   \"m1\"\n    verdict: used"), "{text}");
        assert!(text.contains("verdict: used: 2024-03-05T10:15:30Z (1709633730000 ms)"), "{text}");
        assert!(text.contains("$.ts (epoch auto"), "the time's declaration is shown: {text}");
        assert!(text.contains("matched: counts as video_play"), "{text}");
        assert!(text.contains("\"ios\" at $.device.os"), "{text}");
        assert!(text.contains("\"ios\" as string, folded by first"), "{text}");
    }

    #[test]
    fn a_rejected_line_still_shows_its_kind_and_the_failing_field() {
        let x = set();
        let t = x.trace(r#"{"id":"m1","user":"u","ts":"yesterday","e":"play"}"#);
        assert_eq!(t.outcome, "bad_timestamp");
        assert_eq!(t.kind.as_deref(), Some("video_play"), "kinds are shown before times parse");
        let time = t.steps.iter().find(|s| s.stage == "event_time").unwrap();
        assert!(time.verdict.starts_with("used, but the event time at $.ts"), "{time:?}");
        let t = x.trace(r#"{"id":"m1","env":"test"}"#);
        assert_eq!(t.outcome, "test_traffic");
        assert_eq!(t.steps.last().unwrap().verdict, "matched: dead-lettered as test_traffic");
        assert_eq!(x.trace("[1]").outcome, "not_object");
    }
}
