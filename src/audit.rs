//! The audit log's tracing target, and its events for management calls
//! refused to callers without a valid credential, aggregated so that nobody
//! can fill the disk with them.
//!
//! Anyone who can reach the port can send such calls as fast as the network
//! allows, and each one used to be a log line. An authenticated caller's
//! refusal stays an individual event (the caller is named and cannot
//! multiply themselves at will); these are not. Per interval, the first one
//! is logged in full at once (so a single mistake is seen with its reason
//! straight away) and the rest are counted by RPC, source address and
//! reason, then written as at most [`MAX_KEYS`] + 1 summary events when the
//! interval ends (and at shutdown). Metrics still count every call.

use std::{
    collections::BTreeMap,
    net::IpAddr,
    sync::{Arc, Mutex, OnceLock, Weak},
    time::Duration,
};

/// The tracing target of audit events: every Create and Delete, every
/// refused or failed management call, and every refused role check, with
/// who made it. Never a secret.
pub const AUDIT: &str = "sts::audit";

/// Distinct (RPC, source, reason) counts kept per interval; further ones
/// are counted together, so memory stays bounded under a distributed flood.
pub const MAX_KEYS: usize = 16;

type Key = (&'static str, Option<IpAddr>, &'static str);

#[derive(Default)]
struct Window {
    /// Whether this interval's first refusal has been logged in full.
    first_logged: bool,
    counts: BTreeMap<Key, u64>,
    /// Refusals beyond [`MAX_KEYS`] distinct keys.
    others: u64,
}

pub struct Refusals {
    interval: Duration,
    window: Mutex<Window>,
    ticker: OnceLock<()>,
}

/// One refused call, as the service saw it.
pub struct Refusal<'a> {
    pub rpc: &'static str,
    pub source: Option<IpAddr>,
    /// A short, bounded label (`missing`, `not_found`, ...).
    pub reason: &'static str,
    /// The gRPC code name of the answer.
    pub outcome: &'static str,
    /// The full reason, for the one event logged in full.
    pub detail: &'a dyn std::fmt::Display,
}

impl Refusals {
    pub fn new(interval: Duration) -> Arc<Refusals> {
        Arc::new(Refusals {
            interval,
            window: Mutex::default(),
            ticker: OnceLock::new(),
        })
    }

    /// Records `refusal`: logged in full if it is the interval's first,
    /// otherwise counted for the summary.
    pub fn record(self: &Arc<Self>, refusal: Refusal<'_>) {
        self.ticker.get_or_init(|| {
            tokio::spawn(tick(Arc::downgrade(self), self.interval));
        });
        let first = {
            let mut window = self.lock();
            if window.first_logged {
                let key = (refusal.rpc, refusal.source, refusal.reason);
                let room = window.counts.len() < MAX_KEYS;
                match window.counts.get_mut(&key) {
                    Some(count) => *count += 1,
                    None if room => {
                        window.counts.insert(key, 1);
                    }
                    None => window.others += 1,
                }
                false
            } else {
                window.first_logged = true;
                true
            }
        };
        if first {
            tracing::warn!(
                target: AUDIT,
                rpc = refusal.rpc,
                outcome = refusal.outcome,
                source = %Source(refusal.source),
                reason = %refusal.detail,
                "management call refused (further unauthenticated refusals in the next {:?} are summarized)",
                self.interval
            );
        }
    }

    /// Writes the summary of the interval so far and starts a new one.
    pub fn flush(&self) {
        let window = std::mem::take(&mut *self.lock());
        let seconds = self.interval.as_secs_f64();
        for ((rpc, source, reason), count) in window.counts {
            tracing::warn!(
                target: AUDIT,
                rpc,
                outcome = "UNAUTHENTICATED",
                source = %Source(source),
                reason,
                count,
                window_seconds = seconds,
                "management calls refused to unauthenticated callers (summary)"
            );
        }
        if window.others > 0 {
            tracing::warn!(
                target: AUDIT,
                outcome = "UNAUTHENTICATED",
                source = "others",
                count = window.others,
                window_seconds = seconds,
                "management calls refused to unauthenticated callers (summary of further sources)"
            );
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Window> {
        // Counts only: a panic elsewhere cannot leave them inconsistent.
        self.window.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Flushes every interval while the service lives.
async fn tick(refusals: Weak<Refusals>, interval: Duration) {
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticks.tick().await;
    loop {
        ticks.tick().await;
        match refusals.upgrade() {
            Some(refusals) => refusals.flush(),
            None => return,
        }
    }
}

/// A source address, or `unknown` where the transport had none.
struct Source(Option<IpAddr>);

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(address) => address.fmt(f),
            None => f.write_str("unknown"),
        }
    }
}
