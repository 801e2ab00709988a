//! What every check surface decides alike, below the transports: the
//! identity an allowed request carries on (forward-auth's answer headers,
//! ext_authz's headers to set), the previous-secret flag, the credential
//! headers to strip, and an error as HTTP answers it (Envoy's denials carry
//! the same answer a direct caller gets).

use http::StatusCode;
use serde::Serialize;

use crate::{
    credential,
    error::{Answer, Error, ErrorKind, retry_seconds},
    model::{MatchedSecret, ServiceToken},
    rate_limit::Quota,
    service::Authenticated,
};

/// Identity headers an allowed request carries on, for proxies to pass on.
pub const ID_HEADER: &str = "x-service-token-id";
pub const NAME_HEADER: &str = "x-service-token-name";
pub const ROLES_HEADER: &str = "x-service-token-roles";
/// When the caller's token expires (RFC 3339), on every successful check of
/// a token that does, as GitHub's `GitHub-Authentication-Token-Expiration`:
/// clients can warn themselves before their token stops working.
pub const EXPIRATION_HEADER: &str = "x-service-token-expiration";
/// Sent (`true`) when the caller used a secret rotated out by Rotate, in its
/// grace period, so whoever reads it can warn the client to switch.
pub const PREVIOUS_SECRET_HEADER: &str = "x-service-token-previous-secret";

/// The IETF's rate-limit fields (draft-ietf-httpapi-ratelimit-headers-09):
/// each of a token's limits as a policy (`"burst";q=20;w=1`) and where it
/// stands (`"burst";r=19;t=1`: remaining, seconds until whole), on every
/// allowed check of a limited token and on its refusal.
pub const RATELIMIT_POLICY_HEADER: &str = "ratelimit-policy";
pub const RATELIMIT_HEADER: &str = "ratelimit";

/// The values of [`RATELIMIT_POLICY_HEADER`] (the token's, made once with
/// its limits and shared) and [`RATELIMIT_HEADER`] (this check's).
pub struct RateLimitFields {
    pub policy: bytes::Bytes,
    pub state: String,
}

impl RateLimitFields {
    /// Both fields for `quota`; `None` for a token without limits.
    pub fn of(quota: &Quota) -> Option<RateLimitFields> {
        if quota.is_empty() {
            return None;
        }
        Some(RateLimitFields {
            policy: quota.limits().policy_bytes(),
            state: state_field(quota),
        })
    }

    /// As (name, value) pairs, for an answer that carries headers as text
    /// (Envoy's, an error's).
    pub fn pairs(self) -> [(&'static str, String); 2] {
        [
            (
                RATELIMIT_POLICY_HEADER,
                String::from_utf8_lossy(&self.policy).into_owned(),
            ),
            (RATELIMIT_HEADER, self.state),
        ]
    }
}

/// Where each limit stands: `"burst";r=19;t=1, …` (names are A-Z a-z 0-9
/// . _ -: a structured-field string as they are).
fn state_field(quota: &Quota) -> String {
    let mut state = String::with_capacity(48);
    let mut ints = itoa::Buffer::new();
    for (at, (limit, standing)) in quota.states().enumerate() {
        if at > 0 {
            state.push_str(", ");
        }
        state.push('"');
        state.push_str(limit.name());
        state.push_str("\";r=");
        state.push_str(ints.format(standing.remaining));
        state.push_str(";t=");
        let reset = standing.reset;
        state.push_str(ints.format(reset.as_secs() + u64::from(reset.subsec_nanos() > 0)));
    }
    state
}

/// Room for a typical token's roles, comma-separated.
const ROLES_CAPACITY: usize = 64;

/// What an allowed check sends on, whatever asked.
pub struct Allow {
    /// [`ID_HEADER`], [`NAME_HEADER`] and [`ROLES_HEADER`] with their values.
    pub identity: [(&'static str, String); 3],
    /// The caller used a secret rotated out and still in its grace period
    /// ([`PREVIOUS_SECRET_HEADER`]).
    pub previous_secret: bool,
    /// [`EXPIRATION_HEADER`]'s value, when the token expires.
    pub expiration: Option<String>,
    /// The credential headers the request carries that must not reach the
    /// upstream (none when the credential is forwarded on purpose).
    pub strip: Strip,
    /// Where the token's rate limits stand, for the client; `None`
    /// without limits.
    pub rate_limits: Option<RateLimitFields>,
}

/// Which of [`credential::HEADERS`] to strip, in its order; no allocation
/// on a check's path.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Strip([bool; 2]);

impl Strip {
    /// The names, in [`credential::HEADERS`]' order.
    pub fn names(self) -> impl Iterator<Item = &'static str> {
        credential::HEADERS
            .into_iter()
            .zip(self.0)
            .filter_map(|(name, strip)| strip.then_some(name))
    }

    /// The names as one comma-separated header value; `None` for none.
    pub fn joined(self) -> Option<&'static str> {
        const BOTH: &str = "authorization,x-api-key";
        const _: () = assert!(
            credential::HEADERS.len() == 2
                && BOTH.len() == credential::HEADERS[0].len() + 1 + credential::HEADERS[1].len()
        );
        match self.0 {
            [true, true] => Some(BOTH),
            [true, false] => Some(credential::HEADERS[0]),
            [false, true] => Some(credential::HEADERS[1]),
            [false, false] => None,
        }
    }
}

impl Allow {
    /// The allow of `caller`, whose request `carries` the headers it names;
    /// `forward_credential` keeps the credential on the request.
    pub fn of(
        caller: &Authenticated,
        carries: impl Fn(&'static str) -> bool,
        forward_credential: bool,
    ) -> Allow {
        let token = &caller.token;
        let strip = if forward_credential {
            Strip::default()
        } else {
            Strip(credential::HEADERS.map(&carries))
        };
        Allow {
            identity: identity(token),
            previous_secret: caller.secret == MatchedSecret::Previous,
            expiration: expiration_text(token),
            strip,
            rate_limits: RateLimitFields::of(&caller.quota),
        }
    }
}

/// The identity headers' names and values.
fn identity(token: &ServiceToken) -> [(&'static str, String); 3] {
    let mut roles = String::with_capacity(ROLES_CAPACITY);
    for (i, role) in token.roles.iter().enumerate() {
        if i > 0 {
            roles.push(',');
        }
        roles.push_str(role.as_str());
    }
    [
        (
            ID_HEADER,
            itoa::Buffer::new().format(token.id.get()).to_owned(),
        ),
        // Names may hold non-ASCII text; it is sent as UTF-8 bytes.
        (NAME_HEADER, token.name.as_str().to_owned()),
        (ROLES_HEADER, roles),
    ]
}

/// The [`EXPIRATION_HEADER`] value of a token that expires: RFC 3339, to
/// the second.
pub fn expiration_text(token: &ServiceToken) -> Option<String> {
    token.expiration.map(crate::clock::rfc3339)
}

/// The JSON body of every HTTP error.
#[derive(Serialize)]
pub(crate) struct ErrorBody<'a> {
    pub error: &'a str,
    pub message: String,
}

/// An error as the HTTP side answers it: status, whether it challenges
/// for a credential, the JSON body, and the headers that say when to come
/// back (`Retry-After`, the rate-limit fields). The one mapping of [`ErrorKind`] to
/// HTTP: HTTP answers with it, and Envoy's ext_authz denials carry it, so
/// a client behind Envoy reads what a direct caller reads.
pub struct HttpError {
    pub status: StatusCode,
    pub challenge: bool,
    pub body: String,
    pub headers: Vec<(&'static str, String)>,
    /// What the body says, for an answer that carries it apart (Envoy's
    /// gRPC status).
    pub message: String,
}

impl HttpError {
    /// `error` as HTTP answers it (its [`Error::answer`] and headers).
    pub fn of(error: &Error) -> HttpError {
        let mut http = HttpError::from(&error.answer());
        match error {
            Error::RateLimited { retry_after } => {
                http.headers
                    .push(("retry-after", retry_seconds(*retry_after).to_string()));
            }
            Error::Overloaded => http.headers.push(("retry-after", "1".to_owned())),
            Error::OverLimit(quota) => {
                let wait = quota.retry_after().unwrap_or_default();
                http.headers
                    .push(("retry-after", retry_seconds(wait).to_string()));
                http.headers.extend(
                    RateLimitFields::of(quota)
                        .map(RateLimitFields::pairs)
                        .into_iter()
                        .flatten(),
                );
            }
            _ => {}
        }
        http
    }
}

/// The `WWW-Authenticate` challenge of a 401.
pub const CHALLENGE: &str = "ApiKey";

impl From<&Answer> for HttpError {
    fn from(Answer { kind, message }: &Answer) -> HttpError {
        let status = match kind {
            ErrorKind::InvalidArgument => StatusCode::BAD_REQUEST,
            ErrorKind::NotFound => StatusCode::NOT_FOUND,
            ErrorKind::Unauthenticated => StatusCode::UNAUTHORIZED,
            ErrorKind::PermissionDenied => StatusCode::FORBIDDEN,
            ErrorKind::FailedPrecondition => StatusCode::CONFLICT,
            ErrorKind::Aborted => StatusCode::PRECONDITION_FAILED,
            ErrorKind::ResourceExhausted => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorKind::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            ErrorKind::Overloaded => StatusCode::SERVICE_UNAVAILABLE,
            ErrorKind::DeadlineExceeded => StatusCode::REQUEST_TIMEOUT,
            ErrorKind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            ErrorKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        };
        let body = ErrorBody {
            error: kind.as_str(),
            message: message.clone(),
        };
        HttpError {
            status,
            challenge: *kind == ErrorKind::Unauthenticated,
            body: serde_json::to_string(&body).expect("an error body serializes"),
            headers: Vec::new(),
            message: message.clone(),
        }
    }
}
