//! The end of a document's path: publish its result (and escalation) or its dead letter, with
//! retries, then acknowledge the input. Nothing is acked before the broker confirmed the output.
//! A route that fails for everyone holds its documents unacknowledged ([`super::breaker`]) instead
//! of draining the backlog into dead letters.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use serde_json::Value;

use crate::config::RetryConfig;
use crate::dead_letter::{DeadLetter, Failure, Stage};
use crate::engine::prepared::PreparedTask;
use crate::engine::scoring::LabelScores;
use crate::message::LabelResult;
use crate::sink::{wire_size, Outgoing, OutputKind, Sink, SinkError};
use crate::source::{Delivery, Origin};
use crate::telemetry::metrics::{self, Outcome};

use super::admit::Doc;
use super::breaker::{Breaker, Route, Tries, Verdict};

/// Longest key or correlation header value copied from an input to its outputs.
pub const MAX_COPIED_BYTES: usize = 4096;

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
    /// Poison or systemic: per route.
    pub breaker: Arc<Breaker>,
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
    /// Acknowledgements the broker did not take (their documents come again).
    pub ack_failures: AtomicU64,
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
    /// Its Kafka partition was revoked before its output was published: dropped here, redone by
    /// the partition's new owner.
    Revoked,
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
            .filter(|(k, v)| {
                v.len() <= MAX_COPIED_BYTES && self.correlation_headers.contains(&k.to_lowercase())
            })
            .cloned()
            .collect()
    }

    /// Publishes the result of `doc` (and its escalation copy), then acks it. A publish that keeps
    /// failing sends the document to the dead letters (`retries_exhausted`).
    pub async fn labelled(&self, doc: Doc, scores: &LabelScores) -> Ending {
        if !doc.delivery.ack.owned() {
            return revoked(&doc.delivery);
        }
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
        let mut d = d;
        for kind in outputs {
            let msg = Outgoing {
                kind,
                key: Some(&key),
                payload: &payload,
                headers: &headers,
            };
            let published = self
                .publish(sink, msg, &d.ack, &mut d.failed_attempts)
                .await;
            if let Err(SinkError::Revoked) = published {
                return revoked(&d);
            }
            if let Err(e) = published {
                let (code, message, retryable) = match e.per_message() {
                    Some(code) => (code, format!("the result cannot be published: {e}"), false),
                    None => (
                        "retries_exhausted",
                        format!(
                            "publishing the result failed {} times while other documents were published: {e}",
                            self.retry.max_attempts
                        ),
                        true,
                    ),
                };
                let f = Failure {
                    code,
                    message,
                    stage: Stage::Publish,
                    retryable,
                    id: Some(doc.input.id),
                    task: Some(task.name.clone()),
                };
                return self.dead_letter(d, f).await;
            }
        }
        let lane = d.lane;
        let enqueued = d.timestamp_ms;
        if !d.ack.ack().await {
            Counters::bump(&self.counters.ack_failures);
        }
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
    pub async fn dead_letter(&self, mut d: Delivery, f: Failure) -> Ending {
        if !d.ack.owned() {
            return revoked(&d);
        }
        let mut headers = self.correlation(&d);
        headers.push(("labelmill.error.code".into(), f.code.as_bytes().to_vec()));
        let stage = serde_json::to_value(f.stage).expect("stage serialises");
        headers.push((
            "labelmill.error.stage".into(),
            stage.as_str().unwrap_or_default().as_bytes().to_vec(),
        ));
        // An oversized key (key_too_long) stays in the record only as far as it fits.
        let key = d.key.as_deref().filter(|k| k.len() <= MAX_COPIED_BYTES);
        let sink = self.sink(&d.origin);
        let framing = wire_size(&Outgoing {
            kind: OutputKind::DeadLetter,
            key,
            payload: &[],
            headers: &headers,
        });
        let record = DeadLetter::new(&d, &f, Some(&self.model));
        let payload =
            record.encode_within(&d.payload, sink.max_message_bytes().saturating_sub(framing));
        let msg = Outgoing {
            kind: OutputKind::DeadLetter,
            key,
            payload: &payload,
            headers: &headers,
        };
        let (lane, task) = (d.lane, f.task.clone().unwrap_or_default());
        match self
            .publish(sink, msg, &d.ack, &mut d.failed_attempts)
            .await
        {
            Err(SinkError::Revoked) => revoked(&d),
            Ok(()) => {
                tracing::debug!(source = %d.origin.short(), code = f.code, "dead-lettered");
                if !d.ack.ack().await {
                    Counters::bump(&self.counters.ack_failures);
                }
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
                let origin = d.origin.short();
                if d.ack.give_up().await == crate::source::amqp::GaveUp::Held {
                    self.breaker.stuck(
                        Route::DeadLetter,
                        format!("{origin} was delivered and could not be dead-lettered {} times; held unacknowledged: {e}", self.retry.max_attempts),
                    );
                }
                metrics::document(&task, lane, Outcome::GivenUp);
                Ending::GivenUp
            }
        }
    }

    /// Publishes `msg`, retrying per the retry policy; `failed` counts the document's failed
    /// attempts. While the route fails for everyone the document is held and probes it (see
    /// [`Breaker`]); an error comes back only for a poison document, a message the broker can
    /// never take ([`SinkError::per_message`]), or an input whose partition was revoked meanwhile
    /// ([`SinkError::Revoked`]).
    async fn publish(
        &self,
        sink: &Sink,
        msg: Outgoing<'_>,
        ack: &crate::source::Acker,
        failed: &mut u32,
    ) -> Result<(), SinkError> {
        let route = Route::of(msg.kind);
        let mut tries = Tries::default();
        loop {
            let started = tokio::time::Instant::now();
            let e = match sink.publish(msg).await {
                Ok(_) => {
                    self.breaker.success(route);
                    return Ok(());
                }
                Err(e) if e.per_message().is_some() => return Err(e),
                Err(e) => e,
            };
            let wait = match tries.fail(&self.breaker, route, started, &self.retry, &e) {
                Verdict::Poison => return Err(e),
                Verdict::Retry(wait) => {
                    Counters::bump(&self.counters.publish_retries);
                    metrics::retry("publish");
                    tracing::warn!(error = %e, ?wait, "publish failed; retrying");
                    wait
                }
                Verdict::Hold(wait) => {
                    tracing::debug!(
                        route = route.as_str(),
                        ?wait,
                        "held: the route fails for every document"
                    );
                    wait
                }
            };
            *failed += 1;
            self.breaker.wait_or_closed(route, wait).await;
            if !ack.owned() {
                return Err(SinkError::Revoked);
            }
        }
    }
}

fn revoked(d: &Delivery) -> Ending {
    tracing::debug!(source = %d.origin.short(), "partition revoked: not published here (its new owner redoes it)");
    Ending::Revoked
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
