//! The JSON Schemas in schemas/ are valid, their examples conform, and real output conforms too.

mod common;

use candle_core::quantized::GgmlDType;
use common::{classify_command, gqa_shape, model_dir};
use serde_json::Value;

fn schema(name: &str) -> (Value, jsonschema::Validator) {
    let text = std::fs::read_to_string(format!("schemas/{name}.schema.json")).unwrap();
    let v: Value = serde_json::from_str(&text).unwrap();
    let validator = jsonschema::validator_for(&v).unwrap_or_else(|e| panic!("{name}: {e}"));
    (v, validator)
}

fn assert_valid(validator: &jsonschema::Validator, doc: &Value, what: &str) {
    let errors: Vec<String> = validator.iter_errors(doc).map(|e| e.to_string()).collect();
    assert!(errors.is_empty(), "{what}: {doc} -> {errors:?}");
}

#[test]
fn schema_examples_conform() {
    for name in ["input", "result", "error", "dead_letter"] {
        let (v, validator) = schema(name);
        let examples = v["examples"].as_array().unwrap();
        assert!(!examples.is_empty(), "{name} has examples");
        for ex in examples {
            assert_valid(&validator, ex, name);
        }
    }
}

/// The schema and the decoder agree on what is a valid input.
#[test]
fn input_schema_agrees_with_decoder() {
    let (_, validator) = schema("input");
    let cases = [
        r#"{"id": "a", "text": "hi"}"#,
        r#"{"id": 3, "text": "hi", "task": "t", "meta": {"k": 1}}"#,
        r#"{"text": "no id"}"#,
        r#"{"id": "", "text": "empty id"}"#,
        r#"{"id": 1.5, "text": "float id"}"#,
        r#"{"id": "a", "text": 7}"#,
        r#"{"id": "a", "text": "   "}"#,
        r#"{"id": "a", "text": "x", "extra": true}"#,
        r#"{"id": "a", "text": "x", "meta": [1]}"#,
        r#"["not", "an", "object"]"#,
    ];
    for c in cases {
        let v: Value = serde_json::from_str(c).unwrap();
        let by_schema = validator.is_valid(&v);
        let by_decoder = labelmill::decode::decode(c.as_bytes(), 1 << 20).is_ok();
        assert_eq!(by_schema, by_decoder, "{c}");
    }
}

/// Runs `labelmill classify` on the example tasks with `input` on stdin; returns its exit code and
/// output lines.
fn classify_lines(input: &[u8]) -> (Option<i32>, Vec<Value>) {
    use std::io::Write;
    use std::process::Stdio;
    let dir = model_dir(&gqa_shape(), GgmlDType::Q8_0, 21);
    let mut child = classify_command(&dir, "examples/tasks.toml".as_ref())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(input).unwrap();
    let out = child.wait_with_output().unwrap();
    let lines = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    (out.status.code(), lines)
}

#[test]
fn classify_output_conforms() {
    let (_, result) = schema("result");
    let (_, error) = schema("error");
    let (code, lines) = classify_lines(&std::fs::read("examples/docs.jsonl").unwrap());
    assert_eq!((code, lines.len()), (Some(0), 7));
    for l in &lines {
        assert_valid(&result, l, "result");
    }
    let (code, errs) =
        classify_lines(b"{\"id\": \"x\", \"task\": \"nope\", \"text\": \"hi\"}\n{oops\n");
    assert_eq!((code, errs.len()), (Some(1), 2));
    for e in &errs {
        assert_valid(&error, e, "error");
    }
}
