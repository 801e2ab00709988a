//! Time's one home: the source of "now" (injectable, so tests can move
//! time), the precision stores keep (microseconds), epoch units, and every
//! text form of a time the server and the CLI read or write. Nothing
//! elsewhere converts a time by hand.

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
/// keeps, so a time reads the same from any of them. The service applies it
/// to every time it hands a store (`now`, and each time a request or an
/// import carries, as it is parsed), so stores keep what they are given.
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

/// The time `micros` microseconds from the Unix epoch (negative: before
/// it), as [`epoch_micros`] wrote it.
pub fn from_epoch_micros(micros: i64) -> Option<SystemTime> {
    let span = Duration::from_micros(micros.unsigned_abs());
    if micros >= 0 {
        UNIX_EPOCH.checked_add(span)
    } else {
        UNIX_EPOCH.checked_sub(span)
    }
}

/// The time `seconds` and `nanos` from the Unix epoch, protobuf's way:
/// the nanos count forward from the second, before 1970 too (-1.5 s is
/// seconds -2, nanos 500000000). `None` when the platform cannot hold it.
pub fn from_unix(seconds: i64, nanos: u32) -> Option<SystemTime> {
    let whole = Duration::from_secs(seconds.unsigned_abs());
    let second = if seconds >= 0 {
        UNIX_EPOCH.checked_add(whole)
    } else {
        UNIX_EPOCH.checked_sub(whole)
    };
    second.and_then(|second| second.checked_add(Duration::from_nanos(u64::from(nanos))))
}

/// Whole seconds since the Unix epoch, rounded down (JWT's NumericDate,
/// metrics' timestamps).
pub fn epoch_seconds(at: SystemTime) -> i64 {
    epoch_millis(at).div_euclid(1000)
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

/// RFC 3339 to the nanosecond, as exports keep times; `None` for a time
/// out of its range (never one a store holds: every time came through
/// [`MIN_UNIX_SECONDS`]..=[`MAX_UNIX_SECONDS`]).
pub fn rfc3339_nanos(at: SystemTime) -> Option<String> {
    let nanos = match at.duration_since(UNIX_EPOCH) {
        Ok(after) => i128::try_from(after.as_nanos()).ok()?,
        Err(before) => -i128::try_from(before.duration().as_nanos()).ok()?,
    };
    time::OffsetDateTime::from_unix_timestamp_nanos(nanos)
        .ok()?
        .format(&time::format_description::well_known::Rfc3339)
        .ok()
}

/// An RFC 3339 time, as seconds and nanoseconds from the Unix epoch (to be
/// checked for range by whoever reads it).
pub fn parse_rfc3339(text: &str) -> Option<(i64, u32)> {
    let at =
        time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339).ok()?;
    Some((at.unix_timestamp(), at.nanosecond()))
}

/// `yyyy-MM-dd`, as StackState's CLI reads and shows dates.
pub const DATE: &[time::format_description::BorrowedFormatItem<'static>] =
    time::macros::format_description!("[year]-[month]-[day]");

/// `yyyy-MM-dd` (UTC) of a time `seconds` from the epoch, as StackState's
/// CLI shows an expiration.
pub fn date(seconds: i64) -> String {
    formatted(seconds, DATE)
}

/// `yyyy-MM-dd HH:MM` (UTC) of a time `seconds` from the epoch: a last use,
/// to its resolution.
pub fn date_time(seconds: i64) -> String {
    const MINUTE: &[time::format_description::BorrowedFormatItem<'static>] =
        time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]");
    formatted(seconds, MINUTE)
}

/// The time `seconds` from the epoch in `format` (UTC). The whole protobuf
/// range (years 1 to 9999) has one; anything beyond it is shown as what it
/// is rather than as "never expires".
fn formatted(seconds: i64, format: &[time::format_description::BorrowedFormatItem<'_>]) -> String {
    time::OffsetDateTime::from_unix_timestamp(seconds)
        .ok()
        .and_then(|t| t.format(format).ok())
        .unwrap_or_else(|| format!("{seconds}s after the epoch"))
}

/// The first second of the day `yyyy-MM-dd` (UTC), from the epoch.
pub fn parse_date(text: &str) -> Option<i64> {
    let day = time::Date::parse(text, DATE).ok()?;
    Some(day.midnight().assume_utc().unix_timestamp())
}

/// `at`, or the latest time RFC 3339 can write: humantime's formatter
/// fails (and `to_string` panics) past year 9999. Nothing the server keeps
/// lies there, but a text must never be what takes a request down.
fn writable(at: SystemTime) -> SystemTime {
    at.clamp(UNIX_EPOCH, latest())
}

/// A span in the largest whole unit that divides it (`90d`, `12h`, `30m`,
/// `45s`): what the flags and rate limits take back (humantime's own text
/// turns 90 days into months and hours).
pub fn span_text(span: Duration) -> String {
    let seconds = span.as_secs();
    match seconds {
        s if s > 0 && s % 86_400 == 0 => format!("{}d", s / 86_400),
        s if s > 0 && s % 3_600 == 0 => format!("{}h", s / 3_600),
        s if s > 0 && s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

/// `20`, `1s`, `90s`, `5m`, `1h`, `1d`: a whole number of seconds,
/// minutes, hours or days (a bare number is seconds), as [`span_text`]
/// writes it.
pub fn parse_span(text: &str) -> Option<Duration> {
    let digits = text.bytes().take_while(u8::is_ascii_digit).count();
    let count: u64 = text[..digits].parse().ok()?;
    let unit = match &text[digits..] {
        "" | "s" => 1,
        "m" => 60,
        "h" => 60 * 60,
        "d" => 24 * 60 * 60,
        _ => return None,
    };
    Some(Duration::from_secs(count.checked_mul(unit)?))
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
