//! Row softmax of scaled attention scores on the CPU: one pass instead of candle's five ops (max,
//! sub, exp, sum, div), with `engine::vmath`'s `exp` (vectorised with AVX-512 or AVX2 + FMA,
//! chosen at run time, the same bits either way) instead of one libm call per score. `-inf`
//! entries (masked keys) get exactly 0.

use super::isa::Isa;

/// One row in place: `x ← softmax(scale · x)`.
pub fn softmax_row(x: &mut [f32], scale: f32, isa: Isa) {
    let max = row_max(x, isa);
    if max == f32::NEG_INFINITY {
        // Nothing visible: no weights (never the case for the engine's masks).
        x.fill(0.0);
        return;
    }
    let sum = exp_shifted(x, scale, max, isa);
    let inv = 1.0 / sum;
    x.iter_mut().for_each(|v| *v *= inv);
}

/// The largest entry (`-inf` for none): the same value in any order, so vectors may take it.
fn row_max(x: &[f32], isa: Isa) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if isa.is_avx2() {
        // SAFETY: an AVX2 `Isa` exists only after run-time detection (`engine::isa`); the kernel
        // reads `x` within its length.
        return unsafe { avx2::max(x) };
    }
    let _ = isa;
    x.iter().fold(f32::NEG_INFINITY, |a, &v| a.max(v))
}

/// `x ← exp(scale · (x − max))`, returning the sum.
fn exp_shifted(x: &mut [f32], scale: f32, max: f32, isa: Isa) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if isa.is_avx512() {
        // SAFETY: an AVX-512 `Isa` exists only after run-time detection of AVX-512 F besides AVX2
        // and FMA (`engine::isa`); the kernel reads and writes `x` within its length.
        return unsafe { avx512::exp_shifted(x, scale, max) };
    }
    #[cfg(target_arch = "x86_64")]
    if isa.is_avx2() {
        // SAFETY: an AVX2 `Isa` exists only after run-time detection (`engine::isa`); the kernel
        // reads and writes `x` within its length.
        return unsafe { avx2::exp_shifted(x, scale, max) };
    }
    let _ = isa;
    let mut sum = 0f32;
    for v in x.iter_mut() {
        *v = super::vmath::exp(scale * (*v - max));
        sum += *v;
    }
    sum
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use crate::engine::vmath::{self, avx2::exp};

    /// The largest entry of `x` (`-inf` for none; scores are never NaN).
    ///
    /// # Safety
    /// AVX2.
    #[target_feature(enable = "avx2")]
    pub unsafe fn max(x: &[f32]) -> f32 {
        // Four independent chains, so the maxima overlap instead of each waiting on the last
        // (a maximum is the same in any order: scores are never NaN).
        let mut ms = [_mm256_set1_ps(f32::NEG_INFINITY); 4];
        let chunks = x.len() / 8;
        for c in 0..chunks {
            let m = &mut ms[c % 4];
            *m = _mm256_max_ps(*m, _mm256_loadu_ps(x.as_ptr().add(c * 8)));
        }
        let m = _mm256_max_ps(_mm256_max_ps(ms[0], ms[1]), _mm256_max_ps(ms[2], ms[3]));
        let mut lanes = [0f32; 8];
        _mm256_storeu_ps(lanes.as_mut_ptr(), m);
        lanes
            .iter()
            .chain(&x[chunks * 8..])
            .fold(f32::NEG_INFINITY, |a, &v| a.max(v))
    }

    /// `x ← exp(scale · (x − max))`, returning the sum, with [`vmath`]'s `exp` (arguments below
    /// −87.3, masked keys' `-inf`, give exactly 0).
    ///
    /// # Safety
    /// AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn exp_shifted(x: &mut [f32], scale: f32, max: f32) -> f32 {
        exp_shifted_from(x, scale, max, 0, _mm256_setzero_ps())
    }

    /// The rest of [`exp_shifted`] from 8-lane chunk `first`, with the sums so far in `acc`.
    ///
    /// # Safety
    /// AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn exp_shifted_from(
        x: &mut [f32],
        scale: f32,
        max: f32,
        first: usize,
        acc: __m256,
    ) -> f32 {
        let (s, m) = (_mm256_set1_ps(scale), _mm256_set1_ps(max));
        let mut acc = acc;
        let chunks = x.len() / 8;
        for c in first..chunks {
            let v = _mm256_loadu_ps(x.as_ptr().add(c * 8));
            let e = exp(_mm256_mul_ps(s, _mm256_sub_ps(v, m)));
            _mm256_storeu_ps(x.as_mut_ptr().add(c * 8), e);
            acc = _mm256_add_ps(acc, e);
        }
        let mut lanes = [0f32; 8];
        _mm256_storeu_ps(lanes.as_mut_ptr(), acc);
        let mut sum: f32 = lanes.iter().sum();
        for xi in x.iter_mut().skip(chunks * 8) {
            // The tail through the same formula, one lane at a time.
            *xi = vmath::exp(scale * (*xi - max));
            sum += *xi;
        }
        sum
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use super::avx2::exp_shifted_from;
    use crate::engine::vmath::avx512::exp;

    /// [`super::avx2::exp_shifted`] with 16 lanes at a time, the 8-lane sums in the same order
    /// (low half, then high half), the rest by the AVX2 code: the same bits.
    ///
    /// # Safety
    /// AVX-512 F besides AVX2 and FMA.
    #[target_feature(enable = "avx512f,avx2,fma")]
    pub unsafe fn exp_shifted(x: &mut [f32], scale: f32, max: f32) -> f32 {
        let (s, m) = (_mm512_set1_ps(scale), _mm512_set1_ps(max));
        let mut acc = _mm256_setzero_ps();
        let wide = x.len() / 16;
        for c in 0..wide {
            let v = _mm512_loadu_ps(x.as_ptr().add(c * 16));
            let e = exp(_mm512_mul_ps(s, _mm512_sub_ps(v, m)));
            _mm512_storeu_ps(x.as_mut_ptr().add(c * 16), e);
            acc = _mm256_add_ps(acc, _mm512_castps512_ps256(e));
            acc = _mm256_add_ps(acc, _mm512_extractf32x8_ps::<1>(e));
        }
        exp_shifted_from(x, scale, max, wide * 2, acc)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Tensor};

    #[test]
    fn equals_candles_softmax_and_masks_exactly() {
        let dev = Device::Cpu;
        // 37 columns: four full vectors and a tail of five.
        let mut v: Vec<f32> = (0..3 * 37)
            .map(|i| ((i * 53 % 97) as f32 - 48.0) * 0.7)
            .collect();
        v[5] = f32::NEG_INFINITY;
        v[40] = f32::NEG_INFINITY;
        let x = Tensor::from_vec(v, (3, 37), &dev).unwrap();
        let scale = 0.125f32;
        let want = candle_nn::ops::softmax_last_dim(&(&x * scale as f64).unwrap()).unwrap();
        for isa in [Isa::portable(), Isa::detect()] {
            let mut g = x.to_vec2::<f32>().unwrap();
            g.iter_mut().for_each(|row| softmax_row(row, scale, isa));
            let w = want.to_vec2::<f32>().unwrap();
            for (gr, wr) in g.iter().zip(&w) {
                for (a, b) in gr.iter().zip(wr) {
                    assert!(
                        (a - b).abs() <= 1e-6 + 2e-6 * b.abs(),
                        "{isa:?}: {a} vs {b}"
                    );
                }
                assert!((gr.iter().sum::<f32>() - 1.0).abs() < 1e-5);
            }
            assert_eq!(g[0][5], 0.0);
            assert_eq!(g[1][3], 0.0);
        }
    }

    /// 16 lanes at a time give the AVX2 code's bits, values and sum alike.
    #[test]
    fn the_512_bit_softmax_equals_the_avx2_one_to_the_bit() {
        let (Some(wide), Some(avx2)) = (Isa::avx512_vnni(), Isa::avx2()) else {
            eprintln!("skipped: no AVX-512 on this CPU, so the 512-bit softmax untested");
            return;
        };
        // 16 + 16 + 8 + 5 columns: wide vectors, an 8-lane one and a scalar tail.
        for width in [45, 384, 13] {
            let row: Vec<f32> = (0..width)
                .map(|i| {
                    if i % 11 == 3 {
                        f32::NEG_INFINITY
                    } else {
                        ((i * 37 % 101) as f32 - 50.0) * 0.9
                    }
                })
                .collect();
            let (mut a, mut b) = (row.clone(), row.clone());
            let (sa, sb) = (
                exp_shifted(&mut a, 0.125, 40.0, wide),
                exp_shifted(&mut b, 0.125, 40.0, avx2),
            );
            assert_eq!(sa.to_bits(), sb.to_bits(), "sum, width {width}");
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&a), bits(&b), "values, width {width}");
            softmax_row(&mut a, 0.125, wide);
            softmax_row(&mut b, 0.125, avx2);
            assert_eq!(bits(&a), bits(&b), "softmax, width {width}");
        }
    }

    #[test]
    fn the_vector_exp_is_within_two_ulp_of_libm() {
        let Some(simd) = Isa::avx2() else {
            eprintln!("skipped: no AVX2 + FMA on this CPU, so no vector exp to test");
            return;
        };
        let x: Vec<f32> = (0..4000).map(|i| -80.0 + i as f32 * 0.0213).collect();
        let mut y = x.clone();
        // scale 1, max 0: y = exp(x).
        exp_shifted(&mut y, 1.0, 0.0, simd);
        for (a, b) in x.iter().zip(&y) {
            let want = a.exp();
            assert!(
                (b - want).abs() <= 2.0 * f32::EPSILON * want,
                "exp({a}) = {b}, libm {want}"
            );
        }
    }
}
