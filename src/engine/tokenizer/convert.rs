//! A GGUF vocabulary as an HF `tokenizer.json` document that tokenises the way llama.cpp does.
//!
//! - `llama` (SentencePiece): llama.cpp merges adjacent pieces, always the pair whose merged piece
//!   has the highest score, and spells what is left over in `<0xXX>` byte tokens. A BPE model
//!   whose merges are every split of every piece into two pieces, ranked by the merged piece's
//!   score, takes the same steps (transformers' LlamaConverter does the same). A space is put
//!   before each stretch of text between special tokens when `add_space_prefix` says so, and
//!   spaces are spelt `▁`.
//! - `gpt2` (byte-level BPE): the file's ranked merges, the pre-tokenizer its `pre` names, bytes
//!   mapped to GPT-2's printable characters.
//!
//! Control and unknown tokens become special added tokens (matched in text only when special
//! tokens are parsed, which only templates do); user-defined tokens are matched in any text, as
//! llama.cpp and HF tokenizers both do. Control, unknown and byte tokens are never the result or a
//! part of a SentencePiece merge, so plain text cannot spell them (SentencePiece itself keeps them
//! out of segmentation; llama.cpp's merge loop does not look at types).

use std::collections::HashMap;

use serde_json::{json, Map, Value};

use super::vocab::{GgufVocab, TokenType, VocabKind};

/// Whether a token may be a piece that text is segmented into.
fn mergeable(t: TokenType) -> bool {
    matches!(
        t,
        TokenType::Normal | TokenType::Undefined | TokenType::UserDefined | TokenType::Unused
    )
}

/// The `tokenizer.json` document for `v`.
pub fn tokenizer_json(v: &GgufVocab) -> Value {
    let vocab: Map<String, Value> = v
        .tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), json!(i)))
        .collect();
    let added: Vec<Value> = v
        .tokens
        .iter()
        .zip(&v.types)
        .enumerate()
        .filter(|(_, (_, t))| t.is_special() || **t == TokenType::UserDefined)
        .map(|(id, (text, t))| {
            json!({"id": id, "content": text, "single_word": false, "lstrip": false,
                   "rstrip": false, "normalized": false, "special": t.is_special()})
        })
        .collect();
    let unk = v.text(v.unk).map(str::to_string);
    let (normalizer, pre_tokenizer, decoder, merges, byte_fallback, ignore_merges) = match v.kind {
        VocabKind::Llama => {
            let mut norms = Vec::new();
            if v.add_space_prefix {
                norms.push(json!({"type": "Prepend", "prepend": "▁"}));
            }
            norms.push(json!({"type": "Replace", "pattern": {"String": " "}, "content": "▁"}));
            let mut decoders = vec![
                json!({"type": "Replace", "pattern": {"String": "▁"}, "content": " "}),
                json!({"type": "ByteFallback"}),
                json!({"type": "Fuse"}),
            ];
            if v.add_space_prefix {
                decoders.push(json!({"type": "Strip", "content": " ", "start": 1, "stop": 0}));
            }
            (
                json!({"type": "Sequence", "normalizers": norms}),
                Value::Null,
                json!({"type": "Sequence", "decoders": decoders}),
                score_merges(v),
                true,
                false,
            )
        }
        VocabKind::Gpt2 => {
            let pre = v
                .pre_tokenizer
                .expect("a gpt2 vocabulary is read with its pre-tokenizer");
            let byte_level = json!({"type": "ByteLevel", "add_prefix_space": false,
                                    "trim_offsets": false, "use_regex": false});
            let mut steps: Vec<Value> = pre
                .regexes
                .iter()
                .map(|r| {
                    json!({"type": "Split", "pattern": {"Regex": r}, "behavior": "Isolated",
                           "invert": false})
                })
                .collect();
            steps.push(byte_level.clone());
            let merges = v.merges.iter().map(|(a, b)| json!([a, b])).collect();
            (
                Value::Null,
                json!({"type": "Sequence", "pretokenizers": steps}),
                byte_level,
                merges,
                false,
                pre.ignore_merges,
            )
        }
    };
    json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": normalizer,
        "pre_tokenizer": pre_tokenizer,
        "post_processor": null,
        "decoder": decoder,
        "model": {"type": "BPE", "dropout": null, "unk_token": unk,
                  "continuing_subword_prefix": null, "end_of_word_suffix": null,
                  "fuse_unk": true, "byte_fallback": byte_fallback,
                  "ignore_merges": ignore_merges, "vocab": Value::Object(vocab),
                  "merges": merges}
    })
}

/// Every split of every mergeable piece into two mergeable pieces, highest merged score first;
/// ties by the merged piece's id, then by the parts' ids (the order transformers' converter gives
/// pieces of equal score, such as LLaMA's runs of `▁`).
fn score_merges(v: &GgufVocab) -> Vec<Value> {
    let ids: HashMap<&str, usize> = v
        .tokens
        .iter()
        .enumerate()
        .filter(|(i, _)| mergeable(v.types[*i]))
        .map(|(i, t)| (t.as_str(), i))
        .collect();
    // (score, piece id, left id, right id, split byte)
    let mut merges: Vec<(f32, usize, usize, usize, usize)> = Vec::new();
    for (piece, &id) in &ids {
        for (at, _) in piece.char_indices().skip(1) {
            if let (Some(&l), Some(&r)) = (ids.get(&piece[..at]), ids.get(&piece[at..])) {
                merges.push((v.scores[id], id, l, r, at));
            }
        }
    }
    merges.sort_by(|a, b| {
        b.0.total_cmp(&a.0)
            .then(a.1.cmp(&b.1))
            .then((a.2, a.3).cmp(&(b.2, b.3)))
    });
    merges
        .into_iter()
        .map(|(_, id, _, _, at)| {
            let p = &v.tokens[id];
            json!([&p[..at], &p[at..]])
        })
        .collect()
}
