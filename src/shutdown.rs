//! Signals -> shutdown: the first SIGTERM or SIGINT starts a drain.

use std::future::Future;

/// Installs the SIGTERM and SIGINT handlers now (call inside the runtime, before slow start-up
/// work, so a signal during model loading also drains instead of killing the process) and returns
/// a future that resolves on the first of them.
pub fn signal() -> impl Future<Output = ()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).expect("installing the SIGTERM handler");
        let mut int = signal(SignalKind::interrupt()).expect("installing the SIGINT handler");
        async move {
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM: draining"),
                _ = int.recv() => tracing::info!("SIGINT: draining"),
            }
        }
    }
    #[cfg(not(unix))]
    {
        async {
            let _ = tokio::signal::ctrl_c().await;
            tracing::info!("Ctrl-C: draining");
        }
    }
}
