//! sled's reads: by hash, by id, pages of a filtered list, counts and the
//! summary behind the metrics.

use std::time::SystemTime;

use crate::store::{StoreError, found_by, readable};
use crate::{
    model::{ListFilter, StoredToken, TokenId, TokenSummary},
    token::TokenHash,
};

use super::{
    COUNT_KEY, Trees, decode_count,
    record::{Record, key_id},
    unavailable,
};

impl Trees {
    pub(super) fn find_by_hash(&self, hash: &TokenHash) -> Result<Option<StoredToken>, StoreError> {
        let key = match self.by_hash.get(hash.as_bytes()).map_err(unavailable)? {
            Some(key) => key,
            None => match self.retired.get(hash.as_bytes()).map_err(unavailable)? {
                Some(key) => key,
                None => return Ok(None),
            },
        };
        let Some(bytes) = self.tokens.get(&key).map_err(unavailable)? else {
            // A delete removes both entries in one transaction, so this is an
            // index pointing nowhere: treat the token as gone.
            tracing::warn!("hash index entry without a token record; treating as not found");
            return Ok(None);
        };
        found_by(Record::decode_stored(&bytes)?, hash)
    }

    pub(super) fn get(&self, id: TokenId) -> Result<Option<StoredToken>, StoreError> {
        let key = id.get().to_be_bytes();
        match self.tokens.get(key).map_err(unavailable)? {
            Some(bytes) => Ok(Some(Record::decode_stored(&bytes)?)),
            None => Ok(None),
        }
    }

    pub(super) fn list_matching(
        &self,
        after: Option<TokenId>,
        limit: usize,
        filter: &ListFilter,
    ) -> Result<Vec<StoredToken>, StoreError> {
        let start = after.map_or(0, |id| id.get() + 1).to_be_bytes();
        let mut page = Vec::with_capacity(limit.min(1024));
        for entry in self.tokens.range(start..) {
            if page.len() == limit {
                break;
            }
            let (key, bytes) = entry.map_err(unavailable)?;
            match readable(Record::decode_stored(&bytes), key_id(&key)) {
                Some(stored) if filter.matches(&stored.token) => page.push(stored),
                _ => {}
            }
        }
        Ok(page)
    }

    pub(super) fn count(&self) -> Result<u64, StoreError> {
        Ok(decode_count(self.meta.get(COUNT_KEY).map_err(unavailable)?))
    }

    pub(super) fn summary(&self, now: SystemTime) -> Result<TokenSummary, StoreError> {
        let mut summary = TokenSummary::default();
        for entry in self.tokens.iter() {
            let (key, bytes) = entry.map_err(unavailable)?;
            if let Some(stored) = readable(Record::decode_stored(&bytes), key_id(&key)) {
                summary.add(&stored.token, now);
            }
        }
        Ok(summary)
    }
}
