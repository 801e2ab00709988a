//! `spawn_app()` and friends: a running server on 127.0.0.1:0 with a
//! temporary data dir, a bootstrapped admin token, a gRPC client and a
//! clock the test can move.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use sts::{
    clock::Clock,
    config::{ServerConfig, ServiceConfig},
    error::ServeError,
    model::NewToken,
    proto::{
        CreateRequest, CreateResponse, ServiceToken, ValidateResponse,
        token_service_client::TokenServiceClient,
    },
    server,
    service::{self, TokenService},
    store::{SledStore, Store},
};
use tempfile::TempDir;
use tokio::{net::TcpListener, sync::oneshot, task::JoinHandle};
use tonic::{Request, transport::Channel};

use super::{
    grpc::{channel, create_request, validate_on, with_key},
    rest::Rest,
    store::reopen,
    tls::{TestCertificate, tls_channel},
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

/// A server whose rate limits are counted by `limiter` (a shared Redis).
pub async fn spawn_app_limited_by(limiter: sts::rate_limit::Limiter) -> TestApp {
    let data_dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SledStore::open(data_dir.path()).unwrap());
    let (service, clock, admin_token) = build_service(store, ServiceConfig::default()).await;
    let service = Arc::into_inner(service)
        .expect("nothing else holds the service yet")
        .with_limiter(limiter);
    serve_app(
        data_dir,
        Arc::new(service),
        clock,
        admin_token,
        server_config(),
    )
    .await
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
    let (service, clock, admin_token) = build_service(store, service).await;
    serve_app(data_dir, service, clock, admin_token, server).await
}

async fn serve_app(
    data_dir: TempDir,
    service: Arc<TokenService>,
    clock: Arc<ManualClock>,
    admin_token: String,
    server: ServerConfig,
) -> TestApp {
    let tls = server.tls.is_some();
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

    /// The HTTP side of this server.
    pub fn rest(&self) -> Rest {
        Rest::at(self.addr)
    }

    /// The whole `/metrics` text.
    pub async fn metrics_text(&self) -> String {
        self.rest().metrics_text().await
    }

    /// The value of metric `name` (a full series name, labels included)
    /// on the server's `/metrics`; 0 when the series is not there.
    pub async fn metric(&self, name: &str) -> f64 {
        self.rest().metric(name).await
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
