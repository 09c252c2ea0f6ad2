//! Weight formats through the whole engine: `bf16` (dequantised at load) and `bf16-per-batch`
//! (dequantised per product) are one arithmetic, score close to the quantised weights, and keep
//! batch invariance and prefix-cache equivalence; `labelmill check-device` runs these checks.

mod common;

use std::process::Command;

use candle_core::quantized::GgmlDType;
use common::{engine_with, gqa_shape, mha_shape};
use labelmill::engine::equivalence::{self, Gaps, CHECK_TASKS};
use labelmill::engine::{Engine, WeightFormat};
use labelmill::task::TaskFile;
use labelmill::tiny::TinyShape;

fn docs(e: &Engine, t: &labelmill::engine::prepared::PreparedTask) -> Vec<Vec<u32>> {
    equivalence::varied_docs()
        .iter()
        .map(|s| t.encode_doc(e.tokenizer(), s).unwrap().ids)
        .collect()
}

/// Gaps of engine `a` against engine `b` over every check task and document.
fn gaps_between(a: &Engine, b: &Engine) -> Gaps {
    let mut g = Gaps::default();
    for spec in TaskFile::parse(CHECK_TASKS, "test").unwrap().task {
        let (ta, tb) = (a.prepare(&spec).unwrap(), b.prepare(&spec).unwrap());
        g.merge(&equivalence::between((a, &ta), (b, &tb), &docs(a, &ta)).unwrap());
    }
    g
}

#[test]
fn bf16_formats_are_one_arithmetic_close_to_the_quantized_weights() {
    // Q4_K packs 256 values a block: the width and the feed-forward must be multiples.
    let shape = TinyShape {
        dim: 256,
        ffn: 512,
        ..gqa_shape()
    };
    for quant in [GgmlDType::Q8_0, GgmlDType::Q4_0, GgmlDType::Q4K] {
        let (q, _) = engine_with(&shape, quant, 11, WeightFormat::Quantized);
        let (b, _) = engine_with(&shape, quant, 11, WeightFormat::Bf16);
        let (p, _) = engine_with(&shape, quant, 11, WeightFormat::Bf16PerBatch);
        assert_eq!(b.info().weights, WeightFormat::Bf16);
        assert_eq!(p.info().weights, WeightFormat::Bf16PerBatch);
        let (a, _) = engine_with(&shape, quant, 11, WeightFormat::Auto);
        assert_eq!(a.info().weights, WeightFormat::Quantized, "auto on the CPU");

        let same = gaps_between(&p, &b);
        assert_eq!(
            (same.probs, same.log_probs, same.label_mass),
            (0.0, 0.0, 0.0),
            "{quant:?}: bf16 per batch and at load differ: {same:?}"
        );
        let g = gaps_between(&b, &q);
        println!("{quant:?} bf16 vs quantized: {g:?}");
        assert_eq!(g.docs, 36);
        // Not the same numbers (the format really changed the products) ...
        assert!(
            g.log_probs > 0.0,
            "{quant:?}: bf16 scored exactly as quantized"
        );
        // ... but within what rounding weights to 8 significant bits and activations to bf16
        // (instead of int8 blocks) moves a label log-probability.
        assert!(g.log_probs_rel < 2e-2, "{quant:?}: {g:?}");
        assert!(g.label_mass < 1e-2, "{quant:?}: {g:?}");
    }
}

#[test]
fn bf16_formats_keep_batch_invariance_and_prefix_equivalence() {
    for shape in [gqa_shape(), mha_shape()] {
        for weights in [WeightFormat::Bf16, WeightFormat::Bf16PerBatch] {
            let (e, _) = engine_with(&shape, GgmlDType::Q4_0, 5, weights);
            let (mut batch, mut prefix) = (Gaps::default(), Gaps::default());
            for spec in TaskFile::parse(CHECK_TASKS, "test").unwrap().task {
                let t = e.prepare(&spec).unwrap();
                let d = docs(&e, &t);
                batch.merge(&equivalence::batch_vs_alone(&e, &t, &d).unwrap());
                prefix.merge(&equivalence::cached_vs_uncached(&e, &t, &d).unwrap());
            }
            println!(
                "{weights} heads {}/{}: batch {batch:?}, prefix {prefix:?}",
                shape.heads, shape.kv_heads
            );
            let limit = labelmill::check_device::limits(weights).same_device;
            assert_eq!((batch.docs, prefix.docs), (36, 36));
            assert!(
                batch.worst() <= limit,
                "{weights}: batch vs alone {batch:?}"
            );
            assert!(
                prefix.worst() <= limit,
                "{weights}: cached vs uncached {prefix:?}"
            );
            assert_eq!(batch.best_label_changes + prefix.best_label_changes, 0);
        }
    }
}

#[test]
fn check_device_reports_every_model_and_format() {
    let out = Command::new(env!("CARGO_BIN_EXE_labelmill"))
        .args([
            "check-device",
            "--quant",
            "q8_0,q4_k",
            "--layers",
            "1",
            "--dim",
            "256",
        ])
        .args([
            "--heads",
            "4",
            "--kv-heads",
            "2",
            "--ffn",
            "512",
            "--vocab",
            "512",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let reports: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let seen: Vec<(String, String)> = reports
        .iter()
        .map(|r| {
            (
                r["quant"].as_str().unwrap().to_string(),
                r["weights"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let want: Vec<(String, String)> = ["Q8_0", "Q4K"]
        .iter()
        .flat_map(|q| {
            WeightFormat::ALL
                .iter()
                .map(move |w| (q.to_string(), w.to_string()))
        })
        .collect();
    assert_eq!(seen, want);
    for r in &reports {
        // A CPU build checks the CPU against itself: the same engine twice scores identically.
        assert_eq!(r["device"], "cpu");
        assert_eq!(r["cross_device"]["log_probs"], 0.0, "{r}");
        for part in ["batch", "prefix", "cross_device"] {
            assert_eq!(r[part]["docs"], 36, "{r}");
        }
        assert_eq!(r["pass"], true, "{r}");
    }
}
