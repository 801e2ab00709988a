//! The Validate cache: found tokens by hash (the current secret's, or the
//! previous one's during a rotation's grace period), so a hot token costs no
//! store lookup. Only positive answers are kept (a token created on another
//! replica must validate at once), and an entry never outlives a delete:
//!
//! - Deletes and changes through this process invalidate (every hash of
//!   the token) before they are acknowledged;
//!   a generation counter stops a lookup that raced a delete from putting
//!   the deleted token back.
//! - Deletes through other processes (a shared database) arrive through the
//!   store's notification feed. The cache is then trusted only while that
//!   feed is known to be live: [`ValidationCache::confirm_until`] is moved
//!   forward by heartbeats that travel the same channel as the deletes, and
//!   past it every lookup goes to the store. A feed that is lost clears the
//!   cache.

use std::{
    collections::HashMap,
    sync::{
        RwLock,
        atomic::{AtomicU64, Ordering},
    },
};

use tokio::time::Instant;

use crate::{
    model::{StoredToken, TokenId},
    token::TokenHash,
};

/// Entries kept at most; past it the cache starts over (cheap, and rare:
/// that many distinct live tokens validating).
pub const DEFAULT_CAPACITY: usize = 100_000;

pub struct ValidationCache {
    entries: RwLock<Entries>,
    generation: AtomicU64,
    freshness: Freshness,
    capacity: usize,
}

#[derive(Default)]
struct Entries {
    by_hash: HashMap<[u8; 32], StoredToken>,
    /// The hashes each token is cached under: one per secret looked up.
    by_id: HashMap<u64, Vec<[u8; 32]>>,
}

enum Freshness {
    /// Every delete goes through this process.
    Local,
    /// Deletes may happen elsewhere: usable until the instant the feed last
    /// vouched for, kept as nanoseconds after `since` (0: not usable). An
    /// atomic, because every lookup reads it.
    Confirmed { since: Instant, until: AtomicU64 },
}

/// The generation a lookup started in; a fill with an older one is dropped.
#[derive(Clone, Copy)]
pub struct Ticket(u64);

impl ValidationCache {
    /// For a store only this process writes.
    pub fn local() -> ValidationCache {
        ValidationCache::new(Freshness::Local)
    }

    /// For a store others write too; unusable until a first confirmation.
    pub fn confirmed() -> ValidationCache {
        ValidationCache::new(Freshness::Confirmed {
            since: Instant::now(),
            until: AtomicU64::new(0),
        })
    }

    fn new(freshness: Freshness) -> ValidationCache {
        ValidationCache {
            entries: RwLock::default(),
            generation: AtomicU64::new(0),
            freshness,
            capacity: DEFAULT_CAPACITY,
        }
    }

    fn usable(&self) -> bool {
        match &self.freshness {
            Freshness::Local => true,
            Freshness::Confirmed { since, until } => {
                let until = until.load(Ordering::Acquire);
                until != 0 && since.elapsed().as_nanos() < u128::from(until)
            }
        }
    }

    /// Take before looking up in the store; hand to [`ValidationCache::fill`].
    pub fn ticket(&self) -> Ticket {
        Ticket(self.generation.load(Ordering::Acquire))
    }

    pub fn get(&self, hash: &TokenHash) -> Option<StoredToken> {
        if !self.usable() {
            return None;
        }
        let entries = self.entries.read().unwrap_or_else(|e| e.into_inner());
        entries.by_hash.get(hash.as_bytes()).cloned()
    }

    /// Keeps what a store lookup by `hash` found, unless anything was
    /// invalidated since `ticket` was taken.
    pub fn fill(&self, ticket: Ticket, hash: &TokenHash, stored: &StoredToken) {
        if !self.usable() {
            return;
        }
        let mut entries = self.entries.write().unwrap_or_else(|e| e.into_inner());
        // Checked under the write lock: invalidations bump it under the same lock.
        if self.generation.load(Ordering::Acquire) != ticket.0 {
            return;
        }
        if entries.by_hash.len() >= self.capacity {
            *entries = Entries::default();
        }
        let hash = *hash.as_bytes();
        let hashes = entries.by_id.entry(stored.token.id.get()).or_default();
        if !hashes.contains(&hash) {
            hashes.push(hash);
        }
        entries.by_hash.insert(hash, stored.clone());
    }

    pub fn invalidate(&self, id: TokenId) {
        let mut entries = self.entries.write().unwrap_or_else(|e| e.into_inner());
        self.generation.fetch_add(1, Ordering::AcqRel);
        for hash in entries.by_id.remove(&id.get()).unwrap_or_default() {
            entries.by_hash.remove(&hash);
        }
    }

    pub fn clear(&self) {
        let mut entries = self.entries.write().unwrap_or_else(|e| e.into_inner());
        self.generation.fetch_add(1, Ordering::AcqRel);
        *entries = Entries::default();
    }

    /// The feed vouches that every delete committed before some heartbeat
    /// was sent has been applied: trust the cache until `until` (that send
    /// time plus the staleness bound).
    pub fn confirm_until(&self, until: Instant) {
        if let Freshness::Confirmed {
            since,
            until: current,
        } = &self.freshness
        {
            let nanos = until.saturating_duration_since(*since).as_nanos();
            current.fetch_max(
                u64::try_from(nanos).unwrap_or(u64::MAX).max(1),
                Ordering::AcqRel,
            );
        }
    }

    /// The feed is gone: forget everything and trust nothing until it
    /// vouches again.
    pub fn distrust(&self) {
        if let Freshness::Confirmed { until, .. } = &self.freshness {
            until.store(0, Ordering::Release);
        }
        self.clear();
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .by_hash
            .len()
    }

    #[cfg(test)]
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn stored() -> StoredToken {
        StoredToken::sample().1
    }

    #[test]
    fn a_fill_that_raced_an_invalidation_is_dropped() {
        let cache = ValidationCache::local();
        let entry = stored();
        let ticket = cache.ticket();
        // The delete lands between the store lookup and the fill.
        cache.invalidate(entry.token.id);
        cache.fill(ticket, &entry.hash, &entry);
        assert!(cache.get(&entry.hash).is_none());
        cache.fill(cache.ticket(), &entry.hash, &entry);
        assert_eq!(cache.get(&entry.hash), Some(entry.clone()));
        cache.invalidate(entry.token.id);
        assert!(cache.get(&entry.hash).is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn a_confirmed_cache_is_trusted_only_until_its_confirmation_runs_out() {
        let cache = ValidationCache::confirmed();
        let entry = stored();
        cache.fill(cache.ticket(), &entry.hash, &entry);
        assert!(cache.is_empty(), "no confirmation yet: nothing kept");
        cache.confirm_until(Instant::now() + Duration::from_millis(100));
        cache.fill(cache.ticket(), &entry.hash, &entry);
        assert!(cache.get(&entry.hash).is_some());
        tokio::time::advance(Duration::from_millis(100)).await;
        assert!(cache.get(&entry.hash).is_none(), "stale: not trusted");
        cache.confirm_until(Instant::now() + Duration::from_millis(100));
        assert!(cache.get(&entry.hash).is_some());
        cache.distrust();
        assert!(cache.get(&entry.hash).is_none());
        assert!(cache.is_empty());
    }

    #[test]
    fn invalidating_a_token_drops_it_under_every_hash() {
        let cache = ValidationCache::local();
        let mut entry = stored();
        let previous = crate::token::Token::generate().hash();
        entry.previous_hash = Some(previous);
        cache.fill(cache.ticket(), &entry.hash, &entry);
        cache.fill(cache.ticket(), &previous, &entry);
        assert!(cache.get(&previous).is_some());
        cache.invalidate(entry.token.id);
        assert!(cache.get(&entry.hash).is_none());
        assert!(cache.get(&previous).is_none());
        assert!(cache.is_empty());
    }

    #[test]
    fn a_full_cache_starts_over() {
        let mut cache = ValidationCache::local();
        cache.capacity = 2;
        let entries: Vec<StoredToken> = (0..3).map(|_| stored()).collect();
        for entry in &entries {
            cache.fill(cache.ticket(), &entry.hash, entry);
        }
        assert_eq!(cache.len(), 1);
        assert!(cache.get(&entries[2].hash).is_some());
    }
}
