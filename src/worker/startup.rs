//! Start-up: the HTTP server first (probes answer, not ready, while the model loads), then the
//! model, the tasks and their cached prefixes.

use std::sync::Arc;

use super::{amqp_name, StartError};
use crate::config::WorkerConfig;
use crate::engine::prepared::PreparedTask;
use crate::engine::Engine;
use crate::task::TaskFile;
use crate::telemetry::health::Health;
use crate::telemetry::{lag, metrics};

/// What start-up made ready.
pub(super) struct Loaded {
    /// What the probes answer.
    pub health: Arc<Health>,
    /// The model.
    pub engine: Arc<Engine>,
    /// The tasks, prefixes cached.
    pub tasks: Arc<Vec<PreparedTask>>,
}

/// Serves `/metrics`, `/healthz` and `/readyz`, loads the model and prepares every task.
pub(super) async fn load(cfg: &WorkerConfig, health: Arc<Health>) -> Result<Loaded, StartError> {
    let prometheus = metrics::install()?;
    crate::telemetry::http::serve(cfg.http.listen, prometheus, health.clone())
        .await
        .map_err(|source| StartError::Http {
            addr: cfg.http.listen,
            source,
        })?;
    if cfg.kafka.is_some() {
        health.expect_broker(lag::KAFKA);
    }
    if let Some(a) = &cfg.amqp {
        for input in &a.inputs {
            health.expect_broker(&amqp_name(&input.queue));
        }
    }
    let specs = TaskFile::load(&cfg.model.tasks)?;
    let device = crate::device()?;
    let (model, tokenizer) = (cfg.model.model.clone(), cfg.model.tokenizer.clone());
    let weights = cfg.model.weights;
    let engine = tokio::task::spawn_blocking(move || {
        Engine::load_with(&model, tokenizer.as_deref(), &device, weights)
    })
    .await
    .expect("model loading does not panic")?;
    let engine = Arc::new(engine);
    let tasks: Vec<PreparedTask> = specs
        .task
        .iter()
        .map(|s| engine.prepare(s))
        .collect::<Result<_, _>>()?;
    for t in &tasks {
        engine.prefix_kv(t)?;
        tracing::info!(task = %t.name, prefix_tokens = t.prefix_ids.len(), "task ready (prefix cached)");
    }
    let cache = engine.prefix_cache_stats();
    metrics::prefix_cache(cache.hits, cache.misses);
    health.model_ready();
    for name in cfg.routing.escalate_below.keys() {
        if !tasks.iter().any(|t| &t.name == name) {
            tracing::warn!(task = %name, "routing.escalate_below names a task that is not defined");
        }
    }
    Ok(Loaded {
        health,
        engine,
        tasks: Arc::new(tasks),
    })
}
