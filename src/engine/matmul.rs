//! The one seam for weight matrix products: every projection in the model goes through `Linear`.
//!
//! Today it wraps candle's `QMatMul` (quantised vec-dot kernels, or a dense f32 matmul for F32/F16
//! weights). A faster blocked kernel for prefill replaces the body of `forward`, nothing else.

use candle_core::quantized::{QMatMul, QTensor};
use candle_core::{Module, Result, Tensor};

/// A bias-free linear layer `y = x Wᵀ` with weights as stored in the GGUF file.
#[derive(Debug, Clone)]
pub struct Linear {
    inner: QMatMul,
}

impl Linear {
    /// Wraps a `[out, in]` weight tensor.
    pub fn new(weight: QTensor) -> Result<Self> {
        Ok(Self {
            inner: QMatMul::from_qtensor(weight)?,
        })
    }

    /// `x` is `[rows, in]` or `[b, t, in]`; the result has `out` as its last dimension.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.inner.forward(x)
    }
}
