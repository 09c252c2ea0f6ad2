//! The LLaMA 2 vocabulary twin: a small LLaMA-architecture model with LLaMA 2's SentencePiece
//! vocabulary (from llama.cpp's ggml-vocab-llama-spm.gguf) and LLaMA 2's chat template, its F32
//! weights from the same generator scripts/llamacpp-fixtures.py uses, so llama.cpp's figures for
//! the file that script wrote with gguf-py hold for the file written here (the weights' sha256
//! says whether they are the same numbers).

use std::path::Path;

use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use sha2::{Digest, Sha256};

/// The twin's shape, as the fixture records it.
pub struct TwinShape {
    pub dim: usize,
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub ffn: usize,
    pub context: usize,
    pub seed: u64,
}

impl TwinShape {
    /// Reads the fixture's `twin` object.
    pub fn from_fixture(v: &serde_json::Value) -> Self {
        let n = |k: &str| v[k].as_u64().unwrap_or_else(|| panic!("twin.{k}"));
        Self {
            dim: n("dim") as usize,
            layers: n("layers") as usize,
            heads: n("heads") as usize,
            kv_heads: n("kv_heads") as usize,
            ffn: n("ffn") as usize,
            context: n("context") as usize,
            seed: n("seed"),
        }
    }
}

/// `n` values uniform on `[-scale, scale)`: splitmix64 of `(seed ^ index << 32) + i · golden`.
pub fn splitmix_uniform(seed: u64, index: u64, n: usize, scale: f64) -> Vec<f32> {
    (0..n as u64)
        .map(|i| {
            let mut z = (seed ^ (index << 32)).wrapping_add(i.wrapping_mul(0x9E3779B97F4A7C15));
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58476D1CE4E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D049BB133111EB);
            z ^= z >> 31;
            let u = (z >> 11) as f64 * 2f64.powi(-53);
            ((u * 2.0 - 1.0) * scale) as f32
        })
        .collect()
}

/// The tensors in generation order: name, shape `(out, in)` or `(n,)`, values.
pub fn tensors(s: &TwinShape, vocab: usize) -> Vec<(String, Vec<usize>, Vec<f32>)> {
    let (d, f) = (s.dim, s.ffn);
    let kvd = s.kv_heads * (d / s.heads);
    let inv = |x: usize| (x as f64).powf(-0.5);
    let mut specs: Vec<(String, Vec<usize>, Option<f64>)> =
        vec![("token_embd.weight".into(), vec![vocab, d], Some(1.0))];
    for b in 0..s.layers {
        let m = |n: &str, shape: Vec<usize>, scale| (format!("blk.{b}.{n}.weight"), shape, scale);
        specs.extend([
            m("attn_norm", vec![d], None),
            m("attn_q", vec![d, d], Some(inv(d))),
            m("attn_k", vec![kvd, d], Some(inv(d))),
            m("attn_v", vec![kvd, d], Some(inv(d))),
            m("attn_output", vec![d, d], Some(inv(d))),
            m("ffn_norm", vec![d], None),
            m("ffn_gate", vec![f, d], Some(inv(d))),
            m("ffn_up", vec![f, d], Some(inv(d))),
            m("ffn_down", vec![d, f], Some(inv(f))),
        ]);
    }
    specs.push(("output_norm.weight".into(), vec![d], None));
    specs
        .into_iter()
        .enumerate()
        .map(|(index, (name, shape, scale))| {
            let n = shape.iter().product();
            let values = match scale {
                Some(sc) => splitmix_uniform(s.seed, index as u64, n, sc),
                None => splitmix_uniform(s.seed, index as u64, n, 0.1)
                    .into_iter()
                    .map(|x| (x as f64 + 1.0) as f32)
                    .collect(),
            };
            (name, shape, values)
        })
        .collect()
}

/// sha256 over the tensors sorted by name: each name's bytes, then its values as little-endian f32.
pub fn weights_sha256(tensors: &[(String, Vec<usize>, Vec<f32>)]) -> String {
    let mut sorted: Vec<_> = tensors.iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(&b.0));
    let mut h = Sha256::new();
    for (name, _, values) in sorted {
        h.update(name.as_bytes());
        for v in values {
            h.update(v.to_le_bytes());
        }
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// Writes the twin to `out` from the vocabulary file `vocab` and `chat_template`; returns the
/// weights' sha256.
pub fn write(s: &TwinShape, vocab: &Path, chat_template: &str, out: &Path) -> String {
    let mut f = std::fs::File::open(vocab).expect("open the vocabulary");
    let c = gguf_file::Content::read(&mut f).expect("read the vocabulary");
    let keep = [
        "tokenizer.ggml.model",
        "tokenizer.ggml.tokens",
        "tokenizer.ggml.scores",
        "tokenizer.ggml.token_type",
        "tokenizer.ggml.bos_token_id",
        "tokenizer.ggml.eos_token_id",
        "tokenizer.ggml.unknown_token_id",
        "tokenizer.ggml.add_bos_token",
        "tokenizer.ggml.add_eos_token",
    ];
    let vocab_len = match &c.metadata["tokenizer.ggml.tokens"] {
        Value::Array(v) => v.len(),
        _ => panic!("tokens are an array"),
    };
    let u = |x: usize| Value::U32(x as u32);
    let mut md: Vec<(String, Value)> = vec![
        ("general.architecture".into(), Value::String("llama".into())),
        (
            "general.name".into(),
            Value::String("labelmill-llama2-vocab-twin".into()),
        ),
        ("llama.context_length".into(), u(s.context)),
        ("llama.embedding_length".into(), u(s.dim)),
        ("llama.block_count".into(), u(s.layers)),
        ("llama.feed_forward_length".into(), u(s.ffn)),
        ("llama.attention.head_count".into(), u(s.heads)),
        ("llama.attention.head_count_kv".into(), u(s.kv_heads)),
        ("llama.rope.dimension_count".into(), u(s.dim / s.heads)),
        (
            "llama.attention.layer_norm_rms_epsilon".into(),
            Value::F32(1e-5),
        ),
        ("llama.rope.freq_base".into(), Value::F32(10_000.0)),
        (
            "tokenizer.chat_template".into(),
            Value::String(chat_template.into()),
        ),
    ];
    for k in keep {
        md.push((k.into(), c.metadata[k].clone()));
    }
    let ts = tensors(s, vocab_len);
    let sha = weights_sha256(&ts);
    let q: Vec<(String, QTensor)> = ts
        .iter()
        .map(|(name, shape, values)| {
            let t = Tensor::from_vec(values.clone(), shape.as_slice(), &Device::Cpu).unwrap();
            (name.clone(), QTensor::quantize(&t, GgmlDType::F32).unwrap())
        })
        .collect();
    let md_refs: Vec<(&str, &Value)> = md.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let t_refs: Vec<(&str, &QTensor)> = q.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let mut w = std::io::BufWriter::new(std::fs::File::create(out).unwrap());
    gguf_file::write(&mut w, &md_refs, &t_refs).unwrap();
    sha
}
