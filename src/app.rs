//! Wiring: builds the stages from settings, runs them, and reports.

use crate::admin::{self, Admin};
use crate::checkpoint::{Committer, Coordinator, Job};
use crate::event::SourcePosition;
use crate::extract::Extractor;
use crate::extract::sample::{SampleReport, SampleTest};
use crate::processor::{MetaBase, Processor, Rules};
use crate::registry::watch::{self, Switchboard};
use crate::registry::{Registry, VersionRecord};
use crate::s3::S3Location;
use crate::sink::Sink;
use crate::sink::file::FileSink;
use crate::sink::s3::S3Sink;
use crate::source::Message;
use crate::source::replay::archive::Window;
use crate::source::replay::{self, BarrierPolicy, Framing, Input, Recognised, ReplaySource};
use crate::state::rocksdb::MemoryBudget;
use crate::state::rocksdb::RocksDbStore;
use crate::state::{Counters, Meta, StateStore};
use crate::telemetry::LogWriter;
use anyhow::{Context, Result, bail};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::mpsc::RecvTimeoutError;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

/// Everything `clickstream replay` needs, resolved from config and flags.
#[derive(Debug, Clone)]
pub struct ReplaySettings {
    /// Inputs in order (`-` for stdin).
    pub inputs: Vec<String>,
    /// Schemas (plain files or a registry), S3 client and admin API.
    pub services: ServiceSettings,
    /// State directory.
    pub state: PathBuf,
    /// Output directory, or `s3://bucket/prefix`.
    pub output: PathBuf,
    /// Sessionization rules.
    pub rules: Rules,
    /// Barrier policy.
    pub barriers: BarrierPolicy,
    /// Keep reading the last input as it grows.
    pub follow: bool,
    /// Names the stream on stdin, so a replay of it can be resumed (`--stdin-id`).
    pub stdin_id: Option<String>,
    /// How inputs are cut into records (`--framing`; None: by input, see [`replay::Options`]).
    pub framing: Option<Framing>,
    /// Which objects of an archive are read (`--from`, `--to`).
    pub window: Window,
    /// Session rows as Parquet (S3 output only).
    pub parquet: bool,
    /// Bytes state may hold in memory (`state.memory_budget`).
    pub memory_budget: u64,
    /// Threads that decode and extract lines (0: one per core this process may use).
    pub workers: usize,
}

/// How a replay ended.
#[derive(Debug)]
pub enum Outcome {
    /// Every input was processed; the totals.
    Completed(Counters),
    /// The state says this replay had already completed; the totals it recorded.
    AlreadyComplete(Counters),
    /// Stopped by a signal after committing a checkpoint.
    Interrupted(u64),
}

/// The summary line printed at the end.
#[must_use]
pub fn summary_json(c: &Counters) -> String {
    let mut s = serde_json::json!({
        "lines": c.lines,
        "accepted": c.accepted,
        "duplicates": c.duplicates,
        "dead_lettered": c.dead_lettered,
        "sessions": c.sessions,
    });
    // Only sets with attributes can cut values; the classic summary keeps its shape.
    if c.truncated_values > 0 {
        s["truncated_values"] = c.truncated_values.into();
    }
    s.to_string()
}

fn settings_fingerprint(rules: &Rules, extractor: Option<&Extractor>) -> String {
    let mut s = format!(
        "gap_ms={} lateness_ms={} dedup_horizon_ms={}",
        rules.gap_ms, rules.lateness_ms, rules.dedup_horizon_ms
    );
    // Plain schema files must stay the same across a resume; a registry's sets may change
    // (that is its point), and every row and dead letter records the set that made it.
    if let Some(x) = extractor {
        s.push_str(" schemas=");
        s.push_str(&x.versions());
    }
    s
}

fn progress_bar(inputs: &[Input]) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let total: Option<u64> = inputs.iter().map(Input::size).sum();
    let pb = ProgressBar::with_draw_target(total, ProgressDrawTarget::stderr());
    let style = ProgressStyle::with_template(
        "{spinner} [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar());
    pb.set_style(style);
    pb
}

enum Resume {
    Fresh,
    From(SourcePosition, u64),
    Done(Counters),
}

/// Where a replay starts, given what its state holds; refuses state of another replay, and
/// stdin that cannot be recognised.
fn resume_point(
    meta: Option<&Meta>,
    base: &MetaBase,
    inputs: &replay::Resolved,
    state: &std::path::Path,
) -> Result<Resume> {
    let Some(m) = meta else { return Ok(Resume::Fresh) };
    let recognised = inputs
        .recognise(&m.inputs, state)
        .with_context(|| format!("state {} holds a checkpoint", state.display()))?;
    if let Recognised::Unfingerprinted(names) = &recognised {
        warn!(inputs = %names.join(", "), state = %state.display(), "The checkpoint predates content fingerprints: these inputs are recognised by name and size only.");
    }
    if recognised == Recognised::Other {
        bail!(
            "state {} belongs to a replay of [{}], not of [{}]: give another --state (or remove it) to start over",
            state.display(),
            m.inputs.join(", "),
            base.inputs.join(", ")
        );
    }
    if m.settings != base.settings {
        bail!(
            "state {} was written with other settings ({}), not ({}): resuming would mix two results; give another --state (or remove it) to start over",
            state.display(),
            m.settings,
            base.settings
        );
    }
    if m.finished {
        info!(checkpoint = m.checkpoint, state = %state.display(), "Replay already complete; nothing to do.");
        return Ok(Resume::Done(m.counters.clone()));
    }
    info!(
        checkpoint = m.checkpoint,
        input = m.position.input,
        line = m.position.line,
        "Resuming from checkpoint."
    );
    Ok(Resume::From(m.position, m.checkpoint))
}

/// Runs a replay to its end, or until `cancel` fires.
///
/// # Errors
/// Bad inputs, schemas, output or state directories, or an I/O failure mid-run (the last
/// committed checkpoint stays in force).
pub fn replay(s: &ReplaySettings, cancel: &CancellationToken, logs: &LogWriter) -> Result<Outcome> {
    if s.inputs.is_empty() {
        bail!("no input given: name one or more .jsonl or .jsonl.gz files, or - for stdin");
    }
    if s.inputs.iter().filter(|i| *i == "-").count() > 1 {
        bail!("stdin (-) can be read only once");
    }
    if s.stdin_id.is_some() && !s.inputs.iter().any(|i| i == "-") {
        bail!("--stdin-id names the stream on stdin, but no input is - (stdin)");
    }
    let inputs = replay::resolve(
        &s.inputs,
        &replay::Options {
            framing: s.framing,
            window: s.window,
            stdin_id: s.stdin_id.as_deref(),
            follow: s.follow,
            force_path_style: s.services.force_path_style,
        },
    )?;
    if s.follow && s.framing.is_some_and(|f| f != Framing::Lines) {
        bail!("--follow reads a growing file line by line: --framing must be lines");
    }
    if s.follow && inputs.inputs.last().is_some_and(|i| i.is_gzip() || i.is_object()) {
        bail!(
            "--follow reads a growing file: the last input cannot be gzip-compressed or an archive"
        );
    }
    // Stops the registry watcher and the admin API when the replay ends, however it ends.
    let services = CancellationToken::new();
    let _stop_services = services.clone().drop_guard();
    let (extractor, board, with_registry) = start_schemas(&s.services, None, &services)?;
    let schemas = Schemas { extractor, board, with_registry };
    if let Some(location) = s.output.to_str().and_then(S3Location::parse) {
        let location = location.map_err(anyhow::Error::msg)?;
        let rt = tokio::runtime::Handle::current();
        let client = rt.block_on(crate::s3::client(s.services.force_path_style));
        // Retries end with the process: a replay stopped by a signal has checkpointed.
        let sink = S3Sink::new(client, location, "replay", rt, CancellationToken::new())
            .parquet(s.parquet);
        return replay_into(s, inputs, schemas, sink, cancel, logs);
    }
    let sink = FileSink::open(&s.output)
        .with_context(|| format!("output directory {}", s.output.display()))?;
    replay_into(s, inputs, schemas, sink, cancel, logs)
}

/// The schema set in force and how new ones arrive.
struct Schemas {
    extractor: Arc<Extractor>,
    board: Arc<Switchboard>,
    with_registry: bool,
}

fn replay_into<K: Sink + Send + 'static>(
    s: &ReplaySettings,
    resolved: replay::Resolved,
    schemas: Schemas,
    sink: K,
    cancel: &CancellationToken,
    logs: &LogWriter,
) -> Result<Outcome> {
    let Schemas { extractor, board, with_registry } = schemas;
    std::fs::create_dir_all(&s.state)
        .with_context(|| format!("state directory {}", s.state.display()))?;
    let budget = MemoryBudget::new(s.memory_budget);
    let opened = Instant::now();
    let store = RocksDbStore::open_with(&s.state, &budget)?;
    let meta = store.meta()?;
    info!(state = %s.state.display(), ms = opened.elapsed().as_millis() as u64, open_sessions = meta.as_ref().map_or(0, |m| m.open.0), "State opened (read on demand, not loaded).");

    resolved.keep_listings(&s.state)?;
    let base = MetaBase {
        inputs: resolved.identities.clone(),
        settings: settings_fingerprint(&s.rules, (!with_registry).then_some(&*extractor)),
    };
    let (start, last) = match resume_point(meta.as_ref(), &base, &resolved, &s.state)? {
        Resume::Fresh => (SourcePosition::default(), 0),
        Resume::From(pos, last) => (pos, last),
        Resume::Done(counters) => {
            if !sink.is_marked_complete()? {
                // Stopped between the last commit and the marker, or the output was removed.
                let dead: u64 = counters.dead_lettered.values().sum();
                if sink.count_records()? != (counters.sessions, dead) {
                    bail!(
                        "state {} says this replay completed, but its output in {} is incomplete or gone: remove the state too to run it again",
                        s.state.display(),
                        s.output.display()
                    );
                }
                sink.write_success(&summary_json(&counters))?;
            }
            return Ok(Outcome::AlreadyComplete(counters));
        }
    };
    let removed = sink.recover(last)?;
    if removed > 0 {
        warn!(
            removed,
            checkpoint = last,
            "Removed output written after the last committed checkpoint."
        );
    }

    let inputs = resolved.inputs;
    let names = inputs.iter().map(|i| Arc::clone(&i.name)).collect();
    let mut processor = Processor::new(Arc::clone(&extractor), s.rules, names);
    processor.restore(meta.as_ref(), store.backing(), budget.sessions(1));
    let workers = match s.workers {
        0 => crate::parallel::default_workers(),
        n => n,
    };
    processor.set_workers(workers);
    // A checkpoint holds at most a checkpoint's lines of work, the final close included: it
    // closes that many sessions a step. Not the memory budget: the output must not depend on it.
    let step = match s.barriers.every_lines {
        0 => 100_000,
        n => usize::try_from(n).unwrap_or(usize::MAX),
    };
    processor.set_end_step(step);
    let coord = Coordinator::new(store, sink, last);

    let progress = progress_bar(&inputs);
    logs.attach(&progress);
    let (tx, rx) = std::sync::mpsc::sync_channel::<Message>(4);
    let (pool_tx, pool_rx) = std::sync::mpsc::channel::<Vec<u8>>();
    let source = ReplaySource::new(inputs, start, s.barriers).follow(s.follow);
    let reader_cancel = cancel.clone();
    let reader_progress = progress.clone();
    let reader = std::thread::Builder::new()
        .name("replay-source".into())
        .spawn(move || source.run(&tx, &pool_rx, &reader_cancel, &reader_progress))
        .context("starting the reader thread")?;

    let started = Instant::now();
    let mut committer = Committer::spawn(coord).context("starting the checkpoint thread")?;
    let ended = drive(&mut processor, &rx, &pool_tx, &mut committer, cancel, &base, start, &board)?;
    drop(rx);
    let coord = committer.finish()?;
    progress.finish_and_clear();
    logs.detach();
    if ended == Ended::Interrupted {
        // The reader may still be blocked on its pipe; exiting ends it.
        return Ok(Outcome::Interrupted(coord.last()));
    }
    match reader.join() {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            return Err(e).context(format!(
                "replay stopped at checkpoint {}; fix the input and re-run to resume",
                coord.last()
            ));
        }
        Err(_) => bail!("the reader thread panicked"),
    }
    if ended != Ended::Finished {
        if cancel.is_cancelled() {
            return Ok(Outcome::Interrupted(coord.last()));
        }
        bail!("the input ended without an end marker");
    }
    let counters = processor.counters().clone();
    coord.sink().write_success(&summary_json(&counters))?;
    // The store closes when the coordinator and the processor let it go: the coordinator first.
    drop(coord);
    processor.release();
    let secs = started.elapsed().as_secs_f64().max(f64::EPSILON);
    info!(lines = counters.lines, secs = %format!("{secs:.2}"), lines_per_sec = (counters.lines as f64 / secs) as u64, workers, "Replay complete.");
    Ok(Outcome::Completed(counters))
}

/// Schemas, registry and admin API settings, shared by `replay` and `run`.
#[derive(Debug, Clone)]
pub struct ServiceSettings {
    /// Schema directory or file (when there is no registry).
    pub schemas: PathBuf,
    /// Schema registry location.
    pub registry: Option<String>,
    /// How often the registry is checked.
    pub poll_interval: Duration,
    /// S3 path-style addressing.
    pub force_path_style: bool,
    /// Admin API address.
    pub admin_listen: Option<std::net::SocketAddr>,
    /// Admin API token.
    pub admin_token: Option<String>,
    /// Admin API body, sample and concurrency limits.
    pub admin_limits: admin::Limits,
    /// Sessionization rules (for explanations of sample lines).
    pub rules: Rules,
}

/// Loads the schema set (from the registry, or plain files), and starts the registry watcher
/// and the admin API, which stop with `services`. Returns the set, the switchboard through which
/// new sets arrive, and whether a registry is in use.
///
/// # Errors
/// Schemas or registry unreadable or invalid; admin address refused.
pub fn start_schemas(
    s: &ServiceSettings,
    ready: Option<Arc<crate::runtime::health::Health>>,
    services: &CancellationToken,
) -> Result<(Arc<Extractor>, Arc<Switchboard>, bool)> {
    let rt = tokio::runtime::Handle::current();
    let (extractor, registry) = match &s.registry {
        Some(location) => {
            let reg = rt.block_on(Registry::open(location, s.force_path_style))?;
            let seen = rt.block_on(reg.fingerprint())?;
            let loaded = rt.block_on(reg.load_set_or_last_good())?;
            (loaded.extractor, Some((reg, seen, loaded.refused)))
        }
        None => (Extractor::load(&s.schemas)?, None),
    };
    let extractor = Arc::new(extractor);
    info!(schemas = %extractor.versions(), "Loaded schemas.");
    let board = Arc::new(Switchboard::new(&extractor));
    if let Some(why) = registry.as_ref().and_then(|r| r.2.clone()) {
        // Crash-looping on it would stop every instance; the set that ran before keeps going
        // until a registration mends the registry (the watcher then loads it).
        error!(error = %why, schemas = %extractor.versions(), "The registry's latest schema set does not compile; running the last good set.");
        metrics::counter!("clickstream_schema_reloads_total", "result" => "refused").increment(1);
        board.refuse(why);
    }
    if let Some(h) = &ready {
        h.watch_schemas(Arc::clone(&board));
    }
    let registry = registry.map(|(reg, seen, _)| (reg, seen));
    if let Some((reg, seen)) = &registry {
        rt.spawn(watch::watch(
            reg.clone(),
            Arc::clone(&board),
            s.poll_interval,
            seen.clone(),
            services.clone(),
        ));
    }
    if let Some(addr) = s.admin_listen {
        let admin = Admin {
            registry: registry.as_ref().map(|(r, _)| r.clone()),
            board: Some(Arc::clone(&board)),
            token: s.admin_token.as_deref().map(Arc::from),
            metrics: crate::telemetry::metrics(),
            ready,
            rules: s.rules,
            schemas: Some(s.schemas.clone()),
            limits: s.admin_limits,
        };
        rt.block_on(admin::serve(admin, addr, services.clone()))?;
    }
    Ok((extractor, board, registry.is_some()))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ended {
    /// The end of the input was processed and committed.
    Finished,
    /// Cancelled while the source was silent; a checkpoint was committed.
    Interrupted,
    /// The source stopped sending (after its cancel barrier, or after an error).
    SourceStopped,
}

/// Feeds the source's messages through the processor, handing checkpoints to the committer.
/// A new schema set from `board` takes over between two messages, never inside a batch.
#[allow(clippy::too_many_arguments)]
fn drive<S: StateStore + Send + 'static, K: Sink + Send + 'static>(
    processor: &mut Processor,
    rx: &std::sync::mpsc::Receiver<Message>,
    pool: &std::sync::mpsc::Sender<Vec<u8>>,
    committer: &mut Committer<S, K>,
    cancel: &CancellationToken,
    base: &MetaBase,
    start: SourcePosition,
    board: &Switchboard,
) -> Result<Ended> {
    let mut last_pos = start;
    // True when the checkpoint finished the input.
    let checkpoint =
        |processor: &mut Processor, committer: &mut Committer<S, K>, pos, end: bool| {
            let taken = Instant::now();
            let waited = crate::telemetry::run_delay();
            let (out, batch) = processor.checkpoint(pos, end, base.clone())?;
            let finished = batch.meta.as_ref().is_some_and(|m| m.finished);
            let customers = (processor.open_customers(), processor.cached_customers());
            committer.submit(Job {
                out,
                batch,
                lines: processor.counters().lines,
                customers,
                pause: taken.elapsed(),
                pause_waited: crate::telemetry::run_delay()
                    .zip(waited)
                    .map(|(now, then)| now.saturating_sub(then)),
                taken,
            })?;
            anyhow::Ok(finished)
        };
    loop {
        if let Some(x) = board.take() {
            info!(
                schemas = %x.versions(),
                previous = %processor.schema_set(),
                input = last_pos.input,
                after_line = last_pos.line,
                "Schema set switched."
            );
            processor.set_extractor(x);
        }
        let msg = match rx.recv_timeout(Duration::from_millis(250)) {
            Ok(m) => m,
            Err(RecvTimeoutError::Timeout) if cancel.is_cancelled() => {
                // The source may be blocked on a pipe that stays silent: checkpoint what was
                // processed and stop without it.
                checkpoint(processor, committer, last_pos, false)?;
                return Ok(Ended::Interrupted);
            }
            Err(RecvTimeoutError::Timeout) => continue,
            Err(RecvTimeoutError::Disconnected) => return Ok(Ended::SourceStopped),
        };
        match msg {
            Message::Lines(chunk) => {
                processor.set_now(crate::runtime::record::now_ms() as i64);
                last_pos = processor.process_chunk(&chunk);
                let _ = pool.send(chunk.data);
            }
            Message::Barrier(pos) => {
                checkpoint(processor, committer, pos, false)?;
                last_pos = pos;
            }
            Message::Oversized(o) => last_pos = processor.process_oversized(&o),
            Message::End(pos) => {
                // The sessions still open are closed in steps (`Processor::set_end_step`). Each
                // step starts from durable state only, so where it stops depends on the data
                // alone: the output is the same whatever the commit timing, a restart included.
                // A step that closes all that is left stops nowhere: it does not wait (two
                // cores, 1 M lines: the wait for the last interval's commit was ~140 ms, a
                // core idle, of a 2 s replay).
                loop {
                    if !processor.one_step_left() {
                        committer.drain()?;
                    }
                    if checkpoint(processor, committer, pos, true)? {
                        return Ok(Ended::Finished);
                    }
                }
            }
        }
    }
}

/// Parses a duration flag (`30m`, `7h`, `1day`).
///
/// # Errors
/// Not a duration.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s)
        .map_err(|e| format!("`{s}` is not a duration like 30s, 30m or 7h ({e})"))
}

/// Runs `clickstream schema test`: the schema set on a sample, no state, no output files.
///
/// # Errors
/// Bad schemas, or a sample that cannot be read.
pub fn schema_test(
    schemas: &std::path::Path,
    sample: &str,
    limit: Option<u64>,
) -> Result<SampleReport> {
    use std::io::BufRead;
    let extractor = Extractor::load(schemas)?;
    let input = Input::new(sample)?;
    let progress = progress_bar(std::slice::from_ref(&input));
    let mut reader = std::io::BufReader::with_capacity(1 << 20, input.reader(&progress)?);
    let mut test = SampleTest::default();
    let mut line = Vec::new();
    let mut n = 0u64;
    while limit.is_none_or(|l| n < l) {
        line.clear();
        let read =
            reader.read_until(b'\n', &mut line).with_context(|| format!("reading {sample}"))?;
        if read == 0 {
            break;
        }
        if line.last() == Some(&b'\n') {
            line.pop();
        }
        n += 1;
        test.observe(&extractor, n, &line);
    }
    progress.finish_and_clear();
    Ok(test.finish(10))
}

/// A buffered reader of a sample (`.jsonl`, `.jsonl.gz`, `-`).
///
/// # Errors
/// The sample cannot be opened.
pub fn sample_reader(sample: &str) -> Result<impl std::io::BufRead> {
    let input = Input::new(sample)?;
    Ok(std::io::BufReader::with_capacity(1 << 20, input.reader(&ProgressBar::hidden())?))
}

/// Reads at most `limit` lines of a sample (`.jsonl`, `.jsonl.gz`, `-`) into memory.
///
/// # Errors
/// The sample cannot be read.
pub fn read_sample(sample: &str, limit: u64) -> Result<Vec<u8>> {
    use std::io::BufRead;
    let input = Input::new(sample)?;
    let mut reader =
        std::io::BufReader::with_capacity(1 << 20, input.reader(&ProgressBar::hidden())?);
    let mut out = Vec::new();
    for _ in 0..limit {
        let read =
            reader.read_until(b'\n', &mut out).with_context(|| format!("reading {sample}"))?;
        if read == 0 {
            break;
        }
    }
    Ok(out)
}

/// `clickstream schema diff`: a unified diff of two versions' text, and what registering the
/// second over the first would be told.
///
/// # Errors
/// A stored version does not parse.
pub fn schema_diff(a: &VersionRecord, b: &VersionRecord) -> Result<String> {
    use std::fmt::Write as _;
    let mut out = String::new();
    let diff = similar::TextDiff::from_lines(&a.source, &b.source);
    let _ = write!(out, "{}", diff.unified_diff().context_radius(3).header(&a.id(), &b.id()));
    let (old, new) = (a.parse()?, b.parse()?);
    let findings = crate::extract::compat::static_findings(&old, &new, false);
    if findings.is_empty() {
        let _ = writeln!(out, "\ncompatibility: no finding");
    } else {
        let _ = writeln!(out, "\ncompatibility (without a sample):");
        for f in findings {
            let _ = writeln!(out, "  {}: {}: {}", f.severity.name(), f.field, f.message);
        }
    }
    if let Some(r) = &b.reason {
        let _ = writeln!(out, "{} was forced: {r}", b.id());
    }
    Ok(out)
}
