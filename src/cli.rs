//! The command line: every subcommand with its flags and their help texts.

use clap::{Parser, Subcommand};
use clickstream::app;
use clickstream::config::RawConfig;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Parser)]
#[command(
    name = "clickstream",
    version,
    about = "Raw clickstream JSON → per-customer session aggregates."
)]
pub(crate) struct Cli {
    /// Configuration file (TOML) over the built-in defaults (see config/default.toml).
    #[arg(long, value_name = "FILE", global = true)]
    pub(crate) config: Option<PathBuf>,
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
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
    /// `{"records","bytes","skipped","fallback_keyed","failed","too_large","seconds","rate"}`,
    /// and for Kinesis `"shards":{ID:{"records","last"}}` (the highest sequence number per shard);
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
pub(crate) enum StateCommand {
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
pub(crate) struct ReplayArgs {
    /// Schema directory or file [default: schemas].
    #[arg(long, value_name = "DIR", conflicts_with = "registry")]
    pub(crate) schemas: Option<PathBuf>,
    /// Schema registry (directory or `s3://bucket/prefix`): use its latest versions and pick up
    /// new ones while running.
    #[arg(long, value_name = "LOCATION")]
    pub(crate) registry: Option<String>,
    /// Keep reading the last input as it grows, until SIGINT or SIGTERM. A file truncated or
    /// replaced (rotated) at its path is followed anew from its start; `-` (stdin) ends when
    /// its writer closes the pipe.
    #[arg(long)]
    pub(crate) follow: bool,
    /// Names the stream on stdin (-) so that a replay of it can be resumed: on a resume under
    /// the same name, stdin is taken to be the same stream fed again from its start, and the
    /// bytes the checkpoint had read are skipped. Without it a replay of stdin cannot resume.
    #[arg(long, value_name = "NAME")]
    pub(crate) stdin_id: Option<String>,
    /// Serve the admin API (schemas, /healthz, /metrics) on this address, e.g. 127.0.0.1:8081.
    #[arg(long, value_name = "ADDR")]
    pub(crate) admin_listen: Option<String>,
    /// `RocksDB` state directory [default: OUTPUT/_state].
    #[arg(long, value_name = "DIR")]
    pub(crate) state: Option<PathBuf>,
    /// Output directory, or `s3://bucket/prefix` (then --state is needed) [default: out].
    #[arg(long, value_name = "DIR|S3")]
    pub(crate) output: Option<PathBuf>,
    /// How late an event may arrive and still count [default: 6h].
    #[arg(long, value_name = "DURATION", value_parser = app::parse_duration)]
    pub(crate) allowed_lateness: Option<Duration>,
    /// Inactivity gap that ends a session [default: 30m].
    #[arg(long, value_name = "DURATION", value_parser = app::parse_duration)]
    pub(crate) gap: Option<Duration>,
    /// How long message ids are remembered for dedup [default: 24h, at least the lateness].
    #[arg(long, value_name = "DURATION", value_parser = app::parse_duration)]
    pub(crate) dedup_horizon: Option<Duration>,
    /// Dead-letter events stamped more than this far ahead of the wall clock as
    /// `future_timestamp` [default: 1d; 0s: no bound].
    #[arg(long, value_name = "DURATION", value_parser = app::parse_duration)]
    pub(crate) max_future: Option<Duration>,
    /// Lines between checkpoints [default: 100000].
    #[arg(long, value_name = "N")]
    pub(crate) checkpoint_every: Option<u64>,
    /// What state may hold in memory, e.g. 64MiB [default: 512MiB, or `state.memory_budget`].
    #[arg(long, value_name = "SIZE", value_parser = clickstream::config::parse_size)]
    pub(crate) memory_budget: Option<u64>,
    /// Wall time between checkpoints, e.g. 1s [default: off].
    #[arg(long, value_name = "DURATION", value_parser = app::parse_duration)]
    pub(crate) checkpoint_interval: Option<Duration>,
    /// Threads that decode and extract lines; the output is the same whatever the number
    /// [default: one per core this process may use].
    #[arg(long, value_name = "N")]
    pub(crate) workers: Option<usize>,
    /// How inputs are cut into records: `lines` (JSON Lines), `concatenated` (JSON values back
    /// to back, any whitespace or none between them, as Kinesis Data Firehose writes them) or
    /// `auto` (decided per input from its first bytes) [default: lines for files, and for an
    /// archive's objects named .jsonl or .ndjson; auto for its other objects].
    #[arg(long, value_name = "FRAMING")]
    pub(crate) framing: Option<clickstream::source::replay::Framing>,
    /// Read only the objects of an archive from this time on: by the hour their key names
    /// (`…/YYYY/MM/DD/HH/…`, kept when it overlaps), else by when they were last written. E.g.
    /// 2026-11-30T13, 2026-11-30T13:05:00Z, 2026/11/30/13.
    #[arg(long, value_name = "TIME", value_parser = clickstream::source::replay::archive::parse_time)]
    pub(crate) from: Option<i64>,
    /// Read only the objects of an archive before this time (see --from).
    #[arg(long, value_name = "TIME", value_parser = clickstream::source::replay::archive::parse_time)]
    pub(crate) to: Option<i64>,
    /// Inputs, read in order: files (.jsonl, gzip-compressed or not), - for stdin, or archives:
    /// a directory or `s3://bucket/prefix`, whose objects are read in key order (recursively).
    #[arg(value_name = "INPUT", required = true)]
    pub(crate) inputs: Vec<String>,
}

/// A Kafka topic or a Kinesis stream: what `produce` feeds and `record` captures.
#[derive(Debug, clap::Args)]
pub(crate) struct StreamArgs {
    /// The Kafka topic.
    #[arg(
        long,
        value_name = "TOPIC",
        required_unless_present = "kinesis_stream",
        conflicts_with = "kinesis_stream"
    )]
    pub(crate) kafka_topic: Option<String>,
    /// Kafka bootstrap servers [default: kafka.brokers of the config]; librdkafka properties
    /// come from [kafka.properties].
    #[arg(long, value_name = "BROKERS")]
    pub(crate) brokers: Option<String>,
    /// The Kinesis stream (client from the AWS environment, e.g. `AWS_ENDPOINT_URL_KINESIS`).
    #[arg(long, value_name = "STREAM")]
    pub(crate) kinesis_stream: Option<String>,
}

#[derive(Debug, clap::Args)]
pub(crate) struct ProduceArgs {
    /// The topic or stream to produce into.
    #[command(flatten)]
    pub(crate) stream: StreamArgs,
    /// The record key (Kafka) or partition key (Kinesis): `customer` (the customer id as the
    /// schemas extract it), a `JSONPath` such as `$.user.id`, or `none`. A line where the key is
    /// not found is sent under a stable fallback key: the lowercase hex MD5 of its bytes
    /// (counted as `fallback_keyed`).
    #[arg(long, value_name = "customer|none|JSONPATH", default_value = "customer")]
    pub(crate) key: clickstream::produce::Key,
    /// Records per second (`5000/s`), minute (`300/m`) or hour [default: as fast as it goes].
    #[arg(long, value_name = "N/s")]
    pub(crate) rate: Option<clickstream::produce::Rate>,
    /// Skip empty lines (counted as `skipped`) instead of sending each as an empty record,
    /// which the pipeline dead-letters `empty_line`.
    #[arg(long)]
    pub(crate) skip_empty: bool,
    /// KPL-aggregate the records of one partition key into one Kinesis record (Kinesis only).
    #[arg(long, requires = "kinesis_stream")]
    pub(crate) aggregate: bool,
    /// How inputs are cut into records, as for replay: `lines`, `concatenated` or `auto`.
    #[arg(long, value_name = "FRAMING")]
    pub(crate) framing: Option<clickstream::source::replay::Framing>,
    /// Schema directory or file, for --key customer [default: schemas].
    #[arg(long, value_name = "DIR")]
    pub(crate) schemas: Option<PathBuf>,
    /// Inputs, as replay reads them: files, - for stdin, a directory or `s3://bucket/prefix`.
    #[arg(value_name = "INPUT", required = true)]
    pub(crate) inputs: Vec<String>,
}

#[derive(Debug, clap::Args)]
pub(crate) struct RecordArgs {
    /// The topic or stream to capture.
    #[command(flatten)]
    pub(crate) stream: StreamArgs,
    /// Where the files go: a directory or `s3://bucket/prefix`.
    #[arg(long, value_name = "DIR|S3")]
    pub(crate) output: String,
    /// Kafka partitions to capture, e.g. 0,3 [default: all].
    #[arg(long, value_name = "N,N", value_delimiter = ',', conflicts_with = "kinesis_stream")]
    pub(crate) partitions: Vec<i32>,
    /// Kinesis shards to capture [default: all].
    #[arg(long, value_name = "ID,ID", value_delimiter = ',', conflicts_with = "kafka_topic")]
    pub(crate) shards: Vec<String>,
    /// Start each partition at this offset [default: the earliest kept].
    #[arg(long, value_name = "N", conflicts_with_all = ["kinesis_stream", "from_time"])]
    pub(crate) from_offset: Option<i64>,
    /// End each partition before this offset [default: the high watermark at start].
    #[arg(long, value_name = "N", conflicts_with_all = ["kinesis_stream", "to_time"])]
    pub(crate) to_offset: Option<i64>,
    /// Start shards at these sequence numbers (`AT_SEQUENCE_NUMBER`): SHARD=SEQUENCE entries, or
    /// one bare sequence with one shard; other shards start at the trim horizon.
    #[arg(
        long,
        value_name = "SHARD=SEQ",
        value_delimiter = ',',
        conflicts_with_all = ["kafka_topic", "from_time"]
    )]
    pub(crate) from_sequence: Vec<String>,
    /// Start at the first record stamped (Kafka) or arrived (Kinesis) at or after this time
    /// (2026-11-30T13:05:00Z, 2026-11-30T13, 2026-11-30; UTC unless an offset is given).
    #[arg(long, value_name = "TIME", value_parser = clickstream::source::replay::archive::parse_time)]
    pub(crate) from_time: Option<i64>,
    /// End before the first record stamped or arrived at or after this time (see --from-time)
    /// [Kinesis default: when a shard is closed or caught up with].
    #[arg(long, value_name = "TIME", value_parser = clickstream::source::replay::archive::parse_time)]
    pub(crate) to_time: Option<i64>,
    /// Input bytes per file before the next file starts.
    #[arg(long, value_name = "SIZE", default_value = "64MiB", value_parser = clickstream::config::parse_size)]
    pub(crate) roll: u64,
}

impl RecordArgs {
    /// The capture these arguments and the config (`[kafka]`, `[s3]`) ask for.
    pub(crate) fn settings(self, c: &RawConfig) -> clickstream::record::Settings {
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
pub(crate) enum SchemaCommand {
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
pub(crate) struct RegistryArg {
    /// Registry: a directory or `s3://bucket/prefix` [default: registry.location of the config].
    #[arg(long, value_name = "LOCATION")]
    pub(crate) registry: Option<String>,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub(crate) enum ShowFormat {
    /// The schema file.
    Toml,
    /// Tables for a terminal (--set).
    Text,
    /// The stored record.
    Json,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub(crate) enum Format {
    /// Aligned tables for a terminal.
    Text,
    /// One JSON object.
    Json,
}
