//! The yardstick for the end-to-end bench: a typed, borrowed `serde_json` parse of every line of
//! a file, reading the fields any producer uses for ids, time and kind. Prints lines/s.
#![allow(clippy::unwrap_used, clippy::struct_field_names, missing_docs)]

use serde::Deserialize;
use serde_json::value::RawValue;
use std::io::Read;
use std::time::Instant;

#[allow(non_snake_case, dead_code)]
#[derive(Deserialize)]
struct Event<'a> {
    #[serde(borrow)]
    messageId: Option<&'a RawValue>,
    #[serde(borrow)]
    event_id: Option<&'a RawValue>,
    #[serde(borrow)]
    call_id: Option<&'a RawValue>,
    #[serde(borrow)]
    id: Option<&'a RawValue>,
    #[serde(borrow)]
    userId: Option<&'a RawValue>,
    #[serde(borrow)]
    uid: Option<&'a RawValue>,
    #[serde(borrow)]
    user: Option<&'a RawValue>,
    #[serde(borrow)]
    customer: Option<&'a RawValue>,
    #[serde(borrow)]
    account: Option<&'a RawValue>,
    #[serde(borrow)]
    timestamp: Option<&'a RawValue>,
    #[serde(borrow)]
    ts: Option<&'a RawValue>,
    #[serde(borrow)]
    time: Option<&'a RawValue>,
    #[serde(borrow)]
    started_at: Option<&'a RawValue>,
    #[serde(borrow, rename = "type")]
    typ: Option<&'a RawValue>,
    #[serde(borrow)]
    event: Option<&'a RawValue>,
    #[serde(borrow)]
    evt: Option<&'a RawValue>,
    #[serde(borrow)]
    event_type: Option<&'a RawValue>,
    #[serde(borrow)]
    kind: Option<&'a RawValue>,
}

fn main() {
    let path = std::env::args().nth(1).expect("usage: typed_parse FILE.jsonl");
    let mut data = Vec::new();
    std::fs::File::open(&path).unwrap().read_to_end(&mut data).unwrap();
    let start = Instant::now();
    let (mut lines, mut ok) = (0u64, 0u64);
    let body = data.strip_suffix(b"\n").unwrap_or(&data);
    for line in body.split(|&b| b == b'\n') {
        lines += 1;
        if let Ok(s) = std::str::from_utf8(line)
            && serde_json::from_str::<Event<'_>>(s).is_ok()
        {
            ok += 1;
        }
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "{{\"lines\":{lines},\"parsed\":{ok},\"secs\":{secs:.3},\"lines_per_sec\":{:.0}}}",
        lines as f64 / secs
    );
}
