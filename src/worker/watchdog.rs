//! Notices an engine that hangs: a batch still running after `batching.stall_after` and after 20
//! times its expected time (its tokens at the measured rate) makes `/healthz` fail, so the
//! orchestrator restarts the worker. Nothing of that batch has been acknowledged, so its documents
//! are redelivered to the next worker.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use crate::telemetry::backlog::Backlog;
use crate::telemetry::health::Health;

/// How many times its expected time a batch may take.
const SLACK: f64 = 20.0;

/// The engine's current batch, as the watchdog sees it.
#[derive(Debug)]
pub struct Watchdog {
    busy: Mutex<Option<(Instant, Duration)>>,
    floor: Duration,
    backlog: Arc<Backlog>,
    health: Arc<Health>,
}

impl Watchdog {
    /// A watchdog allowing each batch at least `floor`.
    pub fn new(floor: Duration, backlog: Arc<Backlog>, health: Arc<Health>) -> Self {
        Self {
            busy: Mutex::new(None),
            floor,
            backlog,
            health,
        }
    }

    /// A batch of `tokens` document tokens went to the engine.
    pub fn started(&self, tokens: usize) {
        let expected = self
            .backlog
            .tokens_per_second()
            .filter(|r| *r > 0.0)
            .map_or(Duration::ZERO, |r| {
                Duration::from_secs_f64((SLACK * tokens as f64 / r).min(1e6))
            });
        *self.busy.lock().expect("watchdog lock") =
            Some((Instant::now(), self.floor.max(expected)));
    }

    /// The engine returned a batch.
    pub fn finished(&self) {
        *self.busy.lock().expect("watchdog lock") = None;
        self.health.stalled(None);
    }

    /// Checks the running batch every `every` until `stop` turns true.
    pub async fn run(self: Arc<Self>, every: Duration, mut stop: watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(every);
        loop {
            tokio::select! {
                _ = tick.tick() => self.check(),
                _ = stop.changed() => return,
            }
        }
    }

    fn check(&self) {
        let busy = *self.busy.lock().expect("watchdog lock");
        if let Some((since, bound)) = busy {
            let running = since.elapsed();
            if running > bound {
                self.health.stalled(Some(format!(
                    "an engine batch has run {:.0} s (bound {:.0} s)",
                    running.as_secs_f64(),
                    bound.as_secs_f64()
                )));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_batch_past_its_bound_fails_liveness_until_it_returns() {
        let health = Arc::new(Health::default());
        let backlog = Arc::new(Backlog::default());
        let w = Arc::new(Watchdog::new(
            Duration::from_secs(10),
            backlog.clone(),
            health.clone(),
        ));
        let (_stop_tx, stop) = watch::channel(false);
        tokio::spawn(w.clone().run(Duration::from_secs(1), stop));
        w.started(100);
        tokio::time::sleep(Duration::from_secs(9)).await;
        assert!(health.liveness().is_ok(), "within the floor");
        tokio::time::sleep(Duration::from_secs(3)).await;
        let why = health.liveness().unwrap_err();
        assert!(why.contains("bound 10 s"), "{why}");
        w.finished();
        assert!(health.liveness().is_ok());
        // A measured rate of 10 tokens/s: 1000 tokens are expected to take 100 s, so the bound
        // is 20 × that, not the floor.
        backlog.batch(1, 10, Duration::from_secs(1));
        w.started(1000);
        tokio::time::sleep(Duration::from_secs(1000)).await;
        assert!(
            health.liveness().is_ok(),
            "a long batch within 20 × its expected time"
        );
        tokio::time::sleep(Duration::from_secs(1002)).await;
        assert!(health.liveness().is_err());
    }
}
