//! Reuse detection: a secret a rotation retired (or a previous secret past
//! its grace), presented again, is refused as ever and announced
//! (`token.reuse_detected`, the audit log, `sts_secret_reuses_total`), at
//! most once per token per minute, since anyone holding an old secret can
//! present it; with `--revoke-on-reuse` the token is disabled at once.

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::Mutex,
    time::{Duration, SystemTime},
};

use crate::{
    audit::AUDIT,
    clock::to_micros,
    error::Error,
    events::Draft,
    model::{Change, Edit, StoredToken, TokenId},
};

use super::TokenService;

/// How often one token's reuse is announced at most.
pub const REUSE_ANNOUNCED_EVERY: Duration = Duration::from_secs(60);

/// Tokens remembered at most; past it, entries older than the window go
/// (and if none is, the oldest), so a flood of old secrets of many tokens
/// holds bounded memory.
const MAX_REMEMBERED: usize = 10_000;

/// When each token's reuse was last announced by this replica.
#[derive(Default)]
pub(super) struct Reuses(Mutex<HashMap<TokenId, SystemTime>>);

impl Reuses {
    /// Whether a reuse of `id` at `now` is to be announced: none was in
    /// the last [`REUSE_ANNOUNCED_EVERY`].
    fn announce(&self, id: TokenId, now: SystemTime) -> bool {
        let mut last = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let due = last.get(&id).is_none_or(|at| {
            now.duration_since(*at)
                .is_ok_and(|gone| gone >= REUSE_ANNOUNCED_EVERY)
        });
        if !due {
            return false;
        }
        if last.len() >= MAX_REMEMBERED {
            last.retain(|_, at| {
                now.duration_since(*at)
                    .is_ok_and(|gone| gone < REUSE_ANNOUNCED_EVERY)
            });
            if last.len() >= MAX_REMEMBERED
                && let Some(oldest) = last.iter().min_by_key(|(_, at)| **at).map(|(id, _)| *id)
            {
                last.remove(&oldest);
            }
        }
        last.insert(id, now);
        true
    }
}

impl TokenService {
    /// `stored`'s retired secret was presented (from `source`, where the
    /// check knew it) at `now`: counted always; announced, and the token
    /// disabled under `--revoke-on-reuse`, once a minute per token. A
    /// failure to record it is logged: the check's answer (refused) stands.
    pub(super) async fn reuse_detected(
        &self,
        stored: &StoredToken,
        source: Option<IpAddr>,
        now: SystemTime,
    ) {
        self.metrics.secret_reused();
        let token = &stored.token;
        if !self.reuses.announce(token.id, now) {
            return;
        }
        let revoke = self.config.revoke_on_reuse && !token.disabled;
        tracing::warn!(
            target: AUDIT,
            event = "token.reuse_detected",
            token.id = token.id.get(),
            token.name = token.name.as_str(),
            source = source.map(tracing::field::display),
            disabled = revoke,
            "a retired secret of this service token was presented again: whoever holds it may have leaked it, or a client still runs with an old secret"
        );
        let now = to_micros(now);
        let mut recorded = self.record_reuse(token.id, source, now, revoke).await;
        if revoke && matches!(recorded, Err(Error::Lockout { .. })) {
            // The last admin token stays enabled (the lockout rule); the
            // reuse is still announced.
            recorded = self.record_reuse(token.id, source, now, false).await;
        }
        if let Err(error) = recorded {
            tracing::warn!(
                token.id = token.id.get(),
                error = %error,
                "the reuse of a retired secret could not be recorded"
            );
        }
    }

    /// The event of a reuse of token `id`'s secret, with the token
    /// disabled when `disable`; nothing at all to write without webhooks
    /// and without disabling.
    async fn record_reuse(
        &self,
        id: TokenId,
        source: Option<IpAddr>,
        now: SystemTime,
        disable: bool,
    ) -> Result<(), Error> {
        let change = if disable {
            Change::Edit(Edit {
                disabled: Some(true),
                ..Edit::default()
            })
        } else if self.config.webhooks.is_some() {
            Change::Mark
        } else {
            return Ok(());
        };
        let event = Draft::reuse_detected(source, now);
        self.change(id, &change, now, None, event).await.map(|_| ())
    }
}
