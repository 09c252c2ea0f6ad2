//! Blocked quantised matrix products: `y = x Wᵀ` with Q8_0, Q4_0/Q4_1/Q4_K, Q5_0/Q5_1/Q5_K, Q6_K,
//! Q3_K or Q2_K weights.
//!
//! candle's CPU `QMatMul` runs one matrix-vector product per input row, so a pass over L tokens
//! reads every weight L times. Here the activations are quantised once to 8-bit blocks
//! ([`act::QuantRows`]), the weights are re-laid 8 rows to a tile ([`pack::Packed`]), and each
//! weight chunk, once loaded, is multiplied with `MR` activation rows. The work is split over
//! (row block × tile group) pieces on candle's own CPU thread pool (the one its other ops use, so
//! the two never compete for the cores). The instruction set is picked at run time
//! ([`Isa::detect`](crate::engine::isa::Isa::detect)): AVX-512 VNNI (two tiles per 512-bit
//! `vpdpbusd`) or AVX-VNNI (one tile per 256-bit `vpdpbusd`) where the CPU has them, AVX2 + FMA +
//! F16C where it has those, plain Rust everywhere else.

pub(crate) mod act;
#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx2_k;
#[cfg(target_arch = "x86_64")]
mod avx512;
mod fused;
pub mod op;
pub mod pack;
mod pack_low;
mod pack_q4;
mod pack_q5;
mod pack_q6;
mod portable;
mod run;
#[cfg(target_arch = "x86_64")]
mod vnni;

pub use fused::{matmul_many, matmul_swiglu};
pub use run::matmul;

/// Whether the packed kernels are switched on (`LABELMILL_QGEMM=candle` keeps candle's `QMatMul`,
/// for comparisons).
pub fn enabled() -> bool {
    !std::env::var("LABELMILL_QGEMM").is_ok_and(|v| v == "candle")
}

#[cfg(test)]
mod tests;
