//! Publishing to the in-memory broker ([`crate::memory`]), for the in-process harness: it answers
//! as a broker does, after the faults a test planted (a refused destination, a poison body, no
//! answer at all, a size limit).

use std::sync::Arc;

use super::{wire_size, Outgoing, OutputKind, SinkError};
use crate::memory::{Broker, Published};

/// The in-memory broker's publishing side.
#[derive(Debug, Clone)]
pub struct MemorySink {
    broker: Arc<Broker>,
}

/// The destination name of an output on the in-memory broker.
pub fn destination(kind: OutputKind) -> &'static str {
    match kind {
        OutputKind::Result => "results",
        OutputKind::Escalate => "escalate",
        OutputKind::DeadLetter => "dead_letter",
    }
}

impl MemorySink {
    /// Publishes to `broker`.
    pub fn new(broker: Arc<Broker>) -> Self {
        Self { broker }
    }

    /// The broker's current size limit.
    pub fn max_message_bytes(&self) -> usize {
        self.broker.state().faults.max_message_bytes
    }

    /// Publishes `msg` once the broker answers (never, while it hangs).
    pub async fn publish(&self, msg: Outgoing<'_>) -> Result<bool, SinkError> {
        let destination = destination(msg.kind);
        self.broker.until(|s| !s.faults.hang).await;
        let size = wire_size(&msg);
        self.broker.update(|s| {
            let refused = |reason: &str| SinkError::Refused {
                destination: destination.into(),
                reason: reason.into(),
            };
            if size > s.faults.max_message_bytes {
                return Err(SinkError::TooLarge {
                    destination: destination.into(),
                    size,
                    max: s.faults.max_message_bytes,
                });
            }
            if s.faults.refused.contains(destination) {
                s.refusals += 1;
                return Err(refused("the destination is down"));
            }
            let poisoned = |(d, m): &(&str, Vec<u8>)| {
                *d == destination && msg.payload.windows(m.len()).any(|w| w == m.as_slice())
            };
            if s.faults.poison.iter().any(poisoned) {
                s.refusals += 1;
                return Err(refused("this message is refused"));
            }
            s.published.push(Published {
                destination,
                payload: msg.payload.to_vec(),
                key: msg.key.map(<[u8]>::to_vec),
                headers: msg.headers.to_vec(),
            });
            Ok(true)
        })
    }
}
