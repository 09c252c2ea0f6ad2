//! Text to token ids: the tokenizer a GGUF carries (or a `tokenizer.json` checked against it), in
//! two modes. Task templates are trusted and may spell control tokens (`<|im_start|>`, `</s>`);
//! document text is untrusted and always tokenises as plain text.

pub mod convert;
pub mod pretok;
pub mod vocab;

use std::collections::{BTreeMap, HashSet};
use std::path::Path;

use crate::engine::load::{GgufFile, LoadError};
use crate::task::chat::ChatFormat;
use vocab::{GgufVocab, TokenType, VocabKind};

/// A text both the GGUF's tokenizer and a `tokenizer.json` given beside it must tokenise alike.
pub const PROBE: &str = "Hello world! The invoice #4521 was charged twice (12.50 EUR), \
                         please refund it.\nThanks, Ana";

/// A loaded tokenizer.
#[derive(Clone)]
pub struct TextTokenizer {
    /// Special tokens recognised: task templates.
    template: tokenizers::Tokenizer,
    /// Special tokens spelt as text: documents.
    plain: tokenizers::Tokenizer,
    /// The texts the template mode turns into special tokens, longest first.
    special_texts: Vec<String>,
    /// Ids only the template mode may produce.
    special_ids: HashSet<u32>,
    /// What every prompt starts with (BOS when the model adds one).
    start: Vec<u32>,
    info: TokenizerInfo,
    format: ChatFormat,
}

/// A special token: its id and text.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SpecialToken {
    /// The id.
    pub id: u32,
    /// The text.
    pub text: String,
}

/// What `labelmill inspect` reports about a tokenizer.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct TokenizerInfo {
    /// `gguf` (built from the file's metadata) or the `tokenizer.json` path.
    pub source: String,
    /// `llama` (SentencePiece) or `gpt2` (byte-level BPE).
    pub kind: VocabKind,
    /// `tokenizer.ggml.pre`, for byte-level BPE.
    pub pre: Option<String>,
    /// Tokens.
    pub size: usize,
    /// BPE merges (for SentencePiece, those generated from the scores).
    pub merges: usize,
    /// Beginning of sequence.
    pub bos: Option<SpecialToken>,
    /// End of sequence.
    pub eos: Option<SpecialToken>,
    /// Unknown token.
    pub unk: Option<SpecialToken>,
    /// Padding.
    pub pad: Option<SpecialToken>,
    /// Whether prompts start with BOS.
    pub add_bos: bool,
    /// Whether the model's own prompts end with EOS (labelmill never appends one: it scores the
    /// next token).
    pub add_eos: bool,
    /// Whether a space is put before text at the start and after special tokens.
    pub add_space_prefix: bool,
    /// Tokens per type (`normal`, `control`, `byte`, ...).
    pub token_types: BTreeMap<String, usize>,
}

/// The tokenizer rejected a text.
#[derive(Debug, thiserror::Error)]
#[error("tokenizer failed: {0}")]
pub struct TokenizeError(pub String);

impl TextTokenizer {
    /// The tokenizer of a model: the GGUF's own, or the `tokenizer.json` at `json` checked
    /// against it (a GGUF without tokenizer metadata takes the `tokenizer.json` as it is).
    pub fn for_model(file: &GgufFile, json: Option<&Path>) -> Result<Self, LoadError> {
        let (path, md, rows) = (file.path(), file.metadata(), file.hparams.vocab_size);
        if let (Some(j), false) = (json, md.contains_key("tokenizer.ggml.model")) {
            return Self::from_json_only(j, rows, file.hparams.bos_token_id);
        }
        let v = GgufVocab::read(path, md)?;
        if v.len() != rows {
            return Err(vocab_err(
                path,
                "tokenizer.ggml.tokens",
                format!(
                    "{} tokens, but token_embd.weight has {rows} rows: they must match",
                    v.len()
                ),
            ));
        }
        match json {
            Some(j) => Self::from_json(path, j, &v),
            None => Self::from_gguf(path, &v),
        }
    }

    /// The tokenizer in the metadata of the GGUF at `path`, which need hold no weights (llama.cpp's
    /// `ggml-vocab-*.gguf` files hold only a vocabulary).
    pub fn load_gguf(path: &Path) -> Result<Self, LoadError> {
        let io = |source| LoadError::Io {
            path: path.to_path_buf(),
            source,
        };
        let mut r = std::io::BufReader::new(std::fs::File::open(path).map_err(io)?);
        let content = candle_core::quantized::gguf_file::Content::read(&mut r).map_err(|e| {
            LoadError::Corrupt {
                path: path.to_path_buf(),
                reason: e.to_string(),
            }
        })?;
        Self::from_gguf(path, &GgufVocab::read(path, &content.metadata)?)
    }

    /// The tokenizer of the GGUF vocabulary `v` (read from the file at `path`).
    pub fn from_gguf(path: &Path, v: &GgufVocab) -> Result<Self, LoadError> {
        let doc = convert::tokenizer_json(v);
        let merges = doc["model"]["merges"].as_array().map_or(0, Vec::len);
        let inner: tokenizers::Tokenizer = doc.to_string().parse().map_err(|e| {
            vocab_err(
                path,
                "tokenizer.ggml.tokens",
                format!("cannot build a tokenizer: {e}"),
            )
        })?;
        let special_ids = special_ids_of(v);
        Ok(Self::build(
            inner,
            special_ids,
            v,
            info_of(v, "gguf".into(), merges),
        ))
    }

    /// The `tokenizer.json` at `json`, checked against the GGUF vocabulary `v` of `model`: the
    /// same size, and the same ids for [`PROBE`].
    pub fn from_json(model: &Path, json: &Path, v: &GgufVocab) -> Result<Self, LoadError> {
        let given = Self::load_json(json, v.len())?;
        let built = Self::from_gguf(model, v)?;
        let (a, b) = (given.encode(PROBE), built.encode(PROBE));
        if a.as_ref().ok() != b.as_ref().ok() {
            return Err(LoadError::TokenizerMismatch {
                path: json.to_path_buf(),
                reason: format!(
                    "it tokenises {PROBE:?} as {:?}, the GGUF's own tokenizer as {:?}",
                    a.map_err(|e| e.to_string()),
                    b.map_err(|e| e.to_string())
                ),
            });
        }
        let mut special_ids = special_ids_of(v);
        special_ids.extend(json_special_ids(&given.template));
        let merges = built.info.merges;
        Ok(Self::build(
            given.template,
            special_ids,
            v,
            info_of(v, json.display().to_string(), merges),
        ))
    }

    /// A `tokenizer.json` for a GGUF without tokenizer metadata: its vocabulary must have
    /// `model_vocab` tokens; prompts start with `bos`.
    pub fn from_json_only(json: &Path, model_vocab: usize, bos: u32) -> Result<Self, LoadError> {
        let mut t = Self::load_json(json, model_vocab)?;
        t.start = vec![bos];
        Ok(t)
    }

    fn load_json(path: &Path, model_vocab: usize) -> Result<Self, LoadError> {
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
        let special_ids = json_special_ids(&inner);
        let info = TokenizerInfo {
            source: path.display().to_string(),
            kind: VocabKind::Llama,
            pre: None,
            size,
            merges: 0,
            bos: None,
            eos: None,
            unk: None,
            pad: None,
            add_bos: true,
            add_eos: false,
            add_space_prefix: true,
            token_types: BTreeMap::new(),
        };
        let mut plain = inner.clone();
        plain.set_encode_special_tokens(true);
        let special_texts = special_texts(&inner, &special_ids);
        Ok(Self {
            template: inner,
            plain,
            special_texts,
            special_ids,
            start: Vec::new(),
            info,
            format: ChatFormat::default(),
        })
    }

    fn build(
        template: tokenizers::Tokenizer,
        special_ids: HashSet<u32>,
        v: &GgufVocab,
        info: TokenizerInfo,
    ) -> Self {
        let mut plain = template.clone();
        plain.set_encode_special_tokens(true);
        let special_texts = special_texts(&template, &special_ids);
        let start = match (v.add_bos, v.bos) {
            (true, Some(b)) => vec![b],
            _ => Vec::new(),
        };
        let format = ChatFormat {
            template: v.chat_template.clone(),
            bos_text: v.text(v.bos).unwrap_or_default().to_string(),
            eos_text: v.text(v.eos).unwrap_or_default().to_string(),
            add_bos: v.add_bos,
        };
        Self {
            template,
            plain,
            special_texts,
            special_ids,
            start,
            info,
            format,
        }
    }

    /// Token ids of untrusted `text`: special-token texts in it are ordinary characters.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, TokenizeError> {
        encode_with(&self.plain, text)
    }

    /// Token ids of trusted template `text`: special-token texts in it become those tokens.
    pub fn encode_template(&self, text: &str) -> Result<Vec<u32>, TokenizeError> {
        encode_with(&self.template, text)
    }

    /// What every prompt starts with: BOS when the model adds one, else nothing.
    pub fn start(&self) -> &[u32] {
        &self.start
    }

    /// Whether only a template may produce `id` (control and unknown tokens).
    pub fn is_special(&self, id: u32) -> bool {
        self.special_ids.contains(&id)
    }

    /// The end of `text` after its last special-token text: the stretch text that follows it
    /// is tokenised together with.
    pub fn plain_tail<'a>(&self, text: &'a str) -> &'a str {
        let end = self
            .special_texts
            .iter()
            .filter_map(|s| text.rfind(s.as_str()).map(|i| i + s.len()))
            .max()
            .unwrap_or(0);
        &text[end..]
    }

    /// Facts for `inspect`.
    pub fn info(&self) -> &TokenizerInfo {
        &self.info
    }

    /// The model's chat template and the texts it is rendered with.
    pub fn chat_format(&self) -> &ChatFormat {
        &self.format
    }

    /// The tokenizer as an HF `tokenizer.json` document.
    pub fn to_json(&self) -> Result<String, String> {
        self.template.to_string(false).map_err(|e| e.to_string())
    }

    /// Tokens in the vocabulary.
    pub fn vocab_size(&self) -> usize {
        self.template.get_vocab_size(true)
    }
}

fn encode_with(tok: &tokenizers::Tokenizer, text: &str) -> Result<Vec<u32>, TokenizeError> {
    tok.encode_fast(text, false)
        .map(|e| e.get_ids().to_vec())
        .map_err(|e| TokenizeError(e.to_string()))
}

fn vocab_err(path: &Path, key: &str, reason: String) -> LoadError {
    LoadError::Vocab {
        path: path.to_path_buf(),
        key: key.into(),
        reason,
    }
}

fn special_ids_of(v: &GgufVocab) -> HashSet<u32> {
    v.types
        .iter()
        .enumerate()
        .filter(|(_, t)| t.is_special())
        .map(|(i, _)| i as u32)
        .collect()
}

fn json_special_ids(t: &tokenizers::Tokenizer) -> HashSet<u32> {
    t.get_added_tokens_decoder()
        .into_iter()
        .filter(|(_, a)| a.special)
        .map(|(id, _)| id)
        .collect()
}

/// The texts of `ids` in `t`, longest first.
fn special_texts(t: &tokenizers::Tokenizer, ids: &HashSet<u32>) -> Vec<String> {
    let mut texts: Vec<String> = ids
        .iter()
        .filter_map(|id| t.id_to_token(*id))
        .filter(|s| !s.is_empty())
        .collect();
    texts.sort_by(|a, b| b.len().cmp(&a.len()).then(a.cmp(b)));
    texts
}

fn info_of(v: &GgufVocab, source: String, merges: usize) -> TokenizerInfo {
    let special = |id: Option<u32>| {
        id.map(|id| SpecialToken {
            id,
            text: v.tokens[id as usize].clone(),
        })
    };
    let token_types = v
        .type_counts()
        .into_iter()
        .map(|(t, n)| (type_name(t).to_string(), n))
        .collect();
    TokenizerInfo {
        source,
        kind: v.kind,
        pre: v.pre.clone(),
        size: v.len(),
        merges,
        bos: special(v.bos),
        eos: special(v.eos),
        unk: special(v.unk),
        pad: special(v.pad),
        add_bos: v.add_bos,
        add_eos: v.add_eos,
        add_space_prefix: v.add_space_prefix,
        token_types,
    }
}

fn type_name(t: TokenType) -> &'static str {
    match t {
        TokenType::Undefined => "undefined",
        TokenType::Normal => "normal",
        TokenType::Unknown => "unknown",
        TokenType::Control => "control",
        TokenType::UserDefined => "user-defined",
        TokenType::Unused => "unused",
        TokenType::Byte => "byte",
    }
}
