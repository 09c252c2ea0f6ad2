//! Label-bias corrections on a trained model nobody here wrote (SmolLM2-135M-Instruct) and on
//! real text nobody here wrote (examples/debian-topics/: Debian package descriptions labelled
//! with their archive section, built by scripts/build-debian-topics.py):
//! - `calibration = "content-free"` measures the prompt's label distribution for "N/A", "" and
//!   "[MASK]" and divides it out; checked against the same distribution computed independently,
//!   with no prefix cache;
//! - `bias` adds per-label offsets; `labelmill eval --fit-bias` fits them and writes them;
//! - on the real data, zero-shot SmolLM2 puts most documents in one label, and both corrections
//!   lift accuracy far above it.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};

use candle_core::Device;
use common::real::smollm2;
use labelmill::engine::scoring::softmax;
use labelmill::engine::Engine;
use labelmill::task::{Calibration, TaskFile, TaskSpec, CONTENT_FREE};
use serde_json::Value;

fn debian() -> &'static Path {
    Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/debian-topics"
    ))
}

fn section_task() -> TaskSpec {
    TaskFile::load(&debian().join("tasks.toml"))
        .unwrap()
        .task
        .remove(0)
}

#[test]
fn content_free_calibration_divides_out_the_prompts_own_label_distribution() {
    let e = Engine::load(&smollm2(), None, &Device::Cpu).unwrap();
    let raw = e.prepare(&section_task()).unwrap();
    assert!(raw.content_free.is_none());
    let mut spec = section_task();
    spec.calibration = Calibration::ContentFree;
    let cf = e.prepare(&spec).unwrap();
    let measured = cf.content_free.clone().expect("measured when prepared");

    // The same distribution, computed here: each content-free document run with the whole prompt
    // in one pass (no prefix cache), its label probabilities averaged.
    let mut want = vec![0f64; raw.labels.len()];
    for text in CONTENT_FREE {
        let ids = if text.is_empty() {
            Vec::new()
        } else {
            raw.encode_doc(e.tokenizer(), text).unwrap().ids
        };
        let s = e.score_uncached(&raw, &ids).unwrap();
        for (w, p) in want.iter_mut().zip(softmax(&s.log_probs, 1.0)) {
            *w += f64::from(p) / CONTENT_FREE.len() as f64;
        }
    }
    eprintln!("content-free distribution {measured:?}, independently {want:?}");
    for (m, w) in measured.iter().zip(&want) {
        assert!((f64::from(*m) - w).abs() < 2e-3, "{measured:?} vs {want:?}");
    }
    // SmolLM2 under this prompt favours one label when there is nothing to read.
    let top = measured.iter().cloned().fold(0f32, f32::max);
    assert!(top > 0.4, "{measured:?}");

    // A document's calibrated probabilities are its raw ones divided by that distribution.
    let doc = cf
        .encode_doc(
            e.tokenizer(),
            "fast image viewer with thumbnails and slideshows",
        )
        .unwrap()
        .ids;
    let s_raw = e.score(&raw, &[&doc]).unwrap().remove(0);
    let s_cf = e.score(&cf, &[&doc]).unwrap().remove(0);
    assert_eq!(
        s_raw.log_probs, s_cf.log_probs,
        "log-probs stay the model's"
    );
    let divided: Vec<f64> = s_raw
        .probs
        .iter()
        .zip(&measured)
        .map(|(p, c)| f64::from(*p) / f64::from(*c))
        .collect();
    let total: f64 = divided.iter().sum();
    for (got, d) in s_cf.probs.iter().zip(&divided) {
        assert!((f64::from(*got) - d / total).abs() < 1e-5, "{s_cf:?}");
    }

    // A bias multiplies a label's probability by e^b before normalising.
    let mut spec = section_task();
    spec.bias.insert("games".into(), -1.0);
    spec.bias.insert("video".into(), 0.5);
    let biased = e.prepare(&spec).unwrap();
    let s_b = e.score(&biased, &[&doc]).unwrap().remove(0);
    let scaled: Vec<f64> = raw
        .labels
        .iter()
        .zip(&s_raw.probs)
        .map(|(l, p)| f64::from(*p) * f64::from(spec.bias.get(l).copied().unwrap_or(0.0)).exp())
        .collect();
    let total: f64 = scaled.iter().sum();
    for (got, d) in s_b.probs.iter().zip(&scaled) {
        assert!((f64::from(*got) - d / total).abs() < 1e-5, "{s_b:?}");
    }
}

fn eval(tasks: &Path, extra: &[&str]) -> Value {
    let out = Command::new(env!("CARGO_BIN_EXE_labelmill"))
        .arg("eval")
        .arg("--model")
        .arg(smollm2())
        .arg("--tasks")
        .arg(tasks)
        .arg("--data")
        .arg(debian().join("test.jsonl"))
        .arg("--json")
        .args(extra)
        .stderr(Stdio::inherit())
        .output()
        .unwrap();
    assert!(out.status.success());
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The figures of one correction in an eval report.
fn figures(report: &Value, name: &str) -> (f64, f64) {
    let c = report["tasks"]["section"]["corrections"]["corrections"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"].as_str().unwrap().starts_with(name))
        .unwrap_or_else(|| panic!("no correction '{name}' in {report}"));
    (
        c["accuracy"].as_f64().unwrap(),
        c["top_label_share"].as_f64().unwrap(),
    )
}

#[test]
fn on_real_text_both_corrections_undo_the_label_bias_and_fit_bias_writes_it() {
    let dir = tempfile::tempdir().unwrap();
    let tasks = dir.path().join("tasks.toml");
    std::fs::copy(debian().join("tasks.toml"), &tasks).unwrap();
    let r = eval(&tasks, &["--fit-bias"]);
    let none = figures(&r, "none");
    let cf = figures(&r, "content-free");
    let fitted = figures(&r, "fitted bias");
    eprintln!(
        "accuracy, top-label share: none {none:?}, content-free {cf:?}, fitted (5-fold) {fitted:?}"
    );
    // 8 balanced labels: uncorrected, one label takes most documents.
    assert!(none.1 > 0.5, "{none:?}");
    assert!(cf.0 > none.0 + 0.15 && cf.1 < 0.4, "{cf:?} vs {none:?}");
    assert!(
        fitted.0 > none.0 + 0.15 && fitted.1 < 0.4,
        "{fitted:?} vs {none:?}"
    );
    // The main column is the task as configured: no correction yet.
    let main = r["tasks"]["section"]["accuracy"].as_f64().unwrap();
    assert!((main - none.0).abs() < 1e-9, "{main} vs {none:?}");

    // --fit-bias wrote one bias per label; the task now scores with it.
    let spec = TaskFile::load(&tasks).unwrap().task.remove(0);
    assert_eq!(spec.bias.len(), 8, "{:?}", spec.bias);
    let written: Vec<f64> = r["tasks"]["section"]["corrections"]["fitted_bias"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b.as_f64().unwrap())
        .collect();
    for (label, w) in section_task().labels.iter().zip(&written) {
        assert!((f64::from(spec.bias[label.name()]) - w).abs() < 1e-3);
    }
    let again = eval(&tasks, &[]);
    let main = again["tasks"]["section"]["accuracy"].as_f64().unwrap();
    assert!(
        main > none.0 + 0.15,
        "with the written bias: {main} vs {none:?}"
    );
}
