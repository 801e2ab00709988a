//! Serving HTTP/1.1 and HTTP/2 on accepted connections with hyper directly:
//! the connection settings, each request handed to the router with its
//! source address (the peer, or the client a trusted proxy names), gRPC
//! deadlines (`grpc-timeout`) enforced, requests past the bound on those
//! in flight answered at once, and a graceful shutdown that stops
//! accepting and lets open connections finish.
//!
//! Why not tonic's `Server`: it wraps every request in layers we do not use
//! (a boxed service and future, a second router, error recovery, a span),
//! which cost throughput (BENCHMARKS.md, the fourth part toward the limit);
//! and it does not let HTTP/1 clients half-close or the header buffer be
//! set. tonic's services still serve gRPC: they are
//! routes of the one router.

use std::{
    convert::Infallible,
    future::Future,
    pin::{Pin, pin},
    sync::Arc,
    task::{Context, Poll, ready},
    time::Duration,
};

use axum::body::Body;
use http::{HeaderMap, HeaderName, Request, Response};
use hyper::{
    body::Incoming as IncomingBody,
    server::conn::{http1, http2},
};
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::graceful::GracefulConnection,
};
use tokio::{sync::watch, time::Sleep};
use tokio_stream::StreamExt;
use tonic::transport::server::{Connected, TcpConnectInfo};
use tower::Service;

use crate::{
    config::{MIN_HEADER_BYTES, ServerConfig},
    connections::{Connections, InFlight, Slot},
    error::Error,
    server::listener::{Connection, Incoming},
    source::{Forwarded, TrustedProxies, ViaTrustedProxy},
};

/// What [`serve`] hands every request to: the whole application as one
/// service (the router behind `http::Front`).
pub trait App:
    Service<
        Request<IncomingBody>,
        Response = Response<Body>,
        Error = Infallible,
        Future: Send + 'static,
    > + Clone
    + Send
    + Sync
    + 'static
{
}

impl<S> App for S where
    S: Service<
            Request<IncomingBody>,
            Response = Response<Body>,
            Error = Infallible,
            Future: Send + 'static,
        > + Clone
        + Send
        + Sync
        + 'static
{
}

/// How connections are served.
#[derive(Clone, Debug)]
pub struct Protocol {
    /// The most header bytes a request may send (request line included):
    /// HTTP/1 answers 431 past it, HTTP/2 announces it as its header list
    /// size. At least [`MIN_HEADER_BYTES`].
    pub max_header_bytes: usize,
    /// How long a connection may take to say which HTTP it speaks (its
    /// first bytes).
    pub first_bytes_timeout: Duration,
    pub http2_keepalive_interval: Duration,
    pub http2_keepalive_timeout: Duration,
    /// Streams one HTTP/2 connection may have open at once.
    pub max_concurrent_streams: u32,
    /// Peers whose requests may name the client they forward.
    pub trusted_proxies: Arc<TrustedProxies>,
}

impl From<&ServerConfig> for Protocol {
    fn from(config: &ServerConfig) -> Protocol {
        Protocol {
            max_header_bytes: config.max_header_bytes,
            first_bytes_timeout: config.first_byte_timeout,
            http2_keepalive_interval: config.http2_keepalive_interval,
            http2_keepalive_timeout: config.http2_keepalive_timeout,
            max_concurrent_streams: config.max_streams_per_connection,
            trusted_proxies: Arc::new(config.trusted_proxies.clone()),
        }
    }
}

/// hyper's connection builders, set up once.
#[derive(Clone)]
struct Builders {
    http1: http1::Builder,
    http2: http2::Builder<TokioExecutor>,
    first_bytes_timeout: Duration,
    trusted_proxies: Arc<TrustedProxies>,
}

impl Builders {
    fn new(protocol: &Protocol) -> Builders {
        let header_bytes = protocol.max_header_bytes.max(MIN_HEADER_BYTES);
        let mut http1 = http1::Builder::new();
        http1
            // With a timer hyper enforces its header read timeout (30 s).
            .timer(TokioTimer::new())
            // A client that sends its request and shuts down its sending
            // side still gets its answer.
            .half_close(true)
            .max_header_size(header_bytes);
        let mut http2 = http2::Builder::new(TokioExecutor::new());
        http2
            .timer(TokioTimer::new())
            .keep_alive_interval(protocol.http2_keepalive_interval)
            .keep_alive_timeout(protocol.http2_keepalive_timeout)
            .max_concurrent_streams(protocol.max_concurrent_streams)
            .max_header_list_size(u32::try_from(header_bytes).unwrap_or(u32::MAX));
        Builders {
            http1,
            http2,
            first_bytes_timeout: protocol.first_bytes_timeout,
            trusted_proxies: protocol.trusted_proxies.clone(),
        }
    }

    /// Serves one connection until it ends, or until `shutting_down`
    /// changes: then HTTP/2 sends GOAWAY and HTTP/1 closes after the answer
    /// in flight, and the connection is served until that is done.
    async fn serve<S: App>(
        &self,
        mut connection: Connection,
        app: S,
        mut shutting_down: watch::Receiver<()>,
    ) {
        let peer = connection.connect_info();
        let slot = connection.slot().clone();
        let table = connection.table().clone();
        let peer_ip = peer.remote_addr().map(|a| a.ip());
        // Decided once: a peer that is not a trusted proxy (any peer when
        // none is configured) costs nothing per request.
        let proxy = peer_ip
            .is_some_and(|ip| self.trusted_proxies.contains(ip))
            .then(|| self.trusted_proxies.clone());
        let service = PerConnection {
            app,
            peer,
            proxy,
            slot: slot.clone(),
            table: table.clone(),
        };
        let http2 = tokio::select! {
            sniffed = tokio::time::timeout(self.first_bytes_timeout, connection.speaks_http2()) => match sniffed {
                Ok(Ok(http2)) => http2,
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, "connection closed before its first request");
                    return;
                }
                Err(_) => {
                    tracing::debug!("connection closed: it did not say which HTTP it speaks in time");
                    return;
                }
            },
            _ = shutting_down.changed() => return,
            () = slot.evicted() => return,
        };
        let io = TokioIo::new(connection);
        let finish = async {
            tokio::select! {
                _ = shutting_down.changed() => {}
                () = slot.evicted() => {}
            }
        };
        let served = if http2 {
            until_done(self.http2.serve_connection(io, service), finish).await
        } else {
            until_done(self.http1.serve_connection(io, service), finish).await
        };
        if let Err(e) = served {
            match sent_away(&e) {
                Some(reason) => table.misbehaved(peer_ip, &reason),
                None => tracing::debug!(error = %e, "connection ended with an error"),
            }
        }
    }
}

/// Why the server sent an HTTP/2 connection away, when it did so because
/// the peer broke the protocol (h2's GOAWAY with an error: too many
/// resets, flow-control abuse); `None` for any other end.
fn sent_away(error: &hyper::Error) -> Option<h2::Reason> {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(error) = cause {
        if let Some(h2) = error.downcast_ref::<h2::Error>() {
            let reason = h2.reason()?;
            return (h2.is_go_away() && h2.is_library() && reason != h2::Reason::NO_ERROR)
                .then_some(reason);
        }
        cause = error.source();
    }
    None
}

/// Drives `connection` to its end; once `finish` resolves (the server
/// shuts down, or the connection table wants the room), asks it to finish
/// (HTTP/2 GOAWAY; HTTP/1 closes after the answer in flight) and still
/// drives it until it has.
async fn until_done<C: GracefulConnection>(
    connection: C,
    finish: impl Future<Output = ()>,
) -> Result<(), C::Error> {
    let mut connection = pin!(connection);
    tokio::select! {
        served = connection.as_mut() => served,
        () = finish => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    }
}

/// Serves every connection `incoming` yields with `app` until `shutdown`
/// resolves; then stops accepting (the listening sockets close), asks every
/// connection to finish (HTTP/2 GOAWAY; HTTP/1 closes after the answer in
/// flight) and returns once all have: bounding that wait is the caller's
/// (`server::run_on` gives in-flight calls a grace period).
pub async fn serve<S: App>(
    incoming: Incoming,
    app: S,
    protocol: &Protocol,
    shutdown: impl Future<Output = ()>,
) {
    let builders = std::sync::Arc::new(Builders::new(protocol));
    let (shut_down, shutting_down) = watch::channel(());
    {
        let mut incoming = pin!(incoming);
        let mut shutdown = pin!(shutdown);
        loop {
            let connection = tokio::select! {
                () = &mut shutdown => break,
                connection = incoming.next() => connection,
            };
            let connection = match connection {
                Some(Ok(connection)) => connection,
                // The listener logged why; it keeps accepting.
                Some(Err(e)) => {
                    tracing::debug!(error = %e, "a connection failed before serving");
                    continue;
                }
                None => break,
            };
            let builders = builders.clone();
            let app = app.clone();
            let shutting_down = shutting_down.clone();
            tokio::spawn(async move { builders.serve(connection, app, shutting_down).await });
        }
        // `incoming` drops here: the listening sockets close, so clients
        // are refused at once rather than left waiting in the backlog.
    }
    drop(shutting_down);
    let _ = shut_down.send(());
    // Every connection task holds a receiver until it is done.
    shut_down.closed().await;
}

/// The service one connection's requests go to.
#[derive(Clone)]
struct PerConnection<S> {
    app: S,
    peer: TcpConnectInfo,
    /// The trusted proxies, when the peer is one of them.
    proxy: Option<Arc<TrustedProxies>>,
    /// The connection's place in the table: a request in flight keeps it
    /// from being evicted.
    slot: Arc<Slot>,
    table: Arc<Connections>,
}

impl<S: App> hyper::service::Service<Request<IncomingBody>> for PerConnection<S> {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = BoundedAnswer<S::Future>;

    fn call(&self, mut request: Request<IncomingBody>) -> BoundedAnswer<S::Future> {
        let in_flight = self.slot.request();
        if !in_flight.admitted() && !exempt(request.uri().path()) {
            self.table.shed();
            return BoundedAnswer {
                inner: None,
                shed: Some(shed(&request)),
                deadline: None,
                span: tracing::Span::none(),
                _in_flight: in_flight,
            };
        }
        // Where tonic's `Request::remote_addr` and `source::of` look.
        request.extensions_mut().insert(self.peer.clone());
        if request.uri().path() == crate::http::routes::GRPC_WATCH {
            // Open for as long as its client listens: the connection is
            // busy meanwhile, never evicted as idle.
            request.extensions_mut().insert(self.slot.hold());
        }
        if let Some(proxy) = &self.proxy {
            request.extensions_mut().insert(ViaTrustedProxy);
            if let Some(client) = proxy.client(request.headers()) {
                request.extensions_mut().insert(Forwarded(client));
            }
        }
        let deadline = grpc_timeout(request.headers()).map(tokio::time::sleep);
        // Disabled (and free) unless debug logging is on.
        let span = tracing::debug_span!("request", method = %request.method(), path = %request.uri().path());
        let mut app = self.app.clone();
        BoundedAnswer {
            inner: Some(app.call(request)),
            shed: None,
            deadline,
            span,
            _in_flight: in_flight,
        }
    }
}

/// What is answered past `--max-requests-in-flight` even so: the probes
/// and the metrics, so an orchestrator and its monitoring see an overloaded
/// server as alive and busy rather than dead.
fn exempt(path: &str) -> bool {
    use crate::http::routes::{GRPC_HEALTH_CHECK, HEALTHZ, METRICS, READYZ};
    [HEALTHZ, READYZ, METRICS, GRPC_HEALTH_CHECK].contains(&path)
}

/// The answer to a request past the bound, before any of it is read:
/// gRPC's RESOURCE_EXHAUSTED, or HTTP's 503 with `Retry-After`.
fn shed(request: &Request<IncomingBody>) -> Response<Body> {
    let grpc = request
        .headers()
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
    if grpc {
        tonic::Status::from(Error::Overloaded).into_http()
    } else {
        axum::response::IntoResponse::into_response(Error::Overloaded)
    }
}

pin_project_lite::pin_project! {
    /// The router's answer, or gRPC's CANCELLED when the call's deadline
    /// passes first (dropping the handler's future abandons the call).
    struct BoundedAnswer<F> {
        // `None` when the request was shed: `shed` is the answer.
        #[pin]
        inner: Option<F>,
        shed: Option<Response<Body>>,
        #[pin]
        deadline: Option<Sleep>,
        span: tracing::Span,
        _in_flight: InFlight,
    }
}

impl<F: Future<Output = Result<Response<Body>, Infallible>>> Future for BoundedAnswer<F> {
    type Output = Result<Response<Body>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let Some(inner) = this.inner.as_pin_mut() else {
            let shed = this.shed.take();
            return Poll::Ready(Ok(shed.unwrap_or_default()));
        };
        let _entered = this.span.enter();
        if let ready @ Poll::Ready(_) = inner.poll(cx) {
            return ready;
        }
        if let Some(deadline) = this.deadline.as_pin_mut() {
            ready!(deadline.poll(cx));
            // tonic's server answers an expired deadline the same way.
            return Poll::Ready(Ok(tonic::Status::cancelled("Timeout expired").into_http()));
        }
        Poll::Pending
    }
}

/// The call's deadline from its `grpc-timeout` header (gRPC over HTTP/2:
/// at most 8 digits and a unit of H, M, S, m, u or n). A malformed value is
/// ignored, as tonic's server did.
fn grpc_timeout(headers: &HeaderMap) -> Option<Duration> {
    // A ready-made name: a `&str` one is parsed again on every request.
    const GRPC_TIMEOUT: HeaderName = HeaderName::from_static("grpc-timeout");
    let value = headers.get(GRPC_TIMEOUT)?.as_bytes();
    let (&unit, digits) = value.split_last()?;
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let amount: u64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    Some(match unit {
        b'H' => Duration::from_secs(amount * 60 * 60),
        b'M' => Duration::from_secs(amount * 60),
        b'S' => Duration::from_secs(amount),
        b'm' => Duration::from_millis(amount),
        b'u' => Duration::from_micros(amount),
        b'n' => Duration::from_nanos(amount),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timeout(value: &str) -> Option<Duration> {
        let mut headers = HeaderMap::new();
        headers.insert("grpc-timeout", value.parse().unwrap());
        grpc_timeout(&headers)
    }

    #[test]
    fn grpc_timeouts_are_read_as_the_protocol_spells_them() {
        assert_eq!(timeout("2H"), Some(Duration::from_secs(7200)));
        assert_eq!(timeout("3M"), Some(Duration::from_secs(180)));
        assert_eq!(timeout("5S"), Some(Duration::from_secs(5)));
        assert_eq!(timeout("300m"), Some(Duration::from_millis(300)));
        assert_eq!(timeout("7u"), Some(Duration::from_micros(7)));
        assert_eq!(timeout("99999999n"), Some(Duration::from_nanos(99_999_999)));
        for bad in ["", "m", "123456789m", "10", "10x", "-1S", "1.5S", " 1S"] {
            assert_eq!(timeout(bad), None, "{bad:?}");
        }
        assert_eq!(grpc_timeout(&HeaderMap::new()), None);
    }
}
