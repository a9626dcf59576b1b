//! Per-connection rate limits (`--rate-limit` for `send`/`dm`, `--room-rate-limit` for
//! `join`/`history`/`resume`): a token bucket, refilled by elapsed time.

use std::time::Instant;

/// A per-connection rate limit (`send`/`dm`; `join`/`history`/`resume`).
pub struct TokenBucket {
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    pub fn new(burst: f64) -> Self {
        TokenBucket {
            tokens: burst,
            last: Instant::now(),
        }
    }

    /// Whether the bucket would be full by `now`: then it is no different from a new one.
    pub fn is_full(&self, rate: f64, burst: f64, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        rate <= 0.0 || self.tokens + elapsed * rate >= burst
    }

    /// Takes one token; false when the connection is over its rate.
    pub fn take(&mut self, rate: f64, burst: f64, now: Instant) -> bool {
        if rate <= 0.0 {
            return true;
        }
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * rate).min(burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}
