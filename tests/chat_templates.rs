//! Chat templates rendered by minijinja against Jinja2's renderings (the engine transformers and
//! llama-cpp-python use), for the templates of LLaMA 2 chat, ChatML (the SmolLM2 file's own),
//! Llama 3 and Mistral instruct: with and without a system message, with and without the
//! tokenizer adding BOS. Recorded by scripts/llamacpp-fixtures.py.

mod common;

use common::real::fixture;
use labelmill::task::chat::{ChatError, ChatFormat, Message};

#[test]
fn minijinja_renders_as_jinja2_does() {
    let fx = fixture("chat-templates.json");
    let cases = fx["cases"].as_array().unwrap();
    let (mut rendered, mut refused) = (0, 0);
    for c in cases {
        let name = c["name"].as_str().unwrap();
        let fmt = ChatFormat {
            template: Some(c["template"].as_str().unwrap().into()),
            bos_text: c["bos"].as_str().unwrap().into(),
            eos_text: c["eos"].as_str().unwrap().into(),
            add_bos: c["add_bos"].as_bool().unwrap(),
        };
        let msgs: Vec<Message> = c["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| Message {
                role: m["role"].as_str().unwrap(),
                content: m["content"].as_str().unwrap(),
            })
            .collect();
        let got = fmt.render(&msgs);
        match (c.get("rendered"), c.get("error")) {
            (Some(want), _) => {
                assert_eq!(
                    got.as_deref().ok(),
                    want.as_str(),
                    "{name} {:?}",
                    c["messages"]
                );
                rendered += 1;
            }
            (None, Some(why)) => {
                // Jinja2 raised (Mistral refuses a system message): so must minijinja, with the
                // template's own message.
                let err = got.unwrap_err();
                assert!(matches!(err, ChatError::Render(_)), "{name}: {err}");
                assert!(
                    err.to_string().contains(why.as_str().unwrap()),
                    "{name}: {err} vs Jinja2's {why}"
                );
                refused += 1;
            }
            _ => panic!("{name}: the fixture has neither a rendering nor an error"),
        }
    }
    assert!(
        rendered >= 12 && refused >= 2,
        "{rendered} rendered, {refused} refused"
    );
}

/// A template that refuses the system role still serves a task with a system prompt: the system
/// text opens the user message, which is what Jinja2 renders for that single user message.
#[test]
fn mistral_gets_the_system_text_in_its_user_turn() {
    let fx = fixture("chat-templates.json");
    let c = fx["cases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| {
            c["name"] == "mistral-instruct"
                && c["add_bos"] == true
                && c["messages"].as_array().unwrap().len() == 1
        })
        .expect("mistral user-only case");
    let fmt = ChatFormat {
        template: Some(c["template"].as_str().unwrap().into()),
        bos_text: "<s>".into(),
        eos_text: "</s>".into(),
        add_bos: true,
    };
    let user = c["messages"][0]["content"].as_str().unwrap();
    let alone = fmt.render_turn(None, user).unwrap();
    assert_eq!(alone, c["rendered"].as_str().unwrap());
    let with_system = fmt.render_turn(Some("Be brief."), user).unwrap();
    assert_eq!(with_system, format!("[INST] Be brief.\n\n{user} [/INST]"));
}
