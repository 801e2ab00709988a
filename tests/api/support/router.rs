//! `spawn_router()`: the HTTP router driven without a socket, and
//! `TestResponse`, an answer with its body read.

use std::{sync::Arc, time::SystemTime};

use sts::{
    config::{DEFAULT_BODY_TIMEOUT, IntegrationConfig, MAX_REQUEST_BYTES, ServiceConfig},
    http::{BodyBounds, HttpState},
    model::NewToken,
    service::{self, TokenService},
    store::{SledStore, Store},
};
use tempfile::TempDir;

use super::{
    app::{ManualClock, build_service},
    metrics::metric_in,
};

/// The HTTP router alone, for tests that send requests without a socket.
pub struct TestRouter {
    pub router: sts::http::Front<axum::Router>,
    /// The router alone, without `Front` (nor its fast lane).
    pub routes: axum::Router,
    pub service: Arc<TokenService>,
    pub store: Arc<dyn Store>,
    pub admin_token: String,
    pub clock: Arc<ManualClock>,
    pub ready: Arc<sts::http::Readiness>,
    _data_dir: TempDir,
}

/// A response, its body read.
pub struct TestResponse {
    pub status: http::StatusCode,
    pub headers: http::HeaderMap,
    pub body: Vec<u8>,
}

impl TestResponse {
    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("{e}: {:?}", String::from_utf8_lossy(&self.body)))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }

    /// 401 with the challenge header and a JSON message.
    pub fn assert_unauthorized(&self) {
        assert_eq!(
            self.status,
            http::StatusCode::UNAUTHORIZED,
            "{:?}",
            self.json()
        );
        assert_eq!(self.header("www-authenticate"), Some("ApiKey"));
        assert!(self.json()["message"].is_string());
    }
}

pub async fn spawn_router() -> TestRouter {
    let data_dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SledStore::open(data_dir.path()).unwrap());
    spawn_router_on(data_dir, store).await
}

/// The router over a service with `config`.
pub async fn spawn_router_with(config: ServiceConfig) -> TestRouter {
    let data_dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SledStore::open(data_dir.path()).unwrap());
    router_over(data_dir, store, config).await
}

pub async fn spawn_router_on(data_dir: TempDir, store: Arc<dyn Store>) -> TestRouter {
    router_over(data_dir, store, ServiceConfig::default()).await
}

/// The router with `integrations` instead of the defaults.
pub async fn spawn_router_integrations(integrations: IntegrationConfig) -> TestRouter {
    let data_dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SledStore::open(data_dir.path()).unwrap());
    router_with(data_dir, store, ServiceConfig::default(), integrations).await
}

async fn router_over(
    data_dir: TempDir,
    store: Arc<dyn Store>,
    config: ServiceConfig,
) -> TestRouter {
    router_with(data_dir, store, config, IntegrationConfig::default()).await
}

async fn router_with(
    data_dir: TempDir,
    store: Arc<dyn Store>,
    config: ServiceConfig,
    integrations: IntegrationConfig,
) -> TestRouter {
    let (service, clock, admin_token) = build_service(store.clone(), config).await;
    let ready = Arc::new(sts::http::Readiness::default());
    let state = HttpState::new(
        service.clone(),
        ready.clone(),
        BodyBounds {
            max_bytes: MAX_REQUEST_BYTES,
            timeout: DEFAULT_BODY_TIMEOUT,
        },
        integrations,
    );
    TestRouter {
        router: sts::http::Front::new(sts::http::router(state.clone()), state.clone()),
        routes: sts::http::router(state),
        service,
        store,
        admin_token,
        clock,
        ready,
        _data_dir: data_dir,
    }
}

async fn send_to<S>(service: S, mut request: http::Request<axum::body::Body>) -> TestResponse
where
    S: tower::Service<
            http::Request<axum::body::Body>,
            Response = axum::response::Response,
            Error = std::convert::Infallible,
        >,
{
    use http_body_util::BodyExt;
    use tower::ServiceExt;
    if !request.headers().contains_key(http::header::HOST) {
        request.headers_mut().insert(
            http::header::HOST,
            http::HeaderValue::from_static("sts.test"),
        );
    }
    let response = service.oneshot(request).await.unwrap();
    let (parts, body) = response.into_parts();
    TestResponse {
        status: parts.status,
        headers: parts.headers,
        body: body.collect().await.unwrap().to_bytes().to_vec(),
    }
}

impl TestRouter {
    /// The value of metric `name` (a full series name, labels included).
    pub async fn metric(&self, name: &str) -> f64 {
        let text = self.call("GET", "/metrics", &[], "").await.body;
        metric_in(&String::from_utf8(text).unwrap(), name)
    }

    /// Sends `request` as a client would: an HTTP/1.1 request without a
    /// `Host` gets one (hyper's client adds it too).
    pub async fn send(&self, request: http::Request<axum::body::Body>) -> TestResponse {
        send_to(self.router.clone(), request).await
    }

    /// As [`TestRouter::send`], to the router alone (no `Front`).
    pub async fn send_to_routes(&self, request: http::Request<axum::body::Body>) -> TestResponse {
        send_to(self.routes.clone(), request).await
    }

    /// `method path` with the given headers and an optional body.
    pub async fn call(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &[u8])],
        body: &str,
    ) -> TestResponse {
        let mut request = http::Request::builder().method(method).uri(path);
        for (name, value) in headers {
            request = request.header(*name, http::HeaderValue::from_bytes(value).unwrap());
        }
        self.send(
            request
                .body(axum::body::Body::from(body.to_owned()))
                .unwrap(),
        )
        .await
    }

    /// `method path` as the admin.
    pub async fn admin(&self, method: &str, path: &str, body: &str) -> TestResponse {
        let key = self.admin_token.clone();
        self.call(method, path, &[("x-api-key", key.as_bytes())], body)
            .await
    }

    /// Creates a token through the service directly; returns (secret, id).
    pub async fn create(&self, name: &str, roles: &[&str]) -> (String, u64) {
        self.create_expiring(name, roles, None).await
    }

    pub async fn create_expiring(
        &self,
        name: &str,
        roles: &[&str],
        expiration: Option<SystemTime>,
    ) -> (String, u64) {
        let new = NewToken::parse(name, roles, expiration).unwrap();
        let (token, created) = service::bootstrap(&*self.store, &*self.clock, new)
            .await
            .unwrap();
        (token.expose_secret().to_owned(), created.id.get())
    }
}
