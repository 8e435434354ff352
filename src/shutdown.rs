//! SIGTERM / SIGINT → one root [`CancellationToken`]. Containers send SIGTERM, terminals SIGINT;
//! both ask for the same orderly stop: stop reading, commit a checkpoint, exit.

use tokio_util::sync::CancellationToken;
use tracing::warn;

/// Cancels `token` on the first SIGTERM or SIGINT.
pub fn install(token: CancellationToken) {
    tokio::spawn(async move {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            let (Ok(mut term), Ok(mut int)) =
                (signal(SignalKind::terminate()), signal(SignalKind::interrupt()))
            else {
                warn!(
                    "Cannot install signal handlers; stop with SIGKILL loses at most one checkpoint interval."
                );
                return;
            };
            tokio::select! {
                _ = term.recv() => warn!("SIGTERM: stopping after the next checkpoint."),
                _ = int.recv() => warn!("SIGINT: stopping after the next checkpoint."),
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
        token.cancel();
    });
}
