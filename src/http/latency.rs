//! Request latency by route, for every request on the port (HTTP and gRPC):
//! a tower layer around the whole router.
//!
//! Hand-written rather than `axum::middleware::from_fn`: that boxes the inner
//! service and the future of every request, which cost a measurable share of
//! a `Validate` call (see BENCHMARKS.md). This one allocates nothing.

use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Instant,
};

use axum::extract::MatchedPath;
use http::Request;
use tower::{Layer, Service};

use crate::metrics::Metrics;

/// Route labels: every route and gRPC method we serve, as static strings, so
/// labelling a request allocates nothing and label values stay bounded
/// whatever paths clients send.
const ROUTES: &[&str] = &[
    "/stackstate.servicetoken.v1.TokenService/Validate",
    "/envoy.service.auth.v3.Authorization/Check",
    "/stackstate.servicetoken.v1.TokenService/Create",
    "/stackstate.servicetoken.v1.TokenService/List",
    "/stackstate.servicetoken.v1.TokenService/Delete",
    "/stackstate.servicetoken.v1.TokenService/Get",
    "/stackstate.servicetoken.v1.TokenService/Update",
    "/stackstate.servicetoken.v1.TokenService/Rotate",
    "/api/server/status",
    "/api/server/info",
    "/api/auth",
    "/api/auth/",
    "/api/auth/{*path}",
    "/api/kubernetes/tokenreview",
    "/oauth2/introspect",
    "/api/security/tokens",
    "/api/security/tokens/{id}",
    "/api/security/tokens/{id}/rotate",
    "/api/security/tokens/revoke",
    "/stackstate.servicetoken.v1.TokenService/RevokeLeaked",
    "/healthz",
    "/readyz",
    "/metrics",
    "/grpc.health.v1.Health/{*rest}",
    "/grpc.reflection.v1.ServerReflection/{*rest}",
    "/grpc.reflection.v1alpha.ServerReflection/{*rest}",
];

fn route_label<B>(request: &Request<B>) -> &'static str {
    let path = request.uri().path();
    let matched = request
        .extensions()
        .get::<MatchedPath>()
        .map(MatchedPath::as_str);
    ROUTES
        .iter()
        .find(|route| **route == path || Some(**route) == matched)
        .copied()
        .unwrap_or("other")
}

/// Observes the time to the response head of every request.
#[derive(Clone)]
pub struct ObserveLatencyLayer {
    metrics: Arc<Metrics>,
}

impl ObserveLatencyLayer {
    pub fn new(metrics: Arc<Metrics>) -> ObserveLatencyLayer {
        ObserveLatencyLayer { metrics }
    }
}

impl<S> Layer<S> for ObserveLatencyLayer {
    type Service = ObserveLatency<S>;

    fn layer(&self, inner: S) -> ObserveLatency<S> {
        ObserveLatency {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

#[derive(Clone)]
pub struct ObserveLatency<S> {
    inner: S,
    metrics: Arc<Metrics>,
}

impl<S, B> Service<Request<B>> for ObserveLatency<S>
where
    S: Service<Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Observed<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Observed<S::Future> {
        let protocol = if super::is_grpc(request.headers()) {
            "grpc"
        } else {
            "http"
        };
        let route = route_label(&request);
        Observed {
            inner: self.inner.call(request),
            metrics: self.metrics.clone(),
            protocol,
            route,
            started: Instant::now(),
        }
    }
}

pin_project_lite::pin_project! {
    /// The inner future; records its latency when it completes.
    pub struct Observed<F> {
        #[pin]
        inner: F,
        metrics: Arc<Metrics>,
        protocol: &'static str,
        route: &'static str,
        started: Instant,
    }
}

impl<F: Future> Future for Observed<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        let output = std::task::ready!(this.inner.poll(cx));
        this.metrics.request(
            this.protocol,
            this.route,
            this.started.elapsed().as_secs_f64(),
        );
        Poll::Ready(output)
    }
}
