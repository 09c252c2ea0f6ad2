//! `labelmill tune` on a generated F32 model: the training forward gives the probabilities serving
//! gives with the adapter it writes (multi-token labels, content-free calibration and a bias
//! included); its gradients are those of finite differences; the whole command learns a task
//! that the base model cannot do, and `eval` then serves the adapter it wrote into the task file;
//! data with labels outside the task's label set is refused, naming every bad line.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use candle_core::quantized::GgmlDType;
use candle_core::{Device, Tensor};
use common::{gqa_shape, model_dir};
use labelmill::engine::load::GgufFile;
use labelmill::engine::lora::TARGETS;
use labelmill::engine::prepared::PreparedTask;
use labelmill::engine::tokenizer::TextTokenizer;
use labelmill::engine::Engine;
use labelmill::task::{TaskFile, TaskSpec};
use labelmill::tune::data::Example;
use labelmill::tune::model::{LoraShape, TrainModel};
use labelmill::tune::write::{write_adapter, Provenance};
use labelmill::tune::Tuner;

/// Multi-token labels sharing a first token, content-free calibration and a bias: every part of
/// the served scoring that training must reproduce.
const TASKS: &str = r#"
[[task]]
name = "ticket"
template = "Ticket: {{text}}\nTeam:"
labels = [
  { name = "bill", verbaliser = " billing" },
  { name = "bill-dispute", verbaliser = " billing dispute" },
  { name = "tech", verbaliser = " technical" },
]
calibration = "content-free"
bias = { tech = 0.25 }
"#;

fn model() -> PathBuf {
    model_dir(&gqa_shape(), GgmlDType::F32, 5).join("model.gguf")
}

fn spec() -> TaskSpec {
    TaskFile::parse(TASKS, "test").unwrap().task.remove(0)
}

fn all_targets(rank: usize, layers: usize) -> LoraShape {
    LoraShape {
        rank,
        alpha: 2.0 * rank as f32,
        targets: (0..TARGETS.len()).collect(),
        layers: 0..layers,
    }
}

/// A tuner over the generated model with every projection adapted and `B` made non-zero (a fresh
/// adapter is the identity), and the task's tokenizer.
fn tuner() -> (Tuner, TextTokenizer, PreparedTask) {
    let mut file = GgufFile::open(&model()).unwrap();
    let tok = TextTokenizer::for_model(&file, None).unwrap();
    let task = PreparedTask::new(&spec(), &tok, file.hparams.context_length).unwrap();
    assert!(task.trie.has_continuations(), "multi-token labels");
    let layers = file.hparams.n_layers;
    let m = TrainModel::load(&mut file, &Device::Cpu, all_targets(4, layers), 3).unwrap();
    for (i, (_, b)) in m.lora.pairs.iter().flatten().flatten().enumerate() {
        let r = Tensor::randn(0f32, 0.2, b.shape(), &Device::Cpu).unwrap();
        b.set(&(r * (1.0 + (i % 3) as f64)).unwrap()).unwrap();
    }
    (Tuner::new(m, task.clone(), &tok).unwrap(), tok, task)
}

const DOCS: [&str; 5] = [
    "my card was charged twice",
    "the app crashes when I open settings",
    "refund",
    "I want to dispute the invoice from March, it lists a plan I never ordered",
    "error 500",
];

#[test]
fn training_scores_as_serving_does_with_the_adapter_it_writes() {
    let (tuner, tok, task) = tuner();
    let ids: Vec<Vec<u32>> = DOCS
        .iter()
        .map(|d| task.encode_doc(&tok, d).unwrap().ids)
        .collect();
    let refs: Vec<&[u32]> = ids.iter().map(Vec::as_slice).collect();
    let trained = tuner.probabilities(&refs).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let adapter = dir.path().join("a.gguf");
    let prov = Provenance {
        task: "ticket",
        base_model: "test",
    };
    let alpha = tuner.model().lora.shape.alpha;
    write_adapter(
        &adapter,
        &tuner.model().lora.snapshot().unwrap(),
        alpha,
        &prov,
    )
    .unwrap();
    let e = Engine::load(&model(), None, &Device::Cpu).unwrap();
    let mut with = spec();
    with.adapter = Some(adapter);
    let served = e.score(&e.prepare(&with).unwrap(), &refs).unwrap();
    let base = e.score(&e.prepare(&spec()).unwrap(), &refs).unwrap();
    let (mut gap, mut moved) = (0f32, 0f32);
    for i in 0..DOCS.len() {
        gap = gap.max(common::max_abs(&trained[i], &served[i].probs));
        moved = moved.max(common::max_abs(&served[i].probs, &base[i].probs));
    }
    eprintln!("trained vs served: max |dp| {gap:.2e}; adapter vs base model: {moved:.3}");
    assert!(gap < 1e-4, "training and serving disagree by {gap}");
    assert!(
        moved > 0.02,
        "the adapter barely matters ({moved}): the check proves little"
    );
}

#[test]
fn gradients_match_finite_differences() {
    let (tuner, tok, task) = tuner();
    let docs: Vec<Example> = DOCS
        .iter()
        .enumerate()
        .map(|(i, d)| Example {
            ids: task.encode_doc(&tok, d).unwrap().ids,
            gold: i % 3,
        })
        .collect();
    let refs: Vec<&Example> = docs.iter().collect();
    let loss = |t: &Tuner| f64::from(t.loss(&refs).unwrap().to_scalar::<f32>().unwrap());
    let grads = tuner.loss(&refs).unwrap().backward().unwrap();
    let pairs: Vec<_> = tuner
        .model()
        .lora
        .pairs
        .iter()
        .flatten()
        .flatten()
        .collect();
    // Every pair learns: attention's softmax passes gradients to the query and key projections.
    for (i, (a, b)) in pairs.iter().enumerate() {
        assert!(
            grads.get(a.as_tensor()).is_some() && grads.get(b.as_tensor()).is_some(),
            "pair {i} has no gradient"
        );
    }
    // A of the first block's q, B of its k, B of the last block's down projection, A of v.
    let picks = [
        (0usize, true, 5usize),
        (1, false, 7),
        (pairs.len() - 1, false, 3),
        (2, true, 17),
    ];
    for (p, is_a, k) in picks {
        let var = if is_a { &pairs[p].0 } else { &pairs[p].1 };
        let g = grads.get(var.as_tensor()).expect("a gradient");
        let analytic = f64::from(g.flatten_all().unwrap().to_vec1::<f32>().unwrap()[k]);
        let orig = var.as_tensor().copy().unwrap();
        let nudge = |h: f32| {
            let mut v = orig.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            v[k] += h;
            let t = Tensor::from_vec(v, orig.shape(), &Device::Cpu).unwrap();
            var.set(&t).unwrap();
            loss(&tuner)
        };
        let h = 1e-2f32;
        let numeric = (nudge(h) - nudge(-h)) / (2.0 * f64::from(h));
        var.set(&orig).unwrap();
        eprintln!(
            "pair {p} {} [{k}]: analytic {analytic:.6}, numeric {numeric:.6}",
            if is_a { "A" } else { "B" }
        );
        assert!(
            (analytic - numeric).abs() <= 2e-2 * numeric.abs().max(1e-2),
            "pair {p}: analytic {analytic} vs numeric {numeric}"
        );
    }
}

/// Keywords that decide the label; the rest of each document is shared filler.
const KEYWORDS: [(&str, [&str; 4]); 3] = [
    ("bill", ["invoice", "payment", "charged", "refund"]),
    ("bill-dispute", ["dispute", "contest", "wrongly", "unfair"]),
    ("tech", ["crash", "error", "broken", "freezes"]),
];
const FILLER: [&str; 8] = [
    "my account",
    "since monday",
    "please help",
    "on the phone",
    "this week",
    "again today",
    "for the team",
    "in the app",
];

fn write_data(path: &Path, bad: &[(usize, &str)]) -> usize {
    let mut lines = Vec::new();
    for (i, f) in FILLER.iter().enumerate() {
        for (j, (label, words)) in KEYWORDS.iter().enumerate() {
            for (k, w) in words.iter().enumerate().take(2 + (i + j) % 3) {
                let text = if (i + k) % 2 == 0 {
                    format!("{w} {f}")
                } else {
                    format!("{f} {w}")
                };
                lines.push(serde_json::json!({"id": format!("d{i}-{j}-{k}"), "text": text, "label": label}).to_string());
            }
        }
    }
    for (line, label) in bad {
        lines[line - 1] = serde_json::json!({"text": "something", "label": label}).to_string();
    }
    std::fs::write(path, lines.join("\n") + "\n").unwrap();
    lines.len()
}

fn labelmill(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_labelmill"))
        .args(args)
        .env("LABELMILL_LOG", "warn")
        .output()
        .unwrap()
}

#[test]
fn tune_learns_a_task_and_eval_serves_the_adapter_it_wrote_into_the_task_file() {
    let dir = tempfile::tempdir().unwrap();
    let tasks = dir.path().join("tasks.toml");
    std::fs::write(&tasks, format!("# keep this comment\n{TASKS}")).unwrap();
    let data = dir.path().join("data.jsonl");
    let n = write_data(&data, &[]);
    let m = model();
    let s = |p: &Path| p.to_str().unwrap().to_string();
    let (m, t, d) = (s(&m), s(&tasks), s(&data));
    let before = labelmill(&["eval", "--model", &m, "--tasks", &t, "--data", &d, "--json"]);
    assert!(
        before.status.success(),
        "{}",
        String::from_utf8_lossy(&before.stderr)
    );
    let acc = |o: &std::process::Output| -> f64 {
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        v["tasks"]["ticket"]["accuracy"].as_f64().unwrap()
    };
    let out = labelmill(&[
        "tune",
        "--model",
        &m,
        "--tasks",
        &t,
        "--data",
        &d,
        "--epochs",
        "8",
        "--lr",
        "0.02",
        "--batch-size",
        "8",
        "--rank",
        "4",
        "--targets",
        "attn_q,attn_v,ffn_up",
        "--holdout",
        "0.2",
        "--json",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    eprintln!("{stderr}");
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let epochs = r["epochs"].as_array().unwrap();
    assert_eq!(epochs.len(), 9, "the base model's line and eight epochs");
    assert_eq!(
        r["train_examples"].as_u64().unwrap() + r["heldout_examples"].as_u64().unwrap(),
        n as u64
    );
    let first = epochs[1]["train_loss"].as_f64().unwrap();
    let last = epochs[8]["train_loss"].as_f64().unwrap();
    assert!(last < 0.5 * first, "training loss {first} -> {last}");
    for e in &epochs[..] {
        assert!(stderr.contains(&format!(
            "held-out accuracy {:.4}",
            e["heldout_accuracy"].as_f64().unwrap()
        )));
    }
    // The task file now names the adapter, relative to itself, and kept its comment.
    let text = std::fs::read_to_string(&tasks).unwrap();
    assert!(
        text.contains("adapter = \"ticket.lora.gguf\"") && text.contains("# keep this comment"),
        "{text}"
    );
    assert!(dir.path().join("ticket.lora.gguf").exists());
    let after = labelmill(&["eval", "--model", &m, "--tasks", &t, "--data", &d, "--json"]);
    assert!(
        after.status.success(),
        "{}",
        String::from_utf8_lossy(&after.stderr)
    );
    eprintln!(
        "served accuracy on the data: {} before, {} after",
        acc(&before),
        acc(&after)
    );
    assert!(
        acc(&after) >= 0.9,
        "served accuracy after tune {}",
        acc(&after)
    );
    assert!(
        acc(&after) > acc(&before) + 0.2,
        "{} -> {}",
        acc(&before),
        acc(&after)
    );
}

#[test]
fn labels_outside_the_task_are_refused_naming_every_line() {
    let dir = tempfile::tempdir().unwrap();
    let tasks = dir.path().join("tasks.toml");
    std::fs::write(&tasks, TASKS).unwrap();
    let data = dir.path().join("data.jsonl");
    write_data(&data, &[(2, "billing"), (5, "sales")]);
    let s = |p: &Path| p.to_str().unwrap().to_string();
    let out = labelmill(&[
        "tune",
        "--model",
        &s(&model()),
        "--tasks",
        &s(&tasks),
        "--data",
        &s(&data),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("2 line(s)"), "{stderr}");
    assert!(
        stderr.contains("line 2: label 'billing' is not one of task 'ticket''s labels"),
        "{stderr}"
    );
    assert!(stderr.contains("line 5: label 'sales'"), "{stderr}");
    assert!(!dir.path().join("ticket.lora.gguf").exists());
    assert_eq!(
        std::fs::read_to_string(&tasks).unwrap(),
        TASKS,
        "the task file is untouched"
    );
    let out = labelmill(&[
        "tune",
        "--model",
        &s(&model()),
        "--tasks",
        &s(&tasks),
        "--data",
        &s(&data),
        "--targets",
        "attn_x",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown target 'attn_x'"));
}
