//! `labelmill inspect` on the real SmolLM2 file and on files it must refuse; and the `model`
//! preset on a GGUF that carries no chat template.

mod common;

use std::process::Command;

use candle_core::quantized::GgmlDType;
use common::real::smollm2;
use common::{engine, gqa_shape};
use labelmill::task::TaskFile;
use serde_json::Value;

fn inspect(path: &std::path::Path, json: bool) -> std::process::Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_labelmill"));
    cmd.arg("inspect").arg(path);
    if json {
        cmd.arg("--json");
    }
    cmd.output().unwrap()
}

#[test]
fn inspect_reports_what_the_smollm2_file_holds() {
    let out = inspect(&smollm2(), true);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    let hp = &r["hparams"];
    assert_eq!(
        (
            &hp["n_layers"],
            &hp["dim"],
            &hp["n_heads"],
            &hp["n_kv_heads"],
            &hp["ffn_dim"]
        ),
        (
            &Value::from(30),
            &Value::from(576),
            &Value::from(9),
            &Value::from(3),
            &Value::from(1536)
        )
    );
    assert_eq!(hp["vocab_size"], 49152);
    assert_eq!(hp["rope_freq_base"], 100000.0);
    assert_eq!(r["tensor_types"]["Q4_1"], 210);
    assert_eq!(r["tensor_types"]["F32"], 61);
    assert_eq!(r["tensor_types"]["Q8_0"], 1);
    assert_eq!(r["tied_embeddings"], true);
    // K and V, f32, 30 layers of 3 heads × 64.
    assert_eq!(r["kv_bytes_per_token"], 2 * 30 * 192 * 4);
    let t = &r["tokenizer"];
    assert_eq!(
        (&t["kind"], &t["pre"]),
        (&Value::from("gpt2"), &Value::from("smollm"))
    );
    assert_eq!(
        (&t["size"], &t["merges"]),
        (&Value::from(49152), &Value::from(48900))
    );
    assert_eq!(t["bos"]["text"], "<|im_start|>");
    assert_eq!(t["add_bos"], false);
    assert_eq!(t["token_types"]["control"], 17);
    assert!(r["chat_template_chars"].as_u64().unwrap() > 100);
    let text = String::from_utf8(inspect(&smollm2(), false).stdout).unwrap();
    for line in [
        "30 layers, dim 576, ffn 1536, 9 heads of 64, 3 KV heads, grouped-query",
        "210 Q4_1, 61 F32, 1 Q8_0; output head tied to token_embd",
        "gpt2 (byte-level BPE), pre 'smollm'",
        "BOS not added",
    ] {
        assert!(text.contains(line), "{line:?} not in:\n{text}");
    }
}

#[test]
fn inspect_refuses_what_is_not_a_llama_gguf() {
    let dir = tempfile::tempdir().unwrap();
    let html = dir.path().join("model.gguf");
    std::fs::write(&html, b"<html>404</html>").unwrap();
    let vocab_only = common::real::vocab("llama-spm");
    for (path, says) in [
        (html.as_path(), "not a valid GGUF file"),
        (vocab_only.as_path(), "holds no tensors"),
    ] {
        let out = inspect(path, false);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert!(err.contains(says), "{err}");
    }
}

#[test]
fn the_model_preset_needs_a_chat_template() {
    let (e, _) = engine(&gqa_shape(), GgmlDType::Q8_0, 1);
    let spec = TaskFile::parse(
        "[[task]]\nname='t'\npreset='model'\nlabels=['a','b']",
        "test",
    )
    .unwrap()
    .task
    .remove(0);
    let err = e.prepare(&spec).unwrap_err().to_string();
    assert!(err.contains("the model has no chat template"), "{err}");
}
