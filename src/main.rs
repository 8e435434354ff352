//! The `clickstream` command line.

use anyhow::Result;
use clap::{Parser, Subcommand};
use clickstream::app::{self, Outcome, ReplaySettings};
use clickstream::config::RawConfig;
use clickstream::extract::Extractor;
use clickstream::processor::Rules;
use clickstream::source::replay::BarrierPolicy;
use clickstream::telemetry::LogWriter;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

// Millions of small, short-lived allocations (ids, customer keys) per replay: mimalloc's
// thread-local free lists measurably beat glibc malloc here.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Exit code after a signal stopped a run at a checkpoint (as shells report SIGINT).
const EXIT_INTERRUPTED: u8 = 130;

#[derive(Debug, Parser)]
#[command(
    name = "clickstream",
    version,
    about = "Raw clickstream JSON → per-customer session aggregates."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Replay recorded JSON Lines files through the pipeline into a local directory.
    ///
    /// Resumable: killed at any point, the same command with the same --state and --output
    /// continues from the last checkpoint and ends with output identical to an uninterrupted run.
    Replay(ReplayArgs),
    /// Work with schema files.
    #[command(subcommand)]
    Schema(SchemaCommand),
}

#[derive(Debug, clap::Args)]
struct ReplayArgs {
    /// Configuration file (TOML) over the built-in defaults.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Schema directory or file [default: schemas].
    #[arg(long, value_name = "DIR")]
    schemas: Option<PathBuf>,
    /// `RocksDB` state directory [default: OUTPUT/_state].
    #[arg(long, value_name = "DIR")]
    state: Option<PathBuf>,
    /// Output directory [default: out].
    #[arg(long, value_name = "DIR")]
    output: Option<PathBuf>,
    /// How late an event may arrive and still count [default: 6h].
    #[arg(long, value_name = "DURATION", value_parser = app::parse_duration)]
    allowed_lateness: Option<Duration>,
    /// Inactivity gap that ends a session [default: 30m].
    #[arg(long, value_name = "DURATION", value_parser = app::parse_duration)]
    gap: Option<Duration>,
    /// How long message ids are remembered for dedup [default: 24h, at least the lateness].
    #[arg(long, value_name = "DURATION", value_parser = app::parse_duration)]
    dedup_horizon: Option<Duration>,
    /// Lines between checkpoints [default: 100000].
    #[arg(long, value_name = "N")]
    checkpoint_every: Option<u64>,
    /// Input files (.jsonl or .jsonl.gz), read in order; - reads stdin.
    #[arg(value_name = "INPUT", required = true)]
    inputs: Vec<String>,
}

#[derive(Debug, Subcommand)]
enum SchemaCommand {
    /// Parse and compile schema files; report every error at once.
    Validate {
        /// Schema files or directories [default: schemas].
        paths: Vec<PathBuf>,
    },
    /// Print the JSON Schema of the schema-file format (for editors; kept in schemas/schema.json).
    JsonSchema,
    /// Dry-run a schema set on sample events: matches, fill rates, classification, rejects.
    ///
    /// Touches no state and writes no output.
    Test {
        /// Schema file or directory.
        path: PathBuf,
        /// Sample events (.jsonl, .jsonl.gz, or - for stdin).
        #[arg(long, value_name = "EVENTS")]
        sample: String,
        /// Read at most this many lines.
        #[arg(long, value_name = "N")]
        limit: Option<u64>,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
    },
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum Format {
    /// Aligned tables for a terminal.
    Text,
    /// One JSON object.
    Json,
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

fn replay_settings(a: ReplayArgs) -> Result<ReplaySettings> {
    let mut c = RawConfig::load(a.config.as_deref())?;
    if let Some(g) = a.gap {
        c.session.gap = g;
    }
    if let Some(l) = a.allowed_lateness {
        c.session.allowed_lateness = l;
        // A lateness above the configured horizon raises the horizon rather than failing.
        if a.dedup_horizon.is_none() && c.session.dedup_horizon < l {
            c.session.dedup_horizon = l;
        }
    }
    if let Some(h) = a.dedup_horizon {
        c.session.dedup_horizon = h;
    }
    if let Some(n) = a.checkpoint_every {
        c.checkpoint.every_lines = n;
    }
    if let Some(p) = a.schemas {
        c.replay.schemas = p;
    }
    if let Some(p) = a.output {
        c.replay.output = p;
    }
    if let Some(p) = a.state {
        c.replay.state = p;
    }
    c.validate()?;
    let state = if c.replay.state.as_os_str().is_empty() {
        c.replay.output.join("_state")
    } else {
        c.replay.state
    };
    Ok(ReplaySettings {
        inputs: a.inputs,
        schemas: c.replay.schemas,
        state,
        output: c.replay.output,
        rules: Rules {
            gap_ms: ms(c.session.gap),
            lateness_ms: ms(c.session.allowed_lateness),
            dedup_horizon_ms: ms(c.session.dedup_horizon),
        },
        barriers: BarrierPolicy {
            every_lines: c.checkpoint.every_lines,
            interval: (!c.checkpoint.interval.is_zero()).then_some(c.checkpoint.interval),
        },
    })
}

async fn run(cli: Cli, logs: LogWriter) -> Result<ExitCode> {
    match cli.command {
        Command::Replay(args) => {
            let settings = replay_settings(args)?;
            let cancel = CancellationToken::new();
            clickstream::shutdown::install(cancel.clone());
            let outcome =
                tokio::task::spawn_blocking(move || app::replay(&settings, &cancel, &logs))
                    .await??;
            match outcome {
                Outcome::Completed(c) | Outcome::AlreadyComplete(c) => {
                    println!("{}", app::summary_json(&c));
                    Ok(ExitCode::SUCCESS)
                }
                Outcome::Interrupted(id) => {
                    eprintln!(
                        "clickstream: interrupted; checkpoint {id} is committed: run the same command again to resume"
                    );
                    Ok(ExitCode::from(EXIT_INTERRUPTED))
                }
            }
        }
        Command::Schema(SchemaCommand::JsonSchema) => {
            print!("{}", clickstream::extract::schema::json_schema());
            Ok(ExitCode::SUCCESS)
        }
        Command::Schema(SchemaCommand::Test { path, sample, limit, format }) => {
            let report = app::schema_test(&path, &sample, limit)?;
            match format {
                Format::Text => print!("{}", report.to_text(&sample)),
                Format::Json => println!("{}", serde_json::to_string(&report)?),
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Schema(SchemaCommand::Validate { paths }) => {
            let paths = if paths.is_empty() { vec![PathBuf::from("schemas")] } else { paths };
            let mut ok = true;
            for p in &paths {
                match Extractor::load(p) {
                    Ok(x) => println!("{}: ok ({})", p.display(), x.versions()),
                    Err(e) => {
                        ok = false;
                        eprintln!("{e}");
                    }
                }
            }
            Ok(if ok { ExitCode::SUCCESS } else { ExitCode::FAILURE })
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let logs = clickstream::telemetry::init();
    let rt =
        match tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build() {
            Ok(rt) => rt,
            Err(e) => {
                eprintln!("clickstream: cannot start the runtime: {e}");
                return ExitCode::FAILURE;
            }
        };
    match rt.block_on(run(cli, logs)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("clickstream: {e:#}");
            ExitCode::FAILURE
        }
    }
}
