//! Reading the caller's credential from request headers, the two forms the
//! StackState API documents: `Authorization: ApiKey <token>` and
//! `X-API-Key: <token>`. Shared by every transport so they cannot disagree.

use http::HeaderMap;

use crate::token::MalformedToken;

/// Header values longer than this are refused before any other work.
pub const MAX_CREDENTIAL_BYTES: usize = 1024;

const AUTHORIZATION: &str = "authorization";
const X_API_KEY: &str = "x-api-key";
const SCHEME: &str = "ApiKey";

/// Why a request is not authenticated. Messages never include the credential.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("no credential: send `authorization: ApiKey <token>` or `x-api-key: <token>`")]
    Missing,
    #[error("the authorization header must use the ApiKey scheme: `authorization: ApiKey <token>`")]
    UnsupportedScheme,
    #[error("the authorization header names the ApiKey scheme but holds no token")]
    NoToken,
    #[error("the {0} header is sent more than once: send it once")]
    Repeated(&'static str),
    #[error("the credential headers disagree: send one token, once")]
    Ambiguous,
    #[error("the credential header is longer than {MAX_CREDENTIAL_BYTES} bytes")]
    TooLong,
    #[error("the credential is not a service token: {0}")]
    Malformed(MalformedToken),
    #[error("the service token is unknown or has been deleted")]
    NotFound,
    #[error("the service token has expired")]
    Expired,
    #[error("the service token is disabled")]
    Disabled,
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
        }
    }
}

/// The token the caller presents, not yet checked against the store.
pub fn presented(headers: &HeaderMap) -> Result<&str, AuthError> {
    let from_authorization = single(headers, AUTHORIZATION)?
        .map(|value| {
            let value = value.trim_matches(' ');
            let (scheme, token) = value.split_once(' ').unwrap_or((value, ""));
            if !scheme.eq_ignore_ascii_case(SCHEME) {
                return Err(AuthError::UnsupportedScheme);
            }
            let token = token.trim_matches(' ');
            if token.is_empty() {
                return Err(AuthError::NoToken);
            }
            Ok(token)
        })
        .transpose()?;
    let from_x_api_key = single(headers, X_API_KEY)?.map(|value| value.trim_matches(' '));
    match (from_authorization, from_x_api_key) {
        (None, None) | (None, Some("")) => Err(AuthError::Missing),
        (Some(token), None) | (None, Some(token)) => Ok(token),
        // Both are public-form credentials supplied by the same caller, so a
        // plain compare reveals nothing the caller does not already hold.
        (Some(a), Some(b)) if a == b => Ok(a),
        (Some(_), Some(_)) => Err(AuthError::Ambiguous),
    }
}

/// The one value of header `name`; a repeated header is refused, even
/// with equal values (a proxy may have appended one).
fn single<'h>(headers: &'h HeaderMap, name: &'static str) -> Result<Option<&'h str>, AuthError> {
    let mut values = headers.get_all(name).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(AuthError::Repeated(name));
    }
    if value.len() > MAX_CREDENTIAL_BYTES {
        return Err(AuthError::TooLong);
    }
    // Tokens are ASCII; anything else cannot be one.
    let value = value
        .to_str()
        .map_err(|_| AuthError::Malformed(MalformedToken::Alphabet))?;
    Ok(Some(value))
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
            presented(&headers(&[("authorization", "Bearer t")])),
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
    fn inner_spaces_are_kept_so_the_token_parse_rejects_them() {
        assert_eq!(
            presented(&headers(&[("authorization", "ApiKey a b")])),
            Ok("a b")
        );
    }
}
