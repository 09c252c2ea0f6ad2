//! Where results go: a [`Sink`] publishes a record and returns only once the broker has it
//! (Kafka delivery report with `acks=all`, RabbitMQ publisher confirm of a routable message).

pub mod amqp;
pub mod kafka;

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
}

/// A publisher for one broker.
pub enum Sink {
    /// Kafka topics.
    Kafka(kafka::KafkaSink),
    /// A RabbitMQ exchange.
    Amqp(std::sync::Arc<amqp::AmqpSink>),
}

impl Sink {
    /// Publishes `msg` and waits for the broker's acknowledgement. `Ok(false)` means the output is
    /// not configured (no escalation destination) and nothing was sent.
    pub async fn publish(&self, msg: Outgoing<'_>) -> Result<bool, SinkError> {
        match self {
            Self::Kafka(s) => s.publish(msg).await,
            Self::Amqp(s) => s.publish(msg).await,
        }
    }

    /// Waits for everything queued to be delivered (bounded by `timeout`).
    pub fn flush(&self, timeout: std::time::Duration) {
        if let Self::Kafka(s) = self {
            s.flush(timeout);
        }
    }
}
