//! Prompt formats that build a task's template from its `system`, `instruction` and `examples`.

use super::chat::ChatFormat;
use super::{LabelSpec, Preset, TaskError, TaskSpec, TEXT_SLOT};

/// A ChatML template that stands in for the model's own when a task file is checked without a
/// model (the `model` preset is rendered again, with the real template, when a model loads).
pub(super) const CHECK_TEMPLATE: &str = "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}";

/// The template of `spec` under `preset`, with one `{{text}}`; `fmt` is the model's chat format.
pub(super) fn render(
    spec: &TaskSpec,
    preset: Preset,
    fmt: &ChatFormat,
) -> Result<String, TaskError> {
    let instruction = spec.instruction.clone().unwrap_or_else(|| {
        format!(
            "Classify the text into one of these categories: {}.",
            spec.label_list()
        )
    });
    let mut shots = String::new();
    for e in &spec.examples {
        let verbaliser = spec
            .labels
            .iter()
            .find(|l| l.name() == e.label)
            .map(LabelSpec::verbaliser)
            .unwrap_or_default();
        shots.push_str(&format!(
            "Text: {}\n{}{}\n\n",
            e.text, spec.answer_prefix, verbaliser
        ));
    }
    let answer = &spec.answer_prefix;
    Ok(match preset {
        Preset::Llama2Chat => {
            let sys = match &spec.system {
                Some(s) => format!("<<SYS>>\n{s}\n<</SYS>>\n\n"),
                None => String::new(),
            };
            format!("[INST] {sys}{instruction}\n\n{shots}Text: {TEXT_SLOT} [/INST] {answer}")
        }
        Preset::Plain => {
            let sys = spec
                .system
                .as_ref()
                .map(|s| format!("{s}\n\n"))
                .unwrap_or_default();
            format!("{sys}{instruction}\n\n{shots}Text: {TEXT_SLOT}\n{answer}")
        }
        Preset::Model => {
            // The document slot goes into the user message as data: the template never
            // interprets it, and the rendered text is split at it afterwards.
            let user = format!("{instruction}\n\n{shots}Text: {TEXT_SLOT}");
            let rendered = fmt
                .render_turn(spec.system.as_deref(), &user)
                .map_err(|e| spec.invalid(e.to_string()))?;
            format!("{rendered}{answer}")
        }
    })
}
