//! Content-free calibration (Zhao et al. 2021, "Calibrate Before Use"): the label distribution a
//! task's prompt gives documents that carry no content measures the prompt's own label bias.

use crate::task::CONTENT_FREE;

use super::prepared::PreparedTask;
use super::scoring::softmax;
use super::tokenizer::TextTokenizer;
use super::{Engine, EngineError};

impl Engine {
    /// The mean label distribution (probabilities, label order, temperature 1, no offsets) of the
    /// content-free documents [`CONTENT_FREE`] under `task`, scored on its cached prefix like any
    /// document. The empty document is the suffix alone (skipped when the task has none).
    pub fn content_free(&self, task: &PreparedTask) -> Result<Vec<f32>, EngineError> {
        let docs = task
            .content_free_docs(self.tokenizer())
            .map_err(|e| EngineError(candle_core::Error::msg(e)))?;
        let refs: Vec<&[u32]> = docs.iter().map(Vec::as_slice).collect();
        let scores = self.score(task, &refs)?;
        let mut mean = vec![0f32; task.labels.len()];
        for s in &scores {
            for (m, p) in mean.iter_mut().zip(softmax(&s.log_probs, 1.0)) {
                *m += p / scores.len() as f32;
            }
        }
        Ok(mean)
    }
}

impl PreparedTask {
    /// The content-free documents [`CONTENT_FREE`] as this task's document tokens; the empty one
    /// is the suffix alone, left out when the task has no suffix.
    pub fn content_free_docs(&self, tok: &TextTokenizer) -> Result<Vec<Vec<u32>>, String> {
        let mut docs = Vec::new();
        for text in CONTENT_FREE {
            if text.is_empty() {
                if !self.suffix_ids.is_empty() {
                    docs.push(Vec::new());
                }
                continue;
            }
            let fitted = self
                .encode_doc(tok, text)
                .map_err(|e| format!("content-free document {text:?}: {e}"))?;
            docs.push(fitted.ids);
        }
        Ok(docs)
    }
}
