//! Kafka input: a consumer group member that stores an offset only after its output is delivered.
//!
//! `enable.auto.offset.store=false` with auto-commit on: librdkafka commits only offsets this code
//! stored, and it stores one only when the message and every earlier one of its partition are done
//! ([`Offsets`]). The consumer keeps being polled while the engine is busy, so it never exceeds
//! `max.poll.interval.ms`: when too much is in flight it stops reading for at most [`pause_after`]
//! (a third of that interval, at most 5 s), then pauses the partitions and goes on polling.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::message::{Headers, Message, OwnedMessage};
use tokio::sync::{mpsc, watch, Semaphore};

pub use super::kafka_group::{consumer, KafkaConsumer, OffsetAck, RebalanceContext};
use super::kafka_group::{hold_back, pause};
use super::offsets::Offsets;
use super::{Acker, ByteBudget, Delivery, Origin};
use crate::config::KafkaConfig;

/// What bounds a Kafka source's intake.
pub struct Bounds {
    /// One permit per message in flight (its lane's in-flight bound).
    pub slots: Arc<Semaphore>,
    /// After a pause, resume once this many slots are free: resuming for every freed slot would
    /// refetch one message per round trip.
    pub resume_at: u32,
    /// The worker's in-flight bytes (`batching.max_in_flight_bytes`).
    pub bytes: ByteBudget,
}

/// Reads messages into `tx` until `stop` turns true, each holding one slot and its size in bytes.
/// When no slot (or not enough bytes) frees within [`pause_after`], the partitions are paused
/// (polling goes on) until it does. A partition holding `kafka.partition_window` offsets read
/// and not yet stored is paused on its own until half of them are.
pub async fn run(
    cfg: KafkaConfig,
    consumer: Arc<KafkaConsumer>,
    offsets: Arc<Offsets>,
    bounds: Bounds,
    tx: mpsc::Sender<Delivery>,
    mut stop: watch::Receiver<bool>,
) {
    let src = Reader {
        cfg: &cfg,
        consumer: &consumer,
        offsets: &offsets,
    };
    // Messages read while paused, registered (with their assignment epoch) when read.
    let mut held: VecDeque<Read> = VecDeque::new();
    let Bounds {
        slots,
        resume_at,
        bytes,
    } = bounds;
    let patience = pause_after(&cfg);
    loop {
        if *stop.borrow() {
            break;
        }
        if offsets.rebalancing() && held.is_empty() {
            // Polled on (the rebalance completes inside the poll), partitions paused. A rebalance
            // that never reports its end is given up on after twice `pause_after`.
            let limit = patience * 2;
            let done = tokio::time::timeout(limit, offsets.rebalanced());
            let never = std::future::pending();
            let waited = src.wait_polling(&mut held, &mut stop, Duration::ZERO, never, done);
            if waited.await.is_none() {
                return;
            }
            offsets.set_rebalancing(false);
        }
        let permit = match slots.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                let one = async { slots.clone().acquire_owned().await };
                let enough = async {
                    let p = slots.clone().acquire_many_owned(resume_at.max(1)).await;
                    // Keep one slot for the next message; the rest go back.
                    p.map(|mut p| p.split(1).expect("at least one permit"))
                };
                match src
                    .wait_polling(&mut held, &mut stop, patience, one, enough)
                    .await
                {
                    Some(p) => p.expect("the semaphore is never closed"),
                    None => return,
                }
            }
        };
        let read = match held.pop_front() {
            Some(r) => r,
            None => match recv_or_stop(&consumer, &mut stop).await {
                Some(Some(m)) => match src.register(m) {
                    Some(r) => r,
                    None => continue,
                },
                Some(None) => continue,
                None => break,
            },
        };
        let size = read.size();
        let held_bytes = match bytes.try_take(size) {
            Some(b) => b,
            None => {
                let (first, then) = (bytes.take(size), bytes.take(size));
                let wait = src.wait_polling(&mut held, &mut stop, patience, first, then);
                match wait.await {
                    Some(b) => b,
                    None => return,
                }
            }
        };
        if tx
            .send(src.delivery(read, permit, held_bytes))
            .await
            .is_err()
        {
            break;
        }
    }
}

/// A message read and registered in [`Offsets`] under the epoch of the assignment it came from.
struct Read {
    msg: OwnedMessage,
    epoch: u64,
}

impl Read {
    /// Bytes it holds: payload, key and headers.
    fn size(&self) -> usize {
        let headers = self.msg.headers().map_or(0, |h| {
            h.iter()
                .map(|x| x.key.len() + x.value.map_or(0, <[u8]>::len))
                .sum()
        });
        self.msg.payload().map_or(0, <[u8]>::len) + self.msg.key().map_or(0, <[u8]>::len) + headers
    }
}

struct Reader<'a> {
    cfg: &'a KafkaConfig,
    consumer: &'a Arc<KafkaConsumer>,
    offsets: &'a Arc<Offsets>,
}

impl Reader<'_> {
    /// Waits for `first`, then (past `patience`) for `then` with the partitions paused,
    /// polling on so that the group keeps this member (`max.poll.interval.ms`) and rebalances are
    /// served; messages fetched meanwhile are registered into `held`. `None` when stopping.
    async fn wait_polling<T>(
        &self,
        held: &mut VecDeque<Read>,
        stop: &mut watch::Receiver<bool>,
        patience: Duration,
        first: impl Future<Output = T>,
        then: impl Future<Output = T>,
    ) -> Option<T> {
        // A slot usually frees within a batch: wait without reading (librdkafka's prefetch queue
        // is bounded by queued.max.messages.kbytes). Pausing for every short wait would be slow:
        // a pause drops the prefetched messages and a resume fetches them again.
        if !patience.is_zero() {
            tokio::select! {
                v = tokio::time::timeout(patience, first) => if let Ok(v) = v { return Some(v) },
                _ = stop.changed() => return None,
            }
            tracing::info!(?patience, "engine behind: pausing kafka partitions");
        }
        pause(self.consumer, true);
        tokio::pin!(then);
        let got = loop {
            tokio::select! {
                v = &mut then => break Some(v),
                m = self.consumer.recv() => match m {
                    // Fetched before the pause, or from a partition assigned since.
                    Ok(m) => {
                        held.extend(self.register(m.detach()));
                        pause(self.consumer, true);
                    }
                    Err(e) => tracing::warn!(error = %e, "kafka consumer error"),
                },
                _ = stop.changed() => break None,
            }
        };
        pause(self.consumer, false);
        for (topic, partition) in self.offsets.throttled() {
            hold_back(self.consumer, self.offsets, &topic, partition);
        }
        got
    }

    /// Registers a message as in flight the moment it is read: a message kept while paused
    /// belongs to the assignment it was fetched in, not to one made since. Pauses its partition
    /// when that fills the partition's window.
    fn register(&self, msg: OwnedMessage) -> Option<Read> {
        let (topic, partition) = (msg.topic(), msg.partition());
        match self.offsets.received(topic, partition, msg.offset()) {
            Some(epoch) => {
                if self.offsets.over_window(topic, partition) {
                    tracing::warn!(topic, partition, window = self.cfg.partition_window,
                        "partition window full (an offset behind is unfinished): pausing the partition");
                    hold_back(self.consumer, self.offsets, topic, partition);
                }
                Some(Read { msg, epoch })
            }
            None => {
                tracing::warn!(topic = msg.topic(), partition = msg.partition(), offset = msg.offset(),
                    "message of a partition not assigned to this worker: dropped (its owner reads it)");
                None
            }
        }
    }

    fn delivery(
        &self,
        r: Read,
        permit: tokio::sync::OwnedSemaphorePermit,
        bytes: tokio::sync::OwnedSemaphorePermit,
    ) -> Delivery {
        let Read { msg, epoch } = r;
        let (topic, partition, offset) = (msg.topic().to_string(), msg.partition(), msg.offset());
        let headers = msg
            .headers()
            .map(|h| {
                h.iter()
                    .map(|x| (x.key.to_string(), x.value.unwrap_or_default().to_vec()))
                    .collect()
            })
            .unwrap_or_default();
        let input = self.cfg.inputs.iter().find(|i| i.topic == topic);
        let default_task = input.and_then(|i| i.task.clone());
        let lane = input.map(|i| i.lane).unwrap_or_default();
        Delivery {
            payload: msg.payload().unwrap_or_default().to_vec(),
            key: msg.key().map(<[u8]>::to_vec),
            headers,
            origin: Origin::Kafka {
                topic: topic.clone(),
                partition,
                offset,
                group: self.cfg.group_id.clone(),
            },
            default_task,
            lane,
            timestamp_ms: msg.timestamp().to_millis(),
            ack: Acker::Kafka(OffsetAck {
                offsets: self.offsets.clone(),
                consumer: Arc::downgrade(self.consumer),
                topic,
                partition,
                offset,
                epoch,
            }),
            failed_attempts: 0,
            permit,
            bytes: Some(bytes),
        }
    }
}

/// The next message; `Some(None)` after a consumer error (logged), `None` when stopping.
async fn recv_or_stop(
    consumer: &KafkaConsumer,
    stop: &mut watch::Receiver<bool>,
) -> Option<Option<OwnedMessage>> {
    tokio::select! {
        m = consumer.recv() => match m {
            Ok(m) => Some(Some(m.detach())),
            Err(e) => {
                tracing::warn!(error = %e, "kafka consumer error");
                Some(None)
            }
        },
        _ = stop.changed() => None,
    }
}

/// How long intake may wait for a slot without polling: well inside `max.poll.interval.ms`.
pub fn pause_after(cfg: &KafkaConfig) -> Duration {
    let interval_ms: u64 = cfg
        .consumer_properties
        .get("max.poll.interval.ms")
        .or_else(|| cfg.properties.get("max.poll.interval.ms"))
        .and_then(|v| v.parse().ok())
        .unwrap_or(300_000);
    Duration::from_millis(interval_ms / 3).min(Duration::from_secs(5))
}
