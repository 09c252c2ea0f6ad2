//! The LLaMA 2 forward pass with explicit state: caches and masks go in as values, new KV comes out.

use std::ops::Range;

use candle_core::quantized::QTensor;
use candle_core::{DType, Device, Result, Tensor};

use super::attention::{attend, AttentionInput};
use super::kv::{KvCache, LayerKv};
use super::layer_ops::{swiglu, to_heads, Norm};
use super::load::{GgufFile, Hparams, LoadError};
use super::lora::ActiveLora;
use super::matmul::{Linear, WeightFormat};

struct Block {
    attn_norm: Norm,
    wq: Linear,
    wk: Linear,
    wv: Linear,
    wo: Linear,
    ffn_norm: Norm,
    w_gate: Linear,
    w_up: Linear,
    w_down: Linear,
}

/// Precomputed rotary tables `[context_length, head_dim / 2]`.
pub(crate) struct Rope {
    cos: Tensor,
    sin: Tensor,
}

/// One forward step over a packed batch: the rows' tokens are concatenated, no padding.
pub struct Step<'a> {
    /// Token ids of all rows, concatenated `[n]` (u32).
    pub tokens: &'a Tensor,
    /// Absolute position of every token `[n]` (u32), for the rotary embedding.
    pub positions: &'a Tensor,
    /// Each row's span in `tokens`.
    pub rows: &'a [Range<usize>],
    /// A prefix every row continues (one sequence), read-only.
    pub shared: Option<&'a KvCache>,
    /// Keys from an earlier packed pass and each row's span in it, placed before the row's own keys.
    pub context: Option<(&'a KvCache, &'a [Range<usize>])>,
    /// One additive mask per row, `[len, ctx_len + len]`.
    pub masks: &'a [Tensor],
    /// Return this step's keys and values (for a later pass that continues these rows).
    pub keep_kv: bool,
    /// A LoRA adapter added to the projections it targets.
    pub lora: Option<&'a ActiveLora>,
}

/// What a step produces.
pub struct StepOutput {
    /// Final hidden states before the output norm, `[n, dim]`.
    pub hidden: Tensor,
    /// This step's keys and values `[1, n_kv_heads, n, head_dim]` per layer, when asked for.
    pub kv: Option<KvCache>,
}

/// LLaMA weights loaded from GGUF.
pub struct Llama {
    hp: Hparams,
    device: Device,
    tok_embd: QTensor,
    blocks: Vec<Block>,
    norm: Norm,
    output: Linear,
    rope: Rope,
}

impl Llama {
    /// Reads every tensor of `file` onto `device`, projections held as `weights` says.
    pub fn load(
        file: &mut GgufFile,
        device: &Device,
        weights: WeightFormat,
    ) -> std::result::Result<Self, LoadError> {
        let hp = file.hparams.clone();
        let (dim, hd, kvd) = (hp.dim, hp.head_dim(), hp.n_kv_heads * hp.head_dim());
        let candle_err = |path: &std::path::Path| {
            let path = path.to_path_buf();
            move |source| LoadError::Candle {
                path: path.clone(),
                source,
            }
        };
        let path = file.path().to_path_buf();
        let lin_as = |f: &mut GgufFile,
                      name: String,
                      shape: [usize; 2],
                      format: WeightFormat|
         -> std::result::Result<Linear, LoadError> {
            let t = f.tensor(&name, &shape, device)?;
            Linear::with_format(t, format).map_err(candle_err(&path))
        };
        let lin =
            |f: &mut GgufFile, name: String, shape: [usize; 2]| lin_as(f, name, shape, weights);
        let norm = |f: &mut GgufFile, name: String| -> std::result::Result<Norm, LoadError> {
            let t = f.tensor(&name, &[dim], device)?;
            Norm::from_qtensor(t, hp.rms_eps).map_err(candle_err(&path))
        };
        let tok_embd = file.tensor("token_embd.weight", &[hp.vocab_size, dim], device)?;
        let mut blocks = Vec::with_capacity(hp.n_layers);
        for i in 0..hp.n_layers {
            let p = format!("blk.{i}");
            blocks.push(Block {
                attn_norm: norm(file, format!("{p}.attn_norm.weight"))?,
                wq: lin(file, format!("{p}.attn_q.weight"), [dim, dim])?,
                wk: lin(file, format!("{p}.attn_k.weight"), [kvd, dim])?,
                wv: lin(file, format!("{p}.attn_v.weight"), [kvd, dim])?,
                wo: lin(file, format!("{p}.attn_output.weight"), [dim, dim])?,
                ffn_norm: norm(file, format!("{p}.ffn_norm.weight"))?,
                w_gate: lin(file, format!("{p}.ffn_gate.weight"), [hp.ffn_dim, dim])?,
                w_up: lin(file, format!("{p}.ffn_up.weight"), [hp.ffn_dim, dim])?,
                w_down: lin(file, format!("{p}.ffn_down.weight"), [dim, hp.ffn_dim])?,
            });
        }
        let norm_w = norm(file, "output_norm.weight".into())?;
        // Models with tied embeddings ship no output matrix: the embedding doubles as the LM head.
        let out_name = if file.has_tensor("output.weight") {
            "output.weight"
        } else {
            "token_embd.weight"
        };
        // The head stays quantised in every weight format: it runs only at the scored positions (a
        // few rows a document), and a dense bf16 product would round the logits to 8 significant
        // bits (±0.04 at a logit of 20), straight into the label log-probabilities.
        let output = lin_as(
            file,
            out_name.into(),
            [hp.vocab_size, dim],
            WeightFormat::Quantized,
        )?;
        let rope = Rope::new(&hp, hd, device).map_err(candle_err(&path))?;
        Ok(Self {
            hp,
            device: device.clone(),
            tok_embd,
            blocks,
            norm: norm_w,
            output,
            rope,
        })
    }

    /// Hyper-parameters.
    pub fn hparams(&self) -> &Hparams {
        &self.hp
    }

    /// The device the weights live on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Runs every block over `step` and returns the final hidden states (and KV when asked).
    pub fn forward(&self, step: &Step) -> Result<StepOutput> {
        let (hd, n_kv, n_heads) = (self.hp.head_dim(), self.hp.n_kv_heads, self.hp.n_heads);
        let mut x = self.tok_embd.embedding(step.tokens)?;
        let (cos, sin) = self.rope.at(step.positions)?;
        let masks: Vec<Tensor> = step
            .masks
            .iter()
            .map(|m| m.unsqueeze(0)?.unsqueeze(0)?.unsqueeze(0))
            .collect::<Result<_>>()?;
        let mut kept = Vec::with_capacity(if step.keep_kv { self.blocks.len() } else { 0 });
        // Each block's input norm comes fused with the residual add that ends the block before.
        let mut h = match self.blocks.first() {
            Some(b) => b.attn_norm.forward(&x)?,
            None => x.clone(),
        };
        for (i, blk) in self.blocks.iter().enumerate() {
            let lora = step.lora;
            let [q, k, v]: [Tensor; 3] = Linear::forward_many(&[&blk.wq, &blk.wk, &blk.wv], &h)?
                .try_into()
                .expect("three products");
            let q = ActiveLora::add(lora, i, 0, &h, q)?;
            let k = ActiveLora::add(lora, i, 1, &h, k)?;
            let v = ActiveLora::add(lora, i, 2, &h, v)?;
            // [n, heads * hd] -> [1, heads, n, hd]: query head h pairs with kv head h / group.
            let q = to_heads(&q, n_heads, hd, Some((&cos, &sin)))?;
            let k = to_heads(&k, n_kv, hd, Some((&cos, &sin)))?;
            let v = to_heads(&v, n_kv, hd, None)?;
            let kv = LayerKv { k, v };
            let outs = self.attend_rows(step, i, &q, &kv, &masks)?;
            // Each row's output is token-major already: rows in order are the layer's rows.
            let o = match outs.as_slice() {
                [one] => one.clone(),
                _ => Tensor::cat(&outs, 0)?,
            };
            let attn = ActiveLora::add(lora, i, 3, &o, blk.wo.forward(&o)?)?;
            let (x_mid, h_ffn) = blk.ffn_norm.add_forward(&x, &attn)?;
            let gated = if ActiveLora::targets(lora, i, 4) || ActiveLora::targets(lora, i, 5) {
                // One pass over the input for both products, as the fused SwiGLU does.
                let [gate, up]: [Tensor; 2] =
                    Linear::forward_many(&[&blk.w_gate, &blk.w_up], &h_ffn)?
                        .try_into()
                        .expect("two products");
                let gate = ActiveLora::add(lora, i, 4, &h_ffn, gate)?;
                let up = ActiveLora::add(lora, i, 5, &h_ffn, up)?;
                swiglu(&gate, &up)?
            } else {
                Linear::forward_swiglu(&blk.w_gate, &blk.w_up, &h_ffn)?
            };
            let down = ActiveLora::add(lora, i, 6, &gated, blk.w_down.forward(&gated)?)?;
            match self.blocks.get(i + 1) {
                Some(next) => (x, h) = next.attn_norm.add_forward(&x_mid, &down)?,
                None => x = (x_mid + down)?,
            }
            if step.keep_kv {
                kept.push(kv);
            }
        }
        let kv = step.keep_kv.then_some(KvCache { layers: kept });
        Ok(StepOutput { hidden: x, kv })
    }

    /// Attention of every row of `step` in block `i`: `[len, n_heads · hd]` per row.
    fn attend_rows(
        &self,
        step: &Step,
        i: usize,
        q: &Tensor,
        kv: &LayerKv,
        masks: &[Tensor],
    ) -> Result<Vec<Tensor>> {
        let (hd, n_kv, n_heads) = (self.hp.head_dim(), self.hp.n_kv_heads, self.hp.n_heads);
        let group = n_heads / n_kv;
        let shared = step.shared.map(|s| &s.layers[i]);
        let mut outs = Vec::with_capacity(step.rows.len());
        for (r, (span, mask)) in step.rows.iter().zip(masks).enumerate() {
            let len = span.len();
            let own = |x: &Tensor| x.narrow(2, span.start, len)?.contiguous();
            let mut rows = LayerKv {
                k: own(&kv.k)?,
                v: own(&kv.v)?,
            };
            if let Some((ctx, spans)) = step.context {
                let c = &ctx.layers[i];
                let cs = &spans[r];
                let ctx_part = |x: &Tensor| x.narrow(2, cs.start, cs.len())?.contiguous();
                // [context | own]: the keys in the order one pass over the whole prompt and
                // the label would hold them, so both paths sum alike.
                rows = LayerKv {
                    k: Tensor::cat(&[&ctx_part(&c.k)?, &rows.k], 2)?,
                    v: Tensor::cat(&[&ctx_part(&c.v)?, &rows.v], 2)?,
                };
            }
            let q_r = own(q)?.reshape((1, n_kv, group * len, hd))?;
            let o = attend(&AttentionInput {
                q: &q_r,
                shared,
                rows: &rows,
                mask,
                group,
            })?;
            outs.push(o);
        }
        Ok(outs)
    }

    /// Logits over the full vocabulary at selected token indices of `hidden` (`[n, dim]`): only
    /// these positions go through the output norm and the LM head.
    pub fn logits_at(&self, hidden: &Tensor, indices: &[u32]) -> Result<Tensor> {
        let idx = Tensor::from_slice(indices, indices.len(), &self.device)?;
        let h = hidden.index_select(&idx, 0)?;
        self.output
            .forward(&self.norm.forward(&h)?)?
            .to_dtype(DType::F32)
    }

    /// `log_softmax` of [`Self::logits_at`].
    pub fn log_probs_at(&self, hidden: &Tensor, indices: &[u32]) -> Result<Tensor> {
        candle_nn::ops::log_softmax(&self.logits_at(hidden, indices)?, 1)
    }
}

impl Rope {
    pub(crate) fn new(hp: &Hparams, hd: usize, device: &Device) -> Result<Self> {
        let inv: Vec<f32> = (0..hd / 2)
            .map(|i| 1.0 / hp.rope_freq_base.powf(2.0 * i as f32 / hd as f32))
            .collect();
        let n = hp.context_length;
        let mut cos = Vec::with_capacity(n * hd / 2);
        let mut sin = Vec::with_capacity(n * hd / 2);
        for pos in 0..n {
            for f in &inv {
                let a = pos as f32 * f;
                cos.push(a.cos());
                sin.push(a.sin());
            }
        }
        Ok(Self {
            cos: Tensor::from_vec(cos, (n, hd / 2), device)?,
            sin: Tensor::from_vec(sin, (n, hd / 2), device)?,
        })
    }

    /// Tables for positions `[n]`, shaped `[n, hd / 2]`.
    pub(crate) fn at(&self, positions: &Tensor) -> Result<(Tensor, Tensor)> {
        Ok((
            self.cos.index_select(positions, 0)?,
            self.sin.index_select(positions, 0)?,
        ))
    }
}
