//! `labelmill tune`: trains a LoRA adapter for one task from labelled examples, through the task's
//! own prompt and the label scoring serving uses (label-trie log-probabilities, the task's bias,
//! content-free calibration and temperature, cross-entropy over the label set), so that what is
//! trained is what is served. The base model is dequantised and frozen; only the LoRA pairs learn.

pub mod batch;
pub mod data;
mod frozen;
pub mod model;
pub mod write;

use std::time::Instant;

use candle_core::{Result, Tensor};
use candle_nn::{AdamW, Optimizer, ParamsAdamW};
use rand::seq::SliceRandom;
use rand::SeedableRng;

use crate::engine::prepared::PreparedTask;
use crate::engine::tokenizer::TextTokenizer;
use crate::task::Calibration;
use data::Example;
use model::TrainModel;

/// Training settings besides the adapter's shape.
#[derive(Debug, Clone)]
pub struct TrainOptions {
    /// Passes over the training examples.
    pub epochs: usize,
    /// AdamW learning rate.
    pub lr: f64,
    /// Examples per optimiser step.
    pub batch_size: usize,
    /// Shuffling seed.
    pub seed: u64,
}

/// One epoch's figures (epoch 0: the base model, before training).
#[derive(Debug, Clone, serde::Serialize)]
pub struct EpochReport {
    /// 0 for the untrained adapter.
    pub epoch: usize,
    /// Mean training cross-entropy over the epoch's steps.
    pub train_loss: Option<f64>,
    /// Mean held-out cross-entropy.
    pub heldout_loss: Option<f64>,
    /// Held-out accuracy.
    pub heldout_accuracy: Option<f64>,
    /// Seconds the epoch took (training and held-out scoring).
    pub seconds: f64,
}

/// Progress, for a progress bar.
pub enum Event<'a> {
    /// An optimiser step finished.
    Step {
        /// 1-based epoch.
        epoch: usize,
        /// Steps done in this epoch.
        step: usize,
        /// Steps in the epoch.
        steps: usize,
        /// Mean training loss of the epoch so far.
        loss: f64,
    },
    /// An epoch (or the base model's held-out score) finished.
    Epoch(&'a EpochReport),
}

/// A trained adapter's values, by base tensor name: (`A` `[rank, in]`, `B` `[out, rank]`).
pub type Snapshot = Vec<(String, Tensor, Tensor)>;

/// The model being trained, its task, and the task's fixed label offsets.
pub struct Tuner {
    model: TrainModel,
    task: PreparedTask,
    /// Content-free documents (when the task calibrates), scored with every batch.
    content_free: Vec<Vec<u32>>,
    bias: Tensor,
}

/// One batch's loss and predictions.
struct BatchOutcome {
    loss: Tensor,
    correct: usize,
}

impl Tuner {
    /// Trains `model`'s pairs for `task` (tokenised for the model by `tokenizer`).
    pub fn new(
        model: TrainModel,
        task: PreparedTask,
        tokenizer: &TextTokenizer,
    ) -> std::result::Result<Self, String> {
        let content_free = match task.calibration {
            Calibration::ContentFree => task.content_free_docs(tokenizer)?,
            Calibration::None => Vec::new(),
        };
        let bias = Tensor::from_slice(&task.bias, task.bias.len(), model.device())
            .map_err(|e| e.to_string())?;
        Ok(Self {
            model,
            task,
            content_free,
            bias,
        })
    }

    /// The model (with its current pairs).
    pub fn model(&self) -> &TrainModel {
        &self.model
    }

    /// The label logits `(log_probs + bias − ln p_cf) / temperature` `[n, labels]` of documents
    /// `ids`, as serving would compute them under the current pairs (softmax gives the served
    /// probabilities).
    pub fn label_logits(&self, ids: &[&[u32]]) -> Result<Tensor> {
        self.logits_on(&self.model.prefix(&self.task.prefix_ids)?, ids)
    }

    /// [`Self::label_logits`] on the prefix keys and values `prefix` (from `TrainModel::prefix`).
    fn logits_on(&self, prefix: &[(Tensor, Tensor)], ids: &[&[u32]]) -> Result<Tensor> {
        let dev = self.model.device();
        let mut all: Vec<&[u32]> = ids.to_vec();
        all.extend(self.content_free.iter().map(Vec::as_slice));
        let rows = batch::pack(
            &self.task,
            &all,
            self.model.group(),
            self.model.vocab(),
            dev,
        )?;
        let lp = self.model.label_log_probs(prefix, &rows)?;
        let n = ids.len();
        let mut offsets = self.bias.clone();
        if !self.content_free.is_empty() {
            // The mean label distribution of the content-free documents, divided out as serving
            // does; under the adapter being trained, so it moves with it.
            let cf = lp.narrow(0, n, self.content_free.len())?;
            let mean = candle_nn::ops::softmax(&cf, 1)?.mean(0)?;
            offsets = (offsets - mean.clamp(1e-30f32, 1f32)?.log()?)?;
        }
        lp.narrow(0, 0, n)?.broadcast_add(&offsets)? / f64::from(self.task.temperature)
    }

    /// The served label probabilities `[n][labels]` of documents `ids` under the current pairs.
    pub fn probabilities(&self, ids: &[&[u32]]) -> Result<Vec<Vec<f32>>> {
        candle_nn::ops::softmax(&self.label_logits(ids)?, 1)?.to_vec2()
    }

    /// Mean cross-entropy over the label set of `docs` (a scalar to differentiate).
    pub fn loss(&self, docs: &[&Example]) -> Result<Tensor> {
        Ok(self
            .outcome(&self.model.prefix(&self.task.prefix_ids)?, docs)?
            .loss)
    }

    /// Loss and correct predictions of `docs` on the prefix keys and values `prefix`.
    fn outcome(&self, prefix: &[(Tensor, Tensor)], docs: &[&Example]) -> Result<BatchOutcome> {
        let ids: Vec<&[u32]> = docs.iter().map(|e| e.ids.as_slice()).collect();
        let z = self.logits_on(prefix, &ids)?;
        let gold: Vec<u32> = docs.iter().map(|e| e.gold as u32).collect();
        let pred = z.argmax(1)?.to_vec1::<u32>()?;
        let correct = pred.iter().zip(&gold).filter(|(p, g)| p == g).count();
        let gold = Tensor::from_vec(gold, docs.len(), self.model.device())?;
        Ok(BatchOutcome {
            loss: candle_nn::loss::cross_entropy(&z, &gold)?,
            correct,
        })
    }

    /// Mean cross-entropy and accuracy over `docs`, in batches of `batch_size`, without training.
    pub fn evaluate(&self, docs: &[Example], batch_size: usize) -> Result<(f64, f64)> {
        let (mut loss, mut correct) = (0f64, 0usize);
        // The pairs do not change here: one prefix pass serves every batch.
        let prefix = self.model.prefix(&self.task.prefix_ids)?;
        for chunk in docs.chunks(batch_size.max(1)) {
            let refs: Vec<&Example> = chunk.iter().collect();
            let o = self.outcome(&prefix, &refs)?;
            loss += f64::from(o.loss.to_scalar::<f32>()?) * chunk.len() as f64;
            correct += o.correct;
        }
        let n = docs.len().max(1) as f64;
        Ok((loss / n, correct as f64 / n))
    }

    /// Trains for `opts.epochs` over `train`, scoring `heldout` before and after each epoch; returns
    /// the epochs' figures and the adapter of the epoch with the lowest held-out loss (the last
    /// epoch's when nothing is held out).
    pub fn train(
        &self,
        train: &[Example],
        heldout: &[Example],
        opts: &TrainOptions,
        on: &mut dyn FnMut(Event),
    ) -> Result<(Vec<EpochReport>, Snapshot)> {
        let mut opt = AdamW::new(
            self.model.lora.vars(),
            ParamsAdamW {
                lr: opts.lr,
                weight_decay: 0.0,
                ..Default::default()
            },
        )?;
        let bs = opts.batch_size.max(1);
        let mut reports = Vec::with_capacity(opts.epochs + 1);
        let t0 = Instant::now();
        let mut best: Option<(f64, Snapshot)> = None;
        let base = self.heldout(heldout, bs, 0, None, t0)?;
        on(Event::Epoch(&base));
        reports.push(base);
        let mut order: Vec<usize> = (0..train.len()).collect();
        let mut rng = rand::rngs::StdRng::seed_from_u64(opts.seed);
        for epoch in 1..=opts.epochs {
            let t = Instant::now();
            order.shuffle(&mut rng);
            let steps = order.len().div_ceil(bs);
            let mut sum = 0f64;
            for (s, chunk) in order.chunks(bs).enumerate() {
                let docs: Vec<&Example> = chunk.iter().map(|&i| &train[i]).collect();
                let o = self.outcome(&self.model.prefix(&self.task.prefix_ids)?, &docs)?;
                sum += f64::from(o.loss.to_scalar::<f32>()?);
                opt.backward_step(&o.loss)?;
                on(Event::Step {
                    epoch,
                    step: s + 1,
                    steps,
                    loss: sum / (s + 1) as f64,
                });
            }
            let r = self.heldout(heldout, bs, epoch, Some(sum / steps.max(1) as f64), t)?;
            // Nothing held out: every epoch counts as best, so the last one is kept.
            let loss = r.heldout_loss.unwrap_or(f64::NEG_INFINITY);
            if best.as_ref().is_none_or(|b| loss <= b.0) {
                best = Some((loss, self.model.lora.snapshot()?));
            }
            on(Event::Epoch(&r));
            reports.push(r);
        }
        let adapter = match best {
            Some((_, snapshot)) => snapshot,
            // No epochs: the untrained pairs.
            None => self.model.lora.snapshot()?,
        };
        Ok((reports, adapter))
    }

    fn heldout(
        &self,
        heldout: &[Example],
        bs: usize,
        epoch: usize,
        train_loss: Option<f64>,
        since: Instant,
    ) -> Result<EpochReport> {
        let scored = if heldout.is_empty() {
            None
        } else {
            Some(self.evaluate(heldout, bs)?)
        };
        Ok(EpochReport {
            epoch,
            train_loss,
            heldout_loss: scored.map(|s| s.0),
            heldout_accuracy: scored.map(|s| s.1),
            seconds: since.elapsed().as_secs_f64(),
        })
    }
}

impl model::LoraVars {
    /// A copy of the pairs' current values, by base tensor name.
    pub fn snapshot(&self) -> Result<Snapshot> {
        let mut out = Vec::new();
        for (i, block) in self.pairs.iter().enumerate() {
            for (t, pair) in block.iter().enumerate() {
                if let Some((a, b)) = pair {
                    out.push((
                        format!("blk.{i}.{}.weight", crate::engine::lora::TARGETS[t]),
                        a.as_tensor().copy()?,
                        b.as_tensor().copy()?,
                    ));
                }
            }
        }
        Ok(out)
    }
}
