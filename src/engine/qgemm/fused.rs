//! Products that share their input, in one quantisation of the activations and one pool call:
//! several matrices at once (attention's Q, K and V), and the gated feed-forward's gate and up
//! products fused with `SiLU(gate) · up`, so neither product is written out on its own.

use super::act::QuantRows;
use super::pack::{Packed, TILE};
use super::run::{piece_rows, wants_unsigned, Pieces, Single, TileOp, WIDE};
use crate::engine::isa::Isa;
use crate::engine::shared_out::Fresh;
use crate::engine::vmath;

/// `x W_jᵀ` for every matrix `W_j` (all of width `k`): one `m × n_j` output each.
pub fn matmul_many(ws: &[&Packed], x: &[f32], m: usize, isa: Isa) -> Vec<Vec<f32>> {
    let k = ws.first().map_or(0, |w| w.k);
    assert!(ws.iter().all(|w| w.k == k), "the matrices differ in width");
    assert_eq!(x.len(), m * k, "input is not m × k");
    if m == 0 {
        return ws.iter().map(|_| Vec::new()).collect();
    }
    let outs: Vec<Fresh<f32>> = ws.iter().map(|w| Fresh::new(m * w.n)).collect();
    let unsigned = ws.iter().any(|w| wants_unsigned(w, isa));
    let act = QuantRows::quantize_with(x, m, k, isa, unsigned);
    let ops: Vec<Single<'_>> = ws.iter().map(|w| Single { w, act: &act, isa }).collect();
    let pieces: Vec<Pieces> = ws.iter().map(|w| Pieces::new(m, w.n)).collect();
    // Matrix j owns the global pieces starts[j]..starts[j + 1].
    let mut starts = vec![0];
    for p in &pieces {
        starts.push(starts[starts.len() - 1] + p.count());
    }
    let total = starts[starts.len() - 1];
    candle_core::utils::barrier_pool().execute_chunked(total, |chunk| {
        for piece in chunk {
            let j = starts.partition_point(|&s| s <= piece) - 1;
            let (rows, tiles) = pieces[j].get(piece - starts[j]);
            piece_rows(&ops[j], &outs[j], rows, tiles);
        }
    });
    outs.into_iter().map(Fresh::into_vec).collect()
}

/// `SiLU(x Wgᵀ) · (x Wuᵀ)` (`m × n`): each tile's gate and up columns are computed together and
/// combined in registers.
pub fn matmul_swiglu(gate: &Packed, up: &Packed, x: &[f32], m: usize, isa: Isa) -> Vec<f32> {
    assert!(
        gate.n == up.n && gate.k == up.k,
        "gate and up differ in shape"
    );
    assert_eq!(x.len(), m * gate.k, "input is not m × k");
    if m == 0 || gate.n == 0 {
        return Vec::new();
    }
    let unsigned = wants_unsigned(gate, isa) || wants_unsigned(up, isa);
    let act = QuantRows::quantize_with(x, m, gate.k, isa, unsigned);
    let op = SwiGlu {
        gate: Single {
            w: gate,
            act: &act,
            isa,
        },
        up: Single {
            w: up,
            act: &act,
            isa,
        },
    };
    let out = Fresh::new(m * gate.n);
    let pieces = Pieces::new(m, gate.n);
    candle_core::utils::barrier_pool().execute_chunked(pieces.count(), |chunk| {
        for piece in chunk {
            let (rows, tiles) = pieces.get(piece);
            piece_rows(&op, &out, rows, tiles);
        }
    });
    out.into_vec()
}

/// The gate and up products of one tile, combined.
struct SwiGlu<'a> {
    gate: Single<'a>,
    up: Single<'a>,
}

impl TileOp for SwiGlu<'_> {
    fn n(&self) -> usize {
        self.gate.n()
    }

    fn wide(&self) -> bool {
        self.gate.wide()
    }

    fn rows<const R: usize>(&self, t: usize, i0: usize) -> [[f32; TILE]; R] {
        combine(
            self.gate.isa,
            self.gate.rows::<R>(t, i0),
            self.up.rows::<R>(t, i0),
        )
    }

    fn rows2<const R: usize>(&self, t: usize, i0: usize) -> [[f32; WIDE]; R] {
        combine(
            self.gate.isa,
            self.gate.rows2::<R>(t, i0),
            self.up.rows2::<R>(t, i0),
        )
    }
}

/// `SiLU(g) · u`, element by element, as [`vmath::silu_mul`] computes it for separate products.
fn combine<const R: usize, const W: usize>(
    isa: Isa,
    mut g: [[f32; W]; R],
    u: [[f32; W]; R],
) -> [[f32; W]; R] {
    for (gi, ui) in g.iter_mut().zip(&u) {
        vmath::silu_mul(isa, gi, ui);
    }
    g
}
