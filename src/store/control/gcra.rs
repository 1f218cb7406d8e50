//! The cluster-wide post rate as GCRA (generic cell rate algorithm): one
//! number per user, the "theoretical arrival time" (TAT) of the next post.
//! The memory engine runs this function; `store/redis/admit.lua` is the same
//! arithmetic on the Redis clock (keep the two in step).
//!
//! A post at `now` is allowed when `tat - now <= (burst - 1) * interval`
//! (`interval` = 1000 / rate ms); it moves `tat` to `max(tat, now) + interval`.
//! So `burst` posts pass at once and then one per `interval`; a refused post
//! changes nothing and learns when the next one would pass.

use super::PostRate;

/// Milliseconds between posts at the steady rate, and the burst's allowance.
pub fn params(rate: PostRate) -> (f64, f64) {
    let interval = 1000.0 / rate.rate_per_s.max(0.001);
    let tolerance = (rate.burst.max(1.0) - 1.0) * interval;
    (interval, tolerance)
}

/// `Ok(new_tat)` if a post at `now_ms` passes, else `Err(retry_after_ms)`.
pub fn admit(tat_ms: f64, now_ms: f64, rate: PostRate) -> Result<f64, u64> {
    let (interval, tolerance) = params(rate);
    let tat = tat_ms.max(now_ms);
    if tat - now_ms > tolerance {
        return Err((tat - now_ms - tolerance).ceil().max(1.0) as u64);
    }
    Ok(tat + interval)
}

#[cfg(test)]
mod tests {
    use super::*;

    const RATE: PostRate = PostRate {
        rate_per_s: 2.0,
        burst: 3.0,
    };

    #[test]
    fn burst_then_steady_rate() {
        let mut tat = 0.0;
        for _ in 0..3 {
            tat = admit(tat, 1000.0, RATE).expect("within the burst");
        }
        // The fourth at the same instant waits one interval (500 ms).
        assert_eq!(admit(tat, 1000.0, RATE), Err(500));
        assert_eq!(admit(tat, 1499.0, RATE), Err(1));
        tat = admit(tat, 1500.0, RATE).expect("one interval later");
        assert!(admit(tat, 1500.0, RATE).is_err());
    }

    #[test]
    fn idle_time_refills_only_up_to_the_burst() {
        let mut tat = admit(0.0, 0.0, RATE).unwrap();
        let later = 1_000_000.0;
        for _ in 0..3 {
            tat = admit(tat, later, RATE).unwrap();
        }
        assert!(admit(tat, later, RATE).is_err());
    }
}
