//! RabbitMQ output: a deadpool pool of confirm-mode channels on their own connection; every publish
//! is `mandatory` and waits for its confirm, and a returned (unroutable) message is a failure.

use std::time::Duration;

use deadpool::managed::{self, Metrics, RecycleError, RecycleResult};
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{BasicProperties, Channel, Confirmation, Connection};
use tokio::sync::Mutex;

use super::{Outgoing, OutputKind, SinkError};
use crate::config::AmqpConfig;

/// Opens confirm-mode channels, reconnecting when the publishing connection is gone.
pub struct ChannelManager {
    cfg: AmqpConfig,
    conn: Mutex<Option<Connection>>,
}

impl managed::Manager for ChannelManager {
    type Type = Channel;
    type Error = lapin::Error;

    async fn create(&self) -> Result<Channel, lapin::Error> {
        let mut conn = self.conn.lock().await;
        if !conn.as_ref().is_some_and(|c| c.status().connected()) {
            *conn = Some(crate::amqp_connect::connect(&self.cfg, "labelmill publisher").await?);
        }
        let ch = conn
            .as_ref()
            .expect("connected above")
            .create_channel()
            .await?;
        ch.confirm_select(ConfirmSelectOptions::default()).await?;
        Ok(ch)
    }

    async fn recycle(&self, ch: &mut Channel, _: &Metrics) -> RecycleResult<lapin::Error> {
        if ch.status().connected() {
            Ok(())
        } else {
            Err(RecycleError::message("channel closed"))
        }
    }
}

/// Publishes results, escalations and dead letters to the configured exchange.
pub struct AmqpSink {
    pool: managed::Pool<ChannelManager>,
    exchange: String,
    results: String,
    escalate: Option<String>,
    dead_letter: String,
    max_message: usize,
    confirm_timeout: Duration,
}

impl AmqpSink {
    /// A pool of `publish_channels` channels (opened on first use).
    pub fn new(cfg: &AmqpConfig) -> Self {
        let manager = ChannelManager {
            cfg: cfg.clone(),
            conn: Mutex::new(None),
        };
        let pool = managed::Pool::builder(manager)
            .max_size(cfg.publish_channels)
            .wait_timeout(Some(Duration::from_secs(30)))
            .create_timeout(Some(Duration::from_secs(10)))
            .runtime(deadpool::Runtime::Tokio1)
            .build()
            .expect("a pool with a runtime and a positive size builds");
        Self {
            pool,
            exchange: cfg.exchange.clone(),
            results: cfg.results_routing_key.clone(),
            escalate: cfg.escalate_routing_key.clone(),
            dead_letter: cfg.dead_letter_routing_key.clone(),
            max_message: cfg.max_message_bytes,
            confirm_timeout: cfg.confirm_timeout,
        }
    }

    /// The configured `max_message_bytes`.
    pub fn max_message_bytes(&self) -> usize {
        self.max_message
    }

    /// Publishes one message and waits for its confirm.
    pub async fn publish(&self, msg: Outgoing<'_>) -> Result<bool, SinkError> {
        let key = match msg.kind {
            OutputKind::Result => &self.results,
            OutputKind::DeadLetter => &self.dead_letter,
            OutputKind::Escalate => match &self.escalate {
                Some(k) => k,
                None => return Ok(false),
            },
        };
        let destination = format!("{}/{}", self.exchange, key);
        let size = super::wire_size(&msg);
        if size > self.max_message {
            return Err(SinkError::TooLarge {
                destination,
                size,
                max: self.max_message,
            });
        }
        let ch = self
            .pool
            .get()
            .await
            .map_err(|e| SinkError::Pool(e.to_string()))?;
        let mut headers = FieldTable::default();
        for (k, v) in msg.headers {
            headers.insert(
                k.as_str().into(),
                AMQPValue::LongString(LongString::from(v.clone())),
            );
        }
        let props = BasicProperties::default()
            .with_content_type("application/json".into())
            .with_delivery_mode(2)
            .with_headers(headers);
        let amqp = |error| SinkError::Amqp {
            destination: destination.clone(),
            error,
        };
        let publish = async {
            ch.basic_publish(
                self.exchange.as_str().into(),
                key.as_str().into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..Default::default()
                },
                msg.payload,
                props,
            )
            .await?
            .await
        };
        // A blocked broker (memory or disk alarm) never confirms: time out and retry on a fresh
        // channel rather than hold the document's slot forever.
        let confirm = match tokio::time::timeout(self.confirm_timeout, publish).await {
            Ok(r) => r.map_err(amqp)?,
            Err(_) => {
                // Close it: a late confirm must not land on a channel that publishes again.
                let ch = managed::Object::take(ch);
                tokio::spawn(async move {
                    let _ = ch.close(200, "labelmill: confirm timed out".into()).await;
                });
                return Err(SinkError::Timeout(destination));
            }
        };
        match confirm {
            // An unroutable mandatory message is returned, then acked: it was not delivered.
            Confirmation::Ack(Some(_)) => Err(SinkError::Unroutable(destination)),
            Confirmation::Ack(None) => Ok(true),
            Confirmation::Nack(_) => Err(SinkError::Nacked(destination)),
            Confirmation::NotRequested => unreachable!("every pooled channel is in confirm mode"),
        }
    }
}

impl AmqpSink {
    /// Messages ready in `queue` and its consumer count, by a passive declare on a pooled channel.
    pub async fn queue_state(&self, queue: &str) -> Result<(u32, u32), SinkError> {
        let ch = self
            .pool
            .get()
            .await
            .map_err(|e| SinkError::Pool(e.to_string()))?;
        let opts = lapin::options::QueueDeclareOptions {
            passive: true,
            ..Default::default()
        };
        match ch
            .queue_declare(queue.into(), opts, FieldTable::default())
            .await
        {
            Ok(q) => Ok((q.message_count(), q.consumer_count())),
            Err(error) => {
                // A failed passive declare closes the channel: keep it out of the pool.
                let _ = managed::Object::take(ch);
                Err(SinkError::Amqp {
                    destination: queue.to_string(),
                    error,
                })
            }
        }
    }
}
