//! What a change does to a token (`Edit`, `Change`), and the lockout rule
//! that no change may leave nobody able to manage tokens.

use std::time::SystemTime;

use super::binding::AllowedSources;
use super::binding::Audiences;
use super::fields::Description;
use super::fields::FieldError;
use super::fields::LabelEdit;
use super::fields::Labels;
use super::fields::Role;
use super::fields::Roles;
use super::fields::TokenName;
use super::owners::Owners;
use super::rate_limit::RateLimits;
use super::route::AllowedRoutes;
use super::stored::{MAX_RETIRED, StoredToken};
use super::token::PreviousSecret;
use super::token::ServiceToken;
use crate::token::TokenHash;

/// What a change does to the last admin token, under the rule: no change
/// may leave no enabled admin token valid at `horizon` (now plus the
/// admin keep margin). `after` is `None` for a delete. Returns what the change would have done
/// (for the refusal) when it takes `before`'s admin access below the
/// margin and makes it shorter than it was; whether another token keeps
/// access through the margin is the store's to check. A change that leaves
/// a token's admin access as long as it was (a rename of an admin that
/// expires soon anyway) is never refused.
pub fn takes_admin_away(
    before: &ServiceToken,
    after: Option<&ServiceToken>,
    admin_role: &Role,
    now: SystemTime,
    horizon: SystemTime,
) -> Option<&'static str> {
    let had = AdminUntil::of(before, admin_role, now)?;
    let has = after.and_then(|after| AdminUntil::of(after, admin_role, now));
    let keeps = match has {
        Some(AdminUntil::Ever) => true,
        Some(AdminUntil::Until(end)) => end > horizon,
        None => false,
    };
    if keeps || has >= Some(had) {
        return None;
    }
    let Some(after) = after else {
        return Some("deleting");
    };
    if after.disabled {
        return Some("disabling");
    }
    if !after.roles.contains(admin_role) {
        return Some("removing the admin role from");
    }
    if !after.can_manage() {
        return Some("binding to audiences or routes");
    }
    Some("letting expire")
}

/// How long a token lets its holder manage tokens, from a moment when it
/// does: ordered, so a change can be told to shorten it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum AdminUntil {
    Until(SystemTime),
    Ever,
}

impl AdminUntil {
    /// `None`: not an admin token at `now`.
    fn of(token: &ServiceToken, admin_role: &Role, now: SystemTime) -> Option<AdminUntil> {
        if !token.is_admin_at(admin_role, now) {
            return None;
        }
        Some(token.expiration.map_or(AdminUntil::Ever, AdminUntil::Until))
    }
}

/// A change to a token's fields (an update): `None` leaves a field alone.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Edit {
    pub name: Option<TokenName>,
    pub roles: Option<Roles>,
    /// `Some(None)` removes the expiration.
    pub expiration: Option<Option<SystemTime>>,
    pub description: Option<Description>,
    pub labels: Option<LabelEdit>,
    pub disabled: Option<bool>,
    pub sources: Option<AllowedSources>,
    pub audiences: Option<Audiences>,
    pub routes: Option<AllowedRoutes>,
    pub rate_limits: Option<RateLimits>,
    /// A new owner (an admin's change only): what a transport gives names
    /// the direct owner alone, and the service completes the chain before
    /// the change is made.
    pub owners: Option<Owners>,
}

/// One field an edit changed, with its old and new values as shown in the
/// audit log (no field holds a secret).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldChange {
    pub field: &'static str,
    pub old: String,
    pub new: String,
}

impl Edit {
    pub fn is_empty(&self) -> bool {
        *self == Edit::default()
    }

    /// `token` with this edit applied at `at`.
    pub fn apply(&self, token: &ServiceToken, at: SystemTime) -> ServiceToken {
        let mut edited = token.clone();
        if let Some(name) = &self.name {
            edited.name = name.clone();
        }
        if let Some(roles) = &self.roles {
            edited.roles = roles.clone();
        }
        if let Some(expiration) = self.expiration {
            edited.expiration = expiration;
        }
        if let Some(description) = &self.description {
            edited.description = description.clone();
        }
        if let Some(labels) = &self.labels {
            edited.labels = labels.apply(&token.labels);
        }
        if let Some(disabled) = self.disabled {
            edited.disabled = disabled;
        }
        if let Some(sources) = &self.sources {
            edited.bindings.sources = sources.clone();
        }
        if let Some(audiences) = &self.audiences {
            edited.bindings.audiences = audiences.clone();
        }
        if let Some(routes) = &self.routes {
            edited.bindings.routes = routes.clone();
        }
        if let Some(rate_limits) = &self.rate_limits {
            edited.rate_limits = rate_limits.clone();
        }
        if let Some(owners) = &self.owners {
            edited.owners = owners.clone();
        }
        edited.updated_at = at;
        edited
    }

    /// The fields that differ between `before` and `after`, in a fixed order.
    pub fn changes(before: &ServiceToken, after: &ServiceToken) -> Vec<FieldChange> {
        let time = |t: Option<SystemTime>| {
            t.map_or_else(|| "never".to_owned(), crate::clock::rfc3339_micros)
        };
        let candidates = [
            ("name", before.name.to_string(), after.name.to_string()),
            ("roles", before.roles.to_string(), after.roles.to_string()),
            (
                "expiration",
                time(before.expiration),
                time(after.expiration),
            ),
            (
                "description",
                before.description.as_str().to_owned(),
                after.description.as_str().to_owned(),
            ),
            (
                "labels",
                before.labels.to_string(),
                after.labels.to_string(),
            ),
            (
                "disabled",
                before.disabled.to_string(),
                after.disabled.to_string(),
            ),
            (
                "allowed_sources",
                before.bindings.sources.to_string(),
                after.bindings.sources.to_string(),
            ),
            (
                "audiences",
                before.bindings.audiences.to_string(),
                after.bindings.audiences.to_string(),
            ),
            (
                "allowed_routes",
                before.bindings.routes.to_string(),
                after.bindings.routes.to_string(),
            ),
            (
                "rate_limits",
                before.rate_limits.to_string(),
                after.rate_limits.to_string(),
            ),
            (
                "owners",
                before.owners.to_string(),
                after.owners.to_string(),
            ),
        ];
        candidates
            .into_iter()
            .filter(|(_, old, new)| old != new)
            .map(|(field, old, new)| FieldChange { field, old, new })
            .collect()
    }
}

/// A change a store applies to one token, under the lockout rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Edit(Edit),
    /// A new secret; the current one becomes the previous secret until
    /// `previous_until` (capped at the token's expiration), or ends now
    /// when that is not later than the change.
    Rotate {
        hash: TokenHash,
        previous_until: SystemTime,
        /// A new expiration with the new secret (a self-rotation's);
        /// `None` leaves it.
        renew: Option<Option<SystemTime>>,
        /// Made only while the token's current secret is this one (a
        /// self-rotation's: of two at once, one wins); `None`: any.
        replacing: Option<TokenHash>,
    },
    /// Nothing changes but the record of an event about the token (a
    /// retired secret presented again): written with the token as it is.
    Mark,
}

impl Change {
    /// Whether `after`, what this change made, is a token the rules allow:
    /// only a label merge can break one (more than [`MAX_LABELS`] once
    /// merged with what the token had). Stores check it under the lock
    /// they apply the change under.
    pub fn check(&self, after: &ServiceToken) -> Result<(), FieldError> {
        match self {
            Change::Edit(Edit {
                labels: Some(LabelEdit::Merge { .. }),
                ..
            }) => Labels::parse(after.labels.iter()).map(|_| ()),
            Change::Edit(_) | Change::Rotate { .. } | Change::Mark => Ok(()),
        }
    }

    /// Whether this change may be made on a disk below its reserve: a
    /// disable only, the one change that takes access away (as a delete
    /// does) and must never wait for space. Everything else may grow the
    /// store and is held to the reserve.
    pub fn may_use_the_reserve(&self) -> bool {
        match self {
            Change::Edit(Edit {
                name: None,
                roles: None,
                expiration: None,
                description: None,
                labels: None,
                disabled: Some(true),
                sources: None,
                audiences: None,
                routes: None,
                rate_limits: None,
                owners: None,
            }) => true,
            Change::Edit(_) | Change::Rotate { .. } | Change::Mark => false,
        }
    }

    /// Whether this change, having made `after` of `before`, changes
    /// nothing a client can see: an edit that sets every field to what it
    /// was. Stores then write nothing (no event, no new `updated_at`). A
    /// rotation always changes the secret.
    pub fn changes_nothing(&self, before: &ServiceToken, after: &ServiceToken) -> bool {
        matches!(self, Change::Edit(_)) && Edit::changes(before, after).is_empty()
    }

    /// `stored` with this change applied at `at`.
    pub fn apply(&self, stored: &StoredToken, at: SystemTime) -> StoredToken {
        match self {
            Change::Edit(edit) => StoredToken {
                token: edit.apply(&stored.token, at),
                hash: stored.hash,
                previous_hash: stored.previous_hash,
                retired: stored.retired.clone(),
            },
            Change::Mark => stored.clone(),
            Change::Rotate {
                hash,
                previous_until,
                renew,
                replacing: _,
            } => {
                let mut token = stored.token.clone();
                token.updated_at = at;
                if let Some(expiration) = renew {
                    token.expiration = *expiration;
                }
                let until = match token.expiration {
                    Some(expiration) => (*previous_until).min(expiration),
                    None => *previous_until,
                };
                let (previous_hash, previous_secret) = if until > at {
                    let previous = PreviousSecret {
                        expiration: until,
                        last_used_at: None,
                    };
                    (Some(stored.hash), Some(previous))
                } else {
                    (None, None)
                };
                token.previous_secret = previous_secret;
                // What this rotation ends for good: the previous secret it
                // drops, and the current one when it gets no grace.
                let ended = stored
                    .previous_hash
                    .into_iter()
                    .chain(previous_hash.is_none().then_some(stored.hash));
                let mut retired: Vec<TokenHash> = ended.collect();
                retired.reverse();
                for kept in &stored.retired {
                    if !retired.contains(kept) {
                        retired.push(*kept);
                    }
                }
                retired.truncate(MAX_RETIRED);
                StoredToken {
                    token,
                    hash: *hash,
                    previous_hash,
                    retired,
                }
            }
        }
    }
}
