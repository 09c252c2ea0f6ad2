//! The document's path inside the worker: admission (off the runtime), batching per task and
//! lane, closed batches waiting for the engine, and what happens to each engine outcome.

use std::sync::Arc;

use tokio::sync::mpsc;
use tokio::task::JoinSet;

use super::admit::{admit, Doc, Rejected};
use super::breaker::{Route, Verdict};
use super::finish::{Counters, Ending, Finisher};
use super::lanes::Lanes;
use super::watchdog::Watchdog;
use super::{lane_of, queue_of};
use crate::batch::Batcher;
use crate::dead_letter::{Failure, Stage};
use crate::engine::prepared::PreparedTask;
use crate::engine::thread::Outcome;
use crate::engine::Engine;
use crate::source::Delivery;
use crate::telemetry::backlog::Backlog;
use crate::telemetry::metrics;

/// The intake side: admit, batch per task and lane, queue closed batches for the engine.
pub(super) struct Pipeline {
    pub(super) batcher: Batcher<Doc>,
    pub(super) pending: Lanes<(usize, Vec<Doc>)>,
    pub(super) tasks: Arc<Vec<PreparedTask>>,
    pub(super) names: Arc<[String]>,
    pub(super) engine: Arc<Engine>,
    pub(super) finisher: Arc<Finisher>,
    pub(super) max_bytes: usize,
    pub(super) dead: JoinSet<()>,
    pub(super) end_tx: mpsc::UnboundedSender<Ending>,
    pub(super) admitted_tx: mpsc::UnboundedSender<Result<Doc, Box<Rejected>>>,
}

impl Pipeline {
    /// Admits `d` on the blocking pool (tokenising a large document takes a while); the outcome
    /// comes back through `admitted_tx`.
    pub(super) fn admit(&mut self, d: Delivery) {
        let (tasks, names, engine) = (self.tasks.clone(), self.names.clone(), self.engine.clone());
        let (max_bytes, tx) = (self.max_bytes, self.admitted_tx.clone());
        tokio::task::spawn_blocking(move || {
            let _ = tx.send(admit(d, &tasks, &names, engine.tokenizer(), max_bytes));
        });
    }

    pub(super) fn admitted(&mut self, r: Result<Doc, Box<Rejected>>) {
        match r {
            Ok(doc) => self.push(doc),
            Err(r) => self.dead_letter(r.delivery, r.failure),
        }
    }

    pub(super) fn dead_letter(&mut self, d: Delivery, f: Failure) {
        tracing::debug!(source = %d.origin.short(), code = f.code, "bad input");
        let (finisher, end) = (self.finisher.clone(), self.end_tx.clone());
        self.dead.spawn(async move {
            let _ = end.send(finisher.dead_letter(d, f).await);
        });
        // Reap finished dead-letter tasks so the set does not grow.
        while self.dead.try_join_next().is_some() {}
    }

    pub(super) fn push(&mut self, doc: Doc) {
        let cost = doc.cost(&self.tasks);
        let queue = queue_of(doc.task, doc.delivery.lane);
        let ready = self.batcher.push(queue, cost, doc, now());
        self.queue(ready);
    }

    /// Queues closed batches for the engine, each in its lane. Memory stays bounded by the
    /// in-flight slots: every document here holds one.
    pub(super) fn queue(&mut self, batches: Vec<(usize, Vec<Doc>)>) {
        for (queue, docs) in batches {
            self.pending.push(lane_of(queue), (queue, docs));
        }
    }
}

/// Takes engine outcomes and finishes each document on its own task.
pub(super) async fn complete(
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

/// The worker's clock for batch deadlines: tokio's, so a paused test clock drives them too.
pub(super) fn now() -> std::time::Instant {
    tokio::time::Instant::now().into_std()
}
