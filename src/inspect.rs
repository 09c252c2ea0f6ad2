//! `labelmill inspect MODEL.gguf`: what a GGUF file holds and what serving it costs, read from its
//! header without loading the weights.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use crate::engine::load::{GgufFile, Hparams, LoadError};
use crate::engine::tokenizer::{SpecialToken, TextTokenizer, TokenizerInfo};

/// Everything `inspect` reports.
#[derive(Debug, Clone, serde::Serialize)]
pub struct InspectReport {
    /// The file's path.
    pub file: String,
    /// Its size in bytes.
    pub file_bytes: u64,
    /// `general.architecture` (always `llama`: other architectures are refused).
    pub architecture: String,
    /// `general.name`, when given.
    pub name: Option<String>,
    /// The hyper-parameters.
    pub hparams: Hparams,
    /// Tensors per quantisation type (`Q4_1`, `F32`, ...).
    pub tensor_types: BTreeMap<String, usize>,
    /// Number of tensors.
    pub tensors: usize,
    /// Whether the output head is the token embedding (no `output.weight`).
    pub tied_embeddings: bool,
    /// Bytes of all tensors as stored (the weights' memory when served `quantized`).
    pub weight_bytes: u64,
    /// Bytes of labelmill's KV cache per token: K and V, f32, every layer.
    pub kv_bytes_per_token: u64,
    /// The tokenizer built from the file's metadata.
    pub tokenizer: Option<TokenizerInfo>,
    /// Why no tokenizer could be built from the file (a `tokenizer.json` is then needed).
    pub tokenizer_error: Option<String>,
    /// Characters of `tokenizer.chat_template`; `None` when the file has none.
    pub chat_template_chars: Option<usize>,
}

/// Reads the header of the GGUF at `path`.
pub fn inspect(path: &Path) -> Result<InspectReport, LoadError> {
    let file = GgufFile::open(path)?;
    let file_bytes = std::fs::metadata(path)
        .map_err(|source| LoadError::Io {
            path: path.to_path_buf(),
            source,
        })?
        .len();
    let mut tensor_types = BTreeMap::new();
    let mut weight_bytes = 0;
    let table = file.tensor_table();
    for (_, dtype, bytes) in &table {
        *tensor_types.entry(format!("{dtype:?}")).or_insert(0) += 1;
        weight_bytes += bytes;
    }
    let hp = file.hparams.clone();
    let kv_bytes_per_token = 2 * (hp.n_layers * hp.n_kv_heads * hp.head_dim() * 4) as u64;
    let (tokenizer, tokenizer_error) = match TextTokenizer::for_model(&file, None) {
        Ok(t) => (Some(t.info().clone()), None),
        Err(e) => (None, Some(e.to_string())),
    };
    let md = file.metadata();
    let string = |k: &str| match md.get(k) {
        Some(candle_core::quantized::gguf_file::Value::String(s)) => Some(s.clone()),
        _ => None,
    };
    Ok(InspectReport {
        file: path.display().to_string(),
        file_bytes,
        architecture: string("general.architecture").unwrap_or_default(),
        name: string("general.name"),
        tensors: table.len(),
        tied_embeddings: !file.has_tensor("output.weight"),
        chat_template_chars: string("tokenizer.chat_template").map(|t| t.chars().count()),
        hparams: hp,
        tensor_types,
        weight_bytes,
        kv_bytes_per_token,
        tokenizer,
        tokenizer_error,
    })
}

impl InspectReport {
    /// The report as aligned text lines.
    pub fn text(&self) -> String {
        let hp = &self.hparams;
        let mut out = String::new();
        let mut line = |k: &str, v: String| {
            let _ = writeln!(out, "{k:<15} {v}");
        };
        line(
            "file",
            format!("{} ({})", self.file, bytes(self.file_bytes)),
        );
        let name = self
            .name
            .as_deref()
            .map(|n| format!(" ({n})"))
            .unwrap_or_default();
        line("architecture", format!("{}{name}", self.architecture));
        let gqa = if hp.n_kv_heads < hp.n_heads {
            ", grouped-query"
        } else {
            ""
        };
        line(
            "shape",
            format!(
                "{} layers, dim {}, ffn {}, {} heads of {}, {} KV heads{gqa}, vocabulary {}",
                hp.n_layers,
                hp.dim,
                hp.ffn_dim,
                hp.n_heads,
                hp.head_dim(),
                hp.n_kv_heads,
                hp.vocab_size
            ),
        );
        line(
            "context",
            format!(
                "{} tokens, rope base {}, RMS epsilon {:e}",
                hp.context_length, hp.rope_freq_base, hp.rms_eps as f32
            ),
        );
        let mut types: Vec<_> = self.tensor_types.iter().collect();
        types.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
        let types: Vec<String> = types.iter().map(|(t, n)| format!("{n} {t}")).collect();
        let tied = if self.tied_embeddings {
            "; output head tied to token_embd"
        } else {
            ""
        };
        line(
            "tensors",
            format!("{}: {}{tied}", self.tensors, types.join(", ")),
        );
        line("weights", format!("{} as stored", bytes(self.weight_bytes)));
        line(
            "KV cache",
            format!(
                "{} per token (K and V in f32: {} layers x {} x 2 x 4 B)",
                bytes(self.kv_bytes_per_token),
                hp.n_layers,
                hp.n_kv_heads * hp.head_dim()
            ),
        );
        match (&self.tokenizer, &self.tokenizer_error) {
            (Some(t), _) => tokenizer_lines(t, &mut line),
            (None, Some(e)) => line("tokenizer", format!("none usable: {e}")),
            (None, None) => {}
        }
        line(
            "chat template",
            match self.chat_template_chars {
                Some(n) => format!("yes ({n} characters): preset = \"model\" renders it"),
                None => "none (preset = \"model\" is not available)".into(),
            },
        );
        out
    }
}

fn tokenizer_lines(t: &TokenizerInfo, line: &mut impl FnMut(&str, String)) {
    let kind = match t.kind {
        crate::engine::tokenizer::vocab::VocabKind::Llama => {
            "llama (SentencePiece, score-ranked merges)"
        }
        crate::engine::tokenizer::vocab::VocabKind::Gpt2 => "gpt2 (byte-level BPE)",
    };
    let pre = t
        .pre
        .as_deref()
        .map(|p| format!(", pre '{p}'"))
        .unwrap_or_default();
    line(
        "tokenizer",
        format!("{kind}{pre}, {} tokens, {} merges", t.size, t.merges),
    );
    let tok = |name: &str, s: &Option<SpecialToken>| {
        s.as_ref().map(|s| format!("{name} {} {:?}", s.id, s.text))
    };
    let specials: Vec<String> = [
        tok("BOS", &t.bos),
        tok("EOS", &t.eos),
        tok("UNK", &t.unk),
        tok("PAD", &t.pad),
    ]
    .into_iter()
    .flatten()
    .collect();
    line("special tokens", specials.join(", "));
    line(
        "prompt start",
        format!(
            "BOS {}, space prefix {}",
            if t.add_bos { "added" } else { "not added" },
            if t.add_space_prefix { "yes" } else { "no" }
        ),
    );
    let types: Vec<String> = t
        .token_types
        .iter()
        .map(|(k, n)| format!("{k} {n}"))
        .collect();
    line("token types", types.join(", "));
}

/// `98.3 MB`, `180 KiB`-style sizes.
fn bytes(n: u64) -> String {
    const KIB: f64 = 1024.0;
    let x = n as f64;
    if x >= KIB * KIB * KIB {
        format!("{:.2} GiB", x / (KIB * KIB * KIB))
    } else if x >= KIB * KIB {
        format!("{:.1} MiB", x / (KIB * KIB))
    } else if x >= KIB {
        format!("{:.1} KiB", x / KIB)
    } else {
        format!("{n} B")
    }
}
