//! LoRA adapter files for tests, in llama.cpp's GGUF layout (`<base>.lora_a` `[rank, in]`,
//! `<base>.lora_b` `[out, rank]`, `adapter.lora.alpha`), and a base model with an adapter merged
//! into its weights (`W + scale · alpha / rank · B·A`), the independent formulation the unmerged
//! path is checked against.

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::quantized::gguf_file::{self, Content, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};

/// One adapter's pairs, by base tensor name: (A `[rank, in]`, B `[out, rank]`).
pub type Pairs = BTreeMap<String, (Tensor, Tensor)>;

/// Random pairs of `rank` for every projection of every block of the model at `model`.
pub fn random_pairs(model: &Path, rank: usize, seed: u64, size: f32) -> Pairs {
    let mut f = std::fs::File::open(model).unwrap();
    let c = Content::read(&mut f).unwrap();
    let mut rng = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let mut next = move || {
        rng = rng
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((rng >> 33) as f32 / (1u64 << 31) as f32 - 0.5) * 2.0 * size
    };
    let mut out = Pairs::new();
    let mut names: Vec<&String> = c.tensor_infos.keys().collect();
    names.sort();
    for name in names {
        if !name.starts_with("blk.")
            || !labelmill::engine::lora::TARGETS
                .iter()
                .any(|t| name.ends_with(&format!(".{t}.weight")))
        {
            continue;
        }
        let (o, i) = c.tensor_infos[name].shape.dims2().unwrap();
        let a: Vec<f32> = (0..rank * i).map(|_| next()).collect();
        let b: Vec<f32> = (0..o * rank).map(|_| next()).collect();
        out.insert(
            name.clone(),
            (
                Tensor::from_vec(a, (rank, i), &Device::Cpu).unwrap(),
                Tensor::from_vec(b, (o, rank), &Device::Cpu).unwrap(),
            ),
        );
    }
    out
}

/// Writes `pairs` as a GGUF LoRA adapter with `alpha` and extra metadata `extra` (overriding).
pub fn write_adapter(path: &Path, pairs: &Pairs, alpha: f32, extra: &[(&str, Value)]) {
    let mut md: BTreeMap<String, Value> = BTreeMap::new();
    md.insert("general.architecture".into(), Value::String("llama".into()));
    md.insert("general.type".into(), Value::String("adapter".into()));
    md.insert("adapter.type".into(), Value::String("lora".into()));
    md.insert("adapter.lora.alpha".into(), Value::F32(alpha));
    for (k, v) in extra {
        md.insert(k.to_string(), v.clone());
    }
    let mut tensors: Vec<(String, QTensor)> = Vec::new();
    for (name, (a, b)) in pairs {
        tensors.push((
            format!("{name}.lora_a"),
            QTensor::quantize(a, GgmlDType::F32).unwrap(),
        ));
        tensors.push((
            format!("{name}.lora_b"),
            QTensor::quantize(b, GgmlDType::F32).unwrap(),
        ));
    }
    let md_refs: Vec<(&str, &Value)> = md.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let t_refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
    let mut w = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    gguf_file::write(&mut w, &md_refs, &t_refs).unwrap();
}

/// Writes the F32 model at `base` with `pairs` merged in: `W + scale · alpha / rank · B·A`.
pub fn write_merged(base: &Path, out: &Path, pairs: &Pairs, alpha: f32, scale: f32) {
    super::rewrite_gguf(base, out, |name, q| match pairs.get(name) {
        Some((a, b)) => {
            assert_eq!(q.dtype(), GgmlDType::F32, "merge into F32 weights only");
            let w = q.dequantize(&Device::Cpu).unwrap();
            let rank = a.dim(0).unwrap() as f32;
            let s = f64::from(scale * alpha / rank);
            let d = (b.matmul(a).unwrap() * s).unwrap();
            QTensor::quantize(&(w + d).unwrap(), GgmlDType::F32).unwrap()
        }
        None => q,
    })
}

/// `scripts/llamacpp-fixtures.py`'s SMOL_LORA for SmolLM2, generated here the same way: writes
/// the adapter to `path` and returns the sha256 of its weights (names sorted, f32 little-endian),
/// which the fixture records.
pub fn write_smollm2_adapter(path: &Path, fx: &serde_json::Value) -> String {
    use sha2::{Digest, Sha256};
    let spec = &fx["lora"];
    let seed = spec["seed"].as_u64().unwrap();
    let rank = spec["rank"].as_u64().unwrap() as usize;
    let (sa, sb) = (
        spec["scale_a"].as_f64().unwrap(),
        spec["scale_b"].as_f64().unwrap(),
    );
    let (d, kvd, f) = (576, 192, 1536);
    let mut pairs = Pairs::new();
    let mut index = 0u64;
    for b in 0..30 {
        for t in spec["targets"].as_array().unwrap() {
            let t = t.as_str().unwrap();
            let (o, i) = match t {
                "attn_q" => (d, d),
                "attn_v" => (kvd, d),
                "ffn_gate" => (f, d),
                "ffn_down" => (d, f),
                other => panic!("target {other} not generated here"),
            };
            let a = super::spm_twin::splitmix_uniform(seed, index, rank * i, sa);
            let bb = super::spm_twin::splitmix_uniform(seed, index + 1, o * rank, sb);
            index += 2;
            pairs.insert(
                format!("blk.{b}.{t}.weight"),
                (
                    Tensor::from_vec(a, (rank, i), &Device::Cpu).unwrap(),
                    Tensor::from_vec(bb, (o, rank), &Device::Cpu).unwrap(),
                ),
            );
        }
    }
    write_adapter(path, &pairs, spec["alpha"].as_f64().unwrap() as f32, &[]);
    let mut named: Vec<(String, Vec<f32>)> = Vec::new();
    for (name, (a, b)) in &pairs {
        named.push((
            format!("{name}.lora_a"),
            a.flatten_all().unwrap().to_vec1().unwrap(),
        ));
        named.push((
            format!("{name}.lora_b"),
            b.flatten_all().unwrap().to_vec1().unwrap(),
        ));
    }
    named.sort_by(|x, y| x.0.cmp(&y.0));
    let mut h = Sha256::new();
    for (name, v) in &named {
        h.update(name.as_bytes());
        for x in v {
            h.update(x.to_le_bytes());
        }
    }
    format!("{:x}", h.finalize())
}

/// Writes `pairs` (GGUF orientation) as a PEFT adapter directory: `adapter_config.json` and
/// `adapter_model.safetensors` with Hugging Face's names and, for `q_proj` / `k_proj`, its order
/// of each head's rows (the rotary halves apart: the inverse of the GGUF conversion's
/// interleaving) unless `hf_rows` is false. `heads` / `kv_heads`: the model's.
pub fn write_peft(dir: &Path, pairs: &Pairs, alpha: f32, heads: (usize, usize), hf_rows: bool) {
    std::fs::create_dir_all(dir).unwrap();
    let module = |proj: &str| match proj {
        "attn_q" => "self_attn.q_proj",
        "attn_k" => "self_attn.k_proj",
        "attn_v" => "self_attn.v_proj",
        "attn_output" => "self_attn.o_proj",
        "ffn_gate" => "mlp.gate_proj",
        "ffn_up" => "mlp.up_proj",
        "ffn_down" => "mlp.down_proj",
        other => panic!("{other}"),
    };
    let halves = |b: &Tensor, h: usize| {
        let (out, r) = b.dims2().unwrap();
        b.reshape((h, out / h / 2, 2, r))
            .unwrap()
            .transpose(1, 2)
            .unwrap()
            .contiguous()
            .unwrap()
            .reshape((out, r))
            .unwrap()
    };
    let mut tensors = std::collections::HashMap::new();
    let mut rank = 0;
    for (name, (a, b)) in pairs {
        let parts: Vec<&str> = name.split('.').collect(); // blk N proj weight
        let (layer, proj) = (parts[1], parts[2]);
        let b = match (proj, hf_rows) {
            ("attn_q", true) => halves(b, heads.0),
            ("attn_k", true) => halves(b, heads.1),
            _ => b.clone(),
        };
        rank = a.dim(0).unwrap();
        let stem = format!("base_model.model.model.layers.{layer}.{}", module(proj));
        tensors.insert(format!("{stem}.lora_A.weight"), a.clone());
        tensors.insert(format!("{stem}.lora_B.weight"), b);
    }
    candle_core::safetensors::save(&tensors, dir.join("adapter_model.safetensors")).unwrap();
    let config = serde_json::json!({
        "peft_type": "LORA", "r": rank, "lora_alpha": alpha, "lora_dropout": 0.05,
        "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        "task_type": "CAUSAL_LM", "use_rslora": false, "use_dora": false
    });
    std::fs::write(dir.join("adapter_config.json"), config.to_string()).unwrap();
}
