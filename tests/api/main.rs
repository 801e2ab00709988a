//! The integration suite, one binary: tests start the real server on
//! 127.0.0.1:0 with a temporary data dir, in-process (`support::spawn_app`) or as the
//! `sts-server` binary (`support::process`), and talk to it over gRPC and HTTP.

// All of this crate is tests: `unwrap` is fine here (Cargo.toml's [lints]
// deny it in what ships).
#![allow(clippy::unwrap_used)]

mod support;

mod admin_margin;
mod architecture;
mod audit;
mod auth;
mod binary;
mod bindings;
mod bodies;
mod browser;
mod cli;
mod cli_lifecycle;
mod client;
mod conformance;
mod connections;
mod console;
mod crash;
mod create;
mod delegation;
mod delete;
mod disclosure;
mod disk;
mod docs;
mod durability;
mod edges;
mod examples;
mod ext_authz;
mod grace;
mod health;
mod http_answers;
mod http_auth;
mod http_lifecycle;
mod http_tokens;
mod kubernetes;
mod last_used;
mod leaked;
mod lifecycle;
mod list;
mod migrate;
mod oauth2;
mod policy;
mod properties;
mod proxies;
mod rate_limits;
mod reflection;
mod replicas;
mod reuse;
mod rotated_out;
mod round_trip;
mod same_port;
mod secrets;
mod self_rotation;
mod shared_limits;
mod signals;
mod soak;
mod store_faults;
mod tls;
mod upgrade;
mod usage;
mod validate;
mod watch;
mod webhooks;
