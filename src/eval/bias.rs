//! Per-label biases fitted on labelled data: the additive offsets `b` that minimise the negative
//! log-likelihood of the gold labels under `softmax((log_probs + base + b) / T)`, at the task's
//! own temperature `T` and on top of its content-free calibration (`base`).
//!
//! The NLL is convex in `b` (a softmax cross-entropy whose logits are linear in `b`), so plain
//! gradient descent with a step below the inverse curvature converges. A small L2 term keeps a
//! label that never occurs in the data from running off to minus infinity, and `b` is centred
//! (mean 0): adding a constant to every label changes nothing.

use crate::engine::scoring::adjusted;

/// L2 weight on the biases.
const L2: f64 = 1e-3;
/// Most gradient steps.
const STEPS: usize = 5000;
/// Stop when the gradient's largest component is below this.
const TOLERANCE: f64 = 1e-7;

/// One labelled example: the label log-probabilities (no temperature) and the gold index.
pub type Scored = (Vec<f32>, usize);

/// Mean NLL of the gold labels with offsets `base + bias` at temperature `t`.
pub fn nll(examples: &[Scored], base: &[f32], bias: &[f32], t: f32) -> f64 {
    let off = offsets(base, bias);
    let sum: f64 = examples
        .iter()
        .map(|(lp, gold)| -f64::from(adjusted(lp, &off, t)[*gold].max(1e-30)).ln())
        .sum();
    sum / examples.len().max(1) as f64
}

/// The biases (label order) that minimise [`nll`] over `examples`, on top of `base`.
pub fn fit_bias(examples: &[Scored], base: &[f32], t: f32) -> Vec<f32> {
    let k = base.len();
    let mut b = vec![0f64; k];
    if examples.is_empty() {
        return vec![0.0; k];
    }
    // The NLL's Hessian in b is at most 1/(2 T²) (softmax covariance over T²); a step of T²
    // stays below the inverse curvature.
    let t64 = f64::from(t);
    let step = t64 * t64;
    for _ in 0..STEPS {
        let bias: Vec<f32> = b.iter().map(|&x| x as f32).collect();
        let off = offsets(base, &bias);
        let mut grad = vec![0f64; k];
        for (lp, gold) in examples {
            for (j, p) in adjusted(lp, &off, t).iter().enumerate() {
                let y = if j == *gold { 1.0 } else { 0.0 };
                grad[j] += (f64::from(*p) - y) / t64;
            }
        }
        let n = examples.len() as f64;
        let mut largest = 0f64;
        for (g, bj) in grad.iter_mut().zip(&b) {
            *g = *g / n + L2 * bj;
            largest = largest.max(g.abs());
        }
        if largest < TOLERANCE {
            break;
        }
        for (bj, g) in b.iter_mut().zip(&grad) {
            *bj -= step * g;
        }
        let mean = b.iter().sum::<f64>() / k as f64;
        b.iter_mut().for_each(|x| *x -= mean);
    }
    b.into_iter().map(|x| x as f32).collect()
}

/// Label probabilities of every example with biases fitted on the other folds: example `i` is in
/// fold `i % folds`. An honest estimate of what fitted biases do on data they were not fitted on.
pub fn cross_fitted(examples: &[Scored], base: &[f32], t: f32, folds: usize) -> Vec<Vec<f32>> {
    let folds = folds.clamp(2, examples.len().max(2));
    let mut out = vec![Vec::new(); examples.len()];
    for f in 0..folds {
        let train: Vec<Scored> = examples
            .iter()
            .enumerate()
            .filter(|(i, _)| i % folds != f)
            .map(|(_, e)| e.clone())
            .collect();
        let off = offsets(base, &fit_bias(&train, base, t));
        for (i, (lp, _)) in examples.iter().enumerate().filter(|(i, _)| i % folds == f) {
            out[i] = adjusted(lp, &off, t);
        }
    }
    out
}

fn offsets(base: &[f32], bias: &[f32]) -> Vec<f32> {
    base.iter().zip(bias).map(|(a, b)| a + b).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::scoring::argmax;

    /// A model biased towards label 0: every document's true label gets +1 nat, label 0 gets +2.
    fn biased(n: usize, labels: usize) -> Vec<Scored> {
        (0..n)
            .map(|i| {
                let gold = i % labels;
                let mut lp = vec![-3f32; labels];
                lp[gold] += 1.0;
                lp[0] += 2.0;
                (lp, gold)
            })
            .collect()
    }

    #[test]
    fn a_fitted_bias_removes_a_constant_label_bias() {
        let ex = biased(300, 3);
        let base = [0f32; 3];
        let right = |off: &[f32]| {
            ex.iter()
                .filter(|(lp, g)| argmax(&adjusted(lp, off, 1.0)) == *g)
                .count()
        };
        assert_eq!(right(&base), 100, "uncorrected, label 0 always wins");
        let b = fit_bias(&ex, &base, 1.0);
        assert!((b.iter().sum::<f32>()).abs() < 1e-4, "centred: {b:?}");
        assert!(b[0] < b[1] - 1.5 && (b[1] - b[2]).abs() < 1e-3, "{b:?}");
        assert_eq!(right(&b), 300);
        assert!(nll(&ex, &base, &b, 1.0) < nll(&ex, &base, &[0.0; 3], 1.0));
    }

    #[test]
    fn the_bias_is_fitted_on_top_of_the_base_offsets() {
        let ex = biased(300, 3);
        // A base that already removes the bias leaves (almost) nothing to fit.
        let base = [-2f32, 0.0, 0.0];
        let centred: Vec<f32> = base.iter().map(|b| b + 2.0 / 3.0).collect();
        let b = fit_bias(&ex, &centred, 1.0);
        assert!(b.iter().all(|x| x.abs() < 0.05), "{b:?}");
    }

    #[test]
    fn cross_fitting_scores_each_example_with_the_other_folds_biases() {
        let ex = biased(100, 4);
        let probs = cross_fitted(&ex, &[0.0; 4], 1.0, 5);
        assert_eq!(probs.len(), 100);
        let right = ex
            .iter()
            .zip(&probs)
            .filter(|((_, g), p)| argmax(p) == *g)
            .count();
        assert_eq!(right, 100);
        // A label absent from the training folds stays finite.
        let only_zero: Vec<Scored> = ex.iter().filter(|e| e.1 == 0).cloned().collect();
        assert!(fit_bias(&only_zero, &[0.0; 4], 1.0)
            .iter()
            .all(|b| b.is_finite()));
    }
}
