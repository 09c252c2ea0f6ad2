//! Trains a LLaMA-style tokenizer (SentencePiece-shaped BPE with byte fallback) on the shipped corpus.
//!
//! Layout as in LLaMA 2's `tokenizer.json`: `<unk>`=0, `<s>`=1, `</s>`=2, the 256 byte tokens
//! `<0x00>`..`<0xFF>` at 3..258, then the learned pieces (`▁` marks a word start).

use std::collections::HashMap;
use std::path::Path;

use candle_core::quantized::gguf_file::Value as GgufValue;
use serde_json::{json, Map, Value};

use crate::engine::tokenizer::vocab::GgufVocab;
use crate::engine::tokenizer::TextTokenizer;
use tokenizers::models::bpe::{BpeTrainerBuilder, BPE};
use tokenizers::pre_tokenizers::metaspace::{Metaspace, PrependScheme};
use tokenizers::{DecoderWrapper, NormalizerWrapper, PostProcessorWrapper, TokenizerImpl};

/// The corpus the tokenizer learns from.
pub const CORPUS: &str = include_str!("corpus.txt");

/// Special tokens plus byte tokens that precede the learned vocabulary.
pub const RESERVED: usize = 3 + 256;

/// Trains a tokenizer with exactly `vocab_size` tokens and returns its `tokenizer.json` text.
///
/// When the corpus runs out of merges before `vocab_size`, the rest is filled with `<unused_N>`
/// pieces that no input produces (as real vocabularies reserve tokens).
pub fn train(vocab_size: usize) -> Result<String, String> {
    train_on(CORPUS, vocab_size)
}

/// [`train`] on another corpus (one text per line).
pub fn train_on(corpus: &str, vocab_size: usize) -> Result<String, String> {
    if vocab_size < RESERVED + 64 {
        return Err(format!(
            "vocab must be at least {} (specials, bytes, some pieces)",
            RESERVED + 64
        ));
    }
    let mut trainer = BpeTrainerBuilder::new()
        .vocab_size(vocab_size - RESERVED)
        .min_frequency(2)
        .show_progress(false)
        .build();
    let mut tk: TokenizerImpl<
        BPE,
        NormalizerWrapper,
        Metaspace,
        PostProcessorWrapper,
        DecoderWrapper,
    > = TokenizerImpl::new(BPE::default());
    tk.with_pre_tokenizer(Some(Metaspace::new('▁', PrependScheme::First, true)));
    tk.train(&mut trainer, corpus.lines())
        .map_err(|e| e.to_string())?;

    let trained = serde_json::to_value(tk.get_model()).map_err(|e| e.to_string())?;
    let mut learned: Vec<(String, u64)> = trained["vocab"]
        .as_object()
        .ok_or("trained model has no vocab")?
        .iter()
        .map(|(k, v)| (k.clone(), v.as_u64().unwrap_or(0)))
        .collect();
    learned.sort_by_key(|(_, id)| *id);

    let mut vocab = Map::new();
    for (i, s) in ["<unk>", "<s>", "</s>"].iter().enumerate() {
        vocab.insert(s.to_string(), json!(i));
    }
    for b in 0..256 {
        vocab.insert(format!("<0x{b:02X}>"), json!(3 + b));
    }
    for (piece, _) in learned {
        if vocab.len() == vocab_size {
            break;
        }
        if !vocab.contains_key(&piece) {
            let id = vocab.len();
            vocab.insert(piece, json!(id));
        }
    }
    let mut filler = 0;
    while vocab.len() < vocab_size {
        let id = vocab.len();
        vocab.insert(format!("<unused_{filler}>"), json!(id));
        filler += 1;
    }
    // Keep only merges whose parts and result all made it into the vocabulary.
    let merges: Vec<Value> = trained["merges"]
        .as_array()
        .ok_or("trained model has no merges")?
        .iter()
        .filter(|m| {
            let (a, b) = (m[0].as_str().unwrap_or(""), m[1].as_str().unwrap_or(""));
            vocab.contains_key(a) && vocab.contains_key(b) && vocab.contains_key(&format!("{a}{b}"))
        })
        .cloned()
        .collect();

    let special = |id: usize, content: &str| {
        json!({"id": id, "content": content, "single_word": false, "lstrip": false, "rstrip": false,
               "normalized": false, "special": true})
    };
    let doc = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": [special(0, "<unk>"), special(1, "<s>"), special(2, "</s>")],
        "normalizer": null,
        "pre_tokenizer": {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "first", "split": true},
        "post_processor": null,
        "decoder": {"type": "Sequence", "decoders": [
            {"type": "Replace", "pattern": {"String": "▁"}, "content": " "},
            {"type": "ByteFallback"},
            {"type": "Fuse"},
            {"type": "Strip", "content": " ", "start": 1, "stop": 0}
        ]},
        "model": {"type": "BPE", "dropout": null, "unk_token": "<unk>", "continuing_subword_prefix": null,
                  "end_of_word_suffix": null, "fuse_unk": true, "byte_fallback": true, "ignore_merges": false,
                  "vocab": Value::Object(vocab), "merges": merges}
    });
    let text = serde_json::to_string(&doc).map_err(|e| e.to_string())?;
    // Prove it loads and has the promised size before anyone writes it to disk.
    let check: tokenizers::Tokenizer =
        text.parse().map_err(|e: tokenizers::Error| e.to_string())?;
    if check.get_vocab_size(true) != vocab_size {
        return Err(format!(
            "built {} tokens, wanted {vocab_size}",
            check.get_vocab_size(true)
        ));
    }
    Ok(text)
}

/// The token strings in id order (for the GGUF `tokenizer.ggml.tokens` array).
pub fn tokens_in_order(tokenizer_json: &str) -> Result<Vec<String>, String> {
    let tk: tokenizers::Tokenizer = tokenizer_json
        .parse()
        .map_err(|e: tokenizers::Error| e.to_string())?;
    let mut v: Vec<(String, u32)> = tk.get_vocab(true).into_iter().collect();
    v.sort_by_key(|(_, id)| *id);
    Ok(v.into_iter().map(|(s, _)| s).collect())
}

/// The GGUF `tokenizer.*` metadata of a trained tokenizer, as LLaMA 2's files spell theirs: a
/// `llama` vocabulary whose learned pieces score by the order they were learned (earlier pieces
/// merge first), `<unk>` unknown, `<s>` `</s>` control, `<0xXX>` byte, fillers unused.
pub fn gguf_metadata(tokenizer_json: &str) -> Result<Vec<(&'static str, GgufValue)>, String> {
    let tokens = tokens_in_order(tokenizer_json)?;
    let (mut scores, mut types) = (Vec::new(), Vec::new());
    for (i, t) in tokens.iter().enumerate() {
        let (score, ty) = match i {
            0 => (0.0, 2),
            1 | 2 => (0.0, 3),
            _ if i < RESERVED => (0.0, 6),
            _ if t.starts_with("<unused_") => (-1e9, 5),
            _ => (-((i - RESERVED) as f32), 1),
        };
        scores.push(GgufValue::F32(score));
        types.push(GgufValue::I32(ty));
    }
    Ok(vec![
        ("tokenizer.ggml.model", GgufValue::String("llama".into())),
        (
            "tokenizer.ggml.tokens",
            GgufValue::Array(tokens.into_iter().map(GgufValue::String).collect()),
        ),
        ("tokenizer.ggml.scores", GgufValue::Array(scores)),
        ("tokenizer.ggml.token_type", GgufValue::Array(types)),
        ("tokenizer.ggml.unknown_token_id", GgufValue::U32(0)),
        ("tokenizer.ggml.bos_token_id", GgufValue::U32(1)),
        ("tokenizer.ggml.eos_token_id", GgufValue::U32(2)),
        ("tokenizer.ggml.add_bos_token", GgufValue::Bool(true)),
        ("tokenizer.ggml.add_eos_token", GgufValue::Bool(false)),
    ])
}

/// The tokenizer a model written with [`gguf_metadata`] loads with: built from that metadata the
/// way labelmill builds any GGUF's tokenizer (what training must tokenise with).
pub fn from_trained(tokenizer_json: &str) -> Result<TextTokenizer, String> {
    let md: HashMap<String, GgufValue> = gguf_metadata(tokenizer_json)?
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
    let path = Path::new("<trained tokenizer>");
    let v = GgufVocab::read(path, &md).map_err(|e| e.to_string())?;
    TextTokenizer::from_gguf(path, &v).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_fallback_and_exact_size() {
        let text = train(600).unwrap();
        let tk: tokenizers::Tokenizer = text.parse().unwrap();
        assert_eq!(tk.get_vocab_size(true), 600);
        assert_eq!(tk.token_to_id("<s>"), Some(1));
        assert_eq!(tk.token_to_id("<0x41>"), Some(3 + 0x41));
        // A character the corpus never saw falls back to its UTF-8 bytes, and decodes back.
        let enc = tk.encode("billing ☃", false).unwrap();
        assert!(
            enc.get_tokens().iter().any(|t| t == "<0xE2>"),
            "{:?}",
            enc.get_tokens()
        );
        assert_eq!(tk.decode(enc.get_ids(), false).unwrap(), "billing ☃");
        // Deterministic: training twice gives the same file.
        assert_eq!(text, train(600).unwrap());
    }
}
