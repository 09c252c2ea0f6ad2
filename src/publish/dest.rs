//! Where `labelmill publish` sends lines: a Kafka topic (idempotent producer, `acks=all`) or a
//! RabbitMQ queue (default exchange, confirm mode, `mandatory`). A send returns a future of the
//! broker's confirmation, so many publishes are in flight at once.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{BasicProperties, Confirmation, Connection};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};

use super::PublishError;
use crate::config::{AmqpConfig, KafkaConfig};

/// The confirmation of line `.0`.
pub type Confirm = Pin<Box<dyn Future<Output = (u64, Result<(), PublishError>)> + Send>>;

/// How long a Kafka publish may wait (local queue full, then the delivery report).
const KAFKA_TIMEOUT: Duration = Duration::from_secs(60);

/// A destination and its settings.
#[derive(Debug, Clone)]
pub enum Destination {
    /// A Kafka topic.
    Kafka {
        /// Brokers and client properties.
        cfg: KafkaConfig,
        /// The topic.
        topic: String,
    },
    /// A RabbitMQ queue, through the default exchange.
    Amqp {
        /// URI and declare flag.
        cfg: AmqpConfig,
        /// The queue.
        queue: String,
    },
}

impl Destination {
    /// `kafka:<topic>` or `amqp:<queue>`.
    pub fn name(&self) -> String {
        match self {
            Self::Kafka { topic, .. } => format!("kafka:{topic}"),
            Self::Amqp { queue, .. } => format!("amqp:{queue}"),
        }
    }
}

/// A connected publisher.
pub enum Publisher {
    /// Kafka.
    Kafka {
        /// The producer.
        producer: FutureProducer,
        /// The topic.
        topic: String,
    },
    /// RabbitMQ.
    Amqp(Box<AmqpOut>),
}

/// A RabbitMQ connection with a confirm-mode channel, publishing to one queue.
pub struct AmqpOut {
    conn: Connection,
    ch: lapin::Channel,
    queue: String,
}

/// Metadata of one line's message.
pub struct Line<'a> {
    /// 1-based line number in the input.
    pub number: u64,
    /// The document id, when the line has one (Kafka key: a document's versions share a partition).
    pub key: Option<Vec<u8>>,
    /// The line.
    pub payload: &'a [u8],
    /// `labelmill-publish-*` headers.
    pub headers: &'a [(&'static str, String)],
    /// A stable message id (`<file fingerprint>:<line>`), for consumers that deduplicate.
    pub message_id: String,
}

impl Publisher {
    /// Connects (and with `amqp.declare`, declares the queue).
    pub async fn connect(dest: &Destination) -> Result<Self, PublishError> {
        match dest {
            Destination::Kafka { cfg, topic } => {
                let producer = crate::sink::kafka::producer_config(cfg, "labelmill-publish")
                    .create()
                    .map_err(PublishError::Kafka)?;
                Ok(Self::Kafka {
                    producer,
                    topic: topic.clone(),
                })
            }
            Destination::Amqp { cfg, queue } => {
                let conn = crate::amqp_connect::connect(cfg, "labelmill publish").await?;
                let ch = conn.create_channel().await?;
                ch.confirm_select(ConfirmSelectOptions::default()).await?;
                if cfg.declare {
                    let durable = QueueDeclareOptions {
                        durable: true,
                        ..Default::default()
                    };
                    ch.queue_declare(queue.as_str().into(), durable, FieldTable::default())
                        .await?;
                }
                Ok(Self::Amqp(Box::new(AmqpOut {
                    conn,
                    ch,
                    queue: queue.clone(),
                })))
            }
        }
    }

    /// Sends one line; the returned future resolves when the broker confirms it.
    pub async fn send(&self, line: Line<'_>) -> Result<Confirm, PublishError> {
        let n = line.number;
        match self {
            Self::Kafka { producer, topic } => {
                let (producer, topic) = (producer.clone(), topic.clone());
                let payload = line.payload.to_vec();
                let mut headers = OwnedHeaders::new_with_capacity(line.headers.len());
                for (k, v) in line.headers {
                    headers = headers.insert(Header {
                        key: k,
                        value: Some(v.as_bytes()),
                    });
                }
                let key = line.key;
                Ok(Box::pin(async move {
                    let mut rec = FutureRecord::<[u8], [u8]>::to(&topic)
                        .payload(&payload)
                        .headers(headers);
                    if let Some(k) = &key {
                        rec = rec.key(k);
                    }
                    let r = producer
                        .send(rec, KAFKA_TIMEOUT)
                        .await
                        .map(|_| ())
                        .map_err(|(e, _)| PublishError::Kafka(e));
                    (n, r)
                }))
            }
            Self::Amqp(out) => {
                let (ch, queue) = (&out.ch, &out.queue);
                let mut headers = FieldTable::default();
                for (k, v) in line.headers {
                    headers.insert(
                        (*k).into(),
                        AMQPValue::LongString(LongString::from(v.as_bytes().to_vec())),
                    );
                }
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap_or_default()
                    .as_secs();
                let props = BasicProperties::default()
                    .with_content_type("application/json".into())
                    .with_delivery_mode(2)
                    .with_message_id(line.message_id.into())
                    .with_timestamp(now)
                    .with_headers(headers);
                let opts = BasicPublishOptions {
                    mandatory: true,
                    ..Default::default()
                };
                // Sent in line order on one channel; only the confirms are awaited concurrently.
                let confirm = ch
                    .basic_publish("".into(), queue.as_str().into(), opts, line.payload, props)
                    .await?;
                let queue = queue.clone();
                Ok(Box::pin(async move {
                    let r = match confirm.await {
                        Ok(Confirmation::Ack(None)) => Ok(()),
                        Ok(Confirmation::Ack(Some(_))) => Err(PublishError::Unroutable(queue)),
                        Ok(Confirmation::Nack(_)) => Err(PublishError::Nacked(queue)),
                        Ok(Confirmation::NotRequested) => {
                            unreachable!("the channel is in confirm mode")
                        }
                        Err(e) => Err(PublishError::Amqp(e)),
                    };
                    (n, r)
                }))
            }
        }
    }

    /// Flushes (Kafka) or closes the connection (RabbitMQ).
    pub async fn close(self) {
        match self {
            Self::Kafka { producer, .. } => {
                let _ = tokio::task::spawn_blocking(move || producer.flush(KAFKA_TIMEOUT)).await;
            }
            Self::Amqp(out) => {
                let AmqpOut { conn, ch, .. } = *out;
                let _ = ch.close(200, "labelmill publish done".into()).await;
                let _ = conn.close(200, "labelmill publish done".into()).await;
            }
        }
    }
}
