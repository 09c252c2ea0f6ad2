//! Input from the in-memory broker ([`crate::memory`]), for the in-process harness: one delivery
//! per in-flight slot, acknowledged or returned through [`MemoryAck`] as a RabbitMQ delivery is.

use std::sync::Arc;

use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};

use super::{Acker, Delivery, Origin};
use crate::memory::{Broker, Message};

/// The queue name the in-memory input reports in its origin.
pub const QUEUE: &str = "memory";

/// Completes one in-memory delivery. Dropped without an outcome, its message goes back to the
/// queue, as a RabbitMQ delivery does when its channel closes.
#[derive(Debug)]
pub struct MemoryAck {
    broker: Arc<Broker>,
    id: u64,
    done: bool,
}

impl MemoryAck {
    /// Acknowledges; `false` when the broker did not take it (a planted fault).
    pub fn ack(mut self) -> bool {
        self.done = true;
        self.broker.ack(self.id)
    }

    /// Returns the message to its queue.
    pub fn requeue(mut self) {
        self.done = true;
        self.broker.requeue(self.id);
    }
}

impl Drop for MemoryAck {
    fn drop(&mut self) {
        if !self.done {
            self.broker.requeue(self.id);
        }
    }
}

/// Delivers the broker's messages into `tx`, each holding a slot of `slots`, until `stop`.
pub async fn run(
    broker: Arc<Broker>,
    slots: Arc<Semaphore>,
    tx: mpsc::Sender<Delivery>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let permit = tokio::select! {
            p = slots.clone().acquire_owned() => p.expect("the slots are never closed"),
            _ = stop.wait_for(|s| *s) => return,
        };
        let message = loop {
            let mut changed = broker.watch();
            if let Some(m) = broker.deliver() {
                break m;
            }
            tokio::select! {
                _ = changed.changed() => {}
                _ = stop.wait_for(|s| *s) => return,
            }
        };
        if tx.send(delivery(&broker, message, permit)).await.is_err() {
            return;
        }
    }
}

fn delivery(broker: &Arc<Broker>, m: Message, permit: OwnedSemaphorePermit) -> Delivery {
    Delivery {
        origin: Origin::Amqp {
            queue: QUEUE.into(),
            delivery_tag: m.id,
            redelivered: m.deliveries > 0,
            message_id: Some(m.id.to_string()),
        },
        payload: m.payload,
        key: m.key,
        headers: m.headers,
        default_task: None,
        lane: crate::lane::Lane::Live,
        timestamp_ms: None,
        ack: Acker::Memory(MemoryAck {
            broker: broker.clone(),
            id: m.id,
            done: false,
        }),
        failed_attempts: m.deliveries,
        permit,
        bytes: None,
    }
}
