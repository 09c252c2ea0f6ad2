//! `labelmill check-device`: the engine's equivalence checks on the device this binary computes on
//! (CUDA with the `cuda` feature), on generated models: batch == alone and cached prefix == whole
//! prompt on that device, and the device's scores against the CPU's for the same weight format.

use std::path::Path;

use candle_core::quantized::GgmlDType;
use candle_core::Device;

use crate::engine::equivalence::{self, Gaps, CHECK_TASKS};
use crate::engine::load::LoadError;
use crate::engine::prepared::DocError;
use crate::engine::{device_name, Engine, EngineError, WeightFormat};
use crate::task::{TaskError, TaskFile};
use crate::tiny::{self, TinyError, TinyShape};

/// Why a check could not run (a failed limit is a result, not an error).
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    /// Writing the generated model failed.
    #[error(transparent)]
    Tiny(#[from] TinyError),
    /// Loading it failed.
    #[error(transparent)]
    Load(#[from] LoadError),
    /// The check tasks did not prepare.
    #[error(transparent)]
    Task(#[from] TaskError),
    /// A forward pass failed.
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// A check document did not fit a task.
    #[error(transparent)]
    Doc(#[from] DocError),
}

/// How far apart scores may be, by weight format (see [`limits`]).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Limits {
    /// Batch == alone and cached == uncached, on one device.
    pub same_device: f32,
    /// The device against the CPU, same weight format.
    pub cross_device: f32,
}

impl Limits {
    /// Whether the gaps pass: each within its limit, and no best label changed on the device
    /// (across devices a near-tie may flip; its size is bounded by the gap limit).
    pub fn pass(&self, batch: &Gaps, prefix: &Gaps, cross: &Gaps) -> bool {
        batch.worst() <= self.same_device
            && prefix.worst() <= self.same_device
            && cross.worst() <= self.cross_device
            && batch.best_label_changes + prefix.best_label_changes == 0
    }
}

/// The limits for `weights`, on [`Gaps::worst`] (probabilities, relative log-probabilities, mass);
/// `auto` is given the limits of what it resolves to before this is asked.
///
/// - `quantized`: activations are quantised to int8 blocks of 32 on both sides (labelmill's CPU
///   kernels, candle's MMQ/MMVQ on CUDA), rounded apart at the last bit now and then; otherwise f32.
///   On one device the row order of a batch changes only f32 summation order; the CPU tests hold
///   batch == alone to 1e-4 and cached == uncached to 2e-3 (relative log-probabilities, Q8_0);
///   a GPU may take another kernel for a lone document than for a batch (MMVQ, MMQ), so the limit
///   leaves room for one activation rounding apart: 5e-3. Against the CPU: 1e-2, above the whole
///   change from int8 activations to bf16 ones on the CPU (at most 6.8e-3 measured,
///   tests/engine_weights.rs), which is larger than two kernels' roundings of the same format.
/// - `bf16`, `bf16-per-batch`: activations and weights rounded to bf16 (8 significant bits) the same
///   way on both devices; products accumulate in f32 in an order each library chooses.
pub fn limits(weights: WeightFormat) -> Limits {
    match weights {
        WeightFormat::Quantized | WeightFormat::Auto => Limits {
            same_device: 5e-3,
            cross_device: 1e-2,
        },
        WeightFormat::Bf16 | WeightFormat::Bf16PerBatch => Limits {
            same_device: 2e-3,
            cross_device: 1e-2,
        },
    }
}

/// One model and weight format, checked.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CheckReport {
    /// The generated model's quantisation.
    pub quant: String,
    /// How the projection weights were held.
    pub weights: WeightFormat,
    /// The device under check.
    pub device: String,
    /// Batch == alone on the device.
    pub batch: Gaps,
    /// Cached prefix == whole prompt on the device.
    pub prefix: Gaps,
    /// The device against the CPU with the same weight format.
    pub cross_device: Gaps,
    /// The limits applied.
    pub limits: Limits,
    /// Every gap within its limit, and no best label changed.
    pub pass: bool,
}

/// What to check.
#[derive(Debug, Clone)]
pub struct CheckOptions {
    /// Generated model shape.
    pub shape: TinyShape,
    /// Quantisations to generate.
    pub quants: Vec<GgmlDType>,
    /// Weight formats to load each in.
    pub weights: Vec<WeightFormat>,
    /// Seed of the generated weights.
    pub seed: u64,
}

/// Runs every check of `opts` on `device`, writing the generated models under `dir`.
pub fn run(
    opts: &CheckOptions,
    device: &Device,
    dir: &Path,
) -> Result<Vec<CheckReport>, CheckError> {
    let specs = TaskFile::parse(CHECK_TASKS, "check-device")?.task;
    let mut reports = Vec::new();
    for &quant in &opts.quants {
        let m = tiny::write(
            &dir.join(format!("{quant:?}")),
            &opts.shape,
            quant,
            opts.seed,
        )?;
        for &weights in &opts.weights {
            let on_device = Engine::load_with(&m.model, None, device, weights)?;
            // `auto` is checked as what it resolved to on the device, on both sides.
            let weights = on_device.info().weights;
            let on_cpu = Engine::load_with(&m.model, None, &Device::Cpu, weights)?;
            let (mut batch, mut prefix, mut cross) =
                (Gaps::default(), Gaps::default(), Gaps::default());
            for spec in &specs {
                let t = on_device.prepare(spec)?;
                let t_cpu = on_cpu.prepare(spec)?;
                let docs: Vec<Vec<u32>> = equivalence::varied_docs()
                    .iter()
                    .map(|s| t.encode_doc(on_device.tokenizer(), s).map(|d| d.ids))
                    .collect::<Result<_, _>>()?;
                batch.merge(&equivalence::batch_vs_alone(&on_device, &t, &docs)?);
                prefix.merge(&equivalence::cached_vs_uncached(&on_device, &t, &docs)?);
                cross.merge(&equivalence::between(
                    (&on_device, &t),
                    (&on_cpu, &t_cpu),
                    &docs,
                )?);
            }
            let limits = limits(weights);
            let pass = limits.pass(&batch, &prefix, &cross);
            reports.push(CheckReport {
                quant: format!("{quant:?}"),
                weights,
                device: device_name(device),
                batch,
                prefix,
                cross_device: cross,
                limits,
                pass,
            });
        }
    }
    Ok(reports)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gap(worst: f32, changes: usize) -> Gaps {
        Gaps {
            log_probs_rel: worst,
            best_label_changes: changes,
            docs: 1,
            ..Gaps::default()
        }
    }

    #[test]
    fn a_gap_over_its_limit_or_a_changed_label_fails() {
        let l = limits(WeightFormat::Bf16);
        let ok = gap(l.same_device, 0);
        assert!(l.pass(&ok, &ok, &gap(l.cross_device, 0)));
        let over = gap(l.same_device * 1.01, 0);
        assert!(!l.pass(&over, &ok, &ok));
        assert!(!l.pass(&ok, &over, &ok));
        assert!(!l.pass(&ok, &ok, &gap(l.cross_device * 1.01, 0)));
        assert!(!l.pass(&gap(0.0, 1), &ok, &ok));
        assert!(
            l.pass(&ok, &ok, &gap(0.0, 1)),
            "a near-tie may flip across devices"
        );
        let nan = gap(f32::NAN, 0);
        assert!(!l.pass(&nan, &ok, &ok), "NaN scores fail");
    }
}
