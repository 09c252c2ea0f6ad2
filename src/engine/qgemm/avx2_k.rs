//! AVX2 kernels for the types with per-16 integer sub-scales (Q6_K, Q3_K, Q2_K): unsigned values,
//! each half-block summed in i16 and weighted by its sub-scales in a `madd` (exact in i32), the
//! f16 row scales converted by F16C; offsets and mins through the activations' half-block sums.

use std::arch::x86_64::*;

use super::act::{QuantRows, BLOCK};
use super::avx2::{assert_extents, store};
use super::pack::{TileQ2, TileQ3, TileQ6, TILE};

/// Rows `i0..i0 + MR` of `act` times one Q6_K tile. Values are unsigned (0..63), so `maddubs`
/// applies directly; a product pair reaches 2 · 63 · 127 = 16002, so two chunks add as i16 (32004)
/// and each pair of chunks goes through one `madd` with its half's sub-scales (exact in i32). The
/// `− 32` comes off per half as `32 · sc · Σx` through the activations' half sums; then `d` once.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C (an AVX2 [`Isa`](crate::engine::isa::Isa) says so);
/// rows `i0..i0 + MR` of `act` (with their half sums) and `act.blocks()` tile blocks are asserted
/// on entry.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn q6_rows<const MR: usize>(
    tiles: &[TileQ6],
    act: &QuantRows,
    i0: usize,
) -> [[f32; TILE]; MR] {
    let (k, kb) = (act.k, act.blocks());
    assert_extents(tiles.len(), act, i0, MR);
    let mut acc = [_mm256_setzero_ps(); MR];
    let xq = act.q.as_ptr();
    for (b, tb) in tiles.iter().enumerate() {
        let sc = _mm_loadu_si128(tb.sc.as_ptr() as *const __m128i);
        let (sc_lo, sc_hi) = half_scales(sc);
        let mut sums = [_mm256_setzero_si256(); MR];
        for pair in 0..4 {
            let scale = if pair < 2 { sc_lo } else { sc_hi };
            let w0 = _mm256_load_si256(tb.qs.as_ptr().add(2 * pair * 32) as *const __m256i);
            let w1 = _mm256_load_si256(tb.qs.as_ptr().add((2 * pair + 1) * 32) as *const __m256i);
            for (i, s) in sums.iter_mut().enumerate() {
                let xp = xq.add((i0 + i) * k + b * BLOCK + pair * 8) as *const i32;
                let x0 = _mm256_set1_epi32(xp.read_unaligned());
                let x1 = _mm256_set1_epi32(xp.add(1).read_unaligned());
                let p =
                    _mm256_add_epi16(_mm256_maddubs_epi16(w0, x0), _mm256_maddubs_epi16(w1, x1));
                *s = _mm256_add_epi32(*s, _mm256_madd_epi16(p, scale));
            }
        }
        let sc_pairs = row_pairs(sc);
        let dw = _mm256_cvtph_ps(_mm_loadu_si128(tb.d.as_ptr() as *const __m128i));
        for (i, (a, s)) in acc.iter_mut().zip(sums).enumerate() {
            let at = (i0 + i) * kb + b;
            let off = _mm256_slli_epi32(_mm256_madd_epi16(half_sums(act, at), sc_pairs), 5);
            let dx = _mm256_set1_ps(*act.d.get_unchecked(at));
            let t = _mm256_cvtepi32_ps(_mm256_sub_epi32(s, off));
            *a = _mm256_fmadd_ps(t, _mm256_mul_ps(dw, dx), *a);
        }
    }
    store(acc)
}

/// Chunk `c`'s Q2_K values (0..3): group `c % 2` shifted by `2 · (c / 2)`.
#[inline]
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn q2_chunk(g: &[__m256i; 2], c: usize) -> __m256i {
    let shifted = _mm256_srl_epi16(g[c % 2], _mm_cvtsi32_si128(2 * (c / 2) as i32));
    _mm256_and_si256(shifted, _mm256_set1_epi8(3))
}

/// Chunk `c`'s Q3_K values (0..7): the two low bits as [`q2_chunk`], the third from bit `c` of
/// `qh` moved to bit 2 (16-bit shifts of at most 5: no kept bit crosses a byte).
#[inline]
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn q3_chunk(g: &[__m256i; 2], qh: __m256i, c: usize) -> __m256i {
    let high = if c <= 2 {
        _mm256_sll_epi16(qh, _mm_cvtsi32_si128(2 - c as i32))
    } else {
        _mm256_srl_epi16(qh, _mm_cvtsi32_si128(c as i32 - 2))
    };
    _mm256_or_si256(q2_chunk(g, c), _mm256_and_si256(high, _mm256_set1_epi8(4)))
}

/// Row r's sub-scale to i16 lanes 2r and 2r + 1 (where `maddubs` leaves row r's pairs), from 16
/// bytes `[half 0 of rows 0..8, half 1 of rows 0..8]`: `(half 0, half 1)`.
#[target_feature(enable = "avx2,fma")]
unsafe fn half_scales(sc: __m128i) -> (__m256i, __m256i) {
    let dup_lo = _mm_setr_epi8(0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7);
    let dup_hi = _mm_setr_epi8(8, 8, 9, 9, 10, 10, 11, 11, 12, 12, 13, 13, 14, 14, 15, 15);
    (
        _mm256_cvtepi8_epi16(_mm_shuffle_epi8(sc, dup_lo)),
        _mm256_cvtepi8_epi16(_mm_shuffle_epi8(sc, dup_hi)),
    )
}

/// Row r's two half values to i16 lanes 2r (half 0) and 2r + 1 (half 1), for a `madd` with a
/// row's pair of activation half sums.
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn row_pairs(v: __m128i) -> __m256i {
    let pair = _mm_setr_epi8(0, 8, 1, 9, 2, 10, 3, 11, 4, 12, 5, 13, 6, 14, 7, 15);
    _mm256_cvtepi8_epi16(_mm_shuffle_epi8(v, pair))
}

/// Row `i`'s two activation half sums of block `b` broadcast as i16 pairs.
///
/// # Safety
/// AVX2; `2 * ((i0 + i) * kb + b) + 2 <= act.half.len()` (asserted by the callers' extents).
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn half_sums(act: &QuantRows, at: usize) -> __m256i {
    _mm256_set1_epi32((act.half.as_ptr().add(2 * at) as *const i32).read_unaligned())
}

/// Rows `i0..i0 + MR` of `act` times one Q3_K tile. Chunk `c`'s values are its two low bits
/// (group `c % 2` shifted by `2 · (c / 2)`) and its third bit (bit `c` of `qh` moved to bit 2),
/// 0..7; products reach 2 · 7 · 127 = 1778, four per half add as i16. Per half, `sc · (Σqx − 4Σx)`
/// in i32 (the `− 4` through the activations' half sums), then `d` once.
///
/// # Safety
/// As [`q6_rows`]; the half sums of the rows are asserted too.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn q3_rows<const MR: usize>(
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
                let xp = xq.add((i0 + i) * k + b * BLOCK + c * 4) as *const i32;
                let x = _mm256_set1_epi32(xp.read_unaligned());
                s[c / 4] = _mm256_add_epi16(s[c / 4], _mm256_maddubs_epi16(w, x));
            }
        }
        let sc = _mm_loadu_si128(tb.sc.as_ptr() as *const __m128i);
        let (sc_lo, sc_hi) = half_scales(sc);
        let sc_pairs = row_pairs(sc);
        let dw = _mm256_cvtph_ps(_mm_loadu_si128(tb.d.as_ptr() as *const __m128i));
        for (i, (a, s)) in acc.iter_mut().zip(halves).enumerate() {
            let at = (i0 + i) * kb + b;
            let t = _mm256_add_epi32(
                _mm256_madd_epi16(s[0], sc_lo),
                _mm256_madd_epi16(s[1], sc_hi),
            );
            let off = _mm256_slli_epi32(_mm256_madd_epi16(half_sums(act, at), sc_pairs), 2);
            let dx = _mm256_set1_ps(*act.d.get_unchecked(at));
            let t = _mm256_cvtepi32_ps(_mm256_sub_epi32(t, off));
            *a = _mm256_fmadd_ps(t, _mm256_mul_ps(dw, dx), *a);
        }
    }
    store(acc)
}

/// Rows `i0..i0 + MR` of `act` times one Q2_K tile: values 0..3 from the 2-bit groups (products
/// reach 762, four per half add as i16), per half `sc · Σqx` and `m · Σx` in i32, then `d` and
/// `dmin`.
///
/// # Safety
/// As [`q3_rows`].
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn q2_rows<const MR: usize>(
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
                let xp = xq.add((i0 + i) * k + b * BLOCK + c * 4) as *const i32;
                let x = _mm256_set1_epi32(xp.read_unaligned());
                s[c / 4] = _mm256_add_epi16(s[c / 4], _mm256_maddubs_epi16(w, x));
            }
        }
        let scm = _mm_loadu_si128(tb.scm.as_ptr() as *const __m128i);
        let (sc_lo, sc_hi) = half_scales(_mm_and_si128(scm, nib));
        let m_pairs = row_pairs(_mm_and_si128(_mm_srli_epi16(scm, 4), nib));
        let dw = _mm256_cvtph_ps(_mm_loadu_si128(tb.d.as_ptr() as *const __m128i));
        let mw = _mm256_cvtph_ps(_mm_loadu_si128(tb.dmin.as_ptr() as *const __m128i));
        for (i, (a, s)) in acc.iter_mut().zip(halves).enumerate() {
            let at = (i0 + i) * kb + b;
            let t = _mm256_add_epi32(
                _mm256_madd_epi16(s[0], sc_lo),
                _mm256_madd_epi16(s[1], sc_hi),
            );
            let mins = _mm256_cvtepi32_ps(_mm256_madd_epi16(half_sums(act, at), m_pairs));
            let dx = _mm256_set1_ps(*act.d.get_unchecked(at));
            *a = _mm256_fmadd_ps(_mm256_cvtepi32_ps(t), _mm256_mul_ps(dw, dx), *a);
            *a = _mm256_fnmadd_ps(mins, _mm256_mul_ps(mw, dx), *a);
        }
    }
    store(acc)
}
