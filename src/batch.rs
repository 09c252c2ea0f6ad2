//! Pure batch planning: group documents so a batch stays within a document count and a token budget.

/// Limits of one engine batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
pub struct BatchLimits {
    /// Most documents in one forward pass.
    pub max_docs: usize,
    /// Most tokens (document + suffix, summed over the batch) in one forward pass.
    pub max_tokens: usize,
}

impl Default for BatchLimits {
    fn default() -> Self {
        Self {
            max_docs: 32,
            max_tokens: 8192,
        }
    }
}

/// Splits documents with token counts `lens` into batches (lists of indices into `lens`).
///
/// Documents are taken longest first, so that documents of similar length run together and the
/// per-batch work is even. A document longer than `max_tokens` on its own gets a batch to itself.
pub fn plan(lens: &[usize], limits: BatchLimits) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..lens.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(lens[i]));
    let mut batches = Vec::new();
    let mut cur: Vec<usize> = Vec::new();
    let mut tokens = 0;
    for i in order {
        let full = cur.len() >= limits.max_docs.max(1) || tokens + lens[i] > limits.max_tokens;
        if full && !cur.is_empty() {
            batches.push(std::mem::take(&mut cur));
            tokens = 0;
        }
        cur.push(i);
        tokens += lens[i];
    }
    if !cur.is_empty() {
        batches.push(cur);
    }
    batches
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn respects_doc_and_token_limits() {
        let lens = [10, 50, 20, 40, 30, 5];
        let b = plan(
            &lens,
            BatchLimits {
                max_docs: 2,
                max_tokens: 1000,
            },
        );
        assert_eq!(b, vec![vec![1, 3], vec![4, 2], vec![0, 5]]);
        let b = plan(
            &lens,
            BatchLimits {
                max_docs: 10,
                max_tokens: 60,
            },
        );
        assert_eq!(b, vec![vec![1], vec![3], vec![4, 2, 0], vec![5]]);
    }

    #[test]
    fn oversized_document_runs_alone_and_nothing_is_lost() {
        let lens = [500, 3, 4];
        let b = plan(
            &lens,
            BatchLimits {
                max_docs: 8,
                max_tokens: 100,
            },
        );
        assert_eq!(b, vec![vec![0], vec![2, 1]]);
        let mut all: Vec<usize> = b.concat();
        all.sort();
        assert_eq!(all, vec![0, 1, 2]);
    }
}
