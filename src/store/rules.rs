//! The rules every store keeps alike, written once beside the traits: how a
//! new token's id is drawn, when a lookup by hash is a match, the lockout
//! rule, the etag check, when an expiry step is due, what a scan does
//! with a record it cannot read, and when a use announces a new source.

use std::{net::IpAddr, time::SystemTime};

use crate::{
    events::Expiry,
    model::{Change, Etag, RecentSources, Role, ServiceToken, StoredToken, TokenId},
    token::TokenHash,
};

use super::{Announce, Outcome, StoreError, with_causes};

/// Attempts at drawing an id that is not taken, in every store. With 2^53
/// ids a second attempt is already vanishingly rare.
const ID_ATTEMPTS: usize = 8;

/// The ids a new token tries in turn, by every store; when each is taken,
/// the insert fails with [`StoreError::IdExhausted`].
pub(crate) fn fresh_ids() -> impl Iterator<Item = TokenId> {
    (0..ID_ATTEMPTS).map(|_| TokenId::random())
}

/// A token a store found by `hash`, checked to hold it: an index that
/// points at another token is a store fault, never a match.
pub(crate) fn found_by(
    stored: StoredToken,
    hash: &TokenHash,
) -> Result<Option<StoredToken>, StoreError> {
    let id = stored.token.id;
    stored
        .verified(hash)
        .map(Some)
        .ok_or_else(|| StoreError::misindexed(id))
}

/// The rule every change and delete is held to: some token must keep the
/// admin role, enabled and unexpired, for at least `margin` from `now` (see
/// [`crate::model::takes_admin_away`]). A store checks it atomically with the
/// change, so two admins cannot remove each other's access at once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeepAdmin {
    pub role: Role,
    pub now: SystemTime,
    /// How long past `now` another admin token must stay valid to let this
    /// one go: an admin about to expire keeps nobody in.
    pub margin: std::time::Duration,
    /// The rule does not apply: only the revocation of a leaked token,
    /// which must go even when it is the last admin token (whoever holds
    /// it can manage every token; a new admin token is one `bootstrap`
    /// away).
    pub waived: bool,
}

impl KeepAdmin {
    /// The moment another admin token must still be valid at.
    pub fn horizon(&self) -> SystemTime {
        self.now
            .checked_add(self.margin)
            .unwrap_or_else(crate::clock::latest)
    }

    /// What changing `before` into `after` (`None`: deleting it) would do
    /// to admin access that the rule must look into (whether another token
    /// keeps it is the store's to check, under its lock); `None` when the
    /// rule is waived or the change takes no admin access away.
    pub fn at_stake(
        &self,
        before: &ServiceToken,
        after: Option<&ServiceToken>,
    ) -> Option<&'static str> {
        if self.waived {
            return None;
        }
        crate::model::takes_admin_away(before, after, &self.role, self.now, self.horizon())
    }
}

/// The refusal of a change made with `expected` when `token` is no longer
/// as that etag saw it; `None` when there is no etag or it matches. Stores
/// call it under the lock their change is made under.
pub(crate) fn stale<T>(expected: Option<&Etag>, token: &ServiceToken) -> Option<Outcome<T>> {
    expected
        .filter(|etag| !etag.matches(token))
        .map(|_| Outcome::Stale(Etag::of(token)))
}

/// What `change` makes of `before` at `keep.now`, up to the lockout rule
/// (which each store checks its own way, under its lock): the token to
/// write, or the answer without a write: stale (the caller's etag is not
/// the token's), invalid (a label merge past the limit), or done with
/// nothing to change. Stores call it under the lock the change is made
/// under.
pub(crate) fn planned(
    change: &Change,
    before: &StoredToken,
    keep: &KeepAdmin,
    expected: Option<&Etag>,
) -> Planned {
    if let Some(stale) = stale(expected, &before.token) {
        return Planned::Answer(stale);
    }
    if let Change::Rotate {
        replacing: Some(current),
        ..
    } = change
        && !before.hash.ct_eq(current)
    {
        return Planned::Answer(Outcome::Replaced);
    }
    let after = change.apply(before, keep.now);
    if let Err(invalid) = change.check(&after.token) {
        return Planned::Answer(Outcome::Invalid(invalid));
    }
    if change.changes_nothing(&before.token, &after.token) {
        return Planned::Answer(Outcome::Done((before.token.clone(), before.token.clone())));
    }
    Planned::Write(after)
}

/// What [`planned`] found: a value that lives for one change, on the
/// stack, so its size is not worth a box.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Planned {
    /// The token to write, once the lockout rule allows it.
    Write(StoredToken),
    /// The answer, with nothing written.
    Answer(Outcome<(ServiceToken, ServiceToken)>),
}

/// The expiry step to announce for `token` at `now`, with the expiration it
/// is for: the step it has reached, while it is enabled and has an
/// expiration, unless `announced` (the expiration and step last announced
/// for it, read only when a step is reached) already covers it. Announcing
/// a later expiration starts the steps over.
pub(crate) fn expiry_due<E>(
    token: &ServiceToken,
    now: SystemTime,
    announced: impl FnOnce() -> Result<Option<(SystemTime, Expiry)>, E>,
) -> Result<Option<(SystemTime, Expiry)>, E> {
    let Some(expiration) = token.expiration.filter(|_| !token.disabled) else {
        return Ok(None);
    };
    let Some(step) = Expiry::at(expiration, now) else {
        return Ok(None);
    };
    let done = announced()?
        .filter(|(for_expiration, _)| *for_expiration == expiration)
        .map(|(_, done)| done);
    Ok(done
        .is_none_or(|done| done < step)
        .then_some((expiration, step)))
}

/// A token a scan read, or `None` when its record (`record`: its key or
/// id) could not be decoded: one damaged record must not hide every other
/// token, nor fail the scan. Each skip is logged: scans are an admin's list
/// or the server's own upkeep (once a minute), so the lines stay few, and a
/// damaged record is for an operator to see.
pub(crate) fn readable(
    decoded: Result<StoredToken, StoreError>,
    record: impl std::fmt::Display,
) -> Option<StoredToken> {
    match decoded {
        Ok(stored) => Some(stored),
        Err(e) => {
            tracing::error!(error = %with_causes(&e), %record, "skipping a corrupt token record");
            None
        }
    }
}

/// The source a batch's use of a token announces, if any: the most recent
/// of `seen` outside `before` (the token's recent sources as the store
/// holds them), when the token had recent sources at all (its first ones
/// are its baseline, not news) and its last announcement, by any replica,
/// is at least `announce.every` old. At most one per token per window, so
/// a token roaming a fleet cannot flood the receivers.
pub fn new_source(
    before: &RecentSources,
    seen: &RecentSources,
    announce: &Announce,
) -> Option<IpAddr> {
    if before.is_empty() {
        return None;
    }
    let quiet = before
        .announced_at()
        .is_none_or(|last| last + announce.every <= announce.at);
    if !quiet {
        return None;
    }
    seen.iter()
        .map(|(address, _)| address)
        .find(|address| !before.iter().any(|(known, _)| known == *address))
}
