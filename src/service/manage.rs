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
        ServiceToken, TokenId, USAGE_DAYS,
    },
    page::{PageRequest, encode_cursor},
    rate_limit::Charge,
    store::{KeepAdmin, Outcome, Store, StoreError},
    token::Secret,
};

use super::{Rpc, TokenService, draft_of};

/// Proof that the caller holds the admin role: only
/// [`TokenService::authorize_admin`] makes one, and every management call
/// takes one, so no front end can forget the check.
#[derive(Debug, Clone)]
pub struct Admin(pub(super) ServiceToken);

impl Admin {
    pub fn token(&self) -> &ServiceToken {
        &self.0
    }
}

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
    let (token, created) = issue(store, clock, new, None).await?;
    audit_created("bootstrap", None, &created);
    Ok((token, created))
}

/// Mints a secret for `new` and stores its hash: what `create` and
/// `bootstrap` share.
async fn issue(
    store: &dyn Store,
    clock: &dyn Clock,
    mut new: NewToken,
    event: Option<&Draft>,
) -> Result<(Secret, ServiceToken), Error> {
    // Microseconds, the precision every backend keeps: a token reads the
    // same from any store and survives a move between them exactly.
    let now = to_micros(clock.now());
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
    /// admin role, runs `call` with the proof, counts the outcome, and writes
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
        presented: Result<&str, AuthError>,
        source: Option<IpAddr>,
        call: impl FnOnce(Admin) -> Fut,
    ) -> Result<T, Error>
    where
        Fut: Future<Output = Result<T, Error>>,
    {
        let (caller, result) = match self.authorize_admin(presented, source).await {
            Ok(admin) => {
                let caller = admin.token().clone();
                (Some(caller), call(admin).await)
            }
            Err((caller, refused)) => (caller, Err(refused)),
        };
        if let Err(error) = &result {
            let refusal = Refusal {
                rpc: rpc.as_str(),
                source,
                reason: match error {
                    Error::Unauthenticated(why) => why.as_str(),
                    Error::PermissionDenied(_) => "missing_role",
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
            self.audit_refusal(refusal, caller.as_ref());
        }
        let status = result.as_ref().map_or_else(|e| e.kind().as_str(), |_| "OK");
        self.metrics.management_call(rpc.as_str(), status);
        result
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
        admin: &Admin,
        new: NewToken,
    ) -> Result<(Secret, ServiceToken), Error> {
        let (this, admin) = (self.clone(), admin.clone());
        to_completion(async move { this.create_now(&admin, new).await }).await
    }

    async fn create_now(
        &self,
        admin: &Admin,
        mut new: NewToken,
    ) -> Result<(Secret, ServiceToken), Error> {
        let caller = admin.token();
        new.created_by = format!("{} ({})", caller.id, caller.name);
        let now = self.now();
        if new.expiration.is_none()
            && let Some(lifetime) = self.config.lifetime.default_lifetime()
        {
            new.expiration = now.checked_add(lifetime);
        }
        self.within_policy(new.expiration, now)?;
        if new.bindings.sources.is_empty() {
            self.source_binding_required()?;
        }
        // The server's default limits, copied in: every token's limits are
        // its own, visible, and unchanged by a later change of the default.
        new.rate_limits
            .get_or_insert_with(|| self.config.default_rate_limits.clone());
        let event = self.draft(|| Draft::created(Actor::of(caller), now)).await;
        let (token, created) = issue(&*self.store, &*self.clock, new, draft_of(&event)).await?;
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
        _admin: &Admin,
        id: TokenId,
        days: u32,
    ) -> Result<Vec<DayUsage>, Error> {
        if !(1..=USAGE_DAYS).contains(&days) {
            return Err(FieldError::new("days", format!("must be from 1 to {USAGE_DAYS}")).into());
        }
        if self.store.get(id).await?.is_none() {
            return Err(Error::NotFound(id));
        }
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

    pub async fn get(&self, _admin: &Admin, id: TokenId) -> Result<ServiceToken, Error> {
        match self.store.get(id).await? {
            Some(stored) => Ok(stored.token.seen_at(self.now())),
            None => Err(Error::NotFound(id)),
        }
    }

    pub async fn list(
        &self,
        _admin: &Admin,
        page: PageRequest,
        filter: &ListFilter,
    ) -> Result<Page, Error> {
        let now = self.now();
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
        let stored = self
            .store
            .list_matching(page.after, page.size + 1, filter)
            .await?;
        let mut tokens: Vec<ServiceToken> = stored
            .into_iter()
            .map(|stored| stored.token.seen_at(now))
            .collect();
        let next_cursor = if tokens.len() > page.size {
            tokens.truncate(page.size);
            tokens.last().map(|last| encode_cursor(last.id))
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
        admin: &Admin,
        id: TokenId,
        edit: Edit,
        expected: Option<Etag>,
    ) -> Result<ServiceToken, Error> {
        let (this, admin) = (self.clone(), admin.clone());
        to_completion(async move { this.update_now(&admin, id, edit, expected).await }).await
    }

    async fn update_now(
        &self,
        admin: &Admin,
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
            self.within_policy(expiration, now)?;
        }
        // Likewise only a change that unbinds a token's sources is held
        // to the source-binding policy.
        if edit.sources.as_ref().is_some_and(|s| s.is_empty()) {
            self.source_binding_required()?;
        }
        let event = Draft::edited(Actor::of(admin.token()), now);
        let (before, after) = self
            .change(
                admin,
                id,
                &Change::Edit(edit),
                now,
                expected.as_ref(),
                event,
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
            Some(admin.token()),
            id.get(),
            after.name.as_str(),
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
        admin: &Admin,
        id: TokenId,
        grace: Duration,
    ) -> Result<(Secret, ServiceToken), Error> {
        let (this, admin) = (self.clone(), admin.clone());
        to_completion(async move { this.rotate_now(&admin, id, grace).await }).await
    }

    async fn rotate_now(
        &self,
        admin: &Admin,
        id: TokenId,
        grace: Duration,
    ) -> Result<(Secret, ServiceToken), Error> {
        let now = self.now();
        let max = self.config.max_rotation_grace;
        if grace > max {
            return Err(FieldError::new(
                "grace_period",
                format!(
                    "is longer than this server's maximum rotation grace of {} (--max-rotation-grace)",
                    crate::config::lifetime_text(max)
                ),
            )
            .into());
        }
        let previous_until = now
            .checked_add(grace)
            .map(to_micros)
            .ok_or_else(|| FieldError::new("grace_period", "is too long"))?;
        // A new secret lives until the token expires: a token the policy
        // would not allow today gets an expiration before a new secret.
        if self.config.lifetime.max().is_some() {
            let current = self.store.get(id).await?.ok_or(Error::NotFound(id))?;
            self.within_policy(current.token.expiration, now)?;
        }
        let token = Secret::generate();
        let change = Change::Rotate {
            hash: token.hash(),
            previous_until,
        };
        let event = Draft::rotated(Actor::of(admin.token()), now);
        let (_, rotated) = self.change(admin, id, &change, now, None, event).await?;
        crate::audit::done!(
            info,
            Rpc::Rotate.as_str(),
            Some(admin.token()),
            id.get(),
            rotated.name.as_str(),
            grace_period = ?grace,
            previous_secret_expiration = rotated
                .previous_secret
                .map(|p| crate::clock::rfc3339_micros(p.expiration)),
            "service token rotated"
        );
        Ok((token, rotated))
    }

    /// Refused when the server requires every token to be bound to
    /// sources (`--require-source-binding`); for a token left without any.
    fn source_binding_required(&self) -> Result<(), Error> {
        if self.config.require_source_binding {
            return Err(FieldError::new(
                "allowed_sources",
                "is required: this server requires every token to be bound to the sources it is used from (--require-source-binding)",
            )
            .into());
        }
        Ok(())
    }

    /// Whether a token expiring at `expiration` (`None`: never) from `now`
    /// obeys the maximum lifetime.
    fn within_policy(&self, expiration: Option<SystemTime>, now: SystemTime) -> Result<(), Error> {
        let Some(max) = self.config.lifetime.max() else {
            return Ok(());
        };
        let allowed = now.checked_add(max);
        if expiration.is_some_and(|e| allowed.is_none_or(|a| e <= a)) {
            return Ok(());
        }
        let limit = self.config.lifetime.max_text().unwrap_or_default();
        let problem = match expiration {
            None => format!(
                "is required: this server's maximum token lifetime is {limit}; give an expiration at most {limit} from now"
            ),
            Some(_) => format!(
                "is beyond this server's maximum token lifetime of {limit}: give one at most {limit} from now"
            ),
        };
        Err(FieldError::new("expiration", problem).into())
    }

    /// Runs one change through the store under the lockout rule, and makes
    /// sure no cached validation outlives it.
    pub(super) async fn change(
        &self,
        _admin: &Admin,
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
        }
    }

    /// Deletes token `id`, if its etag is still `expected` when one is
    /// given.
    pub async fn delete(
        self: &Arc<Self>,
        admin: &Admin,
        id: TokenId,
        expected: Option<Etag>,
    ) -> Result<(), Error> {
        let (this, admin) = (self.clone(), admin.clone());
        to_completion(async move { this.delete_now(&admin, id, expected).await }).await
    }

    async fn delete_now(
        &self,
        admin: &Admin,
        id: TokenId,
        expected: Option<Etag>,
    ) -> Result<(), Error> {
        let now = self.now();
        let event = || Draft::deleted(Actor::of(admin.token()), now);
        let keep = self.keep_admin(now);
        let deleted = self.remove(id, &keep, expected.as_ref(), event).await?;
        self.outcome(id, deleted)?;
        // The name is not read back to be logged: the event carries it.
        crate::audit::done!(
            info,
            Rpc::Delete.as_str(),
            Some(admin.token()),
            id.get(),
            None::<&str>,
            "service token deleted"
        );
        Ok(())
    }
}
