//! Bytes of one input record -> `InputDoc`, with a typed error (and stable code) for every bad input.
//!
//! The checks mirror schemas/input.schema.json.

use serde_json::{Map, Value};

/// A decoded input document.
#[derive(Debug, Clone, PartialEq)]
pub struct InputDoc {
    /// The caller's id (a string or an integer), echoed in the result.
    pub id: Value,
    /// The text to classify.
    pub text: String,
    /// The task name, when the message names one.
    pub task: Option<String>,
    /// Opaque metadata passed through to the result.
    pub meta: Option<Value>,
}

/// Why an input record was refused. `code()` is stable: dead-letter reason and metric label.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DecodeError {
    /// The bytes are not UTF-8.
    #[error("the record is not valid UTF-8 (invalid byte at offset {0})")]
    InvalidUtf8(usize),
    /// The record is larger than allowed.
    #[error("the record has {size} bytes; the limit is {max}")]
    PayloadTooLarge {
        /// Size of the record.
        size: usize,
        /// The configured limit.
        max: usize,
    },
    /// The bytes are not JSON.
    #[error("the record is not valid JSON: {0}")]
    MalformedJson(String),
    /// JSON, but not an input document.
    #[error("the record does not match the input schema: {0}")]
    SchemaInvalid(String),
    /// `text` is empty or only whitespace.
    #[error("the document text is empty")]
    EmptyText,
    /// The task is not defined, or none is given while several are.
    #[error("{0}")]
    UnknownTask(String),
    /// The id is longer than [`MAX_ID_BYTES`].
    #[error("the id has {len} bytes; the limit is {MAX_ID_BYTES}")]
    IdTooLong {
        /// Its length.
        len: usize,
    },
    /// `meta` is larger than [`MAX_META_BYTES`] as JSON.
    #[error("meta has {size} bytes as JSON; the limit is {MAX_META_BYTES}")]
    MetaTooLarge {
        /// Its size.
        size: usize,
    },
}

/// Longest id (as JSON text, integers included): ids are echoed in every result and key results.
pub const MAX_ID_BYTES: usize = 1024;

/// Largest `meta` object (as compact JSON): it is echoed in every result.
pub const MAX_META_BYTES: usize = 64 * 1024;

impl DecodeError {
    /// The stable error code.
    pub fn code(&self) -> &'static str {
        match self {
            Self::InvalidUtf8(_) => "invalid_utf8",
            Self::PayloadTooLarge { .. } => "payload_too_large",
            Self::MalformedJson(_) => "malformed_json",
            Self::SchemaInvalid(_) => "schema_invalid",
            Self::EmptyText => "empty_text",
            Self::UnknownTask(_) => "unknown_task",
            Self::IdTooLong { .. } => "id_too_long",
            Self::MetaTooLarge { .. } => "meta_too_large",
        }
    }
}

const FIELDS: [&str; 4] = ["id", "text", "task", "meta"];

/// Decodes one record. On error, also returns the record's `id` when it could be read, so the
/// error line or dead letter can name the document.
pub fn decode(bytes: &[u8], max_bytes: usize) -> Result<InputDoc, (DecodeError, Option<Value>)> {
    if bytes.len() > max_bytes {
        return Err((
            DecodeError::PayloadTooLarge {
                size: bytes.len(),
                max: max_bytes,
            },
            None,
        ));
    }
    let text = std::str::from_utf8(bytes)
        .map_err(|e| (DecodeError::InvalidUtf8(e.valid_up_to()), None))?;
    let value: Value = serde_json::from_str(text)
        .map_err(|e| (DecodeError::MalformedJson(e.to_string()), None))?;
    let Value::Object(obj) = value else {
        return Err((
            DecodeError::SchemaInvalid("expected a JSON object".into()),
            None,
        ));
    };
    let id = obj
        .get("id")
        .filter(|v| is_valid_id(v) && id_len(v) <= MAX_ID_BYTES)
        .cloned();
    from_object(obj).map_err(|e| (e, id))
}

fn id_len(v: &Value) -> usize {
    match v {
        Value::String(s) => s.len(),
        other => other.to_string().len(),
    }
}

fn is_valid_id(v: &Value) -> bool {
    matches!(v, Value::String(s) if !s.is_empty()) || v.is_i64() || v.is_u64()
}

fn from_object(mut obj: Map<String, Value>) -> Result<InputDoc, DecodeError> {
    let bad = |m: String| Err(DecodeError::SchemaInvalid(m));
    if let Some(k) = obj.keys().find(|k| !FIELDS.contains(&k.as_str())) {
        return bad(format!(
            "unknown field '{k}' (allowed: id, text, task, meta)"
        ));
    }
    let id = match obj.remove("id") {
        Some(v) if is_valid_id(&v) => v,
        Some(_) => return bad("'id' must be a non-empty string or an integer".into()),
        None => return bad("'id' is required".into()),
    };
    if id_len(&id) > MAX_ID_BYTES {
        return Err(DecodeError::IdTooLong { len: id_len(&id) });
    }
    let text = match obj.remove("text") {
        Some(Value::String(s)) => s,
        Some(_) => return bad("'text' must be a string".into()),
        None => return bad("'text' is required".into()),
    };
    let task = match obj.remove("task") {
        Some(Value::String(s)) => Some(s),
        None | Some(Value::Null) => None,
        Some(_) => return bad("'task' must be a string".into()),
    };
    let meta = match obj.remove("meta") {
        Some(v @ Value::Object(_)) => Some(v),
        None | Some(Value::Null) => None,
        Some(_) => return bad("'meta' must be an object".into()),
    };
    if let Some(m) = &meta {
        let size = serde_json::to_vec(m).map_or(usize::MAX, |v| v.len());
        if size > MAX_META_BYTES {
            return Err(DecodeError::MetaTooLarge { size });
        }
    }
    if text.trim().is_empty() {
        return Err(DecodeError::EmptyText);
    }
    Ok(InputDoc {
        id,
        text,
        task,
        meta,
    })
}

/// Picks the task for a document: the one it names, or the only one defined.
pub fn resolve_task<'a>(named: Option<&str>, tasks: &'a [String]) -> Result<&'a str, DecodeError> {
    match named {
        Some(n) => tasks
            .iter()
            .find(|t| t.as_str() == n)
            .map(String::as_str)
            .ok_or_else(|| {
                DecodeError::UnknownTask(format!(
                    "unknown task '{n}' (defined: {})",
                    tasks.join(", ")
                ))
            }),
        None if tasks.len() == 1 => Ok(&tasks[0]),
        None => Err(DecodeError::UnknownTask(format!(
            "the document names no task and {} are defined ({})",
            tasks.len(),
            tasks.join(", ")
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(bytes: &[u8]) -> &'static str {
        decode(bytes, 1000).unwrap_err().0.code()
    }

    #[test]
    fn good_record() {
        let d = decode(br#"{"id": 7, "text": "hi", "meta": {"a": 1}}"#, 1000).unwrap();
        assert_eq!(
            (d.id, d.text.as_str(), d.task),
            (Value::from(7), "hi", None)
        );
        assert_eq!(d.meta, Some(serde_json::json!({"a": 1})));
    }

    #[test]
    fn every_bad_class_has_its_code() {
        assert_eq!(code(b"{\"id\":1,\"text\":\"\xff\"}"), "invalid_utf8");
        assert_eq!(code(b"{\"id\":1,"), "malformed_json");
        assert_eq!(code(b"[1]"), "schema_invalid");
        assert_eq!(code(br#"{"text":"x"}"#), "schema_invalid");
        assert_eq!(code(br#"{"id":1,"text":3}"#), "schema_invalid");
        assert_eq!(code(br#"{"id":1,"text":"x","txt":"y"}"#), "schema_invalid");
        assert_eq!(code(br#"{"id":1,"text":"x","meta":[1]}"#), "schema_invalid");
        assert_eq!(code(br#"{"id":1,"text":"  \n"}"#), "empty_text");
        let long_id = format!(r#"{{"id":"{}","text":"x"}}"#, "i".repeat(MAX_ID_BYTES + 1));
        let (e, id) = decode(long_id.as_bytes(), 1 << 20).unwrap_err();
        assert_eq!(
            (e.code(), id),
            ("id_too_long", None),
            "a long id is not echoed"
        );
        let ok_id = format!(r#"{{"id":"{}","text":"x"}}"#, "i".repeat(MAX_ID_BYTES));
        assert!(decode(ok_id.as_bytes(), 1 << 20).is_ok());
        let big_meta = format!(
            r#"{{"id":1,"text":"x","meta":{{"m":"{}"}}}}"#,
            "m".repeat(MAX_META_BYTES)
        );
        assert_eq!(
            decode(big_meta.as_bytes(), 1 << 20).unwrap_err().0.code(),
            "meta_too_large"
        );
        assert_eq!(
            decode(&[b' '; 20], 10).unwrap_err().0.code(),
            "payload_too_large"
        );
    }

    #[test]
    fn error_keeps_the_id_when_readable() {
        let (e, id) = decode(br#"{"id":"a-1","text":""}"#, 1000).unwrap_err();
        assert_eq!((e, id), (DecodeError::EmptyText, Some(Value::from("a-1"))));
    }

    #[test]
    fn task_resolution() {
        let one = vec!["a".to_string()];
        let two = vec!["a".to_string(), "b".to_string()];
        assert_eq!(resolve_task(None, &one).unwrap(), "a");
        assert_eq!(resolve_task(Some("b"), &two).unwrap(), "b");
        assert_eq!(resolve_task(None, &two).unwrap_err().code(), "unknown_task");
        assert_eq!(
            resolve_task(Some("c"), &two).unwrap_err().code(),
            "unknown_task"
        );
    }
}
