//! The two products of one attention head, for a few queries at a time, in a fixed arithmetic
//! order.
//!
//! Every score is `Σ_c q[c]·k[c]` as one fused multiply-add chain over `c = 0..hd`, and every
//! output value `Σ_j p[j]·v[j][c]` one chain over `j = 0..keys`. Queries are grouped (up to
//! [`QB`]) and keys taken eight at a time only to load each key once for several queries and to
//! fill vector lanes; no sum is ever split or reordered by that grouping. So a query gets the same
//! bits whatever other queries and keys share its pass (prefix alone, whole prompt, cached prefix
//! plus document), which 8-bit activation rounding downstream would otherwise amplify from one ulp
//! into visible score differences. The portable code runs the same chains.

use super::isa::Isa;

#[cfg(target_arch = "x86_64")]
mod avx512;

/// Queries per block.
pub const QB: usize = 4;

/// Keys per vector.
const LANES: usize = 8;

/// `out[r·stride + j] = Σ_c q[r·hd + c] · kt[c·stride + j]` for the `rows` queries of `q` (at
/// most [`QB`]) and keys `j < keys`. `kt` holds the keys transposed, `hd` rows of `stride` values
/// (`stride` a multiple of 8, keys past `keys` zero). Every instruction set gives the same bits.
#[allow(clippy::too_many_arguments)]
pub fn scores(
    isa: Isa,
    q: &[f32],
    rows: usize,
    kt: &[f32],
    hd: usize,
    stride: usize,
    keys: usize,
    out: &mut [f32],
) {
    assert!(rows <= QB && q.len() >= rows * hd && out.len() >= rows * stride);
    assert!(stride.is_multiple_of(LANES) && keys <= stride && kt.len() >= hd * stride);
    #[cfg(target_arch = "x86_64")]
    if isa.is_avx512() {
        // SAFETY: an AVX-512 `Isa` exists only after run-time detection (`engine::isa`); the
        // extents are asserted above.
        unsafe { avx512::scores(q, rows, kt, hd, stride, keys, out) };
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if isa.is_avx2() {
        // SAFETY: an AVX2 `Isa` exists only after run-time detection (`engine::isa`); the extents
        // are asserted above.
        unsafe { avx2::scores(q, rows, kt, hd, stride, keys, out) };
        return;
    }
    let _ = isa;
    for r in 0..rows {
        for j in 0..keys {
            let mut s = 0f32;
            for c in 0..hd {
                s = q[r * hd + c].mul_add(kt[c * stride + j], s);
            }
            out[r * stride + j] = s;
        }
    }
}

/// `out[r·hd + c] = Σ_{j < keys} p[r·stride + j] · v[j·hd + c]` for `rows` (at most [`QB`])
/// rows of weights `p` over values `v` (`keys` rows of `hd`). Every instruction set gives the
/// same bits.
#[allow(clippy::too_many_arguments)]
pub fn values(
    isa: Isa,
    p: &[f32],
    rows: usize,
    stride: usize,
    v: &[f32],
    hd: usize,
    keys: usize,
    out: &mut [f32],
) {
    assert!(rows <= QB && p.len() >= rows * stride && out.len() >= rows * hd);
    assert!(keys <= stride && v.len() >= keys * hd);
    #[cfg(target_arch = "x86_64")]
    if isa.is_avx512() && hd.is_multiple_of(LANES) {
        // SAFETY: an AVX-512 `Isa` exists only after run-time detection (`engine::isa`); the
        // extents are asserted above.
        unsafe { avx512::values(p, rows, stride, v, hd, keys, out) };
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if isa.is_avx2() && hd.is_multiple_of(LANES) {
        // SAFETY: an AVX2 `Isa` exists only after run-time detection (`engine::isa`); the extents
        // are asserted above.
        unsafe { avx2::values(p, rows, stride, v, hd, keys, out) };
        return;
    }
    let _ = isa;
    for r in 0..rows {
        for c in 0..hd {
            let mut s = 0f32;
            for j in 0..keys {
                s = p[r * stride + j].mul_add(v[j * hd + c], s);
            }
            out[r * hd + c] = s;
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::{LANES, QB};

    /// # Safety
    /// AVX2 and FMA; the extents checked by [`super::scores`].
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn scores(
        q: &[f32],
        rows: usize,
        kt: &[f32],
        hd: usize,
        stride: usize,
        keys: usize,
        out: &mut [f32],
    ) {
        let mut j0 = 0;
        // Sixteen keys a step where there are: each query value loaded once for two vectors.
        while j0 + 2 * LANES <= keys.next_multiple_of(LANES) {
            let mut lo = [_mm256_setzero_ps(); QB];
            let mut hi = [_mm256_setzero_ps(); QB];
            for c in 0..hd {
                let k0 = _mm256_loadu_ps(kt.as_ptr().add(c * stride + j0));
                let k1 = _mm256_loadu_ps(kt.as_ptr().add(c * stride + j0 + LANES));
                for r in 0..rows {
                    let x = _mm256_set1_ps(*q.get_unchecked(r * hd + c));
                    lo[r] = _mm256_fmadd_ps(x, k0, lo[r]);
                    hi[r] = _mm256_fmadd_ps(x, k1, hi[r]);
                }
            }
            for r in 0..rows {
                let o = out.as_mut_ptr().add(r * stride + j0);
                _mm256_storeu_ps(o, lo[r]);
                _mm256_storeu_ps(o.add(LANES), hi[r]);
            }
            j0 += 2 * LANES;
        }
        while j0 < keys {
            scores8(q, rows, kt, (hd, stride), j0, out);
            j0 += LANES;
        }
    }

    /// Scores of `rows` queries for the eight keys from `j0` (also the AVX-512 code's tail).
    ///
    /// # Safety
    /// AVX2 and FMA; `kt` holds `hd` rows of `stride ≥ j0 + 8` values, `q` `rows · hd`, `out`
    /// `rows` rows of `stride`.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn scores8(
        q: &[f32],
        rows: usize,
        kt: &[f32],
        (hd, stride): (usize, usize),
        j0: usize,
        out: &mut [f32],
    ) {
        let mut acc = [_mm256_setzero_ps(); QB];
        for c in 0..hd {
            let k = _mm256_loadu_ps(kt.as_ptr().add(c * stride + j0));
            for (r, a) in acc.iter_mut().enumerate().take(rows) {
                *a = _mm256_fmadd_ps(_mm256_set1_ps(*q.get_unchecked(r * hd + c)), k, *a);
            }
        }
        for (r, a) in acc.iter().enumerate().take(rows) {
            // Lanes past `keys` hold products with the zero padding: written, then ignored.
            _mm256_storeu_ps(out.as_mut_ptr().add(r * stride + j0), *a);
        }
    }

    /// # Safety
    /// AVX2 and FMA; `hd` a multiple of 8; the extents checked by [`super::values`].
    #[target_feature(enable = "avx2,fma")]
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
        // Sixteen values a step where there are: each weight loaded once for two vectors.
        while c0 + 2 * LANES <= hd {
            let mut lo = [_mm256_setzero_ps(); QB];
            let mut hi = [_mm256_setzero_ps(); QB];
            for j in 0..keys {
                let v0 = _mm256_loadu_ps(v.as_ptr().add(j * hd + c0));
                let v1 = _mm256_loadu_ps(v.as_ptr().add(j * hd + c0 + LANES));
                for r in 0..rows {
                    let w = _mm256_set1_ps(*p.get_unchecked(r * stride + j));
                    lo[r] = _mm256_fmadd_ps(w, v0, lo[r]);
                    hi[r] = _mm256_fmadd_ps(w, v1, hi[r]);
                }
            }
            for r in 0..rows {
                let o = out.as_mut_ptr().add(r * hd + c0);
                _mm256_storeu_ps(o, lo[r]);
                _mm256_storeu_ps(o.add(LANES), hi[r]);
            }
            c0 += 2 * LANES;
        }
        while c0 < hd {
            values8(p, rows, (stride, keys), v, hd, c0, out);
            c0 += LANES;
        }
    }

    /// Values of `rows` weight rows for the eight columns from `c0` (also the AVX-512 code's
    /// tail).
    ///
    /// # Safety
    /// AVX2 and FMA; `v` holds `keys` rows of `hd ≥ c0 + 8`, `p` `rows` rows of `stride ≥ keys`,
    /// `out` `rows · hd`.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn values8(
        p: &[f32],
        rows: usize,
        (stride, keys): (usize, usize),
        v: &[f32],
        hd: usize,
        c0: usize,
        out: &mut [f32],
    ) {
        let mut acc = [_mm256_setzero_ps(); QB];
        for j in 0..keys {
            let vv = _mm256_loadu_ps(v.as_ptr().add(j * hd + c0));
            for (r, a) in acc.iter_mut().enumerate().take(rows) {
                *a = _mm256_fmadd_ps(_mm256_set1_ps(*p.get_unchecked(r * stride + j)), vv, *a);
            }
        }
        for (r, a) in acc.iter().enumerate().take(rows) {
            _mm256_storeu_ps(out.as_mut_ptr().add(r * hd + c0), *a);
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

    /// Keys `[n, hd]` transposed into `hd` rows of `stride`, zero-padded.
    fn transpose(k: &[f32], n: usize, hd: usize, stride: usize) -> Vec<f32> {
        let mut t = vec![0f32; hd * stride];
        for j in 0..n {
            for c in 0..hd {
                t[c * stride + j] = k[j * hd + c];
            }
        }
        t
    }

    #[test]
    fn products_match_f64() {
        let (hd, n, stride) = (64, 19, 24);
        let (q, k, v) = (data(3 * hd, 1), data(n * hd, 2), data(n * hd, 3));
        let kt = transpose(&k, n, hd, stride);
        let mut s = vec![0f32; 3 * stride];
        scores(Isa::detect(), &q, 3, &kt, hd, stride, n, &mut s);
        let mut o = vec![0f32; 3 * hd];
        values(Isa::detect(), &s, 3, stride, &v, hd, n, &mut o);
        for r in 0..3 {
            for j in 0..n {
                let want: f64 = (0..hd)
                    .map(|c| q[r * hd + c] as f64 * k[j * hd + c] as f64)
                    .sum();
                assert!((s[r * stride + j] as f64 - want).abs() < 1e-5);
            }
            for c in 0..hd {
                let want: f64 = (0..n)
                    .map(|j| s[r * stride + j] as f64 * v[j * hd + c] as f64)
                    .sum();
                assert!((o[r * hd + c] as f64 - want).abs() < 1e-4);
            }
        }
    }

    /// One query's results do not depend on the other queries of its block, on how many keys
    /// beyond its own are present (zero-weighted), or on the instruction set.
    #[test]
    fn a_query_gets_the_same_bits_in_any_company() {
        let hd = 64;
        let (q, k, v) = (data(QB * hd, 4), data(40 * hd, 5), data(40 * hd, 6));
        let one = |rows: usize, keys: usize, stride: usize| {
            let kt = transpose(&k, keys, hd, stride);
            let mut s = vec![0f32; rows * stride];
            scores(
                Isa::detect(),
                &q[..rows * hd],
                rows,
                &kt,
                hd,
                stride,
                keys,
                &mut s,
            );
            // Weights: the first 13 keys visible to query 0, the rest zero.
            let mut p = vec![0f32; rows * stride];
            p[..13].copy_from_slice(&s[..13]);
            let mut o = vec![0f32; rows * hd];
            values(
                Isa::detect(),
                &p,
                rows,
                stride,
                &v[..keys * hd],
                hd,
                keys,
                &mut o,
            );
            (s[..13].to_vec(), o[..hd].to_vec())
        };
        let alone = one(1, 13, 16);
        for (rows, keys, stride) in [(QB, 13, 16), (2, 40, 40), (QB, 33, 40)] {
            let (s, o) = one(rows, keys, stride);
            let bits = |x: &[f32]| x.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&s), bits(&alone.0), "scores, {rows} rows {keys} keys");
            assert_eq!(bits(&o), bits(&alone.1), "values, {rows} rows {keys} keys");
        }
    }

    /// The AVX-512, AVX2 and portable code give the same bits, at head widths and key counts that
    /// take every step of the vector loops (whole registers, one register, an 8-lane tail).
    #[test]
    fn every_instruction_set_gives_the_same_bits() {
        let mut isas = vec![Isa::portable()];
        match Isa::avx2() {
            Some(i) => isas.push(i),
            None => {
                eprintln!("skipped: no AVX2 + FMA on this CPU, so AVX2 attention products untested")
            }
        }
        match Isa::avx512_vnni() {
            Some(i) => isas.push(i),
            None => {
                eprintln!("skipped: no AVX-512 on this CPU, so 512-bit attention products untested")
            }
        }
        let bits = |x: &[f32]| x.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
        for (hd, keys) in [
            (64usize, 77usize),
            (128, 40),
            (80, 16),
            (72, 9),
            (64, 8),
            (96, 33),
        ] {
            let stride = keys.next_multiple_of(8);
            let (q, k, v) = (data(QB * hd, hd), data(keys * hd, keys), data(keys * hd, 7));
            let kt = transpose(&k, keys, hd, stride);
            let run = |isa: Isa| {
                let mut s = vec![0f32; QB * stride];
                scores(isa, &q, QB, &kt, hd, stride, keys, &mut s);
                let mut o = vec![0f32; QB * hd];
                values(isa, &s, QB, stride, &v, hd, keys, &mut o);
                let s: Vec<f32> = s.chunks(stride).flat_map(|r| r[..keys].to_vec()).collect();
                (bits(&s), bits(&o))
            };
            let want = run(isas[0]);
            for &isa in &isas[1..] {
                assert_eq!(run(isa), want, "{} at hd {hd}, {keys} keys", isa.name());
            }
        }
    }
}
