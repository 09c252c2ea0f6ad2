//! `labelmill worker` against a Kafka broker at 127.0.0.1:9092 (tansu with sqlite storage, started by
//! .ci/run): every id once, bad input dead-lettered, no loss across kill -9, no duplicates across
//! SIGTERM, two workers of one group sharing the partitions.

mod common;

use std::time::{Duration, Instant};

use common::kafka::{committed, message_count, Reader, Topics};
use common::worker::{bad_docs, good_docs, http_get, metric, tally, Setup, WorkerProc};

const BROKERS: &str = "127.0.0.1:9092";

fn sent_ids(docs: &[(String, Vec<u8>)]) -> Vec<String> {
    docs.iter().map(|d| d.0.clone()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_documents_in_thousand_results_out() {
    let setup = Setup::new();
    let k = Topics::create(BROKERS, "lm-1k", 3).await;
    let docs = good_docs(1000);
    k.produce(&docs).await;
    let cfg = setup.config(
        "w.toml",
        &k.config("[metrics]\npoll_interval = \"200ms\"\n"),
    );
    let mut w = WorkerProc::start(&cfg, &setup.dir.path().join("w.log"));
    let mut results = Reader::new(BROKERS, &k.topic("results"));
    results.collect(1000, Duration::from_secs(3), Duration::from_secs(240));
    let t = tally(&sent_ids(&docs), &results.ids());
    eprintln!("kafka 1000: {t:?}");
    assert!(t.lost.is_empty() && t.unexpected.is_empty(), "{t:?}");
    assert_eq!((t.unique, t.duplicates), (1000, 0));
    // Keyed by document id; source coordinates and the correlation header are carried.
    for (key, v) in &results.seen {
        assert_eq!(key.as_deref(), v["id"].as_str());
        assert_eq!(v["source"]["broker"], "kafka");
        assert_eq!(v["source"]["topic"], k.topic("input"));
    }
    let d0 = &results
        .seen
        .iter()
        .find(|(_, v)| v["id"] == "d-0")
        .unwrap()
        .1;
    assert_eq!(d0["headers"]["correlation-id"], "corr-0");
    // /metrics: every document counted, and the lag of each of the 3 partitions falls to 0 once
    // the offsets are committed.
    let addr = w.http_addr();
    let input = k.topic("input");
    let lag = |text: &str| {
        metric(
            text,
            "labelmill_consumer_lag_messages",
            &[("topic", &input)],
        )
    };
    let start = Instant::now();
    let mut text = String::new();
    while start.elapsed() < Duration::from_secs(30) {
        text = http_get(addr, "/metrics").1;
        if text.matches("labelmill_consumer_lag_messages{").count() == 3 && lag(&text) == 0.0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(
        text.matches("labelmill_consumer_lag_messages{").count(),
        3,
        "{text}"
    );
    assert_eq!(lag(&text), 0.0, "{text}");
    let labelled = [("lane", "live"), ("outcome", "labelled")];
    assert_eq!(
        metric(&text, "labelmill_documents_total", &labelled),
        1000.0
    );
    // Kafka records carry their create time: every result's latency is measured.
    assert_eq!(
        metric(&text, "labelmill_document_latency_seconds_count", &[]),
        1000.0
    );
    assert_eq!(
        metric(&text, "labelmill_backlog_seconds", &[("lane", "live")]),
        0.0
    );
    assert_eq!(http_get(addr, "/readyz").0, 200);
    assert!(w.sigterm(Duration::from_secs(60)).success());
    // After the drain every message is committed.
    let c = committed(BROKERS, &format!("{}.group", k.tag), &k.topic("input"), 3);
    assert_eq!(c.values().sum::<i64>(), 1000, "{c:?}");
    assert_eq!(w.report()["labelled"], 1000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bad_input_class_is_dead_lettered_with_its_code() {
    let setup = Setup::new();
    let k = Topics::create(BROKERS, "lm-bad", 1).await;
    let max_payload = 4096;
    let good = good_docs(30);
    let bad = bad_docs(max_payload);
    let mut all = good.clone();
    for (i, b) in bad.iter().enumerate() {
        all.insert(i * 3 + 1, (format!("bad-{i}"), b.1.clone()));
    }
    let coords = k.produce(&all).await;
    let body = format!(
        "[input]\nmax_payload_bytes = {max_payload}\n{}",
        k.config("")
    );
    let cfg = setup.config("w.toml", &body);
    let mut w = WorkerProc::start(&cfg, &setup.dir.path().join("w.log"));
    let mut dead = Reader::new(BROKERS, &k.topic("dead"));
    dead.collect(bad.len(), Duration::from_secs(2), Duration::from_secs(120));
    let mut results = Reader::new(BROKERS, &k.topic("results"));
    results.collect(good.len(), Duration::from_secs(1), Duration::from_secs(120));
    let mut codes: Vec<String> = dead
        .seen
        .iter()
        .map(|(_, d)| d["error"]["code"].as_str().unwrap().to_string())
        .collect();
    codes.sort();
    let mut want: Vec<String> = bad.iter().map(|b| b.0.to_string()).collect();
    want.sort();
    assert_eq!(codes, want);
    // Each dead letter names its source offset, and the message there is the bad one.
    for (key, d) in &dead.seen {
        let i: usize = key
            .as_deref()
            .unwrap()
            .trim_start_matches("bad-")
            .parse()
            .unwrap();
        let (p, o) = coords[i * 3 + 1];
        assert_eq!(
            (
                d["source"]["partition"].as_i64(),
                d["source"]["offset"].as_i64()
            ),
            (Some(p as i64), Some(o))
        );
        assert_eq!(d["error"]["code"], bad[i].0);
        assert_eq!(d["payload_size"].as_u64(), Some(bad[i].1.len() as u64));
    }
    let t = tally(&sent_ids(&good), &results.ids());
    assert!(
        t.lost.is_empty() && t.duplicates == 0 && t.unexpected.is_empty(),
        "{t:?}"
    );
    assert!(w.alive());
    assert!(w.sigterm(Duration::from_secs(60)).success());
    let c = committed(BROKERS, &format!("{}.group", k.tag), &k.topic("input"), 1);
    assert_eq!(
        c.get(&0).copied(),
        Some(all.len() as i64),
        "dead-lettered offsets are committed too"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_mid_batch_then_restart_loses_nothing() {
    let setup = Setup::new();
    let k = Topics::create(BROKERS, "lm-kill", 2).await;
    let n = 800;
    let docs = good_docs(n);
    k.produce(&docs).await;
    let cfg = setup.config("w.toml", &k.config(""));
    let mut results = Reader::new(BROKERS, &k.topic("results"));
    let mut w = WorkerProc::start(&cfg, &setup.dir.path().join("w1.log"));
    // Kill on the worker's own progress (ten batches scored), not on what a reader has seen:
    // the reader lags, and the worker must still be mid-stream when it dies.
    let start = Instant::now();
    while w.log_text().matches("batch scored").count() < 10 {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "{}",
            w.log_text()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    w.kill9();
    // What the dead worker left: results it published, offsets its group committed. Only results
    // published past the commit can be published again by the next worker. A commit request sent
    // just before the kill may still land after this read, so the difference is an upper bound.
    let published = message_count(BROKERS, &k.topic("results"));
    let group = format!("{}.group", k.tag);
    let committed_at_kill: i64 = committed(BROKERS, &group, &k.topic("input"), 2)
        .values()
        .sum();
    // The replacement starts once the killed member's session (15 s here) has expired, as a
    // restarted pod does after its back-off. tansu's group coordinator mishandles the other order:
    // a member that joins while the dead one still holds the group can be left with an empty
    // assignment, and no rebalance follows the dead member's expiry (seen: "partitions assigned
    // partitions=0", then nothing for four minutes). Kafka would rebalance on the expiry.
    std::thread::sleep(Duration::from_secs(16));
    let mut w2 = WorkerProc::start(&cfg, &setup.dir.path().join("w2.log"));
    results.collect(n, Duration::from_secs(3), Duration::from_secs(240));
    let t = tally(&sent_ids(&docs), &results.ids());
    eprintln!(
        "kafka kill -9: first worker published {published}, committed {committed_at_kill}; {t:?}"
    );
    assert!(
        published > 0 && published < n as i64,
        "killed mid-stream: {published}"
    );
    assert!(committed_at_kill <= published);
    assert!(t.lost.is_empty() && t.unexpected.is_empty(), "{t:?}");
    assert!(
        t.duplicates as i64 <= published - committed_at_kill,
        "duplicates {} > published but uncommitted {}",
        t.duplicates,
        published - committed_at_kill
    );
    assert!(w2.sigterm(Duration::from_secs(60)).success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_then_restart_has_no_duplicates() {
    let setup = Setup::new();
    let k = Topics::create(BROKERS, "lm-term", 2).await;
    let n = 600;
    let docs = good_docs(n);
    k.produce(&docs).await;
    let cfg = setup.config("w.toml", &k.config(""));
    let mut results = Reader::new(BROKERS, &k.topic("results"));
    let mut w = WorkerProc::start(&cfg, &setup.dir.path().join("w1.log"));
    results.collect(100, Duration::ZERO, Duration::from_secs(120));
    let status = w.sigterm(Duration::from_secs(60));
    assert!(status.success(), "exit status {status}");
    assert_eq!(w.report()["abandoned"], 0);
    let mut w2 = WorkerProc::start(&cfg, &setup.dir.path().join("w2.log"));
    results.collect(n, Duration::from_secs(3), Duration::from_secs(240));
    let t = tally(&sent_ids(&docs), &results.ids());
    eprintln!(
        "kafka SIGTERM: first run labelled {}, {t:?}",
        w.report()["labelled"]
    );
    assert!(t.lost.is_empty() && t.unexpected.is_empty(), "{t:?}");
    assert_eq!(t.duplicates, 0);
    assert!(w2.sigterm(Duration::from_secs(60)).success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_in_one_group_share_the_partitions() {
    let setup = Setup::new();
    let k = Topics::create(BROKERS, "lm-group", 4).await;
    let cfg = setup.config("w.toml", &k.config(""));
    let mut w1 = WorkerProc::start(&cfg, &setup.dir.path().join("w1.log"));
    w1.wait_for_log("partitions assigned", Duration::from_secs(60));
    let mut w2 = WorkerProc::start(&cfg, &setup.dir.path().join("w2.log"));
    // The group is settled when each member holds two of the four partitions. Documents produced
    // before that could move between members mid-flight, which at-least-once allows to duplicate.
    w2.wait_for_log("partitions assigned partitions=2", Duration::from_secs(60));
    w1.wait_for_log("partitions assigned partitions=2", Duration::from_secs(60));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let n = 1000;
    let docs = good_docs(n);
    k.produce(&docs).await;
    let mut results = Reader::new(BROKERS, &k.topic("results"));
    results.collect(n, Duration::from_secs(3), Duration::from_secs(240));
    let t = tally(&sent_ids(&docs), &results.ids());
    assert!(t.lost.is_empty() && t.unexpected.is_empty(), "{t:?}");
    let rebalances = w1.log_text().matches("partitions revoked").count();
    assert_eq!(
        t.duplicates, 0,
        "{t:?}; first worker revoked {rebalances} times"
    );
    assert!(w2.sigterm(Duration::from_secs(60)).success());
    assert!(w1.sigterm(Duration::from_secs(60)).success());
    let (a, b) = (
        w1.report()["labelled"].as_u64().unwrap(),
        w2.report()["labelled"].as_u64().unwrap(),
    );
    eprintln!("two workers: {a} + {b}");
    assert!(a > 0 && b > 0, "both workers took a share: {a} + {b}");
    assert_eq!(a + b, n as u64);
}
