//! `JsonPath`: our one handle on jsonpath-rust, so a change of its API touches this module only.
//!
//! Paths in the common subset (member names, bracketed names, non-negative array indexes) are
//! lowered to [`Step`]s that the single-pass extractor follows while parsing. Anything else
//! (wildcards, filters, slices, descendants) must stay within a bound that keeps its work linear
//! in the event's size ([`bound`]), and is evaluated on a `serde_json::Value` by [`eval`], which
//! counts the nodes it visits against a budget per event: correct, but it costs a full parse
//! per event.

pub mod bound;
pub mod eval;

use super::walk::Slot;
use bound::Cost;
use eval::{Budget, OverBudget};
use jsonpath_rust::parser::model::{JpQuery, Segment, Selector};
use serde_json::Value;
use std::fmt;

/// Longest path text accepted, which bounds the work one path can cost per event.
pub const MAX_PATH_LEN: usize = 256;
/// Most general (non-simple) queries a schema set may hold. Each is evaluated on a parsed copy
/// of every event that reaches it, visiting at most [`bound::MAX_VISITS_PER_NODE`] times each
/// of its nodes: this keeps the work per event bounded by a constant factor of the simple
/// single-pass read.
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
    Query(Vec<eval::Hop>, Cost),
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
        let kind = if let Some(steps) = simple_steps(&query) {
            PathKind::Simple(steps)
        } else {
            let cost = bound::check(text, &query)?;
            PathKind::Query(eval::plan(&query), cost)
        };
        Ok(JsonPath { text: text.to_owned(), kind })
    }

    /// The steps of a simple path, or `None` when it needs the general evaluator.
    #[must_use]
    pub fn steps(&self) -> Option<&[Step]> {
        match &self.kind {
            PathKind::Simple(s) => Some(s),
            PathKind::Query(..) => None,
        }
    }

    /// The most nodes evaluating this path visits on an event of `n` nodes.
    #[must_use]
    pub fn cost(&self) -> Cost {
        match &self.kind {
            PathKind::Simple(steps) => Cost { per_node: 0, fixed: steps.len() as u64 },
            PathKind::Query(_, cost) => *cost,
        }
    }

    /// The path as written.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Evaluates the path; returns the first non-null match.
    ///
    /// # Errors
    /// [`OverBudget`] when the evaluation would visit more nodes than `budget` has left.
    pub fn first_match<'v>(
        &self,
        value: &'v Value,
        budget: &mut Budget,
    ) -> Result<Option<&'v Value>, OverBudget> {
        match &self.kind {
            PathKind::Simple(steps) => {
                let mut v = value;
                for s in steps {
                    let next = match s {
                        Step::Key(k) => v.as_object().and_then(|o| o.get(k)),
                        Step::Index(i) => v.as_array().and_then(|a| a.get(*i)),
                    };
                    let Some(next) = next else { return Ok(None) };
                    v = next;
                }
                Ok(Some(v))
            }
            PathKind::Query(hops, _) => {
                Ok(eval::select(hops, value, budget)?.into_iter().find(|v| !v.is_null()))
            }
        }
    }
}

/// Fills the slots of a set's general queries from one event, within one budget for them all:
/// the sum of their bounds on an event of `text`'s size (a JSON node takes at least one byte).
/// The language bound makes running out impossible; the budget is the second line of defence,
/// should the argument in [`bound`] or the evaluator ever be wrong.
///
/// # Errors
/// [`OverBudget`]: the event must be dead-lettered.
pub fn run_queries(
    queries: &[(JsonPath, usize)],
    text: &str,
    slots: &mut [Slot<'_>],
) -> Result<(), OverBudget> {
    let Ok(value) = serde_json::from_str::<Value>(text) else { return Ok(()) };
    let nodes = text.len() as u64;
    let mut budget =
        Budget::new(queries.iter().fold(0u64, |b, (q, _)| b.saturating_add(q.cost().at(nodes))));
    for (q, slot) in queries {
        if let Some(v) = q.first_match(&value, &mut budget)? {
            slots[*slot] = Slot::from_value(v);
        }
    }
    Ok(())
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
        let mut budget = Budget::new(100);
        assert_eq!(p.first_match(&v, &mut budget), Ok(Some(&Value::String("b".into()))));
    }
}
