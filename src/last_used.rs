//! Last-used times: noted on every successful check of a token, written to
//! the store at most once per token per resolution, in batches off the
//! request path.
//!
//! The request path pays a read lock and an atomic load while a token's
//! use is already noted for the current window; the first use in a new
//! window queues it. A task writes the queue once per resolution, so a use
//! reaches the store within two resolutions (one for the window, one for
//! the batch) and a crash loses at most the queue: one resolution's worth.

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{
        Arc, Mutex, OnceLock, RwLock, Weak,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, SystemTime},
};

use crate::{
    clock::{Clock, epoch_micros, to_micros},
    metrics::Metrics,
    model::{
        Counts, Day, MAX_RECENT_SOURCES, MatchedSecret, OUTCOMES, Outcome, RecentSources, TokenId,
    },
    store::{Store, StoreError, Use},
};

/// How a batch of uses reaches the store: plainly, or (the service's, with
/// webhooks on) announcing new sources when the outbox has room.
#[async_trait::async_trait]
pub trait UseWriter: Send + Sync {
    async fn write(&self, store: &dyn Store, batch: &[Use]) -> Result<(), StoreError>;
}

/// Writes uses and announces nothing.
pub struct Plainly;

#[async_trait::async_trait]
impl UseWriter for Plainly {
    async fn write(&self, store: &dyn Store, batch: &[Use]) -> Result<(), StoreError> {
        store.record_uses(batch, None).await.map(|_| ())
    }
}

pub struct LastUsed {
    resolution: Duration,
    store: Arc<dyn Store>,
    writer_of_uses: Arc<dyn UseWriter>,
    clock: Arc<dyn Clock>,
    metrics: Arc<Metrics>,
    /// When each recently used token's use was last queued, per secret.
    noted: RwLock<HashMap<u64, Noted>>,
    /// What the next batch writes: one entry per token.
    pending: Mutex<HashMap<u64, Use>>,
    writer: OnceLock<()>,
}

/// Microseconds since the epoch of the last queued use (0: none), per
/// secret and per source address.
#[derive(Default)]
struct Noted {
    current: AtomicU64,
    previous: AtomicU64,
    /// The sources queued lately, as (key, micros) pairs (key 0: free):
    /// a few per token (those it is used from). Read with plain loads, so
    /// a hot token checked from many threads shares the cache line rather
    /// than bouncing a lock's count between cores.
    sources: [(AtomicU64, AtomicU64); NOTED_SOURCES],
    /// Checks since the last batch, by outcome (`Outcome::index`): the
    /// token's usage, added to its day's record by the next batch.
    counts: [AtomicU64; OUTCOMES],
}

/// Most sources remembered per token between batches: beyond it the
/// least recently queued is forgotten (and queued again at its next use).
const NOTED_SOURCES: usize = 2 * MAX_RECENT_SOURCES;

/// A source's key in [`Noted::sources`], never 0: an IPv4 address
/// exactly, an IPv6 one by a hash keyed per process (a client cannot pick
/// an address whose key is another's, to hide its uses behind it).
fn source_key(source: IpAddr) -> u64 {
    static KEYS: OnceLock<std::collections::hash_map::RandomState> = OnceLock::new();
    match source {
        IpAddr::V4(v4) => (1 << 32) | u64::from(v4.to_bits()),
        IpAddr::V6(v6) => {
            use std::hash::BuildHasher;
            KEYS.get_or_init(Default::default).hash_one(v6.to_bits()) | (1 << 63)
        }
    }
}

impl Noted {
    fn slot(&self, secret: MatchedSecret) -> &AtomicU64 {
        match secret {
            MatchedSecret::Current => &self.current,
            MatchedSecret::Previous => &self.previous,
        }
    }

    /// Whether a use through `secret` at `now` is the first of its window
    /// (then it is this caller's to queue).
    fn claim(&self, secret: MatchedSecret, now: u64, due: impl Fn(u64) -> bool) -> bool {
        let slot = self.slot(secret);
        let last = slot.load(Ordering::Relaxed);
        // Whoever moves the slot queues the use; the others are inside the
        // new window already.
        due(last)
            && slot
                .compare_exchange(last, now, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
    }

    /// Whether a use from `source` at `now` is the first from there in its
    /// window. Two checks racing may both queue it (the merge makes that
    /// one source), or miss it (its next use queues it): never a wrong
    /// time, never a lock.
    fn claim_source(&self, source: IpAddr, now: u64, due: impl Fn(u64) -> bool) -> bool {
        let key = source_key(source);
        for (slot_key, at) in &self.sources {
            if slot_key.load(Ordering::Relaxed) == key {
                let last = at.load(Ordering::Relaxed);
                return due(last)
                    && at
                        .compare_exchange(last, now, Ordering::AcqRel, Ordering::Relaxed)
                        .is_ok();
            }
        }
        // New here: it takes the slot queued longest ago.
        let (slot_key, at) = self
            .sources
            .iter()
            .min_by_key(|(_, at)| at.load(Ordering::Relaxed))
            .expect("there are slots");
        at.store(now, Ordering::Relaxed);
        slot_key.store(key, Ordering::Relaxed);
        true
    }
}

fn micros(at: SystemTime) -> u64 {
    u64::try_from(epoch_micros(at)).unwrap_or(0)
}

impl LastUsed {
    /// Tracking at `resolution`; `None` when it is zero (tracking off).
    pub fn new(
        resolution: Duration,
        store: Arc<dyn Store>,
        writer_of_uses: Arc<dyn UseWriter>,
        clock: Arc<dyn Clock>,
        metrics: Arc<Metrics>,
    ) -> Option<Arc<LastUsed>> {
        (!resolution.is_zero()).then(|| {
            Arc::new(LastUsed {
                resolution,
                store,
                writer_of_uses,
                clock,
                metrics,
                noted: RwLock::default(),
                pending: Mutex::default(),
                writer: OnceLock::new(),
            })
        })
    }

    fn window(&self) -> u64 {
        u64::try_from(self.resolution.as_micros()).unwrap_or(u64::MAX)
    }

    /// `id` was checked successfully through `secret` at `at`, from
    /// `source` when the check knew it.
    pub fn note(
        self: &Arc<Self>,
        id: TokenId,
        secret: MatchedSecret,
        at: SystemTime,
        source: Option<IpAddr>,
    ) {
        let now = micros(at);
        let window = self.window();
        // Within the window of the last queued use (or before it: a clock
        // that stepped back): nothing to do.
        let due = |last: u64| last == 0 || now.saturating_sub(last) >= window;
        let source = source.map(|s| s.to_canonical());
        let claim = |entry: &Noted| {
            entry.counts[Outcome::Valid.index()].fetch_add(1, Ordering::Relaxed);
            let used = entry.claim(secret, now, due);
            let seen = source.filter(|s| entry.claim_source(*s, now, due));
            (used, seen)
        };
        let claimed = {
            let noted = self.noted.read().unwrap_or_else(|e| e.into_inner());
            noted.get(&id.get()).map(claim)
        };
        let (used, seen) = claimed.unwrap_or_else(|| {
            let mut noted = self.noted.write().unwrap_or_else(|e| e.into_inner());
            claim(noted.entry(id.get()).or_default())
        });
        if used || seen.is_some() {
            self.queue(id, secret, at, seen);
        }
    }

    /// A check of `id` that came to `outcome` (a refusal: a valid use is
    /// counted by [`LastUsed::note`]), for its usage; written with the next
    /// batch.
    pub fn count(self: &Arc<Self>, id: TokenId, outcome: Outcome) {
        self.count_many(id, outcome, 1);
    }

    /// `n` checks of `id` that came to `outcome` (uses a caller answered
    /// from its own cache and reported at once); nothing when `n` is 0.
    pub fn count_many(self: &Arc<Self>, id: TokenId, outcome: Outcome, n: u64) {
        if n == 0 {
            return;
        }
        let counted = {
            let noted = self.noted.read().unwrap_or_else(|e| e.into_inner());
            noted
                .get(&id.get())
                .map(|entry| entry.counts[outcome.index()].fetch_add(n, Ordering::Relaxed))
        };
        if counted.is_none() {
            let mut noted = self.noted.write().unwrap_or_else(|e| e.into_inner());
            noted.entry(id.get()).or_default().counts[outcome.index()]
                .fetch_add(n, Ordering::Relaxed);
        }
        self.start_writer();
    }

    fn start_writer(self: &Arc<Self>) {
        self.writer.get_or_init(|| {
            tokio::spawn(write_every(Arc::downgrade(self), self.resolution));
        });
    }

    /// Queues a use (any use is one of "either secret", so a use queued
    /// for its source alone moves `at` rightly too).
    fn queue(
        self: &Arc<Self>,
        id: TokenId,
        secret: MatchedSecret,
        at: SystemTime,
        source: Option<IpAddr>,
    ) {
        let at = to_micros(at);
        self.start_writer();
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        let entry = pending.entry(id.get()).or_insert(Use {
            id,
            at,
            previous_at: None,
            sources: RecentSources::default(),
        });
        entry.at = entry.at.max(at);
        if secret == MatchedSecret::Previous {
            entry.previous_at = Some(entry.previous_at.map_or(at, |p| p.max(at)));
        }
        if let Some(source) = source {
            entry.sources.see(source, at);
        }
    }

    /// Writes the queue as one batch. A batch the store refuses goes back
    /// into the queue (newer uses win), so an outage delays last-used times
    /// instead of losing them.
    pub async fn write(&self) {
        let batch: Vec<Use> = {
            let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
            pending.drain().map(|(_, used)| used).collect()
        };
        let counts = self.harvest();
        self.forget_old();
        self.write_usage(counts).await;
        if batch.is_empty() {
            return;
        }
        match self.writer_of_uses.write(&*self.store, &batch).await {
            Ok(()) => self.metrics.last_used_batch(batch.len() as u64, true),
            Err(e) => {
                self.metrics.last_used_batch(batch.len() as u64, false);
                tracing::warn!(error = %e, tokens = batch.len(), "could not record last-used times; will retry");
                let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
                for used in batch {
                    match pending.entry(used.id.get()) {
                        std::collections::hash_map::Entry::Occupied(mut newer) => {
                            newer.get_mut().sources.merge(&used.sources);
                        }
                        std::collections::hash_map::Entry::Vacant(slot) => {
                            slot.insert(used);
                        }
                    }
                }
            }
        }
    }

    /// Every token's checks since the last batch, taken (the counters left
    /// at zero).
    fn harvest(&self) -> Vec<(TokenId, Counts)> {
        let noted = self.noted.read().unwrap_or_else(|e| e.into_inner());
        noted
            .iter()
            .filter_map(|(id, entry)| {
                let mut counts = Counts::default();
                for (kept, count) in counts.0.iter_mut().zip(&entry.counts) {
                    *kept = count.swap(0, Ordering::Relaxed);
                }
                let id = TokenId::parse(*id).ok()?;
                (!counts.is_empty()).then_some((id, counts))
            })
            .collect()
    }

    /// Adds `counts` to today's usage (UTC, by the server's clock: a
    /// batch's checks land on the day it is written). Counts the store
    /// refuses go back to be written with the next batch.
    async fn write_usage(&self, counts: Vec<(TokenId, Counts)>) {
        if counts.is_empty() {
            return;
        }
        let day = Day::of(self.clock.now());
        if let Err(e) = self.store.record_usage(day, &counts).await {
            tracing::warn!(error = %e, tokens = counts.len(), "could not record token usage; will retry");
            let mut noted = self.noted.write().unwrap_or_else(|e| e.into_inner());
            for (id, counts) in counts {
                let entry = noted.entry(id.get()).or_default();
                for (count, kept) in entry.counts.iter().zip(counts.0) {
                    count.fetch_add(kept, Ordering::Relaxed);
                }
            }
        }
    }

    /// Drops the notes of tokens not used for a whole window: their next
    /// use is due anyway. Keeps memory to the tokens in use (and those
    /// with checks still to write).
    fn forget_old(&self) {
        let now = micros(self.clock.now());
        let window = self.window();
        let mut noted = self.noted.write().unwrap_or_else(|e| e.into_inner());
        noted.retain(|_, entry| {
            let last = entry
                .current
                .load(Ordering::Relaxed)
                .max(entry.previous.load(Ordering::Relaxed));
            now.saturating_sub(last) < window
                || entry.counts.iter().any(|c| c.load(Ordering::Relaxed) != 0)
        });
    }
}

/// Writes the queue once per resolution while the tracker lives.
async fn write_every(tracker: Weak<LastUsed>, resolution: Duration) {
    let mut ticks = tokio::time::interval(resolution);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticks.tick().await;
    loop {
        ticks.tick().await;
        let Some(tracker) = tracker.upgrade() else {
            return;
        };
        tracker.write().await;
    }
}
