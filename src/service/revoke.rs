//! Revoking leaked tokens by their secrets: no credential but the secrets
//! themselves, rate limited per source.

use std::{net::IpAddr, sync::Arc};

use crate::{
    audit::Refusal,
    error::{Error, ErrorKind},
    events::Draft,
    model::FieldError,
    store::{KeepAdmin, Outcome},
    token::TokenHash,
};

use super::{TokenService, Transport, to_completion};
use crate::audit::AUDIT;

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

impl TokenService {
    /// Revokes each token whose secret is in `secrets` (current, or
    /// previous in its grace period), whatever its state, the last admin
    /// token included: holding a secret is the right to revoke it, so no
    /// other credential is asked. Each revocation is audited with the
    /// caller's address; calls are rate-limited per address.
    pub async fn revoke_leaked(
        self: &Arc<Self>,
        transport: Transport,
        secrets: &[String],
        source: Option<IpAddr>,
    ) -> Result<Vec<Revoked>, Error> {
        let (this, secrets) = (self.clone(), secrets.to_vec());
        to_completion(async move { this.revoke_leaked_now(transport, &secrets, source).await })
            .await
    }

    async fn revoke_leaked_now(
        &self,
        transport: Transport,
        secrets: &[String],
        source: Option<IpAddr>,
    ) -> Result<Vec<Revoked>, Error> {
        const RPC: &str = "RevokeLeaked";
        if let Err(retry_after) = self.revocations.check(source, std::time::Instant::now()) {
            self.metrics.management_call(
                RPC,
                ErrorKind::RateLimited.as_str(),
                "anyone",
                transport.as_str(),
            );
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
        self.metrics
            .management_call(RPC, "OK", "anyone", transport.as_str());
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
        let now = self.now();
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
        crate::audit::done!(
            warn,
            "RevokeLeaked",
            None,
            id.get(),
            stored.token.name.as_str(),
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
}
