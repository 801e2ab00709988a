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
        Mutex, MutexGuard,
        atomic::{AtomicU64, Ordering},
    },
};

use quick_cache::{DefaultHashBuilder, Lifecycle, OptionsBuilder, Weighter, sync::Cache};
use tokio::time::Instant;

use crate::{
    changes::Changes,
    model::{ServiceToken, StoredToken, TokenId},
    token::TokenHash,
};

/// Memory the cached tokens may take, by their estimated size (some
/// 75,000 tokens of ordinary size; the process spends about twice that on
/// them, with the allocator's and the table's overhead). Past it the least
/// useful are evicted (quick_cache's Clock-PRO-like policy: a hot token
/// stays, a scan of cold ones does not push it out). BENCHMARKS.md has
/// what it answers under Zipf-distributed use, and what twice the size
/// bought.
pub const DEFAULT_CAPACITY_BYTES: u64 = 32 * 1024 * 1024;

/// How many locks the id index is split into: fills and invalidations of
/// different tokens rarely meet on one.
const ID_SHARDS: usize = 64;

/// The bytes a cached token holds, roughly: its strings and collections
/// plus the fixed part and the cache's own entry.
#[derive(Clone)]
struct TokenWeight;

impl Weighter<[u8; 32], StoredToken> for TokenWeight {
    fn weight(&self, _hash: &[u8; 32], stored: &StoredToken) -> u64 {
        // Every field named: a new one must say what it weighs.
        let StoredToken {
            token:
                ServiceToken {
                    id: _,
                    name,
                    roles,
                    expiration: _,
                    created_at: _,
                    description,
                    labels,
                    disabled: _,
                    last_used_at: _,
                    created_by,
                    updated_at: _,
                    previous_secret: _,
                    bindings,
                    recent_sources: _,
                    rate_limits,
                    // At most MAX_OWNER_DEPTH ids, within the fixed part's
                    // allowance.
                    owners: _,
                    lifetime: _,
                },
            hash: _,
            previous_hash: _,
            retired,
        } = stored;
        let roles: usize = roles.iter().map(|r| r.as_str().len() + 24).sum();
        let labels: usize = labels
            .as_map()
            .iter()
            .map(|(k, v)| k.len() + v.len() + 64)
            .sum();
        // A network is about 40 bytes, a route rule its pattern, methods
        // and segments; recent sources are fixed-size and few.
        let bound: usize = bindings.sources.len() * 40
            + bindings
                .audiences
                .as_slice()
                .iter()
                .map(|a| a.len() + 24)
                .sum::<usize>()
            + bindings
                .routes
                .rules()
                .iter()
                .map(|rule| 3 * rule.pattern().len() + 24 * rule.methods().len() + 96)
                .sum::<usize>();
        let variable = name.as_str().len()
            + description.as_str().len()
            + created_by.len()
            + roles
            + labels
            + bound
            + 48 * crate::model::MAX_RECENT_SOURCES
            // A limit: its terms and its name.
            + rate_limits
                .as_slice()
                .iter()
                .map(|limit| limit.name().len() + 48)
                .sum::<usize>();
        let variable = variable + 32 * retired.len();
        (std::mem::size_of::<StoredToken>() + 96 + variable) as u64
    }
}

/// Collects what an insert evicted, so the id index can forget it once
/// the cache's own lock is released.
#[derive(Clone, Default)]
struct Evictions;

impl Lifecycle<[u8; 32], StoredToken> for Evictions {
    type RequestState = Vec<([u8; 32], u64)>;

    fn on_evict(&self, evicted: &mut Self::RequestState, hash: [u8; 32], stored: StoredToken) {
        evicted.push((hash, stored.token.id.get()));
    }
}

/// The hashes each cached token is cached under (one per secret looked
/// up: at most its current and its previous one), so a change or delete
/// of the token finds every entry.
type IdShard = HashMap<u64, Vec<[u8; 32]>>;

pub struct ValidationCache {
    entries: Cache<[u8; 32], StoredToken, TokenWeight, DefaultHashBuilder, Evictions>,
    /// Sharded by token id. A token's shard lock is held by every fill and
    /// invalidation of it, which orders them: a fill either lands before
    /// the invalidation (and is removed by it) or sees its generation.
    ids: Box<[Mutex<IdShard>]>,
    generation: AtomicU64,
    freshness: Freshness,
    /// Every invalidation, told to the Watch streams: what makes this
    /// process's cache stale makes a caller's stale too.
    changes: Changes,
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

fn lock(shard: &Mutex<IdShard>) -> MutexGuard<'_, IdShard> {
    shard.lock().unwrap_or_else(|e| e.into_inner())
}

impl ValidationCache {
    /// For a store only this process writes.
    pub fn local() -> ValidationCache {
        ValidationCache::new(Freshness::Local, DEFAULT_CAPACITY_BYTES)
    }

    /// For a store others write too; unusable until a first confirmation.
    pub fn confirmed() -> ValidationCache {
        ValidationCache::new(
            Freshness::Confirmed {
                since: Instant::now(),
                until: AtomicU64::new(0),
            },
            DEFAULT_CAPACITY_BYTES,
        )
    }

    fn new(freshness: Freshness, bytes: u64) -> ValidationCache {
        let estimated_items = usize::try_from(bytes / 400).unwrap_or(usize::MAX).max(16);
        ValidationCache {
            entries: Cache::with_options(
                OptionsBuilder::new()
                    .estimated_items_capacity(estimated_items)
                    .weight_capacity(bytes)
                    .build()
                    .expect("the cache options are valid"),
                TokenWeight,
                DefaultHashBuilder::default(),
                Evictions,
            ),
            ids: (0..ID_SHARDS).map(|_| Mutex::default()).collect(),
            generation: AtomicU64::new(0),
            freshness,
            changes: Changes::default(),
        }
    }

    fn shard(&self, id: u64) -> &Mutex<IdShard> {
        // Ids are random: their low bits spread evenly.
        &self.ids[(id as usize) % ID_SHARDS]
    }

    /// Whether the cache may answer now: always for a store only this
    /// process writes, and while the change feed vouches for it otherwise.
    /// Watch streams send their heartbeats only while it is.
    pub fn is_fresh(&self) -> bool {
        self.usable()
    }

    /// What the Watch streams hear.
    pub fn changes(&self) -> &Changes {
        &self.changes
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
        self.entries.get(hash.as_bytes())
    }

    /// Keeps what a store lookup by `hash` found, unless anything was
    /// invalidated since `ticket` was taken.
    pub fn fill(&self, ticket: Ticket, hash: &TokenHash, stored: &StoredToken) {
        if !self.usable() {
            return;
        }
        let id = stored.token.id.get();
        let hash = *hash.as_bytes();
        let mut evicted = Vec::new();
        {
            let mut ids = lock(self.shard(id));
            // Checked under the token's shard lock, which its invalidation
            // holds while it bumps the generation.
            if self.generation.load(Ordering::Acquire) != ticket.0 {
                return;
            }
            self.entries
                .insert_with_lifecycle(hash, stored.clone(), &mut evicted);
            let hashes = ids.entry(id).or_default();
            if !hashes.contains(&hash) {
                hashes.push(hash);
            }
        }
        // One shard lock at a time: never two, so never a deadlock.
        for (hash, id) in evicted {
            let mut ids = lock(self.shard(id));
            // Filled again since (under this same lock): still indexed.
            if self.entries.peek(&hash).is_some() {
                continue;
            }
            if let Some(hashes) = ids.get_mut(&id) {
                hashes.retain(|h| *h != hash);
                if hashes.is_empty() {
                    ids.remove(&id);
                }
            }
        }
    }

    pub fn invalidate(&self, id: TokenId) {
        {
            let mut ids = lock(self.shard(id.get()));
            self.generation.fetch_add(1, Ordering::AcqRel);
            for hash in ids.remove(&id.get()).unwrap_or_default() {
                self.entries.remove(&hash);
            }
        }
        self.changes.changed(id);
    }

    pub fn clear(&self) {
        // Every shard, in order: no fill can slip in between.
        let mut shards: Vec<MutexGuard<'_, IdShard>> = self.ids.iter().map(lock).collect();
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.entries.clear();
        for shard in &mut shards {
            shard.clear();
        }
        drop(shards);
        self.changes.resync();
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
        self.entries.len()
    }

    #[cfg(test)]
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Tokens in the id index: never more than the cache holds (once
    /// evictions are accounted), so it is bounded with it.
    #[cfg(test)]
    fn indexed(&self) -> usize {
        self.ids
            .iter()
            .map(|s| lock(s).values().map(Vec::len).sum::<usize>())
            .sum()
    }
}

#[cfg(test)]
impl ValidationCache {
    /// A local cache holding about `bytes` of tokens: small ones, for
    /// tests of eviction.
    fn local_with_capacity(bytes: u64) -> ValidationCache {
        ValidationCache::new(Freshness::Local, bytes)
    }
}

#[cfg(test)]
mod tests {
    use std::{sync::Arc, time::Duration};

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
        assert_eq!(cache.indexed(), 0);
    }

    #[test]
    fn invalidating_a_token_drops_it_under_every_hash() {
        let cache = ValidationCache::local();
        let mut entry = StoredToken::sample().1;
        let previous = crate::token::Secret::generate().hash();
        entry.previous_hash = Some(previous);
        cache.fill(cache.ticket(), &entry.hash, &entry);
        cache.fill(cache.ticket(), &previous, &entry);
        assert!(cache.get(&previous).is_some());
        cache.invalidate(entry.token.id);
        assert!(cache.get(&entry.hash).is_none());
        assert!(cache.get(&previous).is_none());
        assert!(cache.is_empty());
        assert_eq!(cache.indexed(), 0);
    }

    #[test]
    fn a_full_cache_evicts_and_its_index_follows() {
        // Room for some 40 tokens: 1000 fills evict most of them, and the
        // id index forgets what the cache forgot.
        let weight = TokenWeight.weight(&[0; 32], &stored());
        let cache = ValidationCache::local_with_capacity(weight * 40);
        let entries: Vec<StoredToken> = (0..1000).map(|_| stored()).collect();
        for entry in &entries {
            cache.fill(cache.ticket(), &entry.hash, entry);
        }
        assert!(cache.len() <= 40, "{}", cache.len());
        assert!(!cache.is_empty());
        assert_eq!(cache.indexed(), cache.len());
        // Whatever is still cached is still invalidated by its id.
        for entry in &entries {
            cache.invalidate(entry.token.id);
        }
        assert!(cache.is_empty());
        assert_eq!(cache.indexed(), 0);
    }

    #[test]
    fn a_hot_token_survives_a_scan_of_cold_ones() {
        let weight = TokenWeight.weight(&[0; 32], &stored());
        let cache = ValidationCache::local_with_capacity(weight * 100);
        let hot = stored();
        cache.fill(cache.ticket(), &hot.hash, &hot);
        for _ in 0..1000 {
            let cold = stored();
            cache.fill(cache.ticket(), &cold.hash, &cold);
            assert!(cache.get(&hot.hash).is_some(), "the hot token was evicted");
        }
    }

    #[test]
    fn fills_and_invalidations_from_many_threads_never_leave_a_stale_entry() {
        let cache = Arc::new(ValidationCache::local_with_capacity(
            TokenWeight.weight(&[0; 32], &stored()) * 64,
        ));
        let entries: Arc<Vec<StoredToken>> = Arc::new((0..256).map(|_| stored()).collect());
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let (cache, entries) = (cache.clone(), entries.clone());
                std::thread::spawn(move || {
                    for round in 0..2000 {
                        let entry = &entries[(round * 7 + t * 13) % entries.len()];
                        if (round + t) % 3 == 0 {
                            cache.invalidate(entry.token.id);
                        } else {
                            let ticket = cache.ticket();
                            cache.fill(ticket, &entry.hash, entry);
                            let _ = cache.get(&entry.hash);
                        }
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        // Every entry still cached is found by its id: invalidating all of
        // them leaves nothing behind.
        for entry in entries.iter() {
            cache.invalidate(entry.token.id);
        }
        for entry in entries.iter() {
            assert!(cache.get(&entry.hash).is_none());
        }
        assert_eq!(cache.indexed(), 0);
    }
}
