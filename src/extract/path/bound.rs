//! The bound on general queries: which ones a schema may hold, and how many node visits one
//! costs on an event, worked out once when the path compiles.
//!
//! Why the work is linear in the event's size. The evaluator ([`super::eval`]) keeps a list of
//! nodes and applies one segment at a time. Two facts about such a list carry the argument:
//! its *multiplicity* `m` (how many times one node can appear in it) and whether it is
//! *ancestor-free* (no node in it lies below another node in it).
//!
//! * A child segment applies each of its selectors to each node of the list. A node has one
//!   parent, so a wildcard, slice or filter reached through a list of multiplicity `m` examines
//!   each node of the event at most `m` times (`m·N` in all), and names and indexes give at most
//!   one node per input. The output's multiplicity is `m` times the number of selectors (a
//!   union `['a','b']` can reach one node through each selector).
//! * A recursive descent `..` lists every node below each node of its input. On an
//!   ancestor-free list each node of the event is listed once per copy of its one ancestor
//!   there: `m·N` in all. Child segments alone keep a list ancestor-free (all its nodes are at
//!   the same depth), but a descent's output is not, so a second `..` would list each node
//!   once per ancestor (the event's depth, up to 64, times over), a third 64² times, and so on:
//!   `$..*..*..*` on a 64-deep event of 1 MiB is about 10⁹ visits. Hence at most one `..`.
//! * A filter is evaluated once per node it tests. Inside a filter, queries may only follow
//!   names and indexes from `@`, and comparisons need a literal on one side, so one test costs
//!   a constant set by the filter's text. A `$` query, a wildcard or `..` inside a filter, or a
//!   comparison of two subtrees, would re-read part of the event for every node tested; the
//!   regular-expression functions compile their pattern again on every call.
//!
//! Each step is thus a constant (depending on the path's text only) times `N`, plus a
//! constant, and [`check`] adds them up into a [`Cost`]; it refuses a path whose cost per node
//! is over [`MAX_VISITS_PER_NODE`] (unions multiplying through many wildcards) or whose fixed
//! part is over [`MAX_FIXED_VISITS`].

use jsonpath_rust::parser::model::{
    Comparable, Comparison, Filter, FilterAtom, FnArg, JpQuery, Segment, Selector, SingularQuery,
    Test, TestFunction,
};

/// Most node visits one path may cost per node of an event.
pub const MAX_VISITS_PER_NODE: u64 = 32;
/// Most node visits one path may cost whatever the event's size.
pub const MAX_FIXED_VISITS: u64 = 4096;

/// An upper bound on the node visits of one path on one event of `n` nodes:
/// `per_node × n + fixed`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Cost {
    /// Visits per node of the event.
    pub per_node: u64,
    /// Visits whatever the event's size.
    pub fixed: u64,
}

impl Cost {
    /// The bound on an event of `n` nodes.
    #[must_use]
    pub fn at(self, n: u64) -> u64 {
        self.per_node.saturating_mul(n).saturating_add(self.fixed)
    }

    fn add(&mut self, per_node: u64, fixed: u64) {
        self.per_node = self.per_node.saturating_add(per_node);
        self.fixed = self.fixed.saturating_add(fixed);
    }
}

/// Checks the language bound on a parsed general query and returns its cost.
///
/// # Errors
/// A message naming the path and the rule it breaks.
pub fn check(text: &str, q: &JpQuery) -> Result<Cost, String> {
    let descents = q.segments.iter().filter(|s| matches!(s, Segment::Descendant(_))).count();
    if descents > 1 {
        return Err(format!(
            "`{text}` has {descents} recursive descents (`..`): a path may have at most one, \
             because each `..` after the first lists every node again once per ancestor it has \
             (up to the event's depth times over); name the steps after the first `..` instead"
        ));
    }
    // The list starts as the root alone: narrow (a constant number of nodes), multiplicity 1.
    let (mut m, mut wide) = (1u64, false);
    let mut cost = Cost::default();
    for seg in &q.segments {
        let selectors: &[Selector] = match seg {
            Segment::Descendant(inner) => {
                // Ancestor-free input (this is the only `..`): each node listed ≤ m times.
                cost.add(m, 0);
                wide = true;
                match &**inner {
                    Segment::Selector(s) => std::slice::from_ref(s),
                    Segment::Selectors(v) => v,
                    Segment::Descendant(_) => {
                        return Err(format!("`{text}`: `....` is not a path step"));
                    }
                }
            }
            Segment::Selector(s) => std::slice::from_ref(s),
            Segment::Selectors(v) => v,
        };
        let list = if wide { (m, 0) } else { (0, m) };
        let mut widens = false;
        for s in selectors {
            cost.add(list.0, list.1); // one application per node of the list
            match s {
                Selector::Name(_) | Selector::Index(_) => cost.add(list.0, list.1),
                Selector::Wildcard | Selector::Slice(..) => {
                    cost.add(m, 0);
                    widens = true;
                }
                Selector::Filter(f) => {
                    check_filter(text, f)?;
                    cost.add(m.saturating_mul(1 + filter_size(f)), 0);
                    widens = true;
                }
            }
        }
        m = m.saturating_mul(selectors.len() as u64);
        wide |= widens;
    }
    if cost.per_node > MAX_VISITS_PER_NODE || cost.fixed > MAX_FIXED_VISITS {
        return Err(format!(
            "`{text}` may visit each node of an event up to {} times (and {} more visits): at \
             most {MAX_VISITS_PER_NODE} (and {MAX_FIXED_VISITS}) are allowed; each wildcard, \
             slice or filter reads the event again, and unions (`['a','b']`) multiply what \
             follows them",
            cost.per_node, cost.fixed
        ));
    }
    Ok(cost)
}

/// Lookups one filter test costs at most (each query step, literal and operator counts one).
#[must_use]
pub fn filter_size(f: &Filter) -> u64 {
    match f {
        Filter::Or(v) | Filter::And(v) => 1 + v.iter().map(filter_size).sum::<u64>(),
        Filter::Atom(FilterAtom::Filter { expr, .. }) => 1 + filter_size(expr),
        Filter::Atom(FilterAtom::Test { expr, .. }) => test_size(expr),
        Filter::Atom(FilterAtom::Comparison(c)) => {
            let (l, r) = c.vals();
            1 + comparable_size(l) + comparable_size(r)
        }
    }
}

fn test_size(t: &Test) -> u64 {
    match t {
        Test::RelQuery(segs) => 1 + segs.len() as u64,
        Test::AbsQuery(q) => 1 + q.segments.len() as u64,
        Test::Function(f) => function_size(f),
    }
}

fn comparable_size(c: &Comparable) -> u64 {
    match c {
        Comparable::Literal(_) => 1,
        Comparable::Function(f) => function_size(f),
        Comparable::SingularQuery(SingularQuery::Current(segs) | SingularQuery::Root(segs)) => {
            1 + segs.len() as u64
        }
    }
}

fn function_size(f: &TestFunction) -> u64 {
    let arg = |a: &FnArg| match a {
        FnArg::Literal(_) => 1,
        FnArg::Test(t) => test_size(t),
        FnArg::Filter(f) => filter_size(f),
    };
    1 + match f {
        TestFunction::Length(a) => arg(a),
        TestFunction::Value(a) | TestFunction::Count(a) => arg(a),
        TestFunction::Search(a, b) | TestFunction::Match(a, b) => arg(a) + arg(b),
        TestFunction::Custom(_, args) => args.iter().map(arg).sum(),
    }
}

/// Refuses what would make one filter test cost more than a constant.
fn check_filter(text: &str, f: &Filter) -> Result<(), String> {
    match f {
        Filter::Or(v) | Filter::And(v) => v.iter().try_for_each(|f| check_filter(text, f)),
        Filter::Atom(FilterAtom::Filter { expr, .. }) => check_filter(text, expr),
        Filter::Atom(FilterAtom::Test { expr, .. }) => check_test(text, expr),
        Filter::Atom(FilterAtom::Comparison(c)) => check_comparison(text, c),
    }
}

fn check_comparison(text: &str, c: &Comparison) -> Result<(), String> {
    let (l, r) = c.vals();
    if !matches!(l, Comparable::Literal(_)) && !matches!(r, Comparable::Literal(_)) {
        return Err(format!(
            "`{text}`: a comparison in a filter needs a literal on one side (as in \
             `@.kind == 'a'`): comparing two queries compares whole subtrees, again for every \
             node tested"
        ));
    }
    for side in [l, r] {
        match side {
            Comparable::Literal(_) | Comparable::SingularQuery(SingularQuery::Current(_)) => {}
            Comparable::Function(f) => check_function(text, f)?,
            Comparable::SingularQuery(SingularQuery::Root(_)) => return Err(root_in_filter(text)),
        }
    }
    Ok(())
}

fn check_test(text: &str, t: &Test) -> Result<(), String> {
    match t {
        Test::AbsQuery(_) => Err(root_in_filter(text)),
        Test::RelQuery(segs) => {
            let singular = segs.iter().all(|s| {
                let sel = match s {
                    Segment::Selector(sel) => sel,
                    Segment::Selectors(v) if v.len() == 1 => &v[0],
                    _ => return false,
                };
                matches!(sel, Selector::Name(_) | Selector::Index(_))
            });
            if singular {
                Ok(())
            } else {
                Err(format!(
                    "`{text}`: inside a filter, a query follows only names and indexes from `@` \
                     (as in `@.kind` or `@.items[0]`): a wildcard, slice, union, `..` or filter \
                     there would read a subtree again for every node tested"
                ))
            }
        }
        Test::Function(f) => check_function(text, f),
    }
}

fn check_function(text: &str, f: &TestFunction) -> Result<(), String> {
    let arg = |a: &FnArg| match a {
        FnArg::Literal(_) => Ok(()),
        FnArg::Test(t) => check_test(text, t),
        FnArg::Filter(f) => check_filter(text, f),
    };
    match f {
        TestFunction::Length(a) => arg(a),
        TestFunction::Value(a) | TestFunction::Count(a) => arg(a),
        TestFunction::Match(..) | TestFunction::Search(..) => Err(format!(
            "`{text}`: match() and search() are not allowed in filters: they compile their \
             pattern again for every node tested; compare with `==` instead"
        )),
        TestFunction::Custom(name, _) => Err(format!(
            "`{text}`: unknown function `{name}` (filters know length, count and value)"
        )),
    }
}

fn root_in_filter(text: &str) -> String {
    format!(
        "`{text}`: a filter may not read `$`: that query would start again from the event's root \
         for every node tested; use `@`, the node tested"
    )
}
