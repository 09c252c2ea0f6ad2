//! A classification task: a prompt template split into a cached prefix, a document slot and a suffix,
//! plus the labels the model chooses between. Defined in TOML.

pub mod chat;
mod presets;

use std::collections::{BTreeMap, HashSet};
use std::path::Path;

use serde::{Deserialize, Serialize};

/// The document placeholder in a template.
pub const TEXT_SLOT: &str = "{{text}}";
/// Expands to the comma-separated label names in a template or instruction.
pub const LABELS_SLOT: &str = "{{labels}}";

/// A task file: `[[task]]` tables.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TaskFile {
    /// The tasks, in file order.
    pub task: Vec<TaskSpec>,
}

/// One task as written in TOML.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TaskSpec {
    /// Unique name; messages select a task by it.
    pub name: String,
    /// A raw prompt with exactly one `{{text}}`; mutually exclusive with `preset`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<String>,
    /// A prompt format that builds the template from `system`, `instruction` and `examples`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preset: Option<Preset>,
    /// The system prompt (presets only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system: Option<String>,
    /// The instruction (presets only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instruction: Option<String>,
    /// Few-shot examples (presets only); rendered into the cached prefix.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub examples: Vec<Example>,
    /// Text after which the model names the label (presets only).
    #[serde(default = "default_answer_prefix")]
    pub answer_prefix: String,
    /// The labels.
    pub labels: Vec<LabelSpec>,
    /// Longest document, in tokens, before the truncation policy applies.
    #[serde(default = "default_max_doc_tokens")]
    pub max_doc_tokens: usize,
    /// What to do with a longer document.
    #[serde(default)]
    pub truncation: Truncation,
    /// Softmax temperature applied to label log-probabilities (1 = the model's own).
    #[serde(default = "default_temperature")]
    pub temperature: f32,
    /// Label-bias correction measured when the task is prepared (`content-free`: Zhao et al.
    /// 2021, "Calibrate Before Use").
    #[serde(default, skip_serializing_if = "Calibration::is_none")]
    pub calibration: Calibration,
    /// Per-label biases added to the label log-probabilities (before the temperature), by label
    /// name; `labelmill eval --fit-bias` fits and writes them. A label not named gets 0.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub bias: BTreeMap<String, f32>,
    /// A LoRA adapter (llama.cpp's GGUF format) applied to the model for this task only; a
    /// relative path is relative to the task file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adapter: Option<std::path::PathBuf>,
    /// The adapter's strength (llama.cpp's `--lora-scaled`): 1 applies it as trained.
    #[serde(default = "default_adapter_scale")]
    pub adapter_scale: f32,
}

/// A label-bias correction computed from the model itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
pub enum Calibration {
    /// None: the model's label probabilities as they are.
    #[default]
    #[serde(rename = "none")]
    None,
    /// Divide each document's label probabilities by the mean label distribution of the
    /// content-free documents [`CONTENT_FREE`], then renormalise.
    #[serde(rename = "content-free")]
    ContentFree,
}

impl Calibration {
    fn is_none(&self) -> bool {
        *self == Self::None
    }
}

/// The content-free documents of [`Calibration::ContentFree`] (Zhao et al. use "N/A", "" and
/// "[MASK]"). They are tokenised as plain text, like any document.
pub const CONTENT_FREE: [&str; 3] = ["N/A", "", "[MASK]"];

/// A prompt format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
pub enum Preset {
    /// `[INST] <<SYS>>\n{system}\n<</SYS>>\n\n{instruction} ... [/INST] {answer_prefix}`.
    #[serde(rename = "llama2-chat")]
    Llama2Chat,
    /// Plain completion: `{instruction}\n\n... Text: {{text}}\n{answer_prefix}`.
    #[serde(rename = "plain")]
    Plain,
    /// The model's own chat template (GGUF `tokenizer.chat_template`): a system message, a user
    /// message (instruction, examples, the document) and the generation prompt, then
    /// `{answer_prefix}`.
    #[serde(rename = "model")]
    Model,
}

/// A few-shot example.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Example {
    /// The example document.
    pub text: String,
    /// Its label name.
    pub label: String,
}

/// A label: a bare name, or a name with the text the model would say for it.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(untagged)]
pub enum LabelSpec {
    /// `"billing"`: the model says " billing".
    Name(String),
    /// `{ name = "billing", verbaliser = " Billing" }`.
    Full {
        /// The label name in results.
        name: String,
        /// The continuation text scored after the suffix (default: a space and the name).
        #[serde(default)]
        verbaliser: Option<String>,
    },
}

impl LabelSpec {
    /// The name reported in results.
    pub fn name(&self) -> &str {
        match self {
            Self::Name(n) | Self::Full { name: n, .. } => n,
        }
    }

    /// The text the model is scored on saying after the suffix.
    pub fn verbaliser(&self) -> String {
        match self {
            Self::Full {
                verbaliser: Some(v),
                ..
            } => v.clone(),
            _ => format!(" {}", self.name()),
        }
    }
}

/// What happens to a document longer than `max_doc_tokens`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Truncation {
    /// Keep the first `max_doc_tokens` tokens (the head); drop the rest.
    #[default]
    Head,
    /// Keep the last `max_doc_tokens` tokens (the tail).
    Tail,
    /// Refuse the document (`token_limit_exceeded`).
    Reject,
}

/// The prompt around the document: `prefix + document + suffix`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PromptParts {
    /// Everything before the document: computed once, cached.
    pub prefix: String,
    /// Everything after the document, before the label.
    pub suffix: String,
}

/// A task file or task that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TaskError {
    /// The file could not be read.
    #[error("cannot read task file {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The TOML is invalid.
    #[error("task file {path}: {source}")]
    Parse {
        /// The file.
        path: String,
        /// The parser's message.
        source: Box<toml::de::Error>,
    },
    /// A task is inconsistent.
    #[error("task '{task}': {reason}")]
    Invalid {
        /// The task name.
        task: String,
        /// What is wrong.
        reason: String,
    },
    /// The task's adapter cannot be used with this model.
    #[error("task '{task}': {source}")]
    Adapter {
        /// The task name.
        task: String,
        /// Why.
        source: Box<crate::engine::lora::AdapterError>,
    },
}

fn default_answer_prefix() -> String {
    "Label:".into()
}
fn default_max_doc_tokens() -> usize {
    512
}
fn default_temperature() -> f32 {
    1.0
}
fn default_adapter_scale() -> f32 {
    1.0
}

impl TaskFile {
    /// Reads and validates a task file.
    pub fn load(path: &Path) -> Result<Self, TaskError> {
        let p = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| TaskError::Io {
            path: p.clone(),
            source,
        })?;
        let mut file = Self::parse(&text, &p)?;
        let dir = path.parent().unwrap_or(Path::new(""));
        for t in &mut file.task {
            if let Some(a) = &mut t.adapter {
                if a.is_relative() {
                    *a = dir.join(&*a);
                }
            }
        }
        Ok(file)
    }

    /// Parses and validates TOML text (`origin` names it in errors).
    pub fn parse(text: &str, origin: &str) -> Result<Self, TaskError> {
        let file: TaskFile = toml::from_str(text).map_err(|e| TaskError::Parse {
            path: origin.into(),
            source: Box::new(e),
        })?;
        if file.task.is_empty() {
            return Err(TaskError::Invalid {
                task: String::new(),
                reason: "the file defines no [[task]]".into(),
            });
        }
        let mut seen = HashSet::new();
        for t in &file.task {
            t.validate()?;
            if !seen.insert(t.name.as_str()) {
                return Err(t.invalid("the name is used by two tasks"));
            }
        }
        Ok(file)
    }
}

impl TaskSpec {
    fn invalid(&self, reason: impl Into<String>) -> TaskError {
        TaskError::Invalid {
            task: self.name.clone(),
            reason: reason.into(),
        }
    }

    /// Checks the task on its own (names, labels, template, numbers).
    pub fn validate(&self) -> Result<(), TaskError> {
        if self.name.trim().is_empty() {
            return Err(self.invalid("the name is empty"));
        }
        if self.labels.len() < 2 {
            return Err(self.invalid("a task needs at least two labels"));
        }
        let mut names = HashSet::new();
        for l in &self.labels {
            if l.name().is_empty() || !names.insert(l.name()) {
                return Err(self.invalid(format!("label '{}' is empty or repeated", l.name())));
            }
            if l.verbaliser().is_empty() {
                return Err(self.invalid(format!("label '{}' has an empty verbaliser", l.name())));
            }
        }
        for e in &self.examples {
            if !names.contains(e.label.as_str()) {
                return Err(self.invalid(format!(
                    "example label '{}' is not one of the labels",
                    e.label
                )));
            }
        }
        if self.max_doc_tokens == 0 {
            return Err(self.invalid("max_doc_tokens must be at least 1"));
        }
        if !(self.temperature.is_finite() && self.temperature > 0.0) {
            return Err(self.invalid("temperature must be a positive number"));
        }
        if !self.adapter_scale.is_finite() {
            return Err(self.invalid("adapter_scale must be a finite number"));
        }
        for (label, b) in &self.bias {
            if !names.contains(label.as_str()) {
                return Err(self.invalid(format!("bias names '{label}', not one of the labels")));
            }
            if !b.is_finite() {
                return Err(self.invalid(format!("bias of '{label}' must be a finite number")));
            }
        }
        // The model's template is known only once a model is loaded: it is rendered then.
        let stand_in = chat::ChatFormat {
            template: Some(presets::CHECK_TEMPLATE.into()),
            ..Default::default()
        };
        self.prompt_for(&stand_in).map(|_| ())
    }

    /// Splits the rendered template at `{{text}}`. The `model` preset needs the model's chat
    /// format: see [`TaskSpec::prompt_for`].
    pub fn prompt(&self) -> Result<PromptParts, TaskError> {
        self.prompt_for(&chat::ChatFormat::default())
    }

    /// Splits the template rendered for a model whose chat format is `fmt` at `{{text}}`.
    pub fn prompt_for(&self, fmt: &chat::ChatFormat) -> Result<PromptParts, TaskError> {
        let template = match (&self.template, self.preset) {
            (Some(_), Some(_)) => {
                return Err(self.invalid("set either `template` or `preset`, not both"))
            }
            (None, None) => return Err(self.invalid("set `template` (with {{text}}) or `preset`")),
            (Some(t), None) => {
                if self.system.is_some() || self.instruction.is_some() || !self.examples.is_empty()
                {
                    return Err(
                        self.invalid("`system`, `instruction` and `examples` need a `preset`")
                    );
                }
                t.clone()
            }
            (None, Some(p)) => presets::render(self, p, fmt)?,
        };
        let template = template.replace(LABELS_SLOT, &self.label_list());
        let mut parts = template.split(TEXT_SLOT);
        let (Some(prefix), Some(suffix), None) = (parts.next(), parts.next(), parts.next()) else {
            return Err(self.invalid("the template must contain {{text}} exactly once"));
        };
        Ok(PromptParts {
            prefix: prefix.to_string(),
            suffix: suffix.to_string(),
        })
    }

    pub(crate) fn label_list(&self) -> String {
        self.labels
            .iter()
            .map(LabelSpec::name)
            .collect::<Vec<_>>()
            .join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(toml_text: &str) -> Result<TaskSpec, TaskError> {
        TaskFile::parse(toml_text, "test").map(|f| f.task.into_iter().next().unwrap())
    }

    #[test]
    fn template_splits_at_the_slot() {
        let t = one("[[task]]\nname='t'\nlabels=['a','b']\ntemplate=\"Classify ({{labels}}): {{text}}\\nAnswer:\"")
            .unwrap();
        let p = t.prompt().unwrap();
        assert_eq!(p.prefix, "Classify (a, b): ");
        assert_eq!(p.suffix, "\nAnswer:");
    }

    #[test]
    fn llama2_chat_preset() {
        let t = one(
            "[[task]]\nname='t'\npreset='llama2-chat'\nsystem='S'\ninstruction='I'\nanswer_prefix='Category:'\n\
             labels=['a',{name='b',verbaliser=' B!'}]\nexamples=[{text='x',label='b'}]",
        )
        .unwrap();
        let p = t.prompt().unwrap();
        assert_eq!(
            p.prefix,
            "[INST] <<SYS>>\nS\n<</SYS>>\n\nI\n\nText: x\nCategory: B!\n\nText: "
        );
        assert_eq!(p.suffix, " [/INST] Category:");
        assert_eq!(t.labels[0].verbaliser(), " a");
    }

    #[test]
    fn model_preset_renders_the_models_chat_template() {
        let t = one(
            "[[task]]\nname='t'\npreset='model'\nsystem='S'\ninstruction='Pick: {{labels}}.'\n\
             answer_prefix='Category:'\nlabels=['a','b']\nexamples=[{text='x',label='b'}]",
        )
        .unwrap();
        let fmt = chat::ChatFormat {
            template: Some(presets::CHECK_TEMPLATE.into()),
            ..Default::default()
        };
        let p = t.prompt_for(&fmt).unwrap();
        assert_eq!(
            p.prefix,
            "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nPick: a, b.\n\nText: x\nCategory: b\n\nText: "
        );
        assert_eq!(p.suffix, "<|im_end|>\n<|im_start|>assistant\nCategory:");
        // Without the model there is no template to render.
        let err = t.prompt().unwrap_err().to_string();
        assert!(err.contains("no chat template"), "{err}");
    }

    #[test]
    fn rejects_bad_tasks() {
        for (bad, why) in [
            (
                "name='t'\nlabels=['a','b']\ntemplate='no slot'",
                "exactly once",
            ),
            (
                "name='t'\nlabels=['a','b']\ntemplate='{{text}}{{text}}'",
                "exactly once",
            ),
            ("name='t'\nlabels=['a']\ntemplate='{{text}}'", "two labels"),
            (
                "name='t'\nlabels=['a','a']\ntemplate='{{text}}'",
                "repeated",
            ),
            ("name='t'\nlabels=['a','b']", "set `template`"),
            (
                "name='t'\nlabels=['a','b']\ntemplate='{{text}}'\ntemperature=0",
                "temperature",
            ),
            (
                "name='t'\nlabels=['a','b']\ntemplate='{{text}}'\nmax_doc_tokens=0",
                "max_doc_tokens",
            ),
            (
                "name='t'\nlabels=['a','b']\ntemplate='{{text}}'\nbias={c=1.0}",
                "bias names 'c'",
            ),
            (
                "name='t'\nlabels=['a','b']\ntemplate='{{text}}'\nbias={a=nan}",
                "finite",
            ),
            (
                "name='t'\nlabels=['a','b']\ntemplate='{{text}}'\ncalibration='contextual'",
                "content-free",
            ),
            (
                "name='t'\nlabels=['a','b']\npreset='plain'\nexamples=[{text='x',label='c'}]",
                "example label",
            ),
        ] {
            let err = one(&format!("[[task]]\n{bad}")).unwrap_err().to_string();
            assert!(err.contains(why), "{bad:?}: {err}");
        }
        let err = TaskFile::parse("[[task]]\nname='t'\nlabels=['a','b']\ntemplate='{{text}}'\n[[task]]\nname='t'\nlabels=['a','b']\ntemplate='{{text}}'", "f")
            .unwrap_err()
            .to_string();
        assert!(err.contains("two tasks"), "{err}");
    }
}
