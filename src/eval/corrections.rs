//! One model's scores under each label-bias correction, side by side: none (the temperature
//! alone), content-free calibration, and per-label biases fitted on the data (cross-fitted, so
//! each document is scored with biases fitted on the other folds).

use std::collections::BTreeMap;

use serde::Serialize;

use super::bias::{cross_fitted, fit_bias};
use super::metrics::{quality, Example, Quality};
use super::{EvalError, Record, Scored};
use crate::engine::prepared::{dividing_out, PreparedTask};
use crate::engine::scoring::adjusted;
use crate::engine::Engine;
use crate::task::Calibration;

/// Folds of the cross-fitted bias.
pub const FOLDS: usize = 5;

/// One correction's figures.
#[derive(Debug, Clone, Serialize)]
pub struct Correction {
    /// `none`, `content-free` or `fitted bias (5-fold)`.
    pub name: String,
    /// Its quality.
    #[serde(flatten)]
    pub quality: Quality,
    /// Share of documents given the most often predicted label (label bias shows as a share far
    /// above the most frequent gold label's).
    pub top_label_share: f64,
}

/// Every correction of one task, and what `--fit-bias` would write.
#[derive(Debug, Clone, Serialize)]
pub struct TaskCorrections {
    /// The content-free label distribution (probabilities, label order).
    pub content_free: Vec<f32>,
    /// The corrections, in the order above.
    pub corrections: Vec<Correction>,
    /// Per-label biases fitted on all the task's documents (on top of its calibration).
    pub fitted_bias: Vec<f32>,
}

/// The corrections of every task with documents in `records`.
pub fn corrections(
    engine: &Engine,
    tasks: &[PreparedTask],
    records: &[Record],
    scored: &Scored,
) -> Result<BTreeMap<String, TaskCorrections>, EvalError> {
    let mut out = BTreeMap::new();
    for (t, task) in tasks.iter().enumerate() {
        let mine: Vec<(Vec<f32>, usize, f32)> = records
            .iter()
            .zip(&scored.scores)
            .filter(|(r, _)| r.task == t)
            .map(|(r, s)| (s.log_probs.clone(), r.gold, s.label_mass))
            .collect();
        if mine.is_empty() {
            continue;
        }
        let cf = match &task.content_free {
            Some(d) => d.clone(),
            None => engine.content_free(task)?,
        };
        let k = task.labels.len();
        let cf_off = dividing_out(&cf);
        let base = match task.calibration {
            Calibration::ContentFree => cf_off.clone(),
            Calibration::None => vec![0.0; k],
        };
        let pairs: Vec<(Vec<f32>, usize)> = mine.iter().map(|m| (m.0.clone(), m.1)).collect();
        let with = |probs: Vec<Vec<f32>>| -> Vec<Example> {
            probs
                .into_iter()
                .zip(&mine)
                .map(|(probs, m)| Example {
                    gold: m.1,
                    probs,
                    label_mass: m.2,
                })
                .collect()
        };
        let under = |off: &[f32]| {
            with(
                pairs
                    .iter()
                    .map(|p| adjusted(&p.0, off, task.temperature))
                    .collect(),
            )
        };
        let variants = [
            ("none".to_string(), under(&vec![0.0; k])),
            ("content-free".to_string(), under(&cf_off)),
            (
                format!("fitted bias ({FOLDS}-fold)"),
                with(cross_fitted(&pairs, &base, task.temperature, FOLDS)),
            ),
        ];
        out.insert(
            task.name.clone(),
            TaskCorrections {
                corrections: variants
                    .into_iter()
                    .map(|(name, ex)| correction(name, &ex, k))
                    .collect(),
                fitted_bias: fit_bias(&pairs, &base, task.temperature),
                content_free: cf,
            },
        );
    }
    Ok(out)
}

fn correction(name: String, examples: &[Example], labels: usize) -> Correction {
    let quality = quality(examples, labels);
    let most = (0..labels)
        .map(|j| quality.confusion.iter().map(|row| row[j]).sum::<usize>())
        .max()
        .unwrap_or(0);
    Correction {
        name,
        top_label_share: most as f64 / examples.len().max(1) as f64,
        quality,
    }
}
