//! The driver's machinery: the event queue, host timers and the virtual clock.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::{Duration, Instant};

/// Events due at virtual times, popped earliest first and, at equal times, in the order they
/// were pushed. Payloads sit in recycled slots, so the heap holds only small keys.
pub(crate) struct EventQueue<E> {
    heap: BinaryHeap<Reverse<(Instant, u64, usize)>>,
    slots: Vec<Option<E>>,
    free: Vec<usize>,
    seq: u64,
}

impl<E> EventQueue<E> {
    pub(crate) fn new() -> Self {
        EventQueue {
            heap: BinaryHeap::new(),
            slots: Vec::new(),
            free: Vec::new(),
            seq: 0,
        }
    }

    pub(crate) fn push(&mut self, at: Instant, ev: E) {
        let slot = match self.free.pop() {
            Some(s) => {
                self.slots[s] = Some(ev);
                s
            }
            None => {
                self.slots.push(Some(ev));
                self.slots.len() - 1
            }
        };
        self.seq += 1;
        self.heap.push(Reverse((at, self.seq, slot)));
    }

    /// When the earliest event is due.
    pub(crate) fn peek_time(&self) -> Option<Instant> {
        self.heap.peek().map(|Reverse((t, _, _))| *t)
    }

    /// The earliest event and when it is due.
    pub(crate) fn pop(&mut self) -> Option<(Instant, E)> {
        let Reverse((at, _, slot)) = self.heap.pop()?;
        let ev = self.slots[slot].take().expect("event slot filled");
        self.free.push(slot);
        Some((at, ev))
    }

    /// The earliest event, if it is due at `now` or before.
    pub(crate) fn pop_due(&mut self, now: Instant) -> Option<E> {
        if self.peek_time()? > now {
            return None;
        }
        self.pop().map(|(_, ev)| ev)
    }
}

/// Host timers: (due time, host index), earliest first. A host may be listed more than once;
/// the driver checks each entry against the host itself when it comes due.
pub(crate) struct Timers {
    heap: BinaryHeap<Reverse<(Instant, usize)>>,
}

impl Timers {
    pub(crate) fn new() -> Self {
        Timers {
            heap: BinaryHeap::new(),
        }
    }

    pub(crate) fn push(&mut self, at: Instant, node: usize) {
        self.heap.push(Reverse((at, node)));
    }

    pub(crate) fn peek(&self) -> Option<(Instant, usize)> {
        self.heap.peek().map(|Reverse(e)| *e)
    }

    /// The earliest timer, if it is due at `now` or before.
    pub(crate) fn pop_due(&mut self, now: Instant) -> Option<(Instant, usize)> {
        if self.peek()?.0 > now {
            return None;
        }
        self.heap.pop().map(|Reverse(e)| e)
    }
}

/// Records `t` as a host's next wake-up if it is earlier than the one already scheduled;
/// true if the caller must queue a timer for it.
pub(crate) fn rearm(scheduled: &mut Option<Instant>, t: Instant) -> bool {
    if scheduled.is_none_or(|s| t < s) {
        *scheduled = Some(t);
        true
    } else {
        false
    }
}

/// The earliest of some due times.
pub(crate) fn earliest(times: impl IntoIterator<Item = Option<Instant>>) -> Option<Instant> {
    times.into_iter().flatten().min()
}

/// Steps in a row that may not move the clock before a run is declared stuck.
pub(crate) const STUCK_LIMIT: u32 = 1_000_000;

/// Why a run loop stopped early.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Halt {
    /// Nothing is due any more.
    Idle,
    /// The next thing due lies beyond the time limit.
    TimeLimit,
    /// More than [`STUCK_LIMIT`] steps in a row without the clock moving.
    NoProgress,
}

impl Halt {
    /// The failure to report; `waiting_for` names what had not finished ("sender").
    pub(crate) fn describe(self, time_limit: Duration, waiting_for: &str) -> String {
        match self {
            Halt::Idle => format!("nothing left to do before the {waiting_for} finished"),
            Halt::TimeLimit => format!("time limit {time_limit:?} reached"),
            Halt::NoProgress => "simulation made no progress".into(),
        }
    }
}

/// The virtual clock of a run loop.
pub(crate) struct Clock {
    now: Instant,
    limit: Instant,
    stuck: u32,
}

impl Clock {
    pub(crate) fn new(start: Instant, limit: Instant) -> Self {
        Clock {
            now: start,
            limit,
            stuck: 0,
        }
    }

    /// Moves to `next`, the earliest thing due (never backwards), or says why the run ends.
    pub(crate) fn advance(&mut self, next: Option<Instant>) -> Result<Instant, Halt> {
        let next = next.ok_or(Halt::Idle)?;
        if next > self.limit {
            return Err(Halt::TimeLimit);
        }
        if next <= self.now {
            self.stuck += 1;
            if self.stuck > STUCK_LIMIT {
                return Err(Halt::NoProgress);
            }
        } else {
            self.stuck = 0;
        }
        self.now = self.now.max(next);
        Ok(self.now)
    }
}
