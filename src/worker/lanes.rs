//! Which closed batch the engine gets next: live batches first, the backfill lane with what is
//! left, except for a guaranteed share so a backfill keeps moving under sustained live load.

use std::collections::VecDeque;

use crate::lane::Lane;

/// Closed batches waiting for the engine, per lane.
#[derive(Debug)]
pub struct Lanes<T> {
    live: VecDeque<T>,
    backfill: VecDeque<T>,
    share: f64,
    // Picks made while both lanes waited, and how many of them went to the backfill.
    contested: u64,
    to_backfill: u64,
}

impl<T> Lanes<T> {
    /// `share`: of the batches picked while both lanes wait, the fraction given to the backfill.
    pub fn new(share: f64) -> Self {
        Self {
            live: VecDeque::new(),
            backfill: VecDeque::new(),
            share: share.clamp(0.0, 1.0),
            contested: 0,
            to_backfill: 0,
        }
    }

    /// Queues a closed batch of `lane`.
    pub fn push(&mut self, lane: Lane, batch: T) {
        match lane {
            Lane::Live => self.live.push_back(batch),
            Lane::Backfill => self.backfill.push_back(batch),
        }
    }

    /// Whether nothing waits.
    pub fn is_empty(&self) -> bool {
        self.live.is_empty() && self.backfill.is_empty()
    }

    /// Batches waiting, over both lanes.
    pub fn len(&self) -> usize {
        self.live.len() + self.backfill.len()
    }

    /// The next batch for the engine.
    pub fn pop(&mut self) -> Option<(Lane, T)> {
        if self.backfill.is_empty() {
            return self.live.pop_front().map(|b| (Lane::Live, b));
        }
        if self.live.is_empty() {
            return self.backfill.pop_front().map(|b| (Lane::Backfill, b));
        }
        // Both wait: the backfill gets a pick whenever it is behind its share (live goes first).
        self.contested += 1;
        let owed = (self.share * self.contested as f64 + 1e-9).floor() as u64;
        if self.to_backfill < owed {
            self.to_backfill += 1;
            return self.backfill.pop_front().map(|b| (Lane::Backfill, b));
        }
        self.live.pop_front().map(|b| (Lane::Live, b))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn order(share: f64, live: usize, backfill: usize) -> Vec<Lane> {
        let mut l = Lanes::new(share);
        // The backfill was queued first.
        for i in 0..backfill {
            l.push(Lane::Backfill, i);
        }
        for i in 0..live {
            l.push(Lane::Live, i);
        }
        std::iter::from_fn(|| l.pop().map(|(lane, _)| lane)).collect()
    }

    #[test]
    fn strict_priority_runs_every_live_batch_first() {
        let o = order(0.0, 5, 3);
        assert_eq!(o[..5], [Lane::Live; 5]);
        assert_eq!(o[5..], [Lane::Backfill; 3]);
    }

    #[test]
    fn the_backfill_gets_its_share_while_live_work_waits() {
        let o = order(0.1, 90, 50);
        // Within the first 100 picks (both lanes waiting): 90 live, 10 backfill, evenly spread.
        let first: Vec<_> = o[..100].to_vec();
        assert_eq!(first.iter().filter(|&&l| l == Lane::Backfill).count(), 10);
        assert_eq!(first[..10].iter().filter(|&&l| l == Lane::Live).count(), 9);
        // Then the rest of the backfill.
        assert!(o[100..].iter().all(|&l| l == Lane::Backfill));
        assert_eq!(o.len(), 140);
    }

    #[test]
    fn order_within_a_lane_is_kept() {
        let mut l = Lanes::new(0.5);
        for i in 0..4 {
            l.push(Lane::Live, i);
            l.push(Lane::Backfill, 10 + i);
        }
        let mut live = Vec::new();
        let mut back = Vec::new();
        while let Some((lane, b)) = l.pop() {
            match lane {
                Lane::Live => live.push(b),
                Lane::Backfill => back.push(b),
            }
        }
        assert_eq!(live, [0, 1, 2, 3]);
        assert_eq!(back, [10, 11, 12, 13]);
    }
}
