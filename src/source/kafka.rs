//! Kafka input: a consumer group member that stores an offset only after its output is delivered.
//!
//! `enable.auto.offset.store=false` with auto-commit on: librdkafka commits only offsets this code
//! stored, and it stores one only when the message and every earlier one of its partition are done
//! ([`Offsets`]). The consumer is polled all the time, also while the engine is busy, so it never
//! exceeds `max.poll.interval.ms`; when too much is in flight the partitions are paused instead.

use std::collections::VecDeque;
use std::sync::Arc;

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::message::{Headers, Message, OwnedMessage};
use rdkafka::ClientContext;
use tokio::sync::{mpsc, watch, Semaphore};

use super::offsets::Offsets;
use super::{Acker, Delivery, Origin};
use crate::config::KafkaConfig;

/// The consumer type of the worker.
pub type KafkaConsumer = StreamConsumer<RebalanceContext>;

/// Keeps [`Offsets`] in step with the group's assignment.
pub struct RebalanceContext {
    offsets: Arc<Offsets>,
}

impl ClientContext for RebalanceContext {}

impl ConsumerContext for RebalanceContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance {
            let mut abandoned = 0;
            for e in tpl.elements() {
                abandoned += self.offsets.revoke(e.topic(), e.partition());
            }
            // Commit what is stored (all of it delivered) before the partitions move; work still in
            // flight for them is abandoned and never stored, so the commit cannot pass it.
            if let Err(e) = consumer.commit_consumer_state(CommitMode::Sync) {
                tracing::debug!(error = %e, "commit on revoke (nothing stored is normal)");
            }
            tracing::info!(partitions = tpl.count(), abandoned, "partitions revoked");
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = rebalance {
            for e in tpl.elements() {
                self.offsets.assign(e.topic(), e.partition());
            }
            tracing::info!(partitions = tpl.count(), "partitions assigned");
        }
    }
}

/// Stores a Kafka offset once the message's output is delivered.
pub struct OffsetAck {
    offsets: Arc<Offsets>,
    consumer: Arc<KafkaConsumer>,
    topic: String,
    partition: i32,
    offset: i64,
    epoch: u64,
}

impl std::fmt::Debug for OffsetAck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "OffsetAck({}/{}@{})",
            self.topic, self.partition, self.offset
        )
    }
}

impl OffsetAck {
    /// Marks the message done; stores the partition's new watermark if it moved.
    pub fn done(self) {
        let (consumer, topic, partition) = (&self.consumer, &self.topic, self.partition);
        self.offsets
            .done(topic, partition, self.epoch, self.offset, |o| {
                // store_offset takes the message's own offset (librdkafka commits o + 1).
                if let Err(e) = consumer.store_offset(topic, partition, o) {
                    // ERR__STATE: the partition was revoked meanwhile; the new owner redoes it.
                    tracing::debug!(%topic, partition, offset = o, error = %e, "offset not stored");
                }
            });
    }

    /// Leaves the message undone: the partition's committed offset stays below it.
    pub fn abandon(self) {
        tracing::error!(topic = %self.topic, partition = self.partition, offset = self.offset,
            "message left unacknowledged: the partition's commit stays below it until a restart or rebalance");
    }
}

/// Creates the consumer and subscribes it to the configured topics.
pub fn consumer(
    cfg: &KafkaConfig,
) -> Result<(Arc<KafkaConsumer>, Arc<Offsets>), rdkafka::error::KafkaError> {
    let offsets = Arc::new(Offsets::new());
    let mut cc = ClientConfig::new();
    cc.set("bootstrap.servers", &cfg.brokers)
        .set("group.id", &cfg.group_id)
        .set("enable.auto.offset.store", "false")
        .set("enable.auto.commit", "true")
        // Committed offsets trail stored ones by at most this: it bounds what a crash replays.
        .set("auto.commit.interval.ms", "200")
        .set("auto.offset.reset", "earliest")
        .set("client.id", "labelmill-consumer");
    for (k, v) in cfg.properties.iter().chain(&cfg.consumer_properties) {
        cc.set(k, v);
    }
    let consumer: KafkaConsumer = cc.create_with_context(RebalanceContext {
        offsets: offsets.clone(),
    })?;
    let topics: Vec<&str> = cfg.inputs.iter().map(|i| i.topic.as_str()).collect();
    consumer.subscribe(&topics)?;
    Ok((Arc::new(consumer), offsets))
}

/// Reads messages into `tx` until `stop` turns true, holding one `slots` permit per message.
pub async fn run(
    cfg: KafkaConfig,
    consumer: Arc<KafkaConsumer>,
    offsets: Arc<Offsets>,
    slots: Arc<Semaphore>,
    tx: mpsc::Sender<Delivery>,
    mut stop: watch::Receiver<bool>,
) {
    let mut held: VecDeque<OwnedMessage> = VecDeque::new();
    let mut paused = false;
    loop {
        if *stop.borrow() {
            break;
        }
        let permit = match slots.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                // Too much in flight: pause rather than stop polling, so the group keeps us.
                pause(&consumer, true);
                paused = true;
                loop {
                    tokio::select! {
                        p = slots.clone().acquire_owned() => break p.expect("the semaphore is never closed"),
                        m = consumer.recv() => match m {
                            // Fetched before the pause, or from a partition assigned since.
                            Ok(m) => { held.push_back(m.detach()); pause(&consumer, true); }
                            Err(e) => tracing::warn!(error = %e, "kafka consumer error"),
                        },
                        _ = stop.changed() => return,
                    }
                }
            }
        };
        if paused {
            pause(&consumer, false);
            paused = false;
        }
        let msg = match held.pop_front() {
            Some(m) => m,
            None => tokio::select! {
                m = consumer.recv() => match m {
                    Ok(m) => m.detach(),
                    Err(e) => {
                        tracing::warn!(error = %e, "kafka consumer error");
                        continue;
                    }
                },
                _ = stop.changed() => break,
            },
        };
        let delivery = to_delivery(&cfg, &consumer, &offsets, msg, permit);
        if tx.send(delivery).await.is_err() {
            break;
        }
    }
}

fn pause(consumer: &KafkaConsumer, on: bool) {
    let Ok(assignment) = consumer.assignment() else {
        return;
    };
    let r = if on {
        consumer.pause(&assignment)
    } else {
        consumer.resume(&assignment)
    };
    if let Err(e) = r {
        tracing::warn!(error = %e, paused = on, "pausing/resuming partitions failed");
    }
}

fn to_delivery(
    cfg: &KafkaConfig,
    consumer: &Arc<KafkaConsumer>,
    offsets: &Arc<Offsets>,
    msg: OwnedMessage,
    permit: tokio::sync::OwnedSemaphorePermit,
) -> Delivery {
    let (topic, partition, offset) = (msg.topic().to_string(), msg.partition(), msg.offset());
    let epoch = offsets.received(&topic, partition, offset);
    let headers = msg
        .headers()
        .map(|h| {
            h.iter()
                .map(|x| (x.key.to_string(), x.value.unwrap_or_default().to_vec()))
                .collect()
        })
        .unwrap_or_default();
    let default_task = cfg
        .inputs
        .iter()
        .find(|i| i.topic == topic)
        .and_then(|i| i.task.clone());
    Delivery {
        payload: msg.payload().unwrap_or_default().to_vec(),
        key: msg.key().map(<[u8]>::to_vec),
        headers,
        origin: Origin::Kafka {
            topic: topic.clone(),
            partition,
            offset,
            group: cfg.group_id.clone(),
        },
        default_task,
        timestamp_ms: msg.timestamp().to_millis(),
        ack: Acker::Kafka(OffsetAck {
            offsets: offsets.clone(),
            consumer: consumer.clone(),
            topic,
            partition,
            offset,
            epoch,
        }),
        failed_attempts: 0,
        permit,
    }
}
