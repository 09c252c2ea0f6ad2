//! The backlog estimate: queued documents times the measured engine cost per document, in seconds.
//!
//! Lag in messages says little on its own (a batch of short documents clears faster than one of
//! long ones, a 70B model is slower than a 7B); seconds of work queued is what autoscaling needs.
//! The cost is a moving average of engine seconds per document over recent batches.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use super::metrics;
use crate::lane::Lane;

/// Weight of the newest batch in the moving averages.
const ALPHA: f64 = 0.2;

/// Measured costs and queued documents per lane and source.
#[derive(Debug, Default)]
pub struct Backlog {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    cost: Option<f64>,
    tokens_per_second: Option<f64>,
    queued: BTreeMap<(Lane, String), f64>,
}

impl Backlog {
    /// Records an engine batch of `docs` documents (`doc_tokens` tokens) that took `engine`.
    pub fn batch(&self, docs: usize, doc_tokens: usize, engine: Duration) {
        if docs == 0 || engine.is_zero() {
            return;
        }
        let secs = engine.as_secs_f64();
        let mut g = self.inner.lock().expect("backlog lock");
        let ewma = |old: Option<f64>, new: f64| Some(old.map_or(new, |o| o + ALPHA * (new - o)));
        g.cost = ewma(g.cost, secs / docs as f64);
        g.tokens_per_second = ewma(g.tokens_per_second, doc_tokens as f64 / secs);
        metrics::rates(g.cost.unwrap_or(0.0), g.tokens_per_second.unwrap_or(0.0));
        publish(&g);
    }

    /// Sets the documents queued for this worker at `source` (a topic's lag, a queue's depth
    /// divided among its consumers).
    pub fn queued(&self, lane: Lane, source: &str, docs: f64) {
        let mut g = self.inner.lock().expect("backlog lock");
        g.queued.insert((lane, source.to_string()), docs.max(0.0));
        publish(&g);
    }

    /// Document tokens per engine second, once a batch has been measured.
    pub fn tokens_per_second(&self) -> Option<f64> {
        self.inner.lock().expect("backlog lock").tokens_per_second
    }

    /// The estimate of `lane`, in seconds (0 until a batch has been measured).
    pub fn seconds(&self, lane: Lane) -> f64 {
        seconds(&self.inner.lock().expect("backlog lock"), lane)
    }
}

fn seconds(g: &Inner, lane: Lane) -> f64 {
    let docs: f64 = g
        .queued
        .iter()
        .filter(|((l, _), _)| *l == lane)
        .map(|(_, d)| d)
        .sum();
    docs * g.cost.unwrap_or(0.0)
}

fn publish(g: &Inner) {
    for lane in [Lane::Live, Lane::Backfill] {
        metrics::backlog(lane, seconds(g, lane));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_are_queued_documents_times_the_cost_per_document() {
        let b = Backlog::default();
        b.queued(Lane::Live, "kafka:docs", 100.0);
        assert_eq!(b.seconds(Lane::Live), 0.0, "no cost measured yet");
        b.batch(10, 500, Duration::from_millis(200)); // 20 ms per document
        assert!((b.seconds(Lane::Live) - 2.0).abs() < 1e-9);
        b.queued(Lane::Live, "amqp:docs", 50.0);
        b.queued(Lane::Backfill, "amqp:bulk", 1000.0);
        assert!((b.seconds(Lane::Live) - 3.0).abs() < 1e-9);
        assert!((b.seconds(Lane::Backfill) - 20.0).abs() < 1e-9);
        // A slower batch moves the average a fifth of the way: 20 + 0.2 * (40 - 20) = 24 ms.
        b.batch(10, 500, Duration::from_millis(400));
        assert!((b.seconds(Lane::Live) - 150.0 * 0.024).abs() < 1e-9);
    }
}
