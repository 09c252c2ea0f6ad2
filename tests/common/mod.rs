//! Shared test helpers: generated tiny models and a plain reference LLaMA.
#![allow(dead_code)]

pub mod kafka;
pub mod lora;
pub mod manifests;
pub mod proxy;
pub mod rabbit;
pub mod real;
pub mod reference;
pub mod spm_twin;
pub mod worker;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};

use candle_core::quantized::GgmlDType;
use labelmill::engine::{Engine, WeightFormat};
use labelmill::tiny::{self, TinyShape};

/// A small grouped-query-attention shape (8 query heads over 2 kv heads).
pub fn gqa_shape() -> TinyShape {
    TinyShape {
        layers: 2,
        dim: 128,
        heads: 8,
        kv_heads: 2,
        vocab: 512,
        ffn: 256,
        context: 1024,
    }
}

/// The same width with plain multi-head attention.
pub fn mha_shape() -> TinyShape {
    TinyShape {
        layers: 2,
        dim: 128,
        heads: 4,
        kv_heads: 4,
        vocab: 512,
        ffn: 256,
        context: 1024,
    }
}

fn root() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| tempfile::tempdir().expect("temp dir"))
        .path()
}

/// Writes (once per test binary) a tiny model and returns its directory.
pub fn model_dir(shape: &TinyShape, quant: GgmlDType, seed: u64) -> PathBuf {
    static LOCK: Mutex<()> = Mutex::new(());
    let _g = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let dir = root().join(format!(
        "{}l{}d{}h{}kv{}v{}f-{:?}-{seed}",
        shape.layers, shape.dim, shape.heads, shape.kv_heads, shape.vocab, shape.ffn, quant
    ));
    if !dir.join("model.gguf").exists() {
        tiny::write(&dir, shape, quant, seed).expect("write tiny model");
    }
    dir
}

/// Loads a generated model through the production loader.
pub fn engine(shape: &TinyShape, quant: GgmlDType, seed: u64) -> (Engine, PathBuf) {
    engine_with(shape, quant, seed, WeightFormat::Quantized)
}

/// Loads a generated model with its projection weights held as `weights` says.
pub fn engine_with(
    shape: &TinyShape,
    quant: GgmlDType,
    seed: u64,
    weights: WeightFormat,
) -> (Engine, PathBuf) {
    let dir = model_dir(shape, quant, seed);
    let e = Engine::load_with(
        &dir.join("model.gguf"),
        None,
        &candle_core::Device::Cpu,
        weights,
    )
    .expect("load engine");
    (e, dir)
}

/// Documents of very different lengths (1 to ~300 tokens): the engine's own check documents.
#[allow(unused_imports)]
pub use labelmill::engine::equivalence::varied_docs;

/// ‖a − b‖ / ‖b‖.
pub fn rel_err(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    let num: f64 = a.iter().zip(b).map(|(x, y)| ((x - y) as f64).powi(2)).sum();
    let den: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum();
    (num / den).sqrt() as f32
}

/// Largest |a − b|.
pub fn max_abs(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// `labelmill classify` on the generated model in `dir` with the task file `tasks`.
pub fn classify_command(dir: &Path, tasks: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_labelmill"));
    cmd.arg("classify")
        .arg("--model")
        .arg(dir.join("model.gguf"))
        .arg("--tasks")
        .arg(tasks);
    cmd
}

/// Writes the GGUF at `src` to `out` with every tensor passed through `map` (name, tensor as
/// stored), metadata unchanged.
pub fn rewrite_gguf(
    src: &Path,
    out: &Path,
    map: impl Fn(&str, candle_core::quantized::QTensor) -> candle_core::quantized::QTensor,
) {
    use candle_core::quantized::gguf_file::{self, Content, Value};
    use candle_core::quantized::QTensor;
    let dev = candle_core::Device::Cpu;
    let mut f = std::fs::File::open(src).unwrap();
    let c = Content::read(&mut f).unwrap();
    let mut names: Vec<&String> = c.tensor_infos.keys().collect();
    names.sort();
    let tensors: Vec<(String, QTensor)> = names
        .into_iter()
        .map(|n| (n.clone(), map(n, c.tensor(&mut f, n, &dev).unwrap())))
        .collect();
    let md: Vec<(&str, &Value)> = c.metadata.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let ts: Vec<(&str, &QTensor)> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
    let mut w = std::io::BufWriter::new(std::fs::File::create(out).unwrap());
    gguf_file::write(&mut w, &md, &ts).unwrap();
}
