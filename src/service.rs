//! The token service itself, independent of any transport: validation,
//! authorization (the admin role, a required role), and the management
//! operations. gRPC and HTTP translate into these calls; none re-implements
//! them. Tokens are minted in two places only: [`TokenService::create`],
//! which takes an [`Admin`] proof, and [`bootstrap`], which takes the store
//! itself, which no transport holds.

use std::{
    future::Future,
    net::IpAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, SystemTime},
};

use tokio::sync::Notify;

use crate::{
    audit::{self, Refusal, Refusals},
    cache::ValidationCache,
    clock::{Clock, to_micros},
    config::ServiceConfig,
    credential::AuthError,
    error::{Error, ErrorKind},
    events::{Actor, Draft, OutboxStats, Pending, Settle},
    last_used::LastUsed,
    metrics::{Metrics, TokenCounts},
    model::{
        Change, Edit, Etag, FieldError, ListFilter, NewToken, Role, Secret, ServiceToken,
        StoredToken, TokenId, TokenSummary,
    },
    page::{PageRequest, encode_cursor},
    rate_limit::RateLimit,
    store::{KeepAdmin, Outcome, Store, StoreError},
    token::{MalformedToken, Token, TokenHash},
};

pub use crate::audit::AUDIT;

/// The management RPCs, as every transport names them in metrics and audit
/// events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rpc {
    Create,
    List,
    Delete,
    Get,
    Update,
    Rotate,
}

impl Rpc {
    pub fn as_str(self) -> &'static str {
        match self {
            Rpc::Create => "Create",
            Rpc::List => "List",
            Rpc::Delete => "Delete",
            Rpc::Get => "Get",
            Rpc::Update => "Update",
            Rpc::Rotate => "Rotate",
        }
    }
}

/// The answer to "is this token valid?".
// Valid is the common answer on the hot path: boxing it to shrink the rare
// Invalid would cost an allocation per validation.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Validation {
    /// Valid, through its current secret or (during a rotation's grace
    /// period) its previous one.
    Valid(ServiceToken, Secret),
    Invalid(InvalidReason),
}

impl Validation {
    /// The metrics label of this answer.
    pub fn outcome(&self) -> &'static str {
        match self {
            Validation::Valid(_, Secret::Current) => "valid",
            Validation::Valid(_, Secret::Previous) => "previous_secret",
            Validation::Invalid(InvalidReason::Malformed(_)) => "malformed",
            Validation::Invalid(InvalidReason::NotFound) => "not_found",
            Validation::Invalid(InvalidReason::Expired) => "expired",
            Validation::Invalid(InvalidReason::Disabled) => "disabled",
        }
    }
}

/// What became of one leaked secret handed to
/// [`TokenService::revoke_leaked`]: no more than validating it would say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Revoked {
    Revoked,
    NotFound,
    Malformed,
}

/// The most secrets one revocation call may carry.
pub const MAX_REVOKED_PER_CALL: usize = 100;
/// Revocation calls allowed per source address per minute.
pub const REVOKE_CALLS_PER_MINUTE: u32 = 10;

/// How long a look at the outbox waits for the changes under way to be
/// written before it counts without them.
const OUTBOX_LOOK_WAIT: Duration = Duration::from_millis(200);

/// A valid caller: its token, and which secret it presented.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authenticated {
    pub token: ServiceToken,
    pub secret: Secret,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InvalidReason {
    Malformed(MalformedToken),
    /// Never created, deleted, or a rotated-out secret past its grace period.
    NotFound,
    Expired,
    Disabled,
}

impl From<InvalidReason> for AuthError {
    fn from(reason: InvalidReason) -> AuthError {
        match reason {
            InvalidReason::Malformed(why) => AuthError::Malformed(why),
            InvalidReason::NotFound => AuthError::NotFound,
            InvalidReason::Expired => AuthError::Expired,
            InvalidReason::Disabled => AuthError::Disabled,
        }
    }
}

/// Proof that the caller holds the admin role: only
/// [`TokenService::authorize_admin`] makes one, and every management call
/// takes one, so no front end can forget the check.
#[derive(Debug, Clone)]
pub struct Admin(ServiceToken);

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

pub struct TokenService {
    store: Arc<dyn Store>,
    cache: Arc<ValidationCache>,
    clock: Arc<dyn Clock>,
    config: ServiceConfig,
    metrics: Arc<Metrics>,
    refusals: Arc<Refusals>,
    /// `None`: last-used tracking is off.
    last_used: Option<Arc<LastUsed>>,
    /// Of leaked-token revocations, which need no credential.
    revocations: RateLimit,
    outbox: Outbox,
    /// The last store check failed (`server::watch_store` keeps it): calls
    /// that need the store are answered UNAVAILABLE at once meanwhile,
    /// rather than each waiting out the database pool's acquire timeout.
    store_away: AtomicBool,
    /// The last failure the store gave, with its causes (driver text
    /// included): what a call answered at once while the store is away
    /// logs under its incident id.
    last_store_failure: Mutex<Option<String>>,
}

/// An event drafted with a change, counted against the outbox's capacity
/// (as drafting) until the change is written or given up; written, it is
/// counted as pending.
struct Drafted<'a> {
    draft: Draft,
    outbox: &'a Outbox,
    written: bool,
    /// Keeps a look at the store from counting the outbox while this
    /// event's change may be half way into it.
    _gate: tokio::sync::RwLockReadGuard<'a, ()>,
}

impl Drop for Drafted<'_> {
    fn drop(&mut self) {
        self.outbox.drafting.fetch_sub(1, Ordering::Relaxed);
        if self.written {
            self.outbox.pending.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The draft inside, as the store takes it.
fn draft_of<'a>(drafted: &'a Option<Drafted<'_>>) -> Option<&'a Draft> {
    drafted.as_ref().map(|d| &d.draft)
}

/// What the service knows of the outbox between looks at the store.
#[derive(Default)]
struct Outbox {
    /// Events waiting, as of the last look plus those written since: the
    /// capacity is held to this (an estimate between looks, and across
    /// replicas).
    pending: AtomicU64,
    /// Events drafted whose change is not yet written: held against the
    /// capacity too, so a look at the store in between (which cannot count
    /// them yet) lets none past it.
    drafting: AtomicU64,
    /// Held (shared) by every change that carries an event, from its draft
    /// until it is written or given up, and (alone) by a look at the
    /// store: a look then never reads the store between an event's commit
    /// and its count here, so it neither counts an event twice (dropping
    /// one early) nor misses one.
    gate: tokio::sync::RwLock<()>,
    /// Whether the log already said the outbox is full (said once per
    /// episode, not per event).
    full: AtomicBool,
    /// Wakes delivery when this replica wrote an event.
    written: Notify,
}

impl TokenService {
    pub fn new(
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        config: ServiceConfig,
    ) -> TokenService {
        let metrics = Arc::new(Metrics::with(|registry| store.register_metrics(registry)));
        TokenService {
            last_used: LastUsed::new(
                config.last_used_resolution,
                store.clone(),
                clock.clone(),
                metrics.clone(),
            ),
            metrics,
            cache: store.validation_cache(),
            refusals: Refusals::new(config.refusal_summary_interval),
            revocations: RateLimit::new(REVOKE_CALLS_PER_MINUTE, Duration::from_secs(60)),
            outbox: Outbox::default(),
            store_away: AtomicBool::new(false),
            last_store_failure: Mutex::new(None),
            store,
            clock,
            config,
        }
    }

    pub fn config(&self) -> &ServiceConfig {
        &self.config
    }

    /// The registry every layer records into (the HTTP latency layer too).
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Counts the tokens by state, those expiring soon and those unused for
    /// long, for the metrics (`sts_tokens`, `sts_tokens_expiring`,
    /// `sts_tokens_unused`, `sts_tokens_next_expiry_timestamp_seconds`). A
    /// store's count (a scan, or one query on PostgreSQL): the server runs
    /// it now and then, never on a request's path.
    pub async fn summarize(&self) -> Result<(), Error> {
        let summary = self.store.summary(self.clock.now()).await?;
        let count = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        let seconds = |t: SystemTime| {
            t.duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        };
        let labelled = |windows: &[(&'static str, Duration)], counts: &[u64]| {
            windows
                .iter()
                .zip(counts)
                .map(|((name, _), n)| (*name, count(*n)))
                .collect()
        };
        self.metrics.token_counts(&TokenCounts {
            states: vec![
                ("active", count(summary.active)),
                ("disabled", count(summary.disabled)),
                ("expired", count(summary.expired)),
            ],
            expiring: labelled(&TokenSummary::EXPIRING, &summary.expiring),
            unused: labelled(&TokenSummary::UNUSED, &summary.unused),
            next_expiry_seconds: summary.next_expiry.map_or(0, seconds),
        });
        Ok(())
    }

    /// The event to record with a change, when webhooks are on and the
    /// outbox has room. A full outbox drops the event (counted, logged
    /// once), never the change: revoking must not wait on a receiver.
    async fn draft(&self, make: impl FnOnce() -> Draft) -> Option<Drafted<'_>> {
        let webhooks = self.config.webhooks.as_ref()?;
        let gate = self.outbox.gate.read().await;
        // Counted first, then checked: two drafts at once cannot both take
        // the last place.
        let drafting = self.outbox.drafting.fetch_add(1, Ordering::Relaxed) + 1;
        let drafted = Drafted {
            draft: make(),
            outbox: &self.outbox,
            written: false,
            _gate: gate,
        };
        let pending = self.outbox.pending.load(Ordering::Relaxed);
        if !self.outbox_has_room(pending + drafting, webhooks.outbox_capacity + 1) {
            self.metrics.event_dropped();
            return None;
        }
        // Current between delivery rounds too (a round may wait on a URL
        // that hangs until its timeout).
        self.metrics.events_pending(pending + drafting);
        Some(drafted)
    }

    /// Whether `pending` events leave room below `capacity`; says so once
    /// when they do not.
    fn outbox_has_room(&self, pending: u64, capacity: u64) -> bool {
        if pending < capacity {
            return true;
        }
        if !self.outbox.full.swap(true, Ordering::Relaxed) {
            tracing::error!(
                pending,
                capacity,
                "the event outbox is full: new events are dropped until webhooks take some (see sts_events_pending)"
            );
        }
        false
    }

    /// Records the expiry events due now (`token.expiring` at 30, 7 and 1
    /// days before, `token.expired`); nothing when webhooks are off. Run
    /// by the server with the token counts. Returns how many.
    pub async fn signal_expiries(&self) -> Result<u64, Error> {
        let Some(webhooks) = &self.config.webhooks else {
            return Ok(0);
        };
        let _gate = self.outbox.gate.read().await;
        let pending = self.outbox.pending.load(Ordering::Relaxed)
            + self.outbox.drafting.load(Ordering::Relaxed);
        if !self.outbox_has_room(pending, webhooks.outbox_capacity) {
            return Ok(0);
        }
        let signalled = self.store.signal_expiries(self.clock.now()).await?;
        if signalled > 0 {
            self.outbox.pending.fetch_add(signalled, Ordering::Relaxed);
            self.outbox.written.notify_one();
        }
        Ok(signalled)
    }

    /// Resolves once this replica wrote an event since the last call.
    pub async fn event_written(&self) {
        self.outbox.written.notified().await;
    }

    /// Outbox events for delivery (see [`Store::claim_events`]).
    pub async fn claim_events(&self, limit: usize, lease: Duration) -> Result<Vec<Pending>, Error> {
        Ok(self.store.claim_events(limit, lease).await?)
    }

    pub async fn settle_events(&self, settled: &[Settle]) -> Result<(), Error> {
        Ok(self.store.settle_events(settled).await?)
    }

    /// Looks at the outbox: the metrics, and the count the capacity is
    /// held to.
    pub async fn outbox_stats(&self) -> Result<OutboxStats, Error> {
        // Waits for the changes under way (one commit, as a rule) and holds
        // new ones back for one count. Past the wait (a disk that stalls
        // them), the look goes ahead: it may miss or count twice the events
        // under way, until the next look.
        let _gate = tokio::time::timeout(OUTBOX_LOOK_WAIT, self.outbox.gate.write())
            .await
            .ok();
        let stats = self.store.outbox_stats().await?;
        self.outbox.pending.store(stats.pending, Ordering::Relaxed);
        let capacity = self.config.webhooks.as_ref().map(|w| w.outbox_capacity);
        if capacity.is_some_and(|c| stats.pending < c)
            && self.outbox.full.swap(false, Ordering::Relaxed)
        {
            tracing::info!(pending = stats.pending, "the event outbox has room again");
        }
        let age = stats
            .oldest
            // By the clock that dated the events.
            .and_then(|oldest| self.clock.now().duration_since(oldest).ok())
            .map_or(0, |age| age.as_secs());
        self.metrics.outbox(stats.pending, age);
        Ok(stats)
    }

    /// Deletes the tokens that expired `purge_expired_after` ago or longer,
    /// each audited (`Purge`) and counted; nothing when purging is off.
    /// Several replicas may purge at once: a token another got to first is
    /// simply gone. Returns how many this call deleted.
    pub async fn purge_expired(&self) -> Result<u64, Error> {
        const PAGE: usize = 1000;
        let Some(after) = self.config.purge_expired_after else {
            return Ok(0);
        };
        let now = self.clock.now();
        let Some(cutoff) = now.checked_sub(after) else {
            return Ok(0);
        };
        let filter = ListFilter {
            expiring_before: Some(cutoff),
            ..ListFilter::default()
        };
        let mut purged = 0;
        let mut after_id = None;
        loop {
            let page = self.store.list_matching(after_id, PAGE, &filter).await?;
            for stored in &page {
                let id = stored.token.id;
                let deleted = self
                    .remove(id, &self.keep_admin(now), None, || Draft::purged(now))
                    .await?;
                if deleted != Outcome::Done(()) {
                    continue;
                }
                purged += 1;
                self.metrics.management_call("Purge", "OK");
                tracing::info!(
                    target: AUDIT,
                    rpc = "Purge",
                    outcome = "OK",
                    token.id = id.get(),
                    token.name = stored.token.name.as_str(),
                    expiration = stored
                        .token
                        .expiration
                        .map(crate::clock::rfc3339),
                    "expired service token purged"
                );
            }
            match page.last() {
                Some(last) if page.len() == PAGE => after_id = Some(last.token.id),
                _ => break,
            }
        }
        Ok(purged)
    }

    /// The metrics exposition, with the current token count when the
    /// store gives it within [`METRICS_COUNT_WAIT`], else the last one: a
    /// scrape must answer while the store does not (its other series are
    /// what tells an operator why).
    pub async fn render_metrics(&self) -> String {
        let count = tokio::time::timeout(METRICS_COUNT_WAIT, self.store.count()).await;
        self.metrics.render(count.ok().and_then(Result::ok))
    }

    /// Runs one whole management call: checks that the caller holds the
    /// admin role, runs `call` with the proof, counts the outcome, and writes
    /// the audit event of a refused or failed call: individually for an
    /// authenticated caller, aggregated (see `refusals`) for one without a
    /// valid credential, who could otherwise flood the log. `source` is the
    /// peer's address, where the transport knows it. Every transport runs
    /// its Create, List and Delete through this; successes are audited by
    /// `create` and `delete`, which know what they changed.
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
        let (caller, result) = match self.authorize_admin(presented).await {
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
        let caller = self.authenticate(presented).await.ok();
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

    /// The audit event of a refused management call, through the
    /// summarizer (`audit::Refusals`): the first of its kind in full, the
    /// rest counted, whether or not the caller is known.
    fn audit_refusal(&self, refusal: Refusal<'_>, caller: Option<&ServiceToken>) {
        let caller = caller.map(|c| audit::Caller {
            id: c.id.get(),
            name: c.name.as_str(),
        });
        self.refusals.record(Refusal { caller, ..refusal });
    }

    /// The one validation path: parse (checksum, no store access), hash, one
    /// lookup, which secret, expiry, disabled. An invalid token is an
    /// answer; only a store failure is an error, so a token that cannot be
    /// checked is never called valid. A valid one has its use noted.
    pub async fn validate(&self, presented: &str) -> Result<Validation, Error> {
        let validation = self.check(presented).await;
        let outcome = validation.as_ref().map_or("error", Validation::outcome);
        self.metrics.validation(outcome);
        validation
    }

    async fn check(&self, presented: &str) -> Result<Validation, Error> {
        let hash = match TokenHash::of_presented(presented) {
            Ok(hash) => hash,
            Err(why) => return Ok(Validation::Invalid(InvalidReason::Malformed(why))),
        };
        let Some(stored) = self.lookup(&hash).await? else {
            return Ok(Validation::Invalid(InvalidReason::NotFound));
        };
        let now = self.clock.now();
        let Some(secret) = stored.live_secret_at(&hash, now) else {
            return Ok(Validation::Invalid(InvalidReason::NotFound));
        };
        if stored.token.is_expired_at(now) {
            return Ok(Validation::Invalid(InvalidReason::Expired));
        }
        if stored.token.disabled {
            return Ok(Validation::Invalid(InvalidReason::Disabled));
        }
        if let Some(last_used) = &self.last_used {
            last_used.note(stored.token.id, secret, now);
        }
        Ok(Validation::Valid(stored.token.seen_at(now), secret))
    }

    /// The token stored under `hash`: from the cache, else from the store
    /// (and then cached, unless a delete raced the lookup).
    async fn lookup(&self, hash: &TokenHash) -> Result<Option<StoredToken>, Error> {
        if let Some(stored) = self.cache.get(hash) {
            self.metrics.cache_lookup(true);
            return Ok(Some(stored));
        }
        self.metrics.cache_lookup(false);
        self.store_present()?;
        let ticket = self.cache.ticket();
        let found = self
            .store
            .find_by_hash(hash)
            .await
            .inspect_err(|e| self.failed(e))?;
        if let Some(stored) = &found {
            self.cache.fill(ticket, hash, stored);
        }
        Ok(found)
    }

    /// The caller's token, if the presented credential is a valid one.
    pub async fn authenticate(
        &self,
        presented: Result<&str, AuthError>,
    ) -> Result<ServiceToken, Error> {
        Ok(self.authenticate_secret(presented).await?.token)
    }

    /// As [`TokenService::authenticate`], saying which secret was used
    /// (forward-auth tells the proxy when it was a rotated-out one).
    pub async fn authenticate_secret(
        &self,
        presented: Result<&str, AuthError>,
    ) -> Result<Authenticated, Error> {
        match self.validate(presented?).await? {
            Validation::Valid(token, secret) => Ok(Authenticated { token, secret }),
            Validation::Invalid(reason) => Err(AuthError::from(reason).into()),
        }
    }

    /// Whether `caller` (already authenticated) holds `required`: how
    /// forward-auth's `?role=` is decided. Counted either way; a refusal is
    /// audited, naming the caller and the role.
    pub fn require_role(&self, caller: &ServiceToken, required: &Role) -> Result<(), Error> {
        if caller.roles.contains(required) {
            self.metrics.role_check("granted");
            return Ok(());
        }
        self.metrics.role_check("refused");
        let refused = Error::PermissionDenied(required.clone());
        self.refusals.record(Refusal {
            rpc: audit::ROLE_CHECK,
            source: None,
            reason: "missing_role",
            outcome: refused.kind().as_str(),
            detail: &refused,
            caller: Some(audit::Caller {
                id: caller.id.get(),
                name: caller.name.as_str(),
            }),
            role: Some(required.as_str()),
        });
        Err(refused)
    }

    /// The caller, if its credential is valid and its token holds every one
    /// of `required`: the decision of every authorizer in front of a
    /// service (forward-auth, Envoy's ext_authz).
    pub async fn authorize(
        &self,
        presented: Result<&str, AuthError>,
        required: &[Role],
    ) -> Result<Authenticated, Error> {
        let caller = self.authenticate_secret(presented).await?;
        for role in required {
            self.require_role(&caller.token, role)?;
        }
        Ok(caller)
    }

    /// The caller, if its credential is valid and holds the reviewer role:
    /// who may ask about other tokens (Kubernetes TokenReview, OAuth 2.0
    /// introspection). Requiring a credential keeps those endpoints from
    /// being an oracle for anyone scanning for tokens.
    pub async fn authorize_reviewer(
        &self,
        presented: Result<&str, AuthError>,
        rpc: &'static str,
        source: Option<IpAddr>,
    ) -> Result<Authenticated, Error> {
        let caller = match self.authenticate_secret(presented).await {
            Ok(caller) => caller,
            Err(refused) => {
                self.refusals.record(Refusal {
                    rpc,
                    source,
                    reason: match &refused {
                        Error::Unauthenticated(why) => why.as_str(),
                        _ => "store_error",
                    },
                    outcome: refused.kind().as_str(),
                    detail: &refused,
                    caller: None,
                    role: None,
                });
                return Err(refused);
            }
        };
        self.require_role(&caller.token, &self.config.reviewer_role)?;
        Ok(caller)
    }

    /// The caller as an [`Admin`], if its credential is valid and holds the
    /// admin role; otherwise the refusal, with the caller when it is known.
    /// A previous secret still in its grace period is refused here, as the
    /// credential of any management call: it keeps passing checks, but
    /// whoever holds only the old secret must not be able to rotate the
    /// new one away, re-enable, or create.
    async fn authorize_admin(
        &self,
        presented: Result<&str, AuthError>,
    ) -> Result<Admin, (Option<ServiceToken>, Error)> {
        let Authenticated {
            token: caller,
            secret,
        } = self
            .authenticate_secret(presented)
            .await
            .map_err(|e| (None, e))?;
        if secret == Secret::Previous {
            return Err((Some(caller), AuthError::RotatedOut.into()));
        }
        if !caller.roles.contains(&self.config.admin_role) {
            let refused = Error::PermissionDenied(self.config.admin_role.clone());
            return Err((Some(caller), refused));
        }
        Ok(Admin(caller))
    }

    /// Creates a token from `new`; see [`TokenService::to_completion`].
    pub async fn create(
        self: &Arc<Self>,
        admin: &Admin,
        new: NewToken,
    ) -> Result<(Token, ServiceToken), Error> {
        let (this, admin) = (self.clone(), admin.clone());
        to_completion(async move { this.create_now(&admin, new).await }).await
    }

    async fn create_now(
        &self,
        admin: &Admin,
        mut new: NewToken,
    ) -> Result<(Token, ServiceToken), Error> {
        let caller = admin.token();
        new.created_by = format!("{} ({})", caller.id, caller.name);
        let now = self.clock.now();
        if new.expiration.is_none()
            && let Some(lifetime) = self.config.lifetime.default_lifetime()
        {
            new.expiration = now.checked_add(lifetime);
        }
        self.within_policy(new.expiration, now)?;
        let event = self.draft(|| Draft::created(Actor::of(caller), now)).await;
        let (token, created) = issue(&*self.store, &*self.clock, new, draft_of(&event)).await?;
        self.wrote(event);
        audit_created(Rpc::Create.as_str(), Some(caller), &created);
        Ok((token, created))
    }

    pub async fn get(&self, _admin: &Admin, id: TokenId) -> Result<ServiceToken, Error> {
        match self.store.get(id).await? {
            Some(stored) => Ok(stored.token.seen_at(self.clock.now())),
            None => Err(Error::NotFound(id)),
        }
    }

    pub async fn list(
        &self,
        _admin: &Admin,
        page: PageRequest,
        filter: &ListFilter,
    ) -> Result<Page, Error> {
        let now = self.clock.now();
        let resolved;
        let filter = if filter.over_policy {
            let max = self.config.lifetime.max().ok_or_else(|| {
                FieldError::new(
                    "over_policy",
                    "this server has no maximum token lifetime (--max-token-lifetime) to be over",
                )
            })?;
            resolved = ListFilter {
                // Beyond any time a clock can show: nothing is "after" it.
                expiring_after: Some(now.checked_add(max).unwrap_or(now)),
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
        let now = to_micros(self.clock.now());
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
        let caller = admin.token();
        tracing::info!(
            target: AUDIT,
            rpc,
            outcome = "OK",
            caller.id = caller.id.get(),
            caller.name = caller.name.as_str(),
            token.id = id.get(),
            token.name = after.name.as_str(),
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
    ) -> Result<(Token, ServiceToken), Error> {
        let (this, admin) = (self.clone(), admin.clone());
        to_completion(async move { this.rotate_now(&admin, id, grace).await }).await
    }

    async fn rotate_now(
        &self,
        admin: &Admin,
        id: TokenId,
        grace: Duration,
    ) -> Result<(Token, ServiceToken), Error> {
        let now = to_micros(self.clock.now());
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
        let token = Token::generate();
        let change = Change::Rotate {
            hash: token.hash(),
            previous_until,
        };
        let event = Draft::rotated(Actor::of(admin.token()), now);
        let (_, rotated) = self.change(admin, id, &change, now, None, event).await?;
        let caller = admin.token();
        tracing::info!(
            target: AUDIT,
            rpc = Rpc::Rotate.as_str(),
            outcome = "OK",
            caller.id = caller.id.get(),
            caller.name = caller.name.as_str(),
            token.id = id.get(),
            token.name = rotated.name.as_str(),
            grace_period = ?grace,
            previous_secret_expiration = rotated
                .previous_secret
                .map(|p| crate::clock::rfc3339_micros(p.expiration)),
            "service token rotated"
        );
        Ok((token, rotated))
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
    async fn change(
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
        self.wrote(event);
        Ok(changed)
    }

    /// The one way a token is deleted (by an admin, a purge, or its leaked
    /// secret): under `keep`, with its event, and gone from the cache
    /// before anyone hears of it.
    async fn remove(
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
            self.wrote(event);
        }
        Ok(deleted)
    }

    /// A change with `event` committed: it is pending now, and delivery
    /// can start on it.
    fn wrote(&self, event: Option<Drafted<'_>>) {
        if let Some(mut event) = event {
            event.written = true;
            drop(event);
            self.outbox.written.notify_one();
        }
    }

    fn keep_admin(&self, now: SystemTime) -> KeepAdmin {
        KeepAdmin {
            role: self.config.admin_role.clone(),
            now,
            margin: self.config.admin_keep_margin,
            waived: false,
        }
    }

    fn outcome<T>(&self, id: TokenId, outcome: Outcome<T>) -> Result<T, Error> {
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

    /// Revokes each token whose secret is in `secrets` (current, or
    /// previous in its grace period), whatever its state, the last admin
    /// token included: holding a secret is the right to revoke it, so no
    /// other credential is asked. Each revocation is audited with the
    /// caller's address; calls are rate-limited per address.
    pub async fn revoke_leaked(
        self: &Arc<Self>,
        secrets: &[String],
        source: Option<IpAddr>,
    ) -> Result<Vec<Revoked>, Error> {
        let (this, secrets) = (self.clone(), secrets.to_vec());
        to_completion(async move { this.revoke_leaked_now(&secrets, source).await }).await
    }

    async fn revoke_leaked_now(
        &self,
        secrets: &[String],
        source: Option<IpAddr>,
    ) -> Result<Vec<Revoked>, Error> {
        const RPC: &str = "RevokeLeaked";
        if let Err(retry_after) = self.revocations.check(source, std::time::Instant::now()) {
            self.metrics
                .management_call(RPC, ErrorKind::RateLimited.as_str());
            let limited = Error::RateLimited { retry_after };
            self.refusals.record(Refusal {
                rpc: RPC,
                source,
                reason: "rate_limited",
                outcome: limited.kind().as_str(),
                detail: &limited,
                caller: None,
                role: None,
            });
            return Err(limited);
        }
        if secrets.is_empty() || secrets.len() > MAX_REVOKED_PER_CALL {
            return Err(FieldError::new(
                "tokens",
                format!("must hold 1 to {MAX_REVOKED_PER_CALL} tokens"),
            )
            .into());
        }
        let mut results = Vec::with_capacity(secrets.len());
        for secret in secrets {
            let revoked = self.revoke_one(secret, source).await?;
            // What revoked nothing is summarized (a scanner may send a
            // thousand stale tokens): the first in full, then counts.
            let missed = match revoked {
                Revoked::Revoked => None,
                Revoked::NotFound => {
                    Some(("not_found", "NOT_FOUND", "no live token has this secret"))
                }
                Revoked::Malformed => Some((
                    "malformed",
                    "INVALID_ARGUMENT",
                    "not a token: its checksum does not hold",
                )),
            };
            if let Some((reason, outcome, detail)) = missed {
                self.refusals.record(Refusal {
                    rpc: RPC,
                    source,
                    reason,
                    outcome,
                    detail: &detail,
                    caller: None,
                    role: None,
                });
            }
            results.push(revoked);
        }
        self.metrics.management_call(RPC, "OK");
        Ok(results)
    }

    async fn revoke_one(&self, secret: &str, source: Option<IpAddr>) -> Result<Revoked, Error> {
        let Ok(hash) = TokenHash::of_presented(secret) else {
            return Ok(Revoked::Malformed);
        };
        self.store_present()?;
        let Some(stored) = self.store.find_by_hash(&hash).await? else {
            return Ok(Revoked::NotFound);
        };
        let now = self.clock.now();
        if stored.live_secret_at(&hash, now).is_none() {
            return Ok(Revoked::NotFound);
        }
        let id = stored.token.id;
        let keep = KeepAdmin {
            waived: true,
            ..self.keep_admin(now)
        };
        let deleted = self
            .remove(id, &keep, None, || Draft::leaked(source, now))
            .await?;
        if deleted != Outcome::Done(()) {
            return Ok(Revoked::NotFound);
        }
        tracing::warn!(
            target: AUDIT,
            rpc = "RevokeLeaked",
            outcome = "OK",
            token.id = id.get(),
            token.name = stored.token.name.as_str(),
            source = source.map(tracing::field::display),
            "leaked service token revoked"
        );
        // The lockout rule was waived: say how to get admin access back.
        if stored.token.roles.contains(&self.config.admin_role) {
            tracing::warn!(
                target: AUDIT,
                rpc = "RevokeLeaked",
                token.id = id.get(),
                role = self.config.admin_role.as_str(),
                "the revoked leaked token held the admin role; if no other admin token is left, create one with `sts-server bootstrap`"
            );
        }
        Ok(Revoked::Revoked)
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
        let now = self.clock.now();
        let event = || Draft::deleted(Actor::of(admin.token()), now);
        let keep = self.keep_admin(now);
        let deleted = self.remove(id, &keep, expected.as_ref(), event).await?;
        self.outcome(id, deleted)?;
        tracing::info!(
            target: AUDIT,
            rpc = Rpc::Delete.as_str(),
            outcome = "OK",
            caller.id = admin.token().id.get(),
            caller.name = admin.token().name.as_str(),
            token.id = id.get(),
            "service token deleted"
        );
        Ok(())
    }

    /// Whether the store can serve now; readiness follows it.
    pub async fn store_ready(&self) -> Result<(), StoreError> {
        self.store.ready().await
    }

    /// How the store's feed of other replicas' changes is doing, if it
    /// has one (`live`, `silent`).
    pub fn change_feed(&self) -> Option<&'static str> {
        self.store.change_feed()
    }

    /// What the last store check found; see `store_away`. `failure`, when
    /// the check failed with an error (not a timeout), is kept as the
    /// store's last failure.
    pub fn set_store_reachable(&self, reachable: bool, failure: Option<&StoreError>) {
        self.store_away.store(!reachable, Ordering::Relaxed);
        if let Some(failure) = failure {
            self.failed(failure);
        }
    }

    /// Notes `failure` as the store's last.
    fn failed(&self, failure: &StoreError) {
        let text = crate::error::with_causes(failure);
        *self
            .last_store_failure
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(text);
    }

    /// UNAVAILABLE at once while the store is known to be away, saying
    /// (in the log, under the answer's incident id) its last failure.
    fn store_present(&self) -> Result<(), StoreError> {
        if !self.store_away.load(Ordering::Relaxed) {
            return Ok(());
        }
        let last = self
            .last_store_failure
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        Err(StoreError::Unavailable {
            context: format!(
                "the store failed its last health check (it is checked twice a second){}",
                last.map(|text| format!("; its last failure: {text}"))
                    .unwrap_or_default()
            ),
            source: None,
        })
    }

    /// Writes the last summary of refusals and flushes the store; called
    /// once no request is in flight any more.
    pub async fn shutdown(&self) -> Result<(), StoreError> {
        self.refusals.flush();
        if let Some(last_used) = &self.last_used {
            last_used.write().await;
        }
        self.store.flush().await
    }

    /// Writes the last-used times noted so far now, instead of at the end
    /// of the resolution window.
    pub async fn write_last_used(&self) {
        if let Some(last_used) = &self.last_used {
            last_used.write().await;
        }
    }
}

/// How long a metrics scrape waits for the store's token count.
const METRICS_COUNT_WAIT: std::time::Duration = std::time::Duration::from_millis(250);

/// Creates a token with no caller: the first admin token of a fresh install.
/// Takes the store itself, not a [`TokenService`]: only whoever opens the
/// store (the `bootstrap` command, tests) can call it, never a transport.
pub async fn bootstrap(
    store: &dyn Store,
    clock: &dyn Clock,
    mut new: NewToken,
) -> Result<(Token, ServiceToken), Error> {
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
) -> Result<(Token, ServiceToken), Error> {
    // Microseconds, the precision every backend keeps: a token reads the
    // same from any store and survives a move between them exactly.
    let now = to_micros(clock.now());
    new.expiration = new.expiration.map(to_micros);
    if new.expiration.is_some_and(|expiration| expiration <= now) {
        return Err(FieldError::new("expiration", "must be in the future").into());
    }
    let token = Token::generate();
    let created = store.insert(token.hash(), &new, now, event).await?;
    Ok((token, created))
}

/// Runs `unit`, a call that writes to the store and then writes the audit
/// line (and invalidates the cache) for what it wrote, on a task of its
/// own, and waits for it. A caller that goes away (its deadline passed, it
/// reset the stream) drops only this wait: the unit runs on, so a change
/// that committed is always audited, once, and never left in the cache.
/// A SIGKILL between the commit and the audit line can still split them.
async fn to_completion<T: Send + 'static>(
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
    tracing::info!(
        target: AUDIT,
        rpc,
        outcome = "OK",
        caller.id = caller.map(|c| c.id.get()),
        caller.name = caller.map(|c| c.name.as_str()),
        token.id = created.id.get(),
        token.name = created.name.as_str(),
        token.roles = %created.roles,
        "{message}"
    );
}
