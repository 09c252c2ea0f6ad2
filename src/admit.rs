//! Bytes of one record -> a document fitted to its task, or the reason it is refused. Shared by
//! `classify` (which writes an error line) and the worker (which writes a dead letter).

use serde_json::Value;

use crate::dead_letter::{Failure, Stage};
use crate::decode::{decode, resolve_task, DecodeError, InputDoc};
use crate::engine::prepared::{DocError, FittedDoc, PreparedTask};
use crate::engine::tokenizer::TextTokenizer;

/// A record ready for the engine.
#[derive(Debug)]
pub struct Admitted {
    /// The decoded input.
    pub input: InputDoc,
    /// Index of its task.
    pub task: usize,
    /// Its tokens, fitted to the task.
    pub fitted: FittedDoc,
}

/// Decodes and validates `bytes`, resolves its task (the record's own, else `default_task`) and
/// tokenises it. Every failure here is permanent (bad input), so `retryable` is false.
pub fn admit(
    bytes: &[u8],
    default_task: Option<&str>,
    tasks: &[PreparedTask],
    names: &[String],
    tokenizer: &TextTokenizer,
    max_bytes: usize,
) -> Result<Admitted, Box<Failure>> {
    let fail = |code, message, stage, id: Option<Value>, task: Option<String>| {
        Box::new(Failure {
            code,
            message,
            stage,
            retryable: false,
            id,
            task,
        })
    };
    let input = decode(bytes, max_bytes).map_err(|(e, id)| {
        let stage = match e {
            DecodeError::InvalidUtf8(_)
            | DecodeError::MalformedJson(_)
            | DecodeError::PayloadTooLarge { .. } => Stage::Decode,
            _ => Stage::Validate,
        };
        fail(e.code(), e.to_string(), stage, id, None)
    })?;
    let named = input.task.as_deref().or(default_task);
    let task = match resolve_task(named, names) {
        Ok(t) => names
            .iter()
            .position(|n| n == t)
            .expect("resolved task exists"),
        Err(e) => {
            let id = Some(input.id);
            return Err(fail(e.code(), e.to_string(), Stage::Validate, id, None));
        }
    };
    match tasks[task].encode_doc(tokenizer, &input.text) {
        Ok(fitted) => Ok(Admitted {
            input,
            task,
            fitted,
        }),
        Err(e) => {
            let (code, message) = (DocError::code(&e), e.to_string());
            let id = Some(input.id);
            Err(fail(
                code,
                message,
                Stage::Tokenize,
                id,
                Some(names[task].clone()),
            ))
        }
    }
}
