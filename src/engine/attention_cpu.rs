//! Attention of one row on the CPU, head by head on candle's thread pool.
//!
//! For each kv head the prefix and row keys and values are laid side by side (`[prefix | row]`,
//! the order one pass over the whole prompt holds them in), and each query is computed on its own:
//! a dot product per visible key, one fused scaled softmax over the row padded to whole vectors,
//! and the values summed in key order. A query's arithmetic therefore never depends on how many
//! queries or keys share its pass, so a prefix token, a cached document token and the same token
//! in the whole prompt get the same bits (a matrix product's blocking would vary with the shapes,
//! and 8-bit activation rounding downstream turns one ulp into visible score differences). Heads and
//! queries are independent, so the pool's threads split them in (head, query block) pieces;
//! nothing inside calls back into candle.

use candle_core::{CpuStorage, Layout, Result, Storage, Tensor};

use super::attention_input::AttentionInput;
use super::isa::Isa;
use super::shared_out::{Fresh, SharedMut};
use super::softmax::softmax_row;
use super::vecops::{self, QB};

/// Queries per work piece (a multiple of [`QB`]): enough that laying out a head's keys, once per
/// run of pieces, is a few percent of the piece's products.
const QUERY_PIECE: usize = 16 * QB;

/// A contiguous CPU f32 tensor's values.
fn values<'a>(storage: &'a Storage, layout: &Layout) -> Result<&'a [f32]> {
    match (storage, layout.contiguous_offsets()) {
        (Storage::Cpu(CpuStorage::F32(v)), Some((a, b))) => Ok(&v[a..b]),
        _ => candle_core::bail!("CPU attention takes contiguous f32 tensors on the CPU"),
    }
}

/// One kv head: queries `[g·t, hd]`, keys transposed (`hd` rows of `stride`, zero past the
/// `p + s` keys), values `[p + s, hd]`; `p` of the keys are the shared prefix.
struct Head<'a> {
    q: &'a [f32],
    kt: &'a [f32],
    v: &'a [f32],
    hd: usize,
    p: usize,
    stride: usize,
}

/// Queries `i0..i0 + rows` of `head` into `out` (`rows × hd`): scores against the keys any of them
/// sees, the mask, one softmax per query over its padded row, then the weighted values. `masks`
/// gives each query's mask row over the row part of the keys, `visible` how many of those keys
/// (from the first) any of the block's queries sees.
fn query_block(
    head: &Head,
    (i0, rows): (usize, usize),
    (masks, visible): (&[&[f32]], usize),
    scores: &mut [f32],
    out: &mut [f32],
    scale: f32,
    isa: Isa,
) {
    let (hd, p, stride) = (head.hd, head.p, head.stride);
    // Keys past the last one any query of the block sees carry weight 0 for all of them.
    let seen = p + visible;
    let computed = seen.next_multiple_of(8).min(stride);
    let q = &head.q[i0 * hd..(i0 + rows) * hd];
    vecops::scores(isa, q, rows, head.kt, hd, stride, computed, scores);
    for (r, mask) in masks.iter().enumerate() {
        let row = &mut scores[r * stride..(r + 1) * stride];
        for (v, m) in row[p..].iter_mut().zip(mask.iter()) {
            *v += m;
        }
        // Padding and keys never computed: hidden. Only the computed keys go through the softmax
        // (the rest would be exact zeros, and `values` reads only the first `seen`): the sum
        // gains the same lanes in the same order either way.
        row[(p + mask.len()).min(computed)..computed].fill(f32::NEG_INFINITY);
        softmax_row(&mut row[..computed], scale, isa);
    }
    vecops::values(isa, scores, rows, stride, head.v, hd, seen, out);
}

/// Each kv head's keys transposed (`[n_kv][hd × stride]`, zero past the `p + s` keys) and, where
/// there is a prefix, its values as `[prefix | row]` (`[n_kv][(p + s) × hd]`; empty otherwise):
/// the order one pass over the whole prompt holds, laid out once per call for all the pieces.
fn lay_out_heads(
    (pk, pv): (&[f32], &[f32]),
    (rk, rv): (&[f32], &[f32]),
    n_kv: usize,
    (p, s, hd): (usize, usize, usize),
    stride: usize,
) -> (Vec<f32>, Vec<f32>) {
    let width = p + s;
    let mut kt = vec![0f32; n_kv * hd * stride];
    let mut v = vec![0f32; if p > 0 { n_kv * width * hd } else { 0 }];
    let (kt_out, v_out) = (SharedMut::new(&mut kt), SharedMut::new(&mut v));
    candle_core::utils::barrier_pool().execute_chunked(n_kv, |heads| {
        for h in heads {
            let (pkh, rkh) = (
                &pk[h * p * hd..(h + 1) * p * hd],
                &rk[h * s * hd..(h + 1) * s * hd],
            );
            // SAFETY: head h's parts are laid out by this closure call only (each head index is
            // handed to one call), so no two live parts overlap.
            let kt_h = unsafe { kt_out.part(h * hd * stride, hd * stride) };
            transpose_keys(
                pkh.chunks_exact(hd).chain(rkh.chunks_exact(hd)),
                hd,
                stride,
                kt_h,
            );
            if p > 0 {
                // SAFETY: as above.
                let v_h = unsafe { v_out.part(h * width * hd, width * hd) };
                v_h[..p * hd].copy_from_slice(&pv[h * p * hd..(h + 1) * p * hd]);
                v_h[p * hd..].copy_from_slice(&rv[h * s * hd..(h + 1) * s * hd]);
            }
        }
    });
    (kt, v)
}

/// Keys `j = 0, 1, …` (each `hd` long) into `kt` transposed: `kt[c * stride + j] = key_j[c]`.
/// Eight keys at a time, so each write is a run of eight along a `kt` row rather than one value
/// per row (a new cache line each) per key.
fn transpose_keys<'a>(
    keys: impl Iterator<Item = &'a [f32]>,
    hd: usize,
    stride: usize,
    kt: &mut [f32],
) {
    let mut group: [&[f32]; 8] = [&[]; 8];
    let mut keys = keys.peekable();
    let mut j0 = 0;
    while keys.peek().is_some() {
        let mut n = 0;
        for (slot, key) in group.iter_mut().zip(keys.by_ref()) {
            *slot = key;
            n += 1;
        }
        for c in 0..hd {
            let run = &mut kt[c * stride + j0..][..n];
            for (d, key) in run.iter_mut().zip(&group[..n]) {
                *d = key[c];
            }
        }
        j0 += n;
    }
}

/// The attention output token-major, `[t, n_heads · head_dim]` with query head `h` at columns
/// `h · head_dim..` (see [`AttentionInput`]): the layout the output projection reads.
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
    let n_heads = n_kv * inp.group;
    let out = Fresh::new(t * n_heads * hd);
    let width = p + s;
    // Score rows are padded to whole SIMD vectors with masked (-inf) keys: every visible key then
    // falls in the vector lane its position gives, so a query's softmax sums in the same order
    // whatever the row's total width.
    let stride = width.next_multiple_of(8);
    // How far into the row part each mask row sees (past its last visible key, all -inf):
    // found once per call, not once per query head.
    let visible: Vec<usize> = mask_s
        .chunks_exact(s.max(1))
        .take(t)
        .map(|m| {
            m.iter()
                .rposition(|v| *v != f32::NEG_INFINITY)
                .map_or(0, |j| j + 1)
        })
        .collect();
    // Pieces are (kv head, block of queries): models have few kv heads (SmolLM2 3, LLaMA 2 70B 8),
    // so heads alone leave a thread idle for a whole head's time. Every query's arithmetic is its
    // own, so how the queries are split changes no bit.
    let blocks = gt.div_ceil(QUERY_PIECE);
    let (kt_all, v_all) = lay_out_heads((pk_s, pv_s), (rk_s, rv_s), n_kv, (p, s, hd), stride);
    candle_core::utils::barrier_pool().execute_chunked(n_kv * blocks, |pieces| {
        let mut scores = vec![f32::NEG_INFINITY; QB * stride];
        let (mut block_out, mut w) = (vec![0f32; QB * hd], out.writer());
        for piece in pieces {
            let (h, b) = (piece / blocks, piece % blocks);
            let head = Head {
                q: &q_s[h * gt * hd..(h + 1) * gt * hd],
                kt: &kt_all[h * hd * stride..(h + 1) * hd * stride],
                v: if p > 0 {
                    &v_all[h * width * hd..(h + 1) * width * hd]
                } else {
                    &rv_s[h * s * hd..(h + 1) * s * hd]
                },
                hd,
                p,
                stride,
            };
            let queries = b * QUERY_PIECE..((b + 1) * QUERY_PIECE).min(gt);
            for i0 in queries.clone().step_by(QB) {
                let rows = QB.min(queries.end - i0);
                let masks: Vec<&[f32]> = (i0..i0 + rows)
                    .map(|i| &mask_s[(i % t) * s..(i % t + 1) * s])
                    .collect();
                let seen = (i0..i0 + rows).map(|i| visible[i % t]).max().unwrap_or(0);
                let o = &mut block_out[..rows * hd];
                query_block(
                    &head,
                    (i0, rows),
                    (&masks, seen),
                    &mut scores,
                    o,
                    scale,
                    isa,
                );
                for (r, row) in o.chunks_exact(hd).enumerate() {
                    // Query i0 + r of kv head h is query head h·group + (i0 + r) / t at token
                    // (i0 + r) % t: its row of the token-major output.
                    let (g, i) = ((i0 + r) / t, (i0 + r) % t);
                    // SAFETY: each (query head, token) row is written once, by the one piece that
                    // holds that query of that kv head (pieces are disjoint (head, block) pairs).
                    unsafe { w.write((i * n_heads + h * inp.group + g) * hd, row) };
                }
            }
        }
    });
    drop(guards);
    drop(pre_guards);
    Tensor::from_vec(out.into_vec(), (t, n_heads * hd), inp.q.device())
}
