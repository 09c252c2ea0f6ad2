//! `labelmill worker` against the RabbitMQ server at 127.0.0.1:5672 (started by .ci/run).
//!
//! Each test declares its own exchange and queues, runs the real binary on a generated model, and
//! checks what comes out: every id once, bad input dead-lettered with its code, no loss across
//! kill -9, no duplicates across SIGTERM.

mod common;

use std::time::Duration;

use common::rabbit::Rabbit;
use common::worker::{
    bad_docs, good_docs, http_get, metric, metric_opt, result_ids, tally, Setup, WorkerProc,
};
use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_documents_in_thousand_results_out() {
    let setup = Setup::new();
    let r = Rabbit::new("lm-1k").await;
    let docs = good_docs(1000);
    r.publish(&docs.iter().map(|d| d.1.clone()).collect::<Vec<_>>())
        .await;
    let cfg = setup.config("w.toml", &r.config("results", ""));
    let mut w = WorkerProc::start(&cfg, &setup.dir.path().join("w.log"));
    let results = r
        .collect(
            "results",
            1000,
            Duration::from_secs(2),
            Duration::from_secs(180),
        )
        .await;
    let sent: Vec<String> = docs.iter().map(|d| d.0.clone()).collect();
    let t = tally(&sent, &result_ids(&results));
    eprintln!("rabbitmq 1000: {t:?}");
    assert!(t.lost.is_empty() && t.unexpected.is_empty(), "{t:?}");
    assert_eq!((t.unique, t.duplicates), (1000, 0));
    // Results carry where they came from, the correlation header, and token counts.
    let first = results.iter().find(|v| v["id"] == "d-0").unwrap();
    assert_eq!(first["source"]["broker"], "amqp");
    assert_eq!(first["source"]["queue"], r.queue("input"));
    assert_eq!(first["headers"]["correlation-id"], "corr-0");
    assert_eq!(first["task"], "ticket");
    assert!(first["prefix_tokens"].as_u64().unwrap() > 0);
    assert!(first["doc_tokens"].as_u64().unwrap() > 0);
    assert_eq!(r.depth("dead").await, 0);
    assert!(w.alive());
    assert!(w.sigterm(Duration::from_secs(60)).success());
    assert_eq!(w.report()["labelled"], 1000);
    // The worker's connection is closed: a delivery it held unacknowledged would be ready again.
    assert_eq!(r.depth("input").await, 0, "every delivery acked");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bad_input_class_is_dead_lettered_with_its_code() {
    let setup = Setup::new();
    let r = Rabbit::new("lm-bad").await;
    let max_payload = 4096;
    let good = good_docs(40);
    let bad = bad_docs(max_payload);
    // Bad documents sit between good ones, so they share batches with them.
    let mut payloads = Vec::new();
    for (i, g) in good.iter().enumerate() {
        payloads.push(g.1.clone());
        if let Some(b) = bad.get(i / 4).filter(|_| i % 4 == 3) {
            payloads.push(b.1.clone());
        }
    }
    r.publish(&payloads).await;
    let extra = format!("\n[input]\nmax_payload_bytes = {max_payload}\n");
    let cfg = setup.config("w.toml", &format!("{extra}{}", r.config("results", "")));
    let mut w = WorkerProc::start(&cfg, &setup.dir.path().join("w.log"));
    let dead = r
        .collect(
            "dead",
            bad.len(),
            Duration::from_secs(1),
            Duration::from_secs(120),
        )
        .await;
    let results = r
        .collect(
            "results",
            good.len(),
            Duration::from_secs(1),
            Duration::from_secs(120),
        )
        .await;
    let (_, validator) = schema("dead_letter");
    let mut codes: Vec<String> = dead
        .iter()
        .map(|d| {
            let errors: Vec<String> = validator.iter_errors(d).map(|e| e.to_string()).collect();
            assert!(errors.is_empty(), "{d} -> {errors:?}");
            assert_eq!(d["attempts"], 1, "bad input is not retried");
            assert_eq!(d["source"]["broker"], "amqp");
            d["error"]["code"].as_str().unwrap().to_string()
        })
        .collect();
    codes.sort();
    let mut want: Vec<String> = bad.iter().map(|b| b.0.to_string()).collect();
    want.sort();
    assert_eq!(codes, want);
    // The original bytes are kept: base64 when not UTF-8, text otherwise.
    let utf8 = dead
        .iter()
        .find(|d| d["error"]["code"] == "invalid_utf8")
        .unwrap();
    assert!(utf8.get("payload").is_none());
    use base64::Engine as _;
    let raw = base64::engine::general_purpose::STANDARD
        .decode(utf8["payload_base64"].as_str().unwrap())
        .unwrap();
    assert_eq!(raw, bad[0].1);
    let json = dead
        .iter()
        .find(|d| d["error"]["code"] == "malformed_json")
        .unwrap();
    assert_eq!(json["payload"].as_str().unwrap().as_bytes(), &bad[1].1[..]);
    let tokens = dead
        .iter()
        .find(|d| d["error"]["code"] == "token_limit_exceeded")
        .unwrap();
    assert_eq!(
        (tokens["stage"].as_str(), tokens["task"].as_str()),
        (Some("tokenize"), Some("strict"))
    );
    let t = tally(
        &good.iter().map(|g| g.0.clone()).collect::<Vec<_>>(),
        &result_ids(&results),
    );
    assert!(
        t.lost.is_empty() && t.duplicates == 0 && t.unexpected.is_empty(),
        "{t:?}"
    );
    assert!(w.alive(), "the worker keeps running after bad input");
    assert!(w.sigterm(Duration::from_secs(60)).success());
    // Checked once the worker is gone, so unacknowledged deliveries would count.
    assert_eq!(r.depth("input").await, 0, "every delivery acked");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_mid_batch_then_restart_loses_nothing() {
    let setup = Setup::new();
    let r = Rabbit::new("lm-kill").await;
    let n = 800;
    let docs = good_docs(n);
    r.publish(&docs.iter().map(|d| d.1.clone()).collect::<Vec<_>>())
        .await;
    let cfg = setup.config("w.toml", &r.config("results", ""));
    let mut w = WorkerProc::start(&cfg, &setup.dir.path().join("w1.log"));
    let before = r
        .collect("results", 150, Duration::ZERO, Duration::from_secs(120))
        .await;
    w.kill9();
    let mut w2 = WorkerProc::start(&cfg, &setup.dir.path().join("w2.log"));
    let rest = r
        .collect(
            "results",
            n - before.len(),
            Duration::from_secs(3),
            Duration::from_secs(180),
        )
        .await;
    let all: Vec<String> = result_ids(&before)
        .into_iter()
        .chain(result_ids(&rest))
        .collect();
    let t = tally(&docs.iter().map(|d| d.0.clone()).collect::<Vec<_>>(), &all);
    eprintln!("rabbitmq kill -9: {} results, {t:?}", all.len());
    assert!(t.lost.is_empty(), "lost after kill -9: {t:?}");
    assert!(t.unexpected.is_empty());
    // Only deliveries unacked at the kill can come again: at most the prefetch (max_in_flight).
    assert!(
        t.duplicates <= 64,
        "{} duplicates > 64 in flight",
        t.duplicates
    );
    assert!(w2.sigterm(Duration::from_secs(60)).success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_then_restart_has_no_duplicates() {
    let setup = Setup::new();
    let r = Rabbit::new("lm-term").await;
    let n = 600;
    let docs = good_docs(n);
    r.publish(&docs.iter().map(|d| d.1.clone()).collect::<Vec<_>>())
        .await;
    let cfg = setup.config("w.toml", &r.config("results", ""));
    let mut w = WorkerProc::start(&cfg, &setup.dir.path().join("w1.log"));
    let before = r
        .collect("results", 100, Duration::ZERO, Duration::from_secs(120))
        .await;
    let status = w.sigterm(Duration::from_secs(60));
    assert!(status.success(), "exit status {status}");
    let report = w.report();
    assert_eq!(report["abandoned"], 0, "{report}");
    let mut w2 = WorkerProc::start(&cfg, &setup.dir.path().join("w2.log"));
    let rest = r
        .collect(
            "results",
            n - before.len(),
            Duration::from_secs(3),
            Duration::from_secs(180),
        )
        .await;
    let all: Vec<String> = result_ids(&before)
        .into_iter()
        .chain(result_ids(&rest))
        .collect();
    let t = tally(&docs.iter().map(|d| d.0.clone()).collect::<Vec<_>>(), &all);
    eprintln!(
        "rabbitmq SIGTERM: first run labelled {}, {t:?}",
        report["labelled"]
    );
    assert!(t.lost.is_empty() && t.unexpected.is_empty(), "{t:?}");
    assert_eq!(
        t.duplicates, 0,
        "a drained shutdown acks everything it published"
    );
    assert!(w2.sigterm(Duration::from_secs(60)).success());
}

/// Polls `/readyz` until `want(status, body)` holds; panics after `timeout`.
fn wait_readyz(
    addr: std::net::SocketAddr,
    timeout: Duration,
    want: impl Fn(u16, &Value) -> bool,
) -> Value {
    let start = std::time::Instant::now();
    loop {
        let (status, body) = http_get(addr, "/readyz");
        let v: Value = serde_json::from_str(&body).unwrap();
        if want(status, &v) {
            return v;
        }
        assert!(
            start.elapsed() < timeout,
            "readiness never matched: {status} {v}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A systemic fault (nothing is bound to the results key from the start) holds every document
/// unacknowledged with readiness red and the reason in it; nothing is dead-lettered for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unroutable_results_hold_every_document_unacknowledged() {
    let setup = Setup::new();
    let r = Rabbit::new("lm-unroutable").await;
    let docs = good_docs(5);
    r.publish(&docs.iter().map(|d| d.1.clone()).collect::<Vec<_>>())
        .await;
    let cfg = setup.config("w.toml", &r.config("nowhere", ""));
    let mut w = WorkerProc::start(&cfg, &setup.dir.path().join("w.log"));
    let addr = w.http_addr();
    let ready = wait_readyz(addr, Duration::from_secs(60), |s, v| {
        s == 503 && v["faults"]["results"].is_string()
    });
    let why = ready["faults"]["results"].as_str().unwrap();
    assert!(why.contains("unroutable"), "{ready}");
    // Several more probes fail: still nothing dead-lettered, nothing published.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (_, text) = http_get(addr, "/metrics");
    assert_eq!(
        metric(&text, "labelmill_route_up", &[("route", "results")]),
        0.0
    );
    assert_eq!(
        metric(&text, "labelmill_route_up", &[("route", "dead_letter")]),
        1.0
    );
    assert_eq!(metric_opt(&text, "labelmill_dead_letters_total", &[]), None);
    assert_eq!(r.depth("dead").await, 0);
    assert_eq!(r.depth("results").await, 0);
    // Killed: the broker gets back every delivery, none was acknowledged.
    w.kill9();
    let start = std::time::Instant::now();
    while r.depth("input").await < 5 && start.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        r.depth("input").await,
        5,
        "every document is still in its queue"
    );
}

/// The results binding is deleted mid-run and restored: intake pauses, the documents in flight
/// wait unacknowledged, nothing is dead-lettered for the fault, readiness says why, and the run
/// completes by itself once the binding is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_results_binding_pauses_the_worker_until_it_returns() {
    let setup = Setup::new();
    let r = Rabbit::new("lm-unbind").await;
    let docs = good_docs(120);
    let payloads: Vec<Vec<u8>> = docs.iter().map(|d| d.1.clone()).collect();
    r.publish(&payloads[..40]).await;
    let cfg = setup.config("w.toml", &r.config("results", ""));
    let mut w = WorkerProc::start(&cfg, &setup.dir.path().join("w.log"));
    let addr = w.http_addr();
    let mut results = r
        .collect(
            "results",
            40,
            Duration::from_millis(200),
            Duration::from_secs(120),
        )
        .await;
    assert_eq!(results.len(), 40);
    r.bind("results", false).await;
    r.publish(&payloads[40..]).await;
    let ready = wait_readyz(addr, Duration::from_secs(60), |s, v| {
        s == 503 && v["faults"]["results"].is_string()
    });
    assert_eq!(ready["model"], true, "{ready}");
    // The fault lasts a while: documents wait, unacknowledged; intake is paused, so the input
    // queue still holds what the worker has not taken.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        r.depth("dead").await,
        0,
        "nothing dead-lettered for a systemic fault"
    );
    assert_eq!(r.depth("results").await, 0);
    let (_, text) = http_get(addr, "/metrics");
    assert_eq!(metric(&text, "labelmill_ready", &[]), 0.0);
    assert_eq!(
        metric(&text, "labelmill_route_up", &[("route", "results")]),
        0.0
    );
    r.bind("results", true).await;
    results.extend(
        r.collect(
            "results",
            80,
            Duration::from_secs(1),
            Duration::from_secs(120),
        )
        .await,
    );
    let sent: Vec<String> = docs.iter().map(|d| d.0.clone()).collect();
    let t = tally(&sent, &result_ids(&results));
    eprintln!("binding deleted mid-run: {t:?}");
    assert!(t.lost.is_empty() && t.unexpected.is_empty(), "{t:?}");
    wait_readyz(addr, Duration::from_secs(30), |s, v| {
        s == 200 && v["faults"].as_object().is_some_and(|f| f.is_empty())
    });
    let (_, text) = http_get(addr, "/metrics");
    assert_eq!(
        metric(&text, "labelmill_route_up", &[("route", "results")]),
        1.0
    );
    assert_eq!(r.depth("dead").await, 0);
    assert!(w.sigterm(Duration::from_secs(60)).success());
    assert_eq!(w.report()["dead_lettered"], 0);
    assert_eq!(r.depth("input").await, 0, "every delivery acked");
}

/// A message that can be neither published nor dead-lettered (here: larger than
/// `max_message_bytes` allows, even cut) is not requeued forever: after `max_attempts` deliveries
/// it is held unacknowledged, and readiness and `labelmill_route_up` name the dead-letter route.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_that_cannot_be_dead_lettered_is_not_requeued_forever() {
    let setup = Setup::new();
    let r = Rabbit::new("lm-requeue").await;
    r.publish(&[good_docs(1).remove(0).1]).await;
    let cfg = setup.config("w.toml", &r.config("results", "max_message_bytes = 300\n"));
    let mut w = WorkerProc::start(&cfg, &setup.dir.path().join("w.log"));
    let addr = w.http_addr();
    let ready = wait_readyz(addr, Duration::from_secs(60), |s, v| {
        s == 503 && v["faults"]["dead_letter"].is_string()
    });
    assert!(
        ready["faults"]["dead_letter"]
            .as_str()
            .unwrap()
            .contains("held unacknowledged"),
        "{ready}"
    );
    // No more deliveries after the bound: the count stays at max_attempts (3).
    tokio::time::sleep(Duration::from_secs(2)).await;
    let log = w.log_text();
    let failed = log
        .matches("the dead letter could not be published")
        .count();
    assert_eq!(failed, 3, "delivered max_attempts times, then held:\n{log}");
    let (_, text) = http_get(addr, "/metrics");
    assert_eq!(
        metric(&text, "labelmill_route_up", &[("route", "dead_letter")]),
        0.0
    );
    assert_eq!(
        r.depth("input").await,
        0,
        "held by the worker, not back in the queue"
    );
    w.kill9();
    let start = std::time::Instant::now();
    while r.depth("input").await < 1 && start.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        r.depth("input").await,
        1,
        "not lost: the broker has it back"
    );
}

/// One broken input queue (here: missing, so consuming it fails) stops only its own consumer:
/// the other queue is consumed as usual, readiness names the broken one, and once the queue exists
/// its consumer starts by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_input_queue_does_not_stop_the_others() {
    let setup = Setup::new();
    let r = Rabbit::new("lm-twoq").await;
    let (input, missing) = (r.queue("input"), r.queue("later"));
    let body = r
        .config("results", "reconnect_delay = \"200ms\"\n")
        .replace(
            &format!("inputs = [{{ queue = \"{input}\" }}]"),
            &format!("inputs = [{{ queue = \"{input}\" }}, {{ queue = \"{missing}\" }}]"),
        );
    assert!(body.contains(&missing));
    let docs = good_docs(30);
    let payloads: Vec<Vec<u8>> = docs.iter().map(|d| d.1.clone()).collect();
    r.publish(&payloads[..20]).await;
    let cfg = setup.config("w.toml", &body);
    let mut w = WorkerProc::start(&cfg, &setup.dir.path().join("w.log"));
    let addr = w.http_addr();
    let mut results = r
        .collect(
            "results",
            20,
            Duration::from_millis(300),
            Duration::from_secs(60),
        )
        .await;
    assert_eq!(results.len(), 20, "the healthy queue is consumed");
    let v = wait_readyz(addr, Duration::from_secs(10), |s, v| {
        s == 503 && v["brokers"][format!("amqp:{input}")] == true
    });
    assert_eq!(v["brokers"][format!("amqp:{missing}")], false, "{v}");
    // The queue appears: its consumer starts without a restart.
    let mut args = lapin::types::FieldTable::default();
    args.insert(
        "x-expires".into(),
        lapin::types::AMQPValue::LongUInt(600_000),
    );
    r.ch.queue_declare(missing.as_str().into(), Default::default(), args)
        .await
        .unwrap();
    wait_readyz(addr, Duration::from_secs(30), |s, _| s == 200);
    r.publish_to("later", &payloads[20..]).await;
    results.extend(
        r.collect(
            "results",
            10,
            Duration::from_millis(300),
            Duration::from_secs(60),
        )
        .await,
    );
    let sent: Vec<String> = docs.iter().map(|d| d.0.clone()).collect();
    let t = tally(&sent, &result_ids(&results));
    assert!(t.lost.is_empty() && t.unexpected.is_empty(), "{t:?}");
    assert!(w.sigterm(Duration::from_secs(60)).success());
}

/// A 200 KiB document that fails keeps every byte in its dead letter.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_failing_document_is_dead_lettered_whole() {
    let setup = Setup::new();
    let r = Rabbit::new("lm-bigdead").await;
    // `strict` rejects documents over 8 tokens.
    let text = "word ".repeat(200 * 1024 / 5);
    let big = serde_json::to_vec(&serde_json::json!({"id": "big", "task": "strict", "text": text}))
        .unwrap();
    assert!(big.len() >= 200 * 1024);
    r.publish(std::slice::from_ref(&big)).await;
    let cfg = setup.config("w.toml", &r.config("results", ""));
    let mut w = WorkerProc::start(&cfg, &setup.dir.path().join("w.log"));
    let dead = r
        .collect(
            "dead",
            1,
            Duration::from_millis(500),
            Duration::from_secs(60),
        )
        .await;
    assert_eq!(dead.len(), 1);
    let d = &dead[0];
    assert_eq!(d["error"]["code"], "token_limit_exceeded");
    assert_eq!(d["payload_truncated"], false);
    assert_eq!(d["payload_size"], big.len());
    assert_eq!(
        d["payload"].as_str().unwrap().as_bytes(),
        big.as_slice(),
        "the whole original payload"
    );
    assert!(w.sigterm(Duration::from_secs(60)).success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn low_confidence_results_are_escalated() {
    let setup = Setup::new();
    let r = Rabbit::new("lm-esc").await;
    let n = 60;
    let docs = good_docs(n);
    r.publish(&docs.iter().map(|d| d.1.clone()).collect::<Vec<_>>())
        .await;
    // The random-weight model is sure of itself (top scores 0.9987..0.9997 on these documents):
    // a threshold inside that range gives both kinds.
    // Scores are f32 and round-trip exactly through JSON; compare as the worker does, in f32.
    let threshold: f64 = 0.9995;
    let body = format!(
        "[routing]\nescalate_below = {{ ticket = {threshold} }}\n{}",
        r.config("results", "")
    );
    let cfg = setup.config("w.toml", &body);
    let mut w = WorkerProc::start(&cfg, &setup.dir.path().join("w.log"));
    let results = r
        .collect(
            "results",
            n,
            Duration::from_secs(1),
            Duration::from_secs(120),
        )
        .await;
    assert_eq!(results.len(), n);
    let want: Vec<String> = results
        .iter()
        .filter(|v| (v["score"].as_f64().unwrap() as f32) < threshold as f32)
        .map(|v| v["id"].as_str().unwrap().to_string())
        .collect();
    for v in &results {
        assert_eq!(
            v["escalated"].as_bool().unwrap(),
            (v["score"].as_f64().unwrap() as f32) < threshold as f32
        );
    }
    let escalated = r
        .collect(
            "escalate",
            want.len(),
            Duration::from_secs(1),
            Duration::from_secs(30),
        )
        .await;
    let mut got = result_ids(&escalated);
    let mut want = want;
    got.sort();
    want.sort();
    eprintln!("escalated {} of {n} at threshold {threshold}", want.len());
    assert!(
        !want.is_empty() && want.len() < n,
        "the test needs both kinds: {}",
        want.len()
    );
    assert_eq!(got, want);
    assert!(w.sigterm(Duration::from_secs(60)).success());
}

/// Closes the worker's RabbitMQ connections (found by their names) from the broker side.
fn close_connections(worker_pid: u32) -> (usize, String) {
    let out = std::process::Command::new("rabbitmqctl")
        .args([
            "list_connections",
            "pid",
            "client_properties",
            "--no-table-headers",
            "-q",
        ])
        .output()
        .expect("rabbitmqctl (installed with the server)");
    let text = String::from_utf8_lossy(&out.stdout);
    let mut closed = 0;
    for line in text.lines() {
        // The connection name (a client property) ends with the worker's pid.
        let Some((pid, props)) = line.split_once('\t') else {
            continue;
        };
        if props.contains(&format!("pid={worker_pid}\"")) {
            let st = std::process::Command::new("rabbitmqctl")
                .args(["close_connection", pid, "test: connection killed"])
                .status()
                .unwrap();
            assert!(st.success());
            closed += 1;
        }
    }
    (
        closed,
        format!("{text}{}", String::from_utf8_lossy(&out.stderr)),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worker_reconnects_after_its_connections_are_closed() {
    let setup = Setup::new();
    let r = Rabbit::new("lm-reconnect").await;
    let n = 400;
    let docs = good_docs(n);
    r.publish(&docs.iter().map(|d| d.1.clone()).collect::<Vec<_>>())
        .await;
    let cfg = setup.config(
        "w.toml",
        &r.config("results", "reconnect_delay = \"200ms\""),
    );
    let mut w = WorkerProc::start(&cfg, &setup.dir.path().join("w.log"));
    let before = r
        .collect("results", 60, Duration::ZERO, Duration::from_secs(120))
        .await;
    // The consuming and the publishing connection, both cut by the broker mid-stream.
    let (closed, listed) = close_connections(w.pid());
    assert_eq!(closed, 2, "pid {}: {listed}\n{}", w.pid(), w.log_text());
    let rest = r
        .collect(
            "results",
            n - before.len(),
            Duration::from_secs(3),
            Duration::from_secs(180),
        )
        .await;
    let all: Vec<String> = result_ids(&before)
        .into_iter()
        .chain(result_ids(&rest))
        .collect();
    let t = tally(&docs.iter().map(|d| d.0.clone()).collect::<Vec<_>>(), &all);
    eprintln!("rabbitmq reconnect: {t:?}");
    assert!(t.lost.is_empty() && t.unexpected.is_empty(), "{t:?}");
    assert!(t.duplicates <= 64, "{t:?}");
    assert!(w.alive(), "the worker survived");
    assert!(w.log_text().contains("reconnecting"));
    assert!(w.sigterm(Duration::from_secs(60)).success());
    // Checked once the worker is gone, so unacknowledged deliveries would count.
    assert_eq!(
        r.depth("input").await,
        0,
        "everything acked after the reconnect"
    );
}

fn schema(name: &str) -> (Value, jsonschema::Validator) {
    let text = std::fs::read_to_string(format!("schemas/{name}.schema.json")).unwrap();
    let v: Value = serde_json::from_str(&text).unwrap();
    let validator = jsonschema::validator_for(&v).unwrap();
    (v, validator)
}
