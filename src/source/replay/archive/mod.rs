//! Archives of recorded events: a local directory or an S3 prefix of objects, as Kinesis Data
//! Firehose or a Kafka S3 sink write them (hourly `YYYY/MM/DD/HH/` prefixes, gzip or not).
//!
//! An archive is listed once, in key order; its listing (keys, sizes, and ETags or
//! modification times) is the archive's identity, which a checkpoint pins. Objects are read
//! as streams, never whole, and only as the listing saw them: each read of an S3 object is
//! conditional on its listed ETag.

mod s3;
#[cfg(test)]
mod tests;

pub use s3::{Object, list_s3};

use super::SourceError;
use super::input::Input;
use std::fmt::Write as _;
use std::io;
use std::path::{Path, PathBuf};

const HOUR_MS: i64 = 3_600_000;

/// Which objects of an archive are read: by the hour their key names (`…/YYYY/MM/DD/HH/…`),
/// or when the key names none, by when the object was last written. `from` is inclusive, `to`
/// exclusive, both in ms since the epoch; an hour is kept when it overlaps the window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Window {
    /// Start.
    pub from: Option<i64>,
    /// End.
    pub to: Option<i64>,
}

impl Window {
    fn keeps(self, key: &str, modified_ms: Option<i64>) -> bool {
        match (hour_of(key), modified_ms) {
            (Some(h), _) => {
                self.from.is_none_or(|f| h + HOUR_MS > f) && self.to.is_none_or(|t| h < t)
            }
            (None, Some(m)) => self.from.is_none_or(|f| m >= f) && self.to.is_none_or(|t| m < t),
            (None, None) => self.from.is_none() && self.to.is_none(),
        }
    }

    fn describe(self) -> String {
        let at = |ms: i64| {
            jiff::Timestamp::from_millisecond(ms).map_or_else(|_| ms.to_string(), |t| t.to_string())
        };
        let mut s = String::new();
        if let Some(f) = self.from {
            s.push_str(":from=");
            s.push_str(&at(f));
        }
        if let Some(t) = self.to {
            s.push_str(":to=");
            s.push_str(&at(t));
        }
        s
    }
}

/// Parses `--from`/`--to`: `2026-11-30`, `2026-11-30T13`, `2026-11-30T13:05[:09]` (UTC, a
/// trailing `Z` allowed), the Firehose path form `2026/11/30/13`, or an RFC 3339 time with an
/// offset.
///
/// # Errors
/// None of those.
pub fn parse_time(s: &str) -> Result<i64, String> {
    let bad = || {
        format!(
            "`{s}` is not a time like 2026-11-30, 2026-11-30T13, 2026-11-30T13:05:00Z or 2026/11/30/13"
        )
    };
    if let Ok(t) = s.parse::<jiff::Timestamp>() {
        return Ok(t.as_millisecond());
    }
    let t = s.strip_suffix('Z').unwrap_or(s).replace('/', "-");
    let (date, time) = match t.split_once('T') {
        Some((d, t)) => (d.to_owned(), t.to_owned()),
        // `2026-11-30-13`: the path form after the slashes became dashes.
        None if t.len() == 13 && t.as_bytes()[10] == b'-' => {
            (t[..10].to_owned(), t[11..].to_owned())
        }
        None => (t.clone(), String::new()),
    };
    let mut d = date.split('-').map(str::parse::<i16>);
    let (Some(Ok(y)), Some(Ok(mo)), Some(Ok(day)), None) = (d.next(), d.next(), d.next(), d.next())
    else {
        return Err(bad());
    };
    let mut hms = [0i8; 3];
    if !time.is_empty() {
        for (i, part) in time.split(':').enumerate() {
            let slot = hms.get_mut(i).ok_or_else(bad)?;
            *slot = part.parse().map_err(|_| bad())?;
        }
    }
    let date = jiff::civil::Date::new(y, mo as i8, day as i8).map_err(|_| bad())?;
    let at = date.at(hms[0], hms[1], hms[2], 0);
    let zoned = at.to_zoned(jiff::tz::TimeZone::UTC).map_err(|_| bad())?;
    Ok(zoned.timestamp().as_millisecond())
}

/// The hour a key's first `YYYY/MM/DD/HH/` names (it must be followed by more of the key), in
/// ms since the epoch.
#[must_use]
pub fn hour_of(key: &str) -> Option<i64> {
    let parts: Vec<&str> = key.split('/').collect();
    parts.windows(5).find_map(|w| hour_parts(w[0], w[1], w[2], w[3]))
}

fn hour_parts(y: &str, m: &str, d: &str, h: &str) -> Option<i64> {
    let num = |s: &str, len: usize| {
        (s.len() == len && s.bytes().all(|b| b.is_ascii_digit())).then(|| s.parse::<i16>().ok())?
    };
    let (y, m, d, h) = (num(y, 4)?, num(m, 2)?, num(d, 2)?, num(h, 2)?);
    let date = jiff::civil::Date::new(y, m as i8, d as i8).ok()?;
    let at = date.at(i8::try_from(h).ok().filter(|h| *h < 24)?, 0, 0, 0);
    Some(at.to_zoned(jiff::tz::TimeZone::UTC).ok()?.timestamp().as_millisecond())
}

/// Whether a name below an archive is left out: `.` or `_` first, as Hadoop, Spark and Hive
/// leave out `_SUCCESS`, `_temporary/` or `.part` files. `clickstream record` keeps its
/// position sidecars under `_positions/` so that an archive of its files replays only events.
#[must_use]
pub fn hidden(name: &str) -> bool {
    name.starts_with('.') || name.starts_with('_')
}

/// Whether an input argument names an archive: `s3://…`, or a directory.
#[must_use]
pub fn is_archive(arg: &str) -> bool {
    arg.starts_with("s3://") || Path::new(arg).is_dir()
}

/// An archive as listed: its objects in key order, and the listing that identifies it.
#[derive(Debug)]
pub struct Archive {
    /// The argument that named it.
    pub arg: String,
    /// Its objects (those the window keeps), in key order.
    pub objects: Vec<Input>,
    /// One line per object, `key\tsize\tetag-or-mtime`: what a checkpoint pins.
    pub listing: String,
    window: Window,
}

impl Archive {
    /// What a checkpoint records of it: the argument, the window, the number of objects and a
    /// hash of the listing. Flat in the archive's size: the listing itself is kept once, beside
    /// the state ([`Archive::keep_listing`]), to say what changed.
    #[must_use]
    pub fn identity(&self, framing: super::Framing) -> String {
        format!(
            "{}:objects={}:listing-md5={}{}:framing={framing}",
            self.arg,
            // Not `objects`, which the replay takes over.
            self.listing.lines().count(),
            crate::hash::md5_hex(self.listing.as_bytes()),
            self.window.describe()
        )
    }

    /// Keeps the listing in `dir` (under its hash), so that a resume that finds the archive
    /// changed can name the first object that differs.
    ///
    /// # Errors
    /// The directory cannot be written.
    pub fn keep_listing(&self, dir: &Path) -> io::Result<()> {
        let dir = dir.join("listings");
        std::fs::create_dir_all(&dir)?;
        let path = dir.join(format!("{}.tsv", crate::hash::md5_hex(self.listing.as_bytes())));
        if !path.exists() {
            let tmp = path.with_extension("tmp");
            std::fs::write(&tmp, &self.listing)?;
            std::fs::rename(&tmp, &path)?;
        }
        Ok(())
    }

    /// Why a checkpoint that recorded `recorded` cannot resume on this archive, or None when
    /// it can (or the record is not of this archive).
    #[must_use]
    pub fn changed_since(
        &self,
        recorded: &str,
        framing: super::Framing,
        dir: &Path,
    ) -> Option<String> {
        let now = self.identity(framing);
        if recorded == now || !recorded.starts_with(&format!("{}:objects=", self.arg)) {
            return None;
        }
        let old_md5 = recorded.split(":listing-md5=").nth(1).map(|r| &r[..r.len().min(32)]);
        let old = old_md5.and_then(|h| {
            std::fs::read_to_string(dir.join("listings").join(format!("{h}.tsv"))).ok()
        });
        let detail = match old {
            Some(old) if old != self.listing => first_difference(&old, &self.listing),
            Some(_) => "its window or framing differ".to_owned(),
            None => "its listing differs (the checkpoint's listing is not kept beside the state)"
                .to_owned(),
        };
        Some(format!(
            "the archive {} changed since the checkpoint was taken ({detail}); recorded {recorded}, now {now}",
            self.arg
        ))
    }
}

fn first_difference(old: &str, new: &str) -> String {
    let key = |l: &str| l.split('\t').next().unwrap_or("").to_owned();
    let (mut a, mut b) = (old.lines().peekable(), new.lines().peekable());
    loop {
        match (a.peek(), b.peek()) {
            (None, None) => return "the same objects".to_owned(),
            (Some(x), None) => return format!("{} is gone", key(x)),
            (Some(x), Some(y)) if x == y => {
                a.next();
                b.next();
            }
            (Some(x), Some(y)) if key(x) == key(y) => {
                return format!("{} was rewritten", key(x));
            }
            (Some(x), Some(y)) if key(x) < key(y) => return format!("{} is gone", key(x)),
            (None | Some(_), Some(y)) => return format!("{} is new", key(y)),
        }
    }
}

/// Lists a directory archive: every file below it (names starting with `.` or `_` left out,
/// see [`hidden`]), by its
/// path relative to the directory, in byte order as S3 lists keys.
///
/// # Errors
/// The directory cannot be read.
pub fn list_dir(arg: &str, window: Window) -> Result<Archive, SourceError> {
    let root = PathBuf::from(arg);
    let mut files = Vec::new();
    walk(&root, &root, &mut files)
        .map_err(|source| SourceError::Open { path: arg.to_owned(), source })?;
    files.sort_by(|a, b| a.0.cmp(&b.0));
    let mut objects = Vec::new();
    let mut listing = String::new();
    for (key, path, size, mtime_ns) in files {
        let modified_ms = i64::try_from(mtime_ns / 1_000_000).ok();
        if !window.keeps(&key, modified_ms) {
            continue;
        }
        let Some(name) = path.to_str() else {
            return Err(SourceError::Open {
                path: path.display().to_string(),
                source: io::Error::other("the path is not UTF-8"),
            });
        };
        objects.push(Input::new(name)?);
        let _ = writeln!(listing, "{key}\t{size}\t{mtime_ns}");
    }
    Ok(Archive { arg: arg.to_owned(), objects, listing, window })
}

type Listed = (String, PathBuf, u64, u128);

fn walk(root: &Path, dir: &Path, out: &mut Vec<Listed>) -> io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        if hidden(&name.to_string_lossy()) {
            continue;
        }
        let path = entry.path();
        let meta = std::fs::metadata(&path)?;
        if meta.is_dir() {
            walk(root, &path, out)?;
        } else if meta.is_file() {
            let rel = path.strip_prefix(root).unwrap_or(&path);
            let key: Vec<String> =
                rel.components().map(|c| c.as_os_str().to_string_lossy().into_owned()).collect();
            let mtime = meta
                .modified()
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_nanos());
            out.push((key.join("/"), path, meta.len(), mtime));
        }
    }
    Ok(())
}
