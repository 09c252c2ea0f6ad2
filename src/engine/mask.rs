//! Additive attention masks (0 = visible, -inf = hidden) for padded batches and label tries.

use candle_core::{Device, Result, Tensor};

/// `[b, t, t]`: row `r`'s query `i` sees its own keys `j <= i` with `j < lens[r]` (right padding).
///
/// Padding queries (`i >= lens[r]`) still see the real keys, so no softmax row is ever empty;
/// their outputs are never read.
pub fn causal_padding(lens: &[usize], t: usize, device: &Device) -> Result<Tensor> {
    let mut m = vec![f32::NEG_INFINITY; lens.len() * t * t];
    for (r, &len) in lens.iter().enumerate() {
        for i in 0..t {
            for j in 0..=i.min(len.saturating_sub(1)) {
                if j < len {
                    m[(r * t + i) * t + j] = 0.0;
                }
            }
        }
    }
    Tensor::from_vec(m, (lens.len(), t, t), device)
}

/// `[b, n, ctx + n]` for the label pass: every trie node sees the first `ctx_lens[r]` keys of its
/// row's document context (of width `ctx`) and its own trie ancestors (`ancestor[i][j]`: j is i or
/// an ancestor of i).
pub fn context_and_tree(ctx_lens: &[usize], ctx: usize, ancestor: &[Vec<bool>], device: &Device) -> Result<Tensor> {
    let n = ancestor.len();
    let w = ctx + n;
    let mut m = vec![f32::NEG_INFINITY; ctx_lens.len() * n * w];
    for (r, &len) in ctx_lens.iter().enumerate() {
        for (i, anc) in ancestor.iter().enumerate() {
            let row = &mut m[(r * n + i) * w..(r * n + i + 1) * w];
            row[..len].fill(0.0);
            for (j, &visible) in anc.iter().enumerate() {
                if visible {
                    row[ctx + j] = 0.0;
                }
            }
        }
    }
    Tensor::from_vec(m, (ctx_lens.len(), n, w), device)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Draws a `[b, rows, cols]` mask as text: `x` visible, `.` hidden.
    fn draw(mask: &Tensor) -> Vec<String> {
        let v = mask.to_vec3::<f32>().unwrap();
        v.iter()
            .map(|rows| {
                rows.iter()
                    .map(|r| r.iter().map(|&x| if x == 0.0 { 'x' } else { '.' }).collect::<String>())
                    .collect::<Vec<_>>()
                    .join("|")
            })
            .collect()
    }

    #[test]
    fn causal_with_right_padding() {
        let m = causal_padding(&[3, 1], 3, &Device::Cpu).unwrap();
        assert_eq!(
            draw(&m),
            vec![
                // full row: plain causal
                "x..|xx.|xxx",
                // one real token: padding queries see only key 0
                "x..|x..|x..",
            ]
        );
    }

    #[test]
    fn tree_over_context() {
        // Trie: node0 (root child), node1 child of node0, node2 another root child.
        let anc = vec![vec![true, false, false], vec![true, true, false], vec![false, false, true]];
        let m = context_and_tree(&[2, 1], 2, &anc, &Device::Cpu).unwrap();
        assert_eq!(draw(&m), vec!["xxx..|xxxx.|xx..x", "x.x..|x.xx.|x...x"]);
    }
}
