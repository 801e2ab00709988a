//! The `Caller` extractor (the authenticated service token behind a
//! request) and `Peer` (the address it came from).

use std::{convert::Infallible, net::IpAddr};

use super::{HttpState, context};
use crate::{
    credential,
    error::Error,
    rate_limit::{Charge, Surface},
    service::{Authenticated, Authority, Credential, Rpc, Transport},
    source,
};
use axum::{
    extract::FromRequestParts,
    http::{HeaderMap, request::Parts},
};

/// The caller's valid service token (and which of its secrets it sent),
/// read from `Authorization: ApiKey …` or `X-API-Key` through the same
/// validation as gRPC's `Validate`. Rejects with 401 and
/// `WWW-Authenticate: ApiKey`.
pub struct Caller(pub Authenticated);

impl FromRequestParts<HttpState> for Caller {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &HttpState) -> Result<Caller, Error> {
        authenticate(state, parts).await.map(Caller)
    }
}

/// The caller behind a request: what [`Caller`] extracts, for the
/// handlers that read the request themselves. The token is used on this
/// server, so its bindings meet the request itself (see
/// [`context::of_request`]).
pub async fn authenticate(state: &HttpState, parts: &Parts) -> Result<Authenticated, Error> {
    let seen = context::of_request(parts);
    state
        .service
        .authenticate_secret(
            credential::presented(&parts.headers),
            &seen.context(),
            Charge::one(Surface::Status),
        )
        .await
}

/// Where the request came from (see `source::of`: the peer, or the client
/// a trusted proxy names); `None` for a request that did not come over a
/// socket (the router driven directly, in tests).
pub struct Peer(pub Option<IpAddr>);

impl<S: Sync> FromRequestParts<S> for Peer {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Peer, Infallible> {
        Ok(Peer(source::of(&parts.extensions)))
    }
}

/// What every management call reads from its request before anything
/// else: the server's state, the headers its credential is presented in,
/// and its source. [`Management::run`] checks the credential (through
/// `TokenService::manage`) before the handler reads a byte of the body.
pub struct Management {
    pub state: HttpState,
    pub headers: HeaderMap,
    source: Option<IpAddr>,
}

impl FromRequestParts<HttpState> for Management {
    type Rejection = Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &HttpState,
    ) -> Result<Management, Infallible> {
        Ok(Management {
            state: state.clone(),
            headers: parts.headers.clone(),
            source: source::of(&parts.extensions),
        })
    }
}

impl Management {
    /// Runs management call `rpc`: `call` with the caller's authority, counted and
    /// audited by the service.
    pub async fn run<T, Fut>(
        &self,
        rpc: Rpc,
        call: impl FnOnce(Authority) -> Fut,
    ) -> Result<T, Error>
    where
        Fut: std::future::Future<Output = Result<T, Error>>,
    {
        let presented = credential::presented(&self.headers);
        self.state
            .service
            .manage(
                rpc,
                Transport::Rest,
                Credential::Presented(presented),
                self.source,
                call,
            )
            .await
    }

    /// The calling token rotating itself, with what `request` reads once
    /// its credential passed.
    pub async fn rotate_self(
        &self,
        request: impl std::future::Future<
            Output = Result<(std::time::Duration, Option<std::time::SystemTime>), Error>,
        >,
    ) -> Result<(crate::token::Secret, crate::model::ServiceToken), Error> {
        let presented = credential::presented(&self.headers);
        self.state
            .service
            .rotate_self(Transport::Rest, presented, self.source, request)
            .await
    }
}
