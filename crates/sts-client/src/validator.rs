//! The [`Validator`]: a check from memory when the stream vouches for it,
//! else through the server (kept when it may be), else fail closed (or,
//! configured so, a stale answer for a bounded time).

use std::{
    net::IpAddr,
    sync::Arc,
    time::{Duration, SystemTime},
};

use sts_api::{
    credential::AuthError,
    proto::{self, InvalidReason, UseOutcome, token_service_client::TokenServiceClient},
    token::TokenHash,
};
use tokio::{task::AbortHandle, time::Instant};
use tonic::transport::{Channel, Endpoint};

use crate::{
    Config, ConfigError, Identity, Refusal,
    cache::{Cache, Entry},
    identity::time,
    report::{Reports, keep_reporting},
    watch::{StreamState, keep_watching},
};

/// What a check knows of the request it is made for: what a token bound
/// to sources, audiences or routes is checked against (on the server:
/// such tokens are never answered from memory).
#[derive(Debug, Clone, Copy, Default)]
pub struct Context<'a> {
    /// The client's address.
    pub source: Option<IpAddr>,
    /// This service's name, for tokens bound to audiences.
    pub audience: Option<&'a str>,
    /// The request's method and path.
    pub route: Option<(&'a str, &'a str)>,
}

/// How the validator is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Health {
    /// The stream is open and in sync: answers are kept.
    pub synced: bool,
    /// How long since the stream last vouched for the cache (`None`:
    /// never).
    pub since_heartbeat: Option<Duration>,
    /// The cache answers now (a heartbeat within `max_staleness`).
    pub answering_from_cache: bool,
    /// Valid answers held.
    pub cached: usize,
}

/// Checks service tokens, from memory where it safely can. Cheap to clone;
/// its background tasks (the stream, the reports) stop when the last clone
/// is dropped. Make it inside a Tokio runtime.
#[derive(Clone)]
pub struct Validator {
    shared: Arc<Shared>,
}

struct Shared {
    client: TokenServiceClient<Channel>,
    cache: Arc<Cache>,
    stream: Arc<StreamState>,
    reports: Option<Arc<Reports>>,
    config: Config,
    tasks: Vec<AbortHandle>,
}

impl Drop for Shared {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl std::fmt::Debug for Validator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Validator")
            .field("config", &self.shared.config)
            .finish_non_exhaustive()
    }
}

impl Validator {
    /// A validator for the server `config` names; it connects (and opens
    /// its stream) in the background.
    pub fn new(config: Config) -> Result<Validator, ConfigError> {
        let endpoint = Endpoint::from_shared(config.endpoint.clone())
            .map_err(|_| ConfigError::Endpoint)?
            .timeout(config.request_timeout)
            .connect_timeout(config.request_timeout)
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(config.request_timeout);
        Ok(Validator::with_channel(endpoint.connect_lazy(), config))
    }

    /// As [`Validator::new`], over a channel of the caller's making (TLS,
    /// a load balancer, a test's server).
    pub fn with_channel(channel: Channel, config: Config) -> Validator {
        let client = TokenServiceClient::new(channel);
        let cache = Arc::new(Cache::new(config.capacity));
        let stream = Arc::new(StreamState::new());
        let mut tasks = vec![
            tokio::spawn(keep_watching(
                client.clone(),
                config.token.clone(),
                cache.clone(),
                stream.clone(),
            ))
            .abort_handle(),
        ];
        let reports = config.report_interval.map(|every| {
            let reports = Arc::new(Reports::default());
            tasks.push(
                tokio::spawn(keep_reporting(
                    client.clone(),
                    config.token.clone(),
                    reports.clone(),
                    every,
                ))
                .abort_handle(),
            );
            reports
        });
        Validator {
            shared: Arc::new(Shared {
                client,
                cache,
                stream,
                reports,
                config,
                tasks,
            }),
        }
    }

    /// How the stream and the cache are doing.
    pub fn health(&self) -> Health {
        let shared = &self.shared;
        Health {
            synced: shared.stream.is_synced(),
            since_heartbeat: shared.stream.since_beat(),
            answering_from_cache: shared.stream.within(shared.config.max_staleness),
            cached: shared.cache.len(),
        }
    }

    /// Whether `presented` is a valid token for a request from `context`,
    /// and whose. Answered from memory when the stream vouches for it;
    /// otherwise by the server.
    pub async fn validate(
        &self,
        presented: &str,
        context: &Context<'_>,
    ) -> Result<Arc<Identity>, Refusal> {
        let shared = &*self.shared;
        let hash = *TokenHash::of_presented(presented)
            .map_err(|why| Refusal::Invalid(AuthError::Malformed(why)))?
            .as_bytes();
        let fresh = shared.stream.within(shared.config.max_staleness);
        let cached = if fresh { shared.cache.get(&hash) } else { None };
        let now = SystemTime::now();
        if let Some(entry) = cached.as_ref().filter(|e| e.stands_at(now)) {
            self.used(&entry.identity, context.source, now);
            return Ok(entry.identity.clone());
        }
        if let Some(refusal) = shared.cache.refused(&hash, Instant::now()) {
            return Err(refusal);
        }
        let ticket = shared.cache.ticket();
        // Kept only while the stream is in sync: an answer no event could
        // drop is not kept.
        let keep = shared.stream.is_synced() && fresh;
        let request = proto::ValidateRequest {
            token: presented.to_owned(),
            source_address: context.source.map(|s| s.to_string()).unwrap_or_default(),
            audience: context.audience.unwrap_or_default().to_owned(),
            http_method: context.route.map(|(m, _)| m).unwrap_or_default().to_owned(),
            path: context.route.map(|(_, p)| p).unwrap_or_default().to_owned(),
            cost: None,
        };
        // Bounded here too: a channel of the caller's making may have no
        // timeout of its own.
        let mut client = shared.client.clone();
        let asked = client.validate(request);
        let answer = match tokio::time::timeout(shared.config.request_timeout, asked).await {
            Ok(Ok(answer)) => answer.into_inner(),
            Ok(Err(status)) => return self.unreachable(&hash, Some(status), now),
            Err(_) => return self.unreachable(&hash, None, now),
        };
        if !answer.valid {
            let refusal = refusal(&answer);
            // What the token is, not where or how often it is used.
            let lasting = matches!(refusal, Refusal::Invalid(_));
            if lasting && !shared.config.negative_ttl.is_zero() {
                let until = Instant::now() + shared.config.negative_ttl;
                shared.cache.refuse(ticket, hash, refusal.clone(), until);
            }
            return Err(refusal);
        }
        // Bound or limited: the server must see every check.
        let checked_there = answer.bound || !answer.rate_limits.is_empty();
        let Some(token) = answer.service_token else {
            return Err(Refusal::Unavailable);
        };
        let mut until = token.expiration.and_then(time);
        if answer.previous_secret {
            let grace_ends = token.previous_secret_expiration.and_then(time);
            until = match (until, grace_ends) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
        }
        let identity = Arc::new(Identity::from_answer(token, answer.previous_secret));
        if keep && !checked_there {
            let entry = Entry {
                identity: identity.clone(),
                until,
            };
            shared.cache.fill(ticket, hash, entry);
        }
        Ok(identity)
    }

    /// The server could not be asked: a stale answer only where configured
    /// and still within its bound, else fail closed.
    fn unreachable(
        &self,
        hash: &[u8; 32],
        status: Option<tonic::Status>,
        now: SystemTime,
    ) -> Result<Arc<Identity>, Refusal> {
        let shared = &*self.shared;
        let code = status.map(|s| s.code());
        tracing::debug!(
            ?code,
            "token server unreachable for a check (None: timed out)"
        );
        let Some(longest) = shared.config.serve_stale_for else {
            return Err(Refusal::Unavailable);
        };
        // Past the last heartbeat, as documented (never less than the
        // staleness the cache is trusted with anyway).
        let bound = longest.max(shared.config.max_staleness);
        match shared.cache.get(hash) {
            Some(entry) if shared.stream.within(bound) && entry.stands_at(now) => {
                Ok(entry.identity)
            }
            _ => Err(Refusal::Unavailable),
        }
    }

    fn used(&self, identity: &Identity, source: Option<IpAddr>, at: SystemTime) {
        if let Some(reports) = &self.shared.reports {
            let outcome = if identity.previous_secret {
                UseOutcome::PreviousSecret
            } else {
                UseOutcome::Valid
            };
            reports.used(identity.id, source, outcome, at);
        }
    }

    /// A role check of a cached answer refused: reported as such.
    pub(crate) fn refused_role(&self, identity: &Identity, source: Option<IpAddr>) {
        if let Some(reports) = &self.shared.reports {
            reports.used(
                identity.id,
                source,
                UseOutcome::MissingRole,
                SystemTime::now(),
            );
        }
    }
}

/// The refusal a server's answer gives.
fn refusal(answer: &proto::ValidateResponse) -> Refusal {
    match answer.reason() {
        // The server parsed what was already parsed here: a token that
        // passed the same check cannot be malformed there.
        InvalidReason::Malformed | InvalidReason::NotFound | InvalidReason::Unspecified => {
            Refusal::Invalid(AuthError::NotFound)
        }
        InvalidReason::Expired => Refusal::Invalid(AuthError::Expired),
        InvalidReason::Disabled => Refusal::Invalid(AuthError::Disabled),
        InvalidReason::SourceNotAllowed
        | InvalidReason::AudienceNotAllowed
        | InvalidReason::RouteNotAllowed => Refusal::NotAllowed,
        InvalidReason::RateLimited => Refusal::RateLimited {
            retry_after: answer.retry_after.and_then(|d| Duration::try_from(d).ok()),
        },
    }
}
