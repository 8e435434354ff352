//! Writing a capture: per split, gzip data files and their position sidecars, rolled by size,
//! renamed into place (a directory) or put whole (S3) when complete.

use super::RecordError;
use crate::s3::S3Location;
use crate::sink::objects::{Condition, ObjectStore as _, S3Objects, SinkHealth};
use base64::Engine as _;
use flate2::Compression;
use flate2::write::GzEncoder;
use std::borrow::Cow;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// The data line of a payload and, when the line is not the payload, the payload's exact bytes
/// in base64 (for the sidecar's `raw_b64`). A `\n` or `\r` between JSON tokens becomes a space
/// (whitespace as well); one inside a string becomes U+0001, a raw control character as well,
/// which a string may not hold either: either way the line gets its record's verdict (a space
/// there would make an invalid record valid). Nothing else changes.
#[must_use]
pub fn data_line(payload: &[u8]) -> (Cow<'_, [u8]>, Option<String>) {
    if memchr::memchr2(b'\n', b'\r', payload).is_none() {
        return (Cow::Borrowed(payload), None);
    }
    let (mut in_string, mut escaped) = (false, false);
    let line = payload
        .iter()
        .map(|&b| {
            let was_in_string = in_string;
            if !in_string {
                in_string = b == b'"';
            } else if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
            match b {
                b'\n' | b'\r' if was_in_string => 0x01,
                b'\n' | b'\r' => b' ',
                _ => b,
            }
        })
        .collect();
    (Cow::Owned(line), Some(base64::engine::general_purpose::STANDARD.encode(payload)))
}

/// Where the sidecars go, below the recording: a name starting with `_`, which a replay of the
/// recording's directory or prefix leaves out (`source::replay::archive::hidden`).
pub const SIDECARS: &str = "_positions";

/// A data file's name, relative to the recording.
#[must_use]
pub fn data_name(stem: &str) -> String {
    format!("{stem}.jsonl.gz")
}

/// The sidecar's name of the data file of `stem`, relative to the recording.
#[must_use]
pub fn sidecar_name(stem: &str) -> String {
    format!("{SIDECARS}/{stem}.jsonl.gz")
}

/// The stem of a file: `{name}-{split}-{first}` (see [`data_name`] and [`sidecar_name`]).
#[must_use]
pub fn file_stem(name: &str, split: &str, first: &str) -> String {
    format!("{name}-{split}-{first}")
}

/// Where finished files go.
pub(super) enum Target {
    /// A local directory: files are written in it as `.tmp` and renamed.
    Dir(PathBuf),
    /// An S3 prefix: files are written to a staging directory, put, then removed.
    S3 { objects: S3Objects, staging: PathBuf },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> RecordError + '_ {
    move |source| RecordError::Io { path: path.display().to_string(), source }
}

impl Target {
    /// The target of `--output`.
    pub(super) fn open(
        output: &str,
        force_path_style: bool,
        rt: &tokio::runtime::Handle,
    ) -> Result<Target, RecordError> {
        match S3Location::parse(output) {
            None => {
                let dir = PathBuf::from(output);
                std::fs::create_dir_all(&dir).map_err(io(&dir))?;
                Ok(Target::Dir(dir))
            }
            Some(Err(e)) => Err(RecordError::Usage(e)),
            Some(Ok(location)) => {
                let client = rt.block_on(crate::s3::client(force_path_style));
                let objects = S3Objects::new(
                    client,
                    location,
                    rt.clone(),
                    CancellationToken::new(),
                    Arc::new(SinkHealth::default()),
                );
                let nanos = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos());
                let staging = std::env::temp_dir()
                    .join(format!("clickstream-record-{}-{nanos}", std::process::id()));
                std::fs::create_dir_all(&staging).map_err(io(&staging))?;
                Ok(Target::S3 { objects, staging })
            }
        }
    }

    fn dir(&self) -> &Path {
        match self {
            Target::Dir(d) => d,
            Target::S3 { staging, .. } => staging,
        }
    }

    /// Publishes the finished `{name}.tmp` files under their names, in order.
    fn publish(&self, names: &[&str]) -> Result<(), RecordError> {
        for name in names {
            let tmp = self.dir().join(format!("{name}.tmp"));
            match self {
                Target::Dir(d) => std::fs::rename(&tmp, d.join(name)).map_err(io(&tmp))?,
                Target::S3 { objects, .. } => {
                    let body = std::fs::read(&tmp).map_err(io(&tmp))?;
                    objects
                        .put(name, body.into(), &[], Condition::None)
                        .map_err(|e| RecordError::S3(format!("{name}: {e}")))?;
                    std::fs::remove_file(&tmp).map_err(io(&tmp))?;
                }
            }
        }
        Ok(())
    }

    /// Removes the staging directory of an S3 target.
    pub(super) fn close(&self) {
        if let Target::S3 { staging, .. } = self {
            let _ = std::fs::remove_dir_all(staging);
        }
    }
}

/// A file being written.
struct Open {
    stem: String,
    data: GzEncoder<BufWriter<File>>,
    side: GzEncoder<BufWriter<File>>,
    input: u64,
}

/// A sidecar line: the record's position and, when needed, its exact bytes.
#[derive(serde::Serialize)]
struct SideLine<'a, P: serde::Serialize> {
    #[serde(flatten)]
    position: &'a P,
    #[serde(skip_serializing_if = "Option::is_none")]
    raw_b64: Option<String>,
}

/// The files of one split.
pub(super) struct SplitWriter {
    name: String,
    split: String,
    roll: u64,
    open: Option<Open>,
    /// Data files finished.
    pub(super) files: u64,
}

impl SplitWriter {
    /// The writer of `split` of `name`, rolling after `roll` bytes of input.
    pub(super) fn new(name: &str, split: &str, roll: u64) -> SplitWriter {
        SplitWriter {
            name: name.to_owned(),
            split: split.to_owned(),
            roll: roll.max(1),
            open: None,
            files: 0,
        }
    }

    /// Writes a record; `first` names its position in a file name, used if it starts a file.
    pub(super) fn write<P: serde::Serialize>(
        &mut self,
        target: &Target,
        first: &str,
        payload: &[u8],
        position: &P,
    ) -> Result<(), RecordError> {
        if self.open.is_none() {
            let stem = file_stem(&self.name, &self.split, first);
            let sidecars = target.dir().join(SIDECARS);
            std::fs::create_dir_all(&sidecars).map_err(io(&sidecars))?;
            let create = |name: &str| -> Result<GzEncoder<BufWriter<File>>, RecordError> {
                let p = target.dir().join(format!("{name}.tmp"));
                let f = File::create(&p).map_err(io(&p))?;
                Ok(GzEncoder::new(BufWriter::with_capacity(1 << 16, f), Compression::fast()))
            };
            let (data, side) = (create(&data_name(&stem))?, create(&sidecar_name(&stem))?);
            self.open = Some(Open { stem, data, side, input: 0 });
        }
        let Some(o) = self.open.as_mut() else { return Ok(()) };
        let (line, raw_b64) = data_line(payload);
        let mut text = serde_json::to_vec(&SideLine { position, raw_b64 })
            .map_err(|e| RecordError::Usage(format!("position: {e}")))?;
        text.push(b'\n');
        let err = |e| RecordError::Io { path: o.stem.clone(), source: e };
        o.data.write_all(&line).and_then(|()| o.data.write_all(b"\n")).map_err(err)?;
        o.side.write_all(&text).map_err(|e| RecordError::Io { path: o.stem.clone(), source: e })?;
        o.input += payload.len() as u64 + 1;
        if o.input >= self.roll {
            self.finish(target)?;
        }
        Ok(())
    }

    /// Completes the open file, if any, and publishes it.
    pub(super) fn finish(&mut self, target: &Target) -> Result<(), RecordError> {
        let Some(o) = self.open.take() else { return Ok(()) };
        let err = |e| RecordError::Io { path: o.stem.clone(), source: e };
        for enc in [o.side, o.data] {
            let mut w = enc.finish().map_err(err)?;
            w.flush().map_err(err)?;
            w.into_inner().map_err(|e| err(e.into_error()))?.sync_all().map_err(err)?;
        }
        target.publish(&[&sidecar_name(&o.stem), &data_name(&o.stem)])?;
        self.files += 1;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read as _;

    fn gunzip(p: &Path) -> Vec<u8> {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(File::open(p).unwrap()).read_to_end(&mut out).unwrap();
        out
    }

    #[test]
    fn only_newlines_and_returns_leave_the_line() {
        let (l, raw) = data_line(b"{\"a\":1}");
        assert!(matches!(l, Cow::Borrowed(_)));
        assert_eq!(raw, None);
        // Not UTF-8: kept as is; replay reads bytes.
        let bad = b"{\"a\":\"\xff\xfe\"}";
        assert_eq!(data_line(bad), (Cow::Borrowed(&bad[..]), None));
        let (l, raw) = data_line(b"{\"a\":\n1}\r");
        assert_eq!(&*l, b"{\"a\": 1} ");
        let raw = raw.unwrap();
        assert_eq!(
            base64::engine::general_purpose::STANDARD.decode(raw).unwrap(),
            b"{\"a\":\n1}\r"
        );
    }

    #[test]
    fn a_data_line_gets_the_verdict_of_its_record() {
        let schemas = Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas");
        let x = crate::extract::Extractor::load(&schemas).unwrap();
        let verdict = |b: &[u8]| -> String {
            match crate::decode::decode(b) {
                Err(e) => e.reason().to_owned(),
                Ok(text) => match x.extract(text, &mut Vec::new()) {
                    Ok(ev) => format!("ok {}", ev.customer_id),
                    Err(e) => e.reason().to_owned(),
                },
            }
        };
        let web = |id: &str| {
            format!(
                r#"{{"event_id":"e1","customer":{{"id":"{id}"}},"time":"2026-11-30T13:00:00Z","event_type":"pageview"}}"#
            )
        };
        let cases: Vec<Vec<u8>> = vec![
            // Between tokens: valid either way.
            web("c-1").replace(",\"time\"", ",\n\"time\"").into_bytes(),
            [web("c-1").replace(":{", ":\r\n{").as_bytes(), b"\r"].concat(),
            // Inside strings: invalid, and must stay so (a space would make them valid).
            web("c\n1").into_bytes(),
            web("c\r\n1").into_bytes(),
            web("c-1").replace("\"time\"", "\"ti\nme\"").into_bytes(),
            // After an escaped quote the string goes on; after an escaped backslash it ends.
            web("c\\\"\n1").into_bytes(),
            web("c\\\\").replace(",\"time\"", ",\n\"time\"").into_bytes(),
        ];
        for p in &cases {
            let (line, raw) = data_line(p);
            assert!(raw.is_some() && !line.contains(&b'\n') && !line.contains(&b'\r'));
            assert_eq!(verdict(&line), verdict(p), "{}", String::from_utf8_lossy(p));
        }
        assert!(verdict(&cases[0]).starts_with("ok"), "{}", verdict(&cases[0]));
        assert!(!verdict(&cases[2]).starts_with("ok"), "{}", verdict(&cases[2]));
        assert!(verdict(&cases[6]).starts_with("ok"), "{}", verdict(&cases[6]));
    }

    #[derive(serde::Serialize)]
    struct Pos {
        offset: i64,
    }

    #[test]
    fn files_roll_by_input_size_and_sidecars_match_line_for_line() {
        let dir = tempfile::tempdir().unwrap();
        let target = Target::Dir(dir.path().to_path_buf());
        // 10 bytes a record with its newline: a file holds 3 records (30 >= 25).
        let mut w = SplitWriter::new("t", "0", 25);
        for i in 0..7i64 {
            let payload = if i == 4 { b"{\"a\":\n12}".to_vec() } else { b"{\"a\":1234}".to_vec() };
            w.write(&target, &format!("{i:020}"), &payload[..9], &Pos { offset: i }).unwrap();
        }
        w.finish(&target).unwrap();
        assert_eq!(w.files, 3);
        let list = |d: &Path, prefix: &str| -> Vec<String> {
            std::fs::read_dir(d)
                .unwrap()
                .map(|e| format!("{prefix}{}", e.unwrap().file_name().into_string().unwrap()))
                .filter(|n| n != SIDECARS)
                .collect()
        };
        let mut names = list(dir.path(), "");
        names.extend(list(&dir.path().join(SIDECARS), &format!("{SIDECARS}/")));
        names.sort();
        let stem = |i: i64| file_stem("t", "0", &format!("{i:020}"));
        let mut want: Vec<String> =
            [0, 3, 6].iter().flat_map(|&i| [data_name(&stem(i)), sidecar_name(&stem(i))]).collect();
        want.sort();
        assert_eq!(names, want, "no .tmp left, one pair per roll");
        assert_eq!(stem(3), "t-0-00000000000000000003");
        let data = gunzip(&dir.path().join(data_name(&stem(3))));
        assert_eq!(data, b"{\"a\":1234\n{\"a\": 12}\n{\"a\":1234\n");
        let side = String::from_utf8(gunzip(&dir.path().join(sidecar_name(&stem(3))))).unwrap();
        let lines: Vec<&str> = side.lines().collect();
        assert_eq!(lines[0], r#"{"offset":3}"#);
        let raw = base64::engine::general_purpose::STANDARD.encode(b"{\"a\":\n12}");
        assert_eq!(lines[1], format!(r#"{{"offset":4,"raw_b64":"{raw}"}}"#));
        assert_eq!(lines.len(), 3);
    }
}
