//! Broker-side measurements, polled every `metrics.poll_interval`: Kafka consumer lag of the
//! assigned partitions, RabbitMQ queue depth. Each feeds the backlog estimate. Whether the Kafka
//! metadata request of a poll reaches the broker is what readiness reports as the Kafka
//! connection (a failed lag query alone, during a leader election say, is only logged).

use std::collections::BTreeSet;
use std::sync::{Arc, Weak};
use std::time::Duration;

use rdkafka::consumer::Consumer;
use rdkafka::error::KafkaResult;
use rdkafka::Offset;
use tokio::sync::watch;

use super::backlog::Backlog;
use super::health::Health;
use super::metrics;
use crate::config::AmqpInput;
use crate::lane::Lane;
use crate::sink::amqp::AmqpSink;
use crate::source::kafka::KafkaConsumer;

/// How long one broker request of a poll may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// The readiness name of the Kafka connection.
pub const KAFKA: &str = "kafka";

/// One consumer to measure: its lane, the first topic it reads (for the connectivity check).
pub struct LagSource {
    /// The lane its topics feed.
    pub lane: Lane,
    /// A topic it subscribes to.
    pub topic: String,
    /// Weak: the poller must not keep the consumer open past the worker's close.
    pub consumer: Weak<KafkaConsumer>,
}

/// Polls the lag of every assigned partition until `stop`.
pub async fn kafka(
    sources: Vec<LagSource>,
    backlog: Arc<Backlog>,
    health: Arc<Health>,
    every: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let mut reported: BTreeSet<(String, i32, Lane)> = BTreeSet::new();
    loop {
        let (mut up, mut complete) = (true, true);
        let mut now: BTreeSet<(String, i32, Lane)> = BTreeSet::new();
        for s in &sources {
            // The consumer closes after the drain: never hold it (or start a request) past that.
            if *stop.borrow() {
                return;
            }
            let Some(c) = s.consumer.upgrade() else {
                return;
            };
            let (topic, halt) = (s.topic.clone(), stop.clone());
            let polled =
                tokio::task::spawn_blocking(move || partition_lags(&c, &topic, &halt)).await;
            match polled {
                Ok(Ok(Some(lags))) => {
                    let total: i64 = lags.iter().map(|l| l.2).sum();
                    for (topic, partition, lag) in lags {
                        metrics::consumer_lag(&topic, partition, s.lane, lag);
                        now.insert((topic, partition, s.lane));
                    }
                    backlog.queued(s.lane, &format!("kafka:{}", s.topic), total as f64);
                }
                Ok(Ok(None)) => complete = false,
                Ok(Err(Unreachable(e))) => {
                    tracing::warn!(error = %e, "kafka broker unreachable (metadata request failed)");
                    up = false;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "kafka lag poll panicked");
                    complete = false;
                }
            }
        }
        if up && complete {
            // Partitions revoked since the last poll are another worker's lag now.
            for (topic, partition, lane) in reported.difference(&now) {
                metrics::consumer_lag(topic, *partition, *lane, 0);
            }
            reported = now;
        }
        health.broker(KAFKA, up);
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.changed() => return,
        }
    }
}

/// `(topic, partition, lag)` of each assigned partition.
type Lags = Vec<(String, i32, i64)>;

/// The metadata request failed: the broker cannot be reached.
struct Unreachable(rdkafka::error::KafkaError);

/// `(topic, partition, high watermark - committed offset)` of each assigned partition; `None`
/// when a lag query failed or `stop` turned true on the way.
fn partition_lags(
    c: &KafkaConsumer,
    topic: &str,
    stop: &watch::Receiver<bool>,
) -> Result<Option<Lags>, Unreachable> {
    // Reaches the broker even when nothing is assigned (more workers than partitions).
    c.fetch_metadata(Some(topic), REQUEST_TIMEOUT)
        .map_err(Unreachable)?;
    match lags(c, stop) {
        Ok(l) => Ok(l),
        Err(e) => {
            tracing::debug!(error = %e, "kafka lag query failed");
            Ok(None)
        }
    }
}

fn lags(c: &KafkaConsumer, stop: &watch::Receiver<bool>) -> KafkaResult<Option<Lags>> {
    let assignment = c.assignment()?;
    if assignment.count() == 0 {
        return Ok(Some(Vec::new()));
    }
    let committed = c.committed_offsets(assignment, REQUEST_TIMEOUT)?;
    let mut lags = Vec::new();
    for e in committed.elements() {
        if *stop.borrow() {
            return Ok(None);
        }
        let (low, high) = c.fetch_watermarks(e.topic(), e.partition(), REQUEST_TIMEOUT)?;
        // Nothing committed yet: the group starts from the earliest offset.
        let from = match e.offset() {
            Offset::Offset(o) => o,
            _ => low,
        };
        lags.push((e.topic().to_string(), e.partition(), (high - from).max(0)));
    }
    Ok(Some(lags))
}

/// Polls the depth of the input queues until `stop`. Competing consumers share a queue, so each
/// worker counts its share: ready messages divided by the queue's consumers.
pub async fn amqp(
    inputs: Vec<AmqpInput>,
    sink: Arc<AmqpSink>,
    backlog: Arc<Backlog>,
    every: Duration,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        for i in &inputs {
            match sink.queue_state(&i.queue).await {
                Ok((ready, consumers)) => {
                    metrics::queue_depth(&i.queue, i.lane, ready);
                    let share = f64::from(ready) / f64::from(consumers.max(1));
                    backlog.queued(i.lane, &format!("amqp:{}", i.queue), share);
                }
                Err(e) => tracing::warn!(queue = %i.queue, error = %e, "queue depth poll failed"),
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.changed() => return,
        }
    }
}
