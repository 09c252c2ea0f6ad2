//! Weights re-laid for the kernels: 8 output rows interleaved per 32-value block.
//!
//! A tile holds 8 consecutive weight rows (output columns). For each block of 32 input values it
//! stores the 8 scales and the 8 × 32 quantised values in chunks: chunk `c` is 32 bytes holding
//! values `4c..4c + 4` of row 0, then of row 1, … row 7. One 256-bit load of a chunk times the
//! activation's 4 bytes `4c..4c + 4` broadcast gives all 8 columns at once, so the dot products
//! land lane-wise and no horizontal sums are needed.
//!
//! 4-bit types keep their nibbles: byte group `h` holds chunk `h` in the low nibbles and chunk
//! `h + 4` in the high ones. Q4_1 (`d · q + m`) and Q4_K (`d·sc · q − dmin·m` per 32 values, the
//! 6-bit scales unpacked here) become `scale · q − min` with an f32 scale and min per row and block:
//! 6 bits per weight in memory (GGML: 4.5 to 5), the price of one kernel without per-call
//! unpacking. Q4_0 (`d · (q − 8)`) keeps its offset in integers ([`super::pack_q4`]). 5-bit types add a plane of high bits ([`super::pack_q5`]), Q6_K keeps
//! one byte a value with integer sub-scales ([`super::pack_q6`]), Q3_K and Q2_K bit planes with
//! integer sub-scales ([`super::pack_low`]). A last partial tile is padded with zero rows.

use half::f16;

use super::act::BLOCK;
pub use super::pack_low::{TileQ2, TileQ3};
pub use super::pack_q4::{Nibbles, TileQ40};
pub use super::pack_q5::TileQ5;
pub use super::pack_q6::TileQ6;

/// Output rows per tile (lanes of a 256-bit vector of i32/f32).
pub const TILE: usize = 8;

/// One 32-value block of 8 Q8_0 rows.
#[derive(Debug, Clone, Copy)]
#[repr(C, align(32))]
pub struct TileQ8 {
    /// Scales of the 8 rows.
    pub d: [f32; TILE],
    /// `128 · Σq` of each row's block: what a product with the activations shifted to unsigned
    /// bytes (`x + 128`, the AVX-512 kernel's `vpdpbusd` operand) sums on top of `Σ x · q`.
    pub wsum: [i32; TILE],
    /// Chunk `c`, row `r`, value `t` at `c * 32 + r * 4 + t`.
    pub qs: [i8; TILE * BLOCK],
}

/// One 32-value block of 8 rows of 4-bit weights: value = `d · q − m`, `q` in 0..15.
#[derive(Debug, Clone, Copy)]
#[repr(C, align(32))]
pub struct TileQ4 {
    /// Scales of the 8 rows.
    pub d: [f32; TILE],
    /// Offsets of the 8 rows.
    pub m: [f32; TILE],
    /// Group `h`, row `r`, value `t` at `h * 32 + r * 4 + t`: chunk `h` low, chunk `h + 4` high.
    pub qs: [u8; TILE * BLOCK / 2],
}

impl TileQ8 {
    /// Quantised value `j` of row `r`.
    pub fn q(&self, r: usize, j: usize) -> i8 {
        self.qs[(j / 4) * 32 + r * 4 + j % 4]
    }
}

impl TileQ4 {
    /// Quantised value `j` of row `r` (0..15).
    pub fn q(&self, r: usize, j: usize) -> u8 {
        nibble(&self.qs, r, j)
    }
}

/// An f16 given as its bits, as f32 (the tiles keep GGML's f16 super-block scales as bits).
pub(super) fn f16_bits(bits: u16) -> f32 {
    f16::from_bits(bits).to_f32()
}

/// Value `j` of row `r` of a nibble plane laid out as [`TileQ4::qs`].
pub(super) fn nibble(qs: &[u8], r: usize, j: usize) -> u8 {
    let c = j / 4;
    let byte = qs[(c % 4) * 32 + r * 4 + j % 4];
    if c < 4 {
        byte & 0x0F
    } else {
        byte >> 4
    }
}

/// Bit `j / 4` of byte `r * 4 + j % 4` of a bit plane (the extra bit of value `j` of row `r`), as
/// [`TileQ5::qh`] and [`TileQ3::qh`] lay it out.
pub(super) fn plane_bit(qh: &[u8], r: usize, j: usize) -> u8 {
    (qh[r * 4 + j % 4] >> (j / 4)) & 1
}

/// The packed blocks of a whole matrix, tile-major: `tiles[t * kb + b]`.
#[derive(Debug, Clone)]
pub enum Tiles {
    /// From GGML Q8_0.
    Q8(Vec<TileQ8>),
    /// From GGML Q4_0, kept centred.
    Q40(Vec<TileQ40>),
    /// From GGML Q4_1 or Q4_K.
    Q4(Vec<TileQ4>),
    /// From GGML Q5_0, Q5_1 or Q5_K.
    Q5(Vec<TileQ5>),
    /// From GGML Q6_K.
    Q6(Vec<TileQ6>),
    /// From GGML Q3_K.
    Q3(Vec<TileQ3>),
    /// From GGML Q2_K.
    Q2(Vec<TileQ2>),
}

/// Why a weight matrix could not be packed.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum PackError {
    /// The type has no kernel here (see [`Packed::supports`]).
    #[error("no packed kernel for {0}")]
    Unsupported(String),
    /// The byte length does not match `n × k` of the type.
    #[error("{bytes} bytes of {dtype} weights cannot be a {n} × {k} matrix")]
    Size {
        /// The type.
        dtype: &'static str,
        /// Bytes given.
        bytes: usize,
        /// Rows.
        n: usize,
        /// Columns.
        k: usize,
    },
}

/// A weight matrix `[n, k]` in the kernels' layout.
#[derive(Debug, Clone)]
pub struct Packed {
    /// Output rows.
    pub n: usize,
    /// Input columns.
    pub k: usize,
    /// The blocks.
    pub tiles: Tiles,
}

/// The GGML types with a packed kernel.
const SUPPORTED: [candle_core::quantized::GgmlDType; 10] = {
    use candle_core::quantized::GgmlDType as D;
    [
        D::Q8_0,
        D::Q4_0,
        D::Q4_1,
        D::Q4K,
        D::Q5_0,
        D::Q5_1,
        D::Q5K,
        D::Q6K,
        D::Q3K,
        D::Q2K,
    ]
};

/// GGML Q8_0: f16 scale + 32 × i8.
const Q8_0_BYTES: usize = 2 + BLOCK;
/// GGML Q4_1: f16 scale, f16 offset + 16 bytes of nibbles (value `j` low nibble of byte `j`,
/// `j + 16` high).
const Q4_1_BYTES: usize = 4 + BLOCK / 2;
/// Values in a GGML Q4_K super-block.
pub(super) const QK_K: usize = 256;
/// GGML Q4_K: f16 d, f16 dmin, 12 bytes of 6-bit scales and mins, 128 bytes of nibbles.
const Q4_K_BYTES: usize = 4 + 12 + QK_K / 2;

/// The f16 at the start of `block`, as f32.
pub(super) fn scale(block: &[u8]) -> f32 {
    f16::from_le_bytes([block[0], block[1]]).to_f32()
}

impl Packed {
    /// Whether `dtype` has a packed kernel.
    pub fn supports(dtype: candle_core::quantized::GgmlDType) -> bool {
        SUPPORTED.contains(&dtype)
    }

    pub(super) fn with_tiles(n: usize, k: usize, tiles: Tiles) -> Self {
        Self { n, k, tiles }
    }

    /// Packs GGML bytes of an `[n, k]` matrix of `dtype` (one of [`Packed::supports`]).
    pub fn from_ggml(
        dtype: candle_core::quantized::GgmlDType,
        bytes: &[u8],
        n: usize,
        k: usize,
    ) -> Result<Self, PackError> {
        use candle_core::quantized::GgmlDType as D;
        match dtype {
            D::Q8_0 => Self::from_q8_0(bytes, n, k),
            D::Q4_0 => Self::from_q4_0(bytes, n, k),
            D::Q4_1 => Self::from_q4_1(bytes, n, k),
            D::Q4K => Self::from_q4_k(bytes, n, k),
            D::Q5_0 => Self::from_q5_0(bytes, n, k),
            D::Q5_1 => Self::from_q5_1(bytes, n, k),
            D::Q5K => Self::from_q5_k(bytes, n, k),
            D::Q6K => Self::from_q6_k(bytes, n, k),
            D::Q3K => Self::from_q3_k(bytes, n, k),
            D::Q2K => Self::from_q2_k(bytes, n, k),
            other => Err(PackError::Unsupported(format!("{other:?}"))),
        }
    }

    /// Packs GGML Q8_0 bytes of an `[n, k]` matrix.
    pub fn from_q8_0(bytes: &[u8], n: usize, k: usize) -> Result<Self, PackError> {
        let kb = check(bytes, n, k, BLOCK, Q8_0_BYTES, "Q8_0")?;
        let mut tiles = vec![
            TileQ8 {
                d: [0.0; TILE],
                wsum: [0; TILE],
                qs: [0; TILE * BLOCK],
            };
            n.div_ceil(TILE) * kb
        ];
        for row in 0..n {
            let (t, r) = (row / TILE, row % TILE);
            for b in 0..kb {
                let src = &bytes[(row * kb + b) * Q8_0_BYTES..][..Q8_0_BYTES];
                let dst = &mut tiles[t * kb + b];
                dst.d[r] = scale(src);
                for (j, &v) in src[2..].iter().enumerate() {
                    dst.qs[(j / 4) * 32 + r * 4 + j % 4] = v as i8;
                }
                dst.wsum[r] = 128 * src[2..].iter().map(|&v| v as i8 as i32).sum::<i32>();
            }
        }
        Ok(Self {
            n,
            k,
            tiles: Tiles::Q8(tiles),
        })
    }

    /// Packs GGML Q4_1 bytes of an `[n, k]` matrix (`d · q + m`: the offset is stored negated).
    pub fn from_q4_1(bytes: &[u8], n: usize, k: usize) -> Result<Self, PackError> {
        let kb = check(bytes, n, k, BLOCK, Q4_1_BYTES, "Q4_1")?;
        let tiles = pack4(n, kb, |row, b| {
            let src = &bytes[(row * kb + b) * Q4_1_BYTES..][..Q4_1_BYTES];
            let (d, m) = (scale(src), scale(&src[2..]));
            let mut q = [0u8; BLOCK];
            for (j, v) in q.iter_mut().enumerate() {
                *v = (src[4 + j % 16] >> (4 * (j / 16))) & 0x0F;
            }
            (d, -m, q)
        });
        Ok(Self {
            n,
            k,
            tiles: Tiles::Q4(tiles),
        })
    }

    /// Packs GGML Q4_K bytes of an `[n, k]` matrix (super-blocks of 256: eight 32-value blocks
    /// with 6-bit scales and mins under an f16 `d` and `dmin`).
    pub fn from_q4_k(bytes: &[u8], n: usize, k: usize) -> Result<Self, PackError> {
        let sb = check(bytes, n, k, QK_K, Q4_K_BYTES, "Q4_K")?;
        let tiles = pack4(n, k / BLOCK, |row, b| {
            let src = &bytes[(row * sb + b / 8) * Q4_K_BYTES..][..Q4_K_BYTES];
            let (d, dmin) = (scale(src), scale(&src[2..]));
            let (sc, mn) = scale_min_k4(b % 8, &src[4..16]);
            // Block j of the super-block: group j / 2 of 32 bytes, low nibbles for even j.
            let qs = &src[16 + (b % 8 / 2) * 32..][..32];
            let shift = 4 * (b % 2);
            let mut q = [0u8; BLOCK];
            for (v, byte) in q.iter_mut().zip(qs) {
                *v = (byte >> shift) & 0x0F;
            }
            (d * sc as f32, dmin * mn as f32, q)
        });
        Ok(Self {
            n,
            k,
            tiles: Tiles::Q4(tiles),
        })
    }

    /// Blocks per row.
    pub fn blocks(&self) -> usize {
        self.k / BLOCK
    }

    /// Bytes held.
    pub fn size_in_bytes(&self) -> usize {
        match &self.tiles {
            Tiles::Q8(t) => std::mem::size_of_val(t.as_slice()),
            Tiles::Q40(t) => std::mem::size_of_val(t.as_slice()),
            Tiles::Q4(t) => std::mem::size_of_val(t.as_slice()),
            Tiles::Q5(t) => std::mem::size_of_val(t.as_slice()),
            Tiles::Q6(t) => std::mem::size_of_val(t.as_slice()),
            Tiles::Q3(t) => std::mem::size_of_val(t.as_slice()),
            Tiles::Q2(t) => std::mem::size_of_val(t.as_slice()),
        }
    }

    /// Weight `(row, col)` as f32 (scale × quantised value), for tests and references.
    pub fn get(&self, row: usize, col: usize) -> f32 {
        let kb = self.blocks();
        let (t, r, b, j) = (row / TILE, row % TILE, col / BLOCK, col % BLOCK);
        match &self.tiles {
            Tiles::Q8(tiles) => {
                let tb = &tiles[t * kb + b];
                tb.d[r] * tb.q(r, j) as f32
            }
            Tiles::Q4(tiles) => {
                let tb = &tiles[t * kb + b];
                tb.d[r] * tb.q(r, j) as f32 - tb.m[r]
            }
            Tiles::Q40(tiles) => tiles[t * kb + b].get(r, j),
            Tiles::Q5(tiles) => tiles[t * kb + b].get(r, j),
            Tiles::Q6(tiles) => tiles[t * kb + b].get(r, j),
            Tiles::Q3(tiles) => tiles[t * kb + b].get(r, j),
            Tiles::Q2(tiles) => tiles[t * kb + b].get(r, j),
        }
    }
}

/// Blocks of `unit` values per row, if the bytes are an `[n, k]` matrix of the type.
pub(super) fn check(
    bytes: &[u8],
    n: usize,
    k: usize,
    unit: usize,
    block_bytes: usize,
    dtype: &'static str,
) -> Result<usize, PackError> {
    if !k.is_multiple_of(unit) || bytes.len() != n * (k / unit) * block_bytes {
        return Err(PackError::Size {
            dtype,
            bytes: bytes.len(),
            n,
            k,
        });
    }
    Ok(k / unit)
}

/// Builds 4-bit tiles from `block(row, b) = (scale, min, 32 nibbles)`.
fn pack4(
    n: usize,
    kb: usize,
    block: impl Fn(usize, usize) -> (f32, f32, [u8; BLOCK]),
) -> Vec<TileQ4> {
    // Padding rows: scale and offset 0, so they contribute nothing.
    let mut tiles = vec![
        TileQ4 {
            d: [0.0; TILE],
            m: [0.0; TILE],
            qs: [0; TILE * BLOCK / 2],
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
        }
    }
    tiles
}

/// Writes the low 4 bits of row `r`'s 32 values into a nibble plane: group `h` holds chunk `h`
/// in the low nibbles and chunk `h + 4` in the high ones.
pub(super) fn put_nibbles(qs: &mut [u8], r: usize, q: &[u8; BLOCK]) {
    for h in 0..4 {
        for v in 0..4 {
            let (lo, hi) = (q[4 * h + v], q[16 + 4 * h + v]);
            qs[h * 32 + r * 4 + v] = (lo & 0x0F) | (hi & 0x0F) << 4;
        }
    }
}

/// Scale and min of block `j` (0..8) from Q4_K's 12 packed bytes (GGML's `get_scale_min_k4`).
pub(super) fn scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0x0F) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}
