//! The management operations (create, get, list, update, rotate, delete),
//! each behind `manage`: one credential check, one metric and one audit
//! line for every transport; a change and its audit line run as one unit
//! (`to_completion`).

use std::{
    future::Future,
    net::IpAddr,
    sync::Arc,
    time::{Duration, SystemTime},
};

use crate::{
    audit::Refusal,
    clock::{Clock, to_micros},
    credential::AuthError,
    error::Error,
    events::{Actor, Draft},
    model::{
        Change, CheckContext, Counts, Day, DayUsage, Edit, Etag, FieldError, ListFilter, NewToken,
        OrderKey, Owners, ServiceToken, TokenId, USAGE_DAYS,
    },
    page::{PageRequest, encode_cursor},
    rate_limit::Charge,
    store::{KeepAdmin, Outcome, Store, StoreError},
    token::Secret,
};

use super::delegation::Act;
use super::{Authority, Credential, Rpc, TokenService, Transport, draft_of};

/// The caller kind of a call refused before its caller was known to
/// hold a managing role.
pub(super) const NO_CALLER: &str = "none";

/// One page of `list`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    pub tokens: Vec<ServiceToken>,
    /// `None` on the last page.
    pub next_cursor: Option<String>,
}

/// Creates a token with no caller: the first admin token of a fresh install.
/// Takes the store itself, not a [`TokenService`]: only whoever opens the
/// store (the `bootstrap` command, tests) can call it, never a transport.
pub async fn bootstrap(
    store: &dyn Store,
    clock: &dyn Clock,
    mut new: NewToken,
) -> Result<(Secret, ServiceToken), Error> {
    new.created_by = "bootstrap".to_owned();
    // No event: bootstrap runs before the server, which delivers them.
    let (token, created) = issue(store, to_micros(clock.now()), new, None).await?;
    audit_created("bootstrap", None, &created);
    Ok((token, created))
}

/// Mints a secret for `new` and stores its hash: what `create` and
/// `bootstrap` share.
/// `now` (to the microsecond, the precision every backend keeps: a token
/// reads the same from any store and survives a move between them
/// exactly) is its creation, the moment its lifetime counts from.
async fn issue(
    store: &dyn Store,
    now: SystemTime,
    mut new: NewToken,
    event: Option<&Draft>,
) -> Result<(Secret, ServiceToken), Error> {
    new.expiration = new.expiration.map(to_micros);
    if new.expiration.is_some_and(|expiration| expiration <= now) {
        return Err(FieldError::new("expiration", "must be in the future").into());
    }
    let token = Secret::generate();
    let created = store.insert(token.hash(), &new, now, event).await?;
    Ok((token, created))
}

/// Runs `unit`, a call that writes to the store and then writes the audit
/// line (and invalidates the cache) for what it wrote, on a task of its
/// own, and waits for it. A caller that goes away (its deadline passed, it
/// reset the stream) drops only this wait: the unit runs on, so a change
/// that committed is always audited, once, and never left in the cache.
/// A SIGKILL between the commit and the audit line can still split them.
pub(super) async fn to_completion<T: Send + 'static>(
    unit: impl Future<Output = Result<T, Error>> + Send + 'static,
) -> Result<T, Error> {
    match tokio::spawn(unit).await {
        Ok(result) => result,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        // The runtime is going away under it.
        Err(e) => Err(StoreError::unavailable("the server is shutting down", e).into()),
    }
}

/// The audit event of a new token; `caller` is `None` for a bootstrap.
fn audit_created(rpc: &str, caller: Option<&ServiceToken>, created: &ServiceToken) {
    let message = match caller {
        Some(_) => "service token created",
        None => "bootstrap token created",
    };
    crate::audit::done!(
        info,
        rpc,
        caller,
        created.id.get(),
        created.name.as_str(),
        token.roles = %created.roles,
        "{message}"
    );
}

impl TokenService {
    /// Runs one whole management call: checks that the caller holds the
    /// admin or the manager role, runs `call` with the proof, counts the outcome, and writes
    /// the audit event of a refused or failed call: individually for an
    /// caller, summarized per caller, call and outcome (see `refusals`), so
    /// nobody can flood the log. `source` is the request's source, where the
    /// transport knows it. Every transport runs every management call
    /// (create, list, get, update, rotate, delete) through this; successes
    /// are audited by the calls that change something, which know what
    /// they changed.
    pub async fn manage<T, Fut>(
        &self,
        rpc: Rpc,
        transport: Transport,
        credential: Credential<'_>,
        source: Option<IpAddr>,
        call: impl FnOnce(Authority) -> Fut,
    ) -> Result<T, Error>
    where
        Fut: Future<Output = Result<T, Error>>,
    {
        let (caller, kind, result) = match self.authorize_manager(credential, source).await {
            Ok(authority) => {
                let caller = authority.token().clone();
                let kind = authority.kind();
                (Some(caller), kind, call(authority).await)
            }
            Err((caller, refused)) => (caller, NO_CALLER, Err(refused)),
        };
        self.account(rpc, transport, source, caller.as_ref(), kind, &result);
        result
    }

    /// Counts one management call's outcome under `kind`, the caller's
    /// kind, and writes the audit event of a refused or failed one (see
    /// [`TokenService::manage`]).
    pub(super) fn account<T>(
        &self,
        rpc: Rpc,
        transport: Transport,
        source: Option<IpAddr>,
        caller: Option<&ServiceToken>,
        kind: &'static str,
        result: &Result<T, Error>,
    ) {
        if let Err(error) = result {
            let refusal = Refusal {
                rpc: rpc.as_str(),
                source,
                reason: match error {
                    Error::Unauthenticated(why) => why.as_str(),
                    Error::PermissionDenied(_) => "missing_role",
                    Error::Delegation(_) => "beyond_delegation",
                    Error::NotAllowed(refusal) => refusal.as_str(),
                    Error::Store(_) => "store_error",
                    _ => "other",
                },
                outcome: error.kind().as_str(),
                detail: error,
                caller: None,
                role: match error {
                    Error::PermissionDenied(role) => Some(role.as_str()),
                    _ => None,
                },
            };
            self.audit_refusal(refusal, caller);
        }
        let status = result.as_ref().map_or_else(|e| e.kind().as_str(), |_| "OK");
        self.metrics
            .management_call(rpc.as_str(), status, kind, transport.as_str());
    }

    /// A TokenService call refused before it began because its bytes are
    /// not a valid protobuf message (the transport already answered it).
    /// Counted; for a management call, audited like any refusal: in full
    /// for an authenticated caller, aggregated for anyone else.
    pub async fn refused_undecodable(
        &self,
        rpc: &'static str,
        management: bool,
        presented: Result<&str, AuthError>,
        source: Option<IpAddr>,
    ) {
        self.metrics.undecodable(rpc);
        if !management {
            return;
        }
        const REASON: &str = "the request is not a valid protobuf message";
        let context = CheckContext {
            source,
            ..CheckContext::default()
        };
        let caller = self
            .authenticate(presented, &context, Charge::Exempt)
            .await
            .ok();
        let refusal = Refusal {
            rpc,
            source,
            reason: "undecodable",
            outcome: "INTERNAL",
            detail: &REASON,
            caller: None,
            role: None,
        };
        self.audit_refusal(refusal, caller.as_ref());
    }

    /// Creates a token from `new`; see [`TokenService::to_completion`].
    pub async fn create(
        self: &Arc<Self>,
        authority: &Authority,
        new: NewToken,
    ) -> Result<(Secret, ServiceToken), Error> {
        let (this, authority) = (self.clone(), authority.clone());
        to_completion(async move { this.create_now(&authority, new).await }).await
    }

    async fn create_now(
        &self,
        authority: &Authority,
        mut new: NewToken,
    ) -> Result<(Secret, ServiceToken), Error> {
        let caller = authority.token();
        new.created_by = format!("{} ({})", caller.id, caller.name);
        let now = self.now();
        let asked = new.expiration.is_some();
        if !asked && let Some(lifetime) = self.config.lifetime.default_lifetime() {
            new.expiration = now.checked_add(lifetime);
        }
        if !authority.is_admin() {
            new.owners = Owners::under("owner_id", caller.id, &caller.owners)?;
            // What the manager did not ask for fits under it: no later
            // than it and those above it.
            if !asked && let Some(ceiling) = authority.ceiling() {
                new.expiration = Some(new.expiration.map_or(ceiling, |e| e.min(ceiling)));
            }
            // Likewise limited as the manager is, unless it says otherwise.
            if new.rate_limits.is_none() && !caller.rate_limits.is_empty() {
                new.rate_limits = Some(caller.rate_limits.clone());
            }
        }
        self.within_policy(new.expiration, now, now)?;
        if new.bindings.sources.is_empty() {
            self.source_binding_required()?;
        }
        // The server's default limits, copied in: every token's limits are
        // its own, visible, and unchanged by a later change of the default.
        new.rate_limits
            .get_or_insert_with(|| self.config.default_rate_limits.clone());
        if !authority.is_admin() {
            // The token as it would be stored (the store draws its id).
            let made = ServiceToken::new(caller.id, &new, now);
            self.judge(authority, caller.id, Act::Create(&made))?;
        }
        let event = self.draft(|| Draft::created(Actor::of(caller), now)).await;
        let (token, created) = issue(&*self.store, now, new, draft_of(&event)).await?;
        self.event_committed(event);
        audit_created(Rpc::Create.as_str(), Some(caller), &created);
        Ok((token, created))
    }

    /// Token `id`'s checks per UTC day, the last `days` of them (today
    /// included; 1 to [`USAGE_DAYS`]), oldest first, a day without checks
    /// as zeros. What this replica has not written yet (its last window) is
    /// not in it.
    pub async fn usage(
        &self,
        authority: &Authority,
        id: TokenId,
        days: u32,
    ) -> Result<Vec<DayUsage>, Error> {
        if !(1..=USAGE_DAYS).contains(&days) {
            return Err(FieldError::new("days", format!("must be from 1 to {USAGE_DAYS}")).into());
        }
        self.reachable(authority, id).await?;
        let today = Day::of(self.now());
        let from = today.before(days - 1);
        let mut kept = self
            .store
            .usage(id, from, today)
            .await?
            .into_iter()
            .peekable();
        let mut all = Vec::with_capacity(days as usize);
        let mut day = from;
        loop {
            let counts = match kept.next_if(|usage| usage.day == day) {
                Some(usage) => usage.counts,
                None => Counts::default(),
            };
            all.push(DayUsage { day, counts });
            if day >= today {
                return Ok(all);
            }
            day = day.next();
        }
    }

    pub async fn get(&self, authority: &Authority, id: TokenId) -> Result<ServiceToken, Error> {
        let stored = self.reachable(authority, id).await?;
        Ok(stored.token.seen_at(self.now()))
    }

    pub async fn list(
        &self,
        authority: &Authority,
        page: PageRequest,
        filter: &ListFilter,
    ) -> Result<Page, Error> {
        let now = self.now();
        let scoped = self.scoped(authority, filter);
        let filter = &scoped;
        let resolved;
        let filter = if filter.over_policy {
            let max = self.config.lifetime.max();
            let bound = self.config.require_source_binding;
            if max.is_none() && !bound {
                return Err(FieldError::new(
                    "over_policy",
                    "this server has no maximum token lifetime (--max-token-lifetime) nor source-binding policy (--require-source-binding) to be over",
                )
                .into());
            }
            resolved = ListFilter {
                // Beyond any time a clock can show: nothing is "after" it.
                expiring_after: max.map(|max| now.checked_add(max).unwrap_or(now)),
                without_sources: bound,
                ..filter.clone()
            };
            &resolved
        } else {
            filter
        };
        // One extra row tells whether another page follows without a second query.
        let stored = match page.order.key {
            OrderKey::Id => {
                let after = page.after.as_ref().map(|at| at.id);
                self.store
                    .list_matching(after, page.size + 1, filter)
                    .await?
            }
            _ => {
                let after = page.after.as_ref();
                let store = &self.store;
                store
                    .list_ordered(page.order, after, page.size + 1, filter)
                    .await?
            }
        };
        let mut tokens: Vec<ServiceToken> = stored
            .into_iter()
            .map(|stored| stored.token.seen_at(now))
            .collect();
        let next_cursor = if tokens.len() > page.size {
            tokens.truncate(page.size);
            tokens
                .last()
                .map(|last| encode_cursor(page.order, &page.order.position_of(last)))
        } else {
            None
        };
        Ok(Page {
            tokens,
            next_cursor,
        })
    }

    /// Applies `edit` (not empty; a new expiration ahead) to token `id`,
    /// if its etag is still `expected` when one is given. Anything it
    /// takes away (disabled, a role, time) holds from the answer on, here
    /// and on every replica within the cache's bound.
    pub async fn update(
        self: &Arc<Self>,
        authority: &Authority,
        id: TokenId,
        edit: Edit,
        expected: Option<Etag>,
    ) -> Result<ServiceToken, Error> {
        let (this, authority) = (self.clone(), authority.clone());
        to_completion(async move { this.update_now(&authority, id, edit, expected).await }).await
    }

    async fn update_now(
        &self,
        authority: &Authority,
        id: TokenId,
        edit: Edit,
        expected: Option<Etag>,
    ) -> Result<ServiceToken, Error> {
        if edit.is_empty() {
            return Err(FieldError::new("update_mask", "names no field to change").into());
        }
        let now = self.now();
        let mut edit = edit;
        if let Some(Some(expiration)) = edit.expiration {
            let expiration = to_micros(expiration);
            if expiration <= now {
                return Err(FieldError::new("expiration", "must be in the future").into());
            }
            edit.expiration = Some(Some(expiration));
        }
        // Only a new expiration is held to the policy: disabling or
        // renaming a token made before the policy must stay possible.
        if let Some(expiration) = edit.expiration {
            let created_at = match self.config.lifetime.max_age() {
                // Set once, at creation: read apart from the change.
                Some(_) => self.store.get(id).await?.map(|s| s.token.created_at),
                None => None,
            };
            self.within_policy(expiration, now, created_at.unwrap_or(now))?;
        }
        // Likewise only a change that unbinds a token's sources is held
        // to the source-binding policy.
        if edit.sources.as_ref().is_some_and(|s| s.is_empty()) {
            self.source_binding_required()?;
        }
        if let Some(requested) = &edit.owners {
            if !authority.is_admin() {
                return Err(Error::Delegation(
                    "owner_id: only an admin changes a token's owner".to_owned(),
                ));
            }
            edit.owners = Some(self.owners_for(id, requested).await?);
        }
        let change = Change::Edit(edit);
        let (before, after) = self
            .judged(
                authority,
                id,
                expected.as_ref(),
                |before| {
                    let after = change.apply(before, now);
                    self.judge(
                        authority,
                        id,
                        Act::Change {
                            before: &before.token,
                            after: &after.token,
                        },
                    )
                },
                |expected| {
                    let event = Draft::edited(Actor::of(authority.token()), now);
                    let change = &change;
                    async move { self.change(id, change, now, expected.as_ref(), event).await }
                },
            )
            .await?;
        let changes = Edit::changes(&before, &after);
        if changes.is_empty() {
            // Nothing changed, so nothing was written: no event, no audit.
            return Ok(after.seen_at(now));
        }
        let rpc = match (before.disabled, after.disabled) {
            (false, true) => "Disable",
            (true, false) => "Enable",
            _ => Rpc::Update.as_str(),
        };
        crate::audit::done!(
            info,
            rpc,
            Some(authority.token()),
            id.get(),
            after.name.as_str(),
            caller_kind = authority.kind(),
            changed = %changes
                .iter()
                .map(|c| format!("{}: {:?} -> {:?}", c.field, c.old, c.new))
                .collect::<Vec<_>>()
                .join("; "),
            "service token updated"
        );
        Ok(after.seen_at(now))
    }

    /// A new secret for token `id`; the current one keeps working for
    /// `grace` (capped at the token's expiration; zero ends it now), and a
    /// previous one still in its grace period ends now.
    pub async fn rotate(
        self: &Arc<Self>,
        authority: &Authority,
        id: TokenId,
        grace: Duration,
    ) -> Result<(Secret, ServiceToken), Error> {
        let (this, authority) = (self.clone(), authority.clone());
        to_completion(async move { this.rotate_now(&authority, id, grace).await }).await
    }

    async fn rotate_now(
        &self,
        authority: &Authority,
        id: TokenId,
        grace: Duration,
    ) -> Result<(Secret, ServiceToken), Error> {
        let now = self.now();
        let previous_until = self.grace_until(grace, now)?;
        // A new secret lives until the token expires: a token the policy
        // would not allow today gets an expiration before a new secret.
        if self.config.lifetime.max().is_some() || self.config.lifetime.max_age().is_some() {
            let current = self.store.get(id).await?.ok_or(Error::NotFound(id))?;
            self.within_policy(current.token.expiration, now, current.token.created_at)?;
        }
        let token = Secret::generate();
        let change = Change::Rotate {
            hash: token.hash(),
            previous_until,
            renew: None,
            replacing: None,
        };
        let (_, rotated) = self
            .judged(
                authority,
                id,
                None,
                |_| Ok(()),
                |expected| {
                    let event = Draft::rotated(Actor::of(authority.token()), now);
                    let change = &change;
                    async move { self.change(id, change, now, expected.as_ref(), event).await }
                },
            )
            .await?;
        crate::audit::done!(
            info,
            Rpc::Rotate.as_str(),
            Some(authority.token()),
            id.get(),
            rotated.name.as_str(),
            caller_kind = authority.kind(),
            grace_period = ?grace,
            previous_secret_expiration = rotated
                .previous_secret
                .map(|p| crate::clock::rfc3339_micros(p.expiration)),
            "service token rotated"
        );
        Ok((token, rotated))
    }

    /// Runs one change through the store under the lockout rule, and makes
    /// sure no cached validation outlives it.
    pub(super) async fn change(
        &self,
        id: TokenId,
        change: &Change,
        now: SystemTime,
        expected: Option<&Etag>,
        event: Draft,
    ) -> Result<(ServiceToken, ServiceToken), Error> {
        let event = self.draft(|| event).await;
        let outcome = self
            .store
            .change(
                id,
                change,
                &self.keep_admin(now),
                expected,
                draft_of(&event),
            )
            .await;
        // Before the answer, whatever it is: the change may have committed
        // even if the answer is an error.
        self.cache.invalidate(id);
        let changed = self.outcome(id, outcome?)?;
        self.event_committed(event);
        Ok(changed)
    }

    /// The one way a token is deleted (by an admin, a purge, or its leaked
    /// secret): under `keep`, with its event, and gone from the cache
    /// before anyone hears of it.
    pub(super) async fn remove(
        &self,
        id: TokenId,
        keep: &KeepAdmin,
        expected: Option<&Etag>,
        event: impl FnOnce() -> Draft,
    ) -> Result<Outcome<()>, Error> {
        let event = self.draft(event).await;
        let deleted = self
            .store
            .delete(id, keep, expected, draft_of(&event))
            .await;
        // Whatever the answer: the delete may have committed even if the
        // answer is an error.
        self.cache.invalidate(id);
        let deleted = deleted?;
        if deleted == Outcome::Done(()) {
            self.event_committed(event);
        }
        Ok(deleted)
    }

    pub(super) fn keep_admin(&self, now: SystemTime) -> KeepAdmin {
        KeepAdmin {
            role: self.config.admin_role.clone(),
            now,
            margin: self.config.admin_keep_margin,
            waived: false,
        }
    }

    pub(super) fn outcome<T>(&self, id: TokenId, outcome: Outcome<T>) -> Result<T, Error> {
        match outcome {
            Outcome::Done(done) => Ok(done),
            Outcome::NotFound => Err(Error::NotFound(id)),
            Outcome::Lockout(what) => Err(Error::Lockout {
                what,
                id,
                role: self.config.admin_role.clone(),
            }),
            Outcome::Invalid(invalid) => Err(invalid.into()),
            Outcome::Stale(current) => Err(Error::Stale { id, current }),
            Outcome::Replaced => Err(AuthError::RotatedOut.into()),
        }
    }

    /// Deletes token `id`, if its etag is still `expected` when one is
    /// given.
    pub async fn delete(
        self: &Arc<Self>,
        authority: &Authority,
        id: TokenId,
        expected: Option<Etag>,
    ) -> Result<(), Error> {
        let (this, authority) = (self.clone(), authority.clone());
        to_completion(async move { this.delete_now(&authority, id, expected).await }).await
    }

    async fn delete_now(
        &self,
        authority: &Authority,
        id: TokenId,
        expected: Option<Etag>,
    ) -> Result<(), Error> {
        let now = self.now();
        let keep = self.keep_admin(now);
        self.judged(
            authority,
            id,
            expected.as_ref(),
            |_| Ok(()),
            |expected| {
                let event = || Draft::deleted(Actor::of(authority.token()), now);
                let keep = &keep;
                async move {
                    let deleted = self.remove(id, keep, expected.as_ref(), event).await?;
                    self.outcome(id, deleted)
                }
            },
        )
        .await?;
        // The name is not read back to be logged: the event carries it.
        crate::audit::done!(
            info,
            Rpc::Delete.as_str(),
            Some(authority.token()),
            id.get(),
            None::<&str>,
            caller_kind = authority.kind(),
            "service token deleted"
        );
        Ok(())
    }
}
