//! The HTTP side, served on the same port as gRPC: the documented
//! `/api/server/status`, proxy forward-auth, StackState-compatible REST for
//! tokens, probes and metrics. A thin translation layer: every credential
//! check and every operation goes through [`TokenService`], as gRPC's do.

mod api;
mod caller;
mod host;
mod latency;
mod probes;
mod tokens;

use std::{sync::Arc, time::Instant};

use axum::{
    Json, Router,
    extract::{DefaultBodyLimit, Request},
    http::{HeaderValue, Method, StatusCode, header},
    response::{IntoResponse, Response},
    routing::{any, get, post},
};
use serde::Serialize;

use crate::{
    error::{Answer, Error, ErrorKind},
    service::TokenService,
};

pub use caller::Caller;
pub use latency::ObserveLatencyLayer;
pub use probes::Readiness;

/// What the HTTP handlers share.
#[derive(Clone)]
pub struct HttpState {
    service: Arc<TokenService>,
    readiness: Arc<Readiness>,
    started: Instant,
    max_body: usize,
}

impl HttpState {
    /// `readiness` is what `/readyz` reports; the server keeps it current.
    /// Request bodies over `max_body` bytes are refused (413).
    pub fn new(
        service: Arc<TokenService>,
        readiness: Arc<Readiness>,
        max_body: usize,
    ) -> HttpState {
        HttpState {
            service,
            readiness,
            started: Instant::now(),
            max_body,
        }
    }

    fn readiness(&self) -> &Readiness {
        &self.readiness
    }
}

/// Every HTTP route. gRPC services are added beside these by `server::run`.
pub fn router(state: HttpState) -> Router {
    let max_body = state.max_body;
    Router::new()
        .route("/api/server/status", get(api::status))
        .route("/api/server/info", get(api::info))
        .route("/api/auth", any(api::forward_auth))
        .route(
            "/api/security/tokens",
            get(tokens::list).post(tokens::create),
        )
        .route(
            "/api/security/tokens/{id}",
            get(tokens::get).patch(tokens::patch).delete(tokens::delete),
        )
        .route("/api/security/tokens/{id}/rotate", post(tokens::rotate))
        .route("/healthz", get(probes::healthz))
        .route("/readyz", get(probes::readyz))
        .route("/metrics", get(probes::metrics))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(max_body))
        .layer(host::RequireHostLayer)
        .with_state(state)
}

/// The JSON body of every HTTP error.
#[derive(Serialize)]
struct ErrorBody<'a> {
    error: &'a str,
    message: String,
}

fn error_response(status: StatusCode, error: &str, message: String) -> Response {
    (status, Json(ErrorBody { error, message })).into_response()
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let Answer { kind, message } = self.answer();
        let status = match kind {
            ErrorKind::InvalidArgument => StatusCode::BAD_REQUEST,
            ErrorKind::NotFound => StatusCode::NOT_FOUND,
            ErrorKind::Unauthenticated => StatusCode::UNAUTHORIZED,
            ErrorKind::PermissionDenied => StatusCode::FORBIDDEN,
            ErrorKind::FailedPrecondition => StatusCode::CONFLICT,
            ErrorKind::ResourceExhausted => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorKind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            ErrorKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        };
        let mut response = error_response(status, kind.as_str(), message);
        if kind == ErrorKind::Unauthenticated {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("ApiKey"));
        }
        response
    }
}

fn is_grpc(headers: &header::HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

/// Unknown paths: gRPC clients get gRPC's UNIMPLEMENTED, others a JSON 404.
async fn not_found(request: Request) -> Response {
    if is_grpc(request.headers()) {
        return tonic::Status::unimplemented("no such service or method").into_http();
    }
    error_response(
        StatusCode::NOT_FOUND,
        "NOT_FOUND",
        format!("no route for {} {}", request.method(), request.uri().path()),
    )
}

async fn method_not_allowed(method: Method) -> Response {
    error_response(
        StatusCode::METHOD_NOT_ALLOWED,
        "METHOD_NOT_ALLOWED",
        format!("{method} is not allowed on this path"),
    )
}
