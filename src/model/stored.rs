//! A token as a store holds it (`StoredToken`: the token and the hashes of
//! its secrets), read back from any store or export by one `from_parts`.

use std::{
    collections::BTreeMap,
    net::IpAddr,
    time::{Duration, SystemTime},
};

use super::binding::AllowedSources;
use super::binding::Audiences;
use super::binding::Bindings;
use super::owners::Owners;
use super::rate_limit::{RateLimit, RateLimits};
use super::recent::RecentSources;
use super::route::AllowedRoutes;
use super::route::RouteRule;

use super::fields::Description;
use super::fields::FieldError;
use super::fields::Labels;
use super::fields::MAX_NAME_CHARS;
use super::fields::Roles;
use super::fields::TokenId;
use super::fields::TokenName;
use super::fields::check_text;
use super::token::MatchedSecret;
use super::token::PreviousSecret;
use super::token::ServiceToken;
use crate::token::TokenHash;

/// Longest `created_by` read back (an id, a name, punctuation).
const MAX_CREATED_BY_CHARS: usize = MAX_NAME_CHARS + 24;

/// How many retired secrets a token keeps the hashes of: what reuse
/// detection recognizes.
pub const MAX_RETIRED: usize = 5;

/// A token as a store holds it: its description and the hash of its secret
/// (and of the secret a rotation replaced, while that one is kept).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredToken {
    pub token: ServiceToken,
    pub hash: TokenHash,
    /// Set exactly when `token.previous_secret` is.
    pub previous_hash: Option<TokenHash>,
    /// The hashes of the last [`MAX_RETIRED`] secrets rotations ended
    /// (newest first): presented again, they are a reuse, detected.
    pub retired: Vec<TokenHash>,
}

/// A stored token's fields as a backend or an export reads them back, not
/// yet checked. Times come already converted: each format has its own.
#[derive(Debug, Clone, Copy)]
pub struct StoredParts<'a> {
    pub id: u64,
    pub hash: &'a [u8],
    pub name: &'a str,
    pub roles: &'a [String],
    pub expiration: Option<SystemTime>,
    pub created_at: SystemTime,
    pub description: &'a str,
    pub labels: &'a BTreeMap<String, String>,
    pub disabled: bool,
    pub last_used_at: Option<SystemTime>,
    pub created_by: &'a str,
    /// `None` in records written before updates existed: `created_at`.
    pub updated_at: Option<SystemTime>,
    pub previous_hash: Option<&'a [u8]>,
    pub previous_expiration: Option<SystemTime>,
    pub previous_last_used_at: Option<SystemTime>,
    /// Empty in records written before bindings existed, as for every
    /// unbound token.
    pub allowed_sources: &'a [String],
    pub audiences: &'a [String],
    pub allowed_routes: &'a [RouteParts],
    pub recent_sources: &'a [SeenSource],
    pub sources_announced_at: Option<SystemTime>,
    /// Empty in records written before rate limits existed.
    pub rate_limits: &'a [LimitParts],
    /// Ids, the direct owner first; empty in records written before
    /// delegation existed, as for every admin's token.
    pub owners: &'a [u64],
    /// `None` in records written before delegation existed, as for a
    /// token made without an expiration (a renewal then reads the token's
    /// expiration minus its creation).
    pub lifetime: Option<Duration>,
    /// Retired secrets' hashes; none in records written before.
    pub retired: &'a [Vec<u8>],
}

/// A rate limit as stores and exports keep it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitParts {
    pub name: String,
    pub limit: u64,
    pub period_secs: u64,
}

impl LimitParts {
    /// Every limit of `limits`, to be kept.
    pub fn of(limits: &RateLimits) -> Vec<LimitParts> {
        limits
            .as_slice()
            .iter()
            .map(|limit| LimitParts {
                name: limit.name().to_owned(),
                limit: limit.limit(),
                period_secs: limit.period_secs(),
            })
            .collect()
    }

    /// The limits `parts` keep, each re-checked.
    pub fn parse(field: &str, parts: &[LimitParts]) -> Result<RateLimits, FieldError> {
        let limits = parts
            .iter()
            .map(|part| {
                RateLimit::new(
                    field,
                    &part.name,
                    part.limit,
                    std::time::Duration::from_secs(part.period_secs),
                )
            })
            .collect::<Result<Vec<_>, _>>()?;
        RateLimits::new(field, limits)
    }
}

/// A route rule as stores and exports keep it: what it was made of.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteParts {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
    pub path: String,
}

impl RouteParts {
    /// Every rule of `routes`, to be kept.
    pub fn of(routes: &AllowedRoutes) -> Vec<RouteParts> {
        routes
            .rules()
            .iter()
            .map(|rule| RouteParts {
                methods: rule.methods().to_vec(),
                path: rule.pattern().to_owned(),
            })
            .collect()
    }

    /// The rules `parts` keep, each re-parsed.
    pub fn parse(field: &str, parts: &[RouteParts]) -> Result<AllowedRoutes, FieldError> {
        let rules = parts
            .iter()
            .map(|part| RouteRule::parse(field, &part.methods, &part.path))
            .collect::<Result<Vec<_>, _>>()?;
        AllowedRoutes::new(field, rules)
    }
}

/// A recent source as stores keep it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeenSource {
    pub address: String,
    pub at: SystemTime,
}

impl SeenSource {
    /// Every source `recent` holds, to be kept.
    pub fn of(recent: &RecentSources) -> Vec<SeenSource> {
        recent
            .iter()
            .map(|(address, at)| SeenSource {
                address: address.to_string(),
                at,
            })
            .collect()
    }

    /// The sources `seen` keep, with when one was last announced.
    pub fn parse(
        seen: &[SeenSource],
        announced_at: Option<SystemTime>,
    ) -> Result<RecentSources, FieldError> {
        let seen = seen
            .iter()
            .map(|source| {
                let address: IpAddr = source
                    .address
                    .parse()
                    .map_err(|_| FieldError::new("recent_sources", "holds a non-address"))?;
                Ok((address, source.at))
            })
            .collect::<Result<Vec<_>, FieldError>>()?;
        Ok(RecentSources::read_back(seen, announced_at))
    }
}

impl<'a> StoredParts<'a> {
    /// The fields of a record written before the token lifecycle: no
    /// description, labels, last use, creator, update or previous secret.
    /// For the unit tests of that case; stores read old records through
    /// their own decoders, which leave those fields at their defaults.
    #[cfg(test)]
    pub fn first_release(
        id: u64,
        hash: &'a [u8],
        name: &'a str,
        roles: &'a [String],
        expiration: Option<SystemTime>,
        created_at: SystemTime,
    ) -> StoredParts<'a> {
        static NO_LABELS: BTreeMap<String, String> = BTreeMap::new();
        StoredParts {
            id,
            hash,
            name,
            roles,
            expiration,
            created_at,
            description: "",
            labels: &NO_LABELS,
            disabled: false,
            last_used_at: None,
            created_by: "",
            updated_at: None,
            previous_hash: None,
            previous_expiration: None,
            previous_last_used_at: None,
            allowed_sources: &[],
            audiences: &[],
            allowed_routes: &[],
            recent_sources: &[],
            sources_announced_at: None,
            rate_limits: &[],
            owners: &[],
            lifetime: None,
            retired: &[],
        }
    }
}

fn parse_hash(field: &str, bytes: &[u8]) -> Result<TokenHash, FieldError> {
    TokenHash::from_bytes(bytes)
        .ok_or_else(|| FieldError::new(field, "is not a SHA-256 hash (32 bytes)"))
}

impl StoredToken {
    /// The one way back from storage: every field re-parsed, so a damaged
    /// record is refused (and reported) alike by every backend and by import.
    pub fn from_parts(parts: StoredParts<'_>) -> Result<StoredToken, FieldError> {
        let hash = parse_hash("token_hash", parts.hash)?;
        let (previous_hash, previous_secret) =
            match (parts.previous_hash, parts.previous_expiration) {
                (None, None) => (None, None),
                (Some(bytes), Some(expiration)) => {
                    let previous = PreviousSecret {
                        expiration,
                        last_used_at: parts.previous_last_used_at,
                    };
                    (Some(parse_hash("previous_hash", bytes)?), Some(previous))
                }
                _ => {
                    return Err(FieldError::new(
                        "previous_hash",
                        "and previous_expiration must be set together",
                    ));
                }
            };
        if parts.retired.len() > MAX_RETIRED {
            return Err(FieldError::new(
                "retired",
                format!("holds more than {MAX_RETIRED} hashes"),
            ));
        }
        let retired = parts
            .retired
            .iter()
            .map(|bytes| parse_hash("retired", bytes))
            .collect::<Result<Vec<_>, _>>()?;
        check_text(parts.created_by, MAX_CREATED_BY_CHARS)
            .map_err(|problem| FieldError::new("created_by", problem))?;
        Ok(StoredToken {
            token: ServiceToken {
                id: TokenId::parse(parts.id)?,
                name: TokenName::read_back(parts.name)?,
                roles: Roles::parse(parts.roles)?,
                expiration: parts.expiration,
                created_at: parts.created_at,
                description: Description::parse(parts.description)?,
                labels: Labels::parse(parts.labels)?,
                disabled: parts.disabled,
                last_used_at: parts.last_used_at,
                created_by: parts.created_by.to_owned(),
                updated_at: parts.updated_at.unwrap_or(parts.created_at),
                previous_secret,
                bindings: Bindings {
                    sources: AllowedSources::parse("allowed_sources", parts.allowed_sources)?,
                    audiences: Audiences::parse("audiences", parts.audiences)?,
                    routes: RouteParts::parse("allowed_routes", parts.allowed_routes)?,
                },
                recent_sources: SeenSource::parse(
                    parts.recent_sources,
                    parts.sources_announced_at,
                )?,
                rate_limits: LimitParts::parse("rate_limits", parts.rate_limits)?,
                owners: Owners::parse("owners", parts.owners)?,
                lifetime: parts.lifetime.filter(|l| !l.is_zero()),
            },
            hash,
            previous_hash,
            retired,
        })
    }

    /// Whether `hash` is one of this token's retired secrets (compared in
    /// constant time, each).
    pub fn is_retired(&self, hash: &TokenHash) -> bool {
        self.retired
            .iter()
            .fold(false, |found, retired| found | retired.ct_eq(hash))
    }

    /// Which of this token's secrets hashes to `hash` (compared in constant
    /// time), if either.
    pub fn secret_for(&self, hash: &TokenHash) -> Option<MatchedSecret> {
        let current = self.hash.ct_eq(hash);
        let previous = self.previous_hash.is_some_and(|p| p.ct_eq(hash));
        if current {
            Some(MatchedSecret::Current)
        } else if previous {
            Some(MatchedSecret::Previous)
        } else {
            None
        }
    }

    /// Which secret `hash` is, if it still works at `now`: the current
    /// one, or the previous one within its grace period. A rotated-out
    /// secret past its grace is as gone as a deleted token's.
    pub fn live_secret_at(&self, hash: &TokenHash, now: SystemTime) -> Option<MatchedSecret> {
        match self.secret_for(hash)? {
            MatchedSecret::Current => Some(MatchedSecret::Current),
            MatchedSecret::Previous => self
                .token
                .previous_secret
                .is_some_and(|previous| now < previous.expiration)
                .then_some(MatchedSecret::Previous),
        }
    }

    /// `self`, if one of its secrets hashes to `hash`. A lookup by hash that
    /// lands on another token's record is corruption, never a match: the
    /// store reports `None` as such.
    pub fn verified(self, hash: &TokenHash) -> Option<StoredToken> {
        (self.secret_for(hash).is_some() || self.is_retired(hash)).then_some(self)
    }

    /// Every hash that finds this token: the current one and the previous.
    pub fn hashes(&self) -> impl Iterator<Item = &TokenHash> {
        std::iter::once(&self.hash).chain(self.previous_hash.as_ref())
    }
}

#[cfg(test)]
impl StoredToken {
    /// A fresh token and its record, for unit tests.
    pub(crate) fn sample() -> (crate::token::Secret, StoredToken) {
        let token = crate::token::Secret::generate();
        let new = super::token::NewToken::parse("t", &["r"], None).unwrap();
        let stored = StoredToken {
            token: ServiceToken::new(TokenId::random(), &new, SystemTime::now()),
            hash: token.hash(),
            previous_hash: None,
            retired: Vec::new(),
        };
        (token, stored)
    }
}
