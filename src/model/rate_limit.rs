//! A token's rate limits ([`RateLimits`]): named, each `limit` checks per
//! `period`, parsed once when a token is made or read. How checks spend
//! them is `crate::rate_limit`'s.

use std::{fmt, str::FromStr, sync::Arc, time::Duration};

use super::fields::FieldError;

/// The most limits one token may carry: a check spends from them all.
pub const MAX_RATE_LIMITS: usize = 8;
/// The shortest period, in seconds.
pub const MIN_PERIOD_SECS: u64 = 1;
/// The longest period, in seconds (24 h).
pub const MAX_PERIOD_SECS: u64 = 24 * 60 * 60;
/// The largest limit. It keeps a limit's arithmetic (milliseconds of the
/// period times the limit) exact in a double, as Redis' scripts compute
/// it: 86 400 000 ms × 10^8 < 2^53.
pub const MAX_LIMIT: u64 = 100_000_000;
/// The longest limit name, in characters.
pub const MAX_LIMIT_NAME_CHARS: usize = 32;

/// One limit: at most `limit` checks at once, refilled at `limit` per
/// `period` (GCRA; `docs/rate-limits.md` pins what that means).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct RateLimit {
    name: Arc<str>,
    limit: u64,
    period_secs: u64,
}

impl RateLimit {
    /// `name` of 1 to [`MAX_LIMIT_NAME_CHARS`] ASCII letters, digits, `.`,
    /// `_` and `-` (it is a policy name in HTTP's `RateLimit` fields),
    /// starting with a letter or digit; `limit` from 1 to [`MAX_LIMIT`];
    /// `period` whole seconds from 1 s to 24 h.
    pub fn new(
        field: &str,
        name: &str,
        limit: u64,
        period: Duration,
    ) -> Result<RateLimit, FieldError> {
        let name_ok = !name.is_empty()
            && name.len() <= MAX_LIMIT_NAME_CHARS
            && name.as_bytes()[0].is_ascii_alphanumeric()
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        if !name_ok {
            return Err(FieldError::new(
                field,
                format!(
                    "a limit's name must be 1 to {MAX_LIMIT_NAME_CHARS} of A-Z a-z 0-9 . _ -, starting with a letter or digit"
                ),
            ));
        }
        if !(1..=MAX_LIMIT).contains(&limit) {
            return Err(FieldError::new(
                field,
                format!("limit {name}: the number must be from 1 to {MAX_LIMIT}"),
            ));
        }
        if period.subsec_nanos() != 0
            || !(MIN_PERIOD_SECS..=MAX_PERIOD_SECS).contains(&period.as_secs())
        {
            return Err(FieldError::new(
                field,
                format!("limit {name}: the period must be whole seconds from 1s to 24h"),
            ));
        }
        Ok(RateLimit {
            name: name.into(),
            limit,
            period_secs: period.as_secs(),
        })
    }

    /// `NAME=LIMIT/PERIOD` (`burst=20/1s`, `hourly=5000/1h`), the period a
    /// number and a unit: `s`, `m`, `h` or `d`.
    pub fn parse_text(field: &str, text: &str) -> Result<RateLimit, FieldError> {
        let bad = || {
            FieldError::new(
                field,
                "must be NAME=LIMIT/PERIOD, such as burst=20/1s or hourly=5000/1h (units s, m, h, d)",
            )
        };
        let (name, rest) = text.trim().split_once('=').ok_or_else(bad)?;
        let (limit, period) = rest.split_once('/').ok_or_else(bad)?;
        let limit = u64::from_str(limit.trim()).map_err(|_| bad())?;
        let period = crate::clock::parse_span(period.trim()).ok_or_else(bad)?;
        RateLimit::new(field, name.trim(), limit, period)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn limit(&self) -> u64 {
        self.limit
    }

    pub fn period(&self) -> Duration {
        Duration::from_secs(self.period_secs)
    }

    pub fn period_secs(&self) -> u64 {
        self.period_secs
    }
}

/// `NAME=LIMIT/PERIOD`, as `parse_text` reads it.
impl fmt::Display for RateLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}={}/{}",
            self.name,
            self.limit,
            crate::clock::span_text(self.period())
        )
    }
}

impl fmt::Debug for RateLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// A token's rate limits; empty: none. With them, their policy list as
/// HTTP's `RateLimit-Policy` field states it, made once when the limits
/// are parsed rather than on every check that answers with it.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct RateLimits(Option<Arc<Limits>>);

/// The limits, shared by every clone of a token (one count to clone,
/// nothing at all without limits), and their policy list.
#[derive(PartialEq, Eq)]
struct Limits {
    list: Box<[RateLimit]>,
    /// ASCII, made from a `String`: shared, so an answer's header takes it
    /// without a copy.
    policy: bytes::Bytes,
}

impl fmt::Debug for RateLimits {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.as_slice()).finish()
    }
}

impl RateLimits {
    /// No limits.
    pub const NONE: RateLimits = RateLimits(None);

    /// At most [`MAX_RATE_LIMITS`], no name twice.
    pub fn new(field: &str, limits: Vec<RateLimit>) -> Result<RateLimits, FieldError> {
        if limits.len() > MAX_RATE_LIMITS {
            return Err(FieldError::new(
                field,
                format!("at most {MAX_RATE_LIMITS} rate limits"),
            ));
        }
        for (at, limit) in limits.iter().enumerate() {
            if limits[..at]
                .iter()
                .any(|earlier| earlier.name == limit.name)
            {
                return Err(FieldError::new(
                    field,
                    format!("the name {} is given twice", limit.name),
                ));
            }
        }
        if limits.is_empty() {
            return Ok(RateLimits(None));
        }
        Ok(RateLimits(Some(Arc::new(Limits {
            policy: bytes::Bytes::from(policy_list(&limits)),
            list: limits.into(),
        }))))
    }

    /// Each of `texts` read by [`RateLimit::parse_text`].
    pub fn parse_texts<S: AsRef<str>>(field: &str, texts: &[S]) -> Result<RateLimits, FieldError> {
        let limits = texts
            .iter()
            .map(|text| RateLimit::parse_text(field, text.as_ref()))
            .collect::<Result<Vec<_>, _>>()?;
        RateLimits::new(field, limits)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_none()
    }

    pub fn as_slice(&self) -> &[RateLimit] {
        self.0.as_deref().map_or(&[], |limits| &limits.list)
    }

    /// Each limit as a policy of draft-ietf-httpapi-ratelimit-headers-09
    /// (`"burst";q=20;w=1, "hourly";q=5000;w=3600`); empty without limits.
    pub fn policy_list(&self) -> &str {
        self.0.as_deref().map_or("", |limits| {
            std::str::from_utf8(&limits.policy).unwrap_or_default()
        })
    }

    /// [`RateLimits::policy_list`] as shared bytes (one count, no copy).
    pub fn policy_bytes(&self) -> bytes::Bytes {
        self.0
            .as_deref()
            .map_or_else(bytes::Bytes::new, |limits| limits.policy.clone())
    }
}

impl RateLimits {
    /// The first of `wider`'s limits these limits do not keep, if any:
    /// kept when one of these allows no larger burst and no faster rate.
    /// No limits at all keep none of `wider`'s; anything keeps no limits.
    pub fn widening<'w>(&self, wider: &'w RateLimits) -> Option<&'w RateLimit> {
        wider.as_slice().iter().find(|kept| {
            !self.as_slice().iter().any(|limit| {
                // limit/period <= kept.limit/kept.period, in whole numbers.
                limit.limit <= kept.limit
                    && u128::from(limit.limit) * u128::from(kept.period_secs)
                        <= u128::from(kept.limit) * u128::from(limit.period_secs)
            })
        })
    }
}

/// The `RateLimit-Policy` list of `limits`: a name (of characters a
/// structured-field string takes as they are), `q` the limit, `w` the
/// period in seconds.
fn policy_list(limits: &[RateLimit]) -> String {
    let mut text = String::new();
    for (at, limit) in limits.iter().enumerate() {
        if at > 0 {
            text.push_str(", ");
        }
        text.push_str(&format!(
            "\"{}\";q={};w={}",
            limit.name, limit.limit, limit.period_secs
        ));
    }
    text
}

/// Comma-separated, `none` when empty: the audit log's view.
impl fmt::Display for RateLimits {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_empty() {
            return f.write_str("none");
        }
        for (at, limit) in self.as_slice().iter().enumerate() {
            if at > 0 {
                f.write_str(",")?;
            }
            write!(f, "{limit}")?;
        }
        Ok(())
    }
}
