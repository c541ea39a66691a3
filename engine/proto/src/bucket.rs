//! A token bucket: how much a peer may make us do per second, with a burst.

use std::time::Instant;

/// Tokens refill continuously at a rate given at each use (the rate a bucket follows, such as
/// a share of the send rate, may change), up to `burst`.
#[derive(Clone, Debug)]
pub(crate) struct TokenBucket {
    tokens: f64,
    burst: f64,
    last: Option<Instant>,
}

impl TokenBucket {
    /// A full bucket of `burst` tokens.
    pub(crate) fn new(burst: f64) -> Self {
        TokenBucket {
            tokens: burst,
            burst,
            last: None,
        }
    }

    /// A bucket empty at `now` that fills from then on at its rate, up to `burst`: what it
    /// gives in all is its rate times the time since `now`, never more.
    pub(crate) fn empty(burst: f64, now: Instant) -> Self {
        TokenBucket {
            tokens: 0.0,
            burst,
            last: Some(now),
        }
    }

    /// Changes the most the bucket holds (its tokens are capped at once).
    pub(crate) fn set_burst(&mut self, burst: f64) {
        self.burst = burst;
        self.tokens = self.tokens.min(burst);
    }

    /// Raises the most the bucket holds to `burst` (if larger) and fills the new room at
    /// once: a bucket sized for more work from now on (never lowered here).
    pub(crate) fn grow_to(&mut self, burst: f64) {
        if burst > self.burst {
            self.tokens += burst - self.burst;
            self.burst = burst;
        }
    }

    fn refill(&mut self, now: Instant, per_sec: f64) {
        if let Some(last) = self.last {
            let dt = now.saturating_duration_since(last).as_secs_f64();
            self.tokens = (self.tokens + dt * per_sec).min(self.burst);
        }
        self.last = Some(now);
    }

    /// Whether the bucket holds `n` tokens, refilling at `per_sec` since the last use.
    pub(crate) fn holds(&mut self, now: Instant, per_sec: f64, n: f64) -> bool {
        self.refill(now, per_sec);
        self.tokens >= n
    }

    /// Takes `n` tokens if the bucket holds them, refilling at `per_sec` since the last use.
    pub(crate) fn take(&mut self, now: Instant, per_sec: f64, n: f64) -> bool {
        self.refill(now, per_sec);
        if self.tokens >= n {
            self.tokens -= n;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_bucket_gives_its_burst_then_its_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(10.0);
        assert!(b.take(t0, 100.0, 10.0));
        assert!(!b.take(t0, 100.0, 1.0));
        // 100 per second: 5 after 50 ms, never more than the burst.
        let t1 = t0 + Duration::from_millis(50);
        assert!(!b.take(t1, 100.0, 6.0));
        assert!(b.take(t1, 100.0, 5.0));
        assert!(!b.take(t0 + Duration::from_secs(60), 100.0, 11.0));
        assert!(b.take(t0 + Duration::from_secs(60), 100.0, 10.0));
    }

    #[test]
    fn an_empty_bucket_gives_its_rate_from_when_it_was_made_and_nothing_before() {
        let t0 = Instant::now();
        let mut b = TokenBucket::empty(10.0, t0);
        assert!(!b.take(t0, 100.0, 1.0));
        let t1 = t0 + Duration::from_millis(50);
        assert!(!b.take(t1, 100.0, 6.0));
        assert!(b.take(t1, 100.0, 5.0));
        assert!(b.take(t0 + Duration::from_secs(60), 100.0, 10.0));
        assert!(!b.take(t0 + Duration::from_secs(60), 100.0, 1.0));
    }
}
