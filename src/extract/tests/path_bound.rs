//! The bound on general queries (issue 12): what a schema may not hold, and what the worst it
//! may hold costs on the worst event the pipeline admits (1 MiB, 64 deep), in nodes visited.

use super::*;
use crate::extract::path::bound::{MAX_FIXED_VISITS, MAX_VISITS_PER_NODE};
use crate::extract::path::eval::{self, Budget, OverBudget};
use serde_json::Value;

/// A schema whose customer id falls back to `path`.
fn with_fallback(path: &str) -> String {
    GOOD.replace("customer_id = ['$.uid']", &format!("customer_id = ['$.uid', '{path}']"))
}

#[test]
fn paths_beyond_the_bound_are_refused_with_the_rule() {
    for (path, hint) in [
        ("$..*..*..*", "has 3 recursive descents (`..`): a path may have at most one"),
        ("$..a..b", "has 2 recursive descents"),
        ("$.a[?$.b == 1]", "a filter may not read `$`"),
        ("$.a[?@..b]", "only names and indexes from `@`"),
        ("$.a[?@.b[*]]", "only names and indexes from `@`"),
        ("$.a[?@.b == @.c]", "needs a literal on one side"),
        (r#"$.a[?match(@.b, "x.*")]"#, "match() and search() are not allowed"),
        (r#"$.a[?search(@.b, "x")]"#, "match() and search() are not allowed"),
        // Unions multiply: 2⁶ copies of every node reached by the last wildcard.
        ("$[*,*][*,*][*,*][*,*][*,*][*,*]", "may visit each node of an event up to"),
        // Sixteen wildcards after a `..`: each one reads the event again.
        (&format!("$..*{}", ".*".repeat(16)), "may visit each node of an event up to"),
    ] {
        let errs = compile_one(&with_fallback(path)).expect_err(path);
        let e = errs
            .0
            .iter()
            .find(|e| e.field == "fields.customer_id[1]")
            .unwrap_or_else(|| panic!("no error on the path {path}: {errs}"));
        assert!(e.message.contains(hint), "{path}: {e}");
        assert!(e.message.contains(&format!("`{path}`")), "the message names the path: {e}");
    }
}

#[test]
fn paths_within_the_bound_compile_and_read() {
    for (path, line, want) in [
        ("$..sku", r#"{"id":"m","ts":1709633730,"a":[{"b":{"sku":"7"}}]}"#, "7"),
        ("$.items[*].sku", r#"{"id":"m","ts":1709633730,"items":[{},{"sku":"8"}]}"#, "8"),
        (
            r#"$..[?@.kind == "a"].sku"#,
            r#"{"id":"m","ts":1709633730,"x":{"y":[{"kind":"b","sku":"1"},{"kind":"a","sku":"9"}]}}"#,
            "9",
        ),
        ("$..*[?length(@) == 3]", r#"{"id":"m","ts":1709633730,"x":["ab","abc"]}"#, "abc"),
        (r#"$.a[-1:]["u","v"]"#, r#"{"id":"m","ts":1709633730,"a":[{"u":"1"},{"v":"2"}]}"#, "2"),
    ] {
        let x = compile_one(&with_fallback(path)).unwrap_or_else(|e| panic!("{path}: {e}"));
        assert_eq!(ok(&x, line).1, want, "{path}");
    }
}

/// The worst event the pipeline admits: containers nested 64 deep, each level holding a long
/// key and an array of `width` leaves, so that every level has many nodes under many ancestors.
fn deep_event(width: usize) -> String {
    let leaves = format!("[{}0]", "0,".repeat(width - 1));
    let key = "k".repeat(64);
    let mut text = leaves.clone();
    for i in 0..63 {
        text = format!(r#"{{"{key}{i}":{leaves},"sku":{i},"kind":"a","n":{text}}}"#);
    }
    text
}

fn node_count(v: &Value) -> u64 {
    1 + match v {
        Value::Array(a) => a.iter().map(node_count).sum(),
        Value::Object(o) => o.values().map(node_count).sum(),
        _ => 0,
    }
}

/// Nodes visited by `path` on `text`, with no budget to stop it.
fn visits(path: &str, text: &str) -> u64 {
    let value: Value = serde_json::from_str(text).unwrap();
    let p = JsonPath::parse(path).unwrap();
    let mut budget = Budget::new(u64::MAX);
    p.first_match(&value, &mut budget).unwrap();
    budget.spent()
}

#[test]
fn the_worst_allowed_path_visits_each_node_a_bounded_number_of_times() {
    let big = deep_event(8_100);
    let half = deep_event(4_050);
    assert!((1_000_000..=1 << 20).contains(&big.len()), "{}", big.len());
    crate::decode::decode(big.as_bytes()).expect("the pipeline admits this event (≤ 64 deep)");
    let n_big = node_count(&serde_json::from_str(&big).unwrap());
    // The costliest path the bound allows: every wildcard after `..` re-reads the event.
    let worst = format!("$..*{}", ".*".repeat(14));
    for path in [
        worst.as_str(),
        "$..*",
        "$..sku",
        r#"$..[?@.kind == "a" && @.sku > 3].n.sku"#,
        "$..['n','sku','kind'][*]",
        "$.*.*[*]",
    ] {
        let cost = JsonPath::parse(path).unwrap().cost();
        assert!(cost.per_node <= MAX_VISITS_PER_NODE && cost.fixed <= MAX_FIXED_VISITS, "{path}");
        let (v_big, v_half) = (visits(path, &big), visits(path, &half));
        assert!(v_big <= cost.at(n_big), "{path}: {v_big} visits > bound {}", cost.at(n_big));
        assert!(v_big <= MAX_VISITS_PER_NODE * n_big, "{path}: {v_big} visits, {n_big} nodes");
        // Linear: twice the leaves, at most twice the visits.
        assert!(v_big <= 2 * v_half + cost.fixed, "{path}: {v_half} then {v_big} visits");
    }
    let v = visits(&worst, &big);
    assert!(v > 20 * n_big, "the worst path does reach its bound's order: {v} for {n_big}");
}

#[test]
fn a_refused_path_would_be_superlinear_and_the_budget_stops_it() {
    // Bypass the compile-time check, as a bug in it would, to see what the rule prevents.
    let value: Value = serde_json::from_str(&deep_event(400)).unwrap();
    let n = node_count(&value);
    let q = jsonpath_rust::parser::parse_json_path("$..*..*").unwrap();
    let mut unbounded = Budget::new(u64::MAX);
    eval::select(&eval::plan(&q), &value, &mut unbounded).unwrap();
    assert!(unbounded.spent() > 25 * n, "one node listed once per ancestor: {}", unbounded.spent());
    // With a budget of the bound's size, the evaluation stops instead of running on.
    let q = jsonpath_rust::parser::parse_json_path("$..*..*..*").unwrap();
    let mut budget = Budget::new(MAX_VISITS_PER_NODE * n);
    assert_eq!(eval::select(&eval::plan(&q), &value, &mut budget).err(), Some(OverBudget));
    assert!(budget.spent() <= MAX_VISITS_PER_NODE * n);
}

#[test]
fn a_spent_budget_dead_letters_the_event_as_path_budget() {
    let p = JsonPath::parse("$..*").unwrap();
    let value: Value = serde_json::from_str(r#"{"a":[1,2,3]}"#).unwrap();
    assert_eq!(p.first_match(&value, &mut Budget::new(3)), Err(OverBudget));
    assert_eq!(ExtractError::PathBudget.reason(), "path_budget");
    assert!(BUILTIN_REASONS.contains(&"path_budget"));
    // Within the bound, the budget the pipeline gives never runs out, even on the worst event.
    let x = compile_one(&with_fallback(&format!("$..*{}", ".*".repeat(14)))).unwrap();
    let line = deep_event(8_100).replacen('{', r#"{"id":"m","ts":1709633730,"#, 1);
    let mut slots = Vec::new();
    let got = x.extract(&line, &mut slots).map(|e| e.customer_id.into_owned());
    assert_eq!(got.map_err(|e| e.reason().to_owned()), Ok("0".to_owned()));
}

#[test]
fn the_evaluator_agrees_with_jsonpath_rust() {
    let doc: Value = serde_json::from_str(
        r#"{"a":[{"b":null,"c":1},{"b":2,"k":"x"},[3,{"b":4}]],"b":{"b":5},"s":"t",
            "o":{"kind":"a","v":[10,11,12,13]},"p":[{"kind":"b","v":1},{"kind":"a","v":2}]}"#,
    )
    .unwrap();
    for path in [
        "$..b",
        "$..*",
        "$.a[*].b",
        "$.a[-1][1].b",
        "$.o.v[1:3]",
        "$.o.v[::-1]",
        "$.o.v[-2:]",
        "$.o.v[::2]",
        "$['b','a'][*]",
        "$..['b','c']",
        "$..[0,1]",
        "$.p[?@.kind == 'a'].v",
        "$..[?@.kind == 'a']",
        "$..[?@.v > 1 || @.c]",
        "$..[?!@.b]",
        "$.a[?length(@) == 2]",
        "$.*[?@ == 'x']",
        "$.nope[*]",
    ] {
        let want = jsonpath_rust::query::js_path_process(
            &jsonpath_rust::parser::parse_json_path(path).unwrap(),
            &doc,
        )
        .unwrap()
        .into_iter()
        .map(jsonpath_rust::query::QueryRef::val)
        .collect::<Vec<_>>();
        let q = jsonpath_rust::parser::parse_json_path(path).unwrap();
        let got = eval::select(&eval::plan(&q), &doc, &mut Budget::new(u64::MAX)).unwrap();
        assert_eq!(got, want, "{path}");
    }
}
