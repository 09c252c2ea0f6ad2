//! Writes a trained adapter as a llama.cpp GGUF LoRA (`general.type = "adapter"`,
//! `adapter.type = "lora"`, `adapter.lora.alpha`, `<base>.lora_a` `[rank, in]` and `.lora_b`
//! `[out, rank]` in f32) and points the task file at it.

use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::{GgmlDType, QTensor};

use crate::eval::calibrate::{edit_tasks, WriteError};

use super::Snapshot;

/// Why the adapter could not be written.
#[derive(Debug, thiserror::Error)]
pub enum AdapterWriteError {
    /// The file could not be written.
    #[error("writing {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A tensor could not be encoded.
    #[error("writing {path}: {source}")]
    Encode {
        /// The file.
        path: PathBuf,
        /// What failed.
        source: candle_core::Error,
    },
}

/// What goes into the adapter's metadata besides the LoRA keys.
pub struct Provenance<'a> {
    /// The task it was trained for.
    pub task: &'a str,
    /// The base model's id (`ModelInfo::id`).
    pub base_model: &'a str,
}

/// Writes `pairs` with `alpha` to `path` (through a temporary file renamed into place).
pub fn write_adapter(
    path: &Path,
    pairs: &Snapshot,
    alpha: f32,
    provenance: &Provenance,
) -> Result<(), AdapterWriteError> {
    let encode = |source| AdapterWriteError::Encode {
        path: path.to_path_buf(),
        source,
    };
    let io = |source| AdapterWriteError::Io {
        path: path.to_path_buf(),
        source,
    };
    let md: Vec<(&str, Value)> = vec![
        ("general.architecture", Value::String("llama".into())),
        ("general.type", Value::String("adapter".into())),
        ("adapter.type", Value::String("lora".into())),
        ("adapter.lora.alpha", Value::F32(alpha)),
        (
            "general.name",
            Value::String(format!("labelmill tune: {}", provenance.task)),
        ),
        (
            "labelmill.base_model_id",
            Value::String(provenance.base_model.into()),
        ),
    ];
    let mut tensors: Vec<(String, QTensor)> = Vec::with_capacity(2 * pairs.len());
    for (name, a, b) in pairs {
        tensors.push((
            format!("{name}.lora_a"),
            QTensor::quantize(a, GgmlDType::F32).map_err(encode)?,
        ));
        tensors.push((
            format!("{name}.lora_b"),
            QTensor::quantize(b, GgmlDType::F32).map_err(encode)?,
        ));
    }
    let md_refs: Vec<(&str, &Value)> = md.iter().map(|(k, v)| (*k, v)).collect();
    let t_refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
    let tmp = tempfile::NamedTempFile::new_in(dir.unwrap_or(Path::new("."))).map_err(io)?;
    {
        let mut w = std::io::BufWriter::new(tmp.as_file());
        gguf_file::write(&mut w, &md_refs, &t_refs).map_err(encode)?;
        std::io::Write::flush(&mut w).map_err(io)?;
    }
    let file = tmp.persist(path).map_err(|e| io(e.error))?;
    // A temporary file is private (0600); the adapter is an ordinary file.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        file.set_permissions(std::fs::Permissions::from_mode(0o644))
            .map_err(io)?;
    }
    drop(file);
    Ok(())
}

/// Sets task `task`'s `adapter` in the task file at `tasks` to `adapter` (relative to the task
/// file's directory when it lies under it) and drops its `adapter_scale`: the new adapter is
/// served as trained.
pub fn point_task_at(tasks: &Path, task: &str, adapter: &Path) -> Result<String, WriteError> {
    let value = relative_to_tasks(tasks, adapter);
    edit_tasks(tasks, &[(task.to_string(), value.clone())], |table, v| {
        table["adapter"] = toml_edit::value(v.as_str());
        table.remove("adapter_scale");
    })?;
    Ok(value)
}

fn relative_to_tasks(tasks: &Path, adapter: &Path) -> String {
    let abs = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
    let dir = abs(tasks
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new(".")));
    let file = abs(adapter);
    match file.strip_prefix(&dir) {
        Ok(rel) => rel.to_string_lossy().into_owned(),
        Err(_) => file.to_string_lossy().into_owned(),
    }
}
