//! A frozen projection for training: `x·Wᵀ` whose backward pass gives the input's gradient only.
//!
//! candle's autograd differentiates a plain `matmul` with respect to both operands, so a frozen
//! weight would still cost a full `dW` product (and its memory) per projection per step: half again
//! the work of a LoRA step. On the CPU the product runs as a custom op whose backward is `dy·W`
//! alone; on other devices it falls back to the plain product (same values, more work).

use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Storage, Tensor};

/// `x·Wᵀ` for `x` `[n, in]` and the frozen `w` `[out, in]`, differentiable in `x` only.
pub fn frozen_matmul(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    if x.device().is_cpu() {
        x.contiguous()?.apply_op1(Frozen { w: w.clone() })
    } else {
        x.matmul(&w.t()?)
    }
}

/// The custom op: holds the weight, `[out, in]`, f32, on the CPU.
struct Frozen {
    w: Tensor,
}

impl CustomOp1 for Frozen {
    fn name(&self) -> &'static str {
        "frozen-matmul"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let Some((start, end)) = layout.contiguous_offsets() else {
            candle_core::bail!("frozen-matmul: the input must be contiguous")
        };
        let x = Tensor::from_slice(
            &storage.as_slice::<f32>()?[start..end],
            layout.shape(),
            &candle_core::Device::Cpu,
        )?;
        let y = x.matmul(&self.w.t()?)?;
        let shape = y.shape().clone();
        let (guard, y_layout) = y.storage_and_layout();
        match &*guard {
            // `y` is a fresh product: contiguous from offset 0, its storage is exactly its data.
            Storage::Cpu(cs) if y_layout.is_contiguous() && y_layout.start_offset() == 0 => {
                Ok((cs.clone(), shape))
            }
            _ => candle_core::bail!("frozen-matmul: unexpected product layout"),
        }
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        // d(x·Wᵀ)/dx applied to dy: dy·W. No gradient for W: it is frozen.
        Ok(Some(grad_res.matmul(&self.w)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    #[test]
    fn forward_and_input_gradient_match_a_plain_matmul() {
        let dev = Device::Cpu;
        let w = Tensor::randn(0f32, 1.0, (5, 7), &dev).unwrap();
        let x0 = Tensor::randn(0f32, 1.0, (3, 7), &dev).unwrap();
        let up = Tensor::randn(0f32, 1.0, (3, 5), &dev).unwrap();
        let grad_of = |frozen: bool| {
            let x = Var::from_tensor(&x0).unwrap();
            let y = if frozen {
                frozen_matmul(x.as_tensor(), &w).unwrap()
            } else {
                x.as_tensor().matmul(&w.t().unwrap()).unwrap()
            };
            let loss = (y * &up).unwrap().sum_all().unwrap();
            let g = loss.backward().unwrap();
            (
                loss.to_scalar::<f32>().unwrap(),
                g.get(x.as_tensor())
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap(),
            )
        };
        let (l1, g1) = grad_of(true);
        let (l2, g2) = grad_of(false);
        assert!((l1 - l2).abs() < 1e-4, "{l1} vs {l2}");
        assert_eq!(g1.len(), 21);
        for (a, b) in g1.iter().zip(&g2) {
            assert!((a - b).abs() < 1e-4, "{a} vs {b}");
        }
    }
}
