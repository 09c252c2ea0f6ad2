//! Attention of one row over a shared prefix plus its own keys, merged with one softmax (cascade).
//!
//! The prefix KV is never copied per row: each row's queries multiply the one shared prefix tensor.
//! The row part (its own tokens, and for the label pass the document's cached keys) carries the
//! causal/tree mask. The two partial softmaxes are merged exactly through a shared maximum, so the
//! result equals attention over the concatenated keys. Rows are attended one at a time over exactly
//! their real keys: a row's arithmetic has the same shapes alone or in any batch, so its scores do
//! not depend on what it is batched with (even through 8-bit activation rounding downstream).
//!
//! On the CPU, [`super::attention_cpu`] computes the same head by head on the thread pool with one
//! fused softmax; other devices use candle's ops here.

use candle_core::{Result, Tensor, D};

pub use super::attention_input::AttentionInput;

/// Returns the attention output token-major, `[t, n_heads · head_dim]` (query head `h` at columns
/// `h · head_dim..`): the rows the output projection multiplies.
pub fn attend(inp: &AttentionInput) -> Result<Tensor> {
    if inp.q.device().is_cpu() {
        return super::attention_cpu::attend(inp);
    }
    token_major(&attend_candle(inp)?, inp.group)
}

/// `[1, n_kv_heads, g · t, head_dim]` (query head `h · g + j` at rows `j · t..`) as `[t, n_heads ·
/// head_dim]`.
fn token_major(o: &Tensor, group: usize) -> Result<Tensor> {
    let (_, n_kv, gt, hd) = o.dims4()?;
    let t = gt / group;
    o.reshape((n_kv * group, t, hd))?
        .transpose(0, 1)?
        .reshape((t, n_kv * group * hd))
}

/// Any device: candle's ops, the two partial softmaxes merged through a shared maximum.
fn attend_candle(inp: &AttentionInput) -> Result<Tensor> {
    let (b, n_kv, gt, hd) = inp.q.dims4()?;
    let t = gt / inp.group;
    let s = inp.rows.k.dim(2)?;
    let scale = 1.0 / (hd as f64).sqrt();

    // The row's scores with the mask applied per query position (broadcast over the head group).
    let rows_scores = (inp.q.matmul(&inp.rows.k.t()?)? * scale)?
        .reshape((b, n_kv, inp.group, t, s))?
        .broadcast_add(inp.mask)?
        .reshape((b, n_kv, gt, s))?;
    let rows_max = rows_scores.max_keepdim(D::Minus1)?;

    let Some(shared) = inp.shared else {
        let e = rows_scores.broadcast_sub(&rows_max)?.exp()?;
        let sum = e.sum_keepdim(D::Minus1)?;
        return e.matmul(&inp.rows.v)?.broadcast_div(&sum);
    };
    let pre_scores = (inp.q.matmul(&shared.k.t()?)? * scale)?;
    let m = rows_max.maximum(&pre_scores.max_keepdim(D::Minus1)?)?;
    let e_rows = rows_scores.broadcast_sub(&m)?.exp()?;
    let e_pre = pre_scores.broadcast_sub(&m)?.exp()?;
    let sum = (e_rows.sum_keepdim(D::Minus1)? + e_pre.sum_keepdim(D::Minus1)?)?;
    let out = (e_rows.matmul(&inp.rows.v)? + e_pre.matmul(&shared.v)?)?;
    out.broadcast_div(&sum)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::kv::LayerKv;
    use candle_core::{DType, Device};

    /// Cascade attention equals plain softmax attention over the concatenated keys.
    #[test]
    fn cascade_equals_concatenated_softmax() -> Result<()> {
        let dev = Device::Cpu;
        let (n_kv, g, t, p, hd) = (2, 2, 4, 5, 8);
        let q = Tensor::randn(0f32, 1.0, (1, n_kv, g * t, hd), &dev)?;
        let kv = |n: usize| -> Result<LayerKv> {
            Ok(LayerKv {
                k: Tensor::randn(0f32, 1.0, (1, n_kv, n, hd), &dev)?,
                v: Tensor::randn(0f32, 1.0, (1, n_kv, n, hd), &dev)?,
            })
        };
        let (shared, rows) = (kv(p)?, kv(t)?);
        let mask = crate::engine::mask::causal(t, &dev)?;
        let got = attend(&AttentionInput {
            q: &q,
            shared: Some(&shared),
            rows: &rows,
            mask: &mask,
            group: g,
        })?;

        // Reference: concatenate prefix and row keys, one softmax.
        let k = Tensor::cat(&[&shared.k, &rows.k], 2)?;
        let v = Tensor::cat(&[&shared.v, &rows.v], 2)?;
        let full_mask = Tensor::cat(&[&Tensor::zeros((t, p), DType::F32, &dev)?, &mask], 1)?;
        let scores = (q.matmul(&k.t()?)? / (hd as f64).sqrt())?
            .reshape((1, n_kv, g, t, p + t))?
            .broadcast_add(&full_mask)?
            .reshape((1, n_kv, g * t, p + t))?;
        let want = token_major(&candle_nn::ops::softmax_last_dim(&scores)?.matmul(&v)?, g)?;
        assert_eq!(got.dims(), &[t, n_kv * g * hd]);
        let diff = (&got - &want)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(diff < 1e-5, "max abs diff {diff}");
        // The device-independent path gives the same.
        let other = attend_candle(&AttentionInput {
            q: &q,
            shared: Some(&shared),
            rows: &rows,
            mask: &mask,
            group: g,
        })?;
        let diff = (token_major(&other, g)? - want)?
            .abs()?
            .max_all()?
            .to_scalar::<f32>()?;
        assert!(diff < 1e-5, "candle path: max abs diff {diff}");
        Ok(())
    }
}
