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

/// The range protobuf's Timestamp allows, 0001-01-01 to 9999-12-31 (UTC),
/// in seconds from the Unix epoch: every time the server accepts or
/// computes lies within it, so every client can read it back.
pub const MIN_UNIX_SECONDS: i64 = -62_135_596_800;
pub const MAX_UNIX_SECONDS: i64 = 253_402_300_799;

/// The last second protobuf's Timestamp (and RFC 3339) can express.
pub fn latest() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(MAX_UNIX_SECONDS.unsigned_abs())
}

/// A time as every outward text gives it (the `X-Service-Token-Expiration`
/// header, events, audit lines): RFC 3339, UTC, whole seconds.
pub fn rfc3339(at: SystemTime) -> String {
    humantime::format_rfc3339_seconds(writable(at)).to_string()
}

/// Microseconds since the Unix epoch, negative before it (saturating):
/// the unit stores and etags count in.
pub fn epoch_micros(at: SystemTime) -> i64 {
    match at.duration_since(UNIX_EPOCH) {
        Ok(after) => i64::try_from(after.as_micros()).unwrap_or(i64::MAX),
        Err(before) => i64::try_from(before.duration().as_micros()).map_or(i64::MIN, |m| -m),
    }
}

/// Milliseconds since the Unix epoch, negative before it (saturating):
/// StackState's JSON times.
pub fn epoch_millis(at: SystemTime) -> i64 {
    match at.duration_since(UNIX_EPOCH) {
        Ok(after) => i64::try_from(after.as_millis()).unwrap_or(i64::MAX),
        Err(before) => i64::try_from(before.duration().as_millis()).map_or(i64::MIN, |m| -m),
    }
}

/// As [`rfc3339`], to the microsecond (audit lines of changes).
pub fn rfc3339_micros(at: SystemTime) -> String {
    humantime::format_rfc3339_micros(writable(at)).to_string()
}

/// `at`, or the latest time RFC 3339 can write: humantime's formatter
/// fails (and `to_string` panics) past year 9999. Nothing the server keeps
/// lies there, but a text must never be what takes a request down.
fn writable(at: SystemTime) -> SystemTime {
    at.clamp(UNIX_EPOCH, latest())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_past_what_rfc3339_can_write_are_written_as_its_last_second() {
        let far = latest() + Duration::from_secs(86_400 * 365 * 10_000);
        assert_eq!(rfc3339(far), "9999-12-31T23:59:59Z");
        assert_eq!(rfc3339_micros(far), "9999-12-31T23:59:59.000000Z");
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00Z");
    }
}
