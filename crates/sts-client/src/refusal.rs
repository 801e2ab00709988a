//! Why a token was not accepted, as the layer answers it.

use std::time::Duration;

/// Why a check did not pass. Never carries the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Refusal {
    /// The request carries no valid token: none, one in a form the
    /// server does not read, a malformed one, an unknown or deleted one
    /// (or a secret rotated out), an expired or a disabled one. The
    /// reasons and their texts are the server's own.
    #[error("{0}")]
    Invalid(sts_api::credential::AuthError),
    /// It is bound to sources, audiences or routes this request is not.
    #[error("the service token may not be used here")]
    NotAllowed,
    /// One of its rate limits has no room; try again after `retry_after`.
    #[error("too many checks of this service token")]
    RateLimited {
        /// When the same check would fit.
        retry_after: Option<Duration>,
    },
    /// It lacks a role the route requires.
    #[error("the service token lacks the `{0}` role")]
    MissingRole(String),
    /// The server could not be asked, and the cache may not answer: the
    /// check fails closed.
    #[error("the token server is unreachable and no fresh answer is cached")]
    Unavailable,
}

impl Refusal {
    /// The HTTP status a refusal is answered with: 401 for a credential
    /// that is not a valid token, 403 for a valid one refused, 429 for a
    /// rate limit, 503 when the check could not be made.
    pub fn status(&self) -> http::StatusCode {
        match self {
            Refusal::Invalid(_) => http::StatusCode::UNAUTHORIZED,
            Refusal::NotAllowed | Refusal::MissingRole(_) => http::StatusCode::FORBIDDEN,
            Refusal::RateLimited { .. } => http::StatusCode::TOO_MANY_REQUESTS,
            Refusal::Unavailable => http::StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}
