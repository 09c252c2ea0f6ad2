//! 2- and 3-bit weights (GGML Q2_K, Q3_K) re-laid as bit planes with integer per-16 scales.
//!
//! Both types scale every 16 values with a small integer under one f16 `d` per 256 (Q2_K also
//! subtracts a per-16 integer min under an f16 `dmin`). A tile block keeps, for 8 rows, the low two
//! bits of its 8 chunks in two 32-byte groups (group `c % 2`, bits `2 · (c / 2)`: one 16-bit shift
//! and a mask give chunk `c` in place), for Q3_K a plane of third bits laid out as
//! [`TileQ5::qh`](super::pack::TileQ5::qh), the sub-scales (and mins) per half-block and row, and
//! the rows' f16 `d` (and `dmin`). The kernels sum each half in integers, apply the sub-scales in
//! integers and take the offsets off through the activations' half-block sums. Q3_K: 4 bits per
//! weight (GGML 3.4375); Q2_K: 3.5 (GGML 2.625).

use super::act::BLOCK;
use super::pack::{check, f16_bits, plane_bit, PackError, Packed, Tiles, QK_K, TILE};

/// One 32-value block of 8 rows of Q3_K: value = `d · sc[half] · (q − 4)`, `q` in 0..7.
#[derive(Debug, Clone, Copy)]
#[repr(C, align(32))]
pub struct TileQ3 {
    /// Low two bits: chunk `c`, row `r`, value `t` at bits `2 · (c / 2)` of byte
    /// `(c % 2) * 32 + r * 4 + t`.
    pub qs: [u8; 2 * TILE * 4],
    /// Bit `c` of `qh[r * 4 + t]`: bit 2 of value `4c + t` of row `r`.
    pub qh: [u8; TILE * 4],
    /// `sc[h * 8 + r]`: the sub-scale of values `16h..16h + 16` of row `r` (−32..31).
    pub sc: [i8; 2 * TILE],
    /// The rows' super-block scales, as f16 bits.
    pub d: [u16; TILE],
}

/// One 32-value block of 8 rows of Q2_K: value = `d · sc · q − dmin · m` per half, `q` in 0..3.
#[derive(Debug, Clone, Copy)]
#[repr(C, align(16))]
pub struct TileQ2 {
    /// The 2-bit values, laid out as [`TileQ3::qs`].
    pub qs: [u8; 2 * TILE * 4],
    /// `scm[h * 8 + r]`: sub-scale (low nibble) and min (high nibble) of half `h` of row `r`.
    pub scm: [u8; 2 * TILE],
    /// The rows' super-block scales, as f16 bits.
    pub d: [u16; TILE],
    /// The rows' super-block min scales, as f16 bits.
    pub dmin: [u16; TILE],
}

/// Value `j` (0..32) of row `r` from a 2-bit plane.
fn two_bits(qs: &[u8], r: usize, j: usize) -> u8 {
    let c = j / 4;
    (qs[(c % 2) * 32 + r * 4 + j % 4] >> (2 * (c / 2))) & 3
}

impl TileQ3 {
    /// Quantised value `j` of row `r` (0..7; the weight is `q − 4` times the scales).
    pub fn q(&self, r: usize, j: usize) -> u8 {
        two_bits(&self.qs, r, j) | plane_bit(&self.qh, r, j) << 2
    }

    /// Value `j` of row `r` as f32.
    pub fn get(&self, r: usize, j: usize) -> f32 {
        f16_bits(self.d[r]) * self.sc[(j / 16) * TILE + r] as f32 * (self.q(r, j) as i32 - 4) as f32
    }
}

impl TileQ2 {
    /// Quantised value `j` of row `r` (0..3).
    pub fn q(&self, r: usize, j: usize) -> u8 {
        two_bits(&self.qs, r, j)
    }

    /// Value `j` of row `r` as f32.
    pub fn get(&self, r: usize, j: usize) -> f32 {
        let scm = self.scm[(j / 16) * TILE + r];
        f16_bits(self.d[r]) * (scm & 0x0F) as f32 * self.q(r, j) as f32
            - f16_bits(self.dmin[r]) * (scm >> 4) as f32
    }
}

/// GGML Q3_K: 32 bytes of third bits, 64 of 2-bit values, 12 of packed 6-bit scales, f16 `d`.
const Q3_K_BYTES: usize = QK_K / 8 + QK_K / 4 + 12 + 2;
/// GGML Q2_K: 16 bytes of 4-bit scales and mins, 64 of 2-bit values, f16 `d` and `dmin`.
const Q2_K_BYTES: usize = QK_K / 16 + QK_K / 4 + 4;

/// Bits `2j..2j + 2` of byte `32n + l` hold value `128n + 32j + l` of a Q2_K / Q3_K super-block.
fn k_two_bits(qs: &[u8], v: usize) -> u8 {
    let (n, j, l) = (v / 128, (v % 128) / 32, v % 32);
    (qs[n * 32 + l] >> (2 * j)) & 3
}

/// Sub-scale `j` (0..16) of Q3_K's 12 packed bytes: 4 low bits, then 2 high bits, minus 32.
fn q3_scale(sc: &[u8], j: usize) -> i8 {
    let low = if j < 8 { sc[j] & 0x0F } else { sc[j - 8] >> 4 };
    let high = (sc[8 + j % 4] >> (2 * (j / 4))) & 3;
    (low | high << 4) as i8 - 32
}

/// Writes the 32 values `q` (low two bits) of row `r` into a 2-bit plane.
fn put_two_bits(qs: &mut [u8], r: usize, q: &[u8; BLOCK]) {
    for (j, &v) in q.iter().enumerate() {
        let c = j / 4;
        qs[(c % 2) * 32 + r * 4 + j % 4] |= (v & 3) << (2 * (c / 2));
    }
}

impl Packed {
    /// Packs GGML Q3_K bytes of an `[n, k]` matrix.
    pub fn from_q3_k(bytes: &[u8], n: usize, k: usize) -> Result<Self, PackError> {
        let sbs = check(bytes, n, k, QK_K, Q3_K_BYTES, "Q3_K")?;
        let kb = k / BLOCK;
        let zero = TileQ3 {
            qs: [0; 2 * TILE * 4],
            qh: [0; TILE * 4],
            sc: [0; 2 * TILE],
            d: [0; TILE],
        };
        let mut tiles = vec![zero; n.div_ceil(TILE) * kb];
        for row in 0..n {
            let (t, r) = (row / TILE, row % TILE);
            for s in 0..sbs {
                let sb = &bytes[(row * sbs + s) * Q3_K_BYTES..][..Q3_K_BYTES];
                let (hmask, qs, scales) = (&sb[..32], &sb[32..96], &sb[96..108]);
                let d = u16::from_le_bytes([sb[108], sb[109]]);
                for j in 0..QK_K / BLOCK {
                    let dst = &mut tiles[t * kb + s * (QK_K / BLOCK) + j];
                    dst.d[r] = d;
                    dst.sc[r] = q3_scale(scales, 2 * j);
                    dst.sc[TILE + r] = q3_scale(scales, 2 * j + 1);
                    let mut q = [0u8; BLOCK];
                    for (l, v) in q.iter_mut().enumerate() {
                        let at = j * BLOCK + l;
                        let high = (hmask[at % 32] >> (at / 32)) & 1;
                        *v = k_two_bits(qs, at) | high << 2;
                        dst.qh[r * 4 + l % 4] |= high << (l / 4);
                    }
                    put_two_bits(&mut dst.qs, r, &q);
                }
            }
        }
        Ok(Self::with_tiles(n, k, Tiles::Q3(tiles)))
    }

    /// Packs GGML Q2_K bytes of an `[n, k]` matrix.
    pub fn from_q2_k(bytes: &[u8], n: usize, k: usize) -> Result<Self, PackError> {
        let sbs = check(bytes, n, k, QK_K, Q2_K_BYTES, "Q2_K")?;
        let kb = k / BLOCK;
        let zero = TileQ2 {
            qs: [0; 2 * TILE * 4],
            scm: [0; 2 * TILE],
            d: [0; TILE],
            dmin: [0; TILE],
        };
        let mut tiles = vec![zero; n.div_ceil(TILE) * kb];
        for row in 0..n {
            let (t, r) = (row / TILE, row % TILE);
            for s in 0..sbs {
                let sb = &bytes[(row * sbs + s) * Q2_K_BYTES..][..Q2_K_BYTES];
                let (scales, qs) = (&sb[..16], &sb[16..80]);
                for j in 0..QK_K / BLOCK {
                    let dst = &mut tiles[t * kb + s * (QK_K / BLOCK) + j];
                    dst.d[r] = u16::from_le_bytes([sb[80], sb[81]]);
                    dst.dmin[r] = u16::from_le_bytes([sb[82], sb[83]]);
                    dst.scm[r] = scales[2 * j];
                    dst.scm[TILE + r] = scales[2 * j + 1];
                    let mut q = [0u8; BLOCK];
                    for (l, v) in q.iter_mut().enumerate() {
                        *v = k_two_bits(qs, j * BLOCK + l);
                    }
                    put_two_bits(&mut dst.qs, r, &q);
                }
            }
        }
        Ok(Self::with_tiles(n, k, Tiles::Q2(tiles)))
    }
}
