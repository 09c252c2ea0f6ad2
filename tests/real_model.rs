//! A trained model nobody here wrote (SmolLM2-135M-Instruct, Q4_1, gpt2 BPE, ChatML) and a
//! gguf-py-written model with LLaMA 2's SentencePiece vocabulary, loaded with no tokenizer.json,
//! end to end against llama.cpp: the prompt's token ids (template rendered, document plain, BOS as
//! the file says), the labels' ids, and the label probabilities (fixtures recorded with
//! llama-cpp-python by scripts/llamacpp-fixtures.py). And the engine's own equivalences on them.

mod common;

use std::collections::HashMap;

use candle_core::Device;
use common::real::{fixture, ids, smollm2, smollm2_f32, vocab};
use common::spm_twin::{self, TwinShape};
use labelmill::engine::equivalence;
use labelmill::engine::prepared::PreparedTask;
use labelmill::engine::Engine;
use labelmill::task::TaskFile;

/// A top label counts as clear when llama.cpp's two most probable labels are this far apart: above
/// the largest |Δp| of any label seen between two faithful runs of the Q4_1 file (7.7e-2, labelmill
/// against the fixture), so 8-bit rounding noise alone cannot swap them.
const DECIDED: f64 = 0.1;

/// How labelmill's label probabilities compare with llama.cpp's over a fixture.
#[derive(Debug, Default)]
struct Agreement {
    prompts: usize,
    top_label_same: usize,
    /// Prompts where llama.cpp's two most probable labels are at least [`DECIDED`] apart.
    decided: usize,
    /// ... and of those, where labelmill's top label is llama.cpp's.
    decided_same: usize,
    kl_mean: f64,
    kl_max: f64,
    max_abs_p: f64,
}

/// Prepares the fixture's tasks on `e`, checks every prompt's and label's token ids against
/// llama.cpp's, and compares the label probabilities.
fn against_llamacpp(
    e: &Engine,
    fx: &serde_json::Value,
) -> (Agreement, HashMap<String, PreparedTask>) {
    against_llamacpp_with(e, fx, None)
}

/// [`against_llamacpp`] with every task running the LoRA adapter at `adapter`.
fn against_llamacpp_with(
    e: &Engine,
    fx: &serde_json::Value,
    adapter: Option<&std::path::Path>,
) -> (Agreement, HashMap<String, PreparedTask>) {
    let mut specs = TaskFile::parse(fx["tasks"].as_str().unwrap(), "fixture").unwrap();
    for s in &mut specs.task {
        s.adapter = adapter.map(|p| p.to_path_buf());
    }
    let tasks: HashMap<String, PreparedTask> = specs
        .task
        .iter()
        .map(|s| (s.name.clone(), e.prepare(s).unwrap()))
        .collect();
    let mut a = Agreement::default();
    let mut kl_sum = 0.0;
    for case in fx["cases"].as_array().unwrap() {
        let t = &tasks[case["task"].as_str().unwrap()];
        let text = case["doc"].as_str().unwrap();
        let doc = t.encode_doc(e.tokenizer(), text).unwrap().ids;
        let prompt = [t.prefix_ids.as_slice(), &doc, &t.suffix_ids].concat();
        assert_eq!(
            prompt,
            ids(&case["prompt_ids"]),
            "task {}, document {text:?}: prompt token ids differ from llama.cpp's",
            t.name
        );
        let labels = case["labels"].as_array().unwrap();
        let want_lp: Vec<f64> = labels
            .iter()
            .map(|l| l["log_prob"].as_f64().unwrap())
            .collect();
        for (i, l) in labels.iter().enumerate() {
            assert_eq!(t.labels[i], l["name"].as_str().unwrap());
            assert_eq!(
                t.label_ids[i],
                ids(&l["ids"]),
                "task {} label {}",
                t.name,
                t.labels[i]
            );
        }
        let got = e.score(t, &[&doc]).unwrap().remove(0);
        let want = softmax(&want_lp);
        let kl: f64 = want
            .iter()
            .zip(&got.probs)
            .map(|(p, q)| {
                if *p > 0.0 {
                    p * (p / (*q as f64).max(1e-30)).ln()
                } else {
                    0.0
                }
            })
            .sum();
        let best_want = (0..want.len())
            .max_by(|&i, &j| want[i].total_cmp(&want[j]))
            .unwrap();
        let same = best_want == got.best();
        a.top_label_same += usize::from(same);
        let mut sorted = want.clone();
        sorted.sort_by(|x, y| y.total_cmp(x));
        if sorted[0] - sorted[1] >= DECIDED {
            a.decided += 1;
            a.decided_same += usize::from(same);
        }
        a.kl_max = a.kl_max.max(kl);
        kl_sum += kl;
        for (p, q) in want.iter().zip(&got.probs) {
            a.max_abs_p = a.max_abs_p.max((p - *q as f64).abs());
        }
        a.prompts += 1;
    }
    a.kl_mean = kl_sum / a.prompts as f64;
    (a, tasks)
}

fn softmax(lp: &[f64]) -> Vec<f64> {
    let m = lp.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let e: Vec<f64> = lp.iter().map(|x| (x - m).exp()).collect();
    let s: f64 = e.iter().sum();
    e.iter().map(|x| x / s).collect()
}

fn report(name: &str, a: &Agreement) {
    eprintln!(
        "{name} vs llama.cpp: {} prompts, top label same on {} ({} of {} where llama.cpp's top two \
         labels are {DECIDED} apart), label KL mean {:.2e} max {:.2e}, max |Δp| {:.2e}",
        a.prompts, a.top_label_same, a.decided_same, a.decided, a.kl_mean, a.kl_max, a.max_abs_p
    );
    assert!(a.prompts >= 30, "{name}: {a:?}");
}

/// Exact arithmetic on both sides (no 8-bit activations): the same numbers up to float rounding.
fn assert_same_numbers(name: &str, a: &Agreement) {
    report(name, a);
    assert_eq!(
        a.top_label_same, a.prompts,
        "{name}: top label differs: {a:?}"
    );
    assert!(
        a.kl_mean <= 1e-6 && a.kl_max <= 1e-5 && a.max_abs_p <= 1e-3,
        "{name}: {a:?}"
    );
}

/// Engine equivalences on a real model: a batch scores as its documents alone, and the cached
/// prefix scores as the whole prompt run at once.
fn assert_equivalences(name: &str, e: &Engine, t: &PreparedTask, texts: &[&str]) {
    let docs: Vec<Vec<u32>> = texts
        .iter()
        .map(|s| t.encode_doc(e.tokenizer(), s).unwrap().ids)
        .collect();
    let batch = equivalence::batch_vs_alone(e, t, &docs).unwrap();
    let cached = equivalence::cached_vs_uncached(e, t, &docs).unwrap();
    eprintln!(
        "{name} task {}: batch vs alone max |Δp| {:.2e}; cached vs whole max |Δp| {:.2e}, |Δ log p| {:.2e}",
        t.name, batch.probs, cached.probs, cached.log_probs
    );
    assert!(
        batch.probs <= 1e-4 && batch.best_label_changes == 0,
        "{name}: {batch:?}"
    );
    assert!(
        cached.probs <= 1e-3 && cached.best_label_changes == 0,
        "{name}: {cached:?}"
    );
}

fn docs_of(fx: &serde_json::Value) -> Vec<String> {
    let mut seen = Vec::new();
    for c in fx["cases"].as_array().unwrap() {
        let d = c["doc"].as_str().unwrap().to_string();
        if !seen.contains(&d) {
            seen.push(d);
        }
    }
    seen
}

/// The real model with its weights dequantised to F32 on both sides: every prompt's tokens, every
/// label's tokens and the label probabilities are llama.cpp's.
#[test]
fn smollm2_f32_scores_as_llamacpp_does() {
    let e = Engine::load(&smollm2_f32(), None, &Device::Cpu).unwrap();
    let (a, _) = against_llamacpp(&e, &fixture("labels-smollm2-f32.json"));
    assert_same_numbers("SmolLM2-135M-Instruct dequantised to F32", &a);
}

/// The same F32 model with a LoRA adapter (rank 4, alpha 8, on attn_q, attn_v, ffn_gate and
/// ffn_down of every block) in llama.cpp's GGUF adapter format, applied by llama.cpp
/// (llama-cpp-python `lora_path`) and by labelmill: the same numbers (the adapter moves llama.cpp's
/// label distributions from the base model's by a KL of 4.0e-2 on average, so an adapter ignored
/// or misapplied fails here). Batch == alone and cached == whole prompt with the adapter too.
#[test]
fn smollm2_f32_with_a_lora_adapter_scores_as_llamacpp_does() {
    let fx = fixture("labels-smollm2-lora.json");
    let dir = tempfile::tempdir().unwrap();
    let adapter = dir.path().join("smollm2-lora.gguf");
    let sha = common::lora::write_smollm2_adapter(&adapter, &fx);
    assert_eq!(
        sha,
        fx["lora_weights_sha256"].as_str().unwrap(),
        "the adapter written here is not the one llama.cpp ran"
    );
    let e = Engine::load(&smollm2_f32(), None, &Device::Cpu).unwrap();
    let (a, tasks) = against_llamacpp_with(&e, &fx, Some(&adapter));
    assert_same_numbers("SmolLM2 F32 + LoRA", &a);
    let texts: Vec<String> = docs_of(&fx);
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    for t in tasks.values() {
        assert_equivalences("SmolLM2 F32 + LoRA", &e, t, &refs);
    }
}

/// The file as shipped (Q4_1 projections, Q8_0 embeddings): the tokens are llama.cpp's exactly;
/// the probabilities agree within the noise 8-bit activation rounding gives any implementation.
/// llama.cpp's own Q4_1 run is that far from the exact (F32) arithmetic (label KL mean 1.5e-3,
/// max 3.0e-2, two top labels of 90 different) and from the same llama.cpp built for another CPU
/// (1.6e-3, 2.0e-2, two of 90; BENCHMARKS.md, "Against llama.cpp on a real model"), so the limits
/// here are set at that floor, not below it.
#[test]
fn smollm2_q4_1_scores_within_llamacpps_own_quantisation_noise() {
    let e = Engine::load(&smollm2(), None, &Device::Cpu).unwrap();
    let fx = fixture("labels-smollm2.json");
    let (a, tasks) = against_llamacpp(&e, &fx);
    report("SmolLM2-135M-Instruct Q4_1", &a);
    assert_eq!(
        a.decided_same, a.decided,
        "a clear llama.cpp label differs: {a:?}"
    );
    assert!(a.top_label_same * 100 >= a.prompts * 95, "{a:?}");
    assert!(a.kl_mean <= 3e-3 && a.kl_max <= 5e-2, "{a:?}");
    let docs = docs_of(&fx);
    let texts: Vec<&str> = docs.iter().take(12).map(String::as_str).collect();
    for name in ["topic", "ticket", "sentiment"] {
        assert_equivalences("SmolLM2", &e, &tasks[name], &texts);
    }
}

#[test]
fn llama2_vocabulary_twin_scores_as_llamacpp_does() {
    let fx = fixture("labels-llama2-twin.json");
    let shape = TwinShape::from_fixture(&fx["twin"]);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("twin.gguf");
    let sha = spm_twin::write(
        &shape,
        &vocab("llama-spm"),
        fx["chat_template"].as_str().unwrap(),
        &path,
    );
    assert_eq!(
        sha,
        fx["weights_sha256"].as_str().unwrap(),
        "the twin's weights are not the ones llama.cpp ran"
    );
    let e = Engine::load(&path, None, &Device::Cpu).unwrap();
    let (a, tasks) = against_llamacpp(&e, &fx);
    assert_same_numbers("LLaMA 2 vocabulary twin (F32)", &a);
    let docs = docs_of(&fx);
    let texts: Vec<&str> = docs.iter().take(8).map(String::as_str).collect();
    assert_equivalences("twin", &e, &tasks["llama2-template"], &texts);
}
