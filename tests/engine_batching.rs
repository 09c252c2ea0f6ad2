//! Batch == single and cached prefix == uncached prompt, on generated models (GQA and not).

mod common;

use candle_core::quantized::GgmlDType;
use common::{engine, gqa_shape, max_abs, mha_shape, varied_docs};
use labelmill::engine::Engine;
use labelmill::task::TaskFile;
use labelmill::tiny::TinyShape;

/// Single-token labels behind a chat preset with an example, and multi-token labels.
const TASKS: &str = labelmill::engine::equivalence::CHECK_TASKS;

fn check_batch_invariance(shape: &TinyShape, quant: GgmlDType) {
    let (e, _) = engine(shape, quant, 11);
    for spec in TaskFile::parse(TASKS, "test").unwrap().task {
        let t = e.prepare(&spec).unwrap();
        let docs: Vec<Vec<u32>> = varied_docs()
            .iter()
            .map(|s| t.encode_doc(e.tokenizer(), s).unwrap().ids)
            .collect();
        let lens: Vec<usize> = docs.iter().map(Vec::len).collect();
        assert!(
            docs.len() >= 16 && lens.iter().max().unwrap() / lens.iter().min().unwrap() >= 50,
            "{lens:?}"
        );
        let refs: Vec<&[u32]> = docs.iter().map(Vec::as_slice).collect();
        let batched = e.score(&t, &refs).unwrap();
        for (i, d) in docs.iter().enumerate() {
            let alone = e.score(&t, &[d]).unwrap().remove(0);
            let diff = max_abs(&alone.probs, &batched[i].probs)
                .max(max_abs(&alone.log_probs, &batched[i].log_probs))
                .max((alone.label_mass - batched[i].label_mass).abs());
            assert!(
                diff < 1e-4,
                "{} doc {i} ({} tokens): batch vs alone differ by {diff}: {alone:?} vs {:?}",
                t.name,
                d.len(),
                batched[i]
            );
        }
    }
}

/// Largest differences between cached-prefix and uncached scores: (probabilities, label
/// log-probabilities relative to their size, label mass).
fn prefix_equivalence_gaps(e: &Engine) -> (f32, f32, f32) {
    let mut gaps = (0f32, 0f32, 0f32);
    for spec in TaskFile::parse(TASKS, "test").unwrap().task {
        let t = e.prepare(&spec).unwrap();
        assert!(t.prefix_ids.len() > 5, "the test needs a real prefix");
        for text in varied_docs().iter().step_by(3) {
            let d = t.encode_doc(e.tokenizer(), text).unwrap().ids;
            let cached = e.score(&t, &[&d]).unwrap().remove(0);
            let uncached = e.score_uncached(&t, &d).unwrap();
            let rel_lp = cached
                .log_probs
                .iter()
                .zip(&uncached.log_probs)
                .map(|(a, b)| (a - b).abs() / b.abs().max(1.0))
                .fold(0f32, f32::max);
            gaps.0 = gaps.0.max(max_abs(&cached.probs, &uncached.probs));
            gaps.1 = gaps.1.max(rel_lp);
            gaps.2 = gaps.2.max((cached.label_mass - uncached.label_mass).abs());
        }
    }
    println!(
        "cached vs uncached: probs {:.2e}, log-probs (relative) {:.2e}, mass {:.2e}",
        gaps.0, gaps.1, gaps.2
    );
    gaps
}

#[test]
fn batch_invariance_gqa_q8_0() {
    check_batch_invariance(&gqa_shape(), GgmlDType::Q8_0);
}

#[test]
fn batch_invariance_mha_q4_0() {
    check_batch_invariance(&mha_shape(), GgmlDType::Q4_0);
}

#[test]
fn batch_invariance_gqa_f32() {
    check_batch_invariance(&gqa_shape(), GgmlDType::F32);
}

/// Every weight type labelmill loads, on a 4-layer model (deep enough for a one-ulp difference
/// in an early layer to grow through the 8-bit activation rounding of the later ones): the cached
/// prefix scores as the whole prompt run at once. Attention computes each query alone, in key
/// order, so the two paths do the same arithmetic; the limit is the 1e-3 and the figures
/// printed are 0 when the paths agree to the bit.
#[test]
fn prefix_cache_equivalence_every_weight_type() {
    use GgmlDType::*;
    let shape = TinyShape {
        layers: 4,
        dim: 256,
        heads: 8,
        kv_heads: 2,
        vocab: 512,
        ffn: 512,
        context: 1024,
    };
    for q in [
        F32, F16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2K, Q3K, Q4K, Q5K, Q6K,
    ] {
        let g = prefix_equivalence_gaps(&engine(&shape, q, 3).0);
        println!("{q:?}: {g:?}");
        assert!(g.0 <= 1e-3 && g.2 <= 1e-3, "{q:?}: scores differ: {g:?}");
        assert!(g.1 <= 1e-3, "{q:?}: label log-probabilities differ: {g:?}");
    }
}

#[test]
fn prefix_cache_equivalence_mha_f32() {
    let g = prefix_equivalence_gaps(&engine(&mha_shape(), GgmlDType::F32, 3).0);
    assert!(g.0 < 1e-4 && g.1 < 1e-4 && g.2 < 1e-4, "{g:?}");
}

#[test]
fn prefix_cache_equivalence_gqa_f32() {
    let g = prefix_equivalence_gaps(&engine(&gqa_shape(), GgmlDType::F32, 3).0);
    assert!(g.0 < 1e-4 && g.1 < 1e-4 && g.2 < 1e-4, "{g:?}");
}

#[test]
fn prefix_is_computed_once_and_reused() {
    let (e, _) = engine(&gqa_shape(), GgmlDType::Q8_0, 5);
    let spec = TaskFile::parse(TASKS, "test").unwrap().task.remove(0);
    let t = e.prepare(&spec).unwrap();
    let d = t.encode_doc(e.tokenizer(), "refund please").unwrap().ids;
    for _ in 0..3 {
        e.score(&t, &[&d, &d]).unwrap();
    }
    let s = e.prefix_cache_stats();
    assert_eq!((s.misses, s.hits, s.entries), (1, 2, 1));
}

/// A document with no tokens under a task with no suffix leaves no position to score: an error
/// from every entry point, never a panic.
#[test]
fn empty_rows_are_refused() {
    let (e, _) = engine(&gqa_shape(), GgmlDType::Q8_0, 5);
    let labels = vec![("a".to_string(), vec![300]), ("b".to_string(), vec![301])];
    let t = labelmill::engine::prepared::PreparedTask::from_ids("t", vec![1, 400], vec![], labels);
    let empty: &[u32] = &[];
    assert!(e.score(&t, &[&[401], empty]).is_err());
    assert!(e.next_token_logits(&t, &[empty]).is_err());
    assert!(e.score(&t, &[&[401]]).is_ok());
}
