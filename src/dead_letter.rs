//! Failure -> dead-letter record (schemas/dead_letter.schema.json): the original bytes, where they
//! came from, a stable code and a readable message, so an operator can fix and replay them.

use base64::Engine as _;
use serde::Serialize;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::source::{Delivery, Origin};

/// The payload kept in a dead letter is cut to this many bytes (the hash covers all of it), so an
/// oversized input cannot make an oversized dead letter.
pub const MAX_KEPT_PAYLOAD: usize = 64 * 1024;

/// Where in the pipeline a document failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Stage {
    /// Bytes to JSON.
    Decode,
    /// JSON to a document of a known task.
    Validate,
    /// Tokens against the task's limits.
    Tokenize,
    /// The forward pass.
    Engine,
    /// Publishing the result.
    Publish,
}

/// A dead-letter record.
#[derive(Debug, Clone, Serialize)]
pub struct DeadLetter {
    /// Code and message.
    pub error: crate::message::ErrorBody,
    /// Where it failed.
    pub stage: Stage,
    /// Attempts made, the failing one included.
    pub attempts: u32,
    /// Whether the failure was transient (retries exhausted).
    pub retryable: bool,
    /// The document id, when readable.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<Value>,
    /// The task, when resolved.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub task: Option<String>,
    /// Source coordinates.
    pub source: Origin,
    /// The Kafka key as text.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// The Kafka key, base64, when not UTF-8.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_base64: Option<String>,
    /// Every input header.
    pub headers: Vec<HeaderRecord>,
    /// The payload as text.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payload: Option<String>,
    /// The payload, base64, when not UTF-8.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payload_base64: Option<String>,
    /// Original payload size.
    pub payload_size: usize,
    /// SHA-256 of the original payload.
    pub payload_sha256: String,
    /// Whether the kept payload was cut.
    pub payload_truncated: bool,
    /// Broker timestamp of the input.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub broker_timestamp_ms: Option<i64>,
    /// Worker version and model.
    pub worker: WorkerInfo,
    /// When the record was written.
    pub timestamp: String,
}

/// One header: text, or base64 when not UTF-8.
#[derive(Debug, Clone, Serialize)]
pub struct HeaderRecord {
    /// Header name.
    pub name: String,
    /// Value as text.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// Value as base64.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value_base64: Option<String>,
}

/// The writer of a record.
#[derive(Debug, Clone, Serialize)]
pub struct WorkerInfo {
    /// labelmill's version.
    pub version: &'static str,
    /// The model file.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
}

/// Why a document is dead-lettered.
#[derive(Debug, Clone)]
pub struct Failure {
    /// Stable code.
    pub code: &'static str,
    /// Readable message.
    pub message: String,
    /// Where.
    pub stage: Stage,
    /// Transient (retries exhausted) or permanent (bad input).
    pub retryable: bool,
    /// Document id, when readable.
    pub id: Option<Value>,
    /// Task, when resolved.
    pub task: Option<String>,
}

fn text_or_base64(bytes: &[u8]) -> (Option<String>, Option<String>) {
    match std::str::from_utf8(bytes) {
        Ok(s) => (Some(s.to_string()), None),
        Err(_) => (
            None,
            Some(base64::engine::general_purpose::STANDARD.encode(bytes)),
        ),
    }
}

impl DeadLetter {
    /// The record for `d` failing with `f`.
    pub fn new(d: &Delivery, f: &Failure, model: Option<&str>) -> Self {
        let kept = &d.payload[..d.payload.len().min(MAX_KEPT_PAYLOAD)];
        // A cut may split a UTF-8 character: judge the whole payload, then keep the cut as text
        // up to the last whole character.
        let (payload, payload_base64) = match std::str::from_utf8(&d.payload) {
            Ok(_) => {
                let valid = match std::str::from_utf8(kept) {
                    Ok(s) => s,
                    Err(e) => std::str::from_utf8(&kept[..e.valid_up_to()]).expect("valid prefix"),
                };
                (Some(valid.to_string()), None)
            }
            Err(_) => text_or_base64(kept),
        };
        let (key, key_base64) = d.key.as_deref().map(text_or_base64).unwrap_or((None, None));
        let headers = d
            .headers
            .iter()
            .map(|(name, v)| {
                let (value, value_base64) = text_or_base64(v);
                HeaderRecord {
                    name: name.clone(),
                    value,
                    value_base64,
                }
            })
            .collect();
        Self {
            error: crate::message::ErrorBody {
                code: f.code.to_string(),
                message: f.message.clone(),
            },
            stage: f.stage,
            attempts: d.failed_attempts + 1,
            retryable: f.retryable,
            id: f.id.clone(),
            task: f.task.clone(),
            source: d.origin.clone(),
            key,
            key_base64,
            headers,
            payload,
            payload_base64,
            payload_size: d.payload.len(),
            payload_sha256: hex(&Sha256::digest(&d.payload)),
            payload_truncated: kept.len() < d.payload.len(),
            broker_timestamp_ms: d.timestamp_ms,
            worker: WorkerInfo {
                version: env!("CARGO_PKG_VERSION"),
                model: model.map(str::to_string),
            },
            timestamp: humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
