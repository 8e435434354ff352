//! From a replay's arguments to its inputs: files and stdin as given, archives listed into
//! their objects; and what a checkpoint records of them (one identity per argument, so an
//! archive of a year of objects costs a checkpoint one line).

use super::SourceError;
use super::archive::{self, Archive, Window};
use super::framing::Framing;
use super::input::{Input, Recognised, recognise};
use std::path::Path;

/// How the arguments are read.
#[derive(Debug, Clone, Copy, Default)]
pub struct Options<'a> {
    /// `--framing`; None: lines for files and for `.jsonl`/`.ndjson` objects, auto for other
    /// objects of an archive.
    pub framing: Option<Framing>,
    /// `--from`/`--to`, for archives.
    pub window: Window,
    /// `--stdin-id`.
    pub stdin_id: Option<&'a str>,
    /// `--follow`: the last input's size and content are no identity.
    pub follow: bool,
    /// `s3.force_path_style`, for archives in S3.
    pub force_path_style: bool,
}

/// The inputs of a replay.
#[derive(Debug)]
pub struct Resolved {
    /// Every input in order, archives' objects in their place.
    pub inputs: Vec<Input>,
    /// What a checkpoint records, one per argument.
    pub identities: Vec<String>,
    /// One per argument, for checking a checkpoint's record: the input itself, or for an
    /// archive a stand-in that no old record matches.
    stand_ins: Vec<Input>,
    archives: Vec<Archive>,
    framing: Framing,
}

/// Lists archives and opens files.
///
/// # Errors
/// An input is missing or unreadable, an archive cannot be listed, or `--from`/`--to` are
/// given without an archive.
pub fn resolve(args: &[String], o: &Options<'_>) -> Result<Resolved, SourceError> {
    let archive_framing = o.framing.unwrap_or(Framing::Auto);
    let mut r = Resolved {
        inputs: Vec::new(),
        identities: Vec::new(),
        stand_ins: Vec::new(),
        archives: Vec::new(),
        framing: archive_framing,
    };
    let mut s3: Option<aws_sdk_s3::Client> = None;
    for arg in args {
        if !archive::is_archive(arg) {
            let input = Input::new(arg)?
                .with_stdin_id(o.stdin_id)
                .with_framing(o.framing.unwrap_or(Framing::Lines));
            // As checkpoints have always recorded it: with --follow, no input's size and
            // content count.
            r.identities.push(input.identity(o.follow)?);
            r.stand_ins.push(input.clone());
            r.inputs.push(input);
            continue;
        }
        let mut a = if arg.starts_with("s3://") {
            let rt = tokio::runtime::Handle::current();
            let client = s3
                .get_or_insert_with(|| rt.block_on(crate::s3::client(o.force_path_style)))
                .clone();
            archive::list_s3(arg, o.window, &client, &rt)?
        } else {
            archive::list_dir(arg, o.window)?
        };
        tracing::info!(archive = %arg, objects = a.objects.len(), "Archive listed.");
        r.identities.push(a.identity(archive_framing));
        r.stand_ins.push(Input::stand_in(arg));
        r.inputs.extend(std::mem::take(&mut a.objects).into_iter().map(|x| {
            let f = o.framing.unwrap_or_else(|| default_framing(&x.name));
            x.with_framing(f)
        }));
        r.archives.push(a);
    }
    if r.archives.is_empty() && o.window != Window::default() {
        return Err(SourceError::Archive(
            "--from and --to choose the objects of an archive (a directory or s3://…), and no input is one".to_owned(),
        ));
    }
    Ok(r)
}

/// An archive's object named like JSON Lines is read as lines; any other is framed by what
/// its first bytes show.
fn default_framing(name: &str) -> Framing {
    let path = Path::new(name);
    let path = match path.extension() {
        Some(x) if x.eq_ignore_ascii_case("gz") => path.with_extension(""),
        _ => path.to_path_buf(),
    };
    let lines =
        |x: &std::ffi::OsStr| x.eq_ignore_ascii_case("jsonl") || x.eq_ignore_ascii_case("ndjson");
    if path.extension().is_some_and(lines) { Framing::Lines } else { Framing::Auto }
}

impl Resolved {
    /// Keeps the archives' listings beside the state, to name what changed if a resume finds
    /// an archive changed.
    ///
    /// # Errors
    /// The state directory cannot be written.
    pub fn keep_listings(&self, state: &Path) -> Result<(), SourceError> {
        for a in &self.archives {
            a.keep_listing(state).map_err(|source| SourceError::Open {
                path: state.join("listings").display().to_string(),
                source,
            })?;
        }
        Ok(())
    }

    /// What a checkpoint's record of the inputs (`recorded`) says of these.
    ///
    /// # Errors
    /// An archive changed since the checkpoint (named: the first object that differs), or
    /// [`recognise`]'s refusals.
    pub fn recognise(&self, recorded: &[String], state: &Path) -> Result<Recognised, SourceError> {
        for (r, a) in recorded.iter().zip(self.stand_ins.iter()) {
            if let Some(archive) = self.archives.iter().find(|x| *x.arg == *a.name)
                && let Some(why) = archive.changed_since(r, self.framing, state)
            {
                return Err(SourceError::Archive(why));
            }
        }
        recognise(recorded, &self.stand_ins, &self.identities)
    }
}
