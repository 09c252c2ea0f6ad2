//! Criterion bench of one weight product at prefill shape: the packed kernels vs candle's QMatMul.
//!
//! `cargo bench --bench qgemm`: `[128, 1024] × [2816, 1024]ᵀ` (a 1024-wide model's FFN up
//! projection over a 128-token document) for every type with a packed kernel. Throughput elements
//! are multiply-adds (m·n·k): criterion's "Gelem/s" is G multiply-adds per second (× 2 for GFLOP/s).

use std::sync::Arc;

use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{Device, Module, Tensor};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use labelmill::engine::isa::Isa;
use labelmill::engine::qgemm::op::PackedMatMul;
use labelmill::engine::qgemm::pack::Packed;

fn qgemm(c: &mut Criterion) {
    let (m, n, k) = (128usize, 2816usize, 1024usize);
    let dev = Device::Cpu;
    let w = Tensor::randn(0f32, 0.05, (n, k), &dev).expect("weights");
    let x = Tensor::randn(0f32, 1.0, (m, k), &dev).expect("input");
    let mut g = c.benchmark_group("matmul_128x2816x1024");
    g.sample_size(10);
    g.throughput(Throughput::Elements((m * n * k) as u64));
    use GgmlDType as D;
    let types = [
        D::Q8_0,
        D::Q4_0,
        D::Q4_1,
        D::Q5_0,
        D::Q5_1,
        D::Q2K,
        D::Q3K,
        D::Q4K,
        D::Q5K,
        D::Q6K,
    ];
    for dtype in types {
        let q = QTensor::quantize(&w, dtype).expect("quantize");
        let bytes = q.data().expect("bytes").into_owned();
        let packed = Packed::from_ggml(dtype, &bytes, n, k).expect("pack");
        let op = PackedMatMul {
            weights: Arc::new(packed),
            isa: Isa::detect(),
        };
        let candle = QMatMul::from_qtensor(q).expect("qmatmul");
        let name = format!("{dtype:?}");
        g.bench_with_input(BenchmarkId::new("packed", &name), &x, |b, x| {
            b.iter(|| x.apply_op1_no_bwd(&op).expect("packed"))
        });
        g.bench_with_input(BenchmarkId::new("candle", &name), &x, |b, x| {
            b.iter(|| candle.forward(x).expect("candle"))
        });
    }
    g.finish();
}

criterion_group!(benches, qgemm);
criterion_main!(benches);
