//! The retry budget: a request whose connection attempt failed (it never reached a
//! backend, so a retry cannot duplicate work) is sent to another endpoint, but only
//! while retries stay under `ratio` of recent requests plus a small floor per second.
//! A failing backend therefore costs at most ~(1 + ratio)x the load, never a storm.
//!
//! Every request deposits, so the counters are atomics in per-second buckets (no lock
//! on the request path); a bucket is recycled when its second comes round again.
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

const BUCKETS: u64 = 10;

pub struct RetryBudget {
    ratio: f64,
    min_per_second: u64,
    epoch: Instant,
    /// Per bucket: the second it holds, requests, retries.
    seconds: [AtomicU64; BUCKETS as usize],
    requests: [AtomicU64; BUCKETS as usize],
    retries: [AtomicU64; BUCKETS as usize],
}

impl RetryBudget {
    pub fn new(ratio: f64, min_per_second: u64) -> Self {
        RetryBudget {
            ratio,
            min_per_second,
            epoch: Instant::now(),
            seconds: std::array::from_fn(|_| AtomicU64::new(u64::MAX)),
            requests: std::array::from_fn(|_| AtomicU64::new(0)),
            retries: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }

    /// The bucket for `now`, reset if it still holds an older second. Races between
    /// two resets lose a few counts at a second boundary, which a budget tolerates.
    fn bucket(&self, now: Instant) -> (usize, u64) {
        let second = now.saturating_duration_since(self.epoch).as_secs();
        let i = (second % BUCKETS) as usize;
        let held = self.seconds[i].load(Ordering::Relaxed);
        if held != second && self.seconds[i].compare_exchange(held, second, Ordering::AcqRel, Ordering::Relaxed).is_ok()
        {
            self.requests[i].store(0, Ordering::Relaxed);
            self.retries[i].store(0, Ordering::Relaxed);
        }
        (i, second)
    }

    fn window_sums(&self, second: u64) -> (u64, u64) {
        let mut requests = 0;
        let mut retries = 0;
        for i in 0..BUCKETS as usize {
            let s = self.seconds[i].load(Ordering::Relaxed);
            if s != u64::MAX && second.saturating_sub(s) < BUCKETS {
                requests += self.requests[i].load(Ordering::Relaxed);
                retries += self.retries[i].load(Ordering::Relaxed);
            }
        }
        (requests, retries)
    }

    /// Records a request (a deposit).
    pub fn deposit(&self, now: Instant) {
        let (i, _) = self.bucket(now);
        self.requests[i].fetch_add(1, Ordering::Relaxed);
    }

    /// Takes one retry from the budget if it allows one.
    pub fn try_withdraw(&self, now: Instant) -> bool {
        let (i, second) = self.bucket(now);
        let (requests, retries) = self.window_sums(second);
        let allowed = (self.min_per_second * BUCKETS) as f64 + self.ratio * requests as f64;
        if (retries as f64) < allowed {
            self.retries[i].fetch_add(1, Ordering::Relaxed);
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
    fn budget_is_ratio_plus_floor() {
        let b = RetryBudget::new(0.2, 1);
        let t = Instant::now();
        // Floor: 1/s over a 10 s window = 10 retries with no traffic.
        assert_eq!((0..50).filter(|_| b.try_withdraw(t)).count(), 10);
        // 100 requests allow 20 more.
        for _ in 0..100 {
            b.deposit(t);
        }
        assert_eq!((0..50).filter(|_| b.try_withdraw(t)).count(), 20);
        // After the window passes, the budget refills.
        let later = t + Duration::from_secs(11);
        assert_eq!((0..50).filter(|_| b.try_withdraw(later)).count(), 10);
    }
}
