//! Failure -> dead-letter record (schemas/dead_letter.schema.json): the original bytes, where they
//! came from, a stable code and a readable message, so an operator can fix and replay them.
//!
//! The record keeps the whole original payload whenever the record fits the destination's message
//! limit (RabbitMQ: `amqp.max_message_bytes`, 16 MiB by default; Kafka: the producer's
//! `message.max.bytes`, 1,000,000 by default). Only a record that would not fit is cut, payload
//! first, and says so (`payload_truncated`, with the size and SHA-256 of the whole payload), so a
//! dead letter can always be published.

use base64::Engine as _;
use serde::Serialize;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::source::{Delivery, Origin};

/// Longest error message and id (as JSON) kept when a record has to be cut to fit.
const MAX_KEPT_FIELD: usize = 1024;

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
    /// Whether header values, the key, the id or the message were cut or left out to fit.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub fields_truncated: bool,
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
    /// The record for `d` failing with `f`, with the whole payload.
    pub fn new(d: &Delivery, f: &Failure, model: Option<&str>) -> Self {
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
        let mut record = Self {
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
            payload: None,
            payload_base64: None,
            payload_size: d.payload.len(),
            payload_sha256: hex(&Sha256::digest(&d.payload)),
            payload_truncated: false,
            fields_truncated: false,
            broker_timestamp_ms: d.timestamp_ms,
            worker: WorkerInfo {
                version: env!("CARGO_PKG_VERSION"),
                model: model.map(str::to_string),
            },
            timestamp: humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
        };
        record.keep_payload(Raw::of(&d.payload), d.payload.len());
        record
    }

    /// Keeps the first `n` bytes of `raw` (text cut back to a character boundary, or base64).
    fn keep_payload(&mut self, raw: Raw<'_>, n: usize) {
        let kept = raw.prefix(n);
        self.payload_truncated = kept.len() < raw.len();
        (self.payload, self.payload_base64) = match kept {
            Raw::Text(s) => (Some(s.to_string()), None),
            Raw::Bytes(b) => (
                None,
                Some(base64::engine::general_purpose::STANDARD.encode(b)),
            ),
        };
    }

    /// The record as JSON of at most `max` bytes: whole when it fits; else the payload is cut,
    /// then header values, the key, a long id and a long message, until it fits.
    pub fn encode_within(mut self, raw: &[u8], max: usize) -> Vec<u8> {
        let whole = self.encode();
        if whole.len() <= max {
            return whole;
        }
        // Judged once here, not at every step of the bisection.
        let raw = Raw::of(raw);
        let mut bytes = self.fit_payload(raw, max);
        if bytes.len() > max {
            self.fields_truncated = true;
            for h in &mut self.headers {
                h.value = None;
                h.value_base64 = None;
            }
            self.key = None;
            self.key_base64 = None;
            if self
                .id
                .as_ref()
                .is_some_and(|id| id.to_string().len() > MAX_KEPT_FIELD)
            {
                self.id = None;
            }
            cut_chars(&mut self.error.message, MAX_KEPT_FIELD);
            bytes = self.fit_payload(raw, max);
        }
        if bytes.len() > max {
            // Thousands of header names: keep none.
            self.headers.clear();
            bytes = self.fit_payload(raw, max);
        }
        bytes
    }

    fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("dead letters serialise")
    }

    /// Keeps the longest payload prefix with which the record fits `max` (none if even an empty
    /// one does not), found by bisection: the prefix's JSON length grows with it (escapes make
    /// it longer than the bytes, so the cut cannot be computed from the excess).
    fn fit_payload(&mut self, raw: Raw<'_>, max: usize) -> Vec<u8> {
        self.keep_payload(raw, 0);
        // The empty payload serialises as `""`.
        let fixed = self.encode().len() - 2;
        let fits = |k: usize| fixed + raw.prefix(k).json_len() <= max;
        let (mut lo, mut hi) = (0, raw.len());
        while lo < hi {
            let mid = lo + (hi - lo).div_ceil(2);
            if fits(mid) {
                lo = mid;
            } else {
                hi = mid - 1;
            }
        }
        self.keep_payload(raw, lo);
        self.encode()
    }
}

/// The original payload, judged once: text when all of it is UTF-8, else bytes (kept as base64).
#[derive(Debug, Clone, Copy)]
enum Raw<'a> {
    Text(&'a str),
    Bytes(&'a [u8]),
}

impl<'a> Raw<'a> {
    fn of(raw: &'a [u8]) -> Self {
        std::str::from_utf8(raw).map_or(Self::Bytes(raw), Self::Text)
    }

    fn len(self) -> usize {
        match self {
            Self::Text(s) => s.len(),
            Self::Bytes(b) => b.len(),
        }
    }

    /// The first `n` bytes at most (text: cut back to a character boundary).
    fn prefix(self, n: usize) -> Self {
        match self {
            Self::Text(s) => Self::Text(&s[..char_floor(s, n)]),
            Self::Bytes(b) => Self::Bytes(&b[..n.min(b.len())]),
        }
    }

    /// Its length as a JSON string, quotes included.
    fn json_len(self) -> usize {
        match self {
            Self::Text(s) => serde_json::to_string(s).map_or(usize::MAX, |j| j.len()),
            Self::Bytes(b) => 4 * b.len().div_ceil(3) + 2,
        }
    }
}

/// The largest character boundary of `s` at or below `n`.
fn char_floor(s: &str, n: usize) -> usize {
    let mut end = n.min(s.len());
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    end
}

fn cut_chars(s: &mut String, max: usize) {
    if s.len() > max {
        s.truncate(char_floor(s, max));
        s.push('…');
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(raw: &[u8], headers: usize) -> DeadLetter {
        let mut r = DeadLetter {
            error: crate::message::ErrorBody {
                code: "unknown_task".into(),
                message: "unknown task".into(),
            },
            stage: Stage::Validate,
            attempts: 1,
            retryable: false,
            id: Some(Value::from("x")),
            task: None,
            source: Origin::Kafka {
                topic: "in".into(),
                partition: 0,
                offset: 7,
                group: "g".into(),
            },
            key: Some("k".repeat(100)),
            key_base64: None,
            headers: (0..headers)
                .map(|i| HeaderRecord {
                    name: format!("h{i}"),
                    value: Some("v".repeat(1000)),
                    value_base64: None,
                })
                .collect(),
            payload: None,
            payload_base64: None,
            payload_size: raw.len(),
            payload_sha256: hex(&Sha256::digest(raw)),
            payload_truncated: false,
            fields_truncated: false,
            broker_timestamp_ms: None,
            worker: WorkerInfo {
                version: "0",
                model: None,
            },
            timestamp: "t".into(),
        };
        r.keep_payload(Raw::of(raw), raw.len());
        r
    }

    fn decoded(bytes: &[u8]) -> Value {
        serde_json::from_slice(bytes).unwrap()
    }

    #[test]
    fn a_record_that_fits_keeps_the_whole_payload() {
        let raw = "é\"quoted\" text\n".repeat(20_000).into_bytes();
        let bytes = record(&raw, 2).encode_within(&raw, 1 << 20);
        let v = decoded(&bytes);
        assert_eq!(v["payload"].as_str().unwrap().as_bytes(), raw.as_slice());
        assert_eq!(v["payload_truncated"], false);
        assert!(v.get("fields_truncated").is_none());
    }

    #[test]
    fn a_record_over_the_limit_is_cut_to_fit_exactly_as_far_as_needed() {
        // Escapes (quotes, newlines) and two-byte characters make JSON larger than the payload.
        let raw = "é\"quoted\" text\n".repeat(20_000).into_bytes();
        for max in [10_000, 50_000, 200_000] {
            let bytes = record(&raw, 2).encode_within(&raw, max);
            assert!(bytes.len() <= max, "{} > {max}", bytes.len());
            let v = decoded(&bytes);
            let kept = v["payload"].as_str().unwrap();
            assert!(raw.starts_with(kept.as_bytes()));
            assert!(
                bytes.len() > max - 64,
                "cut no more than needed: {} of {max}",
                bytes.len()
            );
            assert_eq!(v["payload_truncated"], true);
            assert_eq!(v["payload_size"], raw.len());
        }
    }

    #[test]
    fn binary_payloads_are_cut_in_base64() {
        let raw: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8 | 0x80).collect();
        let bytes = record(&raw, 0).encode_within(&raw, 30_000);
        assert!(bytes.len() <= 30_000);
        let v = decoded(&bytes);
        let kept = base64::engine::general_purpose::STANDARD
            .decode(v["payload_base64"].as_str().unwrap())
            .unwrap();
        assert!(raw.starts_with(&kept) && kept.len() > 20_000);
        assert_eq!(v["payload_truncated"], true);
    }

    #[test]
    fn when_even_the_fields_do_not_fit_they_are_cut_too() {
        let raw = b"{\"id\":1}".to_vec();
        // 40 headers of 1 KB and a long message do not fit 8 KB.
        let mut r = record(&raw, 40);
        r.error.message = "m".repeat(50_000);
        let bytes = r.encode_within(&raw, 8_000);
        assert!(bytes.len() <= 8_000, "{}", bytes.len());
        let v = decoded(&bytes);
        assert_eq!(v["fields_truncated"], true);
        assert_eq!(v["headers"].as_array().unwrap().len(), 40, "names kept");
        assert!(v["error"]["message"].as_str().unwrap().len() <= MAX_KEPT_FIELD + 3);
        assert_eq!(v["error"]["code"], "unknown_task");
    }
}
