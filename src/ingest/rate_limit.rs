//! Keyed token buckets (per user, per IP).

use std::hash::Hash;
use std::time::Instant;

use dashmap::DashMap;

pub struct RateLimiter<K: Hash + Eq> {
    buckets: DashMap<K, (f64, Instant)>,
    rate_per_s: f64,
    burst: f64,
}

impl<K: Hash + Eq + Clone> RateLimiter<K> {
    pub fn new(rate_per_s: f64, burst: f64) -> Self {
        RateLimiter {
            buckets: DashMap::new(),
            rate_per_s: rate_per_s.max(0.0),
            burst: burst.max(1.0),
        }
    }

    /// Takes one token, or says how many seconds until one is available.
    pub fn check(&self, key: &K) -> Result<(), u64> {
        self.check_at(key, Instant::now())
    }

    pub fn check_at(&self, key: &K, now: Instant) -> Result<(), u64> {
        let mut entry = self.buckets.entry(key.clone()).or_insert((self.burst, now));
        let (tokens, last) = *entry;
        let refilled = (tokens
            + now.saturating_duration_since(last).as_secs_f64() * self.rate_per_s)
            .min(self.burst);
        if refilled >= 1.0 {
            *entry = (refilled - 1.0, now);
            Ok(())
        } else {
            *entry = (refilled, now);
            let wait = if self.rate_per_s > 0.0 {
                ((1.0 - refilled) / self.rate_per_s).ceil() as u64
            } else {
                3600
            };
            Err(wait.max(1))
        }
    }

    /// Forgets keys whose bucket has refilled: they carry no state.
    pub fn sweep(&self) {
        let now = Instant::now();
        self.buckets.retain(|_, (tokens, last)| {
            *tokens + now.saturating_duration_since(*last).as_secs_f64() * self.rate_per_s
                < self.burst
        });
    }

    pub fn len(&self) -> usize {
        self.buckets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn burst_then_rate() {
        let rl = RateLimiter::new(2.0, 3.0);
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(rl.check_at(&"u", t0).is_ok());
        }
        assert_eq!(rl.check_at(&"u", t0), Err(1));
        // Other keys are independent.
        assert!(rl.check_at(&"v", t0).is_ok());
        // Half a second at 2/s refills one token.
        assert!(rl.check_at(&"u", t0 + Duration::from_millis(500)).is_ok());
        assert!(rl.check_at(&"u", t0 + Duration::from_millis(500)).is_err());
    }

    #[test]
    fn sweep_drops_full_buckets_only() {
        let rl = RateLimiter::new(1000.0, 2.0);
        rl.check(&1).unwrap();
        std::thread::sleep(Duration::from_millis(10));
        rl.sweep();
        assert!(rl.is_empty());
    }
}
