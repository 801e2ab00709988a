//! What every request on the port (HTTP and gRPC) passes before routing,
//! as one tower service around the whole router: its latency recorded by
//! route, the Host rule of HTTP/1.1, the bound on HTTP request bodies, and
//! a fast lane past the router for the two routes proxies call on every
//! request they pass (`/api/server/status` and forward-auth).
//!
//! Around the router once, not through `Router::layer`: that wraps every
//! route, and each wrapper boxes and clones the route's service on every
//! call (BENCHMARKS.md has what that cost). Written
//! out rather than `middleware::from_fn`, which boxes too; a request that
//! passes allocates nothing here.

use std::{
    convert::Infallible,
    future::Future,
    pin::Pin,
    sync::{Arc, OnceLock},
    task::{Context, Poll},
    time::Instant,
};

use axum::{
    body::Body,
    response::{IntoResponse, Response},
};
use bytes::Bytes;
use http::{Method, Request, Version, header::HOST};
use http_body_util::Limited;
use tower::Service;

use super::{
    HttpState, api,
    body::{BodyTimeout, Deadline},
    forward_auth,
    routes::{self, AUTH, AUTH_BELOW, AUTH_SLASH, ROTATE, STATUS, TOKEN, USAGE},
};
use crate::{
    error::Error,
    metrics::{Histogram, Metrics},
    model::FieldError,
};

/// Route labels: every route and gRPC method we serve, as static strings
/// (named in [`routes`]), so labelling a request allocates nothing and label
/// values stay bounded whatever paths clients send. [`route`] matches a
/// path to them as the router does.
const EXACT: &[&str] = &[
    // The routes of the fast lane first; see [`lane`].
    STATUS,
    AUTH,
    AUTH_SLASH,
    routes::GRPC_METHODS[0],
    routes::GRPC_METHODS[1],
    routes::GRPC_METHODS[2],
    routes::GRPC_METHODS[3],
    routes::GRPC_METHODS[4],
    routes::GRPC_METHODS[5],
    routes::GRPC_METHODS[6],
    routes::GRPC_METHODS[7],
    routes::GRPC_METHODS[8],
    routes::GRPC_METHODS[9],
    routes::GRPC_METHODS[10],
    routes::GRPC_METHODS[11],
    routes::GRPC_METHODS[12],
    routes::INFO,
    routes::TOKEN_REVIEW,
    routes::INTROSPECT,
    routes::TOKENS,
    routes::ROTATE_SELF,
    routes::REVOKE,
    routes::HEALTHZ,
    routes::READYZ,
    routes::METRICS,
];

/// Routes with a `{*rest}` tail: the prefix, and the label.
const PREFIXED: &[(&str, &str)] = &[
    (AUTH_SLASH, AUTH_BELOW),
    routes::GRPC_SERVICES[0],
    routes::GRPC_SERVICES[1],
    routes::GRPC_SERVICES[2],
];

const OTHER: &str = "other";
/// Every path of the console, under whatever prefix it is served.
const CONSOLE: &str = "console";

/// The labels after [`EXACT`]'s: together, every label a route can get.
const INEXACT: &[&str] = &[
    PREFIXED[0].1,
    PREFIXED[1].1,
    PREFIXED[2].1,
    PREFIXED[3].1,
    TOKEN,
    ROTATE,
    USAGE,
    CONSOLE,
    OTHER,
];
const ROUTES: usize = EXACT.len() + INEXACT.len();
/// The console's route number (its place in [`INEXACT`]).
const CONSOLE_ROUTE: usize = ROUTES - 2;
/// The number of a path no route serves.
const OTHER_ROUTE: usize = ROUTES - 1;

// Each gRPC method and service of `routes` has its place in the lists above.
const _: () = assert!(routes::GRPC_METHODS.len() == 13 && routes::GRPC_SERVICES.len() == 3);

/// The route `path` is served by: an index into [`EXACT`] and then
/// [`INEXACT`] (see [`label`]).
fn route(path: &str) -> usize {
    if let Some(exact) = EXACT.iter().position(|route| *route == path) {
        return exact;
    }
    let inexact = inexact_label(path);
    EXACT.len()
        + INEXACT
            .iter()
            .position(|label| *label == inexact)
            .unwrap_or(INEXACT.len() - 1)
}

/// The template of route number `route`.
fn label(route: usize) -> &'static str {
    EXACT
        .get(route)
        .or_else(|| INEXACT.get(route - EXACT.len()))
        .unwrap_or(&OTHER)
}

/// The label of a path no exact route serves.
fn inexact_label(path: &str) -> &'static str {
    if let Some(rest) = path
        .strip_prefix(routes::TOKENS)
        .and_then(|rest| rest.strip_prefix('/'))
    {
        return match rest.split_once('/') {
            None if !rest.is_empty() => TOKEN,
            Some((id, "rotate")) if !id.is_empty() => ROTATE,
            Some((id, "usage")) if !id.is_empty() => USAGE,
            _ => OTHER,
        };
    }
    PREFIXED
        .iter()
        .find(|(prefix, _)| path.len() > prefix.len() && path.starts_with(prefix))
        .map_or(OTHER, |(_, label)| label)
}

/// The latency histograms of every route, gRPC's then HTTP's, each handle
/// taken from the family at its route's first request (so the exposition
/// shows only routes that were asked for) and kept.
struct Latency {
    metrics: Arc<Metrics>,
    handles: [OnceLock<Histogram>; 2 * ROUTES],
}

impl Latency {
    fn observe(&self, grpc: bool, route: usize, seconds: f64) {
        let (protocol, at) = if grpc {
            ("grpc", route)
        } else {
            ("http", ROUTES + route)
        };
        if let Some(handle) = self.handles.get(at) {
            handle
                .get_or_init(|| self.metrics.request_latency(protocol, label(route)))
                .observe(seconds);
        }
    }
}

fn is_grpc<B>(request: &Request<B>) -> bool {
    super::is_grpc(request.headers())
}

/// Whether `request` breaks RFC 9112 section 3.2: HTTP/1.1 with no `Host`,
/// or several. hyper leaves this to the application; every conforming
/// server answers 400.
fn lacks_host<B>(request: &Request<B>) -> bool {
    if request.version() != Version::HTTP_11 {
        return false;
    }
    let mut hosts = request.headers().get_all(HOST).iter();
    hosts.next().is_none() || hosts.next().is_some()
}

/// The routes the fast lane answers.
#[derive(Clone, Copy)]
enum FastLane {
    Status,
    ForwardAuth,
}

/// The lane of a request for route number `route` with `method`, if it
/// takes one: every method of forward-auth (a proxy forwards the original
/// one), GET of the status. Others (HEAD, a 405) go through the router,
/// which calls the same handlers.
fn lane(route: usize, method: &Method) -> Option<FastLane> {
    match label(route) {
        STATUS if method == Method::GET => Some(FastLane::Status),
        AUTH | AUTH_SLASH | AUTH_BELOW => Some(FastLane::ForwardAuth),
        _ => None,
    }
}

/// The router (`inner`) behind what every request passes.
#[derive(Clone)]
pub struct Front<S> {
    inner: S,
    latency: Arc<Latency>,
    state: HttpState,
    /// The console's prefix, when it is served: its paths share a label.
    console: Option<Arc<crate::config::ConsolePrefix>>,
}

impl<S> Front<S> {
    /// `inner` is the router over `state`: the fast lane calls its handlers
    /// with the same state. HTTP request bodies over the state's bound are
    /// refused (413) when a handler reads them; gRPC messages have their
    /// own bounds.
    pub fn new(inner: S, state: HttpState) -> Front<S> {
        Front {
            inner,
            latency: Arc::new(Latency {
                metrics: state.service.metrics().clone(),
                handles: std::array::from_fn(|_| OnceLock::new()),
            }),
            state,
            console: None,
        }
    }

    /// The same, labelling the console's paths (under `prefix`) as one
    /// route.
    pub fn with_console(self, prefix: crate::config::ConsolePrefix) -> Front<S> {
        Front {
            console: Some(Arc::new(prefix)),
            ..self
        }
    }
}

impl<S, B> Service<Request<B>> for Front<S>
where
    S: Service<Request<Body>, Response = Response, Error = Infallible>,
    B: http_body::Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<axum::BoxError>,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Observed<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Observed<S::Future> {
        let started = Instant::now();
        let grpc = is_grpc(&request);
        let mut route = route(request.uri().path());
        // A number's comparison: every request passes here.
        if route == OTHER_ROUTE
            && let Some(console) = &self.console
            && console.holds(request.uri().path())
        {
            route = CONSOLE_ROUTE;
        }
        let answer = if lacks_host(&request) {
            let refused = Error::from(FieldError::new(
                "Host",
                "an HTTP/1.1 request must carry exactly one Host header (RFC 9112, section 3.2)",
            ));
            FrontAnswer::Refused {
                response: Some(refused.into_response()),
            }
        } else if grpc {
            // gRPC's own message bound applies; the deadline is ours, and
            // tonic answers with the status it finds in the error.
            let bodies = self.state.bodies;
            let body = |body| {
                let timed = Deadline::new(body, started, bodies.timeout);
                Body::new(http_body_util::BodyExt::map_err(timed, grpc_deadline))
            };
            FrontAnswer::Routed {
                inner: self.inner.call(request.map(body)),
            }
        } else if let Some(lane) = lane(route, request.method()) {
            // Past the router, whose matching, path parameters and
            // extractors cost more than the handler's own work. Neither
            // handler reads the body.
            let (parts, _) = request.into_parts();
            let state = self.state.clone();
            FrontAnswer::Fast {
                inner: match lane {
                    FastLane::Status => Box::pin(api::status(state, parts)),
                    FastLane::ForwardAuth => Box::pin(forward_auth::forward_auth(state, parts)),
                },
            }
        } else {
            // Read by `body::read`, after the credential: 413 past the
            // size, 408 past the deadline.
            let bodies = self.state.bodies;
            let body = |body| {
                let timed = Deadline::new(body, started, bodies.timeout);
                Body::new(Limited::new(timed, bodies.max_bytes))
            };
            FrontAnswer::Routed {
                inner: self.inner.call(request.map(body)),
            }
        };
        Observed {
            answer,
            latency: self.latency.clone(),
            grpc,
            route,
            started,
        }
    }
}

/// A gRPC request's body error as tonic should answer it: a body past its
/// deadline is DEADLINE_EXCEEDED, not UNKNOWN.
fn grpc_deadline(error: axum::BoxError) -> axum::BoxError {
    match error.downcast::<BodyTimeout>() {
        Ok(timeout) => Box::new(tonic::Status::deadline_exceeded(timeout.to_string())),
        Err(other) => other,
    }
}

pin_project_lite::pin_project! {
    /// The router's answer, the fast lane's, or the 400 already decided.
    #[project = FrontProjection]
    pub enum FrontAnswer<F> {
        Refused { response: Option<Response> },
        Routed { #[pin] inner: F },
        Fast { inner: Pin<Box<dyn Future<Output = Response> + Send>> },
    }
}

pin_project_lite::pin_project! {
    /// The answer; records its latency when it is ready.
    pub struct Observed<F> {
        #[pin]
        answer: FrontAnswer<F>,
        latency: Arc<Latency>,
        grpc: bool,
        route: usize,
        started: Instant,
    }
}

impl<F: Future<Output = Result<Response, Infallible>>> Future for Observed<F> {
    type Output = Result<Response, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let output = match this.answer.project() {
            FrontProjection::Refused { response } => {
                Ok(response.take().expect("a refused request is answered once"))
            }
            FrontProjection::Routed { inner } => std::task::ready!(inner.poll(cx)),
            FrontProjection::Fast { inner } => Ok(std::task::ready!(inner.as_mut().poll(cx))),
        };
        this.latency.observe(
            *this.grpc,
            *this.route,
            this.started.elapsed().as_secs_f64(),
        );
        Poll::Ready(output)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_console_has_a_route_label_of_its_own() {
        assert_eq!(label(CONSOLE_ROUTE), CONSOLE);
        assert_eq!(label(OTHER_ROUTE), OTHER);
    }

    #[test]
    fn each_request_is_timed_under_its_own_protocol_and_route() {
        let latency = Latency {
            metrics: Arc::new(Metrics::with(|_| {})),
            handles: std::array::from_fn(|_| OnceLock::new()),
        };
        let validate = "/stackstate.servicetoken.v1.TokenService/Validate";
        for (grpc, path) in [
            (false, "/api/server/status"),
            (false, "/api/server/status"),
            (false, "/api/security/tokens/7"),
            (true, validate),
            // Not gRPC on a gRPC path: a series of its own.
            (false, validate),
            (false, "/nowhere"),
        ] {
            latency.observe(grpc, route(path), 0.001);
        }
        let text = latency.metrics.render(Some(0));
        for (series, count) in [
            (r#"protocol="http",route="/api/server/status""#, 2),
            (r#"protocol="http",route="/api/security/tokens/{id}""#, 1),
            (
                r#"protocol="grpc",route="/stackstate.servicetoken.v1.TokenService/Validate""#,
                1,
            ),
            (
                r#"protocol="http",route="/stackstate.servicetoken.v1.TokenService/Validate""#,
                1,
            ),
            (r#"protocol="http",route="other""#, 1),
        ] {
            let line = format!("sts_request_duration_seconds_count{{{series}}} {count}");
            assert!(text.contains(&line), "{line} not in\n{text}");
        }
        // Only what was asked for is exposed.
        assert_eq!(
            text.matches("sts_request_duration_seconds_count").count(),
            5
        );
    }

    #[test]
    fn status_gets_and_every_forward_auth_take_the_lane() {
        let taken = |method: Method, path: &str| match lane(route(path), &method) {
            Some(FastLane::Status) => "status",
            Some(FastLane::ForwardAuth) => "auth",
            None => "router",
        };
        assert_eq!(taken(Method::GET, "/api/server/status"), "status");
        assert_eq!(taken(Method::HEAD, "/api/server/status"), "router");
        assert_eq!(taken(Method::POST, "/api/server/status"), "router");
        assert_eq!(taken(Method::GET, "/api/server/status/"), "router");
        assert_eq!(taken(Method::GET, "/api/server/info"), "router");
        for method in [Method::GET, Method::POST, Method::DELETE, Method::HEAD] {
            for path in ["/api/auth", "/api/auth/", "/api/auth/builds/42"] {
                assert_eq!(taken(method.clone(), path), "auth", "{method} {path}");
            }
        }
        assert_eq!(taken(Method::GET, "/api/authx"), "router");
        assert_eq!(taken(Method::GET, "/api/security/tokens"), "router");
    }

    /// A path the route `template` serves: its parameters filled in.
    fn served_by(template: &str) -> String {
        template
            .replace("{id}", "7")
            .replace("{*path}", "builds/42")
    }

    #[test]
    fn every_route_of_the_router_has_a_label_of_its_own() {
        let table = super::super::route_table();
        assert!(table.len() > 10);
        for (template, _) in table {
            assert_eq!(label(route(&served_by(template))), template);
        }
        for method in routes::GRPC_METHODS {
            assert_eq!(label(route(method)), *method);
        }
    }

    #[test]
    fn every_grpc_method_in_the_descriptors_has_a_label_of_its_own() {
        use prost::Message as _;
        let mut methods = Vec::new();
        for set in [
            crate::proto::FILE_DESCRIPTOR_SET,
            crate::proto::ENVOY_EXT_AUTHZ_DESCRIPTOR_SET,
        ] {
            let set = prost_types::FileDescriptorSet::decode(set).unwrap();
            for file in set.file {
                for service in &file.service {
                    for method in &service.method {
                        methods.push(format!(
                            "/{}.{}/{}",
                            file.package(),
                            service.name(),
                            method.name()
                        ));
                    }
                }
            }
        }
        assert!(methods.len() >= 9, "{methods:?}");
        for method in &methods {
            assert_eq!(label(route(method)), method, "{method} has no label");
        }
    }

    #[test]
    fn paths_get_the_label_of_the_route_that_serves_them() {
        for (path, label) in [
            ("/api/server/status", "/api/server/status"),
            ("/api/auth", "/api/auth"),
            ("/api/auth/", "/api/auth/"),
            ("/api/auth/builds/42", "/api/auth/{*path}"),
            ("/api/security/tokens", "/api/security/tokens"),
            ("/api/security/tokens/revoke", "/api/security/tokens/revoke"),
            ("/api/security/tokens/123", TOKEN),
            ("/api/security/tokens/123/rotate", ROTATE),
            ("/api/security/tokens/123/usage", USAGE),
            ("/api/security/tokens/", "other"),
            ("/api/security/tokens//rotate", "other"),
            ("/api/security/tokens/1/2", "other"),
            ("/api/security/tokens/1/rotate/x", "other"),
            (
                "/grpc.health.v1.Health/Check",
                "/grpc.health.v1.Health/{*rest}",
            ),
            ("/grpc.health.v1.Health/", "other"),
            (
                "/stackstate.servicetoken.v1.TokenService/Validate",
                "/stackstate.servicetoken.v1.TokenService/Validate",
            ),
            ("/stackstate.servicetoken.v1.TokenService/Nope", "other"),
            ("/", "other"),
            ("/metrics/", "other"),
        ] {
            assert_eq!(super::label(route(path)), label, "{path}");
        }
    }
}
