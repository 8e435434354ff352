//! The processor's own tests: sets swapped mid-stream, kinds added by a reload, several
//! workers against one.

use super::*;
use crate::extract::schema::parse_bytes;

fn set(version: u32, classify_view: bool) -> Arc<Extractor> {
    let mut text = format!(
        "name = \"a\"\nversion = {version}\n[fields]\nmessage_id = ['$.id']\ncustomer_id = ['$.c']\nevent_time = [{{ path = '$.t', format = \"epoch\" }}]\n"
    );
    if classify_view {
        text.push_str(
            "[[classify]]\nkind = \"page_view\"\nwhen = [{ path = '$.e', equals = \"v\" }]\n",
        );
    }
    let l = parse_bytes(std::path::Path::new("a.toml"), text.into_bytes()).unwrap();
    Arc::new(Extractor::compile(vec![l]).unwrap())
}

fn line(p: &mut Processor, n: u64, text: &str) {
    let mut slots = Vec::new();
    let pos = LinePosition { input: 0, line: n, offset: 0 };
    p.process_line(text.as_bytes(), pos, &mut slots);
}

#[test]
fn rows_and_dead_letters_name_the_sets_that_read_them() {
    let rules = Rules { gap_ms: 1_000_000, lateness_ms: 0, dedup_horizon_ms: 0, max_future_ms: 0 };
    let mut p = Processor::new(set(1, false), rules, vec![Arc::from("in")]);
    line(&mut p, 1, r#"{"id":1,"c":"x","t":1709510400,"e":"v"}"#);
    line(&mut p, 2, r#"{"id":2,"c":"y","t":1709510401,"e":"v"}"#);
    line(&mut p, 3, "not json");
    p.set_extractor(set(2, true));
    assert_eq!(p.schema_set(), "a@2");
    line(&mut p, 4, r#"{"id":3,"c":"x","t":1709510402,"e":"v"}"#);
    line(&mut p, 5, "not json either");
    let base = MetaBase { inputs: vec![], settings: String::new() };
    let (mut out, batch) = p.checkpoint(SourcePosition::default(), true, base).unwrap();
    let sets: Vec<(&str, Vec<&str>, u64)> = out
        .rows()
        .iter()
        .map(|r| {
            let names = r.schema_sets.iter().map(|s| &**s).collect();
            (&*r.customer_id, names, r.count("page_views").unwrap())
        })
        .collect();
    assert_eq!(sets, [("x", vec!["a@1", "a@2"], 1), ("y", vec!["a@1"], 0)]);
    let dead: Vec<&str> = out.dead.iter().map(|d| &*d.schema_set).collect();
    assert_eq!(dead, ["a@1", "a@2"]);
    assert_eq!(batch.meta.unwrap().schema_sets, ["a@1", "a@2"]);
}

/// Lines of every sort: events of many customers (some with escaped ids), copies of
/// earlier ones, late ones, and rejects of each stage.
fn messy(lines: u64) -> Vec<u8> {
    let mut out = Vec::new();
    let mut seed = 12_345u64;
    for i in 0..lines {
        seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        let roll = (seed >> 33) % 100;
        let cust = (seed >> 20) % 37;
        let t = 1_709_510_400 + i / 3;
        let line = match roll {
            0 => String::new(),
            1 => "not json".to_owned(),
            2 => r#"{"id":1,"c":"x""#.to_owned(),
            3 => "[1,2]".to_owned(),
            4 => format!(r#"{{"c":"c{cust}","t":{t},"e":"v"}}"#),
            5 => format!(r#"{{"id":"m{i}","c":"c{cust}","t":"soon","e":"v"}}"#),
            6 => format!(r#"{{"id":"m{i}","t":{t},"e":"v"}}"#),
            // A copy of an earlier message.
            7..=11 => format!(r#"{{"id":"m{}","c":"c{cust}","t":{t},"e":"v"}}"#, i / 2),
            // Older than the watermark.
            12..=14 => format!(r#"{{"id":"late{i}","c":"c{cust}","t":{},"e":"v"}}"#, t - 4000),
            15 => {
                format!(r#"{{"id":"m\u0030{i}","c":"c\u00e9{cust}","t":{t},"e":"p","os":"x"}}"#)
            }
            _ => format!(
                r#"{{"id":"m{i}","c":"c{cust}","t":{t},"e":"{}","os":"{}","pad":"{}"}}"#,
                if roll.is_multiple_of(2) { "v" } else { "p" },
                ["ios", "linux", "android"][(roll % 3) as usize],
                "x".repeat((roll * 3) as usize)
            ),
        };
        out.extend_from_slice(line.as_bytes());
        out.push(b'\n');
    }
    // Invalid UTF-8, and a last line without its newline.
    out.extend_from_slice(b"{\"id\":\"\xff\"}\n{\"id\":\"end\",\"c\":\"c1\",\"t\":1709512000}");
    out
}

/// `data[from..to]` (whole lines, `lines` before them) through `p` as one chunk.
fn feed(p: &mut Processor, data: &[u8], (from, to): (usize, usize), lines: u64) -> SourcePosition {
    let chunk =
        Chunk { data: data[from..to].to_vec(), input: 0, lines_before: lines, offset: from as u64 };
    let pos = p.process_chunk(&chunk);
    assert_eq!(pos.offset, to as u64);
    pos
}

/// One checkpoint's rows (as written) and dead letters.
type Epoch = (Vec<String>, Vec<DeadLetter>);

/// Every chunk of `data` (cut at `cuts`) through a processor with `workers`, a checkpoint
/// after each: the rows (as written) and dead letters of each, and the totals.
fn replay(data: &[u8], cuts: &[usize], workers: usize) -> (Vec<Epoch>, Counters) {
    let rules =
        Rules { gap_ms: 10_000, lateness_ms: 120_000, dedup_horizon_ms: 600_000, max_future_ms: 0 };
    let mut p = Processor::new(with_kinds(1, true), rules, vec![Arc::from("in")]);
    p.set_workers(workers);
    let mut outs = Vec::new();
    let (mut from, mut lines) = (0, 0);
    for (k, &to) in cuts.iter().chain(&[data.len()]).enumerate() {
        let pos = feed(&mut p, data, (from, to), lines);
        lines = pos.line;
        from = to;
        let base = MetaBase { inputs: vec![], settings: String::new() };
        let (mut out, _) = p.checkpoint(pos, k == cuts.len(), base).unwrap();
        let rows = out.rows().iter().map(|r| serde_json::to_string(r).unwrap()).collect();
        outs.push((rows, out.dead));
    }
    (outs, p.counters().clone())
}

#[test]
fn several_workers_give_the_rows_and_dead_letters_of_one() {
    let data = messy(6_000);
    // Chunks of several slices each; the cuts fall just after a newline.
    let cut = |at: usize| at + memchr::memchr(b'\n', &data[at..]).unwrap() + 1;
    let cuts = [cut(data.len() / 3), cut(data.len() * 2 / 3)];
    assert!(data.len() / 3 > 4 * parallel::SLICE_BYTES, "{} bytes", data.len());
    let one = replay(&data, &cuts, 1);
    let c = &one.1;
    assert!(c.accepted > 3_000 && c.duplicates > 100 && c.truncated_values > 100, "{c:?}");
    for reason in ["late", "invalid_json", "not_object", "empty_line", "invalid_utf8"] {
        assert!(c.dead_lettered.get(reason).is_some_and(|&n| n > 0), "{reason}: {c:?}");
    }
    assert!(one.0.iter().all(|(rows, dead)| !rows.is_empty() && !dead.is_empty()));
    for workers in [2, 3, 8] {
        let many = replay(&data, &cuts, workers);
        assert!(many == one, "{workers} workers differ from one");
    }
}

fn with_kinds(version: u32, extra_kind: bool) -> Arc<Extractor> {
    let mut text = format!(
        "name = \"a\"\nversion = {version}\n[fields]\nmessage_id = ['$.id']\ncustomer_id = ['$.c']\nevent_time = [{{ path = '$.t', format = \"epoch\" }}]\n[[kinds]]\nname = \"page_view\"\ncolumn = \"page_views\"\n[[classify]]\nkind = \"page_view\"\nwhen = [{{ path = '$.e', equals = \"v\" }}]\n[[attributes]]\nname = \"os\"\npaths = ['$.os']\naggregate = \"first\"\nmax_bytes = 3\n"
    );
    if extra_kind {
        text.push_str("[[kinds]]\nname = \"play\"\ncolumn = \"plays\"\n[[classify]]\nkind = \"play\"\nwhen = [{ path = '$.e', equals = \"p\" }]\n");
    }
    let l = parse_bytes(std::path::Path::new("a.toml"), text.into_bytes()).unwrap();
    Arc::new(Extractor::compile(vec![l]).unwrap())
}

#[test]
fn a_reload_that_adds_a_kind_counts_it_from_then_on_and_old_rows_lack_the_column() {
    let rules = Rules { gap_ms: 1_000, lateness_ms: 0, dedup_horizon_ms: 0, max_future_ms: 0 };
    let mut p = Processor::new(with_kinds(1, false), rules, vec![Arc::from("in")]);
    let base = || MetaBase { inputs: vec![], settings: String::new() };
    line(&mut p, 1, r#"{"id":1,"c":"early","t":1709510400,"e":"p","os":"linux"}"#);
    line(&mut p, 2, r#"{"id":2,"c":"y","t":1709510400,"e":"p","os":"ios"}"#);
    // Two seconds later, past the gap: "early" and "y" close; "x" stays open across the reload.
    line(&mut p, 3, r#"{"id":3,"c":"x","t":1709510402,"e":"v"}"#);
    let (mut out, _) = p.checkpoint(SourcePosition::default(), false, base()).unwrap();
    let early: Vec<String> = out.rows().iter().map(|r| serde_json::to_string(r).unwrap()).collect();
    assert_eq!(
        early,
        [
            r#"{"customer_id":"early","session_start":1709510400000,"session_end":1709510400000,"duration_ms":0,"event_count":1,"page_views":0,"os":"lin","schema_sets":["a@1"]}"#,
            r#"{"customer_id":"y","session_start":1709510400000,"session_end":1709510400000,"duration_ms":0,"event_count":1,"page_views":0,"os":"ios","schema_sets":["a@1"]}"#,
        ],
        "closed before the reload: no `plays` column; the value cut to 3 bytes"
    );
    assert_eq!(p.counters().truncated_values, 1);
    p.set_extractor(with_kinds(2, true));
    line(&mut p, 4, r#"{"id":4,"c":"x","t":1709510402,"e":"p","os":"mac"}"#);
    line(&mut p, 5, r#"{"id":5,"c":"x","t":1709510402,"e":"p"}"#);
    let (mut out, batch) = p.checkpoint(SourcePosition::default(), true, base()).unwrap();
    let row = serde_json::to_value(&out.rows()[0]).unwrap();
    assert_eq!((row["event_count"].as_u64(), row["page_views"].as_u64()), (Some(3), Some(1)));
    assert_eq!(row["plays"], 2, "only events after the reload count as plays: {row}");
    assert_eq!(row["os"], "mac", "first value by event time, at the event after the reload");
    let meta = batch.meta.unwrap();
    assert_eq!(meta.kinds, ["page_view", "play"]);
    assert_eq!(meta.attributes, ["os:string:first"]);
}

/// Every customer's events through a processor over a store, then the end of input: in
/// steps of `step` sessions (each step's batch durable before the next, as `replay` does),
/// the rows of each checkpoint.
/// A processor over an empty store whose session and id caches hold `cache` bytes.
fn over_a_store(cache: usize) -> (Processor, crate::state::memory::MemoryStore) {
    use crate::state::StateStore;
    let rules = Rules {
        gap_ms: 60_000,
        lateness_ms: 3_600_000,
        dedup_horizon_ms: 3_600_000,
        max_future_ms: 0,
    };
    let mut p = Processor::new(set(1, false), rules, vec![Arc::from("in")]);
    let store = crate::state::memory::MemoryStore::default();
    p.restore(None, store.backing(), cache);
    (p, store)
}

/// 3,000 events of 700 customers, some with two sessions open at the end.
fn open_at_the_end() -> Vec<u8> {
    use std::fmt::Write;
    let mut text = String::new();
    for i in 0..3_000u64 {
        let (c, t) = ((i * 7_919) % 700, 1_709_510_400 + i + (i % 3) * 200);
        writeln!(text, "{{\"id\":{i},\"c\":\"c{c}\",\"t\":{t}}}").unwrap();
    }
    text.into_bytes()
}

fn close_in_steps(step: Option<usize>, cache: usize) -> Vec<Vec<String>> {
    use crate::state::StateStore;
    let (mut p, mut store) = over_a_store(cache);
    if let Some(n) = step {
        p.set_end_step(n);
    }
    let data = open_at_the_end();
    let base = MetaBase { inputs: vec![], settings: String::new() };
    let mut outs = Vec::new();
    // The last interval touches few customers: those close first, the others by the index.
    let last = data.len() - 600;
    let half = last + memchr::memchr(b'\n', &data[last..]).unwrap() + 1;
    let mut lines = 0;
    for (from, to) in [(0, half), (half, data.len())] {
        let pos = feed(&mut p, &data, (from, to), lines);
        lines = pos.line;
        let end = to == data.len();
        loop {
            let (mut out, batch) = p.checkpoint(pos, end, base.clone()).unwrap();
            let finished = batch.meta.as_ref().is_some_and(|m| m.finished);
            store.write_batch(&batch).unwrap();
            outs.push(out.rows().iter().map(|r| serde_json::to_string(r).unwrap()).collect());
            if !end || finished {
                break;
            }
        }
    }
    outs
}

#[test]
fn the_end_of_input_closes_in_steps_the_rows_one_close_gives() {
    let whole = close_in_steps(None, 64 << 20);
    let stepped = close_in_steps(Some(50), 64 << 20);
    // A small cache reads customers back from the store between steps: the same steps.
    assert_eq!(close_in_steps(Some(50), 16 << 10), stepped);
    assert_eq!(whole.len(), 2);
    assert!(stepped.len() > 10, "{} checkpoints", stepped.len());
    // The first step also closes what the watermark allows; the later ones hold about a step
    // (a customer's sessions, up to five here, close together: a step may run over by four).
    for rows in &stepped[2..] {
        assert!((1..=54).contains(&rows.len()), "{}", rows.len());
    }
    let sorted = |outs: &[Vec<String>]| {
        let mut all: Vec<String> = outs.concat();
        all.sort();
        all
    };
    assert_eq!(sorted(&stepped), sorted(&whole));
}

/// The last step of the end of input, over a store, with the interval's batch before it
/// written first or not (still being committed): whether one step was left, whether it
/// finished, and its rows.
fn last_step(durable_before: bool, step: usize) -> (bool, bool, Vec<String>) {
    use crate::state::StateStore;
    let (mut p, mut store) = over_a_store(64 << 20);
    p.set_end_step(step);
    let data = open_at_the_end();
    let base = MetaBase { inputs: vec![], settings: String::new() };
    let pos = feed(&mut p, &data, (0, data.len()), 0);
    let (_, batch) = p.checkpoint(pos, false, base.clone()).unwrap();
    if durable_before {
        store.write_batch(&batch).unwrap();
    }
    let one = p.one_step_left();
    let (mut out, batch) = p.checkpoint(pos, true, base).unwrap();
    let finished = batch.meta.as_ref().is_some_and(|m| m.finished);
    (one, finished, out.rows().iter().map(|r| serde_json::to_string(r).unwrap()).collect())
}

#[test]
fn a_last_step_that_closes_everything_gives_the_same_rows_without_waiting() {
    let (one, finished, after_commit) = last_step(true, 10_000);
    assert!(one && finished);
    assert!(after_commit.len() > 700, "{} rows", after_commit.len());
    // `replay` does not wait for the batch before such a step: the same rows either way.
    assert_eq!(last_step(false, 10_000), (true, true, after_commit));
    // More sessions open than a step holds: the steps wait, as where they stop depends on it.
    assert!(!last_step(true, 50).0);
}

#[test]
fn an_event_from_far_ahead_of_the_clock_is_dead_lettered_and_moves_nothing() {
    let day = 86_400_000;
    // A day of lateness: the event an hour fast (line 3) leaves lines 4 and 5 in time.
    let rules =
        Rules { gap_ms: 1_000, lateness_ms: day, dedup_horizon_ms: day, max_future_ms: day };
    let mut p = Processor::new(set(1, false), rules, vec![Arc::from("in")]);
    // The clock of the processing: 2024-03-04T06:00Z; the events are of that morning, one
    // of 2099.
    p.set_now(1_709_532_000_000);
    line(&mut p, 1, r#"{"id":1,"c":"x","t":1709510400}"#);
    line(&mut p, 2, r#"{"id":2,"c":"broken-clock","t":4070908800}"#);
    // Within the margin of the clock: a device an hour fast still counts.
    line(&mut p, 3, r#"{"id":3,"c":"y","t":1709535600}"#);
    // Later real events are not late: the 2099 event moved no watermark.
    line(&mut p, 4, r#"{"id":4,"c":"x","t":1709510460}"#);
    // Nor was its id remembered: the same message with a sane clock counts.
    line(&mut p, 5, r#"{"id":2,"c":"broken-clock","t":1709510401}"#);
    let c = p.counters().clone();
    assert_eq!(c.accepted, 4, "{c:?}");
    assert_eq!(c.dead_lettered.get("future_timestamp"), Some(&1), "{c:?}");
    assert_eq!(c.dead_lettered.get("late"), None, "{c:?}");
    let base = MetaBase { inputs: vec![], settings: String::new() };
    let (out, _) = p.checkpoint(SourcePosition::default(), true, base).unwrap();
    assert_eq!(out.dead.len(), 1);
    assert_eq!(&*out.dead[0].reason, "future_timestamp");
    assert_eq!(out.dead[0].position.line, 2);
    assert!(out.dead[0].detail.contains("ahead of the wall clock"), "{}", out.dead[0].detail);
}

#[test]
fn without_a_clock_or_with_the_bound_off_far_future_events_count() {
    for (max_future_ms, clock) in [(86_400_000, None), (0, Some(1_709_596_800_000))] {
        let rules = Rules { gap_ms: 1_000, lateness_ms: 0, dedup_horizon_ms: 0, max_future_ms };
        let mut p = Processor::new(set(1, false), rules, vec![Arc::from("in")]);
        if let Some(now) = clock {
            p.set_now(now);
        }
        line(&mut p, 1, r#"{"id":2,"c":"z","t":4070908800}"#);
        assert_eq!(p.counters().accepted, 1);
    }
}
