//! Labelled training data for one task: every line is admitted exactly as the worker admits a
//! document (the same decoding, tokenisation and truncation), and every bad line is reported by
//! number, not only the first.

use std::io::BufRead;

use serde_json::Value;

use crate::engine::prepared::PreparedTask;
use crate::engine::tokenizer::TextTokenizer;

/// One admitted training example.
#[derive(Debug, Clone)]
pub struct Example {
    /// Fitted token ids.
    pub ids: Vec<u32>,
    /// The gold label's index.
    pub gold: usize,
}

/// Lines that cannot be trained on, with why.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// The file could not be read.
    #[error("reading the data: {0}")]
    Io(#[from] std::io::Error),
    /// Some lines are not labelled records of the task.
    #[error("{}", describe(.0))]
    Lines(Vec<(u64, String)>),
}

/// How many bad lines an error lists before summarising the rest.
const LISTED: usize = 20;

fn describe(bad: &[(u64, String)]) -> String {
    let mut s = format!("{} line(s) cannot be used for training:", bad.len());
    for (line, why) in bad.iter().take(LISTED) {
        s.push_str(&format!("\n  line {line}: {why}"));
    }
    if bad.len() > LISTED {
        s.push_str(&format!("\n  ... and {} more", bad.len() - LISTED));
    }
    s
}

/// Reads labelled JSONL (`text`, `label`, optional `id` and `task`) for `task`. A record naming
/// another task, a label outside the task's label set, or a document the task cannot take (empty,
/// too long under `truncation = "reject"`) is an error naming its line; all are collected.
pub fn read(
    input: &mut dyn BufRead,
    task: &PreparedTask,
    tokenizer: &TextTokenizer,
) -> Result<Vec<Example>, DataError> {
    let tasks = std::slice::from_ref(task);
    let names = [task.name.clone()];
    let mut out = Vec::new();
    let mut bad = Vec::new();
    for (i, line) in input.lines().enumerate() {
        let line_no = i as u64 + 1;
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        match example(&line, tasks, &names, tokenizer) {
            Ok((ids, gold)) => out.push(Example { ids, gold }),
            Err(why) => bad.push((line_no, why)),
        }
    }
    if bad.is_empty() {
        Ok(out)
    } else {
        Err(DataError::Lines(bad))
    }
}

fn example(
    line: &str,
    tasks: &[PreparedTask],
    names: &[String],
    tokenizer: &TextTokenizer,
) -> Result<(Vec<u32>, usize), String> {
    let task = &tasks[0];
    let mut v: Value = serde_json::from_str(line).map_err(|e| format!("not JSON: {e}"))?;
    let obj = v.as_object_mut().ok_or("not a JSON object")?;
    let label = obj
        .remove("label")
        .and_then(|l| l.as_str().map(str::to_string))
        .ok_or("no string 'label'")?;
    // Records need no id to be trained on.
    obj.entry("id").or_insert(Value::from("training-record"));
    let gold = task
        .labels
        .iter()
        .position(|l| *l == label)
        .ok_or_else(|| {
            format!(
                "label '{label}' is not one of task '{}''s labels ({})",
                task.name,
                task.labels.join(", ")
            )
        })?;
    let bytes = serde_json::to_vec(&v).expect("a JSON value serialises");
    let a = crate::admit::admit(
        &bytes,
        Some(&task.name),
        tasks,
        names,
        tokenizer,
        usize::MAX,
    )
    .map_err(|f| format!("{}: {}", f.code, f.message))?;
    Ok((a.fitted.ids, gold))
}

/// Splits `examples` into (train, held out): a seeded shuffle, `fraction` of them held out (at
/// least one when the fraction is positive and there are two or more).
pub fn split(mut examples: Vec<Example>, fraction: f64, seed: u64) -> (Vec<Example>, Vec<Example>) {
    use rand::seq::SliceRandom;
    use rand::SeedableRng;
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    examples.shuffle(&mut rng);
    let n = examples.len();
    let mut held = ((n as f64) * fraction).round() as usize;
    if fraction > 0.0 && n >= 2 {
        held = held.clamp(1, n - 1);
    }
    let train = examples.split_off(held.min(n));
    (train, examples)
}
