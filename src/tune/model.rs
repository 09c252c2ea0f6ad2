//! The LLaMA forward `tune` differentiates: the base weights dequantised once and frozen, a LoRA
//! pair per targeted projection as trainable variables, applied as serving applies an adapter
//! (`W·x + (alpha / rank) · B(A·x)`), and the task's label scoring (label-trie log-probabilities).

use candle_core::{DType, Device, Result, Tensor, Var};
use rand::{Rng, SeedableRng};

use crate::engine::llama::Rope;
use crate::engine::load::{GgufFile, Hparams, LoadError};
use crate::engine::lora::{projection_shape, TARGETS};

use super::batch::{causal, Rows};
use super::frozen::frozen_matmul;

/// Which projections get a LoRA pair, and its size.
#[derive(Debug, Clone)]
pub struct LoraShape {
    /// Rank of every pair.
    pub rank: usize,
    /// `alpha` (the delta is scaled by `alpha / rank`).
    pub alpha: f32,
    /// Indices into [`TARGETS`].
    pub targets: Vec<usize>,
    /// Blocks that get pairs (the last ones when fewer than all).
    pub layers: std::ops::Range<usize>,
}

/// One block's frozen weights: norms and the projections in [`TARGETS`] order.
struct Block {
    attn_norm: Tensor,
    ffn_norm: Tensor,
    w: [Tensor; 7],
}

/// Trainable pairs: `a` `[rank, in]` and `b` `[out, rank]` per block and projection.
pub struct LoraVars {
    /// The shape they were made with.
    pub shape: LoraShape,
    /// `pairs[block][TARGETS index]`.
    pub pairs: Vec<[Option<(Var, Var)>; 7]>,
}

impl LoraVars {
    /// Every trainable variable, for the optimiser.
    pub fn vars(&self) -> Vec<Var> {
        self.pairs
            .iter()
            .flat_map(|b| b.iter().flatten())
            .flat_map(|(a, b)| [a.clone(), b.clone()])
            .collect()
    }
}

/// The base model in f32 and the adapter being trained.
pub struct TrainModel {
    hp: Hparams,
    device: Device,
    embd: Tensor,
    head: Tensor,
    norm: Tensor,
    blocks: Vec<Block>,
    rope: Rope,
    /// The adapter being trained.
    pub lora: LoraVars,
}

impl TrainModel {
    /// Dequantises every weight of `file` onto `device` and makes fresh pairs of `shape`
    /// (`A` uniform in ±1/√in, `B` zero, so training starts from the base model).
    pub fn load(
        file: &mut GgufFile,
        device: &Device,
        shape: LoraShape,
        seed: u64,
    ) -> std::result::Result<Self, LoadError> {
        let hp = file.hparams.clone();
        let path = file.path().to_path_buf();
        let candle = |source| LoadError::Candle {
            path: path.clone(),
            source,
        };
        let tied = !file.has_tensor("output.weight");
        let mut dense = |name: &str, dims: &[usize]| -> std::result::Result<Tensor, LoadError> {
            let q = file.tensor(name, dims, device)?;
            q.dequantize(device).map_err(candle)
        };
        let dim = hp.dim;
        let mut blocks = Vec::with_capacity(hp.n_layers);
        for i in 0..hp.n_layers {
            let mut ws = Vec::with_capacity(TARGETS.len());
            for (t, name) in TARGETS.iter().enumerate() {
                let (o, n) = projection_shape(&hp, t);
                ws.push(dense(&format!("blk.{i}.{name}.weight"), &[o, n])?);
            }
            blocks.push(Block {
                attn_norm: dense(&format!("blk.{i}.attn_norm.weight"), &[dim])?,
                ffn_norm: dense(&format!("blk.{i}.ffn_norm.weight"), &[dim])?,
                w: ws.try_into().expect("seven projections"),
            });
        }
        let embd = dense("token_embd.weight", &[hp.vocab_size, dim])?;
        let head = if tied {
            embd.clone()
        } else {
            dense("output.weight", &[hp.vocab_size, dim])?
        };
        let norm = dense("output_norm.weight", &[dim])?;
        let rope = Rope::new(&hp, hp.head_dim(), device).map_err(candle)?;
        let lora = fresh_pairs(&hp, shape, seed, device).map_err(candle)?;
        Ok(Self {
            hp,
            device: device.clone(),
            embd,
            head,
            norm,
            blocks,
            rope,
            lora,
        })
    }

    /// The device the weights live on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Query heads per key-value head.
    pub fn group(&self) -> usize {
        self.hp.n_heads / self.hp.n_kv_heads
    }

    /// Vocabulary size.
    pub fn vocab(&self) -> usize {
        self.hp.vocab_size
    }

    /// Keys and values `[1, kv_heads, n, head_dim]` per block of a prefix run alone.
    pub fn prefix(&self, ids: &[u32]) -> Result<Vec<(Tensor, Tensor)>> {
        let n = ids.len();
        let tokens = Tensor::from_slice(ids, n, &self.device)?;
        let positions: Vec<u32> = (0..n as u32).collect();
        let positions = Tensor::from_vec(positions, n, &self.device)?;
        let mask = causal(n, self.group(), &self.device)?;
        let mut x = self.embd.index_select(&tokens, 0)?;
        let mut kv = Vec::with_capacity(self.blocks.len());
        let (cos, sin) = self.rope_at(&positions, n)?;
        for i in 0..self.blocks.len() {
            let (y, layer_kv) = self.block(i, &x, n, (&cos, &sin), None, &mask)?;
            x = y;
            kv.push(layer_kv);
        }
        Ok(kv)
    }

    /// Each row's label log-probabilities `[b, labels]` (sums over the label's tokens), on top of
    /// `prefix` (from [`Self::prefix`]; empty for a task without one).
    pub fn label_log_probs(&self, prefix: &[(Tensor, Tensor)], rows: &Rows) -> Result<Tensor> {
        let mut x = self.embd.index_select(&rows.tokens, 0)?;
        let (cos, sin) = self.rope_at(&rows.positions, rows.n)?;
        for i in 0..self.blocks.len() {
            let past = prefix.get(i);
            x = self.block(i, &x, rows.n, (&cos, &sin), past, &rows.mask)?.0;
        }
        let h = x.index_select(&rows.scored, 0)?;
        let h = candle_nn::ops::rms_norm_slow(&h, &self.norm, self.hp.rms_eps as f32)?;
        let lsm = candle_nn::ops::log_softmax(&frozen_matmul(&h, &self.head)?, 1)?;
        let flat = Tensor::cat(
            &[
                &lsm.flatten_all()?,
                &Tensor::zeros(1, DType::F32, &self.device)?,
            ],
            0,
        )?;
        flat.index_select(&rows.gather, 0)?
            .reshape((rows.b, rows.labels, rows.depth))?
            .sum(2)
    }

    /// Rotary tables for `positions` `[n]`, shaped `[1, 1, n, head_dim / 2, 1]`.
    fn rope_at(&self, positions: &Tensor, n: usize) -> Result<(Tensor, Tensor)> {
        let (cos, sin) = self.rope.at(positions)?;
        let half = self.hp.head_dim() / 2;
        Ok((
            cos.reshape((1, 1, n, half, 1))?,
            sin.reshape((1, 1, n, half, 1))?,
        ))
    }

    /// Projection `t` of block `i` with its LoRA delta, for `x` `[n, in]`.
    fn proj(&self, i: usize, t: usize, x: &Tensor) -> Result<Tensor> {
        let y = frozen_matmul(x, &self.blocks[i].w[t])?;
        match &self.lora.pairs[i][t] {
            Some((a, bm)) => {
                let over = f64::from(self.lora.shape.alpha) / self.lora.shape.rank as f64;
                let d = x.matmul(&a.as_tensor().t()?)?;
                y + (d.matmul(&bm.as_tensor().t()?)? * over)?
            }
            None => Ok(y),
        }
    }

    /// One block over the `n` packed tokens `x` `[n, dim]` (one sequence: rows are told apart by
    /// the mask): the new hidden states and this block's keys and values.
    fn block(
        &self,
        i: usize,
        x: &Tensor,
        n: usize,
        (cos, sin): (&Tensor, &Tensor),
        past: Option<&(Tensor, Tensor)>,
        mask: &Tensor,
    ) -> Result<(Tensor, (Tensor, Tensor))> {
        let (hd, kvh, nh) = (self.hp.head_dim(), self.hp.n_kv_heads, self.hp.n_heads);
        let eps = self.hp.rms_eps as f32;
        let blk = &self.blocks[i];
        let h = candle_nn::ops::rms_norm_slow(x, &blk.attn_norm, eps)?;
        let heads = |y: Tensor, h: usize| y.reshape((1, n, h, hd))?.transpose(1, 2)?.contiguous();
        let q = rope(&heads(self.proj(i, 0, &h)?, nh)?, cos, sin)?;
        let k = rope(&heads(self.proj(i, 1, &h)?, kvh)?, cos, sin)?;
        let v = heads(self.proj(i, 2, &h)?, kvh)?;
        let (k_all, v_all) = match past {
            Some((pk, pv)) => (
                Tensor::cat(&[pk, &k], 2)?.contiguous()?,
                Tensor::cat(&[pv, &v], 2)?.contiguous()?,
            ),
            None => (k.clone(), v.clone()),
        };
        // Query head h pairs with key-value head h / group: [1, kvh, group * n, hd].
        let q = q.reshape((1, kvh, (nh / kvh) * n, hd))?;
        let att = (q.matmul(&k_all.t()?)? * (1.0 / (hd as f64).sqrt()))?;
        // candle's fused `softmax_last_dim` has no backward pass: the composed softmax has.
        let att = candle_nn::ops::softmax(&att.broadcast_add(mask)?, candle_core::D::Minus1)?;
        let o = att
            .matmul(&v_all)?
            .reshape((1, nh, n, hd))?
            .transpose(1, 2)?
            .reshape((n, nh * hd))?;
        let x = (x + self.proj(i, 3, &o)?)?;
        let h = candle_nn::ops::rms_norm_slow(&x, &blk.ffn_norm, eps)?;
        let gated = (candle_nn::ops::silu(&self.proj(i, 4, &h)?)? * self.proj(i, 5, &h)?)?;
        let x = (&x + self.proj(i, 6, &gated)?)?;
        Ok((x, (k, v)))
    }
}

/// Interleaved rotary embedding (pairs `2j, 2j+1`, as GGUF LLaMA weights expect) of `x`
/// `[b, heads, l, hd]` with tables `[b, 1, l, hd / 2, 1]`, from differentiable operations.
fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let (b, nh, l, hd) = x.dims4()?;
    let x = x.reshape((b, nh, l, hd / 2, 2))?;
    let (x0, x1) = (x.narrow(4, 0, 1)?, x.narrow(4, 1, 1)?);
    let y0 = (x0.broadcast_mul(cos)? - x1.broadcast_mul(sin)?)?;
    let y1 = (x0.broadcast_mul(sin)? + x1.broadcast_mul(cos)?)?;
    Tensor::cat(&[&y0, &y1], 4)?.reshape((b, nh, l, hd))
}

/// Fresh pairs of `shape` for a model with `hp`: `A` uniform in ±1/√in (seeded), `B` zero.
fn fresh_pairs(hp: &Hparams, shape: LoraShape, seed: u64, device: &Device) -> Result<LoraVars> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut pairs: Vec<[Option<(Var, Var)>; 7]> =
        (0..hp.n_layers).map(|_| Default::default()).collect();
    for layer in shape.layers.clone() {
        for &t in &shape.targets {
            let (out, inp) = projection_shape(hp, t);
            let bound = 1.0 / (inp as f32).sqrt();
            let a: Vec<f32> = (0..shape.rank * inp)
                .map(|_| rng.random_range(-bound..bound))
                .collect();
            let a = Var::from_tensor(&Tensor::from_vec(a, (shape.rank, inp), device)?)?;
            let b = Var::zeros((out, shape.rank), DType::F32, device)?;
            pairs[layer][t] = Some((a, b));
        }
    }
    Ok(LoraVars { shape, pairs })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rope_matches_candles_interleaved_kernel() {
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 1.0, (1, 2, 3, 8), &dev).unwrap();
        let cos = Tensor::randn(0f32, 1.0, (3, 4), &dev).unwrap();
        let sin = Tensor::randn(0f32, 1.0, (3, 4), &dev).unwrap();
        let want = candle_nn::rotary_emb::rope_i(&x, &cos, &sin).unwrap();
        let got = rope(
            &x,
            &cos.reshape((1, 1, 3, 4, 1)).unwrap(),
            &sin.reshape((1, 1, 3, 4, 1)).unwrap(),
        )
        .unwrap();
        let d = (want - got)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(d < 1e-6, "max difference {d}");
    }
}
