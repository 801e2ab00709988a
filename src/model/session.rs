//! A console session as the stores keep it: its id's hash (the id itself
//! lives only in the browser's cookie), the token it signed in with and the
//! hash of that token's secret, when it began and when it was last seen.

use std::time::SystemTime;

use sha2::{Digest, Sha256};

use super::fields::TokenId;
use crate::token::TokenHash;

/// The SHA-256 of a session's id: what a store keys the session by, so
/// reading the store gives no one a cookie.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct SessionKey([u8; 32]);

impl SessionKey {
    /// The key of the session whose id is `id` (the cookie's bytes).
    pub fn of(id: &[u8]) -> SessionKey {
        SessionKey(Sha256::digest(id).into())
    }

    pub fn from_bytes(bytes: &[u8]) -> Option<SessionKey> {
        bytes.try_into().ok().map(SessionKey)
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl std::fmt::Debug for SessionKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SessionKey(..)")
    }
}

/// A console session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    pub key: SessionKey,
    pub token_id: TokenId,
    /// The hash of the secret it signed in with: each request checks it as
    /// the token's current secret, so a rotation ends the session.
    pub token_hash: TokenHash,
    pub created_at: SystemTime,
    pub seen_at: SystemTime,
}

impl Session {
    /// Whether it is still open at `now`: seen within `idle`, begun within
    /// `lifetime`.
    pub fn is_open_at(
        &self,
        now: SystemTime,
        idle: std::time::Duration,
        lifetime: std::time::Duration,
    ) -> bool {
        let within =
            |since: SystemTime, bound| now.duration_since(since).ok().is_none_or(|d| d < bound);
        within(self.seen_at, idle) && within(self.created_at, lifetime)
    }
}
