//! AVX2 + FMA (+ F16C) kernels, compiled for those features and called only after runtime detection.
//!
//! Per 32-value block and activation row: 8 chunk products `maddubs` (u8 × i8 → i16 pairs), summed
//! to i32 lanes that are already the 8 output columns, then one convert and one fused multiply-add
//! with the 8 weight scales × the row's scale. Each weight chunk is loaded once for `MR` rows.

use std::arch::x86_64::*;

use super::act::{QuantRows, RowOut, BLOCK};
use super::pack::{Nibbles, TileQ5, TileQ8, TILE};

/// The kernels' raw reads stay inside `act` and the tile slice: rows `i0..i0 + rows` exist (values,
/// scales, sums and half sums) and there is one tile block per activation block.
pub(super) fn assert_extents(tiles: usize, act: &QuantRows, i0: usize, rows: usize) {
    let (k, kb) = (act.k, act.blocks());
    assert!(tiles == kb && (i0 + rows) * k <= act.q.len());
    assert!((i0 + rows) * kb <= act.d.len() && (i0 + rows) * kb <= act.ds.len());
    assert!((i0 + rows) * kb * 2 <= act.half.len() && (i0 + rows) * kb <= act.centre8.len());
}

/// Rows `i0..i0 + MR` of `act` times one Q8_0 tile. Q8_0 weights are signed, so the sign trick:
/// `|w| × (x · sign w)`; each i16 pair sum is at most 2 · 128 · 127 and cannot saturate.
///
/// # Safety
/// The CPU must support AVX2 and FMA. (Rows `i0..i0 + MR` of `act` and `act.blocks()` tile blocks
/// are asserted on entry, see [`assert_extents`].)
#[target_feature(enable = "avx2,fma")]
pub unsafe fn q8_rows<const MR: usize>(
    tiles: &[TileQ8],
    act: &QuantRows,
    i0: usize,
) -> [[f32; TILE]; MR] {
    let (k, kb) = (act.k, act.blocks());
    assert_extents(tiles.len(), act, i0, MR);
    let ones = _mm256_set1_epi16(1);
    let mut acc = [_mm256_setzero_ps(); MR];
    let xq = act.q.as_ptr();
    for (b, tb) in tiles.iter().enumerate() {
        let mut sums = [_mm256_setzero_si256(); MR];
        for c in 0..TILE {
            let w = _mm256_load_si256(tb.qs.as_ptr().add(c * 32) as *const __m256i);
            let aw = _mm256_sign_epi8(w, w);
            for (i, s) in sums.iter_mut().enumerate() {
                let xp = xq.add((i0 + i) * k + b * BLOCK + c * 4) as *const i32;
                let x = _mm256_set1_epi32(xp.read_unaligned());
                let p = _mm256_maddubs_epi16(aw, _mm256_sign_epi8(x, w));
                *s = _mm256_add_epi32(*s, _mm256_madd_epi16(p, ones));
            }
        }
        let dw = _mm256_load_ps(tb.d.as_ptr());
        for (i, (a, s)) in acc.iter_mut().zip(sums).enumerate() {
            let dx = _mm256_set1_ps(*act.d.get_unchecked((i0 + i) * kb + b));
            *a = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s), _mm256_mul_ps(dw, dx), *a);
        }
    }
    store(acc)
}

/// Rows `i0..i0 + MR` of `act` times one 4-bit tile. Nibbles are unsigned (0..15), so `maddubs`
/// applies directly; eight i16 partial sums stay within 8 · 2 · 15 · 127 = 30480, so they are
/// added as i16 before one widening per block; the offsets come off as `m · Σx`, or for centred
/// tiles (Q4_0) as `−8 · Σx` in i32 before the conversion.
///
/// # Safety
/// As [`q8_rows`].
#[target_feature(enable = "avx2,fma")]
pub unsafe fn q4_rows<T: Nibbles, const MR: usize>(
    tiles: &[T],
    act: &QuantRows,
    i0: usize,
) -> [[f32; TILE]; MR] {
    let (k, kb) = (act.k, act.blocks());
    assert_extents(tiles.len(), act, i0, MR);
    let ones = _mm256_set1_epi16(1);
    let low = _mm256_set1_epi8(0x0F);
    let mut acc = [_mm256_setzero_ps(); MR];
    let xq = act.q.as_ptr();
    for (b, tb) in tiles.iter().enumerate() {
        let mut sums = [_mm256_setzero_si256(); MR];
        for h in 0..4 {
            let v = _mm256_load_si256(tb.qs().as_ptr().add(h * 32) as *const __m256i);
            let lo = _mm256_and_si256(v, low);
            let hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), low);
            for (i, s) in sums.iter_mut().enumerate() {
                let xp = xq.add((i0 + i) * k + b * BLOCK);
                let xl = _mm256_set1_epi32((xp.add(h * 4) as *const i32).read_unaligned());
                let xh = _mm256_set1_epi32((xp.add(16 + h * 4) as *const i32).read_unaligned());
                *s = _mm256_add_epi16(*s, _mm256_maddubs_epi16(lo, xl));
                *s = _mm256_add_epi16(*s, _mm256_maddubs_epi16(hi, xh));
            }
        }
        let mut sums = sums.map(|s| _mm256_madd_epi16(s, ones));
        if T::CENTRED {
            for (i, s) in sums.iter_mut().enumerate() {
                let c = *act.centre8.get_unchecked((i0 + i) * kb + b);
                *s = _mm256_add_epi32(*s, _mm256_set1_epi32(c));
            }
        }
        let m = (!T::CENTRED).then(|| tb.m());
        finish_offset(&mut acc, sums, (tb.d(), m), act, i0 * kb + b);
    }
    store(acc)
}

/// Rows `i0..i0 + MR` of `act` times one 5-bit tile: as [`q4_rows`], with chunk `c`'s fifth bits
/// shifted into place from the high-bit plane. A product pair now reaches 2 · 31 · 127 = 7874, so
/// four products (two groups) are added as i16 (31496) before each widening.
///
/// # Safety
/// As [`q8_rows`].
#[target_feature(enable = "avx2,fma")]
pub unsafe fn q5_rows<const MR: usize>(
    tiles: &[TileQ5],
    act: &QuantRows,
    i0: usize,
) -> [[f32; TILE]; MR] {
    let (k, kb) = (act.k, act.blocks());
    assert_extents(tiles.len(), act, i0, MR);
    let ones = _mm256_set1_epi16(1);
    let low = _mm256_set1_epi8(0x0F);
    let bit4 = _mm256_set1_epi8(0x10);
    let mut acc = [_mm256_setzero_ps(); MR];
    let xq = act.q.as_ptr();
    for (b, tb) in tiles.iter().enumerate() {
        let qh = _mm256_load_si256(tb.qh.as_ptr() as *const __m256i);
        let mut sums = [_mm256_setzero_si256(); MR];
        for pair in 0..2 {
            let mut s16 = [_mm256_setzero_si256(); MR];
            for h in 2 * pair..2 * pair + 2 {
                let v = _mm256_load_si256(tb.qs.as_ptr().add(h * 32) as *const __m256i);
                // Chunk h's fifth bits are bit h of `qh`, chunk h + 4's bit h + 4: to bit 4 by a
                // shift of 4 − h left, or h right. A 16-bit shift of at most 4 moves no bit that
                // the mask keeps across a byte boundary.
                let up = _mm_cvtsi32_si128(4 - h as i32);
                let down = _mm_cvtsi32_si128(h as i32);
                let hl = _mm256_and_si256(_mm256_sll_epi16(qh, up), bit4);
                let hh = _mm256_and_si256(_mm256_srl_epi16(qh, down), bit4);
                let lo = _mm256_or_si256(_mm256_and_si256(v, low), hl);
                let hi = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(v, 4), low), hh);
                for (i, s) in s16.iter_mut().enumerate() {
                    let xp = xq.add((i0 + i) * k + b * BLOCK);
                    let xl = _mm256_set1_epi32((xp.add(h * 4) as *const i32).read_unaligned());
                    let xh = _mm256_set1_epi32((xp.add(16 + h * 4) as *const i32).read_unaligned());
                    *s = _mm256_add_epi16(*s, _mm256_maddubs_epi16(lo, xl));
                    *s = _mm256_add_epi16(*s, _mm256_maddubs_epi16(hi, xh));
                }
            }
            for (s, p) in sums.iter_mut().zip(s16) {
                *s = _mm256_add_epi32(*s, _mm256_madd_epi16(p, ones));
            }
        }
        finish_offset(&mut acc, sums, (&tb.d, Some(&tb.m)), act, i0 * kb + b);
    }
    store(acc)
}

/// The 4- and 5-bit types' block finish for each row `i`: `acc + d · dx · s − m · Σx`, with the
/// row's exact i32 block sum `s`, its activation scale `dx` and block sum `Σx` (`ds`), at index
/// `at0 + i · kb` of `act`; without `m` (centred tiles, their offset already in `s`) `acc + d · dx · s`.
///
/// # Safety
/// AVX2 and FMA; rows `at0 / kb .. + MR` inside `act` (asserted by the callers' extents).
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn finish_offset<const MR: usize>(
    acc: &mut [__m256; MR],
    sums: [__m256i; MR],
    (d, m): (&[f32; TILE], Option<&[f32; TILE]>),
    act: &QuantRows,
    at0: usize,
) {
    let kb = act.blocks();
    let dw = _mm256_load_ps(d.as_ptr());
    let mw = m.map(|m| _mm256_load_ps(m.as_ptr()));
    for (i, (a, s)) in acc.iter_mut().zip(sums).enumerate() {
        let at = at0 + i * kb;
        let dx = _mm256_set1_ps(*act.d.get_unchecked(at));
        *a = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s), _mm256_mul_ps(dw, dx), *a);
        if let Some(mw) = mw {
            let sx = _mm256_set1_ps(*act.ds.get_unchecked(at));
            *a = _mm256_fnmadd_ps(mw, sx, *a);
        }
    }
}

#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn store<const MR: usize>(acc: [__m256; MR]) -> [[f32; TILE]; MR] {
    let mut out = [[0f32; TILE]; MR];
    for (o, a) in out.iter_mut().zip(acc) {
        _mm256_storeu_ps(o.as_mut_ptr(), a);
    }
    out
}

/// One row of activations to 8-bit blocks: `d = max|x| / 127`, `q = round(x / d)` (ties to even),
/// `ds = d · Σq`, the half sums and `−8 · Σq`; the same numbers as the portable code.
///
/// # Safety
/// AVX2 and FMA. (Every read and write goes through a bounds-checked slice or `chunks_exact`.)
#[target_feature(enable = "avx2,fma")]
pub unsafe fn quantize_row(x: &[f32], out: RowOut<'_>) {
    let abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFF_FFFF));
    let order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    for (b, (xb, qb)) in x
        .chunks_exact(BLOCK)
        .zip(out.q.chunks_exact_mut(BLOCK))
        .enumerate()
    {
        let p = xb.as_ptr();
        let v = [
            _mm256_loadu_ps(p),
            _mm256_loadu_ps(p.add(8)),
            _mm256_loadu_ps(p.add(16)),
            _mm256_loadu_ps(p.add(24)),
        ];
        let mut m = _mm256_and_ps(v[0], abs_mask);
        for vi in &v[1..] {
            m = _mm256_max_ps(m, _mm256_and_ps(*vi, abs_mask));
        }
        let m4 = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
        let m2 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
        let m1 = _mm_max_ss(m2, _mm_movehdup_ps(m2));
        let amax = _mm_cvtss_f32(m1);
        let scale = amax / 127.0;
        let inv = _mm256_set1_ps(if scale > 0.0 { 1.0 / scale } else { 0.0 });
        const NEAREST: i32 = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;
        let lim = _mm256_set1_ps(127.0);
        let r = v.map(|vi| {
            let t = _mm256_round_ps::<NEAREST>(_mm256_mul_ps(vi, inv));
            _mm256_cvtps_epi32(_mm256_max_ps(
                _mm256_min_ps(t, lim),
                _mm256_sub_ps(_mm256_setzero_ps(), lim),
            ))
        });
        let (lo, hi) = (
            hsum(_mm256_add_epi32(r[0], r[1])),
            hsum(_mm256_add_epi32(r[2], r[3])),
        );
        // i32 → i16 → i8 packs interleave the 128-bit lanes; the permutation restores the order.
        let w = _mm256_packs_epi32(r[0], r[1]);
        let z = _mm256_packs_epi32(r[2], r[3]);
        let bytes = _mm256_permutevar8x32_epi32(_mm256_packs_epi16(w, z), order);
        _mm256_storeu_si256(qb.as_mut_ptr() as *mut __m256i, bytes);
        out.d[b] = scale;
        out.ds[b] = scale * (lo + hi) as f32;
        out.half[2 * b] = lo as i16;
        out.half[2 * b + 1] = hi as i16;
        out.centre8[b] = -8 * (lo + hi);
    }
}

/// The sum of the 8 i32 lanes.
#[target_feature(enable = "avx2,fma")]
unsafe fn hsum(s: __m256i) -> i32 {
    let s4 = _mm_add_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256(s, 1));
    let s2 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0b01_00_11_10));
    let s1 = _mm_add_epi32(s2, _mm_shuffle_epi32(s2, 0b10_11_00_01));
    _mm_cvtsi128_si32(s1)
}
