//! The end of a document's path: publish its result (and escalation) or its dead letter, with
//! retries, then acknowledge the input. Nothing is acked before the broker confirmed the output.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use serde_json::Value;

use crate::config::RetryConfig;
use crate::dead_letter::{DeadLetter, Failure, Stage};
use crate::engine::prepared::PreparedTask;
use crate::engine::scoring::LabelScores;
use crate::message::LabelResult;
use crate::sink::{Outgoing, OutputKind, Sink, SinkError};
use crate::source::{Delivery, Origin};
use crate::telemetry::metrics::{self, Outcome};

use super::admit::Doc;

/// Publishes outputs and completes deliveries.
pub struct Finisher {
    /// Sink for Kafka inputs.
    pub kafka: Option<Arc<Sink>>,
    /// Sink for RabbitMQ inputs.
    pub amqp: Option<Arc<Sink>>,
    /// Retry policy of publishes.
    pub retry: RetryConfig,
    /// The model file name.
    pub model: String,
    /// Prepared tasks.
    pub tasks: Arc<Vec<PreparedTask>>,
    /// Per task index: the escalation threshold.
    pub escalate_below: Vec<Option<f64>>,
    /// Header names (lower case) copied from input to outputs.
    pub correlation_headers: Vec<String>,
    /// Counters for the run's report.
    pub counters: Arc<Counters>,
    /// Raised when the worker cannot go on.
    pub fatal: Arc<tokio::sync::watch::Sender<Option<String>>>,
}

/// Event counts shared by the pipeline's tasks.
#[derive(Debug, Default)]
pub struct Counters {
    /// Engine batches scored.
    pub batches: AtomicU64,
    /// Publishes retried after a failure.
    pub publish_retries: AtomicU64,
    /// Documents sent back to the engine after it failed on them alone.
    pub engine_retries: AtomicU64,
}

impl Counters {
    /// Adds one to `c`.
    pub fn bump(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }
}

/// How one document ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// Result published, input acked.
    Labelled {
        /// Also escalated.
        escalated: bool,
    },
    /// Dead letter published, input acked.
    DeadLettered,
    /// Nothing could be published: input left for redelivery.
    GivenUp,
}

impl Finisher {
    fn sink(&self, origin: &Origin) -> &Sink {
        let s = match origin {
            Origin::Kafka { .. } => &self.kafka,
            Origin::Amqp { .. } => &self.amqp,
        };
        s.as_deref()
            .expect("a source is only started together with its broker's sink")
    }

    fn correlation(&self, d: &Delivery) -> Vec<(String, Vec<u8>)> {
        d.headers
            .iter()
            .filter(|(k, _)| self.correlation_headers.contains(&k.to_lowercase()))
            .cloned()
            .collect()
    }

    /// Publishes the result of `doc` (and its escalation copy), then acks it. A publish that keeps
    /// failing sends the document to the dead letters (`retries_exhausted`).
    pub async fn labelled(&self, doc: Doc, scores: &LabelScores) -> Ending {
        let task = &self.tasks[doc.task];
        let d = doc.delivery;
        let mut r = LabelResult::new(
            doc.input.id.clone(),
            task,
            &doc.fitted,
            scores,
            &self.model,
            doc.input.meta,
        );
        let escalated = self.escalate_below[doc.task].is_some_and(|t| r.score < t as f32);
        let headers = self.correlation(&d);
        r.source = Some(d.origin.clone());
        r.key = d
            .key
            .as_deref()
            .map(|k| String::from_utf8_lossy(k).into_owned());
        if !headers.is_empty() {
            let map: serde_json::Map<String, Value> = headers
                .iter()
                .map(|(k, v)| {
                    (
                        k.clone(),
                        Value::from(String::from_utf8_lossy(v).into_owned()),
                    )
                })
                .collect();
            r.headers = Some(map);
        }
        r.escalated = Some(escalated);
        let payload = serde_json::to_vec(&r).expect("results serialise");
        // Results are keyed by document id, so all results of a document land in one partition.
        let key = match &doc.input.id {
            Value::String(s) => s.clone().into_bytes(),
            other => other.to_string().into_bytes(),
        };
        let sink = self.sink(&d.origin);
        let mut outputs = vec![OutputKind::Result];
        if escalated {
            outputs.push(OutputKind::Escalate);
        }
        for kind in outputs {
            let msg = Outgoing {
                kind,
                key: Some(&key),
                payload: &payload,
                headers: &headers,
            };
            if let Err(e) = self.publish(sink, msg).await {
                let f = Failure {
                    code: "retries_exhausted",
                    message: format!(
                        "publishing the result failed {} times: {e}",
                        self.retry.max_attempts
                    ),
                    stage: Stage::Publish,
                    retryable: true,
                    id: Some(doc.input.id),
                    task: Some(task.name.clone()),
                };
                return self.dead_letter(d, f).await;
            }
        }
        let lane = d.lane;
        let enqueued = d.timestamp_ms;
        d.ack.ack().await;
        metrics::document(&task.name, lane, Outcome::Labelled);
        if escalated {
            metrics::escalation(&task.name);
        }
        if let Some(latency) = enqueued.and_then(since_epoch_ms) {
            metrics::latency(&task.name, lane, latency);
        }
        Ending::Labelled { escalated }
    }

    /// Publishes a dead letter for `d`, then acks it; if even that fails, leaves `d` unacked.
    pub async fn dead_letter(&self, d: Delivery, f: Failure) -> Ending {
        let record = DeadLetter::new(&d, &f, Some(&self.model));
        let payload = serde_json::to_vec(&record).expect("dead letters serialise");
        let mut headers = self.correlation(&d);
        headers.push(("labelmill.error.code".into(), f.code.as_bytes().to_vec()));
        let stage = serde_json::to_value(f.stage).expect("stage serialises");
        headers.push((
            "labelmill.error.stage".into(),
            stage.as_str().unwrap_or_default().as_bytes().to_vec(),
        ));
        let msg = Outgoing {
            kind: OutputKind::DeadLetter,
            key: d.key.as_deref(),
            payload: &payload,
            headers: &headers,
        };
        let (lane, task) = (d.lane, f.task.clone().unwrap_or_default());
        match self.publish(self.sink(&d.origin), msg).await {
            Ok(()) => {
                tracing::debug!(source = %d.origin.short(), code = f.code, "dead-lettered");
                d.ack.ack().await;
                metrics::document(&task, lane, Outcome::DeadLettered);
                metrics::dead_letter(f.code, stage.as_str().unwrap_or_default());
                Ending::DeadLettered
            }
            Err(e) => {
                tracing::error!(source = %d.origin.short(), code = f.code, error = %e,
                    "the dead letter could not be published; the input is not acknowledged");
                if let Origin::Kafka { .. } = &d.origin {
                    // Its partition's commit cannot pass it, and Kafka will not redeliver it to
                    // this consumer: restart from the committed offset instead of stalling.
                    self.fatal.send_replace(Some(format!(
                        "{} could not be published or dead-lettered: {e}",
                        d.origin.short()
                    )));
                }
                d.ack.give_up().await;
                metrics::document(&task, lane, Outcome::GivenUp);
                Ending::GivenUp
            }
        }
    }

    async fn publish(&self, sink: &Sink, msg: Outgoing<'_>) -> Result<(), SinkError> {
        let mut attempt = 1;
        loop {
            match sink.publish(msg).await {
                Ok(_) => return Ok(()),
                Err(e) if attempt < self.retry.max_attempts => {
                    Counters::bump(&self.counters.publish_retries);
                    metrics::retry("publish");
                    let wait = self.retry.backoff(attempt);
                    tracing::warn!(error = %e, attempt, ?wait, "publish failed; retrying");
                    tokio::time::sleep(wait).await;
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }
}

/// Task name -> threshold, as a per-index table.
pub fn thresholds(tasks: &[PreparedTask], map: &BTreeMap<String, f64>) -> Vec<Option<f64>> {
    tasks.iter().map(|t| map.get(&t.name).copied()).collect()
}

/// Time since `ms` (milliseconds since the epoch); `None` for a timestamp in the future (clock skew).
fn since_epoch_ms(ms: i64) -> Option<std::time::Duration> {
    let then = std::time::UNIX_EPOCH + std::time::Duration::from_millis(u64::try_from(ms).ok()?);
    std::time::SystemTime::now().duration_since(then).ok()
}
