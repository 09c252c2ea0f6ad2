//! KV caches as plain values: a prefix cache shared by a batch, or per-row caches from an earlier pass.

use candle_core::Tensor;

/// Keys and values of one layer, each `[1, n_kv_heads, seq, head_dim]` (a packed batch is one long
/// sequence whose rows are spans).
#[derive(Debug, Clone)]
pub struct LayerKv {
    /// Keys (rotary embedding already applied).
    pub k: Tensor,
    /// Values.
    pub v: Tensor,
}

/// The keys and values of every layer for some sequence positions.
#[derive(Debug, Clone)]
pub struct KvCache {
    /// One entry per transformer block.
    pub layers: Vec<LayerKv>,
}

impl KvCache {
    /// Number of cached positions.
    pub fn seq_len(&self) -> usize {
        self.layers.first().map(|l| l.k.dims()[2]).unwrap_or(0)
    }

    /// Bytes held by the keys and values.
    pub fn bytes(&self) -> usize {
        self.layers
            .iter()
            .map(|l| (l.k.elem_count() + l.v.elem_count()) * l.k.dtype().size_in_bytes())
            .sum()
    }
}
