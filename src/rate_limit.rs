//! A per-source-address rate limit for calls anyone may make without a
//! credential (revoking a leaked token): fixed windows, a bounded table.

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::Mutex,
    time::{Duration, Instant},
};

/// At most this many addresses are tracked; when full, windows that have
/// ended are dropped, and if none has, the new address is refused too (a
/// flood of addresses must not grow memory without bound).
const MAX_ADDRESSES: usize = 10_000;

/// `limit` calls per `window` from each source address.
#[derive(Debug)]
pub struct RateLimit {
    limit: u32,
    window: Duration,
    seen: Mutex<HashMap<Option<IpAddr>, (Instant, u32)>>,
}

impl RateLimit {
    pub fn new(limit: u32, window: Duration) -> RateLimit {
        RateLimit {
            limit,
            window,
            seen: Mutex::new(HashMap::new()),
        }
    }

    /// Counts a call from `source` at `now`; `Err(wait)` when over the
    /// limit, with how long until its window ends.
    pub fn check(&self, source: Option<IpAddr>, now: Instant) -> Result<(), Duration> {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        if seen.len() >= MAX_ADDRESSES && !seen.contains_key(&source) {
            let window = self.window;
            seen.retain(|_, (start, _)| now.duration_since(*start) < window);
            if seen.len() >= MAX_ADDRESSES {
                return Err(self.window);
            }
        }
        let (start, count) = seen.entry(source).or_insert((now, 0));
        if now.duration_since(*start) >= self.window {
            (*start, *count) = (now, 0);
        }
        if *count >= self.limit {
            return Err(self.window.saturating_sub(now.duration_since(*start)));
        }
        *count += 1;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_address_gets_its_own_window() {
        let limit = RateLimit::new(2, Duration::from_secs(60));
        let start = Instant::now();
        let a = Some(IpAddr::from([10, 0, 0, 1]));
        let b = Some(IpAddr::from([10, 0, 0, 2]));
        assert!(limit.check(a, start).is_ok());
        assert!(limit.check(a, start).is_ok());
        let wait = limit.check(a, start + Duration::from_secs(20)).unwrap_err();
        assert_eq!(wait, Duration::from_secs(40));
        assert!(limit.check(b, start).is_ok());
        assert!(limit.check(a, start + Duration::from_secs(60)).is_ok());
    }
}
