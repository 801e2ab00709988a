//! The `sts` command-line client: StackState's `sts service-token` and
//! `sts context` commands over the gRPC API. Argument parsing lives in
//! `src/bin/sts.rs`; this module holds what the commands do.

mod bindings;
pub mod client;
pub mod commands;
pub mod config;
pub mod contexts;
pub mod error;
mod insecure;
mod limits;
pub mod output;
pub mod usage;

pub use error::CliError;

/// How long a rotated-out secret keeps working unless `--grace` says
/// otherwise: time for running clients to switch without an outage.
pub const DEFAULT_ROTATION_GRACE: std::time::Duration = std::time::Duration::from_secs(3600);
