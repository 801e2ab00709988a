//! The event outbox as the service keeps count of it: events drafted with
//! their change, held to the capacity, and the looks at the store that
//! keep the count true.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use tokio::sync::Notify;

use crate::{
    clock::{Clock, to_micros},
    error::Error,
    events::{Draft, OutboxStats, Pending, Settle},
    last_used::UseWriter,
    store::{Announce, Store, StoreError, Use},
};

use super::TokenService;

/// How long a look at the outbox waits for the changes under way to be
/// written before it counts without them.
const OUTBOX_LOOK_WAIT: Duration = Duration::from_millis(200);

/// An event drafted with a change, counted against the outbox's capacity
/// (as drafting) until the change is written or given up; written, it is
/// counted as pending.
pub(super) struct Drafted<'a> {
    draft: Draft,
    outbox: &'a Outbox,
    written: bool,
    /// Keeps a look at the store from counting the outbox while this
    /// event's change may be half way into it.
    _gate: tokio::sync::RwLockReadGuard<'a, ()>,
}

impl Drop for Drafted<'_> {
    fn drop(&mut self) {
        self.outbox.drafting.fetch_sub(1, Ordering::Relaxed);
        if self.written {
            self.outbox.pending.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The draft inside, as the store takes it.
pub(super) fn draft_of<'a>(drafted: &'a Option<Drafted<'_>>) -> Option<&'a Draft> {
    drafted.as_ref().map(|d| &d.draft)
}

/// What the service knows of the outbox between looks at the store.
#[derive(Default)]
pub(super) struct Outbox {
    /// Events waiting, as of the last look plus those written since: the
    /// capacity is held to this (an estimate between looks, and across
    /// replicas).
    pending: AtomicU64,
    /// Events drafted whose change is not yet written: held against the
    /// capacity too, so a look at the store in between (which cannot count
    /// them yet) lets none past it.
    drafting: AtomicU64,
    /// Held (shared) by every change that carries an event, from its draft
    /// until it is written or given up, and (alone) by a look at the
    /// store: a look then never reads the store between an event's commit
    /// and its count here, so it neither counts an event twice (dropping
    /// one early) nor misses one.
    gate: tokio::sync::RwLock<()>,
    /// Whether the log already said the outbox is full (said once per
    /// episode, not per event).
    full: AtomicBool,
    /// Wakes delivery when this replica wrote an event.
    written: Notify,
}

impl Outbox {
    /// Whether `pending` events leave room below `capacity`; says so once
    /// when they do not.
    fn has_room(&self, pending: u64, capacity: u64) -> bool {
        if pending < capacity {
            return true;
        }
        if !self.full.swap(true, Ordering::Relaxed) {
            tracing::error!(
                pending,
                capacity,
                "the event outbox is full: new events are dropped until webhooks take some (see sts_events_pending)"
            );
        }
        false
    }
}

/// Writes a batch of uses announcing new sources (`token.new_source`),
/// held to the outbox as every event is: under the gate, only while the
/// outbox has room, and counted once written.
pub(super) struct AnnouncingUses {
    pub(super) outbox: Arc<Outbox>,
    pub(super) capacity: u64,
    /// At most one announcement per token per this long: the last-used
    /// resolution, the window a batch covers.
    pub(super) every: Duration,
    pub(super) clock: Arc<dyn Clock>,
}

#[async_trait::async_trait]
impl UseWriter for AnnouncingUses {
    async fn write(&self, store: &dyn Store, batch: &[Use]) -> Result<(), StoreError> {
        let _gate = self.outbox.gate.read().await;
        let pending = self.outbox.pending.load(Ordering::Relaxed)
            + self.outbox.drafting.load(Ordering::Relaxed);
        let announce = self
            .outbox
            .has_room(pending, self.capacity)
            .then(|| Announce {
                at: to_micros(self.clock.now()),
                every: self.every,
            });
        let announced = store.record_uses(batch, announce).await?;
        if announced > 0 {
            self.outbox.pending.fetch_add(announced, Ordering::Relaxed);
            self.outbox.written.notify_one();
        }
        Ok(())
    }
}

impl TokenService {
    /// The event to record with a change, when webhooks are on and the
    /// outbox has room. A full outbox drops the event (counted, logged
    /// once), never the change: revoking must not wait on a receiver.
    pub(super) async fn draft(&self, make: impl FnOnce() -> Draft) -> Option<Drafted<'_>> {
        let webhooks = self.config.webhooks.as_ref()?;
        let gate = self.outbox.gate.read().await;
        // Counted first, then checked: two drafts at once cannot both take
        // the last place.
        let drafting = self.outbox.drafting.fetch_add(1, Ordering::Relaxed) + 1;
        let drafted = Drafted {
            draft: make(),
            outbox: &self.outbox,
            written: false,
            _gate: gate,
        };
        let pending = self.outbox.pending.load(Ordering::Relaxed);
        if !self.outbox_has_room(pending + drafting, webhooks.outbox_capacity + 1) {
            self.metrics.event_dropped();
            return None;
        }
        // Current between delivery rounds too (a round may wait on a URL
        // that hangs until its timeout).
        self.metrics.events_pending(pending + drafting);
        Some(drafted)
    }

    /// Whether `pending` events leave room below `capacity`.
    fn outbox_has_room(&self, pending: u64, capacity: u64) -> bool {
        self.outbox.has_room(pending, capacity)
    }

    /// Records the expiry events due now (`token.expiring` at 30, 7 and 1
    /// days before, `token.expired`); nothing when webhooks are off. Run
    /// by the server with the token counts. Returns how many.
    pub async fn signal_expiries(&self) -> Result<u64, Error> {
        let Some(webhooks) = &self.config.webhooks else {
            return Ok(0);
        };
        let _gate = self.outbox.gate.read().await;
        let pending = self.outbox.pending.load(Ordering::Relaxed)
            + self.outbox.drafting.load(Ordering::Relaxed);
        if !self.outbox_has_room(pending, webhooks.outbox_capacity) {
            return Ok(0);
        }
        let signalled = self.store.signal_expiries(self.now()).await?;
        if signalled > 0 {
            self.outbox.pending.fetch_add(signalled, Ordering::Relaxed);
            self.outbox.written.notify_one();
        }
        Ok(signalled)
    }

    /// Resolves once this replica wrote an event since the last call.
    pub async fn event_written(&self) {
        self.outbox.written.notified().await;
    }

    /// Outbox events for delivery (see [`Store::claim_events`]).
    pub async fn claim_events(&self, limit: usize, lease: Duration) -> Result<Vec<Pending>, Error> {
        Ok(self.store.claim_events(limit, lease).await?)
    }

    pub async fn settle_events(&self, settled: &[Settle]) -> Result<(), Error> {
        Ok(self.store.settle_events(settled).await?)
    }

    /// Looks at the outbox: the metrics, and the count the capacity is
    /// held to.
    pub async fn outbox_stats(&self) -> Result<OutboxStats, Error> {
        // Waits for the changes under way (one commit, as a rule) and holds
        // new ones back for one count. Past the wait (a disk that stalls
        // them), the look goes ahead: it may miss or count twice the events
        // under way, until the next look.
        let _gate = tokio::time::timeout(OUTBOX_LOOK_WAIT, self.outbox.gate.write())
            .await
            .ok();
        let stats = self.store.outbox_stats().await?;
        self.outbox.pending.store(stats.pending, Ordering::Relaxed);
        let capacity = self.config.webhooks.as_ref().map(|w| w.outbox_capacity);
        if capacity.is_some_and(|c| stats.pending < c)
            && self.outbox.full.swap(false, Ordering::Relaxed)
        {
            tracing::info!(pending = stats.pending, "the event outbox has room again");
        }
        let age = stats
            .oldest
            // By the clock that dated the events.
            .and_then(|oldest| self.now().duration_since(oldest).ok())
            .map_or(0, |age| age.as_secs());
        self.metrics.outbox(stats.pending, age);
        Ok(stats)
    }

    /// A change with `event` committed: it is pending now, and delivery
    /// can start on it.
    pub(super) fn event_committed(&self, event: Option<Drafted<'_>>) {
        if let Some(mut event) = event {
            event.written = true;
            drop(event);
            self.outbox.written.notify_one();
        }
    }
}
