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
pub mod finish;
pub mod lanes;
pub mod watchdog;

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch, Semaphore};
use tokio::task::JoinSet;

use crate::batch::Batcher;
use crate::config::WorkerConfig;
use crate::dead_letter::{Failure, Stage};
use crate::engine::prepared::PreparedTask;
use crate::engine::thread::{self, Job, Outcome};
use crate::engine::Engine;
use crate::lane::Lane;
use crate::sink::{amqp::AmqpSink, kafka::KafkaSink, Sink};
use crate::source::{self, Delivery};
use crate::task::TaskFile;
use crate::telemetry::backlog::Backlog;
use crate::telemetry::health::Health;
use crate::telemetry::{lag, metrics};
use admit::{admit, Doc, Rejected};
use breaker::{Breaker, Route, Verdict};
use finish::{Counters, Ending, Finisher};
use lanes::Lanes;
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

const LANES: [Lane; 2] = [Lane::Live, Lane::Backfill];

/// The batcher keeps one queue per (task, lane): a batch shares one cached prefix and one lane.
fn queue_of(task: usize, lane: Lane) -> usize {
    task * 2 + usize::from(lane == Lane::Backfill)
}

fn lane_of(queue: usize) -> Lane {
    LANES[queue % 2]
}

/// The readiness name of a lane's RabbitMQ consumer session.
fn amqp_name(lane: Lane) -> String {
    match lane {
        Lane::Live => "amqp".into(),
        Lane::Backfill => "amqp-backfill".into(),
    }
}

/// The in-flight bound of each lane, as semaphores.
struct Slots {
    live: Arc<Semaphore>,
    backfill: Arc<Semaphore>,
    bounds: [usize; 2],
}

impl Slots {
    fn of(&self, lane: Lane) -> &Arc<Semaphore> {
        match lane {
            Lane::Live => &self.live,
            Lane::Backfill => &self.backfill,
        }
    }

    fn taken(&self, lane: Lane) -> usize {
        self.bounds[usize::from(lane == Lane::Backfill)] - self.of(lane).available_permits()
    }
}

/// Loads the model and tasks of `cfg`, then runs until `shutdown` resolves and the drain ends.
///
/// The HTTP server (`/metrics`, `/healthz`, `/readyz`) starts first, so probes answer (not ready)
/// while the model loads.
pub async fn run(
    cfg: WorkerConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<WorkerReport, StartError> {
    let prometheus = metrics::install()?;
    let health = Arc::new(Health::default());
    crate::telemetry::http::serve(cfg.http.listen, prometheus, health.clone())
        .await
        .map_err(|source| StartError::Http {
            addr: cfg.http.listen,
            source,
        })?;
    if cfg.kafka.is_some() {
        health.expect_broker(lag::KAFKA);
    }
    if let Some(a) = &cfg.amqp {
        for lane in LANES {
            if a.inputs.iter().any(|i| i.lane == lane) {
                health.expect_broker(&amqp_name(lane));
            }
        }
    }

    let specs = TaskFile::load(&cfg.model.tasks)?;
    let device = crate::device()?;
    let (model, tokenizer) = (cfg.model.model.clone(), cfg.model.tokenizer.clone());
    let weights = cfg.model.weights;
    let engine = tokio::task::spawn_blocking(move || {
        Engine::load_with(&model, tokenizer.as_deref(), &device, weights)
    })
    .await
    .expect("model loading does not panic")?;
    let engine = Arc::new(engine);
    let tasks: Vec<PreparedTask> = specs
        .task
        .iter()
        .map(|s| engine.prepare(s))
        .collect::<Result<_, _>>()?;
    for t in &tasks {
        engine.prefix_kv(t)?;
        tracing::info!(task = %t.name, prefix_tokens = t.prefix_ids.len(), "task ready (prefix cached)");
    }
    let cache = engine.prefix_cache_stats();
    metrics::prefix_cache(cache.hits, cache.misses);
    health.model_ready();
    let tasks = Arc::new(tasks);
    let names: Vec<String> = tasks.iter().map(|t| t.name.clone()).collect();
    for name in cfg.routing.escalate_below.keys() {
        if !names.contains(name) {
            tracing::warn!(task = %name, "routing.escalate_below names a task that is not defined");
        }
    }

    let bounds = [
        cfg.batching.in_flight(Lane::Live),
        cfg.batching.in_flight(Lane::Backfill),
    ];
    let slots = Slots {
        live: Arc::new(Semaphore::new(bounds[0])),
        backfill: Arc::new(Semaphore::new(bounds[1])),
        bounds,
    };
    let backlog = Arc::new(Backlog::default());
    let (stop_tx, stop_rx) = watch::channel(false);
    let (intake_tx, mut intake_rx) = mpsc::channel::<Delivery>(bounds[0] + bounds[1]);
    let poll_every = cfg.metrics.poll_interval;

    let mut kafka_consumers = Vec::new();
    let mut source_tasks = JoinSet::new();
    let mut pollers = JoinSet::new();
    let kafka_sink = match &cfg.kafka {
        Some(k) => {
            let sink = Arc::new(Sink::Kafka(KafkaSink::new(k)?));
            let mut measured = Vec::new();
            for lane in LANES {
                let inputs: Vec<_> = k
                    .inputs
                    .iter()
                    .filter(|i| i.lane == lane)
                    .cloned()
                    .collect();
                let Some(first) = inputs.first().map(|i| i.topic.clone()) else {
                    continue;
                };
                // Backfill topics get their own consumer group, so their lag is measured apart.
                let mut lk = k.clone();
                lk.inputs = inputs;
                if lane == Lane::Backfill {
                    lk.group_id = format!("{}-backfill", k.group_id);
                }
                let (consumer, offsets) = source::kafka::consumer(&lk)?;
                measured.push(lag::LagSource {
                    lane,
                    topic: first,
                    consumer: Arc::downgrade(&consumer),
                });
                kafka_consumers.push(consumer.clone());
                let bound = slots.bounds[usize::from(lane == Lane::Backfill)];
                let resume_at = (bound / 2).max(cfg.batching.max_docs.min(bound));
                source_tasks.spawn(source::kafka::run(
                    lk,
                    consumer,
                    offsets,
                    slots.of(lane).clone(),
                    u32::try_from(resume_at).unwrap_or(u32::MAX),
                    intake_tx.clone(),
                    stop_rx.clone(),
                ));
            }
            pollers.spawn(lag::kafka(
                measured,
                backlog.clone(),
                health.clone(),
                poll_every,
                stop_rx.clone(),
            ));
            Some(sink)
        }
        None => None,
    };
    let mut amqp_sources = Vec::new();
    let amqp_sink = match &cfg.amqp {
        Some(a) => {
            let sink = Arc::new(AmqpSink::new(a));
            for lane in LANES {
                let inputs: Vec<_> = a
                    .inputs
                    .iter()
                    .filter(|i| i.lane == lane)
                    .cloned()
                    .collect();
                if inputs.is_empty() {
                    continue;
                }
                let mut la = a.clone();
                la.inputs = inputs;
                let bound = slots.bounds[usize::from(lane == Lane::Backfill)];
                let prefetch = a
                    .prefetch
                    .unwrap_or(u16::try_from(bound).unwrap_or(u16::MAX));
                let limits = source::amqp::Limits {
                    prefetch,
                    requeue_bound: cfg.retry.max_attempts,
                };
                amqp_sources.push(tokio::spawn(source::amqp::run(
                    la,
                    limits,
                    slots.of(lane).clone(),
                    intake_tx.clone(),
                    stop_rx.clone(),
                    (health.clone(), amqp_name(lane)),
                )));
            }
            pollers.spawn(lag::amqp(
                a.inputs.clone(),
                sink.clone(),
                backlog.clone(),
                poll_every,
                stop_rx.clone(),
            ));
            Some(Arc::new(Sink::Amqp(sink)))
        }
        None => None,
    };
    drop(intake_tx);

    let counters = Arc::new(Counters::default());
    let breaker = Arc::new(Breaker::new(health.clone(), cfg.retry.max_backoff));
    let mut pause_rx = breaker.subscribe();
    // Set when the worker cannot go on (a stuck Kafka partition, a dead engine thread): it drains
    // and exits with an error, so it is restarted and resumes from the committed offsets.
    let (fatal_tx, mut fatal_rx) = watch::channel::<Option<String>>(None);
    let fatal_tx = Arc::new(fatal_tx);
    let finisher = Arc::new(Finisher {
        counters: counters.clone(),
        fatal: fatal_tx.clone(),
        kafka: kafka_sink.clone(),
        amqp: amqp_sink,
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
        backlog.clone(),
        health.clone(),
    ));
    pollers.spawn(
        watchdog
            .clone()
            .run(Duration::from_secs(1), stop_rx.clone()),
    );
    let (retry_tx, mut retry_rx) = mpsc::unbounded_channel::<Doc>();
    let (end_tx, mut end_rx) = mpsc::unbounded_channel::<Ending>();
    let completion = tokio::spawn(complete(
        out_rx,
        finisher.clone(),
        (backlog.clone(), watchdog.clone(), engine.clone()),
        retry_tx,
        end_tx.clone(),
    ));

    let mut report = WorkerReport::default();
    let (admitted_tx, mut admitted_rx) = mpsc::unbounded_channel();
    let mut pipe = Pipeline {
        batcher: Batcher::new(
            tasks.len() * 2,
            cfg.batching.limits(),
            cfg.batching.max_wait,
        ),
        pending: Lanes::new(cfg.batching.backfill_share),
        tasks: tasks.clone(),
        names: names.into(),
        engine: engine.clone(),
        finisher: finisher.clone(),
        max_bytes: cfg.input.max_payload_bytes,
        dead: JoinSet::new(),
        end_tx,
        admitted_tx,
    };
    tokio::pin!(shutdown);
    let mut drain_by: Option<tokio::time::Instant> = None;
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    let mut gauges = tokio::time::interval(Duration::from_secs(1));
    loop {
        let batch_due = pipe
            .batcher
            .next_deadline()
            .map(tokio::time::Instant::from_std);
        if drain_by.is_some() && intake_rx.is_empty() && !pipe.batcher.is_empty() {
            // Draining and nothing more queued: do not wait for batches to fill.
            let open = pipe.batcher.drain();
            pipe.queue(open);
        }
        // A systemic fault pauses intake (deliveries wait in the channel, holding their slots).
        let paused = breaker.paused_until();
        let stop_reason = tokio::select! {
            _ = &mut shutdown, if drain_by.is_none() => Some(None),
            _ = fatal_rx.changed(), if drain_by.is_none() => Some(fatal_rx.borrow().clone()),
            Some(d) = intake_rx.recv(), if paused.is_none() => { pipe.admit(d); None }
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
                let expired = pipe.batcher.expired(Instant::now());
                pipe.queue(expired);
                None
            }
            _ = gauges.tick() => {
                for lane in LANES {
                    metrics::in_flight(lane, slots.taken(lane));
                }
                None
            }
            _ = tick.tick(), if drain_by.is_some() => {
                if LANES.iter().all(|&l| slots.taken(l) == 0) {
                    break;
                }
                None
            }
            _ = tokio::time::sleep_until(drain_by.unwrap_or_else(far_future)), if drain_by.is_some() => {
                report.abandoned = LANES.iter().map(|&l| slots.taken(l)).sum();
                tracing::warn!(abandoned = report.abandoned,
                    "drain deadline passed: unfinished documents stay unacknowledged and will be redelivered");
                break;
            }
        };
        if let Some(fatal) = stop_reason {
            health.draining();
            match &fatal {
                Some(why) => {
                    tracing::error!(reason = %why, "fatal: draining, then exiting with an error")
                }
                None => tracing::info!(
                    live_in_flight = slots.taken(Lane::Live),
                    backfill_in_flight = slots.taken(Lane::Backfill),
                    "draining"
                ),
            }
            report.fatal = fatal;
            drain_by = Some(tokio::time::Instant::now() + cfg.shutdown.drain_deadline);
            let _ = stop_tx.send(true);
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
    while source_tasks.join_next().await.is_some() {}
    // The lag poller holds the consumers while it polls: let it finish before they close.
    let _ = tokio::time::timeout(Duration::from_secs(15), async {
        while pollers.join_next().await.is_some() {}
    })
    .await;
    pollers.abort_all();
    if let Some(k) = &kafka_sink {
        k.flush(Duration::from_secs(10));
    }
    for c in kafka_consumers {
        use rdkafka::consumer::{CommitMode, Consumer};
        if let Err(e) = c.commit_consumer_state(CommitMode::Sync) {
            tracing::debug!(error = %e, "final commit (nothing stored is normal)");
        }
        // Dropping the last handle closes the consumer: it commits and leaves the group.
        tokio::task::spawn_blocking(move || drop(c)).await.ok();
    }
    for h in amqp_sources {
        if let Ok(Some(session)) = h.await {
            session.close().await;
        }
    }
    report.batches = counters.batches.load(std::sync::atomic::Ordering::Relaxed);
    report.publish_retries = counters
        .publish_retries
        .load(std::sync::atomic::Ordering::Relaxed);
    report.engine_retries = counters
        .engine_retries
        .load(std::sync::atomic::Ordering::Relaxed);
    report.ack_failures = counters
        .ack_failures
        .load(std::sync::atomic::Ordering::Relaxed);
    if report.abandoned == 0 {
        let _ = tokio::task::spawn_blocking(move || engine_thread.join()).await;
    }
    tracing::info!(report = %serde_json::to_string(&report).unwrap_or_default(), "worker stopped");
    Ok(report)
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

/// The intake side: admit, batch per task and lane, queue closed batches for the engine.
struct Pipeline {
    batcher: Batcher<Doc>,
    pending: Lanes<(usize, Vec<Doc>)>,
    tasks: Arc<Vec<PreparedTask>>,
    names: Arc<[String]>,
    engine: Arc<Engine>,
    finisher: Arc<Finisher>,
    max_bytes: usize,
    dead: JoinSet<()>,
    end_tx: mpsc::UnboundedSender<Ending>,
    admitted_tx: mpsc::UnboundedSender<Result<Doc, Box<Rejected>>>,
}

impl Pipeline {
    /// Admits `d` on the blocking pool (tokenising a large document takes a while); the outcome
    /// comes back through `admitted_tx`.
    fn admit(&mut self, d: Delivery) {
        let (tasks, names, engine) = (self.tasks.clone(), self.names.clone(), self.engine.clone());
        let (max_bytes, tx) = (self.max_bytes, self.admitted_tx.clone());
        tokio::task::spawn_blocking(move || {
            let _ = tx.send(admit(d, &tasks, &names, engine.tokenizer(), max_bytes));
        });
    }

    fn admitted(&mut self, r: Result<Doc, Box<Rejected>>) {
        match r {
            Ok(doc) => self.push(doc),
            Err(r) => self.dead_letter(r.delivery, r.failure),
        }
    }

    fn dead_letter(&mut self, d: Delivery, f: Failure) {
        tracing::debug!(source = %d.origin.short(), code = f.code, "bad input");
        let (finisher, end) = (self.finisher.clone(), self.end_tx.clone());
        self.dead.spawn(async move {
            let _ = end.send(finisher.dead_letter(d, f).await);
        });
        // Reap finished dead-letter tasks so the set does not grow.
        while self.dead.try_join_next().is_some() {}
    }

    fn push(&mut self, doc: Doc) {
        let cost = doc.cost(&self.tasks);
        let queue = queue_of(doc.task, doc.delivery.lane);
        let ready = self.batcher.push(queue, cost, doc, Instant::now());
        self.queue(ready);
    }

    /// Queues closed batches for the engine, each in its lane. Memory stays bounded by the
    /// in-flight slots: every document here holds one.
    fn queue(&mut self, batches: Vec<(usize, Vec<Doc>)>) {
        for (queue, docs) in batches {
            self.pending.push(lane_of(queue), (queue, docs));
        }
    }
}

/// Takes engine outcomes and finishes each document on its own task.
async fn complete(
    mut outcomes: mpsc::Receiver<Outcome<Doc>>,
    finisher: Arc<Finisher>,
    (backlog, watchdog, engine): (Arc<Backlog>, Arc<Watchdog>, Arc<Engine>),
    retry_tx: mpsc::UnboundedSender<Doc>,
    end: mpsc::UnboundedSender<Ending>,
) {
    let mut running = JoinSet::new();
    while let Some(o) = outcomes.recv().await {
        watchdog.finished();
        let cache = engine.prefix_cache_stats();
        metrics::prefix_cache(cache.hits, cache.misses);
        Counters::bump(&finisher.counters.batches);
        let task = &finisher.tasks[o.task];
        let docs = o.results.len();
        let doc_tokens: usize = o.results.iter().map(|(d, _)| d.fitted.ids.len()).sum();
        let tokens = doc_tokens + docs * task.suffix_ids.len();
        metrics::batch(&task.name, docs, tokens, doc_tokens, o.elapsed);
        backlog.batch(docs, doc_tokens, o.elapsed);
        let lane = o
            .results
            .first()
            .map(|(d, _)| d.delivery.lane.as_str())
            .unwrap_or_default();
        tracing::info!(task = %task.name, lane, docs, tokens, passes = o.passes,
            engine_ms = o.elapsed.as_millis() as u64, "batch scored");
        let started = tokio::time::Instant::now()
            .checked_sub(o.elapsed)
            .unwrap_or_else(tokio::time::Instant::now);
        if o.results.iter().any(|(_, r)| r.is_ok()) {
            finisher.breaker.success(Route::Engine);
        }
        for (doc, result) in o.results {
            let (finisher, end, retry_tx) = (finisher.clone(), end.clone(), retry_tx.clone());
            running.spawn(async move {
                let ending = match result {
                    Ok(scores) => Some(finisher.labelled(doc, &scores).await),
                    Err(e) => engine_failed(&finisher, doc, e, started, &retry_tx).await,
                };
                if let Some(ending) = ending {
                    let _ = end.send(ending);
                }
            });
        }
        while running.try_join_next().is_some() {}
    }
    while running.join_next().await.is_some() {}
}

/// A document the engine failed on alone: retried, held (systemic fault) or dead-lettered
/// (poison). `None` when it went back to the engine.
async fn engine_failed(
    finisher: &Finisher,
    mut doc: Doc,
    error: String,
    batch_started: tokio::time::Instant,
    retry_tx: &mpsc::UnboundedSender<Doc>,
) -> Option<Ending> {
    let failures = doc.delivery.failed_attempts + 1;
    let retry = &finisher.retry;
    let breaker = &finisher.breaker;
    let verdict = doc
        .engine_tries
        .fail(breaker, Route::Engine, batch_started, retry, &error);
    let wait = match verdict {
        Verdict::Retry(wait) => {
            Counters::bump(&finisher.counters.engine_retries);
            metrics::retry("engine");
            tracing::warn!(source = %doc.delivery.origin.short(), %error, ?wait,
                "engine failed on the document; retrying");
            wait
        }
        Verdict::Hold(wait) => wait,
        Verdict::Poison => {
            let f = Failure {
                code: "retries_exhausted",
                message: format!(
                    "the engine failed {failures} times on this document alone: {error}"
                ),
                stage: Stage::Engine,
                retryable: true,
                id: Some(doc.input.id),
                task: Some(finisher.tasks[doc.task].name.clone()),
            };
            return Some(finisher.dead_letter(doc.delivery, f).await);
        }
    };
    doc.delivery.failed_attempts = failures;
    breaker.wait_or_closed(Route::Engine, wait).await;
    let _ = retry_tx.send(doc);
    None
}
