//! Validate `sts-server` service tokens inside your own service.
//!
//! A [`Validator`] asks the server once per token and keeps the answer in
//! memory, keyed by the SHA-256 of the secret. The server's `Watch` stream
//! tells it of every change that can turn a valid answer into a refusal
//! (deleted, disabled, rotated, changed, purged, revoked), made through
//! any replica, so a revoked token is refused within the server's 100 ms,
//! not after a blind TTL.
//!
//! Staleness is bounded, not hoped for:
//!
//! - While the stream is healthy (a heartbeat each second), an entry lives
//!   until its token expires (or its previous secret's grace ends) or an
//!   event drops it.
//! - When the stream breaks, the validator reconnects with backoff. After
//!   [`Config::max_staleness`] (5 s) without a heartbeat, it stops
//!   answering from memory and asks the server for every check.
//! - When the server is unreachable too, it refuses ([`Refusal::Unavailable`]:
//!   fail closed), unless [`Config::serve_stale_for`] is set: then a cached
//!   token keeps passing for that long past the stream's last heartbeat.
//!   That is a trade: a token revoked meanwhile passes too.
//! - Refusals are kept for [`Config::negative_ttl`] (1 s), so a flood of
//!   bad tokens does not become a flood of calls to the server.
//! - Tokens with rate limits or bindings are never answered from memory:
//!   every check of them goes to the server, so their rules hold exactly.
//!
//! The uses it answers from memory are reported to the server in batches
//! (`ReportUses`), so last-used times, recent sources and usage stay true.
//! The validator's own token needs the server's watcher role
//! (`token-watcher`).
//!
//! [`ValidateLayer`] puts this in front of any tower service: it reads the
//! credential exactly as the server does (`Authorization: ApiKey <token>`,
//! `Authorization: Bearer <token>`, `X-API-Key: <token>`), checks required
//! roles and puts the caller's [`Identity`] into the request's extensions,
//! where the axum extractor (feature `axum`, on by default) finds it.
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use axum::{Router, routing::get};
//! use sts_client::{Config, Identity, ValidateLayer, Validator};
//!
//! let validator = Validator::new(Config::new("http://sts:8080", "svctok-…")?)?;
//! let app: Router = Router::new()
//!     .route("/", get(|who: Identity| async move { format!("hello, {}", who.name) }))
//!     .layer(ValidateLayer::new(validator).require_role("deploy"));
//! # Ok(()) }
//! ```

#![cfg_attr(test, allow(clippy::unwrap_used))]

mod cache;
mod config;
mod identity;
mod layer;
mod refusal;
mod report;
mod validator;
mod watch;

pub use config::{
    Config, ConfigError, DEFAULT_CAPACITY, DEFAULT_MAX_STALENESS, DEFAULT_NEGATIVE_TTL,
    DEFAULT_REPORT_INTERVAL, DEFAULT_REQUEST_TIMEOUT,
};
pub use identity::Identity;
pub use layer::{ValidateLayer, ValidateService};
pub use refusal::Refusal;
pub use validator::{Context, Health, Validator};

/// The credential rules and API types this crate shares with the server.
pub use sts_api;
