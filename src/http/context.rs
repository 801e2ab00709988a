//! What an HTTP check knows of the request a token is used for
//! ([`Seen`]): for a request to this server (status, management, a
//! reviewer's own credential) the request itself; for forward-auth the
//! original request as a trusted proxy describes it, and nothing a client
//! could have written itself.
//!
//! Why the rules are this strict: forward-auth's own request comes from
//! the proxy, but a proxy passes its client's headers along (nginx's
//! `auth_request` and Traefik pass them all), so a header is believed only
//! from a trusted proxy, only once, and only where the two families that
//! name the original request (`X-Forwarded-Method`/`-Uri` from Traefik and
//! Caddy, `X-Original-Method`/`-URI` from nginx) agree. Anything else is
//! unknown, which refuses a token bound to it.

use std::{borrow::Cow, net::IpAddr};

use axum::http::{HeaderMap, HeaderName, request::Parts};

use crate::{model::CheckContext, source};

/// The header a trusted proxy sets to name the audience on
/// `/api/auth/<path>`, whose query is the client's.
pub const AUDIENCE_HEADER: &str = "x-sts-audience";

const X_FORWARDED_METHOD: HeaderName = HeaderName::from_static("x-forwarded-method");
const X_FORWARDED_URI: HeaderName = HeaderName::from_static("x-forwarded-uri");
const X_ORIGINAL_METHOD: HeaderName = HeaderName::from_static("x-original-method");
const X_ORIGINAL_URI: HeaderName = HeaderName::from_static("x-original-uri");

/// What a check saw of a request, owned where it had to be decoded.
#[derive(Debug, Default)]
pub struct Seen<'r> {
    pub source: Option<IpAddr>,
    pub audience: Option<Cow<'r, str>>,
    pub route: Option<(&'r str, &'r str)>,
}

impl Seen<'_> {
    pub fn context(&self) -> CheckContext<'_> {
        CheckContext {
            source: self.source,
            audience: self.audience.as_deref(),
            route: self.route,
        }
    }
}

/// A request made to this server itself: its source (through the trusted
/// proxies), its own method and path, and no audience.
pub fn of_request(parts: &Parts) -> Seen<'_> {
    Seen {
        source: source::of(&parts.extensions),
        audience: None,
        route: Some((parts.method.as_str(), parts.uri.path())),
    }
}

/// A forward-auth request: the client's source, and, only from a trusted
/// proxy, the original method and target; `suffix` is the path below
/// `/api/auth` (Envoy's HTTP ext_authz asks with the original path there),
/// `audience` what the proxy's configuration names.
pub fn forwarded<'r>(
    parts: &'r Parts,
    suffix: Option<&'r str>,
    audience: Option<Cow<'r, str>>,
) -> Seen<'r> {
    let trusted = source::via_trusted_proxy(&parts.extensions);
    let route = if trusted {
        original_route(&parts.headers, || {
            suffix.map(|path| (parts.method.as_str(), path))
        })
    } else {
        None
    };
    Seen {
        source: source::of(&parts.extensions),
        audience,
        route,
    }
}

/// The audience a trusted proxy names in [`AUDIENCE_HEADER`] (sent once).
pub fn audience_header(parts: &Parts) -> Option<Cow<'_, str>> {
    if !source::via_trusted_proxy(&parts.extensions) {
        return None;
    }
    once(&parts.headers, &HeaderName::from_static(AUDIENCE_HEADER))
        .ok()
        .flatten()
        .map(Cow::Borrowed)
}

/// The original request's method and target from the proxy's headers; the
/// request's own line (`fallback`) only when the proxy sent neither family.
fn original_route<'r>(
    headers: &'r HeaderMap,
    fallback: impl FnOnce() -> Option<(&'r str, &'r str)>,
) -> Option<(&'r str, &'r str)> {
    let pair = |method: &HeaderName, uri: &HeaderName| -> Result<Option<(&'r str, &'r str)>, ()> {
        match (once(headers, method)?, once(headers, uri)?) {
            (Some(method), Some(uri)) => Ok(Some((method, uri))),
            (None, None) => Ok(None),
            // Half a description is a client's, or a broken proxy's.
            _ => Err(()),
        }
    };
    let forwarded = pair(&X_FORWARDED_METHOD, &X_FORWARDED_URI).ok()?;
    let original = pair(&X_ORIGINAL_METHOD, &X_ORIGINAL_URI).ok()?;
    match (forwarded, original) {
        (Some(a), Some(b)) => (a == b).then_some(a),
        (Some(one), None) | (None, Some(one)) => Some(one),
        (None, None) => fallback(),
    }
}

/// A header sent at most once, as text: `Err` when repeated or not
/// visible ASCII (then nothing it says is believed).
fn once<'h>(headers: &'h HeaderMap, name: &HeaderName) -> Result<Option<&'h str>, ()> {
    let mut values = headers.get_all(name).iter();
    let Some(first) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(());
    }
    first.to_str().map(Some).map_err(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                value.parse().unwrap(),
            );
        }
        map
    }

    fn route<'a>(
        map: &'a HeaderMap,
        fallback: Option<(&'a str, &'a str)>,
    ) -> Option<(&'a str, &'a str)> {
        original_route(map, || fallback)
    }

    #[test]
    fn either_family_names_the_route_and_both_must_agree() {
        let traefik = headers(&[("x-forwarded-method", "GET"), ("x-forwarded-uri", "/a?b")]);
        assert_eq!(route(&traefik, None), Some(("GET", "/a?b")));
        let nginx = headers(&[("x-original-method", "POST"), ("x-original-uri", "/c")]);
        assert_eq!(route(&nginx, None), Some(("POST", "/c")));
        let agree = headers(&[
            ("x-forwarded-method", "GET"),
            ("x-forwarded-uri", "/a"),
            ("x-original-method", "GET"),
            ("x-original-uri", "/a"),
        ]);
        assert_eq!(route(&agree, None), Some(("GET", "/a")));
        // A client's X-Forwarded-Uri beside nginx's X-Original-URI.
        let spoofed = headers(&[
            ("x-forwarded-method", "GET"),
            ("x-forwarded-uri", "/admin"),
            ("x-original-method", "GET"),
            ("x-original-uri", "/public"),
        ]);
        assert_eq!(route(&spoofed, None), None);
    }

    #[test]
    fn a_repeated_or_half_description_is_unknown_and_never_falls_back() {
        let repeated = headers(&[
            ("x-forwarded-method", "GET"),
            ("x-forwarded-uri", "/a"),
            ("x-forwarded-uri", "/b"),
        ]);
        assert_eq!(route(&repeated, Some(("GET", "/x"))), None);
        let half = headers(&[("x-original-uri", "/a")]);
        assert_eq!(route(&half, Some(("GET", "/x"))), None);
        assert_eq!(
            route(&HeaderMap::new(), Some(("GET", "/x"))),
            Some(("GET", "/x"))
        );
    }
}
