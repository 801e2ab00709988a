//! The library's error type and its one conversion to a gRPC status.

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
    /// Only our own embedded descriptors go in, so this is a build defect.
    #[error("embedded protobuf descriptors are invalid: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
}

impl From<Error> for tonic::Status {
    fn from(error: Error) -> tonic::Status {
        let message = error.to_string();
        match error {
            Error::InvalidArgument(_) => tonic::Status::invalid_argument(message),
            Error::NotFound(_) => tonic::Status::not_found(message),
            Error::Unauthenticated(_) => tonic::Status::unauthenticated(message),
            Error::PermissionDenied(_) => tonic::Status::permission_denied(message),
            Error::Store(StoreError::Locked { .. } | StoreError::Unavailable(_)) => {
                tonic::Status::unavailable(message)
            }
            Error::Store(StoreError::Corrupt(_) | StoreError::IdExhausted) => {
                tonic::Status::internal(message)
            }
            Error::Transport(_) | Error::Reflection(_) => tonic::Status::internal(message),
        }
    }
}
