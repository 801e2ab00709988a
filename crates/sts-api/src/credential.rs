//! Reading the caller's credential from request headers: the two forms the
//! StackState API documents, `Authorization: ApiKey <token>` and
//! `X-API-Key: <token>`, and `Authorization: Bearer <token>`, what
//! Kubernetes, Envoy and OAuth 2.0 clients send. Shared by every transport
//! (and by ext_authz for the headers Envoy forwards) so they cannot disagree.

use std::borrow::Cow;

use http::{HeaderMap, HeaderName};

use crate::token::MalformedToken;

/// Header values longer than this are refused before any other work.
pub const MAX_CREDENTIAL_BYTES: usize = 1024;

const AUTHORIZATION: &str = "authorization";
const X_API_KEY: &str = "x-api-key";
/// Schemes of `Authorization` that carry a service token as it is.
const SCHEMES: [&str; 2] = ["ApiKey", "Bearer"];
const BASIC: &str = "Basic";

/// Why a request is not authenticated. Messages never include the credential.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// Neither header carries a credential.
    #[error(
        "no credential: send `authorization: ApiKey <token>`, `authorization: Bearer <token>` or `x-api-key: <token>`"
    )]
    Missing,
    /// `Authorization` names a scheme that does not carry a service token.
    #[error(
        "the authorization header must use the ApiKey or Bearer scheme: `authorization: ApiKey <token>`"
    )]
    UnsupportedScheme,
    /// `Authorization` names its scheme and nothing else.
    #[error("the authorization header names its scheme but holds no token")]
    NoToken,
    /// A credential header is sent more than once (it names which).
    #[error("the {0} header is sent more than once: send it once")]
    Repeated(&'static str),
    /// `Authorization` and `X-API-Key` carry different tokens.
    #[error("the credential headers disagree: send one token, once")]
    Ambiguous,
    /// A credential header is longer than [`MAX_CREDENTIAL_BYTES`].
    #[error("the credential header is longer than {MAX_CREDENTIAL_BYTES} bytes")]
    TooLong,
    /// What the headers carry is not a well-formed token.
    #[error("the credential is not a service token: {0}")]
    Malformed(MalformedToken),
    /// Well-formed, but no token has this secret.
    #[error("the service token is unknown or has been deleted")]
    NotFound,
    /// The token's expiration has passed.
    #[error("the service token has expired")]
    Expired,
    /// The token is disabled.
    #[error("the service token is disabled")]
    Disabled,
    /// A previous secret, still in its rotation's grace period, presented
    /// to manage tokens: it passes checks, never management, so a leaked
    /// old secret cannot take its token over from the new one.
    #[error(
        "a rotated-out secret cannot manage tokens: it still passes checks during its grace period, but management needs the token's current secret"
    )]
    RotatedOut,
}

impl AuthError {
    /// A short, fixed label for metrics and aggregated audit events.
    pub fn as_str(&self) -> &'static str {
        match self {
            AuthError::Missing => "missing",
            AuthError::UnsupportedScheme => "unsupported_scheme",
            AuthError::NoToken => "no_token",
            AuthError::Repeated(_) => "repeated",
            AuthError::Ambiguous => "ambiguous",
            AuthError::TooLong => "too_long",
            AuthError::Malformed(_) => "malformed",
            AuthError::NotFound => "not_found",
            AuthError::Expired => "expired",
            AuthError::Disabled => "disabled",
            AuthError::RotatedOut => "previous_secret",
        }
    }
}

/// The headers a credential may arrive in, lower-case: what a proxy
/// removes before the request goes on.
pub const HEADERS: [&str; 2] = [AUTHORIZATION, X_API_KEY];

/// The token the caller presents, not yet checked against the store.
pub fn presented<H: Headers + ?Sized>(headers: &H) -> Result<&str, AuthError> {
    let from_authorization = single(headers, AUTHORIZATION)?
        .map(|value| {
            let (scheme, token) = split_authorization(value);
            token_scheme(scheme, token)
        })
        .transpose()?;
    one_of(from_authorization, single(headers, X_API_KEY)?, |t| t)
}

/// As [`presented`], also taking HTTP Basic with the token as the password
/// (the user name is ignored): how OAuth 2.0 clients authenticate to
/// introspection (RFC 7662 section 2.1, RFC 6749 section 2.3.1). Basic's
/// password is decoded, hence the `Cow`.
pub fn presented_or_basic<H: Headers + ?Sized>(headers: &H) -> Result<Cow<'_, str>, AuthError> {
    let from_authorization = single(headers, AUTHORIZATION)?
        .map(|value| match split_authorization(value) {
            (scheme, token) if scheme.eq_ignore_ascii_case(BASIC) => {
                basic_password(token).map(Cow::Owned)
            }
            (scheme, token) => token_scheme(scheme, token).map(Cow::Borrowed),
        })
        .transpose()?;
    one_of(
        from_authorization,
        single(headers, X_API_KEY)?,
        Cow::Borrowed,
    )
}

/// The token of the two headers' that the caller sent.
fn one_of<'h, T: AsRef<str>>(
    from_authorization: Option<T>,
    from_x_api_key: Option<&'h str>,
    wrap: impl FnOnce(&'h str) -> T,
) -> Result<T, AuthError> {
    match (
        from_authorization,
        from_x_api_key.map(|v| v.trim_matches(' ')),
    ) {
        (None, None) | (None, Some("")) => Err(AuthError::Missing),
        (Some(token), None) => Ok(token),
        (None, Some(token)) => Ok(wrap(token)),
        // Both are public-form credentials supplied by the same caller, so a
        // plain compare reveals nothing the caller does not already hold.
        (Some(a), Some(b)) if a.as_ref() == b => Ok(a),
        (Some(_), Some(_)) => Err(AuthError::Ambiguous),
    }
}

/// `<scheme> <credentials>`, spaces around either trimmed.
fn split_authorization(value: &str) -> (&str, &str) {
    let value = value.trim_matches(' ');
    let (scheme, rest) = value.split_once(' ').unwrap_or((value, ""));
    (scheme, rest.trim_matches(' '))
}

/// The token of `ApiKey <token>` or `Bearer <token>`.
fn token_scheme<'h>(scheme: &str, token: &'h str) -> Result<&'h str, AuthError> {
    if !SCHEMES.iter().any(|s| scheme.eq_ignore_ascii_case(s)) {
        return Err(AuthError::UnsupportedScheme);
    }
    if token.is_empty() {
        return Err(AuthError::NoToken);
    }
    Ok(token)
}

/// The password of Basic's `base64(user ":" password)`; what does not
/// decode cannot hold a token.
fn basic_password(encoded: &str) -> Result<String, AuthError> {
    use base64::Engine as _;
    if encoded.is_empty() {
        return Err(AuthError::NoToken);
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .ok()
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .ok_or(AuthError::Malformed(MalformedToken::Alphabet))?;
    match decoded.split_once(':') {
        Some((_, password)) if !password.is_empty() => Ok(password.to_owned()),
        _ => Err(AuthError::NoToken),
    }
}

/// The one value of header `name`; a repeated header is refused, even
/// with equal values (a proxy may have appended one).
fn single<'h, H: Headers + ?Sized>(
    headers: &'h H,
    name: &'static str,
) -> Result<Option<&'h str>, AuthError> {
    let mut values = headers.values(name);
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(AuthError::Repeated(name));
    }
    if value.len() > MAX_CREDENTIAL_BYTES {
        return Err(AuthError::TooLong);
    }
    // Tokens are ASCII; anything else cannot be one (the rule of
    // `HeaderValue::to_str`: visible ASCII, spaces and tabs). Every byte
    // looked at, without a branch per byte, so the compiler vectorises it.
    let visible = value.iter().fold(true, |ok, &b| {
        ok & ((b == b'\t') | (b' '..=b'~').contains(&b))
    });
    if !visible {
        return Err(AuthError::Malformed(MalformedToken::Alphabet));
    }
    let value =
        std::str::from_utf8(value).map_err(|_| AuthError::Malformed(MalformedToken::Alphabet))?;
    Ok(Some(value))
}

/// Where credential headers are read from: an HTTP request's or gRPC
/// call's headers, or the headers Envoy forwards in an ext_authz `Check`
/// (read in place, without building a `HeaderMap` per check).
pub trait Headers {
    /// Every value of header `name` (given lower-case), in order.
    fn values<'h>(&'h self, name: &'static str) -> impl Iterator<Item = &'h [u8]> + 'h;
}

impl Headers for HeaderMap {
    fn values<'h>(&'h self, name: &'static str) -> impl Iterator<Item = &'h [u8]> + 'h {
        // The credential headers as ready-made names: a `&str` name is
        // parsed again on every lookup.
        const NAMES: [HeaderName; 2] = [
            HeaderName::from_static(AUTHORIZATION),
            HeaderName::from_static(X_API_KEY),
        ];
        match NAMES.iter().find(|known| known.as_str() == name) {
            Some(known) => self.get_all(known),
            None => self.get_all(name),
        }
        .iter()
        .map(|v| v.as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, HeaderValue::from_str(value).unwrap());
        }
        map
    }

    #[test]
    fn both_documented_forms_are_read() {
        assert_eq!(
            presented(&headers(&[("authorization", "ApiKey t")])),
            Ok("t")
        );
        assert_eq!(
            presented(&headers(&[("authorization", "apikey t")])),
            Ok("t")
        );
        assert_eq!(
            presented(&headers(&[("authorization", "APIKEY  t ")])),
            Ok("t")
        );
        assert_eq!(presented(&headers(&[("x-api-key", "t")])), Ok("t"));
        assert_eq!(
            presented(&headers(&[("authorization", "Bearer t")])),
            Ok("t")
        );
        assert_eq!(
            presented(&headers(&[
                ("authorization", "bearer t"),
                ("x-api-key", "t")
            ])),
            Ok("t")
        );
        assert_eq!(
            presented(&headers(&[
                ("x-api-key", "t"),
                ("authorization", "ApiKey t")
            ])),
            Ok("t")
        );
    }

    #[test]
    fn missing_ambiguous_and_foreign_credentials_are_refused() {
        assert_eq!(presented(&HeaderMap::new()), Err(AuthError::Missing));
        assert_eq!(
            presented(&headers(&[("x-api-key", "")])),
            Err(AuthError::Missing)
        );
        assert_eq!(
            presented(&headers(&[("authorization", "ApiKey ")])),
            Err(AuthError::NoToken)
        );
        assert_eq!(
            presented(&headers(&[("authorization", "ApiKey")])),
            Err(AuthError::NoToken)
        );
        assert_eq!(
            presented(&headers(&[("authorization", "Token t")])),
            Err(AuthError::UnsupportedScheme)
        );
        assert_eq!(
            presented(&headers(&[("authorization", "Basic dTp0")])),
            Err(AuthError::UnsupportedScheme)
        );
        assert_eq!(
            presented(&headers(&[("authorization", "Basic")])),
            Err(AuthError::UnsupportedScheme)
        );
        assert_eq!(
            presented(&headers(&[
                ("x-api-key", "a"),
                ("authorization", "ApiKey b")
            ])),
            Err(AuthError::Ambiguous)
        );
        assert_eq!(
            presented(&headers(&[("x-api-key", "a"), ("x-api-key", "a")])),
            Err(AuthError::Repeated("x-api-key"))
        );
        assert_eq!(
            AuthError::Repeated("x-api-key").to_string(),
            "the x-api-key header is sent more than once: send it once"
        );
        assert_eq!(
            presented(&headers(&[(
                "x-api-key",
                &"a".repeat(MAX_CREDENTIAL_BYTES + 1)
            )])),
            Err(AuthError::TooLong)
        );
    }

    #[test]
    fn basic_carries_the_token_as_its_password_where_it_is_allowed() {
        // base64("introspector:t"): the user name is ignored.
        assert_eq!(
            presented_or_basic(&headers(&[("authorization", "Basic aW50cm9zcGVjdG9yOnQ=")]))
                .as_deref(),
            Ok("t")
        );
        assert_eq!(
            presented_or_basic(&headers(&[
                ("authorization", "Basic aW50cm9zcGVjdG9yOnQ="),
                ("x-api-key", "u")
            ])),
            Err(AuthError::Ambiguous)
        );
        // base64("user") has no colon; base64("user:") an empty password.
        for empty in ["Basic dXNlcg==", "Basic dXNlcjo=", "Basic"] {
            assert_eq!(
                presented_or_basic(&headers(&[("authorization", empty)])),
                Err(AuthError::NoToken),
                "{empty}"
            );
        }
        assert_eq!(
            presented_or_basic(&headers(&[("authorization", "Basic !!!")])),
            Err(AuthError::Malformed(MalformedToken::Alphabet))
        );
        assert_eq!(
            presented_or_basic(&headers(&[("authorization", "Bearer t")])).as_deref(),
            Ok("t")
        );
    }

    #[test]
    fn inner_spaces_are_kept_so_the_token_parse_rejects_them() {
        assert_eq!(
            presented(&headers(&[("authorization", "ApiKey a b")])),
            Ok("a b")
        );
    }
}
