//! Prometheus metrics (OpenMetrics text via `prometheus-client`): validations
//! by outcome, management calls by RPC and status, role checks, request
//! latency by route, the number of tokens stored and by state, and the
//! delivery of events to webhooks.
//!
//! A leaf: callers pass plain labels, each from a fixed set of `&'static str`
//! (so label values stay bounded and recording allocates nothing), and this
//! module knows nothing of the service's types.

use std::sync::OnceLock;

pub use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::exponential_buckets},
    registry::Registry,
};

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallLabels {
    rpc: &'static str,
    status: &'static str,
    /// `admin`, `manager`, `self` (a token rotating itself), `none` (a
    /// call refused before its caller was known to manage), `system`
    /// (the upkeep's purge), `anyone` (a leaked token's revocation).
    caller: &'static str,
    /// `grpc`, `rest`, `console`, `internal`.
    transport: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SurfaceLabels {
    surface: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PolicyLabels {
    policy: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RpcLabels {
    rpc: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    protocol: &'static str,
    route: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    state: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WithinLabels {
    within: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EventLabels {
    event: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ForLabels {
    r#for: &'static str,
}

type HistogramFamily = Family<RouteLabels, Histogram, fn() -> Histogram>;

/// How many validation outcomes keep a handle to their counter; more than
/// there are, so a new outcome gets one too.
const OUTCOME_HANDLES: usize = 8;

/// The token counts the service reports now and then (see
/// `TokenService::summarize`): by state, expiring soon, unused for long.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TokenCounts {
    /// (state, count): `active`, `disabled`, `expired`.
    pub states: Vec<(&'static str, i64)>,
    /// (window, count) of active tokens expiring within it: `1d`, `7d`, `30d`.
    pub expiring: Vec<(&'static str, i64)>,
    /// (window, count) of active tokens not used (or, never used, not
    /// created) within it: `30d`, `90d`.
    pub unused: Vec<(&'static str, i64)>,
    /// When the next active token expires, in seconds since the epoch; 0
    /// when none will.
    pub next_expiry_seconds: i64,
}

pub struct Metrics {
    registry: Registry,
    validations: Family<OutcomeLabels, Counter>,
    /// Handles into `validations` with their outcome, in order of first
    /// use (so the exposition shows only the outcomes seen): a `Family`
    /// lookup hashes the labels with SipHash under a lock on every call.
    validation_handles: [OnceLock<(&'static str, Counter)>; OUTCOME_HANDLES],
    management_calls: Family<CallLabels, Counter>,
    role_checks: Family<OutcomeLabels, Counter>,
    rate_limited: Family<SurfaceLabels, Counter>,
    rate_limit_store_errors: Family<PolicyLabels, Counter>,
    undecodable: Family<RpcLabels, Counter>,
    request_duration: HistogramFamily,
    tokens_stored: Gauge,
    cache_hits: Counter,
    secret_reuses: Counter,
    watch_streams: Gauge,
    watch_events: Family<EventLabels, Counter>,
    watch_resyncs: Family<ReasonLabels, Counter>,
    reported_uses: Family<OutcomeLabels, Counter>,
    cache_misses: Counter,
    last_used_written: Counter,
    last_used_failed: Counter,
    tokens: Family<StateLabels, Gauge>,
    tokens_expiring: Family<WithinLabels, Gauge>,
    tokens_unused: Family<ForLabels, Gauge>,
    next_expiry: Gauge,
    webhook_deliveries: Family<OutcomeLabels, Counter>,
    events_pending: Gauge,
    events_oldest_age: Gauge,
    events_dropped: Counter,
    connections_open: Gauge,
    connections_refused: Family<ReasonLabels, Counter>,
    connections_evicted: Counter,
    protocol_errors: Counter,
    requests_shed: Counter,
}

impl Metrics {
    /// The service's metrics, plus those `extra` registers (the store's own).
    pub fn with(extra: impl FnOnce(&mut Registry)) -> Metrics {
        let mut metrics = Metrics::new();
        extra(&mut metrics.registry);
        metrics
    }

    fn new() -> Metrics {
        let mut registry = Registry::with_prefix("sts");
        let validations = Family::default();
        registry.register(
            "validations",
            "Token validations (Validate RPC and every credential check) by outcome",
            validations.clone(),
        );
        let management_calls = Family::default();
        registry.register(
            "management_calls",
            "Management calls (gRPC, REST, console) by RPC, status, caller kind and transport",
            management_calls.clone(),
        );
        let role_checks = Family::default();
        registry.register(
            "role_checks",
            "Checks that an authenticated token holds a required role (forward-auth's role, ext_authz's sts.required_roles), by outcome",
            role_checks.clone(),
        );
        let rate_limited = Family::default();
        registry.register(
            "rate_limited_checks",
            "Checks refused because a token's rate limit had no room, by surface",
            rate_limited.clone(),
        );
        let rate_limit_store_errors = Family::default();
        registry.register(
            "rate_limit_store_errors",
            "Checks of rate-limited tokens answered without the shared rate-limit store (it was away), by the policy that answered them (open: this replica's own counters; closed: refused)",
            rate_limit_store_errors.clone(),
        );
        let secret_reuses = Counter::default();
        registry.register(
            "secret_reuses",
            "Checks that presented a secret a rotation retired (reuse detection; token.reuse_detected names the token)",
            secret_reuses.clone(),
        );
        let watch_streams = Gauge::default();
        registry.register(
            "watch_streams",
            "Watch streams open on this replica (bounded by --max-watch-streams)",
            watch_streams.clone(),
        );
        let watch_events = Family::default();
        registry.register(
            "watch_events",
            "Messages sent on Watch streams, by event (synced, heartbeat, changed, resync)",
            watch_events.clone(),
        );
        let watch_resyncs = Family::default();
        registry.register(
            "watch_resyncs",
            "Watch streams told to resync, by reason (lagged: the client fell behind its backlog; feed: this replica's change feed was lost)",
            watch_resyncs.clone(),
        );
        let reported_uses = Family::default();
        registry.register(
            "reported_uses",
            "Uses callers answered from their own cache and reported (ReportUses), by outcome",
            reported_uses.clone(),
        );
        let undecodable = Family::default();
        registry.register(
            "undecodable_requests",
            "TokenService calls whose request bytes are not a valid protobuf message, by RPC",
            undecodable.clone(),
        );
        // 50 µs to ~1.6 s: the validate path is expected in the sub-millisecond range.
        let request_duration: HistogramFamily =
            Family::new_with_constructor(|| Histogram::new(exponential_buckets(0.00005, 2.0, 16)));
        registry.register(
            "request_duration_seconds",
            "Time to the response head, by protocol and route",
            request_duration.clone(),
        );
        let tokens_stored = Gauge::default();
        registry.register(
            "tokens_stored",
            "Service tokens in the store",
            tokens_stored.clone(),
        );
        let cache_hits = Counter::default();
        registry.register(
            "validation_cache_hits",
            "Token lookups answered by the Validate cache",
            cache_hits.clone(),
        );
        let cache_misses = Counter::default();
        registry.register(
            "validation_cache_misses",
            "Token lookups that went to the store",
            cache_misses.clone(),
        );
        let last_used_written = Counter::default();
        registry.register(
            "last_used_writes",
            "Last-used times written to the store (at most one per token per resolution)",
            last_used_written.clone(),
        );
        let last_used_failed = Counter::default();
        registry.register(
            "last_used_write_failures",
            "Batches of last-used times the store refused (kept for the next attempt)",
            last_used_failed.clone(),
        );
        let tokens = Family::default();
        registry.register(
            "tokens",
            "Service tokens by state (active, disabled, expired), counted now and then",
            tokens.clone(),
        );
        let tokens_expiring = Family::default();
        registry.register(
            "tokens_expiring",
            "Active service tokens expiring within 1d, 7d, 30d",
            tokens_expiring.clone(),
        );
        let tokens_unused = Family::default();
        registry.register(
            "tokens_unused",
            "Active service tokens not used for 30d, 90d (never used: counted from creation)",
            tokens_unused.clone(),
        );
        let next_expiry = Gauge::default();
        registry.register(
            "tokens_next_expiry_timestamp_seconds",
            "When the next active service token expires (0: none will)",
            next_expiry.clone(),
        );
        let webhook_deliveries = Family::default();
        registry.register(
            "webhook_deliveries",
            "Webhook deliveries of an event to one URL, by outcome (sent: a 2xx; failed: anything else)",
            webhook_deliveries.clone(),
        );
        let events_pending = Gauge::default();
        registry.register(
            "events_pending",
            "Events in the outbox not yet delivered to every webhook",
            events_pending.clone(),
        );
        let events_oldest_age = Gauge::default();
        registry.register(
            "events_oldest_pending_age_seconds",
            "Age of the oldest event not yet delivered to every webhook (0: none pending)",
            events_oldest_age.clone(),
        );
        let events_dropped = Counter::default();
        registry.register(
            "events_dropped",
            "Events not recorded because the outbox was full",
            events_dropped.clone(),
        );
        let connections_open = Gauge::default();
        registry.register(
            "connections_open",
            "Client connections open (accepted and not yet closed)",
            connections_open.clone(),
        );
        let connections_refused = Family::default();
        registry.register(
            "connections_refused",
            "Connections closed on accept, by reason (total: --max-connections with none idle; per_source: --max-connections-per-source)",
            connections_refused.clone(),
        );
        let connections_evicted = Counter::default();
        registry.register(
            "connections_evicted",
            "Idle connections asked to close to make room for a new one (--max-connections)",
            connections_evicted.clone(),
        );
        let protocol_errors = Counter::default();
        registry.register(
            "connections_protocol_errors",
            "Connections the server sent away because the peer broke HTTP/2's rules (GOAWAY: rapid resets, flow-control abuse)",
            protocol_errors.clone(),
        );
        let requests_shed = Counter::default();
        registry.register(
            "requests_shed",
            "Requests answered at once (HTTP 503, gRPC RESOURCE_EXHAUSTED) because --max-requests-in-flight were being answered",
            requests_shed.clone(),
        );
        Metrics {
            registry,
            requests_shed,
            protocol_errors,
            connections_open,
            connections_refused,
            connections_evicted,
            webhook_deliveries,
            events_pending,
            events_oldest_age,
            events_dropped,
            tokens,
            tokens_expiring,
            tokens_unused,
            next_expiry,
            last_used_written,
            last_used_failed,
            validations,
            validation_handles: Default::default(),
            management_calls,
            role_checks,
            rate_limited,
            rate_limit_store_errors,
            undecodable,
            request_duration,
            tokens_stored,
            cache_hits,
            secret_reuses,
            watch_streams,
            watch_events,
            watch_resyncs,
            reported_uses,
            cache_misses,
        }
    }

    /// A batch of `tokens` last-used times written, or not.
    pub fn last_used_batch(&self, tokens: u64, written: bool) {
        if written {
            self.last_used_written.inc_by(tokens);
        } else {
            self.last_used_failed.inc();
        }
    }

    /// One delivery attempt of one event to one webhook.
    pub fn webhook_delivery(&self, sent: bool) {
        let outcome = if sent { "sent" } else { "failed" };
        self.webhook_deliveries
            .get_or_create(&OutcomeLabels { outcome })
            .inc();
    }

    /// The outbox as last seen: how many events wait, and the oldest's age.
    pub fn outbox(&self, pending: u64, oldest_age_seconds: u64) {
        self.events_pending
            .set(i64::try_from(pending).unwrap_or(i64::MAX));
        self.events_oldest_age
            .set(i64::try_from(oldest_age_seconds).unwrap_or(i64::MAX));
    }

    /// A connection accepted (`true`) or closed (`false`).
    pub fn connection_open(&self, open: bool) {
        if open {
            self.connections_open.inc();
        } else {
            self.connections_open.dec();
        }
    }

    /// A connection closed on accept: `total` or `per_source`.
    pub fn connection_refused(&self, reason: &'static str) {
        self.connections_refused
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }

    pub fn request_shed(&self) {
        self.requests_shed.inc();
    }

    pub fn protocol_error(&self) {
        self.protocol_errors.inc();
    }

    pub fn connection_evicted(&self) {
        self.connections_evicted.inc();
    }

    /// The events waiting, as the service counts them between looks at
    /// the outbox.
    pub fn events_pending(&self, pending: u64) {
        self.events_pending
            .set(i64::try_from(pending).unwrap_or(i64::MAX));
    }

    pub fn event_dropped(&self) {
        self.events_dropped.inc();
    }

    /// One validation: `valid`, why it was invalid, or `error`.
    pub fn validation(&self, outcome: &'static str) {
        let counter = || {
            self.validations
                .get_or_create(&OutcomeLabels { outcome })
                .clone()
        };
        // The first free slot goes to the first outcome to ask for it; one
        // that lost a race for a slot looks on.
        for slot in &self.validation_handles {
            let (label, handle) = slot.get_or_init(|| (outcome, counter()));
            if *label == outcome {
                handle.inc();
                return;
            }
        }
        counter().inc();
    }

    pub fn cache_lookup(&self, hit: bool) {
        if hit {
            self.cache_hits.inc();
        } else {
            self.cache_misses.inc();
        }
    }

    /// One management call: the RPC's name and its gRPC status name.
    pub fn management_call(
        &self,
        rpc: &'static str,
        status: &'static str,
        caller: &'static str,
        transport: &'static str,
    ) {
        self.management_calls
            .get_or_create(&CallLabels {
                rpc,
                status,
                caller,
                transport,
            })
            .inc();
    }

    /// One required-role check: `granted` or `refused`.
    pub fn role_check(&self, outcome: &'static str) {
        self.role_checks
            .get_or_create(&OutcomeLabels { outcome })
            .inc();
    }

    /// One check a token's rate limit refused, on `surface` (`validate`,
    /// `status`, `forward_auth`, `ext_authz`, `token_review`,
    /// `introspection`). No token and no limit name: both are unbounded.
    /// A retired secret presented to a check.
    pub fn secret_reused(&self) {
        self.secret_reuses.inc();
    }

    /// A Watch stream opened (`1`) or ended (`-1`).
    pub fn watch_streams(&self, change: i64) {
        self.watch_streams.inc_by(change);
    }

    /// A message sent on a Watch stream: `synced`, `heartbeat`, `changed`
    /// or `resync`.
    pub fn watch_event(&self, event: &'static str) {
        self.watch_events
            .get_or_create(&EventLabels { event })
            .inc();
    }

    /// A Watch stream told to resync: `lagged` or `feed`.
    pub fn watch_resync(&self, reason: &'static str) {
        self.watch_resyncs
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }

    /// Uses a caller reported answering from its cache, by `outcome`.
    pub fn reported_uses(&self, outcome: &'static str, count: u64) {
        self.reported_uses
            .get_or_create(&OutcomeLabels { outcome })
            .inc_by(count);
    }

    pub fn rate_limited(&self, surface: &'static str) {
        self.rate_limited
            .get_or_create(&SurfaceLabels { surface })
            .inc();
    }

    /// One check answered without the shared rate-limit store, by
    /// `policy` (`open` or `closed`).
    pub fn rate_limit_store_error(&self, policy: &'static str) {
        self.rate_limit_store_errors
            .get_or_create(&PolicyLabels { policy })
            .inc();
    }

    /// One TokenService call refused before it began: its bytes did not
    /// decode.
    pub fn undecodable(&self, rpc: &'static str) {
        self.undecodable.get_or_create(&RpcLabels { rpc }).inc();
    }

    /// `route` comes from a fixed set (route templates, known methods).
    /// The latency histogram of `route`: a handle to keep, so that each
    /// request is not a lookup in the family.
    pub fn request_latency(&self, protocol: &'static str, route: &'static str) -> Histogram {
        self.request_duration
            .get_or_create(&RouteLabels { protocol, route })
            .clone()
    }

    /// The exposition text, with the stored-token gauge set to `tokens_stored`.
    /// Replaces the token counts.
    pub fn token_counts(&self, counts: &TokenCounts) {
        for (state, count) in &counts.states {
            self.tokens
                .get_or_create(&StateLabels { state })
                .set(*count);
        }
        for (within, count) in &counts.expiring {
            self.tokens_expiring
                .get_or_create(&WithinLabels { within })
                .set(*count);
        }
        for (r#for, count) in &counts.unused {
            self.tokens_unused
                .get_or_create(&ForLabels { r#for })
                .set(*count);
        }
        self.next_expiry.set(counts.next_expiry_seconds);
    }

    /// The exposition; `tokens_stored` when known now, else the last count
    /// stays.
    pub fn render(&self, tokens_stored: Option<u64>) -> String {
        if let Some(count) = tokens_stored {
            self.tokens_stored
                .set(i64::try_from(count).unwrap_or(i64::MAX));
        }
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut text, &self.registry);
        text
    }
}
