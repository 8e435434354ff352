//! Replay of recorded JSON Lines files (`.jsonl`, `.jsonl.gz`, or `-` for stdin), in the order
//! given, resuming at a checkpointed position.

use super::{Chunk, Message, Oversized};
use crate::event::SourcePosition;
use flate2::read::MultiGzDecoder;
use indicatif::ProgressBar;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender};
use std::time::{Duration, Instant};
use thiserror::Error;
use tokio_util::sync::CancellationToken;

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
}

/// One input of a replay.
#[derive(Debug, Clone)]
pub struct Input {
    /// As given on the command line.
    pub name: Arc<str>,
    path: Option<PathBuf>,
    gzip: bool,
    size: Option<u64>,
}

impl Input {
    /// Checks that an input exists and is a readable file (`-` is stdin).
    ///
    /// # Errors
    /// The file is missing, unreadable or a directory.
    pub fn new(arg: &str) -> Result<Input, SourceError> {
        if arg == "-" {
            return Ok(Input { name: Arc::from("-"), path: None, gzip: false, size: None });
        }
        let path = PathBuf::from(arg);
        let open = |source| SourceError::Open { path: arg.to_owned(), source };
        let f = File::open(&path).map_err(open)?;
        let meta = f.metadata().map_err(open)?;
        if meta.is_dir() {
            return Err(open(io::Error::other("it is a directory")));
        }
        Ok(Input {
            name: Arc::from(arg),
            gzip: path.extension().is_some_and(|x| x.eq_ignore_ascii_case("gz")),
            size: Some(meta.len()),
            path: Some(path),
        })
    }

    /// Name and size: a changed input is refused on resume.
    #[must_use]
    pub fn fingerprint(&self) -> String {
        match self.size {
            Some(n) => format!("{}:{n}", self.name),
            None => self.name.to_string(),
        }
    }

    /// Whether it is read through gzip.
    #[must_use]
    pub fn is_gzip(&self) -> bool {
        self.gzip
    }

    /// Size on disk, if known.
    #[must_use]
    pub fn size(&self) -> Option<u64> {
        self.size
    }

    /// The input from its start, decompressed.
    ///
    /// # Errors
    /// It cannot be opened.
    pub fn reader(&self, progress: &ProgressBar) -> Result<Box<dyn Read + Send>, SourceError> {
        self.open(0, progress)
    }

    fn open(
        &self,
        offset: u64,
        progress: &ProgressBar,
    ) -> Result<Box<dyn Read + Send>, SourceError> {
        let name = self.name.to_string();
        let open_err = |source| SourceError::Open { path: name.clone(), source };
        let raw: Box<dyn Read + Send> = match &self.path {
            None => Box::new(io::stdin()),
            Some(p) => {
                let mut f = File::open(p).map_err(open_err)?;
                if !self.gzip && offset > 0 {
                    f.seek(SeekFrom::Start(offset)).map_err(open_err)?;
                    progress.inc(offset);
                }
                Box::new(f)
            }
        };
        let counted = Counted { inner: raw, progress: progress.clone() };
        let mut r: Box<dyn Read + Send> = if self.gzip {
            Box::new(MultiGzDecoder::new(io::BufReader::with_capacity(1 << 20, counted)))
        } else {
            Box::new(counted)
        };
        if offset > 0 && (self.gzip || self.path.is_none()) {
            // No seeking in a compressed stream or a pipe: read past what was consumed.
            let skipped = io::copy(&mut (&mut r).take(offset), &mut io::sink())
                .map_err(|source| SourceError::Read { path: name.clone(), source })?;
            if skipped < offset {
                return Err(SourceError::Shorter { path: name, offset });
            }
        } else if offset > 0 && self.size.is_some_and(|s| s < offset) {
            return Err(SourceError::Shorter { path: name, offset });
        }
        Ok(r)
    }
}

struct Counted {
    inner: Box<dyn Read + Send>,
    progress: ProgressBar,
}

impl Read for Counted {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.progress.inc(n as u64);
        Ok(n)
    }
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
        let o = Oversized {
            input: self.pos.input,
            lines_before: self.pos.line,
            offset: self.pos.offset,
            len,
            prefix,
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

impl ReplaySource {
    /// A replay of `inputs` from `start`.
    #[must_use]
    pub fn new(inputs: Vec<Input>, start: SourcePosition, policy: BarrierPolicy) -> Self {
        ReplaySource { inputs, start, policy, follow: false }
    }

    /// Keeps reading the last input as it grows (like `tail -f`) until cancelled, instead of
    /// ending at its end. Lines are taken only once their `\n` is written.
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
        for (idx, input) in self.inputs.iter().enumerate().skip(self.start.input as usize) {
            if em.pos.input as usize != idx {
                em.pos = SourcePosition { input: idx as u32, line: 0, offset: 0 };
            }
            let mut r = input.open(em.pos.offset, progress)?;
            let mut carry: Vec<u8> = Vec::new();
            loop {
                if cancel.is_cancelled() {
                    // Lines in `carry` were not sent: the barrier's position is before them.
                    let _ = em.barrier();
                    return Ok(());
                }
                let mut buf = em.buffer();
                buf.append(&mut carry);
                let target = buf.len() + CHUNK_BYTES;
                let mut eof = false;
                while buf.len() < target {
                    let old = buf.len();
                    buf.resize(target, 0);
                    match r.read(&mut buf[old..]) {
                        Ok(0) => {
                            buf.truncate(old);
                            eof = true;
                            break;
                        }
                        Ok(n) => buf.truncate(old + n),
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => buf.truncate(old),
                        Err(source) => {
                            return Err(SourceError::Read { path: input.name.to_string(), source });
                        }
                    }
                }
                if eof && self.follow && idx + 1 == self.inputs.len() {
                    // Complete lines go now; a partial last line waits for its newline.
                    match memchr::memrchr(b'\n', &buf) {
                        Some(p) => {
                            carry.extend_from_slice(&buf[p + 1..]);
                            buf.truncate(p + 1);
                            if !em.send_lines(buf, false) {
                                return Ok(());
                            }
                        }
                        None => carry = buf,
                    }
                    if em.since_barrier > 0
                        && em.policy.interval.is_some_and(|i| em.last_barrier.elapsed() >= i)
                        && !em.barrier()
                    {
                        return Ok(());
                    }
                    std::thread::sleep(FOLLOW_POLL);
                    continue;
                }
                if eof {
                    if !buf.is_empty() && !em.send_lines(buf, true) {
                        return Ok(());
                    }
                    break;
                }
                match memchr::memrchr(b'\n', &buf) {
                    Some(p) => {
                        carry.extend_from_slice(&buf[p + 1..]);
                        buf.truncate(p + 1);
                        if !em.send_lines(buf, false) {
                            return Ok(());
                        }
                    }
                    None if buf.len() > MAX_BUFFERED_LINE => {
                        match skip_oversized(&mut r, buf, &mut carry, &mut em, &input.name)? {
                            Skipped::Line => {}
                            Skipped::AtEof => break,
                            Skipped::Closed => return Ok(()),
                        }
                    }
                    None => carry = buf, // one line longer than a chunk: keep reading it
                }
            }
        }
        let end = SourcePosition { input: self.inputs.len() as u32, line: 0, offset: 0 };
        let _ = tx.send(Message::End(end));
        Ok(())
    }
}

enum Skipped {
    /// The line ended; reading goes on after it.
    Line,
    /// The input ended inside the line.
    AtEof,
    /// The processor is gone.
    Closed,
}

/// Reads past the rest of a line of which `start` holds the first (too many) bytes, keeping only
/// its beginning; what follows the line's `\n` is left in `carry`.
fn skip_oversized(
    r: &mut Box<dyn Read + Send>,
    start: Vec<u8>,
    carry: &mut Vec<u8>,
    em: &mut Emitter<'_>,
    name: &str,
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
