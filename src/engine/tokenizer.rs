//! The HuggingFace `tokenizer.json` a model ships with, checked against the model's vocabulary.

use std::path::Path;

use super::load::LoadError;

/// A loaded tokenizer.
pub struct TextTokenizer {
    inner: tokenizers::Tokenizer,
}

impl TextTokenizer {
    /// Loads `path` and checks that its vocabulary matches `model_vocab` rows of the embedding.
    pub fn load(path: &Path, model_vocab: usize) -> Result<Self, LoadError> {
        let err = |reason: String| LoadError::Tokenizer {
            path: path.to_path_buf(),
            reason,
        };
        if !path.exists() {
            return Err(err("file does not exist".into()));
        }
        let inner = tokenizers::Tokenizer::from_file(path)
            .map_err(|e| err(format!("not a valid tokenizer.json: {e}")))?;
        let size = inner.get_vocab_size(true);
        if size != model_vocab {
            return Err(LoadError::VocabMismatch {
                path: path.to_path_buf(),
                tokenizer: size,
                model: model_vocab,
            });
        }
        Ok(Self { inner })
    }

    /// Token ids of `text`, without special tokens (BOS is added by the prompt, once).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, TokenizeError> {
        self.inner
            .encode_fast(text, false)
            .map(|e| e.get_ids().to_vec())
            .map_err(|e| TokenizeError(e.to_string()))
    }
}

/// The tokenizer rejected a text.
#[derive(Debug, thiserror::Error)]
#[error("tokenizer failed: {0}")]
pub struct TokenizeError(pub String);
