//! The blocked product itself: work pieces over row blocks × tile groups on candle's thread pool,
//! each dispatched to the kernels its [`Isa`] token allows.

use std::ops::Range;

use super::act::QuantRows;
use super::pack::{Packed, Tiles, TILE};
use super::portable;
#[cfg(target_arch = "x86_64")]
use super::{avx2, avx2_k, avx512, vnni};
use crate::engine::isa::{Isa, Kind};
use crate::engine::shared_out::{Fresh, Writer};

/// Activation rows per kernel call (accumulators held in registers).
const MR: usize = 4;
/// Activation rows per work piece: their int8 values stay in L2 while the tiles stream past.
const ROW_BLOCK: usize = 64;
/// Tiles per work piece (an even number: the AVX-512 kernels take tiles in pairs).
const TILE_GROUP: usize = 4;
/// Output columns of a two-tile kernel call.
pub(super) const WIDE: usize = 2 * TILE;

/// `out[i * n + j] = Σ_k x[i * k + c] · W[j, c]` for `m` rows of `x` (`m × n`, row-major).
pub fn matmul(w: &Packed, x: &[f32], m: usize, isa: Isa) -> Vec<f32> {
    assert_eq!(x.len(), m * w.k, "input is not m × k");
    if m == 0 || w.n == 0 {
        return Vec::new();
    }
    let act = QuantRows::quantize_with(x, m, w.k, isa, wants_unsigned(w, isa));
    let op = Single { w, act: &act, isa };
    let out = Fresh::new(m * w.n);
    let pieces = Pieces::new(m, w.n);
    candle_core::utils::barrier_pool().execute_chunked(pieces.count(), |chunk| {
        for piece in chunk {
            let (rows, tiles) = pieces.get(piece);
            piece_rows(&op, &out, rows, tiles);
        }
    });
    out.into_vec()
}

/// Whether products with `w` on `isa` read the activations as unsigned bytes as well
/// ([`super::act::QuantRows::qu`]): Q8_0 weights on the AVX-512 VNNI kernels.
pub(super) fn wants_unsigned(w: &Packed, isa: Isa) -> bool {
    matches!(w.tiles, Tiles::Q8(_)) && isa.kind() == Kind::Avx512Vnni
}

/// How an `m × n` product is cut into work pieces: row blocks × tile groups.
#[derive(Debug, Clone, Copy)]
pub(super) struct Pieces {
    m: usize,
    n_tiles: usize,
    groups: usize,
}

impl Pieces {
    pub(super) fn new(m: usize, n: usize) -> Self {
        let n_tiles = n.div_ceil(TILE);
        Self {
            m,
            n_tiles,
            groups: n_tiles.div_ceil(TILE_GROUP),
        }
    }

    /// Number of pieces.
    pub(super) fn count(&self) -> usize {
        self.m.div_ceil(ROW_BLOCK) * self.groups
    }

    /// Piece `p`'s activation rows and tiles.
    pub(super) fn get(&self, p: usize) -> (Range<usize>, Range<usize>) {
        let (rb, g) = (p / self.groups, p % self.groups);
        (
            rb * ROW_BLOCK..((rb + 1) * ROW_BLOCK).min(self.m),
            g * TILE_GROUP..((g + 1) * TILE_GROUP).min(self.n_tiles),
        )
    }
}

/// What a piece computes for `R` activation rows and one tile (or two) of output columns.
pub(super) trait TileOp: Sync {
    /// Output columns.
    fn n(&self) -> usize;
    /// Whether [`TileOp::rows2`] runs two tiles in one kernel call (the AVX-512 kernels).
    fn wide(&self) -> bool;
    /// Rows `i0..i0 + R` times tile `t`.
    fn rows<const R: usize>(&self, t: usize, i0: usize) -> [[f32; TILE]; R];
    /// Rows `i0..i0 + R` times tiles `t` and `t + 1`.
    fn rows2<const R: usize>(&self, t: usize, i0: usize) -> [[f32; WIDE]; R];
}

/// One matrix product.
pub(super) struct Single<'a> {
    pub(super) w: &'a Packed,
    pub(super) act: &'a QuantRows,
    pub(super) isa: Isa,
}

impl TileOp for Single<'_> {
    fn n(&self) -> usize {
        self.w.n
    }

    fn wide(&self) -> bool {
        self.isa.kind() == Kind::Avx512Vnni
    }

    fn rows<const R: usize>(&self, t: usize, i0: usize) -> [[f32; TILE]; R] {
        tile_rows::<R>(self.w, self.act, t, i0, self.isa)
    }

    fn rows2<const R: usize>(&self, t: usize, i0: usize) -> [[f32; WIDE]; R] {
        #[cfg(target_arch = "x86_64")]
        if self.wide() {
            let kb = self.w.blocks();
            let (a, b) = (t * kb..(t + 1) * kb, (t + 1) * kb..(t + 2) * kb);
            // SAFETY: an `Isa` of kind AVX-512 VNNI exists only after run-time detection of
            // AVX-512 F, BW and VNNI, AVX2, FMA and F16C (`engine::isa`); the kernel asserts the
            // row and block extents itself (and the tile ranges are bounds-checked slices).
            return unsafe { avx512::tile_rows::<R>(&self.w.tiles, a, b, self.act, i0) };
        }
        let (a, b) = (self.rows::<R>(t, i0), self.rows::<R>(t + 1, i0));
        std::array::from_fn(|i| {
            std::array::from_fn(|c| if c < TILE { a[i][c] } else { b[i][c - TILE] })
        })
    }
}

/// One work piece: a block of rows times a group of tiles, `MR` rows per kernel call, tiles in
/// pairs where the op runs two at once. Pieces cover the `m × n` output exactly (every row block
/// × every tile group, the last tile cut at `n`), so a product's pieces write all of `buf`.
pub(super) fn piece_rows(
    op: &impl TileOp,
    buf: &Fresh<f32>,
    rows: Range<usize>,
    tiles: Range<usize>,
) {
    let n = op.n();
    let mut out = buf.writer();
    let mut t = tiles.start;
    while t < tiles.end {
        let step = if op.wide() && t + 1 < tiles.end { 2 } else { 1 };
        let cols = t * TILE..((t + step) * TILE).min(n);
        let mut i0 = rows.start;
        while i0 < rows.end {
            let mr = (rows.end - i0).min(MR);
            macro_rules! run {
                ($rows:ident) => {
                    match mr {
                        4 => put(&mut out, n, i0, &cols, &op.$rows::<4>(t, i0)),
                        3 => put(&mut out, n, i0, &cols, &op.$rows::<3>(t, i0)),
                        2 => put(&mut out, n, i0, &cols, &op.$rows::<2>(t, i0)),
                        _ => put(&mut out, n, i0, &cols, &op.$rows::<1>(t, i0)),
                    }
                };
            }
            if step == 2 {
                run!(rows2)
            } else {
                run!(rows)
            }
            i0 += mr;
        }
        t += step;
    }
}

/// Rows `i0..i0 + R` times tile `t`.
fn tile_rows<const R: usize>(
    w: &Packed,
    act: &QuantRows,
    t: usize,
    i0: usize,
    isa: Isa,
) -> [[f32; TILE]; R] {
    let kb = w.blocks();
    let blocks = t * kb..(t + 1) * kb;
    match (&w.tiles, isa.kind()) {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: an `Isa` of kind AVX-VNNI exists only after run-time detection of AVX2, FMA, F16C
        // and AVX-VNNI (`engine::isa`); each kernel asserts the row and block extents itself.
        (tiles, Kind::AvxVnni) => unsafe { vnni::tile_rows::<R>(tiles, blocks, act, i0) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: an `Isa` of kind AVX2 (or AVX-512 VNNI, whose single tiles, such as a piece's
        // odd last one, run here) exists only after run-time detection of AVX2, FMA and F16C
        // (`engine::isa`); the kernel asserts the row and block extents itself.
        (Tiles::Q8(tiles), Kind::Avx2 | Kind::Avx512Vnni) => unsafe {
            avx2::q8_rows::<R>(&tiles[blocks], act, i0)
        },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above.
        (Tiles::Q40(tiles), Kind::Avx2 | Kind::Avx512Vnni) => unsafe {
            avx2::q4_rows::<_, R>(&tiles[blocks], act, i0)
        },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above.
        (Tiles::Q4(tiles), Kind::Avx2 | Kind::Avx512Vnni) => unsafe {
            avx2::q4_rows::<_, R>(&tiles[blocks], act, i0)
        },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above.
        (Tiles::Q5(tiles), Kind::Avx2 | Kind::Avx512Vnni) => unsafe {
            avx2::q5_rows::<R>(&tiles[blocks], act, i0)
        },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above (detection also requires F16C, which this kernel uses).
        (Tiles::Q6(tiles), Kind::Avx2 | Kind::Avx512Vnni) => unsafe {
            avx2_k::q6_rows::<R>(&tiles[blocks], act, i0)
        },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above.
        (Tiles::Q3(tiles), Kind::Avx2 | Kind::Avx512Vnni) => unsafe {
            avx2_k::q3_rows::<R>(&tiles[blocks], act, i0)
        },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above.
        (Tiles::Q2(tiles), Kind::Avx2 | Kind::Avx512Vnni) => unsafe {
            avx2_k::q2_rows::<R>(&tiles[blocks], act, i0)
        },
        (Tiles::Q8(tiles), _) => portable::q8_rows::<R>(&tiles[blocks], act, i0),
        (Tiles::Q40(tiles), _) => portable::q4_rows::<_, R>(&tiles[blocks], act, i0),
        (Tiles::Q4(tiles), _) => portable::q4_rows::<_, R>(&tiles[blocks], act, i0),
        (Tiles::Q5(tiles), _) => portable::q5_rows::<R>(&tiles[blocks], act, i0),
        (Tiles::Q6(tiles), _) => portable::q6_rows::<R>(&tiles[blocks], act, i0),
        (Tiles::Q3(tiles), _) => portable::q3_rows::<R>(&tiles[blocks], act, i0),
        (Tiles::Q2(tiles), _) => portable::q2_rows::<R>(&tiles[blocks], act, i0),
    }
}

/// Writes the valid columns of a tile's (or two tiles') results for rows `i0..i0 + R`.
fn put<const R: usize, const W: usize>(
    out: &mut Writer<'_, f32>,
    n: usize,
    i0: usize,
    cols: &Range<usize>,
    vals: &[[f32; W]; R],
) {
    for (i, row) in vals.iter().enumerate() {
        // SAFETY: row i0 + i, columns `cols`, is written by this piece only, once: pieces own
        // disjoint row blocks × tile groups (the range itself is bounds-checked by `write`).
        unsafe { out.write((i0 + i) * n + cols.start, &row[..cols.len()]) };
    }
}
