//! `JsonPath`: our one handle on jsonpath-rust, so a change of its API touches this file only.
//!
//! Paths in the common subset (member names, bracketed names, non-negative array indexes) are
//! lowered to [`Step`]s that the single-pass extractor follows while parsing. Anything else
//! (wildcards, filters, slices, descendants) is kept as a parsed query and evaluated with
//! jsonpath-rust on a `serde_json::Value`: correct, but it costs a full parse per event.

use jsonpath_rust::parser::model::{JpQuery, Segment, Selector};
use serde_json::Value;
use std::fmt;

/// Longest path text accepted, which bounds the work one path can cost per event.
pub const MAX_PATH_LEN: usize = 256;
/// Most general (non-simple) queries a schema set may hold. Each is evaluated on a parsed copy
/// of every event that reaches it, in time linear in the event's size (≤ 1 MiB, depth ≤ 64)
/// times the path's length: this keeps the work per event bounded by a constant factor of the
/// simple single-pass read.
pub const MAX_GENERAL_QUERIES: usize = 16;

/// One step of a simple path.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Step {
    /// `.name` or `['name']`.
    Key(String),
    /// `[3]`.
    Index(usize),
}

/// A compiled `JSONPath` expression.
#[derive(Debug, Clone)]
pub struct JsonPath {
    text: String,
    kind: PathKind,
}

#[derive(Debug, Clone)]
enum PathKind {
    Simple(Vec<Step>),
    Query(JpQuery),
}

impl JsonPath {
    /// Parses and validates a path.
    ///
    /// # Errors
    /// A message fit for an analyst when the text is not a `JSONPath` query.
    pub fn parse(text: &str) -> Result<JsonPath, String> {
        if text.len() > MAX_PATH_LEN {
            return Err(format!("path is longer than {MAX_PATH_LEN} characters"));
        }
        if !text.starts_with('$') {
            return Err("a path starts with `$` (the event's root), as in '$.userId'".into());
        }
        let query = jsonpath_rust::parser::parse_json_path(text)
            .map_err(|e| syntax_error(text, &e.to_string()))?;
        let kind = match simple_steps(&query) {
            Some(steps) => PathKind::Simple(steps),
            None => PathKind::Query(query),
        };
        Ok(JsonPath { text: text.to_owned(), kind })
    }

    /// The steps of a simple path, or `None` when it needs the general evaluator.
    #[must_use]
    pub fn steps(&self) -> Option<&[Step]> {
        match &self.kind {
            PathKind::Simple(s) => Some(s),
            PathKind::Query(_) => None,
        }
    }

    /// The path as written.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Evaluates a general query; returns the first non-null match.
    #[must_use]
    pub fn first_match<'v>(&self, value: &'v Value) -> Option<&'v Value> {
        match &self.kind {
            PathKind::Simple(steps) => {
                let mut v = value;
                for s in steps {
                    v = match s {
                        Step::Key(k) => v.as_object()?.get(k)?,
                        Step::Index(i) => v.as_array()?.get(*i)?,
                    };
                }
                Some(v)
            }
            PathKind::Query(q) => jsonpath_rust::query::js_path_process(q, value)
                .ok()?
                .into_iter()
                .map(jsonpath_rust::query::QueryRef::val)
                .find(|v| !v.is_null()),
        }
    }
}

impl fmt::Display for JsonPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// One line from the parser's multi-line report: where, and what it expected.
fn syntax_error(text: &str, report: &str) -> String {
    let column = report
        .split("--> 1:")
        .nth(1)
        .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|c| c.parse::<usize>().ok());
    let expected =
        report.lines().find_map(|l| l.trim().strip_prefix("= ")).unwrap_or("a valid query");
    match column {
        Some(c) => format!(
            "not a valid JSONPath, {expected} at character {c}:\n      {text}\n      {}^",
            " ".repeat(c.saturating_sub(1))
        ),
        None => format!("not a valid JSONPath: {}", report.lines().next().unwrap_or(report)),
    }
}

fn simple_steps(q: &JpQuery) -> Option<Vec<Step>> {
    q.segments
        .iter()
        .map(|seg| {
            let sel = match seg {
                Segment::Selector(sel) => sel,
                Segment::Selectors(sels) if sels.len() == 1 => &sels[0],
                _ => return None,
            };
            match sel {
                Selector::Name(n) => Some(Step::Key(n.clone())),
                Selector::Index(i) => usize::try_from(*i).ok().map(Step::Index),
                _ => None,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn steps(p: &str) -> Option<Vec<Step>> {
        JsonPath::parse(p).unwrap().steps().map(<[Step]>::to_vec)
    }

    #[test]
    fn simple_subset_is_lowered() {
        assert_eq!(steps("$.userId"), Some(vec![Step::Key("userId".into())]));
        assert_eq!(
            steps("$.user.id"),
            Some(vec![Step::Key("user".into()), Step::Key("id".into())])
        );
        assert_eq!(
            steps("$['account']['customer_id']"),
            Some(vec![Step::Key("account".into()), Step::Key("customer_id".into())])
        );
        assert_eq!(
            steps("$['odd key'].x[2]"),
            Some(vec![Step::Key("odd key".into()), Step::Key("x".into()), Step::Index(2)])
        );
    }

    #[test]
    fn general_queries_are_kept() {
        assert_eq!(steps("$..id"), None);
        assert_eq!(steps("$.items[*].id"), None);
        assert_eq!(steps("$.items[-1]"), None);
        assert_eq!(steps("$.items[?@.kind == 'a'].id"), None);
    }

    #[test]
    fn bad_paths_are_refused() {
        for p in ["userId", "$.", "$[", "$.a[?(@.b ==]", ""] {
            assert!(JsonPath::parse(p).is_err(), "{p}");
        }
        assert!(JsonPath::parse(&format!("$.{}", "a".repeat(300))).is_err());
    }

    #[test]
    fn general_query_evaluates() {
        let v: Value = serde_json::json!({"items": [{"id": null}, {"id": "b"}]});
        let p = JsonPath::parse("$.items[*].id").unwrap();
        assert_eq!(p.first_match(&v), Some(&Value::String("b".into())));
    }
}
