//! Sources: raw lines in, each with its position, and checkpoint barriers in band.
//!
//! A source decides where barriers fall (after every N lines, or when a timer fires) and sends
//! them in the same channel as the data, so a barrier proves everything before it was handed
//! over. The only source so far replays recorded files; Kafka and Kinesis come next and will
//! share this message type (and a `Source` trait once there are two).

pub mod replay;

use crate::event::SourcePosition;

/// What flows from a source to the processor.
#[derive(Debug)]
pub enum Message {
    /// Whole lines of one input.
    Lines(Chunk),
    /// Everything before this is in; the source resumes at `SourcePosition` after a restart.
    Barrier(SourcePosition),
    /// Every input was read to its end; the final position.
    End(SourcePosition),
    /// A line too long to hold in memory, skipped by the source.
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
