//! The processor: decode → extract → dedup → sessionize → aggregate, with no I/O. Decode and
//! extract, pure, may run on several workers ([`crate::parallel`]); the rest runs line by line,
//! in input order, on the processor's thread. It buffers one checkpoint interval of output; the
//! checkpoint coordinator writes it out.

use crate::aggregate::RowLayout;
use crate::decode;
use crate::event::{ClickEvent, LinePosition, SourcePosition};
use crate::extract::Extractor;
use crate::extract::catalog::Aggregate;
use crate::extract::walk::Slot;
use crate::parallel;
use crate::session::Backing;
use crate::session::dedup::Dedup;
use crate::session::{ClosedSession, EventAttr, Observed, Sessionizer};
use crate::sink::DeadLetter;
use crate::source::{Chunk, Oversized};
use crate::state::{CheckpointBatch, Counters, Meta, STATE_VERSION};
use std::sync::Arc;

mod output;
pub use output::EpochOutput;

/// Settings that shape the output: a resumed run must use the same.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rules {
    /// Inactivity gap, ms.
    pub gap_ms: i64,
    /// Allowed lateness, ms.
    pub lateness_ms: i64,
    /// Dedup horizon, ms.
    pub dedup_horizon_ms: i64,
    /// How far ahead of the wall clock an event time may be, ms (0: no bound); see
    /// [`Processor::set_now`].
    pub max_future_ms: i64,
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
    future: Arc<str>,
    /// `Rules::max_future_ms`, and the newest event time accepted now ([`Processor::set_now`]).
    max_future_ms: i64,
    future_limit: i64,
    /// Schema sets seen by this state, by index; the last one is in force.
    schema_sets: Vec<String>,
    schema_set: Arc<str>,
    /// Kind names and attribute identities by the numbers the state keeps them under.
    kinds: Vec<String>,
    attributes: Vec<String>,
    /// The set in force's kinds and attributes, by their state numbers.
    kind_ids: Vec<u32>,
    attr_ids: Vec<(u32, Aggregate)>,
    /// The columns of rows closed now.
    layout: Arc<RowLayout>,
    /// Scratch slots kept between [`Processor::process_record`] calls (empty between them).
    spare: Vec<Slot<'static>>,
    /// Durable state read on demand, and the number of the last checkpoint batch taken.
    backing: Option<Arc<dyn Backing>>,
    batches: u64,
    /// Sessions closed ahead of the checkpoint ([`Processor::close_ahead`]).
    closed: Vec<ClosedSession>,
    /// Records since the last [`Processor::close_ahead`].
    since_close: u32,
    /// Threads that decode and extract a chunk's lines (this one included).
    workers: usize,
    /// Sessions one end-of-input checkpoint closes at most ([`Processor::set_end_step`]).
    end_step: usize,
}

/// A line's pure phase, decode and extract: the event, or why the line is rejected.
type Prepared<'a> = Result<ClickEvent<'a>, Rejection>;

/// Why decode or extract rejected a line, as its dead letter will say.
#[derive(Debug)]
struct Rejection {
    reason: Arc<str>,
    detail: String,
}

/// Durable state could not be read during an interval: its output must not be committed.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct StateReadFailed(pub String);

impl Processor {
    /// A processor with empty state; `inputs` names the inputs for dead-letter records.
    #[must_use]
    pub fn new(extractor: Arc<Extractor>, rules: Rules, inputs: Vec<Arc<str>>) -> Self {
        let set = extractor.versions();
        let mut p = Processor {
            extractor,
            sessions: Sessionizer::new(rules.gap_ms, rules.lateness_ms),
            dedup: Dedup::new(rules.dedup_horizon_ms),
            counters: Counters::default(),
            inputs,
            dead: Vec::new(),
            late: Arc::from("late"),
            future: Arc::from("future_timestamp"),
            max_future_ms: rules.max_future_ms,
            future_limit: i64::MAX,
            schema_set: Arc::from(set.as_str()),
            schema_sets: vec![set],
            kinds: Vec::new(),
            attributes: Vec::new(),
            kind_ids: Vec::new(),
            attr_ids: Vec::new(),
            layout: Arc::default(),
            spare: Vec::new(),
            backing: None,
            batches: 0,
            closed: Vec::new(),
            since_close: 0,
            workers: 1,
            end_step: usize::MAX,
        };
        p.bind();
        p
    }

    /// Numbers the kinds and attributes of the set in force in the state's lists, appending
    /// new ones: numbers never change meaning, so open sessions stay valid across reloads.
    fn bind(&mut self) {
        let cat = self.extractor.catalog();
        let number = |list: &mut Vec<String>, name: &str| -> u32 {
            let i = list.iter().position(|n| n == name).unwrap_or_else(|| {
                list.push(name.to_owned());
                list.len() - 1
            });
            i as u32
        };
        self.kind_ids = cat.kinds.iter().map(|k| number(&mut self.kinds, &k.name)).collect();
        self.attr_ids = cat
            .attrs
            .iter()
            .map(|a| {
                let identity = a.identity();
                // A renamed column keeps its values: its old identity takes the new name.
                if !self.attributes.contains(&identity)
                    && let Some(old) = &a.renamed_from
                {
                    let was = format!("{old}:{}", identity.split_once(':').map_or("", |x| x.1));
                    if let Some(slot) = self.attributes.iter_mut().find(|n| **n == was) {
                        slot.clone_from(&identity);
                    }
                }
                (number(&mut self.attributes, &identity), a.aggregate)
            })
            .collect();
        let folds = self
            .attributes
            .iter()
            .map(|id| id.rsplit(':').next().and_then(Aggregate::parse).unwrap_or(Aggregate::First))
            .collect();
        self.sessions.set_folds(folds);
        let attr_ids: Vec<u32> = self.attr_ids.iter().map(|a| a.0).collect();
        self.layout = Arc::new(RowLayout::new(cat, &self.kind_ids, &attr_ids));
    }

    /// Continues from a committed checkpoint: `meta` is its record, `backing` the store that
    /// holds its sessions and ids (read on demand, never loaded), `cache` the bytes the caches
    /// in front of it may hold (three fifths for sessions, two for ids).
    pub fn restore(&mut self, meta: Option<&Meta>, backing: Arc<dyn Backing>, cache: usize) {
        let (max_time, open, forgotten) =
            meta.map_or((None, (0, 0), None), |m| (m.max_time, m.open, m.forgotten_before));
        self.sessions.restore(max_time, open, Arc::clone(&backing), cache / 5 * 3);
        self.dedup.restore(forgotten, max_time, Arc::clone(&backing), cache / 5 * 2);
        self.backing = Some(backing);
        if let Some(m) = meta {
            self.counters = m.counters.clone();
            if !m.schema_sets.is_empty() {
                self.schema_sets.clone_from(&m.schema_sets);
                self.use_set(self.extractor.versions());
            }
            self.kinds.clone_from(&m.kinds);
            self.attributes.clone_from(&m.attributes);
            self.bind();
        }
    }

    /// Closes the open sessions at the end of input in checkpoints of at most about `most`
    /// sessions each (`checkpoint(_, true, _)` until its meta says `finished`), in the order of
    /// their ends: memory then holds one step's rows and state changes, not the whole state's.
    /// Only for an input that ends for good: an idle source whose sessions are closed at once
    /// must not be stepped (an event arriving between two steps would meet half of them open).
    pub fn set_end_step(&mut self, most: usize) {
        self.end_step = most.max(1);
    }

    /// Whether the next end-of-input step closes every session left: fewer are open than a
    /// step holds. Such a step need not start from durable state (see `app::drive`): nothing
    /// is left whose step could depend on the commit timing, and its rows are sorted.
    #[must_use]
    pub fn one_step_left(&self) -> bool {
        self.sessions.open_sessions() < self.end_step as u64
    }

    /// Swaps in another schema set: the lines processed from now on use it.
    pub fn set_extractor(&mut self, x: Arc<Extractor>) {
        let id = x.versions();
        self.extractor = x;
        self.use_set(id);
        self.bind();
    }

    /// The schema set in force (`name@version,…`).
    #[must_use]
    pub fn schema_set(&self) -> &str {
        &self.schema_set
    }

    fn use_set(&mut self, id: String) {
        // The last entry is the set in force; a set that comes back gets a new index, so
        // indices keep growing with time and a session's (min, max) is its (first, last).
        if self.schema_sets.last() != Some(&id) {
            self.schema_sets.push(id.clone());
        }
        self.sessions.set_schema_set((self.schema_sets.len() - 1) as u32);
        self.schema_set = Arc::from(id);
    }

    /// Customers with an open session.
    #[must_use]
    pub fn open_customers(&self) -> u64 {
        self.sessions.open_customers()
    }

    /// Open sessions now.
    #[must_use]
    pub fn open_sessions(&self) -> u64 {
        self.sessions.open_sessions()
    }

    /// Customers whose sessions are held in memory now.
    #[must_use]
    pub fn cached_customers(&self) -> usize {
        self.sessions.cached()
    }

    /// Totals so far.
    #[must_use]
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// Sets how many threads decode and extract the lines of a chunk (this one included; at
    /// least 1). The output does not depend on it: every line is still counted, deduplicated
    /// and sessionized on this thread, in input order.
    pub fn set_workers(&mut self, workers: usize) {
        self.workers = workers.max(1);
    }

    /// Processes every line of a chunk; returns the position after it.
    pub fn process_chunk(&mut self, chunk: &Chunk) -> SourcePosition {
        let data = &chunk.data[..];
        let mut pos =
            LinePosition { input: chunk.input, line: chunk.lines_before, offset: chunk.offset };
        if self.workers <= 1 || data.len() < 2 * parallel::SLICE_BYTES {
            let mut slots: Vec<Slot<'_>> = Vec::with_capacity(self.extractor.slot_count());
            let mut start = 0usize;
            while start < data.len() {
                let end = memchr::memchr(b'\n', &data[start..]).map_or(data.len(), |i| start + i);
                pos.line += 1;
                self.process_line(&data[start..end], pos, &mut slots);
                pos.offset += (end + 1 - start) as u64;
                start = end + 1;
            }
        } else {
            let extractor = Arc::clone(&self.extractor);
            let per_slice = |part, out: &mut _| prepare_slice(&extractor, part, out);
            parallel::in_order(data, self.workers, parallel::SLICE_BYTES, per_slice, |items| {
                for (line, prepared) in items {
                    pos.line += 1;
                    self.apply(line, pos, prepared);
                    pos.offset += line.len() as u64 + 1;
                }
            });
        }
        self.close_ahead();
        SourcePosition {
            input: chunk.input,
            line: pos.line,
            offset: chunk.offset + data.len() as u64,
        }
    }

    /// Ends a processor whose last checkpoint is committed: lets go of the state store first,
    /// then frees its caches on a thread of their own. The caches are hundreds of MiB in
    /// millions of allocations that the process's exit makes pointless; freed in line, with
    /// the store closing after them, they were ~5 % of a one-core replay of 1 M lines (perf:
    /// the table frees, then the allocator consolidating what they freed when the store's
    /// close allocated). The store closes here, in line: not on a thread that the exit might
    /// overtake.
    pub fn release(mut self) {
        self.backing = None;
        self.sessions.detach();
        self.dedup.detach();
        let _ = std::thread::Builder::new().name("free-caches".into()).spawn(move || drop(self));
    }

    /// Counts a line the source could not hold, as too large, or bytes that frame no value.
    pub fn process_oversized(&mut self, o: &Oversized) -> SourcePosition {
        self.counters.lines += 1;
        let pos = LinePosition { input: o.input, line: o.lines_before + 1, offset: o.offset };
        let cut = (o.prefix.len() as u64) < o.len;
        let (reason, mut detail) = match o.bad_framing {
            Some(why) => {
                ("bad_framing", format!("{why}: {} bytes that frame no JSON value", o.len))
            }
            None => ("too_large", format!("the line is {} bytes long", o.len)),
        };
        if cut {
            let _ = std::fmt::Write::write_fmt(
                &mut detail,
                format_args!("; the record keeps its first {}", o.prefix.len()),
            );
        }
        self.dead_letter(Arc::from(reason), detail, pos, &o.prefix);
        if let Some(d) = self.dead.last_mut()
            && cut
        {
            d.truncated_from = Some(o.len);
        }
        SourcePosition { input: o.input, line: o.lines_before + 1, offset: o.offset + o.len + 1 }
    }

    /// Processes one record that arrives on its own (a Kafka message), reusing scratch space
    /// across calls instead of allocating it per record.
    pub fn process_record(&mut self, line: &[u8], pos: LinePosition) {
        // Empty vectors change only their element lifetime here; collecting in place keeps the
        // allocation.
        let mut slots: Vec<Slot<'_>> =
            std::mem::take(&mut self.spare).into_iter().map(|_| Slot::Absent).collect();
        self.process_line(line, pos, &mut slots);
        slots.clear();
        self.spare = slots.into_iter().map(|_| Slot::Absent).collect();
        self.since_close += 1;
        if self.since_close >= 4096 {
            self.close_ahead();
        }
    }

    /// Bounds event times by the wall clock: from now on an event stamped more than
    /// `Rules::max_future_ms` after `now_ms` is dead-lettered as `future_timestamp` and moves
    /// nothing. Without it one event from a device whose clock says 2099 would carry the
    /// watermark there, and every later real event would be late, across restarts (the
    /// watermark is kept in the state). The edge that reads the clock calls this; without a
    /// call (samples, tests) there is no bound. A replay stays deterministic: recorded events
    /// lie in the past of any later clock.
    pub fn set_now(&mut self, now_ms: i64) {
        if self.max_future_ms > 0 {
            self.future_limit = now_ms.saturating_add(self.max_future_ms);
        }
    }

    /// Closes, between checkpoints, sessions the watermark already lets close (the ones whose
    /// stored state is exact), so that a checkpoint's pause does not grow with them.
    pub fn close_ahead(&mut self) {
        self.since_close = 0;
        self.sessions.close_ahead(&mut self.closed);
    }

    /// Processes one line (without its `\n`).
    pub fn process_line<'a>(
        &mut self,
        line: &'a [u8],
        pos: LinePosition,
        slots: &mut Vec<Slot<'a>>,
    ) {
        let prepared = prepare(&self.extractor, line, slots);
        self.apply(line, pos, prepared);
    }

    /// The in-order phase of a line: counters, dead letters, dedup, sessions.
    fn apply(&mut self, line: &[u8], pos: LinePosition, prepared: Prepared<'_>) {
        self.counters.lines += 1;
        let ev = match prepared {
            Ok(ev) => ev,
            Err(r) => return self.dead_letter(r.reason, r.detail, pos, line),
        };
        // A copy of an accepted message is a duplicate even when it arrives too late to count.
        if self.dedup.contains(&ev.message_id) {
            self.counters.duplicates += 1;
            return;
        }
        if ev.event_time > self.future_limit {
            let ahead = self.future_limit.saturating_sub(self.max_future_ms);
            let detail = format!(
                "event time {} is more than {} ms ahead of the wall clock at processing ({ahead})",
                ev.event_time, self.max_future_ms
            );
            return self.dead_letter(Arc::clone(&self.future), detail, pos, line);
        }
        let kind = self.kind_ids.get(ev.kind.0 as usize).copied();
        let attrs: Vec<EventAttr<'_>> = if ev.attrs.is_empty() {
            Vec::new()
        } else {
            self.counters.truncated_values += u64::from(ev.truncated);
            ev.attrs
                .into_iter()
                .zip(&self.attr_ids)
                .filter_map(|(v, &(id, aggregate))| Some(EventAttr { id, aggregate, value: v? }))
                .collect()
        };
        match self.sessions.observe(&ev.customer_id, ev.event_time, kind, &attrs) {
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
            schema_set: Arc::clone(&self.schema_set),
        });
    }

    /// Ends a checkpoint interval at `position`: closes what the watermark allows (at the end
    /// of input, everything, or one step of it: see [`Processor::set_end_step`]), forgets
    /// expired ids, and returns the interval's output with the state changes to commit.
    ///
    /// # Errors
    /// Durable state could not be read during the interval: what it produced may be wrong and
    /// must not be committed (the next attempt starts again from the last checkpoint).
    pub fn checkpoint(
        &mut self,
        position: SourcePosition,
        end_of_input: bool,
        meta: MetaBase,
    ) -> Result<(EpochOutput, CheckpointBatch), StateReadFailed> {
        let mut closed: Vec<ClosedSession> = std::mem::take(&mut self.closed);
        // What the watermark closes comes first, at the end of input too: which sessions a step
        // holds must not depend on how many `close_ahead` happened to close before it.
        self.sessions.close_expired(&mut closed);
        let finished = end_of_input && self.sessions.close_all_upto(&mut closed, self.end_step);
        self.dedup.expire(self.sessions.watermark());
        self.counters.sessions += closed.len() as u64;
        if let Some(e) = self.backing.as_ref().and_then(|b| b.take_error()) {
            return Err(StateReadFailed(e));
        }
        self.batches += 1;
        let seq = self.batches;
        let sessions = self.sessions.take_changes(seq);
        let dedup = self.dedup.take_changes(seq);
        let batch = CheckpointBatch {
            seq,
            meta: Some(Meta {
                version: STATE_VERSION,
                checkpoint: 0, // set by the coordinator
                position,
                max_time: self.sessions.max_time(),
                counters: self.counters.clone(),
                inputs: meta.inputs,
                settings: meta.settings,
                finished,
                schema_sets: self.schema_sets.clone(),
                kinds: self.kinds.clone(),
                attributes: self.attributes.clone(),
                open: (self.sessions.open_sessions(), self.sessions.open_customers()),
                forgotten_before: self.dedup.forgotten_before(),
            }),
            sessions,
            dedup,
        };
        let dead = std::mem::take(&mut self.dead);
        let out =
            EpochOutput::new(closed, self.schema_sets.clone(), Arc::clone(&self.layout), dead);
        Ok((out, batch))
    }
}

/// The pure phase of a line (without its `\n`): decode and extract, with nothing shared
/// written, so lines can go through it on any thread.
fn prepare<'a>(x: &Extractor, line: &'a [u8], slots: &mut Vec<Slot<'a>>) -> Prepared<'a> {
    let text = decode::decode(line)
        .map_err(|e| Rejection { reason: Arc::from(e.reason()), detail: e.to_string() })?;
    x.extract(text, slots)
        .map_err(|e| Rejection { reason: Arc::from(e.reason()), detail: e.to_string() })
}

/// [`prepare`] for every line of `part` (whole lines), in order.
fn prepare_slice<'a>(x: &Extractor, part: &'a [u8], out: &mut Vec<(&'a [u8], Prepared<'a>)>) {
    let mut slots: Vec<Slot<'a>> = Vec::with_capacity(x.slot_count());
    // Room for lines of 256 bytes on average (clickstream lines are longer): seldom a regrowth.
    out.reserve(part.len() / 256 + 1);
    let mut start = 0usize;
    while start < part.len() {
        let end = memchr::memchr(b'\n', &part[start..]).map_or(part.len(), |i| start + i);
        let line = &part[start..end];
        out.push((line, prepare(x, line, &mut slots)));
        start = end + 1;
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

#[cfg(test)]
mod tests;
