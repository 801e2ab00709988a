//! The token as the service sees it (`ServiceToken`, minus its secret),
//! the request for a new one (`NewToken`), its etag, and which of its
//! secrets matched.

use std::{
    fmt,
    time::{Duration, SystemTime},
};

use super::binding::Bindings;
use super::fields::Description;
use super::fields::FieldError;
use super::fields::Labels;
use super::fields::Role;
use super::fields::Roles;
use super::fields::TokenId;
use super::fields::TokenName;
use super::owners::Owners;
use super::rate_limit::RateLimits;
use super::recent::RecentSources;

/// What a token is, minus its secret: what `List` shows and `Validate` answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceToken {
    pub id: TokenId,
    pub name: TokenName,
    pub roles: Roles,
    /// `None` never expires.
    pub expiration: Option<SystemTime>,
    pub created_at: SystemTime,
    pub description: Description,
    pub labels: Labels,
    pub disabled: bool,
    /// The last recorded use of either secret; `None`: none since tracking began.
    pub last_used_at: Option<SystemTime>,
    /// `"<id> (<name>)"` of the creating admin token, `"bootstrap"`, or empty
    /// for tokens made before it was recorded.
    pub created_by: String,
    /// The last change by an update or a rotation; `created_at` until then.
    pub updated_at: SystemTime,
    /// A secret rotated out and still (or lately) in its grace period.
    pub previous_secret: Option<PreviousSecret>,
    /// Where it may be used from, for what and on which routes.
    pub bindings: Bindings,
    /// Where it was last used from; recorded with the last use.
    pub recent_sources: RecentSources,
    /// How often it may be checked.
    pub rate_limits: RateLimits,
    /// The managers above it, its direct owner first; none for an admin's.
    pub owners: Owners,
    /// How long a self-rotation renews it for: its expiration minus its
    /// creation when it was made (`None`: made without an expiration, or
    /// before lifetimes were kept).
    pub lifetime: Option<Duration>,
}

/// A checksum of what a token's managers set (AIP-154, an HTTP entity
/// tag): a client sends it back with a change to make the change only if
/// nobody changed the token since it read it. Strong, quoted on the wire
/// (`"<32 hex digits>"`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Etag([u8; ETAG_HEX / 2]);

/// Hex digits in an etag.
const ETAG_HEX: usize = 32;

impl Etag {
    /// The etag of `token` as it stands. Uses are left out (a busy token
    /// would otherwise never let anyone change it), and so is the previous
    /// secret (a rotation moves `updated_at`; its grace ending is time
    /// passing, not a change).
    pub fn of(token: &ServiceToken) -> Etag {
        use sha2::{Digest, Sha256};
        let ServiceToken {
            id,
            name,
            roles,
            expiration,
            created_at,
            description,
            labels,
            disabled,
            last_used_at: _,
            created_by,
            updated_at,
            previous_secret: _,
            bindings:
                Bindings {
                    sources,
                    audiences,
                    routes,
                },
            recent_sources: _,
            rate_limits,
            owners,
            lifetime: _,
        } = token;
        let mut hash = Sha256::new();
        // Every text length-prefixed, every option tagged: no two tokens
        // frame to the same bytes.
        let mut bytes = |t: &[u8]| {
            hash.update((t.len() as u64).to_be_bytes());
            hash.update(t);
        };
        bytes(name.as_str().as_bytes());
        bytes(description.as_str().as_bytes());
        bytes(created_by.as_bytes());
        for role in roles.iter() {
            bytes(role.as_str().as_bytes());
        }
        bytes(b"");
        for (key, value) in labels.iter() {
            bytes(key.as_bytes());
            bytes(value.as_bytes());
        }
        // Only a bound token's etag covers its bindings, so an unbound
        // token's etag is the one the previous release gave it (a client
        // holding one, or a replica not yet upgraded, still agrees). Each
        // list ends in an empty text, which no item is.
        let bound = !(sources.is_empty() && audiences.is_empty() && routes.is_empty());
        if bound {
            bytes(b"bindings");
            for network in sources.networks() {
                // The family, the address and the prefix.
                let (family, octets, prefix) = match network {
                    ipnet::IpNet::V4(v4) => {
                        (4, v4.addr().to_ipv6_mapped().octets(), v4.prefix_len())
                    }
                    ipnet::IpNet::V6(v6) => (6, v6.addr().octets(), v6.prefix_len()),
                };
                let mut key = [0u8; 18];
                key[0] = family;
                key[1..17].copy_from_slice(&octets);
                key[17] = prefix;
                bytes(&key);
            }
            bytes(b"");
            for audience in audiences.as_slice() {
                bytes(audience.as_bytes());
            }
            bytes(b"");
            for rule in routes.rules() {
                for method in rule.methods() {
                    bytes(method.as_bytes());
                }
                bytes(b"");
                bytes(rule.pattern().as_bytes());
            }
            bytes(b"");
        }
        // Likewise only a limited token's covers its limits.
        if !rate_limits.is_empty() {
            bytes(b"rate_limits");
            for limit in rate_limits.as_slice() {
                bytes(limit.name().as_bytes());
                bytes(&limit.limit().to_be_bytes());
                bytes(&limit.period_secs().to_be_bytes());
            }
            bytes(b"");
        }
        // Likewise only an owned token's covers its owners (an admin's
        // reassignment is a change a manager's etag must see).
        if !owners.is_empty() {
            bytes(b"owners");
            for owner in owners.ids() {
                bytes(&owner.get().to_be_bytes());
            }
            bytes(b"");
        }
        let micros = |t: &SystemTime| crate::clock::epoch_micros(*t);
        hash.update(id.get().to_be_bytes());
        hash.update([u8::from(*disabled), u8::from(expiration.is_some())]);
        hash.update(expiration.as_ref().map_or(0, micros).to_be_bytes());
        hash.update(micros(created_at).to_be_bytes());
        hash.update(micros(updated_at).to_be_bytes());
        let digest = hash.finalize();
        let mut etag = [0; ETAG_HEX / 2];
        etag.copy_from_slice(&digest[..ETAG_HEX / 2]);
        Etag(etag)
    }

    /// An etag as a client sends it back: quoted as served, or without the
    /// quotes (a shell eats them). A weak tag (`W/"…"`) never matches a
    /// strong one, so it is refused rather than left to fail later.
    pub fn parse(field: &str, text: &str) -> Result<Etag, FieldError> {
        let bad = || {
            FieldError::new(
                field,
                format!("must be an etag as the server gave it: {ETAG_HEX} hex digits in quotes"),
            )
        };
        let text = text.trim();
        let inner = text
            .strip_prefix('"')
            .and_then(|t| t.strip_suffix('"'))
            .unwrap_or(text);
        let mut etag = [0; ETAG_HEX / 2];
        hex::decode_to_slice(inner, &mut etag).map_err(|_| bad())?;
        Ok(Etag(etag))
    }

    /// Whether `token` is still as this etag saw it.
    pub fn matches(&self, token: &ServiceToken) -> bool {
        *self == Etag::of(token)
    }
}

impl fmt::Display for Etag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "\"{}\"", hex::encode(self.0))
    }
}

/// The secret a rotation replaced, while it is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PreviousSecret {
    /// It works until then (never past the token's own expiration).
    pub expiration: SystemTime,
    pub last_used_at: Option<SystemTime>,
}

/// Which of a token's secrets was presented.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MatchedSecret {
    Current,
    /// The one a rotation replaced, in its grace period.
    Previous,
}

impl ServiceToken {
    /// The token `new` becomes once stored under `id`.
    pub fn new(id: TokenId, new: &NewToken, created_at: SystemTime) -> ServiceToken {
        ServiceToken {
            id,
            name: new.name.clone(),
            roles: new.roles.clone(),
            expiration: new.expiration,
            created_at,
            description: new.description.clone(),
            labels: new.labels.clone(),
            disabled: false,
            last_used_at: None,
            created_by: new.created_by.clone(),
            updated_at: created_at,
            previous_secret: None,
            bindings: new.bindings.clone(),
            recent_sources: RecentSources::default(),
            rate_limits: new.rate_limits.clone().unwrap_or_default(),
            owners: new.owners.clone(),
            lifetime: new
                .expiration
                .and_then(|expiration| expiration.duration_since(created_at).ok())
                .filter(|lifetime| !lifetime.is_zero()),
        }
    }

    /// Expired from the expiration instant on.
    pub fn is_expired_at(&self, now: SystemTime) -> bool {
        self.expiration.is_some_and(|expiration| now >= expiration)
    }

    /// Whether this token lets its holder manage tokens at `now`. A token
    /// bound to audiences or routes cannot: management names neither (a
    /// source-bound one can, from its sources).
    pub fn is_admin_at(&self, admin_role: &Role, now: SystemTime) -> bool {
        !self.disabled
            && self.roles.contains(admin_role)
            && !self.is_expired_at(now)
            && self.can_manage()
    }

    /// Whether its bindings leave management open to it.
    pub fn can_manage(&self) -> bool {
        self.bindings.audiences.is_empty() && self.bindings.routes.is_empty()
    }

    /// As shown at `now`: a previous secret whose grace period is over is
    /// no longer mentioned.
    pub fn seen_at(mut self, now: SystemTime) -> ServiceToken {
        if self.previous_secret.is_some_and(|p| now >= p.expiration) {
            self.previous_secret = None;
        }
        self
    }
}

/// A valid request for a new token. Whether `expiration` lies in the future
/// depends on the clock, so the service checks that.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewToken {
    pub name: TokenName,
    pub roles: Roles,
    pub expiration: Option<SystemTime>,
    pub description: Description,
    pub labels: Labels,
    /// Set by the service, which knows the caller.
    pub created_by: String,
    pub bindings: Bindings,
    /// `None`: the server's default limits (`ServiceConfig`), which the
    /// service puts here before the token is made.
    pub rate_limits: Option<RateLimits>,
    /// Set by the service: the chain of the manager making it, with the
    /// manager first; none when an admin makes it.
    pub owners: Owners,
}

impl NewToken {
    /// What every transport (and `bootstrap`) makes of a request's fields.
    /// Times come already parsed: each transport has its own time format.
    pub fn parse<S: AsRef<str>>(
        name: &str,
        roles: &[S],
        expiration: Option<SystemTime>,
    ) -> Result<NewToken, FieldError> {
        Ok(NewToken {
            name: TokenName::parse(name)?,
            roles: Roles::parse(roles)?,
            expiration,
            description: Description::default(),
            labels: Labels::default(),
            created_by: String::new(),
            bindings: Bindings::default(),
            rate_limits: None,
            owners: Owners::NONE,
        })
    }

    /// With a description and labels (the optional fields of a create).
    pub fn described(mut self, description: Description, labels: Labels) -> NewToken {
        self.description = description;
        self.labels = labels;
        self
    }

    /// Bound as `bindings` says.
    pub fn bound(mut self, bindings: Bindings) -> NewToken {
        self.bindings = bindings;
        self
    }

    /// Limited as `limits` says (`None`: the server's default).
    pub fn limited(mut self, limits: Option<RateLimits>) -> NewToken {
        self.rate_limits = limits;
        self
    }
}

impl NewToken {
    /// The first admin token: it always carries `admin_role`, whatever
    /// `extra_roles` says (that is the whole point of it), and never expires.
    pub fn bootstrap<S: AsRef<str>>(
        name: &str,
        admin_role: &Role,
        extra_roles: &[S],
    ) -> Result<NewToken, FieldError> {
        // The extra roles are checked as given, so an error names the
        // position the operator typed.
        if !extra_roles.is_empty() {
            Roles::parse(extra_roles)?;
        }
        let roles: Vec<&str> = std::iter::once(admin_role.as_str())
            .chain(extra_roles.iter().map(AsRef::as_ref))
            .collect();
        NewToken::parse(name, &roles, None)
    }
}
