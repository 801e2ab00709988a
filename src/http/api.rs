//! `/api/server/status`, `/api/server/info` and the forward-auth endpoint
//! `/api/auth` for reverse proxies.

use std::time::SystemTime;

use axum::{
    Json,
    extract::{RawQuery, State},
    http::{HeaderMap, HeaderName, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
};
use serde::Serialize;

use super::{Caller, HttpState};
use crate::{
    error::Error,
    model::{FieldError, Role, Secret, ServiceToken},
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

/// Identity headers `/api/auth` answers with, for proxies to pass on.
pub const ID_HEADER: &str = "x-service-token-id";
pub const NAME_HEADER: &str = "x-service-token-name";
pub const ROLES_HEADER: &str = "x-service-token-roles";
/// Sent (`true`) when the caller used a secret rotated out by Rotate, in its
/// grace period, so whoever reads it can warn the client to switch.
pub const PREVIOUS_SECRET_HEADER: &str = "x-service-token-previous-secret";

/// A token as StackState's API shows it: its fields (`id`, `name`, `roles`,
/// `expiration`) first and as StackState has them, times in epoch
/// milliseconds; the lifecycle fields after them.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TokenJson {
    pub id: u64,
    pub name: String,
    pub roles: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expiration: Option<i64>,
    pub description: String,
    pub labels: std::collections::BTreeMap<String, String>,
    pub disabled: bool,
    pub created_at: i64,
    pub created_by: String,
    pub updated_at: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_used_at: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub previous_secret_expiration: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub previous_secret_last_used_at: Option<i64>,
}

impl From<&ServiceToken> for TokenJson {
    fn from(token: &ServiceToken) -> TokenJson {
        let previous = token.previous_secret;
        TokenJson {
            id: token.id.get(),
            name: token.name.as_str().to_owned(),
            roles: token.roles.iter().map(|r| r.as_str().to_owned()).collect(),
            expiration: token.expiration.map(epoch_millis),
            description: token.description.as_str().to_owned(),
            labels: token.labels.as_map().clone(),
            disabled: token.disabled,
            created_at: epoch_millis(token.created_at),
            created_by: token.created_by.clone(),
            updated_at: epoch_millis(token.updated_at),
            last_used_at: token.last_used_at.map(epoch_millis),
            previous_secret_expiration: previous.map(|p| epoch_millis(p.expiration)),
            previous_secret_last_used_at: previous.and_then(|p| p.last_used_at).map(epoch_millis),
        }
    }
}

pub fn epoch_millis(time: SystemTime) -> i64 {
    match time.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(after) => i64::try_from(after.as_millis()).unwrap_or(i64::MAX),
        Err(before) => -i64::try_from(before.duration().as_millis()).unwrap_or(i64::MAX),
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StatusJson {
    version: &'static str,
    uptime_seconds: u64,
    service_token: TokenJson,
}

pub async fn status(State(state): State<HttpState>, Caller(caller): Caller) -> Json<StatusJson> {
    Json(StatusJson {
        version: VERSION,
        uptime_seconds: state.started.elapsed().as_secs(),
        service_token: TokenJson::from(&caller.token),
    })
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

pub async fn info(Caller(_): Caller) -> Json<InfoJson> {
    Json(InfoJson {
        version: VersionJson {
            major: const { number(env!("CARGO_PKG_VERSION_MAJOR")) },
            minor: const { number(env!("CARGO_PKG_VERSION_MINOR")) },
            patch: const { number(env!("CARGO_PKG_VERSION_PATCH")) },
            diff: env!("CARGO_PKG_VERSION_PRE"),
        },
    })
}

/// The roles `?role=` names: repeated (`?role=a&role=b`) or
/// comma-separated (`?role=a,b`), every one of them required. Other
/// parameters are ignored (a proxy may add its own).
fn required_roles(query: Option<&str>) -> Result<Vec<Role>, FieldError> {
    let mut roles = Vec::new();
    let pairs = url::form_urlencoded::parse(query.unwrap_or_default().as_bytes());
    for (_, value) in pairs.filter(|(name, _)| name == "role") {
        for role in value.split(',') {
            let role = Role::parse(role).map_err(|e| FieldError::new("role", e.problem))?;
            if !roles.contains(&role) {
                roles.push(role);
            }
        }
    }
    Ok(roles)
}

/// 200 with the identity in headers, 401 without a valid credential, 403
/// when `?role=` names a role the token lacks (the service decides, counts
/// and audits that). Any method, so a proxy can forward the original one.
pub async fn forward_auth(
    State(state): State<HttpState>,
    Caller(caller): Caller,
    RawQuery(query): RawQuery,
) -> Result<Response, Error> {
    let (caller, secret) = (caller.token, caller.secret);
    for role in required_roles(query.as_deref())? {
        state.service.require_role(&caller, &role)?;
    }
    let roles: Vec<&str> = caller.roles.iter().map(Role::as_str).collect();
    let mut headers = HeaderMap::new();
    if secret == Secret::Previous {
        headers.insert(
            HeaderName::from_static(PREVIOUS_SECRET_HEADER),
            HeaderValue::from_static("true"),
        );
    }
    for (name, value) in [
        (ID_HEADER, caller.id.to_string()),
        // Names may hold non-ASCII text; it is sent as UTF-8 bytes.
        (NAME_HEADER, caller.name.to_string()),
        (ROLES_HEADER, roles.join(",")),
    ] {
        let value = HeaderValue::from_bytes(value.as_bytes())
            .map_err(|_| FieldError::new("name", "cannot be sent as a header"))?;
        headers.insert(HeaderName::from_static(name), value);
    }
    Ok((StatusCode::OK, headers).into_response())
}
