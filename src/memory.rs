//! An in-memory broker for the worker's in-process harness ([`crate::worker::run_in_memory`]): a
//! queue of input messages, a record of what was published, acknowledged and returned, and faults
//! a test turns on and off while the worker runs. It behaves like a RabbitMQ queue: a message
//! returned unacknowledged (requeued, or its delivery dropped) is delivered again.
//!
//! The worker's source ([`crate::source::memory`]) and sink ([`crate::sink::memory`]) read and
//! write this state; nothing here knows about either.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Mutex, MutexGuard};

use tokio::sync::watch;

/// One input message.
#[derive(Debug, Clone)]
pub struct Message {
    /// Stable across redeliveries.
    pub id: u64,
    /// The body.
    pub payload: Vec<u8>,
    /// A key, as a Kafka record has.
    pub key: Option<Vec<u8>>,
    /// Headers.
    pub headers: Vec<(String, Vec<u8>)>,
    /// Times delivered before.
    pub deliveries: u32,
}

/// One published record.
#[derive(Debug, Clone)]
pub struct Published {
    /// `results`, `escalate` or `dead_letter`.
    pub destination: &'static str,
    /// The body.
    pub payload: Vec<u8>,
    /// Its key.
    pub key: Option<Vec<u8>>,
    /// Its headers.
    pub headers: Vec<(String, Vec<u8>)>,
}

/// Faults of the broker, set by a test.
#[derive(Debug, Clone)]
pub struct Faults {
    /// Destinations that refuse every publish (a route down for everyone).
    pub refused: HashSet<&'static str>,
    /// A publish to the destination whose body contains the bytes fails (a poison document).
    pub poison: Vec<(&'static str, Vec<u8>)>,
    /// Publishes wait, without an answer, while this is set.
    pub hang: bool,
    /// Acknowledgements still to fail (the message is then delivered again).
    pub failing_acks: u32,
    /// The largest message taken, payload, key and headers together.
    pub max_message_bytes: usize,
}

impl Default for Faults {
    fn default() -> Self {
        Self {
            refused: HashSet::new(),
            poison: Vec::new(),
            hang: false,
            failing_acks: 0,
            max_message_bytes: 16 * 1024 * 1024,
        }
    }
}

/// Everything the broker holds.
#[derive(Debug, Default)]
pub struct State {
    /// Ready to deliver, in order.
    pub queue: VecDeque<Message>,
    /// Delivered and not yet acknowledged or returned, by id.
    pub unacked: HashMap<u64, Message>,
    /// Acknowledgements by message id.
    pub acks: HashMap<u64, u32>,
    /// Messages returned to the queue (requeued, or their delivery dropped).
    pub returned: u64,
    /// Acknowledgements that failed.
    pub failed_acks: u64,
    /// Published records, in order.
    pub published: Vec<Published>,
    /// Publishes refused (a refused destination or a poison body).
    pub refusals: u64,
    /// The faults now on.
    pub faults: Faults,
    next_id: u64,
}

impl State {
    /// Records published to `destination`.
    pub fn to(&self, destination: &str) -> Vec<&Published> {
        self.published
            .iter()
            .filter(|p| p.destination == destination)
            .collect()
    }
}

/// The broker: shared by the test, the worker's source and its sink.
#[derive(Debug)]
pub struct Broker {
    state: Mutex<State>,
    /// Bumped on every change, so waiters look again.
    changed: watch::Sender<u64>,
}

impl Default for Broker {
    fn default() -> Self {
        Self {
            state: Mutex::new(State::default()),
            changed: watch::channel(0).0,
        }
    }
}

impl Broker {
    /// An empty broker with no faults.
    pub fn new() -> std::sync::Arc<Self> {
        std::sync::Arc::new(Self::default())
    }

    /// The state, to read.
    pub fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().expect("memory broker lock")
    }

    /// Changes the state and wakes everything waiting on it.
    pub fn update<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        let r = f(&mut self.state());
        self.changed.send_modify(|v| *v += 1);
        r
    }

    /// Queues a message with `payload`; returns its id.
    pub fn send(&self, payload: impl Into<Vec<u8>>) -> u64 {
        self.send_with(payload, None, Vec::new())
    }

    /// Queues a message with a key and headers; returns its id.
    pub fn send_with(
        &self,
        payload: impl Into<Vec<u8>>,
        key: Option<Vec<u8>>,
        headers: Vec<(String, Vec<u8>)>,
    ) -> u64 {
        self.update(|s| {
            s.next_id += 1;
            let m = Message {
                id: s.next_id,
                payload: payload.into(),
                key,
                headers,
                deliveries: 0,
            };
            s.queue.push_back(m);
            s.next_id
        })
    }

    /// Sets the faults with `f`.
    pub fn faults(&self, f: impl FnOnce(&mut Faults)) {
        self.update(|s| f(&mut s.faults));
    }

    /// Waits until `cond` holds for the state.
    pub async fn until(&self, cond: impl Fn(&State) -> bool) {
        let mut rx = self.changed.subscribe();
        loop {
            if cond(&self.state()) {
                return;
            }
            if rx.changed().await.is_err() {
                return;
            }
        }
    }

    /// Takes the next ready message out of the queue, marking it delivered.
    pub(crate) fn deliver(&self) -> Option<Message> {
        let m = {
            let mut s = self.state();
            let m = s.queue.pop_front()?;
            s.unacked.insert(m.id, m.clone());
            m
        };
        // Only a change wakes the waiters: an empty look must not (the source would spin).
        self.changed.send_modify(|v| *v += 1);
        Some(m)
    }

    /// A change signal to wait on, taken before looking at the state (so no change is missed).
    pub(crate) fn watch(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Acknowledges message `id`; `false` when a failing acknowledgement was planted (the
    /// message then goes back to the queue, as a broker redelivers after a lost ack).
    pub(crate) fn ack(&self, id: u64) -> bool {
        self.update(|s| {
            if s.faults.failing_acks > 0 {
                s.faults.failing_acks -= 1;
                s.failed_acks += 1;
                requeue(s, id);
                return false;
            }
            if s.unacked.remove(&id).is_some() {
                *s.acks.entry(id).or_default() += 1;
            }
            true
        })
    }

    /// Returns message `id` to the queue for another delivery.
    pub(crate) fn requeue(&self, id: u64) {
        self.update(|s| requeue(s, id));
    }
}

fn requeue(s: &mut State, id: u64) {
    if let Some(mut m) = s.unacked.remove(&id) {
        m.deliveries += 1;
        s.returned += 1;
        s.queue.push_back(m);
    }
}
