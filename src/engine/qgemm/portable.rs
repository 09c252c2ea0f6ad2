//! The kernels in plain Rust (any CPU): the same tiles and the same integer sums as the SIMD ones.

use super::act::{QuantRows, BLOCK};
use super::pack::{TileQ4, TileQ8, TILE};

/// Rows `i0..i0 + MR` of `act` times the 8 weight rows of `tiles` (one tile, all blocks).
pub fn q8_rows<const MR: usize>(tiles: &[TileQ8], act: &QuantRows, i0: usize) -> [[f32; TILE]; MR] {
    let (k, kb) = (act.k, act.blocks());
    let mut acc = [[0f32; TILE]; MR];
    for (b, tb) in tiles.iter().enumerate() {
        for (i, row) in acc.iter_mut().enumerate() {
            let x = &act.q[(i0 + i) * k + b * BLOCK..][..BLOCK];
            let dx = act.d[(i0 + i) * kb + b];
            for (r, out) in row.iter_mut().enumerate() {
                let mut s = 0i32;
                for (j, &xv) in x.iter().enumerate() {
                    s += tb.qs[(j / 4) * 32 + r * 4 + j % 4] as i32 * xv as i32;
                }
                *out += s as f32 * (tb.d[r] * dx);
            }
        }
    }
    acc
}

/// As [`q8_rows`] for 4-bit tiles: nibbles 0..15, the offsets taken off through the block sums.
pub fn q4_rows<const MR: usize>(tiles: &[TileQ4], act: &QuantRows, i0: usize) -> [[f32; TILE]; MR] {
    let (k, kb) = (act.k, act.blocks());
    let mut acc = [[0f32; TILE]; MR];
    for (b, tb) in tiles.iter().enumerate() {
        for (i, row) in acc.iter_mut().enumerate() {
            let x = &act.q[(i0 + i) * k + b * BLOCK..][..BLOCK];
            let dx = act.d[(i0 + i) * kb + b];
            let sx = act.ds[(i0 + i) * kb + b];
            for (r, out) in row.iter_mut().enumerate() {
                let mut s = 0i32;
                for (j, &xv) in x.iter().enumerate() {
                    let c = j / 4;
                    let byte = tb.qs[(c % 4) * 32 + r * 4 + j % 4];
                    let nib = if c < 4 { byte & 0x0F } else { byte >> 4 };
                    s += nib as i32 * xv as i32;
                }
                *out += s as f32 * (tb.d[r] * dx) - tb.m[r] * sx;
            }
        }
    }
    acc
}
