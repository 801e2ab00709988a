//! What `sts-server`'s commands do, as library functions: open the
//! configured store, serve, bootstrap the first admin token, export and
//! import, and wait for the shutdown signal. The binary parses flags, sets up
//! logging and calls these; tests call them too.

use std::{
    future::Future,
    io::{BufRead, Write},
    net::SocketAddr,
    path::Path,
    sync::Arc,
};

use tokio::net::TcpListener;

use crate::{
    clock::SystemClock,
    config::{RateLimitConfig, ServerConfig, ServiceConfig, StoreConfig, TlsIdentity},
    error::{Error, ServeError},
    export::{self, ExportError, ImportSummary},
    model::{NewToken, ServiceToken},
    rate_limit::{Limiter, Shared},
    server,
    service::{self, TokenService},
    store::{PostgresStore, SledStore, Store, StoreError},
    token::Secret,
};

/// Opens the store `config` names: a sled data directory (created 0700 if
/// missing) or a PostgreSQL database (its schema migrated).
pub async fn open_store(config: &StoreConfig) -> Result<Arc<dyn Store>, StoreError> {
    Ok(match config {
        StoreConfig::Postgres { url } => {
            let store = PostgresStore::connect(url).await?;
            tracing::info!(store = "postgres", %url, "store open");
            Arc::new(store)
        }
        StoreConfig::Sled {
            data_dir,
            disk_reserve,
        } => {
            let store = SledStore::open_with_reserve(data_dir, *disk_reserve)?;
            tracing::info!(store = "sled", data_dir = %data_dir.display(), "store open");
            Arc::new(store)
        }
    })
}

/// Reads a PEM certificate chain and its private key.
pub fn read_tls(cert: &Path, key: &Path) -> Result<TlsIdentity, ServeError> {
    let read = |path: &Path| {
        std::fs::read(path).map_err(|source| ServeError::Read {
            path: path.to_owned(),
            source,
        })
    };
    Ok(TlsIdentity {
        cert_pem: read(cert)?,
        key_pem: read(key)?,
    })
}

/// `sts-server serve`: opens the store, binds `address` (`host:port`; a
/// host name is bound on every address it resolves to) and `probe_address`
/// when given, and serves until `shutdown` resolves (then drains and
/// flushes; see [`server::run_on`]).
pub async fn serve(
    address: &str,
    probe_address: Option<&str>,
    store: &StoreConfig,
    rate_limits: &RateLimitConfig,
    service: ServiceConfig,
    server: ServerConfig,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    let listeners = bind(address).await?;
    let mut probes = Vec::new();
    if let Some(probe_address) = probe_address {
        for listener in bind(probe_address).await? {
            let address = listener.local_addr().ok();
            probes.push(listener.into_std().map_err(|source| match address {
                Some(address) => ServeError::Bind { address, source },
                None => ServeError::Probe(source),
            })?);
        }
    }
    let store = open_store(store).await?;
    let limiter = limiter(&*store, rate_limits, &service).await?;
    let service = TokenService::new(store, Arc::new(SystemClock), service).with_limiter(limiter);
    server::run_on(listeners, probes, Arc::new(service), server, shutdown).await
}

/// Where rate limits are counted: the shared store when one is given;
/// otherwise this process, and a warning where replicas share the token
/// store and some token (or the default) has limits, since each replica
/// then allows them in full.
async fn limiter(
    store: &dyn Store,
    config: &RateLimitConfig,
    service: &ServiceConfig,
) -> Result<Limiter, ServeError> {
    if let Some(url) = &config.store {
        let shared = Shared::new(url.with_password(), &url.to_string(), config.on_error)?;
        tracing::info!(store = %url, on_error = config.on_error.as_str(), "rate limits are counted in Redis, shared by every replica that uses it");
        return Ok(Limiter::Shared(Box::new(shared)));
    }
    if store.is_shared() {
        let limited = !service.default_rate_limits.is_empty()
            || store.any_rate_limited().await.unwrap_or(false);
        if limited {
            tracing::warn!(
                "tokens have rate limits, and with PostgreSQL several replicas may serve them, each counting alone: a token may get its limits in full from every replica; give them one Redis with --rate-limit-store to share them"
            );
        }
    }
    Ok(Limiter::default())
}

/// A listener on every address `address` resolves to, as servers do with
/// `localhost` (127.0.0.1 and ::1). An address this host cannot bind (::1
/// where IPv6 is off) is skipped with a warning as long as another one
/// works; any other failure stops start-up. With port 0 the first address
/// picks the port and the others share it.
pub async fn bind(address: &str) -> Result<Vec<TcpListener>, ServeError> {
    let mut addresses: Vec<SocketAddr> = tokio::net::lookup_host(address)
        .await
        .map_err(|source| ServeError::Resolve {
            address: address.to_owned(),
            source,
        })?
        .collect();
    let mut seen = std::collections::HashSet::new();
    addresses.retain(|a| seen.insert(*a));
    let mut listeners: Vec<TcpListener> = Vec::new();
    let mut unavailable = Vec::new();
    for mut at in addresses {
        if let Some(first) = listeners.first().and_then(|l| l.local_addr().ok()) {
            at.set_port(first.port());
        }
        match TcpListener::bind(at).await {
            Ok(listener) => listeners.push(listener),
            Err(e) if e.kind() == std::io::ErrorKind::AddrNotAvailable => {
                unavailable.push((at, e));
            }
            Err(source) => {
                return Err(ServeError::Bind {
                    address: at,
                    source,
                });
            }
        }
    }
    if listeners.is_empty() {
        return match unavailable.into_iter().next() {
            Some((address, source)) => Err(ServeError::Bind { address, source }),
            None => Err(ServeError::Unresolved {
                address: address.to_owned(),
            }),
        };
    }
    for (at, e) in unavailable {
        tracing::warn!(address = %at, error = %e, "cannot listen on one of the addresses; serving on the others");
    }
    Ok(listeners)
}

/// `sts-server bootstrap`: creates `new` in the store with no caller and
/// returns its secret, the only copy there will be.
pub async fn bootstrap(
    store: &StoreConfig,
    new: NewToken,
) -> Result<(Secret, ServiceToken), Error> {
    let store = open_store(store).await?;
    service::bootstrap(&*store, &SystemClock, new).await
}

/// `sts-server export`: every token of the store to `out`; how many.
pub async fn export(store: &StoreConfig, out: &mut impl Write) -> Result<u64, ExportError> {
    let store = open_store(store).await?;
    export::export(&*store, out).await
}

/// `sts-server import`: the tokens of an export into the store, each batch
/// durable before the next is read.
pub async fn import(
    store: &StoreConfig,
    input: impl BufRead,
) -> Result<ImportSummary, ExportError> {
    let store = open_store(store).await?;
    export::import(&*store, input).await
}

/// Resolves on Ctrl-C or SIGTERM (what Kubernetes sends).
pub fn shutdown_signal() -> impl std::future::Future<Output = ()> + Send + 'static {
    // The handlers are installed here, before the server says it is
    // serving: a SIGTERM sent the moment after must stop it gracefully,
    // not kill it with the default action (a future would register them
    // only when first polled, after that log line).
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let interrupt = signal(SignalKind::interrupt());
        let terminate = signal(SignalKind::terminate());
        async move {
            let (mut interrupt, mut terminate) = match (interrupt, terminate) {
                (Ok(interrupt), Ok(terminate)) => (interrupt, terminate),
                (Err(e), _) | (_, Err(e)) => {
                    tracing::error!(error = %e, "cannot listen for SIGINT and SIGTERM");
                    return std::future::pending().await;
                }
            };
            tokio::select! {
                _ = interrupt.recv() => {}
                _ = terminate.recv() => {}
            }
        }
    }
    #[cfg(not(unix))]
    async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    }
}
