use super::*;
use proptest::prelude::*;
use serde_json::Value;

fn frame_chunks(input: &[u8], max_record: usize, chunk: usize) -> Vec<Framed> {
    let mut f = Framer::new(max_record);
    let mut out = Vec::new();
    for part in input.chunks(chunk.max(1)) {
        f.feed(part, &mut out);
    }
    f.finish(&mut out);
    assert_eq!(f.consumed(), input.len() as u64);
    out
}

/// Frames `input` whole and in every chunk size up to 9, checking they agree.
fn frame(input: &[u8], max_record: usize) -> Vec<Framed> {
    let whole = frame_chunks(input, max_record, input.len());
    for chunk in 1..10 {
        assert_eq!(frame_chunks(input, max_record, chunk), whole, "chunk {chunk}");
    }
    whole
}

fn recs(s: &str) -> Framed {
    Framed::Records(s.as_bytes().to_vec())
}

fn bad(raw_offset: u64, s: &str, why: &'static str) -> Framed {
    Framed::Bad { raw_offset, len: s.len() as u64, prefix: s.as_bytes().to_vec(), why }
}

#[test]
fn framing_parses_and_prints_its_words() {
    for f in [Framing::Lines, Framing::Concatenated, Framing::Auto] {
        assert_eq!(f.to_string().parse::<Framing>(), Ok(f));
    }
    let err = "jsonl".parse::<Framing>().unwrap_err();
    assert!(err.contains("lines") && err.contains("concatenated") && err.contains("auto"));
}

#[test]
fn concatenated_values_become_lines_respecting_strings() {
    let input = br#"{"a":"}{"}{"b":"\"}{\\"}[1,{"c":[]}]"#;
    assert_eq!(
        frame(input, 1 << 20),
        vec![recs("{\"a\":\"}{\"}\n{\"b\":\"\\\"}{\\\\\"}\n[1,{\"c\":[]}]\n")]
    );
}

#[test]
fn whitespace_between_is_skipped_and_line_breaks_inside_become_spaces() {
    let input = b" \n{\n  \"a\": [\r\n 1,\t2\n ]\n}\r\n\t {\"b\":\"x y\"}  \n";
    assert_eq!(frame(input, 1 << 20), vec![recs("{   \"a\": [   1,\t2  ] }\n{\"b\":\"x y\"}\n")]);
}

#[test]
fn records_merge_into_the_last_records_of_out() {
    let mut f = Framer::new(100);
    let mut out = vec![recs("{}\n")];
    f.feed(b"{\"a\":1}[]", &mut out);
    assert_eq!(out, vec![recs("{}\n{\"a\":1}\n[]\n")]);
    out.push(bad(0, "x", WHY_BETWEEN));
    f.feed(b"{}", &mut out);
    assert_eq!(out.len(), 3);
    assert_eq!(out[2], recs("{}\n"));
}

#[test]
fn bytes_between_values_are_one_bad_run_without_edge_whitespace() {
    // Rule 1: the run starts at its first non-whitespace byte and ends after its last.
    let input = b"{} , 12 null\xff}] \n{\"a\":1}\n\x01x\"}";
    assert_eq!(
        frame(input, 1 << 20),
        vec![
            recs("{}\n"),
            Framed::Bad {
                raw_offset: 3,
                len: 12,
                prefix: b", 12 null\xff}]".to_vec(),
                why: WHY_BETWEEN
            },
            recs("{\"a\":1}\n"),
            bad(25, "\x01x\"}", WHY_BETWEEN),
        ]
    );
}

#[test]
fn only_bad_bytes() {
    assert_eq!(frame(b"  abc  ", 10), vec![bad(2, "abc", WHY_BETWEEN)]);
    assert_eq!(frame(b"", 10), vec![]);
    assert_eq!(frame(b" \r\n\t", 10), vec![]);
}

#[test]
fn depth_counts_either_bracket_kind() {
    // Rule 2: a mismatched bracket is the parser's business, not the framer's.
    assert_eq!(frame(b"{\"a\":[1}]{}", 100), vec![recs("{\"a\":[1}]\n{}\n")]);
}

#[test]
fn a_value_starting_inside_another_cuts_it_short() {
    // Rule 3: a truncated record followed by good ones.
    let input = br#"{"a":{"b":1}{"c":2}  {"d":"e"{"f":3}[[4],{"g":5}]"#;
    assert_eq!(
        frame(input, 100),
        vec![
            bad(0, r#"{"a":{"b":1}"#, WHY_CUT_SHORT),
            recs("{\"c\":2}\n"),
            bad(21, r#"{"d":"e""#, WHY_CUT_SHORT),
            recs("{\"f\":3}\n[[4],{\"g\":5}]\n"),
        ]
    );
    assert_eq!(frame(b"{ {}", 100), vec![bad(0, "{ ", WHY_CUT_SHORT), recs("{}\n")]);
}

#[test]
fn a_line_break_inside_a_string_ends_the_value_as_bad() {
    // Rule 4: the bad bytes stop before the line break, which is whitespace between values.
    let input = b"{\"a\":\"x\ny\"}\n{\"b\":1}{\"c\":\"\\\r\"}[]";
    assert_eq!(
        frame(input, 100),
        vec![
            bad(0, "{\"a\":\"x", WHY_LINE_BREAK),
            bad(8, "y\"}", WHY_BETWEEN),
            recs("{\"b\":1}\n"),
            bad(19, "{\"c\":\"\\", WHY_LINE_BREAK),
            bad(27, "\"}", WHY_BETWEEN),
            recs("[]\n"),
        ]
    );
}

#[test]
fn the_object_ending_inside_a_value_is_bad() {
    // Rule 5, also inside a string and right after an escape.
    assert_eq!(
        frame(b"{}\n{\"a\":[1,2", 100),
        vec![recs("{}\n"), bad(3, "{\"a\":[1,2", WHY_ENDS_INSIDE)]
    );
    assert_eq!(frame(b"[\"ab\\", 100), vec![bad(0, "[\"ab\\", WHY_ENDS_INSIDE)]);
}

#[test]
fn a_value_longer_than_max_record_is_oversized_and_skipped() {
    // Rule 6: exactly max_record fits; one more byte does not.
    let input = b"{\"a\":1} {\"a\":12}{\"b\":2}";
    assert_eq!(
        frame(input, 7),
        vec![
            recs("{\"a\":1}\n"),
            Framed::Oversized { raw_offset: 8, len: 8, prefix: b"{\"a\":12}".to_vec() },
            recs("{\"b\":2}\n"),
        ]
    );
}

#[test]
fn oversized_values_keep_only_a_prefix() {
    let big = format!("{{\"a\":\"{}\"}}", "x".repeat(3 * PREFIX));
    let input = format!("{big}{{}}");
    for chunk in [1000, 7919, input.len()] {
        let out = frame_chunks(input.as_bytes(), 100, chunk);
        assert_eq!(
            out,
            vec![
                Framed::Oversized {
                    raw_offset: 0,
                    len: big.len() as u64,
                    prefix: big.as_bytes()[..PREFIX].to_vec()
                },
                recs("{}\n"),
            ]
        );
    }
    // The framer held no more than PREFIX bytes of it.
    let mut f = Framer::new(100);
    let mut out = Vec::new();
    for part in big.as_bytes()[..big.len() - 1].chunks(4096) {
        f.feed(part, &mut out);
        assert!(f.held.len() <= PREFIX);
    }
    // Within max_record, everything is held, and no more.
    let mut g = Framer::new(PREFIX * 2);
    for part in big.as_bytes()[..big.len() - 1].chunks(PREFIX / 2) {
        g.feed(part, &mut Vec::new());
        let consumed = g.consumed() as usize;
        let want = if consumed <= 2 * PREFIX { consumed } else { PREFIX };
        assert_eq!(g.held.len(), want);
    }
    // Cut short, it is bad, with the same prefix.
    f.finish(&mut out);
    assert_eq!(
        out,
        vec![Framed::Bad {
            raw_offset: 0,
            len: big.len() as u64 - 1,
            prefix: big.as_bytes()[..PREFIX].to_vec(),
            why: WHY_ENDS_INSIDE,
        }]
    );
}

#[test]
fn long_bad_runs_keep_only_a_prefix() {
    let run = "x".repeat(PREFIX + 10);
    let out = frame_chunks(format!("{run}  {{}}").as_bytes(), 100, 999);
    assert_eq!(
        out,
        vec![
            Framed::Bad {
                raw_offset: 0,
                len: run.len() as u64,
                prefix: run.as_bytes()[..PREFIX].to_vec(),
                why: WHY_BETWEEN
            },
            recs("{}\n"),
        ]
    );
}

#[test]
fn a_leading_bom_is_whitespace() {
    // Rule 7: only at the very start; a partial BOM is bad.
    assert_eq!(frame(b"\xEF\xBB\xBF{}", 10), vec![recs("{}\n")]);
    assert_eq!(frame(b"\xEF\xBB\xBF \n[]", 10), vec![recs("[]\n")]);
    assert_eq!(
        frame(b"{}\xEF\xBB\xBF{}", 10),
        vec![recs("{}\n"), bad(2, "\u{FEFF}", WHY_BETWEEN), recs("{}\n")]
    );
    assert_eq!(
        frame(b"\xEF\xBB{}", 10),
        vec![
            Framed::Bad { raw_offset: 0, len: 2, prefix: b"\xEF\xBB".to_vec(), why: WHY_BETWEEN },
            recs("{}\n")
        ]
    );
    assert_eq!(
        frame(b"\xEF", 10),
        vec![Framed::Bad { raw_offset: 0, len: 1, prefix: b"\xEF".to_vec(), why: WHY_BETWEEN }]
    );
}

#[test]
fn detect_decides_lines_or_concatenated() {
    use Framing::{Concatenated, Lines};
    let cases: &[(&[u8], bool, Framing)] = &[
        (b"{\"a\":1}\n{\"a\":2}\n", true, Lines),
        (b"{\"a\":1}  \r\n{\"a\":2}", false, Lines),
        (b"{\"a\":1}", true, Lines),
        (b"\xEF\xBB\xBF  {\"a\":\"}{\"}\n", false, Lines),
        (b"{\"a\":1}{\"a\":2}", false, Concatenated),
        (b"{\"a\":1} \t[1]", true, Concatenated),
        (b"\xEF\xBB\xBF\n{\n  \"a\": 1\n}\n{\n", false, Concatenated),
        (b"{\n  \"a\": 1\n}", true, Concatenated),
        (b"[1,\r\n2]", true, Concatenated),
        // Not clearly concatenated: Lines.
        (b"", true, Lines),
        (b"  \n", true, Lines),
        (b"123 {}", true, Lines),
        (b"x{}{}", true, Lines),
        (b"{\"a\":\"x\ny\"}{}", true, Lines),
        (b"{\"a\":{\"b\":1}{\"c\":2}", true, Lines),
        (b"{\"a\":[1,", false, Lines),
        (b"{\"a\":[1,", true, Lines),
        // Pretty-printed, the value longer than what was looked at.
        (b"{\n\"a\":[1,", false, Concatenated),
        // Lines for a while, then back to back.
        (b"{\"a\":1}\n{\"a\":2}\n{\"a\":3}{\"a\":4}", true, Concatenated),
        // A line that is cut short does not make a file of lines concatenated.
        (b"{\"a\":1}\n{\"b\":\n{\"a\":2}\n", true, Lines),
        (b"{\"a\":1} x {}", true, Lines),
    ];
    for (head, complete, want) in cases {
        assert_eq!(detect(head, *complete), *want, "{}", String::from_utf8_lossy(head));
    }
}

#[test]
fn a_first_value_longer_than_the_first_look_is_read_to_its_end() {
    use Framing::{Concatenated, Lines};
    // A 300 KiB first record on one line (a debug dump), then what decides.
    let big = format!("{{\"dump\":\"{}\"}}", "ab".repeat(150 << 10));
    let stream = |after: &str| -> Box<dyn std::io::Read + Send> {
        Box::new(std::io::Cursor::new(format!("{big}{after}").into_bytes()))
    };
    for (after, want) in [("{\"a\":1}", Concatenated), ("\n{\"a\":1}\n", Lines), ("", Lines)] {
        let (framing, mut again) = detect_stream(stream(after), 64 << 20).unwrap();
        assert_eq!(framing, want, "followed by {after:?}");
        let mut all = String::new();
        std::io::Read::read_to_string(&mut again, &mut all).unwrap();
        assert_eq!(all, format!("{big}{after}"), "the stream again from its start");
    }
    // Up to the bound only: past it, what was seen decides (Lines).
    assert_eq!(detect_stream(stream("{}"), 128 << 10).unwrap().0, Lines);
    // The first look alone could not tell.
    assert_eq!(detect(&big.as_bytes()[..64 << 10], false), Lines);
}

// --- property test ---

fn json_string() -> impl Strategy<Value = String> {
    prop::collection::vec(
        prop_oneof![
            Just('{'),
            Just('}'),
            Just('['),
            Just(']'),
            Just('"'),
            Just('\\'),
            Just(':'),
            Just(','),
            Just('\n'),
            Just('é'),
            Just('😀'),
            Just('a'),
            Just(' '),
        ],
        0..8,
    )
    .prop_map(|cs| cs.into_iter().collect())
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        json_string().prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 32, 5, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            prop::collection::vec((json_string(), inner), 0..5)
                .prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    })
}

fn top_value() -> impl Strategy<Value = Value> {
    json_value().prop_map(|v| match v {
        Value::Array(_) | Value::Object(_) => v,
        scalar => Value::Array(vec![scalar]),
    })
}

fn whitespace() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(prop::sample::select(&b" \t\r\n"[..]), 0..4)
}

/// Garbage: no `{`/`[`, no whitespace at its edges, never starting with a BOM byte.
fn garbage() -> impl Strategy<Value = Vec<u8>> {
    let byte = prop::sample::select(&b"x1,}]\"\\:n \n\x00\x7f\x80\xff"[..]);
    prop::collection::vec(byte, 1..12).prop_map(|mut g| {
        while g.last().is_some_and(|b| is_ws(*b)) {
            g.pop();
        }
        while g.first().is_some_and(|b| is_ws(*b)) {
            g.remove(0);
        }
        if g.is_empty() {
            g.push(b'z');
        }
        g
    })
}

#[derive(Debug, Clone)]
struct Item {
    garbage: Option<Vec<u8>>,
    ws_before: Vec<u8>,
    value: Value,
    pretty: bool,
    ws_after: Vec<u8>,
}

fn item() -> impl Strategy<Value = Item> {
    (prop::option::weighted(0.2, garbage()), whitespace(), top_value(), any::<bool>(), whitespace())
        .prop_map(|(garbage, ws_before, value, pretty, ws_after)| Item {
            garbage,
            ws_before,
            value,
            pretty,
            ws_after,
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]
    #[test]
    fn frames_generated_values_whatever_the_chunks(
        items in prop::collection::vec(item(), 0..8),
        tail in prop::option::weighted(0.2, garbage()),
        chunks in prop::collection::vec(1usize..50, 1..64),
    ) {
        let mut input = Vec::new();
        let mut want_bad = Vec::new();
        let mut whitespace = 0u64;
        for it in &items {
            if let Some(g) = &it.garbage {
                want_bad.push((input.len() as u64, g.clone()));
                input.extend_from_slice(g);
            }
            input.extend_from_slice(&it.ws_before);
            whitespace += it.ws_before.len() as u64;
            let text = if it.pretty {
                serde_json::to_vec_pretty(&it.value).unwrap()
            } else {
                serde_json::to_vec(&it.value).unwrap()
            };
            input.extend_from_slice(&text);
            input.extend_from_slice(&it.ws_after);
            whitespace += it.ws_after.len() as u64;
        }
        if let Some(g) = &tail {
            want_bad.push((input.len() as u64, g.clone()));
            input.extend_from_slice(g);
        }

        let mut f = Framer::new(1 << 20);
        let mut out = Vec::new();
        let mut at = 0;
        for n in chunks.iter().cycle() {
            if at >= input.len() {
                break;
            }
            let end = (at + n).min(input.len());
            f.feed(&input[at..end], &mut out);
            at = end;
        }
        f.finish(&mut out);
        prop_assert_eq!(&out, &frame_chunks(&input, 1 << 20, input.len()));

        let mut values = Vec::new();
        let mut bads = Vec::new();
        let mut accounted = whitespace;
        for framed in &out {
            match framed {
                Framed::Records(r) => {
                    prop_assert_eq!(r.last(), Some(&b'\n'));
                    for line in r[..r.len() - 1].split(|b| *b == b'\n') {
                        accounted += line.len() as u64;
                        values.push(serde_json::from_slice::<Value>(line).unwrap());
                    }
                }
                Framed::Bad { raw_offset, len, prefix, why } => {
                    prop_assert_eq!(*why, WHY_BETWEEN);
                    prop_assert_eq!(*len, prefix.len() as u64);
                    accounted += len;
                    bads.push((*raw_offset, prefix.clone()));
                }
                Framed::Oversized { .. } => prop_assert!(false, "oversized"),
            }
        }
        let want_values: Vec<Value> = items.iter().map(|it| it.value.clone()).collect();
        prop_assert_eq!(values, want_values);
        prop_assert_eq!(bads, want_bad);
        prop_assert_eq!(accounted, input.len() as u64);
    }

    #[test]
    fn any_bytes_frame_the_same_whatever_the_chunks(
        input in prop::collection::vec(
            prop::sample::select(&b"{}[]\"\\:, \n\rax\xEF\xBB\xBF"[..]), 0..200),
        chunk in 1usize..20,
        max_record in 1usize..40,
    ) {
        let whole = frame_chunks(&input, max_record, input.len());
        prop_assert_eq!(frame_chunks(&input, max_record, chunk), whole);
    }
}
