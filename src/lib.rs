//! A service-token server: StackState-style service tokens (name, roles,
//! optional expiration; secret shown once, only its hash kept) served over
//! gRPC, stored in sled. See ARCHITECTURE.md for the map.

pub mod cache;
pub mod cli;
pub mod clock;
pub mod config;
pub mod credential;
pub mod error;
pub mod export;
pub mod grpc;
pub mod http;
pub mod listener;
pub mod metrics;
pub mod model;
pub mod page;
pub mod proto;
pub mod server;
pub mod service;
pub mod store;
pub mod token;

pub use error::Error;
