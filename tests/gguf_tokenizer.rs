//! The tokenizer a GGUF carries: used when no tokenizer.json is given, checked against one that
//! is, and refused with a message naming the key when the metadata is missing or inconsistent.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::GgmlDType;
use candle_core::Device;
use common::{gqa_shape, model_dir};
use labelmill::engine::load::LoadError;
use labelmill::engine::Engine;

/// A copy of a generated model with its metadata changed by `edit`.
fn edited(dir: &Path, edit: impl FnOnce(&mut HashMap<String, Value>)) -> PathBuf {
    let src = model_dir(&gqa_shape(), GgmlDType::Q8_0, 3);
    let mut f = std::fs::File::open(src.join("model.gguf")).unwrap();
    let mut c = gguf_file::Content::read(&mut f).unwrap();
    edit(&mut c.metadata);
    let names: Vec<String> = c.tensor_infos.keys().cloned().collect();
    let tensors: Vec<(String, candle_core::quantized::QTensor)> = names
        .iter()
        .map(|n| (n.clone(), c.tensor(&mut f, n, &Device::Cpu).unwrap()))
        .collect();
    let md: Vec<(&str, &Value)> = c.metadata.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let ts: Vec<(&str, &candle_core::quantized::QTensor)> =
        tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
    let path = dir.join("model.gguf");
    gguf_file::write(&mut std::fs::File::create(&path).unwrap(), &md, &ts).unwrap();
    path
}

fn array_len(md: &HashMap<String, Value>, key: &str) -> usize {
    match &md[key] {
        Value::Array(v) => v.len(),
        _ => panic!("{key} is an array"),
    }
}

fn truncate(md: &mut HashMap<String, Value>, key: &str, n: usize) {
    if let Some(Value::Array(v)) = md.get_mut(key) {
        v.truncate(n);
    }
}

#[test]
fn the_gguf_tokenizer_is_used_without_a_tokenizer_json() {
    let dir = model_dir(&gqa_shape(), GgmlDType::Q8_0, 3);
    let own = Engine::load(&dir.join("model.gguf"), None, &Device::Cpu).unwrap();
    let json = Engine::load(
        &dir.join("model.gguf"),
        Some(&dir.join("tokenizer.json")),
        &Device::Cpu,
    )
    .unwrap();
    let text = "My invoice is wrong, please refund the 49.99 charge! ☃";
    assert_eq!(
        own.tokenizer().encode(text).unwrap(),
        json.tokenizer().encode(text).unwrap()
    );
    assert_eq!(own.tokenizer().info().source, "gguf");
    assert_eq!(
        own.tokenizer().start(),
        [1],
        "a llama vocabulary adds BOS by default"
    );
}

#[test]
fn a_tokenizer_json_of_another_tokenizer_is_refused() {
    let dir = model_dir(&gqa_shape(), GgmlDType::Q8_0, 3);
    let tmp = tempfile::tempdir().unwrap();
    // Same size, other pieces: trained on other text.
    let other = labelmill::tiny::tokenizer::train_on(
        "zebra quantum fjord xylophone wobble jigsaw\n"
            .repeat(50)
            .as_str(),
        gqa_shape().vocab,
    )
    .unwrap();
    let json = tmp.path().join("tokenizer.json");
    std::fs::write(&json, other).unwrap();
    let err = Engine::load(&dir.join("model.gguf"), Some(&json), &Device::Cpu)
        .err()
        .expect("refused");
    assert!(matches!(err, LoadError::TokenizerMismatch { .. }), "{err}");
    assert!(
        err.to_string().contains("does not belong to this model"),
        "{err}"
    );
}

/// Each broken tokenizer is refused at load, naming the key at fault.
#[test]
fn broken_tokenizer_metadata_is_refused_naming_the_key() {
    type Edit = Box<dyn FnOnce(&mut HashMap<String, Value>)>;
    let cases: Vec<(&str, &str, Edit)> = vec![
        (
            "tokenizer.ggml.model",
            "missing",
            Box::new(|md| {
                md.remove("tokenizer.ggml.model");
            }),
        ),
        (
            "tokenizer.ggml.model",
            "'t5' is not a tokenizer",
            Box::new(|md| {
                md.insert("tokenizer.ggml.model".into(), Value::String("t5".into()));
            }),
        ),
        (
            "tokenizer.ggml.scores",
            "scores for",
            Box::new(|md| {
                let n = array_len(md, "tokenizer.ggml.scores");
                truncate(md, "tokenizer.ggml.scores", n - 3);
            }),
        ),
        (
            "tokenizer.ggml.token_type",
            "not a type",
            Box::new(|md| {
                if let Some(Value::Array(v)) = md.get_mut("tokenizer.ggml.token_type") {
                    v[40] = Value::I32(9);
                }
            }),
        ),
        (
            "tokenizer.ggml.bos_token_id",
            "outside the",
            Box::new(|md| {
                md.insert("tokenizer.ggml.bos_token_id".into(), Value::U32(70_000));
            }),
        ),
        (
            "tokenizer.ggml.tokens",
            "rows",
            Box::new(|md| {
                let n = array_len(md, "tokenizer.ggml.tokens");
                for k in [
                    "tokenizer.ggml.tokens",
                    "tokenizer.ggml.scores",
                    "tokenizer.ggml.token_type",
                ] {
                    truncate(md, k, n - 1);
                }
            }),
        ),
        (
            "tokenizer.ggml.tokens",
            "appears twice",
            Box::new(|md| {
                if let Some(Value::Array(v)) = md.get_mut("tokenizer.ggml.tokens") {
                    v[300] = v[301].clone();
                }
            }),
        ),
        (
            "tokenizer.ggml.pre",
            "unknown pre-tokenizer 'no-such-pre'",
            Box::new(|md| {
                md.insert("tokenizer.ggml.model".into(), Value::String("gpt2".into()));
                md.insert(
                    "tokenizer.ggml.pre".into(),
                    Value::String("no-such-pre".into()),
                );
                md.insert("tokenizer.ggml.merges".into(), Value::Array(vec![]));
            }),
        ),
        (
            "tokenizer.ggml.merges",
            "is not in tokenizer.ggml.tokens",
            Box::new(|md| {
                md.insert("tokenizer.ggml.model".into(), Value::String("gpt2".into()));
                md.insert("tokenizer.ggml.pre".into(), Value::String("gpt-2".into()));
                let m = Value::String("qqqx zzzy".into());
                md.insert("tokenizer.ggml.merges".into(), Value::Array(vec![m]));
            }),
        ),
    ];
    for (key, says, edit) in cases {
        let tmp = tempfile::tempdir().unwrap();
        let path = edited(tmp.path(), edit);
        let err = Engine::load(&path, None, &Device::Cpu)
            .err()
            .expect("refused");
        let msg = err.to_string();
        assert!(
            matches!(&err, LoadError::Vocab { key: k, .. } if k == key),
            "{key}: {msg}"
        );
        assert!(msg.contains(says) && msg.contains(key), "{key}: {msg}");
    }
}

#[test]
fn classify_exits_2_on_a_broken_tokenizer() {
    let tmp = tempfile::tempdir().unwrap();
    let path = edited(tmp.path(), |md| {
        md.insert("tokenizer.ggml.unknown_token_id".into(), Value::I32(-4));
    });
    let out = Command::new(env!("CARGO_BIN_EXE_labelmill"))
        .arg("classify")
        .arg("--model")
        .arg(&path)
        .args([
            "--tasks",
            "examples/tasks.toml",
            "--input",
            "examples/docs.jsonl",
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("tokenizer.ggml.unknown_token_id"), "{err}");
}
