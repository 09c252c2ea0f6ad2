//! The packed kernels against a plain dequantised reference, at sizes that are not multiples of
//! the tile (8 rows), the kernel's row step (4) or the row block (64).

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Module, Tensor};
use rand::{Rng, SeedableRng};

use super::act::{QuantRows, BLOCK};
use super::matmul;
use super::op::PackedMatMul;
use super::pack::Packed;
use crate::engine::isa::Isa;

fn random(n: usize, seed: u64, spread: f32) -> Vec<f32> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    (0..n).map(|_| rng.random_range(-spread..spread)).collect()
}

/// A GGML-quantised `[n, k]` matrix, its packed form and its dequantised values.
fn weights(dtype: GgmlDType, n: usize, k: usize, seed: u64) -> (Packed, Vec<f32>) {
    let t = Tensor::from_vec(random(n * k, seed, 0.5), (n, k), &Device::Cpu).unwrap();
    let q = QTensor::quantize(&t, dtype).unwrap();
    let bytes = q.data().unwrap();
    let packed = Packed::from_ggml(dtype, &bytes, n, k).unwrap();
    let deq = q
        .dequantize(&Device::Cpu)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    (packed, deq)
}

/// `x Wᵀ` in f64 with the given (already rounded or exact) activations.
fn reference(x: &[f32], w: &[f32], m: usize, n: usize, k: usize) -> Vec<f64> {
    let mut y = vec![0f64; m * n];
    for i in 0..m {
        for j in 0..n {
            y[i * n + j] = (0..k)
                .map(|c| x[i * k + c] as f64 * w[j * k + c] as f64)
                .sum();
        }
    }
    y
}

/// The portable kernels, and the SIMD ones where this CPU has them (saying so where it has not).
fn isas() -> Vec<Isa> {
    match Isa::avx2() {
        Some(simd) => vec![Isa::portable(), simd],
        None => {
            eprintln!("skipped: the AVX2 kernels (this CPU has no AVX2 + FMA)");
            vec![Isa::portable()]
        }
    }
}

const TYPES: [GgmlDType; 4] = [
    GgmlDType::Q8_0,
    GgmlDType::Q4_0,
    GgmlDType::Q4_1,
    GgmlDType::Q4K,
];

/// (m, n, k): rows not multiples of 4 or 64, columns not of 8; k a multiple of the type's block.
fn shapes(dtype: GgmlDType) -> Vec<(usize, usize, usize)> {
    if dtype == GgmlDType::Q4K {
        return vec![
            (1, 1, 256),
            (3, 7, 256),
            (5, 13, 512),
            (67, 37, 768),
            (2, 17, 256),
        ];
    }
    vec![
        (1, 1, 32),
        (3, 7, 64),
        (5, 13, 96),
        (4, 8, 256),
        (67, 37, 160),
        (130, 9, 32),
        (2, 300, 288),
    ]
}

#[test]
fn packing_keeps_every_weight() {
    for dtype in TYPES {
        for (_, n, k) in shapes(dtype) {
            let (p, deq) = weights(dtype, n, k, 7);
            for r in 0..n {
                for c in 0..k {
                    assert_eq!(
                        p.get(r, c),
                        deq[r * k + c],
                        "{dtype:?} {n}×{k} at ({r}, {c})"
                    );
                }
            }
        }
    }
}

#[test]
fn products_equal_the_dequantised_reference_on_the_rounded_activations() {
    for dtype in TYPES {
        for (m, n, k) in shapes(dtype) {
            let (p, deq) = weights(dtype, n, k, m as u64);
            let x = random(m * k, 100 + n as u64, 3.0);
            // The kernels see the activations rounded to 8-bit blocks; with those the integer
            // sums are exact, so only float rounding separates the two.
            let a = QuantRows::quantize(&x, m, k, Isa::portable());
            let xr: Vec<f32> = (0..m * k)
                .map(|i| a.q[i] as f32 * a.d[(i / k) * (k / BLOCK) + (i % k) / BLOCK])
                .collect();
            let want = reference(&xr, &deq, m, n, k);
            let exact = reference(&x, &deq, m, n, k);
            for isa in isas() {
                let mut got = vec![0f32; m * n];
                matmul(&p, &x, m, &mut got, isa);
                for idx in 0..m * n {
                    let (i, j) = (idx / n, idx % n);
                    // Float rounding scales with the terms summed, offsets included (4-bit types
                    // subtract `min · Σx`, up to 16 steps of the block).
                    let wmax = (0..k).map(|c| deq[j * k + c].abs()).fold(0f32, f32::max) as f64;
                    let scale: f64 = (0..k).map(|c| x[i * k + c].abs() as f64 * 2.0 * wmax).sum();
                    let err = (got[idx] as f64 - want[idx]).abs();
                    assert!(
                        err <= 1e-5 * scale + 1e-6,
                        "{dtype:?} {isa:?} m={m} n={n} k={k} ({i}, {j}): {} vs {}",
                        got[idx],
                        want[idx]
                    );
                    // And against the unrounded activations: off by at most half a step per value.
                    let bound: f64 = (0..k)
                        .map(|c| {
                            deq[j * k + c].abs() as f64 * a.d[i * (k / BLOCK) + c / BLOCK] as f64
                                / 2.0
                        })
                        .sum();
                    assert!((got[idx] as f64 - exact[idx]).abs() <= bound + 1e-5 * scale + 1e-6);
                }
            }
        }
    }
}

#[test]
fn simd_and_portable_kernels_agree() {
    let Some(isa) = Isa::avx2() else {
        eprintln!("skipped: no SIMD kernels on this CPU (no AVX2 + FMA); nothing to compare");
        return;
    };
    for dtype in TYPES {
        let (m, n, k) = (37, 45, 512);
        let (p, _) = weights(dtype, n, k, 3);
        let x = random(m * k, 4, 1.0);
        let (mut a, mut b) = (vec![0f32; m * n], vec![0f32; m * n]);
        matmul(&p, &x, m, &mut a, isa);
        matmul(&p, &x, m, &mut b, Isa::portable());
        for (u, v) in a.iter().zip(&b) {
            assert!(
                (u - v).abs() <= 1e-4 * v.abs().max(1.0),
                "{dtype:?}: {u} vs {v}"
            );
        }
    }
}

#[test]
fn the_custom_op_matches_candles_quantised_matmul() {
    for dtype in TYPES {
        let (n, k) = (24, 256);
        let t = Tensor::from_vec(random(n * k, 9, 0.5), (n, k), &Device::Cpu).unwrap();
        let q = QTensor::quantize(&t, dtype).unwrap();
        let p = Packed::from_ggml(dtype, &q.data().unwrap(), n, k).unwrap();
        let op = PackedMatMul {
            weights: std::sync::Arc::new(p),
            isa: Isa::detect(),
        };
        let x = Tensor::from_vec(random(2 * 5 * k, 10, 2.0), (2, 5, k), &Device::Cpu).unwrap();
        let ours = x.apply_op1_no_bwd(&op).unwrap();
        assert_eq!(ours.dims(), &[2, 5, n]);
        let theirs = candle_core::quantized::QMatMul::from_qtensor(q)
            .unwrap()
            .forward(&x)
            .unwrap();
        let diff = (ours - &theirs)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        let size = theirs
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        // candle rounds the activation scales to f16 (Q8_0/Q4_0) or quantises activations in
        // blocks of 256 (Q4_K); the products differ by that rounding only.
        assert!(diff <= 1e-2 * size, "{dtype:?}: max diff {diff} of {size}");
    }
}

#[test]
fn wrong_sizes_are_refused() {
    assert!(Packed::from_q8_0(&[0u8; 33], 1, 32).is_err());
    assert!(Packed::from_q4_0(&[0u8; 18], 1, 48).is_err());
    assert!(Packed::from_q4_0(&[0u8; 18], 1, 32).is_ok());
    assert!(Packed::from_q4_k(&[0u8; 144], 1, 128).is_err());
    assert!(Packed::from_q4_k(&[0u8; 144], 1, 256).is_ok());
    assert!(Packed::from_ggml(GgmlDType::Q6K, &[0u8; 210], 1, 256).is_err());
}
