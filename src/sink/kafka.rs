//! Kafka output: an idempotent producer with `acks=all`; a publish returns after the delivery report.

use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};

use super::{Outgoing, OutputKind, SinkError};
use crate::config::KafkaConfig;

/// The producer settings: `acks=all`, idempotent, then the configured properties.
pub fn producer_config(cfg: &KafkaConfig, client_id: &str) -> ClientConfig {
    let mut cc = ClientConfig::new();
    cc.set("bootstrap.servers", &cfg.brokers)
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("client.id", client_id)
        .set("linger.ms", "5");
    for (k, v) in cfg.properties.iter().chain(&cfg.producer_properties) {
        cc.set(k, v);
    }
    cc
}

/// Publishes to the configured result, escalation and dead-letter topics.
pub struct KafkaSink {
    producer: FutureProducer,
    results: String,
    escalate: Option<String>,
    dead_letter: String,
    max_message: usize,
}

/// librdkafka's default `message.max.bytes`.
const DEFAULT_MAX_MESSAGE: usize = 1_000_000;

/// The producer's `message.max.bytes` (the configured one, else librdkafka's default).
pub fn max_message_bytes(cfg: &KafkaConfig) -> usize {
    cfg.producer_properties
        .get("message.max.bytes")
        .or_else(|| cfg.properties.get("message.max.bytes"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(DEFAULT_MAX_MESSAGE)
}

impl KafkaSink {
    /// Creates the producer.
    pub fn new(cfg: &KafkaConfig) -> Result<Self, rdkafka::error::KafkaError> {
        Ok(Self {
            producer: producer_config(cfg, "labelmill-producer").create()?,
            results: cfg.results_topic.clone(),
            escalate: cfg.escalate_topic.clone(),
            dead_letter: cfg.dead_letter_topic.clone(),
            max_message: max_message_bytes(cfg),
        })
    }

    /// The producer's `message.max.bytes`.
    pub fn max_message_bytes(&self) -> usize {
        self.max_message
    }

    /// Sends one record and awaits its delivery report.
    pub async fn publish(&self, msg: Outgoing<'_>) -> Result<bool, SinkError> {
        let topic = match msg.kind {
            OutputKind::Result => &self.results,
            OutputKind::DeadLetter => &self.dead_letter,
            OutputKind::Escalate => match &self.escalate {
                Some(t) => t,
                None => return Ok(false),
            },
        };
        // librdkafka refuses a larger message too, but only after queueing it: say so up front.
        let size = super::wire_size(&msg);
        if size > self.max_message {
            return Err(SinkError::TooLarge {
                destination: topic.clone(),
                size,
                max: self.max_message,
            });
        }
        let mut headers = OwnedHeaders::new_with_capacity(msg.headers.len());
        for (k, v) in msg.headers {
            headers = headers.insert(Header {
                key: k,
                value: Some(v),
            });
        }
        let mut record = FutureRecord::<[u8], [u8]>::to(topic)
            .payload(msg.payload)
            .headers(headers);
        if let Some(k) = msg.key {
            record = record.key(k);
        }
        // Waits while the local queue is full (backpressure), then for the broker's report.
        match self.producer.send(record, Duration::from_secs(30)).await {
            Ok(_) => Ok(true),
            Err((error, _)) => Err(SinkError::Kafka {
                topic: topic.clone(),
                error,
            }),
        }
    }

    /// Flushes the producer's queue.
    pub fn flush(&self, timeout: Duration) {
        if let Err(e) = self.producer.flush(timeout) {
            tracing::warn!(error = %e, "kafka producer flush did not finish");
        }
    }
}
