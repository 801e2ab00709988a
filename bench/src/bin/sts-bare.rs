//! `sts-bare`: the baseline. The same stack and runtime settings as
//! sts-server (the library's `serve` with hyper's HTTP/1 and HTTP/2, axum
//! routes and tonic services in one router, one port, the same listener)
//! but no work: `Validate` answers a constant, and
//! `/api/server/status` a constant 200. Ours / bare is what our work costs.

use std::net::SocketAddr;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use axum::{Router, routing::get};
use clap::Parser;
use sts::proto::{
    CreateRequest, CreateResponse, DeleteRequest, DeleteResponse, GetRequest, GetResponse,
    GetUsageRequest, GetUsageResponse, ListRequest, ListResponse, ReportUsesRequest,
    ReportUsesResponse, RevokeLeakedRequest, RevokeLeakedResponse, RotateRequest, RotateResponse,
    RotateSelfRequest, RotateSelfResponse, ServiceToken, UpdateRequest, UpdateResponse,
    ValidateRequest, ValidateResponse, WatchRequest, WatchResponse,
    token_service_server::{TokenService, TokenServiceServer},
};
use sts::{
    config::ServerConfig,
    connections::Connections,
    metrics::Metrics,
    server::listener::{Incoming, Limits},
    server::protocol::{Protocol, serve},
};
use tonic::{Request, Response, Status, service::Routes};

#[derive(Parser)]
struct Cli {
    #[arg(long, default_value = "127.0.0.1:7071")]
    listen: SocketAddr,
}

struct Bare;

#[tonic::async_trait]
impl TokenService for Bare {
    async fn create(&self, _: Request<CreateRequest>) -> Result<Response<CreateResponse>, Status> {
        Err(Status::unimplemented("bare"))
    }
    async fn list(&self, _: Request<ListRequest>) -> Result<Response<ListResponse>, Status> {
        Err(Status::unimplemented("bare"))
    }
    async fn delete(&self, _: Request<DeleteRequest>) -> Result<Response<DeleteResponse>, Status> {
        Err(Status::unimplemented("bare"))
    }
    async fn get(&self, _: Request<GetRequest>) -> Result<Response<GetResponse>, Status> {
        Err(Status::unimplemented("bare"))
    }
    async fn update(&self, _: Request<UpdateRequest>) -> Result<Response<UpdateResponse>, Status> {
        Err(Status::unimplemented("bare"))
    }
    async fn rotate(&self, _: Request<RotateRequest>) -> Result<Response<RotateResponse>, Status> {
        Err(Status::unimplemented("bare"))
    }
    async fn revoke_leaked(
        &self,
        _: Request<RevokeLeakedRequest>,
    ) -> Result<Response<RevokeLeakedResponse>, Status> {
        Err(Status::unimplemented("bare"))
    }
    async fn get_usage(
        &self,
        _: Request<GetUsageRequest>,
    ) -> Result<Response<GetUsageResponse>, Status> {
        Err(Status::unimplemented("bare"))
    }
    type WatchStream = std::pin::Pin<
        Box<dyn tokio_stream::Stream<Item = Result<WatchResponse, Status>> + Send + 'static>,
    >;
    async fn watch(&self, _: Request<WatchRequest>) -> Result<Response<Self::WatchStream>, Status> {
        Err(Status::unimplemented("bare"))
    }
    async fn report_uses(
        &self,
        _: Request<ReportUsesRequest>,
    ) -> Result<Response<ReportUsesResponse>, Status> {
        Err(Status::unimplemented("bare"))
    }
    async fn rotate_self(
        &self,
        _: Request<RotateSelfRequest>,
    ) -> Result<Response<RotateSelfResponse>, Status> {
        Err(Status::unimplemented("bare"))
    }
    async fn validate(
        &self,
        _: Request<ValidateRequest>,
    ) -> Result<Response<ValidateResponse>, Status> {
        // The same shape of answer ours gives for a valid token (a
        // prefilled one: no description, labels or creator).
        let created = prost_types::Timestamp {
            seconds: 1_800_000_000,
            nanos: 0,
        };
        Ok(Response::new(ValidateResponse {
            valid: true,
            reason: 0,
            service_token: Some(ServiceToken {
                id: 107_484_341_630_693,
                name: "bench-0".into(),
                roles: vec!["bench-reader".into()],
                expiration: None,
                created_at: Some(created),
                updated_at: Some(created),
                ..ServiceToken::default()
            }),
            previous_secret: false,
            ..ValidateResponse::default()
        }))
    }
}

const STATUS: &str = r#"{"version":"0.1.0","uptimeSeconds":1,"serviceToken":{"id":107484341630693,"name":"bench-0","roles":["bench-reader"],"description":"","labels":{},"disabled":false,"createdAt":1800000000000,"createdBy":"","updatedAt":1800000000000}}"#;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let http = Router::new().route(
        "/api/server/status",
        get(|| async { ([("content-type", "application/json")], STATUS) }),
    );
    // Health only so the suite can wait for SERVING; it is not on the measured path.
    let (_health, health_service) = tonic_health::server::health_reporter();
    let routes = Routes::from(http)
        .add_service(health_service)
        .add_service(TokenServiceServer::new(Bare));
    let listener = tokio::net::TcpListener::bind(cli.listen).await?;
    eprintln!("bare server on {}", listener.local_addr()?);
    let server = ServerConfig::default();
    let limits = Limits {
        first_byte_timeout: server.first_byte_timeout,
        tls_handshake_timeout: server.tls_handshake_timeout,
    };
    let protocol = Protocol::from(&server);
    serve(
        Incoming::new(
            vec![listener],
            limits,
            None,
            Connections::new(
                server.connection_limits,
                Default::default(),
                std::sync::Arc::new(Metrics::with(|_| {})),
            ),
        ),
        routes.into_axum_router(),
        &protocol,
        async {
            let _ = tokio::signal::ctrl_c().await;
        },
    )
    .await;
    Ok(())
}
