//! Delivery -> a document ready for the engine, or the reason it goes to the dead letters.

use crate::dead_letter::Failure;
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

/// Admits a delivery (see [`crate::admit::admit`]): the message's task, else its topic's or
/// queue's. A refused delivery goes to the dead letters on its first attempt.
pub fn admit(
    d: Delivery,
    tasks: &[PreparedTask],
    names: &[String],
    tokenizer: &TextTokenizer,
    max_bytes: usize,
) -> Result<Doc, Box<Rejected>> {
    let admitted = crate::admit::admit(
        &d.payload,
        d.default_task.as_deref(),
        tasks,
        names,
        tokenizer,
        max_bytes,
    );
    match admitted {
        Ok(a) => Ok(Doc {
            delivery: d,
            input: a.input,
            task: a.task,
            fitted: a.fitted,
        }),
        Err(failure) => Err(Box::new(Rejected {
            delivery: d,
            failure: *failure,
        })),
    }
}
