//! Dot products and scaled adds over one attention head's vectors, in a fixed arithmetic order.
//!
//! Each result depends only on its own inputs, never on how many other rows or keys there are:
//! attention built from these gives a query the same bits in any pass (prefix alone, whole
//! prompt, cached prefix plus document), which 8-bit activation rounding downstream would
//! otherwise amplify from one ulp into visible score differences.

use super::qgemm::Isa;

/// `Σ a[c]·b[c]`: eight lanes over `c` in order, then a fixed pairwise sum of the lanes (AVX2); a
/// plain left-to-right sum otherwise.
pub fn dot(a: &[f32], b: &[f32], isa: Isa) -> f32 {
    assert_eq!(a.len(), b.len(), "dot of vectors of different lengths");
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Avx2 {
        // SAFETY: `Isa::Avx2` is chosen only after runtime detection of AVX2 and FMA; both slices
        // have the same length (asserted above).
        return unsafe { avx2::dot(a, b) };
    }
    let _ = isa;
    a.iter().zip(b).fold(0f32, |s, (x, y)| x.mul_add(*y, s))
}

/// `y += w·x`.
pub fn axpy(w: f32, x: &[f32], y: &mut [f32], isa: Isa) {
    assert_eq!(x.len(), y.len(), "axpy of vectors of different lengths");
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Avx2 {
        // SAFETY: as in `dot`; `x` and `y` have the same length.
        unsafe { avx2::axpy(w, x, y) };
        return;
    }
    let _ = isa;
    y.iter_mut()
        .zip(x)
        .for_each(|(yi, xi)| *yi = w.mul_add(*xi, *yi));
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    /// # Safety
    /// AVX2 and FMA; `a.len() == b.len()`.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn dot(a: &[f32], b: &[f32]) -> f32 {
        let n = a.len();
        let chunks = n / 8;
        let mut acc = _mm256_setzero_ps();
        for c in 0..chunks {
            let x = _mm256_loadu_ps(a.as_ptr().add(c * 8));
            let y = _mm256_loadu_ps(b.as_ptr().add(c * 8));
            acc = _mm256_fmadd_ps(x, y, acc);
        }
        let h = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1));
        let h = _mm_add_ps(h, _mm_movehl_ps(h, h));
        let mut s = _mm_cvtss_f32(_mm_add_ss(h, _mm_movehdup_ps(h)));
        for i in chunks * 8..n {
            s = a[i].mul_add(b[i], s);
        }
        s
    }

    /// # Safety
    /// AVX2 and FMA; `x.len() == y.len()`.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn axpy(w: f32, x: &[f32], y: &mut [f32]) {
        let n = x.len();
        let chunks = n / 8;
        let wv = _mm256_set1_ps(w);
        for c in 0..chunks {
            let xp = x.as_ptr().add(c * 8);
            let yp = y.as_mut_ptr().add(c * 8);
            _mm256_storeu_ps(
                yp,
                _mm256_fmadd_ps(wv, _mm256_loadu_ps(xp), _mm256_loadu_ps(yp)),
            );
        }
        for i in chunks * 8..n {
            y[i] = w.mul_add(x[i], y[i]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(n: usize, seed: usize) -> Vec<f32> {
        (0..n)
            .map(|i| ((i * 7919 + seed * 104_729) % 1009) as f32 / 1009.0 - 0.5)
            .collect()
    }

    #[test]
    fn dot_and_axpy_match_f64_on_every_isa() {
        for isa in [Isa::Portable, Isa::detect()] {
            for n in [1, 7, 8, 64, 67, 128] {
                let (a, b) = (data(n, 1), data(n, 2));
                let want: f64 = a.iter().zip(&b).map(|(x, y)| *x as f64 * *y as f64).sum();
                assert!(
                    (dot(&a, &b, isa) as f64 - want).abs() < 1e-5,
                    "{isa:?} n {n}"
                );
                let mut y = b.clone();
                axpy(0.75, &a, &mut y, isa);
                for i in 0..n {
                    assert!((y[i] - (b[i] + 0.75 * a[i])).abs() < 1e-6);
                }
            }
        }
    }

    #[test]
    fn a_dot_depends_only_on_its_own_inputs() {
        // The same vectors inside differently sized buffers, at different offsets: same bits.
        let isa = Isa::detect();
        let (a, b) = (data(64, 3), data(64, 4));
        let mut big = data(64 * 5, 5);
        big[128..192].copy_from_slice(&b);
        assert_eq!(
            dot(&a, &b, isa).to_bits(),
            dot(&a, &big[128..192], isa).to_bits()
        );
    }
}
