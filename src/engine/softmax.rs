//! Row softmax of scaled attention scores on the CPU: one pass instead of candle's five ops (max,
//! sub, exp, sum, div), with a vectorised `exp` (AVX2 + FMA, chosen at run time) instead of one
//! libm call per score. `-inf` entries (masked keys) get exactly 0.

use super::isa::Isa;

/// One row in place: `x ← softmax(scale · x)`.
pub fn softmax_row(x: &mut [f32], scale: f32, isa: Isa) {
    let max = x.iter().fold(f32::NEG_INFINITY, |a, &v| a.max(v));
    if max == f32::NEG_INFINITY {
        // Nothing visible: no weights (never the case for the engine's masks).
        x.fill(0.0);
        return;
    }
    let sum = exp_shifted(x, scale, max, isa);
    let inv = 1.0 / sum;
    x.iter_mut().for_each(|v| *v *= inv);
}

/// `x ← exp(scale · (x − max))`, returning the sum.
fn exp_shifted(x: &mut [f32], scale: f32, max: f32, isa: Isa) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if isa.is_avx2() {
        // SAFETY: an AVX2 `Isa` exists only after run-time detection (`engine::isa`); the kernel
        // reads and writes `x` within its length.
        return unsafe { avx2::exp_shifted(x, scale, max) };
    }
    let _ = isa;
    let mut sum = 0f32;
    for v in x.iter_mut() {
        *v = (scale * (*v - max)).exp();
        sum += *v;
    }
    sum
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    /// `x ← exp(scale · (x − max))`, returning the sum. `exp` is Cephes' single-precision scheme: 2ⁿ
    /// times a degree-7 polynomial on the remainder (about 1 ulp); arguments below −87.3 (masked
    /// keys, `-inf`) give exactly 0.
    ///
    /// # Safety
    /// AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn exp_shifted(x: &mut [f32], scale: f32, max: f32) -> f32 {
        let (s, m) = (_mm256_set1_ps(scale), _mm256_set1_ps(max));
        let mut acc = _mm256_setzero_ps();
        let chunks = x.len() / 8;
        for c in 0..chunks {
            let v = _mm256_loadu_ps(x.as_ptr().add(c * 8));
            let e = exp(_mm256_mul_ps(s, _mm256_sub_ps(v, m)));
            _mm256_storeu_ps(x.as_mut_ptr().add(c * 8), e);
            acc = _mm256_add_ps(acc, e);
        }
        let mut lanes = [0f32; 8];
        _mm256_storeu_ps(lanes.as_mut_ptr(), acc);
        let mut sum: f32 = lanes.iter().sum();
        for xi in x.iter_mut().skip(chunks * 8) {
            // The tail through the same formula, one lane used.
            let e = exp(_mm256_set1_ps(scale * (*xi - max)));
            *xi = _mm_cvtss_f32(_mm256_castps256_ps128(e));
            sum += *xi;
        }
        sum
    }

    #[target_feature(enable = "avx2,fma")]
    unsafe fn exp(x: __m256) -> __m256 {
        let lo = _mm256_set1_ps(-87.336_55);
        let under = _mm256_cmp_ps::<_CMP_LT_OQ>(x, lo);
        let x = _mm256_min_ps(_mm256_max_ps(x, lo), _mm256_set1_ps(88.376_26));
        const NEAREST: i32 = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;
        let n =
            _mm256_round_ps::<NEAREST>(_mm256_mul_ps(x, _mm256_set1_ps(std::f32::consts::LOG2_E)));
        // r = x − n·ln2, with ln2 split in two so the product is exact.
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693_359_4), x);
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.121_944_4e-4), r);
        let mut p = _mm256_set1_ps(1.987_569_1e-4);
        for c in [
            1.398_199_9e-3,
            8.333_452e-3,
            4.166_579_6e-2,
            0.166_666_65,
            0.5,
        ] {
            p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(c));
        }
        let p = _mm256_add_ps(
            _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), r),
            _mm256_set1_ps(1.0),
        );
        let pow2 = _mm256_castsi256_ps(_mm256_slli_epi32::<23>(_mm256_add_epi32(
            _mm256_cvtps_epi32(n),
            _mm256_set1_epi32(127),
        )));
        _mm256_andnot_ps(under, _mm256_mul_ps(p, pow2))
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
