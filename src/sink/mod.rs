//! Where results go: a [`Sink`] publishes a record and returns only once the broker has it
//! (Kafka delivery report with `acks=all`, RabbitMQ publisher confirm of a routable message).

pub mod amqp;
pub mod kafka;
pub mod memory;

/// What a message adds to its payload, key and headers on the wire, counted against the limit.
pub const FRAMING_BYTES: usize = 512;

/// The size of `msg` as counted against a sink's limit.
pub fn wire_size(msg: &Outgoing<'_>) -> usize {
    let headers: usize = msg.headers.iter().map(|(k, v)| k.len() + v.len() + 8).sum();
    msg.payload.len() + msg.key.map_or(0, <[u8]>::len) + headers + FRAMING_BYTES
}

/// Which output a record is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputKind {
    /// A labelled result.
    Result,
    /// A low-confidence result, copied for a bigger model or a human.
    Escalate,
    /// Input that could not be classified.
    DeadLetter,
}

/// One record to publish.
#[derive(Debug, Clone, Copy)]
pub struct Outgoing<'a> {
    /// Its output.
    pub kind: OutputKind,
    /// Kafka key (the document id for results).
    pub key: Option<&'a [u8]>,
    /// The JSON body.
    pub payload: &'a [u8],
    /// Headers to set.
    pub headers: &'a [(String, Vec<u8>)],
}

/// A publish that did not reach the broker; transient from the pipeline's view (it retries).
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// The Kafka producer reported a failed delivery.
    #[error("kafka delivery to '{topic}' failed: {error}")]
    Kafka {
        /// Topic.
        topic: String,
        /// librdkafka's error.
        error: rdkafka::error::KafkaError,
    },
    /// The AMQP publish or its confirm failed.
    #[error("rabbitmq publish to '{destination}' failed: {error}")]
    Amqp {
        /// exchange/routing key.
        destination: String,
        /// lapin's error.
        error: lapin::Error,
    },
    /// No publishing channel could be had.
    #[error("no rabbitmq publishing channel: {0}")]
    Pool(String),
    /// The broker returned the message as unroutable (`mandatory`): nothing is bound there.
    #[error("'{0}' is unroutable: no queue is bound to it")]
    Unroutable(String),
    /// No confirm came in time.
    #[error("no confirm from the broker for '{0}' in time")]
    Timeout(String),
    /// The broker refused the message (nack).
    #[error("the broker refused the message for '{0}' (nack)")]
    Nacked(String),
    /// Not a broker error: the input's Kafka partition was revoked while its output waited for a
    /// retry, so nothing more is published for it here.
    #[error("the input's partition was revoked; its new owner redoes it")]
    Revoked,
    /// The destination refused the message (the in-memory broker's planted faults).
    #[error("'{destination}' refused the message: {reason}")]
    Refused {
        /// The destination.
        destination: String,
        /// Why.
        reason: String,
    },
    /// The message is larger than the destination takes.
    #[error("the message for '{destination}' has {size} bytes; the limit is {max}")]
    TooLarge {
        /// Topic or exchange/routing key.
        destination: String,
        /// Its size (payload, key and headers).
        size: usize,
        /// The limit.
        max: usize,
    },
}

impl SinkError {
    /// The stable dead-letter code when this message can never be published, whatever the state
    /// of the broker (retrying it cannot help); `None` for failures of the route itself.
    pub fn per_message(&self) -> Option<&'static str> {
        use rdkafka::error::{KafkaError, RDKafkaErrorCode as C};
        match self {
            Self::TooLarge { .. } => Some("result_too_large"),
            Self::Kafka {
                error: KafkaError::MessageProduction(code),
                ..
            } => match code {
                C::MessageSizeTooLarge | C::InvalidMessageSize | C::MessageBatchTooLarge => {
                    Some("result_too_large")
                }
                C::InvalidMessage | C::InvalidRecord | C::InvalidArgument => {
                    Some("publish_rejected")
                }
                _ => None,
            },
            _ => None,
        }
    }
}

/// A publisher for one broker.
pub enum Sink {
    /// Kafka topics.
    Kafka(kafka::KafkaSink),
    /// A RabbitMQ exchange.
    Amqp(std::sync::Arc<amqp::AmqpSink>),
    /// The in-memory broker (the in-process harness).
    Memory(memory::MemorySink),
}

impl Sink {
    /// Publishes `msg` and waits for the broker's acknowledgement. `Ok(false)` means the output is
    /// not configured (no escalation destination) and nothing was sent.
    pub async fn publish(&self, msg: Outgoing<'_>) -> Result<bool, SinkError> {
        match self {
            Self::Kafka(s) => s.publish(msg).await,
            Self::Amqp(s) => s.publish(msg).await,
            Self::Memory(s) => s.publish(msg).await,
        }
    }

    /// The largest message this sink publishes, payload, key and headers together.
    pub fn max_message_bytes(&self) -> usize {
        match self {
            Self::Kafka(s) => s.max_message_bytes(),
            Self::Amqp(s) => s.max_message_bytes(),
            Self::Memory(s) => s.max_message_bytes(),
        }
    }

    /// Waits for everything queued to be delivered (bounded by `timeout`).
    pub fn flush(&self, timeout: std::time::Duration) {
        if let Self::Kafka(s) = self {
            s.flush(timeout);
        }
    }
}
