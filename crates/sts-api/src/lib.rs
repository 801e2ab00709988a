//! What `sts-server` and every client of it must agree on, in one place so
//! they cannot disagree:
//!
//! - [`proto`]: the `TokenService` gRPC API (client, server and messages),
//!   generated from the protobuf contract this crate ships.
//! - [`credential`]: how a request carries a service token
//!   (`Authorization: ApiKey <token>`, `Authorization: Bearer <token>`,
//!   `X-API-Key: <token>`) and why a request's headers hold none.
//! - [`token`]: the token format (prefix, alphabet, checksum), checked
//!   without any lookup, and [`token::TokenHash`], the SHA-256 a token is
//!   known by.
//!
//! The crate holds no store and no server: `sts-client` builds on it to
//! validate tokens inside a service.

#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod credential;
pub mod proto;
pub mod token;
