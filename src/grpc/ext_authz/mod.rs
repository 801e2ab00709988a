//! Envoy's external authorization over gRPC
//! (`envoy.service.auth.v3.Authorization/Check`), for Envoy, Istio, Envoy
//! Gateway and the rest of Envoy's family: the credential from the headers
//! Envoy forwards, the route's required roles from its context extensions,
//! and the same decision as forward-auth through [`TokenService::authorize`].
//!
//! A denial is always a `CheckResponse`, never an RPC error: Envoy treats a
//! failed RPC as the authorizer failing, and with `failure_mode_allow` lets
//! the request through.
//!
//! The answer is `envoy-types`' `CheckResponse`. The request is decoded
//! into [`CheckRequestView`], the few fields of Envoy's `CheckRequest` we
//! read, with header names and values as slices of the received bytes:
//! Envoy sends every request header, the peers, the path and more, and
//! decoding all of that into owned maps and strings made a `Check` cost
//! most of a `Validate` again (BENCHMARKS.md).

use std::{
    convert::Infallible,
    net::IpAddr,
    sync::Arc,
    task::{Context, Poll},
};

use bytes::Bytes;
use envoy_types::{
    ext_authz::v3::pb::{
        CheckResponse, DeniedHttpResponse, HeaderAppendAction, HeaderValue, HeaderValueOption,
        HttpResponse, HttpStatus, OkHttpResponse,
    },
    pb::google::rpc,
};
use tonic::{Request, Response, Status, body::Body, server::NamedService};

use crate::{
    authz::{
        Allow, CHALLENGE, EXPIRATION_HEADER, HttpError, PREVIOUS_SECRET_HEADER, RateLimitFields,
    },
    config::IntegrationConfig,
    credential,
    error::Error,
    model::{CheckContext, FieldError, required_roles},
    proto::codec::ProstCodec,
    rate_limit::Surface,
    service::{Authenticated, TokenService},
};

mod differential;
mod view;

pub(crate) use differential::differential;
use view::{CheckRequestView, ForwardedHeaders};

/// The context extension (set per route in Envoy's configuration) naming
/// the roles a token needs: comma-separated, every one required.
pub const REQUIRED_ROLES: &str = "sts.required_roles";

/// The context extension naming the audience the route's service is: an
/// audience-bound token must be bound to it.
pub const AUDIENCE: &str = "sts.audience";

/// `Check` over the domain service.
pub struct ExtAuthz {
    service: Arc<TokenService>,
    /// `IntegrationConfig::forward_credential`.
    forward_credential: bool,
}

impl ExtAuthz {
    pub fn new(service: Arc<TokenService>, integrations: &IntegrationConfig) -> ExtAuthz {
        ExtAuthz {
            service,
            forward_credential: integrations.forward_credential,
        }
    }

    async fn decide(&self, request: &CheckRequestView) -> Result<CheckResponse, Error> {
        let lists = request
            .required_roles()
            .map(|roles| {
                std::str::from_utf8(roles)
                    .map_err(|_| FieldError::new(REQUIRED_ROLES, "is not UTF-8"))
            })
            .transpose()?;
        let required = required_roles(REQUIRED_ROLES, lists)?;
        let forwarded = ForwardedHeaders::of(request);
        // What Envoy itself saw of the request (the client's address, its
        // method and path) and what the route's configuration says; text
        // that is not UTF-8 or not an address is unknown, which refuses a
        // token bound to it.
        fn text(bytes: &[u8]) -> Option<&str> {
            std::str::from_utf8(bytes).ok()
        }
        let context = CheckContext {
            source: request
                .source_address()
                .and_then(text)
                .and_then(|a| a.parse::<IpAddr>().ok()),
            audience: request.audience().and_then(text),
            route: request.route().and_then(|(method, path)| {
                Some((text(method)?, text(path)?)).filter(|(m, p)| !m.is_empty() && !p.is_empty())
            }),
        };
        let caller = self
            .service
            .authorize(
                credential::presented(&forwarded),
                &required,
                &context,
                Surface::ExtAuthz,
            )
            .await?;
        Ok(self.allow(&caller, &forwarded))
    }

    /// The allow: the identity set on the request (overwriting whatever
    /// the client sent under those names), the credential and a client's
    /// own previous-secret flag removed.
    fn allow(&self, caller: &Authenticated, forwarded: &ForwardedHeaders<'_>) -> CheckResponse {
        let Allow {
            identity,
            previous_secret,
            expiration,
            strip,
            rate_limits,
        } = Allow::of(
            caller,
            |name| forwarded.contains(name),
            self.forward_credential,
        );
        let mut headers = Vec::with_capacity(4);
        headers.extend(identity.map(|(name, value)| header(name, value)));
        let mut headers_to_remove = Vec::with_capacity(3);
        if previous_secret {
            headers.push(header(PREVIOUS_SECRET_HEADER, "true".into()));
        } else {
            headers_to_remove.push(PREVIOUS_SECRET_HEADER.to_owned());
        }
        headers_to_remove.extend(strip.names().map(str::to_owned));
        // To the client, on the way back: when its token expires.
        let response_headers_to_add = expiration
            .map(|text| header(EXPIRATION_HEADER, text))
            .into_iter()
            .chain(
                rate_limits
                    .map(RateLimitFields::pairs)
                    .into_iter()
                    .flatten()
                    .map(|(name, value)| header(name, value)),
            )
            .collect();
        CheckResponse {
            status: Some(rpc::Status {
                code: tonic::Code::Ok.into(),
                ..rpc::Status::default()
            }),
            http_response: Some(HttpResponse::OkResponse(OkHttpResponse {
                headers,
                headers_to_remove,
                response_headers_to_add,
                ..OkHttpResponse::default()
            })),
            ..CheckResponse::default()
        }
    }
}

/// The denial of `error`: its gRPC code, and the HTTP answer the client
/// gets, as the HTTP side would have given it.
fn deny(error: &Error) -> CheckResponse {
    let http = HttpError::of(error);
    let mut headers = vec![header("content-type", "application/json".into())];
    if http.challenge {
        headers.push(header("www-authenticate", CHALLENGE.into()));
    }
    headers.extend(
        http.headers
            .into_iter()
            .map(|(name, value)| header(name, value)),
    );
    let kind = error.kind();
    CheckResponse {
        status: Some(rpc::Status {
            code: kind.grpc_code().into(),
            message: http.message,
            details: Vec::new(),
        }),
        http_response: Some(HttpResponse::DeniedResponse(DeniedHttpResponse {
            status: Some(HttpStatus {
                code: i32::from(http.status.as_u16()),
            }),
            headers,
            body: http.body,
        })),
        ..CheckResponse::default()
    }
}

/// A header Envoy sets, overwriting what the client sent under its name
/// (never what the service reads as our answer).
fn header(key: &str, value: String) -> HeaderValueOption {
    HeaderValueOption {
        header: Some(HeaderValue {
            key: key.to_owned(),
            value,
            raw_value: Vec::new(),
        }),
        append_action: HeaderAppendAction::OverwriteIfExistsOrAdd.into(),
        ..HeaderValueOption::default()
    }
}

/// The gRPC name Envoy calls.
pub const SERVICE: &str = "envoy.service.auth.v3.Authorization";
const CHECK_PATH: &str = "/envoy.service.auth.v3.Authorization/Check";

/// The `Authorization` gRPC service: `Check`, served with tonic's unary
/// machinery (what generated servers use) and our request view.
#[derive(Clone)]
pub struct AuthorizationService {
    check: Arc<ExtAuthz>,
    max_request_bytes: usize,
}

impl AuthorizationService {
    pub fn new(check: ExtAuthz, max_request_bytes: usize) -> AuthorizationService {
        AuthorizationService {
            check: Arc::new(check),
            max_request_bytes,
        }
    }
}

impl NamedService for AuthorizationService {
    const NAME: &'static str = SERVICE;
}

/// One `Check` call, as tonic's unary machinery runs it.
struct CheckCall(Arc<ExtAuthz>);

impl tonic::server::UnaryService<CheckRequestView> for CheckCall {
    type Response = CheckResponse;
    type Future = std::pin::Pin<
        Box<dyn Future<Output = Result<Response<CheckResponse>, Status>> + Send + 'static>,
    >;

    fn call(&mut self, request: Request<CheckRequestView>) -> Self::Future {
        let this = self.0.clone();
        Box::pin(async move {
            let request = request.into_inner();
            let answer = this.decide(&request).await.unwrap_or_else(|e| deny(&e));
            Ok(Response::new(answer))
        })
    }
}

impl<B> tower::Service<http::Request<B>> for AuthorizationService
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>> + Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = std::pin::Pin<
        Box<dyn Future<Output = Result<http::Response<Body>, Infallible>> + Send + 'static>,
    >;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        if request.uri().path() != CHECK_PATH {
            return Box::pin(async { Ok(Status::unimplemented("no such method").into_http()) });
        }
        let check = CheckCall(self.check.clone());
        let limit = self.max_request_bytes;
        Box::pin(async move {
            let codec = ProstCodec::<CheckResponse, CheckRequestView>::default();
            let mut grpc =
                tonic::server::Grpc::new(codec).apply_max_message_size_config(Some(limit), None);
            Ok(grpc.unary(check, request).await)
        })
    }
}
