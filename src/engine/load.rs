//! Reading a LLaMA-architecture GGUF file: hyper-parameters from `llama.*` metadata, tensors, model id.

use std::collections::HashMap;
use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::Device;
use sha2::{Digest, Sha256};

/// Why a model or tokenizer could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The path does not exist.
    #[error("model file {0} does not exist")]
    NotFound(PathBuf),
    /// The file exists but could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The bytes are not a well-formed GGUF file (wrong magic, truncated, bad offsets).
    #[error("{path} is not a valid GGUF file (truncated or corrupt): {reason}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What the parser found.
        reason: String,
    },
    /// `general.architecture` is not `llama`.
    #[error("{path} is a '{arch}' model; labelmill runs LLaMA-architecture GGUF files (general.architecture = \"llama\")")]
    Architecture {
        /// The file.
        path: PathBuf,
        /// The architecture the file declares.
        arch: String,
    },
    /// A required metadata key is missing or has the wrong type.
    #[error("{path}: metadata key '{key}' is missing or not a {expected}")]
    Metadata {
        /// The file.
        path: PathBuf,
        /// The key.
        key: String,
        /// The type it should have.
        expected: &'static str,
    },
    /// The hyper-parameters are inconsistent with each other or with the tensors.
    #[error("{path}: inconsistent model: {reason}")]
    Shape {
        /// The file.
        path: PathBuf,
        /// What does not fit.
        reason: String,
    },
    /// A tensor could not be read or used.
    #[error("{path}: tensor '{name}': {reason}")]
    Tensor {
        /// The file.
        path: PathBuf,
        /// The tensor name.
        name: String,
        /// What went wrong.
        reason: String,
    },
    /// The tokenizer file is missing or invalid.
    #[error("tokenizer {path}: {reason}")]
    Tokenizer {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// Tokenizer and model disagree on the vocabulary.
    #[error("tokenizer {path} has a vocabulary of {tokenizer} tokens but the model's embedding has {model} rows: they do not belong together")]
    VocabMismatch {
        /// The tokenizer file.
        path: PathBuf,
        /// Tokenizer vocabulary size.
        tokenizer: usize,
        /// Model vocabulary size.
        model: usize,
    },
    /// The tokenizer metadata of the GGUF is missing or inconsistent.
    #[error("{path}: tokenizer metadata '{key}': {reason}")]
    Vocab {
        /// The file.
        path: PathBuf,
        /// The metadata key at fault.
        key: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A `tokenizer.json` given beside a GGUF tokenises differently from the GGUF's own tokenizer.
    #[error("tokenizer {path} does not belong to this model: {reason}")]
    TokenizerMismatch {
        /// The tokenizer file.
        path: PathBuf,
        /// How they differ.
        reason: String,
    },
    /// A candle error while building the model.
    #[error("building the model from {path}: {source}")]
    Candle {
        /// The file.
        path: PathBuf,
        /// The candle error.
        source: candle_core::Error,
    },
}

/// The LLaMA hyper-parameters, read from `llama.*` keys.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Hparams {
    /// Vocabulary size (rows of `token_embd.weight`).
    pub vocab_size: usize,
    /// `llama.embedding_length`.
    pub dim: usize,
    /// `llama.block_count`.
    pub n_layers: usize,
    /// `llama.attention.head_count`.
    pub n_heads: usize,
    /// `llama.attention.head_count_kv` (grouped-query attention when smaller than `n_heads`).
    pub n_kv_heads: usize,
    /// `llama.feed_forward_length`.
    pub ffn_dim: usize,
    /// `llama.context_length`.
    pub context_length: usize,
    /// `llama.rope.freq_base` (10000 for LLaMA 2).
    pub rope_freq_base: f32,
    /// `llama.attention.layer_norm_rms_epsilon`.
    pub rms_eps: f64,
    /// `tokenizer.ggml.bos_token_id` (1 for LLaMA 2).
    pub bos_token_id: u32,
}

impl Hparams {
    /// Dimension of one attention head.
    pub fn head_dim(&self) -> usize {
        self.dim / self.n_heads
    }

    /// Weights of one block's projections: q and o (`dim²` each), k and v (`dim·kv_dim` each),
    /// gate, up and down (`dim·ffn` each).
    pub fn block_weights(&self) -> u64 {
        let (dim, kvd, ffn) = (
            self.dim as u64,
            (self.n_kv_heads * self.head_dim()) as u64,
            self.ffn_dim as u64,
        );
        2 * dim * dim + 2 * dim * kvd + 3 * dim * ffn
    }

    /// Weights of every block's projections (the output head is not counted: it stays quantised).
    pub fn projection_weights(&self) -> u64 {
        self.n_layers as u64 * self.block_weights()
    }
}

/// A GGUF file opened and checked: metadata parsed, tensors not yet read.
pub struct GgufFile {
    path: PathBuf,
    content: Content,
    reader: BufReader<File>,
    /// Hyper-parameters.
    pub hparams: Hparams,
    /// Quantisation of the attention/FFN weights (from `blk.0.attn_q.weight`).
    pub quant: GgmlDType,
    /// A stable id of this model: hash of the metadata, tensor table and file size.
    pub model_id: String,
}

impl GgufFile {
    /// Opens `path`, parses the header and validates the architecture, hyper-parameters and layout.
    pub fn open(path: &Path) -> Result<Self, LoadError> {
        if !path.exists() {
            return Err(LoadError::NotFound(path.to_path_buf()));
        }
        let io = |source| LoadError::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = File::open(path).map_err(io)?;
        let file_len = file.metadata().map_err(io)?.len();
        let mut reader = BufReader::new(file);
        let content = Content::read(&mut reader).map_err(|e| LoadError::Corrupt {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        check_tensor_extents(path, &content, file_len)?;
        let meta = Meta {
            path,
            md: &content.metadata,
        };
        let arch = meta.string("general.architecture")?;
        if arch != "llama" {
            return Err(LoadError::Architecture {
                path: path.to_path_buf(),
                arch,
            });
        }
        if content.tensor_infos.is_empty() {
            return Err(LoadError::Shape {
                path: path.to_path_buf(),
                reason: "the file holds no tensors (a vocabulary-only GGUF?)".into(),
            });
        }
        let embd = content
            .tensor_infos
            .get("token_embd.weight")
            .ok_or_else(|| LoadError::Tensor {
                path: path.to_path_buf(),
                name: "token_embd.weight".into(),
                reason: "missing".into(),
            })?;
        let (vocab_size, embd_dim) = embd.shape.dims2().map_err(|e| LoadError::Tensor {
            path: path.to_path_buf(),
            name: "token_embd.weight".into(),
            reason: e.to_string(),
        })?;
        let dim = meta.usize("llama.embedding_length")?;
        let n_heads = meta.usize("llama.attention.head_count")?;
        let hparams = Hparams {
            vocab_size,
            dim,
            n_layers: meta.usize("llama.block_count")?,
            n_heads,
            n_kv_heads: meta.usize_or("llama.attention.head_count_kv", n_heads)?,
            ffn_dim: meta.usize("llama.feed_forward_length")?,
            context_length: meta.usize_or("llama.context_length", 4096)?,
            rope_freq_base: meta.f32_or("llama.rope.freq_base", 10_000.0)?,
            rms_eps: meta.f32_or("llama.attention.layer_norm_rms_epsilon", 1e-5)? as f64,
            bos_token_id: meta.usize_or("tokenizer.ggml.bos_token_id", 1)? as u32,
        };
        let shape_err = |reason: String| LoadError::Shape {
            path: path.to_path_buf(),
            reason,
        };
        if embd_dim != hparams.dim {
            return Err(shape_err(format!(
                "token_embd.weight has width {embd_dim}, llama.embedding_length says {dim}"
            )));
        }
        if hparams.n_heads == 0
            || !hparams.dim.is_multiple_of(hparams.n_heads)
            || !hparams.head_dim().is_multiple_of(2)
        {
            return Err(shape_err(format!(
                "embedding length {} is not an even multiple of {} heads",
                hparams.dim, hparams.n_heads
            )));
        }
        if hparams.n_kv_heads == 0 || !hparams.n_heads.is_multiple_of(hparams.n_kv_heads) {
            return Err(shape_err(format!(
                "{} query heads cannot be grouped over {} kv heads",
                hparams.n_heads, hparams.n_kv_heads
            )));
        }
        let rope_dims = meta.usize_or("llama.rope.dimension_count", hparams.head_dim())?;
        if rope_dims != hparams.head_dim() {
            return Err(shape_err(format!(
                "partial rotary embeddings ({rope_dims} of {} dims) are not LLaMA 2",
                hparams.head_dim()
            )));
        }
        let quant = content
            .tensor_infos
            .get("blk.0.attn_q.weight")
            .map(|t| t.ggml_dtype)
            .unwrap_or(embd.ggml_dtype);
        let model_id = model_id(&content, file_len);
        Ok(Self {
            path: path.to_path_buf(),
            content,
            reader,
            hparams,
            quant,
            model_id,
        })
    }

    /// The file path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The metadata, every key.
    pub fn metadata(&self) -> &HashMap<String, Value> {
        &self.content.metadata
    }

    /// Every tensor: its name, type and bytes as stored.
    pub fn tensor_table(&self) -> Vec<(String, GgmlDType, u64)> {
        let mut t: Vec<_> = self
            .content
            .tensor_infos
            .iter()
            .map(|(name, info)| (name.clone(), info.ggml_dtype, tensor_bytes(info)))
            .collect();
        t.sort_by(|a, b| a.0.cmp(&b.0));
        t
    }

    /// Whether the file holds a tensor called `name`.
    pub fn has_tensor(&self, name: &str) -> bool {
        self.content.tensor_infos.contains_key(name)
    }

    /// Reads tensor `name` onto `device`, checking its shape.
    pub fn tensor(
        &mut self,
        name: &str,
        shape: &[usize],
        device: &Device,
    ) -> Result<QTensor, LoadError> {
        let err = |reason: String| LoadError::Tensor {
            path: self.path.clone(),
            name: name.to_string(),
            reason,
        };
        let info = self
            .content
            .tensor_infos
            .get(name)
            .ok_or_else(|| err("missing".into()))?;
        if info.shape.dims() != shape {
            return Err(err(format!(
                "shape {:?}, expected {shape:?}",
                info.shape.dims()
            )));
        }
        self.content
            .tensor(&mut self.reader, name, device)
            .map_err(|e| err(e.to_string()))
    }
}

/// Rejects files whose tensor table points past the end of the file (a truncated download).
fn check_tensor_extents(path: &Path, content: &Content, file_len: u64) -> Result<(), LoadError> {
    check_extents(content, file_len).map_err(|reason| LoadError::Corrupt {
        path: path.to_path_buf(),
        reason,
    })
}

/// Why a tensor of `content` would read past `file_len` bytes, if one does.
pub(crate) fn check_extents(content: &Content, file_len: u64) -> Result<(), String> {
    for (name, info) in &content.tensor_infos {
        let end = content
            .tensor_data_offset
            .saturating_add(info.offset)
            .saturating_add(tensor_bytes(info));
        if end > file_len {
            return Err(format!(
                "tensor '{name}' ends at byte {end} but the file has {file_len} bytes (truncated download?)"
            ));
        }
    }
    Ok(())
}

/// Bytes a tensor takes as stored.
fn tensor_bytes(info: &candle_core::quantized::gguf_file::TensorInfo) -> u64 {
    (info.shape.elem_count() / info.ggml_dtype.block_size() * info.ggml_dtype.type_size()) as u64
}

/// Hash of everything that identifies the weights without reading them: metadata, tensor table, size.
fn model_id(content: &Content, file_len: u64) -> String {
    let mut h = Sha256::new();
    h.update(file_len.to_le_bytes());
    let mut keys: Vec<_> = content.metadata.keys().collect();
    keys.sort();
    for k in keys {
        // Token lists are large and already pinned by the tensor shapes; skip their contents.
        if k.starts_with("tokenizer.ggml.") {
            h.update(k.as_bytes());
            continue;
        }
        h.update(format!("{k}={:?};", content.metadata[k]).as_bytes());
    }
    let mut names: Vec<_> = content.tensor_infos.keys().collect();
    names.sort();
    for n in names {
        let t = &content.tensor_infos[n];
        h.update(format!("{n}:{:?}:{:?}:{};", t.shape.dims(), t.ggml_dtype, t.offset).as_bytes());
    }
    let digest = h.finalize();
    digest.iter().take(8).map(|b| format!("{b:02x}")).collect()
}

/// Typed access to metadata with errors naming the key.
struct Meta<'a> {
    path: &'a Path,
    md: &'a HashMap<String, Value>,
}

impl Meta<'_> {
    fn err(&self, key: &str, expected: &'static str) -> LoadError {
        LoadError::Metadata {
            path: self.path.to_path_buf(),
            key: key.to_string(),
            expected,
        }
    }

    fn string(&self, key: &str) -> Result<String, LoadError> {
        match self.md.get(key) {
            Some(Value::String(s)) => Ok(s.clone()),
            _ => Err(self.err(key, "string")),
        }
    }

    fn usize(&self, key: &str) -> Result<usize, LoadError> {
        let v = self.md.get(key).ok_or_else(|| self.err(key, "integer"))?;
        let n = match v {
            Value::U8(x) => *x as u64,
            Value::U16(x) => *x as u64,
            Value::U32(x) => *x as u64,
            Value::U64(x) => *x,
            Value::I8(x) if *x >= 0 => *x as u64,
            Value::I16(x) if *x >= 0 => *x as u64,
            Value::I32(x) if *x >= 0 => *x as u64,
            Value::I64(x) if *x >= 0 => *x as u64,
            _ => return Err(self.err(key, "non-negative integer")),
        };
        Ok(n as usize)
    }

    fn usize_or(&self, key: &str, default: usize) -> Result<usize, LoadError> {
        if self.md.contains_key(key) {
            self.usize(key)
        } else {
            Ok(default)
        }
    }

    fn f32_or(&self, key: &str, default: f32) -> Result<f32, LoadError> {
        match self.md.get(key) {
            None => Ok(default),
            Some(Value::F32(x)) => Ok(*x),
            Some(Value::F64(x)) => Ok(*x as f32),
            Some(_) => Err(self.err(key, "float")),
        }
    }
}
