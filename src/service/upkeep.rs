//! What the server runs now and then, never on a request's path: token
//! counts for the metrics, purging expired tokens, the store's health as
//! the checks see it, last-used writes and shutdown.

use std::{
    sync::atomic::Ordering,
    time::{Duration, SystemTime},
};

use crate::{
    error::Error,
    events::Draft,
    metrics::TokenCounts,
    model::{Day, ListFilter, TokenSummary, USAGE_DAYS},
    store::{Outcome, StoreError},
};

use super::TokenService;

/// How long a metrics scrape waits for the store's token count.
const METRICS_COUNT_WAIT: std::time::Duration = std::time::Duration::from_millis(250);

impl TokenService {
    /// Counts the tokens by state, those expiring soon and those unused for
    /// long, for the metrics (`sts_tokens`, `sts_tokens_expiring`,
    /// `sts_tokens_unused`, `sts_tokens_next_expiry_timestamp_seconds`). A
    /// store's count (a scan, or one query on PostgreSQL): the server runs
    /// it now and then, never on a request's path.
    pub async fn summarize(&self) -> Result<(), Error> {
        self.sweep_rate_limits().await;
        self.purge_usage().await;
        let now = self.now();
        let summary = self.store.summary(now).await?;
        *self.summary.lock().unwrap_or_else(|e| e.into_inner()) = Some((now, summary));
        let count = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        let seconds = |t: SystemTime| crate::clock::epoch_seconds(t).max(0);
        let labelled = |windows: &[(&'static str, Duration)], counts: &[u64]| {
            windows
                .iter()
                .zip(counts)
                .map(|((name, _), n)| (*name, count(*n)))
                .collect()
        };
        self.metrics.token_counts(&TokenCounts {
            states: vec![
                ("active", count(summary.active)),
                ("disabled", count(summary.disabled)),
                ("expired", count(summary.expired)),
            ],
            expiring: labelled(&TokenSummary::EXPIRING, &summary.expiring),
            unused: labelled(&TokenSummary::UNUSED, &summary.unused),
            next_expiry_seconds: summary.next_expiry.map_or(0, seconds),
        });
        Ok(())
    }

    /// The token counts the upkeep made last, and when (the console's
    /// overview): `None` before the first.
    pub fn last_summary(&self) -> Option<(SystemTime, TokenSummary)> {
        *self.summary.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Forgets usage older than [`USAGE_DAYS`] days (today included). A
    /// failure is logged and left for the next round.
    pub async fn purge_usage(&self) {
        let before = Day::of(self.now()).before(USAGE_DAYS - 1);
        if let Err(e) = self.store.purge_usage(before).await {
            tracing::warn!(error = %e, "could not purge old token usage; will retry");
        }
    }

    /// Forgets the rate-limit state of limits whole again: a walk of the
    /// whole table, one shard lock at a time, off the runtime's threads.
    pub async fn sweep_rate_limits(&self) {
        let limiter = self.limiter.clone();
        let now_ms = u64::try_from(crate::clock::epoch_millis(self.clock.now())).unwrap_or(0);
        let _ = tokio::task::spawn_blocking(move || limiter.sweep(now_ms)).await;
    }

    /// Deletes the tokens that expired `purge_expired_after` ago or longer,
    /// each audited (`Purge`) and counted; nothing when purging is off.
    /// Several replicas may purge at once: a token another got to first is
    /// simply gone. Returns how many this call deleted.
    pub async fn purge_expired(&self) -> Result<u64, Error> {
        const PAGE: usize = 1000;
        let Some(after) = self.config.purge_expired_after else {
            return Ok(0);
        };
        let now = self.now();
        let Some(cutoff) = now.checked_sub(after) else {
            return Ok(0);
        };
        let filter = ListFilter {
            expiring_before: Some(cutoff),
            ..ListFilter::default()
        };
        let mut purged = 0;
        let mut after_id = None;
        loop {
            let page = self.store.list_matching(after_id, PAGE, &filter).await?;
            for stored in &page {
                let id = stored.token.id;
                let deleted = self
                    .remove(id, &self.keep_admin(now), None, || Draft::purged(now))
                    .await?;
                if deleted != Outcome::Done(()) {
                    continue;
                }
                purged += 1;
                self.metrics.management_call(
                    "Purge",
                    "OK",
                    "system",
                    super::Transport::Internal.as_str(),
                );
                crate::audit::done!(
                    info,
                    "Purge",
                    None,
                    id.get(),
                    stored.token.name.as_str(),
                    expiration = stored.token.expiration.map(crate::clock::rfc3339),
                    "expired service token purged"
                );
            }
            match page.last() {
                Some(last) if page.len() == PAGE => after_id = Some(last.token.id),
                _ => break,
            }
        }
        Ok(purged)
    }

    /// The metrics exposition, with the current token count when the
    /// store gives it within [`METRICS_COUNT_WAIT`], else the last one: a
    /// scrape must answer while the store does not (its other series are
    /// what tells an operator why).
    pub async fn render_metrics(&self) -> String {
        let count = tokio::time::timeout(METRICS_COUNT_WAIT, self.store.count()).await;
        self.metrics.render(count.ok().and_then(Result::ok))
    }

    /// Whether the store can serve now; readiness follows it.
    pub async fn store_ready(&self) -> Result<(), StoreError> {
        self.store.ready().await
    }

    /// How the store's feed of other replicas' changes is doing, if it
    /// has one (`live`, `silent`).
    pub fn change_feed(&self) -> Option<&'static str> {
        self.store.change_feed()
    }

    /// What the last store check found; see `store_away`. `failure`, when
    /// the check failed with an error (not a timeout), is kept as the
    /// store's last failure.
    pub fn set_store_reachable(&self, reachable: bool, failure: Option<&StoreError>) {
        self.store_away.store(!reachable, Ordering::Relaxed);
        if let Some(failure) = failure {
            self.failed(failure);
        }
    }

    /// Notes `failure` as the store's last.
    pub(super) fn failed(&self, failure: &StoreError) {
        let text = crate::error::with_causes(failure);
        *self
            .last_store_failure
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(text);
    }

    /// UNAVAILABLE at once while the store is known to be away, saying
    /// (in the log, under the answer's incident id) its last failure.
    pub(super) fn store_present(&self) -> Result<(), StoreError> {
        if !self.store_away.load(Ordering::Relaxed) {
            return Ok(());
        }
        let last = self
            .last_store_failure
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        Err(StoreError::Unavailable {
            context: format!(
                "the store failed its last health check (it is checked twice a second){}",
                last.map(|text| format!("; its last failure: {text}"))
                    .unwrap_or_default()
            ),
            source: None,
        })
    }

    /// Writes the last summary of refusals and flushes the store; called
    /// once no request is in flight any more.
    pub async fn shutdown(&self) -> Result<(), StoreError> {
        self.refusals.flush();
        if let Some(last_used) = &self.last_used {
            last_used.write().await;
        }
        if let Err(e) = self.keep_sessions().await {
            tracing::warn!(error = %e, "could not write the console sessions' last-seen times");
        }
        self.store.flush().await
    }

    /// Writes the last-used times noted so far now, instead of at the end
    /// of the resolution window.
    pub async fn write_last_used(&self) {
        if let Some(last_used) = &self.last_used {
            last_used.write().await;
        }
    }
}
