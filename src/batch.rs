//! Pure batching: plan a window of documents into batches ([`plan`]), or collect a stream of them
//! per task into batches that close on a document count, a token budget or a deadline ([`Batcher`]).

use std::time::{Duration, Instant};

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

/// Collects documents per task (so a batch shares one cached prefix) and closes a batch when it
/// reaches `max_docs`, when the next document would pass `max_tokens`, or when its oldest
/// document has waited `max_wait`. Time is passed in, so the rules are testable without a clock.
#[derive(Debug)]
pub struct Batcher<T> {
    limits: BatchLimits,
    max_wait: Duration,
    queues: Vec<Queue<T>>,
}

#[derive(Debug)]
struct Queue<T> {
    items: Vec<T>,
    tokens: usize,
    since: Option<Instant>,
}

impl<T> Queue<T> {
    fn take(&mut self) -> Vec<T> {
        self.tokens = 0;
        self.since = None;
        std::mem::take(&mut self.items)
    }
}

impl<T> Batcher<T> {
    /// A batcher for `tasks` tasks.
    pub fn new(tasks: usize, limits: BatchLimits, max_wait: Duration) -> Self {
        Self {
            limits,
            max_wait,
            queues: (0..tasks)
                .map(|_| Queue {
                    items: Vec::new(),
                    tokens: 0,
                    since: None,
                })
                .collect(),
        }
    }

    /// Adds a document of `tokens` tokens for task `task`; returns the batches this closes (the
    /// task's previous batch when the document does not fit in it, and the new one when full).
    pub fn push(
        &mut self,
        task: usize,
        tokens: usize,
        item: T,
        now: Instant,
    ) -> Vec<(usize, Vec<T>)> {
        let limits = self.limits;
        let q = &mut self.queues[task];
        let mut closed = Vec::new();
        if !q.items.is_empty() && q.tokens + tokens > limits.max_tokens {
            closed.push((task, q.take()));
        }
        q.items.push(item);
        q.tokens += tokens;
        q.since.get_or_insert(now);
        if q.items.len() >= limits.max_docs.max(1) || q.tokens >= limits.max_tokens {
            closed.push((task, q.take()));
        }
        closed
    }

    /// When the oldest open batch is due.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.queues
            .iter()
            .filter_map(|q| q.since)
            .min()
            .map(|t| t + self.max_wait)
    }

    /// Closes every batch whose oldest document has waited `max_wait` by `now`.
    pub fn expired(&mut self, now: Instant) -> Vec<(usize, Vec<T>)> {
        let wait = self.max_wait;
        self.queues
            .iter_mut()
            .enumerate()
            .filter(|(_, q)| q.since.is_some_and(|t| now >= t + wait))
            .map(|(i, q)| (i, q.take()))
            .collect()
    }

    /// Closes every open batch.
    pub fn drain(&mut self) -> Vec<(usize, Vec<T>)> {
        self.queues
            .iter_mut()
            .enumerate()
            .filter(|(_, q)| !q.items.is_empty())
            .map(|(i, q)| (i, q.take()))
            .collect()
    }

    /// Documents waiting in open batches.
    pub fn len(&self) -> usize {
        self.queues.iter().map(|q| q.items.len()).sum()
    }

    /// Whether no document waits.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(max_docs: usize, max_tokens: usize) -> BatchLimits {
        BatchLimits {
            max_docs,
            max_tokens,
        }
    }

    #[test]
    fn batcher_closes_on_count_and_groups_by_task() {
        let t0 = Instant::now();
        let mut b = Batcher::new(2, limits(3, 1000), Duration::from_millis(50));
        assert!(b.push(0, 10, "a", t0).is_empty());
        assert!(b.push(1, 10, "x", t0).is_empty());
        assert!(b.push(0, 10, "b", t0).is_empty());
        assert_eq!(b.push(0, 10, "c", t0), vec![(0, vec!["a", "b", "c"])]);
        assert_eq!(b.len(), 1, "task 1's document still waits");
    }

    #[test]
    fn batcher_closes_on_token_budget() {
        let t0 = Instant::now();
        let mut b = Batcher::new(1, limits(100, 50), Duration::from_millis(50));
        assert!(b.push(0, 30, 1, t0).is_empty());
        // 30 + 30 > 50: the open batch closes and the new document starts the next one.
        assert_eq!(b.push(0, 30, 2, t0), vec![(0, vec![1])]);
        // A document over the budget on its own closes alone, after the one before it.
        assert_eq!(b.push(0, 80, 3, t0), vec![(0, vec![2]), (0, vec![3])]);
        assert!(b.is_empty());
    }

    #[test]
    fn batcher_closes_on_deadline_of_the_oldest() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut b = Batcher::new(2, limits(100, 1000), ms(50));
        assert_eq!(b.next_deadline(), None);
        b.push(0, 1, "a", t0);
        b.push(1, 1, "x", t0 + ms(30));
        b.push(0, 1, "b", t0 + ms(40));
        assert_eq!(b.next_deadline(), Some(t0 + ms(50)));
        assert!(b.expired(t0 + ms(49)).is_empty());
        assert_eq!(b.expired(t0 + ms(50)), vec![(0, vec!["a", "b"])]);
        assert_eq!(b.next_deadline(), Some(t0 + ms(80)));
        assert_eq!(b.drain(), vec![(1, vec!["x"])]);
        assert_eq!(b.next_deadline(), None);
    }

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
