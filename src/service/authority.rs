//! What a management call is allowed (`Authority`: an admin, or a manager
//! within its own tokens), and how a manager's call is held to the
//! delegation rules on exactly the token they judged.

use std::{future::Future, time::SystemTime};

use crate::{
    error::Error,
    model::{Etag, ListFilter, Owners, Role, ServiceToken, StoredToken, TokenId},
};

use super::TokenService;
use super::delegation::{Act, CallerKind, Refusal, Rules, judge};

/// How often a manager's change is tried again when the token changed
/// between the read its rules were judged on and the write.
const JUDGED_ATTEMPTS: usize = 3;

/// Proof that the caller may manage tokens, and how far: only
/// [`TokenService::authorize_manager`] makes one, and every management call takes
/// one, so no front end can forget the check. An admin manages every
/// token; a manager only its own (see [`super::delegation::judge`]).
#[derive(Debug, Clone)]
pub struct Authority {
    pub(super) caller: ServiceToken,
    pub(super) kind: CallerKind,
    /// A manager's owners that still exist, read when it was authorized:
    /// nothing it makes outlives them.
    pub(super) above: Vec<ServiceToken>,
}

impl Authority {
    pub fn token(&self) -> &ServiceToken {
        &self.caller
    }

    /// `admin` or `manager`, as metrics and the audit log name it.
    pub fn kind(&self) -> &'static str {
        self.kind.as_str()
    }

    pub(super) fn is_admin(&self) -> bool {
        self.kind == CallerKind::Admin
    }

    /// The earliest expiration of the manager and the owners above it:
    /// when nothing else is asked for, what a token it makes gets.
    pub(super) fn ceiling(&self) -> Option<SystemTime> {
        std::iter::once(&self.caller)
            .chain(&self.above)
            .filter_map(|token| token.expiration)
            .min()
    }
}

impl TokenService {
    pub(super) fn rules(&self) -> Rules<'_> {
        Rules {
            admin_role: &self.config.admin_role,
            manager_role: &self.config.manager_role,
            may_delegate: self.config.managers_may_delegate,
        }
    }

    /// Whether `authority` may do `act`, as an error to answer with: a
    /// token it may not reach is one that does not exist (`id`).
    pub(super) fn judge(
        &self,
        authority: &Authority,
        id: TokenId,
        act: Act<'_>,
    ) -> Result<(), Error> {
        judge(&self.rules(), &authority.caller, &authority.above, act).map_err(|refusal| {
            match refusal {
                Refusal::NotYours => Error::NotFound(id),
                Refusal::Denied(why) => Error::Delegation(why),
            }
        })
    }

    /// Token `id` as `authority` may see it: any for an admin, one of its
    /// own for a manager.
    pub(super) async fn reachable(
        &self,
        authority: &Authority,
        id: TokenId,
    ) -> Result<StoredToken, Error> {
        let stored = self.store.get(id).await?.ok_or(Error::NotFound(id))?;
        if !authority.is_admin() {
            self.judge(authority, id, Act::Reach(&stored.token))?;
        }
        Ok(stored)
    }

    /// `filter`, narrowed for a manager to the tokens it owns whose roles
    /// it could grant now.
    pub(super) fn scoped(&self, authority: &Authority, filter: &ListFilter) -> ListFilter {
        let mut filter = filter.clone();
        if !authority.is_admin() {
            let rules = self.rules();
            filter.owners.push(authority.caller.id);
            let grantable: Vec<Role> = authority
                .caller
                .roles
                .iter()
                .filter(|role| {
                    *role != rules.admin_role && (*role != rules.manager_role || rules.may_delegate)
                })
                .cloned()
                .collect();
            filter.roles_within = Some(grantable);
        }
        filter
    }

    /// Runs `write` (a change or a delete of token `id`) with the etag to
    /// make it under. An admin's runs once, with the caller's own etag.
    /// A manager's first reads the token and has `check` judge it, then
    /// writes under the etag of what was judged, so the write lands only
    /// on that: if someone changed the token in between (an admin gave it
    /// to another manager, say), it is read and judged again, up to
    /// [`JUDGED_ATTEMPTS`] times, unless the caller sent an etag of its
    /// own, which is then answered as stale.
    pub(super) async fn judged<T, Fut>(
        &self,
        authority: &Authority,
        id: TokenId,
        expected: Option<&Etag>,
        check: impl Fn(&StoredToken) -> Result<(), Error>,
        write: impl Fn(Option<Etag>) -> Fut,
    ) -> Result<T, Error>
    where
        Fut: Future<Output = Result<T, Error>>,
    {
        if authority.is_admin() {
            return write(expected.cloned()).await;
        }
        let mut attempt = 0;
        loop {
            attempt += 1;
            let before = self.reachable(authority, id).await?;
            let seen = Etag::of(&before.token);
            if let Some(expected) = expected
                && *expected != seen
            {
                return Err(Error::Stale { id, current: seen });
            }
            check(&before)?;
            match write(Some(seen)).await {
                Err(Error::Stale { .. }) if expected.is_none() && attempt < JUDGED_ATTEMPTS => {}
                result => return result,
            }
        }
    }

    /// The whole chain of owners a change to `owner_id` asks for, given
    /// as the direct owner alone: the owner's own chain after it. The new
    /// owner must exist, hold the manager role, and not be the token or
    /// one of the tokens it owns (a token owning itself, even through
    /// others, would manage itself).
    pub(super) async fn owners_for(
        &self,
        id: TokenId,
        requested: &Owners,
    ) -> Result<Owners, Error> {
        use crate::model::FieldError;
        let Some(owner) = requested.direct() else {
            return Ok(Owners::NONE);
        };
        let field = "owner_id";
        let Some(stored) = self.store.get(owner).await? else {
            return Err(FieldError::new(field, format!("service token {owner} not found")).into());
        };
        if !stored.token.roles.contains(&self.config.manager_role) {
            return Err(FieldError::new(
                field,
                format!(
                    "service token {owner} does not hold the `{}` role, so it cannot manage tokens",
                    self.config.manager_role
                ),
            )
            .into());
        }
        if owner == id || stored.token.owners.include(id) {
            return Err(FieldError::new(
                field,
                format!(
                    "service token {owner} is this token or one it owns: a token cannot own itself"
                ),
            )
            .into());
        }
        Ok(Owners::under(field, owner, &stored.token.owners)?)
    }
}
