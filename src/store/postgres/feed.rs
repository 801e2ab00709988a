//! The change feed: each replica LISTENs for deletes and changes made
//! anywhere and sends itself heartbeats, which vouch for its validation
//! cache while they arrive (see the module above).

use std::{
    collections::VecDeque,
    sync::{Arc, Mutex},
    time::Duration,
};

use sqlx::{PgPool, postgres::PgListener};
use tokio::time::Instant;

use crate::{cache::ValidationCache, model::TokenId};

use super::CHANNEL;

/// Longest a replica's cache may answer for a token deleted elsewhere:
/// below the promised 100 ms, leaving room for the lookup itself.
pub const STALENESS_BOUND: Duration = Duration::from_millis(80);

/// How often each replica's feed proves itself live.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_millis(25);

/// Pause before listening again after the feed failed.
const FEED_RETRY: Duration = Duration::from_millis(500);

/// A feed that hears none of its own heartbeats (40 of them) for this
/// long is taken for stalled (a connection that went quiet without
/// closing: sqlx would wait on it forever) and opened again.
pub(super) const FEED_SILENCE_LIMIT: Duration = Duration::from_secs(1);

/// How the change feed is doing, for readiness detail and metrics.
#[derive(Default)]
pub(super) struct FeedHealth {
    /// The feed is not hearing its heartbeats (silent, or reconnecting).
    pub(super) silent: std::sync::atomic::AtomicBool,
    pub(super) stalls: prometheus_client::metrics::counter::Counter,
    pub(super) live: prometheus_client::metrics::gauge::Gauge,
}

impl FeedHealth {
    /// A heartbeat of ours arrived.
    fn heard(&self) {
        if self
            .silent
            .swap(false, std::sync::atomic::Ordering::Relaxed)
        {
            tracing::info!(
                "the change feed hears its heartbeats again; the validation cache is back on"
            );
        }
        self.live.set(1);
    }

    /// None arrived for [`FEED_SILENCE_LIMIT`]: counted every time, said
    /// once per episode.
    fn went_silent(&self) {
        self.stalls.inc();
        self.live.set(0);
        if !self.silent.swap(true, std::sync::atomic::Ordering::Relaxed) {
            tracing::warn!(
                silence = ?FEED_SILENCE_LIMIT,
                "the change feed went silent (none of its heartbeats came back); validation cache off, listening again on a new connection"
            );
        }
    }
}

/// Keeps `cache` informed of deletes made anywhere, and vouches for it while
/// the channel provably works. Runs until the store drops it.
pub(super) async fn feed(pool: PgPool, cache: Arc<ValidationCache>, health: Arc<FeedHealth>) {
    let replica: u64 = rand::random();
    let sent = Arc::new(Mutex::new(VecDeque::<(u64, Instant)>::new()));
    let heartbeats = tokio::spawn(heartbeat(pool.clone(), replica, sent.clone()));
    let _stop_heartbeats = AbortOnDrop(heartbeats.abort_handle());
    loop {
        let mut listener = match PgListener::connect_with(&pool).await {
            Ok(listener) => listener,
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for deletes; the validation cache stays off");
                tokio::time::sleep(FEED_RETRY).await;
                continue;
            }
        };
        if let Err(e) = listener.listen(CHANNEL).await {
            tracing::warn!(error = %e, "cannot listen for deletes; the validation cache stays off");
            tokio::time::sleep(FEED_RETRY).await;
            continue;
        }
        // Heartbeats sent before this instant may vouch for a time when
        // nobody was listening: they do not count.
        let mut listening_since = Instant::now();
        let mut last_heard = Instant::now();
        tracing::info!("listening for deletes made by any replica");
        loop {
            let silence_ends = last_heard + FEED_SILENCE_LIMIT;
            let Ok(received) = tokio::time::timeout_at(silence_ends, listener.try_recv()).await
            else {
                cache.distrust();
                health.went_silent();
                // A new listener: dropping this one closes its connection.
                break;
            };
            match received {
                Ok(Some(notification)) => {
                    let ours = receive(
                        &cache,
                        &sent,
                        replica,
                        listening_since,
                        notification.payload(),
                    );
                    if ours {
                        last_heard = Instant::now();
                        health.heard();
                    }
                }
                Ok(None) => {
                    // Lost and re-established (sqlx reconnects before
                    // returning): deletes in between were missed.
                    cache.distrust();
                    listening_since = Instant::now();
                    last_heard = Instant::now();
                    tracing::warn!(
                        "the delete feed's connection was lost; validation cache cleared"
                    );
                }
                Err(e) => {
                    cache.distrust();
                    tracing::warn!(error = %e, "the delete feed failed; validation cache cleared");
                    tokio::time::sleep(FEED_RETRY).await;
                    break;
                }
            }
        }
    }
}

/// Acts on one notification; whether it was one of this replica's own
/// heartbeats (proof the feed is live).
fn receive(
    cache: &ValidationCache,
    sent: &Mutex<VecDeque<(u64, Instant)>>,
    replica: u64,
    listening_since: Instant,
    payload: &str,
) -> bool {
    if let Some(id) = payload.strip_prefix("d:") {
        match id.parse().ok().and_then(|id| TokenId::parse(id).ok()) {
            Some(id) => cache.invalidate(id),
            // Unreadable: assume the worst.
            None => cache.clear(),
        }
    } else if let Some(beat) = payload.strip_prefix(&format!("h:{replica}:")) {
        let Ok(n) = beat.parse::<u64>() else {
            return false;
        };
        let mut sent = sent.lock().unwrap_or_else(|e| e.into_inner());
        let mut sent_at = None;
        while let Some(&(m, at)) = sent.front() {
            if m > n {
                break;
            }
            sent.pop_front();
            if m == n {
                sent_at = Some(at);
            }
        }
        if let Some(at) = sent_at.filter(|at| *at >= listening_since) {
            cache.confirm_until(at + STALENESS_BOUND);
        }
        return true;
    }
    false
}

/// Sends this replica's numbered heartbeats, noting when each was sent.
pub(super) async fn heartbeat(
    pool: PgPool,
    replica: u64,
    sent: Arc<Mutex<VecDeque<(u64, Instant)>>>,
) {
    let mut ticks = tokio::time::interval(HEARTBEAT_INTERVAL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    for n in 1u64.. {
        ticks.tick().await;
        {
            let mut sent = sent.lock().unwrap_or_else(|e| e.into_inner());
            // Beats that never came back (the database was away) go.
            while sent.len() >= 1024 {
                sent.pop_front();
            }
            sent.push_back((n, Instant::now()));
        }
        let beat = sqlx::query("SELECT pg_notify($1, $2)")
            .bind(CHANNEL)
            .bind(format!("h:{replica}:{n}"))
            .execute(&pool);
        if let Err(e) = beat.await {
            tracing::debug!(error = %e, "heartbeat not sent");
        }
    }
}

struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
