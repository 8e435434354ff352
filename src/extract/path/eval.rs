//! Our evaluator of general queries, counting the nodes it visits against a budget.
//!
//! jsonpath-rust parses the query and tests filters, but its own evaluation builds a path
//! string for every node it lists (as long as the keys above the node: quadratic on an event
//! with long keys) and copies the lists of a `..` once per level. This one lists references
//! only, in the same order as jsonpath-rust (a union applies each selector to the whole list in
//! turn; `..` lists a subtree in pre-order), so the first match is the one it found.

use super::bound;
use jsonpath_rust::parser::model::{JpQuery, Segment, Selector};
use jsonpath_rust::query::{QueryRef, js_path_process};
use serde_json::Value;

/// Node visits left for one event; every visit the evaluator makes spends one.
#[derive(Debug, Clone)]
pub struct Budget {
    left: u64,
    spent: u64,
}

/// The budget ran out: the event is dead-lettered rather than read on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OverBudget;

impl Budget {
    /// A budget of `visits` node visits.
    #[must_use]
    pub fn new(visits: u64) -> Budget {
        Budget { left: visits, spent: 0 }
    }

    /// Visits made so far.
    #[must_use]
    pub fn spent(&self) -> u64 {
        self.spent
    }

    fn spend(&mut self, n: u64) -> Result<(), OverBudget> {
        self.left = self.left.checked_sub(n).ok_or(OverBudget)?;
        self.spent += n;
        Ok(())
    }
}

/// A selector, ready to run.
#[derive(Debug, Clone)]
enum Sel {
    Name(String),
    Index(i64),
    Wildcard,
    Slice(Option<i64>, Option<i64>, Option<i64>),
    /// The filter as a one-segment query `$[?…]` run on the parent (a filter reads no `$`, so
    /// the parent standing as the root changes nothing), and its cost per node tested.
    Filter(JpQuery, u64),
}

/// One segment: an optional `..`, then selectors.
#[derive(Debug, Clone)]
pub(crate) struct Hop {
    descend: bool,
    selectors: Vec<Sel>,
}

/// Lowers a parsed query (already checked by [`bound::check`]).
pub(crate) fn plan(q: &JpQuery) -> Vec<Hop> {
    q.segments
        .iter()
        .map(|seg| {
            let (descend, inner) = match seg {
                Segment::Descendant(inner) => (true, &**inner),
                s => (false, s),
            };
            let selectors = match inner {
                Segment::Selector(s) => vec![sel(s)],
                Segment::Selectors(v) => v.iter().map(sel).collect(),
                Segment::Descendant(_) => Vec::new(),
            };
            Hop { descend, selectors }
        })
        .collect()
}

fn sel(s: &Selector) -> Sel {
    match s {
        Selector::Name(n) => Sel::Name(n.clone()),
        Selector::Index(i) => Sel::Index(*i),
        Selector::Wildcard => Sel::Wildcard,
        Selector::Slice(a, b, c) => Sel::Slice(*a, *b, *c),
        Selector::Filter(f) => Sel::Filter(
            JpQuery::new(vec![Segment::Selector(Selector::Filter(f.clone()))]),
            1 + bound::filter_size(f),
        ),
    }
}

/// The nodes a query selects, in jsonpath-rust's order.
pub(crate) fn select<'v>(
    hops: &[Hop],
    root: &'v Value,
    budget: &mut Budget,
) -> Result<Vec<&'v Value>, OverBudget> {
    let mut list = vec![root];
    for hop in hops {
        if hop.descend {
            let mut all = Vec::new();
            let mut stack = Vec::new();
            for &x in &list {
                stack.push(x);
                while let Some(v) = stack.pop() {
                    budget.spend(1)?;
                    all.push(v);
                    match v {
                        Value::Array(a) => stack.extend(a.iter().rev()),
                        Value::Object(o) => stack.extend(o.values().rev()),
                        _ => {}
                    }
                }
            }
            list = all;
        }
        list = apply(&hop.selectors, &list, budget)?;
    }
    Ok(list)
}

fn apply<'v>(
    selectors: &[Sel],
    list: &[&'v Value],
    budget: &mut Budget,
) -> Result<Vec<&'v Value>, OverBudget> {
    let mut out = Vec::new();
    for s in selectors {
        for &x in list {
            budget.spend(1)?;
            match s {
                Sel::Name(k) => {
                    if let Some(v) = x.as_object().and_then(|o| o.get(k)) {
                        budget.spend(1)?;
                        out.push(v);
                    }
                }
                Sel::Index(i) => {
                    if let Some(v) = x.as_array().and_then(|a| index(a, *i)) {
                        budget.spend(1)?;
                        out.push(v);
                    }
                }
                Sel::Wildcard => match x {
                    Value::Array(a) => {
                        budget.spend(a.len() as u64)?;
                        out.extend(a);
                    }
                    Value::Object(o) => {
                        budget.spend(o.len() as u64)?;
                        out.extend(o.values());
                    }
                    _ => {}
                },
                Sel::Slice(start, end, step) => {
                    if let Some(a) = x.as_array() {
                        let mut r = Ok(());
                        slice(a.len(), *start, *end, *step, |i| {
                            r = r.and_then(|()| budget.spend(1));
                            if r.is_ok() {
                                out.push(&a[i]);
                            }
                            r.is_ok()
                        });
                        r?;
                    }
                }
                Sel::Filter(q, per_node) => {
                    let n = match x {
                        Value::Array(a) => a.len(),
                        Value::Object(o) => o.len(),
                        _ => 0,
                    };
                    if n > 0 {
                        budget.spend((n as u64).saturating_mul(*per_node))?;
                        if let Ok(found) = js_path_process(q, x) {
                            out.extend(found.into_iter().map(QueryRef::val));
                        }
                    }
                }
            }
        }
    }
    Ok(out)
}

/// RFC 9535 index: negative counts from the end.
fn index(a: &[Value], i: i64) -> Option<&Value> {
    if i >= 0 {
        a.get(usize::try_from(i).ok()?)
    } else {
        let back = usize::try_from(i.unsigned_abs()).ok()?;
        a.len().checked_sub(back).and_then(|j| a.get(j))
    }
}

/// Calls `each` with the indexes an RFC 9535 slice selects from an array of `len`, in order,
/// while it returns true. Each index it gives is in bounds, so the loop is as long as its
/// output (a huge step ends it, rather than overflowing).
fn slice(
    len: usize,
    start: Option<i64>,
    end: Option<i64>,
    step: Option<i64>,
    mut each: impl FnMut(usize) -> bool,
) {
    let len = len as i64;
    let norm = |i: i64| if i >= 0 { i } else { len + i };
    let step = step.unwrap_or(1);
    if step > 0 {
        let lower = norm(start.unwrap_or(0)).clamp(0, len);
        let upper = norm(end.unwrap_or(len)).clamp(0, len);
        let mut i = lower;
        while i < upper && each(i as usize) {
            let Some(next) = i.checked_add(step) else { return };
            i = next;
        }
    } else if step < 0 {
        let lower = norm(end.unwrap_or(-len - 1)).clamp(-1, len - 1);
        let upper = norm(start.unwrap_or(len - 1)).clamp(-1, len - 1);
        let mut i = upper;
        while lower < i && each(i as usize) {
            let Some(next) = i.checked_add(step) else { return };
            i = next;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slice_of(len: usize, a: Option<i64>, b: Option<i64>, c: Option<i64>) -> Vec<usize> {
        let mut v = Vec::new();
        slice(len, a, b, c, |i| {
            v.push(i);
            true
        });
        v
    }

    #[test]
    fn slices_follow_rfc_9535() {
        assert_eq!(slice_of(5, Some(1), Some(3), None), vec![1, 2]);
        assert_eq!(slice_of(5, None, None, Some(2)), vec![0, 2, 4]);
        assert_eq!(slice_of(5, None, None, Some(-1)), vec![4, 3, 2, 1, 0]);
        assert_eq!(slice_of(5, Some(-2), None, None), vec![3, 4]);
        assert_eq!(slice_of(5, None, None, Some(0)), Vec::<usize>::new());
        assert_eq!(slice_of(5, Some(1), None, Some(i64::MAX)), vec![1]);
        assert_eq!(slice_of(5, Some(-1), None, Some(i64::MIN)), vec![4]);
        assert_eq!(slice_of(0, None, None, Some(-1)), Vec::<usize>::new());
    }

    #[test]
    fn indexes_count_from_either_end() {
        let a = [Value::from(1), Value::from(2)];
        assert_eq!(index(&a, 1), Some(&a[1]));
        assert_eq!(index(&a, -1), Some(&a[1]));
        assert_eq!(index(&a, -2), Some(&a[0]));
        assert_eq!(index(&a, -3), None);
        assert_eq!(index(&a, i64::MIN), None);
        assert_eq!(index(&a, 2), None);
    }
}
