//! The kernels in plain Rust (any CPU): the same tiles and the same integer sums as the SIMD ones.
//!
//! One loop ([`rows`]) walks the blocks and activation rows; each type only says how one weight
//! row's block combines with one activation row's block, reading its values through the tile's
//! own `q(r, j)` (the layout lives with the packer, not here).

use super::act::{QuantRows, BLOCK};
use super::pack::{f16_bits, nibble, Nibbles, TileQ2, TileQ3, TileQ5, TileQ6, TileQ8, TILE};

/// One activation row's share of a block.
struct Block<'a> {
    /// The 32 int8 values.
    x: &'a [i8],
    /// Their scale.
    d: f32,
    /// `d · Σx`.
    ds: f32,
    /// `Σx` over values 0..16 and 16..32.
    half: [i32; 2],
    /// `−8 · Σx`.
    centre8: i32,
}

impl Block<'_> {
    /// `Σ q(j) · x[j]` over each half of the block.
    fn dot(&self, q: impl Fn(usize) -> i32) -> [i32; 2] {
        let mut s = [0i32; 2];
        for (j, &xv) in self.x.iter().enumerate() {
            s[j / 16] += q(j) * xv as i32;
        }
        s
    }
}

/// Rows `i0..i0 + MR` of `act` times the 8 weight rows of `tiles` (one tile, all blocks):
/// `row(tile, block, r)` is weight row `r`'s contribution for one block of one activation row.
fn rows<T, const MR: usize>(
    tiles: &[T],
    act: &QuantRows,
    i0: usize,
    row: impl Fn(&T, &Block<'_>, usize) -> f32,
) -> [[f32; TILE]; MR] {
    let (k, kb) = (act.k, act.blocks());
    let mut acc = [[0f32; TILE]; MR];
    for (b, tb) in tiles.iter().enumerate() {
        for (i, outs) in acc.iter_mut().enumerate() {
            let at = (i0 + i) * kb + b;
            let block = Block {
                x: &act.q[(i0 + i) * k + b * BLOCK..][..BLOCK],
                d: act.d[at],
                ds: act.ds[at],
                half: [act.half[2 * at] as i32, act.half[2 * at + 1] as i32],
                centre8: act.centre8[at],
            };
            for (r, out) in outs.iter_mut().enumerate() {
                *out += row(tb, &block, r);
            }
        }
    }
    acc
}

/// Q8_0 tiles: the integer sum times the two scales.
pub fn q8_rows<const MR: usize>(tiles: &[TileQ8], act: &QuantRows, i0: usize) -> [[f32; TILE]; MR] {
    rows(tiles, act, i0, |tb, x, r| {
        let s = x.dot(|j| tb.q(r, j) as i32);
        (s[0] + s[1]) as f32 * (tb.d[r] * x.d)
    })
}

/// 4-bit tiles (Q4_0, Q4_1, Q4_K): unsigned values, the offsets taken off through the block sums
/// (Q4_0's centred tiles: `−8 · Σx` in integers).
pub fn q4_rows<T: Nibbles, const MR: usize>(
    tiles: &[T],
    act: &QuantRows,
    i0: usize,
) -> [[f32; TILE]; MR] {
    rows(tiles, act, i0, |tb, x, r| {
        let s = x.dot(|j| nibble(tb.qs(), r, j) as i32);
        if T::CENTRED {
            (s[0] + s[1] + x.centre8) as f32 * (tb.d()[r] * x.d)
        } else {
            (s[0] + s[1]) as f32 * (tb.d()[r] * x.d) - tb.m()[r] * x.ds
        }
    })
}

/// 5-bit tiles (Q5_0, Q5_1, Q5_K): as [`q4_rows`].
pub fn q5_rows<const MR: usize>(tiles: &[TileQ5], act: &QuantRows, i0: usize) -> [[f32; TILE]; MR] {
    rows(tiles, act, i0, |tb, x, r| {
        let s = x.dot(|j| tb.q(r, j) as i32);
        (s[0] + s[1]) as f32 * (tb.d[r] * x.d) - tb.m[r] * x.ds
    })
}

/// Per half, `sc · (Σ q·x − offset · Σx)` in integers (Q6_K: offset 32; Q3_K: 4).
fn offset_halves(s: [i32; 2], x: &Block<'_>, sc: [i8; 2], offset: i32) -> i32 {
    (0..2)
        .map(|h| sc[h] as i32 * (s[h] - offset * x.half[h]))
        .sum()
}

/// Q6_K tiles: per half `sc · (Σ q·x − 32 · Σx)` in integers, then the row's f16 scale.
pub fn q6_rows<const MR: usize>(tiles: &[TileQ6], act: &QuantRows, i0: usize) -> [[f32; TILE]; MR] {
    rows(tiles, act, i0, |tb, x, r| {
        let s = x.dot(|j| tb.q(r, j) as i32);
        let total = offset_halves(s, x, [tb.sc[r], tb.sc[TILE + r]], 32);
        total as f32 * (f16_bits(tb.d[r]) * x.d)
    })
}

/// Q3_K tiles: per half `sc · (Σ q·x − 4 · Σx)` in integers, then the row's f16 scale.
pub fn q3_rows<const MR: usize>(tiles: &[TileQ3], act: &QuantRows, i0: usize) -> [[f32; TILE]; MR] {
    rows(tiles, act, i0, |tb, x, r| {
        let s = x.dot(|j| tb.q(r, j) as i32);
        let total = offset_halves(s, x, [tb.sc[r], tb.sc[TILE + r]], 4);
        total as f32 * (f16_bits(tb.d[r]) * x.d)
    })
}

/// Q2_K tiles: per half `sc · Σ q·x` and `m · Σx` in integers, then the rows' f16 scales.
pub fn q2_rows<const MR: usize>(tiles: &[TileQ2], act: &QuantRows, i0: usize) -> [[f32; TILE]; MR] {
    rows(tiles, act, i0, |tb, x, r| {
        let s = x.dot(|j| tb.q(r, j) as i32);
        let (mut scaled, mut mins) = (0i32, 0i32);
        for (h, &sh) in s.iter().enumerate() {
            let scm = tb.scm[h * TILE + r];
            scaled += (scm & 0x0F) as i32 * sh;
            mins += (scm >> 4) as i32 * x.half[h];
        }
        scaled as f32 * (f16_bits(tb.d[r]) * x.d) - mins as f32 * (f16_bits(tb.dmin[r]) * x.d)
    })
}
