//! Answers kept in memory: valid tokens by the SHA-256 of their secret,
//! indexed by id so an event finds every secret of a token, and refusals by
//! hash for a moment. A generation counter stops an answer fetched before
//! an invalidation from being kept after it (the answer and the event
//! travel on different streams and may arrive in either order).

use std::{
    collections::HashMap,
    sync::{
        Arc, RwLock, RwLockReadGuard, RwLockWriteGuard,
        atomic::{AtomicU64, Ordering},
    },
    time::SystemTime,
};

use tokio::time::Instant;

use crate::{Identity, Refusal};

type Hash = [u8; 32];

/// A valid token as kept: who it is, and until when the answer may stand
/// (its expiration, or its previous secret's end).
#[derive(Clone)]
pub(crate) struct Entry {
    pub(crate) identity: Arc<Identity>,
    pub(crate) until: Option<SystemTime>,
}

impl Entry {
    pub(crate) fn stands_at(&self, now: SystemTime) -> bool {
        self.until.is_none_or(|until| now < until)
    }
}

#[derive(Default)]
struct Inner {
    valid: HashMap<Hash, Entry>,
    by_id: HashMap<u64, Vec<Hash>>,
    refused: HashMap<Hash, (Refusal, Instant)>,
}

/// The generation a lookup started in; a fill with an older one is dropped.
#[derive(Clone, Copy)]
pub(crate) struct Ticket(u64);

pub(crate) struct Cache {
    inner: RwLock<Inner>,
    generation: AtomicU64,
    capacity: usize,
}

impl Cache {
    pub(crate) fn new(capacity: usize) -> Cache {
        Cache {
            inner: RwLock::default(),
            generation: AtomicU64::new(0),
            capacity,
        }
    }

    fn read(&self) -> RwLockReadGuard<'_, Inner> {
        self.inner.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, Inner> {
        self.inner.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Take before asking the server; hand to `fill` or `refuse`.
    pub(crate) fn ticket(&self) -> Ticket {
        Ticket(self.generation.load(Ordering::Acquire))
    }

    pub(crate) fn get(&self, hash: &Hash) -> Option<Entry> {
        self.read().valid.get(hash).cloned()
    }

    /// A refusal remembered for `hash`, if it has not run out.
    pub(crate) fn refused(&self, hash: &Hash, now: Instant) -> Option<Refusal> {
        let inner = self.read();
        let (refusal, until) = inner.refused.get(hash)?;
        (now < *until).then(|| refusal.clone())
    }

    /// Keeps a valid answer, unless anything was invalidated since `ticket`
    /// was taken. A full cache keeps what it holds (after dropping what has
    /// run out).
    pub(crate) fn fill(&self, ticket: Ticket, hash: Hash, entry: Entry) {
        let mut inner = self.write();
        // Checked under the write lock, which every invalidation takes to
        // move the generation: a fill lands before one or sees it.
        if self.generation.load(Ordering::Acquire) != ticket.0 {
            return;
        }
        if inner.valid.len() >= self.capacity && !inner.valid.contains_key(&hash) {
            let now = SystemTime::now();
            let Inner { valid, by_id, .. } = &mut *inner;
            valid.retain(|_, entry| entry.stands_at(now));
            by_id.retain(|_, hashes| {
                hashes.retain(|h| valid.contains_key(h));
                !hashes.is_empty()
            });
            if valid.len() >= self.capacity {
                return;
            }
        }
        let id = entry.identity.id;
        inner.valid.insert(hash, entry);
        let hashes = inner.by_id.entry(id).or_default();
        if !hashes.contains(&hash) {
            hashes.push(hash);
        }
    }

    /// Remembers a refusal of `hash` until `until`, unless anything was
    /// invalidated since `ticket`.
    pub(crate) fn refuse(&self, ticket: Ticket, hash: Hash, refusal: Refusal, until: Instant) {
        let mut inner = self.write();
        if self.generation.load(Ordering::Acquire) != ticket.0 {
            return;
        }
        if inner.refused.len() >= self.capacity {
            let now = Instant::now();
            inner.refused.retain(|_, (_, until)| now < *until);
            if inner.refused.len() >= self.capacity {
                // A flood of distinct bad tokens: start over.
                inner.refused.clear();
            }
        }
        inner.refused.insert(hash, (refusal, until));
    }

    /// Token `id` changed or went: every answer about it goes.
    pub(crate) fn invalidate(&self, id: u64) {
        let mut inner = self.write();
        self.generation.fetch_add(1, Ordering::AcqRel);
        for hash in inner.by_id.remove(&id).unwrap_or_default() {
            inner.valid.remove(&hash);
        }
    }

    /// Everything goes (a new stream, or changes that may have been missed).
    pub(crate) fn clear(&self) {
        let mut inner = self.write();
        self.generation.fetch_add(1, Ordering::AcqRel);
        *inner = Inner::default();
    }

    /// Valid answers held.
    pub(crate) fn len(&self) -> usize {
        self.read().valid.len()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use sts_api::credential::AuthError;

    use super::*;

    fn entry(id: u64) -> Entry {
        Entry {
            identity: Arc::new(Identity {
                id,
                name: format!("t{id}"),
                roles: vec![],
                labels: Default::default(),
                expiration: None,
                previous_secret: false,
            }),
            until: None,
        }
    }

    #[test]
    fn an_answer_fetched_before_an_invalidation_is_not_kept() {
        let cache = Cache::new(10);
        let ticket = cache.ticket();
        cache.invalidate(1);
        cache.fill(ticket, [1; 32], entry(1));
        assert!(cache.get(&[1; 32]).is_none());
        cache.fill(cache.ticket(), [1; 32], entry(1));
        cache.fill(cache.ticket(), [2; 32], entry(1));
        assert!(cache.get(&[1; 32]).is_some());
        cache.invalidate(1);
        assert!(cache.get(&[1; 32]).is_none() && cache.get(&[2; 32]).is_none());
        assert_eq!(cache.len(), 0);
    }

    #[test]
    fn a_full_cache_drops_what_ran_out_and_otherwise_keeps_what_it_holds() {
        let cache = Cache::new(2);
        let mut gone = entry(1);
        gone.until = Some(SystemTime::now() - Duration::from_secs(1));
        cache.fill(cache.ticket(), [1; 32], gone);
        cache.fill(cache.ticket(), [2; 32], entry(2));
        cache.fill(cache.ticket(), [3; 32], entry(3));
        assert!(cache.get(&[1; 32]).is_none() && cache.get(&[3; 32]).is_some());
        cache.fill(cache.ticket(), [4; 32], entry(4));
        assert!(cache.get(&[4; 32]).is_none());
        assert_eq!(cache.len(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn refusals_are_kept_until_they_run_out_or_everything_is_cleared() {
        let cache = Cache::new(1);
        let until = Instant::now() + Duration::from_secs(1);
        cache.refuse(
            cache.ticket(),
            [1; 32],
            Refusal::Invalid(AuthError::NotFound),
            until,
        );
        assert_eq!(
            cache.refused(&[1; 32], Instant::now()),
            Some(Refusal::Invalid(AuthError::NotFound))
        );
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(cache.refused(&[1; 32], Instant::now()), None);
        cache.refuse(
            cache.ticket(),
            [2; 32],
            Refusal::Invalid(AuthError::NotFound),
            until,
        );
        cache.refuse(
            cache.ticket(),
            [3; 32],
            Refusal::Invalid(AuthError::Expired),
            Instant::now() + Duration::from_secs(1),
        );
        assert_eq!(
            cache.refused(&[3; 32], Instant::now()),
            Some(Refusal::Invalid(AuthError::Expired))
        );
        cache.clear();
        assert_eq!(cache.refused(&[3; 32], Instant::now()), None);
    }
}
