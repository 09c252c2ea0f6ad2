//! `labelmill publish`: a backfill file onto a queue or topic. Interrupted (SIGTERM) and run
//! again, every line arrives exactly once; a third run publishes nothing.
//!
//! Against RabbitMQ at 127.0.0.1:5672 and tansu (Kafka) at 127.0.0.1:9092, started by .ci/run.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::kafka::{Reader, Topics};
use common::rabbit::Rabbit;
use common::worker::{good_docs, tally, Setup};
use serde_json::Value;

const BROKERS: &str = "127.0.0.1:9092";

/// A gzip JSONL file of `n` documents with a few blank lines among them; returns it and the ids.
fn backfill_file(dir: &Path, n: usize) -> (PathBuf, Vec<String>) {
    let path = dir.join("docs.jsonl.gz");
    let mut gz = flate2::write::GzEncoder::new(
        std::fs::File::create(&path).unwrap(),
        flate2::Compression::fast(),
    );
    let docs = good_docs(n);
    for (i, (_, payload)) in docs.iter().enumerate() {
        gz.write_all(payload).unwrap();
        gz.write_all(if i % 97 == 5 { b"\n\n" } else { b"\n" })
            .unwrap();
    }
    gz.finish().unwrap();
    (path, docs.into_iter().map(|d| d.0).collect())
}

/// Runs `labelmill publish` with `args`; with `interrupt_after`, sends SIGTERM after that long.
/// Returns the exit code and the JSON report.
fn publish(config: &Path, args: &[&str], interrupt_after: Option<Duration>) -> (i32, Value) {
    let child = Command::new(env!("CARGO_BIN_EXE_labelmill"))
        .arg("publish")
        .arg("--config")
        .arg(config)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    if let Some(d) = interrupt_after {
        std::thread::sleep(d);
        let st = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
        assert!(st.success());
    }
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    let report = serde_json::from_str(text.trim())
        .unwrap_or_else(|e| panic!("no JSON report ({e}): '{text}'"));
    (out.status.code().unwrap_or(-1), report)
}

/// Interrupts a rate-limited publish, resumes it, runs it once more; checks the three reports.
fn interrupt_resume_repeat(config: &Path, input: &Path, n: usize, to: &str) {
    let input = input.to_str().unwrap();
    let base = ["--input", input, "--to", to, "--no-progress"];
    let slow = [&base[..], &["--rate", "150", "--window", "16"]].concat();
    let (code, first) = publish(config, &slow, Some(Duration::from_millis(1500)));
    eprintln!("interrupted: {first}");
    assert_eq!(code, 130, "{first}");
    assert_eq!(first["interrupted"], true);
    let done = first["lines_done"].as_u64().unwrap();
    let published = first["published"].as_u64().unwrap();
    assert!(published > 0 && (published as usize) < n, "{first}");
    assert!(done >= published, "blank lines count as done too");
    let state: Value =
        serde_json::from_slice(&std::fs::read(format!("{input}.publish-state.json")).unwrap())
            .unwrap();
    assert_eq!(state["lines_done"], done, "saved on the way out");

    let (code, second) = publish(config, &base, None);
    eprintln!("resumed: {second}");
    assert_eq!(code, 0, "{second}");
    assert_eq!(second["complete"], true);
    assert_eq!(second["resumed_after"], done);
    assert_eq!(
        second["published"].as_u64().unwrap() + published,
        n as u64,
        "the two runs together publish every document once"
    );

    let (code, third) = publish(config, &base, None);
    assert_eq!(code, 0);
    assert_eq!(
        third["published"], 0,
        "a complete file is not published again"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_publish_interrupted_and_resumed_delivers_every_line_once() {
    let setup = Setup::new();
    let r = Rabbit::new("lm-publish").await;
    let n = 400;
    let (input, ids) = backfill_file(setup.dir.path(), n);
    let body = format!(
        "[amqp]\nuri = {uri:?}\ninputs = [{{ queue = \"{live}\" }}, {{ queue = \"{bf}\", lane = \"backfill\" }}]\n\
         exchange = \"{tag}\"\nresults_routing_key = \"results\"\ndead_letter_routing_key = \"dead\"\n",
        uri = common::rabbit::URI,
        live = r.queue("input"),
        bf = r.queue("backfill"),
        tag = r.tag,
    );
    let cfg = setup.config("w.toml", &body);
    let worker = tokio::task::spawn_blocking({
        let (cfg, input) = (cfg.clone(), input.clone());
        move || interrupt_resume_repeat(&cfg, &input, n, "amqp")
    });
    worker.await.unwrap();
    let got = r
        .collect(
            "backfill",
            n,
            Duration::from_secs(1),
            Duration::from_secs(60),
        )
        .await;
    let got: Vec<String> = got
        .iter()
        .map(|v| v["id"].as_str().unwrap().to_string())
        .collect();
    let t = tally(&ids, &got);
    assert!(t.lost.is_empty() && t.unexpected.is_empty(), "{t:?}");
    assert_eq!((t.unique, t.duplicates), (n, 0), "{t:?}");
    assert_eq!(r.depth("input").await, 0, "the live queue is untouched");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_publish_interrupted_and_resumed_delivers_every_line_once() {
    let setup = Setup::new();
    let topics = Topics::create(BROKERS, "lm-publish", 3).await;
    let n = 400;
    let (input, ids) = backfill_file(setup.dir.path(), n);
    // The backfill lane reads the topic made as `.input` here.
    let cfg = setup.config(
        "w.toml",
        &topics.config("").replace(
            "task = \"ticket\" }",
            "task = \"ticket\", lane = \"backfill\" }",
        ),
    );
    let (cfg2, input2) = (cfg.clone(), input.clone());
    tokio::task::spawn_blocking(move || interrupt_resume_repeat(&cfg2, &input2, n, "kafka"))
        .await
        .unwrap();
    let topic = topics.topic("input");
    let got = tokio::task::spawn_blocking(move || {
        let mut reader = Reader::new(BROKERS, &topic);
        assert!(reader.catch_up(Duration::from_secs(60)));
        reader.ids()
    })
    .await
    .unwrap();
    let t = tally(&ids, &got);
    assert!(t.lost.is_empty() && t.unexpected.is_empty(), "{t:?}");
    assert_eq!((t.unique, t.duplicates), (n, 0), "{t:?}");
}
