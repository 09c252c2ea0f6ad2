//! The attention products on 512-bit vectors: sixteen keys (scores) or sixteen value columns
//! (values) per register, each lane the same fused multiply-add chain as the AVX2 and portable
//! code, so the bits are the same on every instruction set.

use std::arch::x86_64::*;

use super::{avx2, LANES, QB};

/// Keys per 512-bit vector.
const WIDE: usize = 2 * LANES;

/// Scores of `rows` queries for the `V · 16` keys from `j0`.
///
/// # Safety
/// AVX-512 F; `kt` holds `hd` rows of `stride ≥ j0 + V·16` values, `q` `rows · hd`, `out`
/// `rows` rows of `stride`.
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn scores_step<const V: usize>(
    q: &[f32],
    rows: usize,
    kt: &[f32],
    (hd, stride): (usize, usize),
    j0: usize,
    out: &mut [f32],
) {
    let mut acc = [[_mm512_setzero_ps(); V]; QB];
    for c in 0..hd {
        let k: [__m512; V] =
            std::array::from_fn(|i| _mm512_loadu_ps(kt.as_ptr().add(c * stride + j0 + i * WIDE)));
        for (r, a) in acc.iter_mut().enumerate().take(rows) {
            let x = _mm512_set1_ps(*q.get_unchecked(r * hd + c));
            for i in 0..V {
                a[i] = _mm512_fmadd_ps(x, k[i], a[i]);
            }
        }
    }
    for (r, a) in acc.iter().enumerate().take(rows) {
        for (i, v) in a.iter().enumerate() {
            _mm512_storeu_ps(out.as_mut_ptr().add(r * stride + j0 + i * WIDE), *v);
        }
    }
}

/// # Safety
/// AVX-512 F, AVX2 and FMA; the extents checked by [`super::scores`].
#[target_feature(enable = "avx512f,avx2,fma")]
pub unsafe fn scores(
    q: &[f32],
    rows: usize,
    kt: &[f32],
    hd: usize,
    stride: usize,
    keys: usize,
    out: &mut [f32],
) {
    // Whole 8-key vectors up to `keys` (within `stride`, a multiple of 8); lanes past `keys` hold
    // products with the zero padding: written, then ignored.
    let end = keys.next_multiple_of(LANES);
    let mut j0 = 0;
    while j0 + 2 * WIDE <= end {
        scores_step::<2>(q, rows, kt, (hd, stride), j0, out);
        j0 += 2 * WIDE;
    }
    if j0 + WIDE <= end {
        scores_step::<1>(q, rows, kt, (hd, stride), j0, out);
        j0 += WIDE;
    }
    if j0 < end {
        avx2::scores8(q, rows, kt, (hd, stride), j0, out);
    }
}

/// Values of `rows` weight rows for the `V · 16` columns from `c0`.
///
/// # Safety
/// AVX-512 F; `v` holds `keys` rows of `hd ≥ c0 + V·16`, `p` `rows` rows of `stride ≥ keys`,
/// `out` `rows · hd`.
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn values_step<const V: usize>(
    p: &[f32],
    rows: usize,
    (stride, keys): (usize, usize),
    v: &[f32],
    hd: usize,
    c0: usize,
    out: &mut [f32],
) {
    let mut acc = [[_mm512_setzero_ps(); V]; QB];
    for j in 0..keys {
        let vv: [__m512; V] =
            std::array::from_fn(|i| _mm512_loadu_ps(v.as_ptr().add(j * hd + c0 + i * WIDE)));
        for (r, a) in acc.iter_mut().enumerate().take(rows) {
            let w = _mm512_set1_ps(*p.get_unchecked(r * stride + j));
            for i in 0..V {
                a[i] = _mm512_fmadd_ps(w, vv[i], a[i]);
            }
        }
    }
    for (r, a) in acc.iter().enumerate().take(rows) {
        for (i, x) in a.iter().enumerate() {
            _mm512_storeu_ps(out.as_mut_ptr().add(r * hd + c0 + i * WIDE), *x);
        }
    }
}

/// # Safety
/// AVX-512 F, AVX2 and FMA; `hd` a multiple of 8; the extents checked by [`super::values`].
#[target_feature(enable = "avx512f,avx2,fma")]
pub unsafe fn values(
    p: &[f32],
    rows: usize,
    stride: usize,
    v: &[f32],
    hd: usize,
    keys: usize,
    out: &mut [f32],
) {
    let mut c0 = 0;
    while c0 + 4 * WIDE <= hd {
        values_step::<4>(p, rows, (stride, keys), v, hd, c0, out);
        c0 += 4 * WIDE;
    }
    while c0 + WIDE <= hd {
        values_step::<1>(p, rows, (stride, keys), v, hd, c0, out);
        c0 += WIDE;
    }
    if c0 < hd {
        avx2::values8(p, rows, (stride, keys), v, hd, c0, out);
    }
}
