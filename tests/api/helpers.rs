//! `spawn_app()` and friends: a running server, an admin token, a client, and
//! a clock the test can move.

use std::{
    net::SocketAddr,
    path::Path,
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use sts::{
    clock::Clock,
    config::{
        DEFAULT_BODY_TIMEOUT, IntegrationConfig, MAX_REQUEST_BYTES, ServerConfig, ServiceConfig,
        TlsIdentity,
    },
    error::ServeError,
    http::{BodyBounds, HttpState},
    model::NewToken,
    proto::{
        CreateRequest, CreateResponse, ServiceToken, ValidateRequest, ValidateResponse,
        token_service_client::TokenServiceClient,
    },
    server,
    service::{self, TokenService},
    store::{SledStore, Store, StoreError},
};
use tempfile::TempDir;
use tokio::{net::TcpListener, sync::oneshot, task::JoinHandle};
use tonic::{
    Code, Request, Status,
    metadata::MetadataValue,
    transport::{Certificate, Channel, ClientTlsConfig},
};

pub const ADMIN_ROLE: &str = "stackstate-admin";

/// A wall clock the test moves by hand; starts at the real now.
pub struct ManualClock(Mutex<SystemTime>);

impl ManualClock {
    pub fn advance(&self, by: Duration) {
        *self.0.lock().unwrap() += by;
    }

    /// Now, in epoch milliseconds (REST's times).
    pub fn now_millis(&self) -> i64 {
        let now = *self.0.lock().unwrap();
        now.duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64
    }
}

impl Clock for ManualClock {
    fn now(&self) -> SystemTime {
        *self.0.lock().unwrap()
    }
}

pub struct TestApp {
    pub addr: SocketAddr,
    pub client: TokenServiceClient<Channel>,
    /// A token holding the admin role, made by bootstrap before serving.
    pub admin_token: String,
    pub clock: Arc<ManualClock>,
    pub data_dir: TempDir,
    /// The service the server runs, for what no request can do (the
    /// server's own periodic work, run now).
    pub service: Arc<TokenService>,
    shutdown: oneshot::Sender<()>,
    server: JoinHandle<Result<(), ServeError>>,
}

/// The server's defaults, except that shutdown does not wait for load
/// balancers that tests do not have.
pub fn server_config() -> ServerConfig {
    ServerConfig {
        shutdown_delay: Duration::ZERO,
        ..ServerConfig::default()
    }
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(ServiceConfig::default(), server_config()).await
}

pub async fn spawn_app_with(service: ServiceConfig, server: ServerConfig) -> TestApp {
    let data_dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SledStore::open(data_dir.path()).unwrap());
    start_app(data_dir, store, service, server).await
}

/// A service over `store` with a manual clock and a bootstrapped admin token.
pub async fn build_service(
    store: Arc<dyn Store>,
    config: ServiceConfig,
) -> (Arc<TokenService>, Arc<ManualClock>, String) {
    let clock = Arc::new(ManualClock(Mutex::new(SystemTime::now())));
    let new = NewToken::parse("test-admin", &[config.admin_role.as_str()], None).unwrap();
    let (admin_token, _) = service::bootstrap(&*store, &*clock, new).await.unwrap();
    let service = Arc::new(TokenService::new(store, clock.clone(), config));
    (service, clock, admin_token.expose_secret().to_owned())
}

/// Starts a server over `store` (which lives in `data_dir`), after
/// bootstrapping an admin token into it.
pub async fn spawn_app_on(data_dir: TempDir, store: Arc<dyn Store>) -> TestApp {
    start_app(data_dir, store, ServiceConfig::default(), server_config()).await
}

/// As [`spawn_app_on`], with the service's rules in `service`.
pub async fn spawn_app_on_with(
    data_dir: TempDir,
    store: Arc<dyn Store>,
    service: ServiceConfig,
) -> TestApp {
    start_app(data_dir, store, service, server_config()).await
}

async fn start_app(
    data_dir: TempDir,
    store: Arc<dyn Store>,
    service: ServiceConfig,
    server: ServerConfig,
) -> TestApp {
    let tls = server.tls.is_some();
    let (service, clock, admin_token) = build_service(store, service).await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (shutdown, shutdown_rx) = oneshot::channel::<()>();
    let server = tokio::spawn(server::run(listener, service.clone(), server, async {
        let _ = shutdown_rx.await;
    }));
    let channel = if tls {
        tls_channel(addr, &TestCertificate::shared().ca_pem).await
    } else {
        channel(addr).await
    };
    TestApp {
        addr,
        client: TokenServiceClient::new(channel),
        admin_token,
        clock,
        data_dir,
        service,
        shutdown,
        server,
    }
}

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
        String::from_utf8(text)
            .unwrap()
            .lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or(0.0)
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

pub async fn channel(addr: SocketAddr) -> Channel {
    Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

/// A gRPC channel over TLS to `https://localhost:PORT`, trusting `ca_pem`.
pub async fn tls_channel(addr: SocketAddr, ca_pem: &str) -> Channel {
    Channel::from_shared(format!("https://localhost:{}", addr.port()))
        .unwrap()
        .tls_config(ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca_pem)))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

/// A test CA and a certificate it signed for `localhost` and `127.0.0.1`.
pub struct TestCertificate {
    pub ca_pem: String,
    pub identity: TlsIdentity,
}

impl TestCertificate {
    pub fn generate() -> TestCertificate {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        let leaf_key = KeyPair::generate().unwrap();
        let leaf = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
            .unwrap()
            .signed_by(&leaf_key, &Issuer::new(ca_params, ca_key))
            .unwrap();
        TestCertificate {
            ca_pem: ca_cert.pem(),
            identity: TlsIdentity {
                cert_pem: leaf.pem().into_bytes(),
                key_pem: leaf_key.serialize_pem().into_bytes(),
            },
        }
    }

    /// One certificate for the whole suite: key generation is not free.
    pub fn shared() -> &'static TestCertificate {
        static SHARED: std::sync::OnceLock<TestCertificate> = std::sync::OnceLock::new();
        SHARED.get_or_init(TestCertificate::generate)
    }
}

/// A server serving TLS with [`TestCertificate::shared`]; its client trusts it.
pub async fn spawn_tls_app() -> TestApp {
    let server = ServerConfig {
        tls: Some(TestCertificate::shared().identity.clone()),
        ..server_config()
    };
    spawn_app_with(ServiceConfig::default(), server).await
}

/// `Validate` of `token` through `client`.
pub async fn validate_on(
    client: &TokenServiceClient<Channel>,
    token: &str,
) -> Result<ValidateResponse, Status> {
    let request = ValidateRequest {
        token: token.to_owned(),
    };
    Ok(client.clone().validate(request).await?.into_inner())
}

/// The head of an HTTP/1.1 answer read from `stream`, up to and with the
/// blank line, as text; panics if the server closes mid-head.
pub async fn read_http1_head(stream: &mut (impl tokio::io::AsyncRead + Unpin)) -> String {
    use tokio::io::AsyncReadExt;
    let mut received = Vec::new();
    let mut byte = [0u8; 1];
    while !received.ends_with(b"\r\n\r\n") {
        let n = stream.read(&mut byte).await.unwrap();
        assert_eq!(
            n,
            1,
            "closed mid-answer: {:?}",
            String::from_utf8_lossy(&received)
        );
        received.push(byte[0]);
    }
    String::from_utf8(received).unwrap()
}

/// Waits (up to 20 s) until the server closes `stream`: a read sees the end
/// or a reset. `false` if it is still open by then.
pub async fn closed_by_server(stream: &mut tokio::net::TcpStream) -> bool {
    use tokio::io::AsyncReadExt;
    let mut buffer = [0u8; 256];
    tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => return,
                Ok(_) => continue,
            }
        }
    })
    .await
    .is_ok()
}

/// A request carrying `token` as `x-api-key`.
pub fn with_key<T>(token: &str, message: T) -> Request<T> {
    with_header("x-api-key", token, message)
}

pub fn with_header<T>(name: &'static str, value: &str, message: T) -> Request<T> {
    let mut request = Request::new(message);
    request
        .metadata_mut()
        .insert(name, MetadataValue::try_from(value).unwrap());
    request
}

pub fn create_request(name: &str, roles: &[&str]) -> CreateRequest {
    CreateRequest {
        name: name.into(),
        roles: roles.iter().map(|r| r.to_string()).collect(),
        expiration: None,
        ..Default::default()
    }
}

pub fn assert_code<T: std::fmt::Debug>(result: Result<T, Status>, code: Code) -> Status {
    let status = result.expect_err("expected an error status");
    assert_eq!(status.code(), code, "{status:?}");
    status
}

impl TestApp {
    pub fn admin<T>(&self, message: T) -> Request<T> {
        with_key(&self.admin_token, message)
    }

    /// Creates a token as admin; returns (secret, description).
    pub async fn create(&self, name: &str, roles: &[&str]) -> (String, ServiceToken) {
        self.create_with(create_request(name, roles)).await
    }

    pub async fn create_with(&self, request: CreateRequest) -> (String, ServiceToken) {
        let CreateResponse {
            token,
            service_token,
        } = self
            .client
            .clone()
            .create(self.admin(request))
            .await
            .unwrap()
            .into_inner();
        (token, service_token.unwrap())
    }

    /// The whole `/metrics` text.
    pub async fn metrics_text(&self) -> String {
        reqwest::get(format!("http://{}/metrics", self.addr))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// The value of metric `name` (a full series name, labels included)
    /// on the server's `/metrics`; 0 when the series is not there.
    pub async fn metric(&self, name: &str) -> f64 {
        let text = self.metrics_text().await;
        text.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or(0.0)
    }

    /// A token expiring `seconds` from the app's (manual) clock's now.
    pub async fn create_expiring_in(
        &self,
        name: &str,
        roles: &[&str],
        seconds: i64,
    ) -> (String, ServiceToken) {
        self.create_with(CreateRequest {
            expiration: Some(prost_types::Timestamp {
                seconds: self.clock.now_millis() / 1000 + seconds,
                nanos: 0,
            }),
            ..create_request(name, roles)
        })
        .await
    }

    pub async fn validate(&self, token: &str) -> ValidateResponse {
        validate_on(&self.client, token).await.unwrap()
    }

    /// Every token, walking all pages.
    pub async fn list_all(&self) -> Vec<ServiceToken> {
        list_all(&self.client, &self.admin_token).await
    }

    /// Graceful shutdown; hands back the data dir for a restart.
    pub async fn stop(self) -> TempDir {
        self.shutdown.send(()).unwrap();
        self.server.await.unwrap().unwrap();
        self.data_dir
    }

    /// Starts the shutdown without waiting for it.
    pub fn begin_shutdown(self) -> (JoinHandle<Result<(), ServeError>>, TempDir) {
        self.shutdown.send(()).unwrap();
        (self.server, self.data_dir)
    }
}

/// Every token `client`'s server holds, walking all pages as `admin`.
pub async fn list_all(client: &TokenServiceClient<Channel>, admin: &str) -> Vec<ServiceToken> {
    let mut all = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = client
            .clone()
            .list(with_key(
                admin,
                sts::proto::ListRequest {
                    page_size: 0,
                    page_token,
                    ..Default::default()
                },
            ))
            .await
            .unwrap()
            .into_inner();
        all.extend(page.service_tokens);
        if page.next_page_token.is_empty() {
            return all;
        }
        page_token = page.next_page_token;
    }
}

/// Restarts on a data dir a stopped app handed back.
pub async fn restart(data_dir: TempDir) -> TestApp {
    let store = Arc::new(reopen(data_dir.path()).await);
    spawn_app_on(data_dir, store).await
}

/// How long [`eventually`] waits before it gives up.
const EVENTUALLY_WITHIN: Duration = Duration::from_secs(20);
/// How often it asks.
const EVENTUALLY_EVERY: Duration = Duration::from_millis(10);

/// Asks `attempt` every 10 ms until it gives a value, for up to 20 s; fails
/// the test naming `what` if it never does. The one bounded poll, for what
/// a test cannot be told about: another process's state (a replica's
/// readiness, its descriptors), a lock sled's own threads release.
pub async fn eventually_some<T, F, Fut>(what: &str, mut attempt: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + EVENTUALLY_WITHIN;
    loop {
        if let Some(value) = attempt().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what} did not happen within {EVENTUALLY_WITHIN:?}"
        );
        tokio::time::sleep(EVENTUALLY_EVERY).await;
    }
}

/// [`eventually_some`] for a condition.
pub async fn eventually<F, Fut>(what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    eventually_some(what, || {
        let holds = condition();
        async move { holds.await.then_some(()) }
    })
    .await
}

/// Opens a sled store this process has just closed. sled's own I/O threads
/// may hold the directory's lock for a moment after the last handle is
/// dropped (a new process never sees this: the lock goes with the old one).
pub async fn reopen(dir: &Path) -> SledStore {
    eventually_some("the data dir's lock released", || async {
        match SledStore::open(dir) {
            Err(StoreError::Locked { .. }) => None,
            opened => Some(opened.unwrap()),
        }
    })
    .await
}

/// Every file under `dir`, recursively, as bytes.
pub fn read_all_files(dir: &Path) -> Vec<(std::path::PathBuf, Vec<u8>)> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(read_all_files(&path));
        } else {
            files.push((path.clone(), std::fs::read(&path).unwrap()));
        }
    }
    files
}

pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.path().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// The lockout rule as the server applies it (default admin role, now).
pub fn keep_admin() -> sts::store::KeepAdmin {
    sts::store::KeepAdmin {
        role: sts::model::Role::parse(sts::config::DEFAULT_ADMIN_ROLE).unwrap(),
        now: SystemTime::now(),
        margin: sts::config::DEFAULT_ADMIN_KEEP_MARGIN,
        waived: false,
    }
}

/// Deletes through the store, under the lockout rule; whether it did.
pub async fn deleted(store: &dyn Store, id: sts::model::TokenId) -> bool {
    match store.delete(id, &keep_admin(), None, None).await.unwrap() {
        sts::store::Outcome::Done(()) => true,
        sts::store::Outcome::NotFound => false,
        sts::store::Outcome::Lockout(what) => panic!("lockout: {what}"),
        sts::store::Outcome::Invalid(invalid) => panic!("invalid: {invalid:?}"),
        sts::store::Outcome::Stale(etag) => panic!("stale: {etag}"),
    }
}

/// `token` as a check answers it: management answers' etag left out.
pub fn checked(token: ServiceToken) -> ServiceToken {
    ServiceToken {
        etag: String::new(),
        ..token
    }
}

/// `tokens` with their last-used times cleared: what stays the same while
/// tokens are used.
pub fn without_last_use(tokens: Vec<ServiceToken>) -> Vec<ServiceToken> {
    tokens
        .into_iter()
        .map(|token| ServiceToken {
            last_used_at: None,
            ..token
        })
        .collect()
}

/// Pages of every token without a filter: what tests read a store with
/// directly (the service only ever lists through a filter).
#[async_trait::async_trait]
pub trait ListAll {
    async fn list_stored(
        &self,
        after: Option<sts::model::TokenId>,
        limit: usize,
    ) -> Result<Vec<sts::model::StoredToken>, StoreError>;

    async fn list(
        &self,
        after: Option<sts::model::TokenId>,
        limit: usize,
    ) -> Result<Vec<sts::model::ServiceToken>, StoreError> {
        let page = self.list_stored(after, limit).await?;
        Ok(page.into_iter().map(|stored| stored.token).collect())
    }
}

#[async_trait::async_trait]
impl<S: Store + ?Sized> ListAll for S {
    async fn list_stored(
        &self,
        after: Option<sts::model::TokenId>,
        limit: usize,
    ) -> Result<Vec<sts::model::StoredToken>, StoreError> {
        self.list_matching(after, limit, &sts::model::ListFilter::default())
            .await
    }
}
