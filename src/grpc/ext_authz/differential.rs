//! The fuzz target's property: the request view and envoy-types' full
//! decoder agree on the credential, the required roles, the audience, the
//! source and the route of any bytes both accept.

use crate::credential;

use super::{
    AUDIENCE, REQUIRED_ROLES,
    view::{CheckRequestView, ForwardedHeaders},
};

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
    let source = attributes
        .source
        .as_ref()
        .and_then(|peer| peer.address.as_ref())
        .and_then(|address| match &address.address {
            Some(envoy_types::pb::envoy::config::core::v3::address::Address::SocketAddress(
                socket,
            )) => Some(socket.address.as_bytes().to_vec()),
            _ => None,
        });
    assert_eq!(view.source_address().map(<[u8]>::to_vec), source, "source");
    let full_http = attributes
        .request
        .as_ref()
        .and_then(|request| request.http.as_ref());
    assert_eq!(
        view.route().map(|(m, p)| (m.to_vec(), p.to_vec())),
        full_http.map(|h| (h.method.as_bytes().to_vec(), h.path.as_bytes().to_vec())),
        "route"
    );
    let audience = view.audience().map(<[u8]>::to_vec);
    let expected = attributes
        .context_extensions
        .get(AUDIENCE)
        .map(|v| v.as_bytes().to_vec());
    assert_eq!(audience, expected, "{AUDIENCE}");
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
    let roles = view.required_roles().map(<[u8]>::to_vec);
    let expected = attributes
        .context_extensions
        .get(REQUIRED_ROLES)
        .map(|v| v.as_bytes().to_vec());
    assert_eq!(roles, expected, "{REQUIRED_ROLES}");
}
