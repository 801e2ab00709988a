//! Reading settings from text: one error type for every setting, and the
//! parsers the binaries hand clap, so each flag's default is written once
//! (the `DEFAULT_` constant, shown by clap through [`Span`]) and each value
//! is checked where its rule lives.

use std::time::Duration;

use crate::{
    model::{RateLimit, RateLimits, Role},
    source::TrustedProxies,
};

use super::{MIN_HEADER_BYTES, bounded_setting};

/// Why a setting's value is refused. Its text is the server's own and never
/// quotes the value (a setting may carry a password or a secret).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{problem}")]
pub struct SettingError {
    problem: String,
}

impl SettingError {
    pub fn new(problem: impl Into<String>) -> SettingError {
        SettingError {
            problem: problem.into(),
        }
    }
}

/// A duration as a flag takes and shows it (`5s`, `30days`): a
/// `std::time::Duration` that clap can print as a default.
pub type Span = humantime::Duration;

/// Any duration (`500ms`, `24h`, `0s`).
pub fn duration(text: &str) -> Result<Span, SettingError> {
    // humantime's messages name the unit or the number, never a secret.
    text.parse::<Span>()
        .map_err(|e| SettingError::new(e.to_string()))
}

/// A duration longer than zero (a zero body timeout would fail every body).
pub fn positive_duration(text: &str) -> Result<Span, SettingError> {
    let span = duration(text)?;
    if span.is_zero() {
        return Err(SettingError::new("must be longer than zero"));
    }
    Ok(span)
}

/// A lifetime or grace: a duration of at most 100 years.
pub fn lifetime(text: &str) -> Result<Span, SettingError> {
    let span = duration(text)?;
    bounded_setting(*span)?;
    Ok(span)
}

/// One `--default-rate-limit`: `NAME=LIMIT/PERIOD`.
pub fn rate_limit(text: &str) -> Result<RateLimit, SettingError> {
    RateLimit::parse_text("rate limit", text).map_err(|e| SettingError::new(e.problem))
}

/// Every `--default-rate-limit` together: at most 8, no name twice.
pub fn rate_limits(limits: Vec<RateLimit>) -> Result<RateLimits, SettingError> {
    RateLimits::new("rate limits", limits).map_err(|e| SettingError::new(e.problem))
}

/// `--rate-limit-on-error`: `open` or `closed`.
pub fn on_store_error(text: &str) -> Result<crate::rate_limit::OnStoreError, SettingError> {
    crate::rate_limit::OnStoreError::parse(text)
        .ok_or_else(|| SettingError::new("must be open or closed"))
}

/// A header byte count hyper can work with.
pub fn header_bytes(text: &str) -> Result<usize, SettingError> {
    let bytes: usize = text
        .parse()
        .map_err(|_| SettingError::new("is not a number of bytes"))?;
    if !(MIN_HEADER_BYTES..=u32::MAX as usize).contains(&bytes) {
        return Err(SettingError::new(format!(
            "must be from {MIN_HEADER_BYTES} to {}",
            u32::MAX
        )));
    }
    Ok(bytes)
}

/// A role name, as tokens carry them.
pub fn role(text: &str) -> Result<Role, SettingError> {
    Role::parse(text).map_err(|e| SettingError::new(e.problem))
}

/// The reverse proxies whose forwarding headers are believed.
pub fn trusted_proxies(text: &str) -> Result<TrustedProxies, SettingError> {
    TrustedProxies::parse(text).map_err(SettingError::new)
}

/// `duration` as a [`Span`] for a flag's default.
pub fn span(duration: Duration) -> Span {
    duration.into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_shown_by_clap_read_back_as_themselves() {
        for default in [
            super::super::DEFAULT_SHUTDOWN_DELAY,
            super::super::DEFAULT_BODY_TIMEOUT,
            super::super::DEFAULT_LAST_USED_RESOLUTION,
            super::super::DEFAULT_ADMIN_KEEP_MARGIN,
            super::super::DEFAULT_MAX_ROTATION_GRACE,
        ] {
            let shown = span(default).to_string();
            assert_eq!(*lifetime(&shown).unwrap(), default, "{shown}");
        }
    }

    #[test]
    fn refusals_say_what_is_wrong_without_quoting_the_value() {
        for (parsed, problem) in [
            (
                positive_duration("0s").map(drop),
                "must be longer than zero",
            ),
            (header_bytes("lots").map(drop), "is not a number of bytes"),
            (
                header_bytes("100").map(drop),
                "must be from 8192 to 4294967295",
            ),
        ] {
            assert_eq!(parsed.unwrap_err().to_string(), problem);
        }
        assert!(
            lifetime("200years")
                .unwrap_err()
                .to_string()
                .contains("100 years")
        );
        assert!(role("no spaces allowed").is_err());
    }
}
