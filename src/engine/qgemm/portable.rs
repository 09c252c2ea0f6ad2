//! The kernels in plain Rust (any CPU): the same tiles and the same integer sums as the SIMD ones.

use super::act::{QuantRows, BLOCK};
use super::pack::{TileQ2, TileQ3, TileQ4, TileQ5, TileQ6, TileQ8, TILE};

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

/// A tile of `d · q − m` weights (4- or 5-bit): the portable kernel for both.
trait Offset {
    fn d(&self) -> &[f32; TILE];
    fn m(&self) -> &[f32; TILE];
    /// Value `j` of row `r`, unsigned.
    fn q(&self, r: usize, j: usize) -> u8;
}

/// Nibble `j` of row `r` of a [`TileQ4::qs`]-style plane.
fn nibble(qs: &[u8], r: usize, j: usize) -> u8 {
    let c = j / 4;
    let byte = qs[(c % 4) * 32 + r * 4 + j % 4];
    if c < 4 {
        byte & 0x0F
    } else {
        byte >> 4
    }
}

impl Offset for TileQ4 {
    fn d(&self) -> &[f32; TILE] {
        &self.d
    }
    fn m(&self) -> &[f32; TILE] {
        &self.m
    }
    fn q(&self, r: usize, j: usize) -> u8 {
        nibble(&self.qs, r, j)
    }
}

impl Offset for TileQ5 {
    fn d(&self) -> &[f32; TILE] {
        &self.d
    }
    fn m(&self) -> &[f32; TILE] {
        &self.m
    }
    fn q(&self, r: usize, j: usize) -> u8 {
        nibble(&self.qs, r, j) | ((self.qh[r * 4 + j % 4] >> (j / 4)) & 1) << 4
    }
}

/// As [`q8_rows`] for 4- and 5-bit tiles: unsigned values, the offsets taken off through the
/// block sums.
fn offset_rows<T: Offset, const MR: usize>(
    tiles: &[T],
    act: &QuantRows,
    i0: usize,
) -> [[f32; TILE]; MR] {
    let (k, kb) = (act.k, act.blocks());
    let mut acc = [[0f32; TILE]; MR];
    for (b, tb) in tiles.iter().enumerate() {
        for (i, row) in acc.iter_mut().enumerate() {
            let x = &act.q[(i0 + i) * k + b * BLOCK..][..BLOCK];
            let dx = act.d[(i0 + i) * kb + b];
            let sx = act.ds[(i0 + i) * kb + b];
            for (r, out) in row.iter_mut().enumerate() {
                let s: i32 = (0..BLOCK).map(|j| tb.q(r, j) as i32 * x[j] as i32).sum();
                *out += s as f32 * (tb.d()[r] * dx) - tb.m()[r] * sx;
            }
        }
    }
    acc
}

/// 4-bit tiles (Q4_0, Q4_1, Q4_K).
pub fn q4_rows<const MR: usize>(tiles: &[TileQ4], act: &QuantRows, i0: usize) -> [[f32; TILE]; MR] {
    offset_rows(tiles, act, i0)
}

/// 5-bit tiles (Q5_0, Q5_1, Q5_K).
pub fn q5_rows<const MR: usize>(tiles: &[TileQ5], act: &QuantRows, i0: usize) -> [[f32; TILE]; MR] {
    offset_rows(tiles, act, i0)
}

/// As [`q8_rows`] for Q6_K tiles: per half, `sc · (Σ q·x − 32 · Σx)` in integers, then the row's
/// f16 scale.
pub fn q6_rows<const MR: usize>(tiles: &[TileQ6], act: &QuantRows, i0: usize) -> [[f32; TILE]; MR] {
    let (k, kb) = (act.k, act.blocks());
    let mut acc = [[0f32; TILE]; MR];
    for (b, tb) in tiles.iter().enumerate() {
        for (i, row) in acc.iter_mut().enumerate() {
            let x = &act.q[(i0 + i) * k + b * BLOCK..][..BLOCK];
            let dx = act.d[(i0 + i) * kb + b];
            for (r, out) in row.iter_mut().enumerate() {
                let mut s = [0i32; 2];
                for (j, &xv) in x.iter().enumerate() {
                    s[j / 16] += tb.qs[(j / 4) * 32 + r * 4 + j % 4] as i32 * xv as i32;
                }
                let hx = &act.half[2 * ((i0 + i) * kb + b)..][..2];
                let total: i32 = (0..2)
                    .map(|h| tb.sc[h * TILE + r] as i32 * (s[h] - 32 * hx[h] as i32))
                    .sum();
                let d = half::f16::from_bits(tb.d[r]).to_f32();
                *out += total as f32 * (d * dx);
            }
        }
    }
    acc
}

/// Half-block integer sums `Σ q·x` of row `r` of a 2-bit plane (plus Q3_K's third bits, if given).
fn low_bit_sums(qs: &[u8], qh: Option<&[u8]>, x: &[i8], r: usize) -> [i32; 2] {
    let mut s = [0i32; 2];
    for (j, &xv) in x.iter().enumerate() {
        let c = j / 4;
        let mut q = (qs[(c % 2) * 32 + r * 4 + j % 4] >> (2 * (c / 2))) & 3;
        if let Some(qh) = qh {
            q |= ((qh[r * 4 + j % 4] >> c) & 1) << 2;
        }
        s[j / 16] += q as i32 * xv as i32;
    }
    s
}

/// Q3_K tiles: per half, `sc · (Σ q·x − 4 · Σx)` in integers, then the row's f16 scale.
pub fn q3_rows<const MR: usize>(tiles: &[TileQ3], act: &QuantRows, i0: usize) -> [[f32; TILE]; MR] {
    let (k, kb) = (act.k, act.blocks());
    let mut acc = [[0f32; TILE]; MR];
    for (b, tb) in tiles.iter().enumerate() {
        for (i, row) in acc.iter_mut().enumerate() {
            let x = &act.q[(i0 + i) * k + b * BLOCK..][..BLOCK];
            let at = (i0 + i) * kb + b;
            let (dx, hx) = (act.d[at], &act.half[2 * at..2 * at + 2]);
            for (r, out) in row.iter_mut().enumerate() {
                let s = low_bit_sums(&tb.qs, Some(&tb.qh), x, r);
                let total: i32 = (0..2)
                    .map(|h| tb.sc[h * TILE + r] as i32 * (s[h] - 4 * hx[h] as i32))
                    .sum();
                let d = half::f16::from_bits(tb.d[r]).to_f32();
                *out += total as f32 * (d * dx);
            }
        }
    }
    acc
}

/// Q2_K tiles: per half, `sc · Σ q·x` and `m · Σx` in integers, then the rows' f16 scales.
pub fn q2_rows<const MR: usize>(tiles: &[TileQ2], act: &QuantRows, i0: usize) -> [[f32; TILE]; MR] {
    let (k, kb) = (act.k, act.blocks());
    let mut acc = [[0f32; TILE]; MR];
    for (b, tb) in tiles.iter().enumerate() {
        for (i, row) in acc.iter_mut().enumerate() {
            let x = &act.q[(i0 + i) * k + b * BLOCK..][..BLOCK];
            let at = (i0 + i) * kb + b;
            let (dx, hx) = (act.d[at], &act.half[2 * at..2 * at + 2]);
            for (r, out) in row.iter_mut().enumerate() {
                let s = low_bit_sums(&tb.qs, None, x, r);
                let (mut scaled, mut mins) = (0i32, 0i32);
                for h in 0..2 {
                    let scm = tb.scm[h * TILE + r];
                    scaled += (scm & 0x0F) as i32 * s[h];
                    mins += (scm >> 4) as i32 * hx[h] as i32;
                }
                let d = half::f16::from_bits(tb.d[r]).to_f32();
                let dmin = half::f16::from_bits(tb.dmin[r]).to_f32();
                *out += scaled as f32 * (d * dx) - mins as f32 * (dmin * dx);
            }
        }
    }
    acc
}
