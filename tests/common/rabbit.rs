//! RabbitMQ test helpers: one test's exchange and queues on the broker at 127.0.0.1:5672.

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions,
    QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};
use serde_json::Value;

/// The broker .ci/run starts.
pub const URI: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// One test's exchange and queues.
pub struct Rabbit {
    /// The test's connection.
    pub conn: Connection,
    /// A confirm-mode channel.
    pub ch: Channel,
    /// The exchange name and queue name prefix.
    pub tag: String,
}

impl Rabbit {
    /// Declares the exchange and the queues input, backfill, results, escalate, dead.
    pub async fn new(tag: &str) -> Self {
        let tag = super::worker::unique(tag);
        let conn = Connection::connect(URI, ConnectionProperties::default())
            .await
            .expect("RabbitMQ at 127.0.0.1:5672 (run .ci/run, which starts it)");
        let ch = conn.create_channel().await.unwrap();
        ch.confirm_select(ConfirmSelectOptions::default())
            .await
            .unwrap();
        ch.exchange_declare(
            tag.as_str().into(),
            ExchangeKind::Direct,
            ExchangeDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
        let mut args = FieldTable::default();
        // Leftovers of failed runs disappear after ten idle minutes.
        args.insert("x-expires".into(), AMQPValue::LongUInt(600_000));
        for q in ["input", "backfill", "results", "escalate", "dead"] {
            let name = format!("{tag}.{q}");
            ch.queue_declare(
                name.as_str().into(),
                QueueDeclareOptions::default(),
                args.clone(),
            )
            .await
            .unwrap();
            if q != "input" && q != "backfill" {
                ch.queue_bind(
                    name.as_str().into(),
                    tag.as_str().into(),
                    q.into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await
                .unwrap();
            }
        }
        Self { conn, ch, tag }
    }

    /// The full name of queue `q`.
    pub fn queue(&self, q: &str) -> String {
        format!("{}.{q}", self.tag)
    }

    /// The worker's `[amqp]` section (and batching) for this test's names.
    pub fn config(&self, results_key: &str, extra: &str) -> String {
        format!(
            r#"
[batching]
max_docs = 16
max_wait = "20ms"
max_in_flight = 64

[retry]
max_attempts = 3
initial_backoff = "20ms"
max_backoff = "500ms"

[shutdown]
drain_deadline = "30s"

[amqp]
uri = "{URI}"
inputs = [{{ queue = "{input}" }}]
exchange = "{tag}"
results_routing_key = "{results_key}"
escalate_routing_key = "escalate"
dead_letter_routing_key = "dead"
{extra}
"#,
            input = self.queue("input"),
            tag = self.tag,
        )
    }

    /// Publishes payloads to the input queue (with a correlation header), waiting for confirms.
    pub async fn publish(&self, docs: &[Vec<u8>]) {
        self.publish_to("input", docs).await
    }

    /// Publishes payloads to queue `q` of this test.
    pub async fn publish_to(&self, q: &str, docs: &[Vec<u8>]) {
        for (i, p) in docs.iter().enumerate() {
            let mut h = FieldTable::default();
            h.insert(
                "correlation-id".into(),
                AMQPValue::LongString(LongString::from(format!("corr-{i}"))),
            );
            let c = self
                .ch
                .basic_publish(
                    "".into(),
                    self.queue(q).as_str().into(),
                    BasicPublishOptions::default(),
                    p,
                    BasicProperties::default()
                        .with_timestamp(now_secs())
                        .with_headers(h),
                )
                .await
                .unwrap();
            assert!(c.await.unwrap().is_ack());
        }
    }

    /// Reads JSON messages from queue `q` until `want` arrived and then `settle` passed with
    /// nothing new (so duplicates are seen too), or until `timeout`. Each message is acked once
    /// read; the reader's own channel is closed at the end, so what it prefetched and did not
    /// read goes back to the queue.
    pub async fn collect(
        &self,
        q: &str,
        want: usize,
        settle: Duration,
        timeout: Duration,
    ) -> Vec<Value> {
        let ch = self.conn.create_channel().await.unwrap();
        ch.basic_qos(50, Default::default()).await.unwrap();
        let mut consumer = ch
            .basic_consume(
                self.queue(q).as_str().into(),
                super::worker::unique("reader").as_str().into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
        let mut out = Vec::new();
        let start = Instant::now();
        let mut last = Instant::now();
        while start.elapsed() < timeout {
            if out.len() >= want && last.elapsed() >= settle {
                break;
            }
            match tokio::time::timeout(Duration::from_millis(100), consumer.next()).await {
                Ok(Some(Ok(d))) => {
                    out.push(serde_json::from_slice(&d.data).unwrap());
                    d.ack(Default::default()).await.unwrap();
                    last = Instant::now();
                }
                Ok(_) => break,
                Err(_) => {}
            }
        }
        ch.close(200, "done".into()).await.unwrap();
        out
    }

    /// Binds (`true`) or unbinds queue `q` from this test's exchange under routing key `q`.
    pub async fn bind(&self, q: &str, bound: bool) {
        let (queue, exchange) = (self.queue(q), self.tag.clone());
        if bound {
            self.ch
                .queue_bind(
                    queue.as_str().into(),
                    exchange.as_str().into(),
                    q.into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await
                .unwrap();
        } else {
            self.ch
                .queue_unbind(
                    queue.as_str().into(),
                    exchange.as_str().into(),
                    q.into(),
                    FieldTable::default(),
                )
                .await
                .unwrap();
        }
    }

    /// Messages ready in queue `q`.
    pub async fn depth(&self, q: &str) -> u32 {
        let mut args = FieldTable::default();
        args.insert("x-expires".into(), AMQPValue::LongUInt(600_000));
        let opts = QueueDeclareOptions {
            passive: true,
            ..Default::default()
        };
        self.ch
            .queue_declare(self.queue(q).as_str().into(), opts, args)
            .await
            .unwrap()
            .message_count()
    }
}

/// Seconds since the epoch (the AMQP `timestamp` property).
pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}
