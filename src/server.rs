//! Serving: binds the gRPC services (TokenService, health, reflection) to a
//! listener and runs them until `shutdown` resolves, then drains and flushes.

use std::{future::Future, sync::Arc};

use tokio::{net::TcpListener, sync::oneshot};
use tonic::transport::server::TcpIncoming;
use tonic_health::ServingStatus;

use crate::{
    error::Error,
    grpc::GrpcTokenService,
    proto::{self, token_service_server::TokenServiceServer},
    service::TokenService,
};

/// The gRPC name health checks use for our service.
pub const SERVICE_NAME: &str = "stackstate.servicetoken.v1.TokenService";

/// Serves until `shutdown` resolves. Health reports `SERVING` (overall and for
/// [`SERVICE_NAME`]) from the start, since the store is already open, and
/// `NOT_SERVING` as soon as shutdown begins; in-flight calls then get up to
/// `shutdown_grace` to finish, and the store is flushed before this returns.
pub async fn run(
    listener: TcpListener,
    service: Arc<TokenService>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), Error> {
    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_service_status(SERVICE_NAME, ServingStatus::Serving)
        .await;

    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection_v1 = reflection().build_v1()?;
    let reflection_v1alpha = reflection().build_v1alpha()?;

    let max_request_bytes = service.config().max_request_bytes;
    let tokens = TokenServiceServer::new(GrpcTokenService::new(service.clone()))
        .max_decoding_message_size(max_request_bytes);

    let (drain_started, drain_started_rx) = oneshot::channel();
    let draining = {
        let mut health = health.clone();
        async move {
            shutdown.await;
            tracing::info!("shutting down: refusing new connections, finishing in-flight calls");
            for name in ["", SERVICE_NAME] {
                health
                    .set_service_status(name, ServingStatus::NotServing)
                    .await;
                // Dropping the status ends open Watch streams (after they see
                // NOT_SERVING); a watcher would otherwise hold shutdown forever.
                health.clear_service_status(name).await;
            }
            let _ = drain_started.send(());
        }
    };
    let grace = service.config().shutdown_grace;
    let grace_expired = async move {
        if drain_started_rx.await.is_err() {
            return std::future::pending().await;
        }
        tokio::time::sleep(grace).await;
    };

    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    let serving = tonic::transport::Server::builder()
        .trace_fn(|request| tracing::info_span!("grpc", path = %request.uri().path()))
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(tokens)
        .serve_with_incoming_shutdown(incoming, draining);
    tokio::select! {
        served = serving => served?,
        () = grace_expired => tracing::warn!(?grace, "in-flight calls outlasted the shutdown grace; closing anyway"),
    }

    service.shutdown().await?;
    tracing::info!("stopped");
    Ok(())
}
