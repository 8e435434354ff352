//! The processor: decode → extract → dedup → sessionize → aggregate, one line at a time, on one
//! thread, with no I/O. It buffers one checkpoint interval of output; the checkpoint
//! coordinator writes it out.

use crate::aggregate::SessionRow;
use crate::decode;
use crate::event::{LinePosition, SourcePosition};
use crate::extract::Extractor;
use crate::extract::walk::Slot;
use crate::session::dedup::Dedup;
use crate::session::{ClosedSession, Observed, Sessionizer};
use crate::sink::DeadLetter;
use crate::source::{Chunk, Oversized};
use crate::state::{CheckpointBatch, Counters, Meta, STATE_VERSION, Snapshot};
use std::sync::Arc;

/// Settings that shape the output: a resumed run must use the same.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rules {
    /// Inactivity gap, ms.
    pub gap_ms: i64,
    /// Allowed lateness, ms.
    pub lateness_ms: i64,
    /// Dedup horizon, ms.
    pub dedup_horizon_ms: i64,
}

/// One checkpoint interval's output.
#[derive(Debug, Default)]
pub struct EpochOutput {
    /// Closed sessions, sorted by customer and start.
    pub rows: Vec<SessionRow>,
    /// Rejected lines, in input order.
    pub dead: Vec<DeadLetter>,
}

/// Pipeline state between checkpoints.
pub struct Processor {
    extractor: Arc<Extractor>,
    sessions: Sessionizer,
    dedup: Dedup,
    counters: Counters,
    inputs: Vec<Arc<str>>,
    dead: Vec<DeadLetter>,
    late: Arc<str>,
}

impl Processor {
    /// A processor with empty state; `inputs` names the inputs for dead-letter records.
    #[must_use]
    pub fn new(extractor: Arc<Extractor>, rules: Rules, inputs: Vec<Arc<str>>) -> Self {
        Processor {
            extractor,
            sessions: Sessionizer::new(rules.gap_ms, rules.lateness_ms),
            dedup: Dedup::new(rules.dedup_horizon_ms),
            counters: Counters::default(),
            inputs,
            dead: Vec::new(),
            late: Arc::from("late"),
        }
    }

    /// Restores the state of a committed checkpoint.
    pub fn restore(&mut self, snap: Snapshot) {
        if let Some(m) = &snap.meta {
            self.counters = m.counters.clone();
            self.sessions.restore(m.max_time, snap.sessions);
        }
        self.dedup.restore(snap.ids);
    }

    /// Totals so far.
    #[must_use]
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// Processes every line of a chunk; returns the position after it.
    pub fn process_chunk(&mut self, chunk: &Chunk) -> SourcePosition {
        let mut slots: Vec<Slot<'_>> = Vec::with_capacity(self.extractor.slot_count());
        let data = &chunk.data[..];
        let mut pos =
            LinePosition { input: chunk.input, line: chunk.lines_before, offset: chunk.offset };
        let mut start = 0usize;
        while start < data.len() {
            let end = memchr::memchr(b'\n', &data[start..]).map_or(data.len(), |i| start + i);
            pos.line += 1;
            self.process_line(&data[start..end], pos, &mut slots);
            pos.offset += (end + 1 - start) as u64;
            start = end + 1;
        }
        SourcePosition {
            input: chunk.input,
            line: pos.line,
            offset: chunk.offset + data.len() as u64,
        }
    }

    /// Counts a line the source could not hold, as too large.
    pub fn process_oversized(&mut self, o: &Oversized) -> SourcePosition {
        self.counters.lines += 1;
        let pos = LinePosition { input: o.input, line: o.lines_before + 1, offset: o.offset };
        let detail = format!(
            "the line is {} bytes long; the record keeps its first {}",
            o.len,
            o.prefix.len()
        );
        self.dead_letter(Arc::from("too_large"), detail, pos, &o.prefix);
        if let Some(d) = self.dead.last_mut() {
            d.truncated_from = Some(o.len);
        }
        SourcePosition { input: o.input, line: o.lines_before + 1, offset: o.offset + o.len + 1 }
    }

    /// Processes one line (without its `\n`).
    pub fn process_line<'a>(
        &mut self,
        line: &'a [u8],
        pos: LinePosition,
        slots: &mut Vec<Slot<'a>>,
    ) {
        self.counters.lines += 1;
        let text = match decode::decode(line) {
            Ok(t) => t,
            Err(e) => return self.dead_letter(Arc::from(e.reason()), e.to_string(), pos, line),
        };
        let ev = match self.extractor.extract(text, slots) {
            Ok(ev) => ev,
            Err(e) => return self.dead_letter(Arc::from(e.reason()), e.to_string(), pos, line),
        };
        // A copy of an accepted message is a duplicate even when it arrives too late to count.
        if self.dedup.contains(&ev.message_id) {
            self.counters.duplicates += 1;
            return;
        }
        match self.sessions.observe(&ev.customer_id, ev.event_time, ev.kind) {
            Observed::Accepted => {
                self.dedup.insert(&ev.message_id, ev.event_time);
                self.counters.accepted += 1;
            }
            Observed::Late { watermark } => {
                let detail =
                    format!("event time {} is before the watermark {watermark}", ev.event_time);
                self.dead_letter(Arc::clone(&self.late), detail, pos, line);
            }
        }
    }

    fn dead_letter(
        &mut self,
        reason: Arc<str>,
        detail: String,
        position: LinePosition,
        line: &[u8],
    ) {
        match self.counters.dead_lettered.get_mut(&*reason) {
            Some(n) => *n += 1,
            None => {
                self.counters.dead_lettered.insert(reason.to_string(), 1);
            }
        }
        let input =
            self.inputs.get(position.input as usize).cloned().unwrap_or_else(|| Arc::from("?"));
        self.dead.push(DeadLetter {
            reason,
            detail,
            input,
            position,
            raw: line.to_vec(),
            truncated_from: None,
        });
    }

    /// Ends a checkpoint interval at `position`: closes what the watermark allows (everything at
    /// the end of input), forgets expired ids, and returns the interval's output with the state
    /// changes to commit.
    pub fn checkpoint(
        &mut self,
        position: SourcePosition,
        end_of_input: bool,
        meta: MetaBase,
    ) -> (EpochOutput, CheckpointBatch) {
        let mut closed: Vec<ClosedSession> = Vec::new();
        if end_of_input {
            self.sessions.close_all(&mut closed);
        } else {
            self.sessions.close_expired(&mut closed);
        }
        self.dedup.expire(self.sessions.watermark());
        let mut rows: Vec<SessionRow> = closed.into_iter().map(SessionRow::fold).collect();
        rows.sort_by(|a, b| {
            (&a.customer_id, a.session_start).cmp(&(&b.customer_id, b.session_start))
        });
        self.counters.sessions += rows.len() as u64;
        let batch = CheckpointBatch {
            meta: Some(Meta {
                version: STATE_VERSION,
                checkpoint: 0, // set by the coordinator
                position,
                max_time: self.sessions.max_time(),
                counters: self.counters.clone(),
                inputs: meta.inputs,
                settings: meta.settings,
                finished: end_of_input,
            }),
            sessions: self.sessions.take_changes(),
            dedup: self.dedup.take_changes(),
        };
        (EpochOutput { rows, dead: std::mem::take(&mut self.dead) }, batch)
    }
}

/// The parts of the checkpoint record that come from the run, not the data.
#[derive(Debug, Clone)]
pub struct MetaBase {
    /// Input fingerprints.
    pub inputs: Vec<String>,
    /// Output-shaping settings.
    pub settings: String,
}
