//! A local directory as the sink: `sessions/dt=YYYY-MM-DD/part-N.jsonl` and
//! `dead-letter/part-N.jsonl`, where N is the checkpoint that made them.

use super::{DeadLetter, SinkError};
use crate::aggregate::SessionRow;
use crate::event::CheckpointId;
use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

const SESSIONS: &str = "sessions";
const DEAD_LETTER: &str = "dead-letter";
const DAY_MS: i64 = 86_400_000;
/// About what a session row takes as a JSON line.
const ROW_BYTES: usize = 256;
/// Written last, with the summary, when a replay completes (as Hadoop's `_SUCCESS`).
pub const SUCCESS: &str = "_SUCCESS";

/// Output files in a directory.
#[derive(Debug)]
pub struct FileSink {
    root: PathBuf,
}

fn io<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> SinkError + 'a {
    move |source| SinkError::Io { op, path: path.display().to_string(), source }
}

fn part_name(id: CheckpointId) -> String {
    format!("part-{id:010}.jsonl")
}

/// The checkpoint id in a part file's name, if it is one of ours.
fn part_id(name: &str) -> Option<CheckpointId> {
    name.strip_prefix("part-")?.strip_suffix(".jsonl")?.parse().ok()
}

impl FileSink {
    /// Opens the output directory, creating it, and checks that it is writable.
    ///
    /// # Errors
    /// The directory cannot be created or written.
    pub fn open(root: &Path) -> Result<FileSink, SinkError> {
        let dirs = [root.to_path_buf(), root.join(SESSIONS), root.join(DEAD_LETTER)];
        for d in &dirs {
            fs::create_dir_all(d).map_err(io("create directory", d))?;
        }
        // Their entries must be durable before any checkpoint relies on files inside them.
        for d in &dirs {
            fs::File::open(d).and_then(|f| f.sync_all()).map_err(io("sync", d))?;
        }
        let probe = root.join(".write-probe.tmp");
        fs::write(&probe, b"").map_err(io("write to", root))?;
        fs::remove_file(&probe).map_err(io("remove", &probe))?;
        Ok(FileSink { root: root.to_path_buf() })
    }
}

impl super::Sink for FileSink {
    /// Removes what a crashed run left after checkpoint `committed`: temporary files, part files
    /// of later checkpoints, and the completion marker. Returns how many files it removed.
    ///
    /// # Errors
    /// A directory cannot be listed or a file removed.
    fn recover(&self, committed: CheckpointId) -> Result<usize, SinkError> {
        let mut removed = 0;
        let success = self.root.join(SUCCESS);
        if success.exists() {
            fs::remove_file(&success).map_err(io("remove", &success))?;
        }
        let mut dirs = vec![self.root.join(DEAD_LETTER)];
        let sessions = self.root.join(SESSIONS);
        for e in fs::read_dir(&sessions).map_err(io("list", &sessions))? {
            let e = e.map_err(io("list", &sessions))?;
            if e.file_type().map_err(io("stat", &e.path()))?.is_dir() {
                dirs.push(e.path());
            }
        }
        for d in dirs {
            for e in fs::read_dir(&d).map_err(io("list", &d))? {
                let p = e.map_err(io("list", &d))?.path();
                let name = p.file_name().and_then(|n| n.to_str()).unwrap_or_default();
                // Temporary names are ours, always lowercase.
                let tmp = p.extension().is_some_and(|x| x == "tmp");
                let stale = tmp || part_id(name).is_some_and(|id| id > committed);
                if stale {
                    fs::remove_file(&p).map_err(io("remove", &p))?;
                    removed += 1;
                }
            }
        }
        Ok(removed)
    }

    /// Writes checkpoint `id`'s rows (partitioned by session date) and dead letters, durably.
    ///
    /// # Errors
    /// A file cannot be written, synced or renamed.
    fn write_epoch(
        &self,
        id: CheckpointId,
        rows: &[SessionRow],
        dead: &[DeadLetter],
    ) -> Result<(), SinkError> {
        // By day number, not by its text: a date string per row was an allocation each.
        let mut by_day: BTreeMap<i64, Vec<u8>> = BTreeMap::new();
        for r in rows {
            let room = if by_day.is_empty() { rows.len() * ROW_BYTES } else { 0 };
            // Room for the whole epoch in the first day's buffer (an epoch mostly falls on
            // one day): no regrowth copying megabytes.
            let buf = by_day
                .entry(r.session_start.div_euclid(DAY_MS))
                .or_insert_with(|| Vec::with_capacity(room));
            r.write_json_line(buf);
        }
        for (day, buf) in by_day {
            let date = crate::aggregate::utc_date(day * DAY_MS);
            let dir = self.root.join(SESSIONS).join(format!("dt={date}"));
            if !dir.is_dir() {
                fs::create_dir_all(&dir).map_err(io("create directory", &dir))?;
                // A new partition's own entry must be durable too, or a power cut could take
                // the directory, and the files in it, away after the checkpoint committed.
                let parent = self.root.join(SESSIONS);
                fs::File::open(&parent).and_then(|d| d.sync_all()).map_err(io("sync", &parent))?;
            }
            write_atomic(&dir, &part_name(id), &buf)?;
        }
        if !dead.is_empty() {
            let buf: Vec<u8> = dead.iter().flat_map(DeadLetter::to_json_line).collect();
            write_atomic(&self.root.join(DEAD_LETTER), &part_name(id), &buf)?;
        }
        Ok(())
    }

    /// Whether a completion marker is present.
    fn is_marked_complete(&self) -> Result<bool, SinkError> {
        Ok(self.root.join(SUCCESS).is_file())
    }

    /// Counts the records in the part files: (session rows, dead letters).
    ///
    /// # Errors
    /// A directory or file cannot be read.
    fn count_records(&self) -> Result<(u64, u64), SinkError> {
        let count_in = |dir: &Path| -> Result<u64, SinkError> {
            let mut n = 0;
            for e in fs::read_dir(dir).map_err(io("list", dir))? {
                let p = e.map_err(io("list", dir))?.path();
                if p.is_dir() {
                    n += count_in_dir(&p)?;
                }
            }
            Ok(n + count_in_dir(dir)?)
        };
        Ok((count_in(&self.root.join(SESSIONS))?, count_in_dir(&self.root.join(DEAD_LETTER))?))
    }

    /// Marks the output complete.
    ///
    /// # Errors
    /// The marker cannot be written.
    fn write_success(&self, summary: &str) -> Result<(), SinkError> {
        write_atomic(&self.root, SUCCESS, format!("{summary}\n").as_bytes())
    }
}

/// Lines in the part files directly in `dir`.
fn count_in_dir(dir: &Path) -> Result<u64, SinkError> {
    let mut n = 0;
    for e in fs::read_dir(dir).map_err(io("list", dir))? {
        let p = e.map_err(io("list", dir))?.path();
        if p.file_name().and_then(|f| f.to_str()).and_then(part_id).is_some() {
            let data = fs::read(&p).map_err(io("read", &p))?;
            n += memchr::memchr_iter(b'\n', &data).count() as u64;
        }
    }
    Ok(n)
}

/// Write to a temporary name, sync, rename over the final name, sync the directory.
fn write_atomic(dir: &Path, name: &str, data: &[u8]) -> Result<(), SinkError> {
    let tmp = dir.join(format!(".{name}.tmp"));
    let dst = dir.join(name);
    let mut f = fs::File::create(&tmp).map_err(io("create", &tmp))?;
    f.write_all(data).map_err(io("write", &tmp))?;
    f.sync_all().map_err(io("sync", &tmp))?;
    drop(f);
    fs::rename(&tmp, &dst).map_err(io("rename", &tmp))?;
    fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io("sync", dir))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::LinePosition;
    use crate::sink::Sink as _;

    fn row(c: &str, start: i64) -> SessionRow {
        SessionRow {
            customer_id: c.into(),
            session_start: start,
            session_end: start,
            duration_ms: 0,
            event_count: 1,
            counts: [0; 4].into(),
            attrs: Vec::new(),
            layout: std::sync::Arc::new(crate::aggregate::RowLayout::classic()),
            schema_sets: [std::sync::Arc::from("web@1")].into_iter().collect(),
        }
    }

    #[test]
    fn partitions_by_date_and_recovers_later_checkpoints() {
        let dir = tempfile::tempdir().unwrap();
        let sink = FileSink::open(dir.path()).unwrap();
        let dl = DeadLetter {
            reason: "late".into(),
            detail: String::new(),
            input: "x".into(),
            position: LinePosition::default(),
            raw: b"{}".to_vec(),
            truncated_from: None,
            schema_set: "web@1".into(),
        };
        sink.write_epoch(1, &[row("a", 1_709_510_400_000), row("b", 0)], std::slice::from_ref(&dl))
            .unwrap();
        sink.write_epoch(2, &[row("a", 1_709_510_400_001)], &[]).unwrap();
        sink.write_success("{}").unwrap();
        let p = dir.path().join("sessions/dt=2024-03-04/part-0000000001.jsonl");
        assert_eq!(fs::read_to_string(&p).unwrap().lines().count(), 1);
        assert!(dir.path().join("sessions/dt=1970-01-01/part-0000000001.jsonl").exists());
        assert!(dir.path().join("dead-letter/part-0000000001.jsonl").exists());
        fs::write(dir.path().join("sessions/dt=2024-03-04/.part-0000000003.jsonl.tmp"), b"x")
            .unwrap();
        assert_eq!(sink.recover(1).unwrap(), 2);
        assert!(p.exists());
        assert!(!dir.path().join("sessions/dt=2024-03-04/part-0000000002.jsonl").exists());
        assert!(!dir.path().join(SUCCESS).exists());
    }

    #[test]
    fn unwritable_output_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        fs::write(&file, b"").unwrap();
        assert!(FileSink::open(&file.join("out")).is_err());
    }
}
