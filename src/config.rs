//! The worker's configuration: one TOML file, every field overridable by `LABELMILL_*` variables.
//!
//! An override names a field by its path with `__` between levels, upper or lower case:
//! `LABELMILL_BATCHING__MAX_WAIT=20ms`, `LABELMILL_KAFKA__BROKERS=kafka:9092`,
//! `LABELMILL_KAFKA__INPUTS__0__TOPIC=docs`. Inside a `properties` table (passed verbatim to
//! librdkafka) `_` stands for `.`: `LABELMILL_KAFKA__PROPERTIES__SASL_PASSWORD` sets
//! `sasl.password`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::batch::BatchLimits;

/// The prefix of override variables.
pub const ENV_PREFIX: &str = "LABELMILL_";

/// The whole worker configuration.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerConfig {
    /// Model and task files.
    pub model: ModelConfig,
    /// How documents are grouped for the engine.
    #[serde(default)]
    pub batching: BatchingConfig,
    /// Retries of transient failures (engine errors, publish failures).
    #[serde(default)]
    pub retry: RetryConfig,
    /// Input checks.
    #[serde(default)]
    pub input: InputConfig,
    /// Confidence routing to the escalation destination.
    #[serde(default)]
    pub routing: RoutingConfig,
    /// Graceful shutdown.
    #[serde(default)]
    pub shutdown: ShutdownConfig,
    /// Kafka source and sink (absent: no Kafka).
    #[serde(default)]
    pub kafka: Option<KafkaConfig>,
    /// RabbitMQ source and sink (absent: no RabbitMQ).
    #[serde(default)]
    pub amqp: Option<AmqpConfig>,
    /// The HTTP server: `/metrics`, `/healthz`, `/readyz`.
    #[serde(default)]
    pub http: HttpConfig,
    /// Broker-side measurements (consumer lag, queue depth).
    #[serde(default)]
    pub metrics: MetricsConfig,
}

/// The operations HTTP server.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Address of `/metrics` (Prometheus), `/healthz` (alive) and `/readyz` (ready for work).
    /// Port 0 picks a free port (logged at start).
    pub listen: std::net::SocketAddr,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            listen: std::net::SocketAddr::from(([0, 0, 0, 0], 9464)),
        }
    }
}

/// Metrics read from the brokers.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// How often Kafka consumer lag and RabbitMQ queue depth are read (and the backlog estimate
    /// updated).
    #[serde(with = "humantime_serde")]
    pub poll_interval: Duration,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            poll_interval: Duration::from_secs(10),
        }
    }
}

pub use crate::lane::Lane;

/// Model, tokenizer and tasks.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// A LLaMA-architecture GGUF file.
    pub model: PathBuf,
    /// A HuggingFace tokenizer.json, checked against the GGUF's own tokenizer (default: the
    /// tokenizer the GGUF carries).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokenizer: Option<PathBuf>,
    /// The task file (TOML `[[task]]` tables).
    pub tasks: PathBuf,
    /// How projection weights are held: `quantized` (as stored, the default), `bf16` (dequantised
    /// once at load; GPUs with room for 2 bytes a weight), `bf16-per-batch` (dequantised per
    /// product; GPUs without that room) or `auto` (`quantized` on the CPU, else whichever fits).
    #[serde(default)]
    pub weights: crate::engine::WeightFormat,
}

/// Batch closing rules and the in-flight bound.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct BatchingConfig {
    /// A batch closes at this many documents.
    pub max_docs: usize,
    /// ... or at this many tokens (document + suffix, summed; packed, so no padding).
    pub max_tokens: usize,
    /// ... or when its oldest document has waited this long.
    #[serde(with = "humantime_serde")]
    pub max_wait: Duration,
    /// Documents received but not yet acknowledged, over all sources. Intake pauses at this bound,
    /// so memory stays bounded at any input rate; RabbitMQ's prefetch is set from it.
    /// Live inputs only: the backfill lane has its own bound.
    pub max_in_flight: usize,
    /// Bytes of messages received and not yet acknowledged, over all topics and queues: a bound
    /// in bytes besides the bound in documents (messages may be up to 16-128 MiB). RabbitMQ's
    /// default prefetch is sized from it (`max_in_flight_bytes / input.max_payload_bytes` per
    /// queue); Kafka's prefetch queue (`queued.max.messages.kbytes`) defaults to a quarter of it.
    pub max_in_flight_bytes: usize,
    /// Unacknowledged documents of the backfill lane (its own bound, so a backfill can never
    /// take the slots live traffic needs). Default: half of `max_in_flight`.
    pub backfill_in_flight: Option<usize>,
    /// While live batches wait, the share of engine batches still given to the backfill lane (so
    /// it keeps progressing under sustained live load); 0 is strict priority.
    pub backfill_share: f64,
    /// A batch still running after this long, and after 20 times its expected time (its tokens at
    /// the measured tokens/s), counts as a stuck engine: `/healthz` fails so the orchestrator
    /// restarts the worker; nothing of that batch is acknowledged.
    #[serde(with = "humantime_serde")]
    pub stall_after: Duration,
}

impl Default for BatchingConfig {
    fn default() -> Self {
        Self {
            max_docs: 32,
            max_tokens: 8192,
            max_wait: Duration::from_millis(50),
            max_in_flight: 256,
            max_in_flight_bytes: 256 << 20,
            backfill_in_flight: None,
            backfill_share: 0.1,
            stall_after: Duration::from_secs(120),
        }
    }
}

impl BatchingConfig {
    /// The engine's batch limits.
    pub fn limits(&self) -> BatchLimits {
        BatchLimits {
            max_docs: self.max_docs,
            max_tokens: self.max_tokens,
        }
    }

    /// The in-flight bound of `lane`.
    pub fn in_flight(&self, lane: Lane) -> usize {
        match lane {
            Lane::Live => self.max_in_flight,
            Lane::Backfill => self
                .backfill_in_flight
                .unwrap_or((self.max_in_flight / 2).max(self.max_docs)),
        }
    }
}

/// Backoff for transient failures.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryConfig {
    /// Attempts in all (the first one included) before `retries_exhausted`.
    pub max_attempts: u32,
    /// Wait before the second attempt; doubles each time.
    #[serde(with = "humantime_serde")]
    pub initial_backoff: Duration,
    /// Longest wait between attempts.
    #[serde(with = "humantime_serde")]
    pub max_backoff: Duration,
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self {
            max_attempts: 5,
            initial_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(10),
        }
    }
}

impl RetryConfig {
    /// The wait after failed attempt number `attempt` (1-based).
    pub fn backoff(&self, attempt: u32) -> Duration {
        let factor = 1u32 << attempt.saturating_sub(1).min(16);
        self.initial_backoff
            .saturating_mul(factor)
            .min(self.max_backoff)
    }
}

/// Input checks.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct InputConfig {
    /// Largest accepted message, in bytes (`payload_too_large` beyond).
    pub max_payload_bytes: usize,
    /// Input headers copied to results and dead letters (correlation and tracing ids).
    pub correlation_headers: Vec<String>,
}

impl Default for InputConfig {
    fn default() -> Self {
        Self {
            max_payload_bytes: 1 << 20,
            correlation_headers: vec![
                "correlation-id".into(),
                "x-correlation-id".into(),
                "x-request-id".into(),
                "traceparent".into(),
                "tracestate".into(),
            ],
        }
    }
}

/// Confidence routing: results below a task's threshold also go to the escalation destination.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RoutingConfig {
    /// Task name -> lowest top-label probability that is not escalated.
    pub escalate_below: BTreeMap<String, f64>,
}

/// Graceful shutdown.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ShutdownConfig {
    /// After SIGTERM/SIGINT, how long in-flight work may take to finish; what is not done by then
    /// is left unacknowledged for the broker to redeliver.
    #[serde(with = "humantime_serde")]
    pub drain_deadline: Duration,
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        Self {
            drain_deadline: Duration::from_secs(20),
        }
    }
}

/// Kafka: consumer group input, result/escalate/dead-letter topics.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// `bootstrap.servers`.
    pub brokers: String,
    /// Consumer group: workers with the same group share the partitions.
    #[serde(default = "default_group")]
    pub group_id: String,
    /// Topics read, each with an optional task (used when the message names none).
    pub inputs: Vec<KafkaInput>,
    /// Where results go (keyed by document id).
    pub results_topic: String,
    /// Where low-confidence results also go.
    #[serde(default)]
    pub escalate_topic: Option<String>,
    /// Where input that cannot be classified goes.
    pub dead_letter_topic: String,
    /// librdkafka properties for both clients (security.protocol, sasl.*, ssl.*, ...).
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
    /// librdkafka properties for the consumer only.
    #[serde(default)]
    pub consumer_properties: BTreeMap<String, String>,
    /// librdkafka properties for the producer only.
    #[serde(default)]
    pub producer_properties: BTreeMap<String, String>,
    /// Offsets of one partition read and not yet committed (finished ones behind an unfinished
    /// one count too) before the partition is paused: what a crash can make the group redo.
    #[serde(default = "default_partition_window")]
    pub partition_window: usize,
}

fn default_partition_window() -> usize {
    4096
}

fn default_group() -> String {
    "labelmill".into()
}

/// One input topic.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaInput {
    /// Topic name.
    pub topic: String,
    /// Task for messages that name none.
    #[serde(default)]
    pub task: Option<String>,
    /// Live (default) or backfill. Backfill topics are read by the consumer group
    /// `<group_id>-backfill`, so their lag is measured on its own.
    #[serde(default)]
    pub lane: Lane,
}

/// RabbitMQ: competing consumers on queues, results published to an exchange with confirms.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AmqpConfig {
    /// `amqp://user:pass@host:5672/vhost` or `amqps://...` for TLS.
    pub uri: String,
    /// Queues consumed, each with an optional task.
    pub inputs: Vec<AmqpInput>,
    /// Exchange results, escalations and dead letters are published to ("" is the default exchange).
    #[serde(default)]
    pub exchange: String,
    /// Routing key of results.
    pub results_routing_key: String,
    /// Routing key of escalated results.
    #[serde(default)]
    pub escalate_routing_key: Option<String>,
    /// Routing key of dead letters.
    pub dead_letter_routing_key: String,
    /// Unacknowledged deliveries per consumer (default: batching.max_in_flight).
    #[serde(default)]
    pub prefetch: Option<u16>,
    /// Publishing channels in the pool (confirm mode, separate from the consuming channel).
    #[serde(default = "default_publish_channels")]
    pub publish_channels: usize,
    /// Wait between reconnection attempts.
    #[serde(default = "default_reconnect", with = "humantime_serde")]
    pub reconnect_delay: Duration,
    /// Longest wait for a publisher confirm: a blocked broker (memory or disk alarm) or a stalled
    /// connection never confirms. On time-out the channel is closed (a late confirm must not land
    /// on a channel that publishes again) and the publish is retried on a fresh one.
    #[serde(default = "default_confirm_timeout", with = "humantime_serde")]
    pub confirm_timeout: Duration,
    /// Declare the topology on connect: the input queues, the exchange, and one durable queue per
    /// output routing key bound to it (for a quick start; in production the operator owns it).
    #[serde(default)]
    pub declare: bool,
    /// Largest message published (RabbitMQ's `max_message_size`, 16 MiB by default since 4.0):
    /// larger results go to the dead letters as `result_too_large`, and dead letters cut the
    /// payload they carry to fit.
    #[serde(default = "default_amqp_max_message")]
    pub max_message_bytes: usize,
    /// TLS for `amqps://` URIs: a CA bundle to trust and a client certificate (mutual TLS).
    #[serde(default)]
    pub tls: AmqpTls,
}

/// TLS files for RabbitMQ connections (PEM; relative paths are relative to the config file).
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AmqpTls {
    /// CA certificates to trust (instead of the system's store), PEM.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Client certificate chain for mutual TLS, PEM (with `key_file`).
    #[serde(default)]
    pub cert_file: Option<PathBuf>,
    /// The client certificate's private key, PKCS#8 PEM (with `cert_file`).
    #[serde(default)]
    pub key_file: Option<PathBuf>,
}

fn default_confirm_timeout() -> Duration {
    Duration::from_secs(30)
}

fn default_amqp_max_message() -> usize {
    16 << 20
}

fn default_publish_channels() -> usize {
    4
}

fn default_reconnect() -> Duration {
    Duration::from_secs(1)
}

/// One input queue.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AmqpInput {
    /// Queue name.
    pub queue: String,
    /// Task for messages that name none.
    #[serde(default)]
    pub task: Option<String>,
    /// Live (default) or backfill.
    #[serde(default)]
    pub lane: Lane,
}

/// A configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Not TOML, or not the expected fields.
    #[error("{origin}: {message}")]
    Parse {
        /// The file (and the variables applied).
        origin: String,
        /// The parser's message.
        message: String,
    },
    /// An override variable names no field.
    #[error("{var}: {message}")]
    Override {
        /// The variable.
        var: String,
        /// Why it does not apply.
        message: String,
    },
    /// Fields that parse but make no sense together.
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

impl WorkerConfig {
    /// Reads `path` and applies the `LABELMILL_*` variables of the process environment.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let mut cfg = Self::parse(&text, &path.display().to_string(), std::env::vars())?;
        // Relative model and task paths are relative to the config file, not the working directory.
        let base = path.parent().unwrap_or(Path::new("."));
        let tls = cfg.amqp.as_mut().map(|a| &mut a.tls);
        let tls_files = tls
            .into_iter()
            .flat_map(|t| [&mut t.ca_file, &mut t.cert_file, &mut t.key_file])
            .flatten();
        for p in [&mut cfg.model.model, &mut cfg.model.tasks]
            .into_iter()
            .chain(cfg.model.tokenizer.as_mut())
            .chain(tls_files)
        {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
        Ok(cfg)
    }

    /// Parses TOML text, applies the overrides among `vars`, and validates.
    pub fn parse(
        text: &str,
        origin: &str,
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let mut doc: toml::Value = toml::from_str(text).map_err(|e| ConfigError::Parse {
            origin: origin.to_string(),
            message: e.to_string(),
        })?;
        let mut applied = Vec::new();
        for (var, value) in vars {
            if let Some(path) = override_path(&var) {
                apply_override(&mut doc, &path, &value).map_err(|message| {
                    ConfigError::Override {
                        var: var.clone(),
                        message,
                    }
                })?;
                applied.push(var);
            }
        }
        let origin = if applied.is_empty() {
            origin.to_string()
        } else {
            format!("{origin} with {}", applied.join(", "))
        };
        let cfg: Self = doc
            .try_into()
            .map_err(|e: toml::de::Error| ConfigError::Parse {
                origin,
                message: e.to_string(),
            })?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks what serde cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: &str| Err(ConfigError::Invalid(m.to_string()));
        if self.kafka.is_none() && self.amqp.is_none() {
            return bad("configure at least one source: [kafka] or [amqp]");
        }
        let b = &self.batching;
        if b.max_docs == 0 || b.max_tokens == 0 || b.max_in_flight == 0 {
            return bad("batching.max_docs, max_tokens and max_in_flight must be positive");
        }
        if b.max_in_flight_bytes < self.input.max_payload_bytes {
            return bad("batching.max_in_flight_bytes must hold at least one message of input.max_payload_bytes");
        }
        if b.max_in_flight < b.max_docs {
            return bad("batching.max_in_flight must be at least batching.max_docs");
        }
        if let Some(n) = b.backfill_in_flight {
            if n < b.max_docs {
                return bad("batching.backfill_in_flight must be at least batching.max_docs");
            }
        }
        if !(0.0..1.0).contains(&b.backfill_share) {
            return bad("batching.backfill_share must be at least 0 and below 1 (1 would starve the live lane)");
        }
        if self.metrics.poll_interval.is_zero() {
            return bad("metrics.poll_interval must be positive");
        }
        if self.retry.max_attempts == 0 {
            return bad("retry.max_attempts must be at least 1");
        }
        if let Some(k) = &self.kafka {
            if k.partition_window < b.max_in_flight {
                return bad("kafka.partition_window must be at least batching.max_in_flight");
            }
            if k.inputs.is_empty() {
                return bad("kafka.inputs is empty");
            }
            if let Some(t) = twice(k.inputs.iter().map(|i| (i.topic.as_str(), i.lane))) {
                return Err(ConfigError::Invalid(format!(
                    "kafka topic '{t}' is listed in both lanes (it would be read, and labelled, twice)"
                )));
            }
            for key in ["enable.auto.offset.store", "enable.auto.commit", "group.id"] {
                if k.consumer_properties.contains_key(key) || k.properties.contains_key(key) {
                    return Err(ConfigError::Invalid(format!(
                        "kafka property '{key}' is set by labelmill (offsets are stored only after results are delivered)"
                    )));
                }
            }
            weakened_durability(k)?;
        }
        if let Some(a) = &self.amqp {
            if a.inputs.is_empty() {
                return bad("amqp.inputs is empty");
            }
            if let Some(q) = twice(a.inputs.iter().map(|i| (i.queue.as_str(), i.lane))) {
                return Err(ConfigError::Invalid(format!(
                    "amqp queue '{q}' is listed in both lanes"
                )));
            }
            if a.publish_channels == 0 {
                return bad("amqp.publish_channels must be positive");
            }
            if a.uri.parse::<lapin::uri::AMQPUri>().is_err() {
                // The parser's own message quotes the URI, password and all: not shown.
                return bad("amqp.uri does not parse as amqp[s]://user:password@host[:port]/vhost (not shown: it may hold a password; percent-encode '/', '@', ':' and '%' in the user name and password)");
            }
            if a.prefetch == Some(0) {
                return bad("amqp.prefetch must be positive (0 means unlimited to RabbitMQ)");
            }
            if a.tls.cert_file.is_some() != a.tls.key_file.is_some() {
                return bad("amqp.tls: cert_file and key_file go together (mutual TLS needs both)");
            }
            let tls_set = a.tls.ca_file.is_some() || a.tls.cert_file.is_some();
            if tls_set && !a.uri.trim_start().starts_with("amqps://") {
                return bad(
                    "amqp.tls is set but amqp.uri is not amqps://: the files would not be used",
                );
            }
        }
        if !self.routing.escalate_below.is_empty() {
            let kafka_missing = self
                .kafka
                .as_ref()
                .is_some_and(|k| k.escalate_topic.is_none());
            let amqp_missing = self
                .amqp
                .as_ref()
                .is_some_and(|a| a.escalate_routing_key.is_none());
            if kafka_missing || amqp_missing {
                return bad("routing.escalate_below is set: configure kafka.escalate_topic / amqp.escalate_routing_key");
            }
        }
        for (task, t) in &self.routing.escalate_below {
            if !(0.0..=1.0).contains(t) {
                return Err(ConfigError::Invalid(format!(
                    "routing.escalate_below.{task} = {t} is not a probability"
                )));
            }
        }
        Ok(())
    }

    /// The effective configuration as TOML, with passwords and secrets replaced by `****`.
    pub fn redacted_toml(&self) -> String {
        let mut v = toml::Value::try_from(self).expect("the config serialises");
        redact(&mut v, "");
        toml::to_string_pretty(&v).expect("a TOML table serialises")
    }
}

/// The producer settings labelmill's delivery guarantee rests on (offsets are stored only after a
/// write every in-sync replica has, written once): a property may repeat them, never weaken them.
const DURABLE_PRODUCER: [(&str, &[&str]); 3] = [
    ("acks", &["all", "-1"]),
    ("request.required.acks", &["all", "-1"]),
    ("enable.idempotence", &["true"]),
];

/// Refuses `properties` / `producer_properties` that would weaken the producer's durability.
fn weakened_durability(k: &KafkaConfig) -> Result<(), ConfigError> {
    for (key, durable) in DURABLE_PRODUCER {
        for (section, props) in [
            ("properties", &k.properties),
            ("producer_properties", &k.producer_properties),
        ] {
            if let Some(v) = props.get(key) {
                if !durable.contains(&v.trim().to_lowercase().as_str()) {
                    return Err(ConfigError::Invalid(format!(
                        "kafka.{section}.\"{key}\" = \"{v}\" would weaken the producer's durability: labelmill sets {key} = {} (offsets are stored only after results are durably written)",
                        durable[0]
                    )));
                }
            }
        }
    }
    Ok(())
}

/// A name that appears with both lanes.
fn twice<'a>(inputs: impl Iterator<Item = (&'a str, Lane)> + Clone) -> Option<&'a str> {
    let all = inputs.clone();
    inputs
        .filter(|&(n, l)| all.clone().any(|(m, k)| m == n && k != l))
        .map(|(n, _)| n)
        .next()
}

/// `LABELMILL_A__B__C` -> `["a", "b", "c"]`; variables without `__` are not config overrides.
fn override_path(var: &str) -> Option<Vec<String>> {
    let rest = var.strip_prefix(ENV_PREFIX)?;
    if !rest.contains("__") {
        return None;
    }
    Some(rest.split("__").map(|s| s.to_string()).collect())
}

fn apply_override(doc: &mut toml::Value, path: &[String], value: &str) -> Result<(), String> {
    let mut node = doc;
    let mut in_properties = false;
    for (i, seg) in path.iter().enumerate() {
        let last = i + 1 == path.len();
        let key = if in_properties {
            seg.to_lowercase().replace('_', ".")
        } else {
            seg.to_lowercase()
        };
        match node {
            toml::Value::Table(t) => {
                if last {
                    let parsed =
                        if in_properties || matches!(t.get(&key), Some(toml::Value::String(_))) {
                            toml::Value::String(value.to_string())
                        } else {
                            parse_scalar(value)
                        };
                    t.insert(key, parsed);
                    return Ok(());
                }
                in_properties = key.ends_with("properties");
                node = t
                    .entry(key)
                    .or_insert_with(|| toml::Value::Table(Default::default()));
            }
            toml::Value::Array(a) => {
                let idx: usize = key
                    .parse()
                    .map_err(|_| format!("'{seg}' is not an index into a list"))?;
                let len = a.len();
                let item = a
                    .get_mut(idx)
                    .ok_or_else(|| format!("index {idx} is past the end of a list of {len}"))?;
                if last {
                    *item = parse_scalar(value);
                    return Ok(());
                }
                node = item;
            }
            _ => return Err(format!("'{seg}' goes below a plain value")),
        }
    }
    Ok(())
}

/// A TOML scalar or inline array/table if `s` parses as one, otherwise the string itself.
fn parse_scalar(s: &str) -> toml::Value {
    toml::from_str::<toml::Table>(&format!("v = {s}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(s.to_string()))
}

/// Keys whose values are never shown: anything named a password or secret, librdkafka's inline
/// private key and keystore settings, and every OAUTHBEARER setting (tokens, client secrets,
/// extensions).
fn is_secret(key: &str) -> bool {
    let k = key.to_lowercase();
    k.contains("password")
        || k.contains("secret")
        || k == "ssl.key.pem"
        || k.starts_with("ssl.keystore.")
        || k.starts_with("sasl.oauthbearer.")
}

fn redact(v: &mut toml::Value, key: &str) {
    match v {
        toml::Value::Table(t) => {
            for (k, child) in t.iter_mut() {
                redact(child, k);
            }
        }
        toml::Value::Array(a) => a.iter_mut().for_each(|c| redact(c, key)),
        toml::Value::String(s) if is_secret(key) => *s = "****".into(),
        toml::Value::String(s) if key == "uri" => *s = redact_uri(s),
        _ => {}
    }
}

/// `amqp://user:pass@host/` -> `amqp://user:****@host/`. Everything between the scheme and the
/// last `@` counts as the user part (a raw `/` or `@` in a password included); a string without
/// `://` that has an `@` or a `:` after its scheme is not shown at all.
pub fn redact_uri(uri: &str) -> String {
    let Some(scheme_end) = uri.find("://") else {
        let after_scheme = uri.split_once(':').map_or("", |(_, rest)| rest);
        return if uri.contains('@') || after_scheme.contains(':') {
            "**** (not a URI; not shown)".to_string()
        } else {
            uri.to_string()
        };
    };
    let rest = &uri[scheme_end + 3..];
    let Some(at) = rest.rfind('@') else {
        return uri.to_string();
    };
    match rest[..at].find(':') {
        Some(colon) => format!(
            "{}{}:****{}",
            &uri[..scheme_end + 3],
            &rest[..colon],
            &rest[at..]
        ),
        None => uri.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = r#"
[model]
model = "m.gguf"
tokenizer = "t.json"
tasks = "tasks.toml"

[kafka]
brokers = "127.0.0.1:9092"
results_topic = "out"
escalate_topic = "esc"
dead_letter_topic = "dlq"
inputs = [{ topic = "in", task = "ticket" }]
properties = { "security.protocol" = "SASL_SSL", "sasl.password" = "hunter2" }

[amqp]
uri = "amqps://svc:s3cret@rabbit:5671/%2f"
inputs = [{ queue = "docs" }]
results_routing_key = "results"
escalate_routing_key = "escalate"
dead_letter_routing_key = "dead"
"#;

    fn vars(v: &[(&str, &str)]) -> Vec<(String, String)> {
        v.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn weight_format_defaults_to_quantized_and_is_overridable() {
        use crate::engine::WeightFormat;
        let c = WorkerConfig::parse(BASE, "t", vars(&[])).unwrap();
        assert_eq!(c.model.weights, WeightFormat::Quantized);
        let text = BASE.replace(
            "tasks = \"tasks.toml\"",
            "tasks = \"tasks.toml\"\nweights = \"bf16\"",
        );
        let c = WorkerConfig::parse(&text, "t", vars(&[])).unwrap();
        assert_eq!(c.model.weights, WeightFormat::Bf16);
        let c = WorkerConfig::parse(
            BASE,
            "t",
            vars(&[("LABELMILL_MODEL__WEIGHTS", "bf16-per-batch")]),
        )
        .unwrap();
        assert_eq!(c.model.weights, WeightFormat::Bf16PerBatch);
        let err = WorkerConfig::parse(BASE, "t", vars(&[("LABELMILL_MODEL__WEIGHTS", "fp8")]))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("fp8") && err.contains("bf16-per-batch"),
            "{err}"
        );
    }

    #[test]
    fn defaults_and_overrides() {
        let c = WorkerConfig::parse(BASE, "t", vars(&[])).unwrap();
        assert_eq!(c.batching.max_wait, Duration::from_millis(50));
        assert_eq!(c.kafka.as_ref().unwrap().group_id, "labelmill");
        let c = WorkerConfig::parse(
            BASE,
            "t",
            vars(&[
                ("LABELMILL_BATCHING__MAX_WAIT", "20ms"),
                ("LABELMILL_BATCHING__MAX_DOCS", "8"),
                ("LABELMILL_KAFKA__BROKERS", "kafka:9092"),
                ("LABELMILL_KAFKA__INPUTS__0__TOPIC", "docs"),
                ("LABELMILL_KAFKA__PROPERTIES__SASL_USERNAME", "svc"),
                ("LABELMILL_ROUTING__ESCALATE_BELOW__TICKET", "0.7"),
                ("LABELMILL_THREADS", "2"),
                ("PATH", "/bin"),
            ]),
        )
        .unwrap();
        assert_eq!(c.batching.max_wait, Duration::from_millis(20));
        assert_eq!(c.batching.max_docs, 8);
        let k = c.kafka.unwrap();
        assert_eq!(k.brokers, "kafka:9092");
        assert_eq!(k.inputs[0].topic, "docs");
        assert_eq!(k.properties["sasl.username"], "svc");
        assert_eq!(c.routing.escalate_below["ticket"], 0.7);
    }

    #[test]
    fn bad_overrides_and_values_are_refused() {
        let e = WorkerConfig::parse(BASE, "t", vars(&[("LABELMILL_BATCHING__MAX_WAT", "1s")]));
        assert!(e.unwrap_err().to_string().contains("max_wat"));
        let e = WorkerConfig::parse(
            BASE,
            "t",
            vars(&[("LABELMILL_KAFKA__INPUTS__3__TOPIC", "x")]),
        );
        assert!(matches!(e, Err(ConfigError::Override { .. })));
        let e = WorkerConfig::parse(
            BASE,
            "t",
            vars(&[(
                "LABELMILL_KAFKA__CONSUMER_PROPERTIES__ENABLE_AUTO_OFFSET_STORE",
                "true",
            )]),
        );
        assert!(matches!(e, Err(ConfigError::Invalid(_))));
        // Escalating with nowhere to send escalations is a configuration error.
        let no_dest = BASE.replace("escalate_topic = \"esc\"\n", "");
        let e = WorkerConfig::parse(
            &no_dest,
            "t",
            vars(&[("LABELMILL_ROUTING__ESCALATE_BELOW__TICKET", "0.7")]),
        );
        assert!(e.unwrap_err().to_string().contains("escalate_topic"));
        // A topic in both lanes would be read by two consumer groups.
        let both = BASE.replace(
            "inputs = [{ topic = \"in\", task = \"ticket\" }]",
            "inputs = [{ topic = \"in\" }, { topic = \"in\", lane = \"backfill\" }]",
        );
        assert_ne!(both, BASE);
        let e = WorkerConfig::parse(&both, "t", vars(&[]));
        assert!(e.unwrap_err().to_string().contains("both lanes"));
        let lanes = both.replace("{ topic = \"in\" }", "{ topic = \"live\" }");
        let c = WorkerConfig::parse(&lanes, "t", vars(&[])).unwrap();
        let k = c.kafka.unwrap();
        assert_eq!(
            (k.inputs[0].lane, k.inputs[1].lane),
            (Lane::Live, Lane::Backfill)
        );
        let e = WorkerConfig::parse(
            BASE,
            "t",
            vars(&[("LABELMILL_BATCHING__BACKFILL_SHARE", "1.0")]),
        );
        assert!(e.unwrap_err().to_string().contains("backfill_share"));
    }

    #[test]
    fn secrets_are_redacted() {
        let c = WorkerConfig::parse(BASE, "t", vars(&[])).unwrap();
        let shown = c.redacted_toml();
        assert!(
            !shown.contains("hunter2") && !shown.contains("s3cret"),
            "{shown}"
        );
        assert!(
            shown.contains("amqps://svc:****@rabbit:5671/%2f"),
            "{shown}"
        );
        assert!(shown.contains("SASL_SSL"));
        assert_eq!(redact_uri("amqp://host/"), "amqp://host/");
    }

    #[test]
    fn uris_the_parser_rejects_never_show_their_password() {
        for (uri, secret) in [
            ("amqp:user:pw-one@host", "pw-one"),
            ("amqp://user:pa/ss-two@host:5672/%2f", "ss-two"),
            ("amqp://user:p@ss-three@host/", "ss-three"),
            ("amqps://svc:four:colon@rabbit/", "colon"),
        ] {
            let shown = redact_uri(uri);
            assert!(!shown.contains(secret), "{uri} shown as {shown}");
        }
        assert_eq!(redact_uri("amqp://u:pw@h/v"), "amqp://u:****@h/v");
        // A URI the AMQP parser refuses is refused at start-up without quoting it.
        let text = BASE.replace(
            "amqps://svc:s3cret@rabbit:5671/%2f",
            "amqp:svc:s3cret@rabbit",
        );
        assert_ne!(text, BASE, "the test's base config changed");
        let e = WorkerConfig::parse(&text, "t", vars(&[]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("amqp.uri") && !e.contains("s3cret"), "{e}");
    }

    #[test]
    fn every_librdkafka_secret_is_redacted() {
        let secrets = [
            ("ssl.key.pem", "-----BEGIN PRIVATE KEY-----MIIEvQ"),
            ("ssl.key.password", "keypass-1"),
            ("ssl.keystore.password", "storepass-2"),
            ("ssl.keystore.location", "/secrets/store-3.p12"),
            ("sasl.oauthbearer.client.secret", "oauth-4"),
            ("sasl.oauthbearer.config", "principal=svc token-5"),
            ("sasl.oauthbearer.extensions", "ext-6"),
            ("sasl.password", "sasl-7"),
        ];
        let mut c = WorkerConfig::parse(BASE, "t", vars(&[])).unwrap();
        let k = c.kafka.as_mut().unwrap();
        for (key, v) in secrets {
            k.properties.insert(key.into(), v.into());
            k.producer_properties.insert(key.into(), v.into());
        }
        let shown = c.redacted_toml();
        for (key, v) in secrets {
            assert!(!shown.contains(v), "{key} shown: {shown}");
        }
    }

    #[test]
    fn producer_durability_cannot_be_weakened() {
        for (section, key, value) in [
            ("producer_properties", "acks", "1"),
            ("producer_properties", "acks", "0"),
            ("properties", "acks", "leader"),
            ("producer_properties", "request.required.acks", "1"),
            ("producer_properties", "enable.idempotence", "false"),
            ("properties", "enable.idempotence", "false"),
        ] {
            let env = format!(
                "LABELMILL_KAFKA__{}__{}",
                section.to_uppercase(),
                key.to_uppercase().replace('.', "_")
            );
            let e = WorkerConfig::parse(BASE, "t", vars(&[(&env, value)]));
            let msg = e
                .expect_err(&format!("{section}.{key} = {value} accepted"))
                .to_string();
            assert!(msg.contains(key) && msg.contains("durab"), "{msg}");
        }
        // Repeating the durable values is allowed.
        for (key, value) in [
            ("ACKS", "all"),
            ("ACKS", "-1"),
            ("ENABLE_IDEMPOTENCE", "true"),
        ] {
            let env = format!("LABELMILL_KAFKA__PRODUCER_PROPERTIES__{key}");
            assert!(WorkerConfig::parse(BASE, "t", vars(&[(&env, value)])).is_ok());
        }
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let r = RetryConfig {
            max_attempts: 9,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(500),
        };
        let waits: Vec<u128> = (1..=5).map(|a| r.backoff(a).as_millis()).collect();
        assert_eq!(waits, vec![100, 200, 400, 500, 500]);
    }
}
