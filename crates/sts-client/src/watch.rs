//! The Watch stream, kept open: every change it tells drops the cache's
//! answers about that token; SYNCED and RESYNC drop them all; heartbeats
//! keep the cache trusted. A broken stream is opened again with backoff.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use sts_api::proto::{self, WatchEvent, token_service_client::TokenServiceClient};
use tokio::time::Instant;
use tonic::transport::Channel;

use crate::{
    cache::Cache,
    config::{RECONNECT_FIRST, RECONNECT_MAX},
};

/// How the stream is doing, read by every check.
pub(crate) struct StreamState {
    base: Instant,
    /// Nanoseconds after `base` of the last SYNCED or heartbeat, plus one
    /// (0: never).
    last_beat: AtomicU64,
    /// SYNCED was heard and the stream has not broken since: answers may
    /// be kept.
    synced: AtomicBool,
}

impl StreamState {
    pub(crate) fn new() -> StreamState {
        StreamState {
            base: Instant::now(),
            last_beat: AtomicU64::new(0),
            synced: AtomicBool::new(false),
        }
    }

    fn beat(&self) {
        let nanos = u64::try_from(self.base.elapsed().as_nanos()).unwrap_or(u64::MAX - 1);
        self.last_beat.store(nanos + 1, Ordering::Release);
    }

    /// How long since the stream last vouched for the cache.
    pub(crate) fn since_beat(&self) -> Option<Duration> {
        match self.last_beat.load(Ordering::Acquire) {
            0 => None,
            at => Some(
                self.base
                    .elapsed()
                    .saturating_sub(Duration::from_nanos(at - 1)),
            ),
        }
    }

    /// Whether the stream vouched for the cache within `max`.
    pub(crate) fn within(&self, max: Duration) -> bool {
        self.since_beat().is_some_and(|since| since <= max)
    }

    pub(crate) fn is_synced(&self) -> bool {
        self.synced.load(Ordering::Acquire)
    }
}

/// A request carrying the validator's own token.
pub(crate) fn with_token<T>(token: &str, message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    if let Ok(value) = token.parse() {
        request.metadata_mut().insert("x-api-key", value);
    }
    request
}

/// Keeps a stream open until the task is aborted (the validator dropped).
pub(crate) async fn keep_watching(
    client: TokenServiceClient<Channel>,
    token: String,
    cache: Arc<Cache>,
    state: Arc<StreamState>,
) {
    let mut backoff = RECONNECT_FIRST;
    let mut warned = false;
    loop {
        let opened = client
            .clone()
            .watch(with_token(&token, proto::WatchRequest {}))
            .await;
        let ended = match opened {
            Ok(stream) => {
                let synced = follow(stream.into_inner(), &cache, &state).await;
                if synced {
                    backoff = RECONNECT_FIRST;
                    warned = false;
                }
                None
            }
            Err(status) => Some(status),
        };
        state.synced.store(false, Ordering::Release);
        if let Some(status) = ended {
            // One line per outage, not per attempt.
            if !warned {
                tracing::warn!(code = ?status.code(), message = status.message(), "cannot watch the token server's changes; checks go to the server until it can");
                warned = true;
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(RECONNECT_MAX);
    }
}

/// Follows one stream to its end; whether it got as far as SYNCED.
async fn follow(
    mut stream: tonic::Streaming<proto::WatchResponse>,
    cache: &Cache,
    state: &StreamState,
) -> bool {
    let mut synced = false;
    loop {
        let message = match stream.message().await {
            Ok(Some(message)) => message,
            Ok(None) => return synced,
            Err(status) => {
                tracing::debug!(code = ?status.code(), "the watch stream ended");
                return synced;
            }
        };
        match message.event() {
            WatchEvent::Synced => {
                // A new stream starts from an empty cache: what was kept
                // before it may have changed unheard.
                cache.clear();
                state.beat();
                state.synced.store(true, Ordering::Release);
                synced = true;
            }
            WatchEvent::Heartbeat => state.beat(),
            WatchEvent::Changed => cache.invalidate(message.token_id),
            WatchEvent::Resync => {
                state.synced.store(false, Ordering::Release);
                cache.clear();
                return synced;
            }
            // Something newer than this client: it cannot tell what was
            // missed, so it trusts nothing it holds.
            WatchEvent::Unspecified => {
                state.synced.store(false, Ordering::Release);
                cache.clear();
                return synced;
            }
        }
    }
}
