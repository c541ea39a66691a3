//! S3-FIFO (Yang et al., "FIFO queues are all you need for cache eviction", SOSP 2023) over
//! weighted entries: the policy only, keys and weights in, the keys to drop out.
//!
//! A new key enters the small queue (a tenth of the bytes); while the small queue holds its
//! share or more its oldest entry moves to the main queue if it was read since it came in, and otherwise
//! leaves the cache and is remembered in the ghost queue (keys only). A key that comes back
//! while its ghost is remembered enters the main queue directly: that is the admission step
//! that keeps one-time reads (a client streaming a long object once) from flushing what is read
//! again. The main queue is a FIFO with reinsertion: an entry read since its last pass goes
//! round again with one read less (reads count to 3), an entry not read leaves.
//!
//! Removed entries leave stale positions in the queues, skipped when they come up; the queues
//! are compacted when stale positions outnumber live ones.

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;

/// The share of the bytes given to the small queue (the paper's 10 %).
const SMALL_SHARE: u64 = 10;
/// Reads an entry may bank (the paper's 2-bit counter).
const MAX_FREQ: u8 = 3;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Queue {
    Small,
    Main,
}

#[derive(Debug)]
struct Entry {
    weight: u64,
    freq: u8,
    queue: Queue,
    stamp: u64,
}

/// The policy state for keys `K`, bounded by the sum of their weights.
#[derive(Debug)]
pub struct S3Fifo<K> {
    capacity: u64,
    small_target: u64,
    entries: HashMap<K, Entry>,
    small: VecDeque<(K, u64)>,
    main: VecDeque<(K, u64)>,
    small_bytes: u64,
    main_bytes: u64,
    ghost: VecDeque<(K, u64)>,
    ghosts: HashMap<K, (u64, u64)>,
    ghost_bytes: u64,
    next_stamp: u64,
}

impl<K: Clone + Eq + Hash> S3Fifo<K> {
    /// An empty policy holding at most `capacity` bytes of weight.
    pub fn new(capacity: u64) -> Self {
        S3Fifo {
            capacity,
            small_target: capacity / SMALL_SHARE,
            entries: HashMap::new(),
            small: VecDeque::new(),
            main: VecDeque::new(),
            small_bytes: 0,
            main_bytes: 0,
            ghost: VecDeque::new(),
            ghosts: HashMap::new(),
            ghost_bytes: 0,
            next_stamp: 0,
        }
    }

    /// The sum of the weights held.
    pub fn bytes(&self) -> u64 {
        self.small_bytes + self.main_bytes
    }

    /// The entries held.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Whether `key` is held.
    pub fn contains(&self, key: &K) -> bool {
        self.entries.contains_key(key)
    }

    /// Records a read of `key`; false if it is not held.
    pub fn touch(&mut self, key: &K) -> bool {
        match self.entries.get_mut(key) {
            Some(entry) => {
                entry.freq = (entry.freq + 1).min(MAX_FREQ);
                true
            }
            None => false,
        }
    }

    /// Adds `key` with `weight` (replacing it if held) and returns the keys evicted to make room,
    /// oldest first. A key heavier than the whole capacity is not admitted and comes back alone.
    pub fn insert(&mut self, key: K, weight: u64) -> Vec<K> {
        self.remove(&key);
        if weight > self.capacity {
            return vec![key];
        }
        let queue = if self.ghosts.remove(&key).is_some() {
            Queue::Main
        } else {
            Queue::Small
        };
        let stamp = self.stamp();
        self.push(queue, key.clone(), stamp, weight);
        self.entries.insert(
            key,
            Entry {
                weight,
                freq: 0,
                queue,
                stamp,
            },
        );
        let mut evicted = Vec::new();
        while self.bytes() > self.capacity {
            match self.evict() {
                Some(victim) => evicted.push(victim),
                None => break,
            }
        }
        evicted
    }

    /// Forgets `key`; false if it was not held.
    pub fn remove(&mut self, key: &K) -> bool {
        let Some(entry) = self.entries.remove(key) else {
            return false;
        };
        match entry.queue {
            Queue::Small => self.small_bytes -= entry.weight,
            Queue::Main => self.main_bytes -= entry.weight,
        }
        self.compact();
        true
    }

    /// Evicts one entry by the policy and returns its key; `None` when nothing is held.
    pub fn evict(&mut self) -> Option<K> {
        loop {
            // The paper's rule: evict from the small queue while it holds its share or more.
            let from_small = self.small_bytes > 0
                && (self.small_bytes >= self.small_target || self.main_bytes == 0);
            let queue = if from_small {
                Queue::Small
            } else {
                Queue::Main
            };
            let (key, stamp) = match queue {
                Queue::Small => self.small.pop_front()?,
                Queue::Main => self.main.pop_front()?,
            };
            let Some(entry) = self.entries.get_mut(&key) else {
                continue;
            };
            if entry.stamp != stamp || entry.queue != queue {
                continue;
            }
            if entry.freq == 0 {
                let weight = entry.weight;
                self.entries.remove(&key);
                match queue {
                    Queue::Small => {
                        self.small_bytes -= weight;
                        self.remember(key.clone(), weight);
                    }
                    Queue::Main => self.main_bytes -= weight,
                }
                return Some(key);
            }
            // Read since it came in: from the small queue it moves to the main queue with its
            // reads, in the main queue it goes round again with one read less.
            let weight = entry.weight;
            if queue == Queue::Main {
                entry.freq -= 1;
            }
            entry.queue = Queue::Main;
            self.next_stamp += 1;
            entry.stamp = self.next_stamp;
            let stamp = entry.stamp;
            if queue == Queue::Small {
                self.small_bytes -= weight;
            } else {
                self.main_bytes -= weight;
            }
            self.push(Queue::Main, key, stamp, weight);
        }
    }

    fn stamp(&mut self) -> u64 {
        self.next_stamp += 1;
        self.next_stamp
    }

    fn push(&mut self, queue: Queue, key: K, stamp: u64, weight: u64) {
        match queue {
            Queue::Small => {
                self.small.push_back((key, stamp));
                self.small_bytes += weight;
            }
            Queue::Main => {
                self.main.push_back((key, stamp));
                self.main_bytes += weight;
            }
        }
    }

    /// Remembers an evicted key; the ghost queue holds as much weight as the main queue may.
    fn remember(&mut self, key: K, weight: u64) {
        let stamp = self.stamp();
        if let Some((_, old)) = self.ghosts.insert(key.clone(), (stamp, weight)) {
            self.ghost_bytes -= old;
        }
        self.ghost.push_back((key, stamp));
        self.ghost_bytes += weight;
        while self.ghost_bytes > self.capacity - self.small_target {
            let Some((key, stamp)) = self.ghost.pop_front() else {
                break;
            };
            if self
                .ghosts
                .get(&key)
                .is_some_and(|(live, _)| *live == stamp)
            {
                if let Some((_, weight)) = self.ghosts.remove(&key) {
                    self.ghost_bytes -= weight;
                }
            }
        }
        if self.ghost.len() > 2 * self.ghosts.len() + 64 {
            let ghosts = &self.ghosts;
            self.ghost
                .retain(|(key, stamp)| ghosts.get(key).is_some_and(|(live, _)| live == stamp));
        }
    }

    /// Drops stale queue positions once they outnumber the live entries.
    fn compact(&mut self) {
        if self.small.len() + self.main.len() <= 2 * self.entries.len() + 64 {
            return;
        }
        let entries = &self.entries;
        let live = |queue: Queue| {
            move |(key, stamp): &(K, u64)| {
                entries
                    .get(key)
                    .is_some_and(|entry| entry.stamp == *stamp && entry.queue == queue)
            }
        };
        self.small.retain(live(Queue::Small));
        self.main.retain(live(Queue::Main));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        /// Any sequence of inserts, reads and removals keeps the books: the weight held is the
        /// sum of the entries' weights and never above the capacity, every evicted key was held.
        #[test]
        fn arbitrary_operations_keep_the_books(
            capacity in 0u64..500,
            ops in proptest::collection::vec((0u8..3, 0u16..40, 1u64..120), 0..400),
        ) {
            let mut policy = S3Fifo::new(capacity);
            let mut held = HashMap::new();
            for (op, key, weight) in ops {
                match op {
                    0 => {
                        held.remove(&key);
                        held.insert(key, weight);
                        for victim in policy.insert(key, weight) {
                            proptest::prop_assert!(held.remove(&victim).is_some());
                        }
                    }
                    1 => proptest::prop_assert_eq!(policy.touch(&key), held.contains_key(&key)),
                    _ => proptest::prop_assert_eq!(policy.remove(&key), held.remove(&key).is_some()),
                }
                proptest::prop_assert!(policy.bytes() <= capacity);
                proptest::prop_assert_eq!(policy.bytes(), held.values().sum::<u64>());
                proptest::prop_assert_eq!(policy.len(), held.len());
            }
            while let Some(victim) = policy.evict() {
                proptest::prop_assert!(held.remove(&victim).is_some());
            }
            proptest::prop_assert!(held.is_empty());
            proptest::prop_assert_eq!(policy.bytes(), 0);
        }
    }

    #[test]
    fn the_weight_held_never_exceeds_the_capacity() {
        let mut policy = S3Fifo::new(1000);
        let mut held = std::collections::HashSet::new();
        for key in 0..500u64 {
            held.insert(key);
            for victim in policy.insert(key, 10 + key % 90) {
                assert!(held.remove(&victim), "evicted {victim} twice");
            }
            if key % 3 == 0 {
                policy.touch(&(key / 2));
            }
            assert!(policy.bytes() <= 1000);
            assert_eq!(policy.len(), held.len());
        }
    }

    #[test]
    fn a_key_read_again_outlives_a_scan_of_keys_read_once() {
        let mut policy = S3Fifo::new(100);
        for key in 0..10u64 {
            policy.insert(key, 10);
            policy.touch(&key);
        }
        // A scan of 1000 keys read once each.
        for key in 1000..2000u64 {
            policy.insert(key, 10);
            for hot in 0..10u64 {
                policy.touch(&hot);
            }
        }
        assert!((0..10u64).all(|key| policy.contains(&key)));
    }

    #[test]
    fn a_key_that_comes_back_while_remembered_enters_the_main_queue() {
        let mut policy = S3Fifo::new(100);
        for key in 0..10u64 {
            policy.insert(key, 10);
        }
        // Key 0 is evicted from the small queue unread and remembered.
        assert_eq!(policy.insert(10, 10), vec![0]);
        policy.insert(0, 10);
        assert_eq!(policy.entries[&0].queue, Queue::Main);
        // A key never seen enters the small queue.
        policy.insert(50, 10);
        assert_eq!(policy.entries[&50].queue, Queue::Small);
    }

    #[test]
    fn removed_and_oversized_keys_are_not_held() {
        let mut policy = S3Fifo::new(100);
        assert_eq!(policy.insert(1u64, 101), vec![1]);
        assert!(!policy.contains(&1));
        policy.insert(2, 50);
        assert!(policy.remove(&2));
        assert_eq!(policy.bytes(), 0);
        assert_eq!(policy.evict(), None);
        for round in 0..1000u64 {
            policy.insert(round % 7, 5);
            policy.remove(&(round % 7));
        }
        assert!(policy.small.len() + policy.main.len() <= 64 + 1);
    }
}
