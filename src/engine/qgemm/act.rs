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
    /// `d[i * kb + b]`: the scale of block `b` of row `i` (value = q × d).
    pub d: Vec<f32>,
    /// `ds[i * kb + b]`: the block's sum, `d × Σq` (for the offsets of 4-bit weights).
    pub ds: Vec<f32>,
}

impl QuantRows {
    /// Quantises `x` (`m × k`, row-major) block by block: `d = max|x| / 127`, `q = round(x / d)`
    /// (ties to even, as the SIMD rounding does).
    pub fn quantize(x: &[f32], m: usize, k: usize, isa: Isa) -> Self {
        assert_eq!(x.len(), m * k, "activation buffer is not m × k");
        assert!(
            k.is_multiple_of(BLOCK),
            "k = {k} is not a multiple of {BLOCK}"
        );
        let kb = k / BLOCK;
        let mut q = vec![0i8; m * k];
        let mut d = vec![0f32; m * kb];
        let mut ds = vec![0f32; m * kb];
        let (ptr_q, ptr_d, ptr_s) = (
            SharedMut::new(&mut q),
            SharedMut::new(&mut d),
            SharedMut::new(&mut ds),
        );
        candle_core::utils::barrier_pool().execute_chunked(m, |rows| {
            for i in rows {
                // SAFETY: each row index is handed to exactly one closure call, so the row slices
                // are disjoint; the buffers live until the pool call returns.
                let (qr, dr, sr) = unsafe {
                    (
                        ptr_q.part(i * k, k),
                        ptr_d.part(i * kb, kb),
                        ptr_s.part(i * kb, kb),
                    )
                };
                quantize_row(&x[i * k..(i + 1) * k], qr, dr, sr, isa);
            }
        });
        Self { m, k, q, d, ds }
    }

    /// Blocks per row.
    pub fn blocks(&self) -> usize {
        self.k / BLOCK
    }
}

fn quantize_row(x: &[f32], q: &mut [i8], d: &mut [f32], ds: &mut [f32], isa: Isa) {
    #[cfg(target_arch = "x86_64")]
    if isa.is_avx2() {
        // SAFETY: an AVX2 `Isa` exists only after run-time detection (`engine::isa`); the kernel
        // asserts the slices' lengths.
        unsafe { super::avx2::quantize_row(x, q, d, ds) };
        return;
    }
    let _ = isa;
    for (b, (xb, qb)) in x
        .chunks_exact(BLOCK)
        .zip(q.chunks_exact_mut(BLOCK))
        .enumerate()
    {
        let amax = xb.iter().fold(0f32, |a, v| a.max(v.abs()));
        let scale = amax / 127.0;
        let inv = if scale > 0.0 { 1.0 / scale } else { 0.0 };
        let mut sum = 0i32;
        for (o, v) in qb.iter_mut().zip(xb) {
            let r = (v * inv).round_ties_even().clamp(-127.0, 127.0) as i8;
            sum += r as i32;
            *o = r;
        }
        d[b] = scale;
        ds[b] = scale * sum as f32;
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
    fn a_zero_block_has_zero_scale_and_values() {
        let a = QuantRows::quantize(&[0.0; 32], 1, 32, Isa::portable());
        assert_eq!(a.d, vec![0.0]);
        assert!(a.q.iter().all(|&v| v == 0));
    }
}
