//! Activations quantised to 8-bit blocks of 32 (one scale each), the left operand of the kernels.

use crate::engine::isa::Isa;
use crate::engine::shared_out::SharedMut;

/// Values per quantisation block, of weights and activations alike.
pub const BLOCK: usize = 32;

/// `m` rows of `k` activations as int8 blocks: `q[i * k + j]`, with one scale and one sum per block.
#[derive(Debug, Clone, PartialEq)]
pub struct QuantRows {
    /// Rows.
    pub m: usize,
    /// Values per row (a multiple of [`BLOCK`]).
    pub k: usize,
    /// The int8 values, row-major.
    pub q: Vec<i8>,
    /// The same values plus 128 as unsigned bytes (`q ^ 0x80`), for kernels that take the
    /// activations as `vpdpbusd`'s unsigned operand; empty unless asked for
    /// ([`QuantRows::quantize_with`]).
    pub qu: Vec<u8>,
    /// `d[i * kb + b]`: the scale of block `b` of row `i` (value = q × d).
    pub d: Vec<f32>,
    /// `ds[i * kb + b]`: the block's sum, `d × Σq` (for the offsets of 4- and 5-bit weights).
    pub ds: Vec<f32>,
    /// `half[(i * kb + b) * 2 + h]`: `Σq` over values `16h..16h + 16` of the block (for the
    /// per-16 offsets and mins of Q3_K and Q2_K; at most 16 · 127 in magnitude).
    pub half: Vec<i16>,
    /// `centre8[i * kb + b]`: `−8 · Σq` of the block, the integer offset of weights stored as
    /// `d · (q − 8)` over unsigned nibbles (Q4_0), where the kernels start that block's sums.
    pub centre8: Vec<i32>,
}

/// One row's share of a [`QuantRows`]: `k` values, `k / 32` scales, sums and offsets, `k / 16`
/// half sums.
pub(super) struct RowOut<'a> {
    pub q: &'a mut [i8],
    pub d: &'a mut [f32],
    pub ds: &'a mut [f32],
    pub half: &'a mut [i16],
    pub centre8: &'a mut [i32],
}

impl QuantRows {
    /// Quantises `x` (`m × k`, row-major) block by block: `d = max|x| / 127`, `q = round(x / d)`
    /// (ties to even, as the SIMD rounding does).
    #[cfg(test)]
    pub fn quantize(x: &[f32], m: usize, k: usize, isa: Isa) -> Self {
        Self::quantize_with(x, m, k, isa, false)
    }

    /// As [`QuantRows::quantize`], with the unsigned copy [`QuantRows::qu`] where `unsigned`.
    pub fn quantize_with(x: &[f32], m: usize, k: usize, isa: Isa, unsigned: bool) -> Self {
        assert_eq!(x.len(), m * k, "activation buffer is not m × k");
        assert!(
            k.is_multiple_of(BLOCK),
            "k = {k} is not a multiple of {BLOCK}"
        );
        let kb = k / BLOCK;
        let mut q = vec![0i8; m * k];
        let mut d = vec![0f32; m * kb];
        let mut ds = vec![0f32; m * kb];
        let mut half = vec![0i16; m * kb * 2];
        let mut centre8 = vec![0i32; m * kb];
        let ptr_c = SharedMut::new(&mut centre8);
        let mut qu = vec![0u8; if unsigned { m * k } else { 0 }];
        let ptr_u = SharedMut::new(&mut qu);
        let (ptr_q, ptr_d, ptr_s, ptr_h) = (
            SharedMut::new(&mut q),
            SharedMut::new(&mut d),
            SharedMut::new(&mut ds),
            SharedMut::new(&mut half),
        );
        candle_core::utils::barrier_pool().execute_chunked(m, |rows| {
            for i in rows {
                // SAFETY: each row index is handed to exactly one closure call, so the row slices
                // are disjoint; the buffers live until the pool call returns.
                let out = unsafe {
                    RowOut {
                        q: ptr_q.part(i * k, k),
                        d: ptr_d.part(i * kb, kb),
                        ds: ptr_s.part(i * kb, kb),
                        half: ptr_h.part(i * kb * 2, kb * 2),
                        centre8: ptr_c.part(i * kb, kb),
                    }
                };
                quantize_row(&x[i * k..(i + 1) * k], out, isa);
                if unsigned {
                    // SAFETY: row i's parts again, for this closure call only; the parts written
                    // above are no longer borrowed.
                    let (q, u) = unsafe { (ptr_q.part(i * k, k), ptr_u.part(i * k, k)) };
                    for (u, &v) in u.iter_mut().zip(q.iter()) {
                        *u = v as u8 ^ 0x80;
                    }
                }
            }
        });
        Self {
            m,
            k,
            q,
            qu,
            d,
            ds,
            half,
            centre8,
        }
    }

    /// Blocks per row.
    pub fn blocks(&self) -> usize {
        self.k / BLOCK
    }
}

fn quantize_row(x: &[f32], out: RowOut<'_>, isa: Isa) {
    #[cfg(target_arch = "x86_64")]
    if isa.is_avx512() {
        // SAFETY: an AVX-512 `Isa` exists only after run-time detection of AVX-512 F and BW
        // (`engine::isa`); the kernel reads and writes through bounds-checked slices.
        unsafe { wide::quantize_row(x, out) };
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if isa.is_avx2() {
        // SAFETY: an AVX2 `Isa` exists only after run-time detection (`engine::isa`); the kernel
        // reads and writes through bounds-checked slices.
        unsafe { super::avx2::quantize_row(x, out) };
        return;
    }
    let _ = isa;
    for (b, (xb, qb)) in x
        .chunks_exact(BLOCK)
        .zip(out.q.chunks_exact_mut(BLOCK))
        .enumerate()
    {
        let amax = xb.iter().fold(0f32, |a, v| a.max(v.abs()));
        let scale = amax / 127.0;
        let inv = if scale > 0.0 { 1.0 / scale } else { 0.0 };
        let mut sum = [0i32; 2];
        for (j, (o, v)) in qb.iter_mut().zip(xb).enumerate() {
            let r = (v * inv).round_ties_even().clamp(-127.0, 127.0) as i8;
            sum[j / 16] += r as i32;
            *o = r;
        }
        out.d[b] = scale;
        out.ds[b] = scale * (sum[0] + sum[1]) as f32;
        out.half[2 * b] = sum[0] as i16;
        out.half[2 * b + 1] = sum[1] as i16;
        out.centre8[b] = -8 * (sum[0] + sum[1]);
    }
}

/// The quantiser on 512-bit vectors: a block is two vectors, each one half of the block.
#[cfg(target_arch = "x86_64")]
mod wide {
    use std::arch::x86_64::*;

    use super::{RowOut, BLOCK};

    /// One row of activations to 8-bit blocks, the same numbers as the portable code: the same
    /// maximum (exact in any order), scale, reciprocal, rounding (ties to even) and clamp per
    /// value; the half sums are exact integers.
    ///
    /// # Safety
    /// AVX-512 F and BW. (Every read and write goes through a bounds-checked slice or
    /// `chunks_exact`.)
    #[target_feature(enable = "avx512f,avx512bw")]
    pub(super) unsafe fn quantize_row(x: &[f32], out: RowOut<'_>) {
        const NEAREST: i32 = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;
        let (lim, neg) = (_mm512_set1_ps(127.0), _mm512_set1_ps(-127.0));
        for (b, (xb, qb)) in x
            .chunks_exact(BLOCK)
            .zip(out.q.chunks_exact_mut(BLOCK))
            .enumerate()
        {
            let v = [
                _mm512_loadu_ps(xb.as_ptr()),
                _mm512_loadu_ps(xb[16..].as_ptr()),
            ];
            let amax =
                _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(v[0]), _mm512_abs_ps(v[1])));
            let scale = amax / 127.0;
            let inv = _mm512_set1_ps(if scale > 0.0 { 1.0 / scale } else { 0.0 });
            let r = v.map(|vi| {
                let t = _mm512_roundscale_ps::<NEAREST>(_mm512_mul_ps(vi, inv));
                _mm512_cvtps_epi32(_mm512_max_ps(_mm512_min_ps(t, lim), neg))
            });
            let (lo, hi) = (_mm512_reduce_add_epi32(r[0]), _mm512_reduce_add_epi32(r[1]));
            let (q0, q1) = qb.split_at_mut(16);
            _mm_storeu_si128(q0.as_mut_ptr() as *mut __m128i, _mm512_cvtsepi32_epi8(r[0]));
            _mm_storeu_si128(q1.as_mut_ptr() as *mut __m128i, _mm512_cvtsepi32_epi8(r[1]));
            out.d[b] = scale;
            out.ds[b] = scale * (lo + hi) as f32;
            out.half[2 * b] = lo as i16;
            out.half[2 * b + 1] = hi as i16;
            out.centre8[b] = -8 * (lo + hi);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_round_trip_within_half_a_step() {
        let k = 64;
        let x: Vec<f32> = (0..2 * k)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0)
            .collect();
        let a = QuantRows::quantize(&x, 2, k, Isa::portable());
        for i in 0..2 {
            for j in 0..k {
                let d = a.d[i * 2 + j / BLOCK];
                let back = a.q[i * k + j] as f32 * d;
                assert!((back - x[i * k + j]).abs() <= d / 2.0 + 1e-6);
            }
            for b in 0..2 {
                let s: i32 = a.q[i * k + b * BLOCK..i * k + (b + 1) * BLOCK]
                    .iter()
                    .map(|&v| v as i32)
                    .sum();
                assert_eq!(a.ds[i * 2 + b], a.d[i * 2 + b] * s as f32);
                assert_eq!(a.centre8[i * 2 + b], -8 * s);
                for h in 0..2 {
                    let from = i * k + b * BLOCK + h * 16;
                    let s: i32 = a.q[from..from + 16].iter().map(|&v| v as i32).sum();
                    assert_eq!(a.half[(i * 2 + b) * 2 + h] as i32, s);
                }
            }
        }
    }

    #[test]
    fn simd_rounding_equals_portable_rounding() {
        let Some(isa) = Isa::avx2() else {
            eprintln!("skipped: no AVX2 + FMA on this CPU, so no SIMD rounding to compare");
            return;
        };
        let k = 256;
        // Halves on purpose: ties must go the same way.
        let x: Vec<f32> = (0..3 * k).map(|i| (i as f32 - 300.0) * 0.5).collect();
        assert_eq!(
            QuantRows::quantize(&x, 3, k, isa),
            QuantRows::quantize(&x, 3, k, Isa::portable())
        );
    }

    #[test]
    fn the_512_bit_rounding_equals_portable_rounding() {
        let Some(isa) = Isa::avx512_vnni() else {
            eprintln!("skipped: no AVX-512 on this CPU, so no 512-bit rounding to compare");
            return;
        };
        let k = 256;
        // Halves (ties), a zero block, and blocks whose largest value sits in either half.
        let mut x: Vec<f32> = (0..3 * k).map(|i| (i as f32 - 300.0) * 0.5).collect();
        x[k..k + BLOCK].fill(0.0);
        x[2 * k + 3] = -1000.0;
        x[2 * k + BLOCK + 20] = 999.5;
        assert_eq!(
            QuantRows::quantize(&x, 3, k, isa),
            QuantRows::quantize(&x, 3, k, Isa::portable())
        );
    }

    #[test]
    fn a_zero_block_has_zero_scale_and_values() {
        let a = QuantRows::quantize(&[0.0; 32], 1, 32, Isa::portable());
        assert_eq!(a.d, vec![0.0]);
        assert!(a.q.iter().all(|&v| v == 0));
    }
}
