//! A per-source rate limit for calls anyone may make without a credential
//! (revoking a leaked token): fixed windows, a bounded table.
//!
//! A source is a `source::Group`: an IPv4 address or an IPv6 /64. When the
//! table is full, the oldest windows make room: refusing
//! new sources instead would let one flood of addresses lock everyone out.

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::Mutex,
    time::{Duration, Instant},
};

use crate::source::Group;

/// At most this many sources are tracked (memory stays bounded whatever
/// the flood of addresses).
const MAX_SOURCES: usize = 10_000;

/// When the table is full and no window has ended, this share of it (the
/// oldest windows) is dropped at once, so a flood of new sources costs one
/// scan per this many of them rather than one per source.
const EVICT_SHARE: usize = 16;

/// What a call is counted against: its source's group (`None`: a request
/// that came over no socket).
type Bucket = Option<Group>;

/// `limit` calls per `window` from each source.
#[derive(Debug)]
pub struct SourceLimit {
    limit: u32,
    window: Duration,
    seen: Mutex<HashMap<Bucket, (Instant, u32)>>,
}

impl SourceLimit {
    pub fn new(limit: u32, window: Duration) -> SourceLimit {
        SourceLimit {
            limit,
            window,
            seen: Mutex::new(HashMap::new()),
        }
    }

    /// Counts a call from `source` at `now`; `Err(wait)` when over the
    /// limit, with how long until its window ends.
    pub fn check(&self, source: Option<IpAddr>, now: Instant) -> Result<(), Duration> {
        let bucket = source.map(Group::of);
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        if seen.len() >= MAX_SOURCES && !seen.contains_key(&bucket) {
            let window = self.window;
            seen.retain(|_, (start, _)| now.duration_since(*start) < window);
            if seen.len() >= MAX_SOURCES {
                evict_oldest(&mut seen, MAX_SOURCES / EVICT_SHARE);
            }
        }
        let (start, count) = seen.entry(bucket).or_insert((now, 0));
        if now.duration_since(*start) >= self.window {
            (*start, *count) = (now, 0);
        }
        if *count >= self.limit {
            return Err(self.window.saturating_sub(now.duration_since(*start)));
        }
        *count += 1;
        Ok(())
    }

    #[cfg(test)]
    fn tracked(&self) -> usize {
        self.seen.lock().unwrap().len()
    }
}

/// Drops the `n` windows that started first.
fn evict_oldest(seen: &mut HashMap<Bucket, (Instant, u32)>, n: usize) {
    let mut starts: Vec<Instant> = seen.values().map(|(start, _)| *start).collect();
    let nth = n.min(starts.len() - 1);
    let (_, cutoff, _) = starts.select_nth_unstable(nth);
    let cutoff = *cutoff;
    seen.retain(|_, (start, _)| *start > cutoff);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> Option<IpAddr> {
        Some(text.parse().unwrap())
    }

    #[test]
    fn each_address_gets_its_own_window() {
        let limit = SourceLimit::new(2, Duration::from_secs(60));
        let start = Instant::now();
        let (a, b) = (ip("10.0.0.1"), ip("10.0.0.2"));
        assert!(limit.check(a, start).is_ok());
        assert!(limit.check(a, start).is_ok());
        let wait = limit.check(a, start + Duration::from_secs(20)).unwrap_err();
        assert_eq!(wait, Duration::from_secs(40));
        assert!(limit.check(b, start).is_ok());
        assert!(limit.check(a, start + Duration::from_secs(60)).is_ok());
        // The IPv4-mapped form is the same address.
        assert!(limit.check(ip("::ffff:10.0.0.2"), start).is_ok());
        assert!(limit.check(b, start).is_err());
    }

    #[test]
    fn an_ipv6_64_is_one_source() {
        let limit = SourceLimit::new(1, Duration::from_secs(60));
        let start = Instant::now();
        assert!(limit.check(ip("2001:db8:1:2::1"), start).is_ok());
        assert!(limit.check(ip("2001:db8:1:2:ffff::9"), start).is_err());
        assert!(limit.check(ip("2001:db8:1:3::1"), start).is_ok());
    }

    #[test]
    fn a_flood_of_sources_evicts_the_oldest_instead_of_refusing_new_ones() {
        let limit = SourceLimit::new(1, Duration::from_secs(60));
        let start = Instant::now();
        let first = ip("192.0.2.1");
        assert!(limit.check(first, start).is_ok());
        for n in 0..(2 * MAX_SOURCES as u32) {
            let source = Some(IpAddr::from((0x0a00_0000 + n).to_be_bytes()));
            let now = start + Duration::from_millis(1 + u64::from(n) / 100);
            assert!(limit.check(source, now).is_ok(), "source {n} refused");
            assert!(limit.tracked() <= MAX_SOURCES);
        }
        // The first source's window went with the oldest: it is counted afresh.
        assert!(limit.check(first, start + Duration::from_secs(1)).is_ok());
    }
}
