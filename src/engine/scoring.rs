//! Label scoring from next-token log-probabilities: a trie over the labels' token sequences, exact
//! sums of token log-probabilities, normalisation over the label set and the label mass.

use std::collections::BTreeSet;

/// An internal trie node: a label token that other label tokens follow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrieNode {
    /// The token fed to the model at this node.
    pub token: u32,
    /// The node before it (`None`: it directly follows the document).
    pub parent: Option<usize>,
    /// 1 for a label's first token, 2 for the second, ...
    pub depth: usize,
}

/// How one label's log-probability is assembled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabelPath {
    /// The label's first token (scored at the document's last position).
    pub first: u32,
    /// Each later token, with the trie node whose output position predicts it.
    pub steps: Vec<(usize, u32)>,
}

/// The label set as a token trie. Labels sharing leading tokens share nodes, so each distinct
/// label prefix is run through the model once per document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabelTrie {
    /// Internal nodes, parents before children.
    pub nodes: Vec<TrieNode>,
    /// One path per label, in label order.
    pub paths: Vec<LabelPath>,
    /// Distinct first tokens, sorted.
    pub first_tokens: Vec<u32>,
    /// Distinct tokens predicted at trie nodes, sorted.
    pub step_tokens: Vec<u32>,
}

/// A document's scores over its task's labels.
#[derive(Debug, Clone, PartialEq)]
pub struct LabelScores {
    /// Sum of the label's token log-probabilities under the model (temperature not applied).
    pub log_probs: Vec<f32>,
    /// Probabilities normalised over the label set, after the task's label offsets (bias,
    /// calibration) and temperature.
    pub probs: Vec<f32>,
    /// Probability the model gave to the labels' distinct first tokens, out of its whole vocabulary.
    pub label_mass: f32,
}

impl LabelScores {
    /// Index of the most probable label.
    pub fn best(&self) -> usize {
        argmax(&self.probs)
    }
}

/// Index of the largest probability (the first one on ties).
pub fn argmax(probs: &[f32]) -> usize {
    let mut best = 0;
    for (i, p) in probs.iter().enumerate() {
        if *p > probs[best] {
            best = i;
        }
    }
    best
}

impl LabelTrie {
    /// Builds the trie. Every label must have at least one token and labels must differ.
    pub fn new(labels: &[Vec<u32>]) -> Self {
        let mut nodes: Vec<TrieNode> = Vec::new();
        let mut paths = Vec::with_capacity(labels.len());
        for toks in labels {
            let mut parent: Option<usize> = None;
            let mut steps = Vec::new();
            // Every token but the last becomes a node: its output predicts the next label token.
            for (d, &tok) in toks.iter().enumerate().take(toks.len().saturating_sub(1)) {
                let found = nodes
                    .iter()
                    .position(|n| n.token == tok && n.parent == parent);
                let idx = found.unwrap_or_else(|| {
                    nodes.push(TrieNode {
                        token: tok,
                        parent,
                        depth: d + 1,
                    });
                    nodes.len() - 1
                });
                steps.push((idx, toks[d + 1]));
                parent = Some(idx);
            }
            paths.push(LabelPath {
                first: toks[0],
                steps,
            });
        }
        let first_tokens = paths
            .iter()
            .map(|p| p.first)
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let step_tokens = paths
            .iter()
            .flat_map(|p| p.steps.iter().map(|s| s.1))
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        Self {
            nodes,
            paths,
            first_tokens,
            step_tokens,
        }
    }

    /// Whether any label has more than one token (then a second pass is needed).
    pub fn has_continuations(&self) -> bool {
        !self.nodes.is_empty()
    }

    /// Deepest label, in tokens.
    pub fn max_depth(&self) -> usize {
        self.paths
            .iter()
            .map(|p| p.steps.len() + 1)
            .max()
            .unwrap_or(0)
    }

    /// `a[i][j]`: node `i` may attend to node `j` (itself or an ancestor).
    pub fn ancestors(&self) -> Vec<Vec<bool>> {
        let n = self.nodes.len();
        (0..n)
            .map(|i| {
                let mut row = vec![false; n];
                let mut cur = Some(i);
                while let Some(c) = cur {
                    row[c] = true;
                    cur = self.nodes[c].parent;
                }
                row
            })
            .collect()
    }

    /// Combines one document's log-probabilities into label scores.
    ///
    /// `first[k]` is log p(`first_tokens[k]` | document); `step(node, j)` is
    /// log p(`step_tokens[j]` | document, path to `node`). The probabilities are
    /// `softmax((log_probs + offsets) / temperature)`.
    pub fn score(
        &self,
        first: &[f32],
        step: impl Fn(usize, usize) -> f32,
        offsets: &[f32],
        temperature: f32,
    ) -> LabelScores {
        let first_at = |tok: u32| {
            first[self
                .first_tokens
                .binary_search(&tok)
                .expect("first token is in the trie")]
        };
        let log_probs: Vec<f32> = self
            .paths
            .iter()
            .map(|p| {
                p.steps.iter().fold(first_at(p.first), |acc, &(node, tok)| {
                    acc + step(
                        node,
                        self.step_tokens
                            .binary_search(&tok)
                            .expect("step token is in the trie"),
                    )
                })
            })
            .collect();
        let probs = adjusted(&log_probs, offsets, temperature);
        let label_mass = first.iter().map(|lp| lp.exp()).sum::<f32>().min(1.0);
        LabelScores {
            log_probs,
            probs,
            label_mass,
        }
    }
}

/// `softmax((log_probs + offsets) / temperature)`: the label probabilities after a task's biases
/// and calibration (`offsets`, label order) and temperature.
pub fn adjusted(log_probs: &[f32], offsets: &[f32], temperature: f32) -> Vec<f32> {
    assert_eq!(log_probs.len(), offsets.len(), "one offset per label");
    let z: Vec<f32> = log_probs.iter().zip(offsets).map(|(l, o)| l + o).collect();
    softmax(&z, temperature)
}

/// `softmax(x / temperature)`, computed stably.
pub fn softmax(x: &[f32], temperature: f32) -> Vec<f32> {
    let scaled: Vec<f32> = x.iter().map(|v| v / temperature).collect();
    let m = scaled.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
    let e: Vec<f32> = scaled.iter().map(|v| (v - m).exp()).collect();
    let s: f32 = e.iter().sum();
    e.iter().map(|v| v / s).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_first_tokens_share_nodes() {
        // "tech" = [7], "technical" = [7, 8], "tech support" = [7, 9, 10], "billing" = [3].
        let t = LabelTrie::new(&[vec![7], vec![7, 8], vec![7, 9, 10], vec![3]]);
        assert_eq!(t.first_tokens, vec![3, 7]);
        assert_eq!(
            t.nodes,
            vec![
                TrieNode {
                    token: 7,
                    parent: None,
                    depth: 1
                },
                TrieNode {
                    token: 9,
                    parent: Some(0),
                    depth: 2
                }
            ]
        );
        assert_eq!(
            t.paths[2],
            LabelPath {
                first: 7,
                steps: vec![(0, 9), (1, 10)]
            }
        );
        assert_eq!(t.ancestors(), vec![vec![true, false], vec![true, true]]);
        assert_eq!(t.max_depth(), 3);
        assert!(t.has_continuations());
    }

    #[test]
    fn scores_are_sums_of_token_log_probs() {
        let t = LabelTrie::new(&[vec![7], vec![7, 8], vec![3]]);
        // first_tokens = [3, 7]; step_tokens = [8]
        let first = [(0.2f32).ln(), (0.5f32).ln()];
        let s = t.score(
            &first,
            |node, j| {
                assert_eq!((node, j), (0, 0));
                (0.4f32).ln()
            },
            &[0.0; 3],
            1.0,
        );
        let want = [0.5f32, 0.5 * 0.4, 0.2];
        for (lp, w) in s.log_probs.iter().zip(want) {
            assert!((lp - w.ln()).abs() < 1e-6);
        }
        let total: f32 = want.iter().sum();
        for (p, w) in s.probs.iter().zip(want) {
            assert!((p - w / total).abs() < 1e-6);
        }
        assert!((s.label_mass - 0.7).abs() < 1e-6);
        assert_eq!(s.best(), 0);
    }

    #[test]
    fn offsets_divide_out_a_label_bias() {
        // Content-free calibration: a model that says label 0 with p = 0.8 on content-free
        // input has offsets -ln(0.8), -ln(0.2); a document it scores exactly so becomes uniform.
        let cf = [0.8f32, 0.2];
        let offsets: Vec<f32> = cf.iter().map(|p| -p.ln()).collect();
        let p = adjusted(&[0.8f32.ln(), 0.2f32.ln()], &offsets, 1.0);
        assert!(
            (p[0] - 0.5).abs() < 1e-6 && (p[1] - 0.5).abs() < 1e-6,
            "{p:?}"
        );
        let q = adjusted(&[0.9f32.ln(), 0.1f32.ln()], &offsets, 1.0);
        // 0.9/0.8 : 0.1/0.2 = 1.125 : 0.5
        assert!((q[0] - 1.125 / 1.625).abs() < 1e-6, "{q:?}");
    }

    #[test]
    fn temperature_flattens() {
        let sharp = softmax(&[0.0, -2.0], 1.0);
        let flat = softmax(&[0.0, -2.0], 2.0);
        assert!(flat[0] < sharp[0] && flat[0] > 0.5);
        assert!((flat.iter().sum::<f32>() - 1.0).abs() < 1e-6);
    }
}
