//! A token's usage over time: its checks per UTC day ([`Day`]), counted by
//! outcome ([`Outcome`], [`Counts`]), kept for [`USAGE_DAYS`] days.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Days of usage kept; older days are purged.
pub const USAGE_DAYS: u32 = 90;
/// Days a usage request shows unless it asks for another number.
pub const DEFAULT_USAGE_DAYS: u32 = 30;

/// What a check of a token came to: each outcome that names a token
/// (a malformed or unknown secret names none).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Valid,
    RateLimited,
    Expired,
    Disabled,
    SourceNotAllowed,
    AudienceNotAllowed,
    RouteNotAllowed,
    /// Valid, but without a role the check required (forward-auth, ext_authz).
    MissingRole,
}

/// How many outcomes there are.
pub const OUTCOMES: usize = 8;

impl Outcome {
    /// Every outcome, in the order counts keep them.
    pub const ALL: [Outcome; OUTCOMES] = [
        Outcome::Valid,
        Outcome::RateLimited,
        Outcome::Expired,
        Outcome::Disabled,
        Outcome::SourceNotAllowed,
        Outcome::AudienceNotAllowed,
        Outcome::RouteNotAllowed,
        Outcome::MissingRole,
    ];

    pub fn index(self) -> usize {
        self as usize
    }

    /// The outcome's name in the API (`rate_limited`).
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Valid => "valid",
            Outcome::RateLimited => "rate_limited",
            Outcome::Expired => "expired",
            Outcome::Disabled => "disabled",
            Outcome::SourceNotAllowed => "source_not_allowed",
            Outcome::AudienceNotAllowed => "audience_not_allowed",
            Outcome::RouteNotAllowed => "route_not_allowed",
            Outcome::MissingRole => "missing_role",
        }
    }
}

/// A UTC day, as whole days since the Unix epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Day(u32);

const DAY_SECONDS: u64 = 24 * 60 * 60;

impl Day {
    /// The day `at` falls on (the epoch's for a time before it).
    pub fn of(at: SystemTime) -> Day {
        let seconds = at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        Day(u32::try_from(seconds / DAY_SECONDS).unwrap_or(u32::MAX))
    }

    /// The day `days` after the epoch, as stores keep it.
    pub fn from_number(days: u32) -> Day {
        Day(days)
    }

    pub fn number(self) -> u32 {
        self.0
    }

    /// `days` before this one (never before the epoch).
    pub fn before(self, days: u32) -> Day {
        Day(self.0.saturating_sub(days))
    }

    /// The day after this one.
    pub fn next(self) -> Day {
        Day(self.0.saturating_add(1))
    }

    /// Its first instant.
    pub fn start(self) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(u64::from(self.0) * DAY_SECONDS)
    }

    /// `2026-12-06`.
    pub fn date(self) -> String {
        crate::clock::date(i64::from(self.0) * DAY_SECONDS as i64)
    }
}

/// Checks of one token on one day, by outcome ([`Outcome::index`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts(pub [u64; OUTCOMES]);

impl Counts {
    pub fn get(&self, outcome: Outcome) -> u64 {
        self.0[outcome.index()]
    }

    /// Adds `other`'s counts to these (saturating: a count never wraps).
    pub fn add(&mut self, other: &Counts) {
        for (mine, theirs) in self.0.iter_mut().zip(other.0) {
            *mine = mine.saturating_add(theirs);
        }
    }

    pub fn is_empty(&self) -> bool {
        self.0.iter().all(|count| *count == 0)
    }

    /// Every check counted.
    pub fn total(&self) -> u64 {
        self.0
            .iter()
            .fold(0u64, |sum, count| sum.saturating_add(*count))
    }
}

/// A token's checks on one day.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DayUsage {
    pub day: Day,
    pub counts: Counts,
}
