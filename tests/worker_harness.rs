//! The worker in process on the in-memory broker (`labelmill::memory`), under tokio's paused
//! clock: batching, retries, the circuit breaker, failed acks and the drain, with the real engine
//! on the generated model, and no broker and no real sleep. Time stands still while the model
//! loads and a batch computes (both run on tokio's blocking pool) and jumps ahead only when the
//! worker waits on a timer, so the virtual times asserted here are the worker's own waits.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::worker::Setup;
use labelmill::config::WorkerConfig;
use labelmill::memory::{Broker, State};
use labelmill::telemetry::health::Health;
use labelmill::worker::{run_in_memory, StartError, WorkerReport};
use serde_json::Value;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// A worker config on the generated model with `sections` (batching, retry, shutdown).
fn config(setup: &Setup, sections: &str) -> WorkerConfig {
    let text = format!(
        "[model]\nmodel = {:?}\ntokenizer = {:?}\ntasks = {:?}\n[http]\nlisten = \"127.0.0.1:0\"\n{sections}",
        setup.model.join("model.gguf"),
        setup.model.join("tokenizer.json"),
        setup.dir.path().join("tasks.toml"),
    );
    toml::from_str(&text).expect("test config parses")
}

/// A document for the `ticket` task.
fn doc(i: usize) -> String {
    format!(r#"{{"id":"d{i}","text":"my invoice number {i} was charged twice","task":"ticket"}}"#)
}

/// A worker running on `broker`.
struct Run {
    broker: Arc<Broker>,
    health: Arc<Health>,
    stop: oneshot::Sender<()>,
    worker: JoinHandle<Result<WorkerReport, StartError>>,
}

impl Run {
    fn start(cfg: WorkerConfig, broker: &Arc<Broker>) -> Self {
        let health = Arc::new(Health::default());
        let (stop, stopped) = oneshot::channel::<()>();
        let worker = tokio::spawn(run_in_memory(cfg, broker.clone(), health.clone(), async {
            let _ = stopped.await;
        }));
        Self {
            broker: broker.clone(),
            health,
            stop,
            worker,
        }
    }

    /// Waits (virtual time) until `cond` holds for the broker, at most `limit`; panics if the
    /// worker stops first.
    async fn until(&mut self, limit: Duration, what: &str, cond: impl Fn(&State) -> bool) {
        let waited = tokio::time::timeout(limit, async {
            tokio::select! {
                _ = self.broker.until(cond) => {}
                ended = &mut self.worker => panic!("the worker stopped: {ended:?}"),
            }
        });
        if waited.await.is_err() {
            let s = self.broker.state();
            panic!(
                "not within {limit:?}: {what}; published {}, acks {}, unacked {}, queued {}",
                s.published.len(),
                s.acks.len(),
                s.unacked.len(),
                s.queue.len()
            );
        }
    }

    /// Starts the drain and returns the exit report.
    async fn stop(self) -> WorkerReport {
        let _ = self.stop.send(());
        self.worker
            .await
            .expect("the worker does not panic")
            .expect("the worker starts")
    }
}

fn ids(s: &State, destination: &str) -> Vec<String> {
    s.to(destination)
        .iter()
        .map(|p| {
            let v: Value = serde_json::from_slice(&p.payload).unwrap();
            v["id"].as_str().unwrap().to_string()
        })
        .collect()
}

const QUICK: &str = "[batching]\nmax_docs = 4\nmax_in_flight = 12\nmax_wait = \"10s\"\n";

#[tokio::test(start_paused = true)]
async fn full_batches_go_at_once_and_every_document_is_acked_exactly_once() {
    let setup = Setup::new();
    let broker = Broker::new();
    for i in 0..12 {
        broker.send(doc(i));
    }
    let t0 = Instant::now();
    let mut run = Run::start(config(&setup, QUICK), &broker);
    run.until(Duration::from_secs(60), "12 results", |s| {
        s.acks.len() == 12
    })
    .await;
    // Full batches do not wait for max_wait: no timer had to pass.
    assert!(t0.elapsed() < Duration::from_secs(10), "{:?}", t0.elapsed());
    let report = run.stop().await;
    assert_eq!(
        report.batches, 3,
        "12 documents in batches of 4: {report:?}"
    );
    assert_eq!(report.labelled, 12);
    let s = broker.state();
    let mut got = ids(&s, "results");
    got.sort();
    let mut want: Vec<String> = (0..12).map(|i| format!("d{i}")).collect();
    want.sort();
    assert_eq!(got, want, "one result per document");
    assert!(s.acks.values().all(|&n| n == 1), "acked once: {:?}", s.acks);
    assert!(s.unacked.is_empty() && s.queue.is_empty() && s.returned == 0);
}

#[tokio::test(start_paused = true)]
async fn a_lone_document_waits_max_wait_and_no_longer() {
    let setup = Setup::new();
    let broker = Broker::new();
    broker.send(doc(0));
    let t0 = Instant::now();
    let mut run = Run::start(config(&setup, QUICK), &broker);
    run.until(Duration::from_secs(60), "its result", |s| s.acks.len() == 1)
        .await;
    let waited = t0.elapsed();
    assert!(
        waited >= Duration::from_secs(10) && waited < Duration::from_secs(11),
        "an open batch closes at max_wait (10 s): {waited:?}"
    );
    assert_eq!(run.stop().await.batches, 1);
}

#[tokio::test(start_paused = true)]
async fn a_poison_result_is_dead_lettered_after_its_retries_and_the_rest_go_through() {
    let setup = Setup::new();
    let broker = Broker::new();
    broker.faults(|f| f.poison.push(("results", br#""id":"d3""#.to_vec())));
    for i in 0..8 {
        broker.send(doc(i));
    }
    let retry = "[retry]\nmax_attempts = 3\ninitial_backoff = \"2s\"\nmax_backoff = \"30s\"\n";
    let t0 = Instant::now();
    let mut run = Run::start(config(&setup, &format!("{QUICK}{retry}")), &broker);
    run.until(Duration::from_secs(600), "8 acks", |s| s.acks.len() == 8)
        .await;
    // Two waits between three attempts: 2 s, then 4 s (jittered at most by half).
    assert!(t0.elapsed() >= Duration::from_secs(3), "{:?}", t0.elapsed());
    let report = run.stop().await;
    assert_eq!(
        (report.labelled, report.dead_lettered),
        (7, 1),
        "{report:?}"
    );
    let s = broker.state();
    assert_eq!(ids(&s, "dead_letter"), ["d3"]);
    let dl: Value = serde_json::from_slice(&s.to("dead_letter")[0].payload).unwrap();
    assert_eq!(dl["error"]["code"], "retries_exhausted", "{dl}");
    assert_eq!(s.refusals, 3, "three attempts to publish d3's result");
    assert_eq!(dl["attempts"], 3, "every failed attempt counted: {dl}");
    assert!(!ids(&s, "results").contains(&"d3".to_string()));
}

#[tokio::test(start_paused = true)]
async fn a_route_down_for_everyone_holds_the_documents_until_it_returns() {
    let setup = Setup::new();
    let broker = Broker::new();
    broker.faults(|f| {
        f.refused.insert("results");
    });
    for i in 0..6 {
        broker.send(doc(i));
    }
    let retry = "[retry]\nmax_attempts = 3\ninitial_backoff = \"1s\"\nmax_backoff = \"20s\"\n";
    let mut run = Run::start(config(&setup, &format!("{QUICK}{retry}")), &broker);
    let health = run.health.clone();
    let opened = tokio::time::timeout(Duration::from_secs(600), async {
        while !health.readiness().faults.contains_key("results") {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    assert!(opened.is_ok(), "readiness never named the results route");
    assert!(!health.readiness().ready);
    // Ten virtual minutes of a route down for everyone: held, not drained into dead letters.
    tokio::time::sleep(Duration::from_secs(600)).await;
    {
        let s = broker.state();
        assert!(s.to("dead_letter").is_empty(), "nothing dead-lettered");
        assert!(s.acks.is_empty(), "nothing acked");
        assert_eq!(s.unacked.len() + s.queue.len(), 6, "every document held");
        assert!(s.refusals > 6, "the route was probed: {}", s.refusals);
    }
    broker.faults(|f| f.refused.clear());
    run.until(Duration::from_secs(600), "6 acks after recovery", |s| {
        s.acks.len() == 6
    })
    .await;
    let r = health.readiness();
    assert!(r.faults.is_empty() && r.ready, "{r:?}");
    let report = run.stop().await;
    assert_eq!(
        (report.labelled, report.dead_lettered),
        (6, 0),
        "{report:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_failed_ack_is_counted_and_its_document_comes_again() {
    let setup = Setup::new();
    let broker = Broker::new();
    broker.faults(|f| f.failing_acks = 1);
    for i in 0..3 {
        broker.send(doc(i));
    }
    let mut run = Run::start(config(&setup, QUICK), &broker);
    run.until(Duration::from_secs(600), "3 acks", |s| s.acks.len() == 3)
        .await;
    let report = run.stop().await;
    assert_eq!(report.ack_failures, 1, "{report:?}");
    let s = broker.state();
    assert_eq!(s.failed_acks, 1);
    assert_eq!(
        s.to("results").len(),
        4,
        "the redelivered one is published again"
    );
}

#[tokio::test(start_paused = true)]
async fn the_drain_closes_open_batches_at_once() {
    let setup = Setup::new();
    let broker = Broker::new();
    for i in 0..5 {
        broker.send(doc(i));
    }
    let slow = "[batching]\nmax_docs = 8\nmax_in_flight = 16\nmax_wait = \"1h\"\n";
    let mut run = Run::start(config(&setup, slow), &broker);
    // All five taken: they sit in an open batch that would wait an hour.
    run.until(Duration::from_secs(60), "5 deliveries", |s| {
        s.unacked.len() == 5
    })
    .await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(
        broker.state().published.is_empty(),
        "the batch is still open"
    );
    let t0 = Instant::now();
    let report = run.stop().await;
    assert!(t0.elapsed() < Duration::from_secs(60), "{:?}", t0.elapsed());
    assert_eq!((report.labelled, report.abandoned), (5, 0), "{report:?}");
    assert_eq!(broker.state().acks.len(), 5);
}

#[tokio::test(start_paused = true)]
async fn the_drain_deadline_leaves_what_cannot_finish_for_redelivery() {
    let setup = Setup::new();
    let broker = Broker::new();
    broker.faults(|f| f.hang = true);
    for i in 0..4 {
        broker.send(doc(i));
    }
    let sections = format!("{QUICK}[shutdown]\ndrain_deadline = \"30s\"\n");
    let mut run = Run::start(config(&setup, &sections), &broker);
    run.until(Duration::from_secs(60), "4 deliveries", |s| {
        s.unacked.len() == 4
    })
    .await;
    tokio::time::sleep(Duration::from_secs(20)).await;
    let t0 = Instant::now();
    let report = run.stop().await;
    let waited = t0.elapsed();
    assert!(
        waited >= Duration::from_secs(30) && waited < Duration::from_secs(31),
        "the drain waits its deadline: {waited:?}"
    );
    assert_eq!((report.labelled, report.abandoned), (0, 4), "{report:?}");
    let s = broker.state();
    assert!(s.acks.is_empty() && s.published.is_empty());
    assert_eq!(
        s.queue.len(),
        4,
        "all four back in the queue for redelivery"
    );
}
