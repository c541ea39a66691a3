//! Pacing: datagrams leave no faster than a rate, with a small burst allowance so that a
//! sender woken late catches up a little (timer slack) but never floods after a stall, and
//! in quanta: once a datagram may go, a quantum's worth of bytes goes together (a node sets
//! it to one GSO super-buffer, so a paced thread sends whole super-buffers and sleeps
//! between them instead of waking for every datagram).

use std::time::{Duration, Instant};

/// A token-bucket-like pacer over datagram bytes.
#[derive(Clone, Debug)]
pub struct Pacer {
    /// Datagram bytes per second.
    rate: u64,
    /// How much sending time may be caught up at once.
    burst: Duration,
    /// When the next datagram may go (`None`: at once).
    next: Option<Instant>,
    /// Bytes that go together once the time has come (0: each datagram waits its turn).
    quantum: usize,
    /// Bytes left of the current quantum.
    credit: usize,
}

impl Pacer {
    pub fn new(rate: u64, burst: Duration) -> Self {
        Pacer {
            rate: rate.max(1),
            burst,
            next: None,
            quantum: 0,
            credit: 0,
        }
    }

    /// Lets `bytes` go together once a datagram may go (they are charged all the same).
    pub fn with_quantum(mut self, bytes: usize) -> Self {
        self.quantum = bytes;
        self
    }

    pub fn rate(&self) -> u64 {
        self.rate
    }

    pub fn set_rate(&mut self, rate: u64) {
        self.rate = rate.max(1);
    }

    /// A datagram of `bytes` may go at `now`: its time has come, or it fits what is left of
    /// the current quantum (so a quantum sized to a GSO super-buffer fills one exactly).
    pub fn ready(&self, now: Instant, bytes: usize) -> bool {
        (self.credit > 0 && bytes <= self.credit) || self.next.is_none_or(|t| now >= t)
    }

    /// When the next datagram may go (`None`: at once).
    pub fn next_send(&self) -> Option<Instant> {
        self.next
    }

    /// A datagram of `bytes` went at `now`.
    pub fn spend(&mut self, now: Instant, bytes: usize) {
        if self.credit < bytes {
            // A new quantum starts with this datagram (what is left of the last one is less
            // than a datagram: it would only split the next super-buffer).
            self.credit = self.quantum;
        }
        self.credit = self.credit.saturating_sub(bytes);
        let cost = Duration::from_nanos((bytes as u64).saturating_mul(1_000_000_000) / self.rate);
        let floor = now.checked_sub(self.burst).unwrap_or(now);
        self.next = Some(self.next.map_or(floor, |t| t.max(floor)) + cost);
    }

    /// `bytes` went out from elsewhere between `since` and `now`, under the same rate
    /// (another thread's share of one budget): later datagrams of this pacer wait for them
    /// as for their own. It does not start a quantum.
    ///
    /// They are charged from `since` on, when they began to go, and what that leaves unused
    /// before `now` beyond the burst is forgone. Charged from `now` as if sent at once, the
    /// bytes a thread reports every few milliseconds took the whole interval's budget whatever
    /// share of it they used, and the repairs this pacer sends waited behind them: at a fixed
    /// 120 MB/s across namespaces, 0-1 MB/s of repairs went out while 300-470 KB of them were
    /// queued and the first pass used 75-120 MB/s (docs/DESIGN.md 2026-12-02).
    pub fn charge(&mut self, since: Instant, now: Instant, bytes: u64) {
        if bytes == 0 {
            return;
        }
        let cost = Duration::from_nanos(
            (u128::from(bytes) * 1_000_000_000 / u128::from(self.rate)).min(u128::from(u64::MAX))
                as u64,
        );
        let floor = |t: Instant| t.checked_sub(self.burst).unwrap_or(t);
        let from = self
            .next
            .map_or(floor(since), |t| t.max(floor(since.min(now))));
        self.next = Some((from + cost).max(floor(now)));
    }

    /// Sending resumes after a wait: no burst to catch up on the time spent waiting.
    pub fn restart(&mut self, now: Instant) {
        self.next = Some(self.next.map_or(now, |t| t.max(now)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_quantum_goes_together_and_is_charged_in_full() {
        let t0 = Instant::now();
        let mut p = Pacer::new(1_000, Duration::ZERO).with_quantum(3);
        let mut sent = 0;
        while p.ready(t0, 1) {
            p.spend(t0, 1);
            sent += 1;
        }
        assert_eq!(sent, 3);
        assert_eq!(p.next_send(), Some(t0 + Duration::from_millis(3)));
        assert!(!p.ready(t0 + Duration::from_millis(2), 1));
        assert!(p.ready(t0 + Duration::from_millis(3), 1));
    }

    #[test]
    fn a_quantum_starts_whole_when_the_last_left_less_than_a_datagram() {
        let t0 = Instant::now();
        // Quanta of 10 bytes, datagrams of 4: two fit, the 2 left over are dropped.
        let mut p = Pacer::new(1_000, Duration::ZERO).with_quantum(10);
        let mut at = t0;
        for _ in 0..3 {
            let mut sent = 0;
            while p.ready(at, 4) {
                p.spend(at, 4);
                sent += 1;
            }
            assert_eq!(sent, 2, "each quantum carries two datagrams");
            at = p.next_send().expect("paced");
        }
    }

    #[test]
    fn bytes_charged_from_elsewhere_delay_this_pacer_as_its_own() {
        let t0 = Instant::now();
        let mut p = Pacer::new(1_000, Duration::ZERO);
        // Another thread sent 500 bytes of the same budget: half a second of it.
        p.charge(t0, t0, 500);
        assert!(!p.ready(t0 + Duration::from_millis(499), 1));
        assert!(p.ready(t0 + Duration::from_millis(500), 1));
    }

    #[test]
    fn bytes_charged_over_an_interval_leave_what_they_did_not_use() {
        let t0 = Instant::now();
        let mut p = Pacer::new(1_000, Duration::from_millis(10));
        p.spend(t0, 1);
        // Another thread sent 400 bytes over the last second: 400 ms of it. This pacer may
        // send at once (with no more than its burst to catch up), not 400 ms from now.
        let t1 = t0 + Duration::from_secs(1);
        p.charge(t0, t1, 400);
        assert!(p.ready(t1, 1));
        assert_eq!(p.next_send(), Some(t1 - Duration::from_millis(10)));
        // 1,200 bytes over the next second: 200 ms more than it had.
        let t2 = t1 + Duration::from_secs(1);
        p.charge(t1, t2, 1_200);
        assert_eq!(p.next_send(), Some(t2 + Duration::from_millis(190)));
    }

    #[test]
    fn catches_up_at_most_the_burst_after_a_stall() {
        let t0 = Instant::now();
        let mut p = Pacer::new(1_000, Duration::from_millis(10));
        p.spend(t0, 1);
        // 1 byte at 1,000 B/s costs 1 ms; from a floor 10 ms back.
        assert_eq!(p.next_send(), Some(t0 - Duration::from_millis(9)));
        let late = t0 + Duration::from_secs(1);
        let mut sent = 0;
        while p.ready(late, 1) {
            p.spend(late, 1);
            sent += 1;
        }
        // The burst's worth (10 ms at 1 ms each) and the one due now.
        assert_eq!(sent, 11, "a stall of a second is worth only the burst");
    }
}
