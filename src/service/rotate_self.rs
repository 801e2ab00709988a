//! A token rotating itself with its own current secret (`RotateSelf`):
//! renewed within policy and within its owners, one winner of two at once,
//! and never while a previous secret is still live.

use std::{
    future::Future,
    net::IpAddr,
    sync::Arc,
    time::{Duration, SystemTime},
};

use crate::{
    clock::to_micros,
    credential::AuthError,
    error::Error,
    events::{Actor, Draft},
    model::{Change, FieldError, ServiceToken},
    token::{Secret, TokenHash},
};

use super::delegation::{CallerKind, Renewal, RenewalRefusal, renewal};
use super::manage::{NO_CALLER, to_completion};
use super::{Credential, Rpc, TokenService, Transport};

impl TokenService {
    /// A new secret for the token whose current secret is `presented`:
    /// the current one keeps working for `grace` (never past the new
    /// expiration), and the new one expires at `expiration` when given,
    /// else the token's lifetime from now, within every bound (see
    /// [`super::delegation::renewal`]). `request` gives those two, and is
    /// read only once the credential passed (a body is never read for
    /// someone without one). Counted and audited as every management call,
    /// under the caller kind `self`.
    pub async fn rotate_self(
        self: &Arc<Self>,
        transport: Transport,
        presented: Result<&str, AuthError>,
        source: Option<IpAddr>,
        request: impl Future<Output = Result<(Duration, Option<SystemTime>), Error>>,
    ) -> Result<(Secret, ServiceToken), Error> {
        let credential = Credential::Presented(presented);
        let (caller, result) = match self.current_secret(credential, source).await {
            Err((caller, refused)) => (caller, Err(refused)),
            Ok(caller) => {
                // Presented is the caller's current secret: it parsed.
                let hash = presented.map(TokenHash::of_presented);
                let result = match (hash, request.await) {
                    (_, Err(invalid)) => Err(invalid),
                    (Ok(Ok(hash)), Ok((grace, expiration))) => {
                        let (this, token) = (self.clone(), caller.clone());
                        to_completion(async move {
                            this.rotate_self_now(token, hash, grace, expiration).await
                        })
                        .await
                    }
                    (Ok(Err(malformed)), _) => Err(AuthError::Malformed(malformed).into()),
                    (Err(e), _) => Err(e.into()),
                };
                (Some(caller), result)
            }
        };
        let kind = if caller.is_some() {
            CallerKind::Own.as_str()
        } else {
            NO_CALLER
        };
        self.account(
            Rpc::RotateSelf,
            transport,
            source,
            caller.as_ref(),
            kind,
            &result,
        );
        result
    }

    async fn rotate_self_now(
        &self,
        caller: ServiceToken,
        current: TokenHash,
        grace: Duration,
        expiration: Option<SystemTime>,
    ) -> Result<(Secret, ServiceToken), Error> {
        let now = self.now();
        let id = caller.id;
        if let Some(previous) = caller.previous_secret.filter(|p| now < p.expiration) {
            return Err(Error::CannotRotate(format!(
                "service token {id} still has a previous secret in its grace period, until {}: a token keeps one previous secret at a time, so it may rotate itself again once that ends (its admin or manager can end it sooner)",
                crate::clock::rfc3339_micros(previous.expiration)
            )));
        }
        let previous_until = self.grace_until(grace, now)?;
        let requested = expiration.map(to_micros);
        if requested.is_some_and(|e| e <= now) {
            return Err(FieldError::new("expiration", "must be in the future").into());
        }
        let mut owners = Vec::with_capacity(caller.owners.ids().len());
        for owner in caller.owners.ids() {
            if let Some(stored) = self.store.get(*owner).await? {
                owners.push(stored.token);
            }
        }
        let bounds = Renewal {
            max_lifetime: self.config.lifetime.max(),
            max_age: self.config.lifetime.max_age(),
        };
        let renewed = match renewal(&caller, &owners, requested, now, bounds) {
            Ok(renewed) => renewed.map(to_micros),
            Err(RenewalRefusal::PastBound { bound }) => {
                return Err(FieldError::new("expiration", format!("is past {bound}")).into());
            }
            Err(RenewalRefusal::TooOld) => {
                return Err(Error::CannotRotate(format!(
                    "service token {id} has reached this server's maximum token age of {} (--max-token-age): it cannot be renewed; its admin or manager must make a new one",
                    bounds
                        .max_age
                        .map(crate::config::lifetime_text)
                        .unwrap_or_default()
                )));
            }
        };
        if renewed.is_some_and(|e| e <= now) {
            return Err(Error::CannotRotate(format!(
                "service token {id} cannot be renewed: an owner above it has expired, and nothing it renews may outlive its owners"
            )));
        }
        let token = Secret::generate();
        let change = Change::Rotate {
            hash: token.hash(),
            previous_until,
            renew: Some(renewed),
            replacing: Some(current),
        };
        let event = Draft::rotated(Actor::of(&caller), now);
        let (_, rotated) = self.change(id, &change, now, None, event).await?;
        crate::audit::done!(
            info,
            Rpc::RotateSelf.as_str(),
            Some(&caller),
            id.get(),
            rotated.name.as_str(),
            caller_kind = CallerKind::Own.as_str(),
            grace_period = ?grace,
            expiration = rotated.expiration.map(crate::clock::rfc3339_micros),
            previous_secret_expiration = rotated
                .previous_secret
                .map(|p| crate::clock::rfc3339_micros(p.expiration)),
            "service token rotated itself"
        );
        Ok((token, rotated))
    }
}
