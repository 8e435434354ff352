//! Logging: to stderr, human-readable on a terminal, JSON lines otherwise (for log collectors).
//! The level comes from `RUST_LOG` (default `info`). While a progress bar is shown, log lines
//! are printed above it instead of through it. Also the metrics recorder, and what the process
//! measures of its own scheduling.

use indicatif::ProgressBar;
use std::io::{self, IsTerminal, Write};
use std::sync::{Arc, Mutex, PoisonError};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;

/// Where log lines go: stderr, around the progress bar when one is attached.
#[derive(Clone, Default, Debug)]
pub struct LogWriter {
    bar: Arc<Mutex<Option<ProgressBar>>>,
}

impl LogWriter {
    /// Routes log lines around `bar` until [`LogWriter::detach`].
    pub fn attach(&self, bar: &ProgressBar) {
        *self.bar.lock().unwrap_or_else(PoisonError::into_inner) = Some(bar.clone());
    }

    /// Stops routing around the bar.
    pub fn detach(&self) {
        *self.bar.lock().unwrap_or_else(PoisonError::into_inner) = None;
    }
}

/// One log line being written.
pub struct LogLine<'a>(&'a LogWriter);

impl Write for LogLine<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let bar = self.0.bar.lock().unwrap_or_else(PoisonError::into_inner).clone();
        match bar {
            Some(b) if !b.is_hidden() => {
                b.suspend(|| io::stderr().write_all(buf)).map(|()| buf.len())
            }
            _ => io::stderr().write_all(buf).map(|()| buf.len()),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        io::stderr().flush()
    }
}

impl<'a> MakeWriter<'a> for LogWriter {
    type Writer = LogLine<'a>;

    fn make_writer(&'a self) -> LogLine<'a> {
        LogLine(self)
    }
}

/// Installs the global subscriber. Call once, early; keep the returned writer to attach a
/// progress bar.
#[must_use]
pub fn init() -> LogWriter {
    let writer = LogWriter::default();
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(writer.clone());
    if io::stderr().is_terminal() {
        builder.init();
    } else {
        builder.json().flatten_event(true).with_current_span(false).init();
    }
    writer
}

static METRICS: std::sync::OnceLock<Option<metrics_exporter_prometheus::PrometheusHandle>> =
    std::sync::OnceLock::new();

/// The Prometheus recorder's handle, installed as the global `metrics` recorder on first use;
/// `None` if another recorder was installed first.
pub fn metrics() -> Option<metrics_exporter_prometheus::PrometheusHandle> {
    METRICS
        .get_or_init(|| {
            metrics_exporter_prometheus::PrometheusBuilder::new().install_recorder().ok()
        })
        .clone()
}

/// Counts a request the admin API refused for a `missing` or `wrong` token, as
/// `clickstream_admin_auth_failures_total{reason}`: a steady rise is someone guessing.
pub fn admin_auth_failed(reason: &'static str) {
    metrics::counter!("clickstream_admin_auth_failures_total", "reason" => reason).increment(1);
}

/// How long the calling thread has waited, runnable, for a CPU since it started (Linux's
/// `/proc/thread-self/schedstat`; `None` elsewhere). A pause measured in wall time includes
/// this wait: on two cores shared with the committer and `RocksDB`'s compactions, the
/// processor is sometimes runnable but not running, and the difference says which it was.
#[must_use]
pub fn run_delay() -> Option<std::time::Duration> {
    let stat = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    let waited = stat.split_ascii_whitespace().nth(1)?.parse().ok()?;
    Some(std::time::Duration::from_nanos(waited))
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_run_delay_is_read_where_linux_gives_it() {
        if std::path::Path::new("/proc/thread-self/schedstat").exists() {
            let first = super::run_delay().expect("schedstat has a run delay");
            let later = super::run_delay().expect("schedstat has a run delay");
            assert!(later >= first, "a thread's wait only grows");
        }
    }
}
