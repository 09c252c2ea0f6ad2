//! LoRA adapters (llama.cpp's GGUF format) on a generated F32 model: applied unmerged they score
//! as the same adapter merged into the weights (`W + scale · alpha / rank · B·A`, written as a new
//! model file); batch == alone and cached == whole prompt with an adapter; the prefix cache never
//! serves one adapter's KV to another task (or to none), and does share it between two copies of
//! one adapter at one scale; adapters that do not fit the model are refused, naming the tensor.

mod common;

use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::Value;
use candle_core::quantized::GgmlDType;
use candle_core::{Device, Tensor};
use common::lora::{random_pairs, write_adapter, write_merged, Pairs};
use common::{gqa_shape, model_dir, varied_docs};
use labelmill::engine::equivalence::{batch_vs_alone, cached_vs_uncached, Gaps};
use labelmill::engine::Engine;
use labelmill::task::{TaskError, TaskFile, TaskSpec};

const RANK: usize = 4;
const ALPHA: f32 = 8.0;

fn task(adapter: Option<&Path>, scale: f32) -> TaskSpec {
    let mut t = TaskFile::parse(labelmill::engine::equivalence::CHECK_TASKS, "test")
        .unwrap()
        .task
        .remove(0);
    t.adapter = adapter.map(Path::to_path_buf);
    t.adapter_scale = scale;
    t
}

struct Setup {
    _dir: tempfile::TempDir,
    base: PathBuf,
    adapter: PathBuf,
    pairs: Pairs,
    dir: PathBuf,
}

fn setup() -> Setup {
    let model = model_dir(&gqa_shape(), GgmlDType::F32, 5).join("model.gguf");
    let dir = tempfile::tempdir().unwrap();
    let pairs = random_pairs(&model, RANK, 1, 0.15);
    let adapter = dir.path().join("adapter.gguf");
    write_adapter(&adapter, &pairs, ALPHA, &[]);
    Setup {
        base: model,
        adapter,
        pairs,
        dir: dir.path().to_path_buf(),
        _dir: dir,
    }
}

fn docs(e: &Engine, t: &labelmill::engine::prepared::PreparedTask) -> Vec<Vec<u32>> {
    varied_docs()
        .iter()
        .step_by(2)
        .map(|s| t.encode_doc(e.tokenizer(), s).unwrap().ids)
        .collect()
}

#[test]
fn an_unmerged_adapter_scores_as_the_same_adapter_merged_into_the_weights() {
    let s = setup();
    let scale = 0.75;
    let merged = s.dir.join("merged.gguf");
    write_merged(&s.base, &merged, &s.pairs, ALPHA, scale);
    let e = Engine::load(&s.base, None, &Device::Cpu).unwrap();
    let m = Engine::load(&merged, None, &Device::Cpu).unwrap();
    let with = e.prepare(&task(Some(&s.adapter), scale)).unwrap();
    let plain = e.prepare(&task(None, 1.0)).unwrap();
    let on_merged = m.prepare(&task(None, 1.0)).unwrap();
    let d = docs(&e, &with);
    let refs: Vec<&[u32]> = d.iter().map(Vec::as_slice).collect();
    let a = e.score(&with, &refs).unwrap();
    let b = m.score(&on_merged, &refs).unwrap();
    let base = e.score(&plain, &refs).unwrap();
    let (mut gap, mut moved) = (Gaps::default(), Gaps::default());
    for i in 0..d.len() {
        gap.add(&a[i], &b[i]);
        moved.add(&a[i], &base[i]);
    }
    eprintln!("unmerged vs merged: {gap:?}\nadapter vs base model: {moved:?}");
    assert!(gap.probs < 1e-4 && gap.log_probs_rel < 1e-4, "{gap:?}");
    // The adapter matters: the label log-probabilities move far beyond that gap.
    assert!(moved.log_probs > 0.1, "{moved:?}");
}

#[test]
fn with_an_adapter_a_batch_scores_as_alone_and_the_cached_prefix_as_the_whole_prompt() {
    let s = setup();
    let e = Engine::load(&s.base, None, &Device::Cpu).unwrap();
    let t = e.prepare(&task(Some(&s.adapter), 1.0)).unwrap();
    let d = docs(&e, &t);
    let batch = batch_vs_alone(&e, &t, &d).unwrap();
    let cached = cached_vs_uncached(&e, &t, &d).unwrap();
    eprintln!("batch vs alone {batch:?}\ncached vs whole {cached:?}");
    assert!(
        batch.probs < 1e-4 && batch.best_label_changes == 0,
        "{batch:?}"
    );
    assert!(
        cached.probs < 1e-4 && cached.best_label_changes == 0,
        "{cached:?}"
    );
}

#[test]
fn the_prefix_cache_is_keyed_by_the_adapters_content_and_scale() {
    let s = setup();
    let e = Engine::load(&s.base, None, &Device::Cpu).unwrap();
    let copy = s.dir.join("copy-of-adapter.gguf");
    std::fs::copy(&s.adapter, &copy).unwrap();
    let plain = e.prepare(&task(None, 1.0)).unwrap();
    let with = e.prepare(&task(Some(&s.adapter), 1.0)).unwrap();
    let with_copy = e.prepare(&task(Some(&copy), 1.0)).unwrap();
    let half = e.prepare(&task(Some(&s.adapter), 0.5)).unwrap();
    assert_eq!(plain.prefix_ids, with.prefix_ids, "the same prompt");
    let doc = plain
        .encode_doc(e.tokenizer(), "my card was charged twice")
        .unwrap()
        .ids;
    let score = |t| e.score(t, &[&doc]).unwrap().remove(0);
    // Each task alone, on a fresh cache: what it scores without any other task's entries.
    let fresh = |spec: TaskSpec| {
        let f = Engine::load(&s.base, None, &Device::Cpu).unwrap();
        let t = f.prepare(&spec).unwrap();
        f.score(&t, &[&doc]).unwrap().remove(0)
    };
    let p = score(&plain);
    let w = score(&with);
    assert_eq!(
        e.prefix_cache_stats().misses,
        2,
        "two prefixes: without and with the adapter"
    );
    let wc = score(&with_copy);
    let st = e.prefix_cache_stats();
    assert_eq!(
        (st.misses, st.hits, st.entries),
        (2, 1, 2),
        "the copy shares: {st:?}"
    );
    let h = score(&half);
    assert_eq!(
        e.prefix_cache_stats().misses,
        3,
        "another scale is another prefix"
    );
    assert_eq!(w, wc);
    assert_eq!(w, fresh(task(Some(&s.adapter), 1.0)));
    assert_eq!(p, fresh(task(None, 1.0)));
    assert_eq!(h, fresh(task(Some(&s.adapter), 0.5)));
    assert_ne!(p.log_probs, w.log_probs);
    assert_ne!(w.log_probs, h.log_probs);
}

/// The reason `prepare` gives for an adapter it refuses.
fn refused(e: &Engine, adapter: &Path) -> String {
    match e.prepare(&task(Some(adapter), 1.0)) {
        Err(err @ TaskError::Adapter { .. }) => err.to_string(),
        Err(other) => panic!("refused for another reason: {other}"),
        Ok(_) => panic!("{} was accepted", adapter.display()),
    }
}

#[test]
fn adapters_that_do_not_fit_are_refused_naming_the_tensor() {
    let s = setup();
    let e = Engine::load(&s.base, None, &Device::Cpu).unwrap();
    let write = |name: &str, pairs: &Pairs, extra: &[(&str, Value)]| {
        let p = s.dir.join(name);
        write_adapter(&p, pairs, ALPHA, extra);
        p
    };
    // From another base model: a wider model's pairs.
    let mut shape = gqa_shape();
    shape.dim *= 2;
    let other = model_dir(&shape, GgmlDType::F32, 5).join("model.gguf");
    let msg = refused(
        &e,
        &write("other.gguf", &random_pairs(&other, RANK, 1, 0.1), &[]),
    );
    assert!(
        msg.contains("another base model") && msg.contains(".lora_a"),
        "{msg}"
    );
    // A block the model does not have.
    let mut deep = Pairs::new();
    let (a, b) = s.pairs["blk.0.attn_q.weight"].clone();
    deep.insert("blk.9.attn_q.weight".into(), (a.clone(), b.clone()));
    let msg = refused(&e, &write("deep.gguf", &deep, &[]));
    assert!(
        msg.contains("blk.9.attn_q.weight.lora_a") && msg.contains("2 blocks"),
        "{msg}"
    );
    // Ranks that disagree.
    let mut ranks = Pairs::new();
    let b3 = b.narrow(1, 0, RANK - 1).unwrap();
    ranks.insert("blk.0.attn_q.weight".into(), (a.clone(), b3));
    let msg = refused(&e, &write("ranks.gguf", &ranks, &[]));
    assert!(
        msg.contains("rank mismatch") && msg.contains("blk.0.attn_q.weight"),
        "{msg}"
    );
    // A tensor labelmill does not apply (the embedding).
    let mut embd = s.pairs.clone();
    let z = Tensor::zeros((RANK, 8), candle_core::DType::F32, &Device::Cpu).unwrap();
    embd.insert("token_embd.weight".into(), (z.clone(), z));
    let msg = refused(&e, &write("embd.gguf", &embd, &[]));
    assert!(msg.contains("token_embd.weight.lora_a"), "{msg}");
    // Another architecture; not an adapter at all; a corrupt (truncated) file.
    let arch = [("general.architecture", Value::String("gpt2".into()))];
    let msg = refused(&e, &write("gpt2.gguf", &s.pairs, &arch));
    assert!(msg.contains("'gpt2'"), "{msg}");
    let msg = refused(&e, &s.base);
    assert!(msg.contains("not a LoRA adapter"), "{msg}");
    let bytes = std::fs::read(&s.adapter).unwrap();
    let cut = s.dir.join("cut.gguf");
    std::fs::write(&cut, &bytes[..bytes.len() * 2 / 3]).unwrap();
    let msg = refused(&e, &cut);
    assert!(msg.contains("truncated"), "{msg}");
}

/// `labelmill classify` with a task naming a refused adapter exits with code 2 and says why.
#[test]
fn the_cli_refuses_a_bad_adapter_with_exit_code_2() {
    let s = setup();
    let mut shape = gqa_shape();
    shape.dim *= 2;
    let other = model_dir(&shape, GgmlDType::F32, 5).join("model.gguf");
    write_adapter(
        &s.dir.join("other.gguf"),
        &random_pairs(&other, RANK, 1, 0.1),
        ALPHA,
        &[],
    );
    let tasks = s.dir.join("tasks.toml");
    let mut t = TaskFile::parse(labelmill::engine::equivalence::CHECK_TASKS, "x").unwrap();
    t.task.truncate(1);
    t.task[0].adapter = Some("other.gguf".into());
    std::fs::write(&tasks, toml::to_string(&t).unwrap()).unwrap();
    let out = common::classify_command(s.base.parent().unwrap(), &tasks)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("other.gguf") && err.contains(".lora_a"),
        "{err}"
    );
}

/// PEFT's own files (adapter_config.json + adapter_model.safetensors, Hugging Face names and row
/// order) read directly score as the same adapter in llama.cpp's GGUF layout.
#[test]
fn a_peft_adapter_directory_scores_as_its_gguf_conversion() {
    let s = setup();
    let e = Engine::load(&s.base, None, &Device::Cpu).unwrap();
    let heads = (gqa_shape().heads, gqa_shape().kv_heads);
    let peft = s.dir.join("peft");
    common::lora::write_peft(&peft, &s.pairs, ALPHA, heads, true);
    let gguf = e.prepare(&task(Some(&s.adapter), 1.0)).unwrap();
    let from_peft = e.prepare(&task(Some(&peft), 1.0)).unwrap();
    let d = docs(&e, &gguf);
    let refs: Vec<&[u32]> = d.iter().map(Vec::as_slice).collect();
    let (a, b) = (
        e.score(&gguf, &refs).unwrap(),
        e.score(&from_peft, &refs).unwrap(),
    );
    let mut gap = Gaps::default();
    for (x, y) in a.iter().zip(&b) {
        gap.add(x, y);
    }
    assert!(gap.probs < 1e-6 && gap.log_probs < 1e-4, "{gap:?}");
    // Without Hugging Face's row order the query and key projections come out wrong.
    let unpermuted = s.dir.join("peft-gguf-rows");
    common::lora::write_peft(&unpermuted, &s.pairs, ALPHA, heads, false);
    let wrong = e.prepare(&task(Some(&unpermuted), 1.0)).unwrap();
    let c = e.score(&wrong, &refs).unwrap();
    let mut off = Gaps::default();
    for (x, y) in a.iter().zip(&c) {
        off.add(x, y);
    }
    assert!(off.log_probs > 1e-2, "{off:?}");
    // A tensor it cannot apply is named.
    let bad = s.dir.join("peft-head");
    common::lora::write_peft(&bad, &s.pairs, ALPHA, heads, true);
    let mut t = candle_core::safetensors::load(bad.join("adapter_model.safetensors"), &Device::Cpu)
        .unwrap();
    t.insert(
        "base_model.model.lm_head.lora_A.weight".into(),
        Tensor::zeros((RANK, 8), candle_core::DType::F32, &Device::Cpu).unwrap(),
    );
    candle_core::safetensors::save(&t, bad.join("adapter_model.safetensors")).unwrap();
    let msg = refused(&e, &bad);
    assert!(msg.contains("lm_head.lora_A.weight"), "{msg}");
}
