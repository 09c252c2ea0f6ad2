//! The worker's loop: intake (paused during a systemic fault), admitted documents into batches,
//! closed batches to the engine when it is free (live first), endings tallied; then the drain,
//! which stops intake, closes open batches at once and waits, up to the deadline, for every
//! document in flight to be acknowledged.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch, Semaphore};

use super::admit::{Doc, Rejected};
use super::breaker::Breaker;
use super::finish::Ending;
use super::io::Io;
use super::pipeline::Pipeline;
use super::watchdog::Watchdog;
use super::{WorkerReport, LANES};
use crate::engine::thread::Job;
use crate::lane::Lane;
use crate::telemetry::health::Health;
use crate::telemetry::metrics;

/// What the loop drives.
pub(super) struct Parts {
    pub pipe: Pipeline,
    pub health: Arc<Health>,
    pub breaker: Arc<Breaker>,
    pub watchdog: Arc<Watchdog>,
    /// One permit while the engine is free.
    pub engine_free: Arc<Semaphore>,
    pub job_tx: mpsc::Sender<Job<Doc>>,
    /// Raised when the worker cannot go on.
    pub fatal: (
        Arc<watch::Sender<Option<String>>>,
        watch::Receiver<Option<String>>,
    ),
    pub admitted_rx: mpsc::UnboundedReceiver<Result<Doc, Box<Rejected>>>,
    pub retry_rx: mpsc::UnboundedReceiver<Doc>,
    pub end_rx: mpsc::UnboundedReceiver<Ending>,
    /// The task finishing engine outcomes (aborted when the loop ends).
    pub completion: tokio::task::JoinHandle<()>,
    pub drain_deadline: Duration,
}

/// Runs until `shutdown` (or a fatal condition) and the drain that follows end. On return nothing
/// can acknowledge any more: the pipeline and its dead-letter tasks are gone.
pub(super) async fn run(
    parts: Parts,
    io: &mut Io,
    shutdown: impl Future<Output = ()>,
) -> WorkerReport {
    let Parts {
        mut pipe,
        health,
        breaker,
        watchdog,
        engine_free,
        job_tx,
        fatal: (fatal_tx, mut fatal_rx),
        mut admitted_rx,
        mut retry_rx,
        mut end_rx,
        completion,
        drain_deadline,
    } = parts;
    let mut pause_rx = breaker.subscribe();
    let mut report = WorkerReport::default();
    tokio::pin!(shutdown);
    let mut drain_by: Option<tokio::time::Instant> = None;
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    let mut gauges = tokio::time::interval(Duration::from_secs(1));
    loop {
        let batch_due = pipe
            .batcher
            .next_deadline()
            .map(tokio::time::Instant::from_std);
        if drain_by.is_some() && io.intake_rx.is_empty() && !pipe.batcher.is_empty() {
            // Draining and nothing more queued: do not wait for batches to fill.
            let open = pipe.batcher.drain();
            pipe.queue(open);
        }
        // A systemic fault pauses intake (deliveries wait in the channel, holding their slots).
        let paused = breaker.paused_until();
        let stop_reason = tokio::select! {
            _ = &mut shutdown, if drain_by.is_none() => Some(None),
            _ = fatal_rx.changed(), if drain_by.is_none() => Some(fatal_rx.borrow().clone()),
            Some(d) = io.intake_rx.recv(), if paused.is_none() => { pipe.admit(d); None }
            Some(r) = admitted_rx.recv() => { pipe.admitted(r); None }
            _ = tokio::time::sleep_until(paused.unwrap_or_else(far_future)), if paused.is_some() => None,
            Ok(()) = pause_rx.changed() => None,
            Some(doc) = retry_rx.recv() => { pipe.push(doc); None }
            Some(e) = end_rx.recv() => { tally(&mut report, e); None }
            // The engine runs one batch at a time, and the next one (live first) is chosen only
            // when it is free, so a live batch never waits behind a backfill batch chosen early.
            free = engine_free.clone().acquire_owned(), if !pipe.pending.is_empty() => {
                free.expect("the semaphore is never closed").forget();
                let (_, (queue, docs)) = pipe.pending.pop().expect("not empty");
                let ids: Vec<Vec<u32>> = docs.iter().map(|d| d.fitted.ids.clone()).collect();
                watchdog.started(ids.iter().map(Vec::len).sum());
                // The channel is empty when the engine is free: this does not wait.
                if job_tx.send(Job { task: queue / 2, ids, items: docs }).await.is_err() {
                    // The engine thread is gone: nothing more can be classified here. Waiting
                    // batches stay unacknowledged, for the broker to redeliver.
                    while pipe.pending.pop().is_some() {}
                    engine_free.add_permits(1);
                    fatal_tx.send_replace(Some("the engine thread stopped".into()));
                }
                None
            }
            _ = tokio::time::sleep_until(batch_due.unwrap_or_else(far_future)), if batch_due.is_some() => {
                let expired = pipe.batcher.expired(super::pipeline::now());
                pipe.queue(expired);
                None
            }
            _ = gauges.tick() => {
                for lane in LANES {
                    metrics::in_flight(lane, io.slots.taken(lane));
                }
                None
            }
            _ = tick.tick(), if drain_by.is_some() => {
                if LANES.iter().all(|&l| io.slots.taken(l) == 0) {
                    break;
                }
                None
            }
            _ = tokio::time::sleep_until(drain_by.unwrap_or_else(far_future)), if drain_by.is_some() => {
                report.abandoned = LANES.iter().map(|&l| io.slots.taken(l)).sum();
                tracing::warn!(abandoned = report.abandoned,
                    "drain deadline passed: unfinished documents stay unacknowledged and will be redelivered");
                break;
            }
        };
        if let Some(fatal) = stop_reason {
            start_drain(&health, io, fatal.as_deref());
            report.fatal = fatal;
            drain_by = Some(tokio::time::Instant::now() + drain_deadline);
        }
    }
    // Nothing may be acknowledged from here on: stop every task that could.
    completion.abort();
    pipe.dead.abort_all();
    drop(pipe);
    drop(job_tx);
    while let Ok(e) = end_rx.try_recv() {
        tally(&mut report, e);
    }
    report
}

/// Readiness off for good, intake stopped.
fn start_drain(health: &Health, io: &Io, fatal: Option<&str>) {
    health.draining();
    match fatal {
        Some(why) => tracing::error!(reason = %why, "fatal: draining, then exiting with an error"),
        None => tracing::info!(
            live_in_flight = io.slots.taken(Lane::Live),
            backfill_in_flight = io.slots.taken(Lane::Backfill),
            "draining"
        ),
    }
    let _ = io.stop_tx.send(true);
}

fn far_future() -> tokio::time::Instant {
    tokio::time::Instant::now() + Duration::from_secs(86_400)
}

fn tally(r: &mut WorkerReport, e: Ending) {
    match e {
        Ending::Labelled { escalated } => {
            r.labelled += 1;
            r.escalated += u64::from(escalated);
        }
        Ending::DeadLettered => r.dead_lettered += 1,
        Ending::GivenUp => r.given_up += 1,
        Ending::Revoked => r.revoked += 1,
    }
}
