//! The source of "now" for expiry decisions, injectable so tests can move
//! time, and the one way a time is written out (RFC 3339, whole seconds).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> SystemTime;
}

/// The operating system's wall clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }
}

/// `time` with the sub-microsecond part dropped: the precision every store
/// keeps, so a time reads the same from any of them.
pub fn to_micros(time: SystemTime) -> SystemTime {
    match time.duration_since(UNIX_EPOCH) {
        Ok(since) => UNIX_EPOCH + Duration::from_micros(since.as_micros() as u64),
        // Before 1970: never a token's time (creation is now, expiry ahead).
        Err(_) => time,
    }
}

/// A time as every outward text gives it (the `X-Service-Token-Expiration`
/// header, events, audit lines): RFC 3339, UTC, whole seconds.
pub fn rfc3339(at: SystemTime) -> String {
    humantime::format_rfc3339_seconds(at).to_string()
}
