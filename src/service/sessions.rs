//! Console sessions: a sign-in (the credential checked as for any
//! management call, rate-limited per source), the session each request
//! finds by its cookie (open while seen within the idle timeout and begun
//! within the absolute one), every call made with it checked again as the
//! token's current secret (so a rotation, a disable, a delete or a lost
//! role ends it on every replica, as any revocation reaches them), and
//! sign-out. Last-seen times are kept in memory and written in batches.

use std::{
    collections::HashMap,
    future::Future,
    net::IpAddr,
    sync::Mutex,
    time::{Duration, Instant, SystemTime},
};

use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use rand::RngCore;
use sha2::{Digest, Sha256};

use crate::{
    audit::Refusal,
    error::{Error, ErrorKind},
    model::{ServiceToken, Session, SessionKey},
    source_limit::SourceLimit,
    token::TokenHash,
};

use super::{Authority, Credential, Rpc, TokenService, Transport, manage::NO_CALLER};

/// Sign-in attempts one source (an IPv4 address, an IPv6 /64) may make a
/// minute, whatever their outcome.
pub const SIGN_INS_PER_MINUTE: u32 = 20;

/// Bytes of randomness in a session id.
const SESSION_ID_BYTES: usize = 32;

/// A session's id as its cookie carries it (base64url of 32 random
/// bytes). Only the browser keeps it; stores keep its hash.
#[derive(Clone, PartialEq, Eq)]
pub struct SessionId(String);

impl SessionId {
    fn generate() -> SessionId {
        let mut bytes = [0u8; SESSION_ID_BYTES];
        rand::rng().fill_bytes(&mut bytes);
        SessionId(URL_SAFE_NO_PAD.encode(bytes))
    }

    /// A random token for a form that no session covers yet (sign-in),
    /// kept in a cookie of its own and posted back.
    pub fn generate_form_token() -> String {
        SessionId::generate().0
    }

    /// A cookie's value, if it has a session id's shape.
    pub fn parse(cookie: &str) -> Option<SessionId> {
        let bytes = URL_SAFE_NO_PAD.decode(cookie).ok()?;
        (bytes.len() == SESSION_ID_BYTES).then(|| SessionId(cookie.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn key(&self) -> SessionKey {
        SessionKey::of(self.0.as_bytes())
    }

    /// The token every form of this session carries: derived from the id
    /// (a page's reader learns nothing of the cookie from it), so another
    /// site, which cannot read our pages, cannot make one.
    pub fn csrf_token(&self) -> String {
        let mut hasher = Sha256::new();
        hasher.update(b"sts-console-csrf\0");
        hasher.update(self.0.as_bytes());
        hex::encode(&hasher.finalize()[..16])
    }
}

impl std::fmt::Debug for SessionId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SessionId(..)")
    }
}

/// The sessions' state in this process: last-seen times not yet written,
/// and the sign-in rate limit.
pub(super) struct SessionBook {
    seen: Mutex<HashMap<SessionKey, SystemTime>>,
    sign_ins: SourceLimit,
}

impl Default for SessionBook {
    fn default() -> SessionBook {
        SessionBook {
            seen: Mutex::default(),
            sign_ins: SourceLimit::new(SIGN_INS_PER_MINUTE, Duration::from_secs(60)),
        }
    }
}

impl SessionBook {
    fn seen(&self) -> std::sync::MutexGuard<'_, HashMap<SessionKey, SystemTime>> {
        self.seen.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl TokenService {
    /// Signs in with `presented`, which must be the current secret of a
    /// token holding the admin or manager role (checked, counted and
    /// audited as every management call, under `SignIn`): a new session,
    /// durable before its id is handed out.
    pub async fn sign_in(
        &self,
        presented: &str,
        source: Option<IpAddr>,
    ) -> Result<(SessionId, ServiceToken), Error> {
        if let Err(retry_after) = self.sessions.sign_ins.check(source, Instant::now()) {
            return Err(self.sign_in_limited(source, retry_after));
        }
        let credential = Credential::Presented(Ok(presented));
        self.manage(
            Rpc::SignIn,
            Transport::Console,
            credential,
            source,
            |authority| async move {
                let hash = TokenHash::of_presented(presented).map_err(|why| {
                    Error::Unauthenticated(crate::credential::AuthError::Malformed(why))
                })?;
                let id = SessionId::generate();
                let now = self.now();
                let caller = authority.token().clone();
                let session = Session {
                    key: id.key(),
                    token_id: caller.id,
                    token_hash: hash,
                    created_at: now,
                    seen_at: now,
                };
                self.store.open_session(&session).await?;
                crate::audit::done!(
                    info,
                    Rpc::SignIn.as_str(),
                    Some(&caller),
                    caller.id.get(),
                    caller.name.as_str(),
                    "console session opened"
                );
                Ok((id, caller))
            },
        )
        .await
    }

    fn sign_in_limited(&self, source: Option<IpAddr>, retry_after: Duration) -> Error {
        let rpc = Rpc::SignIn.as_str();
        let limited = Error::RateLimited { retry_after };
        self.metrics.management_call(
            rpc,
            ErrorKind::RateLimited.as_str(),
            NO_CALLER,
            Transport::Console.as_str(),
        );
        self.refusals.record(Refusal {
            rpc,
            source,
            reason: "rate_limited",
            outcome: limited.kind().as_str(),
            detail: &limited,
            caller: None,
            role: None,
        });
        limited
    }

    /// The open session `id` names, if any: seen within the idle timeout
    /// (counting what this replica saw and has not written yet) and begun
    /// within the absolute one. One found closed is ended. Its use now is
    /// noted, to be written with the next batch.
    pub async fn console_session(&self, id: &SessionId) -> Result<Option<Session>, Error> {
        let key = id.key();
        let Some(mut session) = self.store.session(&key).await? else {
            return Ok(None);
        };
        if let Some(seen) = self.sessions.seen().get(&key) {
            session.seen_at = session.seen_at.max(*seen);
        }
        let now = self.now();
        let (idle, lifetime) = (
            self.config.console_session_idle,
            self.config.console_session_lifetime,
        );
        if !session.is_open_at(now, idle, lifetime) {
            self.end_session(&key).await?;
            return Ok(None);
        }
        self.sessions.seen().insert(key, now);
        Ok(Some(session))
    }

    /// Runs management call `rpc` for `session` (see
    /// [`TokenService::manage`]), its token checked as the current secret.
    /// A refusal of the credential itself ends the session.
    pub async fn manage_session<T, Fut>(
        &self,
        rpc: Rpc,
        session: &Session,
        source: Option<IpAddr>,
        call: impl FnOnce(Authority) -> Fut,
    ) -> Result<T, Error>
    where
        Fut: Future<Output = Result<T, Error>>,
    {
        let mut called = false;
        let credential = Credential::Session(&session.token_hash);
        let result = self
            .manage(rpc, Transport::Console, credential, source, |authority| {
                called = true;
                call(authority)
            })
            .await;
        if !called && let Err(Error::Unauthenticated(_) | Error::PermissionDenied(_)) = &result {
            self.end_session(&session.key).await?;
        }
        result
    }

    /// Ends a session: sign-out, or found closed.
    pub async fn end_session(&self, key: &SessionKey) -> Result<(), Error> {
        self.sessions.seen().remove(key);
        self.store.end_session(key).await?;
        Ok(())
    }

    /// Writes the last-seen times noted since the last call, in one batch,
    /// and ends the sessions past either timeout. Run now and then by the
    /// server, and at shutdown.
    pub async fn keep_sessions(&self) -> Result<(), Error> {
        let seen: Vec<(SessionKey, SystemTime)> = self.sessions.seen().drain().collect();
        if let Err(e) = self.store.touch_sessions(&seen).await {
            // Kept for the next batch; a later time wins anyway.
            let mut pending = self.sessions.seen();
            for (key, at) in seen {
                let at = pending.get(&key).map_or(at, |later| at.max(*later));
                pending.insert(key, at);
            }
            return Err(e.into());
        }
        let now = self.now();
        let before = |bound: Duration| now.checked_sub(bound).unwrap_or(SystemTime::UNIX_EPOCH);
        let ended = self
            .store
            .end_stale_sessions(
                before(self.config.console_session_idle),
                before(self.config.console_session_lifetime),
            )
            .await?;
        if ended > 0 {
            tracing::debug!(ended, "ended idle or expired console sessions");
        }
        Ok(())
    }
}
