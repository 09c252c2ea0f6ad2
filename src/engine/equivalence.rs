//! The engine's equivalence checks as measurements: batch == alone, cached prefix == whole prompt,
//! one engine == another (CPU against GPU, quantised against bf16). Tests hold them to limits, and
//! `labelmill check-device` runs them on whatever device the binary was built for.

use super::prepared::PreparedTask;
use super::scoring::LabelScores;
use super::{Engine, EngineError};

/// Two tasks that cover both scoring passes: single-token labels behind a chat preset with a
/// few-shot example (a long cached prefix), and multi-token labels sharing a first token.
pub const CHECK_TASKS: &str = r#"
[[task]]
name = "ticket"
preset = "llama2-chat"
system = "You route support tickets."
instruction = "Classify the ticket as one of: {{labels}}."
answer_prefix = "Category:"
labels = ["billing", "technical", "account", "other"]
examples = [{ text = "I was charged twice", label = "billing" }]

[[task]]
name = "multi"
template = "Ticket: {{text}}\nTeam:"
labels = [
  { name = "bill", verbaliser = " billing" },
  { name = "bill-dispute", verbaliser = " billing dispute" },
  { name = "tech", verbaliser = " technical" },
]
"#;

/// Documents of very different lengths (1 to 144 words), so a batch mixes short and long rows.
pub fn varied_docs() -> Vec<String> {
    let words = [
        "invoice", "crash", "password", "refund", "server", "login", "the", "and", "my", "account",
        "error", "payment", "please", "help", "today", "update", "team", "price", "slow", "delete",
    ];
    const LENGTHS: [usize; 18] = [
        1, 2, 3, 5, 8, 13, 21, 34, 55, 89, 144, 4, 6, 9, 30, 70, 120, 7,
    ];
    LENGTHS
        .iter()
        .enumerate()
        .map(|(i, &n)| {
            (0..n)
                .map(|j| words[(i * 7 + j * 3) % words.len()])
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect()
}

/// The largest differences between two sets of label scores.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct Gaps {
    /// Label probabilities, absolute.
    pub probs: f32,
    /// Label log-probabilities, absolute.
    pub log_probs: f32,
    /// Label log-probabilities relative to their size (`|a − b| / max(|b|, 1)`).
    pub log_probs_rel: f32,
    /// Probability mass on the labels, absolute.
    pub label_mass: f32,
    /// Documents whose best label differs.
    pub best_label_changes: usize,
    /// Documents compared.
    pub docs: usize,
}

/// The larger of two gaps, where a NaN (a score that is not a number) counts as infinitely far.
fn wider(a: f32, b: f32) -> f32 {
    if a.is_nan() || b.is_nan() {
        f32::INFINITY
    } else {
        a.max(b)
    }
}

impl Gaps {
    /// Adds the comparison of `a` with the reference `b`.
    pub fn add(&mut self, a: &LabelScores, b: &LabelScores) {
        let pairs = || a.log_probs.iter().zip(&b.log_probs);
        self.probs = wider(self.probs, max_abs(&a.probs, &b.probs));
        self.log_probs = wider(self.log_probs, max_abs(&a.log_probs, &b.log_probs));
        self.log_probs_rel = pairs()
            .map(|(x, y)| (x - y).abs() / y.abs().max(1.0))
            .fold(self.log_probs_rel, wider);
        self.label_mass = wider(self.label_mass, (a.label_mass - b.label_mass).abs());
        self.best_label_changes += usize::from(a.best() != b.best());
        self.docs += 1;
    }

    /// The worst of the probability, relative log-probability and mass gaps.
    pub fn worst(&self) -> f32 {
        wider(wider(self.probs, self.log_probs_rel), self.label_mass)
    }

    /// Merges another set of gaps into this one.
    pub fn merge(&mut self, o: &Gaps) {
        self.probs = wider(self.probs, o.probs);
        self.log_probs = wider(self.log_probs, o.log_probs);
        self.log_probs_rel = wider(self.log_probs_rel, o.log_probs_rel);
        self.label_mass = wider(self.label_mass, o.label_mass);
        self.best_label_changes += o.best_label_changes;
        self.docs += o.docs;
    }
}

/// Largest `|a − b|`; a length mismatch counts as infinitely far.
fn max_abs(a: &[f32], b: &[f32]) -> f32 {
    if a.len() != b.len() {
        return f32::INFINITY;
    }
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, wider)
}

/// Each document scored in one batch with all the others, against scored alone.
pub fn batch_vs_alone(
    e: &Engine,
    task: &PreparedTask,
    docs: &[Vec<u32>],
) -> Result<Gaps, EngineError> {
    let refs: Vec<&[u32]> = docs.iter().map(Vec::as_slice).collect();
    let batched = e.score(task, &refs)?;
    let mut gaps = Gaps::default();
    for (d, b) in docs.iter().zip(&batched) {
        let alone = e.score(task, &[d])?.remove(0);
        gaps.add(b, &alone);
    }
    Ok(gaps)
}

/// Each document scored on the cached prefix KV, against its whole prompt run from scratch.
pub fn cached_vs_uncached(
    e: &Engine,
    task: &PreparedTask,
    docs: &[Vec<u32>],
) -> Result<Gaps, EngineError> {
    let mut gaps = Gaps::default();
    for d in docs {
        let cached = e.score(task, &[d])?.remove(0);
        let uncached = e.score_uncached(task, d)?;
        gaps.add(&cached, &uncached);
    }
    Ok(gaps)
}

/// The same documents batched on engine `a` against engine `b` (the reference); each engine has
/// its own prepared copy of the task.
pub fn between(
    a: (&Engine, &PreparedTask),
    b: (&Engine, &PreparedTask),
    docs: &[Vec<u32>],
) -> Result<Gaps, EngineError> {
    let refs: Vec<&[u32]> = docs.iter().map(Vec::as_slice).collect();
    let sa = a.0.score(a.1, &refs)?;
    let sb = b.0.score(b.1, &refs)?;
    let mut gaps = Gaps::default();
    for (x, y) in sa.iter().zip(&sb) {
        gaps.add(x, y);
    }
    Ok(gaps)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scores(log_probs: Vec<f32>) -> LabelScores {
        let probs = crate::engine::scoring::softmax(&log_probs, 1.0);
        LabelScores {
            label_mass: log_probs.iter().map(|l| l.exp()).sum(),
            probs,
            log_probs,
        }
    }

    #[test]
    fn gaps_measure_the_largest_difference_and_count_label_changes() {
        let mut g = Gaps::default();
        g.add(&scores(vec![-1.0, -3.0]), &scores(vec![-1.0, -3.0]));
        assert_eq!((g.worst(), g.docs), (0.0, 1));
        g.add(&scores(vec![-1.5, -3.0]), &scores(vec![-1.0, -3.0]));
        assert!((g.log_probs - 0.5).abs() < 1e-6 && (g.log_probs_rel - 0.5).abs() < 1e-6);
        assert_eq!(g.best_label_changes, 0);
        // A near-tie flipping: a label change, small gaps.
        g.add(&scores(vec![-3.0, -2.9]), &scores(vec![-2.9, -3.0]));
        assert_eq!((g.best_label_changes, g.docs), (1, 3));
        assert!((g.log_probs - 0.5).abs() < 1e-6, "{g:?}");
        // Relative to the reference's size: 2 off a log-probability of -8 is 0.25.
        let mut r = Gaps::default();
        r.add(&scores(vec![-10.0]), &scores(vec![-8.0]));
        assert!((r.log_probs - 2.0).abs() < 1e-6 && (r.log_probs_rel - 0.25).abs() < 1e-6);
    }

    #[test]
    fn a_nan_score_is_infinitely_far() {
        let mut g = Gaps::default();
        g.add(&scores(vec![f32::NAN, -3.0]), &scores(vec![-1.0, -3.0]));
        assert_eq!(g.worst(), f32::INFINITY);
        let mut m = Gaps::default();
        m.merge(&g);
        assert_eq!(m.log_probs, f32::INFINITY);
    }
}
