//! The storage interface the service is written against, and its backends.
//!
//! Every backend keeps the same promises: only [`TokenHash`]es at rest, never
//! a token; a write returns only once it is durable; ids are unique; `list`
//! walks ids in ascending order so a cursor stays valid while tokens come and
//! go between pages.

use std::{sync::Arc, time::SystemTime};

use async_trait::async_trait;

use crate::{
    cache::ValidationCache,
    model::{NewToken, ServiceToken, TokenId},
    token::TokenHash,
};

mod group_commit;
pub mod postgres;
pub mod sled;

pub use self::{postgres::PostgresStore, sled::SledStore};

/// A token as the store holds it: its description and the hash of its secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredToken {
    pub token: ServiceToken,
    pub hash: TokenHash,
}

impl StoredToken {
    /// `self`, if its hash is `hash` (compared in constant time). A lookup by
    /// hash that lands on another token's record is corruption, never a match.
    pub fn verified(self, hash: &TokenHash) -> Result<StoredToken, StoreError> {
        if self.hash.ct_eq(hash) {
            Ok(self)
        } else {
            Err(StoreError::Corrupt(format!(
                "token {}: the hash index points at another token's record",
                self.token.id
            )))
        }
    }
}

#[cfg(test)]
impl StoredToken {
    /// A fresh token and its record, for unit tests.
    pub(crate) fn sample() -> (crate::token::Token, StoredToken) {
        use crate::model::{Roles, TokenName};
        let token = crate::token::Token::generate();
        let stored = StoredToken {
            token: ServiceToken {
                id: TokenId::random(),
                name: TokenName::parse("t").unwrap(),
                roles: Roles::parse(&["r"]).unwrap(),
                expiration: None,
                created_at: SystemTime::now(),
            },
            hash: token.hash(),
        };
        (token, stored)
    }
}

/// What [`Store::import`] did with one token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Imported {
    Added,
    AlreadyThere,
    /// Its id or hash belongs to a different token here; nothing changed.
    Conflict(String),
}

/// Why the store could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(
        "the data directory {path} is in use by another process (is sts-server already running on it?)"
    )]
    Locked { path: String },
    #[error("the store is unavailable: {0}")]
    Unavailable(String),
    #[error("the store holds a corrupt record: {0}")]
    Corrupt(String),
    #[error("could not allocate a unique token id; try again")]
    IdExhausted,
}

#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Stores a new token under a fresh unique id and returns it once durable.
    async fn insert(
        &self,
        hash: TokenHash,
        new: &NewToken,
        created_at: SystemTime,
    ) -> Result<ServiceToken, StoreError>;

    /// The token whose secret hashes to `hash`, if any. A lookup, not a scan.
    async fn find_by_hash(&self, hash: &TokenHash) -> Result<Option<StoredToken>, StoreError>;

    /// Up to `limit` tokens with ids greater than `after`, in ascending id
    /// order, with their hashes (for export).
    async fn list_stored(
        &self,
        after: Option<TokenId>,
        limit: usize,
    ) -> Result<Vec<StoredToken>, StoreError>;

    /// As [`Store::list_stored`], descriptions only.
    async fn list(
        &self,
        after: Option<TokenId>,
        limit: usize,
    ) -> Result<Vec<ServiceToken>, StoreError> {
        let page = self.list_stored(after, limit).await?;
        Ok(page.into_iter().map(|stored| stored.token).collect())
    }

    /// Adds exported tokens under their own ids and hashes; durable once it
    /// returns. A token already there (same id, same hash) is left as is, so
    /// importing twice changes nothing.
    async fn import(&self, tokens: &[StoredToken]) -> Result<Vec<Imported>, StoreError>;

    /// Removes a token; `false` when there was none. Durable once it returns.
    async fn delete(&self, id: TokenId) -> Result<bool, StoreError>;

    /// How many tokens are stored; cheap enough for every metrics scrape.
    async fn count(&self) -> Result<u64, StoreError>;

    /// Writes anything still buffered to stable storage (used at shutdown).
    async fn flush(&self) -> Result<(), StoreError>;

    /// Whether the store can serve now (a database reachable); readiness
    /// probes follow it.
    async fn ready(&self) -> Result<(), StoreError> {
        Ok(())
    }

    /// The Validate cache to use over this store. A store only this process
    /// writes can trust a local cache; one others write too returns a cache
    /// it keeps informed of their deletes (and starts doing so now).
    fn validation_cache(&self) -> Arc<ValidationCache> {
        Arc::new(ValidationCache::local())
    }

    /// Adds the backend's own metrics (how its writes reach the disk) to the
    /// service's registry.
    fn register_metrics(&self, _registry: &mut prometheus_client::registry::Registry) {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::token::Token;

    #[test]
    fn a_record_verifies_only_against_its_own_hash() {
        let (token, stored) = StoredToken::sample();
        assert_eq!(stored.clone().verified(&token.hash()).unwrap(), stored);
        let other = Token::generate().hash();
        assert!(matches!(
            stored.verified(&other),
            Err(StoreError::Corrupt(_))
        ));
    }
}
