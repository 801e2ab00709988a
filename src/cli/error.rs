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
    /// Something answers at the URL, but not an sts-server as addressed.
    #[error("{0}")]
    WrongServer(String),
    #[error("authentication failed at {url}: {reason}")]
    Auth { url: String, reason: String },
    /// Authenticated, but the token may not do this.
    #[error("{reason} (at {url})")]
    Denied { url: String, reason: String },
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
            CliError::Connect { .. }
            | CliError::WrongServer(_)
            | CliError::Auth { .. }
            | CliError::Denied { .. } => exit::CONNECT,
            CliError::NotFound(_) => exit::NOT_FOUND,
        }
    }

    /// Classifies an RPC failure against the server at `url`. A failure
    /// of the connection itself (tonic gives it a transport error as its
    /// source; a status the server sent has none) is `None`: the caller
    /// explains it with [`transport_problem`], which may need to probe.
    pub fn from_status(status: &tonic::Status, url: &str) -> Option<CliError> {
        if std::error::Error::source(status).is_some() {
            return None;
        }
        let url = url.to_owned();
        let reason = status.message().to_owned();
        Some(match status.code() {
            Code::Unauthenticated => CliError::Auth { url, reason },
            Code::PermissionDenied => CliError::Denied { url, reason },
            Code::NotFound => CliError::NotFound(reason),
            _ => CliError::Usage(in_cli_terms(&reason)),
        })
    }
}

/// The API's names for what the CLI calls by its flags: a refusal names
/// what the user typed, not the protobuf field.
const FLAGS: &[(&str, &str)] = &[
    ("name_prefix", "--name-prefix"),
    ("unused_since", "--unused-for"),
    ("expiring_before", "--expiring-within"),
    ("over_policy", "--over-policy"),
    ("grace_period", "--grace"),
    ("expiration", "--expiration"),
    ("roles", "--roles"),
    ("role", "--role"),
    ("name", "--name"),
    ("description", "--description"),
    ("labels", "--label"),
    ("rate_limits", "--rate-limit"),
    ("no_rate_limits", "--no-rate-limit"),
    ("owner_id", "--owner"),
    ("page_token", "the listing's page"),
    ("update_mask", "the change"),
];

/// A server's refusal as one line in the CLI's words: without the error
/// kind's own prefix (`invalid argument: `), the field named by the flag
/// that sets it.
fn in_cli_terms(message: &str) -> String {
    let message = message
        .strip_prefix("invalid argument: ")
        .unwrap_or(message);
    let (field, rest) = message.split_once(": ").unwrap_or(("", message));
    let flag = FLAGS
        .iter()
        .find(|(api, _)| {
            *api == field || field.strip_prefix(api).is_some_and(|r| r.starts_with('['))
        })
        .map(|(_, flag)| *flag);
    match flag {
        Some(flag) => format!("{flag}: {rest}"),
        None => message.to_owned(),
    }
    .lines()
    .collect::<Vec<_>>()
    .join(" ")
}

/// What a failed connection most likely means, from its chain of causes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransportProblem {
    /// https:// to a server that answered in plaintext.
    NotTls,
    /// Something answered, but not with gRPC over HTTP/2 (a plain HTTP
    /// server, another protocol, or a TLS server spoken to in plaintext).
    NotGrpc,
    /// Nothing listens there.
    Refused,
    Other,
}

pub fn transport_problem(error: &dyn std::error::Error, https: bool) -> TransportProblem {
    let text = with_causes(error);
    let any = |needles: &[&str]| needles.iter().any(|n| text.contains(n));
    if https
        && any(&[
            "InvalidContentType",
            "corrupt message",
            "WrongVersion",
            "InvalidMessage",
        ])
    {
        TransportProblem::NotTls
    } else if any(&["Connection refused", "os error 111"]) {
        TransportProblem::Refused
    } else if any(&[
        "h2 protocol error",
        "http2 error",
        "frame with invalid size",
        "invalid HTTP",
        "GoAway",
        "connection closed before message completed",
        "unexpected end of file",
        "Connection reset",
        "broken pipe",
        "stream closed",
    ]) {
        TransportProblem::NotGrpc
    } else {
        TransportProblem::Other
    }
}

impl TransportProblem {
    /// The one line the user reads; `tls` says whether a TLS handshake
    /// succeeded where plaintext failed.
    pub fn explain(self, url: &str, error: &dyn std::error::Error, tls: bool) -> CliError {
        let wrong = |text: String| CliError::WrongServer(text);
        match self {
            TransportProblem::NotTls => wrong(format!(
                "the server at {url} does not speak TLS: use http://"
            )),
            TransportProblem::NotGrpc | TransportProblem::Other if tls => {
                wrong(format!("the server at {url} expects TLS: use https://"))
            }
            TransportProblem::NotGrpc => wrong(format!(
                "the server at {url} does not speak gRPC over HTTP/2: is this the right port?"
            )),
            TransportProblem::Refused => CliError::Connect {
                url: url.to_owned(),
                reason: "nothing is listening there (connection refused): is sts-server running, and is this the right port?".into(),
            },
            TransportProblem::Other => CliError::Connect {
                url: url.to_owned(),
                reason: with_causes(error),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_name_the_flags_the_user_typed_on_one_line() {
        let cases = [
            (
                "invalid argument: over_policy: this server has no maximum token lifetime",
                "--over-policy: this server has no maximum token lifetime",
            ),
            (
                "invalid argument: name_prefix: is too long",
                "--name-prefix: is too long",
            ),
            (
                "invalid argument: roles[1]: is not a role",
                "--roles: is not a role",
            ),
            (
                "invalid argument: page_token: is not ours",
                "the listing's page: is not ours",
            ),
            (
                "refused: deleting service token 5 would lock out",
                "refused: deleting service token 5 would lock out",
            ),
            ("two\nlines", "two lines"),
        ];
        for (server, cli) in cases {
            assert_eq!(in_cli_terms(server), cli, "{server}");
        }
        let status = tonic::Status::invalid_argument("invalid argument: over_policy: no");
        let error = CliError::from_status(&status, "http://x")
            .unwrap()
            .to_string();
        assert_eq!(error, "--over-policy: no");
    }
}
