//! What one attention call reads: a row's queries, the shared prefix KV, its own KV and mask.
//!
//! Its own module so that the device dispatch ([`super::attention`]) and the CPU kernel
//! ([`super::attention_cpu`]) both depend on it and not on each other.

use candle_core::Tensor;

use super::kv::LayerKv;

/// Attention inputs for one row. `g = n_heads / n_kv_heads` query heads share each kv head.
pub struct AttentionInput<'a> {
    /// Queries `[1, n_kv_heads, g * t, head_dim]` (query head `h` belongs to kv head `h / g`).
    pub q: &'a Tensor,
    /// The shared prefix `[1, n_kv_heads, p, head_dim]`, visible to every query; `None` when `p = 0`.
    pub shared: Option<&'a LayerKv>,
    /// The row's own keys and values `[1, n_kv_heads, s, head_dim]`.
    pub rows: &'a LayerKv,
    /// Additive mask `[t, s]` over the row's keys (0 = visible, -inf = hidden).
    pub mask: &'a Tensor,
    /// Query heads per kv head.
    pub group: usize,
}
