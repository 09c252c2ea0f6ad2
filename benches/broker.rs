//! End-to-end docs/s through each broker beside engine-only docs/s, on the same model and documents.
//!
//! `cargo bench --bench broker -- [--docs 2000] [--runs 3]` (RabbitMQ on :5672 and Kafka on :9092
//! must be up: `bash scripts/services.sh`). Each run starts the worker in this process, waits for the
//! result of one warm-up document (model loaded, prefix cached, consumer joined), then times from
//! the first publish of N documents to the N-th result: decode, batching, engine, publish, ack and
//! the broker round trips all count. Engine-only runs time the same documents through decode,
//! tokenisation and `Engine::score` with the worker's batch size. `BENCH_KAFKA_EXTRA` is appended
//! to the worker's `[kafka]` section (e.g. `consumer_properties = { "fetch.wait.max.ms" = "50" }`). Runs alternate engine / rabbitmq / kafka; medians
//! and the ratios to the engine are printed as JSON lines. Under `cargo test` it does one small run.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use candle_core::quantized::GgmlDType;
use futures_util::StreamExt;
use labelmill::config::WorkerConfig;
use labelmill::engine::Engine;
use labelmill::task::TaskFile;
use labelmill::tiny::{self, TinyShape};
use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};

const TASKS: &str = r#"
[[task]]
name = "ticket"
preset = "llama2-chat"
system = "You route customer support tickets to the right team. Answer with the category only."
instruction = "Classify the ticket into one of these categories: {{labels}}."
answer_prefix = "Category:"
labels = ["billing", "technical", "account", "other"]
max_doc_tokens = 128
truncation = "head"
"#;

const MAX_DOCS: usize = 32;

fn docs(n: usize) -> Vec<Vec<u8>> {
    let words = [
        "invoice", "crash", "password", "refund", "server", "login", "my", "account", "error",
        "payment", "help", "update", "slow", "delete", "card", "charged", "the", "since", "today",
    ];
    (0..n)
        .map(|i| {
            let text: Vec<&str> = (0..40)
                .map(|j| words[(i * 7 + j * 5 + j * j) % words.len()])
                .collect();
            serde_json::to_vec(&serde_json::json!({"id": format!("d-{i}"), "text": text.join(" ")}))
                .unwrap()
        })
        .collect()
}

fn unique(p: &str) -> String {
    let n = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{p}-{}-{}", std::process::id(), n % 1_000_000_000_000)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn engine_only(dir: &Path, payloads: &[Vec<u8>]) -> f64 {
    let engine = Engine::load(&dir.join("model.gguf"), None, &candle_core::Device::Cpu).unwrap();
    let spec = TaskFile::load(&dir.join("tasks.toml")).unwrap();
    let task = engine.prepare(&spec.task[0]).unwrap();
    engine.prefix_kv(&task).unwrap();
    let start = Instant::now();
    // What the worker does per document besides brokers: decode, tokenise, score in batches.
    let fitted: Vec<Vec<u32>> = payloads
        .iter()
        .map(|p| {
            let d = labelmill::decode::decode(p, 1 << 20).unwrap();
            task.encode_doc(engine.tokenizer(), &d.text).unwrap().ids
        })
        .collect();
    for chunk in fitted.chunks(MAX_DOCS) {
        let refs: Vec<&[u32]> = chunk.iter().map(Vec::as_slice).collect();
        engine.score(&task, &refs).unwrap();
    }
    payloads.len() as f64 / start.elapsed().as_secs_f64()
}

fn config(dir: &Path, broker: &str) -> WorkerConfig {
    let text = format!(
        "[model]\nmodel = \"model.gguf\"\ntasks = \"tasks.toml\"\n\
         [http]\nlisten = \"127.0.0.1:0\"\n[batching]\nmax_docs = {MAX_DOCS}\n{broker}"
    );
    let p = dir.join(format!("{}.toml", unique("cfg")));
    std::fs::write(&p, text).unwrap();
    WorkerConfig::load(&p).unwrap()
}

fn warm_up() -> Vec<u8> {
    br#"{"id": "warm-up", "text": "my card was charged twice"}"#.to_vec()
}

async fn next_result(c: &mut lapin::Consumer) {
    let d = tokio::time::timeout(Duration::from_secs(120), c.next()).await;
    d.expect("results keep coming").unwrap().unwrap();
}

async fn amqp_run(dir: &Path, payloads: &[Vec<u8>]) -> f64 {
    let uri = "amqp://guest:guest@127.0.0.1:5672/%2f";
    let tag = unique("bench");
    let conn = Connection::connect(uri, ConnectionProperties::default())
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    for q in ["in", "results", "dead"] {
        let name = format!("{tag}.{q}");
        ch.queue_declare(
            name.as_str().into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    }
    let cfg = config(
        dir,
        &format!(
            "[amqp]\nuri = \"{uri}\"\ninputs = [{{ queue = \"{tag}.in\", task = \"ticket\" }}]\nexchange = \"\"\n\
             results_routing_key = \"{tag}.results\"\ndead_letter_routing_key = \"{tag}.dead\"\n"
        ),
    );
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let worker = tokio::spawn(labelmill::worker::run(cfg, async {
        let _ = stopped.await;
    }));
    let mut consumer = ch
        .basic_consume(
            format!("{tag}.results").as_str().into(),
            "bench".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    let input = format!("{tag}.in");
    let publish = {
        let (ch, input) = (ch.clone(), input.clone());
        move |p: Vec<u8>| {
            let (ch, input) = (ch.clone(), input.clone());
            async move {
                let opts = BasicPublishOptions::default();
                let props = BasicProperties::default();
                ch.basic_publish("".into(), input.as_str().into(), opts, &p, props)
                    .await
                    .unwrap()
                    .await
                    .unwrap();
            }
        }
    };
    publish(warm_up()).await;
    next_result(&mut consumer).await;
    let start = Instant::now();
    // Publishing runs beside the worker, as another service would.
    let publisher = tokio::spawn({
        let payloads = payloads.to_vec();
        async move {
            for p in payloads {
                publish(p).await;
            }
        }
    });
    for _ in 0..payloads.len() {
        next_result(&mut consumer).await;
    }
    let rate = payloads.len() as f64 / start.elapsed().as_secs_f64();
    publisher.await.unwrap();
    let _ = stop.send(());
    let report = worker.await.unwrap().unwrap();
    assert_eq!(report.labelled as usize, payloads.len() + 1);
    for q in ["in", "results", "dead"] {
        let name = format!("{tag}.{q}");
        let _ = ch
            .queue_delete(name.as_str().into(), Default::default())
            .await;
    }
    rate
}

async fn kafka_run(dir: &Path, payloads: &[Vec<u8>]) -> f64 {
    let brokers = "127.0.0.1:9092";
    let tag = unique("bench");
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .unwrap();
    let topics: Vec<String> = ["in", "results", "dead"]
        .iter()
        .map(|t| format!("{tag}.{t}"))
        .collect();
    let new: Vec<NewTopic> = topics
        .iter()
        .map(|t| NewTopic::new(t, 1, TopicReplication::Fixed(1)))
        .collect();
    for r in admin
        .create_topics(&new, &AdminOptions::new())
        .await
        .unwrap()
    {
        r.unwrap();
    }
    let cfg = config(
        dir,
        &format!(
            "[kafka]\nbrokers = \"{brokers}\"\ngroup_id = \"{tag}\"\ninputs = [{{ topic = \"{}\", task = \"ticket\" }}]\n\
             results_topic = \"{}\"\ndead_letter_topic = \"{}\"\n{}\n",
            topics[0],
            topics[1],
            topics[2],
            std::env::var("BENCH_KAFKA_EXTRA").unwrap_or_default()
        ),
    );
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let worker = tokio::spawn(labelmill::worker::run(cfg, async {
        let _ = stopped.await;
    }));
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("linger.ms", "5")
        .create()
        .unwrap();
    let n = payloads.len();
    let results = topics[1].clone();
    // The reader counts results on its own thread; it reports when the warm-up result is in, and
    // then takes the start time from the publisher.
    let (warm_tx, warm_rx) = tokio::sync::oneshot::channel::<()>();
    let (start_tx, start_rx) = std::sync::mpsc::channel::<Instant>();
    let reader = tokio::task::spawn_blocking(move || {
        let c: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("group.id", unique("reader"))
            // Return each fetch as soon as a result is there, so the reader adds no latency.
            .set("fetch.wait.max.ms", "10")
            .create()
            .unwrap();
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&results, 0, Offset::Beginning)
            .unwrap();
        c.assign(&tpl).unwrap();
        let deadline = Instant::now() + Duration::from_secs(300);
        let mut warm_tx = Some(warm_tx);
        let mut got = 0;
        while got < n + 1 {
            assert!(Instant::now() < deadline, "results keep coming");
            if let Some(m) = c.poll(Duration::from_millis(20)) {
                m.unwrap();
                got += 1;
                if let Some(tx) = warm_tx.take() {
                    let _ = tx.send(());
                }
            }
        }
        let start = start_rx.recv().unwrap();
        n as f64 / start.elapsed().as_secs_f64()
    });
    let send = |p: Vec<u8>| {
        let topic = topics[0].clone();
        let producer = producer.clone();
        async move {
            let rec = FutureRecord::<[u8], [u8]>::to(&topic).payload(&p);
            producer.send(rec, Duration::from_secs(30)).await.unwrap();
        }
    };
    send(warm_up()).await;
    warm_rx.await.unwrap();
    start_tx.send(Instant::now()).unwrap();
    let sends: Vec<_> = payloads
        .iter()
        .map(|p| tokio::spawn(send(p.clone())))
        .collect();
    for s in sends {
        s.await.unwrap();
    }
    let rate = reader.await.unwrap();
    let _ = stop.send(());
    let report = worker.await.unwrap().unwrap();
    assert_eq!(report.labelled as usize, n + 1);
    rate
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let benching = args.iter().any(|a| a == "--bench");
    let flag = |name: &str, default: usize| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .map_or(default, |v| v.parse().unwrap())
    };
    let (n, runs) = if benching {
        (flag("--docs", 2000), flag("--runs", 3))
    } else {
        (64, 1)
    };
    let shape = if benching {
        TinyShape {
            layers: 4,
            dim: 512,
            heads: 8,
            kv_heads: 4,
            vocab: 4096,
            ffn: 1408,
            context: 2048,
        }
    } else {
        TinyShape {
            layers: 2,
            dim: 128,
            heads: 4,
            kv_heads: 2,
            vocab: 512,
            ffn: 256,
            context: 1024,
        }
    };
    let dir = tempfile::tempdir().unwrap();
    tiny::write(dir.path(), &shape, GgmlDType::Q8_0, 7).unwrap();
    std::fs::write(dir.path().join("tasks.toml"), TASKS).unwrap();
    let payloads = Arc::new(docs(n));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (mut e, mut a, mut k) = (Vec::new(), Vec::new(), Vec::new());
    for run in 0..runs {
        e.push(engine_only(dir.path(), &payloads));
        a.push(rt.block_on(amqp_run(dir.path(), &payloads)));
        k.push(rt.block_on(kafka_run(dir.path(), &payloads)));
        eprintln!(
            "run {run}: engine {:.1}, rabbitmq {:.1}, kafka {:.1} docs/s",
            e[run], a[run], k[run]
        );
    }
    let (em, am, km) = (median(e.clone()), median(a.clone()), median(k.clone()));
    let threads = std::env::var("RAYON_NUM_THREADS").unwrap_or_else(|_| "all".into());
    for (path, m, v) in [("engine", em, &e), ("rabbitmq", am, &a), ("kafka", km, &k)] {
        println!(
            "{}",
            serde_json::json!({"path": path, "docs": n, "runs": runs, "threads": threads, "max_docs": MAX_DOCS,
            "shape": format!("{}l/{}d/{}h/{}kv/{}v/{}f Q8_0", shape.layers, shape.dim, shape.heads, shape.kv_heads, shape.vocab, shape.ffn),
            "docs_per_s_median": m, "docs_per_s": v, "ratio_to_engine": m / em})
        );
    }
}
