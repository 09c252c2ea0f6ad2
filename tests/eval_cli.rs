//! `labelmill eval` on generated models: its accuracy, confusion and agreement agree with what
//! `labelmill classify` labels; the reliability diagram is written; a temperature fitted on one
//! half of the data lowers the calibration error on the other half.
//!
//! The gold labels are built from the model's own `classify` output: three documents in four keep
//! the predicted label, the fourth gets another one, so the expected accuracy is known exactly
//! without hard-coding any score.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use candle_core::quantized::GgmlDType;
use serde_json::{json, Value};

/// `classify` labels of `docs` (id -> label) by the model in `dir`.
fn classify(dir: &Path, tasks: &Path, docs: &Path) -> Vec<String> {
    let out = common::classify_command(dir, tasks)
        .args(["--input", docs.to_str().unwrap()])
        .stderr(Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            v["label"].as_str().unwrap().to_string()
        })
        .collect()
}

fn eval(dir: &Path, tasks: &Path, data: &Path, extra: &[&str]) -> Value {
    let out = Command::new(env!("CARGO_BIN_EXE_labelmill"))
        .arg("eval")
        .arg("--model")
        .arg(dir.join("model.gguf"))
        .arg("--tokenizer")
        .arg(dir.join("tokenizer.json"))
        .arg("--tasks")
        .arg(tasks)
        .arg("--data")
        .arg(data)
        .arg("--json")
        .args(extra)
        .stderr(Stdio::inherit())
        .output()
        .unwrap();
    assert!(out.status.success());
    serde_json::from_slice(&out.stdout).unwrap()
}

struct Data {
    dir: tempfile::TempDir,
    tasks: PathBuf,
    docs: PathBuf,
    ids: Vec<String>,
}

fn data(n: usize) -> Data {
    let dir = tempfile::tempdir().unwrap();
    let tasks = dir.path().join("tasks.toml");
    std::fs::write(&tasks, common::worker::TASKS).unwrap();
    let docs = dir.path().join("docs.jsonl");
    let good = common::worker::good_docs(n);
    let lines: Vec<String> = good
        .iter()
        .map(|(_, p)| String::from_utf8(p.clone()).unwrap())
        .collect();
    std::fs::write(&docs, lines.join("\n") + "\n").unwrap();
    Data {
        dir,
        tasks,
        docs,
        ids: good.into_iter().map(|g| g.0).collect(),
    }
}

const LABELS: [&str; 4] = ["billing", "technical", "account", "other"];

/// Writes labelled records for `range`: the predicted label, except every fourth document.
fn labelled(d: &Data, predicted: &[String], range: std::ops::Range<usize>, name: &str) -> PathBuf {
    let texts: Vec<Value> = std::fs::read_to_string(&d.docs)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let mut out = String::new();
    for i in range {
        let p = LABELS.iter().position(|l| *l == predicted[i]).unwrap();
        let gold = if i % 4 == 3 {
            LABELS[(p + 1) % 4]
        } else {
            LABELS[p]
        };
        let rec =
            json!({"id": d.ids[i], "task": "ticket", "text": texts[i]["text"], "label": gold});
        out.push_str(&format!("{rec}\n"));
    }
    let path = d.dir.path().join(name);
    std::fs::write(&path, out).unwrap();
    path
}

#[test]
fn eval_agrees_with_classify_and_compares_two_models() {
    let q8 = common::model_dir(&common::gqa_shape(), GgmlDType::Q8_0, 31);
    let q4 = common::model_dir(&common::gqa_shape(), GgmlDType::Q4_0, 31);
    let d = data(80);
    let p8 = classify(&q8, &d.tasks, &d.docs);
    let p4 = classify(&q4, &d.tasks, &d.docs);
    let file = labelled(&d, &p8, 0..80, "labelled.jsonl");
    let svg = d.dir.path().join("reliability.svg");
    let r = eval(
        &q8,
        &d.tasks,
        &file,
        &[
            "--compare",
            q4.join("model.gguf").to_str().unwrap(),
            "--plot",
            svg.to_str().unwrap(),
        ],
    );
    let t = &r["tasks"]["ticket"];
    assert_eq!(r["documents"], 80);
    assert_eq!(t["n"], 80);
    // Three in four keep the model's own label.
    assert_eq!(t["accuracy"].as_f64().unwrap(), 0.75, "{t}");
    let confusion: Vec<Vec<u64>> = serde_json::from_value(t["confusion"].clone()).unwrap();
    assert_eq!(confusion.iter().flatten().sum::<u64>(), 80);
    assert_eq!((0..4).map(|i| confusion[i][i]).sum::<u64>(), 60);
    let f1 = t["macro_f1"].as_f64().unwrap();
    assert!(f1 > 0.0 && f1 <= 1.0);
    let ece = t["ece"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&ece));
    // The compared model: agreement and accuracy from its own classify labels.
    let c = &t["compare"];
    let agree = p8.iter().zip(&p4).filter(|(a, b)| a == b).count() as f64 / 80.0;
    assert_eq!(c["agreement"].as_f64().unwrap(), agree, "{c}");
    let golds: Vec<Value> = std::fs::read_to_string(&file)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let right4 = golds
        .iter()
        .zip(&p4)
        .filter(|(g, p)| g["label"] == p.as_str())
        .count() as f64
        / 80.0;
    assert_eq!(c["other"]["accuracy"].as_f64().unwrap(), right4);
    assert!((c["accuracy_diff"].as_f64().unwrap() - (right4 - 0.75)).abs() < 1e-12);
    assert!(r["docs_per_s"].as_f64().unwrap() > 0.0);
    let svg = std::fs::read_to_string(svg).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("ticket"));
    let bars = t["bins"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|b| b["count"].as_u64().unwrap() > 0)
        .count();
    let c_bars = c["other"]["bins"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|b| b["count"].as_u64().unwrap() > 0)
        .count();
    assert_eq!(svg.matches("<title>").count(), bars + c_bars);
}

#[test]
fn a_fitted_temperature_lowers_the_calibration_error_on_held_out_data() {
    let q8 = common::model_dir(&common::gqa_shape(), GgmlDType::Q8_0, 31);
    let d = data(160);
    let p = classify(&q8, &d.tasks, &d.docs);
    let fit = labelled(&d, &p, 0..80, "fit.jsonl");
    let held_out = labelled(&d, &p, 80..160, "held-out.jsonl");
    let ece = |r: &Value| r["tasks"]["ticket"]["ece"].as_f64().unwrap();
    let before = eval(&q8, &d.tasks, &held_out, &[]);
    eval(&q8, &d.tasks, &fit, &["--fit-temperature"]);
    let tasks = labelmill::task::TaskFile::load(&d.tasks).unwrap();
    let t = tasks.task.iter().find(|t| t.name == "ticket").unwrap();
    assert_ne!(t.temperature, 1.0, "a temperature was written");
    let after = eval(&q8, &d.tasks, &held_out, &[]);
    eprintln!(
        "T = {}; held-out ECE {} -> {}",
        t.temperature,
        ece(&before),
        ece(&after)
    );
    assert!(ece(&after) < ece(&before));
    // Temperature never changes which label wins.
    assert_eq!(
        before["tasks"]["ticket"]["accuracy"],
        after["tasks"]["ticket"]["accuracy"]
    );
}
