//! 5-bit weights (GGML Q5_0, Q5_1, Q5_K) re-laid as 4-bit tiles plus one plane of high bits.
//!
//! The nibbles sit exactly as in [`TileQ4`](super::pack::TileQ4) (group `h`: chunk `h` low, chunk
//! `h + 4` high). The fifth bit of value `4c + t` of row `r` is bit `c` of `qh[r * 4 + t]`, so one
//! 256-bit load of `qh`, shifted by `4 − c` (or `c − 4`) and masked with `0x10`, is chunk `c`'s high
//! bits in place: two instructions per chunk. Every type becomes `scale · q − min` with `q` in
//! 0..31 and an f32 scale and min per row and block: 7 bits per weight (GGML: 5.5 to 6).

use super::act::BLOCK;
use super::pack::{
    check, nibble, plane_bit, put_nibbles, scale, scale_min_k4, PackError, Packed, Tiles, QK_K,
    TILE,
};

/// One 32-value block of 8 rows of 5-bit weights: value = `d · q − m`, `q` in 0..31.
#[derive(Debug, Clone, Copy)]
#[repr(C, align(32))]
pub struct TileQ5 {
    /// Scales of the 8 rows.
    pub d: [f32; TILE],
    /// Offsets of the 8 rows.
    pub m: [f32; TILE],
    /// The low 4 bits, laid out as [`TileQ4::qs`](super::pack::TileQ4::qs).
    pub qs: [u8; TILE * BLOCK / 2],
    /// Bit `c` of `qh[r * 4 + t]`: bit 4 of value `4c + t` of row `r`.
    pub qh: [u8; TILE * 4],
}

impl TileQ5 {
    /// Quantised value `j` of row `r` (0..31).
    pub fn q(&self, r: usize, j: usize) -> u8 {
        nibble(&self.qs, r, j) | plane_bit(&self.qh, r, j) << 4
    }

    /// Value `j` of row `r` as f32.
    pub fn get(&self, r: usize, j: usize) -> f32 {
        self.d[r] * self.q(r, j) as f32 - self.m[r]
    }
}

/// GGML Q5_0: f16 scale, 32 high bits, 16 bytes of nibbles (as Q4_0's).
const Q5_0_BYTES: usize = 2 + 4 + BLOCK / 2;
/// GGML Q5_1: f16 scale, f16 offset, then as Q5_0.
const Q5_1_BYTES: usize = 4 + 4 + BLOCK / 2;
/// GGML Q5_K: f16 d, f16 dmin, 12 bytes of 6-bit scales and mins, 32 bytes of high bits, 128 of
/// nibbles.
const Q5_K_BYTES: usize = 4 + 12 + QK_K / 8 + QK_K / 2;

/// The 32 values of a Q5_0 / Q5_1 block from its 4 high-bit bytes and 16 nibble bytes.
fn q5_values(qh: &[u8], qs: &[u8]) -> [u8; BLOCK] {
    let high = u32::from_le_bytes([qh[0], qh[1], qh[2], qh[3]]);
    let mut q = [0u8; BLOCK];
    for (j, v) in q.iter_mut().enumerate() {
        let nib = (qs[j % 16] >> (4 * (j / 16))) & 0x0F;
        *v = nib | (((high >> j) & 1) as u8) << 4;
    }
    q
}

impl Packed {
    /// Packs GGML Q5_0 bytes of an `[n, k]` matrix (`d · (q − 16)`).
    pub fn from_q5_0(bytes: &[u8], n: usize, k: usize) -> Result<Self, PackError> {
        let kb = check(bytes, n, k, BLOCK, Q5_0_BYTES, "Q5_0")?;
        let tiles = pack5(n, kb, |row, b| {
            let src = &bytes[(row * kb + b) * Q5_0_BYTES..][..Q5_0_BYTES];
            let d = scale(src);
            (d, 16.0 * d, q5_values(&src[2..6], &src[6..]))
        });
        Ok(Self::with_tiles(n, k, Tiles::Q5(tiles)))
    }

    /// Packs GGML Q5_1 bytes of an `[n, k]` matrix (`d · q + m`: the offset is stored negated).
    pub fn from_q5_1(bytes: &[u8], n: usize, k: usize) -> Result<Self, PackError> {
        let kb = check(bytes, n, k, BLOCK, Q5_1_BYTES, "Q5_1")?;
        let tiles = pack5(n, kb, |row, b| {
            let src = &bytes[(row * kb + b) * Q5_1_BYTES..][..Q5_1_BYTES];
            let (d, m) = (scale(src), scale(&src[2..]));
            (d, -m, q5_values(&src[4..8], &src[8..]))
        });
        Ok(Self::with_tiles(n, k, Tiles::Q5(tiles)))
    }

    /// Packs GGML Q5_K bytes of an `[n, k]` matrix (super-blocks of 256: eight 32-value blocks
    /// with 6-bit scales and mins as Q4_K's; block `j`'s fifth bits are bit `j` of the 32 `qh`
    /// bytes).
    pub fn from_q5_k(bytes: &[u8], n: usize, k: usize) -> Result<Self, PackError> {
        let sb = check(bytes, n, k, QK_K, Q5_K_BYTES, "Q5_K")?;
        let tiles = pack5(n, k / BLOCK, |row, b| {
            let src = &bytes[(row * sb + b / 8) * Q5_K_BYTES..][..Q5_K_BYTES];
            let (d, dmin) = (scale(src), scale(&src[2..]));
            let j = b % 8;
            let (sc, mn) = scale_min_k4(j, &src[4..16]);
            let qh = &src[16..48];
            let qs = &src[48 + (j / 2) * 32..][..32];
            let shift = 4 * (j % 2);
            let mut q = [0u8; BLOCK];
            for (l, v) in q.iter_mut().enumerate() {
                *v = ((qs[l] >> shift) & 0x0F) | ((qh[l] >> j) & 1) << 4;
            }
            (d * sc as f32, dmin * mn as f32, q)
        });
        Ok(Self::with_tiles(n, k, Tiles::Q5(tiles)))
    }
}

/// Builds 5-bit tiles from `block(row, b) = (scale, min, 32 values in 0..31)`.
fn pack5(
    n: usize,
    kb: usize,
    block: impl Fn(usize, usize) -> (f32, f32, [u8; BLOCK]),
) -> Vec<TileQ5> {
    // Padding rows: scale and offset 0, so they contribute nothing.
    let mut tiles = vec![
        TileQ5 {
            d: [0.0; TILE],
            m: [0.0; TILE],
            qs: [0; TILE * BLOCK / 2],
            qh: [0; TILE * 4],
        };
        n.div_ceil(TILE) * kb
    ];
    for row in 0..n {
        let (t, r) = (row / TILE, row % TILE);
        for b in 0..kb {
            let (d, m, q) = block(row, b);
            let dst = &mut tiles[t * kb + b];
            dst.d[r] = d;
            dst.m[r] = m;
            put_nibbles(&mut dst.qs, r, &q);
            for (j, &v) in q.iter().enumerate() {
                dst.qh[r * 4 + j % 4] |= (v >> 4) << (j / 4);
            }
        }
    }
    tiles
}
