//! The tokenizer a GGUF file carries in its `tokenizer.*` metadata, read and checked key by key.
//!
//! Defaults follow llama.cpp's loader (src/llama-vocab.cpp) where a key is absent: BOS/EOS/UNK of
//! a `llama` vocabulary are 1/2/0 and it adds BOS and a space prefix; a `gpt2` vocabulary adds
//! neither, unless its pre-tokenizer is one of the Llama 3 family's.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::Value;

use super::pretok::{self, PreTokenizer};
use crate::engine::load::LoadError;

/// The tokenizer algorithm a GGUF names in `tokenizer.ggml.model`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum VocabKind {
    /// `llama`: SentencePiece pieces merged by score, with byte fallback (LLaMA 1/2, Mistral).
    Llama,
    /// `gpt2`: byte-level BPE with ranked merges and a regex pre-tokenizer (Llama 3, SmolLM, ...).
    Gpt2,
}

impl VocabKind {
    /// The metadata spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Llama => "llama",
            Self::Gpt2 => "gpt2",
        }
    }
}

/// `tokenizer.ggml.token_type`, as llama.cpp numbers them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum TokenType {
    /// 0: not given (treated as normal).
    Undefined,
    /// 1: an ordinary piece.
    Normal,
    /// 2: the unknown token.
    Unknown,
    /// 3: a control token (BOS, EOS, chat turn markers): only a template may produce it.
    Control,
    /// 4: a user-defined token: matched in any text, as llama.cpp and HF tokenizers do.
    UserDefined,
    /// 5: reserved, unused.
    Unused,
    /// 6: a byte-fallback piece `<0xXX>`.
    Byte,
}

impl TokenType {
    fn from_code(code: i64) -> Option<Self> {
        Some(match code {
            0 => Self::Undefined,
            1 => Self::Normal,
            2 => Self::Unknown,
            3 => Self::Control,
            4 => Self::UserDefined,
            5 => Self::Unused,
            6 => Self::Byte,
            _ => return None,
        })
    }

    /// Whether only a template (special-token parsing on) may produce this token.
    pub fn is_special(self) -> bool {
        matches!(self, Self::Control | Self::Unknown)
    }
}

/// Token texts llama.cpp treats as control tokens whatever type the file gives them (turn ends).
const CONTROL_BY_TEXT: &[&str] = &[
    "<|eot_id|>",
    "<|eom_id|>",
    "<|im_end|>",
    "<|end|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "<|end_of_text|>",
    "<EOT>",
    "<｜end▁of▁sentence｜>",
];

/// A GGUF's tokenizer, validated: every id in range, every array as long as the token list.
#[derive(Debug, Clone)]
pub struct GgufVocab {
    /// The algorithm.
    pub kind: VocabKind,
    /// `tokenizer.ggml.pre` (byte-level BPE only).
    pub pre: Option<String>,
    /// The pre-tokenizer `pre` selects (byte-level BPE only).
    pub pre_tokenizer: Option<PreTokenizer>,
    /// Token texts by id.
    pub tokens: Vec<String>,
    /// Piece scores by id (SentencePiece merge priority; 0 when the file has none).
    pub scores: Vec<f32>,
    /// Token types by id.
    pub types: Vec<TokenType>,
    /// Ranked merges (byte-level BPE).
    pub merges: Vec<(String, String)>,
    /// Beginning-of-sequence id.
    pub bos: Option<u32>,
    /// End-of-sequence id.
    pub eos: Option<u32>,
    /// Unknown-token id.
    pub unk: Option<u32>,
    /// Padding id.
    pub pad: Option<u32>,
    /// Whether a prompt starts with BOS (`tokenizer.ggml.add_bos_token`).
    pub add_bos: bool,
    /// Whether a prompt ends with EOS (`tokenizer.ggml.add_eos_token`).
    pub add_eos: bool,
    /// Whether a space is put before text at the start and after special tokens (SentencePiece).
    pub add_space_prefix: bool,
    /// `tokenizer.chat_template` (Jinja).
    pub chat_template: Option<String>,
}

impl GgufVocab {
    /// Reads the `tokenizer.*` keys of `md` (the metadata of `path`, named in errors).
    pub fn read(path: &Path, md: &HashMap<String, Value>) -> Result<Self, LoadError> {
        let r = Reader { path, md };
        let model = r.string("tokenizer.ggml.model")?;
        let kind = match model.as_str() {
            "llama" => VocabKind::Llama,
            "gpt2" => VocabKind::Gpt2,
            other => {
                return Err(r.err(
                    "tokenizer.ggml.model",
                    format!(
                        "'{other}' is not a tokenizer labelmill can build (it reads 'llama', \
                         SentencePiece, and 'gpt2', byte-level BPE); pass a matching \
                         --tokenizer tokenizer.json"
                    ),
                ))
            }
        };
        let tokens = r.strings("tokenizer.ggml.tokens")?;
        if tokens.is_empty() {
            return Err(r.err("tokenizer.ggml.tokens", "the token list is empty".into()));
        }
        let n = tokens.len();
        r.unique(&tokens)?;
        let scores = r.scores(n)?;
        let types = r.types(&tokens)?;
        let (pre, pre_tokenizer, merges) = match kind {
            VocabKind::Llama => (None, None, Vec::new()),
            VocabKind::Gpt2 => {
                let pre = r.opt_string("tokenizer.ggml.pre")?;
                let name = pre.clone().unwrap_or_else(|| {
                    tracing::warn!(
                        "{}: no tokenizer.ggml.pre; using llama.cpp's 'default' pre-tokenizer",
                        path.display()
                    );
                    "default".into()
                });
                let p = pretok::lookup(&name).ok_or_else(|| {
                    r.err(
                        "tokenizer.ggml.pre",
                        format!(
                            "unknown pre-tokenizer '{name}' (known: {}); labelmill does not guess \
                             a tokenizer's word splitting",
                            pretok::names().join(", ")
                        ),
                    )
                })?;
                (pre, Some(p), r.merges(&tokens)?)
            }
        };
        let (def_bos, def_eos, def_unk) = match kind {
            VocabKind::Llama => (Some(1), Some(2), Some(0)),
            VocabKind::Gpt2 => (Some(11), Some(11), None),
        };
        // A default that does not fit this vocabulary is dropped, as llama.cpp does; an id the
        // file gives must fit.
        let fit = |id: Option<u32>| id.filter(|i| (*i as usize) < n);
        let bos = r.id("tokenizer.ggml.bos_token_id", n)?.or(fit(def_bos));
        let eos = r.id("tokenizer.ggml.eos_token_id", n)?.or(fit(def_eos));
        let unk = r.id("tokenizer.ggml.unknown_token_id", n)?.or(fit(def_unk));
        let pad = r.id("tokenizer.ggml.padding_token_id", n)?;
        let (def_add_bos, def_prefix) = match kind {
            VocabKind::Llama => (true, true),
            VocabKind::Gpt2 => (pre_tokenizer.is_some_and(|p| p.add_bos), false),
        };
        let add_bos = r.bool_or("tokenizer.ggml.add_bos_token", def_add_bos)?;
        let add_eos = r.bool_or("tokenizer.ggml.add_eos_token", false)?;
        let add_space_prefix = r.bool_or("tokenizer.ggml.add_space_prefix", def_prefix)?;
        if add_bos && bos.is_none() {
            return Err(r.err(
                "tokenizer.ggml.add_bos_token",
                "true, but the file has no tokenizer.ggml.bos_token_id".into(),
            ));
        }
        Ok(Self {
            kind,
            pre,
            pre_tokenizer,
            tokens,
            scores,
            types,
            merges,
            bos,
            eos,
            unk,
            pad,
            add_bos,
            add_eos,
            add_space_prefix,
            chat_template: r.opt_string("tokenizer.chat_template")?,
        })
    }

    /// Number of tokens.
    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    /// Whether the vocabulary is empty (never, once read).
    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// The text of token `id` (empty when out of range).
    pub fn text(&self, id: Option<u32>) -> Option<&str> {
        id.and_then(|i| self.tokens.get(i as usize))
            .map(String::as_str)
    }

    /// How many tokens of each type.
    pub fn type_counts(&self) -> Vec<(TokenType, usize)> {
        let mut counts: Vec<(TokenType, usize)> = Vec::new();
        for t in &self.types {
            match counts.iter_mut().find(|(k, _)| k == t) {
                Some((_, c)) => *c += 1,
                None => counts.push((*t, 1)),
            }
        }
        counts
    }
}

/// Typed access to the `tokenizer.*` keys, every error naming its key.
struct Reader<'a> {
    path: &'a Path,
    md: &'a HashMap<String, Value>,
}

impl Reader<'_> {
    fn err(&self, key: &str, reason: String) -> LoadError {
        LoadError::Vocab {
            path: PathBuf::from(self.path),
            key: key.to_string(),
            reason,
        }
    }

    fn string(&self, key: &str) -> Result<String, LoadError> {
        self.opt_string(key)?.ok_or_else(|| {
            self.err(
                key,
                "missing: the file carries no tokenizer (give --tokenizer tokenizer.json)".into(),
            )
        })
    }

    fn opt_string(&self, key: &str) -> Result<Option<String>, LoadError> {
        match self.md.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(self.err(key, "not a string".into())),
        }
    }

    fn array(&self, key: &str) -> Result<Option<&Vec<Value>>, LoadError> {
        match self.md.get(key) {
            None => Ok(None),
            Some(Value::Array(v)) => Ok(Some(v)),
            Some(_) => Err(self.err(key, "not an array".into())),
        }
    }

    fn strings(&self, key: &str) -> Result<Vec<String>, LoadError> {
        let v = self
            .array(key)?
            .ok_or_else(|| self.err(key, "missing".into()))?;
        v.iter()
            .enumerate()
            .map(|(i, x)| match x {
                Value::String(s) => Ok(s.clone()),
                _ => Err(self.err(key, format!("entry {i} is not a string"))),
            })
            .collect()
    }

    fn unique(&self, tokens: &[String]) -> Result<(), LoadError> {
        let mut seen: HashMap<&str, usize> = HashMap::with_capacity(tokens.len());
        for (i, t) in tokens.iter().enumerate() {
            if let Some(j) = seen.insert(t.as_str(), i) {
                return Err(self.err(
                    "tokenizer.ggml.tokens",
                    format!("token {t:?} appears twice (ids {j} and {i})"),
                ));
            }
        }
        Ok(())
    }

    fn scores(&self, n: usize) -> Result<Vec<f32>, LoadError> {
        let key = "tokenizer.ggml.scores";
        let Some(v) = self.array(key)? else {
            return Ok(vec![0.0; n]);
        };
        if v.len() != n {
            return Err(self.err(key, format!("{} scores for {n} tokens", v.len())));
        }
        v.iter()
            .enumerate()
            .map(|(i, x)| match x {
                Value::F32(s) if s.is_finite() => Ok(*s),
                Value::F64(s) if s.is_finite() => Ok(*s as f32),
                Value::I32(s) => Ok(*s as f32),
                _ => Err(self.err(key, format!("entry {i} is not a finite number"))),
            })
            .collect()
    }

    fn types(&self, tokens: &[String]) -> Result<Vec<TokenType>, LoadError> {
        let key = "tokenizer.ggml.token_type";
        let n = tokens.len();
        let mut types = match self.array(key)? {
            None => vec![TokenType::Normal; n],
            Some(v) if v.len() != n => {
                return Err(self.err(key, format!("{} types for {n} tokens", v.len())))
            }
            Some(v) => v
                .iter()
                .enumerate()
                .map(|(i, x)| {
                    let code = match x {
                        Value::I32(c) => *c as i64,
                        Value::U32(c) => *c as i64,
                        Value::I8(c) => *c as i64,
                        Value::U8(c) => *c as i64,
                        _ => return Err(self.err(key, format!("entry {i} is not an integer"))),
                    };
                    TokenType::from_code(code).ok_or_else(|| {
                        self.err(key, format!("entry {i} is {code}, not a type (0..=6)"))
                    })
                })
                .collect::<Result<Vec<_>, _>>()?,
        };
        for (t, text) in types.iter_mut().zip(tokens) {
            if CONTROL_BY_TEXT.contains(&text.as_str()) && *t != TokenType::Control {
                tracing::warn!(
                    token = %text,
                    "a turn-ending token is not typed control in the file; treating it as control, as llama.cpp does"
                );
                *t = TokenType::Control;
            }
        }
        Ok(types)
    }

    fn merges(&self, tokens: &[String]) -> Result<Vec<(String, String)>, LoadError> {
        let key = "tokenizer.ggml.merges";
        let raw = self.strings(key)?;
        let known: HashSet<&str> = tokens.iter().map(String::as_str).collect();
        raw.iter()
            .enumerate()
            .map(|(i, m)| {
                // Split at the first space after the first character, as llama.cpp does.
                let split = m.char_indices().skip(1).find(|(_, c)| *c == ' ');
                let Some((at, _)) = split else {
                    return Err(self.err(key, format!("entry {i} ({m:?}) is not two pieces")));
                };
                let (a, b) = (&m[..at], &m[at + 1..]);
                for part in [a, b, &format!("{a}{b}")] {
                    if !known.contains(part) {
                        return Err(self.err(
                            key,
                            format!("entry {i} ({m:?}): '{part}' is not in tokenizer.ggml.tokens"),
                        ));
                    }
                }
                Ok((a.to_string(), b.to_string()))
            })
            .collect()
    }

    fn id(&self, key: &str, n: usize) -> Result<Option<u32>, LoadError> {
        let Some(v) = self.md.get(key) else {
            return Ok(None);
        };
        let id = match v {
            Value::U32(x) => *x as i64,
            Value::I32(x) => *x as i64,
            Value::U64(x) => i64::try_from(*x).unwrap_or(i64::MAX),
            Value::I64(x) => *x,
            Value::U16(x) => *x as i64,
            Value::U8(x) => *x as i64,
            _ => return Err(self.err(key, "not an integer".into())),
        };
        if id < 0 || id as usize >= n {
            return Err(self.err(key, format!("id {id} is outside the {n}-token vocabulary")));
        }
        Ok(Some(id as u32))
    }

    fn bool_or(&self, key: &str, default: bool) -> Result<bool, LoadError> {
        match self.md.get(key) {
            None => Ok(default),
            Some(Value::Bool(b)) => Ok(*b),
            Some(_) => Err(self.err(key, "not a boolean".into())),
        }
    }
}
