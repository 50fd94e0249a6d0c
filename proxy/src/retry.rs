//! The retry budget: a request whose connection attempt failed (it never reached a
//! backend, so a retry cannot duplicate work) is sent to another endpoint, but only
//! while retries stay under `ratio` of recent requests plus a small floor per second.
//! A failing backend therefore costs at most ~(1 + ratio)x the load, never a storm.
use std::sync::Mutex;
use std::time::{Duration, Instant};

const BUCKETS: usize = 10;
const BUCKET: Duration = Duration::from_secs(1);

#[derive(Debug)]
struct Window {
    requests: [u64; BUCKETS],
    retries: [u64; BUCKETS],
    /// Start of the bucket at `head`.
    head_start: Instant,
    head: usize,
}

pub struct RetryBudget {
    ratio: f64,
    min_per_second: u64,
    window: Mutex<Window>,
}

impl RetryBudget {
    pub fn new(ratio: f64, min_per_second: u64) -> Self {
        RetryBudget {
            ratio,
            min_per_second,
            window: Mutex::new(Window { requests: [0; BUCKETS], retries: [0; BUCKETS], head_start: Instant::now(), head: 0 }),
        }
    }

    fn advance(w: &mut Window, now: Instant) {
        let mut steps = 0;
        while now.duration_since(w.head_start) >= BUCKET && steps < BUCKETS {
            w.head = (w.head + 1) % BUCKETS;
            w.requests[w.head] = 0;
            w.retries[w.head] = 0;
            w.head_start += BUCKET;
            steps += 1;
        }
        if now.duration_since(w.head_start) >= BUCKET {
            // Idle longer than the window: start afresh.
            w.head_start = now;
        }
    }

    /// Records a request (a deposit).
    pub fn deposit(&self, now: Instant) {
        if let Ok(mut w) = self.window.lock() {
            Self::advance(&mut w, now);
            let h = w.head;
            w.requests[h] += 1;
        }
    }

    /// Takes one retry from the budget if it allows one.
    pub fn try_withdraw(&self, now: Instant) -> bool {
        let Ok(mut w) = self.window.lock() else { return false };
        Self::advance(&mut w, now);
        let requests: u64 = w.requests.iter().sum();
        let retries: u64 = w.retries.iter().sum();
        let allowed = (self.min_per_second * BUCKETS as u64) as f64 + self.ratio * requests as f64;
        if (retries as f64) < allowed {
            let h = w.head;
            w.retries[h] += 1;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
