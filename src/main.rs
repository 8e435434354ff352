//! The `clickstream` command line.

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use clickstream::app::{self, Outcome, ReplaySettings};
use clickstream::config::RawConfig;
use clickstream::extract::Extractor;
use clickstream::processor::Rules;
use clickstream::registry::{self, Candidate, Directory, Registered, Registry};
use clickstream::schema_tools;
use clickstream::source::replay::BarrierPolicy;
use clickstream::telemetry::LogWriter;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

// The system allocator, not mimalloc: mimalloc kept what a burst of closing freed for a while
// before returning it, and the process's peak grew by that (measured, 30 M events / 10 M
// customers: peak RSS 990-1,002 MiB with it, 827-834 MiB without, at 0-10 % fewer lines/s in
// interleaved runs). The memory bound is what a container is sized by.

/// Exit code after a signal stopped a run at a checkpoint (as shells report SIGINT).
const EXIT_INTERRUPTED: u8 = 130;

#[derive(Debug, Parser)]
#[command(
    name = "clickstream",
    version,
    about = "Raw clickstream JSON → per-customer session aggregates."
)]
struct Cli {
    /// Configuration file (TOML) over the built-in defaults (see config/default.toml).
    #[arg(long, value_name = "FILE", global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Replay recorded events (JSON Lines files, stdin, or archives in a directory or S3)
    /// through the pipeline into a local directory or S3.
    ///
    /// Resumable: killed at any point, the same command with the same --state and --output
    /// continues from the last checkpoint and ends with output identical to an uninterrupted run.
    Replay(ReplayArgs),
    /// Push recorded events (files, stdin, archives) into a Kafka topic or a Kinesis stream,
    /// keyed by customer id, at a fixed rate or as fast as it goes.
    ///
    /// Prints one summary JSON line at the end:
    /// `{"records","bytes","skipped","fallback_keyed","failed","too_large","seconds","rate"}`;
    /// exits non-zero if any record was not delivered.
    Produce(ProduceArgs),
    /// Capture a slice of a Kafka topic or a Kinesis stream to `.jsonl.gz` files (a directory
    /// or `s3://bucket/prefix`) that `replay` reads back, each beside a sidecar with every
    /// record's source position. Joins no consumer group and commits nothing.
    ///
    /// Prints one summary JSON line at the end:
    /// `{"records","bytes","files","splits":{split:{"first","last","records"}},"seconds"}`.
    Record(RecordArgs),
    /// Run as a service: consume raw events from Kafka, write session rows to S3.
    ///
    /// Settings come from --config (see config/default.toml: [kafka], [sink], [run],
    /// [session], [registry], [admin]) and `CLICKSTREAM__SECTION__KEY` variables. SIGTERM or
    /// SIGINT: final checkpoint, then exit.
    Run,
    /// Work with schema files.
    #[command(subcommand)]
    Schema(SchemaCommand),
    /// Inspect or reset the state `run` keeps per partition in S3 (uses --config).
    #[command(subcommand)]
    State(StateCommand),
}

#[derive(Debug, Subcommand)]
enum StateCommand {
    /// Print a partition's commit record, whether it ran before, its resets and object count.
    Show {
        /// The partition.
        #[arg(long, value_name = "N")]
        partition: i32,
    },
    /// Start a partition again whose commit record is missing or unreadable, from empty state.
    ///
    /// Published output is never deleted; the reset is recorded with its reason. Running
    /// instances pick the partition up within seconds.
    Reset {
        /// The partition.
        #[arg(long, value_name = "N")]
        partition: i32,
        /// Why (recorded beside the split, and logged).
        #[arg(long)]
        reason: String,
        /// Where to start reading: `committed` (the group's committed offset, which never runs
        /// ahead of the lost state), `beginning`, or an offset.
        #[arg(long, value_name = "WHERE", default_value = "committed")]
        from: String,
        /// Number checkpoints above this instead of above every published one (found by
        /// listing the partition's output).
        #[arg(long, value_name = "N")]
        checkpoint_base: Option<u64>,
        /// Reset even a partition whose record is good (its state is discarded).
        #[arg(long)]
        force: bool,
    },
}

#[derive(Debug, clap::Args)]
struct ReplayArgs {
    /// Schema directory or file [default: schemas].
    #[arg(long, value_name = "DIR", conflicts_with = "registry")]
    schemas: Option<PathBuf>,
    /// Schema registry (directory or `s3://bucket/prefix`): use its latest versions and pick up
    /// new ones while running.
    #[arg(long, value_name = "LOCATION")]
    registry: Option<String>,
    /// Keep reading the last input as it grows, until SIGINT or SIGTERM. A file truncated or
    /// replaced (rotated) at its path is followed anew from its start; `-` (stdin) ends when
    /// its writer closes the pipe.
    #[arg(long)]
    follow: bool,
    /// Names the stream on stdin (-) so that a replay of it can be resumed: on a resume under
    /// the same name, stdin is taken to be the same stream fed again from its start, and the
    /// bytes the checkpoint had read are skipped. Without it a replay of stdin cannot resume.
    #[arg(long, value_name = "NAME")]
    stdin_id: Option<String>,
    /// Serve the admin API (schemas, /healthz, /metrics) on this address, e.g. 127.0.0.1:8081.
    #[arg(long, value_name = "ADDR")]
    admin_listen: Option<String>,
    /// `RocksDB` state directory [default: OUTPUT/_state].
    #[arg(long, value_name = "DIR")]
    state: Option<PathBuf>,
    /// Output directory, or `s3://bucket/prefix` (then --state is needed) [default: out].
    #[arg(long, value_name = "DIR|S3")]
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
    /// Dead-letter events stamped more than this far ahead of the wall clock as
    /// `future_timestamp` [default: 1d; 0s: no bound].
    #[arg(long, value_name = "DURATION", value_parser = app::parse_duration)]
    max_future: Option<Duration>,
    /// Lines between checkpoints [default: 100000].
    #[arg(long, value_name = "N")]
    checkpoint_every: Option<u64>,
    /// What state may hold in memory, e.g. 64MiB [default: 512MiB, or `state.memory_budget`].
    #[arg(long, value_name = "SIZE", value_parser = clickstream::config::parse_size)]
    memory_budget: Option<u64>,
    /// Wall time between checkpoints, e.g. 1s [default: off].
    #[arg(long, value_name = "DURATION", value_parser = app::parse_duration)]
    checkpoint_interval: Option<Duration>,
    /// Threads that decode and extract lines; the output is the same whatever the number
    /// [default: one per core this process may use].
    #[arg(long, value_name = "N")]
    workers: Option<usize>,
    /// How inputs are cut into records: `lines` (JSON Lines), `concatenated` (JSON values back
    /// to back, any whitespace or none between them, as Kinesis Data Firehose writes them) or
    /// `auto` (decided per input from its first bytes) [default: lines for files, and for an
    /// archive's objects named .jsonl or .ndjson; auto for its other objects].
    #[arg(long, value_name = "FRAMING")]
    framing: Option<clickstream::source::replay::Framing>,
    /// Read only the objects of an archive from this time on: by the hour their key names
    /// (`…/YYYY/MM/DD/HH/…`, kept when it overlaps), else by when they were last written. E.g.
    /// 2026-11-30T13, 2026-11-30T13:05:00Z, 2026/11/30/13.
    #[arg(long, value_name = "TIME", value_parser = clickstream::source::replay::archive::parse_time)]
    from: Option<i64>,
    /// Read only the objects of an archive before this time (see --from).
    #[arg(long, value_name = "TIME", value_parser = clickstream::source::replay::archive::parse_time)]
    to: Option<i64>,
    /// Inputs, read in order: files (.jsonl, gzip-compressed or not), - for stdin, or archives:
    /// a directory or `s3://bucket/prefix`, whose objects are read in key order (recursively).
    #[arg(value_name = "INPUT", required = true)]
    inputs: Vec<String>,
}

/// A Kafka topic or a Kinesis stream: what `produce` feeds and `record` captures.
#[derive(Debug, clap::Args)]
struct StreamArgs {
    /// The Kafka topic.
    #[arg(
        long,
        value_name = "TOPIC",
        required_unless_present = "kinesis_stream",
        conflicts_with = "kinesis_stream"
    )]
    kafka_topic: Option<String>,
    /// Kafka bootstrap servers [default: kafka.brokers of the config]; librdkafka properties
    /// come from [kafka.properties].
    #[arg(long, value_name = "BROKERS")]
    brokers: Option<String>,
    /// The Kinesis stream (client from the AWS environment, e.g. `AWS_ENDPOINT_URL_KINESIS`).
    #[arg(long, value_name = "STREAM")]
    kinesis_stream: Option<String>,
}

#[derive(Debug, clap::Args)]
struct ProduceArgs {
    /// The topic or stream to produce into.
    #[command(flatten)]
    stream: StreamArgs,
    /// The record key (Kafka) or partition key (Kinesis): `customer` (the customer id as the
    /// schemas extract it), a `JSONPath` such as `$.user.id`, or `none`. A line where the key is
    /// not found is sent under a stable fallback key: the lowercase hex MD5 of its bytes
    /// (counted as `fallback_keyed`).
    #[arg(long, value_name = "customer|none|JSONPATH", default_value = "customer")]
    key: clickstream::produce::Key,
    /// Records per second (`5000/s`), minute (`300/m`) or hour [default: as fast as it goes].
    #[arg(long, value_name = "N/s")]
    rate: Option<clickstream::produce::Rate>,
    /// KPL-aggregate the records of one partition key into one Kinesis record (Kinesis only).
    #[arg(long, requires = "kinesis_stream")]
    aggregate: bool,
    /// How inputs are cut into records, as for replay: `lines`, `concatenated` or `auto`.
    #[arg(long, value_name = "FRAMING")]
    framing: Option<clickstream::source::replay::Framing>,
    /// Schema directory or file, for --key customer [default: schemas].
    #[arg(long, value_name = "DIR")]
    schemas: Option<PathBuf>,
    /// Inputs, as replay reads them: files, - for stdin, a directory or `s3://bucket/prefix`.
    #[arg(value_name = "INPUT", required = true)]
    inputs: Vec<String>,
}

#[derive(Debug, clap::Args)]
struct RecordArgs {
    /// The topic or stream to capture.
    #[command(flatten)]
    stream: StreamArgs,
    /// Where the files go: a directory or `s3://bucket/prefix`.
    #[arg(long, value_name = "DIR|S3")]
    output: String,
    /// Kafka partitions to capture, e.g. 0,3 [default: all].
    #[arg(long, value_name = "N,N", value_delimiter = ',', conflicts_with = "kinesis_stream")]
    partitions: Vec<i32>,
    /// Kinesis shards to capture [default: all].
    #[arg(long, value_name = "ID,ID", value_delimiter = ',', conflicts_with = "kafka_topic")]
    shards: Vec<String>,
    /// Start each partition at this offset [default: the earliest kept].
    #[arg(long, value_name = "N", conflicts_with_all = ["kinesis_stream", "from_time"])]
    from_offset: Option<i64>,
    /// End each partition before this offset [default: the high watermark at start].
    #[arg(long, value_name = "N", conflicts_with_all = ["kinesis_stream", "to_time"])]
    to_offset: Option<i64>,
    /// Start shards at these sequence numbers (`AT_SEQUENCE_NUMBER`): SHARD=SEQUENCE entries, or
    /// one bare sequence with one shard; other shards start at the trim horizon.
    #[arg(
        long,
        value_name = "SHARD=SEQ",
        value_delimiter = ',',
        conflicts_with_all = ["kafka_topic", "from_time"]
    )]
    from_sequence: Vec<String>,
    /// Start at the first record stamped (Kafka) or arrived (Kinesis) at or after this time
    /// (2026-11-30T13:05:00Z, 2026-11-30T13, 2026-11-30; UTC unless an offset is given).
    #[arg(long, value_name = "TIME", value_parser = clickstream::source::replay::archive::parse_time)]
    from_time: Option<i64>,
    /// End before the first record stamped or arrived at or after this time (see --from-time)
    /// [Kinesis default: when a shard is closed or caught up with].
    #[arg(long, value_name = "TIME", value_parser = clickstream::source::replay::archive::parse_time)]
    to_time: Option<i64>,
    /// Input bytes per file before the next file starts.
    #[arg(long, value_name = "SIZE", default_value = "64MiB", value_parser = clickstream::config::parse_size)]
    roll: u64,
}

impl RecordArgs {
    /// The capture these arguments and the config (`[kafka]`, `[s3]`) ask for.
    fn settings(self, c: &RawConfig) -> clickstream::record::Settings {
        use clickstream::record::{KafkaFrom, KafkaTo, KinesisFrom, Settings, Source};
        let StreamArgs { kafka_topic, brokers, kinesis_stream } = self.stream;
        let source = match kinesis_stream {
            Some(stream) => Source::Kinesis {
                stream,
                shards: self.shards,
                from: match (self.from_time, self.from_sequence.is_empty()) {
                    (Some(t), _) => KinesisFrom::Time(t),
                    (None, false) => KinesisFrom::Sequences(self.from_sequence),
                    (None, true) => KinesisFrom::TrimHorizon,
                },
                to_time: self.to_time,
            },
            None => Source::Kafka {
                brokers: brokers.unwrap_or_else(|| c.kafka.brokers.clone()),
                topic: kafka_topic.unwrap_or_default(),
                properties: c.kafka.properties.clone(),
                partitions: self.partitions,
                from: match (self.from_offset, self.from_time) {
                    (Some(o), _) => KafkaFrom::Offset(o),
                    (None, Some(t)) => KafkaFrom::Time(t),
                    (None, None) => KafkaFrom::Earliest,
                },
                to: match (self.to_offset, self.to_time) {
                    (Some(o), _) => KafkaTo::Offset(o),
                    (None, Some(t)) => KafkaTo::Time(t),
                    (None, None) => KafkaTo::HighWatermark,
                },
            },
        };
        Settings {
            source,
            output: self.output,
            roll: self.roll,
            force_path_style: c.s3.force_path_style,
        }
    }
}

#[derive(Debug, Subcommand)]
enum SchemaCommand {
    /// Parse and compile schema files; report every error at once.
    ///
    /// A directory is validated as one set. One file is validated as part of the set it joins:
    /// the other `*.toml` beside it, or with --registry the registry's latest set, with this
    /// file standing in for its own name's version.
    Validate {
        /// Schema files or directories [default: schemas].
        paths: Vec<PathBuf>,
        /// Judge each file within this registry's latest set instead of its directory's.
        #[arg(long, value_name = "LOCATION")]
        registry: Option<String>,
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
    /// Explain one line of a sample: every path tried, the coercions, the rules that rejected
    /// or classified it, and the session it joined.
    ///
    /// The whole sample runs through the pipeline with the configured session rules, so
    /// duplicates and late events are told as such.
    Explain {
        /// Sample events (.jsonl, .jsonl.gz).
        #[arg(long, value_name = "EVENTS")]
        sample: String,
        /// The line to explain (1-based).
        #[arg(long, value_name = "N")]
        line: u64,
        /// Schema file or directory [default: the configured schemas].
        #[arg(long, value_name = "PATH")]
        schemas: Option<PathBuf>,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
    },
    /// Store a schema file as its next version, refusing incompatible changes.
    ///
    /// The file's `version` must be the next number. A change is refused when it removes or
    /// retypes a field the aggregates use, drops a path without keeping it as an alias, or (on
    /// --sample) moves events between kinds, customers or into the dead letters.
    ///
    /// Several files (or a directory) are registered together, each judged within the set that
    /// holds the others: that is how an empty registry is seeded. Registering into an empty
    /// registry while the schemas directory (--schemas) holds other schemas, or a version whose
    /// own sample events (--sample) are mostly dead-lettered, needs --force --reason.
    Register {
        /// The schema files, or directories of them.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        #[command(flatten)]
        registry: RegistryArg,
        /// The schemas a processor reads without the registry [default: replay.schemas of the
        /// config, `schemas`]: an empty registry must not lose them.
        #[arg(long, value_name = "DIR")]
        schemas: Option<PathBuf>,
        /// Sample events to judge rule changes on (.jsonl, .jsonl.gz).
        #[arg(long, value_name = "EVENTS")]
        sample: Option<String>,
        /// Read at most this many sample lines.
        #[arg(long, value_name = "N", default_value_t = 100_000)]
        limit: u64,
        /// Register even if the change is incompatible (needs --reason).
        #[arg(long, requires = "reason")]
        force: bool,
        /// Why a forced change is safe; stored with the version.
        #[arg(long, value_name = "TEXT")]
        reason: Option<String>,
    },
    /// List registered schemas and their versions.
    List {
        #[command(flatten)]
        registry: RegistryArg,
    },
    /// Print a registered version (the latest without @VERSION), or with --set the merged set.
    ///
    /// --set prints the schemas in merge order (priority, name), each canonical field's
    /// candidate paths in the order the extractor tries them with their schema, then the reject
    /// and classify rules in evaluation order. It reads --schemas DIR, or --registry, or else
    /// registry.location or replay.schemas of the config.
    Show {
        /// NAME or NAME@VERSION.
        #[arg(required_unless_present = "set", conflicts_with = "set")]
        schema: Option<String>,
        /// Print the merged set instead of one version.
        #[arg(long)]
        set: bool,
        /// With --set: the schema directory to read instead of a registry.
        #[arg(long, value_name = "DIR", requires = "set", conflicts_with = "registry")]
        schemas: Option<PathBuf>,
        #[command(flatten)]
        registry: RegistryArg,
        /// toml: the schema file as registered; json: the whole record (with --set: the merged
        /// set as JSON); text: with --set, tables (the default).
        #[arg(long, value_enum)]
        format: Option<ShowFormat>,
    },
    /// Show what changed between two versions, and what the compatibility check says of it.
    Diff {
        /// NAME@V1.
        from: String,
        /// NAME@V2 (or V2).
        to: String,
        #[command(flatten)]
        registry: RegistryArg,
    },
}

#[derive(Debug, clap::Args)]
struct RegistryArg {
    /// Registry: a directory or `s3://bucket/prefix` [default: registry.location of the config].
    #[arg(long, value_name = "LOCATION")]
    registry: Option<String>,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum ShowFormat {
    /// The schema file.
    Toml,
    /// Tables for a terminal (--set).
    Text,
    /// The stored record.
    Json,
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

/// The sessionization rules of a configuration.
fn rules(c: &RawConfig) -> Rules {
    Rules {
        gap_ms: ms(c.session.gap),
        lateness_ms: ms(c.session.allowed_lateness),
        dedup_horizon_ms: ms(c.session.dedup_horizon),
        max_future_ms: ms(c.session.max_future),
    }
}

/// Schemas, registry, S3 client and admin API settings of a configuration.
fn service_settings(c: &RawConfig) -> app::ServiceSettings {
    app::ServiceSettings {
        schemas: c.replay.schemas.clone(),
        registry: (!c.registry.location.is_empty()).then(|| c.registry.location.clone()),
        poll_interval: c.registry.poll_interval,
        force_path_style: c.s3.force_path_style,
        admin_listen: c.admin.listen.parse().ok(),
        admin_token: (!c.admin.token.is_empty()).then(|| c.admin.token.clone()),
        admin_limits: clickstream::admin::Limits::from_config(&c.admin),
        rules: rules(c),
    }
}

fn replay_settings(config: Option<&std::path::Path>, a: ReplayArgs) -> Result<ReplaySettings> {
    let mut c = RawConfig::load(config)?;
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
    if let Some(f) = a.max_future {
        c.session.max_future = f;
    }
    if let Some(n) = a.memory_budget {
        c.state.memory_budget = n;
    }
    if let Some(n) = a.checkpoint_every {
        c.checkpoint.every_lines = n;
    }
    if let Some(i) = a.checkpoint_interval {
        c.checkpoint.interval = i;
    }
    if let Some(r) = a.registry {
        c.registry.location = r;
    }
    if let Some(l) = a.admin_listen {
        c.admin.listen = l;
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
    if let Some(n) = a.workers {
        c.replay.workers = n;
    }
    c.validate()?;
    if c.replay.output.to_str().is_some_and(|o| o.starts_with("s3://"))
        && c.replay.state.as_os_str().is_empty()
    {
        bail!("an s3:// output needs a local --state DIR (the state cannot live in S3)");
    }
    let (services, rules) = (service_settings(&c), rules(&c));
    let state = if c.replay.state.as_os_str().is_empty() {
        c.replay.output.join("_state")
    } else {
        c.replay.state
    };
    Ok(ReplaySettings {
        inputs: a.inputs,
        services,
        rules,
        barriers: BarrierPolicy {
            every_lines: c.checkpoint.every_lines,
            interval: (!c.checkpoint.interval.is_zero()).then_some(c.checkpoint.interval),
        },
        follow: a.follow,
        stdin_id: a.stdin_id,
        framing: a.framing,
        window: clickstream::source::replay::archive::Window { from: a.from, to: a.to },
        parquet: c.sink.format == clickstream::config::SinkFormat::Parquet,
        workers: c.replay.workers,
        state,
        output: c.replay.output,
        memory_budget: c.state.memory_budget,
    })
}

async fn run(cli: Cli, logs: LogWriter) -> Result<ExitCode> {
    match cli.command {
        Command::Replay(args) => {
            let settings = replay_settings(cli.config.as_deref(), args)?;
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
        Command::Produce(a) => {
            use clickstream::produce::{Settings, Target};
            let c = RawConfig::load(cli.config.as_deref())?;
            let target = match a.stream.kinesis_stream {
                Some(stream) => Target::Kinesis { stream, aggregate: a.aggregate },
                None => Target::Kafka {
                    brokers: a.stream.brokers.unwrap_or_else(|| c.kafka.brokers.clone()),
                    topic: a.stream.kafka_topic.unwrap_or_default(),
                    properties: c.kafka.properties.clone(),
                },
            };
            let settings = Settings {
                inputs: a.inputs,
                framing: a.framing,
                force_path_style: c.s3.force_path_style,
                key: a.key,
                schemas: a.schemas.unwrap_or_else(|| c.replay.schemas.clone()),
                rate: a.rate,
                target,
            };
            let sum = tokio::task::spawn_blocking(move || clickstream::produce::produce(&settings))
                .await??;
            println!("{}", sum.to_json());
            if sum.failed > 0 {
                eprintln!("clickstream: {} records were not delivered", sum.failed);
                return Ok(ExitCode::FAILURE);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Record(a) => {
            let settings = a.settings(&RawConfig::load(cli.config.as_deref())?);
            let sum = tokio::task::spawn_blocking(move || clickstream::record::record(&settings))
                .await??;
            println!("{}", sum.to_json());
            Ok(ExitCode::SUCCESS)
        }
        Command::Schema(cmd) => schema(cli.config.as_deref(), cmd).await,
        Command::Run => {
            run_service(cli.config.as_deref()).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::State(cmd) => state(cli.config.as_deref(), cmd).await,
    }
}

fn run_settings(c: &RawConfig) -> Result<clickstream::runtime::RunSettings> {
    let Some(Ok(sink)) = clickstream::s3::S3Location::parse(&c.sink.location) else {
        bail!(
            "sink.location = {:?}: `clickstream run` writes to s3://BUCKET/PREFIX",
            c.sink.location
        );
    };
    let r = &c.run;
    Ok(clickstream::runtime::RunSettings {
        kafka: clickstream::source::kafka::KafkaSettings {
            brokers: c.kafka.brokers.clone(),
            topic: c.kafka.topic.clone(),
            group: c.kafka.group.clone(),
            properties: c.kafka.properties.clone(),
            revoke_deadline: r.revoke_deadline,
            liveness_timeout: r.liveness_timeout,
        },
        kinesis: (c.source.kind == clickstream::config::SourceKind::Kinesis)
            .then(|| kinesis_settings(&c.kinesis))
            .transpose()?,
        sink,
        state: r.state.clone(),
        pipeline: clickstream::runtime::split::PipelineSettings {
            rules: rules(c),
            checkpoint_interval: r.checkpoint_interval,
            checkpoint_bytes: r.checkpoint_bytes.max(1),
            idle_timeout: r.idle_timeout,
            stop_deadline: r.shutdown_deadline,
        },
        shutdown_deadline: r.shutdown_deadline,
        force_path_style: c.s3.force_path_style,
        parquet: c.sink.format == clickstream::config::SinkFormat::Parquet,
        dead_letter_topic: (!c.sink.dead_letter_topic.is_empty())
            .then(|| c.sink.dead_letter_topic.clone()),
        keep_snapshots: r.keep_snapshots,
        memory: clickstream::state::rocksdb::MemoryBudget::new(c.state.memory_budget),
        permanent_error_deadline: r.permanent_error_deadline,
        allow_settings_change: r.allow_settings_change,
    })
}

fn kinesis_settings(
    k: &clickstream::config::KinesisConfig,
) -> Result<clickstream::source::kinesis::KinesisSettings> {
    use clickstream::config::InitialPosition;
    use clickstream::source::kinesis::Initial;
    let initial = match k.initial_position {
        InitialPosition::TrimHorizon => Initial::TrimHorizon,
        InitialPosition::Latest => Initial::Latest,
        InitialPosition::AtTimestamp => {
            let t = humantime::parse_rfc3339_weak(&k.at_timestamp)
                .with_context(|| format!("kinesis.at_timestamp = {:?}", k.at_timestamp))?;
            let ms = t.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64);
            Initial::AtTimestamp(ms)
        }
    };
    let worker_id = if k.worker_id.is_empty() {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map_or_else(|_| "unknown".into(), |h| h.trim().to_owned());
        format!("{host}/{}", std::process::id())
    } else {
        k.worker_id.clone()
    };
    Ok(clickstream::source::kinesis::KinesisSettings {
        stream: k.stream.clone(),
        lease_table: k.lease_table.clone(),
        initial,
        idle_poll: k.idle_poll,
        max_records: k.max_records as i32,
        lease_duration: k.lease_duration,
        shard_sync: k.shard_sync,
        worker_id,
    })
}

async fn run_service(config: Option<&std::path::Path>) -> Result<()> {
    let c = RawConfig::load(config)?;
    c.validate()?;
    let settings = run_settings(&c)?;
    let svc = service_settings(&c);
    let cancel = CancellationToken::new();
    clickstream::shutdown::install(cancel.clone());
    tokio::task::spawn_blocking(move || {
        let services = CancellationToken::new();
        let _stop = services.clone().drop_guard();
        let health = std::sync::Arc::new(clickstream::runtime::health::Health::default());
        let (x, board, _) =
            app::start_schemas(&svc, Some(std::sync::Arc::clone(&health)), &services)?;
        clickstream::runtime::run(&settings, x, &board, &health, &cancel)
    })
    .await?
}

async fn state(config: Option<&std::path::Path>, cmd: StateCommand) -> Result<ExitCode> {
    use clickstream::sink::objects::S3Objects;
    let c = RawConfig::load(config)?;
    c.validate()?;
    let s = run_settings(&c)?;
    let client = clickstream::s3::client(s.force_path_style).await;
    let objects = S3Objects::new(
        client,
        s.sink.clone(),
        tokio::runtime::Handle::current(),
        CancellationToken::new(),
        std::sync::Arc::default(),
    );
    tokio::task::spawn_blocking(move || match cmd {
        StateCommand::Show { partition } => {
            let split = clickstream::source::kafka::split_id(partition);
            let v = clickstream::runtime::reset::show(&objects, split.as_str())?;
            println!("{}", serde_json::to_string_pretty(&v)?);
            Ok(ExitCode::SUCCESS)
        }
        StateCommand::Reset { partition, reason, from, checkpoint_base, force } => {
            if reason.trim().is_empty() {
                bail!("--reason must say why: it is recorded with the reset");
            }
            let split = clickstream::source::kafka::split_id(partition);
            let position = match from.as_str() {
                "beginning" => None,
                "committed" => clickstream::source::kafka::committed_offset(&s.kafka, partition)
                    .map_err(anyhow::Error::msg)?
                    .map(|o| o.to_string()),
                n => Some(
                    n.parse::<u64>()
                        .with_context(|| {
                            format!("--from {n:?}: committed, beginning or an offset")
                        })?
                        .to_string(),
                ),
            };
            let from = match &position {
                None => "the beginning of the partition".to_owned(),
                Some(p) => format!("offset {p} ({from})"),
            };
            let req = clickstream::runtime::reset::ResetRequest {
                split: split.as_str().to_owned(),
                reason,
                position,
                from,
                checkpoint_base,
                force,
                source: format!("kafka:{}/{partition}", s.kafka.topic),
                settings: clickstream::runtime::settings_fingerprint(&s.pipeline.rules),
            };
            let r = clickstream::runtime::reset::reset(&objects, &req)?;
            println!("{}", String::from_utf8_lossy(&r.to_bytes()));
            Ok(ExitCode::SUCCESS)
        }
    })
    .await?
}

async fn schema(config: Option<&std::path::Path>, cmd: SchemaCommand) -> Result<ExitCode> {
    match cmd {
        SchemaCommand::JsonSchema => {
            print!("{}", clickstream::extract::schema::json_schema());
            Ok(ExitCode::SUCCESS)
        }
        SchemaCommand::Test { path, sample, limit, format } => {
            let report = app::schema_test(&path, &sample, limit)?;
            match format {
                Format::Text => print!("{}", report.to_text(&sample)),
                Format::Json => println!("{}", serde_json::to_string(&report)?),
            }
            Ok(ExitCode::SUCCESS)
        }
        SchemaCommand::Register { paths, registry, schemas, sample, limit, force, reason } => {
            let reg = open_registry(config, registry).await?;
            let dir = match schemas {
                Some(d) => d,
                None => RawConfig::load(config)?.replay.schemas,
            };
            let directory = Directory::read(&dir);
            let sample = match sample {
                Some(s) => Some(app::read_sample(&s, limit)?),
                None => None,
            };
            let mut cs = Vec::new();
            for path in schema_tools::expand(&paths)? {
                let text = std::fs::read(&path)
                    .with_context(|| format!("cannot read schema file {}", path.display()))?;
                cs.push(Candidate {
                    text,
                    label: path,
                    sample: sample.clone(),
                    force,
                    reason: reason.clone(),
                    directory: directory.clone(),
                });
            }
            for outcome in reg.register_many(cs).await? {
                match outcome {
                    (Registered::New(rec), findings) => {
                        for f in &findings {
                            eprintln!("{}: {}: {}", f.severity.name(), f.field, f.message);
                        }
                        let forced = if rec.forced { " (forced)" } else { "" };
                        println!("registered {} in {}{forced}", rec.id(), reg.location());
                    }
                    (Registered::Unchanged(rec), _) => {
                        println!("unchanged: {} already has this text", rec.id());
                    }
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        SchemaCommand::List { registry } => {
            let reg = open_registry(config, registry).await?;
            let current = reg.current().await?;
            let versions = reg.versions().await?;
            println!("{:<24} {:>7}  {:<20}  VERSIONS", "SCHEMA", "LATEST", "REGISTERED");
            for r in &current {
                let all = versions.get(&r.name).map(Vec::len).unwrap_or_default();
                let forced = if r.forced { "  (forced)" } else { "" };
                println!("{:<24} {:>7}  {:<20}  {all}{forced}", r.name, r.version, r.registered_at);
            }
            Ok(ExitCode::SUCCESS)
        }
        SchemaCommand::Show { schema: Some(schema), registry, format, .. } => {
            let reg = open_registry(config, registry).await?;
            let (name, version) = registry::parse_ref(&schema)?;
            let rec = reg.get(&name, version).await?;
            match format {
                None | Some(ShowFormat::Toml | ShowFormat::Text) => print!("{}", rec.source),
                Some(ShowFormat::Json) => println!("{}", serde_json::to_string_pretty(&rec)?),
            }
            Ok(ExitCode::SUCCESS)
        }
        SchemaCommand::Show { schema: None, schemas, registry, format, .. } => {
            show_set(config, schemas, registry, format).await
        }
        SchemaCommand::Diff { from, to, registry } => {
            let reg = open_registry(config, registry).await?;
            let (name, v1) = registry::parse_ref(&from)?;
            let (name2, v2) = match registry::parse_ref(&to)? {
                (n, None) if n.bytes().all(|b| b.is_ascii_digit()) => {
                    (name.clone(), n.parse().ok())
                }
                other => other,
            };
            let a = reg.get(&name, v1).await?;
            let b = reg.get(&name2, v2).await?;
            print!("{}", app::schema_diff(&a, &b)?);
            Ok(ExitCode::SUCCESS)
        }
        SchemaCommand::Explain { sample, line, schemas, format } => {
            schema_explain(config, &sample, line, schemas, format)
        }
        SchemaCommand::Validate { paths, registry } => validate(config, paths, registry).await,
    }
}

/// `clickstream schema show --set`.
async fn show_set(
    config: Option<&std::path::Path>,
    schemas: Option<PathBuf>,
    registry: RegistryArg,
    format: Option<ShowFormat>,
) -> Result<ExitCode> {
    let c = RawConfig::load(config)?;
    let location = registry.registry.unwrap_or_else(|| c.registry.location.clone());
    let (source, loaded) = match schemas {
        Some(dir) => (dir.display().to_string(), schema_tools::load_directory(&dir)?),
        None if !location.is_empty() => {
            let reg = Registry::open(&location, c.s3.force_path_style).await?;
            let records = reg.current().await?;
            if records.is_empty() {
                bail!("no schema in registry {location}");
            }
            (format!("registry {location}"), schema_tools::load_records(&records)?)
        }
        None => (
            c.replay.schemas.display().to_string(),
            schema_tools::load_directory(&c.replay.schemas)?,
        ),
    };
    let set = schema_tools::merged_set(loaded)?;
    match format {
        Some(ShowFormat::Json) => println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({ "source": source, "set": set }))?
        ),
        _ => print!("merged set of {source}\n\n{}", set.to_text()),
    }
    Ok(ExitCode::SUCCESS)
}

/// `clickstream schema validate`.
async fn validate(
    config: Option<&std::path::Path>,
    paths: Vec<PathBuf>,
    registry: Option<String>,
) -> Result<ExitCode> {
    let paths = if paths.is_empty() { vec![PathBuf::from("schemas")] } else { paths };
    let records = match &registry {
        Some(location) => {
            let c = RawConfig::load(config)?;
            let reg = Registry::open(location, c.s3.force_path_style).await?;
            Some(reg.current().await?)
        }
        None => None,
    };
    let mut ok = true;
    for p in &paths {
        if p.is_file() {
            let judged = match (&records, &registry) {
                (Some(r), Some(l)) => schema_tools::validate_in_registry(p, r, l),
                _ => schema_tools::validate_in_directory(p),
            };
            if judged.ok() {
                print!("{}", judged.to_text());
            } else {
                ok = false;
                eprint!("{}", judged.to_text());
            }
            continue;
        }
        if registry.is_some() {
            bail!(
                "{}: --registry judges one schema file within the registry's set; give a file",
                p.display()
            );
        }
        match Extractor::load(p) {
            Ok(x) => println!("{}: ok ({})", p.display(), x.versions()),
            Err(e) => {
                ok = false;
                print_schema_errors(&e.0);
            }
        }
    }
    Ok(if ok { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// Every schema error on a line of its own, `FILE:LINE:COL: FIELD: MESSAGE`, then a count: the
/// same from every command.
fn print_schema_errors(errs: &[clickstream::extract::schema::SchemaError]) {
    for e in errs {
        eprintln!("{e}");
    }
    eprintln!("clickstream: {}", schema_tools::count(errs.len()));
}

fn schema_explain(
    config: Option<&std::path::Path>,
    sample: &str,
    line: u64,
    schemas: Option<PathBuf>,
    format: Format,
) -> Result<ExitCode> {
    let c = RawConfig::load(config)?;
    let path = schemas.unwrap_or_else(|| c.replay.schemas.clone());
    let x = std::sync::Arc::new(Extractor::load(&path)?);
    let reader = app::sample_reader(sample)?;
    let e = clickstream::explain::explain(&x, rules(&c), reader, line)
        .with_context(|| format!("explaining line {line} of {sample}"))?;
    match format {
        Format::Text => print!("{}", e.to_text(sample)),
        Format::Json => println!("{}", serde_json::to_string(&e)?),
    }
    Ok(ExitCode::SUCCESS)
}

async fn open_registry(config: Option<&std::path::Path>, arg: RegistryArg) -> Result<Registry> {
    let c = RawConfig::load(config)?;
    let location = arg.registry.unwrap_or(c.registry.location);
    if location.is_empty() {
        bail!(
            "no registry given: --registry DIR|s3://BUCKET/PREFIX, or registry.location in the config"
        );
    }
    Ok(Registry::open(&location, c.s3.force_path_style).await?)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let logs = clickstream::telemetry::init();
    // Installed before anything counts, so that no early increment is lost.
    let _ = clickstream::telemetry::metrics();
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
            match e.chain().find_map(schema_tools::schema_errors) {
                Some(errs) => print_schema_errors(&errs),
                None => eprintln!("clickstream: {e:#}"),
            }
            ExitCode::FAILURE
        }
    }
}
