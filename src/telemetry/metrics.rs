//! Every metric the worker exports, in one place: names, help texts, buckets and the functions
//! that record them. Names follow `labelmill_<name>_<unit>[_total]`.

use std::sync::OnceLock;
use std::time::Duration;

use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram};
use metrics_exporter_prometheus::{BuildError, Matcher, PrometheusBuilder, PrometheusHandle};

use crate::lane::Lane;

/// Documents finished, by `task`, `lane` and `outcome` (`labelled`, `dead_lettered`, `given_up`).
pub const DOCUMENTS: &str = "labelmill_documents_total";
/// Dead letters published, by `code` and `stage`.
pub const DEAD_LETTERS: &str = "labelmill_dead_letters_total";
/// Results also sent to the escalation destination, by `task`.
pub const ESCALATIONS: &str = "labelmill_escalations_total";
/// Documents per engine batch, by `task`.
pub const BATCH_DOCUMENTS: &str = "labelmill_batch_documents";
/// Tokens per engine batch (document + suffix), by `task`. Rows are packed end to end, so this is
/// also the padded size: there is no padding.
pub const BATCH_TOKENS: &str = "labelmill_batch_tokens";
/// Engine time per batch, by `task`.
pub const BATCH_ENGINE_SECONDS: &str = "labelmill_batch_engine_seconds";
/// From the broker's timestamp (enqueue) to the result published, by `task` and `lane`.
pub const DOCUMENT_LATENCY: &str = "labelmill_document_latency_seconds";
/// Task prefixes found in the prefix KV cache.
pub const PREFIX_CACHE_HITS: &str = "labelmill_prefix_cache_hits_total";
/// Task prefixes computed (cache misses).
pub const PREFIX_CACHE_MISSES: &str = "labelmill_prefix_cache_misses_total";
/// Document tokens scored, by `task` (its rate is the document tokens/s).
pub const DOCUMENT_TOKENS: &str = "labelmill_document_tokens_total";
/// Document tokens per engine second, recent batches.
pub const DOCUMENT_TOKENS_PER_SECOND: &str = "labelmill_document_tokens_per_second";
/// Retries, by `kind` (`publish`, `engine`).
pub const RETRIES: &str = "labelmill_retries_total";
/// Kafka: high watermark minus committed offset, by `topic`, `partition`, `lane`.
pub const CONSUMER_LAG: &str = "labelmill_consumer_lag_messages";
/// RabbitMQ: messages ready in the queue, by `queue`, `lane`.
pub const QUEUE_DEPTH: &str = "labelmill_queue_depth_messages";
/// Engine seconds per document, recent batches.
pub const DOCUMENT_COST: &str = "labelmill_document_cost_seconds";
/// This worker's share of the queued documents times the cost per document, by `lane`.
pub const BACKLOG: &str = "labelmill_backlog_seconds";
/// Documents received and not yet acknowledged, by `lane`.
pub const IN_FLIGHT: &str = "labelmill_in_flight_documents";
/// 1 when `/readyz` answers ready, else 0.
pub const READY: &str = "labelmill_ready";
/// 1 while a route (engine, results, escalate, dead_letter) works, 0 during a systemic fault on it.
pub const ROUTE_UP: &str = "labelmill_route_up";
/// Acknowledgements (AMQP `basic.ack`/`nack`) that failed, by `queue`.
pub const ACK_FAILURES: &str = "labelmill_ack_failures_total";

/// Every metric name above.
pub const NAMES: &[&str] = &[
    DOCUMENTS,
    DEAD_LETTERS,
    ESCALATIONS,
    BATCH_DOCUMENTS,
    BATCH_TOKENS,
    BATCH_ENGINE_SECONDS,
    DOCUMENT_LATENCY,
    PREFIX_CACHE_HITS,
    PREFIX_CACHE_MISSES,
    DOCUMENT_TOKENS,
    DOCUMENT_TOKENS_PER_SECOND,
    RETRIES,
    CONSUMER_LAG,
    QUEUE_DEPTH,
    DOCUMENT_COST,
    BACKLOG,
    IN_FLIGHT,
    READY,
    ROUTE_UP,
    ACK_FAILURES,
];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the Prometheus recorder (once per process) and returns the handle that renders it.
pub fn install() -> Result<PrometheusHandle, BuildError> {
    // Workers started side by side in one process (the in-process tests) install it once.
    static INSTALLING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one_at_a_time = INSTALLING.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(h) = HANDLE.get() {
        return Ok(h.clone());
    }
    let sizes = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0];
    let tokens = [
        64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0, 4096.0, 8192.0, 16384.0, 32768.0,
    ];
    let seconds = [
        0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
    ];
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Full(BATCH_DOCUMENTS.into()), &sizes)?
        .set_buckets_for_metric(Matcher::Full(BATCH_TOKENS.into()), &tokens)?
        .set_buckets_for_metric(Matcher::Full(BATCH_ENGINE_SECONDS.into()), &seconds)?
        .set_buckets_for_metric(Matcher::Full(DOCUMENT_LATENCY.into()), &seconds)?
        .install_recorder()?;
    describe();
    Ok(HANDLE.get_or_init(|| handle).clone())
}

fn describe() {
    describe_counter!(DOCUMENTS, "Documents finished, by task, lane and outcome");
    describe_counter!(DEAD_LETTERS, "Dead letters published, by code and stage");
    describe_counter!(ESCALATIONS, "Results also published for escalation");
    describe_histogram!(BATCH_DOCUMENTS, "Documents per engine batch");
    describe_histogram!(
        BATCH_TOKENS,
        "Tokens per engine batch (packed rows: equals the padded size)"
    );
    describe_histogram!(
        BATCH_ENGINE_SECONDS,
        metrics::Unit::Seconds,
        "Engine time per batch"
    );
    describe_histogram!(
        DOCUMENT_LATENCY,
        metrics::Unit::Seconds,
        "Broker enqueue timestamp to result published"
    );
    describe_counter!(PREFIX_CACHE_HITS, "Task prefixes served from the KV cache");
    describe_counter!(PREFIX_CACHE_MISSES, "Task prefixes computed");
    describe_counter!(DOCUMENT_TOKENS, "Document tokens scored");
    describe_gauge!(
        DOCUMENT_TOKENS_PER_SECOND,
        "Document tokens per engine second, recent batches"
    );
    describe_counter!(RETRIES, "Retries by kind (publish, engine)");
    describe_gauge!(
        CONSUMER_LAG,
        "Kafka high watermark minus committed offset, assigned partitions"
    );
    describe_gauge!(QUEUE_DEPTH, "RabbitMQ messages ready in the queue");
    describe_gauge!(
        DOCUMENT_COST,
        metrics::Unit::Seconds,
        "Engine seconds per document, recent batches"
    );
    describe_gauge!(
        BACKLOG,
        metrics::Unit::Seconds,
        "Queued documents (this worker's share) times the cost per document"
    );
    describe_gauge!(IN_FLIGHT, "Documents received, not yet acknowledged");
    describe_gauge!(READY, "1 when ready for work");
    describe_gauge!(
        ROUTE_UP,
        "1 while the route works, 0 during a systemic fault on it"
    );
    describe_counter!(ACK_FAILURES, "Acknowledgements the broker did not take");
}

/// How a document ended, for [`DOCUMENTS`].
#[derive(Debug, Clone, Copy)]
pub enum Outcome {
    /// Result published.
    Labelled,
    /// Dead letter published.
    DeadLettered,
    /// Nothing could be published; left for redelivery.
    GivenUp,
}

impl Outcome {
    fn as_str(self) -> &'static str {
        match self {
            Self::Labelled => "labelled",
            Self::DeadLettered => "dead_lettered",
            Self::GivenUp => "given_up",
        }
    }
}

/// A document finished (`task` is empty when it was rejected before its task was known).
pub fn document(task: &str, lane: Lane, outcome: Outcome) {
    let task = if task.is_empty() { "none" } else { task };
    counter!(DOCUMENTS, "task" => task.to_string(), "lane" => lane.as_str(), "outcome" => outcome.as_str())
        .increment(1);
}

/// A dead letter was published.
pub fn dead_letter(code: &'static str, stage: &str) {
    counter!(DEAD_LETTERS, "code" => code, "stage" => stage.to_string()).increment(1);
}

/// A result was escalated.
pub fn escalation(task: &str) {
    counter!(ESCALATIONS, "task" => task.to_string()).increment(1);
}

/// The broker-to-result latency of one document.
pub fn latency(task: &str, lane: Lane, d: Duration) {
    histogram!(DOCUMENT_LATENCY, "task" => task.to_string(), "lane" => lane.as_str())
        .record(d.as_secs_f64());
}

/// One engine batch.
pub fn batch(task: &str, docs: usize, tokens: usize, doc_tokens: usize, engine: Duration) {
    histogram!(BATCH_DOCUMENTS, "task" => task.to_string()).record(docs as f64);
    histogram!(BATCH_TOKENS, "task" => task.to_string()).record(tokens as f64);
    histogram!(BATCH_ENGINE_SECONDS, "task" => task.to_string()).record(engine.as_secs_f64());
    counter!(DOCUMENT_TOKENS, "task" => task.to_string()).increment(doc_tokens as u64);
}

/// The engine's prefix cache counters (totals since start; the engine counts, the worker
/// reports).
pub fn prefix_cache(hits: u64, misses: u64) {
    counter!(PREFIX_CACHE_HITS).absolute(hits);
    counter!(PREFIX_CACHE_MISSES).absolute(misses);
}

/// A retry of `kind` (`publish` or `engine`).
pub fn retry(kind: &'static str) {
    counter!(RETRIES, "kind" => kind).increment(1);
}

/// Kafka lag of one partition.
pub fn consumer_lag(topic: &str, partition: i32, lane: Lane, lag: i64) {
    gauge!(CONSUMER_LAG, "topic" => topic.to_string(), "partition" => partition.to_string(), "lane" => lane.as_str())
        .set(lag as f64);
}

/// RabbitMQ ready messages of one queue.
pub fn queue_depth(queue: &str, lane: Lane, ready: u32) {
    gauge!(QUEUE_DEPTH, "queue" => queue.to_string(), "lane" => lane.as_str()).set(ready);
}

/// The measured engine rates.
pub fn rates(cost_per_doc: f64, tokens_per_second: f64) {
    gauge!(DOCUMENT_COST).set(cost_per_doc);
    gauge!(DOCUMENT_TOKENS_PER_SECOND).set(tokens_per_second);
}

/// The backlog estimate of `lane`.
pub fn backlog(lane: Lane, seconds: f64) {
    gauge!(BACKLOG, "lane" => lane.as_str()).set(seconds);
}

/// Documents in flight in `lane`.
pub fn in_flight(lane: Lane, n: usize) {
    gauge!(IN_FLIGHT, "lane" => lane.as_str()).set(n as f64);
}

/// Readiness.
pub fn ready(ready: bool) {
    gauge!(READY).set(if ready { 1.0 } else { 0.0 });
}

/// Whether `route` works.
pub fn route_up(route: &'static str, up: bool) {
    gauge!(ROUTE_UP, "route" => route).set(if up { 1.0 } else { 0.0 });
}

/// An acknowledgement failed.
pub fn ack_failure(queue: &str) {
    counter!(ACK_FAILURES, "queue" => queue.to_string()).increment(1);
}
