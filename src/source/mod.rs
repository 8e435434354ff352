//! Sources: raw records in, each with its position.
//!
//! Two kinds. `replay` reads recorded files and decides where barriers fall (after every N
//! lines, or when a timer fires), sending them in the same channel as the data, so a barrier
//! proves everything before it was handed over. A **partitioned** source (`kafka`) hands the
//! runtime *splits* — a Kafka partition, later a Kinesis shard — each with its own reader of
//! records that carry their position, and tells it when a split is assigned or revoked; the
//! runtime (`crate::runtime`) owns everything else: pipelines, checkpoints, commits, fencing.

pub mod kafka;
pub mod kinesis;
pub mod replay;

use crate::event::{LinePosition, SourcePosition};
use std::fmt::Debug;
use std::sync::Arc;
use std::time::Duration;

/// What flows from a source to the processor.
#[derive(Debug)]
pub enum Message {
    /// Whole lines of one input.
    Lines(Chunk),
    /// Everything before this is in; the source resumes at `SourcePosition` after a restart.
    Barrier(SourcePosition),
    /// Every input was read to its end; the final position.
    End(SourcePosition),
    /// A line too long to hold in memory, or bytes that frame no value, skipped by the source.
    Oversized(Oversized),
}

/// A line longer than a source will buffer: only its start is kept.
#[derive(Debug)]
pub struct Oversized {
    /// Index of the input.
    pub input: u32,
    /// Number of lines of this input before this one.
    pub lines_before: u64,
    /// Byte offset of the line.
    pub offset: u64,
    /// Its length, without the `\n`.
    pub len: u64,
    /// Its first bytes.
    pub prefix: Vec<u8>,
    /// Not a line too long but bytes that frame no JSON value (`bad_framing`), and why.
    pub bad_framing: Option<&'static str>,
}

/// A run of complete lines of one input. Each line ends in `\n`, except that the input's last
/// line may lack it.
#[derive(Debug)]
pub struct Chunk {
    /// The bytes.
    pub data: Vec<u8>,
    /// Index of the input.
    pub input: u32,
    /// Number of lines of this input before the chunk's first line.
    pub lines_before: u64,
    /// Byte offset of the chunk within the (decompressed) input.
    pub offset: u64,
}

/// A split of a partitioned source: `p0007` for Kafka partition 7 (the name its objects in S3
/// carry).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SplitId(Arc<str>);

impl SplitId {
    /// A split named `name`.
    #[must_use]
    pub fn new(name: &str) -> SplitId {
        SplitId(Arc::from(name))
    }

    /// Its name.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for SplitId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// How a closed split's final position ([`Polled::End`]) is encoded in its commit record: what
/// a child split checks before it starts from its parents' state.
pub const END: &str = "END";

/// Where a split resumes: the source's own notion (Kafka: the next offset). Ordered, so a
/// record at or before the resume point is a redelivery; encoded as text in the commit record.
pub trait Position: Clone + Ord + Debug + Send + Sync + 'static {
    /// The text stored in the commit record.
    fn encode(&self) -> String;
    /// Parses [`Position::encode`]'s text.
    fn decode(text: &str) -> Option<Self>;
    /// The form the state's checkpoint record has always held.
    fn legacy(&self) -> SourcePosition;
    /// Reads state written before positions were in the commit record.
    fn from_legacy(p: SourcePosition) -> Option<Self>;
}

/// Where a split starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartAt<P> {
    /// No committed position: the source's configured start (Kafka: the beginning).
    Initial,
    /// Right after the committed position.
    Resume(P),
}

/// One record of a split.
#[derive(Debug)]
pub struct Record<'a, P> {
    /// Its bytes.
    pub payload: &'a [u8],
    /// Where it is, for dead-letter records.
    pub line: LinePosition,
    /// Where the split resumes after it.
    pub end: P,
}

/// What a split's reader has.
#[derive(Debug)]
pub enum Polled<'a, P> {
    /// A record.
    Record(Record<'a, P>),
    /// Nothing within the timeout.
    Nothing,
    /// The split is closed and every record of it was handed over: its final position (a
    /// Kinesis shard after a split or merge). Its state goes on in its children.
    End(P),
}

/// Reads one split's records, on the split's own thread.
pub trait SplitReader: Send + 'static {
    /// The split's position type.
    type Position: Position;

    /// The next record, waiting at most `timeout`.
    fn poll(&mut self, timeout: Duration) -> Polled<'_, Self::Position>;

    /// Records after `at` (`None`: nothing read yet) that the source holds (the lag), if
    /// known; `Some(0)` means caught up.
    fn lag(&self, at: Option<&Self::Position>) -> Option<u64>;
}

/// Signals a rendezvous: the runtime has done what a revocation needs.
#[derive(Debug)]
pub struct Done(std::sync::mpsc::Sender<()>);

impl Done {
    /// A signal and the receiver to wait on.
    #[must_use]
    pub fn new() -> (Done, std::sync::mpsc::Receiver<()>) {
        let (tx, rx) = std::sync::mpsc::channel();
        (Done(tx), rx)
    }

    /// Signals.
    pub fn done(self) {
        let _ = self.0.send(());
    }
}

/// What a partitioned source tells the runtime, and what workers report back to it: one
/// channel into the runtime's thread.
pub enum Note<R: SplitReader> {
    /// The split is ours; its reader holds back until [`SourceControl::start`].
    Assigned {
        /// The split.
        id: SplitId,
        /// Its records.
        reader: R,
    },
    /// The split is no longer ours. `lost`: it may already be someone else's, so nothing more
    /// may be written for it; otherwise a final checkpoint hands it over. The source waits for
    /// `done` (under a deadline) before letting go.
    Revoked {
        /// The split.
        id: SplitId,
        /// Taken away without a chance to hand over.
        lost: bool,
        /// Signalled when the split's pipeline has stopped.
        done: Done,
    },
    /// A worker committed a checkpoint (for the source's position hint).
    Committed {
        /// The split.
        id: SplitId,
        /// Its position now.
        position: R::Position,
    },
    /// A worker stopped.
    Stopped {
        /// The split.
        id: SplitId,
        /// Which worker of the split.
        generation: u64,
        /// The reader, when the split is still assigned (a fenced worker hands it back).
        reader: Option<R>,
        /// Why it stopped.
        why: Stop,
    },
}

/// Why a split's worker stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stop {
    /// Asked to (revoked, shutting down).
    Asked,
    /// Another owner committed: this one is stale.
    Fenced,
    /// The split needs an operator (missing or corrupt commit record, changed settings, …).
    Halted(String),
    /// An error a new worker may not repeat.
    Failed(String),
    /// The split reached its end and committed it.
    Finished,
}

/// Where a split's state comes from besides its own records: the splits it continues (a
/// Kinesis shard's parents), and the hash keys it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lineage {
    /// Each parent, and whether the source still lists it (a parent past retention may have
    /// left no final state: it counts as finished).
    pub parents: Vec<(SplitId, bool)>,
    /// The keys (`MD5(customer id)` read as a big-endian number) whose customers this split
    /// holds, both ends inclusive.
    pub range: (u128, u128),
}

/// What the runtime asks of a partitioned source.
pub trait SourceControl: Send + Sync + 'static {
    /// The split's position type.
    type Position: Position;

    /// Positions the split (`at`) and lets its records flow; waits until the source confirms,
    /// or `give_up` turns true.
    ///
    /// # Errors
    /// The split is no longer assigned, or the source cannot position it.
    fn start(
        &self,
        id: &SplitId,
        at: &StartAt<Self::Position>,
        give_up: &dyn Fn() -> bool,
    ) -> Result<(), String>;

    /// Tells the source how far the split is committed (Kafka: an offset commit, for lag
    /// monitoring and tools; never read back).
    fn commit_hint(&self, id: &SplitId, at: &Self::Position);

    /// What the split reads, for the commit record (`kafka:TOPIC/PARTITION`): a restore of
    /// another source's state is refused.
    fn identity(&self, id: &SplitId) -> String;

    /// The split's lineage, when keys move between splits (Kinesis resharding). `None`: the
    /// split's state is its own alone (Kafka).
    fn lineage(&self, _id: &SplitId) -> Option<Lineage> {
        None
    }
}
