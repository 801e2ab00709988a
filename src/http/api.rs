//! `/api/server/status`, `/api/server/info` and the forward-auth endpoint
//! `/api/auth` for reverse proxies.

use axum::{
    Json,
    http::{HeaderMap, HeaderName, HeaderValue, StatusCode, request::Parts},
    response::{IntoResponse, Response},
};
use serde::Serialize;

use super::{Caller, HttpState, caller, json};
use crate::{
    authz::{
        Allow, EXPIRATION_HEADER, ID_HEADER, NAME_HEADER, PREVIOUS_SECRET_HEADER, ROLES_HEADER,
        expiration_text,
    },
    credential,
    error::Error,
    model::{Etag, FieldError, MatchedSecret, Role, ServiceToken, required_roles},
    service::Authenticated,
};

const VERSION: &str = env!("CARGO_PKG_VERSION");

/// A version component cargo gives as decimal digits, as a number.
const fn number(digits: &str) -> u64 {
    let digits = digits.as_bytes();
    let mut value = 0;
    let mut i = 0;
    while i < digits.len() {
        value = value * 10 + (digits[i] - b'0') as u64;
        i += 1;
    }
    value
}

/// A token as StackState's API shows it: its fields (`id`, `name`, `roles`,
/// `expiration`) first and as StackState has them, times in epoch
/// milliseconds; the lifecycle fields after them.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TokenJson<'a> {
    pub id: u64,
    pub name: &'a str,
    pub roles: Vec<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expiration: Option<i64>,
    pub description: &'a str,
    pub labels: &'a std::collections::BTreeMap<String, String>,
    pub disabled: bool,
    pub created_at: i64,
    pub created_by: &'a str,
    pub updated_at: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_used_at: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub previous_secret_expiration: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub previous_secret_last_used_at: Option<i64>,
    /// For `If-Match` on PATCH and DELETE (the `ETag` header of GET too).
    pub etag: String,
}

impl<'a> From<&'a ServiceToken> for TokenJson<'a> {
    fn from(token: &'a ServiceToken) -> TokenJson<'a> {
        // Every field named: a new one must decide how REST shows it.
        let ServiceToken {
            id,
            name,
            roles,
            expiration,
            created_at,
            description,
            labels,
            disabled,
            last_used_at,
            created_by,
            updated_at,
            previous_secret,
        } = token;
        TokenJson {
            id: id.get(),
            name: name.as_str(),
            roles: roles.iter().map(Role::as_str).collect(),
            expiration: expiration.map(epoch_millis),
            description: description.as_str(),
            labels: labels.as_map(),
            disabled: *disabled,
            created_at: epoch_millis(*created_at),
            created_by,
            updated_at: epoch_millis(*updated_at),
            last_used_at: last_used_at.map(epoch_millis),
            previous_secret_expiration: previous_secret.map(|p| epoch_millis(p.expiration)),
            previous_secret_last_used_at: previous_secret
                .and_then(|p| p.last_used_at)
                .map(epoch_millis),
            etag: Etag::of(token).to_string(),
        }
    }
}

use crate::clock::epoch_millis;

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StatusJson<'a> {
    version: &'static str,
    uptime_seconds: u64,
    service_token: TokenJson<'a>,
}

/// The answer to a status request with `parts`: the caller's token, 401
/// without a valid credential. What the router's route and [`super::Front`]'s
/// fast lane both run.
pub async fn status(state: HttpState, parts: Parts) -> Response {
    match caller::authenticate(&state, &parts.headers).await {
        Ok(caller) => status_of(&state, &caller),
        Err(refused) => refused.into_response(),
    }
}

fn status_of(state: &HttpState, caller: &Authenticated) -> Response {
    let body = StatusJson {
        version: VERSION,
        uptime_seconds: state.started.elapsed().as_secs(),
        service_token: TokenJson::from(&caller.token),
    };
    (caller_headers(caller), json(&body)).into_response()
}

/// What every answer accepted through a credential says of it:
/// [`EXPIRATION_HEADER`] for a token that expires, and
/// [`PREVIOUS_SECRET_HEADER`] when the secret was a rotated-out one, so
/// its holder learns to switch before the grace period ends.
fn caller_headers(caller: &Authenticated) -> HeaderMap {
    let mut headers = HeaderMap::new();
    insert_expiration(&caller.token, &mut headers);
    insert_previous_secret(caller, &mut headers);
    headers
}

pub(super) fn insert_previous_secret(caller: &Authenticated, headers: &mut HeaderMap) {
    insert_previous_flag(caller.secret == MatchedSecret::Previous, headers);
}

/// Adds [`PREVIOUS_SECRET_HEADER`] (`true`) when `previous` is.
fn insert_previous_flag(previous: bool, headers: &mut HeaderMap) {
    if previous {
        headers.insert(
            const { HeaderName::from_static(PREVIOUS_SECRET_HEADER) },
            HeaderValue::from_static("true"),
        );
    }
}

/// Adds [`EXPIRATION_HEADER`] to `headers` if the token expires.
fn insert_expiration(token: &ServiceToken, headers: &mut HeaderMap) {
    insert_expiration_text(expiration_text(token), headers);
}

/// Adds [`EXPIRATION_HEADER`] with `text`, when there is one.
fn insert_expiration_text(text: Option<String>, headers: &mut HeaderMap) {
    if let Some(text) = text {
        let value = HeaderValue::try_from(text).expect("an RFC 3339 time is a header value");
        headers.insert(const { HeaderName::from_static(EXPIRATION_HEADER) }, value);
    }
}

#[derive(Serialize)]
pub struct InfoJson {
    version: VersionJson,
}

#[derive(Serialize)]
pub struct VersionJson {
    major: u64,
    minor: u64,
    patch: u64,
    diff: &'static str,
}

pub async fn info(Caller(caller): Caller) -> (HeaderMap, Json<InfoJson>) {
    let body = Json(InfoJson {
        version: VersionJson {
            major: const { number(env!("CARGO_PKG_VERSION_MAJOR")) },
            minor: const { number(env!("CARGO_PKG_VERSION_MINOR")) },
            patch: const { number(env!("CARGO_PKG_VERSION_PATCH")) },
            diff: env!("CARGO_PKG_VERSION_PRE"),
        },
    });
    (caller_headers(&caller), body)
}

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
    let required = match parts.uri.query() {
        None => Vec::new(),
        Some(query) => {
            let pairs = url::form_urlencoded::parse(query.as_bytes());
            let mut lists = Vec::new();
            for (name, value) in pairs {
                if name == ROLE {
                    lists.push(value);
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
    let caller = state
        .service
        .authorize(credential::presented(request), &required)
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

/// Forward-auth's one setting: the roles a token must hold.
const ROLE: &str = "role";
/// Every setting forward-auth reads from its query (add new ones here, so
/// their misspellings are refused too).
const SETTINGS: [&str; 1] = [ROLE];

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
    } = allow;
    insert_expiration_text(expiration, headers);
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
