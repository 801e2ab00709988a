//! Checking a presented secret: `validate` (which secret, expiry,
//! disabled, bindings, then the rate limits; the use noted), and the
//! authorization every surface asks for (a required role, the reviewer
//! role, the admin role).

use std::{net::IpAddr, time::SystemTime};

use crate::{
    audit::{self, Refusal},
    credential::AuthError,
    error::Error,
    model::{
        BindingRefusal, Bindings, CheckContext, MatchedSecret, Outcome, Role, ServiceToken,
        StoredToken, TokenId,
    },
    rate_limit::{Charge, Quota, Spent, Surface},
    token::{MalformedToken, TokenHash},
};

use super::{Authority, CallerKind, Credential, TokenService};

/// The answer to "is this token valid?".
// Valid is the common answer on the hot path: boxing it to shrink the rare
// Invalid would cost an allocation per validation.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Validation {
    /// Valid, through its current secret or (during a rotation's grace
    /// period) its previous one; where its rate limits stand after this
    /// check (empty for a token without limits).
    Valid(ServiceToken, MatchedSecret, Quota),
    /// Valid in every other way, but a rate limit had no room for the
    /// check: nothing was spent.
    Limited(Quota),
    Invalid(InvalidReason),
}

impl Validation {
    /// The metrics label of this answer.
    pub fn outcome(&self) -> &'static str {
        match self {
            Validation::Valid(_, MatchedSecret::Current, _) => "valid",
            Validation::Valid(_, MatchedSecret::Previous, _) => "previous_secret",
            Validation::Limited(_) => "rate_limited",
            Validation::Invalid(InvalidReason::Malformed(_)) => "malformed",
            Validation::Invalid(InvalidReason::NotFound) => "not_found",
            Validation::Invalid(InvalidReason::Expired) => "expired",
            Validation::Invalid(InvalidReason::Disabled) => "disabled",
            Validation::Invalid(InvalidReason::NotAllowed(refusal)) => refusal.as_str(),
        }
    }
}

/// A valid caller: its token, which secret it presented, and where its
/// rate limits stand after this check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authenticated {
    pub token: ServiceToken,
    pub secret: MatchedSecret,
    pub quota: Quota,
}

/// A token that passed every check but the rate limits, not yet charged.
pub(super) struct Passed {
    pub(super) stored: StoredToken,
    secret: MatchedSecret,
    now: SystemTime,
    source: Option<IpAddr>,
}

/// Proof that a caller may review other tokens (it holds the reviewer
/// role): what [`TokenService::review`] asks for, so no surface can answer
/// about a token without checking its caller first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reviewer(Authenticated);

impl Reviewer {
    /// The reviewer itself.
    pub fn caller(&self) -> &Authenticated {
        &self.0
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InvalidReason {
    Malformed(MalformedToken),
    /// Never created, deleted, or a rotated-out secret past its grace period.
    NotFound,
    Expired,
    Disabled,
    /// Valid, but not where it is bound to be used.
    NotAllowed(BindingRefusal),
}

impl From<InvalidReason> for Error {
    /// A credential that is not a token's is unauthenticated; a token used
    /// outside its bindings is a known caller refused (permission denied).
    fn from(reason: InvalidReason) -> Error {
        match reason {
            InvalidReason::Malformed(why) => AuthError::Malformed(why).into(),
            InvalidReason::NotFound => AuthError::NotFound.into(),
            InvalidReason::Expired => AuthError::Expired.into(),
            InvalidReason::Disabled => AuthError::Disabled.into(),
            InvalidReason::NotAllowed(refusal) => Error::NotAllowed(refusal),
        }
    }
}

/// A validation as the caller it authenticates, or why it does not.
fn authenticated(validation: Validation) -> Result<Authenticated, Error> {
    match validation {
        Validation::Valid(token, secret, quota) => Ok(Authenticated {
            token,
            secret,
            quota,
        }),
        Validation::Limited(quota) => Err(Error::OverLimit(Box::new(quota))),
        Validation::Invalid(reason) => Err(reason.into()),
    }
}

/// What a review (Kubernetes TokenReview, OAuth 2.0 introspection) knows
/// of where the token under review is used: never its source or route, so
/// a token bound to either is refused; the audiences a TokenReview names.
#[derive(Debug, Clone, Copy)]
pub enum ReviewFor<'r> {
    /// Kubernetes: the audiences the API server accepts (`spec.audiences`);
    /// an audience-bound token must share one, and names none to refuse.
    Audiences(&'r [String]),
    /// OAuth 2.0 introspection: the resource server checks `aud` itself.
    AnyAudience,
}

impl ReviewFor<'_> {
    fn surface(self) -> Surface {
        match self {
            ReviewFor::Audiences(_) => Surface::TokenReview,
            ReviewFor::AnyAudience => Surface::Introspection,
        }
    }

    fn admits(self, bindings: &Bindings) -> Result<(), BindingRefusal> {
        if !bindings.sources.is_empty() {
            return Err(BindingRefusal::SourceNotAllowed);
        }
        if !bindings.routes.is_empty() {
            return Err(BindingRefusal::RouteNotAllowed);
        }
        match self {
            ReviewFor::Audiences(asked) => {
                let shared = bindings.audiences.is_empty()
                    || asked.iter().any(|a| bindings.audiences.allows(a));
                if shared {
                    Ok(())
                } else {
                    Err(BindingRefusal::AudienceNotAllowed)
                }
            }
            ReviewFor::AnyAudience => Ok(()),
        }
    }
}

impl TokenService {
    /// The one validation path: parse (checksum, no store access), hash, one
    /// lookup, which secret, expiry, disabled. An invalid token is an
    /// answer; only a store failure is an error, so a token that cannot be
    /// checked is never called valid. A valid one has its use noted.
    pub async fn validate(
        &self,
        presented: &str,
        context: &CheckContext<'_>,
    ) -> Result<Validation, Error> {
        self.validate_charged(presented, context, Charge::one(Surface::Validate))
            .await
    }

    /// As [`TokenService::validate`], spending `charge` from the token's
    /// rate limits (gRPC's `cost`).
    pub async fn validate_charged(
        &self,
        presented: &str,
        context: &CheckContext<'_>,
        charge: Charge,
    ) -> Result<Validation, Error> {
        let check = self.check(presented, context.source, |bindings| {
            bindings.admits(context)
        });
        let validation = match check.await {
            Ok(Ok(passed)) => self.settle(passed, charge).await,
            Ok(Err(reason)) => Ok(Validation::Invalid(reason)),
            Err(e) => Err(e),
        };
        self.counted(validation)
    }

    fn counted(&self, validation: Result<Validation, Error>) -> Result<Validation, Error> {
        let outcome = validation.as_ref().map_or("error", Validation::outcome);
        self.metrics.validation(outcome);
        validation
    }

    /// Every check but the rate limits, which come last (`settle`), after
    /// whatever a surface adds (a required role): a check refused for any
    /// other reason spends nothing. `admit` decides a bound token's
    /// bindings: each surface knows its own context. A token without
    /// bindings never calls it, so the unbound check pays one test.
    async fn check(
        &self,
        presented: &str,
        source: Option<IpAddr>,
        admit: impl FnOnce(&Bindings) -> Result<(), BindingRefusal>,
    ) -> Result<Result<Passed, InvalidReason>, Error> {
        let hash = match TokenHash::of_presented(presented) {
            Ok(hash) => hash,
            Err(why) => return Ok(Err(InvalidReason::Malformed(why))),
        };
        self.check_hash(&hash, source, admit).await
    }

    /// [`TokenService::check`] of a secret known by its hash: how a
    /// long-lived call checks its caller again without keeping the secret.
    pub(super) async fn check_hash(
        &self,
        hash: &TokenHash,
        source: Option<IpAddr>,
        admit: impl FnOnce(&Bindings) -> Result<(), BindingRefusal>,
    ) -> Result<Result<Passed, InvalidReason>, Error> {
        let hash = *hash;
        let Some(stored) = self.lookup(&hash).await? else {
            return Ok(Err(InvalidReason::NotFound));
        };
        // The clock as it is: a check writes no time (a use is cut to the
        // store's precision where it is recorded, in `last_used`), so the
        // hot path pays no truncation.
        let now = self.clock.now();
        let Some(secret) = stored.live_secret_at(&hash, now) else {
            // A secret this token had: retired, or past its grace.
            self.reuse_detected(&stored, source, now).await;
            return Ok(Err(InvalidReason::NotFound));
        };
        if stored.token.is_expired_at(now) {
            self.count(stored.token.id, Outcome::Expired);
            return Ok(Err(InvalidReason::Expired));
        }
        if stored.token.disabled {
            self.count(stored.token.id, Outcome::Disabled);
            return Ok(Err(InvalidReason::Disabled));
        }
        let bindings = &stored.token.bindings;
        if !bindings.is_empty()
            && let Err(refusal) = admit(bindings)
        {
            self.count(
                stored.token.id,
                match refusal {
                    BindingRefusal::SourceNotAllowed => Outcome::SourceNotAllowed,
                    BindingRefusal::AudienceNotAllowed => Outcome::AudienceNotAllowed,
                    BindingRefusal::RouteNotAllowed => Outcome::RouteNotAllowed,
                },
            );
            return Ok(Err(InvalidReason::NotAllowed(refusal)));
        }
        Ok(Ok(Passed {
            stored,
            secret,
            now,
            source,
        }))
    }

    /// The last step of a check that passed the rest: `charge` spent from
    /// the token's rate limits, all or nothing, and, when that passed, the
    /// use noted. A token without limits, or an exempt charge, never
    /// reaches the limiter.
    async fn settle(&self, passed: Passed, charge: Charge) -> Result<Validation, Error> {
        let Passed {
            stored,
            secret,
            now,
            source,
        } = passed;
        let token = stored.token;
        let quota = match charge {
            Charge::Spend { cost, surface } if !token.rate_limits.is_empty() => {
                let now_ms = u64::try_from(crate::clock::epoch_millis(now)).unwrap_or(0);
                let spent = self
                    .limiter
                    .spend(token.id, &token.rate_limits, cost, now_ms)
                    .await;
                let quota = match spent {
                    Spent::Counted(quota) => quota,
                    Spent::Alone(quota) => {
                        self.metrics.rate_limit_store_error("open");
                        quota
                    }
                    Spent::Unavailable => {
                        self.metrics.rate_limit_store_error("closed");
                        return Err(Error::LimiterUnavailable);
                    }
                };
                if !quota.allowed() {
                    self.metrics.rate_limited(surface.as_str());
                    self.count(token.id, Outcome::RateLimited);
                    return Ok(Validation::Limited(quota));
                }
                quota
            }
            Charge::Spend { .. } | Charge::Exempt => Quota::default(),
        };
        if let Some(last_used) = &self.last_used {
            let source = source.filter(|_| self.config.record_sources);
            last_used.note(token.id, secret, now, source);
        }
        Ok(Validation::Valid(token.seen_at(now), secret, quota))
    }

    /// A refused check of token `id`, for its usage (off with last-used
    /// tracking).
    fn count(&self, id: TokenId, outcome: Outcome) {
        if let Some(last_used) = &self.last_used {
            last_used.count(id, outcome);
        }
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
        context: &CheckContext<'_>,
        charge: Charge,
    ) -> Result<ServiceToken, Error> {
        Ok(self
            .authenticate_secret(presented, context, charge)
            .await?
            .token)
    }

    /// As [`TokenService::authenticate`], saying which secret was used
    /// (forward-auth tells the proxy when it was a rotated-out one) and
    /// where its limits stand. A check the limits refuse is
    /// [`Error::OverLimit`].
    pub async fn authenticate_secret(
        &self,
        presented: Result<&str, AuthError>,
        context: &CheckContext<'_>,
        charge: Charge,
    ) -> Result<Authenticated, Error> {
        authenticated(self.validate_charged(presented?, context, charge).await?)
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
            caller: Some(audit::RefusedCaller {
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
    /// The roles come before the rate limits: a check refused for a role
    /// spends nothing (its use is still noted: the token was valid).
    pub async fn authorize(
        &self,
        presented: Result<&str, AuthError>,
        required: &[Role],
        context: &CheckContext<'_>,
        surface: Surface,
    ) -> Result<Authenticated, Error> {
        let check = self.check(presented?, context.source, |bindings| {
            bindings.admits(context)
        });
        let passed = match check.await {
            Ok(Ok(passed)) => passed,
            Ok(Err(reason)) => {
                return self
                    .counted(Ok(Validation::Invalid(reason)))
                    .and_then(authenticated);
            }
            Err(e) => return self.counted(Err(e)).and_then(authenticated),
        };
        for role in required {
            if let Err(refused) = self.require_role(&passed.stored.token, role) {
                // A valid token, refused: no use to note, nothing spent.
                self.metrics.validation(match passed.secret {
                    MatchedSecret::Current => "valid",
                    MatchedSecret::Previous => "previous_secret",
                });
                self.count(passed.stored.token.id, Outcome::MissingRole);
                return Err(refused);
            }
        }
        let validation = self.settle(passed, Charge::one(surface)).await;
        authenticated(self.counted(validation)?)
    }

    /// The caller, if its credential is valid and holds the reviewer role:
    /// who may ask about other tokens (Kubernetes TokenReview, OAuth 2.0
    /// introspection). Requiring a credential keeps those endpoints from
    /// being an oracle for anyone scanning for tokens.
    pub async fn authorize_reviewer(
        &self,
        presented: Result<&str, AuthError>,
        rpc: &'static str,
        context: &CheckContext<'_>,
    ) -> Result<Reviewer, Error> {
        let role = &self.config.reviewer_role;
        Ok(Reviewer(
            self.authorize_for(presented, rpc, context, role).await?,
        ))
    }

    /// The caller, if its credential is valid (spending nothing from its
    /// limits) and its token holds `role`; a refused credential audited
    /// through the summarizer. What the check-side calls that need a
    /// credential of their own ask (reviewing, watching).
    pub(super) async fn authorize_for(
        &self,
        presented: Result<&str, AuthError>,
        rpc: &'static str,
        context: &CheckContext<'_>,
        role: &Role,
    ) -> Result<Authenticated, Error> {
        let source = context.source;
        let caller = match self
            .authenticate_secret(presented, context, Charge::Exempt)
            .await
        {
            Ok(caller) => caller,
            Err(refused) => {
                self.refusals.record(Refusal {
                    rpc,
                    source,
                    reason: match &refused {
                        Error::Unauthenticated(why) => why.as_str(),
                        Error::NotAllowed(refusal) => refusal.as_str(),
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
        self.require_role(&caller.token, role)?;
        Ok(caller)
    }

    /// What a reviewer learns of `secret` (Kubernetes TokenReview, OAuth 2.0
    /// introspection): the answer `Validate` gives, asked only with the
    /// proof that the caller may ask. The one place every rule a review
    /// applies to the token under review (and never to the reviewer's own
    /// credential) is added.
    pub async fn review(
        &self,
        _reviewer: &Reviewer,
        secret: &str,
        review: ReviewFor<'_>,
    ) -> Result<Validation, Error> {
        // The source of a review is the reviewer's, not the token's.
        let check = self.check(secret, None, |bindings| review.admits(bindings));
        let validation = match check.await {
            Ok(Ok(passed)) => self.settle(passed, Charge::one(review.surface())).await,
            Ok(Err(reason)) => Ok(Validation::Invalid(reason)),
            Err(e) => Err(e),
        };
        self.counted(validation)
    }

    /// The caller as an [`Authority`], if its credential is valid and holds
    /// the admin role or the manager role (a manager with its owners that
    /// still exist, whose expirations bound what it makes); otherwise the
    /// refusal, with the caller when it is known.
    /// A previous secret still in its grace period is refused here, as the
    /// credential of any management call: it keeps passing checks, but
    /// whoever holds only the old secret must not be able to rotate the
    /// new one away, re-enable, or create.
    ///
    /// Management is checked from the caller's source alone: it names no
    /// audience and no route of another service, so a token bound to
    /// audiences or routes (made for the services behind a proxy) cannot
    /// manage, and a source-bound one only from its sources.
    pub(super) async fn authorize_manager(
        &self,
        credential: Credential<'_>,
        source: Option<IpAddr>,
    ) -> Result<Authority, (Option<ServiceToken>, Error)> {
        let caller = self.current_secret(credential, source).await?;
        if caller.roles.contains(&self.config.admin_role) {
            return Ok(Authority {
                caller,
                kind: CallerKind::Admin,
                above: Vec::new(),
            });
        }
        if !caller.roles.contains(&self.config.manager_role) {
            let refused = Error::PermissionDenied(self.config.admin_role.clone());
            return Err((Some(caller), refused));
        }
        let mut above = Vec::with_capacity(caller.owners.ids().len());
        for owner in caller.owners.ids() {
            match self.store.get(*owner).await {
                Ok(Some(stored)) => above.push(stored.token),
                // Deleted: the managers above it still bound the caller.
                Ok(None) => {}
                Err(e) => return Err((Some(caller), e.into())),
            }
        }
        Ok(Authority {
            caller,
            kind: CallerKind::Manager,
            above,
        })
    }

    /// The caller's token, if `credential` is its current secret, valid
    /// from `source`: what every management call and a self-rotation are
    /// made with. A previous secret in its grace is refused (UNAUTHENTICATED).
    pub(super) async fn current_secret(
        &self,
        credential: Credential<'_>,
        source: Option<IpAddr>,
    ) -> Result<ServiceToken, (Option<ServiceToken>, Error)> {
        let context = CheckContext {
            source,
            ..CheckContext::default()
        };
        let authenticated = match credential {
            Credential::Presented(presented) => {
                self.authenticate_secret(presented, &context, Charge::Exempt)
                    .await
            }
            Credential::Session(hash) => {
                let check = self.check_hash(hash, source, |bindings| bindings.admits(&context));
                let validation = match check.await {
                    Ok(Ok(passed)) => self.settle(passed, Charge::Exempt).await,
                    Ok(Err(reason)) => Ok(Validation::Invalid(reason)),
                    Err(e) => Err(e),
                };
                self.counted(validation).and_then(authenticated)
            }
        };
        let Authenticated {
            token: caller,
            secret,
            quota: _,
        } = authenticated.map_err(|e| (None, e))?;
        if secret == MatchedSecret::Previous {
            return Err((Some(caller), AuthError::RotatedOut.into()));
        }
        Ok(caller)
    }

    /// The audit event of a refused management call, through the
    /// summarizer (`audit::Refusals`): the first of its kind in full, the
    /// rest counted, whether or not the caller is known.
    pub(super) fn audit_refusal(&self, refusal: Refusal<'_>, caller: Option<&ServiceToken>) {
        let caller = caller.map(|c| audit::RefusedCaller {
            id: c.id.get(),
            name: c.name.as_str(),
        });
        self.refusals.record(Refusal { caller, ..refusal });
    }
}
