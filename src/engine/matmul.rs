//! The one seam for weight matrix products: every projection in the model goes through `Linear`.
//!
//! On the CPU, Q8_0, Q4_0 and Q4_K weights are re-laid once at load for the blocked kernels of
//! [`super::qgemm`] (each weight block reused across several token rows); every other type, and
//! every other device, goes through candle's `QMatMul`.

use std::sync::Arc;

use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{Device, Module, Result, Tensor};

use super::qgemm::op::PackedMatMul;
use super::qgemm::pack::Packed;
use super::qgemm::{self, Isa};

/// A bias-free linear layer `y = x Wᵀ` with weights as stored in the GGUF file.
#[derive(Debug, Clone)]
pub struct Linear {
    inner: Inner,
}

#[derive(Debug, Clone)]
enum Inner {
    Candle(QMatMul),
    Packed(PackedMatMul),
}

impl Linear {
    /// Wraps a `[out, in]` weight tensor.
    pub fn new(weight: QTensor) -> Result<Self> {
        let (n, k) = weight.shape().dims2()?;
        let packable = matches!(weight.device(), Device::Cpu)
            && matches!(
                weight.dtype(),
                GgmlDType::Q8_0 | GgmlDType::Q4_0 | GgmlDType::Q4K
            )
            && qgemm::enabled();
        let inner = if packable {
            let bytes = weight.data()?;
            let packed = Packed::from_ggml(weight.dtype(), &bytes, n, k)
                .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
            Inner::Packed(PackedMatMul {
                weights: Arc::new(packed),
                isa: Isa::detect(),
            })
        } else {
            Inner::Candle(QMatMul::from_qtensor(weight)?)
        };
        Ok(Self { inner })
    }

    /// `x` is `[rows, in]` or `[b, t, in]`; the result has `out` as its last dimension.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match &self.inner {
            Inner::Candle(m) => m.forward(x),
            Inner::Packed(op) => x.contiguous()?.apply_op1_no_bwd(op),
        }
    }
}
