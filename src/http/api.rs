//! `/api/server/status` and `/api/server/info`: a caller's own token as
//! StackState shows it, and the identity headers every allowed check
//! answers with (`TokenJson`, `insert_*`).

use axum::{
    Json,
    http::{HeaderMap, HeaderName, HeaderValue, request::Parts},
    response::{IntoResponse, Response},
};
use serde::Serialize;

use super::{Caller, HttpState, caller, json};
use crate::{
    authz::{
        EXPIRATION_HEADER, PREVIOUS_SECRET_HEADER, RATELIMIT_HEADER, RATELIMIT_POLICY_HEADER,
        RateLimitFields, expiration_text,
    },
    model::{
        Bindings, Etag, FieldError, MatchedSecret, RateLimit, RateLimits, Role, RouteParts,
        ServiceToken,
    },
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
    /// The bindings and where it was used from: to managers only, each
    /// left out while empty (so an unbound token's shape is as before).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub allowed_sources: Vec<String>,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    pub audiences: &'a [String],
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub allowed_routes: Vec<RouteParts>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub recent_sources: Vec<RecentSourceJson>,
    /// To managers only, left out while there are none.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub rate_limits: Vec<RateLimitJson>,
    /// To managers only: the manager token that owns it, left out for an
    /// admin's token.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub owner_id: Option<u64>,
}

/// A rate limit as REST shows and takes it.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RateLimitJson {
    pub name: String,
    pub limit: u64,
    pub period_seconds: u64,
}

impl RateLimitJson {
    pub fn of(limits: &RateLimits) -> Vec<RateLimitJson> {
        limits
            .as_slice()
            .iter()
            .map(|limit| RateLimitJson {
                name: limit.name().to_owned(),
                limit: limit.limit(),
                period_seconds: limit.period_secs(),
            })
            .collect()
    }

    /// The limits `items` give, each checked (`field[1]` names a bad one).
    pub fn parse(field: &str, items: &[RateLimitJson]) -> Result<RateLimits, FieldError> {
        let limits = items
            .iter()
            .enumerate()
            .map(|(at, item)| {
                RateLimit::new(
                    &format!("{field}[{at}]"),
                    &item.name,
                    item.limit,
                    std::time::Duration::from_secs(item.period_seconds),
                )
            })
            .collect::<Result<Vec<_>, _>>()?;
        RateLimits::new(field, limits)
    }
}

/// A recent source as REST shows it.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RecentSourceJson {
    pub address: String,
    pub last_seen_at: i64,
}

impl<'a> TokenJson<'a> {
    /// A token as a check answers it (`/api/server/status`): who it is,
    /// never where else it may be or was used (and those lists are not
    /// even built: a check must not pay for them).
    pub fn checked(token: &'a ServiceToken) -> TokenJson<'a> {
        TokenJson::shown(token, false)
    }

    fn shown(token: &'a ServiceToken, to_manager: bool) -> TokenJson<'a> {
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
            bindings:
                Bindings {
                    sources,
                    audiences,
                    routes,
                },
            recent_sources,
            rate_limits,
            owners,
            // gRPC's `lifetime` and `describe` show it; REST keeps the
            // shape every token had (StackState's, plus what is set).
            lifetime: _,
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
            allowed_sources: if to_manager {
                sources.texts()
            } else {
                Vec::new()
            },
            audiences: if to_manager {
                audiences.as_slice()
            } else {
                &[]
            },
            allowed_routes: if to_manager {
                RouteParts::of(routes)
            } else {
                Vec::new()
            },
            recent_sources: if to_manager {
                recent_sources
                    .iter()
                    .map(|(address, at)| RecentSourceJson {
                        address: address.to_string(),
                        last_seen_at: epoch_millis(at),
                    })
                    .collect()
            } else {
                Vec::new()
            },
            rate_limits: if to_manager {
                RateLimitJson::of(rate_limits)
            } else {
                Vec::new()
            },
            owner_id: owners
                .direct()
                .filter(|_| to_manager)
                .map(|owner| owner.get()),
        }
    }
}

impl<'a> From<&'a ServiceToken> for TokenJson<'a> {
    /// A token as its managers see it.
    fn from(token: &'a ServiceToken) -> TokenJson<'a> {
        TokenJson::shown(token, true)
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
    match caller::authenticate(&state, &parts).await {
        Ok(caller) => status_of(&state, &caller),
        Err(refused) => refused.into_response(),
    }
}

fn status_of(state: &HttpState, caller: &Authenticated) -> Response {
    let body = StatusJson {
        version: VERSION,
        uptime_seconds: state.started.elapsed().as_secs(),
        service_token: TokenJson::checked(&caller.token),
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
    insert_rate_limits(RateLimitFields::of(&caller.quota), &mut headers);
    headers
}

/// Adds the rate-limit fields, when the token has limits: the policy's
/// shared bytes as they are, this check's state.
pub(super) fn insert_rate_limits(fields: Option<RateLimitFields>, headers: &mut HeaderMap) {
    let Some(RateLimitFields { policy, state }) = fields else {
        return;
    };
    // Both are ASCII of the structured-field syntax; a value that is not
    // a header value would be a bug of ours, and is left out.
    if let (Ok(policy), Ok(state)) = (
        HeaderValue::from_maybe_shared(policy),
        HeaderValue::try_from(state),
    ) {
        headers.insert(
            const { HeaderName::from_static(RATELIMIT_POLICY_HEADER) },
            policy,
        );
        headers.insert(const { HeaderName::from_static(RATELIMIT_HEADER) }, state);
    }
}

pub(super) fn insert_previous_secret(caller: &Authenticated, headers: &mut HeaderMap) {
    insert_previous_flag(caller.secret == MatchedSecret::Previous, headers);
}

/// Adds [`PREVIOUS_SECRET_HEADER`] (`true`) when `previous` is.
pub(super) fn insert_previous_flag(previous: bool, headers: &mut HeaderMap) {
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
pub(super) fn insert_expiration_text(text: Option<String>, headers: &mut HeaderMap) {
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
