//! Spending a token's rate limits: [`Limiter`] (where the limits' state
//! lives: this process, `local`), [`Quota`] (where every limit stands after
//! a check, and which one refused it), [`Charge`] (what a check spends).
//! The arithmetic, the same for every engine, is `gcra`'s.

mod gcra;
mod local;
mod redis;

use std::{fmt, time::Duration};

use crate::model::{MAX_RATE_LIMITS, RateLimit, RateLimits, TokenId};

pub use gcra::{Debt, NEVER_FITS, Standing, Terms, decide};
pub use local::Local;
pub use redis::{OnStoreError, REDIS_TIMEOUT, Shared, SharedError, Spent};

/// What a check spends from its token's limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Charge {
    /// Nothing, and no look at the limits: a management call's
    /// credential, a reviewer's own.
    Exempt,
    /// `cost` from every limit (0 looks without spending), by a check on
    /// `surface`.
    Spend { cost: u64, surface: Surface },
}

impl Charge {
    /// One check on `surface`.
    pub fn one(surface: Surface) -> Charge {
        Charge::Spend { cost: 1, surface }
    }
}

/// Where a check spent: the label of the counter of checks refused by a
/// rate limit (a fixed set: limit names are the users' own, unbounded).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Surface {
    Validate,
    Status,
    ForwardAuth,
    ExtAuthz,
    TokenReview,
    Introspection,
}

impl Surface {
    pub fn as_str(self) -> &'static str {
        match self {
            Surface::Validate => "validate",
            Surface::Status => "status",
            Surface::ForwardAuth => "forward_auth",
            Surface::ExtAuthz => "ext_authz",
            Surface::TokenReview => "token_review",
            Surface::Introspection => "introspection",
        }
    }
}

/// Where a token's limits stand after a check, and whether it passed.
/// Empty for a token without limits (and a check that spent nothing): a
/// null pointer, so a check without limits moves no more than that.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Quota(Option<Box<Standings>>);

#[derive(Debug, Clone, PartialEq, Eq)]
struct Standings {
    limits: RateLimits,
    standings: [Standing; MAX_RATE_LIMITS],
    refused: Option<Refused>,
}

/// Which limit refused a check first, and when the check would fit them all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Refused {
    index: usize,
    retry_after: Duration,
}

impl Quota {
    /// `limits` as `standings` says they stand; `refused`: the first limit
    /// without room and when the check would fit, or `None`: it passed.
    pub fn new(
        limits: RateLimits,
        standings: [Standing; MAX_RATE_LIMITS],
        refused: Option<(usize, Duration)>,
    ) -> Quota {
        if limits.is_empty() {
            return Quota(None);
        }
        Quota(Some(Box::new(Standings {
            limits,
            standings,
            refused: refused.map(|(index, retry_after)| Refused { index, retry_after }),
        })))
    }

    /// The limits it stands for.
    pub fn limits(&self) -> &RateLimits {
        static NONE: RateLimits = RateLimits::NONE;
        self.0.as_ref().map_or(&NONE, |standings| &standings.limits)
    }

    /// The token has no limits (or the check was exempt).
    pub fn is_empty(&self) -> bool {
        self.0.is_none()
    }

    /// Whether the check passed every limit.
    pub fn allowed(&self) -> bool {
        self.refused().is_none()
    }

    fn refused(&self) -> Option<Refused> {
        self.0.as_ref().and_then(|standings| standings.refused)
    }

    /// Each limit and where it stands, in the token's order.
    pub fn states(&self) -> impl Iterator<Item = (&RateLimit, Standing)> {
        self.0.iter().flat_map(|standings| {
            standings
                .limits
                .as_slice()
                .iter()
                .zip(standings.standings.iter().copied())
        })
    }

    /// The first limit that had no room, when the check was refused.
    pub fn refused_by(&self) -> Option<&RateLimit> {
        let refused = self.refused()?;
        self.limits().as_slice().get(refused.index)
    }

    /// When the refused check would fit every limit.
    pub fn retry_after(&self) -> Option<Duration> {
        self.refused().map(|refused| refused.retry_after)
    }
}

/// What a refusal says: the limit by name and terms, and when to retry.
impl fmt::Display for Quota {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.refused_by(), self.retry_after()) {
            (Some(limit), Some(wait)) => write!(
                f,
                "rate limit {limit} has no room for this check: try again in {} s",
                whole_seconds(wait)
            ),
            _ => f.write_str("within its rate limits"),
        }
    }
}

/// A wait as whole seconds, rounded up and at least 1: what HTTP's
/// `Retry-After` says.
pub fn whole_seconds(wait: Duration) -> u64 {
    (wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1)
}

/// Where the limits' state lives. One engine per server: `Local` keeps it
/// in this process (exact for one replica), `Shared` in Redis (shared by
/// every replica that uses the same one).
pub enum Limiter {
    Local(Local),
    Shared(Box<Shared>),
}

impl Limiter {
    /// `cost` spent from `limits` of token `id` at `now_ms` (milliseconds
    /// since the Unix epoch, by the server's clock), all or nothing.
    pub async fn spend(&self, id: TokenId, limits: &RateLimits, cost: u64, now_ms: u64) -> Spent {
        match self {
            Limiter::Local(local) => Spent::Counted(local.spend(id, limits, cost, now_ms)),
            Limiter::Shared(shared) => shared.spend(id, limits, cost, now_ms).await,
        }
    }

    /// Forgets the state of limits that are whole again at `now_ms` (a
    /// whole limit and no state are the same): the table keeps only what
    /// is in use.
    pub fn sweep(&self, now_ms: u64) {
        match self {
            Limiter::Local(local) => local.sweep(now_ms),
            Limiter::Shared(shared) => shared.sweep(now_ms),
        }
    }

    /// Whether replicas share the limits (a shared store is configured).
    pub fn is_shared(&self) -> bool {
        matches!(self, Limiter::Shared(_))
    }
}

impl Default for Limiter {
    fn default() -> Limiter {
        Limiter::Local(Local::default())
    }
}
