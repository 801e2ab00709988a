//! CLI failures and StackState's exit codes for them.

use tonic::Code;

use crate::error::with_causes;

/// What went wrong, grouped the way StackState's CLI reports it. Messages
/// never contain a token.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// No usable context, an unreadable or unwritable config file.
    #[error("{0}")]
    Config(String),
    /// Bad arguments, or an error answer from the server.
    #[error("{0}")]
    Usage(String),
    #[error("cannot connect to {url}: {reason}")]
    Connect { url: String, reason: String },
    #[error("authentication failed at {url}: {reason}")]
    Auth { url: String, reason: String },
    #[error("{0}")]
    NotFound(String),
}

/// Exit codes, as StackState's CLI uses them.
pub mod exit {
    pub const CONFIG: u8 = 1;
    pub const USAGE: u8 = 3;
    pub const CONNECT: u8 = 4;
    pub const NOT_FOUND: u8 = 8;
}

impl CliError {
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Config(_) => exit::CONFIG,
            CliError::Usage(_) => exit::USAGE,
            CliError::Connect { .. } | CliError::Auth { .. } => exit::CONNECT,
            CliError::NotFound(_) => exit::NOT_FOUND,
        }
    }

    /// Classifies an RPC failure against the server at `url`.
    pub fn from_status(status: &tonic::Status, url: &str) -> CliError {
        let url = url.to_owned();
        // tonic reports a failed connection as a status with a transport
        // error as its source; a status the server sent has none.
        if std::error::Error::source(status).is_some() {
            return CliError::Connect {
                url,
                reason: with_causes(status),
            };
        }
        let reason = status.message().to_owned();
        match status.code() {
            Code::Unauthenticated | Code::PermissionDenied => CliError::Auth { url, reason },
            Code::NotFound => CliError::NotFound(reason),
            _ => CliError::Usage(format!("the server answered {:?}: {reason}", status.code())),
        }
    }
}
