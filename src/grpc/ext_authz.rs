//! Envoy's external authorization over gRPC
//! (`envoy.service.auth.v3.Authorization/Check`), for Envoy, Istio, Envoy
//! Gateway and the rest of Envoy's family: the credential from the headers
//! Envoy forwards, the route's required roles from its context extensions,
//! and the same decision as forward-auth through [`TokenService::authorize`].
//!
//! A denial is always a `CheckResponse`, never an RPC error: Envoy treats a
//! failed RPC as the authorizer failing, and with `failure_mode_allow` lets
//! the request through.

use std::{collections::HashMap, sync::Arc};

use envoy_types::{
    ext_authz::v3::pb::{
        Authorization, CheckRequest, CheckResponse, DeniedHttpResponse, HeaderAppendAction,
        HeaderValue, HeaderValueOption, HttpResponse, HttpStatus, OkHttpResponse,
    },
    pb::google::rpc,
};
use http::HeaderMap;
use tonic::{Request, Response, Status};

use crate::{
    config::IntegrationConfig,
    credential,
    error::{Answer, Error},
    http::{CHALLENGE, HttpError, PREVIOUS_SECRET_HEADER, identity_headers},
    model::required_roles,
    service::{Authenticated, TokenService},
};

/// The context extension (set per route in Envoy's configuration) naming
/// the roles a token needs: comma-separated, every one required.
pub const REQUIRED_ROLES: &str = "sts.required_roles";

/// `Authorization` over the domain service.
#[derive(Clone)]
pub struct ExtAuthz {
    service: Arc<TokenService>,
    integrations: IntegrationConfig,
}

impl ExtAuthz {
    pub fn new(service: Arc<TokenService>, integrations: IntegrationConfig) -> ExtAuthz {
        ExtAuthz {
            service,
            integrations,
        }
    }

    async fn decide(&self, request: &CheckRequest) -> Result<(Authenticated, HeaderMap), Error> {
        let attributes = request.attributes.as_ref();
        let extensions = attributes.map(|a| &a.context_extensions);
        let required = required_roles(
            REQUIRED_ROLES,
            extensions
                .and_then(|e| e.get(REQUIRED_ROLES))
                .map(String::as_str),
        )?;
        let http = attributes
            .and_then(|a| a.request.as_ref())
            .and_then(|r| r.http.as_ref());
        let headers = credential_headers(
            http.map(|h| &h.headers),
            http.and_then(|h| h.header_map.as_ref())
                .map(|m| m.headers.as_slice())
                .unwrap_or_default(),
        );
        let caller = self
            .service
            .authorize(credential::presented(&headers), &required)
            .await?;
        Ok((caller, headers))
    }

    fn allow(&self, caller: &Authenticated, presented: &HeaderMap) -> Result<CheckResponse, Error> {
        let identity = identity_headers(caller)?;
        let headers = identity
            .iter()
            .map(|(name, value)| header(name.as_str(), &String::from_utf8_lossy(value.as_bytes())))
            .collect();
        let mut headers_to_remove = Vec::new();
        if !self.integrations.forward_credential {
            headers_to_remove.extend(
                credential::HEADERS
                    .into_iter()
                    .filter(|name| presented.contains_key(*name))
                    .map(str::to_owned),
            );
        }
        // Only this server says a previous secret was used.
        if !identity.contains_key(PREVIOUS_SECRET_HEADER) {
            headers_to_remove.push(PREVIOUS_SECRET_HEADER.to_owned());
        }
        Ok(CheckResponse {
            status: Some(rpc::Status {
                code: tonic::Code::Ok.into(),
                ..rpc::Status::default()
            }),
            http_response: Some(HttpResponse::OkResponse(OkHttpResponse {
                headers,
                headers_to_remove,
                ..OkHttpResponse::default()
            })),
            ..CheckResponse::default()
        })
    }
}

/// The denial of `error`: its gRPC code, and the HTTP answer the client
/// gets, as the HTTP side would have given it.
fn deny(error: &Error) -> CheckResponse {
    let answer: Answer = error.answer();
    let http = HttpError::from(&answer);
    let mut headers = vec![header("content-type", "application/json")];
    if http.challenge {
        headers.push(header("www-authenticate", CHALLENGE));
    }
    CheckResponse {
        status: Some(rpc::Status {
            code: answer.kind.grpc_code().into(),
            message: answer.message,
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
fn header(key: &str, value: &str) -> HeaderValueOption {
    HeaderValueOption {
        header: Some(HeaderValue {
            key: key.to_owned(),
            value: value.to_owned(),
            raw_value: Vec::new(),
        }),
        append_action: HeaderAppendAction::OverwriteIfExistsOrAdd.into(),
        ..HeaderValueOption::default()
    }
}

/// The credential headers of the client's request, in the form the HTTP
/// side reads them: from `headers` (Envoy's default, keys lower-cased,
/// repeats joined with commas) or `header_map` (with `encode_raw_headers`,
/// repeats kept apart, values as bytes).
fn credential_headers(headers: Option<&HashMap<String, String>>, raw: &[HeaderValue]) -> HeaderMap {
    let mut found = HeaderMap::new();
    for name in credential::HEADERS {
        if let Some(value) = headers.and_then(|h| h.get(name)) {
            append(&mut found, name, value.as_bytes());
        }
        for entry in raw.iter().filter(|h| h.key.eq_ignore_ascii_case(name)) {
            let value = if entry.raw_value.is_empty() {
                entry.value.as_bytes()
            } else {
                &entry.raw_value
            };
            append(&mut found, name, value);
        }
    }
    found
}

/// Adds a header. A value that cannot be one (a control character) is
/// kept as `!`, which no credential parse accepts (Envoy itself puts `!`
/// for what is not UTF-8), so it is refused rather than read as missing.
fn append(map: &mut HeaderMap, name: &'static str, value: &[u8]) {
    let value = http::HeaderValue::from_bytes(value)
        .unwrap_or_else(|_| http::HeaderValue::from_static("!"));
    map.append(name, value);
}

#[tonic::async_trait]
impl Authorization for ExtAuthz {
    async fn check(
        &self,
        request: Request<CheckRequest>,
    ) -> Result<Response<CheckResponse>, Status> {
        let request = request.into_inner();
        let answer = match self.decide(&request).await {
            Ok((caller, presented)) => self.allow(&caller, &presented).unwrap_or_else(|e| deny(&e)),
            Err(error) => deny(&error),
        };
        Ok(Response::new(answer))
    }
}
