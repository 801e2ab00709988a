//! The token service itself, independent of any transport: validation,
//! authorization (the admin role, a required role), and the management
//! operations. gRPC and HTTP translate into these calls; none re-implements
//! them. Tokens are minted in two places only: [`TokenService::create`],
//! which takes an [`Admin`] proof, and [`bootstrap`], which takes the store
//! itself, which no transport holds.

use std::{
    future::Future,
    net::IpAddr,
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use crate::{
    audit::{Refusal, Refusals},
    cache::ValidationCache,
    clock::Clock,
    config::ServiceConfig,
    credential::AuthError,
    error::Error,
    metrics::Metrics,
    model::{FieldError, NewToken, Role, ServiceToken, StoredToken, TokenId},
    page::{PageRequest, encode_cursor},
    store::{Store, StoreError},
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
}

impl Rpc {
    pub fn as_str(self) -> &'static str {
        match self {
            Rpc::Create => "Create",
            Rpc::List => "List",
            Rpc::Delete => "Delete",
        }
    }
}

/// `time` with the sub-microsecond part dropped.
fn to_micros(time: SystemTime) -> SystemTime {
    match time.duration_since(UNIX_EPOCH) {
        Ok(since) => UNIX_EPOCH + Duration::from_micros(since.as_micros() as u64),
        // Before 1970: never a token's time (creation is now, expiry ahead).
        Err(_) => time,
    }
}

/// The answer to "is this token valid?".
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Validation {
    Valid(ServiceToken),
    Invalid(InvalidReason),
}

impl Validation {
    /// The metrics label of this answer.
    pub fn outcome(&self) -> &'static str {
        match self {
            Validation::Valid(_) => "valid",
            Validation::Invalid(InvalidReason::Malformed(_)) => "malformed",
            Validation::Invalid(InvalidReason::NotFound) => "not_found",
            Validation::Invalid(InvalidReason::Expired) => "expired",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InvalidReason {
    Malformed(MalformedToken),
    NotFound,
    Expired,
}

impl From<InvalidReason> for AuthError {
    fn from(reason: InvalidReason) -> AuthError {
        match reason {
            InvalidReason::Malformed(why) => AuthError::Malformed(why),
            InvalidReason::NotFound => AuthError::NotFound,
            InvalidReason::Expired => AuthError::Expired,
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
}

impl TokenService {
    pub fn new(
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        config: ServiceConfig,
    ) -> TokenService {
        TokenService {
            metrics: Arc::new(Metrics::with(|registry| store.register_metrics(registry))),
            cache: store.validation_cache(),
            refusals: Refusals::new(config.refusal_summary_interval),
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

    /// The metrics exposition, with the current token count.
    pub async fn render_metrics(&self) -> Result<String, Error> {
        Ok(self.metrics.render(self.store.count().await?))
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
                    Error::Store(_) => "store_error",
                    _ => "other",
                },
                outcome: error.kind().as_str(),
                detail: error,
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
        };
        self.audit_refusal(refusal, caller.as_ref());
    }

    /// The audit event of a refused management call: its own event when
    /// the caller is known (they cannot multiply themselves at will),
    /// aggregated with the others' otherwise.
    fn audit_refusal(&self, refusal: Refusal<'_>, caller: Option<&ServiceToken>) {
        let Some(caller) = caller else {
            return self.refusals.record(refusal);
        };
        tracing::warn!(
            target: AUDIT,
            rpc = refusal.rpc,
            outcome = refusal.outcome,
            caller.id = caller.id.get(),
            caller.name = caller.name.as_str(),
            source = refusal.source.map(tracing::field::display),
            reason = %refusal.detail,
            "management call refused"
        );
    }

    /// The one validation path: parse (checksum, no store access), hash, one
    /// lookup, expiry. An invalid token is an answer; only a store failure is
    /// an error, so a token that cannot be checked is never called valid.
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
        if stored.token.is_expired_at(self.clock.now()) {
            return Ok(Validation::Invalid(InvalidReason::Expired));
        }
        Ok(Validation::Valid(stored.token))
    }

    /// The token stored under `hash`: from the cache, else from the store
    /// (and then cached, unless a delete raced the lookup).
    async fn lookup(&self, hash: &TokenHash) -> Result<Option<StoredToken>, Error> {
        if let Some(stored) = self.cache.get(hash) {
            self.metrics.cache_lookup(true);
            return Ok(Some(stored));
        }
        self.metrics.cache_lookup(false);
        let ticket = self.cache.ticket();
        let found = self.store.find_by_hash(hash).await?;
        if let Some(stored) = &found {
            self.cache.fill(ticket, stored);
        }
        Ok(found)
    }

    /// The caller's token, if the presented credential is a valid one.
    pub async fn authenticate(
        &self,
        presented: Result<&str, AuthError>,
    ) -> Result<ServiceToken, Error> {
        match self.validate(presented?).await? {
            Validation::Valid(token) => Ok(token),
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
        tracing::warn!(
            target: AUDIT,
            rpc = "RoleCheck",
            outcome = refused.kind().as_str(),
            caller.id = caller.id.get(),
            caller.name = caller.name.as_str(),
            role = required.as_str(),
            reason = %refused,
            "role check refused"
        );
        Err(refused)
    }

    /// The caller as an [`Admin`], if its credential is valid and holds the
    /// admin role; otherwise the refusal, with the caller when it is known.
    async fn authorize_admin(
        &self,
        presented: Result<&str, AuthError>,
    ) -> Result<Admin, (Option<ServiceToken>, Error)> {
        let caller = self.authenticate(presented).await.map_err(|e| (None, e))?;
        if !caller.roles.contains(&self.config.admin_role) {
            let refused = Error::PermissionDenied(self.config.admin_role.clone());
            return Err((Some(caller), refused));
        }
        Ok(Admin(caller))
    }

    pub async fn create(
        &self,
        admin: &Admin,
        new: NewToken,
    ) -> Result<(Token, ServiceToken), Error> {
        let (token, created) = issue(&*self.store, &*self.clock, new).await?;
        audit_created(Rpc::Create.as_str(), Some(admin.token()), &created);
        Ok((token, created))
    }

    pub async fn list(&self, _admin: &Admin, page: PageRequest) -> Result<Page, Error> {
        // One extra row tells whether another page follows without a second query.
        let mut tokens = self.store.list(page.after, page.size + 1).await?;
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

    pub async fn delete(&self, admin: &Admin, id: TokenId) -> Result<(), Error> {
        let deleted = self.store.delete(id).await;
        // Before the answer: once acknowledged, no lookup may find it.
        self.cache.invalidate(id);
        if !deleted? {
            return Err(Error::NotFound(id));
        }
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

    /// Writes the last summary of refusals and flushes the store; called
    /// once no request is in flight any more.
    pub async fn shutdown(&self) -> Result<(), StoreError> {
        self.refusals.flush();
        self.store.flush().await
    }
}

/// Creates a token with no caller: the first admin token of a fresh install.
/// Takes the store itself, not a [`TokenService`]: only whoever opens the
/// store (the `bootstrap` command, tests) can call it, never a transport.
pub async fn bootstrap(
    store: &dyn Store,
    clock: &dyn Clock,
    new: NewToken,
) -> Result<(Token, ServiceToken), Error> {
    let (token, created) = issue(store, clock, new).await?;
    audit_created("bootstrap", None, &created);
    Ok((token, created))
}

/// Mints a secret for `new` and stores its hash: what `create` and
/// `bootstrap` share.
async fn issue(
    store: &dyn Store,
    clock: &dyn Clock,
    mut new: NewToken,
) -> Result<(Token, ServiceToken), Error> {
    // Microseconds, the precision every backend keeps: a token reads the
    // same from any store and survives a move between them exactly.
    let now = to_micros(clock.now());
    new.expiration = new.expiration.map(to_micros);
    if new.expiration.is_some_and(|expiration| expiration <= now) {
        return Err(FieldError::new("expiration", "must be in the future").into());
    }
    let token = Token::generate();
    let created = store.insert(token.hash(), &new, now).await?;
    Ok((token, created))
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
