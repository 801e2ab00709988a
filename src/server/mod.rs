//! Serving: one listener for everything. gRPC (TokenService, health,
//! reflection) and the HTTP routes are routes of one router, served over
//! HTTP/1.1 and HTTP/2 by [`protocol`]; requests are routed by path, and
//! every one passes [`Front`] (latency, Host, body bound) first. Runs until `shutdown` resolves, then drains and flushes.

use std::{future::Future, sync::Arc, time::Duration};

use tokio::{net::TcpListener, sync::oneshot};
use tonic::service::Routes;
use tonic_health::{ServingStatus, server::HealthReporter};

use crate::{
    config::ServerConfig,
    connections::Connections,
    error::{ServeError, with_causes},
    grpc::{AuthorizationService, ExtAuthz, GrpcTokenService, UndecodableLayer},
    http::{self, BodyBounds, Front, HttpState, Readiness},
    proto::{self, token_service_server::TokenServiceServer},
    service::TokenService,
    store::StoreError,
    webhook,
};

pub mod daemon;
pub mod listener;
pub mod probe_port;
pub mod protocol;

use listener::{Incoming, Limits, tls_acceptor};
use probe_port::ProbePort;
use protocol::{Protocol, serve};

/// The gRPC name health checks use for our service.
pub const SERVICE_NAME: &str = proto::token_service_server::SERVICE_NAME;

/// The gRPC health name a liveness probe asks: SERVING as long as the
/// process serves, whatever the store does (a database outage must make
/// replicas unready, not restart them all).
pub const LIVENESS: &str = "liveness";

/// How often readiness asks the store whether it can serve, and how long
/// an answer may take before it counts as no.
/// How often the store is checked, and how long a check may take: a store
/// that goes away is known (readiness 503, gRPC health NOT_SERVING, calls
/// UNAVAILABLE at once) within the two together, one second.
const STORE_CHECK_INTERVAL: Duration = Duration::from_millis(500);
const STORE_CHECK_TIMEOUT: Duration = Duration::from_millis(500);

/// How long shutdown waits, after the drain, for the last writes (last-used
/// times, the final flush) to reach the disk. SIGTERM to exit takes at most
/// the shutdown delay, the grace and this.
pub const LAST_WRITES_DEADLINE: Duration = Duration::from_secs(5);

/// Keeps readiness and gRPC health in step with the store (a database that
/// goes away and comes back), until shutdown stops it.
async fn watch_store(
    service: Arc<TokenService>,
    health: HealthReporter,
    readiness: Arc<Readiness>,
) {
    let mut serving = true;
    let mut ticks = tokio::time::interval(STORE_CHECK_INTERVAL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        // The store's incidents whose window has passed get their summary
        // line now, not whenever the next failure comes.
        crate::incident::summarize(false);
        let check = tokio::time::timeout(STORE_CHECK_TIMEOUT, service.store_ready()).await;
        let ok = matches!(check, Ok(Ok(())));
        readiness.set_store_ok(ok);
        let failure = match &check {
            Ok(Err(e)) => Some(e),
            _ => None,
        };
        service.set_store_reachable(ok, failure);
        if ok == serving {
            continue;
        }
        serving = ok;
        if ok {
            tracing::info!("the store is reachable again: ready");
        } else {
            let reason = match check {
                Ok(Err(e)) => with_causes(&e),
                _ => format!("no answer within {STORE_CHECK_TIMEOUT:?}"),
            };
            tracing::warn!(%reason, "the store is unreachable: not ready");
        }
        let status = if ok {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        for name in ["", SERVICE_NAME] {
            health.set_service_status(name, status).await;
        }
    }
}

/// Purges expired tokens (when configured), records the expiry events due
/// (with webhooks) and refreshes the token-count metrics every `interval`, from start-up on,
/// until shutdown stops it. A failure (the store away) keeps the last
/// counts and is said once, not every interval.
async fn summarize_tokens(service: Arc<TokenService>, interval: Duration) {
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        ticks.tick().await;
        if let Err(e) = service.purge_expired().await {
            tracing::warn!(error = %e, "could not purge expired tokens; trying again next time");
        }
        if let Err(e) = service.signal_expiries().await {
            tracing::warn!(error = %e, "could not record expiry events; trying again next time");
        }
        match service.summarize().await {
            Ok(()) => failing = false,
            Err(e) if !failing => {
                failing = true;
                tracing::warn!(error = %e, "could not count the tokens for the metrics; keeping the last counts");
            }
            Err(_) => {}
        }
    }
}

/// How often console sessions' last-seen times are written, and those
/// past their timeouts ended.
const SESSION_KEEPING_INTERVAL: Duration = Duration::from_secs(10);

/// Writes console sessions' last-seen times in batches and ends the stale
/// ones, until shutdown stops it. A failure is said once until it clears.
async fn keep_sessions(service: Arc<TokenService>) {
    let mut ticks = tokio::time::interval(SESSION_KEEPING_INTERVAL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        ticks.tick().await;
        match service.keep_sessions().await {
            Ok(()) => failing = false,
            Err(e) if !failing => {
                failing = true;
                tracing::warn!(error = %e, "could not keep console sessions; trying again");
            }
            Err(_) => {}
        }
    }
}

/// Serves on `listener` until `shutdown` resolves; see [`run_on`].
pub async fn run(
    listener: TcpListener,
    service: Arc<TokenService>,
    config: ServerConfig,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    run_on(vec![listener], Vec::new(), service, config, shutdown).await
}

/// Serves on every one of `listeners` (one per address a host name resolved
/// to) until `shutdown` resolves. Health reports `SERVING` (overall and for
/// [`SERVICE_NAME`]) and `/readyz` ready from the start, since the store is
/// already open. When shutdown begins both turn not-ready at once, while
/// connections are still accepted and served for `config.shutdown_delay`
/// (so load balancers stop sending before anything is refused); then new
/// connections are refused, in-flight calls get up to
/// `config.shutdown_grace` to finish, and the store is flushed before this
/// returns. `probes`, when there are any, serve `/healthz` and `/readyz`
/// from a thread of their own (see [`ProbePort`]) until the end.
pub async fn run_on(
    listeners: Vec<TcpListener>,
    probes: Vec<std::net::TcpListener>,
    service: Arc<TokenService>,
    config: ServerConfig,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    if listeners.is_empty() {
        return Err(ServeError::NoAddress);
    }
    let (health, health_service) = tonic_health::server::health_reporter();
    for name in [SERVICE_NAME, LIVENESS] {
        health
            .set_service_status(name, ServingStatus::Serving)
            .await;
    }
    let readiness = Arc::new(Readiness::default());
    let watcher = tokio::spawn(watch_store(
        service.clone(),
        health.clone(),
        readiness.clone(),
    ));
    let summarizer = tokio::spawn(summarize_tokens(
        service.clone(),
        service.config().token_summary_interval,
    ));
    let sessions = config
        .console
        .is_some()
        .then(|| tokio::spawn(keep_sessions(service.clone())));
    let delivery = service
        .config()
        .webhooks
        .clone()
        .map(|webhooks| tokio::spawn(webhook::deliver(service.clone(), webhooks)));

    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(proto::ENVOY_EXT_AUTHZ_DESCRIPTOR_SET)
    };
    let tokens = tower::ServiceBuilder::new()
        .layer(UndecodableLayer::new(service.clone()))
        .service(
            TokenServiceServer::new(GrpcTokenService::new(service.clone()))
                .max_decoding_message_size(config.max_request_bytes),
        );

    let state = HttpState::new(
        service.clone(),
        readiness.clone(),
        BodyBounds {
            max_bytes: config.max_request_bytes,
            timeout: config.body_timeout,
        },
        config.integrations.clone(),
    );
    let mut router = http::router(state.clone());
    if let Some(console) = &config.console {
        let console =
            crate::console::ConsoleState::new(service.clone(), console, config.tls.is_some(), {
                let readiness = readiness.clone();
                Arc::new(move || readiness.is_ready())
            });
        router = router.merge(crate::console::router(console));
    }
    let routes = Routes::from(router)
        .add_service(health_service)
        .add_service(reflection().build_v1()?)
        .add_service(reflection().build_v1alpha()?)
        .add_service(tokens)
        .add_service(AuthorizationService::new(
            ExtAuthz::new(service.clone(), &config.integrations),
            config.max_check_request_bytes,
        ))
        .into_axum_router();
    let protocol = Protocol::from(&config);
    let probes = if probes.is_empty() {
        None
    } else {
        let port = ProbePort::start(
            probes,
            state.clone(),
            protocol.clone(),
            service.metrics().clone(),
        )?;
        for address in port.addresses() {
            // Before the main port's `serving` lines: once those are out,
            // the probes are served too.
            tracing::info!(probe_address = %address, "serving probes (/healthz, /readyz)");
        }
        Some(port)
    };
    let front = match &config.console {
        Some(console) => Front::new(routes, state).with_console(console.prefix.clone()),
        None => Front::new(routes, state),
    };

    let (drain_started, drain_started_rx) = oneshot::channel();
    let delay = config.shutdown_delay;
    let draining = {
        let mut health = health.clone();
        let drain_service = service.clone();
        async move {
            shutdown.await;
            // Stopped for good before the statuses go, so it cannot bring one back.
            watcher.abort();
            let _ = watcher.await;
            summarizer.abort();
            if let Some(sessions) = &sessions {
                sessions.abort();
            }
            // An event in flight is sent again after the restart.
            if let Some(delivery) = &delivery {
                delivery.abort();
            }
            readiness.drain();
            for name in ["", SERVICE_NAME] {
                health
                    .set_service_status(name, ServingStatus::NotServing)
                    .await;
            }
            if !delay.is_zero() {
                tracing::info!(
                    ?delay,
                    "shutting down: not ready, still serving while load balancers catch up"
                );
                tokio::time::sleep(delay).await;
            }
            tracing::info!("shutting down: refusing new connections, finishing in-flight calls");
            // Watch streams last as long as their clients: ended now, so
            // they reconnect elsewhere instead of holding the drain.
            drain_service.end_watches();
            for name in ["", SERVICE_NAME, LIVENESS] {
                // Dropping the status ends open Watch streams (after they saw
                // NOT_SERVING); a watcher would otherwise hold shutdown forever.
                health.clear_service_status(name).await;
            }
            let _ = drain_started.send(());
        }
    };
    let grace = config.shutdown_grace;
    let grace_expired = async move {
        if drain_started_rx.await.is_err() {
            return std::future::pending().await;
        }
        tokio::time::sleep(grace).await;
    };

    let addresses: Vec<_> = listeners
        .iter()
        .filter_map(|l| l.local_addr().ok())
        .collect();
    let tls = config.tls.as_ref().map(tls_acceptor).transpose()?;
    let limits = Limits {
        first_byte_timeout: config.first_byte_timeout,
        tls_handshake_timeout: config.tls_handshake_timeout,
    };
    let scheme = if tls.is_some() { "https" } else { "http" };
    let connections = Connections::new(
        config.connection_limits,
        Arc::new(config.trusted_proxies.clone()),
        service.metrics().clone(),
    );
    let incoming = Incoming::new(listeners, limits, tls, connections);
    for address in addresses {
        tracing::info!(
            %address,
            scheme,
            max_connections = config.connection_limits.max_total,
            max_connections_per_source = config.connection_limits.max_per_source,
            "serving"
        );
    }
    tokio::select! {
        () = serve(incoming, front, &protocol, draining) => {}
        () = grace_expired => tracing::warn!(?grace, "in-flight calls outlasted the shutdown grace; closing anyway"),
    }

    // The last writes (last-used times, the final flush) are bounded too:
    // on a disk that stopped answering, stopping must not wait for it.
    match tokio::time::timeout(LAST_WRITES_DEADLINE, service.shutdown()).await {
        Ok(done) => done?,
        Err(_) => {
            return Err(StoreError::Unavailable {
                context: format!(
                    "the last writes did not reach the disk within {LAST_WRITES_DEADLINE:?}; stopping without them"
                ),
                source: None,
            }
            .into());
        }
    }
    if let Some(probes) = probes {
        probes.stop().await;
    }
    crate::incident::summarize(true);
    tracing::info!("stopped");
    Ok(())
}
