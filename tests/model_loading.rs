//! Loading GGUF files: every quantisation candle runs, and clear errors for bad files.

mod common;

use std::fs;

use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use common::{gqa_shape, model_dir};
use labelmill::engine::load::LoadError;
use labelmill::engine::Engine;
use labelmill::task::TaskFile;
use labelmill::tiny::TinyShape;

fn load(dir: &std::path::Path) -> Result<Engine, LoadError> {
    Engine::load(
        &dir.join("model.gguf"),
        Some(&dir.join("tokenizer.json")),
        &Device::Cpu,
    )
}

/// K-quants pack 256 values per block, so this shape is a multiple of 256.
fn k_shape() -> TinyShape {
    TinyShape {
        layers: 1,
        dim: 256,
        heads: 4,
        kv_heads: 2,
        vocab: 512,
        ffn: 512,
        context: 1024,
    }
}

#[test]
fn every_quantisation_loads_reads_hparams_and_scores() {
    let task = TaskFile::parse(
        "[[task]]\nname='t'\ntemplate='Text: {{text}}\\nLabel:'\nlabels=['yes','no']",
        "t",
    )
    .unwrap()
    .task
    .remove(0);
    use GgmlDType::*;
    for q in [
        F32, F16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2K, Q3K, Q4K, Q5K, Q6K,
    ] {
        let shape = k_shape();
        let e = load(&model_dir(&shape, q, 1)).unwrap_or_else(|err| panic!("{q:?}: {err}"));
        let info = e.info();
        let hp = &info.hparams;
        assert_eq!(
            (
                hp.dim,
                hp.n_layers,
                hp.n_heads,
                hp.n_kv_heads,
                hp.ffn_dim,
                hp.vocab_size,
                hp.context_length
            ),
            (
                shape.dim,
                shape.layers,
                shape.heads,
                shape.kv_heads,
                shape.ffn,
                shape.vocab,
                shape.context
            ),
            "{q:?}"
        );
        assert_eq!(
            (hp.rope_freq_base, hp.rms_eps as f32, hp.bos_token_id),
            (10_000.0, 1e-5, 1)
        );
        assert_eq!(info.quant, format!("{q:?}"));
        let t = e.prepare(&task).unwrap();
        let d = t.encode_doc(e.tokenizer(), "hello there").unwrap().ids;
        let s = e.score(&t, &[&d]).unwrap().remove(0);
        let total: f32 = s.probs.iter().sum();
        assert!(
            (total - 1.0).abs() < 1e-5 && s.probs.iter().all(|p| p.is_finite()),
            "{q:?}: {s:?}"
        );
    }
}

#[test]
fn missing_file() {
    let err = Engine::load(
        "/no/such/model.gguf".as_ref(),
        Some("/no/tok.json".as_ref()),
        &Device::Cpu,
    )
    .err()
    .unwrap();
    assert!(matches!(err, LoadError::NotFound(_)), "{err}");
    assert!(err
        .to_string()
        .contains("/no/such/model.gguf does not exist"));
}

#[test]
fn truncated_file() {
    let src = model_dir(&gqa_shape(), GgmlDType::Q8_0, 2);
    let dir = tempfile::tempdir().unwrap();
    let bytes = fs::read(src.join("model.gguf")).unwrap();
    fs::copy(
        src.join("tokenizer.json"),
        dir.path().join("tokenizer.json"),
    )
    .unwrap();
    for cut in [bytes.len() - 1000, bytes.len() / 2, 100, 3] {
        fs::write(dir.path().join("model.gguf"), &bytes[..cut]).unwrap();
        let err = load(dir.path()).err().unwrap();
        assert!(
            matches!(err, LoadError::Corrupt { .. }),
            "cut at {cut}: {err}"
        );
        assert!(
            err.to_string()
                .contains("not a valid GGUF file (truncated or corrupt)"),
            "{err}"
        );
    }
}

#[test]
fn not_a_gguf_file() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("model.gguf"), b"<html>404 not found</html>").unwrap();
    let err = load(dir.path()).err().unwrap();
    assert!(matches!(err, LoadError::Corrupt { .. }), "{err}");
}

#[test]
fn non_llama_architecture() {
    let dir = tempfile::tempdir().unwrap();
    let t = QTensor::quantize(
        &Tensor::zeros((8, 32), candle_core::DType::F32, &Device::Cpu).unwrap(),
        GgmlDType::F32,
    )
    .unwrap();
    let arch = Value::String("falcon".into());
    let mut f = fs::File::create(dir.path().join("model.gguf")).unwrap();
    gguf_file::write(
        &mut f,
        &[("general.architecture", &arch)],
        &[("token_embd.weight", &t)],
    )
    .unwrap();
    let err = load(dir.path()).err().unwrap();
    assert!(
        matches!(err, LoadError::Architecture { ref arch, .. } if arch == "falcon"),
        "{err}"
    );
    assert!(err.to_string().contains("is a 'falcon' model"), "{err}");
}

#[test]
fn tokenizer_of_another_vocabulary() {
    let src = model_dir(&gqa_shape(), GgmlDType::Q8_0, 2);
    let dir = tempfile::tempdir().unwrap();
    fs::copy(src.join("model.gguf"), dir.path().join("model.gguf")).unwrap();
    fs::write(
        dir.path().join("tokenizer.json"),
        labelmill::tiny::tokenizer::train(700).unwrap(),
    )
    .unwrap();
    let err = load(dir.path()).err().unwrap();
    assert!(
        matches!(
            err,
            LoadError::VocabMismatch {
                tokenizer: 700,
                model: 512,
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn broken_tokenizer_json() {
    let src = model_dir(&gqa_shape(), GgmlDType::Q8_0, 2);
    let dir = tempfile::tempdir().unwrap();
    fs::copy(src.join("model.gguf"), dir.path().join("model.gguf")).unwrap();
    fs::write(dir.path().join("tokenizer.json"), "{\"model\": 42}").unwrap();
    let err = load(dir.path()).err().unwrap();
    assert!(matches!(err, LoadError::Tokenizer { .. }), "{err}");
    assert!(
        err.to_string().contains("not a valid tokenizer.json"),
        "{err}"
    );
}

#[test]
fn task_longer_than_the_context_is_refused() {
    let e = load(&model_dir(&gqa_shape(), GgmlDType::Q8_0, 2)).unwrap();
    let spec = TaskFile::parse(
        "[[task]]\nname='t'\ntemplate='{{text}}:'\nlabels=['a','b']\nmax_doc_tokens=5000",
        "t",
    )
    .unwrap()
    .task
    .remove(0);
    let err = e.prepare(&spec).unwrap_err().to_string();
    assert!(
        err.contains("more than the model's context of 1024"),
        "{err}"
    );
}
