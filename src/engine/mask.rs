//! Additive attention masks (0 = visible, -inf = hidden) for one row: causal, and label tries.

use candle_core::{Device, Result, Tensor};

/// `[t, t]`: query `i` sees keys `j <= i`.
pub fn causal(t: usize, device: &Device) -> Result<Tensor> {
    let m: Vec<f32> = (0..t)
        .flat_map(|i| (0..t).map(move |j| if j <= i { 0.0 } else { f32::NEG_INFINITY }))
        .collect();
    Tensor::from_vec(m, (t, t), device)
}

/// `[n, ctx + n]` for the label pass: keys are `[document context | trie nodes]`, the order of one
/// pass over the whole prompt followed by the label. Node `i` sees all `ctx` keys of its document,
/// its trie ancestors and itself (`ancestor[i][j]`).
pub fn context_then_tree(ctx: usize, ancestor: &[Vec<bool>], device: &Device) -> Result<Tensor> {
    let n = ancestor.len();
    let m: Vec<f32> = ancestor
        .iter()
        .flat_map(|anc| {
            let tree = anc.iter().map(|&v| if v { 0.0 } else { f32::NEG_INFINITY });
            std::iter::repeat_n(0.0, ctx).chain(tree)
        })
        .collect();
    Tensor::from_vec(m, (n, ctx + n), device)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Draws a `[rows, cols]` mask as text: `x` visible, `.` hidden.
    fn draw(mask: &Tensor) -> String {
        let v = mask.to_vec2::<f32>().unwrap();
        v.iter()
            .map(|r| {
                r.iter()
                    .map(|&x| if x == 0.0 { 'x' } else { '.' })
                    .collect::<String>()
            })
            .collect::<Vec<_>>()
            .join("|")
    }

    #[test]
    fn causal_mask() {
        assert_eq!(draw(&causal(3, &Device::Cpu).unwrap()), "x..|xx.|xxx");
    }

    #[test]
    fn context_then_tree_mask() {
        // Trie: node0 (a first token), node1 child of node0, node2 another first token.
        let anc = vec![
            vec![true, false, false],
            vec![true, true, false],
            vec![false, false, true],
        ];
        // columns: ctx0 ctx1 | node0 node1 node2
        assert_eq!(
            draw(&context_then_tree(2, &anc, &Device::Cpu).unwrap()),
            "xxx..|xxxx.|xx..x"
        );
    }
}
