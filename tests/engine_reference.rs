//! The engine against the plain reference in tests/common/reference.rs: logits and label scores.

mod common;

use candle_core::quantized::GgmlDType;
use common::reference::{log_softmax, RefModel};
use common::{engine, gqa_shape, mha_shape, rel_err};
use labelmill::engine::prepared::PreparedTask;
use labelmill::engine::Engine;
use labelmill::task::TaskFile;

const TASK: &str = r#"
[[task]]
name = "ticket"
template = "Route this support ticket ({{labels}}).\nTicket: {{text}}\nCategory:"
labels = ["billing", "technical", "account", "other"]
"#;

/// Labels chosen so that some share a first token and some are several tokens long.
const MULTI: &str = r#"
[[task]]
name = "multi"
template = "Ticket: {{text}}\nTeam:"
labels = [
  { name = "bill", verbaliser = " billing" },
  { name = "bill-dispute", verbaliser = " billing dispute" },
  { name = "bill-refund", verbaliser = " billing refund now" },
  { name = "tech", verbaliser = " technical" },
  { name = "odd", verbaliser = " zqxj" },
]
"#;

fn prepared(e: &Engine, toml: &str) -> PreparedTask {
    let spec = TaskFile::parse(toml, "test").unwrap().task.remove(0);
    e.prepare(&spec).unwrap()
}

fn doc(e: &Engine, t: &PreparedTask, text: &str) -> Vec<u32> {
    t.encode_doc(e.tokenizer(), text).unwrap().ids
}

/// The full prompt the reference sees: prefix, document and suffix in one sequence.
fn prompt(t: &PreparedTask, d: &[u32]) -> Vec<u32> {
    [&t.prefix_ids, d, &t.suffix_ids].concat()
}

/// Relative logit error of the engine (cached prefix, batched) against the reference.
fn logits_rel_err(quant: GgmlDType, shape: &labelmill::tiny::TinyShape) -> f32 {
    let (e, dir) = engine(shape, quant, 7);
    let r = RefModel::load(&dir.join("model.gguf"));
    let t = prepared(&e, TASK);
    let texts = [
        "my invoice is wrong",
        "the server crashes after the update and I lost my work today",
    ];
    let docs: Vec<Vec<u32>> = texts.iter().map(|s| doc(&e, &t, s)).collect();
    let refs: Vec<&[u32]> = docs.iter().map(Vec::as_slice).collect();
    let got = e.next_token_logits(&t, &refs).unwrap();
    let mut worst = 0f32;
    for (d, g) in docs.iter().zip(&got) {
        let want = r.logits(&prompt(&t, d)).pop().unwrap();
        worst = worst.max(rel_err(g, &want));
    }
    worst
}

#[test]
fn f32_logits_match_reference_gqa() {
    let err = logits_rel_err(GgmlDType::F32, &gqa_shape());
    assert!(err < 1e-3, "relative logit error {err}");
}

#[test]
fn f32_logits_match_reference_mha() {
    let err = logits_rel_err(GgmlDType::F32, &mha_shape());
    assert!(err < 1e-3, "relative logit error {err}");
}

/// candle's quantised matmul quantises the activations too (to Q8_0 blocks of 32 for Q4_0/Q8_0
/// weights, scale = max|x|/127): each product carries a rounding error of up to half a step of the
/// activation block, about 0.5/127 ≈ 0.4% of the block's largest value. The reference uses exact f32
/// activations on the same dequantised weights, so the two differ by that rounding, compounded
/// through 7 matmuls per block and the LM head. We allow 3% relative: well above the measured
/// values (printed) and well below what a real bug gives (a wrong mask, position or head grouping
/// moves the logits by tens of percent, see the `bug_sized_error_is_detected` test).
const QUANT_TOL: f32 = 0.03;

#[test]
fn q8_0_logits_match_reference_within_activation_rounding() {
    let err = logits_rel_err(GgmlDType::Q8_0, &gqa_shape());
    println!("Q8_0 relative logit error {err}");
    assert!(err < QUANT_TOL, "relative logit error {err}");
}

#[test]
fn q4_0_logits_match_reference_within_activation_rounding() {
    let err = logits_rel_err(GgmlDType::Q4_0, &gqa_shape());
    println!("Q4_0 relative logit error {err}");
    assert!(err < QUANT_TOL, "relative logit error {err}");
}

/// Every other weight type with a packed kernel, end to end against the f64 reference on the same
/// dequantised weights. The 256-value super-block types need a width that is a multiple of 256.
#[test]
fn every_packed_type_matches_reference_within_activation_rounding() {
    let wide = labelmill::tiny::TinyShape {
        dim: 256,
        ffn: 512,
        ..gqa_shape()
    };
    for (quant, shape) in [
        (GgmlDType::Q4_1, gqa_shape()),
        (GgmlDType::Q5_0, gqa_shape()),
        (GgmlDType::Q5_1, gqa_shape()),
        (GgmlDType::Q4K, wide.clone()),
        (GgmlDType::Q5K, wide.clone()),
        (GgmlDType::Q6K, wide.clone()),
        (GgmlDType::Q3K, wide.clone()),
        (GgmlDType::Q2K, wide.clone()),
    ] {
        let err = logits_rel_err(quant, &shape);
        println!("{quant:?} relative logit error {err}");
        assert!(err < QUANT_TOL, "{quant:?}: relative logit error {err}");
    }
}

/// The tolerance above is meaningful: scoring a different position (an off-by-one, the kind of bug
/// the comparison must catch) differs from the reference by far more than it.
#[test]
fn bug_sized_error_is_detected() {
    let (e, dir) = engine(&gqa_shape(), GgmlDType::Q8_0, 7);
    let r = RefModel::load(&dir.join("model.gguf"));
    let t = prepared(&e, TASK);
    let d = doc(&e, &t, "the server crashes after the update");
    let got = e.next_token_logits(&t, &[&d]).unwrap().remove(0);
    let mut all = r.logits(&prompt(&t, &d));
    all.pop();
    let off_by_one = all.pop().unwrap();
    let err = rel_err(&got, &off_by_one);
    assert!(
        err > 10.0 * QUANT_TOL,
        "an off-by-one position only moved logits by {err}"
    );
}

#[test]
fn multi_token_and_shared_first_token_labels_are_exact_sums() {
    let (e, dir) = engine(&gqa_shape(), GgmlDType::F32, 7);
    let r = RefModel::load(&dir.join("model.gguf"));
    let t = prepared(&e, MULTI);
    // The task must really exercise both cases, whatever the tokenizer learned.
    assert!(
        t.label_ids.iter().any(|l| l.len() >= 3),
        "labels {:?}",
        t.label_ids
    );
    assert_eq!(
        t.label_ids[0][0], t.label_ids[1][0],
        "billing / billing dispute share a first token"
    );
    assert!(t.trie.has_continuations());

    let texts = [
        "refund my money",
        "crash",
        "I was billed twice and the app crashed, please refund me soon",
    ];
    let docs: Vec<Vec<u32>> = texts.iter().map(|s| doc(&e, &t, s)).collect();
    let refs: Vec<&[u32]> = docs.iter().map(Vec::as_slice).collect();
    let scores = e.score(&t, &refs).unwrap();
    for (d, s) in docs.iter().zip(&scores) {
        let p = prompt(&t, d);
        for (li, label) in t.label_ids.iter().enumerate() {
            let full = [p.as_slice(), label].concat();
            let logits = r.logits(&full);
            let want: f32 = label
                .iter()
                .enumerate()
                .map(|(j, &tok)| log_softmax(&logits[p.len() - 1 + j])[tok as usize])
                .sum();
            let got = s.log_probs[li];
            assert!(
                (got - want).abs() < 1e-3,
                "label {li} {label:?}: engine {got}, reference {want}"
            );
        }
        // Probabilities are the label log-probabilities normalised over the set.
        let z: f32 = s.log_probs.iter().map(|l| l.exp()).sum();
        for (p, l) in s.probs.iter().zip(&s.log_probs) {
            assert!((p - l.exp() / z).abs() < 1e-5);
        }
        // The label mass is the next-token probability of the distinct first tokens.
        let first = log_softmax(&r.logits(&p).pop().unwrap());
        let mass: f32 = t
            .trie
            .first_tokens
            .iter()
            .map(|&tok| first[tok as usize].exp())
            .sum();
        assert!(
            (s.label_mass - mass).abs() < 1e-4,
            "mass {} vs {mass}",
            s.label_mass
        );
    }
}

/// A model with tied embeddings (no `output.weight`) uses its embedding as the LM head.
#[test]
fn tied_embeddings_match_reference() {
    use candle_core::quantized::gguf_file::{self, Content};
    let src = common::model_dir(&gqa_shape(), GgmlDType::F32, 9);
    let dir = tempfile::tempdir().unwrap();
    let mut f = std::fs::File::open(src.join("model.gguf")).unwrap();
    let c = Content::read(&mut f).unwrap();
    let tensors: Vec<(String, candle_core::quantized::QTensor)> = c
        .tensor_infos
        .keys()
        .filter(|n| n.as_str() != "output.weight")
        .map(|n| {
            (
                n.clone(),
                c.tensor(&mut f, n, &candle_core::Device::Cpu).unwrap(),
            )
        })
        .collect();
    let md: Vec<(&str, &candle_core::quantized::gguf_file::Value)> =
        c.metadata.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let ts: Vec<(&str, &candle_core::quantized::QTensor)> =
        tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
    let mut out = std::fs::File::create(dir.path().join("model.gguf")).unwrap();
    gguf_file::write(&mut out, &md, &ts).unwrap();
    let e = Engine::load(
        &dir.path().join("model.gguf"),
        None,
        &candle_core::Device::Cpu,
    )
    .unwrap();
    let r = RefModel::load(&dir.path().join("model.gguf"));
    let t = prepared(&e, TASK);
    let d = doc(&e, &t, "my invoice is wrong");
    let got = e.next_token_logits(&t, &[&d]).unwrap().remove(0);
    let want = r.logits(&prompt(&t, &d)).pop().unwrap();
    let err = rel_err(&got, &want);
    assert!(err < 1e-3, "relative logit error {err}");
    // And it really is a different head from the untied model's.
    let (untied, _) = engine(&gqa_shape(), GgmlDType::F32, 9);
    let other = untied.next_token_logits(&t, &[&d]).unwrap().remove(0);
    assert!(rel_err(&other, &want) > 0.1);
}
