//! 6-bit weights (GGML Q6_K) re-laid as signed bytes with their per-16 scales kept as integers.
//!
//! Q6_K scales every 16 values with its own int8 under one f16 `d` per 256. A tile block holds, for
//! its 8 rows, `d` (as the f16 bits), the two int8 sub-scales of the block's halves and the 8 × 32
//! unsigned values `q` (0..63, the weight being `d · sc · (q − 32)`) as bytes, chunked as
//! [`TileQ8`](super::pack::TileQ8)'s. The kernel sums each half in integers, takes the `− 32` off
//! through the activations' half sums, weights the halves by their sub-scales in integers (exact),
//! and applies `d` once: 9 bits per weight (GGML: 6.5625), against 10 for f32 sub-scales.

use super::act::BLOCK;
use super::pack::{check, f16_bits, PackError, Packed, Tiles, QK_K, TILE};

/// One 32-value block of 8 rows of Q6_K: value = `d · sc[half] · (q − 32)`, `q` in 0..63.
#[derive(Debug, Clone, Copy)]
#[repr(C, align(32))]
pub struct TileQ6 {
    /// The super-block scale of the 8 rows, as f16 bits.
    pub d: [u16; TILE],
    /// `sc[r]`: sub-scale of values 0..16 of row `r`; `sc[8 + r]`: of values 16..32.
    pub sc: [i8; 2 * TILE],
    /// Chunk `c`, row `r`, value `t` at `c * 32 + r * 4 + t`.
    pub qs: [u8; TILE * BLOCK],
}

impl TileQ6 {
    /// Quantised value `j` of row `r` (0..63; the weight is `q − 32` times the scales).
    pub fn q(&self, r: usize, j: usize) -> u8 {
        self.qs[(j / 4) * 32 + r * 4 + j % 4]
    }

    /// Value `j` of row `r` as f32.
    pub fn get(&self, r: usize, j: usize) -> f32 {
        let d = f16_bits(self.d[r]);
        let sc = self.sc[(j / 16) * TILE + r] as f32;
        d * sc * (self.q(r, j) as i32 - 32) as f32
    }
}

/// GGML Q6_K: 128 bytes of low nibbles, 64 of 2-bit high parts, 16 int8 scales, f16 `d`.
const Q6_K_BYTES: usize = QK_K / 2 + QK_K / 4 + QK_K / 16 + 2;

/// Value `v` (0..256) of a Q6_K super-block, `q` (0..63; the weight is `q − 32` times the scales).
fn q6_value(sb: &[u8], v: usize) -> u8 {
    let (half, quarter, l) = (v / 128, (v % 128) / 32, v % 32);
    let low = sb[half * 64 + (quarter % 2) * 32 + l];
    let nib = if quarter < 2 { low & 0x0F } else { low >> 4 };
    let high = (sb[QK_K / 2 + half * 32 + l] >> (2 * quarter)) & 3;
    nib | high << 4
}

impl Packed {
    /// Packs GGML Q6_K bytes of an `[n, k]` matrix.
    pub fn from_q6_k(bytes: &[u8], n: usize, k: usize) -> Result<Self, PackError> {
        let sbs = check(bytes, n, k, QK_K, Q6_K_BYTES, "Q6_K")?;
        let kb = k / BLOCK;
        // Padding rows: scale 0, values 0.
        let mut tiles = vec![
            TileQ6 {
                d: [0; TILE],
                sc: [0; 2 * TILE],
                qs: [0; TILE * BLOCK],
            };
            n.div_ceil(TILE) * kb
        ];
        for row in 0..n {
            let (t, r) = (row / TILE, row % TILE);
            for s in 0..sbs {
                let sb = &bytes[(row * sbs + s) * Q6_K_BYTES..][..Q6_K_BYTES];
                let scales = &sb[QK_K / 2 + QK_K / 4..][..QK_K / 16];
                let d = u16::from_le_bytes([sb[Q6_K_BYTES - 2], sb[Q6_K_BYTES - 1]]);
                for j in 0..QK_K / BLOCK {
                    let dst = &mut tiles[t * kb + s * (QK_K / BLOCK) + j];
                    dst.d[r] = d;
                    dst.sc[r] = scales[2 * j] as i8;
                    dst.sc[TILE + r] = scales[2 * j + 1] as i8;
                    for l in 0..BLOCK {
                        dst.qs[(l / 4) * 32 + r * 4 + l % 4] = q6_value(sb, j * BLOCK + l);
                    }
                }
            }
        }
        Ok(Self::with_tiles(n, k, Tiles::Q6(tiles)))
    }
}
