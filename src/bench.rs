//! `labelmill bench`: synthetic documents through the engine, timed; one JSON line of figures.

use std::time::Instant;

use rand::{Rng, SeedableRng};

use crate::engine::load::Hparams;
use crate::engine::prepared::PreparedTask;
use candle_core::Device;

use crate::engine::{Engine, EngineError, WeightFormat};

/// The synthetic workload.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BenchWorkload {
    /// Documents per run.
    pub docs: usize,
    /// Tokens per document.
    pub doc_tokens: usize,
    /// Tokens in the shared prompt prefix (BOS included).
    pub prefix_tokens: usize,
    /// Documents per forward pass.
    pub batch_size: usize,
    /// Timed runs (the median is reported).
    pub runs: usize,
    /// Seed of the synthetic token ids.
    pub seed: u64,
    /// Baseline without prefix caching: every document runs its whole prompt, one at a time.
    pub uncached: bool,
}

/// The figures `bench` prints.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BenchReport {
    /// Model file name.
    pub model: String,
    /// Weight quantisation.
    pub quant: String,
    /// Compute threads.
    pub threads: usize,
    /// The workload.
    #[serde(flatten)]
    pub workload: BenchWorkload,
    /// Documents per second (median run).
    pub docs_per_s: f64,
    /// Document tokens per second (median run).
    pub doc_tokens_per_s: f64,
    /// Prefix tokens not recomputed thanks to the prefix cache, per run (0 with `uncached`).
    pub prefix_tokens_saved: usize,
    /// One-time cost of computing the prefix KV, in milliseconds.
    pub prefix_ms: f64,
    /// Seconds of each timed run.
    pub run_seconds: Vec<f64>,
    /// The matrix-product kernels the engine uses for the projections.
    pub kernels: String,
    /// How the projection weights are held (`quantized`, `bf16`, `bf16-per-batch`).
    pub weights: WeightFormat,
    /// The compute device (`cpu`, `cuda:0`).
    pub device: String,
    /// Device memory in use after the runs (total − free, whole device), on CUDA; none on the CPU.
    pub device_memory_used_bytes: Option<u64>,
    /// Arithmetic per document token: projections `2·(2·dim² + 2·dim·kv_dim + 3·dim·ffn)` per layer
    /// plus attention `4·dim·keys` per layer over the prefix and half the document on average.
    pub flops_per_doc_token: f64,
    /// `flops_per_doc_token × doc_tokens_per_s / 1e12`: the rate to hold against the device's peak.
    pub tflops: f64,
}

/// The machine's f32 matrix-product rate, the yardstick for the engine's arithmetic rate.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PeakReport {
    /// Square matrix size.
    pub size: usize,
    /// Threads (RAYON_NUM_THREADS or all cores, as the engine).
    pub threads: usize,
    /// GFLOP/s of the median run (2·size³ FLOPs per product).
    pub peak_gflops: f64,
    /// GFLOP/s of each run.
    pub run_gflops: Vec<f64>,
}

/// Times `size × size × size` f32 products through the `gemm` crate (candle's CPU matmul).
pub fn peak(size: usize, runs: usize) -> PeakReport {
    let threads = candle_core::utils::get_num_threads();
    let a: Vec<f32> = (0..size * size).map(|i| (i % 17) as f32 * 0.01).collect();
    let b: Vec<f32> = (0..size * size).map(|i| (i % 13) as f32 * 0.01).collect();
    let mut c = vec![0f32; size * size];
    let s = size as isize;
    let mut product = || {
        // SAFETY: three distinct size × size row-major buffers, strides matching their layout.
        unsafe {
            gemm::gemm(
                size,
                size,
                size,
                c.as_mut_ptr(),
                1,
                s,
                false,
                a.as_ptr(),
                1,
                s,
                b.as_ptr(),
                1,
                s,
                0.0,
                1.0,
                false,
                false,
                false,
                gemm::Parallelism::Rayon(threads),
            )
        }
    };
    product();
    let run_gflops: Vec<f64> = (0..runs.max(1))
        .map(|_| {
            let t = Instant::now();
            product();
            2.0 * (size as f64).powi(3) / t.elapsed().as_secs_f64() / 1e9
        })
        .collect();
    let mut sorted = run_gflops.clone();
    sorted.sort_by(f64::total_cmp);
    let peak_gflops = sorted[sorted.len() / 2];
    PeakReport {
        size,
        threads,
        peak_gflops,
        run_gflops,
    }
}

/// Runs the workload on `engine`.
pub fn run(engine: &Engine, w: &BenchWorkload) -> Result<BenchReport, EngineError> {
    let info = engine.info();
    let vocab = info.hparams.vocab_size as u32;
    let mut rng = rand::rngs::StdRng::seed_from_u64(w.seed);
    // Ids from 259 up: past the special and byte tokens of a LLaMA vocabulary.
    let mut ids = |n: usize| -> Vec<u32> {
        (0..n)
            .map(|_| rng.random_range(259.min(vocab - 1)..vocab))
            .collect()
    };
    let mut prefix = vec![info.hparams.bos_token_id];
    prefix.extend(ids(w.prefix_tokens.saturating_sub(1)));
    let suffix = ids(3);
    let labels = (0..4).map(|i| (format!("label{i}"), ids(1))).collect();
    let task = PreparedTask::from_ids("bench", prefix, suffix, labels);
    let docs: Vec<Vec<u32>> = (0..w.docs).map(|_| ids(w.doc_tokens)).collect();

    let t0 = Instant::now();
    engine.prefix_kv(&task)?;
    let prefix_ms = t0.elapsed().as_secs_f64() * 1e3;
    // Warm-up: one batch, so allocations and packed weights are in place before timing.
    let warm: Vec<&[u32]> = docs.iter().take(w.batch_size).map(Vec::as_slice).collect();
    engine.score(&task, &warm)?;

    let mut run_seconds = Vec::with_capacity(w.runs);
    for _ in 0..w.runs.max(1) {
        let t = Instant::now();
        if w.uncached {
            for d in &docs {
                engine.score_uncached(&task, d)?;
            }
        } else {
            for chunk in docs.chunks(w.batch_size.max(1)) {
                let batch: Vec<&[u32]> = chunk.iter().map(Vec::as_slice).collect();
                engine.score(&task, &batch)?;
            }
        }
        run_seconds.push(t.elapsed().as_secs_f64());
    }
    let mut sorted = run_seconds.clone();
    sorted.sort_by(f64::total_cmp);
    let median = sorted[sorted.len() / 2];
    let doc_tokens_per_s = (w.docs * w.doc_tokens) as f64 / median;
    let flops_per_doc_token = flops_per_doc_token(&info.hparams, w.prefix_tokens, w.doc_tokens);
    let kernels = kernels(engine.device(), info.weights);
    Ok(BenchReport {
        model: info.name,
        quant: info.quant,
        threads: candle_core::utils::get_num_threads(),
        workload: w.clone(),
        docs_per_s: w.docs as f64 / median,
        doc_tokens_per_s,
        prefix_tokens_saved: if w.uncached {
            0
        } else {
            w.docs * w.prefix_tokens
        },
        prefix_ms,
        run_seconds,
        kernels,
        weights: info.weights,
        device_memory_used_bytes: crate::engine::device_memory(engine.device())
            .map(|(free, total)| total - free),
        device: info.device,
        flops_per_doc_token,
        tflops: flops_per_doc_token * doc_tokens_per_s / 1e12,
    })
}

/// Which products run the projections on `device`, as `bench` reports it.
fn kernels(device: &Device, weights: WeightFormat) -> String {
    let dense = weights != WeightFormat::Quantized;
    match (device.is_cpu(), dense) {
        (true, false) if crate::engine::qgemm::enabled() => {
            crate::engine::isa::Isa::detect().name().to_string()
        }
        (true, false) => "candle".to_string(),
        (true, true) => "gemm-bf16".to_string(),
        (false, false) => "candle-quantized".to_string(),
        (false, true) => "cublas-bf16".to_string(),
    }
}

/// FLOPs per document token (see [`BenchReport::flops_per_doc_token`]).
pub fn flops_per_doc_token(hp: &Hparams, prefix_tokens: usize, doc_tokens: usize) -> f64 {
    let keys = prefix_tokens as f64 + doc_tokens as f64 / 2.0;
    hp.n_layers as f64 * (2.0 * hp.block_weights() as f64 + 4.0 * hp.dim as f64 * keys)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// LLaMA 2 7B's shape.
    fn llama2_7b() -> Hparams {
        Hparams {
            vocab_size: 32000,
            dim: 4096,
            n_layers: 32,
            n_heads: 32,
            n_kv_heads: 32,
            ffn_dim: 11008,
            context_length: 4096,
            rope_freq_base: 10000.0,
            rms_eps: 1e-5,
            bos_token_id: 1,
        }
    }

    #[test]
    fn flops_per_token_match_llama2_7b() {
        let hp = llama2_7b();
        // 6.48e9 projection weights in the blocks (6.74e9 parameters with embeddings and head).
        assert_eq!(hp.block_weights() * 32, 6_476_005_376);
        assert_eq!(hp.projection_weights(), 6_476_005_376);
        // Two FLOPs a weight, plus q·k and p·v over 512 prefix keys and half of 128 document ones.
        let f = flops_per_doc_token(&hp, 512, 128);
        let attention = 32.0 * 4.0 * 4096.0 * 576.0;
        assert_eq!(f, 2.0 * 6_476_005_376.0 + attention);
        assert!((f / 1.33e10 - 1.0).abs() < 0.005, "{f:e}");
    }
}
