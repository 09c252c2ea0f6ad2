//! The model side: load a LLaMA GGUF, cache task prefixes, run packed batches, score labels.
//!
//! A batch is packed end to end (no padding) and scored in at most two forward passes over the
//! document tokens only:
//! 1. `document + suffix` for every row on top of the shared prefix KV; log-probabilities are taken
//!    at each row's last real position (the label's first token).
//! 2. Only when some label has several tokens: the label trie's internal nodes for every row, on top
//!    of the prefix and the row's own KV from pass 1, under a tree mask.

pub mod attention;
pub(crate) mod attention_cpu;
pub mod attention_input;
mod content_free;
pub mod equivalence;
pub mod isa;
pub mod kv;
mod layer_ops;
pub mod llama;
pub mod load;
pub mod lora;
mod lora_peft;
pub mod mask;
pub mod matmul;
pub mod prefix_cache;
pub mod prepared;
pub mod qgemm;
pub mod scoring;
pub(crate) mod shared_out;
pub(crate) mod softmax;
pub mod thread;
pub mod tokenizer;
pub(crate) mod vecops;
pub(crate) mod vmath;

use std::ops::Range;
use std::path::Path;
use std::sync::Arc;

use candle_core::{Device, Tensor};

use crate::task::{Calibration, TaskError, TaskSpec};
use kv::KvCache;
use llama::{Llama, Step};
use load::{GgufFile, Hparams, LoadError};
use lora::{ActiveLora, AdapterSet};
pub use matmul::WeightFormat;
use prefix_cache::{prefix_key, PrefixCache, PrefixCacheStats};
use prepared::PreparedTask;
use scoring::LabelScores;
use tokenizer::TextTokenizer;

/// A forward pass failed (out of memory, a device error): transient from the pipeline's view.
#[derive(Debug, thiserror::Error)]
#[error("engine error: {0}")]
pub struct EngineError(#[from] candle_core::Error);

/// The model, its tokenizer and the prefix cache.
pub struct Engine {
    model: Llama,
    tokenizer: TextTokenizer,
    prefix_cache: PrefixCache,
    model_id: String,
    model_name: String,
    quant: candle_core::quantized::GgmlDType,
    weights: WeightFormat,
    adapters: AdapterSet,
}

/// Facts about the loaded model, for results and `bench`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ModelInfo {
    /// File name of the GGUF.
    pub name: String,
    /// Hash of the GGUF header and size.
    pub id: String,
    /// Weight quantisation.
    pub quant: String,
    /// How the projection weights are held (`quantized`, `bf16`, `bf16-per-batch`; `auto` resolved).
    pub weights: WeightFormat,
    /// The compute device (`cpu`, `cuda:0`).
    pub device: String,
    /// Hyper-parameters.
    pub hparams: Hparams,
}

impl Engine {
    /// Loads the GGUF at `model` onto `device`, weights as stored; its tokenizer is the GGUF's own,
    /// or the `tokenizer.json` at `tokenizer` (checked against the GGUF's).
    pub fn load(
        model: &Path,
        tokenizer: Option<&Path>,
        device: &Device,
    ) -> Result<Self, LoadError> {
        Self::load_with(model, tokenizer, device, WeightFormat::Quantized)
    }

    /// Loads as [`Engine::load`] does, with the projection weights held as `weights` says (`auto`
    /// is resolved here, against the device's free memory).
    pub fn load_with(
        model: &Path,
        tokenizer: Option<&Path>,
        device: &Device,
        weights: WeightFormat,
    ) -> Result<Self, LoadError> {
        let mut file = GgufFile::open(model)?;
        let tokenizer = TextTokenizer::for_model(&file, tokenizer)?;
        let free = device_memory(device).map(|(free, _)| free);
        let weights = weights.resolve(free, 2 * file.hparams.projection_weights());
        let llama = Llama::load(&mut file, device, weights)?;
        let model_name = model
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        Ok(Self {
            model: llama,
            tokenizer,
            prefix_cache: PrefixCache::new(64),
            model_id: file.model_id.clone(),
            model_name,
            quant: file.quant,
            weights,
            adapters: AdapterSet::default(),
        })
    }

    /// Facts about the model.
    pub fn info(&self) -> ModelInfo {
        ModelInfo {
            name: self.model_name.clone(),
            id: self.model_id.clone(),
            quant: format!("{:?}", self.quant),
            weights: self.weights,
            device: device_name(self.model.device()),
            hparams: self.model.hparams().clone(),
        }
    }

    /// The device the model runs on.
    pub fn device(&self) -> &Device {
        self.model.device()
    }

    /// The tokenizer.
    pub fn tokenizer(&self) -> &TextTokenizer {
        &self.tokenizer
    }

    /// Prefix cache counters.
    pub fn prefix_cache_stats(&self) -> PrefixCacheStats {
        self.prefix_cache.stats()
    }

    /// Tokenises a task for this model; with `calibration = "content-free"` also measures its
    /// content-free label distribution (on the task's prefix, which is cached by it).
    pub fn prepare(&self, spec: &TaskSpec) -> Result<PreparedTask, TaskError> {
        let mut task =
            PreparedTask::new(spec, &self.tokenizer, self.model.hparams().context_length)?;
        if let Some(path) = &spec.adapter {
            let adapter = self
                .adapters
                .get(path, self.model.hparams(), self.model.device())
                .map_err(|e| TaskError::Adapter {
                    task: spec.name.clone(),
                    source: Box::new(e),
                })?;
            task.adapter = Some(ActiveLora {
                adapter,
                scale: spec.adapter_scale,
            });
        }
        if task.calibration == Calibration::ContentFree {
            let dist = self.content_free(&task).map_err(|e| TaskError::Invalid {
                task: spec.name.clone(),
                reason: format!("content-free calibration: {e}"),
            })?;
            tracing::info!(task = %spec.name, content_free = ?dist, "content-free label distribution");
            task.content_free = Some(dist);
        }
        Ok(task)
    }

    /// Runs (or fetches) the KV cache of `task`'s prefix.
    pub fn prefix_kv(&self, task: &PreparedTask) -> Result<Arc<KvCache>, EngineError> {
        // The adapter changes every layer's keys and values: a prefix computed under one adapter
        // (or none, or another scale) is never served to another.
        let model = match &task.adapter {
            Some(l) => format!(
                "{}+lora:{}@{:08x}",
                self.model_id,
                l.adapter.id,
                l.scale.to_bits()
            ),
            None => self.model_id.clone(),
        };
        let key = prefix_key(&model, &task.prefix_ids);
        self.prefix_cache.get_or_compute(key, || {
            let pass = self.run_rows(
                None,
                0,
                std::slice::from_ref(&task.prefix_ids),
                true,
                task.adapter.as_ref(),
            )?;
            Ok(pass.kv.expect("keep_kv was requested"))
        })
    }

    /// Scores documents (already fitted token ids) on top of the task's cached prefix.
    pub fn score(
        &self,
        task: &PreparedTask,
        docs: &[&[u32]],
    ) -> Result<Vec<LabelScores>, EngineError> {
        if docs.is_empty() {
            return Ok(Vec::new());
        }
        let (prefix, rows) = self.cached_rows(task, docs)?;
        self.score_rows(task, Some(&prefix), task.prefix_ids.len(), &rows)
    }

    /// Scores one document with no prefix cache: the whole prompt in a single forward pass.
    /// Slower; it exists to check the cached path against.
    pub fn score_uncached(
        &self,
        task: &PreparedTask,
        doc: &[u32],
    ) -> Result<LabelScores, EngineError> {
        let row = [&task.prefix_ids, doc, &task.suffix_ids].concat();
        let mut out = self.score_rows(task, None, 0, &[row])?;
        Ok(out.pop().expect("one row in, one score out"))
    }

    /// Raw next-token logits (full vocabulary) after each document, through the cached path.
    pub fn next_token_logits(
        &self,
        task: &PreparedTask,
        docs: &[&[u32]],
    ) -> Result<Vec<Vec<f32>>, EngineError> {
        let (prefix, rows) = self.cached_rows(task, docs)?;
        let pass = self.run_rows(
            Some(&prefix),
            task.prefix_ids.len(),
            &rows,
            false,
            task.adapter.as_ref(),
        )?;
        Ok(self
            .model
            .logits_at(&pass.hidden, &pass.last_indices())?
            .to_vec2::<f32>()?)
    }

    /// The task's prefix KV, and each document followed by the task's suffix.
    fn cached_rows(
        &self,
        task: &PreparedTask,
        docs: &[&[u32]],
    ) -> Result<(Arc<KvCache>, Vec<Vec<u32>>), EngineError> {
        let rows = docs
            .iter()
            .map(|d| [*d, &task.suffix_ids].concat())
            .collect();
        Ok((self.prefix_kv(task)?, rows))
    }

    fn score_rows(
        &self,
        task: &PreparedTask,
        shared: Option<&KvCache>,
        start: usize,
        rows: &[Vec<u32>],
    ) -> Result<Vec<LabelScores>, EngineError> {
        let dev = self.model.device();
        let trie = &task.trie;
        let pass = self.run_rows(
            shared,
            start,
            rows,
            trie.has_continuations(),
            task.adapter.as_ref(),
        )?;
        let first_cols = Tensor::from_slice(&trie.first_tokens, trie.first_tokens.len(), dev)?;
        let first = self
            .model
            .log_probs_at(&pass.hidden, &pass.last_indices())?
            .index_select(&first_cols, 1)?
            .to_vec2::<f32>()?;

        // Second pass: every internal trie node for every row, continuing that row's own KV.
        let steps = match &pass.kv {
            Some(kv) => Some(self.run_label_trie(task, shared, start, rows, kv, &pass.spans)?),
            None => None,
        };
        let n = trie.nodes.len();
        let offsets = task.label_offsets();
        Ok((0..rows.len())
            .map(|r| {
                let step =
                    |node: usize, j: usize| steps.as_ref().expect("trie pass ran")[r * n + node][j];
                trie.score(&first[r], step, &offsets, task.temperature)
            })
            .collect())
    }

    /// Forward over rows packed end to end, each starting at absolute position `start` after `shared`.
    fn run_rows(
        &self,
        shared: Option<&KvCache>,
        start: usize,
        rows: &[Vec<u32>],
        keep_kv: bool,
        lora: Option<&ActiveLora>,
    ) -> Result<Pass, EngineError> {
        if rows.iter().any(Vec::is_empty) {
            return Err(EngineError(candle_core::Error::msg(
                "an empty row (no document tokens and no suffix) has no position to score",
            )));
        }
        let dev = self.model.device();
        let spans = spans(rows.iter().map(Vec::len));
        let tokens: Vec<u32> = rows.concat();
        let positions: Vec<u32> = rows
            .iter()
            .flat_map(|r| (0..r.len()).map(|i| (start + i) as u32))
            .collect();
        let masks: Vec<Tensor> = rows
            .iter()
            .map(|r| mask::causal(r.len(), dev))
            .collect::<candle_core::Result<_>>()?;
        let out = self.model.forward(&Step {
            tokens: &Tensor::new(tokens, dev)?,
            positions: &Tensor::new(positions, dev)?,
            rows: &spans,
            shared,
            context: None,
            masks: &masks,
            keep_kv,
            lora,
        })?;
        Ok(Pass {
            hidden: out.hidden,
            kv: out.kv,
            spans,
        })
    }

    /// The label pass: returns, for every `row * nodes + node`, log-probs of `trie.step_tokens`.
    fn run_label_trie(
        &self,
        task: &PreparedTask,
        shared: Option<&KvCache>,
        start: usize,
        rows: &[Vec<u32>],
        ctx: &KvCache,
        ctx_spans: &[Range<usize>],
    ) -> Result<Vec<Vec<f32>>, EngineError> {
        let dev = self.model.device();
        let trie = &task.trie;
        let n = trie.nodes.len();
        let tokens: Vec<u32> = rows
            .iter()
            .flat_map(|_| trie.nodes.iter().map(|nd| nd.token))
            .collect();
        let positions: Vec<u32> = rows
            .iter()
            .flat_map(|row| {
                trie.nodes
                    .iter()
                    .map(move |nd| (start + row.len() + nd.depth - 1) as u32)
            })
            .collect();
        let ancestors = trie.ancestors();
        let masks: Vec<Tensor> = rows
            .iter()
            .map(|r| mask::context_then_tree(r.len(), &ancestors, dev))
            .collect::<candle_core::Result<_>>()?;
        let out = self.model.forward(&Step {
            tokens: &Tensor::new(tokens, dev)?,
            positions: &Tensor::new(positions, dev)?,
            rows: &spans(rows.iter().map(|_| n)),
            shared,
            context: Some((ctx, ctx_spans)),
            masks: &masks,
            keep_kv: false,
            lora: task.adapter.as_ref(),
        })?;
        let all: Vec<u32> = (0..(rows.len() * n) as u32).collect();
        let cols = Tensor::from_slice(&trie.step_tokens, trie.step_tokens.len(), dev)?;
        Ok(self
            .model
            .log_probs_at(&out.hidden, &all)?
            .index_select(&cols, 1)?
            .to_vec2::<f32>()?)
    }
}

/// The result of a packed forward pass.
struct Pass {
    hidden: Tensor,
    kv: Option<KvCache>,
    spans: Vec<Range<usize>>,
}

impl Pass {
    /// Index of each row's last token in the packed sequence.
    fn last_indices(&self) -> Vec<u32> {
        self.spans.iter().map(|s| (s.end - 1) as u32).collect()
    }
}

/// Consecutive spans for rows of the given lengths.
fn spans(lens: impl Iterator<Item = usize>) -> Vec<Range<usize>> {
    let mut at = 0;
    lens.map(|l| {
        let s = at..at + l;
        at += l;
        s
    })
    .collect()
}

/// `cpu`, `cuda:N` or `metal:N`: where a model runs, for reports and logs.
pub fn device_name(device: &Device) -> String {
    match device.location() {
        candle_core::DeviceLocation::Cpu => "cpu".into(),
        candle_core::DeviceLocation::Cuda { gpu_id } => format!("cuda:{gpu_id}"),
        candle_core::DeviceLocation::Metal { gpu_id } => format!("metal:{gpu_id}"),
    }
}

/// `(free, total)` bytes of a CUDA device's memory; `None` on the CPU (or when it cannot be read).
pub fn device_memory(device: &Device) -> Option<(u64, u64)> {
    #[cfg(feature = "cuda")]
    if let Device::Cuda(dev) = device {
        return dev
            .cuda_stream()
            .context()
            .mem_get_info()
            .ok()
            .map(|(free, total)| (free as u64, total as u64));
    }
    let _ = device;
    None
}
