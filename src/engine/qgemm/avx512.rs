//! AVX-512 VNNI kernels: two tiles (16 output columns) per 512-bit `vpdpbusd`, called only on an
//! `Isa` that detection made after finding AVX-512 F, BW and VNNI besides AVX2, FMA and F16C.
//!
//! Lanes 0..8 are tile `a`'s rows, lanes 8..16 tile `b`'s: each weight vector joins the two tiles'
//! 256-bit chunks, so the arithmetic per lane is exactly that of the AVX-VNNI kernels ([`super::vnni`])
//! and the results are the same to the bit, at twice the width per instruction.

use std::arch::x86_64::*;

use super::act::{QuantRows, BLOCK};
use super::avx2::assert_extents;
use super::avx2_k::row_pairs;
use super::pack::{Nibbles, TileQ2, TileQ3, TileQ5, TileQ6, TileQ8, Tiles, TILE};
use super::run::WIDE;

/// Rows `i0..i0 + R` of `act` times the tile blocks `a` and `b` (two tiles, `act.blocks()` blocks
/// each) of `tiles`.
///
/// # Safety
/// The CPU must support AVX-512 F, BW and VNNI, AVX2, FMA and F16C (an AVX-512 VNNI `Isa` says
/// so). Extents are asserted by each kernel.
pub unsafe fn tile_rows<const R: usize>(
    tiles: &Tiles,
    a: std::ops::Range<usize>,
    b: std::ops::Range<usize>,
    act: &QuantRows,
    i0: usize,
) -> [[f32; WIDE]; R] {
    match tiles {
        Tiles::Q8(t) => q8_rows::<R>(&t[a], &t[b], act, i0),
        Tiles::Q40(t) => q4_rows::<_, R>(&t[a], &t[b], act, i0),
        Tiles::Q4(t) => q4_rows::<_, R>(&t[a], &t[b], act, i0),
        Tiles::Q5(t) => q5_rows::<R>(&t[a], &t[b], act, i0),
        Tiles::Q6(t) => q6_rows::<R>(&t[a], &t[b], act, i0),
        Tiles::Q3(t) => q3_rows::<R>(&t[a], &t[b], act, i0),
        Tiles::Q2(t) => q2_rows::<R>(&t[a], &t[b], act, i0),
    }
}

/// Both tiles' extents: as [`assert_extents`], and the two tiles hold the same number of blocks.
fn assert_pair(a: usize, b: usize, act: &QuantRows, i0: usize, rows: usize) {
    assert_eq!(a, b, "the two tiles differ in blocks");
    assert_extents(a, act, i0, rows);
}

/// 32 bytes at `pa` (lanes 0..8) and at `pb` (lanes 8..16), each 32-aligned where `ALIGNED`.
///
/// # Safety
/// AVX-512 F; 32 readable bytes at each pointer.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
unsafe fn join(pa: *const u8, pb: *const u8) -> __m512i {
    let lo = _mm256_loadu_si256(pa as *const __m256i);
    let hi = _mm256_loadu_si256(pb as *const __m256i);
    _mm512_inserti64x4::<1>(_mm512_castsi256_si512(lo), hi)
}

/// Eight f32 at `pa` and eight at `pb`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
unsafe fn join_ps(pa: &[f32; TILE], pb: &[f32; TILE]) -> __m512 {
    _mm512_castsi512_ps(join(pa.as_ptr() as *const u8, pb.as_ptr() as *const u8))
}

/// Eight f16 at `pa` and eight at `pb`, as f32.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
unsafe fn join_ph(pa: &[u16; TILE], pb: &[u16; TILE]) -> __m512 {
    let lo = _mm_loadu_si128(pa.as_ptr() as *const __m128i);
    let hi = _mm_loadu_si128(pb.as_ptr() as *const __m128i);
    _mm512_cvtph_ps(_mm256_set_m128i(hi, lo))
}

/// The activation's 4 bytes at `xp` broadcast to every lane.
///
/// # Safety
/// 4 readable bytes at `xp` (inside the rows the caller asserted).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
unsafe fn bcast(xp: *const i8) -> __m512i {
    _mm512_set1_epi32((xp as *const i32).read_unaligned())
}

/// Row `i`'s two activation half sums of block `at` broadcast as i16 pairs.
///
/// # Safety
/// `2 * at + 2 <= act.half.len()` (asserted by the callers' extents).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
unsafe fn half_sums(act: &QuantRows, at: usize) -> __m512i {
    _mm512_set1_epi32((act.half.as_ptr().add(2 * at) as *const i32).read_unaligned())
}

/// Each lane's (row's) two sub-scales as its i16 pair, from each tile's 16 bytes `[half 0 of rows
/// 0..8, half 1 of rows 0..8]`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
unsafe fn pairs(sa: __m128i, sb: __m128i) -> __m512i {
    _mm512_inserti64x4::<1>(_mm512_castsi256_si512(row_pairs(sa)), row_pairs(sb))
}

/// Each lane's two half sums as its i16 pair (exact where both fit in i16).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
unsafe fn pair16(s: [__m512i; 2]) -> __m512i {
    _mm512_mask_blend_epi16(0xAAAA_AAAA, s[0], _mm512_slli_epi32::<16>(s[1]))
}

#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
unsafe fn store<const MR: usize>(acc: [__m512; MR]) -> [[f32; WIDE]; MR] {
    let mut out = [[0f32; WIDE]; MR];
    for (o, a) in out.iter_mut().zip(acc) {
        _mm512_storeu_ps(o.as_mut_ptr(), a);
    }
    out
}

/// Q8_0: the activations as unsigned bytes `x + 128` ([`QuantRows::qu`]) times the signed weights,
/// then `128 · Σw` ([`TileQ8::wsum`]) taken off: exactly `Σ x · w` in i32, as the AVX2 kernels'
/// sign trick sums it, with one instruction a step instead of three.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
unsafe fn q8_rows<const MR: usize>(
    ta: &[TileQ8],
    tb: &[TileQ8],
    act: &QuantRows,
    i0: usize,
) -> [[f32; WIDE]; MR] {
    let (k, kb) = (act.k, act.blocks());
    assert_pair(ta.len(), tb.len(), act, i0, MR);
    assert_eq!(
        act.qu.len(),
        act.q.len(),
        "Q8_0 on AVX-512 needs the unsigned activations (QuantRows::quantize_with)"
    );
    let mut acc = [_mm512_setzero_ps(); MR];
    let xu = act.qu.as_ptr() as *const i8;
    for (b, (wa, wb)) in ta.iter().zip(tb).enumerate() {
        let mut sums = [_mm512_setzero_si512(); MR];
        for c in 0..TILE {
            let w = join(
                wa.qs.as_ptr().add(c * 32) as *const u8,
                wb.qs.as_ptr().add(c * 32) as *const u8,
            );
            for (i, s) in sums.iter_mut().enumerate() {
                let x = bcast(xu.add((i0 + i) * k + b * BLOCK + c * 4));
                *s = _mm512_dpbusd_epi32(*s, x, w);
            }
        }
        let off = join(wa.wsum.as_ptr() as *const u8, wb.wsum.as_ptr() as *const u8);
        let dw = join_ps(&wa.d, &wb.d);
        for (i, (a, s)) in acc.iter_mut().zip(sums).enumerate() {
            let dx = _mm512_set1_ps(*act.d.get_unchecked((i0 + i) * kb + b));
            let t = _mm512_sub_epi32(s, off);
            *a = _mm512_fmadd_ps(_mm512_cvtepi32_ps(t), _mm512_mul_ps(dw, dx), *a);
        }
    }
    store(acc)
}

/// `acc + d · dx · s − m · Σx` for each row: the 4- and 5-bit types' block finish (without `m`,
/// for centred tiles whose offset is already in `s`: `acc + d · dx · s`).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
unsafe fn finish_offset<const MR: usize>(
    acc: &mut [__m512; MR],
    sums: [__m512i; MR],
    (dw, mw): (__m512, Option<__m512>),
    act: &QuantRows,
    at0: usize,
) {
    let kb = act.blocks();
    for (i, (a, s)) in acc.iter_mut().zip(sums).enumerate() {
        let at = at0 + i * kb;
        let dx = _mm512_set1_ps(*act.d.get_unchecked(at));
        *a = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), _mm512_mul_ps(dw, dx), *a);
        if let Some(mw) = mw {
            let sx = _mm512_set1_ps(*act.ds.get_unchecked(at));
            *a = _mm512_fnmadd_ps(mw, sx, *a);
        }
    }
}

/// Q4_0, Q4_1, Q4_K: nibbles (0..15); the offsets as `m · Σx`, or for Q4_0's centred tiles as
/// `−8 · Σx` where the block's i32 sums start.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
unsafe fn q4_rows<T: Nibbles, const MR: usize>(
    ta: &[T],
    tb: &[T],
    act: &QuantRows,
    i0: usize,
) -> [[f32; WIDE]; MR] {
    let (k, kb) = (act.k, act.blocks());
    assert_pair(ta.len(), tb.len(), act, i0, MR);
    let low = _mm512_set1_epi8(0x0F);
    let mut acc = [_mm512_setzero_ps(); MR];
    let xq = act.q.as_ptr();
    for (b, (wa, wb)) in ta.iter().zip(tb).enumerate() {
        let mut sums = [_mm512_setzero_si512(); MR];
        if T::CENTRED {
            for (i, s) in sums.iter_mut().enumerate() {
                *s = _mm512_set1_epi32(*act.centre8.get_unchecked((i0 + i) * kb + b));
            }
        }
        for h in 0..4 {
            let v = join(wa.qs().as_ptr().add(h * 32), wb.qs().as_ptr().add(h * 32));
            let lo = _mm512_and_si512(v, low);
            let hi = _mm512_and_si512(_mm512_srli_epi16::<4>(v), low);
            for (i, s) in sums.iter_mut().enumerate() {
                let xp = xq.add((i0 + i) * k + b * BLOCK);
                *s = _mm512_dpbusd_epi32(*s, lo, bcast(xp.add(h * 4)));
                *s = _mm512_dpbusd_epi32(*s, hi, bcast(xp.add(16 + h * 4)));
            }
        }
        let m = (!T::CENTRED).then(|| join_ps(wa.m(), wb.m()));
        finish_offset(
            &mut acc,
            sums,
            (join_ps(wa.d(), wb.d()), m),
            act,
            i0 * kb + b,
        );
    }
    store(acc)
}

/// Q5_0, Q5_1, Q5_K: as [`q4_rows`] with each chunk's fifth bits from the high-bit plane.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
unsafe fn q5_rows<const MR: usize>(
    ta: &[TileQ5],
    tb: &[TileQ5],
    act: &QuantRows,
    i0: usize,
) -> [[f32; WIDE]; MR] {
    let (k, kb) = (act.k, act.blocks());
    assert_pair(ta.len(), tb.len(), act, i0, MR);
    let low = _mm512_set1_epi8(0x0F);
    let bit4 = _mm512_set1_epi8(0x10);
    let mut acc = [_mm512_setzero_ps(); MR];
    let xq = act.q.as_ptr();
    for (b, (wa, wb)) in ta.iter().zip(tb).enumerate() {
        let qh = join(wa.qh.as_ptr(), wb.qh.as_ptr());
        let mut sums = [_mm512_setzero_si512(); MR];
        for h in 0..4 {
            let v = join(wa.qs.as_ptr().add(h * 32), wb.qs.as_ptr().add(h * 32));
            // Chunk h's fifth bits are bit h of `qh`, chunk h + 4's bit h + 4 (to bit 4 by 16-bit
            // shifts of at most 4: no kept bit crosses a byte).
            let hl = _mm512_and_si512(_mm512_sll_epi16(qh, _mm_cvtsi32_si128(4 - h as i32)), bit4);
            let hh = _mm512_and_si512(_mm512_srl_epi16(qh, _mm_cvtsi32_si128(h as i32)), bit4);
            let lo = _mm512_or_si512(_mm512_and_si512(v, low), hl);
            let hi = _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi16::<4>(v), low), hh);
            for (i, s) in sums.iter_mut().enumerate() {
                let xp = xq.add((i0 + i) * k + b * BLOCK);
                *s = _mm512_dpbusd_epi32(*s, lo, bcast(xp.add(h * 4)));
                *s = _mm512_dpbusd_epi32(*s, hi, bcast(xp.add(16 + h * 4)));
            }
        }
        let scales = (join_ps(&wa.d, &wb.d), Some(join_ps(&wa.m, &wb.m)));
        finish_offset(&mut acc, sums, scales, act, i0 * kb + b);
    }
    store(acc)
}

/// Q6_K: unsigned values (0..63), one i32 sum per half, `sc_h · (s_h − 32 · Σx_h)` exact in i32.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
unsafe fn q6_rows<const MR: usize>(
    ta: &[TileQ6],
    tb: &[TileQ6],
    act: &QuantRows,
    i0: usize,
) -> [[f32; WIDE]; MR] {
    let (k, kb) = (act.k, act.blocks());
    assert_pair(ta.len(), tb.len(), act, i0, MR);
    let mut acc = [_mm512_setzero_ps(); MR];
    let xq = act.q.as_ptr();
    for (b, (wa, wb)) in ta.iter().zip(tb).enumerate() {
        let mut halves = [[_mm512_setzero_si512(); 2]; MR];
        for c in 0..TILE {
            let w = join(wa.qs.as_ptr().add(c * 32), wb.qs.as_ptr().add(c * 32));
            for (i, s) in halves.iter_mut().enumerate() {
                let x = bcast(xq.add((i0 + i) * k + b * BLOCK + c * 4));
                s[c / 4] = _mm512_dpbusd_epi32(s[c / 4], w, x);
            }
        }
        let (sa, sb) = (load16(&wa.sc), load16(&wb.sc));
        let sc = [
            _mm512_cvtepi8_epi32(_mm_unpacklo_epi64(sa, sb)),
            _mm512_cvtepi8_epi32(_mm_unpackhi_epi64(sa, sb)),
        ];
        let dw = join_ph(&wa.d, &wb.d);
        for (i, (a, s)) in acc.iter_mut().zip(halves).enumerate() {
            let at = (i0 + i) * kb + b;
            let h = act.half.as_ptr().add(2 * at);
            let o = [32 * *h as i32, 32 * *h.add(1) as i32];
            let t0 = _mm512_mullo_epi32(_mm512_sub_epi32(s[0], _mm512_set1_epi32(o[0])), sc[0]);
            let t1 = _mm512_mullo_epi32(_mm512_sub_epi32(s[1], _mm512_set1_epi32(o[1])), sc[1]);
            let t = _mm512_add_epi32(t0, t1);
            let dx = _mm512_set1_ps(*act.d.get_unchecked(at));
            *a = _mm512_fmadd_ps(_mm512_cvtepi32_ps(t), _mm512_mul_ps(dw, dx), *a);
        }
    }
    store(acc)
}

/// 16 bytes of sub-scales.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
unsafe fn load16<T>(v: &[T; 2 * TILE]) -> __m128i {
    const { assert!(size_of::<T>() == 1) };
    _mm_loadu_si128(v.as_ptr() as *const __m128i)
}

/// Q3_K: two low bits from the 2-bit groups, the third from the high-bit plane (0..7); the `− 4`
/// through the half sums.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
unsafe fn q3_rows<const MR: usize>(
    ta: &[TileQ3],
    tb: &[TileQ3],
    act: &QuantRows,
    i0: usize,
) -> [[f32; WIDE]; MR] {
    let (k, kb) = (act.k, act.blocks());
    assert_pair(ta.len(), tb.len(), act, i0, MR);
    let (three, bit2) = (_mm512_set1_epi8(3), _mm512_set1_epi8(4));
    let mut acc = [_mm512_setzero_ps(); MR];
    let xq = act.q.as_ptr();
    for (b, (wa, wb)) in ta.iter().zip(tb).enumerate() {
        let g = [
            join(wa.qs.as_ptr(), wb.qs.as_ptr()),
            join(wa.qs.as_ptr().add(32), wb.qs.as_ptr().add(32)),
        ];
        let qh = join(wa.qh.as_ptr(), wb.qh.as_ptr());
        let mut halves = [[_mm512_setzero_si512(); 2]; MR];
        for c in 0..TILE {
            let low = _mm512_srl_epi16(g[c % 2], _mm_cvtsi32_si128(2 * (c / 2) as i32));
            // Bit c of qh to bit 2: 16-bit shifts of at most 5, no kept bit crosses a byte.
            let high = if c <= 2 {
                _mm512_sll_epi16(qh, _mm_cvtsi32_si128(2 - c as i32))
            } else {
                _mm512_srl_epi16(qh, _mm_cvtsi32_si128(c as i32 - 2))
            };
            let w = _mm512_or_si512(_mm512_and_si512(low, three), _mm512_and_si512(high, bit2));
            for (i, s) in halves.iter_mut().enumerate() {
                let x = bcast(xq.add((i0 + i) * k + b * BLOCK + c * 4));
                s[c / 4] = _mm512_dpbusd_epi32(s[c / 4], w, x);
            }
        }
        let sc_pairs = pairs(load16(&wa.sc), load16(&wb.sc));
        let dw = join_ph(&wa.d, &wb.d);
        for (i, (a, s)) in acc.iter_mut().zip(halves).enumerate() {
            let at = (i0 + i) * kb + b;
            let off = _mm512_slli_epi32::<2>(_mm512_madd_epi16(half_sums(act, at), sc_pairs));
            let t = _mm512_sub_epi32(_mm512_madd_epi16(pair16(s), sc_pairs), off);
            let dx = _mm512_set1_ps(*act.d.get_unchecked(at));
            *a = _mm512_fmadd_ps(_mm512_cvtepi32_ps(t), _mm512_mul_ps(dw, dx), *a);
        }
    }
    store(acc)
}

/// Q2_K: values 0..3 from the 2-bit groups; per half `sc · Σqx` and the mins `m · Σx` in i32,
/// then `d` and `dmin`.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
unsafe fn q2_rows<const MR: usize>(
    ta: &[TileQ2],
    tb: &[TileQ2],
    act: &QuantRows,
    i0: usize,
) -> [[f32; WIDE]; MR] {
    let (k, kb) = (act.k, act.blocks());
    assert_pair(ta.len(), tb.len(), act, i0, MR);
    let three = _mm512_set1_epi8(3);
    let nib = _mm_set1_epi8(0x0F);
    let mut acc = [_mm512_setzero_ps(); MR];
    let xq = act.q.as_ptr();
    for (b, (wa, wb)) in ta.iter().zip(tb).enumerate() {
        let g = [
            join(wa.qs.as_ptr(), wb.qs.as_ptr()),
            join(wa.qs.as_ptr().add(32), wb.qs.as_ptr().add(32)),
        ];
        let mut halves = [[_mm512_setzero_si512(); 2]; MR];
        for c in 0..TILE {
            let shifted = _mm512_srl_epi16(g[c % 2], _mm_cvtsi32_si128(2 * (c / 2) as i32));
            let w = _mm512_and_si512(shifted, three);
            for (i, s) in halves.iter_mut().enumerate() {
                let x = bcast(xq.add((i0 + i) * k + b * BLOCK + c * 4));
                s[c / 4] = _mm512_dpbusd_epi32(s[c / 4], w, x);
            }
        }
        let (sa, sb) = (load16(&wa.scm), load16(&wb.scm));
        let sc_pairs = pairs(_mm_and_si128(sa, nib), _mm_and_si128(sb, nib));
        let m_pairs = pairs(
            _mm_and_si128(_mm_srli_epi16(sa, 4), nib),
            _mm_and_si128(_mm_srli_epi16(sb, 4), nib),
        );
        let dw = join_ph(&wa.d, &wb.d);
        let mw = join_ph(&wa.dmin, &wb.dmin);
        for (i, (a, s)) in acc.iter_mut().zip(halves).enumerate() {
            let at = (i0 + i) * kb + b;
            let t = _mm512_madd_epi16(pair16(s), sc_pairs);
            let m = _mm512_madd_epi16(half_sums(act, at), m_pairs);
            let dx = _mm512_set1_ps(*act.d.get_unchecked(at));
            *a = _mm512_fmadd_ps(_mm512_cvtepi32_ps(t), _mm512_mul_ps(dw, dx), *a);
            *a = _mm512_fnmadd_ps(_mm512_cvtepi32_ps(m), _mm512_mul_ps(mw, dx), *a);
        }
    }
    store(acc)
}
