//! `labelmill classify` end to end through the real binary on a generated model.

mod common;

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use candle_core::quantized::GgmlDType;
use common::{classify_command, gqa_shape, model_dir};
use serde_json::Value;

const TASKS: &str = r#"
[[task]]
name = "ticket"
preset = "llama2-chat"
instruction = "Classify the ticket: {{labels}}."
answer_prefix = "Category:"
labels = ["billing", "technical", "account", "other"]
max_doc_tokens = 64
truncation = "head"

[[task]]
name = "strict"
template = "Review: {{text}}\nSentiment:"
labels = ["positive", "negative"]
max_doc_tokens = 8
truncation = "reject"
"#;

fn classify(dir: &Path, input: &[u8], extra: &[&str]) -> Output {
    // One task file per call: tests run in parallel and must not rewrite a file another reads.
    let tasks = tempfile::Builder::new()
        .suffix(".toml")
        .tempfile_in(dir)
        .unwrap();
    std::fs::write(tasks.path(), TASKS).unwrap();
    let mut child = classify_command(dir, tasks.path())
        .args(extra)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(input).unwrap();
    child.wait_with_output().unwrap()
}

fn lines(out: &[u8]) -> Vec<Value> {
    String::from_utf8(out.to_vec())
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn n_lines_in_n_results_out_ids_kept() {
    let dir = model_dir(&gqa_shape(), GgmlDType::Q8_0, 21);
    let n = 300;
    let input: String = (0..n)
        .map(|i| {
            let words = "my invoice is wrong and the app crashes ".repeat(1 + i % 9);
            format!("{{\"id\": \"doc-{i}\", \"task\": \"ticket\", \"text\": \"{words}\", \"meta\": {{\"n\": {i}}}}}\n")
        })
        .collect();
    // A small window and batch so the run crosses several windows and batches.
    let out = classify(
        &dir,
        input.as_bytes(),
        &["--window", "40", "--batch-size", "7"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let results = lines(&out.stdout);
    assert_eq!(results.len(), n);
    for (i, r) in results.iter().enumerate() {
        assert_eq!(r["id"], format!("doc-{i}"), "input order is kept");
        assert_eq!(r["meta"]["n"], i, "meta passes through");
        assert_eq!(r["task"], "ticket");
        let scores = r["scores"].as_object().unwrap();
        assert_eq!(
            scores.keys().collect::<Vec<_>>(),
            ["billing", "technical", "account", "other"]
        );
        let sum: f64 = scores.values().map(|v| v.as_f64().unwrap()).sum();
        assert!((sum - 1.0).abs() < 1e-4, "probabilities sum to {sum}");
        let best = scores
            .iter()
            .max_by(|a, b| a.1.as_f64().partial_cmp(&b.1.as_f64()).unwrap())
            .unwrap();
        assert_eq!(r["label"], best.0.as_str());
        assert_eq!(r["score"].as_f64().unwrap(), best.1.as_f64().unwrap());
        let mass = r["label_mass"].as_f64().unwrap();
        assert!(mass > 0.0 && mass <= 1.0);
        assert!(r["doc_tokens"].as_u64().unwrap() > 0);
        assert_eq!(r["model"], "model.gguf");
    }
    // Head truncation: the longest documents exceed 64 tokens and say so.
    assert!(results
        .iter()
        .any(|r| r["truncated"] == true && r["doc_tokens"] == 64));
    assert!(results.iter().any(|r| r["truncated"] == false));
}

#[test]
fn every_bad_input_gives_an_error_line_and_the_run_continues() {
    let dir = model_dir(&gqa_shape(), GgmlDType::Q8_0, 21);
    let mut input = Vec::new();
    let cases: Vec<(&[u8], Option<&str>, &str)> = vec![
        (br#"{"id": "ok-1", "task": "ticket", "text": "refund please"}"#, None, ""),
        (br#"{"id": "bad-json", "text": "#, None, "malformed_json"),
        (b"{\"id\": \"bad-utf8\", \"task\": \"ticket\", \"text\": \"caf\xe9\"}", None, "invalid_utf8"),
        (br#"{"id": "no-text", "task": "ticket"}"#, Some("no-text"), "schema_invalid"),
        (br#"{"id": "empty", "task": "ticket", "text": "   "}"#, Some("empty"), "empty_text"),
        (br#"{"id": "unknown", "task": "nope", "text": "hello"}"#, Some("unknown"), "unknown_task"),
        (br#"{"id": "no-task", "text": "two tasks are defined"}"#, Some("no-task"), "unknown_task"),
        (
            br#"{"id": "too-long", "task": "strict", "text": "one two three four five six seven eight nine ten eleven twelve"}"#,
            Some("too-long"),
            "token_limit_exceeded",
        ),
        (br#"{"id": "ok-2", "task": "strict", "text": "great"}"#, None, ""),
    ];
    for (bytes, _, _) in &cases {
        input.extend_from_slice(bytes);
        input.push(b'\n');
    }
    input.extend_from_slice(b"\n"); // a blank line is not a record
    let out = classify(&dir, &input, &[]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "exit code 1 when any line failed"
    );
    let results = lines(&out.stdout);
    assert_eq!(results.len(), cases.len());
    for (i, ((_, id, code), r)) in cases.iter().zip(&results).enumerate() {
        if code.is_empty() {
            assert!(r["label"].is_string(), "line {}: {r}", i + 1);
            continue;
        }
        assert_eq!(r["line"], i + 1, "{r}");
        assert_eq!(r["error"]["code"], *code, "{r}");
        assert!(r["error"]["message"].as_str().unwrap().len() > 10, "{r}");
        match id {
            Some(id) => assert_eq!(r["id"], *id),
            None => assert!(r.get("id").is_none() || r["id"].is_string()),
        }
    }
    let summary: Value =
        serde_json::from_str(String::from_utf8_lossy(&out.stderr).lines().last().unwrap()).unwrap();
    assert_eq!(
        (summary["records"].as_u64(), summary["failed"].as_u64()),
        (Some(9), Some(7))
    );
}

#[test]
fn oversized_line_is_payload_too_large() {
    let dir = model_dir(&gqa_shape(), GgmlDType::Q8_0, 21);
    let big = format!(
        "{{\"id\": \"big\", \"task\": \"ticket\", \"text\": \"{}\"}}\n",
        "x ".repeat(5000)
    );
    let input = format!("{big}{{\"id\": \"after\", \"task\": \"ticket\", \"text\": \"hi\"}}\n");
    let out = classify(&dir, input.as_bytes(), &["--max-line-bytes", "2000"]);
    let results = lines(&out.stdout);
    assert_eq!(results.len(), 2);
    assert_eq!(results[0]["error"]["code"], "payload_too_large");
    assert_eq!(results[1]["id"], "after");
    assert_eq!(out.status.code(), Some(1));
}

/// Error lines count towards the read-ahead window: a stream of bad records is written as it goes,
/// not held until enough good documents arrive.
#[test]
fn error_lines_are_flushed_window_by_window() {
    use std::io::{BufRead, BufReader};
    let dir = model_dir(&gqa_shape(), GgmlDType::Q8_0, 21);
    let tasks = dir.join("flush-tasks.toml");
    std::fs::write(&tasks, TASKS).unwrap();
    let mut child = classify_command(&dir, &tasks)
        .args(["--window", "4"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    // Four bad lines fill the window; stdin stays open, so only a window flush can emit them.
    stdin.write_all(b"{bad\n{bad\n{bad\n{bad\n").unwrap();
    stdin.flush().unwrap();
    let out = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().take(4) {
            tx.send(line.unwrap()).unwrap();
        }
    });
    for _ in 0..4 {
        let Ok(line) = rx.recv_timeout(std::time::Duration::from_secs(60)) else {
            child.kill().unwrap();
            panic!("error lines were held back instead of flushed with their window");
        };
        let v: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["error"]["code"], "malformed_json");
    }
    drop(stdin);
    assert_eq!(child.wait().unwrap().code(), Some(1));
}

#[test]
fn output_file_and_clean_exit() {
    let dir = model_dir(&gqa_shape(), GgmlDType::Q8_0, 21);
    let out_path = dir.join("cli-out.jsonl");
    let input = br#"{"id": 1, "task": "ticket", "text": "the server is down"}
{"id": 2, "task": "strict", "text": "lovely"}
"#;
    let out = classify(&dir, input, &["--output", out_path.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.stdout.is_empty());
    let results = lines(&std::fs::read(&out_path).unwrap());
    assert_eq!(
        results
            .iter()
            .map(|r| r["id"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        [1, 2]
    );
}

#[test]
fn missing_model_is_a_clear_fatal_error() {
    let dir = model_dir(&gqa_shape(), GgmlDType::Q8_0, 21);
    let out = Command::new(env!("CARGO_BIN_EXE_labelmill"))
        .args([
            "classify",
            "--model",
            "/nonexistent/model.gguf",
            "--tokenizer",
        ])
        .arg(dir.join("tokenizer.json"))
        .args(["--tasks", "examples/tasks.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("/nonexistent/model.gguf does not exist"),
        "{err}"
    );
}
