//! TokenService calls refused before they began, because their bytes are not
//! a valid protobuf message: tonic answers those itself (through our codec,
//! `proto::codec`), so no handler runs. This layer, around the TokenService
//! alone, sees such an answer go out and hands it to
//! `TokenService::refused_undecodable` (counted; a management call audited).
//! Written out, not `from_fn`: a call that decodes costs no allocation (the
//! credential headers are `Bytes`, cloned by reference count).

use std::{
    future::Future,
    net::IpAddr,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use http::{HeaderMap, HeaderValue, Request, Response};
use tower::{Layer, Service};

use crate::{
    credential,
    proto::{codec::UNDECODABLE, token_service_server::SERVICE_NAME},
    service::{Rpc, TokenService},
    source,
};

#[derive(Clone)]
pub struct UndecodableLayer {
    service: Arc<TokenService>,
}

impl UndecodableLayer {
    pub fn new(service: Arc<TokenService>) -> UndecodableLayer {
        UndecodableLayer { service }
    }
}

impl<S> Layer<S> for UndecodableLayer {
    type Service = Undecodable<S>;

    fn layer(&self, inner: S) -> Undecodable<S> {
        Undecodable {
            inner,
            service: self.service.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Undecodable<S> {
    inner: S,
    service: Arc<TokenService>,
}

impl<S: tonic::server::NamedService> tonic::server::NamedService for Undecodable<S> {
    const NAME: &'static str = S::NAME;
}

/// What is kept of a call until its answer is known.
struct Call {
    rpc: &'static str,
    management: bool,
    authorization: Option<HeaderValue>,
    x_api_key: Option<HeaderValue>,
    source: Option<IpAddr>,
}

/// The method's name (a fixed set) and whether it is a management call.
fn method<B>(request: &Request<B>) -> (&'static str, bool) {
    let method = request
        .uri()
        .path()
        .strip_prefix('/')
        .and_then(|path| path.strip_prefix(SERVICE_NAME))
        .and_then(|path| path.strip_prefix('/'));
    match method {
        Some("Create") => (Rpc::Create.as_str(), true),
        Some("List") => (Rpc::List.as_str(), true),
        Some("Delete") => (Rpc::Delete.as_str(), true),
        Some("GetUsage") => (Rpc::GetUsage.as_str(), true),
        Some("RotateSelf") => (Rpc::RotateSelf.as_str(), true),
        Some("Validate") => ("Validate", false),
        Some("Watch") => ("Watch", false),
        Some("ReportUses") => ("ReportUses", false),
        _ => ("other", false),
    }
}

impl<S, B, R> Service<Request<B>> for Undecodable<S>
where
    S: Service<Request<B>, Response = Response<R>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Watched<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Watched<S::Future> {
        let (rpc, management) = method(&request);
        // Who asked matters only for the audit of a management call;
        // `Validate`, the hot path, keeps nothing but its name.
        let header = |name| {
            management
                .then(|| request.headers().get(name).cloned())
                .flatten()
        };
        let call = Call {
            rpc,
            management,
            authorization: header(http::header::AUTHORIZATION.as_str()),
            x_api_key: header("x-api-key"),
            source: management
                .then(|| source::of(request.extensions()))
                .flatten(),
        };
        Watched {
            inner: self.inner.call(request),
            service: self.service.clone(),
            call: Some(call),
        }
    }
}

pin_project_lite::pin_project! {
    pub struct Watched<F> {
        #[pin]
        inner: F,
        service: Arc<TokenService>,
        call: Option<Call>,
    }
}

/// Whether `headers` are the answer our codec gives an undecodable request.
fn is_undecodable(headers: &HeaderMap) -> bool {
    // grpc-message is percent-encoded; decoded only on this rare path.
    headers.get("grpc-status").is_some_and(|s| s == "13")
        && headers.get("grpc-message").is_some_and(|m| {
            percent_encoding::percent_decode(m.as_bytes())
                .decode_utf8_lossy()
                .starts_with(UNDECODABLE)
        })
}

impl<F, R, E> Future for Watched<F>
where
    F: Future<Output = Result<Response<R>, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        let output = std::task::ready!(this.inner.poll(cx));
        if let (Ok(response), Some(call)) = (&output, this.call.take())
            && is_undecodable(response.headers())
        {
            let service = this.service.clone();
            // Off the answer's path: auditing may look the caller up.
            tokio::spawn(async move {
                let mut headers = HeaderMap::new();
                if let Some(value) = call.authorization {
                    headers.insert(http::header::AUTHORIZATION, value);
                }
                if let Some(value) = call.x_api_key {
                    headers.insert("x-api-key", value);
                }
                service
                    .refused_undecodable(
                        call.rpc,
                        call.management,
                        credential::presented(&headers),
                        call.source,
                    )
                    .await;
            });
        }
        Poll::Ready(output)
    }
}
