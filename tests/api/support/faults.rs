//! `FaultyStore`: a sled store that fails, finds corrupt records or holds
//! its inserts on demand, for tests of what the server does when its store
//! misbehaves.

use std::{
    path::Path,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, SystemTime},
};

use async_trait::async_trait;
use sts::{
    events::{Draft, OutboxStats, Pending, Settle},
    model::{
        Change, Etag, ListFilter, ListOrder, NewToken, Position, ServiceToken, Session, SessionKey,
        StoredToken, TokenId, TokenSummary,
    },
    store::{
        Announce, EventOutbox, Imported, KeepAdmin, Outcome, Sessions, SledStore, Store,
        StoreError, Use, UseRecords,
    },
    token::TokenHash,
};
use tokio::sync::Semaphore;

/// What a failing [`FaultyStore`] says, as a database driver would: text
/// that must reach the log and never a client.
pub const INJECTED_CAUSE: &str =
    "injected: FATAL: password authentication failed for user \"sts\" (10.0.0.7:5432)";

fn injected_fault() -> StoreError {
    StoreError::unavailable("injected fault", std::io::Error::other(INJECTED_CAUSE))
}

/// A sled store with faults on demand: every call fails while `failing` is
/// set, every write (insert, delete, flush) while `writes_failing` is,
/// every lookup finds a corrupt record while `corrupt` is, and
/// while `gated` is set each insert announces itself on `entered` and then
/// waits for a permit on `gate`.
pub struct FaultyStore {
    inner: SledStore,
    pub failing: AtomicBool,
    pub writes_failing: AtomicBool,
    pub corrupt: AtomicBool,
    pub gated: AtomicBool,
    pub entered: Semaphore,
    pub gate: Semaphore,
}

impl FaultyStore {
    pub fn open(dir: &Path) -> FaultyStore {
        FaultyStore {
            inner: SledStore::open(dir).unwrap(),
            failing: AtomicBool::new(false),
            writes_failing: AtomicBool::new(false),
            corrupt: AtomicBool::new(false),
            gated: AtomicBool::new(false),
            entered: Semaphore::new(0),
            gate: Semaphore::new(0),
        }
    }

    fn fault(&self) -> Result<(), StoreError> {
        if self.failing.load(Ordering::SeqCst) {
            return Err(injected_fault());
        }
        Ok(())
    }

    fn write_fault(&self) -> Result<(), StoreError> {
        self.fault()?;
        if self.writes_failing.load(Ordering::SeqCst) {
            return Err(injected_fault());
        }
        Ok(())
    }
}

#[async_trait]
impl Store for FaultyStore {
    async fn insert(
        &self,
        hash: TokenHash,
        new: &NewToken,
        created_at: SystemTime,
        event: Option<&Draft>,
    ) -> Result<ServiceToken, StoreError> {
        self.write_fault()?;
        if self.gated.load(Ordering::SeqCst) {
            self.entered.add_permits(1);
            self.gate.acquire().await.unwrap().forget();
        }
        self.inner.insert(hash, new, created_at, event).await
    }

    async fn find_by_hash(&self, hash: &TokenHash) -> Result<Option<StoredToken>, StoreError> {
        self.fault()?;
        if self.corrupt.load(Ordering::SeqCst) {
            let cause = std::io::Error::other(INJECTED_CAUSE);
            return Err(StoreError::corrupt("token 42 (injected)", cause));
        }
        self.inner.find_by_hash(hash).await
    }

    async fn get(&self, id: TokenId) -> Result<Option<StoredToken>, StoreError> {
        self.fault()?;
        self.inner.get(id).await
    }

    async fn ready(&self) -> Result<(), StoreError> {
        self.fault()
    }

    async fn list_matching(
        &self,
        after: Option<TokenId>,
        limit: usize,
        filter: &ListFilter,
    ) -> Result<Vec<StoredToken>, StoreError> {
        self.fault()?;
        self.inner.list_matching(after, limit, filter).await
    }

    fn kind(&self) -> &'static str {
        self.inner.kind()
    }

    async fn list_ordered(
        &self,
        order: ListOrder,
        after: Option<&Position>,
        limit: usize,
        filter: &ListFilter,
    ) -> Result<Vec<StoredToken>, StoreError> {
        self.fault()?;
        self.inner.list_ordered(order, after, limit, filter).await
    }

    async fn change(
        &self,
        id: TokenId,
        change: &Change,
        keep: &KeepAdmin,
        expected: Option<&Etag>,
        event: Option<&Draft>,
    ) -> Result<Outcome<(ServiceToken, ServiceToken)>, StoreError> {
        self.write_fault()?;
        self.inner.change(id, change, keep, expected, event).await
    }

    async fn import(&self, tokens: &[StoredToken]) -> Result<Vec<Imported>, StoreError> {
        self.write_fault()?;
        self.inner.import(tokens).await
    }

    async fn delete(
        &self,
        id: TokenId,
        keep: &KeepAdmin,
        expected: Option<&Etag>,
        event: Option<&Draft>,
    ) -> Result<Outcome<()>, StoreError> {
        self.write_fault()?;
        self.inner.delete(id, keep, expected, event).await
    }

    async fn signal_expiries(&self, now: SystemTime) -> Result<u64, StoreError> {
        self.write_fault()?;
        self.inner.signal_expiries(now).await
    }

    async fn summary(&self, now: SystemTime) -> Result<TokenSummary, StoreError> {
        self.fault()?;
        self.inner.summary(now).await
    }

    async fn count(&self) -> Result<u64, StoreError> {
        self.fault()?;
        self.inner.count().await
    }

    async fn flush(&self) -> Result<(), StoreError> {
        self.write_fault()?;
        self.inner.flush().await
    }
}

#[async_trait]
impl EventOutbox for FaultyStore {
    async fn claim_events(
        &self,
        limit: usize,
        lease: Duration,
    ) -> Result<Vec<Pending>, StoreError> {
        self.write_fault()?;
        self.inner.claim_events(limit, lease).await
    }

    async fn settle_events(&self, settled: &[Settle]) -> Result<(), StoreError> {
        self.write_fault()?;
        self.inner.settle_events(settled).await
    }

    async fn outbox_stats(&self) -> Result<OutboxStats, StoreError> {
        self.fault()?;
        self.inner.outbox_stats().await
    }
}

#[async_trait]
impl Sessions for FaultyStore {
    async fn open_session(&self, session: &Session) -> Result<(), StoreError> {
        self.fault()?;
        self.inner.open_session(session).await
    }

    async fn session(&self, key: &SessionKey) -> Result<Option<Session>, StoreError> {
        self.fault()?;
        self.inner.session(key).await
    }

    async fn touch_sessions(
        &self,
        seen: &[(SessionKey, std::time::SystemTime)],
    ) -> Result<(), StoreError> {
        self.fault()?;
        self.inner.touch_sessions(seen).await
    }

    async fn end_session(&self, key: &SessionKey) -> Result<(), StoreError> {
        self.fault()?;
        self.inner.end_session(key).await
    }

    async fn end_stale_sessions(
        &self,
        seen_before: std::time::SystemTime,
        begun_before: std::time::SystemTime,
    ) -> Result<u64, StoreError> {
        self.fault()?;
        self.inner
            .end_stale_sessions(seen_before, begun_before)
            .await
    }
}

#[async_trait]
impl UseRecords for FaultyStore {
    async fn record_uses(
        &self,
        uses: &[Use],
        announce: Option<Announce>,
    ) -> Result<u64, StoreError> {
        self.write_fault()?;
        self.inner.record_uses(uses, announce).await
    }

    async fn record_usage(
        &self,
        day: sts::model::Day,
        counts: &[(sts::model::TokenId, sts::model::Counts)],
    ) -> Result<(), StoreError> {
        self.write_fault()?;
        self.inner.record_usage(day, counts).await
    }

    async fn usage(
        &self,
        id: sts::model::TokenId,
        from: sts::model::Day,
        to: sts::model::Day,
    ) -> Result<Vec<sts::model::DayUsage>, StoreError> {
        self.fault()?;
        self.inner.usage(id, from, to).await
    }

    async fn purge_usage(&self, before: sts::model::Day) -> Result<u64, StoreError> {
        self.write_fault()?;
        self.inner.purge_usage(before).await
    }
}
