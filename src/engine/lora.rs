//! LoRA adapters in llama.cpp's GGUF format (`general.type = "adapter"`, `adapter.type = "lora"`,
//! `adapter.lora.alpha`; tensors `<base tensor>.lora_a` `[rank, in]` and `.lora_b` `[out, rank]`,
//! as convert_lora_to_gguf.py writes them from a PEFT adapter), applied unmerged:
//! `W·x + scale · (alpha / rank) · B(A·x)`, the base weights staying quantised and shared. PEFT's
//! own files (`adapter_config.json` + `adapter_model.safetensors`) are read by `lora_peft`.

use std::collections::HashMap;
use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::{DType, Device, Tensor};
use sha2::{Digest, Sha256};

use super::load::Hparams;

/// Why an adapter cannot be used with this model.
#[derive(Debug, thiserror::Error)]
pub enum AdapterError {
    /// The file cannot be read.
    #[error("adapter {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// Not a GGUF LoRA adapter, or one for another kind of model.
    #[error("adapter {path}: {reason}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A tensor that does not fit the base model.
    #[error("adapter {path}: tensor '{name}': {reason}")]
    Tensor {
        /// The file.
        path: PathBuf,
        /// The tensor.
        name: String,
        /// What is wrong.
        reason: String,
    },
}

/// The projections an adapter may target, by their GGUF names inside a block.
pub const TARGETS: [&str; 7] = [
    "attn_q",
    "attn_k",
    "attn_v",
    "attn_output",
    "ffn_gate",
    "ffn_up",
    "ffn_down",
];

/// One projection's low-rank pair, in f32 on the model's device.
#[derive(Debug, Clone)]
pub struct LoraPair {
    /// `A` transposed, `[in, rank]`.
    a_t: Tensor,
    /// `B` transposed and times `alpha / rank` (1 when alpha is 0, as llama.cpp does),
    /// `[rank, out]`.
    b_t: Tensor,
}

impl LoraPair {
    /// The pair of `a` `[rank, in]` and `b` `[out, rank]` for projection `TARGETS[target]`
    /// (named `base`), checked against the model's shape; `alpha` 0 means no alpha / rank factor.
    pub(crate) fn new(
        hp: &Hparams,
        base: &str,
        target: usize,
        a: &Tensor,
        b: &Tensor,
        alpha: f32,
    ) -> Result<Self, String> {
        let (out, inp) = projection_shape(hp, target);
        let (ra, ia) = a.dims2().map_err(|e| format!("lora_a: {e}"))?;
        let (ob, rb) = b.dims2().map_err(|e| format!("lora_b: {e}"))?;
        if ia != inp || ob != out {
            return Err(format!(
                "lora_a is [{ra}, {ia}] and lora_b [{ob}, {rb}]; the model's {base} is \
                 [{out}, {inp}]: an adapter for another base model"
            ));
        }
        if ra != rb || ra == 0 {
            return Err(format!("rank mismatch: lora_a has rank {ra}, lora_b {rb}"));
        }
        let f32_t = |t: &Tensor| -> candle_core::Result<Tensor> {
            t.to_dtype(DType::F32)?.t()?.contiguous()
        };
        let alpha_over_rank = if alpha == 0.0 { 1.0 } else { alpha / rb as f32 };
        let b_t = f32_t(b).and_then(|b| b * f64::from(alpha_over_rank));
        Ok(Self {
            a_t: f32_t(a).map_err(|e| e.to_string())?,
            b_t: b_t.map_err(|e| e.to_string())?,
        })
    }

    /// `scale · (alpha / rank) · B(A·x)` for `x` `[n, in]`, in `x`'s dtype. `alpha / rank` is
    /// folded into `B` at load and `scale` applied to the `[n, rank]` product: two products and
    /// at most one scaling per projection (small, deep models pay per operation).
    pub fn delta(&self, x: &Tensor, scale: f32) -> candle_core::Result<Tensor> {
        let dtype = x.dtype();
        let mut xa = if dtype == DType::F32 {
            x.matmul(&self.a_t)?
        } else {
            x.to_dtype(DType::F32)?.matmul(&self.a_t)?
        };
        if scale != 1.0 {
            xa = (xa * f64::from(scale))?;
        }
        let d = xa.matmul(&self.b_t)?;
        if dtype == DType::F32 {
            Ok(d)
        } else {
            d.to_dtype(dtype)
        }
    }
}

/// A loaded adapter: its pairs per block and projection.
#[derive(Debug)]
pub struct Adapter {
    /// The file it came from.
    pub path: PathBuf,
    /// sha256 of the file's bytes: the same adapter loaded twice has the same id.
    pub id: String,
    /// `adapter.lora.alpha`.
    pub alpha: f32,
    /// `layers[block][TARGETS index]`.
    pub(crate) layers: Vec<[Option<LoraPair>; 7]>,
}

/// An adapter at a scale: what a task runs with.
#[derive(Debug, Clone)]
pub struct ActiveLora {
    /// The adapter.
    pub adapter: Arc<Adapter>,
    /// The task's `adapter_scale`.
    pub scale: f32,
}

impl ActiveLora {
    /// The pair of block `layer`, projection `TARGETS[target]`, if the adapter has one.
    pub fn pair(&self, layer: usize, target: usize) -> Option<&LoraPair> {
        self.adapter.layers.get(layer)?[target].as_ref()
    }

    /// `y + delta` when the adapter targets this projection, else `y`.
    pub fn add(
        lora: Option<&Self>,
        layer: usize,
        target: usize,
        x: &Tensor,
        y: Tensor,
    ) -> candle_core::Result<Tensor> {
        match lora.and_then(|l| l.pair(layer, target).map(|p| (l, p))) {
            Some((l, p)) => y + p.delta(x, l.scale)?,
            None => Ok(y),
        }
    }

    /// Whether the adapter targets projection `target` in block `layer`.
    pub fn targets(lora: Option<&Self>, layer: usize, target: usize) -> bool {
        lora.is_some_and(|l| l.pair(layer, target).is_some())
    }
}

impl Adapter {
    /// Reads a GGUF LoRA adapter for a LLaMA model with `hp`, onto `device`. Every tensor must be a
    /// `lora_a` / `lora_b` of one of [`TARGETS`] in a block the model has, with shapes that fit.
    pub fn load_gguf(path: &Path, hp: &Hparams, device: &Device) -> Result<Self, AdapterError> {
        let io = |source| AdapterError::Io {
            path: path.to_path_buf(),
            source,
        };
        let bytes = std::fs::read(path).map_err(io)?;
        let id = format!("{:x}", Sha256::digest(&bytes));
        let invalid = |reason: String| AdapterError::Invalid {
            path: path.to_path_buf(),
            reason,
        };
        let mut reader = BufReader::new(std::io::Cursor::new(&bytes));
        let content = Content::read(&mut reader)
            .map_err(|e| invalid(format!("not a valid GGUF file (truncated or corrupt): {e}")))?;
        super::load::check_extents(&content, bytes.len() as u64).map_err(invalid)?;
        let text = |key: &str| match content.metadata.get(key) {
            Some(Value::String(s)) => Some(s.clone()),
            _ => None,
        };
        if text("general.type").as_deref() != Some("adapter")
            || text("adapter.type").as_deref() != Some("lora")
        {
            return Err(invalid(
                "not a LoRA adapter (general.type = \"adapter\" and adapter.type = \"lora\" expected)"
                    .into(),
            ));
        }
        match text("general.architecture") {
            Some(a) if a == "llama" => {}
            other => {
                return Err(invalid(format!(
                    "an adapter for a '{}' model; this model is 'llama'",
                    other.unwrap_or_default()
                )))
            }
        }
        let alpha = match content.metadata.get("adapter.lora.alpha") {
            Some(v) => v
                .to_f32()
                .map_err(|e| invalid(format!("adapter.lora.alpha: {e}")))?,
            None => 0.0,
        };
        let mut layers: Vec<[Option<LoraPair>; 7]> =
            (0..hp.n_layers).map(|_| Default::default()).collect();
        let mut names: Vec<&String> = content.tensor_infos.keys().collect();
        names.sort();
        for name in names {
            let bad = |reason: String| AdapterError::Tensor {
                path: path.to_path_buf(),
                name: name.clone(),
                reason,
            };
            let Some(base) = name.strip_suffix(".lora_a") else {
                if name.ends_with(".lora_b") {
                    continue;
                }
                return Err(bad("not a lora_a / lora_b tensor".into()));
            };
            let (layer, target) = target_of(base, hp.n_layers).map_err(bad)?;
            let b_name = format!("{base}.lora_b");
            let read = |n: &str| -> Result<Tensor, AdapterError> {
                let mut r = BufReader::new(std::io::Cursor::new(&bytes));
                let q = content
                    .tensor(&mut r, n, device)
                    .map_err(|e| AdapterError::Tensor {
                        path: path.to_path_buf(),
                        name: n.to_string(),
                        reason: e.to_string(),
                    })?;
                q.dequantize(device).map_err(|e| AdapterError::Tensor {
                    path: path.to_path_buf(),
                    name: n.to_string(),
                    reason: e.to_string(),
                })
            };
            if !content.tensor_infos.contains_key(&b_name) {
                return Err(bad(format!("no matching '{b_name}'")));
            }
            let (a, b) = (read(name)?, read(&b_name)?);
            layers[layer][target] =
                Some(LoraPair::new(hp, base, target, &a, &b, alpha).map_err(bad)?);
        }
        // A lora_b without its lora_a.
        for name in content.tensor_infos.keys() {
            if let Some(base) = name.strip_suffix(".lora_b") {
                if !content.tensor_infos.contains_key(&format!("{base}.lora_a")) {
                    return Err(AdapterError::Tensor {
                        path: path.to_path_buf(),
                        name: name.clone(),
                        reason: format!("no matching '{base}.lora_a'"),
                    });
                }
            }
        }
        if layers.iter().all(|l| l.iter().all(Option::is_none)) {
            return Err(invalid(
                "the adapter holds no lora_a / lora_b tensors".into(),
            ));
        }
        Ok(Self {
            path: path.to_path_buf(),
            id,
            alpha,
            layers,
        })
    }
}

/// `blk.N.<target>.weight` -> (N, index in [`TARGETS`]).
pub(crate) fn target_of(base: &str, n_layers: usize) -> Result<(usize, usize), String> {
    let unsupported = || {
        format!(
            "not a projection of a block this model has (blk.0..{}.{{{}}}.weight)",
            n_layers.saturating_sub(1),
            TARGETS.join(",")
        )
    };
    let rest = base.strip_prefix("blk.").ok_or_else(unsupported)?;
    let (n, rest) = rest.split_once('.').ok_or_else(unsupported)?;
    let layer: usize = n.parse().map_err(|_| unsupported())?;
    let proj = rest.strip_suffix(".weight").ok_or_else(unsupported)?;
    let target = TARGETS
        .iter()
        .position(|t| *t == proj)
        .ok_or_else(unsupported)?;
    if layer >= n_layers {
        return Err(format!(
            "block {layer}, but the model has {n_layers} blocks: an adapter for another base model"
        ));
    }
    Ok((layer, target))
}

/// `[out, in]` of projection `TARGETS[target]`.
pub(crate) fn projection_shape(hp: &Hparams, target: usize) -> (usize, usize) {
    let kvd = hp.n_kv_heads * hp.head_dim();
    match TARGETS[target] {
        "attn_q" | "attn_output" => (hp.dim, hp.dim),
        "attn_k" | "attn_v" => (kvd, hp.dim),
        "ffn_gate" | "ffn_up" => (hp.ffn_dim, hp.dim),
        _ => (hp.dim, hp.ffn_dim),
    }
}

/// Adapters loaded by one engine, by content: tasks naming the same file, or two copies of it,
/// share one loaded adapter.
#[derive(Debug, Default)]
pub struct AdapterSet {
    loaded: std::sync::Mutex<HashMap<String, Arc<Adapter>>>,
}

impl AdapterSet {
    /// The adapter at `path`, loaded once per content.
    pub fn get(
        &self,
        path: &Path,
        hp: &Hparams,
        device: &Device,
    ) -> Result<Arc<Adapter>, AdapterError> {
        let adapter = if super::lora_peft::is_peft(path) {
            super::lora_peft::load(path, hp, device)?
        } else {
            Adapter::load_gguf(path, hp, device)?
        };
        let mut loaded = self.loaded.lock().expect("adapter set lock");
        Ok(loaded
            .entry(adapter.id.clone())
            .or_insert_with(|| Arc::new(adapter))
            .clone())
    }
}
