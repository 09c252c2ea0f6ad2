//! Q4_0 kept centred: its tiles hold the nibbles and one scale per row and block, no offset.
//!
//! GGML Q4_0's value is `d · (q − 8)`. Packed as [`TileQ4`] it would be `d · q − 8d`, its offset
//! taken off in f32 as `8d · (dx · Σx)`, one more multiply-add per row and block. Kept centred, the
//! offset is an integer, `−8 · Σx` ([`QuantRows::centre8`](super::act::QuantRows::centre8)), where
//! a kernel starts the block's sums: `d · dx · (Σ q·x − 8 · Σx)`, exact up to the one conversion to
//! f32. 5 bits per weight in memory (GGML: 4.5). [`Nibbles`] is what the 4-bit kernels read of
//! either tile, so one kernel body serves both.

use super::act::BLOCK;
use super::pack::{check, put_nibbles, scale, PackError, Packed, TileQ4, Tiles, TILE};

/// One 32-value block of 8 rows of Q4_0 weights: value = `d · (q − 8)`, `q` in 0..15.
#[derive(Debug, Clone, Copy)]
#[repr(C, align(32))]
pub struct TileQ40 {
    /// Scales of the 8 rows.
    pub d: [f32; TILE],
    /// Laid out as [`TileQ4::qs`].
    pub qs: [u8; TILE * BLOCK / 2],
}

/// A 4-bit tile as the kernels read it.
pub trait Nibbles {
    /// Whether values are `d · (q − 8)` (the offset in integers, [`Nibbles::m`] all zero) rather
    /// than `d · q − m`.
    const CENTRED: bool;
    /// Scales of the 8 rows.
    fn d(&self) -> &[f32; TILE];
    /// Offsets of the 8 rows (zero where [`Nibbles::CENTRED`]).
    fn m(&self) -> &[f32; TILE];
    /// Nibbles: group `h`, row `r`, value `t` at `h * 32 + r * 4 + t`.
    fn qs(&self) -> &[u8; TILE * BLOCK / 2];
}

impl Nibbles for TileQ4 {
    const CENTRED: bool = false;
    fn d(&self) -> &[f32; TILE] {
        &self.d
    }
    fn m(&self) -> &[f32; TILE] {
        &self.m
    }
    fn qs(&self) -> &[u8; TILE * BLOCK / 2] {
        &self.qs
    }
}

impl Nibbles for TileQ40 {
    const CENTRED: bool = true;
    fn d(&self) -> &[f32; TILE] {
        &self.d
    }
    fn m(&self) -> &[f32; TILE] {
        &[0.0; TILE]
    }
    fn qs(&self) -> &[u8; TILE * BLOCK / 2] {
        &self.qs
    }
}

impl TileQ40 {
    /// Quantised value `j` of row `r` (0..15; the weight is `d · (q − 8)`).
    pub fn q(&self, r: usize, j: usize) -> u8 {
        super::pack::nibble(&self.qs, r, j)
    }

    /// Value `j` of row `r` as f32.
    pub fn get(&self, r: usize, j: usize) -> f32 {
        self.d[r] * (self.q(r, j) as f32 - 8.0)
    }
}

/// GGML Q4_0: f16 scale + 16 bytes of nibbles (value `j` low nibble of byte `j`, `j + 16` high).
const Q4_0_BYTES: usize = 2 + BLOCK / 2;

impl Packed {
    /// Packs GGML Q4_0 bytes of an `[n, k]` matrix.
    pub fn from_q4_0(bytes: &[u8], n: usize, k: usize) -> Result<Self, PackError> {
        let kb = check(bytes, n, k, BLOCK, Q4_0_BYTES, "Q4_0")?;
        // Padding rows: scale 0, so they contribute nothing.
        let mut tiles = vec![
            TileQ40 {
                d: [0.0; TILE],
                qs: [0; TILE * BLOCK / 2],
            };
            n.div_ceil(TILE) * kb
        ];
        for row in 0..n {
            let (t, r) = (row / TILE, row % TILE);
            for b in 0..kb {
                let src = &bytes[(row * kb + b) * Q4_0_BYTES..][..Q4_0_BYTES];
                let mut q = [0u8; BLOCK];
                for (j, v) in q.iter_mut().enumerate() {
                    *v = (src[2 + j % 16] >> (4 * (j / 16))) & 0x0F;
                }
                let dst = &mut tiles[t * kb + b];
                dst.d[r] = scale(src);
                put_nibbles(&mut dst.qs, r, &q);
            }
        }
        Ok(Self::with_tiles(n, k, Tiles::Q40(tiles)))
    }
}
