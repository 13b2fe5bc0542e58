//! A token bucket shared by every transfer it limits (`--peer-rate-limit`): each chunk takes
//! its size in tokens on credit, so concurrent transfers queue behind each other and together
//! stay at the rate.

use std::sync::Mutex;
use std::time::{Duration, Instant};

pub struct RateLimit {
    rate: f64,
    burst: f64,
    state: Mutex<(f64, Instant)>,
}

impl RateLimit {
    /// `bytes_per_sec` for everything that takes from this bucket together.
    pub fn new(bytes_per_sec: u64) -> Self {
        let rate = bytes_per_sec.max(1) as f64;
        // A tenth of a second of traffic, and at least a typical chunk.
        let burst = (rate / 10.0).max(256.0 * 1024.0);
        Self {
            rate,
            burst,
            state: Mutex::new((burst, Instant::now())),
        }
    }

    /// How long to wait before sending `n` bytes (taken now, on credit).
    pub fn reserve(&self, n: usize) -> Duration {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let (tokens, last) = &mut *s;
        *tokens = (*tokens + now.duration_since(*last).as_secs_f64() * self.rate).min(self.burst);
        *last = now;
        *tokens -= n as f64;
        if *tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-*tokens / self.rate)
        }
    }

    /// Wait until `n` bytes may go.
    pub async fn take(&self, n: usize) {
        let wait = self.reserve(n);
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn takers_together_are_held_to_the_rate() {
        let r = RateLimit::new(1 << 20);
        // The burst goes at once; then each further MiB waits about a second more.
        assert_eq!(r.reserve(256 << 10), Duration::ZERO);
        let w1 = r.reserve(1 << 20);
        let w2 = r.reserve(1 << 20);
        assert!(
            w1 > Duration::from_millis(900) && w1 < Duration::from_millis(1100),
            "{w1:?}"
        );
        assert!(
            w2 > Duration::from_millis(1900) && w2 < Duration::from_millis(2100),
            "{w2:?}"
        );
    }
}
