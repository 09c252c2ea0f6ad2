//! `labelmill worker`: brokers in, labelled results out, at-least-once.
//!
//! ```text
//! kafka / amqp source --(bounded by in-flight slots)--> intake --> admit --+--> batcher (per task)
//!        ^                                                                  | bad input     | job (channel of 1)
//!        | store offset / ack after confirm                                 v               v
//!        +------------------------------ finish: publish result | dead letter <-- engine thread
//! ```
//! Intake pauses when `batching.max_in_flight` documents are unacknowledged, so memory is bounded.
//! Shutdown stops intake, flushes open batches, waits (up to the drain deadline) for every
//! in-flight document to be acknowledged, then commits and closes.

pub mod admit;
pub mod finish;

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
use crate::sink::{amqp::AmqpSink, kafka::KafkaSink, Sink};
use crate::source::{self, Delivery};
use crate::task::TaskFile;
use admit::{admit, Doc};
use finish::{Counters, Ending, Finisher};

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
    /// Deliveries still in flight when the drain deadline passed (not acked: redelivered).
    pub abandoned: usize,
    /// Engine batches run.
    pub batches: u64,
    /// Publishes retried after a failure (broker down, unroutable, timed out).
    pub publish_retries: u64,
    /// Documents retried after the engine failed on them alone.
    pub engine_retries: u64,
    /// Why the worker stopped on its own, when it did (it then exits with an error).
    pub fatal: Option<String>,
}

/// Loads the model and tasks of `cfg`, then runs until `shutdown` resolves and the drain ends.
pub async fn run(
    cfg: WorkerConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<WorkerReport, StartError> {
    let specs = TaskFile::load(&cfg.model.tasks)?;
    let device = crate::device()?;
    let (model, tokenizer) = (cfg.model.model.clone(), cfg.model.tokenizer.clone());
    let engine = tokio::task::spawn_blocking(move || Engine::load(&model, &tokenizer, &device))
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
    let tasks = Arc::new(tasks);
    let names: Vec<String> = tasks.iter().map(|t| t.name.clone()).collect();
    for name in cfg.routing.escalate_below.keys() {
        if !names.contains(name) {
            tracing::warn!(task = %name, "routing.escalate_below names a task that is not defined");
        }
    }

    let max_in_flight = cfg.batching.max_in_flight;
    let slots = Arc::new(Semaphore::new(max_in_flight));
    let (stop_tx, stop_rx) = watch::channel(false);
    let (intake_tx, mut intake_rx) = mpsc::channel::<Delivery>(max_in_flight);

    let mut kafka_consumer = None;
    let mut source_tasks = JoinSet::new();
    let kafka_sink = match &cfg.kafka {
        Some(k) => {
            let sink = Arc::new(Sink::Kafka(KafkaSink::new(k)?));
            let (consumer, offsets) = source::kafka::consumer(k)?;
            kafka_consumer = Some(consumer.clone());
            let resume_at = (max_in_flight / 2).max(cfg.batching.max_docs.min(max_in_flight));
            source_tasks.spawn(source::kafka::run(
                k.clone(),
                consumer,
                offsets,
                slots.clone(),
                u32::try_from(resume_at).unwrap_or(u32::MAX),
                intake_tx.clone(),
                stop_rx.clone(),
            ));
            Some(sink)
        }
        None => None,
    };
    let mut amqp_source = None;
    let amqp_sink = match &cfg.amqp {
        Some(a) => {
            let prefetch = a
                .prefetch
                .unwrap_or(u16::try_from(max_in_flight).unwrap_or(u16::MAX));
            amqp_source = Some(tokio::spawn(source::amqp::run(
                a.clone(),
                prefetch,
                slots.clone(),
                intake_tx.clone(),
                stop_rx.clone(),
            )));
            Some(Arc::new(Sink::Amqp(AmqpSink::new(a))))
        }
        None => None,
    };
    drop(intake_tx);

    let counters = Arc::new(Counters::default());
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
        correlation_headers: cfg
            .input
            .correlation_headers
            .iter()
            .map(|h| h.to_lowercase())
            .collect(),
    });

    let (job_tx, job_rx) = mpsc::channel::<Job<Doc>>(1);
    let (out_tx, out_rx) = mpsc::channel::<Outcome<Doc>>(2);
    let engine_thread = thread::spawn(engine.clone(), tasks.clone(), job_rx, out_tx);
    let (retry_tx, mut retry_rx) = mpsc::unbounded_channel::<Doc>();
    let (end_tx, mut end_rx) = mpsc::unbounded_channel::<Ending>();
    let completion = tokio::spawn(complete(out_rx, finisher.clone(), retry_tx, end_tx.clone()));

    let mut report = WorkerReport::default();
    let mut pipe = Pipeline {
        batcher: Batcher::new(tasks.len(), cfg.batching.limits(), cfg.batching.max_wait),
        tasks: tasks.clone(),
        names,
        engine: engine.clone(),
        finisher: finisher.clone(),
        max_bytes: cfg.input.max_payload_bytes,
        job_tx,
        dead: JoinSet::new(),
        end_tx,
        fatal: fatal_tx.clone(),
    };
    tokio::pin!(shutdown);
    let mut drain_by: Option<tokio::time::Instant> = None;
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    loop {
        let batch_due = pipe
            .batcher
            .next_deadline()
            .map(tokio::time::Instant::from_std);
        if drain_by.is_some() && intake_rx.is_empty() && !pipe.batcher.is_empty() {
            // Draining and nothing more queued: do not wait for batches to fill.
            let open = pipe.batcher.drain();
            pipe.send_all(open, drain_by).await;
        }
        let stop_reason = tokio::select! {
            _ = &mut shutdown, if drain_by.is_none() => Some(None),
            _ = fatal_rx.changed(), if drain_by.is_none() => Some(fatal_rx.borrow().clone()),
            Some(d) = intake_rx.recv() => { pipe.admit(d, drain_by).await; None }
            Some(doc) = retry_rx.recv() => { pipe.push(doc, drain_by).await; None }
            Some(e) = end_rx.recv() => { tally(&mut report, e); None }
            _ = tokio::time::sleep_until(batch_due.unwrap_or_else(far_future)), if batch_due.is_some() => {
                let expired = pipe.batcher.expired(Instant::now());
                pipe.send_all(expired, drain_by).await;
                None
            }
            _ = tick.tick(), if drain_by.is_some() => {
                if slots.available_permits() == max_in_flight {
                    break;
                }
                None
            }
            _ = tokio::time::sleep_until(drain_by.unwrap_or_else(far_future)), if drain_by.is_some() => {
                report.abandoned = max_in_flight - slots.available_permits();
                tracing::warn!(abandoned = report.abandoned,
                    "drain deadline passed: unfinished documents stay unacknowledged and will be redelivered");
                break;
            }
        };
        if let Some(fatal) = stop_reason {
            match &fatal {
                Some(why) => {
                    tracing::error!(reason = %why, "fatal: draining, then exiting with an error")
                }
                None => tracing::info!(
                    slots_taken = max_in_flight - slots.available_permits(),
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
    while let Ok(e) = end_rx.try_recv() {
        tally(&mut report, e);
    }
    while source_tasks.join_next().await.is_some() {}
    if let Some(k) = &kafka_sink {
        k.flush(Duration::from_secs(10));
    }
    if let Some(c) = kafka_consumer {
        use rdkafka::consumer::{CommitMode, Consumer};
        if let Err(e) = c.commit_consumer_state(CommitMode::Sync) {
            tracing::debug!(error = %e, "final commit (nothing stored is normal)");
        }
        // Dropping the last handle closes the consumer: it commits and leaves the group.
        tokio::task::spawn_blocking(move || drop(c)).await.ok();
    }
    if let Some(h) = amqp_source {
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
    }
}

/// The intake side: admit, batch, hand batches to the engine.
struct Pipeline {
    batcher: Batcher<Doc>,
    tasks: Arc<Vec<PreparedTask>>,
    names: Vec<String>,
    engine: Arc<Engine>,
    finisher: Arc<Finisher>,
    max_bytes: usize,
    job_tx: mpsc::Sender<Job<Doc>>,
    dead: JoinSet<()>,
    end_tx: mpsc::UnboundedSender<Ending>,
    fatal: Arc<watch::Sender<Option<String>>>,
}

impl Pipeline {
    async fn admit(&mut self, d: Delivery, drain_by: Option<tokio::time::Instant>) {
        match admit(
            d,
            &self.tasks,
            &self.names,
            self.engine.tokenizer(),
            self.max_bytes,
        ) {
            Ok(doc) => self.push(doc, drain_by).await,
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

    async fn push(&mut self, doc: Doc, drain_by: Option<tokio::time::Instant>) {
        let cost = doc.cost(&self.tasks);
        let task = doc.task;
        let ready = self.batcher.push(task, cost, doc, Instant::now());
        self.send_all(ready, drain_by).await;
    }

    /// Hands batches to the engine. A full channel waits here (the engine is behind, so intake
    /// fills and then pauses), but not past the drain deadline: a batch not handed over by then
    /// is dropped unacknowledged, for the broker to redeliver.
    async fn send_all(
        &mut self,
        batches: Vec<(usize, Vec<Doc>)>,
        drain_by: Option<tokio::time::Instant>,
    ) {
        for (task, docs) in batches {
            let ids = docs.iter().map(|d| d.fitted.ids.clone()).collect();
            let job = Job {
                task,
                ids,
                items: docs,
            };
            let sent = match drain_by {
                Some(t) => match tokio::time::timeout_at(t, self.job_tx.send(job)).await {
                    Ok(r) => r.is_ok(),
                    Err(_) => return,
                },
                None => self.job_tx.send(job).await.is_ok(),
            };
            if !sent {
                // The engine thread is gone: nothing more can be classified here.
                self.fatal
                    .send_replace(Some("the engine thread stopped".into()));
                return;
            }
        }
    }
}

/// Takes engine outcomes and finishes each document on its own task.
async fn complete(
    mut outcomes: mpsc::Receiver<Outcome<Doc>>,
    finisher: Arc<Finisher>,
    retry_tx: mpsc::UnboundedSender<Doc>,
    end: mpsc::UnboundedSender<Ending>,
) {
    let mut running = JoinSet::new();
    while let Some(o) = outcomes.recv().await {
        Counters::bump(&finisher.counters.batches);
        tracing::info!(task = %finisher.tasks[o.task].name, docs = o.results.len(),
            passes = o.passes, engine_ms = o.elapsed.as_millis() as u64, "batch scored");
        for (mut doc, result) in o.results {
            let (finisher, end, retry_tx) = (finisher.clone(), end.clone(), retry_tx.clone());
            running.spawn(async move {
                let retry = &finisher.retry;
                match result {
                    Ok(scores) => {
                        let _ = end.send(finisher.labelled(doc, &scores).await);
                    }
                    Err(e) if doc.delivery.failed_attempts + 1 < retry.max_attempts => {
                        Counters::bump(&finisher.counters.engine_retries);
                        doc.delivery.failed_attempts += 1;
                        let wait = retry.backoff(doc.delivery.failed_attempts);
                        tracing::warn!(source = %doc.delivery.origin.short(), error = %e, ?wait, "engine failed on the document; retrying");
                        tokio::time::sleep(wait).await;
                        let _ = retry_tx.send(doc);
                    }
                    Err(e) => {
                        let f = Failure {
                            code: "retries_exhausted",
                            message: format!("the engine failed {} times on this document alone: {e}", retry.max_attempts),
                            stage: Stage::Engine,
                            retryable: true,
                            id: Some(doc.input.id),
                            task: Some(finisher.tasks[doc.task].name.clone()),
                        };
                        let _ = end.send(finisher.dead_letter(doc.delivery, f).await);
                    }
                }
            });
        }
        while running.try_join_next().is_some() {}
    }
    while running.join_next().await.is_some() {}
}
