//! The broker side of the worker: Kafka consumers and RabbitMQ consumer sessions feeding one
//! intake channel under the in-flight slots, the sinks, the lag pollers; and, once the loop has
//! ended, their orderly close (producer flushed, offsets committed, sessions closed).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch, Semaphore};
use tokio::task::{JoinHandle, JoinSet};

use super::{amqp_name, StartError, LANES};
use crate::config::{AmqpConfig, KafkaConfig, WorkerConfig};
use crate::lane::Lane;
use crate::memory::Broker;
use crate::sink::{amqp::AmqpSink, kafka::KafkaSink, memory::MemorySink, Sink};
use crate::source::kafka::KafkaConsumer;
use crate::source::{self, Delivery};
use crate::telemetry::backlog::Backlog;
use crate::telemetry::health::Health;
use crate::telemetry::lag;

/// The in-flight bound of each lane, as semaphores.
pub(super) struct Slots {
    live: Arc<Semaphore>,
    backfill: Arc<Semaphore>,
    bounds: [usize; 2],
}

impl Slots {
    fn new(cfg: &WorkerConfig) -> Self {
        let bounds = [
            cfg.batching.in_flight(Lane::Live),
            cfg.batching.in_flight(Lane::Backfill),
        ];
        Self {
            live: Arc::new(Semaphore::new(bounds[0])),
            backfill: Arc::new(Semaphore::new(bounds[1])),
            bounds,
        }
    }

    fn of(&self, lane: Lane) -> &Arc<Semaphore> {
        match lane {
            Lane::Live => &self.live,
            Lane::Backfill => &self.backfill,
        }
    }

    fn bound(&self, lane: Lane) -> usize {
        self.bounds[usize::from(lane == Lane::Backfill)]
    }

    /// Documents of `lane` received and not yet acknowledged.
    pub(super) fn taken(&self, lane: Lane) -> usize {
        self.bound(lane) - self.of(lane).available_permits()
    }
}

/// Sources, sinks and pollers of a running worker.
pub(super) struct Io {
    pub slots: Slots,
    /// Bytes of deliveries in flight, over every source.
    bytes: source::ByteBudget,
    pub backlog: Arc<Backlog>,
    pub intake_rx: mpsc::Receiver<Delivery>,
    /// Turns true when the drain starts: sources stop taking messages.
    pub stop_tx: watch::Sender<bool>,
    pub stop_rx: watch::Receiver<bool>,
    pub pollers: JoinSet<()>,
    pub kafka_sink: Option<Arc<Sink>>,
    pub amqp_sink: Option<Arc<Sink>>,
    kafka_consumers: Vec<Arc<KafkaConsumer>>,
    source_tasks: JoinSet<()>,
    amqp_sources: Vec<JoinHandle<Option<source::amqp::Session>>>,
}

impl Io {
    /// Starts every configured source, sink and lag poller; with `memory`, the in-memory broker
    /// too (its sink takes the place of RabbitMQ's, as its deliveries behave as RabbitMQ's do).
    pub(super) fn start(
        cfg: &WorkerConfig,
        health: &Arc<Health>,
        memory: Option<Arc<Broker>>,
    ) -> Result<Self, StartError> {
        let slots = Slots::new(cfg);
        let (intake_tx, intake_rx) = mpsc::channel(slots.bounds[0] + slots.bounds[1]);
        let (stop_tx, stop_rx) = watch::channel(false);
        let mut io = Self {
            slots,
            bytes: source::ByteBudget::new(cfg.batching.max_in_flight_bytes),
            backlog: Arc::new(Backlog::default()),
            intake_rx,
            stop_tx,
            stop_rx,
            pollers: JoinSet::new(),
            kafka_sink: None,
            amqp_sink: None,
            kafka_consumers: Vec::new(),
            source_tasks: JoinSet::new(),
            amqp_sources: Vec::new(),
        };
        if let Some(k) = &cfg.kafka {
            io.kafka_sink = Some(io.start_kafka(k, cfg, health, &intake_tx)?);
        }
        if let Some(a) = &cfg.amqp {
            io.amqp_sink = Some(io.start_amqp(a, cfg, health, &intake_tx));
        }
        if let Some(broker) = memory {
            // The in-memory broker is always up.
            health.broker(source::memory::QUEUE, true);
            io.source_tasks.spawn(source::memory::run(
                broker.clone(),
                io.slots.of(Lane::Live).clone(),
                intake_tx.clone(),
                io.stop_rx.clone(),
            ));
            io.amqp_sink = Some(Arc::new(Sink::Memory(MemorySink::new(broker))));
        }
        Ok(io)
    }

    fn start_kafka(
        &mut self,
        k: &KafkaConfig,
        cfg: &WorkerConfig,
        health: &Arc<Health>,
        intake_tx: &mpsc::Sender<Delivery>,
    ) -> Result<Arc<Sink>, StartError> {
        let sink = Arc::new(Sink::Kafka(KafkaSink::new(k)?));
        let mut measured = Vec::new();
        for lane in LANES {
            let inputs: Vec<_> = k
                .inputs
                .iter()
                .filter(|i| i.lane == lane)
                .cloned()
                .collect();
            let Some(first) = inputs.first().map(|i| i.topic.clone()) else {
                continue;
            };
            // Backfill topics get their own consumer group, so their lag is measured apart.
            let mut lk = k.clone();
            lk.inputs = inputs;
            if lane == Lane::Backfill {
                lk.group_id = format!("{}-backfill", k.group_id);
            }
            // librdkafka's prefetch queue comes on top of the in-flight bytes: a quarter of the
            // budget (at most librdkafka's own default, 64 MiB), unless configured.
            let prefetch_kib = (cfg.batching.max_in_flight_bytes / 4 / 1024).clamp(1024, 65_536);
            lk.consumer_properties
                .entry("queued.max.messages.kbytes".into())
                .or_insert_with(|| prefetch_kib.to_string());
            let (consumer, offsets) = source::kafka::consumer(&lk)?;
            measured.push(lag::LagSource {
                lane,
                topic: first,
                consumer: Arc::downgrade(&consumer),
            });
            self.kafka_consumers.push(consumer.clone());
            let bound = self.slots.bound(lane);
            let resume_at = (bound / 2).max(cfg.batching.max_docs.min(bound));
            let bounds = source::kafka::Bounds {
                slots: self.slots.of(lane).clone(),
                resume_at: u32::try_from(resume_at).unwrap_or(u32::MAX),
                bytes: self.bytes.clone(),
            };
            self.source_tasks.spawn(source::kafka::run(
                lk,
                consumer,
                offsets,
                bounds,
                intake_tx.clone(),
                self.stop_rx.clone(),
            ));
        }
        self.pollers.spawn(lag::kafka(
            measured,
            self.backlog.clone(),
            health.clone(),
            cfg.metrics.poll_interval,
            self.stop_rx.clone(),
        ));
        Ok(sink)
    }

    fn start_amqp(
        &mut self,
        a: &AmqpConfig,
        cfg: &WorkerConfig,
        health: &Arc<Health>,
        intake_tx: &mpsc::Sender<Delivery>,
    ) -> Arc<Sink> {
        let sink = Arc::new(AmqpSink::new(a));
        let bytes = self.bytes.clone();
        // The broker sends up to the prefetch per queue: sized so that prefetched messages of
        // the largest accepted size fit the byte budget.
        let per_queue = cfg.batching.max_in_flight_bytes
            / cfg.input.max_payload_bytes.max(1)
            / a.inputs.len().max(1);
        // One session (connection, channel, consumer) per queue: a queue that is deleted or
        // refused stops only its own consumer, which reconnects by itself.
        for input in &a.inputs {
            let mut one = a.clone();
            one.inputs = vec![input.clone()];
            let bound = self.slots.bound(input.lane);
            let fits = bound.min(per_queue).max(1);
            let limits = source::amqp::Limits {
                bytes: bytes.clone(),
                prefetch: a
                    .prefetch
                    .unwrap_or(u16::try_from(fits).unwrap_or(u16::MAX)),
                requeue_bound: cfg.retry.max_attempts,
            };
            self.amqp_sources.push(tokio::spawn(source::amqp::run(
                one,
                limits,
                self.slots.of(input.lane).clone(),
                intake_tx.clone(),
                self.stop_rx.clone(),
                (health.clone(), amqp_name(&input.queue)),
            )));
        }
        self.pollers.spawn(lag::amqp(
            a.inputs.clone(),
            sink.clone(),
            self.backlog.clone(),
            cfg.metrics.poll_interval,
            self.stop_rx.clone(),
        ));
        Arc::new(Sink::Amqp(sink))
    }

    /// After the loop: sources stopped, pollers done, the producer flushed, stored offsets
    /// committed and consumers closed (leaving the group), RabbitMQ sessions closed.
    pub(super) async fn close(mut self) {
        while self.source_tasks.join_next().await.is_some() {}
        // The lag poller holds the consumers while it polls: let it finish before they close.
        let _ = tokio::time::timeout(Duration::from_secs(15), async {
            while self.pollers.join_next().await.is_some() {}
        })
        .await;
        self.pollers.abort_all();
        if let Some(k) = &self.kafka_sink {
            k.flush(Duration::from_secs(10));
        }
        for c in self.kafka_consumers {
            use rdkafka::consumer::{CommitMode, Consumer};
            if let Err(e) = c.commit_consumer_state(CommitMode::Sync) {
                tracing::debug!(error = %e, "final commit (nothing stored is normal)");
            }
            // Dropping the last handle closes the consumer: it commits and leaves the group.
            tokio::task::spawn_blocking(move || drop(c)).await.ok();
        }
        for h in self.amqp_sources {
            if let Ok(Some(session)) = h.await {
                session.close().await;
            }
        }
    }
}
