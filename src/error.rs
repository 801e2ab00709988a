//! The library's errors: [`Error`] for requests, with its transport-neutral
//! [`ErrorKind`], what a client is told of it ([`Error::answer`]) and the one
//! conversion to a gRPC status; [`ServeError`] for failing to start serving.

use std::{net::SocketAddr, path::PathBuf};

use crate::{
    credential::AuthError,
    incident::{self, Severity},
    model::{BindingRefusal, Etag, FieldError, Role, TokenId},
    store::{Cause, StoreError},
};

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid argument: {0}")]
    InvalidArgument(#[from] FieldError),
    #[error("service token {0} not found")]
    NotFound(TokenId),
    #[error("unauthenticated: {0}")]
    Unauthenticated(#[from] AuthError),
    #[error("permission denied: the caller's service token lacks the `{0}` role")]
    PermissionDenied(Role),
    /// A manager's call that would give a token more than the manager
    /// may: what, named (a role, the expiration, a binding, a limit).
    #[error("permission denied: {0}")]
    Delegation(String),
    /// A self-rotation that would end a live secret (the previous one
    /// still in its grace period), or of a token past the maximum age.
    #[error("{0}")]
    CannotRotate(String),
    /// A valid token used outside what it is bound to.
    #[error("permission denied: {0}")]
    NotAllowed(BindingRefusal),
    #[error("the request is larger than the {limit} bytes allowed")]
    TooLarge { limit: usize },
    /// The request's body did not arrive whole within `--body-timeout`.
    #[error("the request body did not arrive within {}: send it whole, at once", humantime::format_duration(*.0))]
    BodyTimeout(std::time::Duration),
    /// The lockout rule: no change may leave nobody able to manage tokens.
    #[error(
        "refused: {what} service token {id} would leave no enabled token with the `{role}` role valid for the admin keep margin (--admin-keep-margin), and soon nobody could manage tokens; create another admin token first"
    )]
    Lockout {
        what: &'static str,
        id: TokenId,
        role: Role,
    },
    /// The caller's etag is not the token's any more (AIP-154).
    #[error(
        "service token {id} changed since its etag was read (it is {current} now): read it again, and make the change to what it holds now"
    )]
    Stale { id: TokenId, current: Etag },
    /// Too many calls from one source address (revoking leaked tokens).
    #[error("too many requests from this address: try again in {} s", retry_seconds(*retry_after))]
    RateLimited { retry_after: std::time::Duration },
    /// A token's rate limit had no room for a check (nothing was spent).
    #[error("too many checks of this token: {0}")]
    OverLimit(Box<crate::rate_limit::Quota>),
    /// The shared rate-limit store is away and the policy is closed.
    #[error(
        "the rate-limit store is unavailable, and this server refuses checks of rate-limited tokens meanwhile; try again later"
    )]
    LimiterUnavailable,
    /// More requests in flight than `--max-requests-in-flight`: refused at
    /// once, before any work, so the server stays responsive.
    #[error("the server is busy: too many requests in flight; try again in a moment")]
    Overloaded,
    /// `--max-watch-streams` are open on this replica already.
    #[error(
        "this server has {max} watch streams open already (--max-watch-streams): watch through another replica, or try again later"
    )]
    TooManyWatches { max: usize },
    /// The server is shutting down: a long-lived call ends so a client
    /// goes to another replica.
    #[error("the server is shutting down: reconnect, to another replica if there is one")]
    ShuttingDown,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A wait as whole seconds, rounded up and at least 1: a client that waits
/// this long (HTTP's `Retry-After`) is let in.
pub fn retry_seconds(wait: std::time::Duration) -> u64 {
    crate::rate_limit::whole_seconds(wait)
}

/// What kind of failure an [`Error`] is, independent of transport: gRPC and
/// HTTP each map these, and metrics label by them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    InvalidArgument,
    NotFound,
    Unauthenticated,
    PermissionDenied,
    FailedPrecondition,
    /// ABORTED in gRPC (AIP-154's answer to a stale etag); HTTP 412.
    Aborted,
    ResourceExhausted,
    /// RESOURCE_EXHAUSTED in gRPC, as a too-large request is; HTTP tells
    /// the two apart (429, not 413).
    RateLimited,
    /// The request itself took too long to arrive (HTTP 408).
    DeadlineExceeded,
    /// RESOURCE_EXHAUSTED in gRPC; HTTP answers 503 with `Retry-After`.
    Overloaded,
    Unavailable,
    Internal,
}

impl ErrorKind {
    /// A refusal of the caller (its credential or its rights), as opposed
    /// to the server failing to decide.
    pub fn is_refusal(self) -> bool {
        matches!(
            self,
            ErrorKind::Unauthenticated | ErrorKind::PermissionDenied | ErrorKind::NotFound
        )
    }

    /// The gRPC status-code name, also used as the metrics label.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::InvalidArgument => "INVALID_ARGUMENT",
            ErrorKind::NotFound => "NOT_FOUND",
            ErrorKind::Unauthenticated => "UNAUTHENTICATED",
            ErrorKind::PermissionDenied => "PERMISSION_DENIED",
            ErrorKind::FailedPrecondition => "FAILED_PRECONDITION",
            ErrorKind::Aborted => "ABORTED",
            ErrorKind::ResourceExhausted | ErrorKind::RateLimited | ErrorKind::Overloaded => {
                "RESOURCE_EXHAUSTED"
            }
            ErrorKind::DeadlineExceeded => "DEADLINE_EXCEEDED",
            ErrorKind::Unavailable => "UNAVAILABLE",
            ErrorKind::Internal => "INTERNAL",
        }
    }
}

/// What a client is told of an [`Error`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub kind: ErrorKind,
    pub message: String,
}

impl Error {
    /// The same error, with field `from` called `to`: for a transport whose
    /// requests name a field differently (REST's `expiryDate` is the API's
    /// `expiration`), so a message names the field the caller sent.
    pub fn naming_field(self, from: &str, to: &str) -> Error {
        match self {
            Error::InvalidArgument(FieldError { field, problem }) if field == from => {
                Error::InvalidArgument(FieldError::new(to, problem))
            }
            other => other,
        }
    }

    /// The one exhaustive match over variants.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::InvalidArgument(_) => ErrorKind::InvalidArgument,
            Error::NotFound(_) => ErrorKind::NotFound,
            Error::Unauthenticated(_) => ErrorKind::Unauthenticated,
            Error::PermissionDenied(_) | Error::NotAllowed(_) | Error::Delegation(_) => {
                ErrorKind::PermissionDenied
            }
            Error::CannotRotate(_) => ErrorKind::FailedPrecondition,
            Error::TooLarge { .. } => ErrorKind::ResourceExhausted,
            Error::BodyTimeout(_) => ErrorKind::DeadlineExceeded,
            Error::Lockout { .. } => ErrorKind::FailedPrecondition,
            Error::Stale { .. } => ErrorKind::Aborted,
            Error::RateLimited { .. } | Error::OverLimit(_) => ErrorKind::RateLimited,
            Error::Overloaded => ErrorKind::Overloaded,
            Error::TooManyWatches { .. } => ErrorKind::ResourceExhausted,
            Error::LimiterUnavailable | Error::ShuttingDown => ErrorKind::Unavailable,
            Error::Store(
                StoreError::Locked { .. }
                | StoreError::Exposed { .. }
                | StoreError::Unavailable { .. }
                | StoreError::DiskReserve { .. },
            ) => ErrorKind::Unavailable,
            Error::Store(StoreError::Corrupt { .. } | StoreError::IdExhausted) => {
                ErrorKind::Internal
            }
        }
    }

    /// What the client is told; both transports answer with it. A caller's
    /// mistake is explained. A failure of the server's own (every store
    /// error) is logged, whole (every cause: driver text, paths, record
    /// ids), under an incident id (one per failure per window: see
    /// [`incident`]), and the client gets a fixed text and that id, which
    /// it can quote to whoever reads the log. Nothing internal
    /// reaches a client; `Validate` answers callers who need no credential.
    pub fn answer(&self) -> Answer {
        let kind = self.kind();
        let message = match self {
            Error::Store(failure) => {
                let severity = if kind == ErrorKind::Unavailable {
                    Severity::Unavailable
                } else {
                    Severity::Internal
                };
                let incident = incident::of(&with_causes(failure), severity);
                format!(
                    "{} (incident {incident}; the server's log has the details)",
                    fixed_text(failure)
                )
            }
            _ => self.to_string(),
        };
        Answer { kind, message }
    }
}

/// The client's text for a store failure: fixed per cause, saying what the
/// client can do about it.
fn fixed_text(failure: &StoreError) -> &'static str {
    match failure {
        StoreError::DiskReserve { .. } => {
            "the server's disk is nearly full: creates, changes and rotations are refused until space is freed (deletes and disables still work)"
        }
        StoreError::Corrupt { .. } => {
            "the token store holds a corrupt record; an operator must repair it"
        }
        StoreError::IdExhausted => "could not allocate a unique token id; try again",
        StoreError::Locked { .. } | StoreError::Exposed { .. } | StoreError::Unavailable { .. } => {
            "the token store is unavailable; try again later"
        }
    }
}

impl ErrorKind {
    /// The gRPC code of this kind: statuses, and the codes in Envoy
    /// ext_authz's `CheckResponse` (which answers denials, never errors).
    pub fn grpc_code(self) -> tonic::Code {
        match self {
            ErrorKind::InvalidArgument => tonic::Code::InvalidArgument,
            ErrorKind::NotFound => tonic::Code::NotFound,
            ErrorKind::Unauthenticated => tonic::Code::Unauthenticated,
            ErrorKind::PermissionDenied => tonic::Code::PermissionDenied,
            ErrorKind::FailedPrecondition => tonic::Code::FailedPrecondition,
            ErrorKind::Aborted => tonic::Code::Aborted,
            ErrorKind::ResourceExhausted | ErrorKind::RateLimited | ErrorKind::Overloaded => {
                tonic::Code::ResourceExhausted
            }
            ErrorKind::DeadlineExceeded => tonic::Code::DeadlineExceeded,
            ErrorKind::Unavailable => tonic::Code::Unavailable,
            ErrorKind::Internal => tonic::Code::Internal,
        }
    }
}

impl From<Error> for tonic::Status {
    fn from(error: Error) -> tonic::Status {
        let answer = error.answer();
        tonic::Status::new(answer.kind.grpc_code(), answer.message)
    }
}

/// Why the server could not start (or stop) serving. Only the operator sees
/// these, so they carry every cause.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot resolve the listen address {address}")]
    Resolve {
        address: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the listen address {address} resolves to no address")]
    Unresolved { address: String },
    #[error("nothing to listen on")]
    NoAddress,
    #[error("cannot listen on {address}")]
    Bind {
        address: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid TLS certificate or key")]
    Tls(#[source] Cause),
    #[error("cannot start the probe port")]
    Probe(#[source] std::io::Error),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    RateLimitStore(#[from] crate::rate_limit::SharedError),
    /// Only our own embedded descriptors go in, so this is a build defect.
    #[error("embedded protobuf descriptors are invalid")]
    Reflection(#[from] tonic_reflection::server::Error),
}

pub use crate::store::with_causes;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_servers_own_failures_reach_clients_as_fixed_texts_with_an_incident_id() {
        let driver = std::io::Error::other("password authentication failed for user \"sts\"");
        let error = Error::Store(StoreError::unavailable("PostgreSQL failed", driver));
        let answer = error.answer();
        assert_eq!(answer.kind, ErrorKind::Unavailable);
        assert!(
            answer
                .message
                .starts_with("the token store is unavailable; try again later (incident "),
            "{answer:?}"
        );
        assert!(!answer.message.contains("password"), "{answer:?}");
        assert!(!answer.message.contains("PostgreSQL"), "{answer:?}");
        // The same failure again within the window: the same incident.
        assert_eq!(error.answer().message, answer.message);
    }

    #[test]
    fn caller_mistakes_are_explained() {
        let error = Error::from(FieldError::new("name", "is required"));
        assert_eq!(
            error.answer(),
            Answer {
                kind: ErrorKind::InvalidArgument,
                message: "invalid argument: name: is required".into()
            }
        );
    }

    #[test]
    fn causes_are_listed_once_each() {
        let error = StoreError::unavailable("sled failed", std::io::Error::other("disk gone"));
        assert_eq!(
            with_causes(&error),
            "the store is unavailable: sled failed: disk gone"
        );
    }
}
