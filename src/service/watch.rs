//! Watch streams and reported uses: what lets a caller answer validations
//! from its own memory and still refuse a revoked token within 100 ms. A
//! stream says SYNCED once this replica's change feed is live, then every
//! change the validation cache hears (`changes`), a heartbeat each second
//! while the feed stays live, and RESYNC (ending the stream) when changes
//! may have been missed. Its caller is checked again at every heartbeat,
//! so a watcher token that is deleted, disabled, expired, rotated out or
//! stripped of the watcher role loses its stream within a second.

use std::{
    net::IpAddr,
    sync::Arc,
    time::{Duration, SystemTime},
};

use tokio::sync::{
    OwnedSemaphorePermit, Semaphore,
    broadcast::{self, error::RecvError},
    mpsc, watch,
};

use crate::{
    changes::Heard,
    credential::AuthError,
    error::Error,
    model::{CheckContext, MatchedSecret, Outcome, TokenId},
    token::TokenHash,
};

use super::TokenService;

/// How often a live stream says so.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(1);

/// Uses one `ReportUses` call may carry.
pub const MAX_REPORTED_USES: usize = 1000;

/// How often a new stream looks whether the change feed is live yet.
const FRESHNESS_POLL: Duration = Duration::from_millis(25);

/// Messages a stream holds for a client reading slowly; past them it waits,
/// and its backlog of changes (`changes::DEFAULT_BACKLOG`) fills instead.
const OUTGOING: usize = 64;

/// The audit's name for the calls.
const WATCH: &str = "Watch";
const REPORT_USES: &str = "ReportUses";

/// What a stream sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WatchMessage {
    /// Live: every change from now on is told.
    Synced { heartbeat: Duration },
    /// Nothing was missed up to now.
    Heartbeat,
    /// This token changed or went.
    Changed(TokenId),
    /// Changes may have been missed; the stream ends after it.
    Resync,
}

impl WatchMessage {
    /// The metrics label.
    fn as_str(self) -> &'static str {
        match self {
            WatchMessage::Synced { .. } => "synced",
            WatchMessage::Heartbeat => "heartbeat",
            WatchMessage::Changed(_) => "changed",
            WatchMessage::Resync => "resync",
        }
    }
}

/// Proof that a caller holds the watcher role, and how to check it again
/// (the hash of the secret it presented; never the secret).
pub struct Watcher {
    hash: TokenHash,
    source: Option<IpAddr>,
}

/// The open streams' bound, and the signal that ends them at shutdown.
pub(super) struct Watches {
    open: Arc<Semaphore>,
    closing: watch::Sender<bool>,
}

impl Watches {
    pub(super) fn new(max: usize) -> Watches {
        Watches {
            open: Arc::new(Semaphore::new(max.min(Semaphore::MAX_PERMITS))),
            closing: watch::channel(false).0,
        }
    }
}

/// What a cached check came to, as a caller reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReportedOutcome {
    Valid,
    PreviousSecret,
    MissingRole,
}

impl ReportedOutcome {
    fn as_str(self) -> &'static str {
        match self {
            ReportedOutcome::Valid => "valid",
            ReportedOutcome::PreviousSecret => "previous_secret",
            ReportedOutcome::MissingRole => "missing_role",
        }
    }
}

/// One check a caller answered from its cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReportedUse {
    pub id: TokenId,
    pub at: SystemTime,
    pub source: Option<IpAddr>,
    pub outcome: ReportedOutcome,
    /// Checks this stands for (at least 1), `at` the last of them.
    pub count: u64,
}

/// The stream's place under `--max-watch-streams`, and its count in
/// `sts_watch_streams`, until it ends.
struct Open {
    _permit: OwnedSemaphorePermit,
    metrics: Arc<crate::metrics::Metrics>,
}

impl Drop for Open {
    fn drop(&mut self) {
        self.metrics.watch_streams(-1);
    }
}

/// Resolves once shutdown has begun.
async fn shutting_down(closing: &mut watch::Receiver<bool>) {
    // The guard it returns is not `Send`: dropped here, not held.
    let _ = closing.wait_for(|closing| *closing).await;
}

impl TokenService {
    /// The caller, if its credential is valid and holds the watcher role.
    /// A previous secret in its grace is accepted, as by every check: a
    /// watcher is a checker, not a manager.
    pub async fn authorize_watcher(
        &self,
        presented: Result<&str, AuthError>,
        source: Option<IpAddr>,
        reporting: bool,
    ) -> Result<Watcher, Error> {
        let rpc = if reporting { REPORT_USES } else { WATCH };
        let context = CheckContext {
            source,
            ..CheckContext::default()
        };
        let role = &self.config.watcher_role;
        self.authorize_for(presented, rpc, &context, role).await?;
        // It authenticated, so it is well-formed: this cannot fail.
        let hash = TokenHash::of_presented(presented?).map_err(AuthError::Malformed)?;
        Ok(Watcher { hash, source })
    }

    /// Opens a stream for `watcher`: its messages, and the error that
    /// ended it, if one did. Refused past `--max-watch-streams`.
    pub fn watch(
        self: &Arc<Self>,
        watcher: Watcher,
    ) -> Result<mpsc::Receiver<Result<WatchMessage, Error>>, Error> {
        let permit =
            self.watches
                .open
                .clone()
                .try_acquire_owned()
                .map_err(|_| Error::TooManyWatches {
                    max: self.config.max_watch_streams,
                })?;
        self.metrics.watch_streams(1);
        let open = Open {
            _permit: permit,
            metrics: self.metrics.clone(),
        };
        // Before SYNCED can be said: nothing falls between.
        let heard = self.cache.changes().subscribe();
        let (out, messages) = mpsc::channel(OUTGOING);
        let closing = self.watches.closing.subscribe();
        tokio::spawn(self.clone().stream(watcher, heard, out, closing, open));
        Ok(messages)
    }

    /// Ends every open stream (UNAVAILABLE, so clients go elsewhere): at
    /// shutdown, where a stream would otherwise hold the drain to its
    /// grace period.
    pub fn end_watches(&self) {
        self.watches.closing.send_replace(true);
    }

    async fn stream(
        self: Arc<Self>,
        watcher: Watcher,
        mut heard: broadcast::Receiver<Heard>,
        out: mpsc::Sender<Result<WatchMessage, Error>>,
        mut closing: watch::Receiver<bool>,
        _open: Open,
    ) {
        let send = |message: WatchMessage| {
            self.metrics.watch_event(message.as_str());
            out.send(Ok(message))
        };
        // SYNCED only once the feed is live: a stream opened while it is
        // not would vouch for changes nobody heard.
        while !self.cache.is_fresh() {
            tokio::select! {
                () = out.closed() => return,
                () = shutting_down(&mut closing) => {
                    let _ = out.send(Err(Error::ShuttingDown)).await;
                    return;
                }
                () = tokio::time::sleep(FRESHNESS_POLL) => {}
            }
        }
        let synced = WatchMessage::Synced {
            heartbeat: HEARTBEAT_INTERVAL,
        };
        if send(synced).await.is_err() {
            return;
        }
        let start = tokio::time::Instant::now() + HEARTBEAT_INTERVAL;
        let mut ticks = tokio::time::interval_at(start, HEARTBEAT_INTERVAL);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let message = tokio::select! {
                biased;
                () = shutting_down(&mut closing) => {
                    let _ = out.send(Err(Error::ShuttingDown)).await;
                    return;
                }
                () = out.closed() => return,
                heard = heard.recv() => match heard {
                    Ok(Heard::Changed(id)) => WatchMessage::Changed(id),
                    Ok(Heard::Resync) => {
                        self.metrics.watch_resync("feed");
                        let _ = send(WatchMessage::Resync).await;
                        return;
                    }
                    Err(RecvError::Lagged(_)) => {
                        self.metrics.watch_resync("lagged");
                        let _ = send(WatchMessage::Resync).await;
                        return;
                    }
                    Err(RecvError::Closed) => return,
                },
                _ = ticks.tick() => {
                    // Not live: no heartbeat, and no look at a store that
                    // may be what is away (the events keep flowing).
                    if !self.cache.is_fresh() {
                        continue;
                    }
                    let checked =
                        tokio::time::timeout(HEARTBEAT_INTERVAL, self.still_watching(&watcher));
                    match checked.await {
                        Ok(Ok(())) => {}
                        // The caller is refused now: its stream ends.
                        Ok(Err(refused)) if refused.kind().is_refusal() => {
                            let _ = out.send(Err(refused)).await;
                            return;
                        }
                        // Not known this second (the store is slow or
                        // failing): no heartbeat vouches for it.
                        Ok(Err(_)) | Err(_) => continue,
                    }
                    if !self.cache.is_fresh() {
                        continue;
                    }
                    WatchMessage::Heartbeat
                }
            };
            if send(message).await.is_err() {
                return;
            }
        }
    }

    /// The watcher's credential checked again: still valid (a previous
    /// secret still in its grace), enabled, unexpired, with the role.
    async fn still_watching(&self, watcher: &Watcher) -> Result<(), Error> {
        let passed = self
            .check_hash(&watcher.hash, watcher.source, |bindings| {
                bindings.admits(&CheckContext {
                    source: watcher.source,
                    ..CheckContext::default()
                })
            })
            .await?
            .map_err(Error::from)?;
        if !passed
            .stored
            .token
            .roles
            .contains(&self.config.watcher_role)
        {
            return Err(Error::PermissionDenied(self.config.watcher_role.clone()));
        }
        Ok(())
    }

    /// Notes the uses a watcher answered from its cache, as if checked
    /// here: last-used times, recent sources (where recorded) and usage.
    pub fn report_uses(&self, _watcher: &Watcher, uses: &[ReportedUse]) {
        let now = self.clock.now();
        for ReportedUse {
            id,
            at,
            source,
            outcome,
            count,
        } in uses
        {
            // A caller's clock ahead of ours: its use happened by now.
            let at = (*at).min(now);
            let count = (*count).max(1);
            self.metrics.reported_uses(outcome.as_str(), count);
            let Some(last_used) = &self.last_used else {
                continue;
            };
            let source = source.filter(|_| self.config.record_sources);
            let secret = match outcome {
                ReportedOutcome::Valid => MatchedSecret::Current,
                ReportedOutcome::PreviousSecret => MatchedSecret::Previous,
                ReportedOutcome::MissingRole => {
                    last_used.count_many(*id, Outcome::MissingRole, count);
                    continue;
                }
            };
            // The last use sets the times; the others count.
            last_used.note(*id, secret, at, source);
            last_used.count_many(*id, Outcome::Valid, count - 1);
        }
    }
}
