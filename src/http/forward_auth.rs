//! Forward-auth for reverse proxies (`/api/auth` and any path below it):
//! the roles a route needs from the query, the service's decision, and
//! an allow written as headers.

use axum::{
    http::{HeaderMap, HeaderName, HeaderValue, StatusCode, request::Parts},
    response::{IntoResponse, Response},
};

use super::{HttpState, context, routes};
use crate::{
    authz::{Allow, ID_HEADER, NAME_HEADER, ROLES_HEADER},
    credential,
    error::Error,
    model::{FieldError, required_roles},
    rate_limit::Surface,
};

use super::api::{insert_expiration_text, insert_previous_flag, insert_rate_limits};

/// 200 with the identity in headers, 401 without a valid credential, 403
/// when `?role=` names a role the token lacks (repeated, `?role=a&role=b`,
/// or comma-separated, `?role=a,b`: every one is required; other
/// parameters are ignored, a proxy may add its own). Any method, so a proxy
/// can forward the original one, and any path below `/api/auth`, which is
/// how Envoy's HTTP ext_authz (`path_prefix`) asks. The service decides,
/// counts and audits.
///
/// What the router's routes and [`super::Front`]'s fast lane both run.
pub async fn forward_auth(state: HttpState, parts: Parts) -> Response {
    decide(&state, &parts)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

async fn decide(state: &HttpState, parts: &Parts) -> Result<Response, Error> {
    let request = &parts.headers;
    // Below `/api/auth` (Envoy's HTTP ext_authz), the path is the original
    // request's and so is the query: the audience comes from a header the
    // proxy sets instead. On `/api/auth` itself the proxy writes the whole
    // URL, query included.
    let suffix = parts
        .uri
        .path()
        .strip_prefix(routes::AUTH)
        .filter(|rest| rest.starts_with('/'))
        .map(|_| {
            parts
                .uri
                .path_and_query()
                .map_or(parts.uri.path(), |p| &p.as_str()[routes::AUTH.len()..])
        });
    let mut audience = None;
    let required = match parts.uri.query() {
        None => Vec::new(),
        Some(query) => {
            let pairs = url::form_urlencoded::parse(query.as_bytes());
            let mut lists = Vec::new();
            for (name, value) in pairs {
                if name == ROLE {
                    lists.push(value);
                } else if name == AUDIENCE {
                    if suffix.is_none() {
                        if audience.is_some() {
                            return Err(FieldError::new(AUDIENCE, "is given more than once").into());
                        }
                        audience = Some(value);
                    }
                } else if looks_like_a_setting(&name) {
                    // Ignored, it would open the route to any valid token.
                    return Err(FieldError::new(
                        name.into_owned(),
                        format!("is not a forward-auth setting; did you mean `{ROLE}`?"),
                    )
                    .into());
                }
            }
            required_roles(ROLE, lists.iter().map(|v| v.as_ref()))?
        }
    };
    if suffix.is_some() {
        audience = context::audience_header(parts);
    }
    let seen = context::forwarded(parts, suffix, audience);
    let caller = state
        .service
        .authorize(
            credential::presented(request),
            &required,
            &seen.context(),
            Surface::ForwardAuth,
        )
        .await?;
    let allow = Allow::of(
        &caller,
        |name| credential::Headers::values(request, name).next().is_some(),
        state.integrations.forward_credential,
    );
    // Headers written into the answer's own map: building a map and
    // handing it to axum copies it over, entry by entry.
    let mut response = StatusCode::OK.into_response();
    let headers = response.headers_mut();
    allow_headers(allow, headers)?;
    Ok(response)
}

/// Forward-auth's settings: the roles a token must hold, and the audience
/// the protected service is (on `/api/auth` only).
const ROLE: &str = "role";
const AUDIENCE: &str = "audience";
/// Every setting forward-auth reads from its query (add new ones here, so
/// their misspellings are refused too).
const SETTINGS: [&str; 2] = [ROLE, AUDIENCE];

/// Whether a query parameter that is not a setting looks like a misspelt
/// one: any case, a plural, a `[]` suffix (`Role`, `roles`, `role[]`).
/// Parameters a proxy passes through from its client are ignored, but one
/// of these was surely meant as a setting, and ignoring it opens the route.
fn looks_like_a_setting(name: &str) -> bool {
    let bare = name.strip_suffix("[]").unwrap_or(name);
    let bare = bare
        .strip_suffix('s')
        .or_else(|| bare.strip_suffix('S'))
        .unwrap_or(bare);
    SETTINGS
        .iter()
        .any(|setting| setting.eq_ignore_ascii_case(bare))
}

/// The header through which Envoy's HTTP ext_authz service names request
/// headers to remove.
const ENVOY_HEADERS_TO_REMOVE: &str = "x-envoy-auth-headers-to-remove";

/// Writes an allow into forward-auth's answer: the identity, the
/// expiration and previous-secret flag, and (for Envoy's HTTP ext_authz,
/// which removes what it names before the request goes on; other proxies
/// are told in their own config) the credential headers to remove.
fn allow_headers(allow: Allow, headers: &mut HeaderMap) -> Result<(), Error> {
    let Allow {
        identity,
        previous_secret,
        expiration,
        strip,
        rate_limits,
    } = allow;
    insert_expiration_text(expiration, headers);
    insert_rate_limits(rate_limits, headers);
    insert_previous_flag(previous_secret, headers);
    const NAMES: [HeaderName; 3] = [
        HeaderName::from_static(ID_HEADER),
        HeaderName::from_static(NAME_HEADER),
        HeaderName::from_static(ROLES_HEADER),
    ];
    for (name, (_, value)) in NAMES.into_iter().zip(identity) {
        // From the `String` itself: no copy.
        let value = HeaderValue::try_from(value)
            .map_err(|_| FieldError::new("name", "cannot be sent as a header"))?;
        headers.insert(name, value);
    }
    if let Some(names) = strip.joined() {
        headers.insert(
            const { HeaderName::from_static(ENVOY_HEADERS_TO_REMOVE) },
            HeaderValue::from_static(names),
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn misspellings_of_a_setting_are_told_apart_from_other_parameters() {
        for name in [
            "Role", "ROLE", "roles", "Roles", "role[]", "roles[]", "ROLES[]",
        ] {
            assert!(looks_like_a_setting(name), "{name}");
        }
        for name in ["page", "rolex", "r", "", "[]", "s", "user_role"] {
            assert!(!looks_like_a_setting(name), "{name}");
        }
    }
}
