//! `clickstream schema explain --sample FILE --line N`: one line of a sample through the whole
//! pipeline — the extractor's trace, then whether dedup or lateness stopped it, then the
//! session it joined, as the row that session becomes when the sample ends.
//!
//! The sample runs through a real [`Processor`] with the configured rules, in order, so the
//! answer is what `replay` of that sample would do with that line.

use crate::decode;
use crate::event::{LinePosition, SourcePosition};
use crate::extract::Extractor;
use crate::extract::explain::Trace;
use crate::processor::{MetaBase, Processor, Rules};
use serde::Serialize;
use std::fmt::Write as _;
use std::io::BufRead;
use std::sync::Arc;

/// What happened to one line of a sample.
#[derive(Debug, Clone, Serialize)]
pub struct Explained {
    /// The line's number (1-based).
    pub line: u64,
    /// The extractor's trace.
    pub trace: Trace,
    /// What the stateful stages did: `joined a session`, `duplicate`, `late`, or the
    /// dead-letter reason.
    pub pipeline: String,
    /// The session row the line ended up in (at the end of the sample).
    pub session: Option<serde_json::Value>,
}

impl Explained {
    /// As text for a terminal.
    #[must_use]
    pub fn to_text(&self, sample: &str) -> String {
        let mut o = format!("{sample}, line {}:\n\n{}", self.line, self.trace.to_text());
        let _ = writeln!(o, "pipeline: {}", self.pipeline);
        if let Some(s) = &self.session {
            let _ = writeln!(o, "session row: {s}");
        }
        o
    }
}

/// Explains line `line` of the lines `reader` yields, running all of them through `extractor`
/// under `rules`.
///
/// # Errors
/// The sample cannot be read, or has fewer lines.
pub fn explain(
    extractor: &Arc<Extractor>,
    rules: Rules,
    mut reader: impl BufRead,
    line: u64,
) -> std::io::Result<Explained> {
    let mut p = Processor::new(Arc::clone(extractor), rules, vec![Arc::from("sample")]);
    let mut buf = Vec::new();
    let (mut n, mut found) = (0u64, None);
    loop {
        buf.clear();
        if reader.read_until(b'\n', &mut buf)? == 0 {
            break;
        }
        if buf.last() == Some(&b'\n') {
            buf.pop();
        }
        n += 1;
        let before = p.counters().clone();
        p.process_record(&buf, LinePosition { input: 0, line: n, offset: 0 });
        if n == line {
            let trace = match decode::decode(&buf) {
                Ok(text) => extractor.trace(text),
                Err(e) => Trace {
                    outcome: e.reason().to_owned(),
                    detail: Some(e.to_string()),
                    kind: None,
                    steps: Vec::new(),
                },
            };
            let after = p.counters();
            let pipeline = if after.duplicates > before.duplicates {
                "duplicate: a message with this id was accepted earlier (dropped)".to_owned()
            } else if after.dead_lettered.get("late") > before.dead_lettered.get("late") {
                "late: its event time is before the watermark (dead-lettered)".to_owned()
            } else if after.accepted > before.accepted {
                "joined a session".to_owned()
            } else {
                format!("dead-lettered as {}", trace.outcome)
            };
            let key = (pipeline == "joined a session")
                .then(|| {
                    extractor.extract(decode::decode(&buf).unwrap_or(""), &mut Vec::new()).ok()
                })
                .flatten()
                .map(|ev| (ev.customer_id.into_owned(), ev.event_time));
            found = Some((trace, pipeline, key));
        }
    }
    let Some((trace, pipeline, key)) = found else {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            format!("the sample has {n} lines, not {line}"),
        ));
    };
    let base = MetaBase { inputs: Vec::new(), settings: String::new() };
    let (mut out, _) = p
        .checkpoint(SourcePosition::default(), true, base)
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    let session = key.and_then(|(customer, time)| {
        out.rows()
            .iter()
            .find(|r| {
                *r.customer_id == *customer && r.session_start <= time && time <= r.session_end
            })
            .and_then(|r| serde_json::to_value(r).ok())
    });
    Ok(Explained { line, trace, pipeline, session })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::extract::schema::parse_bytes;

    #[test]
    fn the_line_is_followed_into_its_session_or_named_as_a_duplicate() {
        let text = "name = \"a\"\nversion = 1\n[fields]\nmessage_id = ['$.id']\ncustomer_id = ['$.c']\nevent_time = [{ path = '$.t', format = \"epoch\" }]\n";
        let l = parse_bytes(std::path::Path::new("a.toml"), text.as_bytes().to_vec()).unwrap();
        let x = Arc::new(Extractor::compile(vec![l]).unwrap());
        let sample = concat!(
            r#"{"id":1,"c":"x","t":1709510400}"#,
            "\n",
            r#"{"id":2,"c":"x","t":1709510460}"#,
            "\n",
            r#"{"id":1,"c":"x","t":1709510400}"#,
            "\n"
        );
        let rules = Rules {
            gap_ms: 1_800_000,
            lateness_ms: 0,
            dedup_horizon_ms: 3_600_000,
            max_future_ms: 0,
        };
        let e = explain(&x, rules, sample.as_bytes(), 1).unwrap();
        assert_eq!(e.pipeline, "joined a session");
        let s = e.session.unwrap();
        assert_eq!((s["event_count"].as_u64(), s["duration_ms"].as_i64()), (Some(2), Some(60_000)));
        let e = explain(&x, rules, sample.as_bytes(), 3).unwrap();
        assert!(e.pipeline.starts_with("duplicate"), "{}", e.pipeline);
        assert!(e.session.is_none());
        assert!(explain(&x, rules, sample.as_bytes(), 4).is_err());
    }
}
