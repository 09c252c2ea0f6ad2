//! Where documents come from: a [`Delivery`] carries the payload, its coordinates and its acker.
//!
//! The acknowledgement travels with the data: a delivery is acknowledged (Kafka offset stored,
//! AMQP delivery acked) only by the code that saw its result or dead letter confirmed published.

pub mod amqp;
pub mod kafka;
mod kafka_group;
pub mod memory;
pub mod offsets;

use serde::Serialize;
use tokio::sync::OwnedSemaphorePermit;

/// Where a message was read: copied into results and dead letters.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "broker", rename_all = "lowercase")]
pub enum Origin {
    /// A Kafka record.
    Kafka {
        /// Topic.
        topic: String,
        /// Partition.
        partition: i32,
        /// Offset.
        offset: i64,
        /// Consumer group.
        group: String,
    },
    /// A RabbitMQ delivery.
    Amqp {
        /// Queue consumed.
        queue: String,
        /// Delivery tag on the consuming channel.
        delivery_tag: u64,
        /// Whether the broker delivered it before.
        redelivered: bool,
        /// The publisher's message id, when set.
        #[serde(skip_serializing_if = "Option::is_none")]
        message_id: Option<String>,
    },
}

impl Origin {
    /// `topic/partition@offset` or `queue#tag`, for logs.
    pub fn short(&self) -> String {
        match self {
            Self::Kafka {
                topic,
                partition,
                offset,
                ..
            } => format!("{topic}/{partition}@{offset}"),
            Self::Amqp {
                queue,
                delivery_tag,
                ..
            } => format!("{queue}#{delivery_tag}"),
        }
    }
}

/// One message read from a broker, not yet acknowledged.
#[derive(Debug)]
pub struct Delivery {
    /// The message body.
    pub payload: Vec<u8>,
    /// The Kafka key (AMQP: none).
    pub key: Option<Vec<u8>>,
    /// Message headers, in order.
    pub headers: Vec<(String, Vec<u8>)>,
    /// Coordinates.
    pub origin: Origin,
    /// The task bound to the topic or queue, for messages that name none.
    pub default_task: Option<String>,
    /// The lane of its topic or queue.
    pub lane: crate::lane::Lane,
    /// Broker timestamp in ms since the epoch, when known.
    pub timestamp_ms: Option<i64>,
    /// Completes the delivery.
    pub ack: Acker,
    /// Processing attempts so far that failed transiently.
    pub failed_attempts: u32,
    /// Holds one slot of the in-flight bound until the delivery is done with.
    pub permit: OwnedSemaphorePermit,
    /// Holds its size in the in-flight byte budget (Kafka and RabbitMQ deliveries).
    pub bytes: Option<OwnedSemaphorePermit>,
}

/// Bytes of messages in flight, over all sources of a worker (`batching.max_in_flight_bytes`).
#[derive(Debug, Clone)]
pub struct ByteBudget {
    sem: std::sync::Arc<tokio::sync::Semaphore>,
    max: usize,
}

impl ByteBudget {
    /// A budget of `max` bytes.
    pub fn new(max: usize) -> Self {
        let max = max.clamp(1, u32::MAX as usize);
        Self {
            sem: std::sync::Arc::new(tokio::sync::Semaphore::new(max)),
            max,
        }
    }

    /// Waits until `len` bytes are free and holds them (a message larger than the whole budget
    /// takes all of it, so it waits for the others but cannot wait forever).
    pub async fn take(&self, len: usize) -> OwnedSemaphorePermit {
        self.sem
            .clone()
            .acquire_many_owned(self.permits(len))
            .await
            .expect("the semaphore is never closed")
    }

    /// Holds `len` bytes if they are free now.
    pub fn try_take(&self, len: usize) -> Option<OwnedSemaphorePermit> {
        self.sem
            .clone()
            .try_acquire_many_owned(self.permits(len))
            .ok()
    }

    /// The permits `len` bytes take: at least one, at most the whole budget.
    fn permits(&self, len: usize) -> u32 {
        u32::try_from(len.clamp(1, self.max)).expect("max fits u32")
    }

    /// Bytes held now.
    pub fn taken(&self) -> usize {
        self.max - self.sem.available_permits()
    }
}

/// How a delivery is completed; each variant belongs to its source.
#[derive(Debug)]
pub enum Acker {
    /// Store the Kafka offset once every earlier offset of the partition is done too.
    Kafka(kafka::OffsetAck),
    /// Ack the AMQP delivery on its channel.
    Amqp(amqp::AmqpAck),
    /// Ack the message on the in-memory broker (the in-process harness).
    Memory(memory::MemoryAck),
}

impl Acker {
    /// The delivery's output is published: let the broker forget it. `false` when the broker
    /// did not take the ack (it will deliver the message again).
    pub async fn ack(self) -> bool {
        match self {
            Self::Kafka(a) => {
                a.done();
                true
            }
            Self::Amqp(a) => a.ack().await,
            Self::Memory(a) => a.ack(),
        }
    }

    /// Whether the outputs of this delivery may still be published here: false for a Kafka
    /// message whose partition was revoked since it was read (its new owner redoes it, so a
    /// result published here would land after, or race, the new owner's).
    pub fn owned(&self) -> bool {
        match self {
            Self::Kafka(a) => a.owned(),
            Self::Amqp(_) | Self::Memory(_) => true,
        }
    }

    /// The delivery could not be completed (its dead letter could not be published): leave it
    /// for the broker to deliver again. Kafka: its offset is never stored, so the partition's
    /// commit stays below it until a restart or rebalance; RabbitMQ: requeued now, unless it was
    /// delivered `retry.max_attempts` times already (then held, see [`amqp::GaveUp::Held`]).
    pub async fn give_up(self) -> amqp::GaveUp {
        match self {
            Self::Kafka(a) => {
                a.abandon();
                amqp::GaveUp::Requeued
            }
            Self::Amqp(a) => a.requeue().await,
            Self::Memory(a) => {
                a.requeue();
                amqp::GaveUp::Requeued
            }
        }
    }
}
