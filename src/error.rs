//! The library's error type, the transport-neutral kind every front end maps
//! from, and the one conversion to a gRPC status.

use crate::{
    credential::AuthError,
    model::{FieldError, Role, TokenId},
    store::StoreError,
};

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
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("transport error: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("invalid TLS certificate or key: {0}")]
    Tls(String),
    /// Only our own embedded descriptors go in, so this is a build defect.
    #[error("embedded protobuf descriptors are invalid: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
}

/// What kind of failure an [`Error`] is, independent of transport: gRPC and
/// HTTP each map these, and metrics label by them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    InvalidArgument,
    NotFound,
    Unauthenticated,
    PermissionDenied,
    Unavailable,
    Internal,
}

impl ErrorKind {
    /// The gRPC status-code name, also used as the metrics label.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::InvalidArgument => "INVALID_ARGUMENT",
            ErrorKind::NotFound => "NOT_FOUND",
            ErrorKind::Unauthenticated => "UNAUTHENTICATED",
            ErrorKind::PermissionDenied => "PERMISSION_DENIED",
            ErrorKind::Unavailable => "UNAVAILABLE",
            ErrorKind::Internal => "INTERNAL",
        }
    }
}

impl Error {
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::InvalidArgument(_) => ErrorKind::InvalidArgument,
            Error::NotFound(_) => ErrorKind::NotFound,
            Error::Unauthenticated(_) => ErrorKind::Unauthenticated,
            Error::PermissionDenied(_) => ErrorKind::PermissionDenied,
            Error::Store(StoreError::Locked { .. } | StoreError::Unavailable(_)) => {
                ErrorKind::Unavailable
            }
            Error::Store(StoreError::Corrupt(_) | StoreError::IdExhausted)
            | Error::Transport(_)
            | Error::Tls(_)
            | Error::Reflection(_) => ErrorKind::Internal,
        }
    }
}

impl Error {
    /// Logs failures that are the server's, not the caller's; the transports'
    /// conversions call this so operators see store trouble whichever way it
    /// surfaced. Caller mistakes are not logged here (they are answered).
    pub fn report(&self) {
        match self.kind() {
            ErrorKind::Unavailable => {
                tracing::warn!(error = %self, "request failed: store unavailable")
            }
            ErrorKind::Internal => tracing::error!(error = %self, "request failed"),
            _ => {}
        }
    }
}

impl From<Error> for tonic::Status {
    fn from(error: Error) -> tonic::Status {
        error.report();
        let code = match error.kind() {
            ErrorKind::InvalidArgument => tonic::Code::InvalidArgument,
            ErrorKind::NotFound => tonic::Code::NotFound,
            ErrorKind::Unauthenticated => tonic::Code::Unauthenticated,
            ErrorKind::PermissionDenied => tonic::Code::PermissionDenied,
            ErrorKind::Unavailable => tonic::Code::Unavailable,
            ErrorKind::Internal => tonic::Code::Internal,
        };
        tonic::Status::new(code, error.to_string())
    }
}

/// An error and its chain of causes on one line, each cause once.
pub fn with_causes(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text = format!("{text}: {cause_text}");
        }
        source = cause.source();
    }
    text
}
