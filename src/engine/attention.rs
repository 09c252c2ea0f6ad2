//! Attention over a shared prefix plus per-row keys, merged with one softmax (cascade attention).
//!
//! The prefix KV (batch 1) is never copied per row: all queries of the batch are stacked and
//! multiplied against it at once. The per-row part (the row's own tokens, and for the label pass the
//! document's cached keys) carries the padding/causal mask. The two partial softmaxes are merged
//! exactly with a shared running maximum, so the result equals attention over the concatenation.

use candle_core::{Result, Tensor, D};

use super::kv::LayerKv;

/// Attention inputs for one layer. Shapes use `g = n_heads / n_kv_heads` (query heads per kv head).
pub struct AttentionInput<'a> {
    /// Queries `[b, n_kv_heads, g * t, head_dim]` (query head `h` belongs to kv head `h / g`).
    pub q: &'a Tensor,
    /// The shared prefix, `[1, n_kv_heads, p, head_dim]`, visible to every query; `None` when `p = 0`.
    pub shared: Option<&'a LayerKv>,
    /// Per-row keys and values `[b, n_kv_heads, s, head_dim]`.
    pub rows: &'a LayerKv,
    /// Additive mask `[b, 1, 1, t, s]` over the per-row keys (0 = visible, -inf = hidden).
    pub mask: &'a Tensor,
    /// Query heads per kv head.
    pub group: usize,
}

/// Returns the attention output `[b, n_kv_heads, g * t, head_dim]`.
pub fn attend(inp: &AttentionInput) -> Result<Tensor> {
    let (b, n_kv, gt, hd) = inp.q.dims4()?;
    let t = gt / inp.group;
    let s = inp.rows.k.dim(2)?;
    let scale = 1.0 / (hd as f64).sqrt();

    // Per-row scores with the mask applied per query position (broadcast over the head group).
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

    // Every query of the batch against the one prefix: [n_kv, b * g * t, hd] x [n_kv, hd, p].
    let q_stacked = inp.q.transpose(0, 1)?.contiguous()?.reshape((n_kv, b * gt, hd))?;
    let pk = shared.k.squeeze(0)?;
    let pv = shared.v.squeeze(0)?;
    let pre_scores = (q_stacked.matmul(&pk.t()?)? * scale)?;
    let pre_max = to_rows_layout(&pre_scores.max_keepdim(D::Minus1)?, b)?;

    let m = rows_max.maximum(&pre_max)?;
    let e_rows = rows_scores.broadcast_sub(&m)?.exp()?;
    let m_stacked = m.transpose(0, 1)?.contiguous()?.reshape((n_kv, b * gt, 1))?;
    let e_pre = pre_scores.broadcast_sub(&m_stacked)?.exp()?;

    let sum = (e_rows.sum_keepdim(D::Minus1)? + to_rows_layout(&e_pre.sum_keepdim(D::Minus1)?, b)?)?;
    let out = (e_rows.matmul(&inp.rows.v)? + to_rows_layout(&e_pre.matmul(&pv)?, b)?)?;
    out.broadcast_div(&sum)
}

/// `[n_kv, b * gt, x]` (queries stacked for the prefix product) back to `[b, n_kv, gt, x]`.
fn to_rows_layout(stacked: &Tensor, b: usize) -> Result<Tensor> {
    let (n_kv, bgt, x) = stacked.dims3()?;
    stacked.reshape((n_kv, b, bgt / b, x))?.transpose(0, 1)?.contiguous()
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    /// Cascade attention equals plain softmax attention over the concatenated keys.
    #[test]
    fn cascade_equals_concatenated_softmax() -> Result<()> {
        let dev = Device::Cpu;
        let (b, n_kv, g, t, p, hd) = (3, 2, 2, 4, 5, 8);
        let q = Tensor::randn(0f32, 1.0, (b, n_kv, g * t, hd), &dev)?;
        let shared = LayerKv {
            k: Tensor::randn(0f32, 1.0, (1, n_kv, p, hd), &dev)?,
            v: Tensor::randn(0f32, 1.0, (1, n_kv, p, hd), &dev)?,
        };
        let rows = LayerKv {
            k: Tensor::randn(0f32, 1.0, (b, n_kv, t, hd), &dev)?,
            v: Tensor::randn(0f32, 1.0, (b, n_kv, t, hd), &dev)?,
        };
        let lens = [4usize, 2, 1];
        let mask = crate::engine::mask::causal_padding(&lens, t, &dev)?.unsqueeze(1)?.unsqueeze(1)?;
        let got = attend(&AttentionInput { q: &q, shared: Some(&shared), rows: &rows, mask: &mask, group: g })?;

        // Reference: broadcast the prefix to every row, concatenate, one softmax.
        let k = Tensor::cat(&[&shared.k.repeat((b, 1, 1, 1))?, &rows.k], 2)?;
        let v = Tensor::cat(&[&shared.v.repeat((b, 1, 1, 1))?, &rows.v], 2)?;
        let full_mask = Tensor::cat(&[&Tensor::zeros((b, 1, 1, t, p), DType::F32, &dev)?, &mask], 4)?;
        let scores = (q.matmul(&k.t()?)? / (hd as f64).sqrt())?
            .reshape((b, n_kv, g, t, p + t))?
            .broadcast_add(&full_mask)?
            .reshape((b, n_kv, g * t, p + t))?;
        let want = candle_nn::ops::softmax_last_dim(&scores)?.matmul(&v)?;
        let diff = (got - want)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(diff < 1e-5, "max abs diff {diff}");
        Ok(())
    }
}
