//! The one seam for weight matrix products: every projection in the model goes through `Linear`.
//!
//! How the weights are held is the [`WeightFormat`]:
//! - `quantized` (default): as stored in the GGUF. On the CPU, every quantised type llama.cpp's
//!   users download (Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q2_K to Q6_K) is re-laid once at load for the
//!   blocked kernels of [`super::qgemm`]; F32/F16 weights, and every other device, go through
//!   candle's `QMatMul` (on CUDA its MMVQ/MMQ kernels).
//! - `bf16`: dequantised once at load to a dense bf16 matrix on the device (2 bytes a weight: 13 GB
//!   for a 7B model's blocks); products are dense (cuBLAS on CUDA). The output head stays quantised
//!   in every format (see `Llama::load`). Prefill-heavy work on a GPU is compute bound, where
//!   dense tensor-core products beat the quantised kernels.
//! - `bf16-per-batch`: kept quantised in memory (for models whose bf16 copy does not fit, 70B); each
//!   product dequantises its one weight into a transient bf16 buffer (freed when the product is
//!   done, so one matrix at a time is resident) and runs dense. Every product goes this way, whatever
//!   its row count, so a document scores the same alone as in any batch (the same arithmetic as
//!   `bf16`, at the cost of one dequantisation per product and batch).

use std::str::FromStr;
use std::sync::Arc;

use candle_core::quantized::{QMatMul, QTensor};
use candle_core::{DType, Device, Module, Result, Tensor};

use super::isa::Isa;
use super::qgemm;
use super::qgemm::op::PackedMatMul;
use super::qgemm::pack::Packed;

/// How projection weights are held and multiplied (see the module documentation).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum WeightFormat {
    /// As stored in the GGUF, quantised kernels.
    #[default]
    Quantized,
    /// Dequantised to bf16 once at load, dense products.
    Bf16,
    /// Quantised in memory, dequantised to bf16 for each product.
    Bf16PerBatch,
    /// Chosen at load by [`WeightFormat::resolve`]: `quantized` on the CPU; on a GPU `bf16` when
    /// the bf16 copy takes at most [`AUTO_BF16_SHARE`] of the free device memory, else
    /// `bf16-per-batch`.
    Auto,
}

/// The share of free device memory `auto` lets a bf16 copy of the weights take; the rest is for
/// the prefix caches, the batch's KV and activations (a 8192-token batch of a 7B model keeps
/// 8.6 GB of f32 keys and values).
pub const AUTO_BF16_SHARE: f64 = 0.7;

impl WeightFormat {
    /// Every concrete format (all but `auto`), in the order the documentation lists them.
    pub const ALL: [WeightFormat; 3] = [Self::Quantized, Self::Bf16, Self::Bf16PerBatch];

    /// The configuration spelling: `quantized`, `bf16`, `bf16-per-batch`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Quantized => "quantized",
            Self::Bf16 => "bf16",
            Self::Bf16PerBatch => "bf16-per-batch",
            Self::Auto => "auto",
        }
    }

    /// The concrete format for a model whose projections hold `bf16_bytes` as bf16, on a device
    /// with `free_bytes` of memory free (`None`: the CPU, or not known). Only `auto` changes.
    pub fn resolve(self, free_bytes: Option<u64>, bf16_bytes: u64) -> WeightFormat {
        match (self, free_bytes) {
            (Self::Auto, None) => Self::Quantized,
            (Self::Auto, Some(free)) if bf16_bytes as f64 <= free as f64 * AUTO_BF16_SHARE => {
                Self::Bf16
            }
            (Self::Auto, Some(_)) => Self::Bf16PerBatch,
            (f, _) => f,
        }
    }
}

impl std::fmt::Display for WeightFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An unknown `--weights` / `model.weights` value.
#[derive(Debug, thiserror::Error)]
#[error("unknown weight format '{0}': expected one of quantized, bf16, bf16-per-batch, auto")]
pub struct UnknownWeightFormat(String);

impl FromStr for WeightFormat {
    type Err = UnknownWeightFormat;

    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .chain([Self::Auto])
            .find(|f| f.as_str() == s)
            .ok_or_else(|| UnknownWeightFormat(s.to_string()))
    }
}

/// A bias-free linear layer `y = x Wᵀ`.
#[derive(Debug, Clone)]
pub struct Linear {
    inner: Inner,
}

#[derive(Debug, Clone)]
enum Inner {
    Candle(QMatMul),
    Packed(PackedMatMul),
    /// `[out, in]` bf16.
    Dense(Tensor),
    /// The quantised weight, dequantised for each product.
    PerBatch(Arc<QTensor>),
}

/// `weight` dequantised to a dense bf16 `[out, in]` matrix on its device.
fn dequantize_bf16(weight: &QTensor) -> Result<Tensor> {
    let dev = weight.device();
    if dev.is_cuda() {
        // candle's CUDA dequantisation kernel writes f16 directly (half the bytes of its f32 one).
        // f16 keeps 3 more significant bits than bf16, so going through it moves a weight from
        // the direct f32 → bf16 rounding only where the two roundings straddle a bf16 tie: at most
        // one bf16 step, rarely; the CPU-vs-GPU check in `check-device` covers that.
        weight.dequantize_f16(&dev)?.to_dtype(DType::BF16)
    } else {
        weight.dequantize(&dev)?.to_dtype(DType::BF16)
    }
}

/// `x Wᵀ` for a dense bf16 `w` (`[out, in]`): `x` is cast to bf16, the product accumulates in f32
/// (cuBLAS's bf16 GEMM on CUDA, the gemm crate on the CPU), the result comes back in `x`'s dtype.
fn dense_forward(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    let dims = x.dims().to_vec();
    let k = *dims
        .last()
        .expect("a product input has at least one dimension");
    let rows = x.elem_count() / k.max(1);
    let y = x
        .to_dtype(DType::BF16)?
        .reshape((rows, k))?
        .matmul(&w.t()?)?
        .to_dtype(x.dtype())?;
    let mut out = dims;
    *out.last_mut().expect("checked above") = w.dim(0)?;
    y.reshape(out)
}

impl Linear {
    /// Wraps a `[out, in]` weight tensor, held as stored (`WeightFormat::Quantized`).
    pub fn new(weight: QTensor) -> Result<Self> {
        Self::with_format(weight, WeightFormat::Quantized)
    }

    /// Wraps a `[out, in]` weight tensor, held as `format` says (`auto` is resolved per model, by
    /// the loader; here it means `quantized`).
    pub fn with_format(weight: QTensor, format: WeightFormat) -> Result<Self> {
        match format {
            WeightFormat::Quantized | WeightFormat::Auto => Self::quantized(weight),
            WeightFormat::Bf16 => Ok(Self {
                inner: Inner::Dense(dequantize_bf16(&weight)?),
            }),
            WeightFormat::Bf16PerBatch => Ok(Self {
                inner: Inner::PerBatch(Arc::new(weight)),
            }),
        }
    }

    fn quantized(weight: QTensor) -> Result<Self> {
        let (n, k) = weight.shape().dims2()?;
        let packable = matches!(weight.device(), Device::Cpu)
            && Packed::supports(weight.dtype())
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
            Inner::Dense(w) => dense_forward(x, w),
            Inner::PerBatch(q) => dense_forward(x, &dequantize_bf16(q)?),
        }
    }
}

/// `f` of `x`'s f32 values, when `x` is a contiguous f32 tensor in CPU memory.
fn with_cpu_f32<T>(x: &Tensor, f: impl FnOnce(&[f32]) -> T) -> Result<T> {
    let (storage, layout) = x.storage_and_layout();
    let candle_core::Storage::Cpu(candle_core::CpuStorage::F32(data)) = &*storage else {
        candle_core::bail!("a fused packed product takes f32 input in CPU memory")
    };
    let Some((start, end)) = layout.contiguous_offsets() else {
        candle_core::bail!("a fused packed product needs a contiguous input, got {layout:?}")
    };
    Ok(f(&data[start..end]))
}

/// `x`'s dims with the last replaced by `n`, and the rows (`m`) for width `k`.
fn out_dims(x: &Tensor, k: usize, n: usize) -> Result<(Vec<usize>, usize)> {
    let mut dims = x.dims().to_vec();
    if dims.last() != Some(&k) {
        candle_core::bail!("input {dims:?} does not end in {k}")
    }
    let m = x.elem_count() / k.max(1);
    *dims.last_mut().expect("checked above") = n;
    Ok((dims, m))
}

impl Linear {
    /// The packed weights, when this layer runs on the packed kernels.
    fn packed(&self) -> Option<&PackedMatMul> {
        match &self.inner {
            Inner::Packed(op) => Some(op),
            _ => None,
        }
    }

    /// `x Wᵀ` for several layers with the same input (attention's Q, K, V): when all run on the
    /// packed kernels, `x` is quantised once and the products share one pool call; otherwise one
    /// product each. The same numbers either way.
    pub fn forward_many(layers: &[&Linear], x: &Tensor) -> Result<Vec<Tensor>> {
        let ops: Option<Vec<&PackedMatMul>> = layers.iter().map(|l| l.packed()).collect();
        let Some(ops) = ops.filter(|o| !o.is_empty() && x.dtype() == DType::F32) else {
            return layers.iter().map(|l| l.forward(x)).collect();
        };
        let x = x.contiguous()?;
        let ws: Vec<&Packed> = ops.iter().map(|o| o.weights.as_ref()).collect();
        // Every product's output shape, checked against x before anything runs.
        let shapes = ws
            .iter()
            .map(|w| out_dims(&x, w.k, w.n))
            .collect::<Result<Vec<_>>>()?;
        let m = shapes[0].1;
        let outs = with_cpu_f32(&x, |data| qgemm::matmul_many(&ws, data, m, ops[0].isa))?;
        outs.into_iter()
            .zip(shapes)
            .map(|(o, (dims, _))| Tensor::from_vec(o, dims, x.device()))
            .collect()
    }

    /// `SiLU(x Wgᵀ) · (x Wuᵀ)`, the gated feed-forward's first half: fused into one pass over the
    /// packed kernels when both layers run on them, separate products otherwise.
    pub fn forward_swiglu(gate: &Linear, up: &Linear, x: &Tensor) -> Result<Tensor> {
        match (gate.packed(), up.packed()) {
            (Some(g), Some(u)) if x.dtype() == DType::F32 && g.weights.n == u.weights.n => {
                let x = x.contiguous()?;
                let isa = g.isa;
                let (g, u) = (g.weights.as_ref(), u.weights.as_ref());
                let (dims, m) = out_dims(&x, g.k, g.n)?;
                out_dims(&x, u.k, u.n)?;
                let out = with_cpu_f32(&x, |data| qgemm::matmul_swiglu(g, u, data, m, isa))?;
                Tensor::from_vec(out, dims, x.device())
            }
            _ => super::layer_ops::swiglu(&gate.forward(x)?, &up.forward(x)?),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::quantized::{GgmlDType, QTensor};

    /// A `[n, k]` weight quantised to `dtype`, and its f32 values as candle dequantises them.
    fn weight(dtype: GgmlDType, n: usize, k: usize) -> (QTensor, Vec<f32>) {
        let vals: Vec<f32> = (0..n * k)
            .map(|i| ((i * 7919 % 613) as f32 / 613.0 - 0.5) * 0.2)
            .collect();
        let t = Tensor::from_vec(vals, (n, k), &Device::Cpu).unwrap();
        let q = QTensor::quantize(&t, dtype).unwrap();
        let deq = q.dequantize(&Device::Cpu).unwrap();
        (q, deq.flatten_all().unwrap().to_vec1().unwrap())
    }

    fn bf16(x: f32) -> f64 {
        half::bf16::from_f32(x).to_f64()
    }

    #[test]
    fn every_type_with_a_kernel_is_packed_at_load_and_the_rest_stay_with_candle() {
        if !qgemm::enabled() {
            eprintln!("skipped: LABELMILL_QGEMM=candle switches the packed kernels off");
            return;
        }
        use GgmlDType as D;
        // Every quantised type llama.cpp's users download has a kernel.
        let kernels = [
            D::Q8_0,
            D::Q4_0,
            D::Q4_1,
            D::Q4K,
            D::Q5_0,
            D::Q5_1,
            D::Q5K,
            D::Q6K,
            D::Q3K,
            D::Q2K,
        ];
        for dtype in kernels {
            let (q, _) = weight(dtype, 16, 256);
            let l = Linear::new(q).unwrap();
            assert!(
                matches!(l.inner, Inner::Packed(_)),
                "{dtype:?} is not packed"
            );
        }
        for dtype in [D::F16, D::F32] {
            let (q, _) = weight(dtype, 16, 256);
            assert!(!Packed::supports(dtype));
            assert!(matches!(Linear::new(q).unwrap().inner, Inner::Candle(_)));
        }
    }

    #[test]
    fn bf16_formats_multiply_the_bf16_rounded_weights_and_inputs() {
        let (n, k) = (37, 256);
        for dtype in [
            GgmlDType::Q8_0,
            GgmlDType::Q4_0,
            GgmlDType::Q4K,
            GgmlDType::F32,
        ] {
            let (q, w) = weight(dtype, n, k);
            let q2 = QTensor::quantize(
                &Tensor::from_vec(w.clone(), (n, k), &Device::Cpu).unwrap(),
                dtype,
            )
            .unwrap();
            let dense = Linear::with_format(q, WeightFormat::Bf16).unwrap();
            let per_batch = Linear::with_format(q2, WeightFormat::Bf16PerBatch).unwrap();
            assert!(matches!(dense.inner, Inner::Dense(_)));
            assert!(matches!(per_batch.inner, Inner::PerBatch(_)));
            let x: Vec<f32> = (0..2 * 5 * k)
                .map(|i| ((i % 29) as f32 - 14.0) * 0.11)
                .collect();
            let xt = Tensor::from_vec(x.clone(), (2, 5, k), &Device::Cpu).unwrap();
            let y = dense.forward(&xt).unwrap();
            assert_eq!(y.dims(), &[2, 5, n]);
            assert_eq!(y.dtype(), DType::F32);
            let y: Vec<f32> = y.flatten_all().unwrap().to_vec1().unwrap();
            let y2: Vec<f32> = per_batch
                .forward(&xt)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            assert_eq!(y, y2, "{dtype:?}: the two bf16 formats are one arithmetic");
            for r in 0..10 {
                for c in 0..n {
                    let (mut want, mut scale) = (0f64, 0f64);
                    for i in 0..k {
                        let t = bf16(x[r * k + i]) * bf16(w[c * k + i]);
                        want += t;
                        scale += t.abs();
                    }
                    let got = y[r * n + c] as f64;
                    // f32 accumulation of exact bf16 products, then the result is rounded to bf16.
                    let tol = scale * 2f64.powi(-8) + 1e-6;
                    assert!(
                        (got - want).abs() <= tol,
                        "{dtype:?} [{r},{c}]: {got} vs {want} (tol {tol})"
                    );
                }
            }
        }
    }

    #[test]
    fn auto_picks_quantized_on_the_cpu_and_bf16_only_where_it_fits() {
        const GB: u64 = 1 << 30;
        let auto = WeightFormat::Auto;
        assert_eq!(auto.resolve(None, 13 * GB), WeightFormat::Quantized);
        // LLaMA 2 7B (13.5 GB as bf16) on an 80 GB card; 70B (138 GB) on it and on a 141 GB one.
        assert_eq!(
            auto.resolve(Some(79 * GB), 13 * GB + GB / 2),
            WeightFormat::Bf16
        );
        assert_eq!(
            auto.resolve(Some(79 * GB), 138 * GB),
            WeightFormat::Bf16PerBatch
        );
        assert_eq!(
            auto.resolve(Some(140 * GB), 138 * GB),
            WeightFormat::Bf16PerBatch
        );
        // The boundary: at most AUTO_BF16_SHARE of the free memory.
        assert_eq!(auto.resolve(Some(100 * GB), 70 * GB), WeightFormat::Bf16);
        assert_eq!(
            auto.resolve(Some(100 * GB), 71 * GB),
            WeightFormat::Bf16PerBatch
        );
        for f in WeightFormat::ALL {
            assert_eq!(f.resolve(Some(GB), 100 * GB), f, "explicit formats stay");
            assert_eq!(f.resolve(None, 0), f);
        }
    }

    #[test]
    fn weight_formats_parse_and_print_as_configured() {
        for f in WeightFormat::ALL.into_iter().chain([WeightFormat::Auto]) {
            assert_eq!(f.as_str().parse::<WeightFormat>().unwrap(), f);
        }
        let err = "int4".parse::<WeightFormat>().unwrap_err().to_string();
        assert!(
            err.contains("int4") && err.contains("bf16-per-batch"),
            "{err}"
        );
    }
}
