//! The blocked product itself: work pieces over row blocks × tile groups on candle's thread pool,
//! each dispatched to the kernels its [`Isa`] token allows.

use std::ops::Range;

use super::act::QuantRows;
#[cfg(target_arch = "x86_64")]
use super::avx2;
use super::pack::{Packed, Tiles, TILE};
use super::portable;
use crate::engine::isa::{Isa, Kind};
use crate::engine::shared_out::SharedMut;

/// Activation rows per kernel call (accumulators held in registers).
const MR: usize = 4;
/// Activation rows per work piece: their int8 values stay in L2 while the tiles stream past.
const ROW_BLOCK: usize = 64;
/// Tiles per work piece.
const TILE_GROUP: usize = 4;

/// `out[i * n + j] = Σ_k x[i * k + c] · W[j, c]` for `m` rows of `x`.
pub fn matmul(w: &Packed, x: &[f32], m: usize, out: &mut [f32], isa: Isa) {
    assert_eq!(x.len(), m * w.k, "input is not m × k");
    assert_eq!(out.len(), m * w.n, "output is not m × n");
    if m == 0 || w.n == 0 {
        return;
    }
    let act = QuantRows::quantize(x, m, w.k, isa);
    let n_tiles = w.n.div_ceil(TILE);
    let groups = n_tiles.div_ceil(TILE_GROUP);
    let row_blocks = m.div_ceil(ROW_BLOCK);
    let ptr = SharedMut::new(out);
    candle_core::utils::barrier_pool().execute_chunked(row_blocks * groups, |pieces| {
        for piece in pieces {
            let rb = piece / groups;
            let rows = rb * ROW_BLOCK..((rb + 1) * ROW_BLOCK).min(m);
            let g = piece % groups;
            let tiles = g * TILE_GROUP..((g + 1) * TILE_GROUP).min(n_tiles);
            piece_rows(w, &act, ptr, rows, tiles, isa);
        }
    });
}

/// One work piece: a block of rows times a group of tiles.
fn piece_rows(
    w: &Packed,
    act: &QuantRows,
    ptr: SharedMut<'_, f32>,
    rows: Range<usize>,
    tiles: Range<usize>,
    isa: Isa,
) {
    for t in tiles {
        let cols = t * TILE..((t + 1) * TILE).min(w.n);
        let mut i0 = rows.start;
        while i0 < rows.end {
            let mr = (rows.end - i0).min(MR);
            match mr {
                4 => put(ptr, w.n, i0, &cols, &tile_rows::<4>(w, act, t, i0, isa)),
                3 => put(ptr, w.n, i0, &cols, &tile_rows::<3>(w, act, t, i0, isa)),
                2 => put(ptr, w.n, i0, &cols, &tile_rows::<2>(w, act, t, i0, isa)),
                _ => put(ptr, w.n, i0, &cols, &tile_rows::<1>(w, act, t, i0, isa)),
            }
            i0 += mr;
        }
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
        // SAFETY: an `Isa` of kind AVX2 exists only after run-time detection of AVX2 and FMA
        // (`engine::isa`); the kernel asserts the row and block extents itself.
        (Tiles::Q8(tiles), Kind::Avx2) => unsafe { avx2::q8_rows::<R>(&tiles[blocks], act, i0) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above.
        (Tiles::Q4(tiles), Kind::Avx2) => unsafe { avx2::q4_rows::<R>(&tiles[blocks], act, i0) },
        (Tiles::Q8(tiles), _) => portable::q8_rows::<R>(&tiles[blocks], act, i0),
        (Tiles::Q4(tiles), _) => portable::q4_rows::<R>(&tiles[blocks], act, i0),
    }
}

/// Writes the valid columns of a tile's results for rows `i0..i0 + R`.
fn put<const R: usize>(
    out: SharedMut<'_, f32>,
    n: usize,
    i0: usize,
    cols: &Range<usize>,
    vals: &[[f32; TILE]; R],
) {
    for (i, row) in vals.iter().enumerate() {
        // SAFETY: row i0 + i, columns `cols`, is written by this piece only: pieces own disjoint
        // row blocks × tile groups (the range itself is bounds-checked by `part`).
        let dst = unsafe { out.part((i0 + i) * n + cols.start, cols.len()) };
        dst.copy_from_slice(&row[..cols.len()]);
    }
}
