//! The `clickstream` command line.

use anyhow::{Context, Result, bail};
use clap::Parser as _;
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

mod cli;

use cli::{Cli, Command, Format, RegistryArg, ReplayArgs, SchemaCommand, ShowFormat, StateCommand};

/// Exit code after a signal stopped a run at a checkpoint (as shells report SIGINT).
const EXIT_INTERRUPTED: u8 = 130;

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
                skip_empty: a.skip_empty,
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
