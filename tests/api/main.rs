//! The integration suite: every test starts the real server in-process on
//! 127.0.0.1:0 with a temporary data dir and talks to it over gRPC.

mod helpers;
mod process;

mod auth;
mod binary;
mod cli;
mod crash;
mod create;
mod delete;
mod durability;
mod health;
mod http_auth;
mod http_tokens;
mod list;
mod reflection;
mod same_port;
mod store_faults;
mod validate;
