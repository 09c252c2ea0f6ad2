//! A training batch as tensors: rows of `document + suffix + label-trie nodes` packed end to end
//! after the task's prefix (no padding, as the engine packs a batch), with the attention mask that
//! makes each row score exactly as serving does (documents causal and blind to other rows, trie
//! nodes seeing their document and their own ancestors), and the indices that gather each label's
//! token log-probabilities.

use candle_core::{Device, Result, Tensor};

use crate::engine::prepared::PreparedTask;

/// One packed batch on top of a prefix.
pub struct Rows {
    /// Documents.
    pub b: usize,
    /// Packed tokens.
    pub n: usize,
    /// Token ids `[n]` (u32).
    pub tokens: Tensor,
    /// Absolute positions `[n]` (u32).
    pub positions: Tensor,
    /// Additive mask `[1, 1, group * n, prefix_len + n]`: the query rows repeated per head of a
    /// key-value group, as the attention lays queries out.
    pub mask: Tensor,
    /// Indices into the packed hidden states `[n]` of each row's scored positions: the last
    /// suffix token, then each trie node, `[b * (1 + nodes)]`.
    pub scored: Tensor,
    /// Flat indices into `log_softmax` `[b * (1 + nodes), vocab]` (one extra zero slot at the
    /// end pads labels shorter than the deepest): `[b * labels * depth]`.
    pub gather: Tensor,
    /// Labels per row.
    pub labels: usize,
    /// Tokens in the deepest label.
    pub depth: usize,
}

/// Packs `docs` (fitted document ids) under `task`, for a model with `group` query heads per
/// key-value head and `vocab` tokens.
pub fn pack(
    task: &PreparedTask,
    docs: &[&[u32]],
    group: usize,
    vocab: usize,
    device: &Device,
) -> Result<Rows> {
    let p = task.prefix_ids.len();
    let trie = &task.trie;
    let nodes = trie.nodes.len();
    let ancestors = trie.ancestors();
    let lens: Vec<usize> = docs
        .iter()
        .map(|d| d.len() + task.suffix_ids.len())
        .collect();
    if lens.contains(&0) {
        candle_core::bail!("a row with no tokens: an empty document and no suffix");
    }
    let n: usize = lens.iter().map(|l| l + nodes).sum();
    let t = p + n;
    let mut tokens = Vec::with_capacity(n);
    let mut positions = Vec::with_capacity(n);
    let mut mask = vec![f32::NEG_INFINITY; n * t];
    let mut scored = Vec::with_capacity(docs.len() * (1 + nodes));
    for (doc, &dl) in docs.iter().zip(&lens) {
        let s = tokens.len();
        tokens.extend(doc.iter().chain(&task.suffix_ids));
        positions.extend((0..dl).map(|j| (p + j) as u32));
        tokens.extend(trie.nodes.iter().map(|node| node.token));
        positions.extend(
            trie.nodes
                .iter()
                .map(|node| (p + dl - 1 + node.depth) as u32),
        );
        for q in 0..dl + nodes {
            let m = &mut mask[(s + q) * t..(s + q + 1) * t];
            m[..p].fill(0.0);
            let own = p + s;
            if q < dl {
                m[own..own + q + 1].fill(0.0);
            } else {
                m[own..own + dl].fill(0.0);
                for (j, &anc) in ancestors[q - dl].iter().enumerate() {
                    if anc {
                        m[own + dl + j] = 0.0;
                    }
                }
            }
        }
        scored.push((s + dl - 1) as u32);
        scored.extend((0..nodes).map(|i| (s + dl + i) as u32));
    }
    let b = docs.len();
    let depth = trie.max_depth();
    let labels = trie.paths.len();
    let zero_slot = (b * (1 + nodes) * vocab) as u32;
    let mut gather = Vec::with_capacity(b * labels * depth);
    for r in 0..b {
        let base = r * (1 + nodes);
        for path in &trie.paths {
            gather.push((base * vocab) as u32 + path.first);
            for &(node, tok) in &path.steps {
                gather.push(((base + 1 + node) * vocab) as u32 + tok);
            }
            gather.extend(std::iter::repeat_n(zero_slot, depth - 1 - path.steps.len()));
        }
    }
    // Queries of one key-value group are laid out head after head: the mask repeats per head.
    let mask = Tensor::from_vec(mask, (1, 1, 1, n, t), device)?
        .broadcast_as((1, 1, group, n, t))?
        .reshape((1, 1, group * n, t))?;
    Ok(Rows {
        b,
        n,
        tokens: Tensor::from_vec(tokens, n, device)?,
        positions: Tensor::from_vec(positions, n, device)?,
        mask,
        scored: Tensor::from_vec(scored, b * (1 + nodes), device)?,
        gather: Tensor::from_vec(gather, b * labels * depth, device)?,
        labels,
        depth,
    })
}

/// A causal mask `[1, 1, group * n, n]` for a prefix of `n` tokens run alone.
pub fn causal(n: usize, group: usize, device: &Device) -> Result<Tensor> {
    let m: Vec<f32> = (0..n)
        .flat_map(|q| (0..n).map(move |k| if k <= q { 0.0 } else { f32::NEG_INFINITY }))
        .collect();
    Tensor::from_vec(m, (1, 1, 1, n, n), device)?
        .broadcast_as((1, 1, group, n, n))?
        .reshape((1, 1, group * n, n))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nodes_see_the_document_and_their_ancestors_and_labels_gather_their_tokens() {
        // Labels [5], [6, 7], [6, 8, 9]: nodes 6 (depth 1) and 8 (depth 2, child of 6).
        let task = PreparedTask::from_ids(
            "t",
            vec![1, 2],
            vec![3],
            vec![
                ("a".into(), vec![5]),
                ("b".into(), vec![6, 7]),
                ("c".into(), vec![6, 8, 9]),
            ],
        );
        let docs: [&[u32]; 2] = [&[10, 11], &[12]];
        let rows = pack(&task, &docs, 1, 100, &Device::Cpu).unwrap();
        assert_eq!((rows.b, rows.n, rows.depth, rows.labels), (2, 9, 3, 3));
        let toks = rows.tokens.to_vec1::<u32>().unwrap();
        assert_eq!(toks, vec![10, 11, 3, 6, 8, 12, 3, 6, 8]);
        let pos = rows.positions.to_vec1::<u32>().unwrap();
        // Row 0: doc+suffix at 2,3,4; node 6 at 5 (depth 1 after position 4), node 8 at 6.
        assert_eq!(pos, vec![2, 3, 4, 5, 6, 2, 3, 4, 5]);
        let m = rows
            .mask
            .squeeze(0)
            .unwrap()
            .squeeze(0)
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        let open = |q: usize| -> Vec<usize> { (0..11).filter(|&k| m[q][k] == 0.0).collect() };
        assert_eq!(open(1), vec![0, 1, 2, 3]);
        // Node 8 (row 0, query 4) sees the prefix, the 3 row tokens, node 6 and itself.
        assert_eq!(open(4), vec![0, 1, 2, 3, 4, 5, 6]);
        // Row 1 sees the prefix and its own tokens only; its node 6 (query 7) not node 8.
        assert_eq!(open(5), vec![0, 1, 7]);
        assert_eq!(open(7), vec![0, 1, 7, 8, 9]);
        assert_eq!(
            rows.scored.to_vec1::<u32>().unwrap(),
            vec![2, 3, 4, 6, 7, 8]
        );
        let g = rows.gather.to_vec1::<u32>().unwrap();
        let zero = 6 * 100;
        // Row 0: a = first 5; b = first 6 then 7 at node 0 (slot 1); c = 6, 8 at node 0, 9 at node 1.
        assert_eq!(
            &g[..9],
            &[5, zero, zero, 6, 100 + 7, zero, 6, 100 + 8, 200 + 9]
        );
        assert_eq!(g[9], 300 + 5);
    }
}
