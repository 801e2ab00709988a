//! What we read of Envoy's `CheckRequest`: [`CheckRequestView`], the few
//! fields `Check` needs, decoded with header names and values as slices of
//! the received bytes (everything else skipped unread), and
//! [`ForwardedHeaders`], the credential headers as the credential rules
//! read them.

use bytes::Bytes;
use prost::{
    DecodeError,
    encoding::{DecodeContext, WireType, message},
};

use crate::credential;

use super::{AUDIENCE, REQUIRED_ROLES};

/// The headers of the client's request as Envoy forwards them: `headers`
/// (its default; keys lower-cased, repeats joined with commas) or
/// `header_map` (with `encode_raw_headers`: repeats kept apart, values as
/// bytes). Read in place.
pub(super) struct ForwardedHeaders<'r> {
    headers: &'r [Entry],
    raw: &'r [RawHeader],
}

impl<'r> ForwardedHeaders<'r> {
    pub(super) fn of(request: &'r CheckRequestView) -> ForwardedHeaders<'r> {
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

    pub(super) fn contains(&self, name: &'static str) -> bool {
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

impl CheckRequestView {
    /// The route's [`REQUIRED_ROLES`] extension, as sent: a map's last
    /// entry for a key wins, as in protobuf's own decoding.
    pub(super) fn required_roles(&self) -> Option<&[u8]> {
        self.extension(REQUIRED_ROLES)
    }

    /// The route's [`AUDIENCE`] extension, as sent.
    pub(super) fn audience(&self) -> Option<&[u8]> {
        self.extension(AUDIENCE)
    }

    fn extension(&self, key: &str) -> Option<&[u8]> {
        self.attributes
            .as_ref()?
            .context_extensions
            .iter()
            .rfind(|e| e.key == key.as_bytes())
            .map(|e| &e.value[..])
    }

    /// The client's address as Envoy saw it (`source.address.socket_address.address`).
    pub(super) fn source_address(&self) -> Option<&[u8]> {
        let address = self
            .attributes
            .as_ref()?
            .source
            .as_ref()?
            .address
            .as_ref()?
            .socket_address
            .as_ref()?;
        Some(&address.address[..])
    }

    /// The request's method and target (path and query), as Envoy sent them.
    pub(super) fn route(&self) -> Option<(&[u8], &[u8])> {
        let http = self.attributes.as_ref()?.request.as_ref()?.http.as_ref()?;
        Some((&http.method[..], &http.path[..]))
    }
}

/// `envoy.service.auth.v3.AttributeContext`: `source`, `request`, and of
/// `context_extensions` (a map, on the wire a repeated key/value entry)
/// only [`REQUIRED_ROLES`] and [`AUDIENCE`].
#[derive(Clone, PartialEq, Default, Debug)]
struct AttributesView {
    source: Option<PeerView>,
    request: Option<RequestView>,
    context_extensions: Vec<Entry>,
}

/// `AttributeContext.Peer`: `address`.
#[derive(Clone, PartialEq, prost::Message)]
struct PeerView {
    #[prost(message, optional, tag = "1")]
    address: Option<AddressView>,
}

/// `envoy.config.core.v3.Address`: `socket_address`, one case of a
/// oneof, so a later `pipe` or internal address replaces it.
#[derive(Clone, PartialEq, Default, Debug)]
struct AddressView {
    socket_address: Option<SocketAddressView>,
}

impl prost::Message for AddressView {
    fn encode_raw(&self, buf: &mut impl bytes::BufMut) {
        if let Some(socket_address) = &self.socket_address {
            message::encode(1, socket_address, buf);
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
            1 => message::merge(
                wire_type,
                self.socket_address.get_or_insert_with(Default::default),
                buf,
                ctx,
            ),
            2 | 3 => {
                self.socket_address = None;
                prost::encoding::skip_field(wire_type, tag, buf, ctx)
            }
            _ => prost::encoding::skip_field(wire_type, tag, buf, ctx),
        }
    }

    fn encoded_len(&self) -> usize {
        self.socket_address
            .as_ref()
            .map_or(0, |a| message::encoded_len(1, a))
    }

    fn clear(&mut self) {
        *self = AddressView::default();
    }
}

/// `envoy.config.core.v3.SocketAddress`: `address`.
#[derive(Clone, PartialEq, prost::Message)]
struct SocketAddressView {
    #[prost(bytes = "bytes", tag = "2")]
    address: Bytes,
}

impl prost::Message for AttributesView {
    fn encode_raw(&self, buf: &mut impl bytes::BufMut) {
        if let Some(source) = &self.source {
            message::encode(1, source, buf);
        }
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
            1 => message::merge(
                wire_type,
                self.source.get_or_insert_with(Default::default),
                buf,
                ctx,
            ),
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
                |e: &Entry| e.key == REQUIRED_ROLES.as_bytes() || e.key == AUDIENCE.as_bytes(),
            ),
            _ => prost::encoding::skip_field(wire_type, tag, buf, ctx),
        }
    }

    fn encoded_len(&self) -> usize {
        self.source
            .as_ref()
            .map_or(0, |s| message::encoded_len(1, s))
            + self
                .request
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

/// `AttributeContext.HttpRequest`: `method`, `path`, and of `headers` (a
/// map) and `header_map`, only the credential headers. Envoy sends every
/// request header; the others are skipped as they arrive, so nothing is
/// kept for them.
#[derive(Clone, PartialEq, Default, Debug)]
struct HttpRequestView {
    method: Bytes,
    headers: Vec<Entry>,
    path: Bytes,
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
        if !self.method.is_empty() {
            prost::encoding::bytes::encode(2, &self.method, buf);
        }
        message::encode_repeated(3, &self.headers, buf);
        if !self.path.is_empty() {
            prost::encoding::bytes::encode(4, &self.path, buf);
        }
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
            2 => prost::encoding::bytes::merge(wire_type, &mut self.method, buf, ctx),
            4 => prost::encoding::bytes::merge(wire_type, &mut self.path, buf, ctx),
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
        let bytes = |tag: u32, value: &Bytes| {
            if value.is_empty() {
                0
            } else {
                prost::encoding::bytes::encoded_len(tag, value)
            }
        };
        bytes(2, &self.method)
            + message::encoded_len_repeated(3, &self.headers)
            + bytes(4, &self.path)
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
