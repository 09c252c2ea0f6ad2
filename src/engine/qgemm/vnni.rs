//! AVX-VNNI kernels (256-bit `vpdpbusd`), called only on an `Isa` that detection made after finding
//! AVX-VNNI besides AVX2, FMA and F16C.
//!
//! One `vpdpbusd` multiplies a chunk's unsigned weight bytes by the broadcast signed activation
//! bytes and adds each row's four products into its i32 lane: the `maddubs` + `madd` + add of the
//! AVX2 kernels in one instruction, with no i16 intermediate, so no saturation limits and no
//! widening steps. Block and half-block sums are exact i32; scales, offsets and mins are applied as
//! in the AVX2 kernels (same tiles, same activations).

use std::arch::x86_64::*;

use super::act::{QuantRows, BLOCK};
use super::avx2::{assert_extents, finish_offset, store};
use super::avx2_k::{half_sums, q2_chunk, q3_chunk, row_pairs};
use super::pack::{Nibbles, TileQ2, TileQ3, TileQ5, TileQ6, TileQ8, Tiles, TILE};

/// Rows `i0..i0 + R` of `act` times the tile blocks `blocks` of `tiles`, on the kernel for their
/// type.
///
/// # Safety
/// The CPU must support AVX2, FMA, F16C and AVX-VNNI (an AVX-VNNI `Isa` says so). Extents are
/// asserted by each kernel.
pub unsafe fn tile_rows<const R: usize>(
    tiles: &Tiles,
    blocks: std::ops::Range<usize>,
    act: &QuantRows,
    i0: usize,
) -> [[f32; TILE]; R] {
    match tiles {
        Tiles::Q8(t) => q8_rows::<R>(&t[blocks], act, i0),
        Tiles::Q40(t) => q4_rows::<_, R>(&t[blocks], act, i0),
        Tiles::Q4(t) => q4_rows::<_, R>(&t[blocks], act, i0),
        Tiles::Q5(t) => q5_rows::<R>(&t[blocks], act, i0),
        Tiles::Q6(t) => q6_rows::<R>(&t[blocks], act, i0),
        Tiles::Q3(t) => q3_rows::<R>(&t[blocks], act, i0),
        Tiles::Q2(t) => q2_rows::<R>(&t[blocks], act, i0),
    }
}

/// The activation's 4 bytes at `xp` broadcast to every lane.
///
/// # Safety
/// AVX2; 4 readable bytes at `xp` (inside the rows the caller asserted).
#[inline]
#[target_feature(enable = "avx2,fma,avxvnni")]
unsafe fn bcast(xp: *const i8) -> __m256i {
    _mm256_set1_epi32((xp as *const i32).read_unaligned())
}

/// Q8_0: signed weights, so `|w| · (x · sign w)` into one `vpdpbusd` per chunk and row.
#[target_feature(enable = "avx2,fma,avxvnni")]
unsafe fn q8_rows<const MR: usize>(
    tiles: &[TileQ8],
    act: &QuantRows,
    i0: usize,
) -> [[f32; TILE]; MR] {
    let (k, kb) = (act.k, act.blocks());
    assert_extents(tiles.len(), act, i0, MR);
    let mut acc = [_mm256_setzero_ps(); MR];
    let xq = act.q.as_ptr();
    for (b, tb) in tiles.iter().enumerate() {
        let mut sums = [_mm256_setzero_si256(); MR];
        for c in 0..TILE {
            let w = _mm256_load_si256(tb.qs.as_ptr().add(c * 32) as *const __m256i);
            let aw = _mm256_sign_epi8(w, w);
            for (i, s) in sums.iter_mut().enumerate() {
                let x = bcast(xq.add((i0 + i) * k + b * BLOCK + c * 4));
                *s = _mm256_dpbusd_avx_epi32(*s, aw, _mm256_sign_epi8(x, w));
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

/// Q4_0, Q4_1, Q4_K: nibbles (0..15) straight into `vpdpbusd`; the offsets as `m · Σx`, or for
/// Q4_0's centred tiles as `−8 · Σx` where the block's i32 sums start.
#[target_feature(enable = "avx2,fma,avxvnni")]
unsafe fn q4_rows<T: Nibbles, const MR: usize>(
    tiles: &[T],
    act: &QuantRows,
    i0: usize,
) -> [[f32; TILE]; MR] {
    let (k, kb) = (act.k, act.blocks());
    assert_extents(tiles.len(), act, i0, MR);
    let low = _mm256_set1_epi8(0x0F);
    let mut acc = [_mm256_setzero_ps(); MR];
    let xq = act.q.as_ptr();
    for (b, tb) in tiles.iter().enumerate() {
        let mut sums = [_mm256_setzero_si256(); MR];
        if T::CENTRED {
            for (i, s) in sums.iter_mut().enumerate() {
                *s = _mm256_set1_epi32(*act.centre8.get_unchecked((i0 + i) * kb + b));
            }
        }
        for h in 0..4 {
            let v = _mm256_load_si256(tb.qs().as_ptr().add(h * 32) as *const __m256i);
            let lo = _mm256_and_si256(v, low);
            let hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), low);
            for (i, s) in sums.iter_mut().enumerate() {
                let xp = xq.add((i0 + i) * k + b * BLOCK);
                *s = _mm256_dpbusd_avx_epi32(*s, lo, bcast(xp.add(h * 4)));
                *s = _mm256_dpbusd_avx_epi32(*s, hi, bcast(xp.add(16 + h * 4)));
            }
        }
        let m = (!T::CENTRED).then(|| tb.m());
        finish_offset(&mut acc, sums, (tb.d(), m), act, i0 * kb + b);
    }
    store(acc)
}

/// Q5_0, Q5_1, Q5_K: as [`q4_rows`] with each chunk's fifth bits from the high-bit plane.
#[target_feature(enable = "avx2,fma,avxvnni")]
unsafe fn q5_rows<const MR: usize>(
    tiles: &[TileQ5],
    act: &QuantRows,
    i0: usize,
) -> [[f32; TILE]; MR] {
    let (k, kb) = (act.k, act.blocks());
    assert_extents(tiles.len(), act, i0, MR);
    let low = _mm256_set1_epi8(0x0F);
    let bit4 = _mm256_set1_epi8(0x10);
    let mut acc = [_mm256_setzero_ps(); MR];
    let xq = act.q.as_ptr();
    for (b, tb) in tiles.iter().enumerate() {
        let qh = _mm256_load_si256(tb.qh.as_ptr() as *const __m256i);
        let mut sums = [_mm256_setzero_si256(); MR];
        for h in 0..4 {
            let v = _mm256_load_si256(tb.qs.as_ptr().add(h * 32) as *const __m256i);
            // Chunk h's fifth bits are bit h of `qh`, chunk h + 4's bit h + 4 (moved to bit 4 by
            // 16-bit shifts of at most 4: no kept bit crosses a byte).
            let hl = _mm256_and_si256(_mm256_sll_epi16(qh, _mm_cvtsi32_si128(4 - h as i32)), bit4);
            let hh = _mm256_and_si256(_mm256_srl_epi16(qh, _mm_cvtsi32_si128(h as i32)), bit4);
            let lo = _mm256_or_si256(_mm256_and_si256(v, low), hl);
            let hi = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(v, 4), low), hh);
            for (i, s) in sums.iter_mut().enumerate() {
                let xp = xq.add((i0 + i) * k + b * BLOCK);
                *s = _mm256_dpbusd_avx_epi32(*s, lo, bcast(xp.add(h * 4)));
                *s = _mm256_dpbusd_avx_epi32(*s, hi, bcast(xp.add(16 + h * 4)));
            }
        }
        finish_offset(&mut acc, sums, (&tb.d, Some(&tb.m)), act, i0 * kb + b);
    }
    store(acc)
}

/// Row r's sub-scales of half 0 and half 1 as i32 lanes r, from 16 bytes `[half 0 of rows 0..8,
/// half 1 of rows 0..8]` (signed).
#[inline]
#[target_feature(enable = "avx2,fma,avxvnni")]
unsafe fn sub_scales(sc: __m128i) -> [__m256i; 2] {
    [
        _mm256_cvtepi8_epi32(sc),
        _mm256_cvtepi8_epi32(_mm_srli_si128(sc, 8)),
    ]
}

/// The row's two activation half sums of block `at`, each times `off`, as i32 broadcasts.
///
/// # Safety
/// `2 * at + 2 <= act.half.len()` (asserted by the callers' extents).
#[inline]
unsafe fn half_offsets(act: &QuantRows, at: usize, off: i32) -> [i32; 2] {
    let h = act.half.as_ptr().add(2 * at);
    [off * *h as i32, off * *h.add(1) as i32]
}

/// `sc_0 · (s_0 − o_0) + sc_1 · (s_1 − o_1)` per lane, exact in i32 (`|s_h| ≤ 16 · 63 · 127`,
/// `|o_h| ≤ 32 · 16 · 127`, `|sc_h| ≤ 127`).
#[inline]
#[target_feature(enable = "avx2,fma,avxvnni")]
unsafe fn scaled(s: [__m256i; 2], sc: &[__m256i; 2], o: [i32; 2]) -> __m256i {
    let a = _mm256_mullo_epi32(_mm256_sub_epi32(s[0], _mm256_set1_epi32(o[0])), sc[0]);
    let b = _mm256_mullo_epi32(_mm256_sub_epi32(s[1], _mm256_set1_epi32(o[1])), sc[1]);
    _mm256_add_epi32(a, b)
}

/// Each row's two half sums as the i16 pair of its lane (half 0 low, half 1 high), for one `madd`
/// with the row's pair of sub-scales. Exact where both sums fit in i16 (Q3_K: `16 · 7 · 127`,
/// Q2_K: `16 · 3 · 127`): the low word of an i32 is then the sum itself.
#[inline]
#[target_feature(enable = "avx2,fma,avxvnni")]
unsafe fn pair16(s: [__m256i; 2]) -> __m256i {
    _mm256_blend_epi16::<0xAA>(s[0], _mm256_slli_epi32::<16>(s[1]))
}

/// Q6_K: unsigned values (0..63), one i32 sum per half; the `− 32` through the half sums.
#[target_feature(enable = "avx2,fma,f16c,avxvnni")]
unsafe fn q6_rows<const MR: usize>(
    tiles: &[TileQ6],
    act: &QuantRows,
    i0: usize,
) -> [[f32; TILE]; MR] {
    let (k, kb) = (act.k, act.blocks());
    assert_extents(tiles.len(), act, i0, MR);
    let mut acc = [_mm256_setzero_ps(); MR];
    let xq = act.q.as_ptr();
    for (b, tb) in tiles.iter().enumerate() {
        let mut halves = [[_mm256_setzero_si256(); 2]; MR];
        for c in 0..TILE {
            let w = _mm256_load_si256(tb.qs.as_ptr().add(c * 32) as *const __m256i);
            for (i, s) in halves.iter_mut().enumerate() {
                let x = bcast(xq.add((i0 + i) * k + b * BLOCK + c * 4));
                s[c / 4] = _mm256_dpbusd_avx_epi32(s[c / 4], w, x);
            }
        }
        let sc = sub_scales(_mm_loadu_si128(tb.sc.as_ptr() as *const __m128i));
        let dw = _mm256_cvtph_ps(_mm_loadu_si128(tb.d.as_ptr() as *const __m128i));
        for (i, (a, s)) in acc.iter_mut().zip(halves).enumerate() {
            let at = (i0 + i) * kb + b;
            let t = scaled(s, &sc, half_offsets(act, at, 32));
            let dx = _mm256_set1_ps(*act.d.get_unchecked(at));
            *a = _mm256_fmadd_ps(_mm256_cvtepi32_ps(t), _mm256_mul_ps(dw, dx), *a);
        }
    }
    store(acc)
}

/// Q3_K: two low bits from the 2-bit groups and the third from the high-bit plane (0..7); the
/// `− 4` through the half sums.
#[target_feature(enable = "avx2,fma,f16c,avxvnni")]
unsafe fn q3_rows<const MR: usize>(
    tiles: &[TileQ3],
    act: &QuantRows,
    i0: usize,
) -> [[f32; TILE]; MR] {
    let (k, kb) = (act.k, act.blocks());
    assert_extents(tiles.len(), act, i0, MR);
    let mut acc = [_mm256_setzero_ps(); MR];
    let xq = act.q.as_ptr();
    for (b, tb) in tiles.iter().enumerate() {
        let g = [
            _mm256_load_si256(tb.qs.as_ptr() as *const __m256i),
            _mm256_load_si256(tb.qs.as_ptr().add(32) as *const __m256i),
        ];
        let qh = _mm256_load_si256(tb.qh.as_ptr() as *const __m256i);
        let mut halves = [[_mm256_setzero_si256(); 2]; MR];
        for c in 0..TILE {
            let w = q3_chunk(&g, qh, c);
            for (i, s) in halves.iter_mut().enumerate() {
                let x = bcast(xq.add((i0 + i) * k + b * BLOCK + c * 4));
                s[c / 4] = _mm256_dpbusd_avx_epi32(s[c / 4], w, x);
            }
        }
        let sc_pairs = row_pairs(_mm_loadu_si128(tb.sc.as_ptr() as *const __m128i));
        let dw = _mm256_cvtph_ps(_mm_loadu_si128(tb.d.as_ptr() as *const __m128i));
        for (i, (a, s)) in acc.iter_mut().zip(halves).enumerate() {
            let at = (i0 + i) * kb + b;
            let off = _mm256_slli_epi32::<2>(_mm256_madd_epi16(half_sums(act, at), sc_pairs));
            let t = _mm256_sub_epi32(_mm256_madd_epi16(pair16(s), sc_pairs), off);
            let dx = _mm256_set1_ps(*act.d.get_unchecked(at));
            *a = _mm256_fmadd_ps(_mm256_cvtepi32_ps(t), _mm256_mul_ps(dw, dx), *a);
        }
    }
    store(acc)
}

/// Q2_K: values 0..3 from the 2-bit groups; per half `sc · Σqx` and the mins `m · Σx` in i32,
/// then `d` and `dmin`.
#[target_feature(enable = "avx2,fma,f16c,avxvnni")]
unsafe fn q2_rows<const MR: usize>(
    tiles: &[TileQ2],
    act: &QuantRows,
    i0: usize,
) -> [[f32; TILE]; MR] {
    let (k, kb) = (act.k, act.blocks());
    assert_extents(tiles.len(), act, i0, MR);
    let nib = _mm_set1_epi8(0x0F);
    let mut acc = [_mm256_setzero_ps(); MR];
    let xq = act.q.as_ptr();
    for (b, tb) in tiles.iter().enumerate() {
        // 112-byte tiles are 16-aligned only: unaligned loads.
        let g = [
            _mm256_loadu_si256(tb.qs.as_ptr() as *const __m256i),
            _mm256_loadu_si256(tb.qs.as_ptr().add(32) as *const __m256i),
        ];
        let mut halves = [[_mm256_setzero_si256(); 2]; MR];
        for c in 0..TILE {
            let w = q2_chunk(&g, c);
            for (i, s) in halves.iter_mut().enumerate() {
                let x = bcast(xq.add((i0 + i) * k + b * BLOCK + c * 4));
                s[c / 4] = _mm256_dpbusd_avx_epi32(s[c / 4], w, x);
            }
        }
        let scm = _mm_loadu_si128(tb.scm.as_ptr() as *const __m128i);
        let sc_pairs = row_pairs(_mm_and_si128(scm, nib));
        let m_pairs = row_pairs(_mm_and_si128(_mm_srli_epi16(scm, 4), nib));
        let dw = _mm256_cvtph_ps(_mm_loadu_si128(tb.d.as_ptr() as *const __m128i));
        let mw = _mm256_cvtph_ps(_mm_loadu_si128(tb.dmin.as_ptr() as *const __m128i));
        for (i, (a, s)) in acc.iter_mut().zip(halves).enumerate() {
            let at = (i0 + i) * kb + b;
            let t = _mm256_madd_epi16(pair16(s), sc_pairs);
            let m = _mm256_madd_epi16(half_sums(act, at), m_pairs);
            let dx = _mm256_set1_ps(*act.d.get_unchecked(at));
            *a = _mm256_fmadd_ps(_mm256_cvtepi32_ps(t), _mm256_mul_ps(dw, dx), *a);
            *a = _mm256_fnmadd_ps(_mm256_cvtepi32_ps(m), _mm256_mul_ps(mw, dx), *a);
        }
    }
    store(acc)
}
