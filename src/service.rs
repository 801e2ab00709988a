//! The token service itself, independent of any transport: validation,
//! admin authorization, and the management operations. gRPC (and any other
//! front end) translates into these calls; none re-implements them.

use std::{
    future::Future,
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use crate::{
    cache::ValidationCache,
    clock::Clock,
    config::Config,
    credential::AuthError,
    error::Error,
    metrics::{Metrics, Rpc},
    model::{FieldError, NewToken, ServiceToken, TokenId},
    page::{PageRequest, encode_cursor},
    store::{Store, StoredToken},
    token::{MalformedToken, Token, TokenHash},
};

/// The tracing target of audit events: every Create and Delete, and every
/// refused or failed management call, with who made it. Never a secret.
pub const AUDIT: &str = "sts::audit";

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
    config: Config,
    metrics: Metrics,
}

impl TokenService {
    pub fn new(store: Arc<dyn Store>, clock: Arc<dyn Clock>, config: Config) -> TokenService {
        TokenService {
            metrics: Metrics::with(|registry| store.register_metrics(registry)),
            cache: store.validation_cache(),
            store,
            clock,
            config,
        }
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The metrics exposition, with the current token count.
    pub async fn render_metrics(&self) -> Result<String, Error> {
        Ok(self.metrics.render(self.store.count().await?))
    }

    /// Runs one whole management call: checks that the caller holds the
    /// admin role, runs `call` with the proof, counts the outcome, and writes
    /// the audit event of a refused or failed call. Every transport runs its
    /// Create, List and Delete through this; successes are audited by
    /// `create` and `delete`, which know what they changed.
    pub async fn manage<T, Fut>(
        &self,
        rpc: Rpc,
        presented: Result<&str, AuthError>,
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
            let caller = caller.as_ref();
            tracing::warn!(
                target: AUDIT,
                rpc = rpc.as_str(),
                outcome = error.kind().as_str(),
                caller.id = caller.map(|c| c.id.get()),
                caller.name = caller.map(|c| c.name.as_str()),
                reason = %error,
                "management call refused"
            );
        }
        self.metrics.management_call(rpc, &result);
        result
    }

    /// The one validation path: parse (checksum, no store access), hash, one
    /// lookup, expiry. An invalid token is an answer; only a store failure is
    /// an error, so a token that cannot be checked is never called valid.
    pub async fn validate(&self, presented: &str) -> Result<Validation, Error> {
        let validation = self.check(presented).await;
        self.metrics.validation(&validation);
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
        let (token, created) = self.insert(new).await?;
        tracing::info!(
            target: AUDIT,
            rpc = Rpc::Create.as_str(),
            outcome = "OK",
            caller.id = admin.0.id.get(),
            caller.name = admin.0.name.as_str(),
            token.id = created.id.get(),
            token.name = created.name.as_str(),
            token.roles = %created.roles,
            "service token created"
        );
        Ok((token, created))
    }

    /// Creates a token with no caller: the first admin token of a fresh
    /// install. Only reachable by whoever can open the data directory.
    pub async fn bootstrap(&self, new: NewToken) -> Result<(Token, ServiceToken), Error> {
        let (token, created) = self.insert(new).await?;
        tracing::info!(
            target: AUDIT,
            rpc = "bootstrap",
            outcome = "OK",
            token.id = created.id.get(),
            token.name = created.name.as_str(),
            token.roles = %created.roles,
            "bootstrap token created"
        );
        Ok((token, created))
    }

    async fn insert(&self, mut new: NewToken) -> Result<(Token, ServiceToken), Error> {
        // Microseconds, the precision every backend keeps: a token reads
        // the same from any store and survives a move between them exactly.
        let now = to_micros(self.clock.now());
        new.expiration = new.expiration.map(to_micros);
        if new.expiration.is_some_and(|expiration| expiration <= now) {
            return Err(FieldError::new("expiration", "must be in the future").into());
        }
        let token = Token::generate();
        let created = self.store.insert(token.hash(), &new, now).await?;
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
            caller.id = admin.0.id.get(),
            caller.name = admin.0.name.as_str(),
            token.id = id.get(),
            "service token deleted"
        );
        Ok(())
    }

    /// Whether the store can serve now; readiness follows it.
    pub async fn store_ready(&self) -> Result<(), Error> {
        Ok(self.store.ready().await?)
    }

    /// Flushes the store; called once no request is in flight any more.
    pub async fn shutdown(&self) -> Result<(), Error> {
        self.store.flush().await?;
        Ok(())
    }
}
