//! RabbitMQ input: competing consumers with manual acks, prefetch from the in-flight bound, and
//! reconnection.
//!
//! A delivery is acked only after its result or dead letter is confirmed by the broker. When the
//! connection drops, unacked deliveries go back to the queue (the broker redelivers them with
//! `redelivered=true`); this module reconnects after `reconnect_delay` and consumes again.

use std::sync::Arc;

use futures_util::stream::{self, StreamExt};
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions,
    ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Connection, ExchangeKind};
use tokio::sync::{mpsc, watch, Semaphore};

use super::{Acker, Delivery, Origin};
use crate::config::AmqpConfig;
use crate::telemetry::health::Health;

/// How often this worker returned each message to its queue (by queue and payload), so a message
/// that can be neither published nor dead-lettered is not requeued forever: RabbitMQ's classic
/// queues keep no delivery count (quorum queues do: `x-delivery-count`, read as well).
#[derive(Debug, Default)]
pub struct Requeues {
    counts: std::sync::Mutex<std::collections::HashMap<u64, u32>>,
}

/// Entries kept before the ledger starts afresh (a bound on its memory).
const REQUEUE_LEDGER: usize = 100_000;

impl Requeues {
    fn key(queue: &str, payload: &[u8]) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        queue.hash(&mut h);
        payload.hash(&mut h);
        h.finish()
    }

    fn get(&self, key: u64) -> u32 {
        let counts = self.counts.lock().expect("requeue ledger lock");
        counts.get(&key).copied().unwrap_or(0)
    }

    fn bump(&self, key: u64) {
        let mut counts = self.counts.lock().expect("requeue ledger lock");
        if counts.len() >= REQUEUE_LEDGER {
            counts.clear();
        }
        *counts.entry(key).or_default() += 1;
    }
}

/// What became of a delivery that could not be completed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GaveUp {
    /// Returned to its queue (or, Kafka, left below the commit) for another attempt.
    Requeued,
    /// Returned too often already: held unacknowledged by this worker (the broker gets it back
    /// when the worker's connection closes), not requeued again.
    Held,
}

/// Acks one AMQP delivery on the channel it came from.
#[derive(Debug)]
pub struct AmqpAck {
    acker: lapin::Acker,
    origin: String,
    queue: String,
    requeues: Arc<Requeues>,
    key: u64,
    /// Deliveries of this message before this one (`x-delivery-count`, or this worker's count).
    prior: u32,
    /// Deliveries after which it is held rather than requeued.
    bound: u32,
}

impl AmqpAck {
    /// Acks the delivery; `false` when the ack failed. That means the channel is gone, and with
    /// it the delivery: the broker requeues it, so its output will be published again (a
    /// duplicate). Logged and counted (`labelmill_ack_failures_total`).
    pub async fn ack(self) -> bool {
        let error = match self.acker.ack(BasicAckOptions::default()).await {
            Ok(true) => return true,
            Ok(false) => "the acker was used already or its channel is gone".to_string(),
            Err(e) => e.to_string(),
        };
        crate::telemetry::metrics::ack_failure(&self.queue);
        tracing::error!(delivery = %self.origin, %error,
            "ack failed; the broker will redeliver (a duplicate output)");
        false
    }

    /// Returns the delivery to its queue, unless it was delivered `bound` times already: then it
    /// is held (see [`GaveUp::Held`]).
    pub async fn requeue(self) -> GaveUp {
        if self.prior + 1 >= self.bound {
            tracing::error!(delivery = %self.origin, deliveries = self.prior + 1,
                "delivered and failed too often: held unacknowledged, not requeued again");
            // Dropping the acker leaves the delivery unacknowledged on its channel.
            return GaveUp::Held;
        }
        self.requeues.bump(self.key);
        let opts = BasicNackOptions {
            requeue: true,
            ..Default::default()
        };
        if let Err(e) = self.acker.nack(opts).await {
            crate::telemetry::metrics::ack_failure(&self.queue);
            tracing::warn!(delivery = %self.origin, error = %e, "nack failed; the broker will redeliver");
        }
        GaveUp::Requeued
    }
}

/// The connection and consuming channel; close it after the drain.
pub struct Session {
    conn: Connection,
    ch: lapin::Channel,
}

impl Session {
    /// Closes the channel and the connection; unacked deliveries return to their queues.
    pub async fn close(self) {
        let _ = self
            .ch
            .close(200, "labelmill worker shut down".into())
            .await;
        let _ = self
            .conn
            .close(200, "labelmill worker shut down".into())
            .await;
    }
}

/// Consumes the configured queues into `tx` until `stop` turns true, reconnecting on failure.
/// Returns the live session, which must stay open until in-flight deliveries are acked (dropping
/// the consuming channel would requeue them).
///
/// `health` hears under `name` whether the session is consuming.
pub async fn run(
    cfg: AmqpConfig,
    limits: Limits,
    slots: Arc<Semaphore>,
    tx: mpsc::Sender<Delivery>,
    mut stop: watch::Receiver<bool>,
    (health, name): (Arc<Health>, String),
) -> Option<Session> {
    let requeues = Arc::new(Requeues::default());
    loop {
        if *stop.borrow() {
            return None;
        }
        let up = || health.broker(&name, true);
        let taken = (&slots, &requeues);
        match session(&cfg, limits.clone(), taken, &tx, &mut stop, up).await {
            Ok(conn) => return conn,
            Err(e) => {
                health.broker(&name, false);
                tracing::warn!(error = %e, uri = %crate::config::redact_uri(&cfg.uri),
                    "rabbitmq connection lost; reconnecting");
                tokio::select! {
                    _ = tokio::time::sleep(cfg.reconnect_delay) => {}
                    _ = stop.changed() => return None,
                }
            }
        }
    }
}

async fn session(
    cfg: &AmqpConfig,
    limits: Limits,
    (slots, requeues): (&Arc<Semaphore>, &Arc<Requeues>),
    tx: &mpsc::Sender<Delivery>,
    stop: &mut watch::Receiver<bool>,
    consuming: impl FnOnce(),
) -> Result<Option<Session>, lapin::Error> {
    // Connecting can hang while the broker is unreachable: a shutdown must not wait for it. (Once
    // consuming, the loop below handles the stop itself and hands the session back.)
    let mut cancel = stop.clone();
    let setup = async {
        let conn = crate::amqp_connect::connect(cfg, "labelmill consumer").await?;
        // The consuming channel is not used for publishing, so a failed publish cannot close it and
        // requeue the deliveries in flight.
        let ch = conn.create_channel().await?;
        ch.basic_qos(limits.prefetch, BasicQosOptions::default())
            .await?;
        if cfg.declare {
            declare(cfg, &ch).await?;
        }
        let mut consumers = Vec::new();
        let mut tags = Vec::new();
        for input in &cfg.inputs {
            let c = ch
                .basic_consume(
                    input.queue.as_str().into(),
                    "".into(),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await?;
            tags.push(c.tag());
            let (queue, task) = (input.queue.clone(), (input.task.clone(), input.lane));
            // A consumer the broker cancels (queue deleted, node down) ends its stream alone; the
            // marker after it turns that into an error, so the session reconnects every queue.
            let ended = stream::once(async {
                Err(std::io::Error::other("a consumer was cancelled by the broker").into())
            });
            consumers.push(
                c.chain(ended)
                    .map(move |d| (queue.clone(), task.clone(), d))
                    .boxed(),
            );
        }
        Ok::<_, lapin::Error>((conn, ch, consumers, tags))
    };
    let (conn, ch, consumers, tags) = tokio::select! {
        r = setup => r?,
        _ = cancel.changed() => return Ok(None),
    };
    tracing::info!(
        queues = cfg.inputs.len(),
        prefetch = limits.prefetch,
        "rabbitmq consumer started"
    );
    consuming();
    let mut merged = stream::select_all(consumers);
    loop {
        let next = tokio::select! {
            n = merged.next() => n,
            _ = stop.changed() => {
                for tag in tags {
                    // Stop intake; deliveries received but not forwarded are requeued on close.
                    let _ = ch.basic_cancel(tag, BasicCancelOptions::default()).await;
                }
                return Ok(Some(Session { conn, ch }));
            }
        };
        let (queue, (task, lane), d) = match next {
            Some((q, t, Ok(d))) => (q, t, d),
            Some((_, _, Err(e))) => return Err(e),
            // A consumer cancelled by the broker (queue deleted, node shutdown): start over.
            None => {
                return Err(std::io::Error::other("a consumer was cancelled by the broker").into())
            }
        };
        // The prefetch bounds what the broker sends; the slot bounds it over all sources, and the
        // byte budget bounds their size (shared by every source of the worker).
        let permit = tokio::select! {
            p = slots.clone().acquire_owned() => p.expect("the semaphore is never closed"),
            _ = stop.changed() => return Ok(Some(Session { conn, ch })),
        };
        let bytes = tokio::select! {
            b = limits.bytes.take(d.data.len()) => b,
            _ = stop.changed() => return Ok(Some(Session { conn, ch })),
        };
        let requeue = (requeues.clone(), limits.requeue_bound);
        let mut delivery = delivery(d, queue, (task, lane), permit, requeue);
        delivery.bytes = Some(bytes);
        if tx.send(delivery).await.is_err() {
            return Ok(Some(Session { conn, ch }));
        }
    }
}

/// The consumer's bounds.
#[derive(Debug, Clone)]
pub struct Limits {
    /// The worker's byte budget for messages in flight.
    pub bytes: super::ByteBudget,
    /// `basic.qos` prefetch.
    pub prefetch: u16,
    /// Deliveries of one message after which it is held instead of requeued again.
    pub requeue_bound: u32,
}

/// A broker delivery as the pipeline's [`Delivery`]. Its earlier deliveries (`x-delivery-count`,
/// else this worker's requeue count) are its failed attempts so far.
fn delivery(
    d: lapin::message::Delivery,
    queue: String,
    (task, lane): (Option<String>, crate::lane::Lane),
    permit: tokio::sync::OwnedSemaphorePermit,
    (requeues, bound): (Arc<Requeues>, u32),
) -> Delivery {
    let key = Requeues::key(&queue, &d.data);
    let counted = d
        .properties
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get("x-delivery-count").and_then(as_u32));
    let prior = counted.unwrap_or(0).max(requeues.get(key));
    let origin = Origin::Amqp {
        queue: queue.clone(),
        delivery_tag: d.delivery_tag,
        redelivered: d.redelivered,
        message_id: d.properties.message_id().as_ref().map(|m| m.to_string()),
    };
    let headers = d
        .properties
        .headers()
        .as_ref()
        .map(|h| {
            h.inner()
                .iter()
                .map(|(k, v)| (k.to_string(), header_bytes(v)))
                .collect()
        })
        .unwrap_or_default();
    Delivery {
        timestamp_ms: enqueued_ms(&d.properties),
        payload: d.data,
        key: None,
        headers,
        default_task: task,
        lane,
        ack: Acker::Amqp(AmqpAck {
            acker: d.acker,
            origin: origin.short(),
            queue,
            requeues,
            key,
            prior,
            bound,
        }),
        origin,
        failed_attempts: prior,
        permit,
        bytes: None,
    }
}

fn as_u32(v: &AMQPValue) -> Option<u32> {
    match v {
        AMQPValue::LongLongInt(i) => u32::try_from(*i).ok(),
        AMQPValue::LongInt(i) => u32::try_from(*i).ok(),
        AMQPValue::LongUInt(i) => Some(*i),
        AMQPValue::ShortInt(i) => u32::try_from(*i).ok(),
        AMQPValue::ShortUInt(i) => Some(u32::from(*i)),
        _ => None,
    }
}

/// Declares durable input queues, the exchange, and a queue per output routing key bound to it.
async fn declare(cfg: &AmqpConfig, ch: &lapin::Channel) -> Result<(), lapin::Error> {
    let durable = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    for input in &cfg.inputs {
        ch.queue_declare(input.queue.as_str().into(), durable, FieldTable::default())
            .await?;
    }
    if !cfg.exchange.is_empty() {
        let opts = ExchangeDeclareOptions {
            durable: true,
            ..Default::default()
        };
        ch.exchange_declare(
            cfg.exchange.as_str().into(),
            ExchangeKind::Direct,
            opts,
            FieldTable::default(),
        )
        .await?;
    }
    let outputs = [
        Some(&cfg.results_routing_key),
        cfg.escalate_routing_key.as_ref(),
        Some(&cfg.dead_letter_routing_key),
    ];
    for key in outputs.into_iter().flatten() {
        ch.queue_declare(key.as_str().into(), durable, FieldTable::default())
            .await?;
        if !cfg.exchange.is_empty() {
            ch.queue_bind(
                key.as_str().into(),
                cfg.exchange.as_str().into(),
                key.as_str().into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
        }
    }
    Ok(())
}

/// When the message was published: RabbitMQ's `timestamp_in_ms` header (set by its
/// `message_interceptors.incoming.set_header_timestamp`), else the publisher's `timestamp`
/// property (seconds).
fn enqueued_ms(p: &lapin::BasicProperties) -> Option<i64> {
    let header = p.headers().as_ref().and_then(|h| {
        h.inner()
            .iter()
            .find(|(k, _)| k.as_str() == "timestamp_in_ms")
            .and_then(|(_, v)| match v {
                AMQPValue::LongLongInt(i) => Some(*i),
                AMQPValue::Timestamp(t) => i64::try_from(*t).ok(),
                AMQPValue::LongInt(i) => Some(i64::from(*i)),
                AMQPValue::LongUInt(i) => Some(i64::from(*i)),
                _ => None,
            })
    });
    header.or_else(|| {
        p.timestamp()
            .and_then(|t| i64::try_from(t).ok())
            .map(|t| t.saturating_mul(1000))
    })
}

fn header_bytes(v: &AMQPValue) -> Vec<u8> {
    match v {
        AMQPValue::LongString(s) => s.as_bytes().to_vec(),
        AMQPValue::ShortString(s) => s.as_str().as_bytes().to_vec(),
        AMQPValue::ByteArray(b) => b.as_slice().to_vec(),
        other => format!("{other:?}").into_bytes(),
    }
}
