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
    let mut isas = vec![Isa::portable()];
    match Isa::avx2() {
        Some(simd) => isas.push(simd),
        None => eprintln!("skipped: the AVX2 kernels (this CPU has no AVX2 + FMA + F16C)"),
    }
    match Isa::avx_vnni() {
        Some(simd) => isas.push(simd),
        None => eprintln!("skipped: the AVX-VNNI kernels (this CPU has no AVX-VNNI)"),
    }
    match Isa::avx512_vnni() {
        Some(simd) => isas.push(simd),
        None => eprintln!("skipped: the AVX-512 VNNI kernels (this CPU has no AVX-512 VNNI)"),
    }
    isas
}

const TYPES: [GgmlDType; 10] = [
    GgmlDType::Q8_0,
    GgmlDType::Q4_0,
    GgmlDType::Q4_1,
    GgmlDType::Q4K,
    GgmlDType::Q5_0,
    GgmlDType::Q5_1,
    GgmlDType::Q5K,
    GgmlDType::Q6K,
    GgmlDType::Q3K,
    GgmlDType::Q2K,
];

/// (m, n, k): rows not multiples of 4 or 64, columns not of 8; k a multiple of the type's block.
fn shapes(dtype: GgmlDType) -> Vec<(usize, usize, usize)> {
    if dtype.block_size() == 256 {
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
                let got = matmul(&p, &x, m, isa);
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
    let simd = &isas()[1..];
    if simd.is_empty() {
        eprintln!("skipped: no SIMD kernels on this CPU; nothing to compare");
    }
    for &isa in simd {
        for dtype in TYPES {
            let (m, n, k) = (37, 45, 512);
            let (p, _) = weights(dtype, n, k, 3);
            let x = random(m * k, 4, 1.0);
            let (a, b) = (matmul(&p, &x, m, isa), matmul(&p, &x, m, Isa::portable()));
            for (u, v) in a.iter().zip(&b) {
                assert!(
                    (u - v).abs() <= 1e-4 * v.abs().max(1.0),
                    "{dtype:?} {isa:?}: {u} vs {v}"
                );
            }
        }
    }
}

/// The VNNI kernels (AVX-VNNI, AVX-512 VNNI) sum the same integers as the AVX2 ones (exactly, in
/// i32) and finish them with the same float operations in the same order, so all agree to the bit.
#[test]
fn vnni_and_avx2_kernels_agree_to_the_bit() {
    let Some(avx2) = Isa::avx2() else {
        eprintln!("skipped: this CPU lacks AVX2; nothing to compare");
        return;
    };
    let vnni: Vec<Isa> = [Isa::avx_vnni(), Isa::avx512_vnni()]
        .into_iter()
        .flatten()
        .collect();
    if vnni.len() < 2 {
        eprintln!("skipped: this CPU lacks AVX-VNNI or AVX-512 VNNI (compared: {vnni:?})");
    }
    for isa in vnni {
        for dtype in TYPES {
            for (m, n, k) in shapes(dtype) {
                let (p, _) = weights(dtype, n, k, 11);
                // Uniform activations: many bytes near ±127, the AVX2 i16 sums near their limits.
                let x = random(m * k, 12, 50.0);
                let (a, b) = (matmul(&p, &x, m, isa), matmul(&p, &x, m, avx2));
                assert_eq!(a, b, "{dtype:?} {isa:?} m={m} n={n} k={k}");
            }
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
    assert!(Packed::from_q6_k(&[0u8; 210], 1, 256).is_ok());
    assert!(Packed::from_q6_k(&[0u8; 209], 1, 256).is_err());
    assert!(Packed::from_q5_0(&[0u8; 22], 1, 32).is_ok());
    assert!(Packed::from_q5_1(&[0u8; 22], 1, 32).is_err());
    assert!(Packed::from_q5_k(&[0u8; 176], 1, 256).is_ok());
    assert!(Packed::from_q3_k(&[0u8; 110], 1, 256).is_ok());
    assert!(Packed::from_q2_k(&[0u8; 84], 1, 256).is_ok());
    assert!(Packed::from_q2_k(&[0u8; 84], 1, 512).is_err());
    assert!(Packed::from_ggml(GgmlDType::F16, &[0u8; 64], 1, 32).is_err());
}

#[test]
fn packed_memory_stays_within_one_and_a_half_times_the_gguf_size() {
    // A 7B projection's shape (rows a multiple of the tile, so no padding rows count).
    let (n, k) = (64, 4096);
    for dtype in TYPES {
        let (p, _) = weights(dtype, n, k, 1);
        let packed = p.size_in_bytes() as f64 * 8.0 / (n * k) as f64;
        let gguf = dtype.type_size() as f64 * 8.0 / dtype.block_size() as f64;
        println!("{dtype:?}: {packed:.3} bits per weight packed, {gguf:.4} in the GGUF");
        assert!(packed <= 1.5 * gguf, "{dtype:?}: {packed} > 1.5 × {gguf}");
    }
}

#[test]
fn shared_input_products_equal_separate_ones_exactly() {
    // Q, K and V of a grouped-query layer in three different types, as a Q4_K_M file mixes them.
    let (m, k) = (70, 256);
    let (q, _) = weights(GgmlDType::Q4K, 64, k, 1);
    let (kk, _) = weights(GgmlDType::Q4K, 16, k, 2);
    let (v, _) = weights(GgmlDType::Q6K, 16, k, 3);
    let x = random(m * k, 5, 2.0);
    for isa in isas() {
        let many = super::matmul_many(&[&q, &kk, &v], &x, m, isa);
        for (w, got) in [&q, &kk, &v].into_iter().zip(&many) {
            let want = matmul(w, &x, m, isa);
            assert_eq!(got, &want, "{isa:?}");
        }
    }
}

#[test]
fn the_fused_gate_equals_silu_of_the_gate_times_up_exactly() {
    let (m, n, k) = (67, 37, 256);
    let (g, _) = weights(GgmlDType::Q4_0, n, k, 4);
    let (u, _) = weights(GgmlDType::Q5K, n, k, 5);
    let x = random(m * k, 6, 2.0);
    for isa in isas() {
        let fused = super::matmul_swiglu(&g, &u, &x, m, isa);
        let (gv, uv) = (matmul(&g, &x, m, isa), matmul(&u, &x, m, isa));
        let t = |v: &[f32]| Tensor::from_vec(v.to_vec(), (m, n), &Device::Cpu).unwrap();
        let candle = (candle_nn::ops::silu(&t(&gv)).unwrap() * t(&uv))
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        // Exactly what the separate products' path (LoRA layers) computes from the same products.
        let mut want = gv;
        crate::engine::vmath::silu_mul(isa, &mut want, &uv);
        assert_eq!(fused, want, "{isa:?}");
        for (a, b) in fused.iter().zip(&candle) {
            assert!(
                (a - b).abs() <= 1e-6 * b.abs().max(1.0),
                "{isa:?}: {a} vs candle's {b}"
            );
        }
    }
}
