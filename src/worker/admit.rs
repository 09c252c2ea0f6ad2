//! Delivery -> a document ready for the engine, or the reason it goes to the dead letters.

use serde_json::Value;

use crate::dead_letter::{Failure, Stage};
use crate::decode::{decode, resolve_task, DecodeError, InputDoc};
use crate::engine::prepared::{FittedDoc, PreparedTask};
use crate::engine::tokenizer::TextTokenizer;
use crate::source::Delivery;

/// A document on its way through the engine.
#[derive(Debug)]
pub struct Doc {
    /// The message, with its acker.
    pub delivery: Delivery,
    /// The decoded input.
    pub input: InputDoc,
    /// Index of its task.
    pub task: usize,
    /// Its tokens, fitted to the task.
    pub fitted: FittedDoc,
}

impl Doc {
    /// Tokens this document costs in a batch (document and suffix; the prefix is cached).
    pub fn cost(&self, tasks: &[PreparedTask]) -> usize {
        self.fitted.ids.len() + tasks[self.task].suffix_ids.len()
    }
}

/// A delivery that cannot be classified, and why.
#[derive(Debug)]
pub struct Rejected {
    /// The message.
    pub delivery: Delivery,
    /// The reason.
    pub failure: Failure,
}

/// Decodes and validates `d`, resolves its task (the message's, else its topic's or queue's) and
/// tokenises it. Every failure here is permanent: it goes to the dead letters on the first attempt.
pub fn admit(
    d: Delivery,
    tasks: &[PreparedTask],
    names: &[String],
    tokenizer: &TextTokenizer,
    max_bytes: usize,
) -> Result<Doc, Box<Rejected>> {
    let fail = |d: Delivery, e: &dyn CodedError, stage, id: Option<Value>, task: Option<String>| {
        let failure = Failure {
            code: e.code(),
            message: e.to_string(),
            stage,
            retryable: false,
            id,
            task,
        };
        Err(Box::new(Rejected {
            delivery: d,
            failure,
        }))
    };
    let input = match decode(&d.payload, max_bytes) {
        Ok(i) => i,
        Err((e, id)) => {
            let stage = match e {
                DecodeError::InvalidUtf8(_)
                | DecodeError::MalformedJson(_)
                | DecodeError::PayloadTooLarge { .. } => Stage::Decode,
                _ => Stage::Validate,
            };
            return fail(d, &e, stage, id, None);
        }
    };
    let named = input.task.as_deref().or(d.default_task.as_deref());
    let task = match resolve_task(named, names) {
        Ok(t) => names
            .iter()
            .position(|n| n == t)
            .expect("resolved task exists"),
        Err(e) => return fail(d, &e, Stage::Validate, Some(input.id), None),
    };
    match tasks[task].encode_doc(tokenizer, &input.text) {
        Ok(fitted) => Ok(Doc {
            delivery: d,
            input,
            task,
            fitted,
        }),
        Err(e) => {
            let name = names[task].clone();
            fail(d, &e, Stage::Tokenize, Some(input.id), Some(name))
        }
    }
}

/// An error with a stable code.
trait CodedError: std::fmt::Display {
    fn code(&self) -> &'static str;
}

impl CodedError for DecodeError {
    fn code(&self) -> &'static str {
        DecodeError::code(self)
    }
}

impl CodedError for crate::engine::prepared::DocError {
    fn code(&self) -> &'static str {
        crate::engine::prepared::DocError::code(self)
    }
}
