//! The one seam for weight matrix products: every projection in the model goes through `Linear`.
//!
//! Today it wraps candle's `QMatMul` (quantised vec-dot kernels, or a dense f32 matmul for F32/F16
//! weights). A faster blocked kernel for prefill replaces the body of `forward`, nothing else.

use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{Module, Result, Tensor};

/// A bias-free linear layer `y = x Wᵀ` with weights as stored in the GGUF file.
#[derive(Debug, Clone)]
pub struct Linear {
    inner: QMatMul,
    dtype: GgmlDType,
    out_dim: usize,
}

impl Linear {
    /// Wraps a `[out, in]` weight tensor.
    pub fn new(weight: QTensor) -> Result<Self> {
        let dtype = weight.dtype();
        let (out_dim, _) = weight.shape().dims2()?;
        Ok(Self {
            inner: QMatMul::from_qtensor(weight)?,
            dtype,
            out_dim,
        })
    }

    /// `x` is `[rows, in]` or `[b, t, in]`; the result has `out` as its last dimension.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.inner.forward(x)
    }

    /// The storage type of the weights.
    pub fn dtype(&self) -> GgmlDType {
        self.dtype
    }

    /// Output dimension.
    pub fn out_dim(&self) -> usize {
        self.out_dim
    }
}
