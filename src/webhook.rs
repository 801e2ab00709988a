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
//! order they happened. With several replicas each claims its own events
//! from the outbox, so each event is delivered by one of them.

use std::{
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
/// How long claimed events stay this replica's: far longer than a batch
/// takes (one timeout per URL at most, as a failed URL is skipped for the
/// rest of the batch), so no other replica sends them meanwhile.
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

/// Delivers events until the task is dropped (at shutdown: an event in
/// flight then is delivered again later).
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
    let mut destinations: Vec<Destination> = config
        .urls
        .iter()
        .map(|url| Destination {
            url: url.clone(),
            failures: 0,
            resting_until: None,
        })
        .collect();
    let mut failing = false;
    // The gauges are current from the start, not from the end of the
    // first round (which a hanging URL may hold up for its timeout).
    let _ = service.outbox_stats().await;
    loop {
        let round = round(&service, &client, &config, &mut destinations).await;
        match &round {
            Ok(_) if failing => {
                failing = false;
                tracing::info!("the event outbox is readable again");
            }
            Err(e) if !failing => {
                failing = true;
                tracing::warn!(error = %e, "cannot read the event outbox; trying again");
            }
            _ => {}
        }
        let _ = service.outbox_stats().await;
        // A full batch may have more behind it: straight on, unless every
        // URL rests.
        let now = SystemTime::now();
        let all_resting = destinations.iter().all(|d| d.resting(now).is_some());
        if matches!(round, Ok(BATCH)) && !all_resting {
            continue;
        }
        tokio::select! {
            () = service.event_written() => {}
            () = tokio::time::sleep(config.poll_interval) => {}
        }
    }
}

/// One batch: claims, delivers, settles. Returns how many were claimed.
async fn round(
    service: &TokenService,
    client: &reqwest::Client,
    config: &WebhookConfig,
    destinations: &mut [Destination],
) -> Result<usize, crate::error::Error> {
    let claimed = service.claim_events(BATCH, LEASE).await?;
    // Which URLs rest is decided once for the round: one whose rest ends
    // half-way through must not get a later event before an earlier one
    // it skipped.
    let resting: Vec<bool> = destinations
        .iter()
        .map(|d| d.resting(SystemTime::now()).is_some())
        .collect();
    let mut outcomes = Vec::with_capacity(claimed.len());
    for pending in &claimed {
        let outcome = deliver_one(
            service.metrics(),
            client,
            config,
            destinations,
            &resting,
            pending,
        )
        .await;
        outcomes.push(outcome);
    }
    // Retries are due when the URL's rest ends: the same instant for every
    // event waiting on it, so they come due together and are claimed again
    // in the order they happened.
    let now = SystemTime::now();
    let settled: Vec<Settle> = outcomes
        .into_iter()
        .map(|outcome| match outcome {
            Outcome::Everywhere { seq } => Settle::Delivered { seq },
            Outcome::Waiting {
                seq,
                delivered_to,
                until,
            } => Settle::Pending {
                seq,
                delivered_to,
                retry_at: until.unwrap_or(now + config.poll_interval),
            },
        })
        .collect();
    service.settle_events(&settled).await?;
    Ok(claimed.len())
}

/// Where one event stands after a round.
enum Outcome {
    Everywhere {
        seq: u64,
    },
    /// Some URL lacks it; the earliest rest among them ends `until`.
    Waiting {
        seq: u64,
        delivered_to: Vec<String>,
        until: Option<SystemTime>,
    },
}

/// Sends `pending` to every URL that lacks it and is not resting.
async fn deliver_one(
    metrics: &Metrics,
    client: &reqwest::Client,
    config: &WebhookConfig,
    destinations: &mut [Destination],
    resting: &[bool],
    pending: &Pending,
) -> Outcome {
    let event = &pending.event;
    let mut delivered_to = pending.delivered_to.clone();
    let mut until: Option<SystemTime> = None;
    for (destination, rested) in destinations.iter_mut().zip(resting) {
        let key = destination.url.key().to_owned();
        if delivered_to.contains(&key) {
            continue;
        }
        // Resting since the round began, or failed earlier in it.
        if *rested || destination.resting(SystemTime::now()).is_some() {
            let rest = destination.resting_until.unwrap_or_else(SystemTime::now);
            until = Some(until.map_or(rest, |u| u.min(rest)));
            continue;
        }
        let sent = client
            .post(destination.url.url().clone())
            .header(http::header::CONTENT_TYPE, "application/json")
            .header(SIGNATURE_HEADER, signature(&config.secret, &event.body))
            .header(EVENT_HEADER, &event.kind)
            .header(DELIVERY_HEADER, &event.id)
            .body(event.body.clone())
            .send()
            .await;
        // The URL may hold credentials: errors are shown without it.
        let failure = match sent {
            Ok(response) if response.status().is_success() => None,
            Ok(response) => Some(format!("answered {}", response.status())),
            Err(e) => Some(crate::error::with_causes(&e.without_url())),
        };
        metrics.webhook_delivery(failure.is_none());
        match failure {
            None => {
                destination.succeeded();
                delivered_to.push(key);
            }
            Some(why) => {
                let backoff = destination.failed(SystemTime::now(), config);
                let rest = destination.resting_until.unwrap_or_else(SystemTime::now);
                until = Some(until.map_or(rest, |u| u.min(rest)));
                tracing::warn!(
                    webhook = %destination.url,
                    event.id = %event.id,
                    event.r#type = %event.kind,
                    failures = destination.failures,
                    retry_in = ?backoff,
                    "webhook delivery failed: {why}"
                );
            }
        }
    }
    let everywhere = destinations
        .iter()
        .all(|d| delivered_to.iter().any(|k| k == d.url.key()));
    if everywhere {
        Outcome::Everywhere { seq: pending.seq }
    } else {
        Outcome::Waiting {
            seq: pending.seq,
            delivered_to,
            until,
        }
    }
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
