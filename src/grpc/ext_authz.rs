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
use prost::{
    DecodeError,
    encoding::{DecodeContext, WireType, message},
};
use tonic::{Request, Response, Status, body::Body, server::NamedService};

use crate::{
    authz::{Allow, CHALLENGE, EXPIRATION_HEADER, HttpError, PREVIOUS_SECRET_HEADER},
    config::IntegrationConfig,
    credential,
    error::{Answer, Error},
    model::{FieldError, required_roles},
    proto::codec::ProstCodec,
    service::{Authenticated, TokenService},
};

/// The context extension (set per route in Envoy's configuration) naming
/// the roles a token needs: comma-separated, every one required.
pub const REQUIRED_ROLES: &str = "sts.required_roles";

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
        let attributes = request.attributes.as_ref();
        // A map's last entry for a key wins, as in protobuf's own decoding.
        let lists = attributes
            .and_then(|a| {
                a.context_extensions
                    .iter()
                    .rfind(|e| e.key == REQUIRED_ROLES.as_bytes())
            })
            .map(|e| {
                std::str::from_utf8(&e.value)
                    .map_err(|_| FieldError::new(REQUIRED_ROLES, "is not UTF-8"))
            })
            .transpose()?;
        let required = required_roles(REQUIRED_ROLES, lists)?;
        let forwarded = ForwardedHeaders::of(request);
        let caller = self
            .service
            .authorize(credential::presented(&forwarded), &required)
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
            .map(|text| vec![header(EXPIRATION_HEADER, text)])
            .unwrap_or_default();
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
    let answer: Answer = error.answer();
    let http = HttpError::from(&answer);
    let mut headers = vec![header("content-type", "application/json".into())];
    if http.challenge {
        headers.push(header("www-authenticate", CHALLENGE.into()));
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

/// The headers of the client's request as Envoy forwards them: `headers`
/// (its default; keys lower-cased, repeats joined with commas) or
/// `header_map` (with `encode_raw_headers`: repeats kept apart, values as
/// bytes). Read in place.
struct ForwardedHeaders<'r> {
    headers: &'r [Entry],
    raw: &'r [RawHeader],
}

impl<'r> ForwardedHeaders<'r> {
    fn of(request: &'r CheckRequestView) -> ForwardedHeaders<'r> {
        let http = request
            .attributes
            .as_ref()
            .and_then(|a| a.request.as_ref())
            .and_then(|r| r.http.as_ref());
        ForwardedHeaders {
            headers: http.map(|h| h.headers.as_slice()).unwrap_or_default(),
            raw: http
                .and_then(|h| h.header_map.as_ref())
                .map(|m| m.headers.as_slice())
                .unwrap_or_default(),
        }
    }

    fn contains(&self, name: &'static str) -> bool {
        credential::Headers::values(self, name).next().is_some()
    }
}

impl credential::Headers for ForwardedHeaders<'_> {
    fn values<'h>(&'h self, name: &'static str) -> impl Iterator<Item = &'h [u8]> + 'h {
        // A map: the last entry for a key is its value.
        let mapped = self
            .headers
            .iter()
            .rfind(|h| h.key.eq_ignore_ascii_case(name.as_bytes()))
            .map(|h| &h.value[..]);
        let raw = self
            .raw
            .iter()
            .filter(move |h| h.key.eq_ignore_ascii_case(name.as_bytes()))
            .map(|h| {
                if h.raw_value.is_empty() {
                    &h.value[..]
                } else {
                    &h.raw_value[..]
                }
            });
        mapped.into_iter().chain(raw)
    }
}

/// What we read of `envoy.service.auth.v3.CheckRequest`: the same field
/// numbers, everything else skipped unread. Strings are read as bytes (the
/// same wire type), sliced from the received buffer without a copy.
#[derive(Clone, PartialEq, prost::Message)]
pub struct CheckRequestView {
    #[prost(message, optional, tag = "1")]
    attributes: Option<AttributesView>,
}

/// `envoy.service.auth.v3.AttributeContext`: `request`, and of
/// `context_extensions` (a map, on the wire a repeated key/value entry)
/// only [`REQUIRED_ROLES`].
#[derive(Clone, PartialEq, Default, Debug)]
struct AttributesView {
    request: Option<RequestView>,
    context_extensions: Vec<Entry>,
}

impl prost::Message for AttributesView {
    fn encode_raw(&self, buf: &mut impl bytes::BufMut) {
        if let Some(request) = &self.request {
            message::encode(4, request, buf);
        }
        message::encode_repeated(10, &self.context_extensions, buf);
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl bytes::Buf,
        ctx: DecodeContext,
    ) -> Result<(), DecodeError> {
        match tag {
            4 => message::merge(
                wire_type,
                self.request.get_or_insert_with(Default::default),
                buf,
                ctx,
            ),
            10 => merge_kept(
                wire_type,
                buf,
                ctx,
                &mut self.context_extensions,
                |e: &Entry| e.key == REQUIRED_ROLES.as_bytes(),
            ),
            _ => prost::encoding::skip_field(wire_type, tag, buf, ctx),
        }
    }

    fn encoded_len(&self) -> usize {
        self.request
            .as_ref()
            .map_or(0, |r| message::encoded_len(4, r))
            + message::encoded_len_repeated(10, &self.context_extensions)
    }

    fn clear(&mut self) {
        *self = AttributesView::default();
    }
}

/// `AttributeContext.Request`: `http`.
#[derive(Clone, PartialEq, prost::Message)]
struct RequestView {
    #[prost(message, optional, tag = "2")]
    http: Option<HttpRequestView>,
}

/// `AttributeContext.HttpRequest`: of `headers` (a map) and `header_map`,
/// only the credential headers. Envoy sends every request header; the
/// others are skipped as they arrive, so nothing is kept for them.
#[derive(Clone, PartialEq, Default, Debug)]
struct HttpRequestView {
    headers: Vec<Entry>,
    header_map: Option<HeaderMapView>,
}

/// Whether a header is one a credential may arrive in.
fn is_credential(key: &[u8]) -> bool {
    credential::HEADERS
        .iter()
        .any(|name| key.eq_ignore_ascii_case(name.as_bytes()))
}

impl prost::Message for HttpRequestView {
    fn encode_raw(&self, buf: &mut impl bytes::BufMut) {
        message::encode_repeated(3, &self.headers, buf);
        if let Some(map) = &self.header_map {
            message::encode(13, map, buf);
        }
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl bytes::Buf,
        ctx: DecodeContext,
    ) -> Result<(), DecodeError> {
        match tag {
            3 => merge_header(wire_type, buf, ctx, &mut self.headers, |[key, value, _]| {
                Entry {
                    key: Bytes::copy_from_slice(key),
                    value: Bytes::copy_from_slice(value),
                }
            }),
            13 => message::merge(
                wire_type,
                self.header_map.get_or_insert_with(Default::default),
                buf,
                ctx,
            ),
            _ => prost::encoding::skip_field(wire_type, tag, buf, ctx),
        }
    }

    fn encoded_len(&self) -> usize {
        message::encoded_len_repeated(3, &self.headers)
            + self
                .header_map
                .as_ref()
                .map_or(0, |m| message::encoded_len(13, m))
    }

    fn clear(&mut self) {
        *self = HttpRequestView::default();
    }
}

/// One header of a repeated header field (a map entry, or a
/// `HeaderValue`), kept in `into` only if it is a credential header. The
/// common case reads it where it lies and copies nothing: Envoy sends
/// every request header, and only one or two are ever kept.
fn merge_header<M: HasKey>(
    wire_type: WireType,
    buf: &mut impl bytes::Buf,
    ctx: DecodeContext,
    into: &mut Vec<M>,
    make: impl FnOnce([&[u8]; 3]) -> M,
) -> Result<(), DecodeError> {
    if wire_type == WireType::LengthDelimited {
        let chunk = buf.chunk();
        let mut rest = chunk;
        if let Ok(len) = prost::encoding::decode_varint(&mut rest)
            && let Ok(len) = usize::try_from(len)
            && len <= rest.len()
            && let Some(fields) = string_fields(&rest[..len])
        {
            if is_credential(fields[0]) {
                into.push(make(fields));
            }
            let consumed = chunk.len() - rest.len() + len;
            buf.advance(consumed);
            return Ok(());
        }
    }
    // Split across chunks, or malformed: prost's own decoding, which says
    // what is wrong.
    merge_kept(wire_type, buf, ctx, into, |m: &M| is_credential(m.key()))
}

/// Fields 1 to 3 of a message whose fields 1 to 3 are strings or bytes, as
/// slices of its encoding (empty when absent; the last occurrence wins);
/// other fields skipped. `None` for anything that does not decode.
fn string_fields(mut bytes: &[u8]) -> Option<[&[u8]; 3]> {
    let mut fields: [&[u8]; 3] = [&[], &[], &[]];
    while !bytes.is_empty() {
        let (tag, wire_type) = prost::encoding::decode_key(&mut bytes).ok()?;
        match (tag, wire_type) {
            (1..=3, WireType::LengthDelimited) => {
                let len = usize::try_from(prost::encoding::decode_varint(&mut bytes).ok()?).ok()?;
                let field = bytes.get(..len)?;
                fields[tag as usize - 1] = field;
                bytes = &bytes[len..];
            }
            _ => prost::encoding::skip_field(wire_type, tag, &mut bytes, DecodeContext::default())
                .ok()?,
        }
    }
    Some(fields)
}

impl std::fmt::Debug for Entry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Entry")
            .field("key", &String::from_utf8_lossy(&self.key))
            .field("value", &"<redacted>")
            .finish()
    }
}

impl std::fmt::Debug for RawHeader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawHeader")
            .field("key", &String::from_utf8_lossy(&self.key))
            .field("value", &"<redacted>")
            .finish()
    }
}

/// A header message's name.
trait HasKey: prost::Message + Default {
    fn key(&self) -> &[u8];
}

impl HasKey for Entry {
    fn key(&self) -> &[u8] {
        &self.key
    }
}

impl HasKey for RawHeader {
    fn key(&self) -> &[u8] {
        &self.key
    }
}

/// Decodes one entry of a repeated message field into `into` if `keep`
/// says so.
fn merge_kept<M: prost::Message + Default>(
    wire_type: WireType,
    buf: &mut impl bytes::Buf,
    ctx: DecodeContext,
    into: &mut Vec<M>,
    keep: impl FnOnce(&M) -> bool,
) -> Result<(), DecodeError> {
    let mut entry = M::default();
    message::merge(wire_type, &mut entry, buf, ctx)?;
    if keep(&entry) {
        into.push(entry);
    }
    Ok(())
}

/// A `map<string, string>` entry. Kept entries hold credentials: `Debug`
/// shows the key only.
#[derive(Clone, PartialEq, prost::Message)]
#[prost(skip_debug)]
struct Entry {
    #[prost(bytes = "bytes", tag = "1")]
    key: Bytes,
    #[prost(bytes = "bytes", tag = "2")]
    value: Bytes,
}

/// `envoy.config.core.v3.HeaderMap`: only the credential headers.
#[derive(Clone, PartialEq, Default, Debug)]
struct HeaderMapView {
    headers: Vec<RawHeader>,
}

impl prost::Message for HeaderMapView {
    fn encode_raw(&self, buf: &mut impl bytes::BufMut) {
        message::encode_repeated(1, &self.headers, buf);
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl bytes::Buf,
        ctx: DecodeContext,
    ) -> Result<(), DecodeError> {
        match tag {
            1 => merge_header(
                wire_type,
                buf,
                ctx,
                &mut self.headers,
                |[key, value, raw]| RawHeader {
                    key: Bytes::copy_from_slice(key),
                    value: Bytes::copy_from_slice(value),
                    raw_value: Bytes::copy_from_slice(raw),
                },
            ),
            _ => prost::encoding::skip_field(wire_type, tag, buf, ctx),
        }
    }

    fn encoded_len(&self) -> usize {
        message::encoded_len_repeated(1, &self.headers)
    }

    fn clear(&mut self) {
        self.headers.clear();
    }
}

/// `envoy.config.core.v3.HeaderValue`; `Debug` shows the key only.
#[derive(Clone, PartialEq, prost::Message)]
#[prost(skip_debug)]
struct RawHeader {
    #[prost(bytes = "bytes", tag = "1")]
    key: Bytes,
    #[prost(bytes = "bytes", tag = "2")]
    value: Bytes,
    #[prost(bytes = "bytes", tag = "3")]
    raw_value: Bytes,
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

/// Decodes `bytes` both as [`CheckRequestView`] and with envoy-types' full
/// `CheckRequest`, and panics where both accept it but read a different
/// credential or different required roles: the fuzz target's property.
pub(crate) fn differential(bytes: &[u8]) {
    use envoy_types::pb::envoy::service::auth::v3::CheckRequest;
    use prost::Message as _;
    let (Ok(view), Ok(full)) = (CheckRequestView::decode(bytes), CheckRequest::decode(bytes))
    else {
        return;
    };
    let forwarded = ForwardedHeaders::of(&view);
    let attributes = full.attributes.unwrap_or_default();
    let http = attributes
        .request
        .unwrap_or_default()
        .http
        .unwrap_or_default();
    for name in ["authorization", "x-api-key"] {
        let matching: Vec<&String> = http
            .headers
            .keys()
            .filter(|k| k.eq_ignore_ascii_case(name))
            .collect();
        // A map with one key in two spellings has no order to agree on.
        if matching.len() > 1 {
            continue;
        }
        let mut expected: Vec<Vec<u8>> = matching
            .iter()
            .map(|k| http.headers[*k].as_bytes().to_vec())
            .collect();
        for header in http.header_map.iter().flat_map(|m| &m.headers) {
            if header.key.eq_ignore_ascii_case(name) {
                let raw = if header.raw_value.is_empty() {
                    header.value.as_bytes()
                } else {
                    &header.raw_value[..]
                };
                expected.push(raw.to_vec());
            }
        }
        let read: Vec<Vec<u8>> = credential::Headers::values(&forwarded, name)
            .map(<[u8]>::to_vec)
            .collect();
        assert_eq!(read, expected, "{name}");
    }
    let roles = view
        .attributes
        .as_ref()
        .and_then(|a| {
            a.context_extensions
                .iter()
                .rfind(|e| e.key == REQUIRED_ROLES.as_bytes())
        })
        .map(|e| e.value.to_vec());
    let expected = attributes
        .context_extensions
        .get(REQUIRED_ROLES)
        .map(|v| v.as_bytes().to_vec());
    assert_eq!(roles, expected, "{REQUIRED_ROLES}");
}

#[cfg(test)]
mod tests {
    use envoy_types::pb::envoy::{
        config::core::v3::{HeaderMap, HeaderValue},
        service::auth::v3::{AttributeContext, CheckRequest, attribute_context},
    };
    use prost::Message as _;

    use super::*;

    #[test]
    fn the_view_keeps_the_credential_headers_and_roles_of_what_envoy_sends() {
        let headers = [
            (":path", "/x"),
            ("X-Api-Key", "key"),
            ("user-agent", "ua"),
            ("authorization", "Bearer t"),
            ("cookie", "c"),
        ];
        let request = CheckRequest {
            attributes: Some(AttributeContext {
                request: Some(attribute_context::Request {
                    http: Some(attribute_context::HttpRequest {
                        method: "GET".into(),
                        body: "ignored".into(),
                        headers: headers
                            .iter()
                            .map(|(k, v)| (k.to_string(), v.to_string()))
                            .collect(),
                        header_map: Some(HeaderMap {
                            headers: headers
                                .iter()
                                .map(|(k, v)| HeaderValue {
                                    key: k.to_string(),
                                    raw_value: v.as_bytes().to_vec(),
                                    ..Default::default()
                                })
                                .collect(),
                        }),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                context_extensions: [
                    (REQUIRED_ROLES.to_string(), "a,b".to_string()),
                    ("other".to_string(), "x".to_string()),
                ]
                .into_iter()
                .collect(),
                ..Default::default()
            }),
        };
        let view = CheckRequestView::decode(request.encode_to_vec().as_slice()).unwrap();
        let forwarded = ForwardedHeaders::of(&view);
        let values = |name| {
            credential::Headers::values(&forwarded, name)
                .map(|v| String::from_utf8(v.to_vec()).unwrap())
                .collect::<Vec<_>>()
        };
        // Each credential header from both forms; nothing else kept.
        assert_eq!(values("x-api-key"), ["key", "key"]);
        assert_eq!(values("authorization"), ["Bearer t", "Bearer t"]);
        assert_eq!(forwarded.headers.len(), 2);
        assert_eq!(forwarded.raw.len(), 2);
        let extensions = &view.attributes.as_ref().unwrap().context_extensions;
        assert_eq!(extensions.len(), 1);
        assert_eq!(&extensions[0].value[..], b"a,b");
        // The credentials never show in Debug output.
        let debug = format!("{view:?}");
        assert!(
            !debug.contains("Bearer t") && !debug.contains("\"key\""),
            "{debug}"
        );
        // What is kept encodes back to what envoy-types reads.
        let again = CheckRequest::decode(view.encode_to_vec().as_slice()).unwrap();
        let http = again.attributes.unwrap().request.unwrap().http.unwrap();
        assert_eq!(http.headers.len(), 2);
        assert_eq!(http.header_map.unwrap().headers.len(), 2);
    }
}
