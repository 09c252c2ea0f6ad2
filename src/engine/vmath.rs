//! Element-wise math on the CPU, one arithmetic order on every instruction set: `exp` (Cephes'
//! single-precision scheme, about 1 ulp) and the gated SiLU `SiLU(g) · u` of the feed-forward.
//!
//! The portable functions run the SIMD code's operations one lane at a time (fused multiply-adds
//! where it fuses, round-to-nearest-even where it rounds), so a value gets the same bits whether
//! it went through a vector lane, a scalar tail or a CPU without AVX2. The fused gate-and-up
//! product and the separate products (LoRA layers) share [`silu_mul`], so they agree exactly too.

use super::isa::Isa;

/// Below this `exp` is exactly 0 (masked keys are `-inf`).
const EXP_LO: f32 = -87.336_55;
/// Above this the argument is clamped (the result stays finite).
const EXP_HI: f32 = 88.376_26;
/// `ln 2` in two parts, so `n · ln2` is exact in the reduction.
const LN2_HI: f32 = 0.693_359_4;
const LN2_LO: f32 = -2.121_944_4e-4;
/// The remainder's polynomial, highest degree first (after `P0`).
const P0: f32 = 1.987_569_1e-4;
const P: [f32; 5] = [
    1.398_199_9e-3,
    8.333_452e-3,
    4.166_579_6e-2,
    0.166_666_65,
    0.5,
];

/// `exp(x)`, the same bits as a lane of the vector version.
pub(crate) fn exp(x: f32) -> f32 {
    if x < EXP_LO {
        return 0.0;
    }
    let x = x.clamp(EXP_LO, EXP_HI);
    let n = (x * std::f32::consts::LOG2_E).round_ties_even();
    let r = (-n).mul_add(LN2_HI, x);
    let r = (-n).mul_add(LN2_LO, r);
    let p = P.iter().fold(P0, |p, &c| p.mul_add(r, c));
    let p = p.mul_add(r * r, r) + 1.0;
    p * f32::from_bits(((n as i32 + 127) as u32) << 23)
}

/// `g · σ(g)`, the same bits as a lane of the vector version.
fn silu(g: f32) -> f32 {
    g / (1.0 + exp(-g))
}

/// `g ← SiLU(g) · u`, element by element (`g` and `u` of one length).
pub(crate) fn silu_mul(isa: Isa, g: &mut [f32], u: &[f32]) {
    assert_eq!(g.len(), u.len(), "gate and up of different lengths");
    let mut done = 0;
    #[cfg(target_arch = "x86_64")]
    if isa.is_avx512() {
        // SAFETY: an AVX-512 `Isa` exists only after run-time detection of AVX-512 F besides AVX2
        // and FMA (`engine::isa`); the kernel reads and writes whole 16-lane chunks within the
        // (equal) lengths.
        done = unsafe { avx512::silu_mul(g, u) };
    }
    #[cfg(target_arch = "x86_64")]
    if isa.is_avx2() {
        // SAFETY: an AVX2 `Isa` exists only after run-time detection (`engine::isa`); the kernel
        // reads and writes whole 8-lane chunks within the (equal) lengths.
        done += unsafe { avx2::silu_mul(&mut g[done..], &u[done..]) };
    }
    let _ = isa;
    for (x, y) in g[done..].iter_mut().zip(&u[done..]) {
        *x = silu(*x) * y;
    }
}

#[cfg(target_arch = "x86_64")]
pub(crate) mod avx2 {
    use std::arch::x86_64::*;

    use super::{EXP_HI, EXP_LO, LN2_HI, LN2_LO, P, P0};

    /// `exp` of each lane (see [`super::exp`]).
    ///
    /// # Safety
    /// AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub(crate) unsafe fn exp(x: __m256) -> __m256 {
        let lo = _mm256_set1_ps(EXP_LO);
        let under = _mm256_cmp_ps::<_CMP_LT_OQ>(x, lo);
        let x = _mm256_min_ps(_mm256_max_ps(x, lo), _mm256_set1_ps(EXP_HI));
        const NEAREST: i32 = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;
        let n =
            _mm256_round_ps::<NEAREST>(_mm256_mul_ps(x, _mm256_set1_ps(std::f32::consts::LOG2_E)));
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(LN2_HI), x);
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(LN2_LO), r);
        let mut p = _mm256_set1_ps(P0);
        for c in P {
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

    /// `g ← SiLU(g) · u` over the whole 8-lane chunks; returns how many elements it did.
    ///
    /// # Safety
    /// AVX2 and FMA; `g` and `u` of one length.
    #[target_feature(enable = "avx2,fma")]
    pub(crate) unsafe fn silu_mul(g: &mut [f32], u: &[f32]) -> usize {
        let one = _mm256_set1_ps(1.0);
        let sign = _mm256_set1_ps(-0.0);
        let chunks = g.len() / 8;
        for c in 0..chunks {
            let x = _mm256_loadu_ps(g.as_ptr().add(c * 8));
            let y = _mm256_loadu_ps(u.as_ptr().add(c * 8));
            let e = exp(_mm256_xor_ps(x, sign));
            let s = _mm256_div_ps(x, _mm256_add_ps(one, e));
            _mm256_storeu_ps(g.as_mut_ptr().add(c * 8), _mm256_mul_ps(s, y));
        }
        chunks * 8
    }
}

/// The same operations on 512-bit vectors: each lane the AVX2 code's chain, so the same bits.
#[cfg(target_arch = "x86_64")]
pub(crate) mod avx512 {
    use std::arch::x86_64::*;

    use super::{EXP_HI, EXP_LO, LN2_HI, LN2_LO, P, P0};

    /// `exp` of each lane (see [`super::exp`]).
    ///
    /// # Safety
    /// AVX-512 F.
    #[target_feature(enable = "avx512f,avx2,fma")]
    pub(crate) unsafe fn exp(x: __m512) -> __m512 {
        let lo = _mm512_set1_ps(EXP_LO);
        let under = _mm512_cmp_ps_mask::<_CMP_LT_OQ>(x, lo);
        let x = _mm512_min_ps(_mm512_max_ps(x, lo), _mm512_set1_ps(EXP_HI));
        const NEAREST: i32 = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;
        let n = _mm512_roundscale_ps::<NEAREST>(_mm512_mul_ps(
            x,
            _mm512_set1_ps(std::f32::consts::LOG2_E),
        ));
        let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(LN2_HI), x);
        let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(LN2_LO), r);
        let mut p = _mm512_set1_ps(P0);
        for c in P {
            p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(c));
        }
        let p = _mm512_add_ps(
            _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), r),
            _mm512_set1_ps(1.0),
        );
        let pow2 = _mm512_castsi512_ps(_mm512_slli_epi32::<23>(_mm512_add_epi32(
            _mm512_cvtps_epi32(n),
            _mm512_set1_epi32(127),
        )));
        // Lanes below the range are exactly 0, as the AVX2 code's mask makes them.
        _mm512_maskz_mul_ps(!under, p, pow2)
    }

    /// `g ← SiLU(g) · u` over the whole 16-lane chunks; returns how many elements it did.
    ///
    /// # Safety
    /// AVX-512 F; `g` and `u` of one length.
    #[target_feature(enable = "avx512f,avx2,fma")]
    pub(crate) unsafe fn silu_mul(g: &mut [f32], u: &[f32]) -> usize {
        let one = _mm512_set1_ps(1.0);
        let chunks = g.len() / 16;
        for c in 0..chunks {
            let x = _mm512_loadu_ps(g.as_ptr().add(c * 16));
            let y = _mm512_loadu_ps(u.as_ptr().add(c * 16));
            let neg = _mm512_castsi512_ps(_mm512_xor_si512(
                _mm512_castps_si512(x),
                _mm512_set1_epi32(i32::MIN),
            ));
            let s = _mm512_div_ps(x, _mm512_add_ps(one, exp(neg)));
            _mm512_storeu_ps(g.as_mut_ptr().add(c * 16), _mm512_mul_ps(s, y));
        }
        chunks * 16
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inputs() -> Vec<f32> {
        let mut x: Vec<f32> = (0..6001).map(|i| -90.0 + i as f32 * 0.0301).collect();
        x.extend([0.0, -0.0, 1e-30, -1e-30, 88.0, -87.0, f32::NEG_INFINITY]);
        x
    }

    #[test]
    fn exp_is_within_two_ulp_of_libm_zero_below_and_clamped_above_its_range() {
        for &a in &inputs() {
            let (got, want) = (exp(a), a.exp());
            if a < EXP_LO {
                assert_eq!(got, 0.0, "exp({a})");
            } else if a > EXP_HI {
                assert_eq!(got, exp(EXP_HI), "exp({a}) is clamped, finite");
                assert!(got.is_finite());
            } else if want > f32::MIN_POSITIVE {
                let ulp = (got.to_bits() as i64 - want.to_bits() as i64).abs();
                assert!(ulp <= 2, "exp({a}) = {got}, libm {want}: {ulp} ulp");
            }
        }
    }

    /// The vector and scalar code give the same bits, lane, tail and portable CPU alike, and stay
    /// within a few ulp of candle's `silu` (which calls libm's `exp`).
    #[test]
    fn silu_mul_gets_the_same_bits_on_every_instruction_set() {
        let g: Vec<f32> = inputs().into_iter().filter(|v| v.is_finite()).collect();
        let u: Vec<f32> = (0..g.len()).map(|i| (i % 37) as f32 * 0.1 - 1.7).collect();
        let run = |isa: Isa, n: usize| {
            let mut x = g[..n].to_vec();
            silu_mul(isa, &mut x, &u[..n]);
            x.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
        };
        let portable = run(Isa::portable(), g.len());
        match Isa::avx2() {
            Some(isa) => {
                assert_eq!(run(isa, g.len()), portable, "AVX2 against portable");
                // 13 elements: one vector and a scalar tail of 5.
                assert_eq!(run(isa, 13), portable[..13], "tail");
            }
            None => eprintln!("skipped: no AVX2 + FMA on this CPU, so the vector SiLU untested"),
        }
        match Isa::avx512_vnni() {
            Some(isa) => {
                assert_eq!(run(isa, g.len()), portable, "AVX-512 against portable");
                // 29 elements: a 16-lane vector, an 8-lane one and a scalar tail of 5.
                assert_eq!(run(isa, 29), portable[..29], "tails");
            }
            None => eprintln!("skipped: no AVX-512 on this CPU, so the 512-bit SiLU untested"),
        }
        for ((&x, &y), bits) in g.iter().zip(&u).zip(&portable) {
            let (got, want) = (f32::from_bits(*bits), x / (1.0 + (-x).exp()) * y);
            assert!(
                (got - want).abs() <= 4.0 * f32::EPSILON * want.abs() + 1e-30,
                "silu({x}) · {y}: {got} against {want}"
            );
        }
    }
}
