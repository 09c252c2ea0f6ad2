//! labelmill: classify documents at high volume with a quantised LLaMA 2 model.
//!
//! # Layout
//!
//! One document's path through the program is the architecture:
//!
//! ```text
//! source (file/stdin; kafka | amqp later) -> decode + validate -> batch plan -> engine
//!    ^ ack/commit after publish               | bad input                      (prefix KV + packed
//!    |                                        v                                 forward + label scoring)
//!    +---- ack travels with the doc ---- error line / dead letter <- failures -- sink (file/stdout)
//! ```
//!
//! - [`task`]: a task file; the prompt template split into cached prefix, document slot, suffix.
//! - [`decode`]: bytes -> [`decode::InputDoc`], every bad input class with a stable code.
//! - [`batch`]: pure batch planning by document count and token budget.
//! - [`engine`]: GGUF loading, the LLaMA forward pass with explicit KV, the prefix cache, label scoring.
//! - [`message`]: result and error records.
//! - [`classify`]: the `labelmill classify` pipeline (JSONL in, JSONL out).
//! - [`bench`]: synthetic throughput measurement.
//! - [`tiny`]: generated LLaMA GGUF models and tokenizers for tests and benchmarks.
//! - [`cli`]: the command line.

pub mod batch;
pub mod bench;
pub mod classify;
pub mod cli;
pub mod decode;
pub mod engine;
pub mod message;
pub mod task;
pub mod tiny;

/// The compute device: CUDA device 0 when built with the `cuda` feature, otherwise the CPU.
pub fn device() -> candle_core::Result<candle_core::Device> {
    #[cfg(feature = "cuda")]
    {
        candle_core::Device::new_cuda(0)
    }
    #[cfg(not(feature = "cuda"))]
    {
        Ok(candle_core::Device::Cpu)
    }
}
