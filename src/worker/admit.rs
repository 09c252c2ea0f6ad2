//! Delivery -> a document ready for the engine, or the reason it goes to the dead letters. Runs off
//! the async runtime (tokenising a large document takes a while), and a panic in here fails that
//! one document (`admission_panicked`), not the worker.

use std::panic::{catch_unwind, AssertUnwindSafe};

use crate::dead_letter::{Failure, Stage};
use crate::decode::InputDoc;
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
    /// Its failed engine attempts (poison or systemic: see [`super::breaker`]).
    pub engine_tries: super::breaker::Tries,
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

/// Longest Kafka key: keys are copied to results and dead letters.
pub const MAX_KEY_BYTES: usize = super::finish::MAX_COPIED_BYTES;

/// Largest total of header names and values.
pub const MAX_HEADER_BYTES: usize = 64 * 1024;

/// Admits a delivery (see [`crate::admit::admit`]): the message's task, else its topic's or
/// queue's. A refused delivery goes to the dead letters on its first attempt.
pub fn admit(
    d: Delivery,
    tasks: &[PreparedTask],
    names: &[String],
    tokenizer: &TextTokenizer,
    max_bytes: usize,
) -> Result<Doc, Box<Rejected>> {
    let admitted = catch_unwind(AssertUnwindSafe(|| {
        crate::faults::admit(&d.payload);
        bounds(&d)?;
        crate::admit::admit(
            &d.payload,
            d.default_task.as_deref(),
            tasks,
            names,
            tokenizer,
            max_bytes,
        )
    }));
    let failure = match admitted {
        Ok(Ok(a)) => {
            return Ok(Doc {
                delivery: d,
                input: a.input,
                task: a.task,
                fitted: a.fitted,
                engine_tries: Default::default(),
            })
        }
        Ok(Err(failure)) => *failure,
        Err(panic) => Failure {
            code: "admission_panicked",
            message: format!(
                "admitting the message panicked: {}",
                crate::engine::thread::panic_text(&*panic)
            ),
            stage: Stage::Validate,
            retryable: false,
            id: None,
            task: None,
        },
    };
    Err(Box::new(Rejected {
        delivery: d,
        failure,
    }))
}

/// The key and headers are copied to outputs: bound them.
fn bounds(d: &Delivery) -> Result<(), Box<Failure>> {
    let fail = |code, message| {
        Err(Box::new(Failure {
            code,
            message,
            stage: Stage::Validate,
            retryable: false,
            id: None,
            task: None,
        }))
    };
    let key = d.key.as_ref().map_or(0, Vec::len);
    if key > MAX_KEY_BYTES {
        return fail(
            "key_too_long",
            format!("the key has {key} bytes; the limit is {MAX_KEY_BYTES}"),
        );
    }
    let headers: usize = d.headers.iter().map(|(k, v)| k.len() + v.len()).sum();
    if headers > MAX_HEADER_BYTES {
        return fail(
            "headers_too_large",
            format!("the headers have {headers} bytes; the limit is {MAX_HEADER_BYTES}"),
        );
    }
    Ok(())
}
