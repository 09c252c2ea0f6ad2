//! PEFT LoRA adapters as (Q)LoRA training writes them: a directory holding `adapter_config.json`
//! (`r`, `lora_alpha`, `use_rslora`, `use_dora`) and `adapter_model.safetensors`
//! (`base_model.model.model.layers.N.self_attn.q_proj.lora_A.weight`, ...), read directly.
//!
//! Hugging Face's LLaMA keeps each head's query and key rows as two halves (`rotate_half`); the
//! GGUF conversion interleaves them (llama.cpp's convert_hf_to_gguf.py permutes `attn_q` and
//! `attn_k` rows, and convert_lora_to_gguf.py carries that permutation into `lora_b`), so the
//! `lora_B` of `q_proj` and `k_proj` get the same row permutation here.

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::{Device, Tensor};
use sha2::{Digest, Sha256};

use super::load::Hparams;
use super::lora::{target_of, Adapter, AdapterError, LoraPair, TARGETS};

/// The adapter's configuration file.
const CONFIG: &str = "adapter_config.json";
/// Its weights.
const WEIGHTS: &str = "adapter_model.safetensors";

/// Whether `path` names a PEFT adapter (its directory, its config or its safetensors file).
pub fn is_peft(path: &Path) -> bool {
    path.is_dir()
        || path.file_name().is_some_and(|n| n == CONFIG)
        || path.extension().is_some_and(|e| e == "safetensors")
}

/// Hugging Face module names and the GGUF projection each becomes.
const MODULES: [(&str, &str); 7] = [
    ("self_attn.q_proj", "attn_q"),
    ("self_attn.k_proj", "attn_k"),
    ("self_attn.v_proj", "attn_v"),
    ("self_attn.o_proj", "attn_output"),
    ("mlp.gate_proj", "ffn_gate"),
    ("mlp.up_proj", "ffn_up"),
    ("mlp.down_proj", "ffn_down"),
];

/// Reads the PEFT adapter at `path` for a LLaMA model with `hp`.
pub fn load(path: &Path, hp: &Hparams, device: &Device) -> Result<Adapter, AdapterError> {
    let dir = if path.is_dir() {
        path
    } else {
        path.parent().unwrap_or(Path::new("."))
    };
    let invalid = |reason: String| AdapterError::Invalid {
        path: dir.to_path_buf(),
        reason,
    };
    let read = |name: &str| {
        std::fs::read(dir.join(name)).map_err(|source| AdapterError::Io {
            path: dir.join(name),
            source,
        })
    };
    let (config, weights) = (read(CONFIG)?, read(WEIGHTS)?);
    let alpha = alpha(&config).map_err(|e| invalid(format!("{CONFIG}: {e}")))?;
    let mut h = Sha256::new();
    h.update((config.len() as u64).to_le_bytes());
    h.update(&config);
    h.update(&weights);
    let id = format!("{:x}", h.finalize());
    let tensors = candle_core::safetensors::load_buffer(&weights, device)
        .map_err(|e| invalid(format!("{WEIGHTS}: not a valid safetensors file: {e}")))?;
    let mut pairs: BTreeMap<String, (Option<Tensor>, Option<Tensor>)> = BTreeMap::new();
    for (name, t) in tensors {
        let (base, is_a) = gguf_name(&name).map_err(|reason| AdapterError::Tensor {
            path: dir.join(WEIGHTS),
            name: name.clone(),
            reason,
        })?;
        let slot = pairs.entry(base).or_default();
        if is_a {
            slot.0 = Some(t);
        } else {
            slot.1 = Some(t);
        }
    }
    let mut layers: Vec<[Option<LoraPair>; 7]> =
        (0..hp.n_layers).map(|_| Default::default()).collect();
    for (base, (a, b)) in pairs {
        let bad = |reason: String| AdapterError::Tensor {
            path: dir.join(WEIGHTS),
            name: base.clone(),
            reason,
        };
        let (Some(a), Some(b)) = (a, b) else {
            return Err(bad("lora_A and lora_B must come in pairs".into()));
        };
        let (layer, target) = target_of(&base, hp.n_layers).map_err(bad)?;
        let b = match TARGETS[target] {
            "attn_q" => interleave_heads(&b, hp.n_heads),
            "attn_k" => interleave_heads(&b, hp.n_kv_heads),
            _ => Ok(b),
        }
        .map_err(|e| bad(e.to_string()))?;
        layers[layer][target] = Some(LoraPair::new(hp, &base, target, &a, &b, alpha).map_err(bad)?);
    }
    if layers.iter().all(|l| l.iter().all(Option::is_none)) {
        return Err(invalid(format!(
            "{WEIGHTS} holds no lora_A / lora_B tensors"
        )));
    }
    Ok(Adapter {
        path: dir.to_path_buf(),
        id,
        alpha,
        layers,
    })
}

/// The alpha to use with `alpha / rank`: `lora_alpha`, times `sqrt(r)` under rsLoRA (whose scale
/// is `lora_alpha / sqrt(r)`). DoRA and per-module ranks or alphas are refused.
fn alpha(config: &[u8]) -> Result<f32, String> {
    let v: serde_json::Value = serde_json::from_slice(config).map_err(|e| e.to_string())?;
    let num = |k: &str| v.get(k).and_then(serde_json::Value::as_f64);
    let r = num("r").ok_or("no number 'r'")?;
    let alpha = num("lora_alpha").ok_or("no number 'lora_alpha'")?;
    if v.get("use_dora").and_then(serde_json::Value::as_bool) == Some(true) {
        return Err("DoRA adapters (use_dora = true) are not supported".into());
    }
    for k in ["rank_pattern", "alpha_pattern"] {
        if v.get(k)
            .and_then(serde_json::Value::as_object)
            .is_some_and(|m| !m.is_empty())
        {
            return Err(format!("per-module '{k}' is not supported"));
        }
    }
    let rs = v.get("use_rslora").and_then(serde_json::Value::as_bool) == Some(true);
    Ok(if rs { alpha * r.sqrt() } else { alpha } as f32)
}

/// `base_model.model.model.layers.N.<module>.lora_{A,B}.weight` -> (`blk.N.<proj>.weight`, is A).
fn gguf_name(name: &str) -> Result<(String, bool), String> {
    let unsupported = || {
        "not a lora_A / lora_B of a block projection \
         (model.layers.N.{self_attn.{q,k,v,o}_proj, mlp.{gate,up,down}_proj})"
            .to_string()
    };
    let rest = name.strip_prefix("base_model.model.").unwrap_or(name);
    let (rest, is_a) = if let Some(r) = rest.strip_suffix(".lora_A.weight") {
        (r, true)
    } else if let Some(r) = rest.strip_suffix(".lora_B.weight") {
        (r, false)
    } else {
        return Err(unsupported());
    };
    let rest = rest.strip_prefix("model.layers.").ok_or_else(unsupported)?;
    let (n, module) = rest.split_once('.').ok_or_else(unsupported)?;
    let layer: usize = n.parse().map_err(|_| unsupported())?;
    let proj = MODULES
        .iter()
        .find(|(m, _)| *m == module)
        .map(|(_, p)| *p)
        .ok_or_else(unsupported)?;
    Ok((format!("blk.{layer}.{proj}.weight"), is_a))
}

/// Rows of `b` `[heads · head_dim, rank]` from Hugging Face's order (per head: the first half of
/// the rotary pairs, then the second) to GGUF's (the pairs interleaved).
fn interleave_heads(b: &Tensor, heads: usize) -> candle_core::Result<Tensor> {
    let (out, rank) = b.dims2()?;
    if heads == 0 || !out.is_multiple_of(2 * heads) {
        candle_core::bail!("{out} rows do not split into {heads} heads of rotary pairs");
    }
    b.reshape((heads, 2, out / heads / 2, rank))?
        .transpose(1, 2)?
        .contiguous()?
        .reshape((out, rank))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peft_names_map_to_gguf_projections() {
        let n = "base_model.model.model.layers.3.self_attn.q_proj.lora_A.weight";
        assert_eq!(gguf_name(n).unwrap(), ("blk.3.attn_q.weight".into(), true));
        let n = "base_model.model.model.layers.0.mlp.down_proj.lora_B.weight";
        assert_eq!(
            gguf_name(n).unwrap(),
            ("blk.0.ffn_down.weight".into(), false)
        );
        let e = gguf_name("base_model.model.lm_head.lora_A.weight").unwrap_err();
        assert!(e.contains("block projection"), "{e}");
        assert!(gguf_name("base_model.model.model.embed_tokens.lora_embedding_A").is_err());
    }

    #[test]
    fn each_heads_halves_are_interleaved() {
        // 2 heads of 4 rows: HF rows [h0: 0 1 | 2 3], [h1: 4 5 | 6 7] -> 0 2 1 3, 4 6 5 7.
        let b = Tensor::arange(0f32, 8.0, &Device::Cpu)
            .unwrap()
            .reshape((8, 1))
            .unwrap();
        let got: Vec<f32> = interleave_heads(&b, 2)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert_eq!(got, vec![0., 2., 1., 3., 4., 6., 5., 7.]);
    }

    #[test]
    fn rslora_and_dora_configs() {
        assert_eq!(alpha(br#"{"r": 16, "lora_alpha": 32}"#).unwrap(), 32.0);
        assert_eq!(
            alpha(br#"{"r": 16, "lora_alpha": 8, "use_rslora": true}"#).unwrap(),
            32.0
        );
        assert!(alpha(br#"{"r": 8, "lora_alpha": 8, "use_dora": true}"#)
            .unwrap_err()
            .contains("DoRA"));
        assert!(alpha(br#"{"r": 8, "lora_alpha": 8, "rank_pattern": {"q_proj": 4}}"#).is_err());
    }
}
