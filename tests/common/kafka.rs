//! Kafka test helpers: topics, a producer of documents, a reader of result topics.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use serde_json::Value;

/// One test's topics on the broker at `brokers`.
pub struct Topics {
    /// bootstrap.servers
    pub brokers: String,
    /// Name prefix.
    pub tag: String,
}

impl Topics {
    /// Creates `<tag>.input` with `partitions` partitions, and one-partition output topics.
    pub async fn create(brokers: &str, tag: &str, partitions: i32) -> Self {
        let tag = super::worker::unique(tag);
        let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .create()
            .unwrap();
        let names: Vec<(String, i32)> = vec![
            (format!("{tag}.input"), partitions),
            (format!("{tag}.results"), 1),
            (format!("{tag}.escalate"), 1),
            (format!("{tag}.dead"), 1),
        ];
        let topics: Vec<NewTopic> = names
            .iter()
            .map(|(n, p)| NewTopic::new(n, *p, TopicReplication::Fixed(1)))
            .collect();
        let res = admin
            .create_topics(&topics, &AdminOptions::new())
            .await
            .expect("Kafka at 127.0.0.1:9092 (run .ci/run, which starts tansu)");
        for r in res {
            r.expect("topic created");
        }
        Self {
            brokers: brokers.to_string(),
            tag,
        }
    }

    /// A topic's full name.
    pub fn topic(&self, t: &str) -> String {
        format!("{}.{t}", self.tag)
    }

    /// The worker's `[kafka]` section (and batching) for these topics.
    pub fn config(&self, extra: &str) -> String {
        format!(
            r#"
[batching]
max_docs = 16
max_wait = "20ms"
max_in_flight = 64

[retry]
max_attempts = 3
initial_backoff = "20ms"

[shutdown]
drain_deadline = "30s"

[kafka]
brokers = "{brokers}"
group_id = "{tag}.group"
inputs = [{{ topic = "{tag}.input", task = "ticket" }}]
results_topic = "{tag}.results"
escalate_topic = "{tag}.escalate"
dead_letter_topic = "{tag}.dead"
# A killed worker's partitions move on after 15 s instead of the default 45 s (shorter timeouts
# expire while tansu, busy on the same two cores, is slow to answer heartbeats).
consumer_properties = {{ "session.timeout.ms" = "15000", "heartbeat.interval.ms" = "1000" }}
{extra}
"#,
            brokers = self.brokers,
            tag = self.tag,
        )
    }

    /// Produces `docs` (key = id, a correlation header) to the input topic; returns each
    /// document's (partition, offset).
    pub async fn produce(&self, docs: &[(String, Vec<u8>)]) -> Vec<(i32, i64)> {
        let producer: FutureProducer = ClientConfig::new()
            .set("bootstrap.servers", &self.brokers)
            .set("enable.idempotence", "true")
            .set("linger.ms", "5")
            .create()
            .unwrap();
        let topic = self.topic("input");
        let futs: Vec<_> = docs
            .iter()
            .enumerate()
            .map(|(i, (id, payload))| {
                let headers = OwnedHeaders::new().insert(Header {
                    key: "correlation-id",
                    value: Some(format!("corr-{i}").as_bytes()),
                });
                let rec = FutureRecord::to(&topic)
                    .key(id.as_bytes())
                    .payload(payload.as_slice())
                    .headers(headers);
                producer.send(rec, Duration::from_secs(30))
            })
            .collect();
        let mut coords = Vec::new();
        for f in futs {
            let d = f.await.expect("produced");
            coords.push((d.partition, d.offset));
        }
        coords
    }
}

/// Reads a topic from the beginning, accumulating what it has seen.
pub struct Reader {
    consumer: BaseConsumer,
    topic: String,
    /// Next offset to read, per partition.
    next: HashMap<i32, i64>,
    /// Messages so far: (key, JSON body).
    pub seen: Vec<(Option<String>, Value)>,
}

impl Reader {
    /// Assigns every partition of `topic` from the beginning.
    pub fn new(brokers: &str, topic: &str) -> Self {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("group.id", super::worker::unique("reader"))
            .set("enable.auto.commit", "false")
            .create()
            .unwrap();
        let md = consumer
            .fetch_metadata(Some(topic), Duration::from_secs(10))
            .unwrap();
        let mut tpl = TopicPartitionList::new();
        for p in md.topics()[0].partitions() {
            tpl.add_partition_offset(topic, p.id(), Offset::Beginning)
                .unwrap();
        }
        consumer.assign(&tpl).unwrap();
        Self {
            consumer,
            topic: topic.to_string(),
            next: HashMap::new(),
            seen: Vec::new(),
        }
    }

    /// Reads until everything the topic holds now (its high watermarks) was read. False when
    /// that does not happen within `timeout` (the broker is unreachable, say).
    pub fn catch_up(&mut self, timeout: Duration) -> bool {
        let start = Instant::now();
        let Ok(md) = self.consumer.fetch_metadata(Some(&self.topic), timeout) else {
            return false;
        };
        let mut highs = Vec::new();
        for p in md.topics()[0].partitions() {
            match self.consumer.fetch_watermarks(&self.topic, p.id(), timeout) {
                Ok((_, high)) => highs.push((p.id(), high)),
                Err(_) => return false,
            }
        }
        while start.elapsed() < timeout {
            if highs
                .iter()
                .all(|(p, h)| self.next.get(p).copied().unwrap_or(0) >= *h)
            {
                return true;
            }
            self.poll_for(Duration::from_millis(50));
        }
        false
    }

    /// Polls for up to `d`.
    pub fn poll_for(&mut self, d: Duration) {
        let start = Instant::now();
        while start.elapsed() < d {
            match self.consumer.poll(Duration::from_millis(50)) {
                Some(Ok(m)) => {
                    self.next.insert(m.partition(), m.offset() + 1);
                    let key = m.key().map(|k| String::from_utf8_lossy(k).into_owned());
                    let v: Value = serde_json::from_slice(m.payload().unwrap_or_default()).unwrap();
                    self.seen.push((key, v));
                }
                Some(Err(e)) => eprintln!("reader: {e}"),
                None => {}
            }
        }
    }

    /// Polls until `want` messages were seen and then `settle` passed with nothing new, or
    /// `timeout`.
    pub fn collect(
        &mut self,
        want: usize,
        settle: Duration,
        timeout: Duration,
    ) -> &[(Option<String>, Value)] {
        let start = Instant::now();
        let mut last = (self.seen.len(), Instant::now());
        while start.elapsed() < timeout {
            self.poll_for(Duration::from_millis(100));
            if self.seen.len() != last.0 {
                last = (self.seen.len(), Instant::now());
            }
            if self.seen.len() >= want && last.1.elapsed() >= settle {
                break;
            }
        }
        &self.seen
    }

    /// The `id` of every message seen.
    pub fn ids(&self) -> Vec<String> {
        self.seen
            .iter()
            .map(|(_, v)| v["id"].as_str().unwrap().to_string())
            .collect()
    }
}

/// The group's committed offsets on `topic` (next offset to read, per partition); empty when the
/// broker cannot be asked (during an injected outage).
pub fn committed(brokers: &str, group: &str, topic: &str, partitions: i32) -> HashMap<i32, i64> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition(topic, p);
    }
    let got = match consumer.committed_offsets(tpl, Duration::from_secs(3)) {
        Ok(g) => g,
        Err(e) => {
            eprintln!("committed offsets of {group}: {e}");
            return HashMap::new();
        }
    };
    got.elements()
        .iter()
        .filter_map(|e| match e.offset() {
            Offset::Offset(o) => Some((e.partition(), o)),
            _ => None,
        })
        .collect()
}

/// Messages in `topic` now: the sum of its partitions' high watermarks.
pub fn message_count(brokers: &str, topic: &str) -> i64 {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .unwrap();
    let md = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .unwrap();
    md.topics()[0]
        .partitions()
        .iter()
        .map(|p| {
            consumer
                .fetch_watermarks(topic, p.id(), Duration::from_secs(10))
                .unwrap()
                .1
        })
        .sum()
}
