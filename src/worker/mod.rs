//! `labelmill worker`: brokers in, labelled results out, at-least-once.
//!
//! ```text
//! kafka / amqp source --(bounded by in-flight slots)--> intake --> admit --+--> batcher (per task)
//!        ^                                                                  | bad input     | job (channel of 1)
//!        | store offset / ack after confirm                                 v               v
//!        +------------------------------ finish: publish result | dead letter <-- engine thread
//! ```
//! Intake pauses when `batching.max_in_flight` documents are unacknowledged, so memory is bounded.
//! Inputs belong to a lane: live inputs, and backfill inputs with their own in-flight bound and
//! batches; the engine takes live batches first ([`lanes`]).
//! Shutdown stops intake, flushes open batches, waits (up to the drain deadline) for every
//! in-flight document to be acknowledged, then commits and closes.

pub mod admit;
pub mod breaker;
mod event_loop;
pub mod finish;
mod io;
pub mod lanes;
mod pipeline;
mod startup;
pub mod watchdog;

use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch, Semaphore};
use tokio::task::JoinSet;

use crate::batch::Batcher;
use crate::config::WorkerConfig;
use crate::engine::thread::{self, Job, Outcome};
use crate::lane::Lane;
use crate::telemetry::health::Health;
use admit::Doc;
use breaker::Breaker;
use finish::{Counters, Ending, Finisher};
use lanes::Lanes;
use pipeline::Pipeline;
use watchdog::Watchdog;

/// Errors that stop the worker from starting.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The task file.
    #[error(transparent)]
    Task(#[from] crate::task::TaskError),
    /// The model.
    #[error(transparent)]
    Load(#[from] crate::engine::load::LoadError),
    /// A task prefix could not be computed.
    #[error(transparent)]
    Engine(#[from] crate::engine::EngineError),
    /// Kafka client creation or subscription.
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    /// The device.
    #[error("device: {0}")]
    Device(#[from] candle_core::Error),
    /// The metrics recorder.
    #[error("metrics: {0}")]
    Metrics(#[from] metrics_exporter_prometheus::BuildError),
    /// The HTTP server could not listen.
    #[error("http server on {addr}: {source}")]
    Http {
        /// The configured address.
        addr: std::net::SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

/// Counts of a worker run, logged at exit.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct WorkerReport {
    /// Results published and acked.
    pub labelled: u64,
    /// Of those, escalated.
    pub escalated: u64,
    /// Dead letters published and acked.
    pub dead_lettered: u64,
    /// Deliveries left for redelivery (nothing could be published).
    pub given_up: u64,
    /// Kafka messages whose partition was revoked before their output was published (not
    /// published here: the new owner redoes them).
    pub revoked: u64,
    /// Deliveries still in flight when the drain deadline passed (not acked: redelivered).
    pub abandoned: usize,
    /// Engine batches run.
    pub batches: u64,
    /// Publishes retried after a failure (broker down, unroutable, timed out).
    pub publish_retries: u64,
    /// Documents retried after the engine failed on them alone.
    pub engine_retries: u64,
    /// Acknowledgements the broker did not take (those documents are delivered again).
    pub ack_failures: u64,
    /// Why the worker stopped on its own, when it did (it then exits with an error).
    pub fatal: Option<String>,
}

pub(crate) const LANES: [Lane; 2] = [Lane::Live, Lane::Backfill];

/// The batcher keeps one queue per (task, lane): a batch shares one cached prefix and one lane.
fn queue_of(task: usize, lane: Lane) -> usize {
    task * 2 + usize::from(lane == Lane::Backfill)
}

fn lane_of(queue: usize) -> Lane {
    LANES[queue % 2]
}

/// The readiness name of an input queue's RabbitMQ consumer session.
fn amqp_name(queue: &str) -> String {
    format!("amqp:{queue}")
}

/// Loads the model and tasks of `cfg`, then runs until `shutdown` resolves and the drain ends.
///
/// The HTTP server (`/metrics`, `/healthz`, `/readyz`) starts first, so probes answer (not ready)
/// while the model loads. Start-up ([`startup`]), the brokers ([`io`]), the wiring below, the loop
/// ([`event_loop`]) and the close are separate steps.
pub async fn run(
    cfg: WorkerConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<WorkerReport, StartError> {
    run_with(cfg, None, shutdown).await
}

/// [`run`] on the in-memory broker `broker` as well as the configured ones (usually none: the
/// config's `[kafka]` and `[amqp]` may be left out), answering probes from `health`. The
/// in-process harness: batching, retries, the breaker and the drain run as in production, against
/// faults a test plants in the broker, under tokio's paused clock if the test pauses it.
pub async fn run_in_memory(
    cfg: WorkerConfig,
    broker: Arc<crate::memory::Broker>,
    health: Arc<Health>,
    shutdown: impl Future<Output = ()>,
) -> Result<WorkerReport, StartError> {
    run_with(cfg, Some((broker, health)), shutdown).await
}

async fn run_with(
    cfg: WorkerConfig,
    memory: Option<(Arc<crate::memory::Broker>, Arc<Health>)>,
    shutdown: impl Future<Output = ()>,
) -> Result<WorkerReport, StartError> {
    let (memory, health) = match memory {
        Some((broker, health)) => (Some(broker), health),
        None => (None, Arc::new(Health::default())),
    };
    let startup::Loaded {
        health,
        engine,
        tasks,
    } = startup::load(&cfg, health).await?;
    let mut io = io::Io::start(&cfg, &health, memory)?;
    let counters = Arc::new(Counters::default());
    let breaker = Arc::new(Breaker::new(health.clone(), cfg.retry.max_backoff));
    // Set when the worker cannot go on (a stuck Kafka partition, a dead engine thread): it drains
    // and exits with an error, so it is restarted and resumes from the committed offsets.
    let (fatal_tx, fatal_rx) = watch::channel::<Option<String>>(None);
    let fatal_tx = Arc::new(fatal_tx);
    let finisher = Arc::new(Finisher {
        counters: counters.clone(),
        fatal: fatal_tx.clone(),
        kafka: io.kafka_sink.clone(),
        amqp: io.amqp_sink.clone(),
        retry: cfg.retry.clone(),
        model: engine.info().name,
        escalate_below: finish::thresholds(&tasks, &cfg.routing.escalate_below),
        tasks: tasks.clone(),
        breaker: breaker.clone(),
        correlation_headers: cfg
            .input
            .correlation_headers
            .iter()
            .map(|h| h.to_lowercase())
            .collect(),
    });

    let (job_tx, job_rx) = mpsc::channel::<Job<Doc>>(1);
    let (out_tx, out_rx) = mpsc::channel::<Outcome<Doc>>(2);
    // One permit: the engine is free. The thread adds it back after each forward pass.
    let engine_free = Arc::new(Semaphore::new(1));
    let engine_thread = thread::spawn(
        engine.clone(),
        tasks.clone(),
        job_rx,
        out_tx,
        engine_free.clone(),
    );
    let watchdog = Arc::new(Watchdog::new(
        cfg.batching.stall_after,
        io.backlog.clone(),
        health.clone(),
    ));
    let every = Duration::from_secs(1);
    io.pollers
        .spawn(watchdog.clone().run(every, io.stop_rx.clone()));
    let (retry_tx, retry_rx) = mpsc::unbounded_channel::<Doc>();
    let (end_tx, end_rx) = mpsc::unbounded_channel::<Ending>();
    let completion = tokio::spawn(pipeline::complete(
        out_rx,
        finisher.clone(),
        (io.backlog.clone(), watchdog.clone(), engine.clone()),
        retry_tx,
        end_tx.clone(),
    ));
    let (admitted_tx, admitted_rx) = mpsc::unbounded_channel();
    let names: Vec<String> = tasks.iter().map(|t| t.name.clone()).collect();
    let pipe = Pipeline {
        batcher: Batcher::new(
            tasks.len() * 2,
            cfg.batching.limits(),
            cfg.batching.max_wait,
        ),
        pending: Lanes::new(cfg.batching.backfill_share),
        tasks: tasks.clone(),
        names: names.into(),
        engine: engine.clone(),
        finisher,
        max_bytes: cfg.input.max_payload_bytes,
        dead: JoinSet::new(),
        end_tx,
        admitted_tx,
    };
    let parts = event_loop::Parts {
        pipe,
        health,
        breaker,
        watchdog,
        engine_free,
        job_tx,
        fatal: (fatal_tx, fatal_rx),
        admitted_rx,
        retry_rx,
        end_rx,
        completion,
        drain_deadline: cfg.shutdown.drain_deadline,
    };
    let mut report = event_loop::run(parts, &mut io, shutdown).await;
    // Nothing acknowledges any more (the loop stopped the pipeline and its tasks): close.
    io.close().await;
    report.batches = counters.batches.load(Ordering::Relaxed);
    report.publish_retries = counters.publish_retries.load(Ordering::Relaxed);
    report.engine_retries = counters.engine_retries.load(Ordering::Relaxed);
    report.ack_failures = counters.ack_failures.load(Ordering::Relaxed);
    if report.abandoned == 0 {
        let _ = engine_thread.await;
    }
    tracing::info!(report = %serde_json::to_string(&report).unwrap_or_default(), "worker stopped");
    Ok(report)
}
