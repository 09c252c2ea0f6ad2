//! The packed product as a candle custom op, so the model keeps working in `Tensor`s.

use std::sync::Arc;

use candle_core::{CpuStorage, CustomOp1, Layout, Shape};

use super::pack::Packed;
use super::run::matmul;
use crate::engine::isa::Isa;

/// `x Wᵀ` over the last dimension of `x` (f32, CPU), with `W` packed.
#[derive(Debug, Clone)]
pub struct PackedMatMul {
    /// The weights.
    pub weights: Arc<Packed>,
    /// The kernels to use.
    pub isa: Isa,
}

impl CustomOp1 for PackedMatMul {
    fn name(&self) -> &'static str {
        "labelmill-packed-matmul"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let w = &self.weights;
        let CpuStorage::F32(data) = storage else {
            candle_core::bail!("packed matmul takes f32 input")
        };
        let Some((start, end)) = layout.contiguous_offsets() else {
            candle_core::bail!("packed matmul needs a contiguous input, got {layout:?}")
        };
        let mut dims = layout.shape().dims().to_vec();
        if dims.last() != Some(&w.k) {
            candle_core::bail!(
                "input {:?} does not end in {} (weights {} × {})",
                dims,
                w.k,
                w.n,
                w.k
            )
        }
        let m = layout.shape().elem_count() / w.k;
        let out = matmul(w, &data[start..end], m, self.isa);
        *dims.last_mut().expect("non-empty") = w.n;
        Ok((CpuStorage::F32(out), Shape::from(dims)))
    }
}
