//! A model's own prompt format: its GGUF `tokenizer.chat_template` (Jinja) rendered with
//! minijinja the way transformers and llama-cpp-python render it (`trim_blocks`, `lstrip_blocks`,
//! Python string methods, `raise_exception`).

use minijinja::syntax::SyntaxConfig;
use minijinja::value::Serde;
use minijinja::{context, Environment, Error, ErrorKind};

/// What a chat template is rendered with: the template and the texts of BOS and EOS.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChatFormat {
    /// `tokenizer.chat_template`, when the model has one.
    pub template: Option<String>,
    /// BOS's text (`bos_token` in templates).
    pub bos_text: String,
    /// EOS's text (`eos_token` in templates).
    pub eos_text: String,
    /// Whether the tokenizer puts BOS in front of every prompt itself: then a BOS the template
    /// writes at the start is dropped, as llama.cpp does, so the prompt never starts with two.
    pub add_bos: bool,
}

/// A chat message.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Message<'a> {
    /// `system`, `user` or `assistant`.
    pub role: &'a str,
    /// The text.
    pub content: &'a str,
}

/// Why a chat template could not be rendered.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum ChatError {
    /// The model carries no `tokenizer.chat_template`.
    #[error("the model has no chat template (tokenizer.chat_template); use preset = \"llama2-chat\", \"plain\" or a `template`")]
    NoTemplate,
    /// The template failed (a syntax error, or it raised).
    #[error("the model's chat template failed: {0}")]
    Render(String),
}

/// The date `strftime_now` gives templates that print "today" (Llama 3.1): fixed, so a task's
/// prompt, and its cached prefix, do not change from one day to the next.
const FIXED_DATE: (i32, u32, u32) = (2024, 7, 26);

impl ChatFormat {
    /// Renders `messages` and the generation prompt (the assistant turn's opening).
    pub fn render(&self, messages: &[Message<'_>]) -> Result<String, ChatError> {
        let template = self.template.as_deref().ok_or(ChatError::NoTemplate)?;
        let mut env = Environment::new();
        let syntax = SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .build()
            .expect("the default delimiters are valid");
        env.set_syntax(syntax);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", |msg: String| -> Result<String, Error> {
            Err(Error::new(ErrorKind::InvalidOperation, msg))
        });
        env.add_function("strftime_now", |fmt: String| strftime_fixed(&fmt));
        let render = |e: Error| ChatError::Render(detailed(&e));
        env.add_template("chat_template", template)
            .map_err(render)?;
        let out = env
            .get_template("chat_template")
            .map_err(render)?
            .render(context! {
                messages => Serde(messages),
                add_generation_prompt => true,
                bos_token => self.bos_text.as_str(),
                eos_token => self.eos_text.as_str(),
            })
            .map_err(render)?;
        Ok(match out.strip_prefix(self.bos_text.as_str()) {
            Some(rest) if self.add_bos && !self.bos_text.is_empty() => rest.to_string(),
            _ => out,
        })
    }

    /// Renders a system and a user message; a template that refuses the system role (Mistral's
    /// raise on it) gets the system text at the head of the user message instead.
    pub fn render_turn(&self, system: Option<&str>, user: &str) -> Result<String, ChatError> {
        let Some(sys) = system else {
            return self.render(&[Message {
                role: "user",
                content: user,
            }]);
        };
        let both = [
            Message {
                role: "system",
                content: sys,
            },
            Message {
                role: "user",
                content: user,
            },
        ];
        match self.render(&both) {
            Err(ChatError::Render(why)) => {
                let merged = format!("{sys}\n\n{user}");
                let out = self.render(&[Message {
                    role: "user",
                    content: &merged,
                }]);
                if out.is_ok() {
                    tracing::info!(reason = %why, "the chat template refuses a system message; the system text opens the user message");
                }
                out
            }
            other => other,
        }
    }
}

/// An error with the template's line, as minijinja describes it.
fn detailed(e: &Error) -> String {
    match e.line() {
        Some(line) => format!("{e} (template line {line})"),
        None => e.to_string(),
    }
}

/// `strftime` of [`FIXED_DATE`] for the directives date templates use (`%d %b %B %Y %m %y %e`).
fn strftime_fixed(fmt: &str) -> String {
    const MONTHS: [&str; 12] = [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ];
    let (y, m, d) = FIXED_DATE;
    let month = MONTHS[(m - 1) as usize];
    let mut out = String::new();
    let mut chars = fmt.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('d') => out.push_str(&format!("{d:02}")),
            Some('e') => out.push_str(&format!("{d:>2}")),
            Some('m') => out.push_str(&format!("{m:02}")),
            Some('Y') => out.push_str(&y.to_string()),
            Some('y') => out.push_str(&format!("{:02}", y % 100)),
            Some('b') => out.push_str(&month[..3]),
            Some('B') => out.push_str(month),
            Some('%') => out.push('%'),
            Some(other) => {
                out.push('%');
                out.push(other);
            }
            None => out.push('%'),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fmt(t: &str) -> ChatFormat {
        ChatFormat {
            template: Some(t.into()),
            bos_text: "<s>".into(),
            eos_text: "</s>".into(),
            add_bos: true,
        }
    }

    #[test]
    fn chatml_with_generation_prompt() {
        let t = "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}";
        let out = fmt(t).render_turn(Some("S"), "U").unwrap();
        assert_eq!(
            out,
            "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nU<|im_end|>\n<|im_start|>assistant\n"
        );
    }

    #[test]
    fn leading_bos_dropped_only_when_the_tokenizer_adds_it() {
        let t = "{{ bos_token }}[INST] {{ messages[0]['content'].strip() }} [/INST]";
        let user = [Message {
            role: "user",
            content: " hi ",
        }];
        assert_eq!(fmt(t).render(&user).unwrap(), "[INST] hi [/INST]");
        let mut keep = fmt(t);
        keep.add_bos = false;
        assert_eq!(keep.render(&user).unwrap(), "<s>[INST] hi [/INST]");
    }

    #[test]
    fn a_template_refusing_system_gets_it_in_the_user_turn() {
        let t = "{% for m in messages %}{% if m['role'] != 'user' %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}[INST] {{ m['content'] }} [/INST]{% endfor %}";
        let out = fmt(t).render_turn(Some("S"), "U").unwrap();
        assert_eq!(out, "[INST] S\n\nU [/INST]");
        let err = fmt(t)
            .render(&[Message {
                role: "system",
                content: "S",
            }])
            .unwrap_err();
        assert!(err.to_string().contains("Only user and assistant"), "{err}");
    }

    #[test]
    fn missing_template_and_syntax_errors() {
        let none = ChatFormat::default();
        assert_eq!(
            none.render_turn(None, "U").unwrap_err(),
            ChatError::NoTemplate
        );
        let err = fmt("{% for %}").render_turn(None, "U").unwrap_err();
        assert!(matches!(err, ChatError::Render(_)), "{err}");
    }

    #[test]
    fn fixed_date() {
        assert_eq!(strftime_fixed("%d %b %Y"), "26 Jul 2024");
        assert_eq!(strftime_fixed("%B %e, %y %%"), "July 26, 24 %");
    }
}
