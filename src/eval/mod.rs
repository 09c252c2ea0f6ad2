//! `labelmill eval`: scores a labelled JSONL file (`id`, `text`, `task?`, `label`) and reports
//! accuracy, macro-F1, the confusion matrix, expected calibration error, mean label mass and
//! docs/s per task; optionally a second model side by side (agreement, accuracy difference), a
//! reliability diagram, a fitted per-task temperature written into the task file, and the label-bias
//! corrections (none, content-free calibration, fitted per-label biases) side by side, with
//! `--fit-bias` writing the fitted biases into the task file.

pub mod bias;
pub mod calibrate;
pub mod corrections;
pub mod metrics;
pub mod plot;
pub mod report;

use std::collections::BTreeMap;
use std::io::BufRead;
use std::time::Instant;

use serde_json::Value;

use crate::batch::{plan, BatchLimits};
use crate::engine::prepared::PreparedTask;
use crate::engine::Engine;
use metrics::Example;

/// Why an evaluation could not run.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    /// The data could not be read.
    #[error("reading the data: {0}")]
    Read(#[from] std::io::Error),
    /// A line is not a labelled record the tasks can score.
    #[error("line {line}: {message}")]
    Data {
        /// 1-based line number.
        line: u64,
        /// What is wrong.
        message: String,
    },
    /// The engine failed.
    #[error(transparent)]
    Engine(#[from] crate::engine::EngineError),
}

/// One labelled record, admitted.
#[derive(Debug)]
pub struct Record {
    /// Line number.
    pub line: u64,
    /// Its task.
    pub task: usize,
    /// The gold label's index.
    pub gold: usize,
    /// Fitted token ids.
    pub ids: Vec<u32>,
}

/// Reads labelled records: every line must decode, name a known task and a label of it.
pub fn read(
    input: &mut dyn BufRead,
    engine: &Engine,
    tasks: &[PreparedTask],
) -> Result<Vec<Record>, EvalError> {
    let names: Vec<String> = tasks.iter().map(|t| t.name.clone()).collect();
    let mut out = Vec::new();
    for (i, line) in input.lines().enumerate() {
        let line_no = i as u64 + 1;
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let bad = |message: String| EvalError::Data {
            line: line_no,
            message,
        };
        let mut v: Value =
            serde_json::from_str(&line).map_err(|e| bad(format!("not JSON: {e}")))?;
        let label = v
            .as_object_mut()
            .and_then(|o| o.remove("label"))
            .and_then(|l| l.as_str().map(str::to_string))
            .ok_or_else(|| bad("no string 'label'".into()))?;
        let bytes = serde_json::to_vec(&v).expect("a JSON value serialises");
        let a = crate::admit::admit(&bytes, None, tasks, &names, engine.tokenizer(), usize::MAX)
            .map_err(|f| bad(format!("{}: {}", f.code, f.message)))?;
        let task = &tasks[a.task];
        let gold = task
            .labels
            .iter()
            .position(|l| *l == label)
            .ok_or_else(|| bad(format!("'{label}' is not a label of task '{}'", task.name)))?;
        out.push(Record {
            line: line_no,
            task: a.task,
            gold,
            ids: a.fitted.ids,
        });
    }
    Ok(out)
}

/// One model's scores of the records, in record order.
#[derive(Debug)]
pub struct Scored {
    /// Per record: label log-probs (no temperature), probabilities (with it), label mass.
    pub scores: Vec<crate::engine::scoring::LabelScores>,
    /// Documents per second.
    pub docs_per_s: f64,
}

/// Scores `records` with `engine` in batches of `limits`, per task.
pub fn score(
    engine: &Engine,
    tasks: &[PreparedTask],
    records: &[Record],
    limits: BatchLimits,
) -> Result<Scored, EvalError> {
    let started = Instant::now();
    let mut scores = vec![None; records.len()];
    for (t, task) in tasks.iter().enumerate() {
        let idx: Vec<usize> = (0..records.len())
            .filter(|&i| records[i].task == t)
            .collect();
        let lens: Vec<usize> = idx
            .iter()
            .map(|&i| records[i].ids.len() + task.suffix_ids.len())
            .collect();
        for batch in plan(&lens, limits) {
            let docs: Vec<&[u32]> = batch
                .iter()
                .map(|&j| records[idx[j]].ids.as_slice())
                .collect();
            for (j, s) in batch.iter().zip(engine.score(task, &docs)?) {
                scores[idx[*j]] = Some(s);
            }
        }
    }
    Ok(Scored {
        scores: scores
            .into_iter()
            .map(|s| s.expect("every record is scored"))
            .collect(),
        docs_per_s: records.len() as f64 / started.elapsed().as_secs_f64().max(1e-9),
    })
}

/// Per task name: the examples of `scored`.
pub fn examples(
    tasks: &[PreparedTask],
    records: &[Record],
    scored: &Scored,
) -> BTreeMap<String, Vec<Example>> {
    let mut by_task: BTreeMap<String, Vec<Example>> = BTreeMap::new();
    for (r, s) in records.iter().zip(&scored.scores) {
        by_task
            .entry(tasks[r.task].name.clone())
            .or_default()
            .push(Example {
                gold: r.gold,
                probs: s.probs.clone(),
                label_mass: s.label_mass,
            });
    }
    by_task
}

/// Per task name: (label log-probs, gold) pairs, for temperature fitting.
pub fn log_probs(
    tasks: &[PreparedTask],
    records: &[Record],
    scored: &Scored,
) -> BTreeMap<String, Vec<(Vec<f32>, usize)>> {
    let mut by_task: BTreeMap<String, Vec<(Vec<f32>, usize)>> = BTreeMap::new();
    for (r, s) in records.iter().zip(&scored.scores) {
        by_task
            .entry(tasks[r.task].name.clone())
            .or_default()
            .push((s.log_probs.clone(), r.gold));
    }
    by_task
}
