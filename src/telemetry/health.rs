//! Liveness and readiness: what `/healthz` and `/readyz` answer.
//!
//! Ready means: the model is loaded and every task's prefix KV is warm, every broker connection
//! the worker needs is up, and no drain has started. A drain turns readiness off at once and for
//! good, so Kubernetes stops counting the pod while it finishes its in-flight work. A systemic
//! fault on a route (see `worker::breaker`) turns readiness off, with its reason, until it clears.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use serde::Serialize;

use super::metrics;

/// The worker's state as the probes see it.
#[derive(Debug, Default)]
pub struct Health {
    model: AtomicBool,
    draining: AtomicBool,
    brokers: Mutex<BTreeMap<String, bool>>,
    faults: Mutex<BTreeMap<String, String>>,
    stalled: Mutex<Option<String>>,
}

/// The body of `/readyz`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Readiness {
    /// All of the below.
    pub ready: bool,
    /// Model loaded, prefix caches warm.
    pub model: bool,
    /// A drain has started.
    pub draining: bool,
    /// Each broker connection the worker uses, and whether it is up.
    pub brokers: BTreeMap<String, bool>,
    /// Routes with a systemic fault (engine, results, escalate, dead_letter), and why.
    pub faults: BTreeMap<String, String>,
}

impl Health {
    /// Registers a broker connection that must be up (down until [`Self::broker`] says so).
    pub fn expect_broker(&self, name: &str) {
        self.brokers
            .lock()
            .expect("health lock")
            .insert(name.to_string(), false);
        self.publish();
    }

    /// Records whether the connection `name` is up.
    pub fn broker(&self, name: &str, up: bool) {
        let changed = self
            .brokers
            .lock()
            .expect("health lock")
            .insert(name.to_string(), up)
            != Some(up);
        if changed {
            tracing::info!(broker = name, up, "broker connection");
            self.publish();
        }
    }

    /// Records a systemic fault on `route` (`Some(reason)`), or that it cleared (`None`).
    pub fn fault(&self, route: &str, reason: Option<String>) {
        let mut faults = self.faults.lock().expect("health lock");
        match reason {
            Some(r) => faults.insert(route.to_string(), r),
            None => faults.remove(route),
        };
        drop(faults);
        self.publish();
    }

    /// Records that the engine is stuck (`Some(why)`: `/healthz` fails, so the orchestrator
    /// restarts the worker) or moving again (`None`).
    pub fn stalled(&self, why: Option<String>) {
        let mut s = self.stalled.lock().expect("health lock");
        if s.is_some() != why.is_some() {
            match &why {
                Some(w) => tracing::error!(reason = %w, "the engine is stuck: /healthz fails"),
                None => tracing::warn!("the stuck batch finished: /healthz passes again"),
            }
        }
        *s = why;
    }

    /// Liveness: `Err(why)` when the engine is stuck.
    pub fn liveness(&self) -> Result<(), String> {
        match &*self.stalled.lock().expect("health lock") {
            Some(why) => Err(why.clone()),
            None => Ok(()),
        }
    }

    /// The model is loaded and the prefix caches are warm.
    pub fn model_ready(&self) {
        self.model.store(true, Ordering::SeqCst);
        self.publish();
    }

    /// A drain started: not ready from now on.
    pub fn draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
        self.publish();
    }

    /// The current readiness.
    pub fn readiness(&self) -> Readiness {
        let brokers = self.brokers.lock().expect("health lock").clone();
        let model = self.model.load(Ordering::SeqCst);
        let draining = self.draining.load(Ordering::SeqCst);
        let faults = self.faults.lock().expect("health lock").clone();
        Readiness {
            ready: model
                && !draining
                && faults.is_empty()
                && !brokers.is_empty()
                && brokers.values().all(|&up| up),
            model,
            draining,
            brokers,
            faults,
        }
    }

    fn publish(&self) {
        metrics::ready(self.readiness().ready);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_needs_model_and_every_broker_and_ends_with_the_drain() {
        let h = Health::default();
        assert!(!h.readiness().ready, "nothing registered yet");
        h.expect_broker("kafka");
        h.expect_broker("amqp");
        h.model_ready();
        assert!(!h.readiness().ready, "brokers still down");
        h.broker("kafka", true);
        assert!(!h.readiness().ready, "amqp still down");
        h.broker("amqp", true);
        assert!(h.readiness().ready);
        h.broker("amqp", false);
        assert!(!h.readiness().ready, "a lost connection is not ready");
        h.broker("amqp", true);
        h.fault("results", Some("unroutable".into()));
        let r = h.readiness();
        assert!(!r.ready && r.faults["results"] == "unroutable");
        h.fault("results", None);
        assert!(h.readiness().ready, "a cleared fault is ready again");
        h.draining();
        let r = h.readiness();
        assert!(!r.ready && r.draining && r.model);
        h.broker("kafka", true);
        assert!(!h.readiness().ready, "a drain is final");
    }
}
