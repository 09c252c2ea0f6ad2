//! Per-partition offset bookkeeping: which Kafka offset may be stored, given out-of-order completion.
//!
//! An offset is stored only when its message and every earlier message of its partition read in
//! the same assignment are done. A revoked partition's entries are dropped, so work finishing
//! after the revoke never stores an offset (it becomes a duplicate on the new owner, not a loss).

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

#[derive(Debug, Default)]
struct Partition {
    epoch: u64,
    /// offset -> done; only offsets read and not yet stored.
    pending: BTreeMap<i64, bool>,
    /// Paused for holding `window` offsets; resumed when half of them are stored.
    throttled: bool,
}

#[derive(Debug, Default)]
struct State {
    /// Last epoch handed out.
    epoch: u64,
    parts: HashMap<(String, i32), Partition>,
    /// Throttled partitions whose window has drained: to be resumed.
    resumable: Vec<(String, i32)>,
}

/// Offsets in flight for every assigned partition.
#[derive(Debug)]
pub struct Offsets {
    inner: Mutex<State>,
    window: usize,
    /// Set while the group rebalances and refuses commits (see [`Self::set_rebalancing`]).
    rebalancing: tokio::sync::watch::Sender<bool>,
}

impl Default for Offsets {
    fn default() -> Self {
        Self::new(usize::MAX)
    }
}

impl Offsets {
    /// A new empty tracker whose partitions hold at most about `window` offsets read and not yet
    /// stored (see [`Self::over_window`]).
    pub fn new(window: usize) -> Self {
        Self {
            inner: Mutex::new(State::default()),
            window: window.max(1),
            rebalancing: tokio::sync::watch::channel(false).0,
        }
    }

    /// The group is rebalancing (the broker refused a commit with `REBALANCE_IN_PROGRESS`) or
    /// has finished (`false`, at the next assignment). While it rebalances nothing stored can be
    /// committed, and the assignment is about to be revoked: work finished now is redone by the
    /// next owner, so the source reads nothing new until the rebalance completes.
    /// Returns whether that changed the state.
    pub fn set_rebalancing(&self, on: bool) -> bool {
        self.rebalancing
            .send_if_modified(|r| std::mem::replace(r, on) != on)
    }

    /// Whether the group is rebalancing (see [`Self::set_rebalancing`]).
    pub fn rebalancing(&self) -> bool {
        *self.rebalancing.borrow()
    }

    /// Resolves once the group is not rebalancing.
    pub fn rebalanced(&self) -> impl std::future::Future<Output = ()> + 'static {
        let mut rx = self.rebalancing.subscribe();
        async move {
            let _ = rx.wait_for(|r| !*r).await;
        }
    }

    /// Whether the partition now holds `window` offsets read and not stored (done ones behind an
    /// unfinished one count too: a crash would replay them all). `true` only once per episode:
    /// the caller pauses the partition, and [`Self::take_resumable`] names it again when half
    /// of the window is stored.
    pub fn over_window(&self, topic: &str, partition: i32) -> bool {
        let window = self.window;
        let mut g = self.lock();
        match g.parts.get_mut(&(topic.to_string(), partition)) {
            Some(p) if !p.throttled && p.pending.len() >= window => {
                p.throttled = true;
                true
            }
            _ => false,
        }
    }

    /// Whether the partition is paused for its window now.
    pub fn is_throttled(&self, topic: &str, partition: i32) -> bool {
        self.lock()
            .parts
            .get(&(topic.to_string(), partition))
            .is_some_and(|p| p.throttled)
    }

    /// Partitions paused for their window now (to keep paused when the others resume).
    pub fn throttled(&self) -> Vec<(String, i32)> {
        let g = self.lock();
        let mut v: Vec<_> = g
            .parts
            .iter()
            .filter(|(_, p)| p.throttled)
            .map(|(k, _)| k.clone())
            .collect();
        v.sort();
        v
    }

    /// Throttled partitions whose window has drained since the last call: resume them.
    pub fn take_resumable(&self) -> Vec<(String, i32)> {
        std::mem::take(&mut self.lock().resumable)
    }

    /// The partition was assigned: start afresh (librdkafka also forgets stored offsets then).
    pub fn assign(&self, topic: &str, partition: i32) {
        let mut g = self.lock();
        g.epoch += 1;
        let epoch = g.epoch;
        g.parts.insert(
            (topic.to_string(), partition),
            Partition {
                epoch,
                pending: BTreeMap::new(),
                throttled: false,
            },
        );
    }

    /// The partition was revoked: its in-flight offsets will never be stored.
    pub fn revoke(&self, topic: &str, partition: i32) -> usize {
        self.lock()
            .parts
            .remove(&(topic.to_string(), partition))
            .map_or(0, |p| p.pending.len())
    }

    /// A message was read; returns the assignment epoch its completion must quote, or `None`
    /// when its partition is not assigned here (then it must not be processed: storing offsets
    /// around it could commit past it).
    pub fn received(&self, topic: &str, partition: i32, offset: i64) -> Option<u64> {
        let mut g = self.lock();
        let p = g.parts.get_mut(&(topic.to_string(), partition))?;
        p.pending.insert(offset, false);
        Some(p.epoch)
    }

    /// The message at `offset` is done. If that completes a contiguous run from the partition's
    /// oldest pending offset, `store` is called with the run's last offset, under the lock, so
    /// stores of one partition never go backwards. Returns the stored offset.
    pub fn done(
        &self,
        topic: &str,
        partition: i32,
        epoch: u64,
        offset: i64,
        store: impl FnOnce(i64),
    ) -> Option<i64> {
        let window = self.window;
        let mut g = self.lock();
        let p = g.parts.get_mut(&(topic.to_string(), partition))?;
        if p.epoch != epoch {
            return None;
        }
        *p.pending.get_mut(&offset)? = true;
        let mut last = None;
        while let Some(entry) = p.pending.first_entry() {
            if !*entry.get() {
                break;
            }
            last = Some(*entry.key());
            entry.remove();
        }
        if let Some(o) = last {
            store(o);
        }
        if p.throttled && p.pending.len() <= window / 2 {
            p.throttled = false;
            g.resumable.push((topic.to_string(), partition));
        }
        last
    }

    /// Whether the assignment that read a message (its `epoch`) still holds: after a revoke the
    /// partition belongs to another worker, which redoes the message, so nothing of it may be
    /// published here any more.
    pub fn owned(&self, topic: &str, partition: i32, epoch: u64) -> bool {
        self.lock()
            .parts
            .get(&(topic.to_string(), partition))
            .is_some_and(|p| p.epoch == epoch)
    }

    /// Offsets read and not yet stored, over all partitions.
    pub fn in_flight(&self) -> usize {
        self.lock().parts.values().map(|p| p.pending.len()).sum()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_revoked_assignment_is_not_owned_even_when_the_partition_comes_back() {
        let o = super::Offsets::default();
        o.assign("t", 0);
        let e1 = o.received("t", 0, 5).unwrap();
        assert!(o.owned("t", 0, e1));
        o.revoke("t", 0);
        assert!(!o.owned("t", 0, e1));
        o.assign("t", 0);
        let e2 = o.received("t", 0, 5).unwrap();
        assert!(!o.owned("t", 0, e1), "read in the old assignment");
        assert!(o.owned("t", 0, e2));
    }

    use super::*;

    #[tokio::test]
    async fn a_rebalance_is_waited_out() {
        let o = Offsets::default();
        assert!(!o.rebalancing());
        o.set_rebalancing(true);
        assert!(o.rebalancing());
        let done = o.rebalanced();
        tokio::pin!(done);
        assert!(
            futures_util::poll!(&mut done).is_pending(),
            "still rebalancing"
        );
        o.set_rebalancing(false);
        assert!(futures_util::poll!(&mut done).is_ready());
    }

    #[test]
    fn a_partition_stuck_behind_one_offset_is_throttled_at_its_window() {
        let o = Offsets::new(4);
        o.assign("t", 0);
        o.assign("t", 1);
        let mut e = 0;
        for off in 0..4 {
            assert!(!o.over_window("t", 0), "{off} pending: under the window");
            e = o.received("t", 0, off).unwrap();
        }
        assert!(o.over_window("t", 0), "4 pending: at the window");
        assert!(!o.over_window("t", 0), "reported once per episode");
        assert_eq!(o.throttled(), vec![("t".to_string(), 0)]);
        assert!(!o.over_window("t", 1), "the other partition is free");
        // Offset 0 is stuck; the later ones finish but cannot be stored.
        for off in 1..4 {
            assert_eq!(done(&o, e, off), None);
        }
        assert!(o.take_resumable().is_empty(), "still 4 pending behind 0");
        assert_eq!(done(&o, e, 0), Some(3));
        assert_eq!(o.take_resumable(), vec![("t".to_string(), 0)]);
        assert!(o.take_resumable().is_empty());
        assert!(o.throttled().is_empty());
    }

    fn done(o: &Offsets, epoch: u64, off: i64) -> Option<i64> {
        o.done("t", 0, epoch, off, |_| {})
    }

    #[test]
    fn stores_only_the_contiguous_watermark() {
        let o = Offsets::default();
        o.assign("t", 0);
        let e = (10..15)
            .map(|off| o.received("t", 0, off))
            .last()
            .unwrap()
            .unwrap();
        assert_eq!(done(&o, e, 12), None, "10 and 11 are not done");
        assert_eq!(done(&o, e, 11), None);
        assert_eq!(done(&o, e, 10), Some(12), "10..=12 done: store 12");
        assert_eq!(done(&o, e, 14), None);
        assert_eq!(o.in_flight(), 2);
        assert_eq!(done(&o, e, 13), Some(14));
        assert_eq!(o.in_flight(), 0);
    }

    #[test]
    fn partitions_are_independent() {
        let o = Offsets::default();
        assert_eq!(o.received("t", 0, 5), None, "not assigned");
        o.assign("t", 0);
        o.assign("t", 1);
        let a = o.received("t", 0, 5).unwrap();
        let b = o.received("t", 1, 7).unwrap();
        assert_eq!(o.done("t", 1, b, 7, |_| {}), Some(7));
        assert_eq!(o.done("t", 0, a, 5, |_| {}), Some(5));
    }

    #[test]
    fn work_of_a_revoked_partition_never_stores() {
        let o = Offsets::default();
        o.assign("t", 0);
        let old = o.received("t", 0, 3).unwrap();
        assert_eq!(o.revoke("t", 0), 1);
        assert_eq!(done(&o, old, 3), None, "revoked");
        o.assign("t", 0);
        let new = o.received("t", 0, 3).unwrap();
        assert_ne!(old, new);
        assert_eq!(
            done(&o, old, 3),
            None,
            "a completion from the old assignment"
        );
        let mut stored = Vec::new();
        o.done("t", 0, new, 3, |s| stored.push(s));
        assert_eq!(stored, vec![3]);
    }
}
