//! `labelmill tiny-model`: a real LLaMA-architecture GGUF with random weights, and its tokenizer.
//!
//! No weights can be downloaded where labelmill is tested, so tests, benchmarks and the quick start
//! run on these files, through the same loader as a downloaded LLaMA 2 GGUF.

pub mod tickets;
pub mod tokenizer;

use std::fs;
use std::io::BufWriter;
use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use rand::{Rng, SeedableRng};

/// The shape of a generated model.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct TinyShape {
    /// Transformer blocks.
    pub layers: usize,
    /// Embedding width.
    pub dim: usize,
    /// Query heads.
    pub heads: usize,
    /// Key/value heads (fewer than `heads`: grouped-query attention).
    pub kv_heads: usize,
    /// Vocabulary size (the tokenizer is trained to exactly this size).
    pub vocab: usize,
    /// Feed-forward width.
    pub ffn: usize,
    /// Context length written to the metadata.
    pub context: usize,
}

impl Default for TinyShape {
    fn default() -> Self {
        Self {
            layers: 2,
            dim: 256,
            heads: 8,
            kv_heads: 4,
            vocab: 1024,
            ffn: 512,
            context: 2048,
        }
    }
}

/// What went wrong generating a model.
#[derive(Debug, thiserror::Error)]
pub enum TinyError {
    /// The shape or quantisation is not usable.
    #[error("invalid tiny-model shape: {0}")]
    Shape(String),
    /// Training the tokenizer failed.
    #[error("training the tokenizer: {0}")]
    Tokenizer(String),
    /// Writing the files failed.
    #[error("writing {path}: {reason}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The error.
        reason: String,
    },
}

/// Parses a quantisation name (`q8_0`, `q4_0`, `q4_k`, `f16`, ...).
pub fn parse_quant(s: &str) -> Result<GgmlDType, String> {
    Ok(match s.to_ascii_lowercase().as_str() {
        "f32" => GgmlDType::F32,
        "f16" => GgmlDType::F16,
        "q4_0" => GgmlDType::Q4_0,
        "q4_1" => GgmlDType::Q4_1,
        "q5_0" => GgmlDType::Q5_0,
        "q5_1" => GgmlDType::Q5_1,
        "q8_0" => GgmlDType::Q8_0,
        "q2_k" => GgmlDType::Q2K,
        "q3_k" => GgmlDType::Q3K,
        "q4_k" => GgmlDType::Q4K,
        "q5_k" => GgmlDType::Q5K,
        "q6_k" => GgmlDType::Q6K,
        other => {
            return Err(format!(
            "unknown quantisation '{other}' (f32, f16, q4_0, q4_1, q5_0, q5_1, q8_0, q2_k..q6_k)"
        ))
        }
    })
}

/// llama.cpp's `general.file_type` for a mostly-`q` model.
fn file_type(q: GgmlDType) -> u32 {
    match q {
        GgmlDType::F32 => 0,
        GgmlDType::F16 => 1,
        GgmlDType::Q4_0 => 2,
        GgmlDType::Q4_1 => 3,
        GgmlDType::Q8_0 => 7,
        GgmlDType::Q5_0 => 8,
        GgmlDType::Q5_1 => 9,
        GgmlDType::Q2K => 10,
        GgmlDType::Q3K => 12,
        GgmlDType::Q4K => 15,
        GgmlDType::Q5K => 17,
        GgmlDType::Q6K => 18,
        _ => 0,
    }
}

/// Paths of a written model.
#[derive(Debug, Clone)]
pub struct TinyModel {
    /// `DIR/model.gguf`.
    pub model: PathBuf,
    /// `DIR/tokenizer.json`.
    pub tokenizer: PathBuf,
}

/// Writes `dir/model.gguf` (random weights, deterministic per `seed`, its tokenizer in the
/// metadata) and `dir/tokenizer.json` (the same tokenizer as HF tokenizers reads it).
pub fn write(
    dir: &Path,
    shape: &TinyShape,
    quant: GgmlDType,
    seed: u64,
) -> Result<TinyModel, TinyError> {
    check_shape(shape, quant)?;
    let tok_json = tokenizer::train(shape.vocab).map_err(TinyError::Tokenizer)?;
    let tensors = random_tensors(shape, quant, seed).map_err(|e| TinyError::Write {
        path: dir.to_path_buf(),
        reason: e.to_string(),
    })?;
    let name = format!("labelmill-tiny-{}l-{}d-seed{seed}", shape.layers, shape.dim);
    write_files(dir, shape, quant, &name, tensors, &tok_json)
}

/// Writes trained f32 weights (GGUF tensor names, `(out, in)` matrices) as `dir/model.gguf`, the
/// matrices quantised to `quant` and the norms kept in F32, with `tokenizer_json` beside it.
pub fn write_weights(
    dir: &Path,
    shape: &TinyShape,
    quant: GgmlDType,
    name: &str,
    weights: &[(String, Tensor)],
    tokenizer_json: &str,
) -> Result<TinyModel, TinyError> {
    check_shape(shape, quant)?;
    let tensors = weights
        .iter()
        .map(|(n, t)| {
            let q = if n.ends_with("norm.weight") {
                GgmlDType::F32
            } else {
                quant
            };
            Ok((n.clone(), QTensor::quantize(t, q)?))
        })
        .collect::<candle_core::Result<Vec<_>>>()
        .map_err(|e| TinyError::Write {
            path: dir.to_path_buf(),
            reason: e.to_string(),
        })?;
    write_files(dir, shape, quant, name, tensors, tokenizer_json)
}

fn write_files(
    dir: &Path,
    shape: &TinyShape,
    quant: GgmlDType,
    name: &str,
    tensors: Vec<(String, QTensor)>,
    tok_json: &str,
) -> Result<TinyModel, TinyError> {
    let vocab_md = tokenizer::gguf_metadata(tok_json).map_err(TinyError::Tokenizer)?;
    let werr = |path: &Path| {
        let path = path.to_path_buf();
        move |e: String| TinyError::Write {
            path: path.clone(),
            reason: e,
        }
    };
    fs::create_dir_all(dir).map_err(|e| werr(dir)(e.to_string()))?;
    let model = dir.join("model.gguf");
    let tokenizer = dir.join("tokenizer.json");

    let hd = shape.dim / shape.heads;
    let mut md: Vec<(&str, Value)> = vec![
        ("general.architecture", Value::String("llama".into())),
        ("general.name", Value::String(name.to_string())),
        ("general.file_type", Value::U32(file_type(quant))),
        ("llama.context_length", Value::U32(shape.context as u32)),
        ("llama.embedding_length", Value::U32(shape.dim as u32)),
        ("llama.block_count", Value::U32(shape.layers as u32)),
        ("llama.feed_forward_length", Value::U32(shape.ffn as u32)),
        ("llama.rope.dimension_count", Value::U32(hd as u32)),
        ("llama.attention.head_count", Value::U32(shape.heads as u32)),
        (
            "llama.attention.head_count_kv",
            Value::U32(shape.kv_heads as u32),
        ),
        ("llama.attention.layer_norm_rms_epsilon", Value::F32(1e-5)),
        ("llama.rope.freq_base", Value::F32(10_000.0)),
    ];
    md.extend(vocab_md);
    let md_refs: Vec<(&str, &Value)> = md.iter().map(|(k, v)| (*k, v)).collect();
    let t_refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();

    // Write to temporary names and rename, so a crash never leaves a half-written model behind.
    let tmp_model = dir.join("model.gguf.tmp");
    let f = fs::File::create(&tmp_model).map_err(|e| werr(&model)(e.to_string()))?;
    let mut w = BufWriter::new(f);
    gguf_file::write(&mut w, &md_refs, &t_refs).map_err(|e| werr(&model)(e.to_string()))?;
    w.into_inner()
        .map_err(|e| werr(&model)(e.to_string()))?
        .sync_all()
        .map_err(|e| werr(&model)(e.to_string()))?;
    fs::rename(&tmp_model, &model).map_err(|e| werr(&model)(e.to_string()))?;
    // The tokenizer.json beside it is the GGUF's own tokenizer written out (they agree by
    // construction), for tools that want one.
    let built = tokenizer::from_trained(tok_json).map_err(TinyError::Tokenizer)?;
    let json = built.to_json().map_err(TinyError::Tokenizer)?;
    fs::write(&tokenizer, json).map_err(|e| werr(&tokenizer)(e.to_string()))?;
    Ok(TinyModel { model, tokenizer })
}

fn check_shape(s: &TinyShape, q: GgmlDType) -> Result<(), TinyError> {
    let bad = |m: String| Err(TinyError::Shape(m));
    if s.layers == 0 || s.heads == 0 || s.kv_heads == 0 {
        return bad("layers, heads and kv-heads must be at least 1".into());
    }
    if !s.dim.is_multiple_of(s.heads) || !(s.dim / s.heads).is_multiple_of(2) {
        return bad(format!(
            "dim {} must be an even multiple of heads {}",
            s.dim, s.heads
        ));
    }
    if !s.heads.is_multiple_of(s.kv_heads) {
        return bad(format!(
            "heads {} must be a multiple of kv-heads {}",
            s.heads, s.kv_heads
        ));
    }
    let block = q.block_size();
    if !s.dim.is_multiple_of(block) || !s.ffn.is_multiple_of(block) {
        return bad(format!(
            "{q:?} packs {block} values per block: dim {} and ffn {} must be multiples",
            s.dim, s.ffn
        ));
    }
    if s.context < 64 {
        return bad("context must be at least 64".into());
    }
    Ok(())
}

/// Uniform weights with the standard deviation `std` (uniform on ±√3·std).
fn uniform(
    rng: &mut rand::rngs::StdRng,
    shape: (usize, usize),
    std: f32,
) -> candle_core::Result<Tensor> {
    let a = std * 3f32.sqrt();
    let v: Vec<f32> = (0..shape.0 * shape.1)
        .map(|_| rng.random_range(-a..a))
        .collect();
    Tensor::from_vec(v, shape, &Device::Cpu)
}

fn random_tensors(
    s: &TinyShape,
    q: GgmlDType,
    seed: u64,
) -> candle_core::Result<Vec<(String, QTensor)>> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let kvd = s.kv_heads * (s.dim / s.heads);
    let mut out = Vec::new();
    let mut mat =
        |name: String, rows: usize, cols: usize, std: f32, rng: &mut rand::rngs::StdRng| {
            let t = uniform(rng, (rows, cols), std)?;
            out.push((name, QTensor::quantize(&t, q)?));
            Ok::<_, candle_core::Error>(())
        };
    let w = 1.0 / (s.dim as f32).sqrt();
    mat("token_embd.weight".into(), s.vocab, s.dim, 1.0, &mut rng)?;
    for i in 0..s.layers {
        mat(format!("blk.{i}.attn_q.weight"), s.dim, s.dim, w, &mut rng)?;
        mat(format!("blk.{i}.attn_k.weight"), kvd, s.dim, w, &mut rng)?;
        mat(format!("blk.{i}.attn_v.weight"), kvd, s.dim, w, &mut rng)?;
        mat(
            format!("blk.{i}.attn_output.weight"),
            s.dim,
            s.dim,
            w,
            &mut rng,
        )?;
        mat(
            format!("blk.{i}.ffn_gate.weight"),
            s.ffn,
            s.dim,
            w,
            &mut rng,
        )?;
        mat(format!("blk.{i}.ffn_up.weight"), s.ffn, s.dim, w, &mut rng)?;
        mat(
            format!("blk.{i}.ffn_down.weight"),
            s.dim,
            s.ffn,
            1.0 / (s.ffn as f32).sqrt(),
            &mut rng,
        )?;
    }
    mat("output.weight".into(), s.vocab, s.dim, w, &mut rng)?;
    // Norm weights stay F32, as in llama.cpp's files; a little noise keeps them from being trivial.
    let mut norms = Vec::new();
    for i in 0..s.layers {
        for n in ["attn_norm", "ffn_norm"] {
            norms.push(format!("blk.{i}.{n}.weight"));
        }
    }
    norms.push("output_norm.weight".into());
    for name in norms {
        let v: Vec<f32> = (0..s.dim)
            .map(|_| 1.0 + rng.random_range(-0.1..0.1))
            .collect();
        out.push((
            name,
            QTensor::quantize(&Tensor::from_vec(v, s.dim, &Device::Cpu)?, GgmlDType::F32)?,
        ));
    }
    Ok(out)
}
