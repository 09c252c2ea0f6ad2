//! Prefix, document and suffix are tokenised apart (the prefix is cached), yet the model must see
//! the tokens a tokenisation of the whole prompt gives: no doubled spaces at the seams.

mod common;

use candle_core::quantized::GgmlDType;
use common::{engine, gqa_shape};
use labelmill::task::TaskFile;

const TASKS: &str = r#"
[[task]]
name = "chat"
preset = "llama2-chat"
system = "You route support tickets."
instruction = "Classify the ticket: {{labels}}."
answer_prefix = "Category:"
labels = ["billing", "technical"]

[[task]]
name = "raw"
template = "Route this ticket.\nTicket: {{text}} [/INST] Team:"
labels = ["billing", "technical"]

[[task]]
name = "slot-first"
template = "{{text}} Label:"
labels = ["billing", "technical"]
"#;

#[test]
fn segments_join_to_the_whole_prompt() {
    let (e, _) = engine(&gqa_shape(), GgmlDType::Q8_0, 1);
    let tok = e.tokenizer();
    for spec in TaskFile::parse(TASKS, "test").unwrap().task {
        let parts = spec.prompt().unwrap();
        let t = e.prepare(&spec).unwrap();
        for text in [
            "hello world",
            "My invoice is wrong, please refund!",
            "x",
            "crash\nafter update",
        ] {
            let doc = t.encode_doc(tok, text).unwrap().ids;
            let joined = [t.prefix_ids.as_slice(), &doc, &t.suffix_ids].concat();
            let whole = [
                vec![1],
                tok.encode(&format!("{}{text}{}", parts.prefix, parts.suffix))
                    .unwrap(),
            ]
            .concat();
            assert_eq!(joined, whole, "task {} doc {text:?}", t.name);
        }
    }
}

/// The first document token carries the space that ends the prefix (`▁word`), and the prefix does
/// not end with a lone space token.
#[test]
fn no_lone_space_token_at_the_seam() {
    let (e, _) = engine(&gqa_shape(), GgmlDType::Q8_0, 1);
    let tok = e.tokenizer();
    let space = tok.encode(" ").unwrap();
    for spec in TaskFile::parse(TASKS, "test").unwrap().task {
        let t = e.prepare(&spec).unwrap();
        assert_ne!(t.prefix_ids.last(), space.last(), "task {}", t.name);
        let doc = t.encode_doc(tok, "hello").unwrap().ids;
        assert_eq!(
            doc,
            tok.encode("hello").unwrap(),
            "task {}: {doc:?}",
            t.name
        );
    }
}
