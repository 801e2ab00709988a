//! The HTTP side, served on the same port as gRPC: the documented
//! `/api/server/status`, proxy forward-auth, StackState-compatible REST for
//! tokens, probes and metrics. A thin translation layer: every credential
//! check and every operation goes through [`TokenService`], as gRPC's do.

mod api;
mod body;
mod caller;
mod context;
mod decode;
mod forward_auth;
mod front;
mod kubernetes;
mod oauth2;
mod patch;
mod probes;
pub(crate) mod routes;
mod tokens;

/// Every request body parser of the HTTP side, for the fuzz target: never
/// panics, and never repeats a secret it was given in an error.
#[doc(hidden)]
pub fn parse_any_body(bytes: &[u8]) -> Vec<String> {
    let mut errors = tokens::parse_bodies(bytes);
    errors.extend(kubernetes::parse(bytes).err().map(|e| e.to_string()));
    errors.extend(oauth2::form_token(bytes).err().map(|e| e.to_string()));
    errors
}

use std::{sync::Arc, time::Instant};

use axum::{
    Json, Router,
    extract::{Request, State},
    http::{HeaderValue, Method, StatusCode, header},
    response::{IntoResponse, Response},
    routing::{MethodRouter, any, get, post},
};
use serde::Serialize;

use crate::{config::IntegrationConfig, error::Error, service::TokenService};

use crate::authz::ErrorBody;
use crate::authz::{CHALLENGE, HttpError};
pub use body::{BodyTimeout, Deadline};
pub use caller::Caller;
pub use front::Front;
pub use probes::Readiness;

/// What the HTTP handlers share: one `Arc`, since axum hands every
/// request its own clone of the state.
#[derive(Clone)]
pub struct HttpState(Arc<Shared>);

pub struct Shared {
    service: Arc<TokenService>,
    readiness: Arc<Readiness>,
    started: Instant,
    bodies: BodyBounds,
    integrations: IntegrationConfig,
}

/// How large a request body may be and how long it may take to arrive;
/// `Front` holds every body to them.
#[derive(Debug, Clone, Copy)]
pub struct BodyBounds {
    /// Past it, 413.
    pub max_bytes: usize,
    /// Past it, counted from the request's headers, 408.
    pub timeout: std::time::Duration,
}

impl std::ops::Deref for HttpState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

impl HttpState {
    /// `readiness` is what `/readyz` reports; the server keeps it current.
    /// Request bodies are held to `bodies`.
    pub fn new(
        service: Arc<TokenService>,
        readiness: Arc<Readiness>,
        bodies: BodyBounds,
        integrations: IntegrationConfig,
    ) -> HttpState {
        HttpState(Arc::new(Shared {
            service,
            readiness,
            started: Instant::now(),
            bodies,
            integrations,
        }))
    }

    fn readiness(&self) -> &Readiness {
        &self.readiness
    }
}

/// Every HTTP route and what serves it: the router's table, which a test
/// walks to check that each path has a metrics label of its own.
pub(super) fn route_table() -> Vec<(&'static str, MethodRouter<HttpState>)> {
    vec![
        (routes::STATUS, get(status)),
        (routes::INFO, get(api::info)),
        (routes::AUTH, any(forward_auth)),
        (routes::AUTH_SLASH, any(forward_auth)),
        (routes::AUTH_BELOW, any(forward_auth)),
        (routes::TOKENS, get(tokens::list).post(tokens::create)),
        (
            routes::TOKEN,
            get(tokens::get).patch(tokens::patch).delete(tokens::delete),
        ),
        (routes::ROTATE, post(tokens::rotate)),
        (routes::ROTATE_SELF, post(tokens::rotate_self)),
        (routes::USAGE, get(tokens::usage)),
        (routes::REVOKE, post(tokens::revoke_leaked)),
        (routes::TOKEN_REVIEW, post(kubernetes::token_review)),
        (routes::INTROSPECT, post(oauth2::introspect)),
        (routes::HEALTHZ, get(probes::healthz)),
        (routes::READYZ, get(probes::readyz)),
        (routes::METRICS, get(probes::metrics)),
    ]
}

/// Every HTTP route. gRPC services are added beside these by `server::run`,
/// and [`Front`] goes around them all.
pub fn router(state: HttpState) -> Router {
    route_table()
        .into_iter()
        .fold(Router::new(), |router, (path, method)| {
            router.route(path, method)
        })
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
}

/// The probe port's routes (`--probe-listen`): liveness and readiness,
/// the same handlers as on the main port, and nothing else.
pub fn probe_router(state: HttpState) -> Router {
    Router::new()
        .route(routes::HEALTHZ, get(probes::healthz))
        .route(routes::READYZ, get(probes::readyz))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
}

// The routes `Front` also answers itself (see its fast lane): here for the
// methods the lane leaves to the router (HEAD, say), and for the router
// driven on its own.
async fn status(State(state): State<HttpState>, request: Request) -> Response {
    api::status(state, request.into_parts().0).await
}

async fn forward_auth(State(state): State<HttpState>, request: Request) -> Response {
    forward_auth::forward_auth(state, request.into_parts().0).await
}

/// Room for a typical JSON answer (a token is about 250 bytes), so
/// writing one does not grow the buffer as it goes.
const JSON_CAPACITY: usize = 512;

/// `value` as a JSON answer: what axum's `Json` does, written into one
/// buffer sized up front (`Json` grows a small one, write by write).
fn json<T: Serialize>(value: &T) -> Response {
    let mut body = Vec::with_capacity(JSON_CAPACITY);
    // Only a map with non-string keys fails, and no answer holds one.
    serde_json::to_writer(&mut body, value).expect("an answer always serializes");
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body,
    )
        .into_response()
}

fn error_response(status: StatusCode, error: &str, message: String) -> Response {
    (status, Json(ErrorBody { error, message })).into_response()
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let HttpError {
            status,
            challenge,
            body,
            headers,
            message: _,
        } = HttpError::of(&self);
        let mut response = (
            status,
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            body,
        )
            .into_response();
        if challenge {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static(CHALLENGE),
            );
        }
        for (name, value) in headers {
            if let Ok(value) = HeaderValue::try_from(value) {
                response
                    .headers_mut()
                    .insert(header::HeaderName::from_static(name), value);
            }
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
