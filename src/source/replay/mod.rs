//! Replay of recorded events, in the order given, resuming at a checkpointed position: JSON
//! Lines files (`-` for stdin), and archives (a directory or an S3 prefix) of objects with
//! JSON Lines or JSON values back to back, gzip-compressed or not.
//!
//! Layout: `input` opens an input and says what identifies it to a resume (name, size, a hash of
//! its ends; `--stdin-id` for stdin); `archive` lists an archive into inputs and pins the
//! listing; `framing` cuts values written back to back into records and `concat` reads such an
//! input; `follow` notices a followed file being truncated or replaced; this module reads
//! lines and decides where barriers fall.

pub mod archive;
mod concat;
mod follow;
mod framing;
mod input;
mod resolve;

pub use framing::{Framed, Framer, Framing, PREFIX, detect, detect_stream};
pub use input::{FINGERPRINT_SPAN, Input, Recognised, recognise};
pub use resolve::{Options, Resolved, resolve};

use super::{Chunk, Message, Oversized};
use crate::event::SourcePosition;
use follow::{AtEof, Follow};
use indicatif::ProgressBar;
use std::io::{self, Read};
use std::sync::mpsc::{Receiver, SyncSender};
use std::time::{Duration, Instant};
use thiserror::Error;
use tokio_util::sync::CancellationToken;
use tracing::warn;

/// Bytes read per chunk.
const CHUNK_BYTES: usize = 4 << 20;
/// A line longer than this is not held in memory: it is too large anyway (the limit is 1 MiB),
/// and only its first bytes are kept for the dead letter.
pub const MAX_BUFFERED_LINE: usize = 64 << 20;
/// How much of such a line is kept.
pub const OVERSIZED_PREFIX: usize = 64 << 10;

/// A replay source failure.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum SourceError {
    /// An input cannot be opened.
    #[error("cannot open input {path}: {source}")]
    Open {
        /// The input.
        path: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// Reading failed (including a corrupt gzip stream).
    #[error("cannot read input {path}: {source}")]
    Read {
        /// The input.
        path: String,
        /// The OS or decoder error.
        #[source]
        source: io::Error,
    },
    /// The input is shorter than the position a checkpoint recorded.
    #[error(
        "input {path} ends before byte {offset}, where the checkpoint says reading stopped: it changed since"
    )]
    Shorter {
        /// The input.
        path: String,
        /// The checkpointed offset.
        offset: u64,
    },
    /// A checkpoint exists, and stdin is read without `--stdin-id`: nothing tells the stream on
    /// stdin now from the one the checkpoint read.
    #[error(
        "stdin (-) cannot be resumed without --stdin-id: the stream on stdin now would be taken to continue the checkpointed one, and bytes of new input skipped; give another --state (or remove it) to start over, and --stdin-id NAME to make a replay of stdin resumable (the same stream is then fed again from its start)"
    )]
    StdinResume,
    /// Stdin is given under another `--stdin-id` than the checkpoint recorded.
    #[error(
        "stdin was checkpointed {}, and is given {} now: resume with the stream and the --stdin-id the checkpoint read, or give another --state",
        stdin_id_text(.recorded),
        stdin_id_text(.given)
    )]
    StdinId {
        /// The recorded id ("" for none).
        recorded: String,
        /// The id given now ("" for none).
        given: String,
    },
    /// An archive cannot be read as asked, or changed since a checkpoint.
    #[error("{0}")]
    Archive(String),
    /// A file has the recorded name and size but other content.
    #[error(
        "input {path} is not the file the checkpoint read: same name and size, but its first or last 64 KiB differ"
    )]
    Changed {
        /// The input.
        path: String,
    },
}

fn stdin_id_text(id: &str) -> String {
    if id.is_empty() { "without --stdin-id".to_owned() } else { format!("as --stdin-id {id}") }
}

/// When barriers fall.
#[derive(Debug, Clone, Copy)]
pub struct BarrierPolicy {
    /// After this many lines (0: never by count).
    pub every_lines: u64,
    /// After this much wall time (None: never by time).
    pub interval: Option<Duration>,
}

/// Reads the inputs from `start` and sends their lines, barriers and the end.
pub struct ReplaySource {
    inputs: Vec<Input>,
    start: SourcePosition,
    policy: BarrierPolicy,
    follow: bool,
}

/// How often a followed input is checked for new lines.
const FOLLOW_POLL: Duration = Duration::from_millis(100);

struct Emitter<'a> {
    tx: &'a SyncSender<Message>,
    pool: &'a Receiver<Vec<u8>>,
    policy: BarrierPolicy,
    since_barrier: u64,
    last_barrier: Instant,
    pos: SourcePosition,
}

impl Emitter<'_> {
    fn buffer(&self) -> Vec<u8> {
        self.pool.try_recv().map_or_else(
            |_| Vec::with_capacity(2 * CHUNK_BYTES),
            |mut b| {
                b.clear();
                b
            },
        )
    }

    /// Sends whole lines, cutting them where a barrier falls. Returns false if the receiver is gone.
    fn send_lines(&mut self, mut data: Vec<u8>, final_line_unterminated: bool) -> bool {
        loop {
            let mut lines = memchr::memchr_iter(b'\n', &data).count() as u64;
            if final_line_unterminated && data.last().is_some_and(|&b| b != b'\n') {
                lines += 1;
            }
            let every = self.policy.every_lines;
            if every > 0 && self.since_barrier + lines >= every && lines > 0 {
                let k = (every - self.since_barrier) as usize; // lines to send before the barrier
                let cut =
                    memchr::memchr_iter(b'\n', &data).nth(k - 1).map_or(data.len(), |p| p + 1);
                let rest = data.split_off(cut);
                if !self.send_chunk(data, k as u64) {
                    return false;
                }
                if !self.barrier() {
                    return false;
                }
                if rest.is_empty() {
                    return true;
                }
                let mut next = self.buffer();
                next.extend_from_slice(&rest);
                data = next;
                continue;
            }
            if lines == 0 {
                return true;
            }
            if !self.send_chunk(data, lines) {
                return false;
            }
            if self.policy.interval.is_some_and(|i| self.last_barrier.elapsed() >= i) {
                return self.barrier();
            }
            return true;
        }
    }

    fn send_oversized(&mut self, prefix: Vec<u8>, len: u64, newline: bool) -> bool {
        self.send_skipped(prefix, len, newline, None)
    }

    /// Sends a record the source skipped (too long, or bytes that frame no value), which takes
    /// `len` bytes and a newline (`newline`) of the input.
    fn send_skipped(
        &mut self,
        prefix: Vec<u8>,
        len: u64,
        newline: bool,
        bad_framing: Option<&'static str>,
    ) -> bool {
        let o = Oversized {
            input: self.pos.input,
            lines_before: self.pos.line,
            offset: self.pos.offset,
            len,
            prefix,
            bad_framing,
        };
        self.pos.line += 1;
        self.pos.offset += len + u64::from(newline);
        self.since_barrier += 1;
        if self.tx.send(Message::Oversized(o)).is_err() {
            return false;
        }
        if self.policy.every_lines > 0 && self.since_barrier >= self.policy.every_lines {
            return self.barrier();
        }
        true
    }

    fn send_chunk(&mut self, data: Vec<u8>, lines: u64) -> bool {
        let chunk = Chunk {
            input: self.pos.input,
            lines_before: self.pos.line,
            offset: self.pos.offset,
            data,
        };
        self.pos.line += lines;
        self.pos.offset += chunk.data.len() as u64;
        self.since_barrier += lines;
        self.tx.send(Message::Lines(chunk)).is_ok()
    }

    fn barrier(&mut self) -> bool {
        self.since_barrier = 0;
        self.last_barrier = Instant::now();
        self.tx.send(Message::Barrier(self.pos)).is_ok()
    }
}

/// Whether the replay goes on after an input.
enum Flow {
    Next,
    /// Cancelled (a last barrier was sent) or the processor is gone.
    Stop,
}

impl ReplaySource {
    /// A replay of `inputs` from `start`.
    #[must_use]
    pub fn new(inputs: Vec<Input>, start: SourcePosition, policy: BarrierPolicy) -> Self {
        ReplaySource { inputs, start, policy, follow: false }
    }

    /// Keeps reading the last input as it grows (like `tail -F`) until cancelled, instead of
    /// ending at its end. Lines are taken only once their `\n` is written. A file truncated or
    /// replaced at its path is followed anew from its start. Stdin is not followed: its end
    /// means the writer closed the pipe.
    #[must_use]
    pub fn follow(mut self, follow: bool) -> Self {
        self.follow = follow;
        self
    }

    /// Runs to the end of the inputs or until cancelled (then it sends a last barrier and stops).
    /// Returned buffers come back through `pool`.
    ///
    /// # Errors
    /// An input cannot be opened or read.
    pub fn run(
        self,
        tx: &SyncSender<Message>,
        pool: &Receiver<Vec<u8>>,
        cancel: &CancellationToken,
        progress: &ProgressBar,
    ) -> Result<(), SourceError> {
        let mut em = Emitter {
            tx,
            pool,
            policy: self.policy,
            since_barrier: 0,
            last_barrier: Instant::now(),
            pos: self.start,
        };
        let last = self.inputs.len().saturating_sub(1);
        for (idx, input) in self.inputs.iter().enumerate().skip(self.start.input as usize) {
            if em.pos.input as usize != idx {
                em.pos = SourcePosition { input: idx as u32, line: 0, offset: 0 };
            }
            let follow = self.follow && idx == last && !input.is_stdin();
            if let Flow::Stop = read_input(input, follow, &mut em, cancel, progress)? {
                return Ok(());
            }
        }
        let end = SourcePosition { input: self.inputs.len() as u32, line: 0, offset: 0 };
        let _ = tx.send(Message::End(end));
        Ok(())
    }
}

/// Sends the lines of one input from `em.pos`; a followed one (`follow`) until cancelled.
fn read_input(
    input: &Input,
    follow: bool,
    em: &mut Emitter<'_>,
    cancel: &CancellationToken,
    progress: &ProgressBar,
) -> Result<Flow, SourceError> {
    let opened = input.open(em.pos.offset, progress)?;
    if opened.framing == Framing::Concatenated {
        return concat::read(opened.reader, em, cancel, &input.name);
    }
    let mut r = opened.reader;
    let mut watch = Follow { input, file: opened.file, cancel };
    // The start of a line whose `\n` has not been read yet.
    let mut carry: Vec<u8> = Vec::new();
    // A followed file changed, and the old one was read once more since: lines its writer
    // finished between the last read and the change are not lost.
    let mut drained = false;
    loop {
        if cancel.is_cancelled() {
            // Lines in `carry` were not sent: the barrier's position is before them.
            let _ = em.barrier();
            return Ok(Flow::Stop);
        }
        // A long line in progress grows in place: copied into a fresh buffer, it would be held
        // twice.
        let mut buf = if carry.len() > CHUNK_BYTES {
            std::mem::take(&mut carry)
        } else {
            let mut b = em.buffer();
            b.append(&mut carry);
            b
        };
        let eof = fill(&mut r, &mut buf, &input.name)?;
        if eof && !follow {
            if !buf.is_empty() && !em.send_lines(buf, true) {
                return Ok(Flow::Stop);
            }
            return Ok(Flow::Next);
        }
        match memchr::memrchr(b'\n', &buf) {
            Some(p) => {
                carry.extend_from_slice(&buf[p + 1..]);
                buf.truncate(p + 1);
                if !em.send_lines(buf, false) {
                    return Ok(Flow::Stop);
                }
            }
            None => carry = buf, // one line longer than a chunk, or not written to its end yet
        }
        // Followed or not, a line is held only up to the limit: a writer that never writes a
        // `\n` must not grow memory without bound.
        if carry.len() > MAX_BUFFERED_LINE {
            let start = std::mem::take(&mut carry);
            let wait = follow.then_some(&watch);
            match skip_oversized(&mut r, start, &mut carry, em, &input.name, wait)? {
                Skipped::Line => continue,
                // A followed file was replaced inside the line: the next read finds its end.
                Skipped::AtEof if follow => continue,
                Skipped::AtEof => return Ok(Flow::Next),
                Skipped::Closed => return Ok(Flow::Stop),
                Skipped::Cancelled => {
                    let _ = em.barrier();
                    return Ok(Flow::Stop);
                }
            }
        }
        if !eof {
            continue;
        }
        // Followed, at the end of what is written: complete lines went; a partial last line
        // waits for its newline.
        match watch.at_eof(em.pos.offset + carry.len() as u64) {
            AtEof::Cancelled => {}
            AtEof::Unchanged => {
                drained = false;
                if em.since_barrier > 0
                    && em.policy.interval.is_some_and(|i| em.last_barrier.elapsed() >= i)
                    && !em.barrier()
                {
                    return Ok(Flow::Stop);
                }
                std::thread::sleep(FOLLOW_POLL);
            }
            AtEof::Changed(_) if !drained => drained = true,
            AtEof::Changed(change) => {
                drained = false;
                warn!(input = %input.name, %change, lines_read = em.pos.line, "Followed input changed: following the file now at its path from its start.");
                // No newline will come to the old file's unfinished last line.
                if !carry.is_empty() && !em.send_lines(std::mem::take(&mut carry), true) {
                    return Ok(Flow::Stop);
                }
                em.pos = SourcePosition { input: em.pos.input, line: 0, offset: 0 };
                // The checkpoint points into the new file before any of it is read: a resume
                // after a kill neither skips nor repeats its lines.
                if !em.barrier() {
                    return Ok(Flow::Stop);
                }
                let opened = input.open(0, progress)?;
                r = opened.reader;
                watch.file = opened.file;
            }
        }
    }
}

/// Reads up to a chunk more into `buf`; true at the end of the input (for now, if followed).
fn fill(r: &mut Box<dyn Read + Send>, buf: &mut Vec<u8>, name: &str) -> Result<bool, SourceError> {
    let target = buf.len() + CHUNK_BYTES;
    while buf.len() < target {
        let old = buf.len();
        buf.resize(target, 0);
        match r.read(&mut buf[old..]) {
            Ok(0) => {
                buf.truncate(old);
                return Ok(true);
            }
            Ok(n) => buf.truncate(old + n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => buf.truncate(old),
            Err(source) => {
                buf.truncate(old);
                return Err(SourceError::Read { path: name.to_owned(), source });
            }
        }
    }
    Ok(false)
}

enum Skipped {
    /// The line ended; reading goes on after it.
    Line,
    /// The input ended inside the line (a followed one: was replaced or truncated).
    AtEof,
    /// The processor is gone.
    Closed,
    /// Cancelled while following, inside the line: nothing of it was sent.
    Cancelled,
}

/// Reads past the rest of a line of which `start` holds the first (too many) bytes, keeping only
/// its beginning; what follows the line's `\n` is left in `carry`. A followed input (`follow`)
/// is waited on at its end, until the line ends, the file changes or the replay is cancelled.
fn skip_oversized(
    r: &mut Box<dyn Read + Send>,
    start: Vec<u8>,
    carry: &mut Vec<u8>,
    em: &mut Emitter<'_>,
    name: &str,
    follow: Option<&Follow<'_>>,
) -> Result<Skipped, SourceError> {
    let prefix = start[..OVERSIZED_PREFIX.min(start.len())].to_vec();
    let mut len = start.len() as u64;
    let mut block = start;
    loop {
        block.resize(CHUNK_BYTES, 0);
        let n = loop {
            match r.read(&mut block) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(source) => return Err(SourceError::Read { path: name.to_owned(), source }),
            }
        };
        if n == 0 {
            match follow.map(|f| f.at_eof(em.pos.offset + len)) {
                Some(AtEof::Cancelled) => return Ok(Skipped::Cancelled),
                Some(AtEof::Unchanged) => {
                    std::thread::sleep(FOLLOW_POLL);
                    continue;
                }
                // The change is acted on where the next read finds the end again.
                None | Some(AtEof::Changed(_)) => {}
            }
            return Ok(if em.send_oversized(prefix, len, false) {
                Skipped::AtEof
            } else {
                Skipped::Closed
            });
        }
        if let Some(p) = memchr::memchr(b'\n', &block[..n]) {
            len += p as u64;
            carry.extend_from_slice(&block[p + 1..n]);
            return Ok(if em.send_oversized(prefix, len, true) {
                Skipped::Line
            } else {
                Skipped::Closed
            });
        }
        len += n as u64;
    }
}
