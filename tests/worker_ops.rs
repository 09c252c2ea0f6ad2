//! Operating the worker: `/metrics` counts what was processed, `/readyz` follows model loading
//! and drains, the live lane goes before a backfill queued earlier, and `labelmill publish`
//! resumes an interrupted backfill without losing or repeating a line.
//!
//! Against RabbitMQ at 127.0.0.1:5672 and tansu (Kafka) at 127.0.0.1:9092, started by .ci/run.

mod common;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::rabbit::{Rabbit, URI};
use common::worker::{
    bad_docs, good_docs, http_get, metric, metric_opt, peak_rss, Setup, WorkerProc,
};
use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_what_was_processed() {
    let setup = Setup::new();
    let r = Rabbit::new("lm-metrics").await;
    let max_payload = 4096;
    let good = good_docs(120);
    let bad = bad_docs(max_payload);
    let mut payloads: Vec<Vec<u8>> = good.iter().map(|g| g.1.clone()).collect();
    payloads.extend(bad.iter().map(|b| b.1.clone()));
    r.publish(&payloads).await;
    let extra = format!(
        "\n[input]\nmax_payload_bytes = {max_payload}\n[metrics]\npoll_interval = \"200ms\"\n"
    );
    let cfg = setup.config("w.toml", &format!("{extra}{}", r.config("results", "")));
    let mut w = WorkerProc::start(&cfg, &setup.dir.path().join("w.log"));
    let addr = w.http_addr();
    let results = r
        .collect(
            "results",
            good.len(),
            Duration::from_secs(1),
            Duration::from_secs(120),
        )
        .await;
    let dead = r
        .collect(
            "dead",
            bad.len(),
            Duration::from_secs(1),
            Duration::from_secs(60),
        )
        .await;
    assert_eq!((results.len(), dead.len()), (good.len(), bad.len()));
    // Let the queue depth poll see the drained queue.
    tokio::time::sleep(Duration::from_millis(600)).await;

    let (status, text) = http_get(addr, "/metrics");
    assert_eq!(status, 200);
    let m = |name: &str, labels: &[(&str, &str)]| metric(&text, name, labels);
    let labelled = [
        ("task", "ticket"),
        ("lane", "live"),
        ("outcome", "labelled"),
    ];
    assert_eq!(
        m("labelmill_documents_total", &labelled),
        good.len() as f64,
        "{text}"
    );
    assert_eq!(
        m("labelmill_documents_total", &[("outcome", "dead_lettered")]),
        bad.len() as f64
    );
    // Dead letters by code: exactly the codes of the records published.
    let mut codes: BTreeMap<String, f64> = BTreeMap::new();
    for d in &dead {
        *codes
            .entry(d["error"]["code"].as_str().unwrap().into())
            .or_default() += 1.0;
    }
    for (code, n) in &codes {
        assert_eq!(
            m("labelmill_dead_letters_total", &[("code", code)]),
            *n,
            "{code}"
        );
    }
    assert_eq!(m("labelmill_dead_letters_total", &[]), bad.len() as f64);
    // Every labelled document went through exactly one engine batch.
    let batches = w.log_text().matches("batch scored").count() as f64;
    assert!(batches > 0.0);
    assert_eq!(
        m("labelmill_batch_documents_count", &[("task", "ticket")]),
        batches
    );
    assert_eq!(
        m("labelmill_batch_documents_sum", &[("task", "ticket")]),
        good.len() as f64
    );
    assert_eq!(m("labelmill_batch_engine_seconds_count", &[]), batches);
    let doc_tokens: u64 = results
        .iter()
        .map(|v| v["doc_tokens"].as_u64().unwrap())
        .sum();
    assert_eq!(
        m("labelmill_document_tokens_total", &[("task", "ticket")]),
        doc_tokens as f64
    );
    let prefix = results[0]["prefix_tokens"].as_u64().unwrap();
    let suffix = results[0]["suffix_tokens"].as_u64().unwrap();
    assert_eq!(
        m("labelmill_batch_tokens_sum", &[]),
        (doc_tokens + suffix * good.len() as u64) as f64,
        "batch tokens are document + suffix tokens (the prefix is cached); prefix {prefix}"
    );
    // One miss per task at start-up (two tasks), then a hit per batch.
    assert_eq!(m("labelmill_prefix_cache_misses_total", &[]), 2.0);
    assert!(m("labelmill_prefix_cache_hits_total", &[]) >= batches);
    assert_eq!(
        m(
            "labelmill_document_latency_seconds_count",
            &[("lane", "live")]
        ),
        good.len() as f64
    );
    assert!(m("labelmill_document_cost_seconds", &[]) > 0.0);
    assert!(m("labelmill_document_tokens_per_second", &[]) > 0.0);
    assert_eq!(
        m(
            "labelmill_queue_depth_messages",
            &[("queue", &r.queue("input"))]
        ),
        0.0
    );
    assert_eq!(m("labelmill_backlog_seconds", &[("lane", "live")]), 0.0);
    // No escalation is configured here: the counter is never touched, so it is not exported (a
    // missing series is not a zero).
    assert_eq!(metric_opt(&text, "labelmill_escalations_total", &[]), None);
    assert_eq!(m("labelmill_ready", &[]), 1.0);
    // Every series the worker exports is one of the names defined in one place.
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let name = line.split(['{', ' ']).next().unwrap();
        let base = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .unwrap_or(name);
        assert!(
            labelmill::telemetry::metrics::NAMES.contains(&base),
            "{name} is not defined"
        );
    }
    assert!(w.sigterm(Duration::from_secs(60)).success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backlog_seconds_follow_the_queue_depth() {
    let setup = Setup::new();
    let r = Rabbit::new("lm-backlog").await;
    // A live backlog the worker cannot drain: every result is unroutable, so nothing is acked
    // and the documents stay queued (ready) behind a prefetch of 16.
    r.publish(&good_docs(200).into_iter().map(|d| d.1).collect::<Vec<_>>())
        .await;
    let cfg = setup.config(
        "w.toml",
        &format!(
            "[metrics]\npoll_interval = \"200ms\"\n{}",
            r.config("nowhere", "prefetch = 16\n")
                .replace("max_attempts = 3", "max_attempts = 100")
                .replace("initial_backoff = \"20ms\"", "initial_backoff = \"200ms\"")
        ),
    );
    let mut w = WorkerProc::start(&cfg, &setup.dir.path().join("w.log"));
    let addr = w.http_addr();
    w.wait_for_log("publish failed; retrying", Duration::from_secs(60));
    let start = Instant::now();
    let (mut depth, mut backlog, mut cost) = (0.0, 0.0, 0.0);
    while start.elapsed() < Duration::from_secs(30) {
        let (_, text) = http_get(addr, "/metrics");
        let queue = r.queue("input");
        depth = metric_opt(
            &text,
            "labelmill_queue_depth_messages",
            &[("queue", &queue)],
        )
        .unwrap_or(0.0);
        backlog =
            metric_opt(&text, "labelmill_backlog_seconds", &[("lane", "live")]).unwrap_or(0.0);
        cost = metric_opt(&text, "labelmill_document_cost_seconds", &[]).unwrap_or(0.0);
        if depth > 0.0 && cost > 0.0 && backlog > 0.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        depth >= 150.0,
        "200 queued minus at most 16 prefetched: {depth}"
    );
    // One consumer on the queue: the whole depth is this worker's share.
    let want = depth * cost;
    assert!(
        (backlog - want).abs() <= 1e-6 * want.max(1.0) + 1e-9
            || (backlog - want).abs() / want < 0.05,
        "backlog {backlog} s vs depth {depth} x cost {cost} s"
    );
    w.kill9();
}

/// Makes a FIFO at `path` (the worker blocks reading it until the test writes).
fn mkfifo(path: &Path) {
    let st = Command::new("mkfifo").arg(path).status().unwrap();
    assert!(st.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_is_false_while_loading_and_draining_and_true_in_between() {
    let setup = Setup::new();
    let r = Rabbit::new("lm-ready").await;
    // The tokenizer comes through a FIFO: model loading blocks on it until the test writes it,
    // so "before the model is loaded" is a state the test holds, not a race it hopes to win.
    let fifo = setup.dir.path().join("tokenizer-fifo.json");
    mkfifo(&fifo);
    let body = r
        .config("nowhere", "")
        .replace("max_attempts = 3", "max_attempts = 8")
        .replace("initial_backoff = \"20ms\"", "initial_backoff = \"500ms\"")
        .replace("max_backoff = \"500ms\"", "max_backoff = \"1s\"")
        .replace("drain_deadline = \"30s\"", "drain_deadline = \"8s\"");
    let cfg = setup.config("w.toml", &body);
    let text = std::fs::read_to_string(&cfg).unwrap().replace(
        &format!("{:?}", setup.model.join("tokenizer.json")),
        &format!("{fifo:?}"),
    );
    std::fs::write(&cfg, text).unwrap();
    let mut w = WorkerProc::start(&cfg, &setup.dir.path().join("w.log"));
    let addr = w.http_addr();
    let (status, body) = http_get(addr, "/readyz");
    assert_eq!(status, 503, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (v["ready"].as_bool(), v["model"].as_bool()),
        (Some(false), Some(false))
    );
    assert_eq!(http_get(addr, "/healthz").0, 200, "alive while loading");
    let (_, metrics) = http_get(addr, "/metrics");
    assert_eq!(metric(&metrics, "labelmill_ready", &[]), 0.0);

    let tokenizer = std::fs::read(setup.model.join("tokenizer.json")).unwrap();
    let writer = std::thread::spawn(move || {
        std::fs::OpenOptions::new()
            .write(true)
            .open(&fifo)
            .unwrap()
            .write_all(&tokenizer)
            .unwrap();
    });
    let ready = wait_status(addr, 200, Duration::from_secs(60));
    writer.join().unwrap();
    assert!(ready, "ready after loading:\n{}", w.log_text());
    let v: Value = serde_json::from_str(&http_get(addr, "/readyz").1).unwrap();
    assert_eq!(v["model"], true);
    assert_eq!(v["brokers"][format!("amqp:{}", r.queue("input"))], true);

    // In flight and unfinished: results are unroutable, so the worker retries them.
    r.publish(&good_docs(4).into_iter().map(|d| d.1).collect::<Vec<_>>())
        .await;
    w.wait_for_log("publish failed; retrying", Duration::from_secs(60));
    let st = Command::new("kill")
        .args(["-TERM", &w.pid().to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    let not_ready = wait_status(addr, 503, Duration::from_secs(5));
    assert!(w.alive(), "still draining");
    assert!(not_ready, "not ready once the drain started");
    let v: Value = serde_json::from_str(&http_get(addr, "/readyz").1).unwrap();
    assert_eq!(
        (v["draining"].as_bool(), v["model"].as_bool()),
        (Some(true), Some(true))
    );
    // Every result is unroutable: a systemic fault, so nothing is dead-lettered; the documents
    // wait for the route until the drain deadline and are left to the broker.
    assert!(w.sigterm(Duration::from_secs(60)).success());
    let report = w.report();
    assert_eq!(report["dead_lettered"], 0, "{report}");
    assert_eq!(report["abandoned"], 4, "{report}");
    assert_eq!(
        r.depth("input").await,
        4,
        "all four back in the queue, unacknowledged"
    );
}

/// Polls `/readyz` until it answers `status`; whether it did within `timeout`.
fn wait_status(addr: std::net::SocketAddr, status: u16, timeout: Duration) -> bool {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if http_get(addr, "/readyz").0 == status {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_documents_go_before_a_backfill_queued_earlier() {
    let setup = Setup::new();
    let r = Rabbit::new("lm-lanes").await;
    // The backfill is queued first, then the live documents; the worker starts on both.
    let backfill: Vec<(String, Vec<u8>)> = good_docs(96)
        .into_iter()
        .map(|(id, p)| {
            let id2 = format!("bf-{id}");
            let s = String::from_utf8(p)
                .unwrap()
                .replace(&format!("\"{id}\""), &format!("\"{id2}\""));
            (id2, s.into_bytes())
        })
        .collect();
    let live = good_docs(96);
    r.publish_to(
        "backfill",
        &backfill.iter().map(|d| d.1.clone()).collect::<Vec<_>>(),
    )
    .await;
    r.publish_to(
        "input",
        &live.iter().map(|d| d.1.clone()).collect::<Vec<_>>(),
    )
    .await;
    let body = format!(
        r#"
[batching]
max_docs = 8
max_wait = "20ms"
max_in_flight = 128
backfill_in_flight = 32
backfill_share = 0.2

[amqp]
uri = "{URI}"
inputs = [{{ queue = "{live}" }}, {{ queue = "{bf}", lane = "backfill" }}]
exchange = "{tag}"
results_routing_key = "results"
dead_letter_routing_key = "dead"
"#,
        live = r.queue("input"),
        bf = r.queue("backfill"),
        tag = r.tag,
    );
    let cfg = setup.config("w.toml", &body);
    let mut w = WorkerProc::start(&cfg, &setup.dir.path().join("w.log"));
    let results = r
        .collect(
            "results",
            192,
            Duration::from_secs(1),
            Duration::from_secs(180),
        )
        .await;
    assert_eq!(
        results.len(),
        192,
        "every document of both lanes is labelled once"
    );
    // Results are published in the order the engine finished them.
    let lanes: Vec<bool> = results
        .iter()
        .map(|v| v["source"]["queue"] == r.queue("backfill"))
        .collect();
    let last_live = lanes.iter().rposition(|&b| !b).unwrap();
    let backfill_before = lanes[..last_live].iter().filter(|&&b| b).count();
    eprintln!("last live result at {last_live}; backfill results before it: {backfill_before}");
    // Priority: the live lane is done while most of the earlier-queued backfill still waits.
    assert!(
        backfill_before <= 48,
        "{backfill_before} backfill documents went before the live ones"
    );
    // Progress: the backfill got its share of the engine while live work waited.
    assert!(
        backfill_before >= 8,
        "the backfill starved: {backfill_before}"
    );
    let (_, text) = http_get(w.http_addr(), "/metrics");
    assert_eq!(
        metric(&text, "labelmill_documents_total", &[("lane", "backfill")]),
        96.0
    );
    assert_eq!(
        metric(&text, "labelmill_documents_total", &[("lane", "live")]),
        96.0
    );
    assert!(w.sigterm(Duration::from_secs(60)).success());
}

/// An engine that hangs is noticed: the first batch never returns (an injected fault), so after
/// `stall_after` `/healthz` fails for the orchestrator to restart the worker, and nothing of the
/// batch was acknowledged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_engine_fails_liveness_and_acks_nothing() {
    let setup = Setup::new();
    let r = Rabbit::new("lm-hang").await;
    r.publish(&good_docs(5).into_iter().map(|d| d.1).collect::<Vec<_>>())
        .await;
    let body = r.config("results", "").replace(
        "max_in_flight = 64",
        "max_in_flight = 64\nstall_after = \"2s\"",
    );
    let cfg = setup.config("w.toml", &body);
    let log = setup.dir.path().join("w.log");
    let mut w = WorkerProc::start_with_env(&cfg, &log, &[("LABELMILL_FAULTS", "engine-hang=1")]);
    let addr = w.http_addr();
    w.wait_for_log("injected engine hang", Duration::from_secs(60));
    assert_eq!(http_get(addr, "/healthz").0, 200, "not stuck yet");
    let start = Instant::now();
    let (mut status, mut body) = (200, String::new());
    while start.elapsed() < Duration::from_secs(30) && status == 200 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        (status, body) = http_get(addr, "/healthz");
    }
    assert_eq!(
        status, 503,
        "liveness fails once the batch runs past its bound"
    );
    assert!(
        body.contains("stuck") && body.contains("bound 2 s"),
        "{body}"
    );
    assert_eq!(r.depth("results").await, 0);
    w.kill9();
    let start = Instant::now();
    while r.depth("input").await < 5 && start.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        r.depth("input").await,
        5,
        "nothing of the hung batch was acknowledged"
    );
}

/// A panic while admitting one message (an injected fault in decoding/tokenising) dead-letters
/// that message as `admission_panicked`; the others are labelled and the worker goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_in_admission_fails_one_message_not_the_worker() {
    let setup = Setup::new();
    let r = Rabbit::new("lm-panic").await;
    let mut docs: Vec<Vec<u8>> = good_docs(20).into_iter().map(|d| d.1).collect();
    docs.insert(
        7,
        br#"{"id": "boom", "text": "this one trips the BOOM marker"}"#.to_vec(),
    );
    r.publish(&docs).await;
    let cfg = setup.config("w.toml", &r.config("results", ""));
    let log = setup.dir.path().join("w.log");
    let mut w = WorkerProc::start_with_env(&cfg, &log, &[("LABELMILL_FAULTS", "admit-panic=BOOM")]);
    let results = r
        .collect(
            "results",
            20,
            Duration::from_millis(500),
            Duration::from_secs(60),
        )
        .await;
    assert_eq!(results.len(), 20);
    let dead = r
        .collect(
            "dead",
            1,
            Duration::from_millis(200),
            Duration::from_secs(30),
        )
        .await;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0]["error"]["code"], "admission_panicked");
    assert!(
        dead[0]["error"]["message"]
            .as_str()
            .unwrap()
            .contains("injected admission fault"),
        "{}",
        dead[0]
    );
    assert!(dead[0]["payload"].as_str().unwrap().contains("BOOM"));
    assert!(w.alive());
    assert!(w.sigterm(Duration::from_secs(60)).success());
    assert_eq!(r.depth("input").await, 0);
}

/// A device failing every batch for a while is a systemic fault, not a reason to dead-letter the
/// backlog: readiness names the engine, the documents are held and retried, and once passes
/// succeed again every document is labelled and nothing is dead-lettered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_engine_failing_every_batch_holds_documents_until_it_recovers() {
    let setup = Setup::new();
    let r = Rabbit::new("lm-enginefail").await;
    let docs = good_docs(12);
    r.publish(&docs.iter().map(|d| d.1.clone()).collect::<Vec<_>>())
        .await;
    let cfg = setup.config("w.toml", &r.config("results", ""));
    let log = setup.dir.path().join("w.log");
    // 150 failed passes: each batch is bisected down to single documents (about 20 passes for
    // these 12), so this is several rounds of every document failing, past max_attempts = 3.
    let mut w = WorkerProc::start_with_env(&cfg, &log, &[("LABELMILL_FAULTS", "engine-fail=150")]);
    let addr = w.http_addr();
    let start = Instant::now();
    let mut saw_fault = None;
    while start.elapsed() < Duration::from_secs(60) && saw_fault.is_none() {
        let v: Value = serde_json::from_str(&http_get(addr, "/readyz").1).unwrap();
        if let Some(why) = v["faults"]["engine"].as_str() {
            saw_fault = Some(why.to_string());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let why = saw_fault.expect("readiness named the engine fault");
    assert!(why.contains("injected engine failure"), "{why}");
    let results = r
        .collect(
            "results",
            12,
            Duration::from_millis(500),
            Duration::from_secs(60),
        )
        .await;
    assert_eq!(results.len(), 12);
    assert_eq!(
        r.depth("dead").await,
        0,
        "nothing dead-lettered for a systemic fault"
    );
    let (status, _) = http_get(addr, "/readyz");
    assert_eq!(status, 200, "ready again after the engine recovered");
    assert!(w.sigterm(Duration::from_secs(60)).success());
    let report = w.report();
    assert_eq!(report["labelled"], 12, "{report}");
    assert_eq!(report["dead_lettered"], 0, "{report}");
}

/// Memory is bounded in bytes, not only in messages: 300 one-megabyte messages arrive at once
/// (each valid JSON naming an unknown task, so each becomes a one-megabyte dead letter), with
/// `max_in_flight_bytes` at 8 MiB. The prefetch is sized from the byte budget (8 MiB / 2 MiB per
/// message = 4) and deliveries wait for bytes, so the worker's peak resident memory grows by a
/// few times the budget (payload, decoded text, dead-letter record), not by the 64-slot document
/// bound times a megabyte.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_flight_memory_is_bounded_in_bytes() {
    let setup = Setup::new();
    let r = Rabbit::new("lm-bytes").await;
    let body = r.config("results", "").replace(
        "max_in_flight = 64",
        "max_in_flight = 64\nmax_in_flight_bytes = 8388608\n\n[input]\nmax_payload_bytes = 2097152",
    );
    let cfg = setup.config("w.toml", &body);
    let mut w = WorkerProc::start(&cfg, &setup.dir.path().join("w.log"));
    w.wait_for_log("rabbitmq consumer started", Duration::from_secs(60));
    w.wait_for_log("prefetch=4", Duration::from_secs(5));
    let before = peak_rss(w.pid());
    let text = "x".repeat(1 << 20);
    let big: Vec<Vec<u8>> = (0..300)
        .map(|i| {
            serde_json::to_vec(
                &serde_json::json!({"id": format!("b-{i}"), "task": "nope", "text": text}),
            )
            .unwrap()
        })
        .collect();
    r.publish(&big).await;
    let start = Instant::now();
    while r.depth("dead").await < 300 && start.elapsed() < Duration::from_secs(180) {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        r.depth("dead").await,
        300,
        "every message dead-lettered (unknown_task)"
    );
    let grown = peak_rss(w.pid()).saturating_sub(before);
    eprintln!(
        "peak resident memory grew by {} MiB (budget 8 MiB)",
        grown >> 20
    );
    assert!(
        grown < 64 << 20,
        "peak resident memory grew by {} MiB for an 8 MiB budget",
        grown >> 20
    );
    assert!(w.sigterm(Duration::from_secs(60)).success());
}
