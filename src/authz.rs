//! What every check surface decides alike, below the transports: the
//! identity an allowed request carries on (forward-auth's answer headers,
//! ext_authz's headers to set), the previous-secret flag, the credential
//! headers to strip, and an error as HTTP answers it (Envoy's denials carry
//! the same answer a direct caller gets).

use http::StatusCode;
use serde::Serialize;

use crate::{
    credential,
    error::{Answer, ErrorKind},
    model::{MatchedSecret, ServiceToken},
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
/// for a credential, and the JSON body. The one mapping of [`ErrorKind`] to
/// HTTP: HTTP answers with it, and Envoy's ext_authz denials carry it, so
/// a client behind Envoy reads what a direct caller reads.
pub struct HttpError {
    pub status: StatusCode,
    pub challenge: bool,
    pub body: String,
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
        }
    }
}
