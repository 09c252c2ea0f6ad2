//! The Kafka consumer group member: the consumer and its rebalance callbacks, which keep
//! [`Offsets`] in step with the assignment and notice a rebalance in progress, the acknowledgement
//! that stores an offset, and pausing partitions.

use std::sync::{Arc, Weak};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::error::{KafkaResult, RDKafkaErrorCode};
use rdkafka::{ClientContext, TopicPartitionList};

use super::offsets::Offsets;
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
            // Until the new assignment: nothing read now could be committed.
            self.offsets.set_rebalancing(true);
            tracing::info!(partitions = tpl.count(), abandoned, "partitions revoked");
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = rebalance {
            for e in tpl.elements() {
                self.offsets.assign(e.topic(), e.partition());
            }
            self.offsets.set_rebalancing(false);
            tracing::info!(partitions = tpl.count(), "partitions assigned");
        }
    }

    fn commit_callback(&self, result: KafkaResult<()>, _offsets: &TopicPartitionList) {
        let refused = result.err().and_then(|e| e.rdkafka_error_code())
            == Some(RDKafkaErrorCode::RebalanceInProgress);
        if refused && self.offsets.set_rebalancing(true) {
            tracing::info!(
                "the group is rebalancing (commits refused): no new reads until it completes"
            );
        }
    }
}

/// Stores a Kafka offset once the message's output is delivered.
pub struct OffsetAck {
    pub(super) offsets: Arc<Offsets>,
    // Weak: a delivery abandoned at the drain deadline must not keep the consumer open (closing
    // it commits and leaves the group).
    pub(super) consumer: Weak<KafkaConsumer>,
    pub(super) topic: String,
    pub(super) partition: i32,
    pub(super) offset: i64,
    pub(super) epoch: u64,
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
        let Some(consumer) = self.consumer.upgrade() else {
            return;
        };
        let (topic, partition) = (&self.topic, self.partition);
        self.offsets
            .done(topic, partition, self.epoch, self.offset, |o| {
                // store_offset takes the message's own offset (librdkafka commits o + 1).
                if let Err(e) = consumer.store_offset(topic, partition, o) {
                    // ERR__STATE: the partition was revoked meanwhile; the new owner redoes it.
                    tracing::debug!(%topic, partition, offset = o, error = %e, "offset not stored");
                }
            });
        for (topic, partition) in self.offsets.take_resumable() {
            tracing::info!(%topic, partition, "partition window drained: resuming the partition");
            pause_one(&consumer, &topic, partition, false);
        }
    }

    /// Whether its partition is still assigned here as when the message was read.
    pub fn owned(&self) -> bool {
        self.offsets.owned(&self.topic, self.partition, self.epoch)
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
    let offsets = Arc::new(Offsets::new(cfg.partition_window));
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

/// Pauses a partition over its window. The window may drain (and [`OffsetAck::done`] resume the
/// partition) between the check and this pause: then the pause would stick, so it is undone here.
/// Either order of the two threads' calls ends resumed once the window has drained.
pub(super) fn hold_back(consumer: &KafkaConsumer, offsets: &Offsets, topic: &str, partition: i32) {
    pause_one(consumer, topic, partition, true);
    if !offsets.is_throttled(topic, partition) {
        pause_one(consumer, topic, partition, false);
    }
}

fn pause_one(consumer: &KafkaConsumer, topic: &str, partition: i32, on: bool) {
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition(topic, partition);
    set_paused(consumer, &tpl, on);
}

/// Pauses (or resumes) every partition assigned now.
pub(super) fn pause(consumer: &KafkaConsumer, on: bool) {
    if let Ok(assignment) = consumer.assignment() {
        set_paused(consumer, &assignment, on);
    }
}

fn set_paused(consumer: &KafkaConsumer, tpl: &TopicPartitionList, on: bool) {
    let r = if on {
        consumer.pause(tpl)
    } else {
        consumer.resume(tpl)
    };
    if let Err(e) = r {
        tracing::warn!(partitions = tpl.count(), error = %e, paused = on, "pausing/resuming partitions failed");
    }
}
