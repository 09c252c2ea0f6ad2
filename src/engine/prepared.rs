//! A task tokenised for one model: prefix and suffix ids, label token sequences, truncation.

use crate::task::{Calibration, TaskError, TaskSpec, Truncation};

use super::scoring::LabelTrie;
use super::tokenizer::{TextTokenizer, TokenizeError};

/// A task ready to run: everything the engine needs, as token ids.
#[derive(Debug, Clone)]
pub struct PreparedTask {
    /// Task name.
    pub name: String,
    /// The model's prompt start (BOS when it adds one) and the tokens of everything before the
    /// document (the cached part).
    pub prefix_ids: Vec<u32>,
    /// Tokens between the document and the label.
    pub suffix_ids: Vec<u32>,
    /// The end of the prefix text: documents are tokenised after it, so that their first token is
    /// the one a tokenisation of the whole prompt would give.
    doc_context: String,
    /// Tokens of `doc_context` alone.
    doc_context_ids: Vec<u32>,
    /// Spaces cut from the end of the prefix: they belong to the document's first word.
    doc_lead: String,
    /// Label names, in task order.
    pub labels: Vec<String>,
    /// Each label's continuation tokens.
    pub label_ids: Vec<Vec<u32>>,
    /// The labels as a token trie.
    pub trie: LabelTrie,
    /// Longest document in tokens.
    pub max_doc_tokens: usize,
    /// Policy for longer documents.
    pub truncation: Truncation,
    /// Softmax temperature over the labels.
    pub temperature: f32,
    /// The task's label-bias correction ([`crate::engine::Engine::prepare`] measures it).
    pub calibration: Calibration,
    /// The mean label distribution of the content-free documents, measured when the task's
    /// calibration asks for it: each document's label probabilities are divided by it.
    pub content_free: Option<Vec<f32>>,
    /// The task's per-label biases, in label order.
    pub bias: Vec<f32>,
    /// The task's LoRA adapter and scale ([`crate::engine::Engine::prepare`] loads it).
    pub adapter: Option<super::lora::ActiveLora>,
}

/// Why a document cannot be classified under a task. Each has a stable `code()`.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum DocError {
    /// The text is empty or only whitespace.
    #[error("the document text is empty")]
    EmptyText,
    /// Longer than `max_doc_tokens` under the `reject` policy.
    #[error(
        "the document has {tokens} tokens; task '{task}' allows {max} and rejects longer documents"
    )]
    TokenLimitExceeded {
        /// The task.
        task: String,
        /// Document tokens.
        tokens: usize,
        /// The task's limit.
        max: usize,
    },
    /// The tokenizer failed on this text.
    #[error("{0}")]
    Tokenize(String),
    /// Plain-text tokenisation gave a control token (a tokenizer.json that spells one from text).
    #[error("the document text tokenised to control token {id}; documents may not contain control tokens")]
    SpecialToken {
        /// The token id.
        id: u32,
    },
}

impl DocError {
    /// The stable error code (dead-letter reason, metric label).
    pub fn code(&self) -> &'static str {
        match self {
            Self::EmptyText => "empty_text",
            Self::TokenLimitExceeded { .. } => "token_limit_exceeded",
            Self::Tokenize(_) => "tokenize_failed",
            Self::SpecialToken { .. } => "control_token_in_text",
        }
    }
}

/// A document's tokens after the truncation policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FittedDoc {
    /// The tokens to run.
    pub ids: Vec<u32>,
    /// Tokens the document had before truncation.
    pub original_tokens: usize,
    /// Whether tokens were dropped.
    pub truncated: bool,
}

impl PreparedTask {
    /// Tokenises `spec` with `tok` (its template with special tokens parsed); `context_length`
    /// bounds the prompt.
    pub fn new(
        spec: &TaskSpec,
        tok: &TextTokenizer,
        context_length: usize,
    ) -> Result<Self, TaskError> {
        let invalid = |reason: String| TaskError::Invalid {
            task: spec.name.clone(),
            reason,
        };
        let parts = spec.prompt_for(tok.chat_format())?;
        let template = |s: &str| tok.encode_template(s).map_err(|e| invalid(e.to_string()));
        // SentencePiece-style tokenizers attach a space to the word after it ("▁word"): spaces at
        // the end of the prefix go with the document, or the model would see two spaces.
        let core = parts.prefix.trim_end_matches(' ');
        let doc_lead = parts.prefix[core.len()..].to_string();
        let mut prefix_ids = tok.start().to_vec();
        if !core.is_empty() {
            prefix_ids.extend(template(core)?);
        }
        // Text is tokenised in stretches between special tokens: the document joins the stretch
        // that ends the prefix, and nothing before it.
        let doc_context = tail(tok.plain_tail(core), 32).to_string();
        let doc_context_ids = if doc_context.is_empty() {
            Vec::new()
        } else {
            tok.encode(&doc_context)
                .map_err(|e| invalid(e.to_string()))?
        };
        let as_template = |s: &str| tok.encode_template(s);
        let suffix_ids = if parts.suffix.is_empty() {
            Vec::new()
        } else {
            // What precedes the suffix is a document's last word: a letter stands in for it.
            let ctx = template(SUFFIX_CONTEXT)?;
            match in_context(&as_template, SUFFIX_CONTEXT, &ctx, &parts.suffix)
                .map_err(|e| invalid(e.to_string()))?
            {
                Some(ids) => ids,
                None => template(&parts.suffix)?,
            }
        };
        // Labels follow the suffix as written (its tokens alone, unlike `suffix_ids`, which are the
        // suffix's tokens after a document): tokenised once, shared by every label.
        let suffix_alone = if parts.suffix.is_empty() {
            Vec::new()
        } else {
            template(&parts.suffix)?
        };
        let mut label_ids = Vec::with_capacity(spec.labels.len());
        for l in &spec.labels {
            let ids = label_tokens(&as_template, &parts.suffix, &suffix_alone, &l.verbaliser())
                .map_err(|e| invalid(e.to_string()))?;
            if ids.is_empty() {
                return Err(invalid(format!(
                    "label '{}' tokenises to nothing",
                    l.name()
                )));
            }
            if let Some(j) = label_ids.iter().position(|x: &Vec<u32>| *x == ids) {
                return Err(invalid(format!(
                    "labels '{}' and '{}' have the same tokens {:?}: the model cannot tell them apart",
                    spec.labels[j].name(),
                    l.name(),
                    ids
                )));
            }
            label_ids.push(ids);
        }
        let trie = LabelTrie::new(&label_ids);
        let bias: Vec<f32> = spec
            .labels
            .iter()
            .map(|l| spec.bias.get(l.name()).copied().unwrap_or(0.0))
            .collect();
        let needed = prefix_ids.len() + spec.max_doc_tokens + suffix_ids.len() + trie.max_depth();
        if needed > context_length {
            return Err(invalid(format!(
                "prefix ({}) + max_doc_tokens ({}) + suffix ({}) + longest label ({}) = {needed} tokens, \
                 more than the model's context of {context_length}",
                prefix_ids.len(),
                spec.max_doc_tokens,
                suffix_ids.len(),
                trie.max_depth()
            )));
        }
        Ok(Self {
            name: spec.name.clone(),
            prefix_ids,
            suffix_ids,
            doc_context,
            doc_context_ids,
            doc_lead,
            labels: spec.labels.iter().map(|l| l.name().to_string()).collect(),
            label_ids,
            trie,
            max_doc_tokens: spec.max_doc_tokens,
            truncation: spec.truncation,
            temperature: spec.temperature,
            calibration: spec.calibration,
            content_free: None,
            bias,
            adapter: None,
        })
    }

    /// Added to each label's log-probability before the temperature: the bias, and the offsets
    /// that divide out the content-free distribution when it was measured.
    pub fn label_offsets(&self) -> Vec<f32> {
        match &self.content_free {
            Some(dist) => self
                .bias
                .iter()
                .zip(dividing_out(dist))
                .map(|(b, o)| b + o)
                .collect(),
            None => self.bias.clone(),
        }
    }

    /// A task given directly as token ids (synthetic workloads: `bench`, criterion).
    pub fn from_ids(
        name: &str,
        prefix_ids: Vec<u32>,
        suffix_ids: Vec<u32>,
        labels: Vec<(String, Vec<u32>)>,
    ) -> Self {
        let n = labels.len();
        let (labels, label_ids): (Vec<String>, Vec<Vec<u32>>) = labels.into_iter().unzip();
        Self {
            name: name.to_string(),
            prefix_ids,
            suffix_ids,
            doc_context: String::new(),
            doc_context_ids: Vec::new(),
            doc_lead: String::new(),
            trie: LabelTrie::new(&label_ids),
            labels,
            label_ids,
            max_doc_tokens: usize::MAX,
            truncation: Truncation::Head,
            temperature: 1.0,
            calibration: Calibration::None,
            content_free: None,
            bias: vec![0.0; n],
            adapter: None,
        }
    }

    /// Applies the truncation policy to a document's tokens.
    pub fn fit(&self, mut ids: Vec<u32>) -> Result<FittedDoc, DocError> {
        let n = ids.len();
        if n == 0 {
            return Err(DocError::EmptyText);
        }
        if n <= self.max_doc_tokens {
            return Ok(FittedDoc {
                ids,
                original_tokens: n,
                truncated: false,
            });
        }
        match self.truncation {
            Truncation::Head => ids.truncate(self.max_doc_tokens),
            Truncation::Tail => {
                ids.drain(..n - self.max_doc_tokens);
            }
            Truncation::Reject => {
                return Err(DocError::TokenLimitExceeded {
                    task: self.name.clone(),
                    tokens: n,
                    max: self.max_doc_tokens,
                })
            }
        }
        Ok(FittedDoc {
            ids,
            original_tokens: n,
            truncated: true,
        })
    }

    /// Tokenises and fits a document text. The text is untrusted: it is tokenised as plain text,
    /// so it can never spell a control token (`</s>`, `<|im_end|>`) of the template around it.
    pub fn encode_doc(&self, tok: &TextTokenizer, text: &str) -> Result<FittedDoc, DocError> {
        if text.trim().is_empty() {
            return Err(DocError::EmptyText);
        }
        let err = |e: TokenizeError| DocError::Tokenize(e.to_string());
        let text = format!("{}{text}", self.doc_lead);
        let plain = |s: &str| tok.encode(s);
        let ids = match in_context(&plain, &self.doc_context, &self.doc_context_ids, &text)
            .map_err(err)?
        {
            Some(ids) => ids,
            None => tok.encode(&text).map_err(err)?,
        };
        // Plain-text tokenisation cannot produce these; if a tokenizer.json ever did, the
        // document is refused rather than run with a forged turn marker.
        if let Some(&id) = ids.iter().find(|&&id| tok.is_special(id)) {
            return Err(DocError::SpecialToken { id });
        }
        self.fit(ids)
    }
}

/// The label offsets that divide label probabilities by the distribution `dist`: `-ln p`.
pub fn dividing_out(dist: &[f32]) -> Vec<f32> {
    dist.iter().map(|p| -p.max(1e-30).ln()).collect()
}

/// A tokenisation mode: plain text or template.
type Encode<'a> = dyn Fn(&str) -> Result<Vec<u32>, TokenizeError> + 'a;

/// Stands in for the end of a document when the suffix is tokenised.
const SUFFIX_CONTEXT: &str = "x";

/// The tokens of `verbaliser` as the model sees them right after `suffix`, falling back to the
/// verbaliser alone when the joint tokenisation merges across the boundary.
/// `suffix_ids` are the suffix's tokens alone.
fn label_tokens(
    enc: &Encode<'_>,
    suffix: &str,
    suffix_ids: &[u32],
    verbaliser: &str,
) -> Result<Vec<u32>, TokenizeError> {
    match in_context(enc, suffix, suffix_ids, verbaliser)? {
        Some(ids) => Ok(ids),
        None => {
            tracing::warn!(
                suffix,
                verbaliser,
                "label tokenisation merges with the suffix; scoring the label tokenised alone"
            );
            enc(verbaliser)
        }
    }
}

/// Tokens of `text` as they come out when `text` follows `context` (whose tokens alone are
/// `context_ids`): `None` when the joint tokenisation merges across the boundary.
fn in_context(
    enc: &Encode<'_>,
    context: &str,
    context_ids: &[u32],
    text: &str,
) -> Result<Option<Vec<u32>>, TokenizeError> {
    if context.is_empty() {
        return enc(text).map(Some);
    }
    let joint = enc(&format!("{context}{text}"))?;
    Ok(
        (joint.len() > context_ids.len() && joint[..context_ids.len()] == *context_ids)
            .then(|| joint[context_ids.len()..].to_vec()),
    )
}

/// The last `n` characters of `s`.
fn tail(s: &str, n: usize) -> &str {
    let start = s
        .char_indices()
        .rev()
        .nth(n.saturating_sub(1))
        .map(|(i, _)| i)
        .unwrap_or(0);
    &s[start..]
}
