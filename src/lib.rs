//! labelmill: classify documents at high volume with a quantised LLaMA 2 model.
//!
//! # Layout
//!
//! One document's path through the program is the architecture:
//!
//! ```text
//! source (kafka | amqp | file/stdin) -> decode + validate -> batcher -> engine thread
//!    ^ ack/commit after publish            | bad input                  (prefix KV + packed
//!    |                                     v                             forward + label scoring)
//!    +---- ack travels with the doc --- dead letter <- failures -- sink (kafka | amqp | stdout)
//! ```
//!
//! - [`task`]: a task file; the prompt template (a preset, or the model's own chat template) split
//!   into cached prefix, document slot, suffix.
//! - [`decode`]: bytes -> [`decode::InputDoc`], every bad input class with a stable code.
//! - [`admit`]: bytes -> a document fitted to its task, or why not (shared by classify and worker).
//! - [`config`]: the worker's TOML configuration with `LABELMILL_*` overrides.
//! - [`source`]: Kafka and RabbitMQ intake; each delivery carries its acker.
//! - [`amqp_connect`]: RabbitMQ connections with TLS files.
//! - [`batch`]: pure batching by document count, token budget and deadline, per task.
//! - [`lane`]: live or backfill, the lane a document travels in.
//! - [`engine`]: GGUF loading, the LLaMA forward pass with explicit KV, the prefix cache, label scoring.
//! - [`message`]: result and error records.
//! - [`dead_letter`]: the dead-letter record of a message that cannot be classified.
//! - [`sink`]: Kafka and RabbitMQ publishing with delivery reports / publisher confirms.
//! - [`worker`]: `labelmill worker`: sources -> batches -> engine -> sinks -> acks.
//! - [`shutdown`]: signals that start a drain.
//! - [`faults`]: fault injection for the worker's tests (`LABELMILL_FAULTS`).
//! - [`memory`]: an in-memory broker for the worker's in-process test harness.
//! - [`telemetry`]: Prometheus metrics, `/metrics` `/healthz` `/readyz`, lag and backlog seconds.
//! - [`publish`]: `labelmill publish`: a JSONL file onto an input topic or queue, resumable.
//! - [`classify`]: the `labelmill classify` pipeline (JSONL in, JSONL out).
//! - [`eval`]: `labelmill eval`: accuracy, macro-F1, calibration, model comparison, temperature fit.
//! - [`bench`]: synthetic throughput measurement.
//! - [`inspect`]: `labelmill inspect`: what a GGUF holds (shape, tensor types, tokenizer, template).
//! - [`tiny`]: generated LLaMA GGUF models and tokenizers for tests and benchmarks.
//! - [`cli`]: the command line.

pub mod admit;
pub mod amqp_connect;
pub mod batch;
pub mod bench;
pub mod check_device;
pub mod classify;
pub mod cli;
pub mod cli_tune;
pub mod config;
pub mod dead_letter;
pub mod decode;
pub mod engine;
pub mod eval;
pub mod faults;
pub mod inspect;
pub mod lane;
pub mod memory;
pub mod message;
pub mod publish;
pub mod shutdown;
pub mod sink;
pub mod source;
pub mod task;
pub mod telemetry;
pub mod tiny;
pub mod tune;
pub mod worker;

/// The compute device: CUDA device 0 when built with the `cuda` feature, otherwise the CPU.
pub fn device() -> candle_core::Result<candle_core::Device> {
    #[cfg(feature = "cuda")]
    {
        candle_core::Device::new_cuda(0).map_err(|e| {
            candle_core::Error::Msg(format!(
                "cannot open CUDA device 0 (this is a `cuda` build: it needs an NVIDIA GPU, its \
                 driver, and the CUDA 13 libraries on the library path, see scripts/cuda-env.sh): {e}"
            ))
        })
    }
    #[cfg(not(feature = "cuda"))]
    {
        Ok(candle_core::Device::Cpu)
    }
}
