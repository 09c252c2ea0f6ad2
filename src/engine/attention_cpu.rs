//! Attention of one row on the CPU, head by head on candle's thread pool.
//!
//! For each kv head: the scores against the shared prefix and against the row's own keys are
//! written side by side into one buffer (two `gemm` products, no concatenation of keys), the row
//! part gets its mask, one fused scaled softmax runs over the whole row, and one value product
//! over the prefix and row values side by side (copied per head: 1% of the time, and it makes a
//! cached row sum exactly as the same prompt run whole would). Heads are independent, so the
//! pool's threads split them; nothing inside calls back into candle.

use candle_core::{CpuStorage, Layout, Result, Storage, Tensor};

use super::attention::AttentionInput;
use super::qgemm::{Isa, SharedMut};
use super::softmax::softmax_row;

/// A contiguous CPU f32 tensor's values.
fn values<'a>(storage: &'a Storage, layout: &Layout) -> Result<&'a [f32]> {
    match (storage, layout.contiguous_offsets()) {
        (Storage::Cpu(CpuStorage::F32(v)), Some((a, b))) => Ok(&v[a..b]),
        _ => candle_core::bail!("CPU attention takes contiguous f32 tensors on the CPU"),
    }
}

/// `out = lhs · rhs` (`read_dst = false`) or `out += lhs · rhs`, single-threaded. Strides are in
/// elements as (column, row) pairs; `m × k` times `k × n`.
#[allow(clippy::too_many_arguments)]
fn product(
    (m, n, k): (usize, usize, usize),
    dst: &mut [f32],
    dst_rs: usize,
    accumulate: bool,
    lhs: &[f32],
    lhs_rs: usize,
    rhs: &[f32],
    (rhs_cs, rhs_rs): (usize, usize),
) {
    debug_assert!(dst.len() >= (m - 1) * dst_rs + n && lhs.len() >= (m - 1) * lhs_rs + k);
    debug_assert!(rhs.len() > (k - 1) * rhs_rs + (n - 1) * rhs_cs);
    // SAFETY: the asserted extents keep every access inside the three slices; dst does not
    // overlap the inputs (it is a separate buffer).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            dst_rs as isize,
            accumulate,
            lhs.as_ptr(),
            1,
            lhs_rs as isize,
            rhs.as_ptr(),
            rhs_cs as isize,
            rhs_rs as isize,
            if accumulate { 1.0 } else { 0.0 },
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        )
    }
}

/// The attention output `[1, n_kv_heads, g * t, head_dim]` (see [`AttentionInput`]).
pub fn attend(inp: &AttentionInput) -> Result<Tensor> {
    let (b, n_kv, gt, hd) = inp.q.dims4()?;
    if b != 1 {
        candle_core::bail!("CPU attention runs one row at a time, got a batch of {b}")
    }
    let t = gt / inp.group;
    let s = inp.rows.k.dim(2)?;
    let p = match inp.shared {
        Some(sh) => sh.k.dim(2)?,
        None => 0,
    };
    let scale = 1.0 / (hd as f32).sqrt();
    let isa = Isa::detect();
    let (q, rk, rv, mask) = (
        inp.q.contiguous()?,
        inp.rows.k.contiguous()?,
        inp.rows.v.contiguous()?,
        inp.mask.contiguous()?,
    );
    let (pk, pv) = match inp.shared {
        Some(sh) => (Some(sh.k.contiguous()?), Some(sh.v.contiguous()?)),
        None => (None, None),
    };
    let guards = [&q, &rk, &rv, &mask].map(|x| x.storage_and_layout());
    let (q_s, rk_s, rv_s, mask_s) = (
        values(&guards[0].0, guards[0].1)?,
        values(&guards[1].0, guards[1].1)?,
        values(&guards[2].0, guards[2].1)?,
        values(&guards[3].0, guards[3].1)?,
    );
    let pre_guards = pk
        .as_ref()
        .zip(pv.as_ref())
        .map(|(k, v)| (k.storage_and_layout(), v.storage_and_layout()));
    let (pk_s, pv_s): (&[f32], &[f32]) = match &pre_guards {
        Some((k, v)) => (values(&k.0, k.1)?, values(&v.0, v.1)?),
        None => (&[], &[]),
    };
    let mut out = vec![0f32; n_kv * gt * hd];
    let ptr = SharedMut::new(&mut out);
    let width = p + s;
    candle_core::utils::barrier_pool().execute_chunked(n_kv, |heads| {
        let mut scores = vec![0f32; gt * width];
        let mut vbuf = Vec::with_capacity(if p > 0 { width * hd } else { 0 });
        for h in heads {
            let qh = &q_s[h * gt * hd..(h + 1) * gt * hd];
            // SAFETY: head h's output slice is inside `out` and written by this call only.
            let oh = unsafe { ptr.part(h * gt * hd, gt * hd) };
            let (rkh, rvh) = (
                &rk_s[h * s * hd..(h + 1) * s * hd],
                &rv_s[h * s * hd..(h + 1) * s * hd],
            );
            if p > 0 {
                let pkh = &pk_s[h * p * hd..(h + 1) * p * hd];
                product((gt, p, hd), &mut scores, width, false, qh, hd, pkh, (hd, 1));
            }
            product(
                (gt, s, hd),
                &mut scores[p..],
                width,
                false,
                qh,
                hd,
                rkh,
                (hd, 1),
            );
            for (i, row) in scores.chunks_exact_mut(width).enumerate() {
                let m = &mask_s[(i % t) * s..(i % t + 1) * s];
                row[p..].iter_mut().zip(m).for_each(|(v, m)| *v += m);
                softmax_row(row, scale, isa);
            }
            // One value product over [prefix | row] keys, in the order a single pass over the
            // whole prompt uses: the cached and uncached paths then sum in the same order.
            let vh: &[f32] = if p > 0 {
                vbuf.clear();
                vbuf.extend_from_slice(&pv_s[h * p * hd..(h + 1) * p * hd]);
                vbuf.extend_from_slice(rvh);
                &vbuf
            } else {
                rvh
            };
            product((gt, hd, width), oh, hd, false, &scores, width, vh, (1, hd));
        }
    });
    drop(guards);
    drop(pre_guards);
    Tensor::from_vec(out, (1, n_kv, gt, hd), inp.q.device())
}
