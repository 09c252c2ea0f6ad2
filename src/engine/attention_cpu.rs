//! Attention of one row on the CPU, head by head on candle's thread pool.
//!
//! For each kv head the prefix and row keys and values are laid side by side (`[prefix | row]`,
//! the order one pass over the whole prompt holds them in), and each query is computed on its own:
//! a dot product per visible key, one fused scaled softmax over the row padded to whole vectors,
//! and the values summed in key order. A query's arithmetic therefore never depends on how many
//! queries or keys share its pass, so a prefix token, a cached document token and the same token
//! in the whole prompt get the same bits (a matrix product's blocking would vary with the shapes,
//! and 8-bit activation rounding downstream turns one ulp into visible score differences). Heads are
//! independent, so the pool's threads split them; nothing inside calls back into candle.

use candle_core::{CpuStorage, Layout, Result, Storage, Tensor};

use super::attention::AttentionInput;
use super::qgemm::{Isa, SharedMut};
use super::softmax::softmax_row;
use super::vecops::{axpy, dot};

/// A contiguous CPU f32 tensor's values.
fn values<'a>(storage: &'a Storage, layout: &Layout) -> Result<&'a [f32]> {
    match (storage, layout.contiguous_offsets()) {
        (Storage::Cpu(CpuStorage::F32(v)), Some((a, b))) => Ok(&v[a..b]),
        _ => candle_core::bail!("CPU attention takes contiguous f32 tensors on the CPU"),
    }
}

/// One kv head's queries `[g·t, hd]`, keys and values `[p + s, hd]` (`p` of them the prefix).
struct Head<'a> {
    q: &'a [f32],
    k: &'a [f32],
    v: &'a [f32],
    hd: usize,
    p: usize,
}

/// Query `i` of `head` into `out`: scores against every visible key, one softmax over the padded
/// row, then the values summed key by key in position order. Nothing here depends on other
/// queries or on keys the query cannot see, so the query gets the same bits in any pass.
fn query(
    head: &Head,
    i: usize,
    mask: &[f32],
    scores: &mut [f32],
    out: &mut [f32],
    scale: f32,
    isa: Isa,
) {
    let hd = head.hd;
    let q = &head.q[i * hd..(i + 1) * hd];
    let key = |j: usize| &head.k[j * hd..(j + 1) * hd];
    scores.fill(f32::NEG_INFINITY);
    for (j, sc) in scores.iter_mut().enumerate().take(head.p) {
        *sc = dot(q, key(j), isa);
    }
    for (j, m) in mask.iter().enumerate() {
        // Masked keys stay -inf (exp gives exactly 0): no product for them at all.
        if *m != f32::NEG_INFINITY {
            scores[head.p + j] = dot(q, key(head.p + j), isa) + m;
        }
    }
    softmax_row(scores, scale, isa);
    out.fill(0.0);
    for (j, w) in scores.iter().enumerate().take(head.p + mask.len()) {
        if *w != 0.0 {
            axpy(*w, &head.v[j * hd..(j + 1) * hd], out, isa);
        }
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
    // Score rows are padded to whole SIMD vectors with masked (-inf) keys: every visible key then
    // falls in the vector lane its position gives, so a query's softmax sums in the same order
    // whatever the row's total width.
    let stride = width.next_multiple_of(8);
    candle_core::utils::barrier_pool().execute_chunked(n_kv, |heads| {
        let mut scores = vec![f32::NEG_INFINITY; stride];
        let mut kbuf = Vec::with_capacity(if p > 0 { width * hd } else { 0 });
        let mut vbuf = Vec::with_capacity(if p > 0 { width * hd } else { 0 });
        for h in heads {
            // SAFETY: head h's output slice is inside `out` and written by this call only.
            let oh = unsafe { ptr.part(h * gt * hd, gt * hd) };
            let (rkh, rvh) = (
                &rk_s[h * s * hd..(h + 1) * s * hd],
                &rv_s[h * s * hd..(h + 1) * s * hd],
            );
            // Keys and values as [prefix | row], the order one pass over the whole prompt holds.
            let (kh, vh): (&[f32], &[f32]) = if p > 0 {
                kbuf.clear();
                kbuf.extend_from_slice(&pk_s[h * p * hd..(h + 1) * p * hd]);
                kbuf.extend_from_slice(rkh);
                vbuf.clear();
                vbuf.extend_from_slice(&pv_s[h * p * hd..(h + 1) * p * hd]);
                vbuf.extend_from_slice(rvh);
                (&kbuf, &vbuf)
            } else {
                (rkh, rvh)
            };
            let heads_in = Head {
                q: &q_s[h * gt * hd..(h + 1) * gt * hd],
                k: kh,
                v: vh,
                hd,
                p,
            };
            for (i, o) in oh.chunks_exact_mut(hd).enumerate() {
                let mask = &mask_s[(i % t) * s..(i % t + 1) * s];
                query(&heads_in, i, mask, &mut scores[..stride], o, scale, isa);
            }
        }
    });
    drop(guards);
    drop(pre_guards);
    Tensor::from_vec(out, (1, n_kv, gt, hd), inp.q.device())
}
