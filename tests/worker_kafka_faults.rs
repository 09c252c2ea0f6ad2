//! Fault injection with librdkafka's mock cluster: produce errors and a broker outage while the
//! worker runs in this process. Throughout, nothing is committed before its result is delivered,
//! and in the end every document has its result.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::kafka::{committed, Reader};
use common::worker::{good_docs, Setup};
use labelmill::config::WorkerConfig;
use rdkafka::config::ClientConfig;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};

#[test]
fn produce_errors_and_broker_outage_lose_nothing_and_never_commit_early() {
    let rt = runtime();
    let mock = MockCluster::new(1).unwrap();
    let brokers = mock.bootstrap_servers();
    for (t, p) in [("in", 2), ("results", 1), ("escalate", 1), ("dead", 1)] {
        mock.create_topic(t, p, 1).unwrap();
    }
    let n = 600;
    let docs = good_docs(n);
    // Where each document landed, to check commits against results.
    let coords = produce(&rt, &brokers, "in", &docs);
    let by_coord: HashMap<(i32, i64), String> = coords
        .iter()
        .zip(&docs)
        .map(|(c, d)| (*c, d.0.clone()))
        .collect();

    let setup = Setup::new();
    let body = format!(
        r#"
[batching]
max_docs = 8
max_wait = "10ms"
max_in_flight = 32

[retry]
max_attempts = 20
initial_backoff = "50ms"
max_backoff = "500ms"

[kafka]
brokers = "{brokers}"
group_id = "faults"
inputs = [{{ topic = "in", task = "ticket" }}]
results_topic = "results"
escalate_topic = "escalate"
dead_letter_topic = "dead"
# Deliveries time out during the outage, so the worker's own publish retries are exercised too.
producer_properties = {{ "message.timeout.ms" = "1500" }}
"#
    );
    let cfg_path = setup.config("w.toml", &body);
    let cfg = WorkerConfig::load(&cfg_path).unwrap();
    let (stop_tx, worker) = start_worker(&rt, cfg);

    // Retriable produce errors: librdkafka retries them inside the idempotent producer.
    let retriable = [RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS; 8];
    mock.request_errors(RDKafkaApiKey::Produce, &retriable);

    let mut results = Reader::new(&brokers, "results");
    let mut checks = 0;
    let mut max_committed = 0;
    let mut outage = None;
    let mut restored = false;
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(180) {
        // Read commits first, then every result the topic holds by now: each committed offset's
        // result must be among them (it was delivered before its offset was stored).
        let c = committed(&brokers, "faults", "in", 2);
        let caught_up = results.catch_up(Duration::from_secs(3));
        let have: std::collections::HashSet<String> = results.ids().into_iter().collect();
        for (p, next) in c.iter().filter(|_| caught_up) {
            for o in 0..*next {
                let id = &by_coord[&(*p, o)];
                assert!(
                    have.contains(id),
                    "partition {p} committed to {next} but {id} (offset {o}) has no result"
                );
            }
        }
        checks += usize::from(caught_up && !c.is_empty());
        std::thread::sleep(Duration::from_millis(20));
        max_committed = max_committed.max(c.values().sum::<i64>());
        match outage {
            None if results.seen.len() >= 40 => {
                mock.broker_down(1).unwrap();
                outage = Some(Instant::now());
            }
            Some(t) if !restored && t.elapsed() >= Duration::from_secs(4) => {
                mock.broker_up(1).unwrap();
                restored = true;
            }
            _ => {}
        }
        // Done when everything is delivered and committed, and the invariant was checked a few
        // times (a fast run can finish before five checks; later checks see the final state).
        if have.len() >= n && c.values().sum::<i64>() == n as i64 && checks >= 5 {
            break;
        }
    }
    let _ = mock.broker_up(1);
    assert!(outage.is_some(), "the outage was injected");
    assert!(
        checks >= 5,
        "the commit invariant was checked {checks} times"
    );
    let _ = stop_tx.send(());
    let report = rt.block_on(worker).unwrap().unwrap();
    results.poll_for(Duration::from_secs(1));
    let t = common::worker::tally(
        &docs.iter().map(|d| d.0.clone()).collect::<Vec<_>>(),
        &results.ids(),
    );
    eprintln!("mock faults: {checks} commit checks, max committed {max_committed}, {t:?}, report {report:?}");
    assert!(t.lost.is_empty() && t.unexpected.is_empty(), "{t:?}");
    assert_eq!(report.dead_lettered, 0);
    // Deliveries timed out during the outage and the worker published them again.
    assert!(report.publish_retries > 0, "{report:?}");
    let c = committed(&brokers, "faults", "in", 2);
    assert_eq!(
        c.values().sum::<i64>(),
        n as i64,
        "all committed at the end: {c:?}"
    );
}

/// Backpressure: with every in-flight slot taken the Kafka source pauses its partitions and keeps
/// polling; nothing more is read until a slot frees, and the consumer stays in its group.
#[test]
fn kafka_intake_pauses_at_the_in_flight_bound() {
    use std::sync::Arc;
    use tokio::sync::{mpsc, watch, Semaphore};

    let rt = runtime();
    let (_mock, brokers) = one_partition_input();
    produce(&rt, &brokers, "in", &good_docs(50));
    let k = source_config(&brokers, "bp", "in", SHORT_POLL);
    let slots = Arc::new(Semaphore::new(5));
    let (tx, mut rx) = mpsc::channel(100);
    let (stop_tx, stop_rx) = watch::channel(false);
    let got = rt.block_on(async {
        let bytes = labelmill::source::ByteBudget::new(64 << 20);
        let (consumer, source) = start_source(k, (slots.clone(), 5, bytes), tx, stop_rx);
        // Well past max.poll.interval.ms (6 s): a source that stopped polling would be thrown out
        // and, re-assigned, read from offset 0 again. (At 8 s a source with the pause logic
        // removed still passed: the leave had not happened yet; at 16 s it fails.)
        tokio::time::sleep(Duration::from_secs(16)).await;
        let mut first = Vec::new();
        while let Ok(d) = rx.try_recv() {
            first.push(d);
        }
        assert_eq!(first.len(), 5, "only as many messages as slots were read");
        assert_eq!(offsets_of(&first), (0..5).collect::<Vec<i64>>());
        // Free the slots without acknowledging: five more come in.
        first.clear();
        let start = std::time::Instant::now();
        let mut second = Vec::new();
        while second.len() < 5 && start.elapsed() < Duration::from_secs(20) {
            if let Ok(Some(d)) = tokio::time::timeout(Duration::from_millis(100), rx.recv()).await {
                // Held, so its slot stays taken.
                second.push(d);
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(rx.try_recv().is_err(), "no more than the freed slots");
        use rdkafka::consumer::Consumer;
        let assigned = consumer.assignment().unwrap().count();
        let _ = stop_tx.send(true);
        source.await.unwrap();
        (offsets_of(&second), assigned)
    });
    // The next five, not the first five again: a consumer thrown out of the group for not polling
    // would be re-assigned and read from the committed offset (0) once more.
    assert_eq!(
        got,
        ((5..10).collect::<Vec<i64>>(), 1),
        "offsets 5..9 after the slots freed; still assigned after 16 s paused"
    );
}

/// A mock cluster with one topic, `in`, of one partition; and its bootstrap address.
fn one_partition_input() -> (
    MockCluster<'static, rdkafka::producer::DefaultProducerContext>,
    String,
) {
    let mock = MockCluster::new(1).unwrap();
    mock.create_topic("in", 1, 1).unwrap();
    let brokers = mock.bootstrap_servers();
    (mock, brokers)
}

/// Consumer settings under which a member that stops polling leaves its group within seconds.
const SHORT_POLL: &str = r#""max.poll.interval.ms" = "6000", "session.timeout.ms" = "6000""#;

/// The Kafka section of a worker config reading `topic` in `group`, with `consumer_properties`
/// entries `consumer` (inline-table body).
fn source_config(
    brokers: &str,
    group: &str,
    topic: &str,
    consumer: &str,
) -> labelmill::config::KafkaConfig {
    let text = format!(
        "[model]\nmodel = \"m\"\ntokenizer = \"t\"\ntasks = \"x\"\n[kafka]\nbrokers = \"{brokers}\"\n\
         group_id = \"{group}\"\ninputs = [{{ topic = \"{topic}\" }}]\nresults_topic = \"r\"\n\
         dead_letter_topic = \"d\"\nconsumer_properties = {{ {consumer} }}\n"
    );
    let cfg = WorkerConfig::parse(&text, "test", Vec::new()).unwrap();
    cfg.kafka.unwrap()
}

/// Starts labelmill's Kafka source on `k` with (slots, resume_at, bytes) as its bounds, on the
/// current runtime; returns its consumer and task.
fn start_source(
    k: labelmill::config::KafkaConfig,
    (slots, resume_at, bytes): (
        std::sync::Arc<tokio::sync::Semaphore>,
        u32,
        labelmill::source::ByteBudget,
    ),
    tx: tokio::sync::mpsc::Sender<labelmill::source::Delivery>,
    stop: tokio::sync::watch::Receiver<bool>,
) -> (
    std::sync::Arc<labelmill::source::kafka::KafkaConsumer>,
    tokio::task::JoinHandle<()>,
) {
    use labelmill::source::kafka;
    let (consumer, offsets) = kafka::consumer(&k).unwrap();
    let bounds = kafka::Bounds {
        slots,
        resume_at,
        bytes,
    };
    let task = tokio::spawn(kafka::run(k, consumer.clone(), offsets, bounds, tx, stop));
    (consumer, task)
}

/// The Kafka offsets of `ds`, in order.
fn offsets_of(ds: &[labelmill::source::Delivery]) -> Vec<i64> {
    ds.iter()
        .map(|d| match &d.origin {
            labelmill::source::Origin::Kafka { offset, .. } => *offset,
            other => panic!("not a Kafka delivery: {other:?}"),
        })
        .collect()
}

/// A topic written with any of Kafka's codecs is read by labelmill's consumer: gzip, snappy, lz4
/// and zstd (librdkafka built without one leaves such a topic silently unread).
#[test]
fn compressed_topics_are_read_with_every_codec() {
    use std::sync::Arc;
    use tokio::sync::{mpsc, watch, Semaphore};

    let rt = runtime();
    let mock = MockCluster::new(1).unwrap();
    let brokers = mock.bootstrap_servers();
    for codec in ["gzip", "snappy", "lz4", "zstd"] {
        let topic = format!("in-{codec}");
        mock.create_topic(&topic, 1, 1).unwrap();
        let docs = good_docs(20);
        rt.block_on(async {
            let producer: FutureProducer = ClientConfig::new()
                .set("bootstrap.servers", &brokers)
                .set("compression.codec", codec)
                .set("linger.ms", "50")
                .create()
                .unwrap();
            let sends = docs.iter().map(|(id, payload)| {
                let rec = FutureRecord::to(&topic)
                    .key(id.as_bytes())
                    .payload(payload.as_slice());
                producer.send(rec, Duration::from_secs(10))
            });
            for r in futures_util::future::join_all(sends).await {
                r.unwrap();
            }
        });
        let k = source_config(&brokers, &format!("codec-{codec}"), &topic, "");
        let (tx, mut rx) = mpsc::channel(100);
        let (stop_tx, stop_rx) = watch::channel(false);
        let got: Vec<Vec<u8>> = rt.block_on(async {
            let slots = Arc::new(Semaphore::new(100));
            let bytes = labelmill::source::ByteBudget::new(64 << 20);
            let (_, source) = start_source(k, (slots, 50, bytes), tx, stop_rx);
            let mut got = Vec::new();
            let start = Instant::now();
            while got.len() < docs.len() && start.elapsed() < Duration::from_secs(30) {
                if let Ok(Some(d)) =
                    tokio::time::timeout(Duration::from_millis(200), rx.recv()).await
                {
                    got.push(d.payload.clone());
                }
            }
            let _ = stop_tx.send(true);
            source.await.unwrap();
            got
        });
        let want: Vec<Vec<u8>> = docs.iter().map(|d| d.1.clone()).collect();
        assert_eq!(got, want, "{codec}: every record read, in order, intact");
    }
}

/// Oversized fields cannot stop a partition. A record with a ~350 KB id is dead-lettered as
/// `id_too_long`; a result larger than the producer's `message.max.bytes` (a 60 KB `meta`) as
/// `result_too_large`; each dead letter is cut to fit that limit and says so; the documents
/// after them are labelled and every offset is committed. Before, the 350 KB id made a result over
/// the limit whose dead letter failed too, and the worker restarted at that offset forever.
#[test]
fn oversized_records_are_dead_lettered_and_the_partition_moves_on() {
    use sha2::{Digest, Sha256};
    let rt = runtime();
    let mock = MockCluster::new(1).unwrap();
    let brokers = mock.bootstrap_servers();
    for t in ["in", "results", "dead"] {
        mock.create_topic(t, 1, 1).unwrap();
    }
    let mut docs: Vec<(String, Vec<u8>)> = good_docs(20);
    let long_id = "i".repeat(350_000);
    docs[1].1 = serde_json::to_vec(&serde_json::json!({"id": long_id, "text": "hello"})).unwrap();
    docs[3].1 = serde_json::to_vec(&serde_json::json!({
        "id": "big-meta", "text": "hello", "meta": {"blob": "m".repeat(60_000)}
    }))
    .unwrap();
    produce(&rt, &brokers, "in", &docs);
    let setup = Setup::new();
    let body = format!(
        r#"
[batching]
max_docs = 4
max_wait = "10ms"

[kafka]
brokers = "{brokers}"
group_id = "big"
inputs = [{{ topic = "in", task = "ticket" }}]
results_topic = "results"
dead_letter_topic = "dead"
producer_properties = {{ "message.max.bytes" = "50000" }}
"#
    );
    let cfg = WorkerConfig::load(&setup.config("w.toml", &body)).unwrap();
    let (stop_tx, worker) = start_worker(&rt, cfg);
    let mut results = Reader::new(&brokers, "results");
    let mut dead = Reader::new(&brokers, "dead");
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(120)
        && !(results.seen.len() >= 18
            && dead.seen.len() >= 2
            && committed(&brokers, "big", "in", 1).get(&0) == Some(&20))
    {
        results.poll_for(Duration::from_millis(200));
        dead.poll_for(Duration::from_millis(200));
    }
    let _ = stop_tx.send(());
    let report = rt.block_on(worker).unwrap().unwrap();
    assert_eq!(report.fatal, None, "the worker did not give up: {report:?}");
    let mut codes: Vec<&str> = dead
        .seen
        .iter()
        .map(|(_, v)| v["error"]["code"].as_str().unwrap())
        .collect();
    codes.sort();
    assert_eq!(codes, ["id_too_long", "result_too_large"]);
    for (_, v) in &dead.seen {
        let size = serde_json::to_vec(v).unwrap().len();
        assert!(size <= 50_000, "a dead letter of {size} bytes");
        let offset = v["source"]["offset"].as_u64().unwrap() as usize;
        let original = &docs[offset].1;
        assert_eq!(v["payload_size"], original.len());
        assert_eq!(
            v["payload_truncated"], true,
            "{original:?} does not fit whole"
        );
        assert_eq!(v["payload_sha256"], hex(&Sha256::digest(original)));
        let kept = v["payload"].as_str().unwrap().as_bytes();
        assert!(
            original.starts_with(kept) && kept.len() > 40_000,
            "cut, but not more than needed"
        );
    }
    let mut want: Vec<String> = docs.iter().map(|d| d.0.clone()).collect();
    want.retain(|id| id != "d-1" && id != "d-3");
    let t = common::worker::tally(&want, &results.ids());
    assert!(t.lost.is_empty() && t.unexpected.is_empty(), "{t:?}");
    assert_eq!(
        committed(&brokers, "big", "in", 1)[&0],
        20,
        "every offset committed"
    );
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Faults the worker itself sees, not retried inside librdkafka: every produce request fails with
/// a non-retriable error (`TOPIC_AUTHORIZATION_FAILED`) for a while, results and dead letters
/// alike, with a bad input waiting for its dead letter. The routes' breakers open (the worker
/// holds the documents instead of dead-lettering them as `retries_exhausted`), and once the
/// broker takes messages again every good document is labelled, the bad one is dead-lettered with
/// its own code, and every offset is committed.
#[test]
fn a_broker_refusing_every_message_dead_letters_nothing_for_it() {
    let rt = runtime();
    let mock = MockCluster::new(1).unwrap();
    let brokers = mock.bootstrap_servers();
    for t in ["in", "results", "dead"] {
        mock.create_topic(t, 1, 1).unwrap();
    }
    let mut docs = good_docs(30);
    docs[10].1 = b"{not json".to_vec();
    produce(&rt, &brokers, "in", &docs);
    let refused = [RDKafkaRespErr::RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED; 30];
    mock.request_errors(RDKafkaApiKey::Produce, &refused);
    let setup = Setup::new();
    let body = format!(
        r#"
[batching]
max_docs = 8
max_wait = "10ms"

[retry]
max_attempts = 3
initial_backoff = "20ms"
max_backoff = "200ms"

[kafka]
brokers = "{brokers}"
group_id = "refused"
inputs = [{{ topic = "in", task = "ticket" }}]
results_topic = "results"
dead_letter_topic = "dead"
"#
    );
    let cfg = WorkerConfig::load(&setup.config("w.toml", &body)).unwrap();
    let prometheus = labelmill::telemetry::metrics::install().unwrap();
    let (stop_tx, worker) = start_worker(&rt, cfg);
    let mut results = Reader::new(&brokers, "results");
    let mut dead = Reader::new(&brokers, "dead");
    let mut saw_open = false;
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(120)
        && !(results.seen.len() >= 29
            && !dead.seen.is_empty()
            && committed(&brokers, "refused", "in", 1).get(&0) == Some(&30))
    {
        let text = prometheus.render();
        saw_open |=
            common::worker::metric_opt(&text, "labelmill_route_up", &[("route", "results")])
                == Some(0.0);
        results.poll_for(Duration::from_millis(100));
        dead.poll_for(Duration::from_millis(100));
    }
    dead.poll_for(Duration::from_millis(500));
    let _ = stop_tx.send(());
    let report = rt.block_on(worker).unwrap().unwrap();
    eprintln!("refusing broker: {report:?}");
    assert!(
        saw_open,
        "the results route's breaker opened during the fault"
    );
    assert!(
        report.publish_retries > 0,
        "the worker saw the errors: {report:?}"
    );
    assert_eq!(report.fatal, None);
    let codes: Vec<&str> = dead
        .seen
        .iter()
        .map(|(_, v)| v["error"]["code"].as_str().unwrap())
        .collect();
    assert_eq!(
        codes,
        ["malformed_json"],
        "only the bad input, with its own code"
    );
    let mut want: Vec<String> = docs.iter().map(|d| d.0.clone()).collect();
    want.remove(10);
    let t = common::worker::tally(&want, &results.ids());
    assert!(t.lost.is_empty() && t.unexpected.is_empty(), "{t:?}");
    assert_eq!(committed(&brokers, "refused", "in", 1)[&0], 30);
}

/// Produces `docs` (key = id) to `topic` one after another; returns each one's (partition, offset).
fn produce(
    rt: &tokio::runtime::Runtime,
    brokers: &str,
    topic: &str,
    docs: &[(String, Vec<u8>)],
) -> Vec<(i32, i64)> {
    rt.block_on(async {
        let producer: FutureProducer = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .create()
            .unwrap();
        let mut out = Vec::new();
        for (id, payload) in docs {
            let rec = FutureRecord::to(topic)
                .key(id.as_bytes())
                .payload(payload.as_slice());
            let d = producer.send(rec, Duration::from_secs(10)).await.unwrap();
            out.push((d.partition, d.offset));
        }
        out
    })
}

/// Runs `labelmill::worker::run` on `rt` until the returned sender is used (or dropped).
fn start_worker(
    rt: &tokio::runtime::Runtime,
    cfg: WorkerConfig,
) -> (
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<Result<labelmill::worker::WorkerReport, labelmill::worker::StartError>>,
) {
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let worker = rt.spawn(labelmill::worker::run(cfg, async {
        let _ = stop_rx.await;
    }));
    (stop_tx, worker)
}

/// A two-thread runtime for the tests that drive the worker's parts from plain threads.
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// A second worker joins the group while the first one's batch is still running: the first one
/// must not publish the results of that batch (its partitions moved; the new owners redo them), so
/// no stale result lands after a new owner's, and nothing is lost. Both workers are real
/// `labelmill worker` processes on the mock cluster; the first one's first batch is slowed by
/// `LABELMILL_FAULTS=engine-slow=...`, and the two tell their results apart by model file name.
#[test]
fn a_rebalance_during_a_slow_batch_publishes_nothing_stale() {
    use common::worker::WorkerProc;
    let rt = runtime();
    let mock = MockCluster::new(1).unwrap();
    let brokers = mock.bootstrap_servers();
    for (t, p) in [("in", 4), ("results", 1), ("dead", 1)] {
        mock.create_topic(t, p, 1).unwrap();
    }
    let n = 48;
    let docs = good_docs(n);
    produce(&rt, &brokers, "in", &docs);
    let setup = Setup::new();
    let body = format!(
        r#"
[batching]
max_docs = 8
max_wait = "10ms"
max_in_flight = 48

[kafka]
brokers = "{brokers}"
group_id = "rebalance"
inputs = [{{ topic = "in", task = "ticket" }}]
results_topic = "results"
dead_letter_topic = "dead"
consumer_properties = {{ "session.timeout.ms" = "6000", "max.poll.interval.ms" = "10000" }}
"#
    );
    let cfg_a = setup.config("a.toml", &body);
    // The second worker loads the same weights under another file name: its results say so.
    let b_model = setup.dir.path().join("model-b.gguf");
    std::fs::copy(setup.model.join("model.gguf"), &b_model).unwrap();
    let cfg_b = setup.dir.path().join("b.toml");
    let text_a = std::fs::read_to_string(&cfg_a).unwrap();
    let a_model = format!("{:?}", setup.model.join("model.gguf"));
    std::fs::write(&cfg_b, text_a.replace(&a_model, &format!("{b_model:?}"))).unwrap();

    let log = |name: &str| setup.dir.path().join(name);
    let mut a = WorkerProc::start_with_env(
        &cfg_a,
        &log("a.log"),
        &[("LABELMILL_FAULTS", "engine-slow=8000")],
    );
    a.wait_for_log("injected slow batch", Duration::from_secs(120));
    let mut b = WorkerProc::start(&cfg_b, &log("b.log"));
    // A's partitions are revoked while its first batch still runs.
    a.wait_for_log("partitions revoked", Duration::from_secs(60));

    let mut results = Reader::new(&brokers, "results");
    let start = Instant::now();
    let want: std::collections::HashSet<String> = docs.iter().map(|d| d.0.clone()).collect();
    while start.elapsed() < Duration::from_secs(120) {
        results.poll_for(Duration::from_millis(500));
        let have: std::collections::HashSet<String> = results.ids().into_iter().collect();
        if want.is_subset(&have) && start.elapsed() > Duration::from_secs(12) {
            break;
        }
    }
    assert!(a.sigterm(Duration::from_secs(60)).success());
    assert!(b.sigterm(Duration::from_secs(60)).success());
    results.poll_for(Duration::from_secs(1));

    // Results in the order they landed (one partition), each with the worker that made it.
    let landed: Vec<(String, String)> = results
        .seen
        .iter()
        .map(|(_, v)| {
            (
                v["id"].as_str().unwrap().to_string(),
                v["model"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let have: std::collections::HashSet<&String> = landed.iter().map(|(id, _)| id).collect();
    assert_eq!(have.len(), n, "every document has a result");
    let by_b = |m: &str| m.contains("model-b");
    assert!(
        landed.iter().any(|(_, m)| by_b(m)),
        "B took partitions over"
    );
    let mut duplicates = 0;
    for id in &have {
        let mine: Vec<&String> = landed
            .iter()
            .filter(|(i, _)| i == *id)
            .map(|(_, m)| m)
            .collect();
        duplicates += mine.len() - 1;
        if let Some(first_b) = mine.iter().position(|m| by_b(m)) {
            assert!(
                mine[first_b..].iter().all(|m| by_b(m)),
                "{id}: a result of the old owner landed after the new owner's: {mine:?}"
            );
        }
    }
    let report_a = a.report();
    eprintln!(
        "rebalance: {n} documents, {} results, {duplicates} duplicates; A: revoked {}, labelled {}",
        landed.len(),
        report_a["revoked"],
        report_a["labelled"]
    );
    assert!(
        report_a["revoked"].as_u64().unwrap() > 0,
        "A dropped the slow batch's documents of revoked partitions: {report_a}"
    );
    assert!(duplicates <= 48, "duplicates within the in-flight window");
}

/// Kafka input is bounded in bytes too: with 100 free slots and a 1 MiB byte budget, the source
/// hands out only the records of about 300 KB that fit the budget, keeps the group's membership
/// while it waits (it pauses and polls), and hands out the next ones as bytes are freed.
#[test]
fn kafka_intake_waits_for_the_byte_budget() {
    use labelmill::source::ByteBudget;
    use std::sync::Arc;
    use tokio::sync::{mpsc, watch, Semaphore};

    let rt = runtime();
    let (_mock, brokers) = one_partition_input();
    let text = "x".repeat(300_000);
    let big: Vec<(String, Vec<u8>)> = (0..12)
        .map(|i| {
            let id = format!("b-{i}");
            let doc = serde_json::json!({"id": id, "task": "ticket", "text": text});
            (id, serde_json::to_vec(&doc).unwrap())
        })
        .collect();
    // The mock cluster keeps about 5 MiB per partition: the twelve records fit.
    let coords = produce(&rt, &brokers, "in", &big);
    assert_eq!(coords.last(), Some(&(0, 11)));
    let k = source_config(&brokers, "bytes", "in", SHORT_POLL);
    let budget = ByteBudget::new(1 << 20);
    let (tx, mut rx) = mpsc::channel(100);
    let (stop_tx, stop_rx) = watch::channel(false);
    let (first, second, assigned) = rt.block_on(async {
        let slots = Arc::new(Semaphore::new(100));
        let (consumer, source) = start_source(k, (slots, 1, budget.clone()), tx, stop_rx);
        // Past max.poll.interval.ms (6 s): a source that stopped polling would leave the group.
        tokio::time::sleep(Duration::from_secs(10)).await;
        let mut first = Vec::new();
        while let Ok(d) = rx.try_recv() {
            first.push(d);
        }
        let held = budget.taken();
        // Free the bytes of two deliveries (without acknowledging): two more come in.
        let firsts = offsets_of(&first);
        first.truncate(first.len() - 2);
        let mut second = Vec::new();
        let start = std::time::Instant::now();
        while second.len() < 2 && start.elapsed() < Duration::from_secs(20) {
            if let Ok(Some(d)) = tokio::time::timeout(Duration::from_millis(100), rx.recv()).await {
                second.push(d);
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(rx.try_recv().is_err(), "no more than the freed bytes");
        assert!(held <= 1 << 20, "{held} bytes held");
        use rdkafka::consumer::Consumer;
        let assigned = consumer.assignment().unwrap().count();
        let _ = stop_tx.send(true);
        source.await.unwrap();
        (firsts, offsets_of(&second), assigned)
    });
    assert_eq!(first, vec![0, 1, 2], "3 records of 300 KB fit 1 MiB");
    assert_eq!(second, vec![3, 4], "the next two, once two were freed");
    assert_eq!(assigned, 1, "still in the group after waiting 10 s");
}

/// A partition whose oldest offset is unfinished stops at `kafka.partition_window` offsets read
/// and not stored, however many slots are free (a crash would make the group redo them all), and
/// goes on once that offset is done.
#[test]
fn a_partition_stuck_behind_one_offset_stops_at_its_window() {
    use std::sync::Arc;
    use tokio::sync::{mpsc, watch, Semaphore};

    let rt = runtime();
    let (_mock, brokers) = one_partition_input();
    produce(&rt, &brokers, "in", &good_docs(30));
    let mut k = source_config(&brokers, "window", "in", SHORT_POLL);
    k.partition_window = 4;
    let (tx, mut rx) = mpsc::channel(100);
    let (stop_tx, stop_rx) = watch::channel(false);
    let (before, after) = rt.block_on(async {
        let slots = Arc::new(Semaphore::new(100));
        let bytes = labelmill::source::ByteBudget::new(64 << 20);
        let (_, source) = start_source(k, (slots, 1, bytes), tx, stop_rx);
        // Offset 0 stays unfinished; the later ones finish as they come.
        let mut stuck = None;
        let mut read = Vec::new();
        let start = std::time::Instant::now();
        while start.elapsed() < Duration::from_secs(8) {
            if let Ok(Some(d)) = tokio::time::timeout(Duration::from_millis(100), rx.recv()).await {
                read.extend(offsets_of(std::slice::from_ref(&d)));
                if stuck.is_none() {
                    stuck = Some(d);
                } else {
                    assert!(d.ack.ack().await);
                }
            }
        }
        let before = read.clone();
        // Offset 0 finishes: the window drains and reading resumes.
        assert!(stuck.unwrap().ack.ack().await);
        let start = std::time::Instant::now();
        while read.len() < 30 && start.elapsed() < Duration::from_secs(20) {
            if let Ok(Some(d)) = tokio::time::timeout(Duration::from_millis(100), rx.recv()).await {
                read.extend(offsets_of(std::slice::from_ref(&d)));
                assert!(d.ack.ack().await);
            }
        }
        let _ = stop_tx.send(true);
        source.await.unwrap();
        (before, read)
    });
    assert_eq!(
        before,
        (0..4).collect::<Vec<i64>>(),
        "4 offsets read while offset 0 is unfinished (100 slots free)"
    );
    assert_eq!(
        after,
        (0..30).collect::<Vec<i64>>(),
        "all read once it finished"
    );
}
