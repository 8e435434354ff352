//! One input of a replay, and how a resume recognises it.

use super::SourceError;
use super::archive::Object;
use super::framing::Framing;
use flate2::read::MultiGzDecoder;
use indicatif::ProgressBar;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// How much of each end of a file its content fingerprint covers.
pub const FINGERPRINT_SPAN: u64 = 64 << 10;

/// One input of a replay.
#[derive(Debug, Clone)]
pub struct Input {
    /// As given on the command line; for an archive's object `s3://bucket/key` or its path.
    pub name: Arc<str>,
    origin: Origin,
    /// Named `.gz` (an object's compression is told by its first bytes, not its name).
    gzip: bool,
    size: Option<u64>,
    /// For stdin: the name the operator gave the stream (`--stdin-id`), which a resume must
    /// repeat.
    stdin_id: Option<Arc<str>>,
    framing: Framing,
}

/// Where an input's bytes come from.
#[derive(Debug, Clone)]
enum Origin {
    Stdin,
    File(PathBuf),
    Object(Arc<Object>),
}

/// Which file an open handle reads: a path whose file changes identity was rotated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct FileId {
    dev: u64,
    ino: u64,
}

impl FileId {
    #[cfg(unix)]
    #[allow(clippy::unnecessary_wraps, reason = "None where the platform cannot tell")]
    pub(super) fn of(meta: &std::fs::Metadata) -> Option<FileId> {
        use std::os::unix::fs::MetadataExt as _;
        Some(FileId { dev: meta.dev(), ino: meta.ino() })
    }

    #[cfg(not(unix))]
    pub(super) fn of(_: &std::fs::Metadata) -> Option<FileId> {
        None
    }
}

/// An input opened for reading.
pub(super) struct Opened {
    /// Its bytes, decompressed: from the requested offset when `framing` is lines, from its
    /// start when it is concatenated (offsets then count framed bytes, which only the framer
    /// can skip).
    pub(super) reader: Box<dyn Read + Send>,
    /// The file the handle reads (None for stdin, an object, or where the platform cannot
    /// tell).
    pub(super) file: Option<FileId>,
    /// How its bytes are cut into records: never `Auto`.
    pub(super) framing: Framing,
}

/// What a checkpoint's record of the inputs says about the inputs given now.
#[derive(Debug, PartialEq, Eq)]
pub enum Recognised {
    /// The same inputs.
    Same,
    /// The same names and sizes, recorded before content fingerprints existed: these inputs'
    /// content cannot be checked.
    Unfingerprinted(Vec<Arc<str>>),
    /// Other inputs (another list, other names or sizes).
    Other,
}

impl Input {
    /// Checks that an input exists and is a readable file (`-` is stdin).
    ///
    /// # Errors
    /// The file is missing, unreadable or a directory.
    pub fn new(arg: &str) -> Result<Input, SourceError> {
        if arg == "-" {
            return Ok(Input {
                name: Arc::from("-"),
                origin: Origin::Stdin,
                gzip: false,
                size: None,
                stdin_id: None,
                framing: Framing::Lines,
            });
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
            origin: Origin::File(path),
            stdin_id: None,
            framing: Framing::Lines,
        })
    }

    /// Stands for an archive (`arg`) where a checkpoint's record of the inputs is checked:
    /// neither stdin nor a file, so no record of an older format can match it.
    pub(super) fn stand_in(arg: &str) -> Input {
        Input {
            name: Arc::from(arg),
            origin: Origin::File(PathBuf::new()),
            gzip: false,
            size: None,
            stdin_id: None,
            framing: Framing::Auto,
        }
    }

    /// An object of an archive in S3, as listed.
    pub(super) fn object(object: Object) -> Input {
        Input {
            name: Arc::from(format!("s3://{}/{}", object.bucket(), object.key).as_str()),
            gzip: false,
            size: Some(object.size),
            origin: Origin::Object(Arc::new(object)),
            stdin_id: None,
            framing: Framing::Lines,
        }
    }

    /// How its bytes are cut into records (`--framing`); `Auto` decides when it is opened,
    /// from its first bytes.
    #[must_use]
    pub fn with_framing(mut self, framing: Framing) -> Self {
        self.framing = framing;
        self
    }

    /// The framing asked for (`Auto` until opened).
    #[must_use]
    pub fn framing(&self) -> Framing {
        self.framing
    }

    /// Names the stream on stdin (`--stdin-id`); no effect on a file.
    #[must_use]
    pub fn with_stdin_id(mut self, id: Option<&str>) -> Self {
        if self.is_stdin() {
            self.stdin_id = id.map(Arc::from);
        }
        self
    }

    /// Whether it is stdin.
    #[must_use]
    pub fn is_stdin(&self) -> bool {
        matches!(self.origin, Origin::Stdin)
    }

    /// Whether it is an object in S3 (its identity is its archive's listing).
    #[must_use]
    pub fn is_object(&self) -> bool {
        matches!(self.origin, Origin::Object(_))
    }

    /// The identity a checkpoint records, to refuse resuming on other data: for a file its name,
    /// size and a hash of its first and last [`FINGERPRINT_SPAN`] bytes on disk (compressed
    /// bytes for `.gz`); for a followed file (`follow`) only its name, as it grows; for stdin
    /// `-`, with the `--stdin-id` if one was given.
    ///
    /// # Errors
    /// The file cannot be read.
    pub fn identity(&self, follow: bool) -> Result<String, SourceError> {
        let framing = match self.framing {
            // What checkpoints recorded before framings existed.
            Framing::Lines => String::new(),
            f => format!(":framing={f}"),
        };
        match (&self.origin, self.size) {
            (Origin::Stdin, _) => Ok(match &self.stdin_id {
                Some(id) => format!("-:stdin-id={id}{framing}"),
                None => "-".to_owned(),
            }),
            (Origin::Object(o), _) => {
                Ok(format!("{}:etag={}{framing}", self.legacy_identity(), o.etag))
            }
            (Origin::File(_), _) if follow => Ok(format!("{}{framing}", self.name)),
            (Origin::File(p), Some(size)) => {
                let hash = content_hash(p, size)
                    .map_err(|source| SourceError::Read { path: self.name.to_string(), source })?;
                Ok(format!("{}:md5={hash}{framing}", self.legacy_identity()))
            }
            (Origin::File(_), None) => Ok(self.legacy_identity()),
        }
    }

    /// Name and size: what checkpoints recorded before content fingerprints.
    fn legacy_identity(&self) -> String {
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
        Ok(self.open(0, progress)?.reader)
    }

    /// The file now at the input's path, if it is a file that can be told apart.
    pub(super) fn path_now(&self) -> Option<(Option<FileId>, u64)> {
        let Origin::File(path) = &self.origin else { return None };
        let meta = std::fs::metadata(path).ok()?;
        Some((FileId::of(&meta), meta.len()))
    }

    pub(super) fn open(&self, offset: u64, progress: &ProgressBar) -> Result<Opened, SourceError> {
        let name = self.name.to_string();
        let open_err = |source| SourceError::Open { path: name.clone(), source };
        let read_err = |source| SourceError::Read { path: name.clone(), source };
        let mut file = None;
        // Compression is told by the first bytes, not the name: archives hold gzip objects
        // named `.json` and plain ones named `.gz`.
        let (gzip, raw): (bool, Box<dyn Read + Send>) = match &self.origin {
            Origin::Stdin => sniff(Box::new(io::stdin())).map_err(read_err)?,
            Origin::File(p) => {
                let mut f = File::open(p).map_err(open_err)?;
                file = f.metadata().ok().as_ref().and_then(FileId::of);
                let gzip = is_gzip_file(&mut f).map_err(open_err)?;
                if !gzip && self.framing == Framing::Lines && offset > 0 {
                    if self.size.is_some_and(|s| s < offset) {
                        return Err(SourceError::Shorter { path: name, offset });
                    }
                    f.seek(SeekFrom::Start(offset)).map_err(open_err)?;
                    progress.inc(offset);
                    return Ok(Opened {
                        reader: Box::new(Counted {
                            inner: Box::new(f),
                            progress: progress.clone(),
                        }),
                        file,
                        framing: Framing::Lines,
                    });
                }
                (gzip, Box::new(f))
            }
            Origin::Object(o) => sniff(Box::new(o.reader())).map_err(read_err)?,
        };
        let counted = Counted { inner: raw, progress: progress.clone() };
        let r: Box<dyn Read + Send> = if gzip {
            Box::new(MultiGzDecoder::new(io::BufReader::with_capacity(1 << 20, counted)))
        } else {
            Box::new(counted)
        };
        let (framing, mut r) = match self.framing {
            Framing::Auto => {
                super::framing::detect_stream(r, super::MAX_BUFFERED_LINE).map_err(read_err)?
            }
            f => (f, r),
        };
        if framing == Framing::Lines && offset > 0 {
            // No seeking in a compressed stream, a pipe or an object read once: read past what
            // was consumed. For stdin this assumes the stream is fed again from its start
            // (`--stdin-id`).
            let skipped =
                io::copy(&mut (&mut r).take(offset), &mut io::sink()).map_err(read_err)?;
            if skipped < offset {
                return Err(SourceError::Shorter { path: name, offset });
            }
        }
        Ok(Opened { reader: r, file, framing })
    }
}

/// Whether a file starts with gzip's magic bytes; leaves it at its start.
fn is_gzip_file(f: &mut File) -> io::Result<bool> {
    let mut magic = [0u8; 2];
    let n = read_full(f, &mut magic)?;
    f.seek(SeekFrom::Start(0))?;
    Ok(n == 2 && magic == GZIP_MAGIC)
}

const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

/// Whether a stream starts with gzip's magic bytes, and the whole stream again.
fn sniff(mut r: Box<dyn Read + Send>) -> io::Result<(bool, Box<dyn Read + Send>)> {
    let mut magic = [0u8; 2];
    let n = read_full(&mut r, &mut magic)?;
    Ok((n == 2 && magic == GZIP_MAGIC, Box::new(io::Cursor::new(magic[..n].to_vec()).chain(r))))
}

/// Reads until `buf` is full or the stream ends; the number of bytes read.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// MD5 (an identity, not a defence against forgery) of a file's first and last
/// [`FINGERPRINT_SPAN`] bytes, as far as `size` (the whole file when it is at most twice that).
fn content_hash(path: &Path, size: u64) -> io::Result<String> {
    use md5::{Digest as _, Md5};
    let mut f = File::open(path)?;
    let mut h = Md5::new();
    let mut buf = Vec::with_capacity(FINGERPRINT_SPAN as usize);
    (&mut f).take(FINGERPRINT_SPAN.min(size)).read_to_end(&mut buf)?;
    h.update(&buf);
    let tail_from = FINGERPRINT_SPAN.max(size.saturating_sub(FINGERPRINT_SPAN));
    if tail_from < size {
        buf.clear();
        f.seek(SeekFrom::Start(tail_from))?;
        f.take(size - tail_from).read_to_end(&mut buf)?;
        h.update(&buf);
    }
    Ok(crate::hash::hex(&h.finalize()))
}

/// Checks a checkpoint's record of the inputs (`recorded`) against `inputs` and their
/// identities now (`current`, from [`Input::identity`]).
///
/// # Errors
/// The replay reads stdin without `--stdin-id` (stdin cannot be recognised, so a resume would
/// take new bytes as old ones), stdin under another id, or a file with the recorded name and
/// size but other content.
pub fn recognise(
    recorded: &[String],
    inputs: &[Input],
    current: &[String],
) -> Result<Recognised, SourceError> {
    if inputs.iter().any(|i| i.is_stdin() && i.stdin_id.is_none()) {
        return Err(SourceError::StdinResume);
    }
    if recorded.len() != inputs.len() || current.len() != inputs.len() {
        return Ok(Recognised::Other);
    }
    let mut unfingerprinted = Vec::new();
    for ((r, input), c) in recorded.iter().zip(inputs).zip(current) {
        if r == c {
            continue;
        }
        if input.is_stdin() {
            if r == "-" || r.starts_with("-:stdin-id=") {
                return Err(SourceError::StdinId {
                    recorded: r.strip_prefix("-:stdin-id=").unwrap_or("").to_owned(),
                    given: input.stdin_id.as_deref().unwrap_or("").to_owned(),
                });
            }
            return Ok(Recognised::Other);
        }
        let legacy = input.legacy_identity();
        if *r == legacy {
            unfingerprinted.push(Arc::clone(&input.name));
        } else if r.strip_prefix(legacy.as_str()).is_some_and(|rest| rest.starts_with(":md5=")) {
            return Err(SourceError::Changed { path: input.name.to_string() });
        } else {
            return Ok(Recognised::Other);
        }
    }
    Ok(if unfingerprinted.is_empty() {
        Recognised::Same
    } else {
        Recognised::Unfingerprinted(unfingerprinted)
    })
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

#[cfg(test)]
mod tests {
    use super::*;

    fn file(dir: &Path, name: &str, bytes: &[u8]) -> Input {
        let p = dir.join(name);
        std::fs::write(&p, bytes).unwrap();
        Input::new(p.to_str().unwrap()).unwrap()
    }

    fn ids(inputs: &[Input]) -> Vec<String> {
        inputs.iter().map(|i| i.identity(false).unwrap()).collect()
    }

    #[test]
    fn a_file_of_the_same_name_and_size_but_other_content_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let before = [file(dir.path(), "a.jsonl", b"{\"a\":1}\n")];
        let recorded = ids(&before);
        let after = [file(dir.path(), "a.jsonl", b"{\"a\":2}\n")];
        assert_eq!(after[0].size(), before[0].size());
        let e = recognise(&recorded, &after, &ids(&after)).unwrap_err();
        assert!(e.to_string().contains("a.jsonl"), "{e}");
        assert!(matches!(e, SourceError::Changed { .. }));
        let again = [file(dir.path(), "a.jsonl", b"{\"a\":1}\n")];
        assert_eq!(recognise(&recorded, &again, &ids(&again)).unwrap(), Recognised::Same);
    }

    #[test]
    fn only_the_first_and_last_span_are_fingerprinted() {
        let dir = tempfile::tempdir().unwrap();
        let span = FINGERPRINT_SPAN as usize;
        let mut bytes = vec![b'x'; 3 * span];
        let a = file(dir.path(), "a", &bytes).identity(false).unwrap();
        bytes[span + 10] = b'y'; // the middle: not covered
        assert_eq!(file(dir.path(), "a", &bytes).identity(false).unwrap(), a);
        bytes[3 * span - 1] = b'y'; // the last byte
        let b = file(dir.path(), "a", &bytes).identity(false).unwrap();
        assert_ne!(b, a);
        bytes[0] = b'y';
        assert_ne!(file(dir.path(), "a", &bytes).identity(false).unwrap(), b);
        // Between one and two spans long: every byte counts.
        let mut short = vec![b'x'; span + 100];
        let c = file(dir.path(), "b", &short).identity(false).unwrap();
        short[span + 50] = b'y';
        assert_ne!(file(dir.path(), "b", &short).identity(false).unwrap(), c);
    }

    #[test]
    fn a_checkpoint_without_fingerprints_is_still_recognised() {
        let dir = tempfile::tempdir().unwrap();
        let inputs = [file(dir.path(), "a.jsonl", b"{}\n"), file(dir.path(), "b.jsonl", b"{}\n")];
        let mut recorded = ids(&inputs);
        recorded[1] = format!("{}:3", inputs[1].name);
        assert_eq!(
            recognise(&recorded, &inputs, &ids(&inputs)).unwrap(),
            Recognised::Unfingerprinted(vec![Arc::clone(&inputs[1].name)])
        );
        recorded[0] = format!("{}:4", inputs[0].name);
        assert_eq!(recognise(&recorded, &inputs, &ids(&inputs)).unwrap(), Recognised::Other);
    }

    #[test]
    fn stdin_resumes_only_under_the_same_id() {
        let stdin = |id: Option<&str>| [Input::new("-").unwrap().with_stdin_id(id)];
        let unnamed = stdin(None);
        assert!(matches!(
            recognise(&ids(&unnamed), &unnamed, &ids(&unnamed)),
            Err(SourceError::StdinResume)
        ));
        let named = stdin(Some("feed-1"));
        assert_eq!(recognise(&ids(&named), &named, &ids(&named)).unwrap(), Recognised::Same);
        let other = stdin(Some("feed-2"));
        let e = recognise(&ids(&named), &other, &ids(&other)).unwrap_err();
        assert!(e.to_string().contains("feed-1") && e.to_string().contains("feed-2"), "{e}");
        // A checkpoint of stdin read without an id cannot be taken up under one.
        assert!(matches!(
            recognise(&ids(&unnamed), &named, &ids(&named)),
            Err(SourceError::StdinId { .. })
        ));
    }
}
