//! Cuts concatenated JSON (`{…}{…}`, as Kinesis Data Firehose writes it, compact or pretty) into
//! the newline-ended records the line-based replay expects.
//!
//! The framer tracks strings, escapes and bracket depth instead of matching `}{`, so a `}{` inside
//! a string never splits a record. It is pure and streaming: its output does not depend on how the
//! object is cut into `feed` calls, and it holds at most `max_record` bytes of a value. Bytes that
//! cannot be framed never stop the replay: they become `Framed::Bad` (dead-lettered as
//! `bad_framing`) and framing resumes at the next recoverable boundary.

use memchr::{memchr, memchr2, memchr3};
use std::fmt;
use std::io::{self, Read};
use std::str::FromStr;

/// How an input's bytes are cut into records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// One record per line (JSON Lines).
    Lines,
    /// JSON values back to back, with or without whitespace between them.
    Concatenated,
    /// Decided per object from its first bytes by [`detect`].
    Auto,
}

impl FromStr for Framing {
    type Err = String;

    fn from_str(s: &str) -> Result<Framing, String> {
        match s {
            "lines" => Ok(Framing::Lines),
            "concatenated" => Ok(Framing::Concatenated),
            "auto" => Ok(Framing::Auto),
            other => Err(format!(
                "unknown framing `{other}`: expected `lines`, `concatenated` or `auto`"
            )),
        }
    }
}

impl fmt::Display for Framing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Framing::Lines => "lines",
            Framing::Concatenated => "concatenated",
            Framing::Auto => "auto",
        })
    }
}

/// What the framer hands on, in input order.
#[derive(Debug, PartialEq, Eq)]
pub enum Framed {
    /// One or more whole values, each followed by exactly one `\n`. A value's bytes are kept as in
    /// the input except that `\n` and `\r` between its tokens (outside strings) become spaces, so
    /// a record never holds a `\n` of its own.
    Records(Vec<u8>),
    /// Bytes that are not a value (dead-lettered `bad_framing`): where they start in the
    /// object (`raw_offset`, bytes of the decompressed object), how many (`len`), the first
    /// [`PREFIX`] of them, and why, in words for a dead letter.
    Bad {
        /// Offset of the first byte in the decompressed object.
        raw_offset: u64,
        /// Number of bytes.
        len: u64,
        /// The first [`PREFIX`] bytes, as in the input.
        prefix: Vec<u8>,
        /// Why they are not a value.
        why: &'static str,
    },
    /// A value longer than the framer's `max_record`: where it starts, its length, its first
    /// [`PREFIX`] bytes.
    Oversized {
        /// Offset of the value's first byte in the decompressed object.
        raw_offset: u64,
        /// The value's length in bytes.
        len: u64,
        /// The value's first [`PREFIX`] bytes, as in the input.
        prefix: Vec<u8>,
    },
}

/// How much of a bad run or an oversized value is kept for its dead letter.
pub const PREFIX: usize = 64 << 10;

const BOM: [u8; 3] = [0xEF, 0xBB, 0xBF];

const WHY_BETWEEN: &str = "bytes between values that start none";
const WHY_CUT_SHORT: &str = "a value cut short: another starts inside it";
const WHY_LINE_BREAK: &str = "a line break inside a string";
const WHY_ENDS_INSIDE: &str = "the object ends inside a value";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// At the object's start, having matched this many bytes of a BOM.
    Start(u8),
    /// Between values, skipping whitespace.
    Between,
    /// In a run of bytes between values that start none.
    Garbage,
    /// Inside a value.
    Value,
}

/// A streaming framer of one object.
#[derive(Debug)]
pub struct Framer {
    max_record: usize,
    consumed: u64,
    mode: Mode,
    /// A bad run between values starts at `bad_start`; `bad_end` is just past its last
    /// non-whitespace byte, so the run excludes whitespace at both edges (leading whitespace is
    /// skipped before the run starts, trailing whitespace is cut off when it is emitted).
    bad_start: u64,
    bad_end: u64,
    /// The run's first bytes (up to `PREFIX`, possibly with trailing whitespace cut later).
    bad_prefix: Vec<u8>,
    /// Where the current value starts in the object.
    v_start: u64,
    depth: usize,
    /// The previous non-whitespace byte of the value outside strings (`"` after a string).
    prev: u8,
    in_string: bool,
    escaped: bool,
    /// The value's raw bytes from earlier feeds: all of them while the value is within
    /// `max_record`, then only the first `PREFIX`.
    held: Vec<u8>,
    /// During a `feed`, where the current value's bytes not yet in `held` start in its input.
    seg: usize,
}

impl Framer {
    /// A framer for one object whose values longer than `max_record` bytes are `Oversized`.
    #[must_use]
    pub fn new(max_record: usize) -> Framer {
        Framer {
            max_record,
            consumed: 0,
            mode: Mode::Start(0),
            bad_start: 0,
            bad_end: 0,
            bad_prefix: Vec::new(),
            v_start: 0,
            depth: 0,
            prev: 0,
            in_string: false,
            escaped: false,
            held: Vec::new(),
            seg: 0,
        }
    }

    /// Raw bytes fed so far.
    #[must_use]
    pub fn consumed(&self) -> u64 {
        self.consumed
    }

    /// Frames the next bytes of the object, appending to `out` what is complete. The output does
    /// not depend on how the object is cut into `feed` calls. Consecutive complete values are
    /// merged into one `Records` (appended to the last element of `out` when it is `Records`).
    pub fn feed(&mut self, raw: &[u8], out: &mut Vec<Framed>) {
        self.seg = 0;
        let mut i = 0;
        while i < raw.len() {
            i = match self.mode {
                Mode::Start(matched) => self.step_start(matched, raw[i], i),
                Mode::Between => self.step_between(raw[i], i),
                Mode::Garbage => self.step_garbage(raw, i, out),
                Mode::Value if self.in_string => self.step_string(raw, i, out),
                Mode::Value => self.step_token(raw, i, out),
            };
        }
        self.consumed += raw.len() as u64;
        if self.mode == Mode::Value {
            self.hold(&raw[self.seg..]);
        }
    }

    /// The object ended: a value cut short becomes `Bad` ("the object ends inside a value").
    pub fn finish(&mut self, out: &mut Vec<Framed>) {
        match self.mode {
            Mode::Start(0) | Mode::Between => {}
            Mode::Start(m) => {
                out.push(Framed::Bad {
                    raw_offset: 0,
                    len: u64::from(m),
                    prefix: BOM[..usize::from(m)].to_vec(),
                    why: WHY_BETWEEN,
                });
            }
            Mode::Garbage => self.emit_garbage(out),
            Mode::Value => {
                let prefix = self.value_prefix(&[]);
                out.push(Framed::Bad {
                    raw_offset: self.v_start,
                    len: self.consumed - self.v_start,
                    prefix,
                    why: WHY_ENDS_INSIDE,
                });
                self.held.clear();
            }
        }
        self.mode = Mode::Between;
    }

    /// Offset in the object of `raw[i]` during a `feed`.
    fn at(&self, i: usize) -> u64 {
        self.consumed + i as u64
    }

    fn step_start(&mut self, matched: u8, b: u8, i: usize) -> usize {
        let m = usize::from(matched);
        if b == BOM[m] {
            self.mode = if m + 1 == BOM.len() { Mode::Between } else { Mode::Start(matched + 1) };
            i + 1
        } else {
            if m == 0 {
                self.mode = Mode::Between;
            } else {
                // A partial BOM is not whitespace: it starts a bad run at offset 0.
                self.bad_start = 0;
                self.bad_end = m as u64;
                self.bad_prefix.clear();
                self.bad_prefix.extend_from_slice(&BOM[..m]);
                self.mode = Mode::Garbage;
            }
            i
        }
    }

    fn step_between(&mut self, b: u8, i: usize) -> usize {
        match b {
            b' ' | b'\t' | b'\n' | b'\r' => {}
            b'{' | b'[' => {
                self.open_value(self.at(i), b);
                self.seg = i;
            }
            _ => {
                self.bad_start = self.at(i);
                self.bad_end = self.bad_start;
                self.bad_prefix.clear();
                self.mode = Mode::Garbage;
                return i;
            }
        }
        i + 1
    }

    fn step_garbage(&mut self, raw: &[u8], i: usize, out: &mut Vec<Framed>) -> usize {
        let rest = &raw[i..];
        let found = memchr2(b'{', b'[', rest);
        let run = &rest[..found.unwrap_or(rest.len())];
        if let Some(last) = run.iter().rposition(|b| !is_ws(*b)) {
            self.bad_end = self.at(i + last + 1);
        }
        let room = PREFIX.saturating_sub(self.bad_prefix.len()).min(run.len());
        self.bad_prefix.extend_from_slice(&run[..room]);
        if found.is_some() {
            self.emit_garbage(out);
        }
        i + run.len()
    }

    /// Inside a string: jumps to the next quote, backslash or line break.
    fn step_string(&mut self, raw: &[u8], i: usize, out: &mut Vec<Framed>) -> usize {
        if self.escaped {
            self.escaped = false;
            if matches!(raw[i], b'\n' | b'\r') {
                self.break_in_string(raw, i, out);
                return i;
            }
            return i + 1;
        }
        let rest = &raw[i..];
        let stop = memchr3(b'"', b'\\', b'\n', rest);
        let scanned = &rest[..stop.unwrap_or(rest.len())];
        if let Some(cr) = memchr(b'\r', scanned) {
            self.break_in_string(raw, i + cr, out);
            return i + cr;
        }
        let Some(p) = stop else { return raw.len() };
        match rest[p] {
            b'"' => {
                self.in_string = false;
                self.prev = b'"';
            }
            b'\\' => self.escaped = true,
            _ => {
                self.break_in_string(raw, i + p, out);
                return i + p;
            }
        }
        i + p + 1
    }

    /// Inside a value, outside strings: one byte.
    fn step_token(&mut self, raw: &[u8], i: usize, out: &mut Vec<Framed>) -> usize {
        let b = raw[i];
        match b {
            b' ' | b'\t' | b'\n' | b'\r' => {}
            b'"' => self.in_string = true,
            b'{' | b'[' if matches!(self.prev, b':' | b',' | b'[') => {
                self.depth += 1;
                self.prev = b;
            }
            b'{' | b'[' => {
                let at = self.at(i);
                let prefix = self.value_prefix(&raw[self.seg..i]);
                out.push(Framed::Bad {
                    raw_offset: self.v_start,
                    len: at - self.v_start,
                    prefix,
                    why: WHY_CUT_SHORT,
                });
                self.open_value(at, b);
                self.seg = i;
            }
            b'}' | b']' => {
                self.depth -= 1;
                self.prev = b;
                if self.depth == 0 {
                    self.close_value(&raw[self.seg..=i], self.at(i + 1), out);
                }
            }
            _ => self.prev = b,
        }
        i + 1
    }

    fn open_value(&mut self, at: u64, open: u8) {
        self.mode = Mode::Value;
        self.v_start = at;
        self.depth = 1;
        self.prev = open;
        self.in_string = false;
        self.escaped = false;
        self.held.clear();
    }

    /// The value ends with `tail` (its bytes in this feed), just before `end`.
    fn close_value(&mut self, tail: &[u8], end: u64, out: &mut Vec<Framed>) {
        self.mode = Mode::Between;
        let len = end - self.v_start;
        if len > self.max_record as u64 {
            let prefix = self.value_prefix(tail);
            out.push(Framed::Oversized { raw_offset: self.v_start, len, prefix });
        } else if self.held.is_empty() {
            push_record(out, tail);
        } else {
            self.held.extend_from_slice(tail);
            push_record(out, &self.held);
        }
        self.held.clear();
    }

    /// A raw `\n`/`\r` at `raw[at]` inside a string: the value so far is bad, and the line break
    /// is left to be skipped as whitespace between values.
    fn break_in_string(&mut self, raw: &[u8], at: usize, out: &mut Vec<Framed>) {
        let prefix = self.value_prefix(&raw[self.seg..at]);
        out.push(Framed::Bad {
            raw_offset: self.v_start,
            len: self.consumed + at as u64 - self.v_start,
            prefix,
            why: WHY_LINE_BREAK,
        });
        self.held.clear();
        self.in_string = false;
        self.escaped = false;
        self.mode = Mode::Between;
    }

    /// The first `PREFIX` bytes of the value: `held` followed by `tail`.
    fn value_prefix(&self, tail: &[u8]) -> Vec<u8> {
        let from_held = self.held.len().min(PREFIX);
        let from_tail = (PREFIX - from_held).min(tail.len());
        let mut prefix = Vec::with_capacity(from_held + from_tail);
        prefix.extend_from_slice(&self.held[..from_held]);
        prefix.extend_from_slice(&tail[..from_tail]);
        prefix
    }

    /// Keeps the value's bytes of this feed for the next one, up to `max_record` in all; past
    /// that only the first `PREFIX` bytes are kept, the rest is only counted (by offsets).
    fn hold(&mut self, part: &[u8]) {
        let total = self.consumed - self.v_start;
        if total > self.max_record as u64 {
            if self.held.len() >= PREFIX {
                self.held.truncate(PREFIX);
                self.held.shrink_to(PREFIX);
            } else {
                // `held` still holds every earlier byte, so `part` continues it.
                let room = (PREFIX - self.held.len()).min(part.len());
                self.held.extend_from_slice(&part[..room]);
            }
        } else {
            self.held.extend_from_slice(part);
        }
    }

    fn emit_garbage(&mut self, out: &mut Vec<Framed>) {
        let len = self.bad_end - self.bad_start;
        let mut prefix = std::mem::take(&mut self.bad_prefix);
        prefix.truncate(usize::try_from(len).unwrap_or(usize::MAX).min(PREFIX));
        out.push(Framed::Bad { raw_offset: self.bad_start, len, prefix, why: WHY_BETWEEN });
        self.mode = Mode::Between;
    }
}

fn is_ws(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r')
}

/// Appends one whole value and its `\n`, merging into a trailing `Records`. A value that closed
/// holds no raw line break inside a string (that is a framing error), so every `\n`/`\r` in it is
/// between tokens and becomes a space.
fn push_record(out: &mut Vec<Framed>, value: &[u8]) {
    if !matches!(out.last(), Some(Framed::Records(_))) {
        out.push(Framed::Records(Vec::with_capacity(value.len() + 1)));
    }
    let Some(Framed::Records(records)) = out.last_mut() else { return };
    let from = records.len();
    records.extend_from_slice(value);
    let mut k = from;
    while let Some(p) = memchr2(b'\n', b'\r', &records[k..]) {
        records[k + p] = b' ';
        k += p + 1;
    }
    records.push(b'\n');
}

/// Bytes [`detect_stream`] reads first.
const DETECT_SPAN: usize = 64 << 10;

/// The framing of a stream by [`detect`], and the stream again from its start. It reads
/// [`DETECT_SPAN`] bytes, and more (four times as many each time, up to `max`) while the first
/// value is one line that has not ended: a first record of megabytes (a debug dump) must not
/// hide that values follow it on its line.
///
/// # Errors
/// Reading the stream fails.
pub fn detect_stream(
    mut r: Box<dyn Read + Send>,
    max: usize,
) -> io::Result<(Framing, Box<dyn Read + Send>)> {
    let mut head = Vec::new();
    let mut span = DETECT_SPAN.min(max);
    loop {
        (&mut r).take((span - head.len()) as u64).read_to_end(&mut head)?;
        let complete = head.len() < span;
        let decided = decide(&head, complete);
        if decided.is_some() || complete || span >= max {
            let framing = decided.unwrap_or(Framing::Lines);
            return Ok((framing, Box::new(io::Cursor::new(head).chain(r))));
        }
        span = span.saturating_mul(4).min(max);
    }
}

/// Decides an object's framing from its first bytes (`head`; `complete` when head is the whole
/// object): `Lines` or `Concatenated` (never `Auto`).
///
/// The first value is scanned with the framer's rules. It is `Concatenated` when another value
/// starts on the line where the first one ends, or when the first value, ending within `head`,
/// has a line break between its tokens (pretty-printed). Anything that is not clearly
/// concatenated (a scalar first, a line break inside a string, a framing error, a first value
/// that does not end within `head`) reads as `Lines`, the historical format; [`detect_stream`]
/// reads on before it settles for that last one.
#[must_use]
pub fn detect(head: &[u8], complete: bool) -> Framing {
    decide(head, complete).unwrap_or(Framing::Lines)
}

/// [`detect`], or `None` when `head` ends inside a first value that has no line break so far
/// and more bytes could tell.
fn decide(head: &[u8], complete: bool) -> Option<Framing> {
    let body = head.strip_prefix(&BOM[..]).unwrap_or(head);
    let Some(start) = body.iter().position(|b| !is_ws(*b)) else { return Some(Framing::Lines) };
    if !matches!(body[start], b'{' | b'[') {
        return Some(Framing::Lines);
    }
    let first = scan_value(body, start);
    if first.spans_lines && !first.broken {
        // Pretty-printed: a line break between tokens, whether or not the value ends in `head`.
        return Some(Framing::Concatenated);
    }
    let Some(end) = first.end else {
        return (complete || first.broken).then_some(Framing::Lines);
    };
    if second_on_line(body, end) {
        return Some(Framing::Concatenated);
    }
    // The first value has its line to itself; so may the next few and not the rest (a writer
    // that added newlines for a while): any line of `head` holding two values decides.
    let mut at = end;
    while let Some(nl) = memchr::memchr(b'\n', &body[at..]) {
        at += nl + 1;
        let Some(s) = body[at..].iter().position(|b| !is_ws(*b)).map(|p| at + p) else { break };
        if !matches!(body[s], b'{' | b'[') {
            continue;
        }
        let v = scan_value(body, s);
        match v.end {
            Some(e) if !v.spans_lines && second_on_line(body, e) => {
                return Some(Framing::Concatenated);
            }
            Some(_) => {}
            None => break,
        }
    }
    Some(Framing::Lines)
}

/// What scanning one value from `start` found.
struct Scan {
    /// Just past its last byte, if it ends in the bytes given.
    end: Option<usize>,
    /// A line break between its tokens.
    spans_lines: bool,
    /// It cannot be one value: a line break in a string, or a value starting where none can.
    broken: bool,
}

fn scan_value(body: &[u8], start: usize) -> Scan {
    let mut scan = Scan { end: None, spans_lines: false, broken: false };
    let mut depth = 0usize;
    let mut prev = 0u8;
    let mut in_string = false;
    let mut escaped = false;
    for (i, &b) in body.iter().enumerate().skip(start) {
        if in_string {
            match b {
                b'\n' | b'\r' => {
                    scan.broken = true;
                    return scan;
                }
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => {
                    in_string = false;
                    prev = b'"';
                }
                _ => {}
            }
            continue;
        }
        match b {
            b'\n' | b'\r' => scan.spans_lines = true,
            b' ' | b'\t' => {}
            b'"' => in_string = true,
            b'{' | b'[' => {
                if depth > 0 && !matches!(prev, b':' | b',' | b'[') {
                    scan.broken = true;
                    return scan;
                }
                depth += 1;
                prev = b;
            }
            b'}' | b']' => {
                depth = depth.saturating_sub(1);
                prev = b;
                if depth == 0 {
                    scan.end = Some(i + 1);
                    return scan;
                }
            }
            _ => prev = b,
        }
    }
    scan
}

/// Whether another value starts on the line where one ended (`end`).
fn second_on_line(body: &[u8], end: usize) -> bool {
    matches!(body[end..].iter().find(|b| !matches!(b, b' ' | b'\t')), Some(b'{' | b'['))
}

#[cfg(test)]
mod tests;
