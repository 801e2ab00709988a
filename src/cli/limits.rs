//! What `sts` takes for a token's rate limits: `--rate-limit
//! NAME=LIMIT/PERIOD` as the API's `RateLimit` (the server checks the
//! rest: names, ranges, how many).

use super::CliError;
use crate::proto::RateLimit;

/// `burst=20/1s`, `hourly=5000/1h`: a name, a number and a period (a whole
/// number of s, m, h or d).
pub fn parse_rate_limit(text: &str) -> Result<RateLimit, CliError> {
    let usage = || {
        CliError::Usage(format!(
            "invalid --rate-limit '{text}': use NAME=LIMIT/PERIOD, e.g. burst=20/1s or hourly=5000/1h (periods in s, m, h or d)"
        ))
    };
    let (name, rest) = text.trim().split_once('=').ok_or_else(usage)?;
    let (limit, period) = rest.split_once('/').ok_or_else(usage)?;
    let limit: u64 = limit.trim().parse().map_err(|_| usage())?;
    let period = crate::clock::parse_span(period.trim()).ok_or_else(usage)?;
    Ok(RateLimit {
        name: name.trim().to_owned(),
        limit,
        period: Some(prost_types::Duration {
            seconds: i64::try_from(period.as_secs()).map_err(|_| usage())?,
            nanos: 0,
        }),
    })
}

/// Every `--rate-limit` given.
pub fn parse_rate_limits(texts: &[String]) -> Result<Vec<RateLimit>, CliError> {
    texts.iter().map(|text| parse_rate_limit(text)).collect()
}

/// A limit as `describe` and `list` show it: `burst=20/1s`.
pub fn rate_limit_text(limit: &RateLimit) -> String {
    let period = limit
        .period
        .and_then(|p| u64::try_from(p.seconds).ok())
        .map_or_else(
            || "?".to_owned(),
            |secs| crate::clock::span_text(std::time::Duration::from_secs(secs)),
        );
    format!("{}={}/{}", limit.name, limit.limit, period)
}
