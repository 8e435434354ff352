//! Configuration: `config/default.toml` (built in) ← `--config FILE` ← `CLICKSTREAM__…` env ←
//! command-line flags. Unknown keys are errors; cross-field rules are checked in
//! [`RawConfig::validate`].

use figment::Figment;
use figment::providers::{Env, Format, Toml};
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::time::Duration;
use thiserror::Error;

/// The built-in defaults.
pub const DEFAULT_TOML: &str = include_str!("../config/default.toml");

/// A configuration problem.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// Unreadable file, unknown key, wrong type.
    #[error("{0}")]
    Load(String),
    /// A rule across fields is broken.
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

/// Everything configurable, as read.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// Sessionization.
    pub session: SessionConfig,
    /// Checkpoints.
    pub checkpoint: CheckpointConfig,
    /// Replay defaults.
    pub replay: ReplayConfig,
    /// Schema registry.
    pub registry: RegistryConfig,
    /// S3 client settings.
    pub s3: S3Config,
    /// Admin API.
    pub admin: AdminConfig,
    /// Which source `run` reads.
    pub source: SourceConfig,
    /// Kinesis source of `run`.
    pub kinesis: KinesisConfig,
    /// Kafka source of `run`.
    pub kafka: KafkaConfig,
    /// Sink of `run`.
    pub sink: SinkConfig,
    /// `run` settings.
    pub run: RunConfig,
    /// State store settings.
    pub state: StateConfig,
}

/// `[state]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateConfig {
    /// Bytes state may hold in memory.
    #[serde(deserialize_with = "bytes")]
    pub memory_budget: u64,
}

/// A size: a number of bytes, or a string such as `512MiB`, `2GiB`, `64KiB`.
fn bytes<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Size {
        N(u64),
        S(String),
    }
    match Size::deserialize(d)? {
        Size::N(n) => Ok(n),
        Size::S(s) => parse_size(&s).map_err(serde::de::Error::custom),
    }
}

/// Parses `512MiB`, `2GiB`, `64KiB` or a plain number of bytes.
///
/// # Errors
/// Not a size.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num.parse().map_err(|_| format!("`{s}` is not a size like 512MiB"))?;
    let mult = match unit.trim() {
        "" | "B" => 1,
        "KiB" | "K" | "KB" => 1 << 10,
        "MiB" | "M" | "MB" => 1 << 20,
        "GiB" | "G" | "GB" => 1 << 30,
        _ => return Err(format!("`{s}`: the unit must be B, KiB, MiB or GiB")),
    };
    n.checked_mul(mult).ok_or_else(|| format!("`{s}` is too large"))
}

/// `[source]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    /// The source's kind.
    pub kind: SourceKind,
}

/// Which source `run` reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SourceKind {
    /// Kafka, with a consumer group.
    Kafka,
    /// Kinesis Data Streams, with a DynamoDB lease table.
    Kinesis,
}

/// Where a Kinesis shard without a lease starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InitialPosition {
    /// The oldest record kept.
    TrimHorizon,
    /// Records put from the start on.
    Latest,
    /// Records put at or after `kinesis.at_timestamp`.
    AtTimestamp,
}

/// `[kinesis]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KinesisConfig {
    /// Stream name or ARN.
    pub stream: String,
    /// DynamoDB lease table.
    pub lease_table: String,
    /// Start of a shard without a lease.
    pub initial_position: InitialPosition,
    /// RFC 3339 time for `at_timestamp`.
    pub at_timestamp: String,
    /// Wait after an empty response at the tip.
    #[serde(with = "humantime_serde")]
    pub idle_poll: Duration,
    /// Records per `GetRecords`.
    pub max_records: u32,
    /// Lease failover time.
    #[serde(with = "humantime_serde")]
    pub lease_duration: Duration,
    /// Shard list period.
    #[serde(with = "humantime_serde")]
    pub shard_sync: Duration,
    /// Name in the lease table.
    pub worker_id: String,
}

/// `[kafka]`.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// Bootstrap servers.
    pub brokers: String,
    /// Topic.
    pub topic: String,
    /// Consumer group.
    pub group: String,
    /// Extra librdkafka properties.
    #[serde(default)]
    pub properties: std::collections::BTreeMap<String, String>,
}

impl std::fmt::Debug for KafkaConfig {
    // Properties may hold credentials (sasl.password): names only.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaConfig")
            .field("brokers", &self.brokers)
            .field("topic", &self.topic)
            .field("group", &self.group)
            .field("properties", &self.properties.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// `[sink]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SinkConfig {
    /// `s3://bucket/prefix`.
    pub location: String,
    /// Format of the session rows.
    pub format: SinkFormat,
    /// Kafka topic for copies of the dead letters; empty: none.
    pub dead_letter_topic: String,
}

/// How session rows are written to S3.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum SinkFormat {
    /// Gzip JSON Lines.
    #[serde(rename = "jsonl-gz")]
    JsonlGz,
    /// Parquet.
    #[serde(rename = "parquet")]
    Parquet,
}

/// `[run]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunConfig {
    /// Local state root.
    pub state: PathBuf,
    /// Wall time between checkpoints.
    #[serde(with = "humantime_serde")]
    pub checkpoint_interval: Duration,
    /// Input bytes of one partition that trigger its checkpoint early.
    pub checkpoint_bytes: u64,
    /// Close a quiet partition's sessions after this long.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Time allowed for the final checkpoint on a signal.
    #[serde(with = "humantime_serde")]
    pub shutdown_deadline: Duration,
    /// How long a revoke callback waits for the splits' final checkpoints (below the session
    /// timeout).
    #[serde(with = "humantime_serde")]
    pub revoke_deadline: Duration,
    /// State snapshots kept per split, the committed one included.
    pub keep_snapshots: usize,
    /// Exit after S3 has refused requests (access denied, no such bucket) for this long.
    #[serde(with = "humantime_serde")]
    pub permanent_error_deadline: Duration,
    /// A consumer without progress for this long while there is data is reported stuck.
    #[serde(with = "humantime_serde")]
    pub liveness_timeout: Duration,
    /// Resume split state written with other session settings (an operator's decision).
    pub allow_settings_change: bool,
}

/// `[registry]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistryConfig {
    /// Directory or `s3://bucket/prefix`; empty: no registry.
    pub location: String,
    /// How often to look for new versions.
    #[serde(with = "humantime_serde")]
    pub poll_interval: Duration,
}

/// `[s3]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct S3Config {
    /// Path-style addressing.
    pub force_path_style: bool,
}

/// `[admin]`.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// Listen address; empty: off.
    pub listen: String,
    /// Bearer token for the schema routes; empty: none. At least 32 bytes when given.
    pub token: String,
    /// Largest body of a route without a sample, and of each multipart field but `sample`.
    #[serde(deserialize_with = "bytes")]
    pub max_body: u64,
    /// Largest `sample` of `/schemas/test`, `/schemas/explain` and `/schemas/register`.
    #[serde(deserialize_with = "bytes")]
    pub max_sample_bytes: u64,
    /// Most lines in such a `sample`.
    pub max_sample_lines: u64,
    /// Schema requests served at once; more are answered 503.
    pub max_concurrency: usize,
}

impl AdminConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if !self.listen.is_empty() && self.listen.parse::<std::net::SocketAddr>().is_err() {
            return Err(ConfigError::Invalid(format!(
                "admin.listen = {:?} is not an address like 127.0.0.1:8081",
                self.listen
            )));
        }
        if self.max_body == 0
            || self.max_sample_bytes == 0
            || self.max_sample_lines == 0
            || self.max_concurrency == 0
        {
            return Err(ConfigError::Invalid(
                "admin.max_body, admin.max_sample_bytes, admin.max_sample_lines and admin.max_concurrency must be above zero".into(),
            ));
        }
        Ok(())
    }
}

impl std::fmt::Debug for AdminConfig {
    // The token is a secret: never in logs or error messages.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminConfig")
            .field("listen", &self.listen)
            .field("token", &if self.token.is_empty() { "" } else { "<redacted>" })
            .field("max_body", &self.max_body)
            .field("max_sample_bytes", &self.max_sample_bytes)
            .field("max_sample_lines", &self.max_sample_lines)
            .field("max_concurrency", &self.max_concurrency)
            .finish()
    }
}

/// `[session]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionConfig {
    /// Inactivity gap that ends a session.
    #[serde(with = "humantime_serde")]
    pub gap: Duration,
    /// How late an event may arrive.
    #[serde(with = "humantime_serde")]
    pub allowed_lateness: Duration,
    /// How long message ids are remembered.
    #[serde(with = "humantime_serde")]
    pub dedup_horizon: Duration,
    /// How far ahead of the wall clock an event time may be ("0s": no bound).
    #[serde(with = "humantime_serde")]
    pub max_future: Duration,
}

/// `[checkpoint]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckpointConfig {
    /// Lines between checkpoints (0: never by count).
    pub every_lines: u64,
    /// Wall time between checkpoints (0: never by time).
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
}

/// `[replay]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplayConfig {
    /// Schema directory or file.
    pub schemas: PathBuf,
    /// Output directory.
    pub output: PathBuf,
    /// State directory (empty: `OUTPUT/_state`).
    pub state: PathBuf,
    /// Threads that decode and extract lines (0: one per core this process may use).
    pub workers: usize,
}

impl RawConfig {
    /// Loads defaults, then `file`, then the environment.
    ///
    /// # Errors
    /// The file is missing or invalid, or a key is unknown or of the wrong type.
    pub fn load(file: Option<&Path>) -> Result<RawConfig, ConfigError> {
        let mut fig = Figment::from(Toml::string(DEFAULT_TOML));
        if let Some(f) = file {
            if !f.is_file() {
                return Err(ConfigError::Load(format!(
                    "config file {} does not exist",
                    f.display()
                )));
            }
            fig = fig.merge(Toml::file_exact(f));
        }
        fig = fig.merge(Env::prefixed("CLICKSTREAM__").split("__"));
        fig.extract().map_err(|e| ConfigError::Load(format!("configuration: {e}")))
    }

    /// Checks rules across fields.
    ///
    /// # Errors
    /// A broken rule, named.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let s = &self.session;
        if s.gap.is_zero() {
            return Err(ConfigError::Invalid("session.gap must be above zero".into()));
        }
        if s.dedup_horizon < s.allowed_lateness {
            return Err(ConfigError::Invalid(format!(
                "session.dedup_horizon ({}) must be at least session.allowed_lateness ({}), or duplicates could slip through",
                humantime::format_duration(s.dedup_horizon),
                humantime::format_duration(s.allowed_lateness)
            )));
        }
        for (name, d) in [
            ("gap", s.gap),
            ("allowed_lateness", s.allowed_lateness),
            ("dedup_horizon", s.dedup_horizon),
        ] {
            if d > Duration::from_hours(87600) {
                return Err(ConfigError::Invalid(format!("session.{name} is over ten years")));
            }
        }
        if self.registry.poll_interval.is_zero() {
            return Err(ConfigError::Invalid("registry.poll_interval must be above zero".into()));
        }
        self.admin.validate()?;
        let r = &self.run;
        if r.keep_snapshots == 0 {
            return Err(ConfigError::Invalid(
                "run.keep_snapshots must be at least 1 (the committed one)".into(),
            ));
        }
        let session = self
            .kafka
            .properties
            .get("session.timeout.ms")
            .and_then(|v| v.parse::<u64>().ok())
            .map_or(Duration::from_secs(10), Duration::from_millis);
        if r.revoke_deadline >= session {
            return Err(ConfigError::Invalid(format!(
                "run.revoke_deadline ({}) must be below the consumer's session timeout ({}): a revoke that outlasts it stalls the group",
                humantime::format_duration(r.revoke_deadline),
                humantime::format_duration(session)
            )));
        }
        if self.source.kind == SourceKind::Kinesis {
            let k = &self.kinesis;
            if k.stream.is_empty() {
                return Err(ConfigError::Invalid(
                    "source.kind = \"kinesis\" needs kinesis.stream (a name or an ARN)".into(),
                ));
            }
            if !(1..=10_000).contains(&k.max_records) {
                return Err(ConfigError::Invalid("kinesis.max_records must be 1..=10000".into()));
            }
            if k.lease_duration < Duration::from_secs(1) {
                return Err(ConfigError::Invalid(
                    "kinesis.lease_duration must be at least 1s".into(),
                ));
            }
            if k.initial_position == InitialPosition::AtTimestamp
                && humantime::parse_rfc3339_weak(&k.at_timestamp).is_err()
            {
                return Err(ConfigError::Invalid(format!(
                    "kinesis.initial_position = \"at_timestamp\" needs kinesis.at_timestamp as an RFC 3339 time, not {:?}",
                    k.at_timestamp
                )));
            }
            if !self.sink.dead_letter_topic.is_empty() {
                return Err(ConfigError::Invalid(
                    "sink.dead_letter_topic is a Kafka topic: it needs source.kind = \"kafka\""
                        .into(),
                ));
            }
        }
        if r.checkpoint_bytes > 1 << 30 {
            return Err(ConfigError::Invalid("run.checkpoint_bytes is over 1 GiB: a checkpoint's objects must stay well below S3's 5 GB single-put limit".into()));
        }
        if self.state.memory_budget < crate::state::rocksdb::MemoryBudget::MIN {
            return Err(ConfigError::Invalid(format!(
                "state.memory_budget is {} bytes: it must be at least 16MiB",
                self.state.memory_budget
            )));
        }
        if self.checkpoint.every_lines == 0 && self.checkpoint.interval.is_zero() {
            return Err(ConfigError::Invalid("checkpoint.every_lines and checkpoint.interval are both 0: no checkpoint would ever be taken".into()));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_load_and_validate() {
        let c = RawConfig::load(None).unwrap();
        c.validate().unwrap();
        assert_eq!(c.session.gap, Duration::from_mins(30));
        assert_eq!(c.checkpoint.every_lines, 100_000);
    }

    #[test]
    fn unknown_keys_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("c.toml");
        std::fs::write(&f, "[session]\ngapp = \"1m\"\n").unwrap();
        let e = RawConfig::load(Some(&f)).unwrap_err().to_string();
        assert!(e.contains("gapp"), "{e}");
    }

    #[test]
    fn kafka_secrets_are_never_printed() {
        let mut c = RawConfig::load(None).unwrap();
        c.kafka.properties.insert("sasl.password".into(), "hunter2".into());
        let shown = format!("{c:?}");
        assert!(shown.contains("sasl.password") && !shown.contains("hunter2"));
    }

    #[test]
    fn the_admin_token_is_never_printed() {
        let mut c = RawConfig::load(None).unwrap();
        c.admin.token = "s3cret".into();
        assert!(!format!("{c:?}").contains("s3cret"));
    }

    #[test]
    fn admin_limits_have_defaults_and_zero_is_refused() {
        let mut c = RawConfig::load(None).unwrap();
        assert_eq!(c.admin.max_sample_bytes, 64 << 20);
        assert_eq!((c.admin.max_body, c.admin.max_concurrency), (1 << 20, 4));
        c.admin.max_concurrency = 0;
        assert!(c.validate().unwrap_err().to_string().contains("admin.max_concurrency"));
    }

    #[test]
    fn horizon_below_lateness_is_refused() {
        let mut c = RawConfig::load(None).unwrap();
        c.session.dedup_horizon = Duration::from_mins(1);
        assert!(c.validate().unwrap_err().to_string().contains("dedup_horizon"));
    }
}
