//! Blocked quantised matrix products for prefill: `y = x Wᵀ` with Q8_0, Q4_0, Q4_1 or Q4_K weights.
//!
//! candle's CPU `QMatMul` runs one matrix-vector product per input row, so a pass over L tokens
//! reads every weight L times. Here the activations are quantised once to 8-bit blocks
//! ([`act::QuantRows`]), the weights are re-laid 8 rows to a tile ([`pack::Packed`]), and each
//! weight chunk, once loaded, is multiplied with `MR` activation rows. The work is split over
//! (row block × tile group) pieces on candle's own CPU thread pool (the one its other ops use, so
//! the two never compete for the cores). The instruction set is picked at run time
//! ([`Isa::detect`]): AVX2 + FMA where the CPU has them, plain Rust everywhere else.

pub mod act;
#[cfg(target_arch = "x86_64")]
mod avx2;
pub mod op;
pub mod pack;
mod portable;

use std::ops::Range;

use act::QuantRows;
use pack::{Packed, Tiles, TILE};

/// Activation rows per kernel call (accumulators held in registers).
const MR: usize = 4;
/// Activation rows per work piece: their int8 values stay in L2 while the tiles stream past.
const ROW_BLOCK: usize = 64;
/// Tiles per work piece.
const TILE_GROUP: usize = 4;

/// The instruction set the kernels use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isa {
    /// 256-bit integer SIMD with fused multiply-add (x86-64-v3 and up).
    Avx2,
    /// Plain Rust, any CPU.
    Portable,
}

impl Isa {
    /// The best the running CPU offers; `LABELMILL_QGEMM_ISA=portable` forces the plain kernels.
    /// Decided once per process (attention asks on every call).
    pub fn detect() -> Self {
        static ISA: std::sync::OnceLock<Isa> = std::sync::OnceLock::new();
        *ISA.get_or_init(|| {
            if std::env::var("LABELMILL_QGEMM_ISA").is_ok_and(|v| v == "portable") {
                return Self::Portable;
            }
            #[cfg(target_arch = "x86_64")]
            if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
                return Self::Avx2;
            }
            Self::Portable
        })
    }

    /// The name used in logs and benchmark reports.
    pub fn name(self) -> &'static str {
        match self {
            Self::Avx2 => "avx2",
            Self::Portable => "portable",
        }
    }
}

/// Whether the packed kernels are switched on (`LABELMILL_QGEMM=candle` keeps candle's `QMatMul`,
/// for comparisons).
pub fn enabled() -> bool {
    !std::env::var("LABELMILL_QGEMM").is_ok_and(|v| v == "candle")
}

/// A buffer written from the thread pool's threads, each call writing elements no other touches.
#[derive(Clone, Copy)]
pub(crate) struct SharedMut<T>(*mut T);
// SAFETY: users write disjoint elements of a buffer that outlives the pool call (see `part`).
unsafe impl<T> Send for SharedMut<T> {}
unsafe impl<T> Sync for SharedMut<T> {}

impl<T> SharedMut<T> {
    /// Wraps `buf` for one parallel call.
    pub(crate) fn new(buf: &mut [T]) -> Self {
        Self(buf.as_mut_ptr())
    }

    /// Elements `start..start + len`.
    ///
    /// # Safety
    /// The range lies inside the wrapped buffer, the buffer is still alive, and no other live
    /// slice from the same wrapper overlaps it.
    #[allow(clippy::mut_from_ref)]
    pub(crate) unsafe fn part(&self, start: usize, len: usize) -> &mut [T] {
        std::slice::from_raw_parts_mut(self.0.add(start), len)
    }
}

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
    ptr: SharedMut<f32>,
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
    match (&w.tiles, isa) {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `Isa::Avx2` is only chosen after runtime detection of AVX2 and FMA; the row and
        // block ranges are inside `act` and the tile vector by construction in `matmul`.
        (Tiles::Q8(tiles), Isa::Avx2) => unsafe { avx2::q8_rows::<R>(&tiles[blocks], act, i0) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above.
        (Tiles::Q4(tiles), Isa::Avx2) => unsafe { avx2::q4_rows::<R>(&tiles[blocks], act, i0) },
        (Tiles::Q8(tiles), _) => portable::q8_rows::<R>(&tiles[blocks], act, i0),
        (Tiles::Q4(tiles), _) => portable::q4_rows::<R>(&tiles[blocks], act, i0),
    }
}

/// Writes the valid columns of a tile's results for rows `i0..i0 + R`.
fn put<const R: usize>(
    out: SharedMut<f32>,
    n: usize,
    i0: usize,
    cols: &Range<usize>,
    vals: &[[f32; TILE]; R],
) {
    for (i, row) in vals.iter().enumerate() {
        for (c, v) in cols.clone().zip(row) {
            // SAFETY: (i0 + i, c) is inside the m × n buffer, and no other piece writes it: pieces
            // own disjoint row blocks × tile groups.
            unsafe { out.part((i0 + i) * n + c, 1)[0] = *v };
        }
    }
}

#[cfg(test)]
mod tests;
