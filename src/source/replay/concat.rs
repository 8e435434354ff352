//! Reading an input of JSON values written back to back (`--framing concatenated`): the framer
//! cuts them into records, and positions count the framed form, each value's bytes and one
//! newline (bytes that frame no value count as one record of their length). The framed form is
//! a function of the input alone, so a resume frames the input again from its start and skips
//! what the checkpoint had consumed: it neither loses nor repeats a record.

use super::framing::{Framed, Framer};
use super::{CHUNK_BYTES, Emitter, Flow, MAX_BUFFERED_LINE, SourceError, fill};
use std::io::Read;
use tokio_util::sync::CancellationToken;

/// Sends the records of one concatenated input from `em.pos`, whose offset (`skip`) counts
/// framed bytes already consumed.
pub(super) fn read(
    mut r: Box<dyn Read + Send>,
    em: &mut Emitter<'_>,
    cancel: &CancellationToken,
    name: &str,
) -> Result<Flow, SourceError> {
    let mut framer = Framer::new(MAX_BUFFERED_LINE);
    let mut skip = em.pos.offset;
    let mut raw = Vec::with_capacity(CHUNK_BYTES);
    let mut pieces = Vec::new();
    loop {
        if cancel.is_cancelled() {
            let _ = em.barrier();
            return Ok(Flow::Stop);
        }
        raw.clear();
        let eof = fill(&mut r, &mut raw, name)?;
        // Records go into a buffer the processor gave back, which the framer appends to: the
        // buffers circulate instead of one being allocated per chunk. Buffers beyond that one
        // (a chunk that held bytes framing no value yields two runs of records) are let go, so
        // the pool never holds more than it did.
        pieces.push(Framed::Records(em.buffer()));
        while em.pool.try_recv().is_ok() {}
        framer.feed(&raw, &mut pieces);
        if eof {
            framer.finish(&mut pieces);
        }
        for piece in pieces.drain(..) {
            let sent = match piece {
                Framed::Records(data) if data.is_empty() => true,
                Framed::Records(mut data) => {
                    if skip > 0 {
                        let len = data.len() as u64;
                        if skip >= len {
                            skip -= len;
                            continue;
                        }
                        // A checkpoint falls between records: its offset ends one.
                        if data[skip as usize - 1] != b'\n' {
                            return Err(changed(name, em.pos.offset));
                        }
                        data.drain(..skip as usize);
                        skip = 0;
                    }
                    em.send_lines(data, false)
                }
                Framed::Bad { len, prefix, why, .. } => {
                    if skip > 0 {
                        if skip < len + 1 {
                            return Err(changed(name, em.pos.offset));
                        }
                        skip -= len + 1;
                        continue;
                    }
                    em.send_skipped(prefix, len, true, Some(why))
                }
                Framed::Oversized { len, prefix, .. } => {
                    if skip > 0 {
                        if skip < len + 1 {
                            return Err(changed(name, em.pos.offset));
                        }
                        skip -= len + 1;
                        continue;
                    }
                    em.send_skipped(prefix, len, true, None)
                }
            };
            if !sent {
                return Ok(Flow::Stop);
            }
        }
        if eof {
            if skip > 0 {
                return Err(SourceError::Shorter { path: name.to_owned(), offset: em.pos.offset });
            }
            return Ok(Flow::Next);
        }
    }
}

/// A checkpointed offset that falls inside a record: the input is not what was read.
fn changed(name: &str, offset: u64) -> SourceError {
    SourceError::Read {
        path: name.to_owned(),
        source: std::io::Error::other(format!(
            "the checkpoint's offset {offset} falls inside a record of the framed input: it changed since"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::super::{BarrierPolicy, Framing, Input, ReplaySource};
    use crate::event::SourcePosition;
    use crate::source::Message;
    use indicatif::ProgressBar;
    use tokio_util::sync::CancellationToken;

    /// What a replay from `start` sends: each record (a line, or `!bad` for bytes that frame
    /// none) with the position after it, and the barriers' positions.
    fn records(
        input: &Input,
        start: SourcePosition,
    ) -> (Vec<(String, SourcePosition)>, Vec<SourcePosition>) {
        let (tx, rx) = std::sync::mpsc::sync_channel(1024);
        let (_pool_tx, pool_rx) = std::sync::mpsc::channel();
        let policy = BarrierPolicy { every_lines: 3, interval: None };
        ReplaySource::new(vec![input.clone()], start, policy)
            .run(&tx, &pool_rx, &CancellationToken::new(), &ProgressBar::hidden())
            .unwrap();
        drop(tx);
        let (mut got, mut barriers) = (Vec::new(), Vec::new());
        for m in rx {
            match m {
                Message::Lines(c) => {
                    let mut offset = c.offset;
                    for (i, line) in c.data.split_inclusive(|&b| b == b'\n').enumerate() {
                        offset += line.len() as u64;
                        let pos = SourcePosition {
                            input: c.input,
                            line: c.lines_before + i as u64 + 1,
                            offset,
                        };
                        got.push((String::from_utf8_lossy(line).trim_end().to_owned(), pos));
                    }
                }
                Message::Oversized(o) => {
                    assert!(o.bad_framing.is_some());
                    let pos = SourcePosition {
                        input: o.input,
                        line: o.lines_before + 1,
                        offset: o.offset + o.len + 1,
                    };
                    got.push((format!("!bad {}", String::from_utf8_lossy(&o.prefix)), pos));
                }
                Message::Barrier(p) => barriers.push(p),
                Message::End(_) => {}
            }
        }
        (got, barriers)
    }

    #[test]
    fn a_resume_at_any_barrier_sends_exactly_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fh.json");
        std::fs::write(
            &path,
            b"{\"a\":1}{\"a\":2}\n  {\"a\":\n3} , {\"a\":\"}{\"}{\"a\":5,\"b\"{\"a\":6}[7]\n\n{\"a\":8}\t{\"a\":9}{\"a\":\"x\ny\"}{\"a\":10}",
        )
        .unwrap();
        let input = Input::new(path.to_str().unwrap()).unwrap().with_framing(Framing::Concatenated);
        let (all, barriers) = records(&input, SourcePosition::default());
        let texts: Vec<&str> = all.iter().map(|(t, _)| t.as_str()).collect();
        assert_eq!(
            texts,
            [
                "{\"a\":1}",
                "{\"a\":2}",
                "{\"a\": 3}",
                "!bad ,",
                "{\"a\":\"}{\"}",
                "!bad {\"a\":5,\"b\"",
                "{\"a\":6}",
                "[7]",
                "{\"a\":8}",
                "{\"a\":9}",
                "!bad {\"a\":\"x",
                "!bad y\"}",
                "{\"a\":10}"
            ]
        );
        assert!(barriers.len() >= 3, "{barriers:?}");
        for b in barriers {
            let (rest, _) = records(&input, b);
            let at = all.iter().position(|(_, p)| *p == b).map_or(0, |i| i + 1);
            assert_eq!(rest, all[at..].to_vec(), "resumed at {b:?}");
        }
    }
}
