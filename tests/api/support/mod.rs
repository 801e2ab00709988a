//! Test support: everything tests share, one job per file (spawning a
//! server, driving the router alone, TLS, gRPC requests, the REST client,
//! raw HTTP/1.1, polling, stores, data-directory files, reading metrics),
//! the `FaultyStore`, captured logs, PostgreSQL and the real binary. Tests
//! import from here (`crate::support::...`).

mod app;
pub mod browser;
pub mod console;
pub mod example;
pub mod faults;
mod files;
mod grpc;
pub mod logs;
mod metrics;
pub mod pg;
mod poll;
pub mod process;
pub mod redis;
mod rest;
mod router;
mod store;
mod tls;
mod wire;

pub use self::{
    app::*, files::*, grpc::*, metrics::*, poll::*, rest::*, router::*, store::*, tls::*, wire::*,
};
