//! A service-token server: StackState-style service tokens (name, roles,
//! optional expiration; secret shown once, only its hash kept), served over
//! gRPC and HTTP on one port and kept in sled or PostgreSQL; and `sts`, its
//! command-line client. See ARCHITECTURE.md for the map.

// `unwrap` is denied (Cargo.toml's [lints]) in what ships; the non-test
// build checks every line of it, so unit tests may use it.
#![cfg_attr(test, allow(clippy::unwrap_used))]

mod audit;
mod authz;
pub mod cache;
pub mod changes;
pub mod cli;
pub mod clock;
pub mod config;
pub mod connections;
pub mod console;
pub mod error;
pub mod events;
pub mod export;
pub mod grpc;
pub mod http;
mod incident;
mod last_used;
pub mod logging;
pub mod metrics;
pub mod model;
pub mod page;
pub mod proto;
pub mod rate_limit;
pub mod server;
pub mod service;
pub mod source;
mod source_limit;
pub mod store;
pub mod text;
mod webhook;

pub use error::Error;
/// The credential rules and the token format are the API's, shared with
/// the client crate.
pub use sts_api::{credential, token};
