//! A deliberately plain LLaMA: f32 weights dequantised from the GGUF, loops, no cache, no batching.
//!
//! It shares no code with the engine's forward pass. Only the GGUF parsing and dequantisation come
//! from candle, because reading the file format is not what these tests check.

use std::collections::HashMap;
use std::fs::File;
use std::path::Path;

use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::Device;

/// A dense row-major matrix `[rows, cols]`.
pub struct Mat {
    pub rows: usize,
    pub cols: usize,
    pub data: Vec<f32>,
}

impl Mat {
    /// `y = W x` for `W` of shape `[rows, cols]`.
    fn apply(&self, x: &[f32]) -> Vec<f32> {
        (0..self.rows)
            .map(|r| {
                let row = &self.data[r * self.cols..(r + 1) * self.cols];
                row.iter()
                    .zip(x)
                    .map(|(a, b)| (*a as f64) * (*b as f64))
                    .sum::<f64>() as f32
            })
            .collect()
    }
}

struct Layer {
    attn_norm: Vec<f32>,
    wq: Mat,
    wk: Mat,
    wv: Mat,
    wo: Mat,
    ffn_norm: Vec<f32>,
    gate: Mat,
    up: Mat,
    down: Mat,
}

/// The reference model.
pub struct RefModel {
    dim: usize,
    heads: usize,
    kv_heads: usize,
    eps: f32,
    base: f32,
    embd: Mat,
    layers: Vec<Layer>,
    norm: Vec<f32>,
    output: Mat,
}

impl RefModel {
    /// Reads and dequantises every tensor of `path`.
    pub fn load(path: &Path) -> Self {
        let mut f = File::open(path).unwrap();
        let c = Content::read(&mut f).unwrap();
        let u = |k: &str| match &c.metadata[k] {
            Value::U32(v) => *v as usize,
            v => panic!("{k}: {v:?}"),
        };
        let fl = |k: &str| match &c.metadata[k] {
            Value::F32(v) => *v,
            v => panic!("{k}: {v:?}"),
        };
        let mut cache: HashMap<String, Mat> = HashMap::new();
        let mut mat = |name: &str| -> Mat {
            if let Some(m) = cache.remove(name) {
                return m;
            }
            let t = c
                .tensor(&mut f, name, &Device::Cpu)
                .unwrap()
                .dequantize(&Device::Cpu)
                .unwrap();
            let dims = t.dims().to_vec();
            let data = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let (rows, cols) = if dims.len() == 2 {
                (dims[0], dims[1])
            } else {
                (1, dims[0])
            };
            Mat { rows, cols, data }
        };
        let n_layers = u("llama.block_count");
        let layers = (0..n_layers)
            .map(|i| Layer {
                attn_norm: mat(&format!("blk.{i}.attn_norm.weight")).data,
                wq: mat(&format!("blk.{i}.attn_q.weight")),
                wk: mat(&format!("blk.{i}.attn_k.weight")),
                wv: mat(&format!("blk.{i}.attn_v.weight")),
                wo: mat(&format!("blk.{i}.attn_output.weight")),
                ffn_norm: mat(&format!("blk.{i}.ffn_norm.weight")).data,
                gate: mat(&format!("blk.{i}.ffn_gate.weight")),
                up: mat(&format!("blk.{i}.ffn_up.weight")),
                down: mat(&format!("blk.{i}.ffn_down.weight")),
            })
            .collect();
        Self {
            dim: u("llama.embedding_length"),
            heads: u("llama.attention.head_count"),
            kv_heads: u("llama.attention.head_count_kv"),
            eps: fl("llama.attention.layer_norm_rms_epsilon"),
            base: fl("llama.rope.freq_base"),
            embd: mat("token_embd.weight"),
            layers,
            norm: mat("output_norm.weight").data,
            // Tied embeddings: without an output matrix the embedding is the LM head.
            output: if c.tensor_infos.contains_key("output.weight") {
                mat("output.weight")
            } else {
                mat("token_embd.weight")
            },
        }
    }

    fn rms_norm(&self, x: &[f32], w: &[f32]) -> Vec<f32> {
        let ms = x.iter().map(|v| (*v as f64).powi(2)).sum::<f64>() / x.len() as f64;
        let s = 1.0 / (ms + self.eps as f64).sqrt();
        x.iter()
            .zip(w)
            .map(|(v, g)| ((*v as f64) * s) as f32 * g)
            .collect()
    }

    /// GGUF LLaMA rotates adjacent pairs (x[2i], x[2i+1]) of each head by `pos * base^(-2i/hd)`.
    fn rope(&self, x: &mut [f32], n_heads: usize, pos: usize) {
        let hd = self.dim / self.heads;
        for h in 0..n_heads {
            for i in 0..hd / 2 {
                let theta = pos as f64 * (self.base as f64).powf(-2.0 * i as f64 / hd as f64);
                let (s, c) = theta.sin_cos();
                let (a, b) = (x[h * hd + 2 * i] as f64, x[h * hd + 2 * i + 1] as f64);
                x[h * hd + 2 * i] = (a * c - b * s) as f32;
                x[h * hd + 2 * i + 1] = (a * s + b * c) as f32;
            }
        }
    }

    /// Logits at every position of `tokens` (position 0 = the first token).
    pub fn logits(&self, tokens: &[u32]) -> Vec<Vec<f32>> {
        let hd = self.dim / self.heads;
        let group = self.heads / self.kv_heads;
        let mut xs: Vec<Vec<f32>> = tokens
            .iter()
            .map(|&t| self.embd.data[t as usize * self.dim..(t as usize + 1) * self.dim].to_vec())
            .collect();
        for l in &self.layers {
            let mut qs = Vec::new();
            let mut ks = Vec::new();
            let mut vs = Vec::new();
            for (pos, x) in xs.iter().enumerate() {
                let h = self.rms_norm(x, &l.attn_norm);
                let mut q = l.wq.apply(&h);
                let mut k = l.wk.apply(&h);
                self.rope(&mut q, self.heads, pos);
                self.rope(&mut k, self.kv_heads, pos);
                qs.push(q);
                ks.push(k);
                vs.push(l.wv.apply(&h));
            }
            for (i, x) in xs.iter_mut().enumerate() {
                let mut o = vec![0f32; self.dim];
                for h in 0..self.heads {
                    let kvh = h / group;
                    let q = &qs[i][h * hd..(h + 1) * hd];
                    let scores: Vec<f64> = (0..=i)
                        .map(|j| {
                            let k = &ks[j][kvh * hd..(kvh + 1) * hd];
                            q.iter()
                                .zip(k)
                                .map(|(a, b)| (*a as f64) * (*b as f64))
                                .sum::<f64>()
                                / (hd as f64).sqrt()
                        })
                        .collect();
                    let m = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    let e: Vec<f64> = scores.iter().map(|s| (s - m).exp()).collect();
                    let z: f64 = e.iter().sum();
                    for (j, w) in e.iter().enumerate() {
                        let v = &vs[j][kvh * hd..(kvh + 1) * hd];
                        for d in 0..hd {
                            o[h * hd + d] += (w / z * v[d] as f64) as f32;
                        }
                    }
                }
                let proj = l.wo.apply(&o);
                for (a, b) in x.iter_mut().zip(proj) {
                    *a += b;
                }
                let h = self.rms_norm(x, &l.ffn_norm);
                let g = l.gate.apply(&h);
                let u = l.up.apply(&h);
                let act: Vec<f32> = g
                    .iter()
                    .zip(&u)
                    .map(|(g, u)| g / (1.0 + (-g).exp()) * u)
                    .collect();
                let d = l.down.apply(&act);
                for (a, b) in x.iter_mut().zip(d) {
                    *a += b;
                }
            }
        }
        xs.iter()
            .map(|x| self.output.apply(&self.rms_norm(x, &self.norm)))
            .collect()
    }
}

/// `log_softmax` of a logit row.
pub fn log_softmax(x: &[f32]) -> Vec<f32> {
    let m = x.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
    let z: f64 = x.iter().map(|v| (*v as f64 - m).exp()).sum::<f64>().ln() + m;
    x.iter().map(|v| (*v as f64 - z) as f32).collect()
}
