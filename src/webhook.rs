//! Webhook delivery: takes events from the store's outbox, POSTs each to
//! every configured URL signed with HMAC-SHA256 (as GitHub signs its
//! webhooks), and forgets an event only once every URL answered it with a
//! 2xx.
//!
//! At least once: an event is kept until delivered, so a crash after a
//! delivery and before the outbox heard of it sends it again (receivers
//! drop repeats by `X-Sts-Delivery`). A URL that fails is left alone for a
//! backoff that doubles with each failure in a row; while it waits, later
//! events wait for it too, so each URL gets this replica's events in the
//! order they happened. Each URL has a worker of its own, so one that
//! hangs until its timeout holds up only itself. With several replicas
//! each claims its own events from the outbox, so each event is delivered
//! by one of them.

use std::{
    collections::BTreeMap,
    sync::Arc,
    time::{Duration, SystemTime},
};

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::{
    config::{WebhookConfig, WebhookSecret, WebhookUrl},
    events::{Pending, Settle},
    metrics::Metrics,
    service::TokenService,
};

/// `sha256=<hex HMAC-SHA256 of the body>`, keyed with the webhook secret.
pub const SIGNATURE_HEADER: &str = "x-sts-signature-256";
/// The event's type (`token.created`, ...).
pub const EVENT_HEADER: &str = "x-sts-event";
/// The event's id: the same on every redelivery of it.
pub const DELIVERY_HEADER: &str = "x-sts-delivery";

/// Events taken from the outbox at a time.
const BATCH: usize = 32;
/// How long claimed events stay this replica's: far longer than one is
/// held (one timeout at most, as a failed URL rests and its worker reports
/// the events behind at once), so no other replica sends them meanwhile.
const LEASE: Duration = Duration::from_secs(300);

/// The signature header's value for `body`.
pub fn signature(secret: &WebhookSecret, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.expose_secret())
        .expect("HMAC takes keys of any length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// One URL and how it has been doing.
struct Destination {
    url: WebhookUrl,
    /// Failures in a row.
    failures: u32,
    /// Left alone until then. Wall-clock time: it is also when the events
    /// waiting on this URL come due in the outbox, all at the same instant.
    resting_until: Option<SystemTime>,
}

impl Destination {
    fn resting(&self, now: SystemTime) -> Option<SystemTime> {
        self.resting_until.filter(|until| *until > now)
    }

    fn failed(&mut self, now: SystemTime, config: &WebhookConfig) -> Duration {
        self.failures = self.failures.saturating_add(1);
        let doubled = config
            .initial_backoff
            .saturating_mul(1 << self.failures.saturating_sub(1).min(20));
        let backoff = doubled.min(config.max_backoff);
        // Up to a tenth more, so replicas that failed together do not
        // retry together.
        let jitter = backoff.mul_f64(rand::random::<f64>() / 10.0);
        let backoff = backoff + jitter;
        self.resting_until = Some(now + backoff);
        backoff
    }

    fn succeeded(&mut self) {
        if self.failures > 0 {
            tracing::info!(webhook = %self.url, failures = self.failures, "webhook delivering again");
        }
        self.failures = 0;
        self.resting_until = None;
    }
}

/// Events a replica holds (claimed, not yet settled) at most: the claim
/// pauses past it, so a URL that hangs holds back at most this many events
/// the others already have.
const MAX_HELD: usize = 4 * BATCH;

/// What a URL's worker did with one event.
struct Report {
    seq: u64,
    key: String,
    /// `None`: delivered. `Some(until)`: not delivered; the URL rests
    /// until then.
    failed: Option<SystemTime>,
}

/// An event claimed and not yet settled: which URLs have it, and how many
/// have yet to say.
struct Held {
    delivered_to: Vec<String>,
    outstanding: usize,
    until: Option<SystemTime>,
}

/// Delivers events until the task is dropped (at shutdown: an event in
/// flight then is delivered again later). One worker per URL takes the
/// events in order on its own, so a URL that hangs until its timeout holds
/// up only itself; this loop claims events, hands each to the workers of
/// the URLs that lack it, and settles it once every one of them has said.
pub async fn deliver(service: Arc<TokenService>, config: WebhookConfig) {
    let client = match reqwest::Client::builder()
        .timeout(config.timeout)
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("sts-webhook/", env!("CARGO_PKG_VERSION")))
        .build()
    {
        Ok(client) => client,
        Err(e) => {
            tracing::error!(error = %e.without_url(), "cannot start webhook delivery");
            return;
        }
    };
    let (reports, mut reported) = tokio::sync::mpsc::unbounded_channel::<Report>();
    // Dropped with this task: the workers stop too.
    let mut workers = tokio::task::JoinSet::new();
    let mut queues = Vec::with_capacity(config.urls.len());
    for url in &config.urls {
        let (queue, events) = tokio::sync::mpsc::unbounded_channel::<Arc<Pending>>();
        let destination = Destination {
            url: url.clone(),
            failures: 0,
            resting_until: None,
        };
        workers.spawn(work(
            destination,
            events,
            reports.clone(),
            client.clone(),
            config.clone(),
            service.metrics().clone(),
        ));
        queues.push((url.key().to_owned(), queue));
    }
    drop(reports);
    let mut held: BTreeMap<u64, Held> = BTreeMap::new();
    let mut failing = false;
    // The gauges are current from the start.
    let _ = service.outbox_stats().await;
    let mut claim_now = true;
    loop {
        if claim_now && held.len() < MAX_HELD {
            match service
                .claim_events(BATCH.min(MAX_HELD - held.len()), LEASE)
                .await
            {
                Ok(claimed) => {
                    if failing {
                        failing = false;
                        tracing::info!("the event outbox is readable again");
                    }
                    claim_now = claimed.len() == BATCH;
                    let mut settled = Vec::new();
                    for pending in claimed {
                        let pending = Arc::new(pending);
                        let mut outstanding = 0;
                        for (key, queue) in &queues {
                            if !pending.delivered_to.iter().any(|k| k == key)
                                && queue.send(pending.clone()).is_ok()
                            {
                                outstanding += 1;
                            }
                        }
                        let entry = Held {
                            delivered_to: pending.delivered_to.clone(),
                            outstanding,
                            until: None,
                        };
                        if outstanding == 0 {
                            settled.push(settle(pending.seq, entry, &queues, &config));
                        } else {
                            held.insert(pending.seq, entry);
                        }
                    }
                    settle_all(&service, settled).await;
                    // A full batch may have more behind it: straight on.
                    if claim_now {
                        continue;
                    }
                }
                Err(e) => {
                    claim_now = false;
                    if !failing {
                        failing = true;
                        tracing::warn!(error = %e, "cannot read the event outbox; trying again");
                    }
                }
            }
        }
        tokio::select! {
            report = reported.recv() => {
                let Some(report) = report else { return };
                let mut settled = Vec::new();
                let mut next = Some(report);
                // Every report waiting now, settled together.
                while let Some(report) = next {
                    if let Some(entry) = held.get_mut(&report.seq) {
                        match report.failed {
                            None => entry.delivered_to.push(report.key),
                            Some(until) => {
                                entry.until = Some(entry.until.map_or(until, |u| u.min(until)));
                            }
                        }
                        entry.outstanding -= 1;
                        if entry.outstanding == 0
                            && let Some(entry) = held.remove(&report.seq)
                        {
                            settled.push(settle(report.seq, entry, &queues, &config));
                        }
                    }
                    next = reported.try_recv().ok();
                }
                settle_all(&service, settled).await;
                // Room may have come free for events waiting in the outbox.
                claim_now = claim_now || held.len() < MAX_HELD;
            }
            () = service.event_written() => claim_now = true,
            () = tokio::time::sleep(config.poll_interval) => claim_now = true,
        }
    }
}

/// Settles `entry`: out of the outbox once every URL has it, otherwise
/// kept with those that have it, due when the earliest rest among the
/// others ends (the same instant for every event waiting on that URL, so
/// they come due together and are claimed again in order).
fn settle(
    seq: u64,
    entry: Held,
    queues: &[(String, impl Sized)],
    config: &WebhookConfig,
) -> Settle {
    let everywhere = queues
        .iter()
        .all(|(key, _)| entry.delivered_to.iter().any(|k| k == key));
    if everywhere {
        return Settle::Delivered { seq };
    }
    let now = SystemTime::now();
    Settle::Pending {
        seq,
        delivered_to: entry.delivered_to,
        retry_at: entry
            .until
            .filter(|until| *until > now)
            .unwrap_or(now + config.poll_interval),
    }
}

async fn settle_all(service: &TokenService, settled: Vec<Settle>) {
    if settled.is_empty() {
        return;
    }
    if let Err(e) = service.settle_events(&settled).await {
        // Unsettled events are claimed again once their lease ends.
        tracing::warn!(error = %e, "cannot settle delivered events; they will be sent again");
    }
    let _ = service.outbox_stats().await;
}

/// One URL's worker: takes its events in order; sends each unless the URL
/// rests (then it is reported failed at once, to come due when the rest
/// ends, so the URL still gets events in order).
async fn work(
    mut destination: Destination,
    mut events: tokio::sync::mpsc::UnboundedReceiver<Arc<Pending>>,
    reports: tokio::sync::mpsc::UnboundedSender<Report>,
    client: reqwest::Client,
    config: WebhookConfig,
    metrics: Arc<Metrics>,
) {
    let key = destination.url.key().to_owned();
    while let Some(pending) = events.recv().await {
        let failed = match destination.resting(SystemTime::now()) {
            Some(until) => Some(until),
            None => send(&client, &config, &metrics, &mut destination, &pending).await,
        };
        let report = Report {
            seq: pending.seq,
            key: key.clone(),
            failed,
        };
        if reports.send(report).is_err() {
            return;
        }
    }
}

/// Sends `pending` to `destination`; `None` once it answered 2xx,
/// otherwise when it may be tried again.
async fn send(
    client: &reqwest::Client,
    config: &WebhookConfig,
    metrics: &Metrics,
    destination: &mut Destination,
    pending: &Pending,
) -> Option<SystemTime> {
    let event = &pending.event;
    let answer = client
        .post(destination.url.url().clone())
        .header(http::header::CONTENT_TYPE, "application/json")
        .header(SIGNATURE_HEADER, signature(&config.secret, &event.body))
        .header(EVENT_HEADER, &event.kind)
        .header(DELIVERY_HEADER, &event.id)
        .body(event.body.clone())
        .send()
        .await;
    // The URL may hold credentials: errors are shown without it.
    let failure = match answer {
        Ok(response) if response.status().is_success() => None,
        Ok(response) => Some(format!("answered {}", response.status())),
        Err(e) => Some(crate::error::with_causes(&e.without_url())),
    };
    metrics.webhook_delivery(failure.is_none());
    let Some(why) = failure else {
        destination.succeeded();
        return None;
    };
    let backoff = destination.failed(SystemTime::now(), config);
    tracing::warn!(
        webhook = %destination.url,
        event.id = %event.id,
        event.r#type = %event.kind,
        failures = destination.failures,
        retry_in = ?backoff,
        "webhook delivery failed: {why}"
    );
    destination.resting_until
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failing_url_rests_longer_each_time_up_to_the_maximum() {
        let config = WebhookConfig {
            initial_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(10),
            ..WebhookConfig::new(
                vec![WebhookUrl::parse("http://127.0.0.1:9/hook").unwrap()],
                WebhookSecret::parse("a secret of sixteen bytes").unwrap(),
            )
        };
        let mut destination = Destination {
            url: config.urls[0].clone(),
            failures: 0,
            resting_until: None,
        };
        let now = SystemTime::UNIX_EPOCH;
        // Doubling, with up to a tenth of jitter on top.
        for base in [1, 2, 4, 8, 10, 10] {
            let rest = destination.failed(now, &config);
            let base = Duration::from_secs(base);
            assert!(
                rest >= base && rest <= base.mul_f64(1.1),
                "{rest:?} for {base:?}"
            );
            assert_eq!(destination.resting_until, Some(now + rest));
            assert_eq!(destination.resting(now), Some(now + rest));
        }
        destination.succeeded();
        assert_eq!(destination.resting(now), None);
        let rest = destination.failed(now, &config);
        assert!(rest < Duration::from_secs(2), "a success starts over");
    }

    #[test]
    fn the_signature_is_githubs_hmac_sha256() {
        let secret = WebhookSecret::parse("It's a Secret to Everybody").unwrap();
        // GitHub's documented example: this secret, this payload.
        assert_eq!(
            signature(&secret, b"Hello, World!"),
            "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
        );
    }
}
