//! The pipeline's output records: a labelled result, and an error line for input that failed.
//!
//! Described by schemas/result.schema.json and schemas/error.schema.json.

use serde::Serialize;
use serde_json::Value;

use crate::engine::prepared::{FittedDoc, PreparedTask};
use crate::engine::scoring::LabelScores;

/// One classified document.
#[derive(Debug, Clone, Serialize)]
pub struct LabelResult {
    /// The input's id.
    pub id: Value,
    /// The task that classified it.
    pub task: String,
    /// The most probable label.
    pub label: String,
    /// Its probability (normalised over the label set).
    pub score: f32,
    /// Every label's probability, in task order.
    pub scores: LabelProbs,
    /// Probability the model's next token was one of the labels' first tokens.
    pub label_mass: f32,
    /// Document tokens that went through the model (after truncation).
    pub doc_tokens: usize,
    /// Prompt tokens before the document, served from the prefix cache.
    pub prefix_tokens: usize,
    /// Prompt tokens after the document (the answer cue).
    pub suffix_tokens: usize,
    /// Whether the document was truncated to the task's `max_doc_tokens`.
    pub truncated: bool,
    /// The model file.
    pub model: String,
    /// The input's `meta`, passed through.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub meta: Option<Value>,
    /// Worker only: where the input was read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<crate::source::Origin>,
    /// Worker only: the input message's key (Kafka), as text.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// Worker only: the input's correlation headers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub headers: Option<serde_json::Map<String, Value>>,
    /// Worker only: whether the top probability was under the task's threshold, so the result was
    /// also sent to the escalation destination.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub escalated: Option<bool>,
}

impl LabelResult {
    /// Builds the result of `doc` under `task` from its scores.
    pub fn new(
        id: Value,
        task: &PreparedTask,
        doc: &FittedDoc,
        s: &LabelScores,
        model: &str,
        meta: Option<Value>,
    ) -> Self {
        let best = s.best();
        let scores = LabelProbs(
            task.labels
                .iter()
                .cloned()
                .zip(s.probs.iter().copied())
                .collect(),
        );
        Self {
            id,
            task: task.name.clone(),
            label: task.labels[best].clone(),
            score: s.probs[best],
            scores,
            label_mass: s.label_mass,
            doc_tokens: doc.ids.len(),
            prefix_tokens: task.prefix_ids.len(),
            suffix_tokens: task.suffix_ids.len(),
            truncated: doc.truncated,
            model: model.to_string(),
            meta,
            source: None,
            key: None,
            headers: None,
            escalated: None,
        }
    }
}

/// Label probabilities in task order, serialised as a JSON object `{label: p}`.
#[derive(Debug, Clone, PartialEq)]
pub struct LabelProbs(pub Vec<(String, f32)>);

impl Serialize for LabelProbs {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = s.serialize_map(Some(self.0.len()))?;
        for (label, p) in &self.0 {
            m.serialize_entry(label, p)?;
        }
        m.end()
    }
}

/// An input line that could not be classified.
#[derive(Debug, Clone, Serialize)]
pub struct ErrorLine {
    /// The input's id, when it could be read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<Value>,
    /// 1-based line number in the input.
    pub line: u64,
    /// What went wrong.
    pub error: ErrorBody,
}

/// A stable code and a readable message.
#[derive(Debug, Clone, Serialize)]
pub struct ErrorBody {
    /// Stable code (`malformed_json`, `token_limit_exceeded`, ...).
    pub code: String,
    /// Human-readable explanation.
    pub message: String,
}

impl ErrorLine {
    /// An error line for input line `line`.
    pub fn new(id: Option<Value>, line: u64, code: &str, message: impl Into<String>) -> Self {
        Self {
            id,
            line,
            error: ErrorBody {
                code: code.to_string(),
                message: message.into(),
            },
        }
    }
}
